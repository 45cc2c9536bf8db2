"""`p2pnode`: the node operator's command line, `main(argv) -> int` over the node library.

    p2pnode register --layers 8-16 --price 0.002 --endpoint http://my.host:8000 --dev-account 1 [--bond 0.05]
    p2pnode serve --layers 8-16 --price 0.002 --port 8000 --dev-account 1 [--bond 0.05]
    p2pnode set-price --offer-id 3 --price 0.001 | deregister --offer-id 3 | claim | status [--json]
    p2pnode bond [--withdraw]                           # the bond and its thaw; --withdraw: request, then withdraw
    p2pnode prune --model smollm2-135m                  # anyone: remove offers expired more than a day ago
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: several nodes (and clients) often share one machine, and a
# spinning idle team steals the cores the busy process in the pipeline needs. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from node.claimer import Claimer, ClaimPolicy
from node.ledger import Ledger
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
    parse_positive_int,
    print_json,
    print_table,
)
from p2pllm.keys import KeyError_
from p2pllm.models import DEFAULT_MODEL


def parse_layers(text: str) -> tuple[int, int]:
    """'8-16' -> (8, 16), the half-open range [8, 16)."""
    try:
        start_text, end_text = text.split("-")
        start, end = int(start_text), int(end_text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"layers must look like 8-16 (half-open [8, 16)), got {text!r}") from exc
    if not 0 <= start < end:
        raise argparse.ArgumentTypeError(f"layer range must satisfy 0 <= start < end, got {text!r}")
    return start, end


def _layers_or_auto(text: str) -> tuple[int, int] | str:
    return "auto" if text == "auto" else parse_layers(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pnode", description="Serve layers of an LLM for pay on P2P-LLM.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register = sub.add_parser("register", help="put an offer for a layer range on-chain")
    register.add_argument("--layers", type=_layers_or_auto, required=True,
                          help="half-open range START-END, e.g. 8-16, or 'auto' (with --num-layers)")
    register.add_argument("--num-layers", type=int, help="with --layers auto: how many layers to serve")
    register.add_argument("--compute-ms-per-layer", type=float, default=1.0,
                          help="with --layers auto: this node's compute time per layer, for the revenue estimate")
    register.add_argument("--price", type=parse_eth, required=True, help="ETH per token through this range")
    register.add_argument("--model", default=DEFAULT_MODEL, help=f"catalogue name or folder (default {DEFAULT_MODEL})")
    register.add_argument("--endpoint", default="http://127.0.0.1:8000", help="public URL clients will call")
    register.add_argument("--bond", type=parse_eth, metavar="ETH",
                          help="ETH to add to this node's bond with the registration (default: what it lacks of the "
                               "deployment's minimum, 0 once bonded)")
    register.add_argument("--json", action="store_true", help="machine-readable output")
    add_chain_options(register)

    serve = sub.add_parser("serve", help="load the shard, serve it over HTTP, heartbeat and claim")
    serve.add_argument("--layers", type=parse_layers, required=True, help="half-open range START-END")
    serve.add_argument("--price", type=parse_eth, required=True, help="ETH per token through this range")
    serve.add_argument("--model", default=DEFAULT_MODEL, help=f"catalogue name or folder (default {DEFAULT_MODEL})")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    serve.add_argument("--endpoint", help="public URL to advertise (default http://HOST:PORT)")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    serve.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    serve.add_argument("--data-dir", type=Path, default=Path(".p2pnode"), help="where the receipt ledger lives")
    serve.add_argument("--ledger-sync", choices=["normal", "full"], default="normal",
                       help="receipt ledger durability: normal survives a process crash; full also an OS crash "
                            "(an fsync per request)")
    serve.add_argument("--budget-tokens", type=int, default=8192, help="KV-cache budget in tokens")
    serve.add_argument("--max-batch", type=parse_positive_int, default=32,
                       help="most sessions' decode steps run as one batched forward (default 32; 1 = no batching)")
    serve.add_argument("--batch-wait-ms", type=parse_non_negative_float, default=100.0,
                       help="a step from a client waits at most this long for a wave of the other active "
                            "sessions' steps (default 100; one active session never waits)")
    serve.add_argument("--relay-wait-ms", type=parse_non_negative_float, default=10.0,
                       help="a step relayed by another node waits at most this long for the rest of its "
                            "upstream batch (default 10)")
    serve.add_argument("--wave-fraction", type=fraction_parser("wave fraction"), default=0.5,
                       help="a round starts once this fraction of the active sessions have a step ready "
                            "(default 0.5: two alternating waves; 1 = one wave of all)")
    serve.add_argument("--prefill-chunk", type=parse_positive_int, default=128,
                       help="prompts are computed in chunks of this many tokens, between decode batches; "
                            "fresh sessions' prompts that fit one chunk together (count x longest) run as one "
                            "forward (default 128)")
    serve.add_argument("--max-session-length", type=int, default=2048, help="longest session accepted")
    serve.add_argument("--credit", type=parse_eth, default=0,
                       help="ETH a receipt may lag behind what is owed; clients sign up to this much ahead "
                            "(default 0)")
    serve.add_argument("--claim-min", type=parse_eth, default=10**15, help="claim once this much ETH is held")
    serve.add_argument("--claim-max-age", type=float, default=300.0, help="or once a receipt is this old (s)")
    serve.add_argument("--claim-interval", type=float, default=5.0, help="how often to check (s)")
    serve.add_argument("--threads", type=parse_positive_int,
                       help="torch CPU threads of the compute worker (default: the CPUs allowed, less one)")
    serve.add_argument("--cpus", type=parse_cpus, metavar="LIST",
                       help="run only on these CPUs (e.g. 0 or 0-3,6); several nodes and a client on one small "
                            "host serve a route fastest all on one core (see README)")
    serve.add_argument("--advertise-compute-ms", type=float, metavar="MS_PER_LAYER",
                       help="compute time per layer to advertise in /info (default: measured at start-up)")
    serve.add_argument("--min-session-reserve", type=parse_eth, metavar="ETH",
                       help="open a session only for a client that reserved at least this much for this node "
                            "beyond what it already owes it (default: one token at the current price)")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM",
                       help="serve https/wss with this certificate chain (with --tls-key); the advertised "
                            "endpoint becomes https://")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    serve.add_argument("--ca-file", type=Path, metavar="PEM",
                       help="verify the next hop's wss certificate against this CA (default: the system's)")
    serve.add_argument("--no-register", dest="register", action="store_false",
                       help="require an existing offer instead of registering one")
    serve.add_argument("--bond", type=parse_eth, metavar="ETH",
                       help="when registering: ETH to add to this node's bond (default: what it lacks of the "
                            "deployment's minimum, 0 once bonded)")
    serve.add_argument("--auto-price", action="store_true", help="let the pricing agent set the on-chain price")
    serve.add_argument("--auto-price-interval", type=float, default=30.0, help="seconds between pricing steps")
    serve.add_argument("--auto-price-threshold", type=float, default=0.02,
                       help="update on-chain only if the price moves by more than this fraction")
    serve.add_argument("--auto-price-min-gap", type=float, default=60.0, help="at least this many s between updates")
    serve.add_argument("--alpha", type=float, default=0.5, help="clients' assumed price weight α for pricing")
    add_chain_options(serve)

    set_price = sub.add_parser("set-price", help="change an offer's price")
    set_price.add_argument("--offer-id", type=int, required=True)
    set_price.add_argument("--price", type=parse_eth, required=True, help="new ETH per token")
    add_chain_options(set_price)

    deregister = sub.add_parser("deregister", help="remove an offer from the registry")
    deregister.add_argument("--offer-id", type=int, required=True)
    add_chain_options(deregister)

    claim = sub.add_parser("claim", help="claim every held receipt now")
    claim.add_argument("--data-dir", type=Path, default=Path(".p2pnode"))
    claim.add_argument("--json", action="store_true")
    add_chain_options(claim)

    prune = sub.add_parser("prune", help="remove a model's offers that expired more than a day ago (anyone may)",
                           description="Walks the model's offer list in batches and removes every offer that "
                                       "expired more than the registry's prune delay ago, so clients' discovery "
                                       "stops paging through dead entries. Costs gas; needs a key.")
    prune.add_argument("--model", default=DEFAULT_MODEL, help=f"catalogue name or folder (default {DEFAULT_MODEL})")
    prune.add_argument("--batch", type=int, default=100, help="list entries scanned per transaction (1-200)")
    prune.add_argument("--json", action="store_true")
    add_chain_options(prune)

    bond = sub.add_parser("bond", help="this node's bond, its minimum and its withdrawal thaw",
                          description="Shows the bond this node holds in the registry, the deployment's minimum and "
                                      "any withdrawal in progress. With --withdraw: requests the withdrawal (the node "
                                      "must have no offers: deregister them first; registering again cancels it), "
                                      "or, once the thaw is over, pays the whole bond back. The bond stays "
                                      "slashable while it thaws.")
    bond.add_argument("--withdraw", action="store_true",
                      help="request the withdrawal, or execute it once thawed")
    bond.add_argument("--json", action="store_true")
    add_chain_options(bond)

    status = sub.add_parser("status", help="offers, receipts, earnings and what clients reserved for this node")
    status.add_argument("--model", default=DEFAULT_MODEL)
    status.add_argument("--data-dir", type=Path, default=Path(".p2pnode"))
    status.add_argument("--json", action="store_true")
    add_chain_options(status)
    return parser


def ledger_path(data_dir: Path, chain: Chain) -> Path:
    return data_dir / f"ledger-{chain.chain_id}-{chain.address.lower()}.sqlite"


def _model_hash(model: str) -> bytes:
    from p2pllm.model_id import model_id
    from p2pllm.models import resolve_model

    return model_id(resolve_model(model).path)


def cmd_register(args: argparse.Namespace) -> int:
    chain = connect(args)
    model_hash = _model_hash(args.model)
    layers = args.layers
    if layers == "auto":
        from node.auto_layers import choose_layers_from_registry

        layers = choose_layers_from_registry(chain, args.model, model_hash, args.num_layers, args.price,
                                             args.compute_ms_per_layer)
    start, end = layers
    bond_wei = chain.missing_bond(chain.address) if args.bond is None else args.bond
    offer_id, tx = chain.register_offer(model_hash, start, end, args.price, args.endpoint, bond_wei=bond_wei)
    bond = chain.bond_of(chain.address)
    if args.json:
        print_json({"offer_id": offer_id, "tx_hash": tx.tx_hash, "layers": [start, end], "price_wei": args.price,
                    "bond_added_wei": bond_wei, "bond_wei": bond})
    else:
        print(f"offer {offer_id}: layers [{start}, {end}) at {format_eth(args.price)}/token, {args.endpoint}")
        print(f"bond {format_eth(bond)}" + (f" (added {format_eth(bond_wei)})" if bond_wei else ""))
        print(f"tx {tx.tx_hash} (gas {tx.gas_used})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from node.server import ServeSettings, serve

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--ca-file", args.ca_file)):
        if path is not None and not path.is_file():
            raise CliError(f"{option}: no such file {path}")
    auto = None
    if args.auto_price:
        from node.pricing_agent import AutoPriceSettings

        auto = AutoPriceSettings(interval_s=args.auto_price_interval, threshold=args.auto_price_threshold,
                                 min_gap_s=args.auto_price_min_gap, alpha=args.alpha)
    settings = ServeSettings(
        model=args.model, start=args.layers[0], end=args.layers[1], price_wei_per_token=args.price,
        host=args.host, port=args.port, public_url=args.endpoint, device=args.device, dtype=args.dtype,
        data_dir=args.data_dir, budget_tokens=args.budget_tokens, max_session_length=args.max_session_length,
        credit_wei=args.credit, ledger_sync=args.ledger_sync, register=args.register, bond_wei=args.bond,
        threads=args.threads,
        cpus=args.cpus,
        auto_price=auto, advertised_compute_ms_per_layer=args.advertise_compute_ms,
        min_session_reserve_wei=args.min_session_reserve, tls_cert=args.tls_cert, tls_key=args.tls_key,
        ca_file=args.ca_file, max_batch=args.max_batch, batch_wait_s=args.batch_wait_ms / 1000,
        relay_wait_s=args.relay_wait_ms / 1000, wave_fraction=args.wave_fraction,
        prefill_chunk=args.prefill_chunk,
        claim=ClaimPolicy(min_batch_wei=args.claim_min, max_age_s=args.claim_max_age, interval_s=args.claim_interval),
    )
    return serve(settings, connect(args))


def cmd_set_price(args: argparse.Namespace) -> int:
    chain = connect(args)
    tx = chain.update_price(args.offer_id, args.price)
    print(f"offer {args.offer_id}: price {format_eth(args.price)}/token (tx {tx.tx_hash})")
    return 0


def cmd_deregister(args: argparse.Namespace) -> int:
    chain = connect(args)
    tx = chain.remove_offer(args.offer_id)
    print(f"offer {args.offer_id} removed (tx {tx.tx_hash})")
    return 0


def cmd_claim(args: argparse.Namespace) -> int:
    chain = connect(args)
    ledger = Ledger(ledger_path(args.data_dir, chain))
    try:
        claimer = Claimer(ledger, lambda items: chain.claim_batch(items)[0],
                          lambda r: chain.paid_for(r.client, r.node, r.session_id), ClaimPolicy())
        report = claimer.claim_all()
    finally:
        ledger.close()
    if args.json:
        print_json({"receipts": report.receipts, "paid_wei": report.paid_wei})
    else:
        print(f"claimed {report.receipts} receipt(s): {format_eth(report.paid_wei)}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if not 1 <= args.batch <= 200:
        raise CliError(f"--batch must be in 1..200, got {args.batch}")
    chain = connect(args)
    model_hash = _model_hash(args.model)
    before = chain.offer_count_by_model(model_hash)
    pruned, transactions, cursor = 0, 0, 0
    while True:
        count, cursor, tx = chain.prune_offers(model_hash, cursor, args.batch)
        pruned += count
        transactions += 1
        if not args.json:
            print(f"tx {tx.tx_hash}: pruned {count} (gas {tx.gas_used})", file=sys.stderr)
        if cursor == 0:
            break
    after = chain.offer_count_by_model(model_hash)
    if args.json:
        print_json({"pruned": pruned, "transactions": transactions, "entries_before": before, "entries_after": after})
    else:
        print(f"pruned {pruned} offer(s) in {transactions} transaction(s); the model's list holds {after} "
              f"entr{'y' if after == 1 else 'ies'} (was {before})")
    return 0


def _bond_state(chain: Chain) -> dict:
    now = chain.block_timestamp()
    ready_at = chain.bond_withdrawal(chain.address)
    return {"node": chain.address, "bond_wei": chain.bond_of(chain.address), "min_bond_wei": chain.min_bond(),
            "offers": chain.offer_count(chain.address), "withdrawal_ready_at": ready_at,
            "withdrawal_ready": ready_at != 0 and now >= ready_at, "chain_time": now}


def _describe_bond(state: dict) -> str:
    text = f"bond {format_eth(state['bond_wei'])} (minimum {format_eth(state['min_bond_wei'])})"
    ready_at = state["withdrawal_ready_at"]
    if ready_at == 0:
        return text
    if state["withdrawal_ready"]:
        return text + f"; withdrawal thawed at {format_time(ready_at)}: `p2pnode bond --withdraw` pays it back"
    return (text + f"; withdrawal thawing until {format_time(ready_at)} "
            f"(in {format_duration(ready_at - state['chain_time'])}), slashable until then")


def cmd_bond(args: argparse.Namespace) -> int:
    chain = connect(args)
    state = _bond_state(chain)
    action = None
    if args.withdraw:
        if state["bond_wei"] == 0:
            raise CliError(f"{chain.address} holds no bond to withdraw")
        if state["withdrawal_ready"]:
            amount, tx = chain.withdraw_bond()
            action = {"action": "withdrawn", "amount_wei": amount, "tx_hash": tx.tx_hash}
            message = f"withdrew the bond: {format_eth(amount)} paid to {chain.address} (tx {tx.tx_hash})"
        elif state["withdrawal_ready_at"]:
            raise CliError(f"the bond is still thawing until {format_time(state['withdrawal_ready_at'])} (in "
                           f"{format_duration(state['withdrawal_ready_at'] - state['chain_time'])}); run "
                           "`p2pnode bond --withdraw` again then")
        else:
            if state["offers"]:
                raise CliError(f"{chain.address} still has {state['offers']} offer(s) in the registry: remove "
                               "them first (`p2pnode deregister --offer-id ID`), then request the withdrawal")
            ready_at, tx = chain.request_bond_withdrawal()
            action = {"action": "requested", "ready_at": ready_at, "tx_hash": tx.tx_hash}
            message = (f"withdrawal requested (tx {tx.tx_hash}); it thaws until {format_time(ready_at)}, then run "
                       "`p2pnode bond --withdraw` again. Registering an offer before then cancels it.")
        state = _bond_state(chain)
    if args.json:
        print_json({**state, **({"done": action} if action else {})})
        return 0
    if action:
        print(message)
    print(f"node {state['node']}: {_describe_bond(state)}; {state['offers']} offer(s) registered")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    chain = connect(args)
    offers = chain.offers_of(chain.address, _model_hash(args.model))
    path = ledger_path(args.data_dir, chain)
    held = []
    if path.exists():
        ledger = Ledger(path)
        held = ledger.all()
        ledger.close()
    clients = sorted({h.receipt.client for h in held})
    allocations = {c: chain.allocation_of(c, chain.address) for c in clients}
    bond = _bond_state(chain)
    data = {
        "node": chain.address,
        "balance_wei": chain.eth_balance(chain.address),
        "bond_wei": bond["bond_wei"],
        "min_bond_wei": bond["min_bond_wei"],
        "bond_withdrawal_ready_at": bond["withdrawal_ready_at"],
        "offers": [{"offer_id": o.offer_id, "layers": [o.start, o.end], "price_wei": o.price_wei_per_token,
                    "endpoint": o.endpoint, "expires_at": o.expires_at} for o in offers],
        "receipts": [{"client": h.receipt.client, "session_id": "0x" + h.receipt.session_id.hex(),
                      "tokens": h.receipt.tokens, "amount_wei": h.receipt.amount_wei, "paid_wei": h.paid_wei,
                      "deadline": h.receipt.deadline} for h in held],
        "earned_wei": sum(h.paid_wei for h in held),
        "unclaimed_wei": sum(h.unclaimed_wei for h in held),
        "clients": [{"client": c, "reserved_wei": a.amount_wei, "thawing_wei": a.thawing_wei,
                     "thaw_ready_at": a.ready_at} for c, a in allocations.items()],
    }
    if args.json:
        print_json(data)
        return 0
    print(f"node {data['node']}  balance {format_eth(data['balance_wei'])}")
    print(_describe_bond(bond))
    print(f"earned {format_eth(data['earned_wei'])}, unclaimed {format_eth(data['unclaimed_wei'])}\n")
    print_table(["offer", "layers", "price/token", "endpoint"],
                [(o["offer_id"], f"{o['layers'][0]}-{o['layers'][1]}", format_eth(o["price_wei"]), o["endpoint"])
                 for o in data["offers"]])
    print()
    print_table(["client", "session", "tokens", "signed", "paid"],
                [(r["client"], r["session_id"][:12] + "…", r["tokens"], format_eth(r["amount_wei"]),
                  format_eth(r["paid_wei"])) for r in data["receipts"]])
    print()
    print_table(["client", "reserved for this node", "thawing back to the client", "thaw ends"],
                [(c["client"], format_eth(c["reserved_wei"]), format_eth(c["thawing_wei"]),
                  format_time(c["thaw_ready_at"]) if c["thaw_ready_at"] else "-") for c in data["clients"]])
    return 0


COMMANDS = {"register": cmd_register, "serve": cmd_serve, "set-price": cmd_set_price,
            "deregister": cmd_deregister, "bond": cmd_bond, "prune": cmd_prune, "claim": cmd_claim,
            "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (CliError, ChainError, KeyError_, ValueError, LookupError) as exc:
        print(f"p2pnode {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
