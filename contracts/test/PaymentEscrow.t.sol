// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";

/// @notice Unit and fuzz tests of the escrow's normal behaviour.
contract PaymentEscrowTest is EscrowFixture {
    function test_constructorRejectsThawNotLongerThanValidity() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, uint64(10), uint64(10)));
        new PaymentEscrow(10, 10);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, uint64(10), uint64(0)));
        new PaymentEscrow(10, 0);
    }

    function test_depositCreditsBalance() public {
        _deposit(client, 1 ether);
        _deposit(client, 2 ether);
        assertEq(escrow.balanceOf(client), 3 ether, "balance");
        assertEq(address(escrow).balance, 3 ether, "escrow eth");
    }

    function test_zeroDepositReverts() public {
        vm.expectRevert(PaymentEscrow.Escrow__ZeroDeposit.selector);
        escrow.deposit();
    }

    function test_claimPaysNodeTheIncrement() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory r1 = _receipt(nodeA, 0.1 ether);
        assertEq(escrow.claim(r1, _sign(CLIENT_KEY, r1)), 0.1 ether, "first claim");
        PaymentEscrow.Receipt memory r2 = _receipt(nodeA, 0.25 ether);
        assertEq(escrow.claim(r2, _sign(CLIENT_KEY, r2)), 0.15 ether, "second claim pays the increment");
        assertEq(nodeA.balance, 0.25 ether, "node paid");
        assertEq(escrow.balanceOf(client), 0.75 ether, "client debited");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 0.25 ether, "paid recorded");
    }

    function test_olderReceiptAfterNewerPaysNothing() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory newer = _receipt(nodeA, 0.3 ether);
        PaymentEscrow.Receipt memory older = _receipt(nodeA, 0.1 ether);
        escrow.claim(newer, _sign(CLIENT_KEY, newer));
        assertEq(escrow.claim(older, _sign(CLIENT_KEY, older)), 0, "older receipt pays 0");
        assertEq(nodeA.balance, 0.3 ether, "node");
    }

    function test_deadlineTooFarRejected() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1);
        r.deadline = uint64(block.timestamp + VALIDITY + 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(
            abi.encodeWithSelector(
                PaymentEscrow.Escrow__DeadlineTooFar.selector, r.deadline, block.timestamp + VALIDITY
            )
        );
        escrow.claim(r, sig);
    }

    function test_zeroNodeRejected() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(address(0), 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(PaymentEscrow.Escrow__ZeroNode.selector);
        escrow.claim(r, sig);
    }

    function test_withdrawCycle() public {
        _deposit(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(0.4 ether);
        (uint256 amount, uint64 readyAt) = escrow.thawOf(client);
        assertEq(amount, 0.4 ether, "thaw amount");
        assertEq(readyAt, block.timestamp + THAW, "ready at");
        vm.warp(readyAt);
        uint256 before = client.balance;
        vm.prank(client);
        escrow.withdraw();
        assertEq(client.balance - before, 0.4 ether, "paid out");
        assertEq(escrow.balanceOf(client), 0.6 ether, "left in escrow");
        (, readyAt) = escrow.thawOf(client);
        assertEq(readyAt, 0, "thaw cleared");
    }

    function test_cancelWithdraw() public {
        _deposit(client, 1 ether);
        vm.startPrank(client);
        escrow.requestWithdraw(1 ether);
        escrow.cancelWithdraw();
        vm.warp(block.timestamp + THAW);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoWithdrawRequest.selector, client));
        escrow.withdraw();
        vm.stopPrank();
    }

    function test_requestMoreThanBalanceReverts() public {
        _deposit(client, 1 ether);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadWithdrawAmount.selector, 2 ether, 1 ether));
        escrow.requestWithdraw(2 ether);
    }

    function test_batchSkipsBadItemsAndReportsPaid() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](4);
        bytes[] memory sigs = new bytes[](4);
        rs[0] = _receipt(nodeA, 0.1 ether);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
        rs[1] = _receipt(nodeB, 0.2 ether);
        sigs[1] = _sign(0xBAD, rs[1]); // wrong signer
        rs[2] = _receipt(nodeB, 0.3 ether);
        rs[2].sessionId = keccak256("session-2");
        sigs[2] = _sign(CLIENT_KEY, rs[2]);
        rs[3] = _receipt(nodeA, 0.05 ether); // older, smaller receipt of item 0's session
        sigs[3] = _sign(CLIENT_KEY, rs[3]);
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        assertEq(paid[0], 0.1 ether, "item 0");
        assertEq(paid[1], 0, "item 1 bad signature");
        assertEq(paid[2], 0.3 ether, "item 2");
        assertEq(paid[3], 0, "item 3 older receipt");
        assertEq(nodeA.balance, 0.1 ether, "node A");
        assertEq(nodeB.balance, 0.3 ether, "node B");
        assertEq(escrow.balanceOf(client), 0.6 ether, "client");
    }

    function test_batchLengthMismatchReverts() public {
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](1);
        bytes[] memory sigs = new bytes[](2);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__LengthMismatch.selector, 1, 2));
        escrow.claimBatch(rs, sigs);
    }

    /// Fuzz: any sequence of two cumulative receipts pays exactly max(a, b) capped by the deposit.
    function testFuzz_cumulativePaysMaxCapped(uint96 deposit, uint96 a, uint96 b) public {
        deposit = uint96(bound(deposit, 1, 50 ether));
        _deposit(client, deposit);
        PaymentEscrow.Receipt memory ra = _receipt(nodeA, a);
        PaymentEscrow.Receipt memory rb = _receipt(nodeA, b);
        escrow.claim(ra, _sign(CLIENT_KEY, ra));
        escrow.claim(rb, _sign(CLIENT_KEY, rb));
        uint256 owed = a > b ? a : b;
        uint256 expected = owed < deposit ? owed : deposit;
        assertEq(nodeA.balance, expected, "node paid");
        assertEq(escrow.paidFor(client, nodeA, SESSION), expected, "paid recorded");
        assertEq(escrow.balanceOf(client), deposit - expected, "client");
    }

    /// Fuzz: a withdrawal never pays more than requested nor more than what is left after claims.
    function testFuzz_withdrawAfterClaims(uint96 deposit, uint96 request, uint96 claimed) public {
        deposit = uint96(bound(deposit, 1, 50 ether));
        request = uint96(bound(request, 1, deposit));
        _deposit(client, deposit);
        vm.prank(client);
        escrow.requestWithdraw(request);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, claimed);
        escrow.claim(r, _sign(CLIENT_KEY, r));
        vm.warp(block.timestamp + THAW);
        vm.prank(client);
        uint256 out = escrow.withdraw();
        uint256 left = deposit - nodeA.balance;
        assertEq(out, request < left ? request : left, "withdrawn");
        assertEq(address(escrow).balance, escrow.balanceOf(client), "escrow holds exactly the balance");
    }
}
