"""Prometheus text-format metrics for one node process: counters, gauges and one latency histogram.
Knows nothing about HTTP frameworks; the app renders `Metrics.render()` at GET /metrics."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

STEP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self.tokens_served = 0
        self.forwards = 0
        self.rejections: dict[str, int] = {}
        self._bucket_counts = [0] * (len(STEP_BUCKETS_S) + 1)
        self._step_sum_s = 0.0
        self._gauges = gauges or {}

    def observe_step(self, seconds: float, tokens: int) -> None:
        with self._lock:
            self.forwards += 1
            self.tokens_served += tokens
            self._step_sum_s += seconds
            self._bucket_counts[bisect.bisect_left(STEP_BUCKETS_S, seconds)] += 1

    def reject(self, code: str) -> None:
        with self._lock:
            self.rejections[code] = self.rejections.get(code, 0) + 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP p2pllm_tokens_served_total Tokens processed through this node's layers.",
                "# TYPE p2pllm_tokens_served_total counter",
                f"p2pllm_tokens_served_total {self.tokens_served}",
                "# HELP p2pllm_requests_rejected_total Requests refused, by error code.",
                "# TYPE p2pllm_requests_rejected_total counter",
            ]
            lines += [f'p2pllm_requests_rejected_total{{code="{c}"}} {n}' for c, n in sorted(self.rejections.items())]
            lines += [
                "# HELP p2pllm_step_latency_seconds Time to run one forward through the shard.",
                "# TYPE p2pllm_step_latency_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip((*STEP_BUCKETS_S, float("inf")), self._bucket_counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'p2pllm_step_latency_seconds_bucket{{le="{le}"}} {cumulative}')
            lines.append(f"p2pllm_step_latency_seconds_sum {self._step_sum_s}")
            lines.append(f"p2pllm_step_latency_seconds_count {self.forwards}")
        for name, (help_text, read) in self._gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        return "\n".join(lines) + "\n"
