"""A whole P2P-LLM network on this machine: anvil, the contracts, and `p2pnode serve` processes, started with
visible progress and always stopped (nodes gracefully, so they claim; then anvil), also on Ctrl-C or failure.
Used by the demo, the end-to-end benchmark and tests. Runs nodes as separate processes by command line;
knows nothing about the node's or the client's internals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devkit.devnet import Anvil
from p2pllm.chain import Chain, Deployment
from p2pllm.cpus import format_cpu_list
from p2pllm.keys import dev_account

Log = Callable[[str], None]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    start: int
    end: int
    price_eth: str
    dev_account: int
    extra_args: tuple[str, ...] = ()


@dataclass
class RunningNode:
    spec: NodeSpec
    process: subprocess.Popen[str]
    endpoint: str = ""
    offer_id: int = 0
    address: str = ""
    lines: list[str] = field(default_factory=list)
    signalled: bool = False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            if not self.signalled:
                self.process.send_signal(sig)
                self.signalled = True
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def parse_ready(line: str) -> tuple[str, int, str] | None:
    """`p2pnode serve`'s start-up line ``READY <endpoint> offer=<id> node=<address>`` -> its three fields."""
    if not line.startswith("READY "):
        return None
    parts = line.split()
    fields = dict(p.split("=", 1) for p in parts[2:])
    return parts[1], int(fields["offer"]), fields["node"]


class NodeStartError(RuntimeError):
    pass


class LocalNetwork:
    """`with LocalNetwork(workdir, model, specs) as net:` anvil + contracts + node processes."""

    def __init__(self, workdir: Path, model: str, specs: Sequence[NodeSpec], log: Log = print,
                 node_threads: int | None = None, start_timeout_s: float = 300.0,
                 node_cpus: frozenset[int] | None = None, one_at_a_time: bool = False) -> None:
        """`one_at_a_time`: start each node only when the previous one is serving, so that no two measure
        their compute time at start-up together (slower to start; the advertised figures are then comparable)."""
        self.workdir = Path(workdir)
        self.model = model
        self.specs = list(specs)
        self.log = log
        self.node_threads = node_threads
        self.node_cpus = node_cpus
        self.start_timeout_s = start_timeout_s
        self.one_at_a_time = one_at_a_time
        self.anvil = Anvil()
        self.deployment: Deployment | None = None
        self.deployment_file = self.workdir / "deployment.json"
        self.nodes: dict[str, RunningNode] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.anvil.start()
        self.log(f"anvil listening at {self.anvil.rpc_url} (chain id 31337)")
        deployer = Chain.connect(self.anvil.rpc_url, dev_account(0), expected_chain_id=31337)
        self.deployment = deployer.deploy_contracts("localnet", self.anvil.rpc_url, 2 * 86400, 86400, 600)
        self.deployment.save(self.deployment_file)
        self.log(f"deployed OfferRegistry {self.deployment.registry} and PaymentEscrow {self.deployment.escrow}")
        for spec in self.specs:
            self.nodes[spec.name] = self._spawn(spec)
            if self.one_at_a_time:
                self._wait_ready()
        self._wait_ready()

    def stop_nodes(self) -> dict[str, int]:
        """SIGTERM every node (each claims what it holds on the way out); their exit codes."""
        for node in self.nodes.values():
            if node.process.poll() is None and not node.signalled:
                node.process.send_signal(signal.SIGTERM)
                node.signalled = True
        return {name: node.stop() for name, node in self.nodes.items()}

    def stop(self) -> None:
        """Nodes first, then anvil. Safe to call twice."""
        self.stop_nodes()
        self.anvil.stop()

    def chain(self, account: int) -> Chain:
        assert self.deployment is not None
        return Chain.connect(self.anvil.rpc_url, dev_account(account), self.deployment)

    # ------------------------------------------------------------------ nodes
    def _spawn(self, spec: NodeSpec) -> RunningNode:
        cmd = [sys.executable, "-m", "node.cli", "serve", "--layers", f"{spec.start}-{spec.end}",
               "--price", spec.price_eth, "--model", self.model, "--port", "0",
               "--deployment", str(self.deployment_file), "--dev-account", str(spec.dev_account),
               "--data-dir", str(self.workdir / f"node-{spec.name}"), "--claim-interval", "3600",
               *(["--threads", str(self.node_threads)] if self.node_threads else []),
               *(["--cpus", format_cpu_list(self.node_cpus)] if self.node_cpus else []), *spec.extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                   start_new_session=True)  # Ctrl-C reaches us, we stop the nodes in order
        node = RunningNode(spec, process)
        threading.Thread(target=self._follow, args=(node,), daemon=True).start()
        return node

    def _follow(self, node: RunningNode) -> None:
        assert node.process.stdout is not None
        for line in node.process.stdout:
            node.lines.append(line)
            ready = parse_ready(line)
            if ready is not None:
                node.endpoint, node.offer_id, node.address = ready
            elif line.startswith("[p2pnode]"):
                self.log(f"  node {node.spec.name}: {line.removeprefix('[p2pnode] ').rstrip()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.process.poll() is not None:
                    raise NodeStartError(f"node {node.spec.name} exited with {node.process.returncode}:\n"
                                         + "".join(node.lines[-20:]))
            if all(node.endpoint for node in self.nodes.values()):
                return
            time.sleep(0.1)
        raise NodeStartError("nodes not ready in time: " + ", ".join(n for n, node in self.nodes.items()
                                                                      if not node.endpoint))
