"""What trust costs and what it catches: spot checks and signed commitments, measured.

    python benchmarks/verification.py [--runs 1000] [--pairs 4] [--min-checks 2000]   # one JSON line

- `detect_prob` (simulated; it is a probability): a node lies on each of its steps with probability 0.1; the
  client checks that hop after each step with probability q = 0.05 (the real `SpotCheckPolicy`), a check at step
  t covers every step up to t (one prefill), and while a check runs (`--check-steps` steps) that hop is not
  drawn again, as in `client.spotcheck`. Fraction of `--runs` generations of 500 tokens in which a check catches
  the liar. Also `detect_mean_tokens`, the tokens generated before the catch.
- On a real network (anvil, six `p2pnode` processes over SmolLM2-135M fp32: A, B, C tile the 30 layers, A2, B2,
  C2 serve the same thirds at a higher price and act as checkers; relay mode, greedy, 64 tokens, one client):
  - `throughput_cost_q002`: 1 − median tok/s at q = 0.02 ÷ median tok/s at q = 0, from `--pairs` alternating
    pairs of generations (checks run beside the generation; on this 2-core host they share its CPUs);
  - `money_cost_q002`: wei paid for checks ÷ wei paid to the route, over the q = 0.02 runs;
  - `false_positives`: disagreements over honest checks (every node honest) at q = 1 until `--min-checks` checks
    have run; `honest_checks`, `honest_positions` (hidden vectors compared) and `honest_max_relative` (the largest
    per-position relative difference seen, against the float32 tolerance `tolerance_fp32`).
- `gas_register_bonded`, `gas_slash`: gas used by a first bonded registration and by a slash of a real signed
  equivocation, from transaction receipts on a fresh anvil.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from client.inference import GenerationResult, InferenceClient
from client.reputation import ReputationStore
from client.verify import SpotCheckPolicy, tolerance
from devkit.devnet import Anvil
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.chain import Chain
from p2pllm.commitments import Commitment, sign_commitment
from p2pllm.keys import dev_account
from p2pllm.models import resolve_model

PROMPT = "Explain in a few sentences why the sky is blue."
CLIENT_ACCOUNT = 9


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- simulated


def simulate_detection(runs: int, tokens: int, lie_rate: float, q: float, check_steps: int,
                       seed: int) -> tuple[float, float]:
    """(fraction of runs in which a check catches the liar within `tokens`, mean tokens before the catch)."""
    rng = random.Random(seed)
    caught, delays = 0, []
    for run in range(runs):
        policy = SpotCheckPolicy(q, seed=rng.randrange(2**63))
        first_lie: int | None = None
        busy_until = -1
        for step in range(tokens):
            if first_lie is None and rng.random() < lie_rate:
                first_lie = step
            if step <= busy_until or not policy.draw():
                continue
            busy_until = step + check_steps
            if first_lie is not None:  # this check replays steps 0..step, the lie among them
                caught += 1
                delays.append(step + check_steps)
                break
        del run
    return caught / runs, statistics.fmean(delays) if delays else float("nan")


# ---------------------------------------------------------------------------------------------------- real


def generate(client: InferenceClient, tokens: int) -> GenerationResult:
    result = GenerationResult(0)
    list(client.generate(PROMPT, tokens, alpha=1.0, chat=True, result=result, stop_at_eos=False))
    return result


def measure_network(model: str, pairs: int, tokens: int, min_checks: int, workdir: Path) -> dict[str, float]:
    source = resolve_model(model)
    n = source.num_layers
    a, b = n // 3, 2 * n // 3
    specs = [NodeSpec("A", 0, a, "0.000001", 1), NodeSpec("B", a, b, "0.000001", 2),
             NodeSpec("C", b, n, "0.000001", 3), NodeSpec("A2", 0, a, "0.000002", 4),
             NodeSpec("B2", a, b, "0.000002", 5), NodeSpec("C2", b, n, "0.000002", 6)]
    out: dict[str, float] = {}
    with LocalNetwork(workdir, str(source.path), specs, log=say) as net:
        chain = net.chain(CLIENT_ACCOUNT)
        chain.deposit(10**18)
        store = ReputationStore(workdir / "reputation.sqlite")
        plain = InferenceClient(chain, str(source.path), verify_rate=0.0, reputation=store, threads=1)
        checked = InferenceClient(chain, str(source.path), verify_rate=0.02, verify_seed=1, reputation=store,
                                  threads=1)
        try:
            generate(plain, 8)  # warm both clients' connections and reservations
            generate(checked, 8)
            rates: dict[str, list[float]] = {"q0": [], "q002": []}
            route_wei = check_wei = 0
            for pair in range(pairs):
                for name, client in (("q0", plain), ("q002", checked)) if pair % 2 == 0 else \
                        (("q002", checked), ("q0", plain)):
                    result = generate(client, tokens)
                    rates[name].append(result.tokens_per_s)
                    if name == "q002":
                        route_wei += sum(h.cost_wei for h in result.hops if not h.check)
                        check_wei += sum(h.cost_wei for h in result.hops if h.check)
                say(f"pair {pair + 1}/{pairs}: q=0 {rates['q0'][-1]:.2f} tok/s, q=0.02 {rates['q002'][-1]:.2f} tok/s")
            out["tok_s_q0"] = statistics.median(rates["q0"])
            out["tok_s_q002"] = statistics.median(rates["q002"])
            out["throughput_cost_q002"] = 1 - out["tok_s_q002"] / out["tok_s_q0"]
            out["money_cost_q002"] = check_wei / route_wei
        finally:
            plain.close()
            checked.close()

        auditor = InferenceClient(chain, str(source.path), verify_rate=1.0, verify_seed=2, reputation=store,
                                  threads=1)
        checks = positions = disagreed = 0
        worst = 0.0
        started = time.perf_counter()
        try:
            while checks < min_checks:
                result = generate(auditor, tokens)
                v = result.verification
                assert v is not None
                checks += v.agreed + v.disagreed
                positions += v.positions_compared
                disagreed += v.disagreed
                worst = max(worst, v.max_relative_diff)
                say(f"honest checks: {checks}/{min_checks} ({positions} positions, {disagreed} disagreements, "
                    f"max relative {worst:.2e}, {time.perf_counter() - started:.0f} s)")
        finally:
            auditor.close()
        out.update(false_positives=disagreed, honest_checks=checks, honest_positions=positions,
                   honest_max_relative=worst, tolerance_fp32=tolerance("float32"),
                   excluded_after=len(store.excluded()))
    return out


def measure_gas() -> dict[str, int]:
    with Anvil() as anvil:
        deployer = Chain.connect(anvil.rpc_url, dev_account(0), expected_chain_id=31337)
        deployment = deployer.deploy_contracts("anvil", anvil.rpc_url, 2 * 86400, 86400, 600)
        node = Chain.connect(anvil.rpc_url, dev_account(1), deployment)
        reporter = Chain.connect(anvil.rpc_url, dev_account(2), deployment)
        model = os.urandom(32)
        _, register = node.register_offer(model, 0, 10, 10**12, "http://127.0.0.1:9000")
        now = node.block_timestamp()
        honest = Commitment(os.urandom(32), 7, 1, os.urandom(32), os.urandom(32), model, 0, 10, now)
        other = Commitment(honest.session_id, 7, 1, honest.input_hash, os.urandom(32), model, 0, 10, now)
        key = bytes(dev_account(1).key)
        domain = node.registry_domain()
        _, slash = reporter.slash(honest, sign_commitment(honest, domain, key), other,
                                  sign_commitment(other, domain, key))
        return {"gas_register_bonded": int(register.gas_used), "gas_slash": int(slash.gas_used)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verification.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="simulated generations (default 1000)")
    parser.add_argument("--check-steps", type=int, default=3, help="steps a simulated check takes (default 3)")
    parser.add_argument("--pairs", type=int, default=4, help="alternating q=0 / q=0.02 pairs (default 4)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per real generation (default 64)")
    parser.add_argument("--min-checks", type=int, default=2000, help="honest checks to run (default 2000)")
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args(argv)
    out: dict[str, float | int | str] = {"benchmark": "verification"}
    detect, delay = simulate_detection(args.runs, 500, 0.1, 0.05, args.check_steps, seed=0)
    out.update(detect_prob=detect, detect_mean_tokens=delay, detect_runs=args.runs)
    say(f"simulated: detection {detect:.4f} over {args.runs} runs (mean {delay:.1f} tokens)")
    out.update(measure_gas())
    with tempfile.TemporaryDirectory(prefix="p2pllm-verify-") as tmp:
        out.update(measure_network(args.model, args.pairs, args.tokens, args.min_checks, Path(tmp)))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
