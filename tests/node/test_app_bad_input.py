"""Every class of bad input gets a 4xx (402 for payment, 503 for a full cache) with a JSON error body, never a
500, and the node keeps serving good requests afterwards. The app runs in-process (ASGI) over a real tiny
shard, a real SQLite ledger and a real anvil escrow. The escrow cover is what the client reserved for this node:
its pool, and what it reserved for other nodes, do not count, and it is shared by all of the client's sessions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from eth_account import Account
from fastapi.testclient import TestClient

from node.api import AppState
from node.app import create_app
from node.executor import ShardExecutor
from node.exposure import Exposure
from node.ledger import Ledger
from node.metrics import Metrics
from node.payment import CachedEscrowView, Terms
from p2pllm import codec
from p2pllm.chain import Chain
from p2pllm.models import ModelSource
from p2pllm.receipts import EscrowDomain, Receipt, sign_receipt
from p2pllm.shard import load_shard
from tests.chain_fixtures import DevChain

PRICE = 10**12
HIDDEN = 256


@dataclass
class Harness:
    http: TestClient
    state: AppState
    client: Chain
    node: str
    domain: EscrowDomain
    deadline: int

    def open(self, max_length: int = 16, client: str | None = None) -> str:
        sid = "0x" + os.urandom(32).hex()
        response = self.http.post("/sessions", json={"session_id": sid, "client": client or self.client.address,
                                                     "max_length": max_length})
        assert response.status_code == 201, response.text
        return sid

    def receipt(self, sid: str, tokens: int, amount: int | None = None, key: bytes | None = None,
                domain: EscrowDomain | None = None, node: str | None = None, client: str | None = None) -> str:
        r = Receipt(client or self.client.address, node or self.node, bytes.fromhex(sid[2:]), tokens,
                    PRICE * tokens if amount is None else amount, self.deadline)
        sig = sign_receipt(r, domain or self.domain, key or bytes(self.client.account.key))
        return json.dumps({"tokens": r.tokens, "amount_wei": str(r.amount_wei), "deadline": r.deadline,
                           "signature": "0x" + sig.hex()})

    def forward(self, sid: str, body: bytes, position: int = 0, receipt: str | None = None,
                tokens: int = 1) -> object:
        header = receipt if receipt is not None else self.receipt(sid, position + tokens)
        return self.http.post(f"/sessions/{sid}/forward", content=body,
                              headers={"X-Position": str(position), "X-Receipt": header})


def hidden(tokens: int = 1, dtype: torch.dtype = torch.float32, width: int = HIDDEN) -> bytes:
    return codec.encode(torch.randn(1, tokens, width).to(dtype))


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
    escrow = CachedEscrowView(node_chain, node_chain.address)
    state = AppState(executor=executor, ledger=ledger, terms=terms, escrow=escrow, exposure=Exposure(ledger),
                     info={"node": node_chain.address}, metrics=Metrics(), max_body_bytes=64 * 1024,
                     max_session_length=32)
    with TestClient(create_app(state), raise_server_exceptions=False) as http:
        yield Harness(http, state, client, node_chain.address, domain, client.block_timestamp() + 3600)
    ledger.close()


def _error(response: object, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    return body


def test_good_request_after_every_bad_one(harness: Harness) -> None:
    sid = harness.open()
    _error(harness.forward(sid, b"garbage"), 400, "truncated_header")
    _error(harness.forward(sid, b"XXXX" + bytes(20)), 400, "bad_magic")
    _error(harness.forward(sid, hidden(dtype=torch.float16)), 400, "dtype_mismatch")
    response = harness.forward(sid, hidden(3), tokens=3)
    assert response.status_code == 200
    assert codec.decode(response.content).shape == (1, 3, HIDDEN)
    assert response.headers["X-Tokens-Processed"] == "3"


def test_oversized_body(harness: Harness) -> None:
    sid = harness.open()
    _error(harness.forward(sid, hidden(70)), 413, "body_too_large")


def test_wrong_hidden_size_and_batch(harness: Harness) -> None:
    sid = harness.open()
    _error(harness.forward(sid, hidden(width=HIDDEN + 1)), 400, "trailing_dim_mismatch")
    batch2 = codec.encode(torch.randn(2, 1, HIDDEN))
    _error(harness.forward(sid, batch2), 400, "shape_mismatch")


def test_non_finite_values(harness: Harness) -> None:
    sid = harness.open()
    bad = torch.randn(1, 2, HIDDEN)
    bad[0, 1, 7] = float("nan")
    _error(harness.forward(sid, codec.encode(bad), tokens=2), 400, "non_finite")
    bad[0, 1, 7] = float("inf")
    _error(harness.forward(sid, codec.encode(bad), tokens=2), 400, "non_finite")


def test_unknown_and_expired_session(harness: Harness) -> None:
    _error(harness.forward("0x" + "ab" * 32, hidden()), 404, "unknown_session")
    sid = harness.open()
    harness.state.executor.ttl_s = 1e-9
    harness.state.executor.evict_idle()
    _error(harness.forward(sid, hidden()), 404, "unknown_session")
    bad_id = harness.http.post("/sessions/not-a-session/forward", content=hidden(),
                               headers={"X-Position": "0", "X-Receipt": "{}"})
    _error(bad_id, 422, "invalid_request")
    _error(harness.http.delete("/sessions/0x" + "cd" * 32), 404, "unknown_session")


def test_bad_signature(harness: Harness) -> None:
    sid = harness.open()
    _error(harness.forward(sid, hidden(), receipt=harness.receipt(sid, 1, key=Account.create().key)), 402,
           "bad_signature")
    header = json.loads(harness.receipt(sid, 1))
    header["signature"] = header["signature"][:-2]  # 64 bytes
    _error(harness.forward(sid, hidden(), receipt=json.dumps(header)), 402, "bad_signature")


@pytest.mark.parametrize("foreign", ["node", "chain", "escrow"])
def test_foreign_signature(harness: Harness, foreign: str) -> None:
    sid = harness.open()
    other = {"node": {"node": "0x" + "77" * 20},
             "chain": {"domain": EscrowDomain(1, harness.domain.escrow)},
             "escrow": {"domain": EscrowDomain(harness.domain.chain_id, "0x" + "88" * 20)}}[foreign]
    _error(harness.forward(sid, hidden(), receipt=harness.receipt(sid, 1, **other)), 402, "bad_signature")


def test_underpaying_receipt(harness: Harness) -> None:
    sid = harness.open()
    body = _error(harness.forward(sid, hidden(4), tokens=4, receipt=harness.receipt(sid, 4, amount=3 * PRICE)),
                  402, "underpaid")
    assert body["detail"]["owed_wei"] == str(4 * PRICE)


def test_decreasing_receipt(harness: Harness) -> None:
    sid = harness.open()
    assert harness.forward(sid, hidden(2), tokens=2, receipt=harness.receipt(sid, 2, amount=5 * PRICE)).status_code \
        == 200
    _error(harness.forward(sid, hidden(), position=2, receipt=harness.receipt(sid, 3, amount=4 * PRICE)), 402,
           "receipt_decreased")


def test_a_repeated_receipt_is_stored_once_and_still_checked(harness: Harness) -> None:
    """A receipt signed ahead (amount for 4 tokens) may pay several steps, but each step re-checks what changes
    with tokens and time: past its deadline window it is refused, and the 5th token is underpaid."""
    sid = harness.open()
    ahead = harness.receipt(sid, 4, amount=4 * PRICE)
    for position in range(3):
        assert harness.forward(sid, hidden(), position=position, receipt=ahead).status_code == 200
    held = harness.state.ledger.all()
    assert [(h.receipt.tokens, h.receipt.amount_wei) for h in held] == [(4, 4 * PRICE)]
    clock = harness.state.now
    harness.state.now = lambda: clock() + 3600  # the receipt's deadline is now inside the safety margin
    _error(harness.forward(sid, hidden(), position=3, receipt=ahead), 402, "bad_deadline")
    harness.state.now = clock
    assert harness.forward(sid, hidden(), position=3, receipt=ahead).status_code == 200
    _error(harness.forward(sid, hidden(), position=4, receipt=ahead), 402, "underpaid")


def test_client_without_enough_escrow(harness: Harness) -> None:
    poor = Account.create()
    sid = harness.open(client=poor.address)
    _error(harness.forward(sid, hidden(), receipt=harness.receipt(sid, 1, key=poor.key, client=poor.address)),
           402, "insufficient_escrow")


def test_bad_deadline(harness: Harness) -> None:
    sid = harness.open()
    harness.deadline = harness.state.now() + 10
    _error(harness.forward(sid, hidden()), 402, "bad_deadline")


def test_malformed_and_missing_receipt_header(harness: Harness) -> None:
    sid = harness.open()
    for header in ("not json", "{}", '{"tokens": 1, "amount_wei": "x", "deadline": 1, "signature": "0x00"}',
                   '{"tokens": true, "amount_wei": 1, "deadline": 1, "signature": "0x00"}'):
        _error(harness.forward(sid, hidden(), receipt=header), 400, "bad_receipt_header")
    response = harness.http.post(f"/sessions/{sid}/forward", content=hidden(), headers={"X-Position": "0"})
    _error(response, 422, "invalid_request")


def test_position_mismatch_and_length_exceeded(harness: Harness) -> None:
    sid = harness.open(max_length=4)
    _error(harness.forward(sid, hidden(), position=1), 409, "position_mismatch")
    _error(harness.forward(sid, hidden(5), tokens=5), 400, "length_exceeded")
    _error(harness.http.post("/sessions", json={"session_id": "0x" + "11" * 32, "client": harness.client.address,
                                                "max_length": 10_000}), 400, "length_exceeded")


def test_duplicate_session(harness: Harness) -> None:
    sid = harness.open()
    response = harness.http.post("/sessions", json={"session_id": sid, "client": harness.client.address,
                                                    "max_length": 4})
    _error(response, 409, "session_exists")


def test_cache_full_is_503_with_retry_after(harness: Harness) -> None:
    harness.open(max_length=32)
    harness.open(max_length=32)
    response = harness.http.post("/sessions", json={"session_id": "0x" + "22" * 32,
                                                    "client": harness.client.address, "max_length": 1})
    body = _error(response, 503, "cache_full")
    assert response.headers["Retry-After"] == "2"
    assert body["detail"]["budget_tokens"] == 64


def test_metrics_count_rejections(harness: Harness) -> None:
    sid = harness.open()
    harness.forward(sid, b"junk")
    assert 'p2pllm_requests_rejected_total{code="truncated_header"} 1' in harness.http.get("/metrics").text


def test_forward_route_method_headers_and_schema(harness: Harness) -> None:
    sid = harness.open()
    response = harness.http.get(f"/sessions/{sid}/forward")
    _error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    for headers in ({"X-Receipt": "{}"}, {"X-Position": "-1", "X-Receipt": "{}"},
                    {"X-Position": "1e3", "X-Receipt": "{}"}, {"X-Position": "9" * 40, "X-Receipt": "{}"}):
        body = _error(harness.http.post(f"/sessions/{sid}/forward", content=hidden(), headers=headers),
                      422, "invalid_request")
        assert body["detail"][0]["loc"] == ["header", "x-position"]
    # Other paths under /sessions are FastAPI's, not the forward route's.
    _error(harness.http.post(f"/sessions/{sid}/forward/extra", content=b""), 404, "http_error")
    operation = harness.http.get("/openapi.json").json()["paths"]["/sessions/{session_id}/forward"]["post"]
    assert {p["name"] for p in operation["parameters"]} == {"session_id", "x-position", "x-receipt"}
    assert {"200", "402", "422", "503"} <= set(operation["responses"])
    # A good request still goes through after all of that.
    assert harness.forward(sid, hidden()).status_code == 200


def test_unreadable_escrow_is_503_not_500(harness: Harness) -> None:
    class DownChain:
        def allocation_of(self, client: str, node: str) -> object:
            raise ConnectionError("RPC down")

    sid = harness.open()
    harness.state.escrow = CachedEscrowView(DownChain(), harness.node)  # type: ignore[arg-type]
    response = harness.forward(sid, hidden())
    _error(response, 503, "chain_unavailable")
    assert response.headers["Retry-After"] == "2"


class Reserved:
    """An escrow view with a settable reservation (the allocation as the node would read it)."""

    def __init__(self, wei: int) -> None:
        self.wei = wei
        self.fresh_reads = 0

    def reserved_wei(self, client: str, until: int, fresh: bool = False) -> int:
        self.fresh_reads += fresh
        return self.wei


def test_escrow_cover_counts_what_was_claimed_meanwhile(harness: Harness) -> None:
    """Unpaid = signed − already paid. After a claim spends part of the reservation, the node uses the paid
    amount the claimer reported, not the one it knew when the session started."""
    escrow = Reserved(10 * PRICE)
    harness.state.escrow = escrow
    sid = harness.open()
    assert harness.forward(sid, hidden(), receipt=harness.receipt(sid, 1, amount=8 * PRICE)).status_code == 200
    session = bytes.fromhex(sid[2:])
    harness.state.ledger.mark_paid(harness.client.address, session, 8 * PRICE)  # the claimer's work
    harness.state.exposure.paid(harness.client.address, session, 8 * PRICE)
    escrow.wei = 2 * PRICE  # what the claim left reserved
    assert harness.forward(sid, hidden(), position=1, receipt=harness.receipt(sid, 2, amount=9 * PRICE)).status_code \
        == 200
    _error(harness.forward(sid, hidden(), position=2, receipt=harness.receipt(sid, 3, amount=11 * PRICE)), 402,
           "insufficient_escrow")


def test_escrow_cover_is_shared_by_the_clients_sessions(harness: Harness) -> None:
    """Two sessions of one client spend one reservation: the second may not count what the first holds."""
    harness.state.escrow = Reserved(10 * PRICE)
    first, second = harness.open(), harness.open()
    assert harness.forward(first, hidden(), receipt=harness.receipt(first, 1, amount=7 * PRICE)).status_code == 200
    body = _error(harness.forward(second, hidden(), receipt=harness.receipt(second, 1, amount=4 * PRICE)), 402,
                  "insufficient_escrow")
    assert body["detail"]["needed_wei"] == str(11 * PRICE)
    assert harness.forward(second, hidden(), receipt=harness.receipt(second, 1, amount=3 * PRICE)).status_code == 200
    opened = harness.http.post("/sessions", json={"session_id": "0x" + os.urandom(32).hex(),
                                                  "client": harness.client.address, "max_length": 4})
    assert opened.json()["client_unpaid_wei"] == str(10 * PRICE)


def test_the_pool_and_other_nodes_reservations_do_not_count(harness: Harness, dev_chain: DevChain) -> None:
    """A client with a full pool, and with funds reserved for another node, has nothing reserved for this one:
    its receipt is refused, whatever it could pay from elsewhere. Once it reserves for this node, the next
    request is served at once: a refusal is checked against a fresh read of the chain first, at most once a
    second per session."""
    other = dev_chain.as_account(6)
    other.deposit(10**17)
    other.reserve([dev_chain.as_account(7).address], [10**16])
    sid = harness.open(client=other.address)
    receipt = harness.receipt(sid, 1, key=bytes(other.account.key), client=other.address)
    _error(harness.forward(sid, hidden(), receipt=receipt), 402, "insufficient_escrow")
    other.reserve([harness.node], [PRICE])
    _error(harness.forward(sid, hidden(), receipt=receipt), 402, "insufficient_escrow")  # refused 0 s ago
    harness.state.fresh_escrow_min_s = 0
    assert harness.forward(sid, hidden(), receipt=receipt).status_code == 200
