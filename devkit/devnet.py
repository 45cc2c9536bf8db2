"""A local anvil chain as a managed child process on a free port (for tests, the demo and benchmarks).
Knows nothing about the contracts."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from devkit.compile import REPO_ROOT

ANVIL = REPO_ROOT / ".tools" / "bin" / "anvil"
_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+)")


class AnvilError(RuntimeError):
    """anvil is missing or did not come up."""


class Anvil:
    """`with Anvil() as chain: chain.rpc_url` — started on a free port, stopped (and reaped) on exit."""

    def __init__(self, block_time_s: float | None = None, timeout_s: float = 30.0,
                 extra_args: Sequence[str] = (), host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        """`extra_args` go to anvil as they are (e.g. `("--hardfork", "shanghai")`); `host` is the address it binds
        and its URL names; `prefix` runs it through another command (e.g. `ip netns exec NS`)."""
        self.block_time_s = block_time_s
        self.host = host
        self.prefix = tuple(prefix)
        self.extra_args = tuple(extra_args)
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self._log: list[str] = []

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise AnvilError("anvil is not running")
        return f"http://{self.host}:{self.port}"

    def start(self) -> Anvil:
        binary = str(ANVIL) if ANVIL.exists() else shutil.which("anvil")
        if binary is None:
            raise AnvilError(f"anvil not found at {ANVIL}; run `make setup`")
        cmd = [*self.prefix, binary, "--host", self.host, "--port", "0"]
        if self.block_time_s:
            cmd += ["--block-time", str(self.block_time_s)]
        cmd += self.extra_args
        # Own session: a Ctrl-C in the terminal must not kill the chain before the nodes have claimed.
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self._log.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.stop()
        raise AnvilError("anvil did not report a listening port:\n" + "".join(self._log[-20:]))

    def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

