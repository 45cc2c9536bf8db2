"""What the client's copy of each relayed output costs the relaying node, against the alternative of a digest
(the output kept by the node and fetched on demand for a failover).

    python benchmarks/relay_copy.py [--sends 400] [--widths 576,2048,4096]    # prints one JSON line

In relay mode a node pushes its output to the next node and also sends the client a `StepResult` with the same
tensor, so that the client can replay the next hop's inputs on a replacement if that hop fails. The copy leaves
before the push, so its send time is on the route's critical path once per relaying hop. The alternative sends
a 32-byte SHA-256 of the output instead and keeps the output on the node.

Measured here, on a real uvicorn WebSocket (the nodes' `websockets-sansio` layer) on loopback with a client
reading every frame: per decode token at each hidden width (fp32), the median time the node spends in
`encode(StepResult)` + `send` for the full copy (`copy_us_hN`), and for the digest variant the hash of the
output plus the encode and send of a result frame without a tensor (`digest_us_hN`), interleaved; and the bytes
on the client's downlink per token and relaying hop (`copy_bytes_hN`, `digest_bytes_hN`). Compare the
difference with a decode token's compute (about 70 ms for SmolLM2 on this machine's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import statistics
import sys
import threading
import time

import torch
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect

from p2pllm.wire import StepResult, encode

SESSION = b"\x07" * 32


def build_app(timings: dict[str, list[float]]) -> FastAPI:
    app = FastAPI()

    @app.websocket("/bench")
    async def bench(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            command = await ws.receive_text()
            if command == "done":
                break
            mode, width, sends = command.split()
            hidden = torch.randn(1, 1, int(width))
            for position in range(int(sends)):
                started = time.perf_counter()
                if mode == "copy":
                    frame = encode(StepResult(SESSION, position, False, 20.0, hidden))
                else:
                    digest = hashlib.sha256(hidden.numpy().tobytes()).digest()
                    frame = encode(StepResult(SESSION, position, False, 20.0, torch.empty(1, 0, 1))) + digest
                await ws.send_bytes(frame)
                timings.setdefault(f"{mode}_{width}", []).append(time.perf_counter() - started)
                timings.setdefault(f"{mode}_{width}_bytes", []).append(len(frame))
                await asyncio.sleep(0.001)  # a decode token's gap, shortened: the socket buffer drains between sends
            await ws.send_text("ok")
        await ws.close()

    return app


async def drive(port: int, widths: list[int], sends: int, rounds: int) -> None:
    async with connect(f"ws://127.0.0.1:{port}/bench", max_size=None, compression=None) as ws:
        for round_ in range(rounds):
            for width in widths:
                for mode in (("copy", "digest") if round_ % 2 == 0 else ("digest", "copy")):
                    await ws.send(f"{mode} {width} {sends // rounds}")
                    while (await ws.recv()) != "ok":
                        pass
        await ws.send("done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=400, help="sends per mode and width")
    parser.add_argument("--widths", default="576,2048,4096", help="hidden sizes, comma-separated")
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    torch.set_num_threads(1)
    timings: dict[str, list[float]] = {}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(timings), log_level="warning", ws="websockets-sansio",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        asyncio.run(drive(port, widths, args.sends, rounds=4))
    finally:
        server.should_exit = True
        thread.join(10)
    out: dict[str, float | int] = {}
    for width in widths:
        for mode in ("copy", "digest"):
            out[f"{mode}_us_h{width}"] = round(1e6 * statistics.median(timings[f"{mode}_{width}"][10:]), 1)
            out[f"{mode}_bytes_h{width}"] = int(statistics.median(timings[f"{mode}_{width}_bytes"]))
        out[f"copy_minus_digest_us_h{width}"] = round(out[f"copy_us_h{width}"] - out[f"digest_us_h{width}"], 1)
    out["sends"] = args.sends
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
