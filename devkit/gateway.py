"""A `p2pclient serve-api` process over a network described by a deployment file: started by command line, ready
once it prints its READY line, its output kept, stopped on demand. Used by the gateway tests and benchmark; knows
nothing about the client's internals."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    url: str  # http://host:port, without /v1
    lines: list[str]  # everything it has printed so far

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(deployment_file: Path, account: int, *extra: str, model: str,
                  timeout_s: float = 180) -> GatewayProcess:
    """`p2pclient serve-api` on a free port for dev account `account`, one torch thread, with `extra` options;
    returns once it is ready, or raises with the end of its output."""
    cmd = [sys.executable, "-m", "client.cli", "serve-api", "--port", "0", "--model", model,
           "--deployment", str(deployment_file), "--dev-account", str(account), "--threads", "1", *extra]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("READY "):
            threading.Thread(target=_follow, args=(process, lines), daemon=True).start()
            return GatewayProcess(process, line.split()[1], lines)
    process.kill()
    process.wait()
    raise RuntimeError("the gateway did not start:\n" + "".join(lines[-30:]))


def _follow(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
