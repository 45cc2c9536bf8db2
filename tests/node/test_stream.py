"""The node's stream under a real uvicorn, over a real tiny shard, a real SQLite ledger and a real anvil escrow.
Every class of bad input is answered with a typed `StepError` (never a crash, never a silent drop), and the
node keeps serving good frames afterwards: bad and oversized frames, steps out of order, unknown sessions,
a stream closed mid-session, an unreachable next hop, a forged or missing receipt in the relay chain, unsigned,
foreign and underfunded session opens, and every payment refusal. The escrow cover is what the client reserved
for this node: its pool, and what it reserved for other nodes, do not count, and it is shared by all of the
client's sessions."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from eth_account import Account
from websockets.exceptions import ConnectionClosed

from node.api import AppState
from node.app import create_app
from node.claimer import Claimer, ClaimPolicy, PaymentBooking
from node.commit import Committer
from node.executor import ShardExecutor
from node.exposure import Exposure
from node.ledger import Ledger
from node.metrics import Metrics
from node.payment import CachedEscrowView, Terms
from node.scheduler import Scheduler
from node.session import SessionTable
from p2pllm import codec
from p2pllm.chain import Chain
from p2pllm.commitments import Commitment, RegistryDomain, commitment_signer, sign_commitment, tensor_hash
from p2pllm.models import ModelSource
from p2pllm.receipts import EscrowDomain
from p2pllm.shard import load_shard
from p2pllm.wire import (
    HEADER_BYTES,
    NextHop,
    NodeInfo,
    Ping,
    Pong,
    SessionOpened,
    SignedCommitment,
    Step,
    StepError,
    StepResult,
    encode,
)
from tests.chain_fixtures import DevChain
from tests.node.helpers import PayingSession, ServedApp

PRICE = 10**12
HIDDEN = 256
MAX_FRAME = 64 * 1024


@dataclass
class Harness:
    served: ServedApp
    state: AppState
    client: Chain
    node: str
    domain: EscrowDomain
    deadline: int

    def session(self, client: Chain | None = None, key: bytes | None = None) -> PayingSession:
        who = client or self.client
        return PayingSession(self.served.endpoint, os.urandom(32), key or bytes(who.account.key), who.address,
                             self.node, self.domain, PRICE, self.deadline).connect()

    def opened(self, max_length: int = 16, client: Chain | None = None) -> PayingSession:
        session = self.session(client)
        answer = session.open(max_length)
        assert isinstance(answer, SessionOpened), answer
        return session


def hidden(tokens: int = 1, dtype: torch.dtype = torch.float32, width: int = HIDDEN) -> torch.Tensor:
    return torch.randn(1, tokens, width).to(dtype)


def _node_info(address: str, domain: EscrowDomain) -> NodeInfo:
    return NodeInfo(address, "tiny", b"\x01" * 32, 0, 4, 8, HIDDEN, "float32", "cpu", 1.0, domain.chain_id,
                    domain.escrow, "0x" + "00" * 20, 1, 86400, 2 * 86400, PRICE, 0, 0, 64, 64)


@pytest.fixture
def harness(dev_chain: DevChain, tiny_llama_source: ModelSource, tmp_path) -> Iterator[Harness]:
    node_chain = dev_chain.as_account(1)
    client = dev_chain.as_account(2)
    client.reserve([node_chain.address], [10**15], deposit_wei=10**15)
    domain = node_chain.escrow_domain()
    terms = Terms(node=node_chain.address, domain=domain, price_wei_per_token=PRICE, credit_wei=0,
                  max_receipt_validity_s=86400)
    executor = ShardExecutor(load_shard(tiny_llama_source, 0, 4), budget_tokens=64, ttl_s=300)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    state = AppState(executor=executor, sessions=SessionTable(executor), ledger=ledger, terms=terms,
                     escrow=CachedEscrowView(node_chain, node_chain.address), exposure=Exposure(ledger),
                     info=_node_info(node_chain.address, domain), metrics=Metrics(),
                     scheduler=Scheduler(executor), max_session_length=32, max_frame_bytes=MAX_FRAME)
    with ServedApp(create_app(state), ws_max_size=MAX_FRAME) as served:
        yield Harness(served, state, client, node_chain.address, domain, client.block_timestamp() + 3600)
    ledger.close()


def _error(answer: object, code: str, **expected: object) -> StepError:
    assert isinstance(answer, StepError), answer
    assert answer.code == code, answer
    for key, value in expected.items():
        assert getattr(answer, key) == value, (key, answer)
    return answer


# ------------------------------------------------------------------------------------------ frames


def test_good_step_after_every_bad_frame(harness: Harness) -> None:
    session = harness.opened()
    session.send(b"garbage")
    _error(session.recv(), "bad_frame")
    assert session.ws is not None
    session.ws.send("a text frame")
    _error(session.recv(), "bad_frame")
    good = encode(session.step(hidden(2)))
    session.send(b"XX" + good[2:])
    _error(session.recv(), "bad_frame")
    session.send(good[:3] + bytes([9]) + good[4:])  # an unknown message kind
    _error(session.recv(), "bad_frame")
    session.send(good[:2] + bytes([7]) + good[3:])  # another wire version
    _error(session.recv(), "unsupported_version")
    meta_len = int.from_bytes(good[4:8], "little")
    tensor = good[HEADER_BYTES + meta_len:]
    session.send(good[:HEADER_BYTES + meta_len] + b"XXXX" + tensor[4:])
    _error(session.recv(), "bad_magic")
    session.send(session.step(hidden(dtype=torch.float16)))
    _error(session.recv(), "dtype_mismatch")
    session.send(session.step(hidden(width=HIDDEN + 1)))
    _error(session.recv(), "trailing_dim_mismatch")
    bad = hidden(2)
    bad[0, 1, 7] = float("nan")
    session.send(session.step(bad))
    _error(session.recv(), "non_finite")
    session.send(Step(session.session_id, 0, session.claim(2), torch.randn(2, 1, HIDDEN)))
    _error(session.recv(), "shape_mismatch")
    meta = json.loads(good[HEADER_BYTES:HEADER_BYTES + meta_len])
    meta["position"] = "first"
    broken = json.dumps(meta).encode()
    session.send(good[:4] + len(broken).to_bytes(4, "little") + broken + tensor)
    _error(session.recv(), "bad_field")
    answer = session.forward(hidden(3))
    assert isinstance(answer, StepResult) and answer.final and answer.hidden.shape == (1, 3, HIDDEN)
    assert answer.position == 0 and session.tokens == 3


def test_oversized_frame_closes_the_stream(harness: Harness) -> None:
    """Past the WebSocket layer's limit the frame is not even read: the stream closes with 1009 (too big), and
    the session the stream held is freed."""
    session = harness.opened()
    free = harness.state.executor.free_tokens
    with pytest.raises(ConnectionClosed) as closed:  # the close may already cut the send short
        session.send(session.step(hidden(70)))  # 70 × 256 × 4 bytes > 64 KiB
        session.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    _wait(lambda: harness.state.executor.free_tokens == free + 16)
    assert harness.opened().forward(hidden()).__class__ is StepResult


def test_a_client_sending_faster_than_the_node_serves_is_held_back(harness: Harness,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure: the WebSocket layer reads the next frame only once the node has taken the previous one, so
    a client that sends steps faster than the node serves them is stopped by TCP flow control instead of
    growing a queue in the node. Steps are made slow (50 ms each); the client tries to push 64 MB of them."""
    import node.stream

    handled: list[int] = []
    real_admit = node.stream.admit

    def slow_admit(*args: object, **kwargs: object) -> object:
        handled.append(1)
        time.sleep(0.05)
        return real_admit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(node.stream, "admit", slow_admit)
    session = harness.opened()
    frame = encode(session.step(hidden(60), position=10**6))  # 61 KB; refused (out of order) once handled
    sent: list[int] = []

    def flood() -> None:
        with contextlib.suppress(Exception):
            for _ in range(1000):
                session.send(frame)
                sent.append(1)

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    sender.join(3)
    in_flight = len(sent) - len(handled)
    assert sender.is_alive() and len(sent) < 1000, "the node swallowed every frame as fast as it came"
    assert in_flight * len(frame) < 32 * 1024 * 1024  # what the sockets' buffers hold, not the 64 MB sent
    assert session.ws is not None
    session.ws.socket.shutdown(socket.SHUT_RDWR)
    sender.join(10)
    assert not sender.is_alive()
    monkeypatch.setattr(node.stream, "admit", real_admit)
    other = harness.opened()  # the node still serves
    assert isinstance(other.forward(hidden(2)), StepResult)


