"""`p2pclient`: the client's command line, `main(argv) -> int` over the client library.

    p2pclient wallet new --keystore me.json            # password from $P2PLLM_KEYSTORE_PASSWORD or a prompt
    p2pclient deposit 0.5 --keystore me.json            # into the escrow pool; then: balance, withdraw 0.2 | --all
    p2pclient release --all                             # thaw what is reserved for nodes; later: release --execute
    p2pclient offers                                    # every offer for the model, probed: ok or why excluded
    p2pclient routes --alpha 0.3 --plot frontier.png    # the exact price/latency frontier, α's choice marked
    p2pclient generate "Once upon a time" --max-new-tokens 40 --alpha 0.5 --max-price 0.00001
    p2pclient chat --dev-account 9                      # lines from stdin until EOF or /quit

Boundary: parsing, prompting and printing only. Routing, payment, sampling and failover are calls into
`client.inference`, `client.market` and `client.frontier`; the chain is `p2pllm.chain`. Library errors become
one line `p2pclient CMD: error: ...` and exit code 1 (argument errors: argparse's usage line, exit 2); keys
and passwords are never printed or logged. torch is imported only by `generate` and `chat`.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Idle OpenMP threads sleep while the nodes compute instead of spinning on the cores they need (set before
# torch loads; see node/cli.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from eth_utils import to_checksum_address

from client.frontier import alpha_optimal, convex_hull_points, hull_alpha_ranges, pareto_frontier
from client.market import Candidate, Market, discover
from client.routing import Hop, NoRouteError, Route
from p2pllm.chain import Chain, ChainError
from p2pllm.cli_common import (
    CliError,
    add_chain_options,
    connect,
    format_duration,
    format_eth,
    format_time,
    fraction_parser,
    parse_cpus,
    parse_eth,
    parse_non_negative_float,
    parse_positive_float,
    parse_positive_int,
    print_json,
    print_table,
)
from p2pllm.cpus import pin_process
from p2pllm.keys import KeyError_, KeySource, create_keystore, import_keystore, load_account
from p2pllm.models import DEFAULT_MODEL

if TYPE_CHECKING:  # torch loads only when a command generates
    from client.inference import GenerationResult, InferenceClient, SamplingParams

log = logging.getLogger("p2pclient")

PASSWORD_ENV = KeySource().password_env
DTYPES = ["float32", "bfloat16", "float16"]


# --------------------------------------------------------------------------------------- argument types


def _unit_interval(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{what} must be a number in [0, 1], got {text!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{what} must be in [0, 1], got {text!r}")
    return value


def parse_alpha(text: str) -> float:
    """'0.3' -> 0.3, the price weight α in [0, 1] (1 = cheapest route, 0 = fastest)."""
    return _unit_interval(text, "alpha")


def parse_rate(text: str) -> float:
    """'0.02' -> 0.02, a probability in [0, 1]."""
    return _unit_interval(text, "a rate")


def parse_token_ids(text: str) -> list[int]:
    """'1,17,42' -> [1, 17, 42]."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"token ids must look like 1,17,42, got {text!r}") from exc
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"token ids must be non-negative integers like 1,17,42, got {text!r}")
    return ids


# --------------------------------------------------------------------------------------------- parser


def _add_model_options(parser: argparse.ArgumentParser, threads: bool = False) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"catalogue name or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="precision; only nodes running the same dtype are used (default float32)")
    parser.add_argument("--ca-file", type=Path, metavar="PEM",
                        help="verify nodes' https/wss certificates against this CA (default: the system's)")
    if threads:
        parser.add_argument("--threads", type=int, help="torch CPU threads for the local embeddings and LM head")
        parser.add_argument("--cpus", type=parse_cpus, metavar="LIST",
                            help="run only on these CPUs (e.g. 0 or 0-3,6), as the nodes' --cpus")


def _add_generation_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=parse_positive_int, default=max_new_tokens,
                        help=f"stop after this many new tokens (default {max_new_tokens})")
    parser.add_argument("--alpha", type=parse_alpha, default=0.5,
                        help="price weight α in [0, 1]: 1 = cheapest route, 0 = fastest (default 0.5)")
    parser.add_argument("--max-price", type=parse_eth, metavar="ETH",
                        help="refuse a route dearer than this many ETH per token")
    parser.add_argument("--temperature", type=parse_non_negative_float, default=0.0,
                        help="sampling temperature; 0 = greedy (default 0)")
    parser.add_argument("--top-p", type=fraction_parser("top-p"), default=1.0,
                        help="nucleus sampling mass in (0, 1] (default 1)")
    parser.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    parser.add_argument("--transport", choices=["relay", "star"], default="relay",
                        help="relay: each node pushes its output to the next (default); star: the client feeds "
                             "every node itself, for nodes that cannot reach each other")
    parser.add_argument("--step-timeout", type=parse_positive_float, default=15.0, metavar="S",
                        help="a hop silent this long on a step (plus 0.05 s per token) is probed, then rerouted "
                             "(default 15)")
    parser.add_argument("--reserve-ahead", type=parse_positive_int, default=4, metavar="N",
                        help="when a node's reservation falls short, reserve N sessions' worth for it, so that "
                             "later generations need no transaction (default 4)")
    parser.add_argument("--no-deposit", dest="allow_deposit", action="store_false",
                        help="reserve for the route's nodes only from the escrow pool; by default what the pool "
                             "lacks is deposited from the wallet in the same transaction")
    _add_verification_options(parser)


