"""`p2pnode serve`: load the shard, make sure the node's offer is on-chain, serve HTTP with uvicorn, keep the
offer alive with heartbeats, claim receipts in the background and everything held on shutdown. This module
wires the parts together; each part lives in its own module."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn

from node.api import AppState
from node.app import create_app
from node.claimer import Claimer, ClaimPolicy, PaymentBooking
from node.commit import Committer
from node.executor import ShardExecutor
from node.exposure import Exposure
from node.ledger import Ledger
from node.metrics import Metrics
from node.payment import CachedEscrowView, Terms
from node.relay import RelaySettings
from node.scheduler import Scheduler
from node.session import SessionTable
from p2pllm.chain import Chain, Offer
from p2pllm.commitments import RegistryDomain
from p2pllm.cpus import format_cpu_list, pin_process
from p2pllm.model_id import model_id
from p2pllm.models import resolve_model
from p2pllm.shard import Shard, load_shard
from p2pllm.tls import client_ssl_context
from p2pllm.wire import NodeInfo

log = logging.getLogger("p2pnode")
FRAME_SLACK_BYTES = 256 * 1024  # a frame's header, meta and receipts beyond the largest tensor it may carry


@dataclass(frozen=True)
class ServeSettings:
    """Everything `p2pnode serve` needs, built once by the CLI."""

    model: str
    start: int
    end: int
    price_wei_per_token: int
    host: str = "127.0.0.1"
    port: int = 0
    public_url: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    data_dir: Path = Path(".p2pnode")
    budget_tokens: int = 8192
    max_session_length: int = 2048
    session_ttl_s: float = 300.0
    credit_wei: int = 0
    ledger_sync: str = "normal"
    register: bool = True
    bond_wei: int | None = None  # added to the bond when registering; None: what it lacks of the minimum
    claim: ClaimPolicy = field(default_factory=ClaimPolicy)
    threads: int | None = None
    cpus: frozenset[int] | None = None
    advertised_compute_ms_per_layer: float | None = None
    auto_price: Any = None  # node.pricing_agent.AutoPriceSettings, when --auto-price is on
    min_session_reserve_wei: int | None = None  # None: one token at the current price
    max_batch: int = 32
    batch_wait_s: float = 0.1
    relay_wait_s: float = 0.01
    wave_fraction: float = 0.5
    prefill_chunk: int = 128
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None  # CA for dialing the next hop's wss endpoint (default: the system's)


class _GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after shutting down, which would kill the process before the node
    claims what it holds; here a signal only asks the server to stop, and `serve` finishes the job."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def say(message: str) -> None:
    print(f"[p2pnode] {message}", file=sys.stderr, flush=True)


def measure_compute_ms_per_layer(shard: Shard, steps: int = 16) -> float:
    """The fastest of `steps` one-token cached decode steps through the shard, per layer: what the shard costs
    when it has the CPU (whatever else the host was doing only adds to a step; the load-aware figure in `/info`
    adds what batching with other sessions costs)."""
    cache = shard.new_cache()
    hidden = torch.zeros(1, 1, shard.hidden_size, dtype=shard.dtype, device=shard.device)
    times: list[float] = []
    with torch.inference_mode():
        shard(torch.zeros(1, 4, shard.hidden_size, dtype=shard.dtype, device=shard.device),
              torch.arange(4, device=shard.device), cache)
        for i in range(steps):
            started = time.perf_counter()
            shard(hidden, torch.tensor([4 + i], device=shard.device), cache)
            if shard.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return 1000 * min(times) / (shard.end - shard.start)


def ensure_offer(chain: Chain, model_hash: bytes, settings: ServeSettings, endpoint: str) -> Offer:
    """Reuse this node's live offer for the same model and range (updating its price), or register one."""
    for offer in chain.offers_of(chain.address, model_hash):
        if (offer.start, offer.end) == (settings.start, settings.end) and offer.endpoint == endpoint:
            if offer.price_wei_per_token != settings.price_wei_per_token:
                tx = chain.update_price(offer.offer_id, settings.price_wei_per_token)
                say(f"offer {offer.offer_id}: price set to {settings.price_wei_per_token} wei/token (tx {tx.tx_hash})")
            chain.heartbeat(offer.offer_id)
            return chain.get_offer(offer.offer_id)
    if not settings.register:
        raise SystemExit(f"no live offer of this node for layers [{settings.start}, {settings.end}) at {endpoint}; "
                         "run `p2pnode register` or drop --no-register")
    offer_id, tx = chain.register_offer(model_hash, settings.start, settings.end, settings.price_wei_per_token,
                                        endpoint, bond_wei=settings.bond_wei)
    say(f"registered offer {offer_id} for layers [{settings.start}, {settings.end}) (tx {tx.tx_hash})")
    return chain.get_offer(offer_id)


