"""A test fixture, not a product flag: `p2pnode` whose relay corrupts the receipt of every step it pushes to the
next node (the signature is zeroed; hidden states and everything else pass untouched). Run as
`python -m tests.node.tampering_node serve ...`, with `p2pnode serve`'s arguments."""

from __future__ import annotations

import dataclasses
import sys

from node.cli import main
from node.relay import Relay
from p2pllm.wire import ReceiptClaim, Step, encode, parse

_push = Relay.push


async def _tampering_push(self: Relay, endpoint: str, session_id: bytes, frame: bytes) -> None:
    step = parse(frame)
    assert isinstance(step, Step) and step.receipt is not None
    forged = ReceiptClaim(step.receipt.tokens, step.receipt.amount_wei, step.receipt.deadline, bytes(65))
    await _push(self, endpoint, session_id, encode(dataclasses.replace(step, receipt=forged)))


Relay.push = _tampering_push  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
