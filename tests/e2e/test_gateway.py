"""The OpenAI-compatible gateway (`p2pclient serve-api`) as users meet it: the official `openai` SDK against a
real gateway process over a real local network (anvil, three `p2pnode` processes over SmolLM2-135M), and its
page in a real headless chromium.

Covered: model listing, chat (whole and streamed), completions, stop sequences, concurrent requests as
concurrent sessions, the tokens `p2pclient generate` gives for the same greedy request, and the errors an SDK
user must be able to catch: unknown model (404), bad parameters (400), over budget (429), no route (503)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from devkit.gateway import GatewayProcess
from devkit.gateway import start_gateway as start_gateway_process
from devkit.localnet import LocalNetwork, NodeSpec
from p2pllm.models import ModelSource

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "gateway.png"
QUESTION = "What is a peer-to-peer network? Answer in one sentence."


class Gateway(GatewayProcess):
    def sdk(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)


def start_gateway(net: LocalNetwork, account: int, *extra: str, model: str = MODEL) -> Gateway:
    running = start_gateway_process(net.deployment_file, account, *extra, model=model)
    return Gateway(running.process, running.url, running.lines)


@pytest.fixture(scope="module")
def network(smollm2: ModelSource, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    # AB serves two thirds for more than A and B together: the frontier has a real choice. Nodes claim every
    # few seconds, so the page shows earnings read from the chain.
    claims = ("--claim-interval", "2", "--claim-min", "0.0000001")
    specs = [NodeSpec("A", 0, 10, "0.000001", 1, extra_args=claims),
             NodeSpec("B", 10, 20, "0.000001", 2, extra_args=claims),
             NodeSpec("C", 20, 30, "0.000001", 3, extra_args=claims),
             NodeSpec("AB", 0, 20, "0.0000021", 9, extra_args=claims)]
    with LocalNetwork(tmp_path_factory.mktemp("gateway-net"), MODEL, specs, log=lambda _: None,
                      node_threads=1, one_at_a_time=True) as net:
        net.chain(7).deposit(10**17)
        yield net


@pytest.fixture(scope="module")
def gateway(network: LocalNetwork) -> Iterator[Gateway]:
    running = start_gateway(network, 7, "--verify-rate", "0")
    yield running
    running.stop()


def _cli_generate(net: LocalNetwork, prompt: str, tokens: int, chat: bool) -> dict:
    cmd = [sys.executable, "-m", "client.cli", "generate", prompt, "--max-new-tokens", str(tokens), "--json",
           "--model", MODEL, "--deployment", str(net.deployment_file), "--dev-account", "8", "--verify-rate", "0",
           *(["--chat"] if chat else [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_models_chat_and_streaming(gateway: Gateway) -> None:
    sdk = gateway.sdk()
    assert [m.id for m in sdk.models.list().data] == [MODEL]
    whole = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=12, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage.completion_tokens == 12 or whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens > 10 and whole.usage.total_tokens == whole.usage.prompt_tokens + \
        whole.usage.completion_tokens
    extension = whole.model_extra["p2pllm"]
    layers = [h["layers"] for h in extension["route"]]
    assert int(extension["cost_wei"]) > 0 and layers[0][0] == 0 and layers[-1][1] == 30
    assert all(a[1] == b[0] for a, b in itertools.pairwise(layers))
    pieces = []
    usage = None
    for chunk in sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=12, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(pieces) > 1 and "".join(pieces) == text
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_tokens_equal_the_cli_for_the_same_greedy_request(gateway: Gateway, network: LocalNetwork) -> None:
    sdk = gateway.sdk()
    cli = _cli_generate(network, "The capital of France is", 10, chat=False)
    api = sdk.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10, temperature=0)
    assert api.choices[0].text == cli["text"] and api.usage.completion_tokens == len(cli["token_ids"])
    cli_chat = _cli_generate(network, QUESTION, 10, chat=True)
    api_chat = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                           max_tokens=10, temperature=0)
    assert api_chat.choices[0].message.content == cli_chat["text"]


def test_stop_sequences(gateway: Gateway) -> None:
    sdk = gateway.sdk()
    full = sdk.completions.create(model=MODEL, prompt="Count: one, two, three,", max_tokens=12, temperature=0)
    text = full.choices[0].text
    cut = text.index(",", 1) if "," in text[1:] else len(text) // 2
    stop = text[cut:cut + 2]
    stopped = sdk.completions.create(model=MODEL, prompt="Count: one, two, three,", max_tokens=12, temperature=0,
                                     stop=[stop])
    assert stopped.choices[0].text == text[:text.index(stop)] and stopped.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in sdk.completions.create(
        model=MODEL, prompt="Count: one, two, three,", max_tokens=12, temperature=0, stop=[stop], stream=True)
        if c.choices)
    assert streamed == stopped.choices[0].text


def test_a_reader_leaving_mid_stream_is_still_booked(gateway: Gateway) -> None:
    """The SDK closes a stream after two chunks: the gateway stops that generation, closes its sessions and books
    what it cost (the nodes are owed it)."""
    import httpx

    def spending() -> dict:
        return httpx.get(f"{gateway.url}/api/network", timeout=30).json()["spending"]

    before = spending()
    stream = gateway.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                                   max_tokens=60, temperature=0, stream=True)
    for seen, _ in enumerate(stream):
        if seen == 2:
            break
    stream.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = spending()
        if after["requests"] > before["requests"]:
            break
        time.sleep(0.5)
    assert after["requests"] == before["requests"] + 1
    assert int(after["spent_wei"]) > int(before["spent_wei"]) and int(after["held_wei"]) == 0


def test_concurrent_requests_are_concurrent_sessions(gateway: Gateway) -> None:
    sdk = gateway.sdk()

    def ask(i: int) -> tuple[str, float, float]:
        started = time.monotonic()
        answer = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=8, temperature=0)
        return answer.choices[0].message.content, started, time.monotonic()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert len({text for text, _, _ in answers}) == 1
    # They overlapped: every request started before the first one finished.
    assert max(start for _, start, _ in answers) < min(end for _, _, end in answers)


def test_errors_are_openai_errors(gateway: Gateway, network: LocalNetwork, tiny_chat_model: ModelSource,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = gateway.sdk()
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    assert bad.value.body["param"] == "n"

    poor = start_gateway(network, 6, "--verify-rate", "0", "--budget", "0.0000001")
    try:
        with pytest.raises(openai.RateLimitError) as spent:
            poor.sdk().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4)
        assert spent.value.code == "insufficient_quota" and "budget" in spent.value.message
    finally:
        poor.stop()

    stranded = start_gateway(network, 5, "--verify-rate", "0", model=str(tiny_chat_model.path))
    try:
        with pytest.raises(openai.InternalServerError) as unrouted:
            stranded.sdk().chat.completions.create(model=str(tiny_chat_model.path),
                                                   messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert unrouted.value.status_code == 503 and unrouted.value.code == "no_route"
    finally:
        stranded.stop()

    monkeypatch.setenv("P2PLLM_TEST_KEY", "s3cret")
    locked = start_gateway(network, 4, "--verify-rate", "0", "--api-key-env", "P2PLLM_TEST_KEY")
    try:
        with pytest.raises(openai.AuthenticationError):
            locked.sdk("wrong").models.list()
        assert [m.id for m in locked.sdk("s3cret").models.list().data] == [MODEL]
    finally:
        locked.stop()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (scripts/setup.sh "
                    "installs it where it may use apt-get)")
def test_the_page_in_a_real_browser(gateway: Gateway, network: LocalNetwork) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    addresses = [node.address for node in network.nodes.values()]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(gateway.url + "/")
            for address in addresses:
                page.wait_for_selector(f'#offers tr[data-node="{address}"]', timeout=30_000)
            assert page.locator("#coverage .bar").count() == 30
            assert page.locator("#frontier circle").count() >= 1
            page.fill("#prompt", QUESTION)
            page.click("#send")
            # The answer grows piece by piece as chunks arrive, then the route and cost appear.
            page.wait_for_function("document.querySelector('.msg.answer') && "
                                   "Number(document.querySelector('.msg.answer').dataset.pieces) >= 2",
                                   timeout=120_000)
            page.wait_for_function("document.getElementById('chat-meta').textContent.includes('done')",
                                   timeout=120_000)
            assert page.locator(".msg.answer").inner_text().strip()
            assert "cost" in page.locator("#chat-meta").inner_text()
            page.wait_for_selector("#earnings tbody tr", timeout=30_000)  # claimed on-chain, read back
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
