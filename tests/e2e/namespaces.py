"""Linux network namespaces for multi-host tests: one namespace per host, each joined by a veth pair to a bridge
that lives in a namespace of its own, with the addresses the test assigns. Nothing is attached to the caller's
namespace, so a process inside can reach the other hosts and nothing else. Needs root and iproute2's `ip`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


class NamespacesUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no `ip`, or the kernel refused); the message says which."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@dataclass
class HostNetwork:
    """`with HostNetwork(["chain", "a", "b"]) as net: net.address("a"), net.exec_prefix("a")`."""

    hosts: Sequence[str]
    subnet: str = "10.77.0"  # /24; isolated from the machine's own, so any free-looking one works
    tag: str = field(default_factory=lambda: f"p2p{os.getpid() % 100000}")
    _made: list[str] = field(default_factory=list)

    @staticmethod
    def unavailable_reason() -> str | None:
        if shutil.which("ip") is None:
            return "iproute2's `ip` is not installed"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        return None

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{10 + list(self.hosts).index(host)}"

    def exec_prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host)]

    def __enter__(self) -> HostNetwork:
        reason = self.unavailable_reason()
        if reason:
            raise NamespacesUnavailable(reason)
        try:
            bridge = self._add(f"{self.tag}-bridge")
            _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", bridge, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                ns = self._add(self.namespace(host))
                inside, outside = f"{self.tag}h{i}", f"{self.tag}b{i}"  # ≤ 15 characters
                _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "netns", bridge)
                _ip("-n", bridge, "link", "set", outside, "master", "br0")
                _ip("-n", bridge, "link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add(self, ns: str) -> str:
        _ip("netns", "add", ns)
        self._made.append(ns)
        return ns

    def __exit__(self, *exc: object) -> None:
        while self._made:  # deleting a namespace deletes the veth ends inside it
            subprocess.run(["ip", "netns", "del", self._made.pop()], capture_output=True, timeout=30)
