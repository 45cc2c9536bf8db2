// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {Vm} from "./utils/Test.sol";
import {GasBurningNode, HeavyHookNode, RevertingNode, SwitchNode} from "./utils/Nodes.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice A node whose receive hook tries to claim again while it is paid (flags in one slot, to fit TRANSFER_GAS).
contract ReentrantNode {
    PaymentEscrow internal immutable escrow;
    PaymentEscrow.Receipt internal replay;
    bytes internal replaySig;
    bool public attempted;
    bool public reentered;
    bytes4 public reentryError;

    constructor(PaymentEscrow escrow_) {
        escrow = escrow_;
    }

    function arm(PaymentEscrow.Receipt calldata receipt, bytes calldata sig) external {
        replay = receipt;
        replaySig = sig;
    }

    receive() external payable {
        if (attempted) return;
        attempted = true;
        try escrow.claim(replay, replaySig) {
            reentered = true;
        } catch (bytes memory err) {
            reentryError = bytes4(err);
        }
    }
}

/// @notice The escrow's attack checklist: each test names the guard it exercises and would fail without it.
contract PaymentEscrowAttacksTest is EscrowFixture {
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    uint256 internal constant SECOND_KEY = 0x5EC0;
    bytes32 internal constant SESSION_2 = keccak256("session-2");
    address internal second;

    function setUp() public override {
        super.setUp();
        second = vm.addr(SECOND_KEY);
        _deposit(client, 10 ether);
    }

    function _badSig(address expected, address recovered, uint8 code) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(PaymentEscrow.Escrow__BadSignature.selector, expected, recovered, code);
    }

    function _reserveFromPool(address node, uint256 amount) internal {
        vm.prank(client);
        escrow.reserve(_list(node), _list(amount));
    }

    function _one(PaymentEscrow.Receipt memory r, bytes memory sig)
        internal
        pure
        returns (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs)
    {
        rs = new PaymentEscrow.Receipt[](1);
        sigs = new bytes[](1);
        rs[0] = r;
        sigs[0] = sig;
    }

    // ================================================================ signatures and replay (ported)

    // Guard: ECDSA.tryRecover takes only 65-byte signatures (the EIP-2098 compact twin is rejected).
    function test_attack_64ByteSignatureRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(r));
        bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
        vm.expectRevert(_badSig(client, address(0), 2));
        escrow.claim(r, abi.encodePacked(rr, vs));
    }

    // Guard: ECDSA.tryRecover rejects s in the upper half order (the malleable twin of a valid signature).
    function test_attack_highSSignatureRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(r));
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flipped = v == 27 ? 28 : 27;
        vm.expectRevert(_badSig(client, address(0), 3));
        escrow.claim(r, abi.encodePacked(rr, highS, flipped));
    }

    // Guard: a signature that fails to recover (address 0) never matches, even a receipt naming client 0.
    function test_attack_zeroAddressRecoveryRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        r.client = address(0);
        bytes memory garbage = abi.encodePacked(bytes32(uint256(1)), bytes32(uint256(1)), uint8(29));
        vm.expectRevert(_badSig(address(0), address(0), 1));
        escrow.claim(r, garbage);
    }

    // Guard: the EIP-712 domain binds the chain id: the same escrow address on a fork rejects the receipt.
    function test_attack_replayFromOtherChainRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes32 homeDigest = escrow.receiptDigest(r);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, homeDigest);
        // A constant chain id: the optimizer may re-read block.chainid for a local copy of it.
        vm.chainId(424_242);
        bytes32 forkDigest = escrow.receiptDigest(r);
        assertTrue(forkDigest != homeDigest, "digest depends on chain id");
        vm.expectRevert(_badSig(client, ecrecover(forkDigest, v, rr, s), 0));
        escrow.claim(r, abi.encodePacked(rr, s, v));
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: the EIP-712 domain binds the escrow's address.
    function test_attack_replayFromOtherDeploymentRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow other = new PaymentEscrow(THAW, VALIDITY);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _signOn(other, CLIENT_KEY, r);
        vm.expectRevert();
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: the domain version is "2": a receipt signed for the version-1 escrow's domain is not valid here.
    function test_attack_versionOneReceiptRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes32 v1Domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("P2P-LLM PaymentEscrow"),
                keccak256("1"),
                block.chainid,
                address(escrow)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(escrow.RECEIPT_TYPEHASH(), r.client, r.node, r.sessionId, r.tokens, r.amount, r.deadline)
        );
        (uint8 v, bytes32 rr, bytes32 s) =
            vm.sign(CLIENT_KEY, keccak256(abi.encodePacked("\x19\x01", v1Domain, structHash)));
        bytes memory sig = abi.encodePacked(rr, s, v);
        vm.expectRevert();
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: cumulative accounting per (client, node, session): a replay or older receipt, alone or batched, pays 0.
    function test_attack_sameReceiptTwicePaysOnce() public {
        _reserveFromPool(nodeA, 10 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        assertEq(escrow.claim(r, sig), 1 ether, "first");
        assertEq(escrow.claim(r, sig), 0, "replay pays 0");
        PaymentEscrow.Receipt memory older = _receipt(nodeA, 0.4 ether);
        assertEq(escrow.claim(older, _sign(CLIENT_KEY, older)), 0, "an older, smaller receipt pays 0");
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](3);
        bytes[] memory sigs = new bytes[](3);
        rs[0] = _receiptOf(client, nodeA, SESSION_2, 2 ether);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
        (rs[1], sigs[1]) = (rs[0], sigs[0]);
        (rs[2], sigs[2]) = (r, sig);
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0] + paid[1] + paid[2], 2 ether, "duplicates in a batch pay once");
        assertEq(nodeA.balance, 3 ether, "node paid once per receipt");
        assertEq(_allocation(client, nodeA), 7 ether, "allocation debited once");
    }

    // Guard: the payee is the signed `node`, not the submitter; re-addressing the receipt breaks the signature.
    function test_attack_receiptReaddressedToAnotherNodeRejected() public {
        vm.prank(client);
        escrow.reserve(_list(nodeA, nodeB), _list(1 ether, 1 ether));
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        PaymentEscrow.Receipt memory stolen = _receipt(nodeB, 1 ether);
        vm.prank(nodeB);
        vm.expectRevert();
        escrow.claim(stolen, sig);
        vm.prank(nodeB);
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 1 ether, "A paid");
        assertEq(nodeB.balance, 0, "B not paid");
        assertEq(_allocation(client, nodeB), 1 ether, "B's allocation untouched");
    }

    // Guard: nonReentrant: a node's receive hook cannot re-enter claim while it is being paid.
    function test_attack_reentrancyThroughNodeReceiveHook() public {
        ReentrantNode evil = new ReentrantNode(escrow);
        _reserveFromPool(address(evil), 10 ether);
        PaymentEscrow.Receipt memory first = _receipt(address(evil), 1 ether);
        PaymentEscrow.Receipt memory second_ = _receipt(address(evil), 3 ether);
        evil.arm(second_, _sign(CLIENT_KEY, second_));
        escrow.claim(first, _sign(CLIENT_KEY, first));
        assertTrue(evil.attempted(), "hook ran");
        assertTrue(!evil.reentered(), "re-entry must fail");
        assertEq(evil.reentryError(), ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector, "guard");
        assertEq(address(evil).balance, 1 ether, "paid only the first receipt");
        assertEq(escrow.paidFor(client, address(evil), SESSION), 1 ether, "recorded once");
    }

    // Guard: nonReentrant on claimBatch: a hook paid by a batch cannot re-enter claim either.
    function test_attack_reentrancyThroughNodeReceiveHookInBatch() public {
        ReentrantNode evil = new ReentrantNode(escrow);
        _reserveFromPool(address(evil), 10 ether);
        PaymentEscrow.Receipt memory first = _receipt(address(evil), 1 ether);
        PaymentEscrow.Receipt memory second_ = _receipt(address(evil), 3 ether);
        evil.arm(second_, _sign(CLIENT_KEY, second_));
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(first, _sign(CLIENT_KEY, first));
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0], 1 ether, "batch paid the first receipt");
        assertTrue(evil.attempted() && !evil.reentered(), "re-entry must fail");
        assertEq(evil.reentryError(), ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector, "guard");
        assertEq(address(evil).balance, 1 ether, "paid once");
    }

    // Guard: pay min(owed, allocation) and record only what was paid; the rest is paid after a top-up.
    function test_attack_underfundedClaimPaysAllocationThenRestAfterTopUp() public {
        _reserveFromPool(nodeA, 10 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 15 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        assertEq(escrow.claim(r, sig), 10 ether, "pays the whole allocation");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 10 ether, "records only what it paid");
        _reserve(client, nodeA, 7 ether);
        assertEq(escrow.claim(r, sig), 5 ether, "the rest after a top-up");
        assertEq(_allocation(client, nodeA), 2 ether, "client keeps the excess reserved");
        assertEq(nodeA.balance, 15 ether, "node paid in full");
    }

    // Guard: receipts past their deadline are rejected (alone with ReceiptExpired, in a batch as Expired).
    function test_attack_expiredReceiptRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.warp(r.deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__ReceiptExpired.selector, r.deadline, uint256(r.deadline) + 1)
        );
        escrow.claim(r, sig);
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(r, sig);
        assertEq(escrow.claimBatch(rs, sigs)[0], 0, "batch pays 0");
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: deadline <= now + maxReceiptValidity, so no receipt outlives a release's thaw.
    function test_attack_deadlineTooFarRejected() public {
        _reserveFromPool(nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        r.deadline = uint64(_now() + THAW + 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__DeadlineTooFar.selector, r.deadline, _now() + VALIDITY)
        );
        escrow.claim(r, sig);
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(r, sig);
        assertEq(escrow.claimBatch(rs, sigs)[0], 0, "batch pays 0");
    }

    // Guard: allocations, release requests and pools are keyed by msg.sender: a stranger touches only its own.
    function test_attack_thirdPartyCannotTouchAnotherClientsFunds() public {
        _reserveFromPool(nodeA, 3 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(3 ether));
        address mallory = address(0xBADBAD);
        vm.startPrank(mallory);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, mallory, nodeA));
        escrow.cancelRelease(_list(nodeA));
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadReleaseAmount.selector, nodeA, 1, 0));
        escrow.requestRelease(_list(nodeA), _list(1));
        vm.warp(_now() + THAW);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, mallory, nodeA));
        escrow.release(_list(nodeA));
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, mallory, 1, 0));
        escrow.withdraw(1);
        vm.stopPrank();
        (uint256 amount, uint256 thawing,) = escrow.allocationOf(client, nodeA);
        assertEq(amount, 3 ether, "victim's allocation intact");
        assertEq(thawing, 3 ether, "victim's request intact");
        assertEq(escrow.poolOf(client), 7 ether, "victim's pool intact");
    }

    // ================================================================ (a), (b): drains by the client itself

    // Guard: a claim spends only allocation(client, receipt.node); the client's own address has none to spend.
    function test_attack_selfReceiptDrainPaysNothing() public {
        _reserveFromPool(nodeA, 6 ether);
        PaymentEscrow.Receipt memory drain = _receipt(client, 10 ether);
        uint256 walletBefore = client.balance;
        assertEq(escrow.claim(drain, _sign(CLIENT_KEY, drain)), 0, "self receipt pays 0");
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(drain, _sign(CLIENT_KEY, drain));
        assertEq(escrow.claimBatch(rs, sigs)[0], 0, "in a batch too");
        assertEq(client.balance, walletBefore, "client got nothing back");
        assertEq(escrow.poolOf(client), 4 ether, "pool untouched");
        PaymentEscrow.Receipt memory honest = _receipt(nodeA, 6 ether);
        assertEq(escrow.claim(honest, _sign(CLIENT_KEY, honest)), 6 ether, "A paid in full");
        assertEq(nodeA.balance, 6 ether, "A's balance");
    }

    // Guard: same; a client that reserved for itself can take back only that self-allocation, never A's.
    function test_attack_selfReceiptSpendsOnlyASelfAllocation() public {
        vm.prank(client);
        escrow.reserve(_list(nodeA, client), _list(6 ether, 1 ether));
        PaymentEscrow.Receipt memory drain = _receipt(client, 10 ether);
        uint256 walletBefore = client.balance;
        assertEq(escrow.claim(drain, _sign(CLIENT_KEY, drain)), 1 ether, "only the self-allocation");
        assertEq(client.balance - walletBefore, 1 ether, "client got its own reservation back");
        assertEq(_allocation(client, nodeA), 6 ether, "A's allocation intact");
        PaymentEscrow.Receipt memory honest = _receipt(nodeA, 6 ether);
        assertEq(escrow.claim(honest, _sign(CLIENT_KEY, honest)), 6 ether, "A paid in full");
    }

    // Guard: same, for a second address the client controls posing as a node, claiming before A does.
    function test_attack_secondAddressDrainBeforeNodeClaims() public {
        _reserveFromPool(nodeA, 10 ether);
        PaymentEscrow.Receipt memory drain = _receipt(second, 10 ether);
        bytes memory sig = _sign(CLIENT_KEY, drain);
        vm.prank(second);
        assertEq(escrow.claim(drain, sig), 0, "second address gets nothing");
        assertEq(second.balance, 0, "second address balance");
        PaymentEscrow.Receipt memory honest = _receipt(nodeA, 10 ether);
        assertEq(escrow.claim(honest, _sign(CLIENT_KEY, honest)), 10 ether, "A paid in full");
    }

    // Guard: same; a second address with its own allocation spends only that one, even batched ahead of A.
    function test_attack_secondAddressWithOwnAllocationSpendsOnlyThat() public {
        vm.prank(client);
        escrow.reserve(_list(nodeA, second), _list(8 ether, 2 ether));
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](3);
        bytes[] memory sigs = new bytes[](3);
        rs[0] = _receipt(second, 10 ether);
        rs[1] = _receiptOf(client, second, SESSION_2, 10 ether);
        rs[2] = _receipt(nodeA, 8 ether);
        for (uint256 i; i < 3; ++i) {
            sigs[i] = _sign(CLIENT_KEY, rs[i]);
        }
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0] + paid[1], 2 ether, "second address capped by its own allocation");
        assertEq(second.balance, 2 ether, "second address balance");
        assertEq(paid[2], 8 ether, "A paid in full");
        assertEq(nodeA.balance, 8 ether, "A's balance");
    }

    // ================================================================ (d): nodes that refuse payment

    // Guard: _payGroup's per-node transfer capped at TRANSFER_GAS, with rollback and ClaimRejected(TransferFailed).
    function test_attack_batchWithRevertingAndGasBurningNodesPaysEveryoneElse() public {
        address reverting = address(new RevertingNode());
        address burning = address(new GasBurningNode());
        address[] memory nodes = new address[](4);
        (nodes[0], nodes[1], nodes[2], nodes[3]) = (nodeA, reverting, burning, nodeB);
        uint256[] memory amounts = new uint256[](4);
        (amounts[0], amounts[1], amounts[2], amounts[3]) = (2 ether, 2 ether, 2 ether, 2 ether);
        vm.prank(client);
        escrow.reserve(nodes, amounts);

        address[7] memory to = [nodeA, reverting, reverting, nodeB, burning, nodeA, nodeB];
        bytes32[7] memory sessions = [SESSION, SESSION, SESSION_2, SESSION, SESSION, SESSION_2, SESSION_2];
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](7);
        bytes[] memory sigs = new bytes[](7);
        for (uint256 i; i < 7; ++i) {
            rs[i] = _receiptOf(client, to[i], sessions[i], 0.5 ether);
            sigs[i] = _sign(CLIENT_KEY, rs[i]);
        }
        vm.recordLogs();
        // A realistic gas limit: were the burner given all the gas, it would leave too little for everyone else.
        uint256[] memory paid = escrow.claimBatch{gas: 1_000_000}(rs, sigs);
        Vm.Log[] memory logs = vm.getRecordedLogs();

        assertEq(nodeA.balance, 1 ether, "A paid both items");
        assertEq(nodeB.balance, 1 ether, "B paid both items");
        assertEq(reverting.balance + burning.balance, 0, "refusing nodes not paid");
        for (uint256 i; i < 7; ++i) {
            bool refused = to[i] == reverting || to[i] == burning;
            assertEq(paid[i], refused ? 0 : 0.5 ether, "paid per item");
            assertEq(escrow.paidFor(client, to[i], sessions[i]), refused ? 0 : 0.5 ether, "recorded per item");
            PaymentEscrow.RejectReason reason = PaymentEscrow.RejectReason.TransferFailed;
            assertEq(_rejections(logs, i, client, to[i], sessions[i], reason), refused ? 1 : 0, "TransferFailed");
        }
        assertEq(_allocation(client, reverting), 2 ether, "reverting node's allocation restored");
        assertEq(_allocation(client, burning), 2 ether, "burning node's allocation restored");
        assertEq(_eventCount(logs, PaymentEscrow.Claimed.selector), 4, "Claimed only for paid items");
    }

    // Guard: the rollback keeps refused items claimable: once the node can receive, the same receipts pay.
    function test_attack_refusedItemsStayClaimableOnceNodeReceives() public {
        SwitchNode node = new SwitchNode();
        address n = address(node);
        _reserveFromPool(n, 3 ether);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](2);
        bytes[] memory sigs = new bytes[](2);
        rs[0] = _receiptOf(client, n, SESSION, 1 ether);
        rs[1] = _receiptOf(client, n, SESSION_2, 1.5 ether);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
        sigs[1] = _sign(CLIENT_KEY, rs[1]);

        node.setMode(SwitchNode.Mode.Revert);
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0] + paid[1], 0, "refused while reverting");
        node.setMode(SwitchNode.Mode.Burn);
        paid = escrow.claimBatch{gas: 500_000}(rs, sigs);
        assertEq(paid[0] + paid[1], 0, "refused while burning gas");
        assertEq(escrow.paidFor(client, n, SESSION) + escrow.paidFor(client, n, SESSION_2), 0, "nothing recorded");
        assertEq(_allocation(client, n), 3 ether, "allocation restored");

        node.setMode(SwitchNode.Mode.Accept);
        paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0], 1 ether, "session 1 paid later");
        assertEq(paid[1], 1.5 ether, "session 2 paid later");
        assertEq(n.balance, 2.5 ether, "node paid once in full");
        assertEq(_allocation(client, n), 0.5 ether, "allocation debited once");
        paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0] + paid[1], 0, "and only once");
    }

    // Guard: the rollback restores the allocation, not the pool: a refusing node cannot free the client's funds.
    function test_attack_refusedItemsReturnToTheAllocationNotThePool() public {
        SwitchNode node = new SwitchNode();
        address n = address(node);
        _reserveFromPool(n, 4 ether);
        node.setMode(SwitchNode.Mode.Revert);
        PaymentEscrow.Receipt memory r = _receipt(n, 4 ether);
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(r, _sign(CLIENT_KEY, r));
        escrow.claimBatch(rs, sigs);
        assertEq(escrow.poolOf(client), 6 ether, "pool unchanged");
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, 7 ether, 6 ether)
        );
        escrow.withdraw(7 ether);
        assertEq(_allocation(client, n), 4 ether, "still reserved for the node");
    }

    // Guard: _trySend's gas check: too little gas reverts the whole batch (GasTooLowForTransfer), recording nothing.
    function test_attack_tooLittleGasRevertsWholeBatch() public {
        HeavyHookNode honest = new HeavyHookNode(40_000);
        address n = address(honest);
        _reserveFromPool(n, 2 ether);
        PaymentEscrow.Receipt memory r = _receipt(n, 1 ether);
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _one(r, _sign(CLIENT_KEY, r));
        uint256 lo = 30_000;
        uint256 hi = 1_000_000;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            uint256 snapshot = vm.snapshotState();
            bool ok;
            try escrow.claimBatch{gas: mid}(rs, sigs) {
                ok = true;
            } catch {}
            vm.revertToStateAndDelete(snapshot);
            if (ok) hi = mid;
            else lo = mid + 1;
        }
        try escrow.claimBatch{gas: lo - 1}(rs, sigs) {
            fail("one unit of gas less must revert");
        } catch (bytes memory err) {
            assertEq(bytes4(err), PaymentEscrow.Escrow__GasTooLowForTransfer.selector, "GasTooLowForTransfer");
        }
        assertEq(escrow.paidFor(client, n, SESSION), 0, "nothing recorded");
        assertEq(_allocation(client, n), 2 ether, "allocation intact");
        uint256[] memory paid = escrow.claimBatch{gas: lo}(rs, sigs);
        assertEq(paid[0], 1 ether, "least gas that passes the check pays the honest node");
        assertEq(honest.transfers(), 1, "hook ran");
    }

    // ================================================================ (e): thaw period bounds

    // Guard: thawPeriod <= MAX_THAW_PERIOD (30 days): a thaw near type(uint64).max would overflow readyAt.
    function test_attack_constructorRejectsHugeThaw() public {
        uint64[3] memory thaws = [uint64(30 days + 1), type(uint64).max - 1, type(uint64).max];
        for (uint256 i; i < 3; ++i) {
            vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, thaws[i], VALIDITY));
            new PaymentEscrow(thaws[i], VALIDITY);
        }
        uint64 huge = type(uint64).max;
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, huge, huge));
        new PaymentEscrow(huge, huge);
    }

    // Guard: thawPeriod >= maxReceiptValidity + MIN_THAW_MARGIN: a shorter thaw lets a release outrun receipts.
    function test_attack_constructorRejectsThawWithinValidityPlusMargin() public {
        uint64[3] memory thaws = [VALIDITY, VALIDITY + 1, VALIDITY + 1 hours - 1];
        for (uint256 i; i < 3; ++i) {
            vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, thaws[i], VALIDITY));
            new PaymentEscrow(thaws[i], VALIDITY);
        }
    }

    // Guard: MAX_THAW_PERIOD keeps now + thawPeriod inside uint64: the longest thaw works in years 2100 and 9999.
    function test_attack_maxThawFarFutureNoOverflow() public {
        uint64[2] memory times = [uint64(4_102_444_800), uint64(253_402_300_799)];
        for (uint256 i; i < 2; ++i) {
            vm.warp(times[i]);
            PaymentEscrow longest = new PaymentEscrow(30 days, 30 days - 1 hours);
            vm.startPrank(client);
            longest.reserve{value: 1 ether}(_list(nodeA), _list(1 ether));
            longest.requestRelease(_list(nodeA), _list(1 ether));
            (,, uint64 readyAt) = longest.allocationOf(client, nodeA);
            assertEq(readyAt, uint256(times[i]) + 30 days, "readyAt");
            assertEq(longest.reservedUntil(client, nodeA, type(uint64).max), 0, "all of it may thaw by then");
            vm.warp(readyAt);
            assertEq(longest.release(_list(nodeA)), 1 ether, "released");
            longest.withdraw(1 ether);
            vm.stopPrank();
        }
    }

    // ================================================================ (f): reserved funds stay reserved

    // Guard: release reverts with StillThawing before readyAt.
    function test_attack_releaseBeforeThawEndsReverts() public {
        _reserveFromPool(nodeA, 10 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(10 ether));
        uint64 readyAt = uint64(_now()) + THAW;
        vm.warp(readyAt - 1);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__StillThawing.selector, nodeA, readyAt, readyAt - 1)
        );
        escrow.release(_list(nodeA));
        assertEq(_allocation(client, nodeA), 10 ether, "still reserved");
    }

    // Guard: a new request replaces the old one and restarts the timer (it cannot inherit an earlier readyAt).
    function test_attack_restartedRequestRestartsTimer() public {
        _reserveFromPool(nodeA, 10 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(1 ether));
        vm.warp(_now() + THAW - 1);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(10 ether));
        uint64 readyAt = uint64(_now()) + THAW;
        vm.warp(_now() + 1);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__StillThawing.selector, nodeA, readyAt, _now()));
        escrow.release(_list(nodeA));
        vm.warp(readyAt);
        vm.prank(client);
        assertEq(escrow.release(_list(nodeA)), 10 ether, "released after the restarted thaw");
    }

    // Guard: thawing funds stay claimable; release returns min(thawing, what is left).
    function test_attack_claimDuringThawIsPaidAndReleaseReturnsTheRest() public {
        _reserveFromPool(nodeA, 10 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(10 ether));
        vm.warp(_now() + THAW - 1);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 4 ether);
        assertEq(escrow.claim(r, _sign(CLIENT_KEY, r)), 4 ether, "claim while thawing");
        vm.warp(_now() + 1);
        vm.prank(client);
        assertEq(escrow.release(_list(nodeA)), 6 ether, "release returns only what is left");
        assertEq(address(escrow).balance, escrow.poolOf(client), "escrow holds exactly the pool");
    }

    // Guard: withdraw draws on the pool only (InsufficientPool), never on allocations.
    function test_attack_withdrawCannotTakeAllocatedFunds() public {
        _reserveFromPool(nodeA, 7 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(7 ether));
        vm.startPrank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, 3 ether + 1, 3 ether)
        );
        escrow.withdraw(3 ether + 1);
        escrow.withdraw(3 ether);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, 1, 0));
        escrow.withdraw(1);
        vm.stopPrank();
        assertEq(_allocation(client, nodeA), 7 ether, "allocation intact");
        assertEq(address(escrow).balance, 7 ether, "escrow keeps the reserved funds");
    }

    // Guard: thawPeriod >= maxReceiptValidity + margin: a receipt is claimable to its deadline after a request.
    function test_attack_releaseCannotOutrunAValidReceipt() public {
        _reserveFromPool(nodeA, 5 ether);
        assertEq(escrow.reservedUntil(client, nodeA, uint64(_now() + VALIDITY)), 5 ether, "node's check");
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 5 ether);
        r.deadline = uint64(_now() + VALIDITY);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(5 ether));
        vm.warp(r.deadline);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(
                PaymentEscrow.Escrow__StillThawing.selector, nodeA, r.deadline - VALIDITY + THAW, _now()
            )
        );
        escrow.release(_list(nodeA));
        assertEq(escrow.claim(r, sig), 5 ether, "node paid at the deadline");
    }

    // Guard: StillThawing + timer restart make reservedUntil(T) a floor the client cannot undercut before T.
    function test_attack_clientCannotShrinkReservedUntilBeforeItsTime() public {
        _reserveFromPool(nodeA, 6 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(2 ether));
        uint64 until = uint64(_now() + VALIDITY);
        uint256 floor = escrow.reservedUntil(client, nodeA, until);
        assertEq(floor, 6 ether, "readyAt is after T");
        vm.startPrank(client);
        escrow.cancelRelease(_list(nodeA));
        escrow.requestRelease(_list(nodeA), _list(6 ether));
        vm.warp(until);
        vm.expectRevert();
        escrow.release(_list(nodeA));
        vm.expectRevert();
        escrow.withdraw(5 ether);
        vm.stopPrank();
        assertGe(_allocation(client, nodeA), floor, "floor held until T");
    }
}

