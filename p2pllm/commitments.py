"""Signed output commitments: a node's EIP-712 signature that, for one step of one session, the input with
hash `input_hash` produced the output with hash `output_hash` through layers [layer_start, layer_end) of model
`model_id`. Bound to one chain and one OfferRegistry (the EIP-712 domain), byte-for-byte the registry's
`commitmentDigest`, so that two commitments of one node for the same (session, position, tokens, input, model,
layers) with different outputs are an on-chain proof of equivocation (`OfferRegistry.slash`).

Tensor hashes are SHA-256 of the tensor's wire encoding (`p2pllm.codec`: dtype, shape, little-endian data), so
client and node hash the very bytes that crossed the network. Pure crypto; knows nothing about web3 or HTTP."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from eth_utils import to_checksum_address

from p2pllm.receipts import (
    DOMAIN_TYPE,
    ReceiptSignatureError,
    address_word,
    keccak256,
    recover_digest,
    sign_digest,
)

COMMITMENT_TYPE = ("Commitment(bytes32 sessionId,uint64 position,uint32 tokens,bytes32 inputHash,bytes32 outputHash,"
                   "bytes32 modelId,uint16 layerStart,uint16 layerEnd,uint64 issuedAt)")
COMMITMENT_TYPEHASH = keccak256(COMMITMENT_TYPE.encode())
REGISTRY_DOMAIN_NAME = "P2P-LLM OfferRegistry"
REGISTRY_DOMAIN_VERSION = "1"


def tensor_hash(encoded: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte hash a commitment names for a tensor: SHA-256 of its wire encoding."""
    return hashlib.sha256(encoded).digest()


@lru_cache(maxsize=64)
def registry_separator(chain_id: int, registry: str) -> bytes:
    return keccak256(keccak256(DOMAIN_TYPE.encode()) + keccak256(REGISTRY_DOMAIN_NAME.encode())
                     + keccak256(REGISTRY_DOMAIN_VERSION.encode()) + chain_id.to_bytes(32, "big")
                     + address_word(registry))


@dataclass(frozen=True)
class RegistryDomain:
    """The EIP-712 domain of commitments: one chain, one OfferRegistry deployment."""

    chain_id: int
    registry: str

    def __post_init__(self) -> None:
        address_word(self.registry)  # ValueError unless a 0x-prefixed 20-byte address
        if not 0 <= self.chain_id < 2**256:
            raise ValueError(f"chain_id={self.chain_id} does not fit uint256")

    @property
    def separator(self) -> bytes:
        return registry_separator(self.chain_id, self.registry.lower())


@dataclass(frozen=True)
class Commitment:
    """One step's claim: tokens [position, position + tokens) of `session_id`, input → output."""

    session_id: bytes
    position: int
    tokens: int
    input_hash: bytes
    output_hash: bytes
    model_id: bytes
    layer_start: int
    layer_end: int
    issued_at: int

    def __post_init__(self) -> None:
        for name in ("session_id", "input_hash", "output_hash", "model_id"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes, got {len(getattr(self, name))}")
        for name, value, bits in (("position", self.position, 64), ("tokens", self.tokens, 32),
                                  ("layer_start", self.layer_start, 16), ("layer_end", self.layer_end, 16),
                                  ("issued_at", self.issued_at, 64)):
            if not 0 <= value < 2**bits:
                raise ValueError(f"{name}={value} does not fit uint{bits}")

    def struct_hash(self) -> bytes:
        return keccak256(COMMITMENT_TYPEHASH + self.session_id + self.position.to_bytes(32, "big")
                         + self.tokens.to_bytes(32, "big") + self.input_hash + self.output_hash + self.model_id
                         + self.layer_start.to_bytes(32, "big") + self.layer_end.to_bytes(32, "big")
                         + self.issued_at.to_bytes(32, "big"))

    def digest(self, domain: RegistryDomain) -> bytes:
        """The 32-byte EIP-712 digest the node signs (equals OfferRegistry.commitmentDigest)."""
        return keccak256(b"\x19\x01" + domain.separator + self.struct_hash())

    def same_step(self, other: Commitment) -> bool:
        """Whether both name the same step of the same session through the same layers of the same model (the
        same input): then an honest node signs one output for both."""
        return (self.session_id, self.position, self.tokens, self.input_hash, self.model_id, self.layer_start,
                self.layer_end) == (other.session_id, other.position, other.tokens, other.input_hash,
                                    other.model_id, other.layer_start, other.layer_end)

    def conflicts_with(self, other: Commitment) -> bool:
        """Equivocation: the same step with a different output."""
        return self.same_step(other) and self.output_hash != other.output_hash

    def as_tuple(self) -> tuple[bytes, int, int, bytes, bytes, bytes, int, int, int]:
        """The commitment as the registry's `Commitment` struct argument."""
        return (self.session_id, self.position, self.tokens, self.input_hash, self.output_hash, self.model_id,
                self.layer_start, self.layer_end, self.issued_at)


def sign_commitment(commitment: Commitment, domain: RegistryDomain, private_key: bytes) -> bytes:
    """65-byte r||s||v (v in {27, 28}, low s) over the commitment's digest."""
    return sign_digest(commitment.digest(domain), private_key)


def commitment_signer(commitment: Commitment, domain: RegistryDomain, signature: bytes) -> str:
    """The checksummed address that signed; ReceiptSignatureError for a signature the registry would reject."""
    return to_checksum_address(recover_digest(commitment.digest(domain), signature))


def is_signed_by(commitment: Commitment, domain: RegistryDomain, signature: bytes, node: str) -> bool:
    try:
        return recover_digest(commitment.digest(domain), signature) == address_word(node)[12:]
    except (ReceiptSignatureError, ValueError):
        return False
