// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice A node whose receive hook tries to call back into the escrow while being paid.
contract ReentrantNode {
    PaymentEscrow internal immutable escrow;
    PaymentEscrow.Receipt internal replay;
    bytes internal replaySig;
    bool public attempted;
    bool public reentered;
    bytes public reentryError;

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
            reentryError = err;
        }
    }
}

/// @notice The attack checklist: each test fails if its guard is removed.
contract PaymentEscrowAttacksTest is EscrowFixture {
    uint256 internal constant SECP256K1_N =
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    function setUp() public override {
        super.setUp();
        _deposit(client, 10 ether);
    }

    function _badSig(address expected, address recovered, uint8 code) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(PaymentEscrow.Escrow__BadSignature.selector, expected, recovered, code);
    }

    // Guard: only 65-byte signatures (EIP-2098 compact form rejected, so one receipt has one encoding).
    function test_attack_64ByteSignatureRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(r));
        bytes32 vs = bytes32(uint256(s) | (uint256(v - 27) << 255));
        vm.expectRevert(_badSig(client, address(0), 2));
        escrow.claim(r, abi.encodePacked(rr, vs));
    }

    // Guard: s in the lower half order (malleable twin rejected).
    function test_attack_highSSignatureRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(r));
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flipped = v == 27 ? 28 : 27;
        vm.expectRevert(_badSig(client, address(0), 3));
        escrow.claim(r, abi.encodePacked(rr, highS, flipped));
    }

    // Guard: a signature that recovers to address(0) never matches, even a receipt naming client 0.
    function test_attack_zeroAddressRecoveryRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        r.client = address(0);
        bytes memory garbage = abi.encodePacked(bytes32(uint256(1)), bytes32(uint256(1)), uint8(29));
        vm.expectRevert(_badSig(address(0), address(0), 1));
        escrow.claim(r, garbage);
    }

    // Guard: the EIP-712 domain binds the chain id.
    function test_attack_replayFromOtherChainRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        // The same escrow address and receipt, signed under another chain's domain.
        bytes32 foreignDomain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("P2P-LLM PaymentEscrow"),
                keccak256("1"),
                block.chainid + 1,
                address(escrow)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(escrow.RECEIPT_TYPEHASH(), r.client, r.node, r.sessionId, r.tokens, r.amount, r.deadline)
        );
        (uint8 v, bytes32 rr, bytes32 s) =
            vm.sign(CLIENT_KEY, keccak256(abi.encodePacked("\x19\x01", foreignDomain, structHash)));
        bytes memory sig = abi.encodePacked(rr, s, v);
        vm.expectRevert();
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: the EIP-712 domain binds the escrow's address.
    function test_attack_replayFromOtherDeploymentRejected() public {
        PaymentEscrow other = new PaymentEscrow(THAW, VALIDITY);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _signOn(other, CLIENT_KEY, r);
        vm.expectRevert();
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 0, "nothing paid");
    }

    // Guard: cumulative accounting per (client, node, session): a second claim pays 0.
    function test_attack_sameReceiptTwicePaysOnce() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        assertEq(escrow.claim(r, sig), 1 ether, "first");
        assertEq(escrow.claim(r, sig), 0, "replay pays 0");
        assertEq(nodeA.balance, 1 ether, "node paid once");
        assertEq(escrow.balanceOf(client), 9 ether, "client debited once");
    }

    // Guard: the payee is the signed `node`, not the submitter; re-addressing breaks the signature.
    function test_attack_receiptForNodeAClaimedByNodeB() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.prank(nodeB);
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 1 ether, "A paid");
        assertEq(nodeB.balance, 0, "B not paid");
        PaymentEscrow.Receipt memory stolen = _receipt(nodeB, 1 ether);
        bytes memory sigForA = _sign(CLIENT_KEY, r);
        vm.prank(nodeB);
        vm.expectRevert();
        escrow.claim(stolen, sigForA);
        assertEq(nodeB.balance, 0, "B still not paid");
    }

    // Guard: withdraw only after the thaw.
    function test_attack_withdrawBeforeThawEnds() public {
        vm.prank(client);
        escrow.requestWithdraw(10 ether);
        (, uint64 readyAt) = escrow.thawOf(client);
        vm.warp(readyAt - 1);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__StillThawing.selector, readyAt, readyAt - 1));
        escrow.withdraw();
    }

    // Guard: thawing funds stay claimable, and the withdrawal shrinks to what is left.
    function test_attack_claimDuringThawSucceeds() public {
        vm.prank(client);
        escrow.requestWithdraw(10 ether);
        vm.warp(block.timestamp + THAW - 1);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 4 ether);
        assertEq(escrow.claim(r, _sign(CLIENT_KEY, r)), 4 ether, "claim while thawing");
        vm.warp(block.timestamp + 1);
        vm.prank(client);
        assertEq(escrow.withdraw(), 6 ether, "withdraw pays only what is left");
        assertEq(address(escrow).balance, 0, "escrow empty");
    }

    // Guard: thaw state is keyed by msg.sender, so nobody touches another client's request.
    function test_attack_thirdPartyCannotChangeThaw() public {
        vm.prank(client);
        escrow.requestWithdraw(3 ether);
        address mallory = address(0xBADBAD);
        vm.prank(mallory);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoWithdrawRequest.selector, mallory));
        escrow.cancelWithdraw();
        vm.warp(block.timestamp + THAW);
        vm.prank(mallory);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoWithdrawRequest.selector, mallory));
        escrow.withdraw();
        (uint256 amount,) = escrow.thawOf(client);
        assertEq(amount, 3 ether, "victim's thaw intact");
        assertEq(escrow.balanceOf(client), 10 ether, "victim's balance intact");
    }

    // Guard: nonReentrant: a node's receive hook cannot re-enter claim while it is being paid.
    function test_attack_reentrancyThroughNodeReceiveHook() public {
        ReentrantNode evil = new ReentrantNode(escrow);
        PaymentEscrow.Receipt memory first = _receipt(address(evil), 1 ether);
        PaymentEscrow.Receipt memory second = _receipt(address(evil), 3 ether);
        evil.arm(second, _sign(CLIENT_KEY, second));
        escrow.claim(first, _sign(CLIENT_KEY, first));
        assertTrue(evil.attempted(), "hook ran");
        assertTrue(!evil.reentered(), "re-entry must fail");
        assertEq(
            keccak256(evil.reentryError()),
            keccak256(abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector)),
            "failed on the reentrancy guard"
        );
        assertEq(address(evil).balance, 1 ether, "paid only the first receipt");
    }

    // Guard: pay min(owed, balance) and record only what was paid.
    function test_attack_underfundedClaimPaysBalanceRestAfterTopUp() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 15 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        assertEq(escrow.claim(r, sig), 10 ether, "pays the whole balance");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 10 ether, "records only what it paid");
        _deposit(client, 7 ether);
        assertEq(escrow.claim(r, sig), 5 ether, "the rest after a top-up");
        assertEq(escrow.balanceOf(client), 2 ether, "client keeps the excess");
        assertEq(nodeA.balance, 15 ether, "node paid in full");
    }

    // Guard: receipts past their deadline are rejected.
    function test_attack_expiredReceiptRejected() public {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.warp(r.deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__ReceiptExpired.selector, r.deadline, uint256(r.deadline) + 1)
        );
        escrow.claim(r, sig);
    }
}