/// @notice A low-gas submitter against honest, cold contract nodes: one probe per gas limit around the threshold.
contract PaymentEscrowGasGriefingTest is EscrowFixture {
    uint256 internal constant PROBES = 120;
    uint256 internal constant STEP = 40;
    /// @dev The probes' hooks need TRANSFER_GAS at entry: the most the escrow promises a recipient.
    uint256 internal constant HOOK_NEED = 50_000;
    HeavyHookNode[] internal probes;

    function setUp() public override {
        super.setUp();
        vm.deal(client, 1_000 ether);
        address[] memory nodes = new address[](PROBES + 1);
        uint256[] memory amounts = new uint256[](PROBES + 1);
        for (uint256 i; i <= PROBES; ++i) {
            HeavyHookNode probe = new HeavyHookNode(HOOK_NEED);
            probes.push(probe);
            nodes[i] = address(probe);
            amounts[i] = 1 ether;
        }
        vm.prank(client);
        escrow.reserve{value: (PROBES + 1) * 1 ether}(nodes, amounts);
    }

    function _batchFor(address node) internal view returns (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) {
        rs = new PaymentEscrow.Receipt[](1);
        sigs = new bytes[](1);
        rs[0] = _receipt(node, 0.5 ether);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
    }

    // Guard: _trySend's gas check: at any gas limit the batch reverts whole or pays an honest TRANSFER_GAS hook.
    function test_attack_lowGasSubmitterCannotFailAnHonestColdNode() public {
        (PaymentEscrow.Receipt[] memory rs, bytes[] memory sigs) = _batchFor(address(probes[0]));
        uint256 lo = 30_000;
        uint256 hi = 1_000_000;
        while (lo < hi) {
            uint256 mid = (lo + hi) / 2;
            uint256 snapshot = vm.snapshotState();
            bool ok;
            try escrow.claimBatch{gas: mid}(rs, sigs) {
                ok = true;
            } catch {}
            vm.revertToStateAndDelete(snapshot);
            if (ok) hi = mid;
            else lo = mid + 1;
        }
        uint256 start = lo - 20 * STEP;
        uint256 reverted;
        uint256 gasTooLow;
        uint256 paidCount;
        for (uint256 i = 1; i <= PROBES; ++i) {
            address node = address(probes[i]);
            (rs, sigs) = _batchFor(node);
            try escrow.claimBatch{gas: start + i * STEP}(rs, sigs) returns (uint256[] memory paid) {
                assertEq(paid[0], 0.5 ether, "a batch that went through paid the honest node");
                assertEq(probes[i].transfers(), 1, "hook ran");
                ++paidCount;
            } catch (bytes memory err) {
                ++reverted;
                if (bytes4(err) == PaymentEscrow.Escrow__GasTooLowForTransfer.selector) ++gasTooLow;
                assertEq(escrow.paidFor(client, node, SESSION), 0, "a reverted batch recorded nothing");
                assertEq(_allocation(client, node), 1 ether, "allocation intact");
            }
        }
        assertGe(gasTooLow, 1, "some limits hit the gas check");
        assertGe(paidCount, 80, "most limits went through");
        assertEq(reverted + paidCount, PROBES, "every probe tried");
    }
}