def test_out_of_order_unknown_and_stream_bound(harness: Harness) -> None:
    session = harness.opened(max_length=4)
    _error(session.forward(hidden(), position=1), "position_mismatch", position=1)
    _error(session.forward(hidden(5)), "length_exceeded")
    other = PayingSession(harness.served.endpoint, os.urandom(32), bytes(harness.client.account.key),
                          harness.client.address, harness.node, harness.domain, PRICE, harness.deadline)
    session.send(other.step(hidden()))  # a step for another session on this session's stream
    _error(session.recv(), "unknown_session")
    session.send(session.open_message(4))  # a stream carries one session
    _error(session.recv(), "stream_bound")
    assert isinstance(session.forward(hidden()), StepResult)
    session.send(Ping(session.session_id))
    answer = session.recv()
    assert isinstance(answer, Pong) and answer.length == 1


def test_stream_closed_mid_session_frees_it(harness: Harness) -> None:
    session = harness.opened(max_length=32)
    assert harness.state.executor.free_tokens == 32
    session.send(session.step(hidden(20)))  # a prefill in a worker thread; the client leaves at once
    session.close()
    _wait(lambda: harness.state.executor.free_tokens == 64 and len(harness.state.sessions) == 0)
    again = harness.opened(max_length=32)
    assert isinstance(again.forward(hidden(4)), StepResult)