def _loop(stop: threading.Event, interval_s: float, what: str, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        while not stop.wait(interval_s):
            try:
                action()
            except Exception as exc:  # a background failure must not stop serving; retried next interval
                log.warning("%s failed: %s", what, exc)
                say(f"{what} failed (will retry): {exc}")

    thread = threading.Thread(target=run, name=what, daemon=True)
    thread.start()
    return thread


def serve(settings: ServeSettings, chain: Chain) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    if settings.cpus:
        pin_process(settings.cpus)
        say(f"running on CPUs {format_cpu_list(settings.cpus)}")
    # The compute worker leaves one CPU to the event loop: torch's worker threads spin after each parallel
    # region, and on a machine with no spare CPU the loop then waits for them on every step (measured on 2
    # cores: a lone session's step 15% slower through the scheduler with 2 threads, 1% with 1).
    torch.set_num_threads(settings.threads or max(1, len(os.sched_getaffinity(0)) - 1))
    say(f"resolving model {settings.model} ...")
    source = resolve_model(settings.model)
    model_hash = model_id(source.path)
    say(f"loading layers [{settings.start}, {settings.end}) of {source.name} on {settings.device} "
        f"({settings.dtype}) ...")
    started = time.perf_counter()
    shard = load_shard(source, settings.start, settings.end, settings.device, settings.dtype)
    say(f"shard loaded in {time.perf_counter() - started:.1f} s; measuring compute time ...")
    compute_ms = (settings.advertised_compute_ms_per_layer if settings.advertised_compute_ms_per_layer is not None
                  else measure_compute_ms_per_layer(shard))

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP, and
    # without it Nagle + delayed ACK add ~40 ms to small frames on a stream.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((settings.host, settings.port))
    # Listen now, not when uvicorn starts: a client that reads READY (below) and connects at once must be
    # queued in the backlog, not refused (seen in CI on a loaded machine).
    sock.listen(2048)
    port = sock.getsockname()[1]
    scheme = "https" if settings.tls_cert else "http"
    endpoint = settings.public_url or f"{scheme}://{settings.host}:{port}"

    offer = ensure_offer(chain, model_hash, settings, endpoint)
    thaw_s, validity_s = chain.escrow_periods()
    terms = Terms(node=chain.address, domain=chain.escrow_domain(), price_wei_per_token=offer.price_wei_per_token,
                  credit_wei=settings.credit_wei, max_receipt_validity_s=validity_s)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(settings.data_dir / f"ledger-{chain.chain_id}-{chain.address.lower()}.sqlite",
                    sync=settings.ledger_sync)
    executor = ShardExecutor(shard, budget_tokens=settings.budget_tokens, ttl_s=settings.session_ttl_s)
    escrow_view = CachedEscrowView(chain, chain.address)
    exposure = Exposure(ledger)

    booking = PaymentBooking(escrow_view, exposure)
    claimer = Claimer(ledger, lambda items: chain.claim_batch(items)[0],
                      lambda r: chain.paid_for(r.client, r.node, r.session_id), settings.claim,
                      on_paid=booking.on_paid, claiming=booking.claiming)
    if ledger.unclaimed():
        say(f"ledger holds {len(ledger.unclaimed())} unclaimed receipt(s) from a previous run: claiming ...")
        report = claimer.claim_all()
        say(f"claimed {report.receipts} receipt(s), {report.paid_wei} wei")
    sessions = SessionTable(executor)
    scheduler = Scheduler(executor, max_batch=settings.max_batch, max_wait_s=settings.batch_wait_s,
                          relay_wait_s=settings.relay_wait_s, wave_fraction=settings.wave_fraction,
                          prefill_chunk=settings.prefill_chunk)
    metrics = Metrics({"p2pllm_active_sessions": ("Open sessions.", lambda: len(sessions)),
                       "p2pllm_queued_steps": ("Steps waiting for or in the compute worker.",
                                               lambda: scheduler.load().queued),
                       "p2pllm_decode_batches": ("Decode rounds run (each one forward).", lambda: scheduler.batches),
                       "p2pllm_decode_batched_steps": ("Decode steps served in those rounds.",
                                                       lambda: scheduler.batched_steps),
                       "p2pllm_prompt_batches": ("Prompts of fresh sessions run together (each one forward).",
                                                 lambda: scheduler.prompt_batches),
                       "p2pllm_batched_prompts": ("Prompts served in those forwards.",
                                                  lambda: scheduler.batched_prompts),
                       "p2pllm_unclaimed_wei": ("Wei held in receipts, not yet paid on-chain.",
                                                lambda: sum(h.unclaimed_wei for h in ledger.unclaimed()))})
    max_frame_bytes = settings.max_session_length * shard.hidden_size * shard.dtype.itemsize + FRAME_SLACK_BYTES
    info = NodeInfo(
        node=chain.address, model=source.name, model_id=model_hash, layer_start=settings.start,
        layer_end=settings.end, num_layers=source.num_layers, hidden_size=source.hidden_size, dtype=settings.dtype,
        device=str(shard.device), compute_ms_per_layer=compute_ms, chain_id=chain.chain_id,
        escrow=chain.escrow_domain().escrow, registry=chain.registry_address(),
        offer_id=offer.offer_id, max_receipt_validity_s=validity_s, thaw_period_s=thaw_s,
        price_wei_per_token=offer.price_wei_per_token, credit_wei=settings.credit_wei, min_session_reserve_wei=0,
        capacity_tokens=settings.budget_tokens, free_tokens=settings.budget_tokens)
    state = AppState(executor=executor, sessions=sessions, ledger=ledger, terms=terms, escrow=escrow_view,
                     exposure=exposure, info=info, metrics=metrics, scheduler=scheduler,
                     committer=Committer(bytes(chain.account.key), RegistryDomain(chain.chain_id,
                                                                                   chain.registry_address()),
                                         model_hash),
                     max_session_length=settings.max_session_length,
                     min_session_reserve_wei=settings.min_session_reserve_wei, max_frame_bytes=max_frame_bytes)
    relay = RelaySettings(ssl_context=client_ssl_context(settings.ca_file), max_frame_bytes=max_frame_bytes)
    app = create_app(state, relay, evict_every_s=min(settings.session_ttl_s / 2, 30.0))

    stop = threading.Event()
    ttl = chain.offer_ttl_s()
    _loop(stop, max(ttl / 3, 1.0), "heartbeat", lambda: chain.heartbeat(offer.offer_id))
    threading.Thread(target=claimer.run, args=(stop,), name="claims", daemon=True).start()
    if settings.auto_price is not None:
        from node.pricing_agent import start_pricing_agent

        start_pricing_agent(stop, chain, offer, model_hash, terms_setter=lambda p: _set_price(state, p),
                            settings=settings.auto_price, compute_ms_per_layer=state.compute_ms_per_layer)

    say(f"serving layers [{settings.start}, {settings.end}) at {endpoint} as offer {offer.offer_id} "
        f"({offer.price_wei_per_token} wei/token, {compute_ms:.2f} ms/layer)")
    print(f"READY {endpoint} offer={offer.offer_id} node={chain.address}", flush=True)
    # No X-Forwarded-* rewriting: the node never reads a client's address. Frames above the largest step a
    # session may send are refused by the WebSocket layer itself (close code 1009).
    server = _GracefulServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                           server_header=False, date_header=False, proxy_headers=False,
                                           ws="websockets-sansio", ws_max_size=max_frame_bytes,
                                           ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key))
    try:
        server.run(sockets=[sock])
    finally:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the final claim short
            signal.signal(sig, lambda *_: say("still claiming held receipts; exiting when done"))
        say("shutting down: claiming held receipts ...")
        try:
            report = claimer.claim_all()
            say(f"claimed {report.receipts} receipt(s), {report.paid_wei} wei")
        except Exception as exc:  # shutdown must finish; the ledger keeps the receipts for the next start
            say(f"final claim failed, receipts stay in the ledger for the next start: {exc}")
        ledger.close()
    return 0


def _set_price(state: AppState, price_wei_per_token: int) -> None:
    terms = state.terms
    state.terms = Terms(terms.node, terms.domain, price_wei_per_token, terms.credit_wei, terms.max_receipt_validity_s,
                        terms.min_deadline_margin_s)
