"""EIP-712 payment receipts: the typed-data digest, signing and signer recovery, byte-for-byte the
PaymentEscrow contract's. Pure crypto over eth-keys (coincurve backend); knows nothing about web3 or HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from eth_abi import encode
from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils import keccak, to_checksum_address

RECEIPT_TYPE = "Receipt(address client,address node,bytes32 sessionId,uint64 tokens,uint256 amount,uint64 deadline)"
RECEIPT_TYPEHASH = keccak(text=RECEIPT_TYPE)
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_NAME = "P2P-LLM PaymentEscrow"
DOMAIN_VERSION = "1"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_BYTES = 65


class ReceiptSignatureError(ValueError):
    """A signature that the escrow would reject: wrong length, high s, bad v, or unrecoverable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class EscrowDomain:
    """The EIP-712 domain a receipt is bound to: one chain, one escrow deployment."""

    chain_id: int
    escrow: str

    @property
    def separator(self) -> bytes:
        return _domain_separator(self.chain_id, to_checksum_address(self.escrow))


@dataclass(frozen=True)
class Receipt:
    """What a client owes a node for one session, cumulative; `amount_wei` only ever grows."""

    client: str
    node: str
    session_id: bytes
    tokens: int
    amount_wei: int
    deadline: int

    def __post_init__(self) -> None:
        if len(self.session_id) != 32:
            raise ValueError(f"session_id must be 32 bytes, got {len(self.session_id)}")
        for name, value, bits in (("tokens", self.tokens, 64), ("amount_wei", self.amount_wei, 256),
                                  ("deadline", self.deadline, 64)):
            if not 0 <= value < 2**bits:
                raise ValueError(f"{name}={value} does not fit uint{bits}")

    def as_tuple(self) -> tuple[str, str, bytes, int, int, int]:
        """The receipt as the contract's `Receipt` struct argument."""
        return (to_checksum_address(self.client), to_checksum_address(self.node), self.session_id,
                self.tokens, self.amount_wei, self.deadline)


@lru_cache(maxsize=64)
def _domain_separator(chain_id: int, escrow: str) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(text=DOMAIN_TYPE), keccak(text=DOMAIN_NAME), keccak(text=DOMAIN_VERSION), chain_id, escrow],
        )
    )


def receipt_struct_hash(receipt: Receipt) -> bytes:
    return keccak(
        encode(
            ["bytes32", "address", "address", "bytes32", "uint64", "uint256", "uint64"],
            [RECEIPT_TYPEHASH, *receipt.as_tuple()],
        )
    )


def receipt_digest(receipt: Receipt, domain: EscrowDomain) -> bytes:
    """The 32-byte EIP-712 digest the client signs (equals PaymentEscrow.receiptDigest)."""
    return keccak(b"\x19\x01" + domain.separator + receipt_struct_hash(receipt))


def sign_receipt(receipt: Receipt, domain: EscrowDomain, private_key: bytes) -> bytes:
    """65-byte r||s||v signature (v in {27, 28}, low s) as the escrow expects."""
    signature = keys.PrivateKey(private_key).sign_msg_hash(receipt_digest(receipt, domain))
    return signature.r.to_bytes(32, "big") + signature.s.to_bytes(32, "big") + bytes([signature.v + 27])


def recover_signer(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> str:
    """The checksummed address that signed; raises ReceiptSignatureError for what the escrow rejects."""
    if len(signature) != SIGNATURE_BYTES:
        raise ReceiptSignatureError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if s > SECP256K1_N // 2:
        raise ReceiptSignatureError("high-s signature")
    if v not in (27, 28):
        raise ReceiptSignatureError(f"bad v {v}")
    try:
        public_key = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(
            receipt_digest(receipt, domain)
        )
    except (BadSignature, ValueError) as exc:
        raise ReceiptSignatureError(f"unrecoverable signature: {exc}") from exc
    return public_key.to_checksum_address()


def is_signed_by_client(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> bool:
    try:
        return recover_signer(receipt, domain, signature) == to_checksum_address(receipt.client)
    except ReceiptSignatureError:
        return False
