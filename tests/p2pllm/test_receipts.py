"""Receipt and session-open signing and recovery, cross-checked against eth-account's own EIP-712 encoder and
signer."""

from __future__ import annotations

import contextlib
import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pllm.receipts import (
    SECP256K1_N,
    EscrowDomain,
    Receipt,
    ReceiptSignatureError,
    SessionOpenTerms,
    is_signed_by_client,
    receipt_digest,
    recover_session_signer,
    recover_signer,
    sign_receipt,
    sign_session_open,
)

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
CLIENT = Account.from_key(KEY).address
DOMAIN = EscrowDomain(31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")


def _receipt(amount: int = 10**15, **kw: object) -> Receipt:
    fields = {"client": CLIENT, "node": "0x" + "ab" * 20, "session_id": b"\x07" * 32, "tokens": 12,
              "amount_wei": amount, "deadline": 1_800_000_000}
    fields.update(kw)
    return Receipt(**fields)  # type: ignore[arg-type]


def _eth_account_digest(receipt: Receipt, domain: EscrowDomain) -> bytes:
    message = encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Receipt": [{"name": "client", "type": "address"}, {"name": "node", "type": "address"},
                        {"name": "sessionId", "type": "bytes32"}, {"name": "tokens", "type": "uint64"},
                        {"name": "amount", "type": "uint256"}, {"name": "deadline", "type": "uint64"}],
        },
        "primaryType": "Receipt",
        "domain": {"name": "P2P-LLM PaymentEscrow", "version": "2", "chainId": domain.chain_id,
                   "verifyingContract": domain.escrow},
        "message": {"client": receipt.client, "node": receipt.node, "sessionId": receipt.session_id,
                    "tokens": receipt.tokens, "amount": receipt.amount_wei, "deadline": receipt.deadline},
    })
    from eth_utils import keccak

    return keccak(b"\x19" + message.version + message.header + message.body)


@settings(max_examples=40, deadline=None)
@given(amount=st.integers(0, 2**256 - 1), tokens=st.integers(0, 2**64 - 1), chain_id=st.integers(1, 2**32))
def test_digest_matches_eth_account(amount: int, tokens: int, chain_id: int) -> None:
    receipt = _receipt(amount, tokens=tokens)
    domain = EscrowDomain(chain_id, DOMAIN.escrow)
    assert receipt_digest(receipt, domain) == _eth_account_digest(receipt, domain)


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), amount=st.integers(0, 2**256 - 1), deadline=st.integers(0, 2**64 - 1))
def test_signature_matches_eth_account(key: bytes, amount: int, deadline: int) -> None:
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        return
    receipt = _receipt(amount, client=Account.from_key(key).address, deadline=deadline)
    expected = Account.unsafe_sign_hash(_eth_account_digest(receipt, DOMAIN), key).signature
    assert sign_receipt(receipt, DOMAIN, key) == bytes(expected)
    assert recover_signer(receipt, DOMAIN, bytes(expected)) == receipt.client


def test_sign_then_recover_roundtrip() -> None:
    receipt = _receipt()
    signature = sign_receipt(receipt, DOMAIN, KEY)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert recover_signer(receipt, DOMAIN, signature) == CLIENT
    assert is_signed_by_client(receipt, DOMAIN, signature)


def test_signature_does_not_transfer_across_domains_or_fields() -> None:
    receipt = _receipt()
    signature = sign_receipt(receipt, DOMAIN, KEY)
    assert not is_signed_by_client(receipt, EscrowDomain(1, DOMAIN.escrow), signature)
    assert not is_signed_by_client(receipt, EscrowDomain(31337, "0x" + "11" * 20), signature)
    assert not is_signed_by_client(_receipt(receipt.amount_wei + 1), DOMAIN, signature)


def test_rejects_what_the_escrow_rejects() -> None:
    receipt = _receipt()
    signature = sign_receipt(receipt, DOMAIN, KEY)
    with pytest.raises(ReceiptSignatureError, match="65 bytes"):
        recover_signer(receipt, DOMAIN, signature[:64])
    s = int.from_bytes(signature[32:64], "big")
    high = signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
    with pytest.raises(ReceiptSignatureError, match="high-s"):
        recover_signer(receipt, DOMAIN, high)
    with pytest.raises(ReceiptSignatureError, match="bad v"):
        recover_signer(receipt, DOMAIN, signature[:64] + b"\x01")
    assert not is_signed_by_client(receipt, DOMAIN, os.urandom(65))


def test_receipt_field_validation() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        _receipt(session_id=b"short")
    with pytest.raises(ValueError, match="uint64"):
        _receipt(tokens=2**64)
    with pytest.raises(ValueError, match="uint256"):
        _receipt(-1)
    with pytest.raises(ValueError, match="client must be"):
        _receipt(client="0x1234")
    with pytest.raises(ValueError, match="node must be"):
        _receipt(node="ab" * 20)
    with pytest.raises(ValueError, match="escrow must be"):
        EscrowDomain(1, "0x" + "zz" * 20)


def test_unrecoverable_signatures_are_rejected_not_crashing() -> None:
    receipt = _receipt()
    zero_r = bytes(32) + (1).to_bytes(32, "big") + b"\x1b"
    with pytest.raises(ReceiptSignatureError, match="unrecoverable"):
        recover_signer(receipt, DOMAIN, zero_r)
    for _ in range(50):
        garbage = os.urandom(64) + bytes([27])
        with contextlib.suppress(ReceiptSignatureError):
            assert recover_signer(receipt, DOMAIN, garbage) != CLIENT


@settings(max_examples=25, deadline=None)
@given(max_length=st.integers(0, 2**32 - 1), start=st.integers(0, 2**16 - 1), end=st.integers(0, 2**16 - 1),
       deadline=st.integers(0, 2**64 - 1))
def test_session_open_digest_matches_eth_account(max_length: int, start: int, end: int, deadline: int) -> None:
    terms = SessionOpenTerms("0x" + "ab" * 20, b"\x09" * 32, max_length, start, end, deadline)
    message = encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "SessionOpen": [{"name": "node", "type": "address"}, {"name": "sessionId", "type": "bytes32"},
                            {"name": "maxLength", "type": "uint32"}, {"name": "layerStart", "type": "uint16"},
                            {"name": "layerEnd", "type": "uint16"}, {"name": "deadline", "type": "uint64"}],
        },
        "primaryType": "SessionOpen",
        "domain": {"name": "P2P-LLM PaymentEscrow", "version": "2", "chainId": DOMAIN.chain_id,
                   "verifyingContract": DOMAIN.escrow},
        "message": {"node": terms.node, "sessionId": terms.session_id, "maxLength": max_length, "layerStart": start,
                    "layerEnd": end, "deadline": deadline},
    })
    from eth_utils import keccak

    assert terms.digest(DOMAIN) == keccak(b"\x19" + message.version + message.header + message.body)
    signature = sign_session_open(terms, DOMAIN, KEY)
    assert recover_session_signer(terms, DOMAIN, signature) == bytes.fromhex(CLIENT[2:])
    with pytest.raises(ValueError):
        SessionOpenTerms("0x" + "ab" * 20, b"\x09" * 32, 2**32, start, end, deadline)