# ------------------------------------------------------------------------------------------ relay


def test_relayed_steps_and_their_errors_reach_the_client(harness: Harness) -> None:
    """A relaying node's stream: its first step binds it to the session. A step with a forged or missing
    receipt is refused and the client hears it (relayed=True), not the relaying node; a good one is served."""
    session = harness.opened()
    relayer = PayingSession(harness.served.endpoint, session.session_id, bytes(harness.client.account.key),
                            harness.client.address, harness.node, harness.domain, PRICE, harness.deadline).connect()
    forged = session.claim(1, key=Account.create().key)
    relayer.send(Step(session.session_id, 0, forged, hidden()))
    _error(session.recv(), "bad_signature", relayed=True, position=0)
    relayer.send(Step(session.session_id, 0, None, hidden()))
    _error(session.recv(), "missing_receipt", relayed=True)
    relayer.send(Step(session.session_id, 0, session.claim(1, amount_wei=PRICE // 2), hidden()))
    _error(session.recv(), "underpaid", relayed=True)
    relayer.send(Step(session.session_id, 0, session.claim(1), hidden()))
    answer = session.recv()
    assert isinstance(answer, StepResult) and answer.position == 0 and answer.final
    relayer.send(Step(os.urandom(32), 0, session.claim(1), hidden()))  # unknown: told on the relayer's stream
    _error(relayer.recv(), "unknown_session")


def test_next_hop_unreachable_is_told_after_the_copy(harness: Harness) -> None:
    session = harness.opened()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    relay = (NextHop(dead, os.urandom(32), session.claim(1)),)
    session.send(session.step(hidden(), relay=relay))
    copy = session.recv()
    assert isinstance(copy, StepResult) and not copy.final and copy.position == 0
    error = _error(session.recv(), "next_hop_unreachable", position=0)
    assert error.detail["endpoint"] == dead


def test_a_step_is_relayed_to_the_next_node(harness: Harness, tiny_llama_source: ModelSource) -> None:
    """Node 1 pushes its output, with the rest of the chain, to node 2 (a second app); each computes exactly
    what its layers give, and the client gets a copy from node 1 and the final result from node 2."""
    node_chain = harness.state.terms
    executor = ShardExecutor(load_shard(tiny_llama_source, 4, 8), budget_tokens=64, ttl_s=300)
    second = AppState(executor=executor, sessions=SessionTable(executor), ledger=harness.state.ledger,
                      terms=Terms(node=node_chain.node, domain=node_chain.domain, price_wei_per_token=PRICE,
                                  credit_wei=0, max_receipt_validity_s=86400),
                      escrow=harness.state.escrow, exposure=Exposure(harness.state.ledger),
                      info=harness.state.info, metrics=Metrics(), scheduler=Scheduler(executor),
                      max_session_length=32, max_frame_bytes=MAX_FRAME)
    with ServedApp(create_app(second), ws_max_size=MAX_FRAME) as node2:
        first = harness.opened()
        last = PayingSession(node2.endpoint, os.urandom(32), bytes(harness.client.account.key),
                             harness.client.address, harness.node, harness.domain, PRICE, harness.deadline)
        assert isinstance(last.open(16, span=(4, 8)), SessionOpened)
        reference = [load_shard(tiny_llama_source, 0, 4), load_shard(tiny_llama_source, 4, 8)]
        caches = [r.new_cache() for r in reference]
        for position, x in ((0, hidden(5)), (5, hidden(1)), (6, hidden(1))):
            n = int(x.shape[1])
            chain = (NextHop(node2.endpoint, last.session_id, last.claim(position + n)),)
            first.send(first.step(x, position=position, relay=chain))
            copy, final = first.recv(), last.recv()
            assert isinstance(copy, StepResult) and not copy.final
            assert isinstance(final, StepResult) and final.final and final.position == position
            with torch.inference_mode():
                want_mid = reference[0](x, torch.arange(position, position + n), caches[0])
                want = reference[1](want_mid, torch.arange(position, position + n), caches[1])
            torch.testing.assert_close(copy.hidden, want_mid)
            torch.testing.assert_close(final.hidden, want)
        last.close()


# ------------------------------------------------------------------------------------------ opening


def test_unsigned_foreign_and_malformed_opens(harness: Harness) -> None:
    session = harness.session()
    session.send(session.open_message(8, key=Account.create().key))
    _error(session.recv(), "bad_signature")
    session.send(session.open_message(8, node="0x" + "77" * 20))
    _error(session.recv(), "wrong_node")
    session.send(session.open_message(8, span=(2, 9)))
    _error(session.recv(), "bad_span")
    session.send(session.open_message(10_000))
    _error(session.recv(), "length_exceeded")
    session.send(session.open_message(8, deadline=int(time.time()) - 1))
    _error(session.recv(), "bad_deadline")
    session.send(session.step(hidden()))  # no session opened on this stream yet
    _error(session.recv(), "unknown_session")
    assert isinstance(session.open(8), SessionOpened)  # the same stream, properly this time
    duplicate = harness.session()
    duplicate.session_id = session.session_id
    _error(duplicate.open(8), "session_exists")


def test_an_open_needs_a_reservation_for_this_node(harness: Harness, dev_chain: DevChain) -> None:
    """A client with a full pool, and with funds reserved for another node, has nothing reserved for this one:
    its open is refused with what it owes and what it needs; once it reserves, the same stream opens at once
    (the node reads the chain again before refusing)."""
    other = dev_chain.as_account(6)
    other.deposit(10**17)
    other.reserve([dev_chain.as_account(7).address], [10**16])
    session = harness.session(other)
    refusal = _error(session.open(8), "insufficient_escrow")
    assert refusal.detail["reserved_wei"] == "0" and refusal.detail["client_unpaid_wei"] == "0"
    assert refusal.detail["min_session_reserve_wei"] == str(PRICE)
    other.reserve([harness.node], [PRICE])
    assert isinstance(session.open(8), SessionOpened)


def test_cache_full_says_when_to_retry(harness: Harness) -> None:
    harness.opened(max_length=32)
    harness.opened(max_length=32)
    error = _error(harness.session().open(1), "cache_full")
    assert error.retry_after_s == 2 and error.detail["budget_tokens"] == 64


# ------------------------------------------------------------------------------------------ payment


def test_bad_and_foreign_receipts(harness: Harness) -> None:
    session = harness.opened()
    _error(session.forward(hidden(), session.claim(1, key=Account.create().key)), "bad_signature", relayed=False)
    for foreign in ({"node": "0x" + "77" * 20}, {"domain": EscrowDomain(1, harness.domain.escrow)},
                    {"domain": EscrowDomain(harness.domain.chain_id, "0x" + "88" * 20)}):
        _error(session.forward(hidden(), session.claim(1, **foreign)), "bad_signature")
    _error(session.forward(hidden(4), session.claim(4, amount_wei=3 * PRICE)), "underpaid")
    assert isinstance(session.forward(hidden(2), session.claim(2, amount_wei=5 * PRICE)), StepResult)
    _error(session.forward(hidden(), session.claim(3, amount_wei=4 * PRICE)), "receipt_decreased")


def test_a_repeated_receipt_is_stored_once_and_still_checked(harness: Harness) -> None:
    """A receipt signed ahead (amount for 4 tokens) may pay several steps, but each step re-checks what changes
    with tokens and time: past its deadline window it is refused, and the 5th token is underpaid."""
    session = harness.opened()
    ahead = session.claim(4, amount_wei=4 * PRICE)
    for _ in range(3):
        assert isinstance(session.forward(hidden(), ahead), StepResult)
    held = harness.state.ledger.all()
    assert [(h.receipt.tokens, h.receipt.amount_wei) for h in held] == [(4, 4 * PRICE)]
    clock = harness.state.now
    harness.state.now = lambda: clock() + 3600  # the receipt's deadline is now inside the safety margin
    _error(session.forward(hidden(), ahead), "bad_deadline")
    harness.state.now = clock
    assert isinstance(session.forward(hidden(), ahead), StepResult)
    _error(session.forward(hidden(), ahead), "underpaid")


def test_unreadable_escrow_says_when_to_retry(harness: Harness) -> None:
    session = harness.opened()

    class DownChain:
        def allocation_of(self, client: str, node: str) -> object:
            raise ConnectionError("RPC down")

    harness.state.escrow = CachedEscrowView(DownChain(), harness.node)  # type: ignore[arg-type]
    error = _error(session.forward(hidden()), "chain_unavailable")
    assert error.retry_after_s == 2


class Reserved:
    """An escrow view with a settable reservation (the allocation as the node would read it)."""

    def __init__(self, wei: int) -> None:
        self.wei = wei

    def reserved_wei(self, client: str, until: int, fresh: bool = False) -> int:
        return self.wei

    def answers_now(self, client: str) -> bool:
        return True

    def refresh(self, client: str) -> None:
        """Nothing to read again: `wei` is the chain's answer."""


def test_escrow_cover_counts_what_was_claimed_meanwhile(harness: Harness) -> None:
    """Unpaid = signed − already paid. After a claim spends part of the reservation, the node uses the paid
    amount the claimer reported, not the one it knew when the session started."""
    session = harness.opened()
    escrow = Reserved(10 * PRICE)
    harness.state.escrow = escrow
    assert isinstance(session.forward(hidden(), session.claim(1, amount_wei=8 * PRICE)), StepResult)
    harness.state.ledger.mark_paid(harness.client.address, session.session_id, 8 * PRICE)  # the claimer's work
    harness.state.exposure.paid(harness.client.address, session.session_id, 8 * PRICE)
    escrow.wei = 2 * PRICE  # what the claim left reserved
    assert isinstance(session.forward(hidden(), session.claim(2, amount_wei=9 * PRICE)), StepResult)
    _error(session.forward(hidden(), session.claim(3, amount_wei=11 * PRICE)), "insufficient_escrow")


def _claim_in_window(harness: Harness, escrow: Reserved, paid_wei: int, left_wei: int) -> threading.Thread:
    """Start a real `Claimer` (with the node's `PaymentBooking`) on the held receipts whose transaction is mined at
    once (the escrow shows `left_wei` reserved) but whose claimer hears back only 0.5 s later; return once the
    window is open."""
    mined = threading.Event()

    def submit(items: object) -> list[int]:
        escrow.wei = left_wei
        mined.set()
        time.sleep(0.5)
        return [paid_wei]

    booking = PaymentBooking(escrow, harness.state.exposure)
    claimer = Claimer(harness.state.ledger, submit, lambda receipt: paid_wei, ClaimPolicy(),
                      on_paid=booking.on_paid, claiming=booking.claiming)
    thread = threading.Thread(target=claimer.claim_all)
    thread.start()
    assert mined.wait(10)
    return thread


def test_a_step_during_a_claim_is_not_refused_for_what_the_claim_paid(harness: Harness) -> None:
    """Once a claim's transaction is mined the chain shows the allocation shrunk by what it paid, while the node
    still counts that amount unpaid until the claimer hears back. A step checked in that window waits for the
    claim to be counted and is served; the cover is still enforced after it."""
    session = harness.opened()
    escrow = Reserved(10 * PRICE)
    harness.state.escrow = escrow
    assert isinstance(session.forward(hidden(), session.claim(1, amount_wei=8 * PRICE)), StepResult)
    claiming = _claim_in_window(harness, escrow, 8 * PRICE, 2 * PRICE)
    assert isinstance(session.forward(hidden(), session.claim(2, amount_wei=9 * PRICE)), StepResult)
    claiming.join(10)
    _error(session.forward(hidden(), session.claim(3, amount_wei=11 * PRICE)), "insufficient_escrow")


def test_an_open_during_a_claim_is_not_refused_for_what_the_claim_paid(harness: Harness) -> None:
    """The same window at a session open: the open waits for the claim to be counted, then weighs what is left."""
    session = harness.opened()
    escrow = Reserved(10 * PRICE)
    harness.state.escrow = escrow
    assert isinstance(session.forward(hidden(), session.claim(1, amount_wei=8 * PRICE)), StepResult)
    claiming = _claim_in_window(harness, escrow, 8 * PRICE, 2 * PRICE)
    opened = harness.session().open(4)
    claiming.join(10)
    assert isinstance(opened, SessionOpened), opened
    escrow.wei = 0  # and an open the reservation does not cover is still refused
    _error(harness.session().open(4), "insufficient_escrow")


def test_escrow_cover_is_shared_by_the_clients_sessions(harness: Harness) -> None:
    """Two sessions of one client spend one reservation: the second may not count what the first holds."""
    first, second = harness.opened(), harness.opened()
    harness.state.escrow = Reserved(10 * PRICE)
    assert isinstance(first.forward(hidden(), first.claim(1, amount_wei=7 * PRICE)), StepResult)
    error = _error(second.forward(hidden(), second.claim(1, amount_wei=4 * PRICE)), "insufficient_escrow")
    assert error.detail["needed_wei"] == str(11 * PRICE)
    assert isinstance(second.forward(hidden(), second.claim(1, amount_wei=3 * PRICE)), StepResult)
    refusal = _error(harness.session().open(4), "insufficient_escrow")  # no room left for another session
    assert refusal.detail["client_unpaid_wei"] == str(10 * PRICE) and refusal.detail["needed_wei"] == str(11 * PRICE)


def test_a_reservation_made_mid_session_is_seen_at_once(harness: Harness) -> None:
    """A refusal for lack of cover is checked against a fresh read of the chain first, at most once a second per
    session."""
    session = harness.opened()
    big = session.claim(2, amount_wei=10**15 + PRICE)  # beyond the harness's reservation
    _error(session.forward(hidden(2), big), "insufficient_escrow")
    harness.client.reserve([harness.node], [PRICE], deposit_wei=PRICE)
    _error(session.forward(hidden(2), big), "insufficient_escrow")  # the last fresh read was 0 s ago
    harness.state.fresh_escrow_min_s = 0
    assert isinstance(session.forward(hidden(2), big), StepResult)


def test_metrics_count_rejections_and_info_is_typed(harness: Harness) -> None:
    import httpx

    session = harness.opened()
    session.send(b"junk")
    session.recv()
    assert 'p2pllm_requests_rejected_total{code="bad_frame"} 1' in \
        httpx.get(f"{harness.served.endpoint}/metrics").text
    info = NodeInfo.from_json(httpx.get(f"{harness.served.endpoint}/info").json())
    assert info.price_wei_per_token == PRICE and info.free_tokens == 48 and info.min_session_reserve_wei == PRICE
    assert codec.decode(codec.encode(hidden())).shape == (1, 1, HIDDEN)


def _wait(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ commitments


def test_results_carry_the_nodes_commitment_and_relayed_steps_need_the_relayers(harness: Harness) -> None:
    """With a committer, every result carries the node's signed commitment to exactly the bytes it got and
    sent, and passes back the relaying node's commitment; a relayed step without a commitment to exactly its
    hidden states is refused (bad_upstream, reported to the client), before any compute or payment."""
    node_key = bytes(Account.from_key(bytes.fromhex(
        "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")).key)
    registry = RegistryDomain(harness.domain.chain_id, "0x" + "42" * 20)
    harness.state.committer = Committer(node_key, registry, b"\x01" * 32)
    session = harness.opened()
    x = hidden(3)
    result = session.forward(x)
    assert isinstance(result, StepResult) and result.commitment is not None and result.upstream is None
    c = result.commitment.commitment
    assert (c.session_id, c.position, c.tokens, c.layer_start, c.layer_end) == (session.session_id, 0, 3, 0, 4)
    assert c.input_hash == tensor_hash(codec.encode(x)) and c.output_hash == tensor_hash(codec.encode(result.hidden))
    assert commitment_signer(c, registry, result.commitment.signature) == harness.node

    relayer = PayingSession(harness.served.endpoint, session.session_id, bytes(harness.client.account.key),
                            harness.client.address, harness.node, harness.domain, PRICE, harness.deadline).connect()
    pushed = hidden()
    relayer.send(Step(session.session_id, 3, session.claim(4), pushed))
    _error(session.recv(), "bad_upstream", relayed=True, position=3)
    other = Commitment(os.urandom(32), 3, 1, os.urandom(32), tensor_hash(codec.encode(hidden())), b"\x01" * 32, 0, 4, 1)
    wrong = SignedCommitment(other, sign_commitment(other, registry, node_key))
    relayer.send(Step(session.session_id, 3, session.claim(4), pushed, (), wrong))
    _error(session.recv(), "bad_upstream", relayed=True, position=3)
    assert harness.state.executor.session("0x" + session.session_id.hex()).length == 3  # nothing computed
    right = dataclasses.replace(other, output_hash=tensor_hash(codec.encode(pushed)))
    upstream = SignedCommitment(right, sign_commitment(right, registry, node_key))
    relayer.send(Step(session.session_id, 3, session.claim(4), pushed, (), upstream))
    answer = session.recv()
    assert isinstance(answer, StepResult) and answer.position == 3 and answer.upstream == upstream
    assert answer.commitment is not None and answer.commitment.commitment.input_hash == right.output_hash
