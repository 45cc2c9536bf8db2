"""`p2pllm-deploy` from a checkout: rebuilds the shipped contract artifacts first when `contracts/src` changed
(`devkit.compile`), then deploys with them. Same options as `p2pllm-deploy --help`.

    python scripts/deploy.py --network anvil          # writes ./deployments/anvil.json
"""

from __future__ import annotations

import sys

from devkit.compile import CompileError, compile_contracts, stale_artifacts, write_artifacts
from p2pllm.deploy import main as deploy_main


def main(argv: list[str] | None = None) -> int:
    if not any(arg in ("-h", "--help") for arg in (sys.argv[1:] if argv is None else argv)):
        try:
            fresh = compile_contracts()
        except CompileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if stale_artifacts(fresh):
            for path in write_artifacts(fresh):
                print(f"contracts changed: rebuilt {path.name}", file=sys.stderr)
    return deploy_main(argv)


if __name__ == "__main__":
    sys.exit(main())
