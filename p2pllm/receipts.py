"""EIP-712 payment receipts: the typed-data digest, signing and signer recovery, byte-for-byte the
PaymentEscrow contract's. Pure crypto (keccak from safe-pysha3, secp256k1 from coincurve); knows nothing
about web3 or HTTP.

Every receipt field is a static ABI type, so the struct encoding is six fixed 32-byte words after the type
hash; it is packed here directly (tests cross-check it against eth-account's general EIP-712 encoder).
Signing and recovery call libsecp256k1 through coincurve, and keccak is pysha3's C implementation (a third of
pycryptodome's per-call cost, which is mostly its ctypes wrapper): a receipt is signed or checked on every
paid hop, so this is on the per-token path of both client and node."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import coincurve
import sha3
from eth_utils import to_checksum_address

RECEIPT_TYPE = "Receipt(address client,address node,bytes32 sessionId,uint64 tokens,uint256 amount,uint64 deadline)"
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_NAME = "P2P-LLM PaymentEscrow"
DOMAIN_VERSION = "2"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SIGNATURE_BYTES = 65
_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")


def keccak256(data: bytes) -> bytes:
    return sha3.keccak_256(data).digest()


RECEIPT_TYPEHASH = keccak256(RECEIPT_TYPE.encode())
# A client's signature on a session open: the node reserves KV memory only for a session its client signed for.
# Never submitted on-chain; it shares the escrow's domain so that it binds the chain and the deployment too.
SESSION_OPEN_TYPE = ("SessionOpen(address node,bytes32 sessionId,uint32 maxLength,uint16 layerStart,"
                     "uint16 layerEnd,uint64 deadline)")
SESSION_OPEN_TYPEHASH = keccak256(SESSION_OPEN_TYPE.encode())


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

    def __post_init__(self) -> None:
        if not (isinstance(self.escrow, str) and _ADDRESS_RE.match(self.escrow)):
            raise ValueError(f"escrow must be a 0x-prefixed 20-byte hex address, got {self.escrow!r}")
        if not 0 <= self.chain_id < 2**256:
            raise ValueError(f"chain_id={self.chain_id} does not fit uint256")

    @property
    def separator(self) -> bytes:
        return _domain_separator(self.chain_id, self.escrow)


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
        for name, address in (("client", self.client), ("node", self.node)):
            if not (isinstance(address, str) and _ADDRESS_RE.match(address)):
                raise ValueError(f"{name} must be a 0x-prefixed 20-byte hex address, got {address!r}")
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


@lru_cache(maxsize=1024)
def address_word(address: str) -> bytes:
    """A 0x-hex address (any case) as its 32-byte ABI word, left-padded; ValueError if it is not one."""
    if not _ADDRESS_RE.match(address):
        raise ValueError(f"not a 0x-prefixed 20-byte hex address: {address!r}")
    return bytes(12) + bytes.fromhex(address[2:])


@lru_cache(maxsize=64)
def _domain_separator(chain_id: int, escrow: str) -> bytes:
    return keccak256(keccak256(DOMAIN_TYPE.encode()) + keccak256(DOMAIN_NAME.encode())
                     + keccak256(DOMAIN_VERSION.encode()) + chain_id.to_bytes(32, "big") + address_word(escrow))


def receipt_struct_hash(receipt: Receipt) -> bytes:
    return keccak256(RECEIPT_TYPEHASH + address_word(receipt.client) + address_word(receipt.node)
                     + receipt.session_id + receipt.tokens.to_bytes(32, "big")
                     + receipt.amount_wei.to_bytes(32, "big") + receipt.deadline.to_bytes(32, "big"))


def receipt_digest(receipt: Receipt, domain: EscrowDomain) -> bytes:
    """The 32-byte EIP-712 digest the client signs (equals PaymentEscrow.receiptDigest)."""
    return keccak256(b"\x19\x01" + domain.separator + receipt_struct_hash(receipt))


@lru_cache(maxsize=16)
def _signing_key(private_key: bytes) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(private_key)


def sign_receipt(receipt: Receipt, domain: EscrowDomain, private_key: bytes) -> bytes:
    """65-byte r||s||v signature (v in {27, 28}, low s, RFC 6979 nonce) as the escrow expects."""
    return sign_digest(receipt_digest(receipt, domain), private_key)


def recover_signer_bytes(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> bytes:
    """The 20-byte address that signed; raises ReceiptSignatureError for what the escrow rejects."""
    return recover_digest(receipt_digest(receipt, domain), signature)


def sign_digest(digest: bytes, private_key: bytes) -> bytes:
    rs_recid = _signing_key(private_key).sign_recoverable(digest, hasher=None)
    return rs_recid[:64] + bytes([rs_recid[64] + 27])


def recover_digest(digest: bytes, signature: bytes) -> bytes:
    if len(signature) != SIGNATURE_BYTES:
        raise ReceiptSignatureError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if s > SECP256K1_N // 2:
        raise ReceiptSignatureError("high-s signature")
    if v not in (27, 28):
        raise ReceiptSignatureError(f"bad v {v}")
    if not (0 < r < SECP256K1_N and s > 0):
        raise ReceiptSignatureError("unrecoverable signature: r or s out of range")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(signature[:64] + bytes([v - 27]), digest,
                                                                    hasher=None)
    except ValueError as exc:
        raise ReceiptSignatureError(f"unrecoverable signature: {exc}") from exc
    return keccak256(public_key.format(compressed=False)[1:])[-20:]


@dataclass(frozen=True)
class SessionOpenTerms:
    """What a client signs to open a session on a node: at most `max_length` tokens through layers
    [layer_start, layer_end), the signature valid until `deadline`."""

    node: str
    session_id: bytes
    max_length: int
    layer_start: int
    layer_end: int
    deadline: int

    def __post_init__(self) -> None:
        if not (isinstance(self.node, str) and _ADDRESS_RE.match(self.node)):
            raise ValueError(f"node must be a 0x-prefixed 20-byte hex address, got {self.node!r}")
        if len(self.session_id) != 32:
            raise ValueError(f"session_id must be 32 bytes, got {len(self.session_id)}")
        for name, value, bits in (("max_length", self.max_length, 32), ("layer_start", self.layer_start, 16),
                                  ("layer_end", self.layer_end, 16), ("deadline", self.deadline, 64)):
            if not 0 <= value < 2**bits:
                raise ValueError(f"{name}={value} does not fit uint{bits}")

    def digest(self, domain: EscrowDomain) -> bytes:
        struct_hash = keccak256(SESSION_OPEN_TYPEHASH + address_word(self.node) + self.session_id
                                + self.max_length.to_bytes(32, "big") + self.layer_start.to_bytes(32, "big")
                                + self.layer_end.to_bytes(32, "big") + self.deadline.to_bytes(32, "big"))
        return keccak256(b"\x19\x01" + domain.separator + struct_hash)


def sign_session_open(terms: SessionOpenTerms, domain: EscrowDomain, private_key: bytes) -> bytes:
    return sign_digest(terms.digest(domain), private_key)


def recover_session_signer(terms: SessionOpenTerms, domain: EscrowDomain, signature: bytes) -> bytes:
    """The 20-byte address that signed a session open; raises ReceiptSignatureError for a bad signature."""
    return recover_digest(terms.digest(domain), signature)


def recover_signer(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> str:
    """The checksummed address that signed; raises ReceiptSignatureError for what the escrow rejects."""
    return to_checksum_address(recover_signer_bytes(receipt, domain, signature))


def is_signed_by_client(receipt: Receipt, domain: EscrowDomain, signature: bytes) -> bool:
    try:
        return recover_signer_bytes(receipt, domain, signature) == address_word(receipt.client)[12:]
    except ReceiptSignatureError:
        return False
