"""End to end on a real anvil with a real `p2pnode serve` process (uvicorn) over the tiny Llama:
register → serve → reserve for the node → prefill + decode with receipts → claim → the node's allocation moved
exactly price × tokens; and a node killed with SIGKILL claims, on restart, everything it had accepted, then
serves a new session of the same client only up to what is left reserved for it."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import torch
from websockets.exceptions import ConnectionClosed

from node.cli import main as p2pnode
from p2pllm.chain import Chain
from p2pllm.keys import dev_account
from p2pllm.models import ModelSource
from p2pllm.shard import load_shard
from p2pllm.wire import NodeInfo, SessionOpened, StepError, StepResult
from tests.chain_fixtures import DevChain
from tests.node.helpers import PayingSession, start_node

PRICE_WEI = 10**12  # 0.000001 ETH per token
NODE_ACCOUNT, CLIENT_ACCOUNT = 1, 2


@pytest.fixture
def deployment_file(dev_chain: DevChain, tmp_path) -> str:
    path = tmp_path / "deployment.json"
    dev_chain.deployment.save(path)
    return str(path)


def _serve_args(model: ModelSource, deployment_file: str, data_dir, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--layers", "0-8", "--price", "0.000001", "--model", str(model.path), "--port", "0",
            "--deployment", deployment_file, "--dev-account", str(NODE_ACCOUNT), "--data-dir", str(data_dir),
            "--claim-min", "1", "--claim-interval", "3600", *extra]


def _session(dev_chain: DevChain, endpoint: str) -> PayingSession:
    client = dev_chain.as_account(CLIENT_ACCOUNT)
    info = NodeInfo.from_json(httpx.get(f"{endpoint}/info").json())
    return PayingSession(endpoint, os.urandom(32), bytes(client.account.key), client.address, info.node,
                         client.escrow_domain(), info.price_wei_per_token, client.block_timestamp() + 3600)


def test_register_serve_pay_claim(dev_chain: DevChain, deployment_file: str, tiny_llama_source: ModelSource,
                                  tmp_path, capsys) -> None:
    assert p2pnode(["register", "--layers", "0-4", "--price", "0.000002", "--model", str(tiny_llama_source.path),
                    "--endpoint", "http://127.0.0.1:9", "--deployment", deployment_file,
                    "--dev-account", str(NODE_ACCOUNT), "--json"]) == 0
    registered = json.loads(capsys.readouterr().out)
    assert registered["offer_id"] == 1 and registered["tx_hash"].startswith("0x")

    client_chain = dev_chain.as_account(CLIENT_ACCOUNT)
    node_address = dev_account(NODE_ACCOUNT).address
    client_chain.reserve([node_address], [10**17], deposit_wei=10**17)
    cpu = max(os.sched_getaffinity(0))
    node = start_node(_serve_args(tiny_llama_source, deployment_file, tmp_path / "node", ("--cpus", str(cpu))),
                      cwd=tmp_path)
    try:
        # --cpus pinned every thread of the node, including those torch and uvicorn started after it
        threads = os.listdir(f"/proc/{node.process.pid}/task")
        assert len(threads) > 1 and all(os.sched_getaffinity(int(t)) == {cpu} for t in threads)
        assert f"running on CPUs {cpu}" in "".join(node.lines)
        info = NodeInfo.from_json(httpx.get(f"{node.endpoint}/info").json())
        assert (info.layer_start, info.layer_end, info.offer_id) == (0, 8, 2)
        session = _session(dev_chain, node.endpoint)
        assert isinstance(session.open(max_length=16, span=(0, 8)), SessionOpened)
        reference = load_shard(tiny_llama_source, 0, 8)
        cache = reference.new_cache()
        torch.manual_seed(0)
        steps = [torch.randn(1, 5, 256)] + [torch.randn(1, 1, 256) for _ in range(3)]
        position = 0
        for hidden in steps:
            answer = session.forward(hidden)
            assert isinstance(answer, StepResult), answer
            positions = torch.arange(position, position + hidden.shape[1])
            with torch.inference_mode():
                want = reference(hidden, positions, cache)
            torch.testing.assert_close(answer.hidden, want, rtol=1e-4, atol=1e-4)  # thread counts differ
            position += hidden.shape[1]
        # A frame beyond the largest step a session may send is refused by the WebSocket layer (1009).
        # Just over the limit (2048 tokens + 256 KiB): small enough to sit in the sockets' buffers, so the send
        # completes and the node's 1009 close is read, rather than lost to a reset while 4 MiB are still going out.
        with pytest.raises(ConnectionClosed) as closed:  # the close may already cut the send short
            session.send(session.step(torch.randn(1, 2400, 256)))  # 2.34 MiB
            session.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        metrics = httpx.get(f"{node.endpoint}/metrics").text
        assert "p2pllm_tokens_served_total 8" in metrics
        assert f"p2pllm_unclaimed_wei {8 * PRICE_WEI}" in metrics
    finally:
        assert node.stop() == 0  # graceful: claims what it holds on the way out
    node_chain = Chain.connect(dev_chain.anvil.rpc_url, dev_account(NODE_ACCOUNT), dev_chain.deployment)
    assert node_chain.paid_for(client_chain.address, node.address, session.session_id) == 8 * PRICE_WEI
    assert client_chain.allocation_of(client_chain.address, node.address).amount_wei == 10**17 - 8 * PRICE_WEI
    assert client_chain.pool_balance(client_chain.address) == 0
    assert "claimed 1 receipt(s), 8000000000000 wei" in "".join(node.lines)


def test_kill_9_then_restart_claims_everything(dev_chain: DevChain, deployment_file: str,
                                               tiny_llama_source: ModelSource, tmp_path) -> None:
    client_chain = dev_chain.as_account(CLIENT_ACCOUNT)
    reserved = 15 * PRICE_WEI
    client_chain.reserve([dev_account(NODE_ACCOUNT).address], [reserved], deposit_wei=reserved)
    args = _serve_args(tiny_llama_source, deployment_file, tmp_path / "node", ("--claim-max-age", "3600"))
    node = start_node(args, cwd=tmp_path)
    sessions = []
    for prompt_tokens in (3, 6):
        session = _session(dev_chain, node.endpoint)
        assert isinstance(session.open(max_length=16, span=(0, 8)), SessionOpened)
        assert isinstance(session.forward(torch.randn(1, prompt_tokens, 256)), StepResult)
        assert isinstance(session.forward(torch.randn(1, 1, 256)), StepResult)
        sessions.append(session)
    node.stop(signal.SIGKILL)
    assert client_chain.allocation_of(client_chain.address, node.address).amount_wei == reserved  # nothing claimed

    restarted = start_node(args, cwd=tmp_path)
    try:
        assert "unclaimed receipt(s) from a previous run" in "".join(restarted.lines)
        for session in sessions:
            assert client_chain.paid_for(client_chain.address, node.address, session.session_id) == \
                session.tokens * PRICE_WEI
        left = reserved - (4 + 7) * PRICE_WEI
        assert client_chain.allocation_of(client_chain.address, node.address).amount_wei == left
        session = _session(dev_chain, restarted.endpoint)
        opened = session.open(max_length=16, span=(0, 8))
        assert isinstance(opened, SessionOpened) and opened.client_unpaid_wei == 0
        over = session.forward(torch.randn(1, left // PRICE_WEI + 1, 256))
        assert isinstance(over, StepError) and over.code == "insufficient_escrow", over
        assert isinstance(session.forward(torch.randn(1, left // PRICE_WEI, 256)), StepResult)
    finally:
        restarted.stop()
    assert client_chain.allocation_of(client_chain.address, node.address).amount_wei == 0
