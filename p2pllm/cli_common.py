"""Options and helpers both CLIs share: network/deployment selection, key sources, ETH amounts, tables.
Knows nothing about either role."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from p2pllm.chain import Chain, Deployment
from p2pllm.cpus import CpuListError, parse_cpu_list
from p2pllm.deployments import DeploymentNotFound, find_deployment
from p2pllm.keys import KeySource, load_account

WEI_PER_ETH = 10**18
DEFAULT_KEY_ENV = "P2PLLM_PRIVATE_KEY"  # used when no key option is given


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def parse_cpus(text: str) -> frozenset[int]:
    """argparse type for ``--cpus``: a Linux CPU list of CPUs this machine has (``0``, ``0-3,6``)."""
    try:
        cpus = parse_cpu_list(text)
    except CpuListError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    count = os.cpu_count() or 1
    if max(cpus) >= count:
        raise argparse.ArgumentTypeError(f"this machine has {count} CPUs (0-{count - 1}); got {text!r}")
    return cpus


def add_chain_options(parser: argparse.ArgumentParser, needs_key: bool = True) -> None:
    group = parser.add_argument_group("network")
    group.add_argument("--network", default=os.environ.get("P2PLLM_NETWORK", "anvil"),
                       help="deployment name: reads <network>.json from ./deployments/, else the per-user "
                            "data directory (default: anvil)")
    group.add_argument("--deployment", type=Path, help="explicit deployment file (overrides --network)")
    group.add_argument("--rpc-url", help="JSON-RPC endpoint (default: the deployment's rpc_url)")
    if needs_key:
        keys = parser.add_argument_group(f"key (one of; default: ${DEFAULT_KEY_ENV} if set)")
        keys.add_argument("--keystore", type=Path,
                          help="keystore file; password from $P2PLLM_KEYSTORE_PASSWORD or prompt")
        keys.add_argument("--private-key-env", metavar="VAR", help="environment variable holding a private key")
        keys.add_argument("--dev-account", type=int, metavar="N", help="anvil dev account N (local networks only)")


def connect(args: argparse.Namespace, needs_key: bool = True) -> Chain:
    try:
        path = find_deployment(args.network, args.deployment)
    except (DeploymentNotFound, ValueError) as exc:
        raise CliError(str(exc)) from exc
    deployment = Deployment.load(path)
    account = None
    if needs_key:
        if args.dev_account is not None and deployment.chain_id != 31337:
            raise CliError("--dev-account is only for a local anvil chain (chain id 31337)")
        key_env = args.private_key_env
        if key_env is None and args.keystore is None and args.dev_account is None and os.environ.get(DEFAULT_KEY_ENV):
            key_env = DEFAULT_KEY_ENV
        account = load_account(KeySource(keystore=args.keystore, private_key_env=key_env,
                                         dev_account=args.dev_account))
    return Chain.connect(args.rpc_url or deployment.rpc_url, account, deployment)


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def parse_non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def parse_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def fraction_parser(what: str) -> Callable[[str], float]:
    """An argparse type for a number in (0, 1]; errors name `what`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{what} must be in (0, 1], got {text!r}")
        return value

    return parse


def parse_eth(text: str) -> int:
    """'0.002' ETH -> wei (exact; rejects negatives and sub-wei precision)."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not an ETH amount: {text!r}") from exc
    wei = value * WEI_PER_ETH
    if value < 0 or wei != wei.to_integral_value():
        raise argparse.ArgumentTypeError(f"not a non-negative ETH amount with at most 18 decimals: {text!r}")
    return int(wei)


def format_eth(wei: int) -> str:
    text = f"{Decimal(wei) / WEI_PER_ETH:.18f}".rstrip("0").rstrip(".")
    return f"{text} ETH"


def format_duration(seconds: int) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    text = " ".join(f"{value}{unit}" for value, unit in parts if value)
    return text or "0s"


def format_time(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: Any = None) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)), file=out)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
