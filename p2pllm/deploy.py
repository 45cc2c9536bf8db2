"""`p2pllm-deploy`: deploy OfferRegistry + PaymentEscrow from the bytecode the package ships
(`p2pllm.artifacts`), then write `<network>.json` where the CLIs look for it (`p2pllm.deployments`) and say where.

    p2pllm-deploy --network anvil                                  # local anvil, dev account 0
    p2pllm-deploy --network sepolia --rpc-url URL --keystore key.json
    p2pllm-deploy --network anvil --min-bond 0.1 --commitment-validity 3600 --slash-reward-bps 2500
    python scripts/deploy.py --network anvil                       # the same from a checkout, rebuilding the
                                                                   # artifacts first if contracts/src changed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2pllm.artifacts import ArtifactError
from p2pllm.chain import (
    DEFAULT_COMMITMENT_VALIDITY_S,
    DEFAULT_MIN_BOND_WEI,
    DEFAULT_SLASH_REWARD_BPS,
    Chain,
    ChainError,
    bond_params_problem,
    default_bond_thaw_s,
)
from p2pllm.cli_common import format_eth, parse_eth
from p2pllm.deployments import candidate_paths, default_output_dir, user_data_dir
from p2pllm.keys import ANVIL_CHAIN_ID, KeyError_, KeySource, load_account

DEFAULT_ANVIL_RPC = "http://127.0.0.1:8545"
MAX_THAW_S = 30 * 86400  # PaymentEscrow.MAX_THAW_PERIOD
MIN_THAW_MARGIN_S = 3600  # PaymentEscrow.MIN_THAW_MARGIN


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p2pllm-deploy", description="Deploy the P2P-LLM settlement contracts.")
    parser.add_argument("--network", required=True, help="name for deployments/<network>.json; 'anvil' = local dev")
    parser.add_argument("--rpc-url", help=f"JSON-RPC endpoint (default for anvil: {DEFAULT_ANVIL_RPC})")
    parser.add_argument("--chain-id", type=int, help="refuse to deploy unless the RPC reports this chain id")
    parser.add_argument("--keystore", type=Path,
                        help="encrypted keystore file (password: $P2PLLM_KEYSTORE_PASSWORD or prompt)")
    parser.add_argument("--private-key-env", metavar="VAR", help="environment variable holding the deployer key")
    parser.add_argument("--dev-account", type=int, help="anvil dev account index (default 0 on anvil)")
    parser.add_argument("--thaw-period", type=int, default=2 * 86400,
                        help="how long releasing funds reserved for a node thaws, s (default 2 days; at most 30 days)")
    parser.add_argument("--max-receipt-validity", type=int, default=86400,
                        help="latest receipt deadline from claim time, s (default 1 day; the thaw must exceed it by "
                             "at least an hour)")
    parser.add_argument("--offer-ttl", type=int, default=600, help="offer lifetime without heartbeat, s (default 600)")
    parser.add_argument("--min-bond", type=parse_eth, default=DEFAULT_MIN_BOND_WEI, metavar="ETH",
                        help=f"least bond a node must hold to register offers (default "
                             f"{format_eth(DEFAULT_MIN_BOND_WEI)})")
    parser.add_argument("--commitment-validity", type=int, default=DEFAULT_COMMITMENT_VALIDITY_S, metavar="S",
                        help="how long after it is issued a node's signed commitment can still prove equivocation, "
                             f"s (default {DEFAULT_COMMITMENT_VALIDITY_S})")
    parser.add_argument("--bond-thaw", type=int, metavar="S",
                        help="how long a bond withdrawal thaws, s; at least max(--commitment-validity, "
                             "--max-receipt-validity) + 3600 (default: max(--thaw-period, --commitment-validity) "
                             "+ 3600)")
    parser.add_argument("--slash-reward-bps", type=int, default=DEFAULT_SLASH_REWARD_BPS, metavar="N",
                        help="share of a slashed bond paid to the reporter, basis points 1-9999; the rest is burned "
                             f"(default {DEFAULT_SLASH_REWARD_BPS})")
    parser.add_argument("--out-dir", type=Path,
                        help="where to write <network>.json (default: ./deployments; --user: the per-user directory)")
    parser.add_argument("--user", action="store_true",
                        help=f"write to the per-user data directory ({user_data_dir() / 'deployments'}), found from "
                             "any working directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        candidate_paths(args.network)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out_dir and args.user:
        print("error: give --out-dir or --user, not both", file=sys.stderr)
        return 2
    is_anvil = args.network == "anvil"
    rpc_url = args.rpc_url or (DEFAULT_ANVIL_RPC if is_anvil else None)
    if rpc_url is None:
        print(f"error: --rpc-url is required for network {args.network!r}", file=sys.stderr)
        return 2
    validity, thaw = args.max_receipt_validity, args.thaw_period
    if not (validity > 0 and validity + MIN_THAW_MARGIN_S <= thaw <= MAX_THAW_S):
        print(f"error: need 0 < --max-receipt-validity and --max-receipt-validity + {MIN_THAW_MARGIN_S} <= "
              f"--thaw-period <= {MAX_THAW_S}", file=sys.stderr)
        return 2
    bond_thaw = args.bond_thaw if args.bond_thaw is not None else default_bond_thaw_s(thaw, args.commitment_validity)
    problem = bond_params_problem(args.min_bond, bond_thaw, args.commitment_validity, args.slash_reward_bps, validity)
    if problem is not None:
        print(f"error: --min-bond/--bond-thaw/--commitment-validity/--slash-reward-bps: {problem}", file=sys.stderr)
        return 2
    dev = args.dev_account
    if dev is None and is_anvil and not (args.keystore or args.private_key_env):
        dev = 0
    try:
        account = load_account(KeySource(keystore=args.keystore, private_key_env=args.private_key_env, dev_account=dev))
        expected = args.chain_id if args.chain_id is not None else (ANVIL_CHAIN_ID if is_anvil else None)
        chain = Chain.connect(rpc_url, account, expected_chain_id=expected)
        if not chain.supports_transient_storage():
            print(f"error: chain {chain.chain_id} at {rpc_url} lacks EIP-1153 transient storage (Cancun), which the "
                  "escrow's reentrancy guard needs; deploy to a Cancun-or-later chain", file=sys.stderr)
            return 1
        print(f"deploying from {account.address} to chain {chain.chain_id} at {rpc_url} ...", file=sys.stderr)
        deployment = chain.deploy_contracts(
            args.network, rpc_url, args.thaw_period, args.max_receipt_validity, args.offer_ttl,
            min_bond_wei=args.min_bond, commitment_validity_s=args.commitment_validity, bond_thaw_s=bond_thaw,
            slash_reward_bps=args.slash_reward_bps,
        )
    except (ChainError, ArtifactError, KeyError_) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out_dir = args.out_dir or (user_data_dir() / "deployments" if args.user else default_output_dir())
    path = out_dir.resolve() / f"{args.network}.json"
    deployment.save(path)
    print(f"OfferRegistry  {deployment.registry}")
    print(f"PaymentEscrow  {deployment.escrow}")
    print(f"bond: at least {format_eth(deployment.min_bond_wei)}, thaws {deployment.bond_thaw_s} s; commitments "
          f"slashable for {deployment.commitment_validity_s} s; reporter gets {deployment.slash_reward_bps / 100:g} %")
    print(f"chain id {deployment.chain_id}, block {deployment.deploy_block}, written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
