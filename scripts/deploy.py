"""`p2pllm-deploy` from a checkout: rebuilds the shipped contract artifacts first when `contracts/src` changed
(their recorded source hash differs, `devkit.compile`), then deploys with them. Same options as
`p2pllm-deploy --help`.

    python scripts/deploy.py --network anvil          # writes ./deployments/anvil.json
"""

from __future__ import annotations

import sys

from devkit.compile import CompileError, compile_contracts, sources_unchanged, stale_artifacts, write_artifacts
from p2pllm.deploy import main as deploy_main


def main(argv: list[str] | None = None) -> int:
    asks_help = any(arg in ("-h", "--help") for arg in (sys.argv[1:] if argv is None else argv))
    if not asks_help and not sources_unchanged():
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