def _add_verification_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verification")
    group.add_argument("--verify-rate", type=parse_rate, default=0.02, metavar="Q",
                       help="after each step, check each hop with probability Q by replaying its inputs on an "
                            "independent node serving the same layers, paid as usual (default 0.02; 0 = only "
                            "commitments are checked)")
    group.add_argument("--verify-local", action="store_true",
                       help="replay checks on this machine's own copy of the hop's layers instead of a second node")
    group.add_argument("--reputation", type=Path, metavar="FILE",
                       help="verdicts store; routing leaves out every node in it (default: reputation.sqlite in "
                            "the per-user data directory)")
    group.add_argument("--no-report", dest="report_equivocation", action="store_false",
                       help="do not report an equivocating node on-chain (by default the client sends the proof, "
                            "which slashes the node's bond and pays this wallet part of it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pclient",
                                     description="Run LLM inference on P2P-LLM, paying each node per token.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    wallet = sub.add_parser("wallet", help="create, import or show an encrypted keystore")
    actions = wallet.add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="create a new key in a keystore file (prints its address)")
    new.add_argument("--keystore", type=Path, required=True,
                     help=f"file to create (mode 0600); password from ${PASSWORD_ENV} or a prompt (twice)")
    imported = actions.add_parser("import", help="encrypt an existing private key into a keystore file")
    imported.add_argument("--keystore", type=Path, required=True,
                          help=f"file to create (mode 0600); password from ${PASSWORD_ENV} or a prompt (twice)")
    imported.add_argument("--private-key-env", metavar="VAR",
                          help="environment variable holding the private key (default: a hidden prompt)")
    address = actions.add_parser("address", help="print a keystore's address (no password needed)")
    address.add_argument("--keystore", type=Path, required=True, help="keystore file")

    deposit = sub.add_parser("deposit", help="move ETH from the wallet into the payment escrow")
    deposit.add_argument("amount", type=parse_eth, metavar="AMOUNT", help="ETH to deposit, e.g. 0.5")
    deposit.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(deposit)

    balance = sub.add_parser("balance", help="wallet ETH, the escrow pool, and what is reserved for each node")
    balance.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(balance)

    withdraw = sub.add_parser("withdraw", help="send ETH from the escrow pool back to the wallet, at once",
                              description="The pool holds what is not reserved for any node, so it is withdrawn at "
                                          "once. Funds reserved for nodes come back to the pool with `release`.")
    what = withdraw.add_mutually_exclusive_group(required=True)
    what.add_argument("amount", type=parse_eth, nargs="?", metavar="AMOUNT", help="ETH to withdraw from the pool")
    what.add_argument("--all", action="store_true", help="withdraw the whole pool")
    withdraw.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(withdraw)

    release = sub.add_parser("release", help="return funds reserved for nodes to the pool (after a thaw)",
                             description="What is reserved for a node stays claimable by it until a release has "
                                         "thawed (longer than any receipt stays valid): request one, then "
                                         "--execute it once the thaw is over; --cancel drops a request. Without "
                                         "NODE addresses, every node with a reservation is meant.")
    release.add_argument("nodes", nargs="*", metavar="NODE", help="node addresses (default: all reserved for)")
    mode = release.add_mutually_exclusive_group()
    mode.add_argument("--amount", type=parse_eth, metavar="ETH",
                      help="release only this much from each node (default: all of it)")
    mode.add_argument("--execute", action="store_true", help="move every thawed release into the pool")
    mode.add_argument("--cancel", action="store_true", help="drop the pending release requests")
    release.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(release)

    offers = sub.add_parser("offers", help="the registry's offers for a model, probed: ok or why excluded")
    _add_model_options(offers)
    offers.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(offers, needs_key=False)

    routes = sub.add_parser("routes", help="the exact price/latency Pareto frontier of routes")
    _add_model_options(routes)
    routes.add_argument("--alpha", type=parse_alpha, default=0.5,
                        help="mark the α-optimal route: 1 = cheapest, 0 = fastest (default 0.5)")
    routes.add_argument("--plot", type=Path, metavar="PNG", help="also draw the frontier, hull and α choice")
    routes.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(routes, needs_key=False)

    generate = sub.add_parser("generate", help="stream a completion, paying every hop; then route, cost, timing")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("prompt", nargs="?", help="prompt text (needs a model with a tokenizer)")
    prompt.add_argument("--prompt-ids", type=parse_token_ids, metavar="IDS",
                        help="prompt as token ids, e.g. 1,17,42 (for models without a tokenizer)")
    _add_generation_options(generate, max_new_tokens=64)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    generate.add_argument("--ignore-eos", action="store_true", help="keep going past end-of-sequence tokens")
    generate.add_argument("--json", action="store_true",
                          help="print one JSON object (text, token ids, route, per-hop costs in wei, timings)")
    _add_model_options(generate, threads=True)
    add_chain_options(generate)

    chat = sub.add_parser("chat", help="an interactive conversation: one line per turn, /quit or EOF to stop",
                          description="Reads one message per line from stdin (a terminal or a pipe) until EOF or "
                                      "/quit; /reset starts over. Each answer streams to stdout, its cost goes to "
                                      "stderr. Every turn resends the whole conversation, so it is paid again.")
    _add_generation_options(chat, max_new_tokens=256)
    chat.add_argument("--system", metavar="TEXT", help="a system message to start the conversation with")
    _add_model_options(chat, threads=True)
    add_chain_options(chat)

    serve = sub.add_parser("serve-api", help="an OpenAI-compatible API and a page of the network, on one client",
                           description="A long-running client: keeps the model's head loaded and the market "
                                       "fresh, and serves /v1/models, /v1/chat/completions and /v1/completions "
                                       "(SSE streaming or whole), each request a paid session of its own, and a "
                                       "page of the network at /.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free one)")
    serve.add_argument("--alpha", type=parse_alpha, default=0.5,
                       help="price weight α in [0, 1] for every request: 1 = cheapest route, 0 = fastest (default 0.5)")
    serve.add_argument("--max-price", type=parse_eth, metavar="ETH", help="refuse routes dearer than this per token")
    serve.add_argument("--budget", type=parse_eth, metavar="ETH",
                       help="stop serving once this much has been spent (default: no limit)")
    serve.add_argument("--api-key-env", metavar="VAR",
                       help="require `Authorization: Bearer <key>` with the key from this environment variable")
    serve.add_argument("--refresh-s", type=parse_positive_float, default=30.0, metavar="S",
                       help="re-read and re-probe the market every S seconds (default 30)")
    serve.add_argument("--max-tokens", type=parse_positive_int, default=256, metavar="N",
                       help="completion tokens when a chat request gives no max_tokens (default 256)")
    serve.add_argument("--transport", choices=["relay", "star"], default="relay", help="as for generate")
    serve.add_argument("--step-timeout", type=parse_positive_float, default=15.0, metavar="S", help="as for generate")
    serve.add_argument("--reserve-ahead", type=parse_positive_int, default=4, metavar="N", help="as for generate")
    serve.add_argument("--no-deposit", dest="allow_deposit", action="store_false", help="as for generate")
    _add_verification_options(serve)
    _add_model_options(serve, threads=True)
    add_chain_options(serve)
    return parser


