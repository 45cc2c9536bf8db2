"""scripts/deploy.py against a real anvil: the deployment file, and one clear line for each failure."""

from __future__ import annotations

import json
import subprocess
import sys

from eth_account import Account

from devkit.compile import REPO_ROOT
from devkit.devnet import Anvil
from p2pllm.chain import Chain, Deployment

DEPLOY = [sys.executable, str(REPO_ROOT / "scripts" / "deploy.py")]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*DEPLOY, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_deploy_writes_deployment_file(anvil: Anvil, tmp_path) -> None:
    result = _run("--network", "anvil", "--rpc-url", anvil.rpc_url, "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "anvil.json").read_text())
    assert data["chain_id"] == 31337 and data["compiler"] == "0.8.30" and data["evm_version"] == "cancun"
    assert data["deploy_block"] >= 1
    chain = Chain.connect(anvil.rpc_url, deployment=Deployment.load(tmp_path / "anvil.json"))
    assert chain.escrow_periods() == (data["thaw_period_s"], data["max_receipt_validity_s"])


def _assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def test_unreachable_rpc(tmp_path) -> None:
    result = _run("--network", "anvil", "--rpc-url", "http://127.0.0.1:1", "--out-dir", str(tmp_path))
    _assert_one_line_error(result, "cannot reach RPC")


def test_wrong_chain_id(anvil: Anvil, tmp_path) -> None:
    result = _run("--network", "anvil", "--rpc-url", anvil.rpc_url, "--chain-id", "11155111",
                  "--out-dir", str(tmp_path))
    _assert_one_line_error(result, "expected 11155111")


def test_unfunded_account(anvil: Anvil, tmp_path) -> None:
    key = Account.create().key.hex()
    result = _run("--network", "devnet", "--rpc-url", anvil.rpc_url, "--private-key-env", "DEPLOY_KEY",
                  "--out-dir", str(tmp_path), env={"DEPLOY_KEY": key})
    _assert_one_line_error(result, "has 0 wei")


def test_missing_key_env(anvil: Anvil, tmp_path) -> None:
    result = _run("--network", "devnet", "--rpc-url", anvil.rpc_url, "--private-key-env", "NOPE_NOT_SET",
                  "--out-dir", str(tmp_path))
    _assert_one_line_error(result, "NOPE_NOT_SET is not set")


def test_no_code_at_deployment_address(anvil: Anvil, tmp_path) -> None:
    result = _run("--network", "anvil", "--rpc-url", anvil.rpc_url, "--out-dir", str(tmp_path))
    assert result.returncode == 0
    data = json.loads((tmp_path / "anvil.json").read_text())
    data["registry"] = "0x" + "34" * 20
    (tmp_path / "anvil.json").write_text(json.dumps(data))
    from p2pllm.chain import ChainError

    try:
        Chain.connect(anvil.rpc_url, deployment=Deployment.load(tmp_path / "anvil.json"))
    except ChainError as exc:
        assert "no contract code for OfferRegistry" in str(exc)
    else:
        raise AssertionError("expected ChainError")


def test_chain_without_transient_storage_is_refused(tmp_path) -> None:
    with Anvil(extra_args=("--hardfork", "shanghai")) as shanghai:
        result = _run("--network", "anvil", "--rpc-url", shanghai.rpc_url, "--out-dir", str(tmp_path))
    _assert_one_line_error(result, "lacks EIP-1153 transient storage")
    assert not (tmp_path / "anvil.json").exists()


def test_thaw_bounds(tmp_path) -> None:
    for thaw, validity in (("3599", "1"), (str(31 * 86400), "86400"), ("90000", "87000"), ("7200", "0")):
        result = _run("--network", "anvil", "--rpc-url", "http://127.0.0.1:1", "--thaw-period", thaw,
                      "--max-receipt-validity", validity, "--out-dir", str(tmp_path))
        assert result.returncode == 2
        assert "--thaw-period <= 2592000" in result.stderr and "Traceback" not in result.stderr
