"""The node's side of output commitments: for every step it serves, sign (with the node's key) that this input
produced this output through its layers of its model, in the OfferRegistry's EIP-712 domain (see
`p2pllm.commitments`). An honest node signs one output per (session, position), since a session's cache only
moves forward, so it never signs two conflicting commitments. Pure crypto on bytes; knows nothing about
streams or the chain."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pllm.commitments import Commitment, RegistryDomain, sign_commitment
from p2pllm.wire import SignedCommitment


@dataclass(frozen=True)
class Committer:
    """Signs commitments as the node whose key it holds."""

    private_key: bytes
    domain: RegistryDomain
    model_id: bytes
    clock: Callable[[], float] = field(default=time.time)

    def sign(self, session_id: bytes, position: int, tokens: int, input_hash: bytes, output_hash: bytes,
             layers: tuple[int, int]) -> SignedCommitment:
        """The signed commitment for one step, from the `tensor_hash`es of its input's and output's wire
        encodings."""
        commitment = Commitment(session_id, position, tokens, input_hash, output_hash, self.model_id, layers[0],
                                layers[1], int(self.clock()))
        return SignedCommitment(commitment, sign_commitment(commitment, self.domain, self.private_key))
