"""A test fixture, not a product flag: `p2pnode` that equivocates. It sends the client an honest copy of each
output with an honest commitment, but pushes perturbed hidden states to the next node with a second commitment,
signed with its own key, for those: two signed commitments for one step with different outputs. Run as
`python -m tests.node.equivocating_node serve ...` with `p2pnode serve`'s arguments."""

from __future__ import annotations

import dataclasses
import sys

import torch

from node.cli import main
from node.commit import Committer
from node.relay import Relay
from p2pllm import codec
from p2pllm.commitments import sign_commitment, tensor_hash
from p2pllm.wire import SignedCommitment, Step, encode, parse

_committers: list[Committer] = []
_sign = Committer.sign
_push = Relay.push


def _remembering_sign(self: Committer, *args: object, **kwargs: object) -> SignedCommitment:
    if not _committers:
        _committers.append(self)
    return _sign(self, *args, **kwargs)  # type: ignore[arg-type]


async def _equivocating_push(self: Relay, endpoint: str, session_id: bytes, frame: bytes) -> None:
    step = parse(frame)
    assert isinstance(step, Step) and step.upstream is not None and _committers
    committer = _committers[0]
    forged = step.hidden + (0.01 * step.hidden.abs().amax() * torch.ones_like(step.hidden))
    commitment = dataclasses.replace(step.upstream.commitment, output_hash=tensor_hash(codec.encode(forged)))
    signed = SignedCommitment(commitment, sign_commitment(commitment, committer.domain, committer.private_key))
    await _push(self, endpoint, session_id, encode(dataclasses.replace(step, hidden=forged, upstream=signed)))


Committer.sign = _remembering_sign  # type: ignore[method-assign]
Relay.push = _equivocating_push  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