# ----------------------------------------------------------------------------------------- formatting


def short_address(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def format_hops(hops: Sequence[Hop]) -> str:
    return " → ".join(f"{short_address(h.node)}[{h.start},{h.end})" for h in hops)


def _route_json(route: Route) -> dict[str, Any]:
    return {"price_wei_per_token": route.price_wei_per_token, "latency_ms": route.latency_ms,
            "hops": [{"offer_id": h.offer_id, "node": h.node, "layers": [h.start, h.end],
                      "price_wei_per_token": h.price_wei_per_token, "latency_ms": h.latency_ms} for h in route.hops]}


# --------------------------------------------------------------------------------------------- wallet


def _new_password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        if not os.isatty(0):
            raise KeyError_(f"no password: set {PASSWORD_ENV} or run in a terminal to be prompted")
        password = getpass.getpass("new keystore password: ")
        if getpass.getpass("repeat the password: ") != password:
            raise KeyError_("the passwords do not match")
    if not password:
        raise KeyError_("refusing an empty keystore password")
    return password


def _private_key(env: str | None) -> str:
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise KeyError_(f"environment variable {env} is not set")
        return value
    if not os.isatty(0):
        raise KeyError_("no private key: pass --private-key-env VAR or run in a terminal to be prompted")
    return getpass.getpass("private key (hidden): ")


def keystore_address(path: Path) -> str:
    """The address a keystore file names; decrypted (password needed) only if the file does not say."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read keystore {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("address"), str):
        try:
            return to_checksum_address("0x" + data["address"].removeprefix("0x"))
        except ValueError as exc:
            raise KeyError_(f"keystore {path} holds a malformed address") from exc
    return load_account(KeySource(keystore=path)).address


def cmd_wallet(args: argparse.Namespace) -> int:
    if args.wallet_command == "address":
        print(keystore_address(args.keystore))
        return 0
    if args.keystore.exists():  # checked first, so no secret is asked for in vain
        raise KeyError_(f"{args.keystore} already exists; refusing to overwrite a key")
    if args.wallet_command == "new":
        address = create_keystore(args.keystore, _new_password())
    else:
        private_key = _private_key(args.private_key_env)
        address = import_keystore(args.keystore, private_key, _new_password())
    print(address)
    print(f"keystore written to {args.keystore} (mode 0600); keep it and its password safe", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- escrow


def balances(chain: Chain) -> dict[str, Any]:
    """The account's on-chain position: wallet ETH, the escrow pool, and each allocation with its release."""
    address = chain.address
    now = chain.block_timestamp()
    allocations = []
    for node in chain.allocated_nodes(address):
        allocation = chain.allocation_of(address, node)
        if allocation.amount_wei or allocation.ready_at:
            allocations.append({"node": node, "reserved_wei": allocation.amount_wei,
                                "thawing_wei": min(allocation.thawing_wei, allocation.amount_wei),
                                "thaw_ready_at": allocation.ready_at or None,
                                "thaw_ready_in_s": max(0, allocation.ready_at - now) if allocation.ready_at else None})
    return {"address": address, "wallet_wei": chain.eth_balance(address), "pool_wei": chain.pool_balance(address),
            "reserved_wei": sum(a["reserved_wei"] for a in allocations), "allocations": allocations}


def _thaw_text(allocation: dict[str, Any]) -> str:
    if allocation["thaw_ready_at"] is None:
        return "-"
    if allocation["thaw_ready_in_s"] > 0:
        return (f"{format_eth(allocation['thawing_wei'])} from {format_time(allocation['thaw_ready_at'])} "
                f"(in {format_duration(allocation['thaw_ready_in_s'])})")
    return f"{format_eth(allocation['thawing_wei'])} ready: `p2pclient release --execute`"


def print_balances(data: dict[str, Any]) -> None:
    print(f"address   {data['address']}")
    print(f"wallet    {format_eth(data['wallet_wei'])}")
    print(f"pool      {format_eth(data['pool_wei'])} (free: withdraw at once, or reserved for nodes as you generate)")
    print(f"reserved  {format_eth(data['reserved_wei'])} for {len(data['allocations'])} node(s)")
    if data["allocations"]:
        print()
        print_table(["node", "reserved", "release"],
                    [(a["node"], format_eth(a["reserved_wei"]), _thaw_text(a)) for a in data["allocations"]])


def _report(args: argparse.Namespace, chain: Chain, action: str, line: str, tx_hash: str, amount_wei: int) -> None:
    data = balances(chain)
    if args.json:
        print_json({"action": action, "tx_hash": tx_hash, "amount_wei": amount_wei, **data})
        return
    print(line)
    print(f"tx        {tx_hash}")
    print_balances(data)


def cmd_deposit(args: argparse.Namespace) -> int:
    if args.amount == 0:
        raise CliError("deposit a positive amount")
    chain = connect(args)
    tx = chain.deposit(args.amount)
    _report(args, chain, "deposit", f"deposited {format_eth(args.amount)} into the pool", tx.tx_hash, args.amount)
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    data = balances(connect(args))
    if args.json:
        print_json(data)
    else:
        print_balances(data)
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    chain = connect(args)
    pool = chain.pool_balance(chain.address)
    amount = pool if args.all else args.amount
    if amount == 0:
        raise CliError("the pool is empty (funds reserved for nodes come back with `p2pclient release`)" if args.all
                       else "withdraw a positive amount")
    if amount > pool:
        raise CliError(f"cannot withdraw {format_eth(amount)}: the pool holds {format_eth(pool)} (funds reserved "
                       "for nodes come back with `p2pclient release`)")
    tx = chain.withdraw(amount)
    _report(args, chain, "withdraw", f"withdrew {format_eth(amount)} to the wallet", tx.tx_hash, amount)
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    chain = connect(args)
    address = chain.address
    chosen = [to_checksum_address(n) for n in args.nodes] if args.nodes else chain.allocated_nodes(address)
    allocations = {node: chain.allocation_of(address, node) for node in chosen}
    if args.cancel:
        nodes = [n for n, a in allocations.items() if a.ready_at]
        if not nodes:
            raise CliError("no release request to cancel")
        tx = chain.cancel_release(nodes)
        _report(args, chain, "cancel", f"cancelled the release requests for {len(nodes)} node(s)", tx.tx_hash, 0)
        return 0
    if args.execute:
        now = chain.block_timestamp()
        requested = {n: a for n, a in allocations.items() if a.ready_at}
        if not requested:
            raise CliError("no release requested: run `p2pclient release` (or with NODE addresses) first")
        ready = [n for n, a in requested.items() if a.ready_at <= now]
        if not ready:
            soonest = min(a.ready_at for a in requested.values())
            raise CliError(f"still thawing: the first release is ready in {format_duration(soonest - now)} "
                           f"(at {format_time(soonest)})")
        amount, tx = chain.release(ready)
        waiting = len(requested) - len(ready)
        _report(args, chain, "release", f"moved {format_eth(amount)} from {len(ready)} node(s) into the pool"
                + (f"; {waiting} still thawing" if waiting else ""), tx.tx_hash, amount)
        return 0
    if args.amount == 0:
        raise CliError("release a positive amount")
    amounts = {n: (a.amount_wei if args.amount is None else args.amount) for n, a in allocations.items()}
    too_much = [n for n, a in allocations.items() if amounts[n] > a.amount_wei and args.amount is not None]
    if too_much:
        raise CliError(f"cannot release {format_eth(args.amount)} from {too_much[0]}: it holds "
                       f"{format_eth(allocations[too_much[0]].amount_wei)}")
    nodes = [n for n in chosen if amounts[n] > 0]
    if not nodes:
        raise CliError("nothing is reserved for " + ("these nodes" if args.nodes else "any node"))
    replaced = [n for n in nodes if allocations[n].ready_at]
    if replaced:
        print(f"note: replaces {len(replaced)} pending request(s) and restarts their thaw", file=sys.stderr)
    tx = chain.request_release(nodes, [amounts[n] for n in nodes])
    ready_at = chain.allocation_of(address, nodes[0]).ready_at
    total = sum(amounts[n] for n in nodes)
    _report(args, chain, "request", f"releasing {format_eth(total)} from {len(nodes)} node(s); "
                                    f"`p2pclient release --execute` from {format_time(ready_at)}", tx.tx_hash, total)
    return 0


# --------------------------------------------------------------------------------------------- market


def load_market(chain: Chain, model: str, dtype: str, ca_file: Path | None = None) -> Market:
    """The registry's offers for `model`, probed as `InferenceClient.market` does (no key, no weights)."""
    from p2pllm.model_id import model_id
    from p2pllm.models import resolve_model

    source = resolve_model(model)
    mid = model_id(source.path)
    return discover(chain.live_offers(mid), mid, source.num_layers, chain.chain_id, chain.escrow_domain().escrow,
                    dtype, chain.block_timestamp(), ca_file=ca_file)


def no_route_message(exc: NoRouteError, market: Market) -> str:
    hint = f"; {len(market.excluded)} offer(s) excluded, see `p2pclient offers`" if market.excluded else ""
    return f"{exc}{hint}"


def cmd_offers(args: argparse.Namespace) -> int:
    market = load_market(connect(args, needs_key=False), args.model, args.dtype, args.ca_file)
    rows: list[tuple[Any, Candidate | None, str]] = [(c.offer, c, "ok") for c in market.candidates]
    rows += [(e.offer, None, e.reason) for e in market.excluded]
    rows.sort(key=lambda r: (r[0].start, r[0].end, r[0].price_wei_per_token, r[0].offer_id))
    if args.json:
        print_json({"model_id": "0x" + market.model_id.hex(), "num_layers": market.num_layers, "offers": [
            {"offer_id": o.offer_id, "node": o.node, "layers": [o.start, o.end],
             "price_wei_per_token": o.price_wei_per_token, "endpoint": o.endpoint, "expires_at": o.expires_at,
             "live": c is not None, "status": status, "rtt_ms": c.rtt_ms if c else None,
             "compute_ms_per_layer": c.compute_ms_per_layer if c else None} for o, c, status in rows]})
        return 0
    print_table(["offer", "node", "layers", "price/token", "endpoint", "liveness", "rtt ms", "compute ms/layer"],
                [(o.offer_id, short_address(o.node), f"{o.start}-{o.end}", format_eth(o.price_wei_per_token),
                  o.endpoint, status, f"{c.rtt_ms:.1f}" if c else "-", f"{c.compute_ms_per_layer:g}" if c else "-")
                 for o, c, status in rows])
    print(f"\nmodel {args.model} (id 0x{market.model_id.hex()[:12]}…, {market.num_layers} layers): "
          f"{len(market.candidates)} live offer(s), {len(market.excluded)} excluded")
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    market = load_market(connect(args, needs_key=False), args.model, args.dtype, args.ca_file)
    try:
        frontier = pareto_frontier(market.route_offers(), market.num_layers)
    except NoRouteError as exc:
        raise CliError(no_route_message(exc, market)) from exc
    chosen = alpha_optimal(frontier, args.alpha)
    hull = convex_hull_points(frontier)
    alpha_range = dict(zip(hull, hull_alpha_ranges(hull), strict=True))
    if args.plot is not None:
        from client.plot import plot_frontier

        plot_frontier(args.plot, frontier, hull, chosen, args.alpha,
                      f"{Path(args.model).name}: {len(frontier)} Pareto-optimal route(s) over "
                      f"{len(market.candidates)} live offer(s)")
    if args.json:
        print_json({"alpha": args.alpha, "chosen": frontier.index(chosen), "plot": args.plot, "frontier": [
            {**_route_json(r), "on_hull": r in alpha_range, "alpha_range": alpha_range.get(r)} for r in frontier],
            "excluded": [{"offer_id": e.offer.offer_id, "reason": e.reason} for e in market.excluded]})
        return 0
    print_table(["", "#", "price/token", "latency ms/token", "α range", "hops"],
                [("*" if r == chosen else "", n, format_eth(r.price_wei_per_token), f"{r.latency_ms:.1f}",
                  "{:.3g}–{:.3g}".format(*alpha_range[r]) if r in alpha_range else "-", format_hops(r.hops))
                 for n, r in enumerate(frontier, start=1)])
    print(f"\n* the α={args.alpha:g} route (what `generate --alpha {args.alpha:g}` takes); α range: where a point "
          "on the convex hull is α-optimal (1 = cheapest, 0 = fastest)")
    if market.excluded:
        print(f"{len(market.excluded)} offer(s) excluded, see `p2pclient offers`")
    if args.plot is not None:
        print(f"plot written to {args.plot}")
    return 0


# ----------------------------------------------------------------------------------------- generation


@contextmanager
def inference_client(args: argparse.Namespace) -> Iterator[InferenceClient]:
    """A funded `InferenceClient` for the command's chain, model and key; closed afterwards."""
    from client.inference import InferenceClient
    from client.reputation import ReputationStore

    if args.cpus:
        pin_process(args.cpus)
    client = InferenceClient(connect(args), args.model, args.dtype, threads=args.threads,
                             allow_deposit=args.allow_deposit, transport=args.transport, ca_file=args.ca_file,
                             step_timeout_s=args.step_timeout, reserve_ahead=args.reserve_ahead,
                             verify_rate=args.verify_rate, verify_local=args.verify_local,
                             reputation=ReputationStore(args.reputation) if args.reputation else None,
                             report_equivocation=args.report_equivocation)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def generation_errors(client: InferenceClient, alpha: float, result: GenerationResult) -> Iterator[None]:
    """Turn the library's routing, payment and failover errors into one-line `CliError`s."""
    from client.funding import InsufficientPool
    from client.hops import HopRejected
    from client.session import FailoverExhausted, RouteTooExpensive

    try:
        yield
    except NoRouteError as exc:
        raise CliError(no_route_message(exc, client.market())) from exc
    except RouteTooExpensive as exc:
        raise CliError(f"no route within --max-price {format_eth(exc.max_price_wei_per_token)}/token: the best "
                       f"available costs {format_eth(exc.price_wei_per_token)}/token{_spent(result)}") from exc
    except InsufficientPool as exc:
        raise CliError(f"the route needs {format_eth(exc.shortfall_wei)} more reserved for its nodes, the escrow "
                       f"pool holds {format_eth(exc.pool_wei)}: `p2pclient deposit` more, or drop --no-deposit to "
                       "take it from the wallet") from exc
    except (FailoverExhausted, HopRejected) as exc:
        raise CliError(f"{exc}{_spent(result)}") from exc


def _spent(result: GenerationResult) -> str:
    cost = result.total_cost_wei
    return f" (after {len(result.token_ids)} token(s), {format_eth(cost)} owed)" if cost else ""


def _sampling(args: argparse.Namespace) -> SamplingParams:
    from client.inference import SamplingParams

    return SamplingParams(args.temperature, args.top_p, args.seed)


def _require_tokenizer(client: InferenceClient, what: str, chat: bool) -> None:
    tokenizer = client.head.tokenizer
    if tokenizer is None:
        raise CliError(f"model {client.source.name} has no tokenizer: {what} needs one "
                       "(use --prompt-ids with generate)")
    if chat and not getattr(tokenizer, "chat_template", None):
        raise CliError(f"model {client.source.name} has no chat template: {what} needs one")


def stream(client: InferenceClient, prompt_ids: list[int], args: argparse.Namespace, result: GenerationResult,
           stop_at_eos: bool = True, echo: bool = True) -> None:
    """Run one generation, writing each token's text to stdout as it arrives (token ids without a tokenizer)."""
    as_ids = client.head.tokenizer is None
    with generation_errors(client, args.alpha, result):
        for event in client.generate(prompt_ids, args.max_new_tokens, args.alpha, args.max_price, _sampling(args),
                                     result=result, stop_at_eos=stop_at_eos):
            if echo:
                sys.stdout.write(f"{event.token_id} " if as_ids else event.text)
                sys.stdout.flush()


def result_json(result: GenerationResult, alpha: float) -> dict[str, Any]:
    return {
        "text": result.text,
        "token_ids": result.token_ids,
        "prompt_tokens": result.prompt_tokens,
        "alpha": alpha,
        "route": _route_json(result.route) if result.route is not None else None,
        "hops": [{"node": h.node, "endpoint": h.endpoint, "offer_id": h.offer_id, "layers": list(h.layers),
                  "tokens": h.tokens, "price_wei_per_token": h.price_wei_per_token, "cost_wei": h.cost_wei,
                  "signed_wei": h.signed_wei, "failed": h.failed, "check": h.check,
                  "session_id": "0x" + h.session_id.hex()}
                 for h in result.hops],
        "total_cost_wei": result.total_cost_wei,
        "reservations": [{"nodes": list(r.nodes), "amounts_wei": list(r.amounts_wei), "deposit_wei": r.deposit_wei,
                          "tx_hash": r.tx_hash} for r in result.reservations],
        "failovers": [{"node": f.node, "layers": list(f.span), "reason": f.reason,
                       "replacement": [{"offer_id": h.offer_id, "node": h.node, "layers": [h.start, h.end]}
                                       for h in f.replacement],
                       "replayed_tokens": f.replayed_tokens} for f in result.failovers],
        "verification": dataclasses.asdict(result.verification) if result.verification is not None else None,
        "equivocations": [p.node for p in result.equivocations],
        "slash_reports": result.slash_reports,
        "timings": {"ttft_s": result.ttft_s, "total_s": result.total_s, "tokens_per_s": result.tokens_per_s,
                    "signing_s": result.signing_s,
                    "signing_share": result.signing_s / result.total_s if result.total_s > 0 else 0.0},
    }


def print_summary(result: GenerationResult, out: Any) -> None:
    """Route, per-hop tokens and costs, failovers, total cost and timing, for people."""
    if result.route is not None:
        print(f"route     {format_hops(result.route.hops)}  ({format_eth(result.route.price_wei_per_token)}/token, "
              f"~{result.route.latency_ms:.1f} ms/token estimated)", file=out)
    print_table(["hop", "node", "layers", "offer", "tokens", "price/token", "cost", "signed", ""],
                [(n, short_address(h.node), f"{h.layers[0]}-{h.layers[1]}", h.offer_id, h.tokens,
                  format_eth(h.price_wei_per_token), format_eth(h.cost_wei), format_eth(h.signed_wei),
                  "check" if h.check else "failed" if h.failed else "") for n, h in enumerate(result.hops, start=1)],
                out=out)
    for r in result.reservations:
        print(f"reserved  {format_eth(r.total_wei)} for {len(r.nodes)} node(s) in one transaction"
              + (f", {format_eth(r.deposit_wei)} of it deposited from the wallet" if r.deposit_wei else "")
              + " (`p2pclient balance` shows it; `release` returns what is left)", file=out)
    for f in result.failovers:
        print(f"failover  {short_address(f.node)} on layers [{f.span[0]},{f.span[1]}) ({f.reason}) → "
              f"{format_hops(f.replacement)}, replayed {f.replayed_tokens} token(s)", file=out)
    print(f"total     {format_eth(result.total_cost_wei)} for {len(result.token_ids)} new token(s) "
          f"(prompt {result.prompt_tokens}); {len(result.failovers)} failover(s)", file=out)
    if result.verification is not None:
        v = result.verification
        print(f"verify    {v.commitments_verified} signed commitment(s) checked; {v.checks} spot check(s): "
              f"{v.agreed} agreed, {v.disagreed} disagreed, {v.unverifiable} without an independent node"
              + (f", {v.failed} checker(s) failed" if v.failed else ""), file=out)
        for verdict in v.verdicts:
            print(f"verdict   {verdict}", file=out)
        for tx in result.slash_reports:
            print(f"reported  equivocation on-chain (tx {tx})", file=out)
    share = 100 * result.signing_s / result.total_s if result.total_s > 0 else 0.0
    print(f"timing    ttft {result.ttft_s:.3f} s, {result.tokens_per_s:.1f} tok/s, total {result.total_s:.3f} s, "
          f"signing {share:.1f}% of it", file=out)


def cmd_generate(args: argparse.Namespace) -> int:
    from client.inference import GenerationResult

    if args.chat and args.prompt_ids is not None:
        raise CliError("--chat needs a text prompt, not --prompt-ids")
    with inference_client(args) as client:
        if args.prompt_ids is not None:
            prompt_ids = args.prompt_ids
        else:
            _require_tokenizer(client, "a text prompt", args.chat)
            prompt_ids = client.prompt_ids(args.prompt, args.chat)
        result = GenerationResult(len(prompt_ids))
        stream(client, prompt_ids, args, result, stop_at_eos=not args.ignore_eos, echo=not args.json)
    if args.json:
        print_json(result_json(result, args.alpha))
        return 0
    print()
    print(file=sys.stderr)
    print_summary(result, sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from client.inference import GenerationResult

    interactive = os.isatty(0)
    failed = False
    spent_wei = 0
    with inference_client(args) as client:
        _require_tokenizer(client, "chat", chat=True)
        start = [{"role": "system", "content": args.system}] if args.system else []
        messages = list(start)
        if interactive:
            print(f"chatting with {args.model} at α={args.alpha:g}; /reset starts over, /quit or Ctrl-D leaves",
                  file=sys.stderr)
        while True:
            if interactive:
                print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                messages = list(start)
                continue
            if not text:
                continue
            messages.append({"role": "user", "content": text})
            prompt_ids = client.head.encode_chat(messages)
            result = GenerationResult(len(prompt_ids))
            try:
                stream(client, prompt_ids, args, result)
            except (CliError, ChainError, ValueError) as exc:
                print(f"\np2pclient chat: error: {exc}", file=sys.stderr)
                messages.pop()
                failed = True
                continue
            except KeyboardInterrupt:
                print("\n[interrupted; this turn is dropped]", file=sys.stderr)
                messages.pop()
                continue
            print()
            messages.append({"role": "assistant", "content": result.text})
            spent_wei += result.total_cost_wei
            print(f"[{result.prompt_tokens} prompt + {len(result.token_ids)} new tokens, "
                  f"{format_eth(result.total_cost_wei)} via {format_hops(result.route.hops) if result.route else '-'}; "
                  f"{result.tokens_per_s:.1f} tok/s; conversation {format_eth(spent_wei)}]", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------- main


def cmd_serve_api(args: argparse.Namespace) -> int:
    import uvicorn

    from client.gateway import GatewaySettings, GatewayState, create_gateway

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise CliError(f"--api-key-env {args.api_key_env}: the variable is not set or empty")
    with inference_client(args) as client:
        print(f"[p2pclient] {client.source.name}: reading the market ...", file=sys.stderr, flush=True)
        market = client.market()
        print(f"[p2pclient] {len(market.candidates)} live offer(s), {len(market.excluded)} excluded",
              file=sys.stderr, flush=True)
        settings = GatewaySettings(args.model, args.alpha, args.max_price, args.budget, api_key, args.refresh_s,
                                   args.max_tokens)
        app = create_gateway(GatewayState(client, settings))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((args.host, args.port))
        except OSError as exc:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
        sock.listen(512)
        host, port = sock.getsockname()[:2]
        print(f"READY http://{host}:{port} model={args.model}", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        server.run(sockets=[sock])
    return 0


COMMANDS = {"wallet": cmd_wallet, "deposit": cmd_deposit, "balance": cmd_balance, "withdraw": cmd_withdraw,
            "release": cmd_release, "offers": cmd_offers, "routes": cmd_routes, "generate": cmd_generate,
            "chat": cmd_chat, "serve-api": cmd_serve_api}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    name = f"wallet {args.wallet_command}" if args.command == "wallet" else args.command
    try:
        return COMMANDS[args.command](args)
    except (CliError, ChainError, KeyError_, NoRouteError, ValueError, LookupError, OSError) as exc:
        print(f"p2pclient {name}: error: {exc}", file=sys.stderr)
        return 1
    except EOFError:  # Ctrl-D at a password or key prompt
        print(f"\np2pclient {name}: error: input ended", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
