"""Schemathesis fuzzes a live node (real uvicorn process) from its own OpenAPI document: at least 500
generated requests, and not one 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from p2pllm.models import ModelSource
from tests.chain_fixtures import DevChain
from tests.node.helpers import start_node

MIN_REQUESTS = 500


def test_no_server_errors_under_fuzzing(dev_chain: DevChain, tiny_llama_source: ModelSource, tmp_path) -> None:
    deployment = tmp_path / "deployment.json"
    dev_chain.deployment.save(deployment)
    node = start_node(["--layers", "0-8", "--price", "0.000001", "--model", str(tiny_llama_source.path),
                       "--port", "0", "--deployment", str(deployment), "--dev-account", "1",
                       "--data-dir", str(tmp_path / "node"), "--budget-tokens", "4096"], cwd=tmp_path)
    har = tmp_path / "requests.har"
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{node.endpoint}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "150", "--workers", "1",
             "--seed", "1", "--report", "har", "--report-har-path", str(har)],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        node.stop()
    entries = json.loads(har.read_text())["log"]["entries"]
    print(f"schemathesis sent {len(entries)} requests")
    statuses = [entry["response"]["status"] for entry in entries]
    server_errors = [e["request"]["url"] for e, s in zip(entries, statuses, strict=True) if s >= 500]
    assert len(entries) >= MIN_REQUESTS, result.stdout[-3000:]
    assert not server_errors, server_errors[:5]
    assert result.returncode == 0, result.stdout[-3000:]
