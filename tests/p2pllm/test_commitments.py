"""Output commitments: the digest equals eth-account's general EIP-712 encoding (so the registry's), signatures
recover their signer and do not transfer across domains or fields, and conflicts are exactly same step +
different output."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given
from hypothesis import strategies as st

from p2pllm.commitments import (
    Commitment,
    RegistryDomain,
    commitment_signer,
    is_signed_by,
    sign_commitment,
    tensor_hash,
)

KEY = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
NODE = Account.from_key(KEY).address
DOMAIN = RegistryDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
BASE = Commitment(b"\x01" * 32, 7, 1, tensor_hash(b"in"), tensor_hash(b"out"), b"\x02" * 32, 0, 10, 1_700_000_000)

words = st.binary(min_size=32, max_size=32)


@given(words, st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), words, words, words,
       st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**64 - 1), st.integers(1, 2**64))
def test_digest_matches_eth_account(session: bytes, position: int, tokens: int, inp: bytes, out: bytes, model: bytes,
                                    start: int, end: int, issued: int, chain_id: int) -> None:
    commitment = Commitment(session, position, tokens, inp, out, model, start, end, issued)
    domain = RegistryDomain(chain_id, DOMAIN.registry)
    message = encode_typed_data(full_message={
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
            "Commitment": [{"name": "sessionId", "type": "bytes32"}, {"name": "position", "type": "uint64"},
                           {"name": "tokens", "type": "uint32"}, {"name": "inputHash", "type": "bytes32"},
                           {"name": "outputHash", "type": "bytes32"}, {"name": "modelId", "type": "bytes32"},
                           {"name": "layerStart", "type": "uint16"}, {"name": "layerEnd", "type": "uint16"},
                           {"name": "issuedAt", "type": "uint64"}],
        },
        "primaryType": "Commitment",
        "domain": {"name": "P2P-LLM OfferRegistry", "version": "1", "chainId": chain_id,
                   "verifyingContract": DOMAIN.registry},
        "message": {"sessionId": session, "position": position, "tokens": tokens, "inputHash": inp,
                    "outputHash": out, "modelId": model, "layerStart": start, "layerEnd": end, "issuedAt": issued},
    })
    signed = Account.sign_message(message, KEY)
    assert signed.message_hash == commitment.digest(domain)
    assert commitment_signer(commitment, domain, sign_commitment(commitment, domain, KEY)) == NODE


def test_signature_binds_every_field_and_the_domain() -> None:
    signature = sign_commitment(BASE, DOMAIN, KEY)
    assert is_signed_by(BASE, DOMAIN, signature, NODE)
    assert not is_signed_by(BASE, RegistryDomain(1, DOMAIN.registry), signature, NODE)
    assert not is_signed_by(BASE, RegistryDomain(31337, "0x" + "11" * 20), signature, NODE)
    for name, value in (("session_id", b"\x03" * 32), ("position", 8), ("tokens", 2), ("input_hash", b"\x04" * 32),
                        ("output_hash", b"\x05" * 32), ("model_id", b"\x06" * 32), ("layer_start", 1),
                        ("layer_end", 11), ("issued_at", 1)):
        assert not is_signed_by(dataclasses.replace(BASE, **{name: value}), DOMAIN, signature, NODE), name
    assert not is_signed_by(BASE, DOMAIN, signature[:-1], NODE)


def test_conflict_is_same_step_with_another_output() -> None:
    other_output = dataclasses.replace(BASE, output_hash=tensor_hash(b"other"), issued_at=BASE.issued_at + 5)
    assert BASE.conflicts_with(other_output) and other_output.conflicts_with(BASE)
    assert not BASE.conflicts_with(BASE)
    assert not BASE.conflicts_with(dataclasses.replace(BASE, issued_at=1))  # same output, later: no conflict
    for name, value in (("session_id", b"\x03" * 32), ("position", 8), ("tokens", 2), ("input_hash", b"\x04" * 32),
                        ("model_id", b"\x06" * 32), ("layer_start", 1), ("layer_end", 11)):
        assert not BASE.conflicts_with(dataclasses.replace(BASE, output_hash=b"\x09" * 32, **{name: value})), name


def test_field_validation() -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(BASE, session_id=b"short")
    with pytest.raises(ValueError):
        dataclasses.replace(BASE, tokens=2**32)
    with pytest.raises(ValueError):
        RegistryDomain(1, "not-an-address")
