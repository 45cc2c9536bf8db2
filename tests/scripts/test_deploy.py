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


def test_bond_parameters_reach_the_registry(anvil: Anvil, tmp_path, capsys) -> None:
    from p2pllm.deploy import main as deploy_main

    assert deploy_main(["--network", "anvil", "--rpc-url", anvil.rpc_url, "--out-dir", str(tmp_path),
                        "--min-bond", "0.5", "--commitment-validity", "3600", "--bond-thaw", "200000",
                        "--slash-reward-bps", "2500"]) == 0
    assert "bond: at least 0.5 ETH, thaws 200000 s" in capsys.readouterr().out
    deployment = Deployment.load(tmp_path / "anvil.json")
    assert (deployment.min_bond_wei, deployment.commitment_validity_s, deployment.bond_thaw_s,
            deployment.slash_reward_bps) == (5 * 10**17, 3600, 200000, 2500)
    chain = Chain.connect(anvil.rpc_url, deployment=deployment)
    assert (chain.min_bond(), *chain.bond_periods()) == (5 * 10**17, 200000, 3600, 2500)
    assert deploy_main(["--network", "anvil", "--rpc-url", anvil.rpc_url, "--out-dir", str(tmp_path)]) == 0
    defaults = Deployment.load(tmp_path / "anvil.json")
    assert (defaults.min_bond_wei, defaults.commitment_validity_s, defaults.bond_thaw_s,
            defaults.slash_reward_bps) == (10**16, 86400, 2 * 86400 + 3600, 5000)


def test_bond_parameter_bounds(tmp_path, capsys) -> None:
    from p2pllm.deploy import main as deploy_main

    cases = [
        (["--min-bond", "0"], "minimum bond must be more than 0"),
        (["--commitment-validity", "0"], "commitment validity must be positive"),
        (["--bond-thaw", "89999"], "bond thaw must be at least"),  # < 1 day validity + 1 h
        (["--max-receipt-validity", "172800", "--thaw-period", "180000", "--bond-thaw", "90000",
          "--commitment-validity", "3600"], "max receipt validity 172800 s"),  # outlives commitments, not receipts
        (["--bond-thaw", str(61 * 86400)], "at most 5184000 s"),
        (["--slash-reward-bps", "10000"], "1..9999 basis points"),
        (["--slash-reward-bps", "0"], "1..9999 basis points"),
    ]
    for extra, fragment in cases:
        code = deploy_main(["--network", "anvil", "--rpc-url", "http://127.0.0.1:1", "--out-dir", str(tmp_path),
                            *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and fragment in lines[0], (extra, err)
    assert not (tmp_path / "anvil.json").exists()
