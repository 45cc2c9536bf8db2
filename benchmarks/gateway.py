"""The OpenAI API's cost: streaming through `p2pclient serve-api` with the official `openai` SDK against
`InferenceClient.generate` in process, over the same network in the same run.

    python benchmarks/gateway.py [--tokens 64] [--repeats 5]     # one JSON line; progress on stderr

anvil, the contracts and three `p2pnode serve` processes over SmolLM2-135M fp32 (layers 0–10, 10–20, 20–30,
started by `LocalNetwork`). The in-process side is an `InferenceClient` in this process; the API side is a
`p2pclient serve-api` process, streamed with `openai.OpenAI(...).chat.completions.create(stream=True)`. Both
use one torch thread for the head, greedy decoding of the same chat prompt, spot checks off (commitments are
still checked), and alternate, after one warm-up each. Per run: time to first token (from the call to the first
text) and decode tokens per second ((tokens − 1) / (last − first token time)). Keys: `ratio` = median API tok/s
÷ median in-process tok/s (target ≥ 0.97), `ttft_overhead_ms` = median API TTFT − median in-process TTFT
(target ≤ 20), the medians, and `tokens_match` (the API's text equals the in-process text).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

from client.inference import InferenceClient, SamplingParams
from devkit.gateway import start_gateway
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.models import resolve_model

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def in_process(client: InferenceClient, tokens: int) -> tuple[float, float, str]:
    started = time.perf_counter()
    stamps, text = [], []
    for event in client.generate(PROMPT, tokens, chat=True, sampling=SamplingParams()):
        stamps.append(time.perf_counter())
        text.append(event.text)
    return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0]), "".join(text)


def over_api(sdk: openai.OpenAI, model: str, tokens: int) -> tuple[float, float, str]:
    started = time.perf_counter()
    stamps, text = [], []
    for chunk in sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                             max_tokens=tokens, temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
            text.append(chunk.choices[0].delta.content)
    return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0]), "".join(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)
    source = resolve_model(args.model)
    n = source.num_layers
    specs = [NodeSpec("A", 0, n // 3, "0.000001", 1), NodeSpec("B", n // 3, 2 * n // 3, "0.000001", 2),
             NodeSpec("C", 2 * n // 3, n, "0.000001", 3)]
    with tempfile.TemporaryDirectory(prefix="p2pllm-gateway-") as tmp, \
            LocalNetwork(Path(tmp), args.model, specs, log=say, node_threads=1) as net:
        net.chain(7).deposit(10**18)
        net.chain(8).deposit(10**18)
        gateway = start_gateway(net.deployment_file, 7, "--verify-rate", "0", model=args.model)
        client = InferenceClient(net.chain(8), args.model, threads=1, verify_rate=0.0)
        sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=300)
        try:
            in_process(client, 8)
            over_api(sdk, args.model, 8)
            local: list[tuple[float, float, str]] = []
            api: list[tuple[float, float, str]] = []
            for i in range(args.repeats):
                order = ((local, lambda: in_process(client, args.tokens)),
                         (api, lambda: over_api(sdk, args.model, args.tokens)))
                for runs, run in order if i % 2 == 0 else order[::-1]:
                    runs.append(run())
                say(f"run {i + 1}/{args.repeats}: in-process {local[-1][1]:.2f} tok/s (ttft {local[-1][0]:.3f} s), "
                    f"API {api[-1][1]:.2f} tok/s (ttft {api[-1][0]:.3f} s)")
        finally:
            client.close()
            gateway.stop(30)
    tok_local = statistics.median(r[1] for r in local)
    tok_api = statistics.median(r[1] for r in api)
    ttft_local = statistics.median(r[0] for r in local)
    ttft_api = statistics.median(r[0] for r in api)
    print(json.dumps({"benchmark": "gateway", "ratio": round(tok_api / tok_local, 3),
                      "ttft_overhead_ms": round(1000 * (ttft_api - ttft_local), 1),
                      "tok_s_api": round(tok_api, 2), "tok_s_in_process": round(tok_local, 2),
                      "ttft_ms_api": round(1000 * ttft_api, 1), "ttft_ms_in_process": round(1000 * ttft_local, 1),
                      "tokens_match": all(a[2] == b[2] for a, b in zip(local, api, strict=True)),
                      "tokens": args.tokens, "repeats": args.repeats, "target_ratio": 0.97,
                      "target_ttft_overhead_ms": 20}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
