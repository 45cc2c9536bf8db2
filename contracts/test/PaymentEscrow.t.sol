// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {Vm} from "./utils/Test.sol";
import {CountingNode, NoReceiveClient, RevertingNode} from "./utils/Nodes.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";

/// @notice Unit and fuzz tests of the escrow's normal behaviour: pool, allocations, releases, claims, views.
contract PaymentEscrowTest is EscrowFixture {
    address internal nodeC = address(0xC0C0);
    bytes32 internal constant SESSION_2 = keccak256("session-2");

    // ---------------------------------------------------------------- constructor
    function test_constructorStoresPeriods() public view {
        assertEq(escrow.thawPeriod(), THAW, "thaw");
        assertEq(escrow.maxReceiptValidity(), VALIDITY, "validity");
        assertEq(escrow.MAX_THAW_PERIOD(), 30 days, "max thaw");
        assertEq(escrow.MIN_THAW_MARGIN(), 1 hours, "margin");
        assertEq(escrow.TRANSFER_GAS(), 50_000, "transfer gas");
    }

    function test_constructorAcceptsBoundaryPeriods() public {
        PaymentEscrow tight = new PaymentEscrow(VALIDITY + 1 hours, VALIDITY);
        assertEq(tight.thawPeriod(), VALIDITY + 1 hours, "thaw = validity + margin");
        PaymentEscrow longest = new PaymentEscrow(30 days, 30 days - 1 hours);
        assertEq(longest.thawPeriod(), 30 days, "thaw = MAX_THAW_PERIOD");
        PaymentEscrow shortest = new PaymentEscrow(1 hours + 1, 1);
        assertEq(shortest.maxReceiptValidity(), 1, "validity = 1 s");
    }

    function test_constructorRejectsZeroValidity() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, uint64(2 days), uint64(0)));
        new PaymentEscrow(2 days, 0);
    }

    function test_constructorRejectsThawBelowValidityPlusMargin() public {
        uint64 thaw = VALIDITY + 1 hours - 1;
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, thaw, VALIDITY));
        new PaymentEscrow(thaw, VALIDITY);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, VALIDITY, VALIDITY));
        new PaymentEscrow(VALIDITY, VALIDITY);
    }

    function test_constructorRejectsThawAboveMax() public {
        uint64 thaw = 30 days + 1;
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, thaw, VALIDITY));
        new PaymentEscrow(thaw, VALIDITY);
    }

    /// Fuzz: the constructor accepts exactly 0 < validity, validity + 1 hour <= thaw <= 30 days.
    function testFuzz_constructorBounds(uint64 thaw, uint64 validity) public {
        thaw = uint64(bound(thaw, 0, 31 days));
        validity = uint64(bound(validity, 0, 31 days));
        bool valid = validity != 0 && thaw <= 30 days && uint256(validity) + 1 hours <= thaw;
        if (!valid) {
            vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadPeriods.selector, thaw, validity));
        }
        PaymentEscrow deployed = new PaymentEscrow(thaw, validity);
        if (valid) assertEq(deployed.thawPeriod(), thaw, "stored");
    }

    // ---------------------------------------------------------------- pool
    function test_depositCreditsPool() public {
        vm.expectEmit(true, false, false, true, address(escrow));
        emit PaymentEscrow.Deposited(client, 1 ether, 1 ether);
        _deposit(client, 1 ether);
        _deposit(client, 2 ether);
        assertEq(escrow.poolOf(client), 3 ether, "pool");
        assertEq(address(escrow).balance, 3 ether, "escrow eth");
    }

    function test_zeroDepositReverts() public {
        vm.expectRevert(PaymentEscrow.Escrow__ZeroAmount.selector);
        escrow.deposit();
    }

    function test_withdrawIsInstant() public {
        _deposit(client, 3 ether);
        uint256 before = client.balance;
        vm.expectEmit(true, false, false, true, address(escrow));
        emit PaymentEscrow.Withdrawn(client, 1 ether, 2 ether);
        vm.prank(client);
        escrow.withdraw(1 ether);
        assertEq(client.balance - before, 1 ether, "paid out at once");
        assertEq(escrow.poolOf(client), 2 ether, "pool");
        assertEq(address(escrow).balance, 2 ether, "escrow eth");
    }

    function test_withdrawZeroReverts() public {
        _deposit(client, 1 ether);
        vm.prank(client);
        vm.expectRevert(PaymentEscrow.Escrow__ZeroAmount.selector);
        escrow.withdraw(0);
    }

    function test_withdrawMoreThanPoolReverts() public {
        _deposit(client, 3 ether);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, 4 ether, 3 ether)
        );
        escrow.withdraw(4 ether);
    }

    function test_withdrawToContractWithoutReceiveReverts() public {
        NoReceiveClient wallet = new NoReceiveClient();
        wallet.depositTo{value: 1 ether}(escrow);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__TransferFailed.selector, address(wallet), 1 ether));
        wallet.withdrawFrom(escrow, 1 ether);
        assertEq(escrow.poolOf(address(wallet)), 1 ether, "pool untouched");
    }

    /// Fuzz: a withdrawal takes exactly what was asked from the pool, never more than the pool.
    function testFuzz_depositThenWithdraw(uint96 amount, uint96 out) public {
        amount = uint96(bound(amount, 1, 50 ether));
        out = uint96(bound(out, 1, 60 ether));
        _deposit(client, amount);
        vm.prank(client);
        if (out > amount) {
            vm.expectRevert(
                abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, out, amount)
            );
        }
        escrow.withdraw(out);
        uint256 left = out > amount ? amount : amount - out;
        assertEq(escrow.poolOf(client), left, "pool");
        assertEq(address(escrow).balance, left, "escrow eth");
    }

    // ---------------------------------------------------------------- reserve
    function test_reserveMovesPoolIntoAllocations() public {
        _deposit(client, 5 ether);
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.Reserved(client, nodeA, 1 ether, 1 ether);
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.Reserved(client, nodeB, 2 ether, 2 ether);
        vm.prank(client);
        escrow.reserve(_list(nodeA, nodeB), _list(1 ether, 2 ether));
        assertEq(escrow.poolOf(client), 2 ether, "pool");
        assertEq(_allocation(client, nodeA), 1 ether, "A");
        assertEq(_allocation(client, nodeB), 2 ether, "B");
        assertEq(address(escrow).balance, 5 ether, "escrow eth");
    }

    function test_reserveWithValueDepositsFirst() public {
        address fresh = address(0xF2E54);
        vm.deal(fresh, 10 ether);
        address[] memory nodes = new address[](3);
        (nodes[0], nodes[1], nodes[2]) = (nodeA, nodeB, nodeC);
        uint256[] memory amounts = new uint256[](3);
        (amounts[0], amounts[1], amounts[2]) = (1 ether, 2 ether, 3 ether);
        vm.recordLogs();
        vm.prank(fresh);
        escrow.reserve{value: 6 ether}(nodes, amounts);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_eventCount(logs, PaymentEscrow.Deposited.selector), 1, "one Deposited");
        assertEq(_eventCount(logs, PaymentEscrow.Reserved.selector), 3, "three Reserved");
        assertEq(logs[0].topics[0], PaymentEscrow.Deposited.selector, "deposit first");
        assertEq(keccak256(logs[0].data), keccak256(abi.encode(6 ether, 6 ether)), "deposit data");
        assertEq(escrow.poolOf(fresh), 0, "pool spent");
        assertEq(_allocation(fresh, nodeA), 1 ether, "A");
        assertEq(_allocation(fresh, nodeB), 2 ether, "B");
        assertEq(_allocation(fresh, nodeC), 3 ether, "C");
        assertEq(fresh.balance, 4 ether, "wallet debited");
    }

    function test_reserveValueBeyondAmountsStaysInPool() public {
        _deposit(client, 1 ether);
        vm.prank(client);
        escrow.reserve{value: 2 ether}(_list(nodeA), _list(2.5 ether));
        assertEq(escrow.poolOf(client), 0.5 ether, "pool keeps the rest");
        assertEq(_allocation(client, nodeA), 2.5 ether, "A");
    }

    function test_reserveWithValueAndNoNodesIsADeposit() public {
        vm.prank(client);
        escrow.reserve{value: 1 ether}(new address[](0), new uint256[](0));
        assertEq(escrow.poolOf(client), 1 ether, "pool");
        vm.prank(client);
        escrow.reserve(new address[](0), new uint256[](0));
        assertEq(escrow.poolOf(client), 1 ether, "empty reserve is a no-op");
    }

    function test_reserveAddsToAnAllocation() public {
        vm.prank(client);
        escrow.reserve{value: 3 ether}(_list(nodeA, nodeA), _list(1 ether, 0.5 ether));
        assertEq(_allocation(client, nodeA), 1.5 ether, "same node twice in one call");
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.Reserved(client, nodeA, 1 ether, 2.5 ether);
        vm.prank(client);
        escrow.reserve(_list(nodeA), _list(1 ether));
        assertEq(_allocation(client, nodeA), 2.5 ether, "second call adds");
        assertEq(escrow.poolOf(client), 0.5 ether, "pool");
    }

    function test_reserveLengthMismatchReverts() public {
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__LengthMismatch.selector, 2, 1));
        escrow.reserve{value: 1 ether}(_list(nodeA, nodeB), _list(1 ether));
    }

    function test_reserveZeroNodeReverts() public {
        vm.prank(client);
        vm.expectRevert(PaymentEscrow.Escrow__ZeroNode.selector);
        escrow.reserve{value: 1 ether}(_list(address(0)), _list(1 ether));
    }

    function test_reserveZeroAmountReverts() public {
        vm.prank(client);
        vm.expectRevert(PaymentEscrow.Escrow__ZeroAmount.selector);
        escrow.reserve{value: 1 ether}(_list(nodeA, nodeB), _list(1 ether, 0));
    }

    function test_reserveBeyondPoolRevertsAtomically() public {
        _deposit(client, 1 ether);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, 1 ether, 0.5 ether)
        );
        escrow.reserve{value: 1 ether}(_list(nodeA, nodeB), _list(1.5 ether, 1 ether));
        assertEq(_allocation(client, nodeA), 0, "first item undone");
        assertEq(escrow.poolOf(client), 1 ether, "pool unchanged");
        assertEq(address(escrow).balance, 1 ether, "value returned");
    }

    function test_reserveAllocationTooLargeReverts() public {
        uint256 max = type(uint96).max;
        vm.deal(client, max + 1 ether);
        vm.prank(client);
        escrow.reserve{value: max}(_list(nodeA), _list(max));
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__AllocationTooLarge.selector, client, nodeA, max + 1)
        );
        escrow.reserve{value: 1}(_list(nodeA), _list(1));
        assertEq(_allocation(client, nodeA), max, "allocation at the cap");
    }

    /// Fuzz: reserve moves exactly the amounts from pool (+ msg.value) to the allocations, or reverts whole.
    function testFuzz_reserveSplitsPoolAndValue(uint96 pooled, uint96 value, uint96 a, uint96 b) public {
        pooled = uint96(bound(pooled, 0, 30 ether));
        value = uint96(bound(value, 0, 30 ether));
        a = uint96(bound(a, 1, 40 ether));
        b = uint96(bound(b, 1, 40 ether));
        if (pooled != 0) _deposit(client, pooled);
        uint256 available = uint256(pooled) + value;
        if (a > available) {
            vm.expectRevert(
                abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, a, available)
            );
        } else if (b > available - a) {
            vm.expectRevert(
                abi.encodeWithSelector(PaymentEscrow.Escrow__InsufficientPool.selector, client, b, available - a)
            );
        }
        vm.prank(client);
        escrow.reserve{value: value}(_list(nodeA, nodeB), _list(a, b));
        bool ok = uint256(a) + b <= available;
        assertEq(_allocation(client, nodeA), ok ? a : 0, "A");
        assertEq(_allocation(client, nodeB), ok ? b : 0, "B");
        assertEq(escrow.poolOf(client), ok ? available - a - b : pooled, "pool");
        assertEq(
            address(escrow).balance,
            escrow.poolOf(client) + _allocation(client, nodeA) + _allocation(client, nodeB),
            "escrow eth = pool + allocations"
        );
    }

    // ---------------------------------------------------------------- release
    function test_requestReleaseStartsThaw() public {
        _reserve(client, nodeA, 5 ether);
        uint64 readyAt = uint64(_now()) + THAW;
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.ReleaseRequested(client, nodeA, 2 ether, readyAt);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(2 ether));
        (uint256 amount, uint256 thawing, uint64 at) = escrow.allocationOf(client, nodeA);
        assertEq(amount, 5 ether, "allocation untouched while thawing");
        assertEq(thawing, 2 ether, "thawing");
        assertEq(at, readyAt, "ready at");
    }

    function test_requestReleaseRejectsBadAmounts() public {
        _reserve(client, nodeA, 5 ether);
        vm.startPrank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadReleaseAmount.selector, nodeA, 0, 5 ether));
        escrow.requestRelease(_list(nodeA), _list(0));
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__BadReleaseAmount.selector, nodeA, 6 ether, 5 ether)
        );
        escrow.requestRelease(_list(nodeA), _list(6 ether));
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__BadReleaseAmount.selector, nodeB, 1, 0));
        escrow.requestRelease(_list(nodeB), _list(1));
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__LengthMismatch.selector, 1, 2));
        escrow.requestRelease(_list(nodeA), _list(1, 1));
        vm.stopPrank();
        (, uint256 thawing, uint64 readyAt) = escrow.allocationOf(client, nodeA);
        assertEq(thawing + readyAt, 0, "no request recorded");
    }

    function test_requestReleaseReplacesPendingRequest() public {
        _reserve(client, nodeA, 5 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(4 ether));
        vm.warp(_now() + 1 days);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(1 ether));
        (, uint256 thawing, uint64 readyAt) = escrow.allocationOf(client, nodeA);
        assertEq(thawing, 1 ether, "amount replaced");
        assertEq(readyAt, _now() + THAW, "timer restarted");
    }

    function test_releaseWithoutRequestReverts() public {
        _reserve(client, nodeA, 1 ether);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, client, nodeA));
        escrow.release(_list(nodeA));
    }

    function test_releaseBeforeReadyAtReverts() public {
        _reserve(client, nodeA, 1 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(1 ether));
        uint64 readyAt = uint64(_now()) + THAW;
        vm.warp(readyAt - 1);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__StillThawing.selector, nodeA, readyAt, readyAt - 1)
        );
        escrow.release(_list(nodeA));
    }

    function test_releaseAtReadyAtMovesThawingToPool() public {
        _reserve(client, nodeA, 5 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(2 ether));
        vm.warp(_now() + THAW);
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.Released(client, nodeA, 2 ether, 3 ether);
        vm.prank(client);
        assertEq(escrow.release(_list(nodeA)), 2 ether, "returned");
        assertEq(escrow.poolOf(client), 2 ether, "pool");
        (uint256 amount, uint256 thawing, uint64 readyAt) = escrow.allocationOf(client, nodeA);
        assertEq(amount, 3 ether, "left reserved");
        assertEq(thawing + readyAt, 0, "request cleared");
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, client, nodeA));
        escrow.release(_list(nodeA));
    }

    function test_releaseOfSeveralNodes() public {
        vm.startPrank(client);
        escrow.reserve{value: 6 ether}(_list(nodeA, nodeB), _list(2 ether, 4 ether));
        escrow.requestRelease(_list(nodeA, nodeB), _list(2 ether, 1 ether));
        vm.warp(_now() + THAW);
        assertEq(escrow.release(_list(nodeA, nodeB)), 3 ether, "total");
        vm.stopPrank();
        assertEq(escrow.poolOf(client), 3 ether, "pool");
        assertEq(_allocation(client, nodeA), 0, "A");
        assertEq(_allocation(client, nodeB), 3 ether, "B");
    }

    function test_releaseIsAtomicWhenOneNodeStillThaws() public {
        vm.startPrank(client);
        escrow.reserve{value: 6 ether}(_list(nodeA, nodeB), _list(2 ether, 4 ether));
        escrow.requestRelease(_list(nodeA), _list(2 ether));
        vm.warp(_now() + 1 hours);
        escrow.requestRelease(_list(nodeB), _list(4 ether));
        uint64 readyB = uint64(_now()) + THAW;
        vm.warp(_now() + THAW - 1 hours);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__StillThawing.selector, nodeB, readyB, _now()));
        escrow.release(_list(nodeA, nodeB));
        vm.stopPrank();
        assertEq(_allocation(client, nodeA), 2 ether, "A not released either");
        assertEq(escrow.poolOf(client), 0, "pool");
    }

    function test_cancelReleaseClearsRequest() public {
        _reserve(client, nodeA, 1 ether);
        vm.startPrank(client);
        escrow.requestRelease(_list(nodeA), _list(1 ether));
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.ReleaseCancelled(client, nodeA);
        escrow.cancelRelease(_list(nodeA));
        (, uint256 thawing, uint64 readyAt) = escrow.allocationOf(client, nodeA);
        assertEq(thawing + readyAt, 0, "cleared");
        vm.warp(_now() + THAW);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, client, nodeA));
        escrow.release(_list(nodeA));
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__NoReleaseRequest.selector, client, nodeA));
        escrow.cancelRelease(_list(nodeA));
        vm.stopPrank();
        assertEq(_allocation(client, nodeA), 1 ether, "still reserved");
    }

    function test_releaseAfterClaimsReturnsWhatIsLeft() public {
        _reserve(client, nodeA, 5 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(5 ether));
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 3 ether);
        escrow.claim(r, _sign(CLIENT_KEY, r));
        vm.warp(_now() + THAW);
        vm.prank(client);
        assertEq(escrow.release(_list(nodeA)), 2 ether, "what is left");
        assertEq(_allocation(client, nodeA), 0, "empty");
        assertEq(address(escrow).balance, 2 ether, "escrow holds the pool");
    }

    function test_releasedFundsCanBeWithdrawn() public {
        _reserve(client, nodeA, 5 ether);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(5 ether));
        vm.warp(_now() + THAW);
        uint256 before = client.balance;
        vm.startPrank(client);
        escrow.release(_list(nodeA));
        escrow.withdraw(5 ether);
        vm.stopPrank();
        assertEq(client.balance - before, 5 ether, "back in the wallet");
        assertEq(address(escrow).balance, 0, "escrow empty");
    }

    /// Fuzz: a release returns min(requested, allocation left after claims), never touching the rest.
    function testFuzz_releaseLifecycle(uint96 reserved, uint96 requested, uint96 claimed) public {
        reserved = uint96(bound(reserved, 1, 50 ether));
        requested = uint96(bound(requested, 1, reserved));
        claimed = uint96(bound(claimed, 0, 60 ether));
        _reserve(client, nodeA, reserved);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(requested));
        PaymentEscrow.Receipt memory r = _receipt(nodeA, claimed);
        uint256 paid = escrow.claim(r, _sign(CLIENT_KEY, r));
        assertEq(paid, claimed < reserved ? claimed : reserved, "claim during thaw");
        vm.warp(_now() + THAW);
        vm.prank(client);
        uint256 out = escrow.release(_list(nodeA));
        uint256 left = reserved - paid;
        assertEq(out, requested < left ? requested : left, "released");
        assertEq(_allocation(client, nodeA), left - out, "allocation");
        assertEq(address(escrow).balance, escrow.poolOf(client) + _allocation(client, nodeA), "escrow eth");
    }

    // ---------------------------------------------------------------- claims
    function test_claimPaysNodeTheIncrementFromItsAllocation() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r1 = _receipt(nodeA, 0.1 ether);
        assertEq(escrow.claim(r1, _sign(CLIENT_KEY, r1)), 0.1 ether, "first claim");
        PaymentEscrow.Receipt memory r2 = _receipt(nodeA, 0.25 ether);
        vm.expectEmit(true, true, false, true, address(escrow));
        emit PaymentEscrow.Claimed(nodeA, client, SESSION, 0.15 ether);
        assertEq(escrow.claim(r2, _sign(CLIENT_KEY, r2)), 0.15 ether, "second claim pays the increment");
        assertEq(nodeA.balance, 0.25 ether, "node paid");
        assertEq(_allocation(client, nodeA), 0.75 ether, "allocation debited");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 0.25 ether, "paid recorded");
    }

    function test_olderReceiptAfterNewerPaysNothing() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory newer = _receipt(nodeA, 0.3 ether);
        PaymentEscrow.Receipt memory older = _receipt(nodeA, 0.1 ether);
        escrow.claim(newer, _sign(CLIENT_KEY, newer));
        assertEq(escrow.claim(older, _sign(CLIENT_KEY, older)), 0, "older receipt pays 0");
        assertEq(nodeA.balance, 0.3 ether, "node");
    }

    function test_claimWithoutAllocationPaysNothing() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.5 ether);
        vm.recordLogs();
        assertEq(escrow.claim(r, _sign(CLIENT_KEY, r)), 0, "nothing reserved");
        assertEq(vm.getRecordedLogs().length, 0, "no event");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 0, "nothing recorded");
        assertEq(escrow.poolOf(client), 1 ether, "pool untouched");
    }

    function test_sessionsShareTheNodesAllocation() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r1 = _receipt(nodeA, 0.7 ether);
        PaymentEscrow.Receipt memory r2 = _receiptOf(client, nodeA, SESSION_2, 0.7 ether);
        assertEq(escrow.claim(r1, _sign(CLIENT_KEY, r1)), 0.7 ether, "session 1");
        assertEq(escrow.claim(r2, _sign(CLIENT_KEY, r2)), 0.3 ether, "session 2 gets what is left");
        assertEq(escrow.paidFor(client, nodeA, SESSION_2), 0.3 ether, "session 2 recorded");
    }

    function test_anyoneMaySubmitButOnlyTheNodeIsPaid() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.4 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        address relayer = address(0x5E1A7);
        vm.prank(relayer);
        escrow.claim(r, sig);
        assertEq(nodeA.balance, 0.4 ether, "node paid");
        assertEq(relayer.balance, 0, "relayer not paid");
    }

    function test_claimAtDeadlineAndAtMaxValidityAccepted() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.1 ether);
        r.deadline = uint64(_now() + VALIDITY);
        bytes memory sig = _sign(CLIENT_KEY, r);
        assertEq(escrow.claim(r, sig), 0.1 ether, "deadline = now + maxReceiptValidity");
        r.amount = 0.2 ether;
        sig = _sign(CLIENT_KEY, r);
        vm.warp(r.deadline);
        assertEq(escrow.claim(r, sig), 0.1 ether, "claimed at the deadline");
    }

    function test_claimAfterDeadlineRejected() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.1 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.warp(r.deadline + 1);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__ReceiptExpired.selector, r.deadline, uint256(r.deadline) + 1)
        );
        escrow.claim(r, sig);
    }

    function test_claimDeadlineTooFarRejected() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1);
        r.deadline = uint64(_now() + VALIDITY + 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__DeadlineTooFar.selector, r.deadline, _now() + VALIDITY)
        );
        escrow.claim(r, sig);
    }

    function test_claimZeroNodeRejected() public {
        _deposit(client, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(address(0), 1);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(PaymentEscrow.Escrow__ZeroNode.selector);
        escrow.claim(r, sig);
    }

    function test_claimWrongSignerRejected() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.5 ether);
        bytes memory sig = _sign(0xBAD, r);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentEscrow.Escrow__BadSignature.selector, client, vm.addr(0xBAD), uint8(0))
        );
        escrow.claim(r, sig);
    }

    function test_claimToRefusingNodeRevertsAndRecordsNothing() public {
        address refusing = address(new RevertingNode());
        _reserve(client, refusing, 1 ether);
        PaymentEscrow.Receipt memory r = _receipt(refusing, 0.5 ether);
        bytes memory sig = _sign(CLIENT_KEY, r);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__TransferFailed.selector, refusing, 0.5 ether));
        escrow.claim(r, sig);
        assertEq(escrow.paidFor(client, refusing, SESSION), 0, "nothing recorded");
        assertEq(_allocation(client, refusing), 1 ether, "allocation intact");
    }

    /// Fuzz: two cumulative receipts pay exactly max(a, b) capped by the allocation.
    function testFuzz_cumulativePaysMaxCapped(uint96 reserved, uint96 a, uint96 b) public {
        reserved = uint96(bound(reserved, 1, 50 ether));
        _reserve(client, nodeA, reserved);
        PaymentEscrow.Receipt memory ra = _receipt(nodeA, a);
        PaymentEscrow.Receipt memory rb = _receipt(nodeA, b);
        escrow.claim(ra, _sign(CLIENT_KEY, ra));
        escrow.claim(rb, _sign(CLIENT_KEY, rb));
        uint256 owed = a > b ? a : b;
        uint256 expected = owed < reserved ? owed : reserved;
        assertEq(nodeA.balance, expected, "node paid");
        assertEq(escrow.paidFor(client, nodeA, SESSION), expected, "paid recorded");
        assertEq(_allocation(client, nodeA), reserved - expected, "allocation");
    }

    // ---------------------------------------------------------------- batch
    function test_batchSkipsBadItemsAndReportsPaid() public {
        vm.prank(client);
        escrow.reserve{value: 2 ether}(_list(nodeA, nodeB), _list(1 ether, 1 ether));
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](4);
        bytes[] memory sigs = new bytes[](4);
        rs[0] = _receipt(nodeA, 0.1 ether);
        sigs[0] = _sign(CLIENT_KEY, rs[0]);
        rs[1] = _receipt(nodeB, 0.2 ether);
        sigs[1] = _sign(0xBAD, rs[1]); // wrong signer
        rs[2] = _receiptOf(client, nodeB, SESSION_2, 0.3 ether);
        sigs[2] = _sign(CLIENT_KEY, rs[2]);
        rs[3] = _receipt(nodeA, 0.05 ether); // older, smaller receipt of item 0's session
        sigs[3] = _sign(CLIENT_KEY, rs[3]);
        vm.recordLogs();
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(paid[0], 0.1 ether, "item 0");
        assertEq(paid[1], 0, "item 1 bad signature");
        assertEq(paid[2], 0.3 ether, "item 2");
        assertEq(paid[3], 0, "item 3 older receipt");
        assertEq(_rejections(logs, 1, client, nodeB, SESSION, PaymentEscrow.RejectReason.BadSignature), 1, "1");
        assertEq(_rejections(logs, 3, client, nodeA, SESSION, PaymentEscrow.RejectReason.NothingOwed), 1, "3");
        assertEq(_eventCount(logs, PaymentEscrow.Claimed.selector), 2, "two Claimed");
        assertEq(nodeA.balance, 0.1 ether, "node A");
        assertEq(nodeB.balance, 0.3 ether, "node B");
        assertEq(_allocation(client, nodeA), 0.9 ether, "A allocation");
        assertEq(_allocation(client, nodeB), 0.7 ether, "B allocation");
    }

    function test_batchReportsEveryRejectReason() public {
        _reserve(client, nodeA, 1 ether);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](5);
        bytes[] memory sigs = new bytes[](5);
        rs[0] = _receipt(nodeA, 0.1 ether);
        rs[0].deadline = uint64(_now() - 1);
        rs[1] = _receipt(nodeA, 0.1 ether);
        rs[1].deadline = uint64(_now() + VALIDITY + 1);
        rs[2] = _receipt(address(0), 0.1 ether);
        rs[3] = _receipt(nodeB, 0.1 ether); // signed, but nothing reserved for B
        rs[4] = _receipt(nodeA, 0.1 ether);
        for (uint256 i; i < 5; ++i) {
            sigs[i] = _sign(CLIENT_KEY, rs[i]);
        }
        sigs[4] = hex"1234";
        vm.recordLogs();
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_rejections(logs, 0, client, nodeA, SESSION, PaymentEscrow.RejectReason.Expired), 1, "expired");
        assertEq(_rejections(logs, 1, client, nodeA, SESSION, PaymentEscrow.RejectReason.DeadlineTooFar), 1, "too far");
        assertEq(_rejections(logs, 2, client, address(0), SESSION, PaymentEscrow.RejectReason.ZeroNode), 1, "zero");
        assertEq(_rejections(logs, 3, client, nodeB, SESSION, PaymentEscrow.RejectReason.NothingOwed), 1, "owed");
        assertEq(_rejections(logs, 4, client, nodeA, SESSION, PaymentEscrow.RejectReason.BadSignature), 1, "sig");
        assertEq(logs.length, 5, "only the rejections");
        for (uint256 i; i < 5; ++i) {
            assertEq(paid[i], 0, "nothing paid");
        }
    }

    function test_batchPaysConsecutiveItemsOfANodeInOneTransfer() public {
        CountingNode counter = new CountingNode();
        address c = address(counter);
        vm.prank(client);
        escrow.reserve{value: 2 ether}(_list(c, nodeA), _list(1 ether, 1 ether));
        bytes32[5] memory sessions = [bytes32("s0"), "s1", "s2", "s3", "s4"];
        address[5] memory to = [c, c, c, nodeA, c];
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](5);
        bytes[] memory sigs = new bytes[](5);
        for (uint256 i; i < 5; ++i) {
            rs[i] = _receiptOf(client, to[i], sessions[i], 0.1 ether);
            sigs[i] = _sign(CLIENT_KEY, rs[i]);
        }
        vm.recordLogs();
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(counter.transfers(), 2, "one transfer per run of the same node");
        assertEq(c.balance, 0.4 ether, "counting node paid");
        assertEq(nodeA.balance, 0.1 ether, "node A paid");
        assertEq(_eventCount(logs, PaymentEscrow.Claimed.selector), 5, "one Claimed per item");
        for (uint256 i; i < 5; ++i) {
            assertEq(paid[i], 0.1 ether, "item paid");
        }
    }

    function test_batchLengthMismatchReverts() public {
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](1);
        bytes[] memory sigs = new bytes[](2);
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrow.Escrow__LengthMismatch.selector, 1, 2));
        escrow.claimBatch(rs, sigs);
    }

    function test_emptyBatchPaysNothing() public {
        uint256[] memory paid = escrow.claimBatch(new PaymentEscrow.Receipt[](0), new bytes[](0));
        assertEq(paid.length, 0, "empty");
    }

    /// Fuzz: a batch pays exactly what the same receipts claimed one by one would pay.
    function testFuzz_batchPaysLikeSequentialClaims(uint256 seed) public {
        address[3] memory nodes = [nodeA, nodeB, nodeC];
        vm.prank(client);
        escrow.reserve{value: 3 ether}(_list(nodeA, nodeB), _list(1 ether, 1.5 ether));
        uint256 n = bound(seed, 1, 8);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](n);
        bytes[] memory sigs = new bytes[](n);
        for (uint256 i; i < n; ++i) {
            uint256 s = uint256(keccak256(abi.encode(seed, i)));
            rs[i] = _receiptOf(client, nodes[s % 3], bytes32((s >> 8) % 2), bound(s >> 16, 1, 1.2 ether));
            sigs[i] = _sign(CLIENT_KEY, rs[i]);
        }
        uint256 snapshot = vm.snapshotState();
        uint256[] memory single = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            single[i] = escrow.claim(rs[i], sigs[i]);
        }
        uint256[3] memory balances = [nodeA.balance, nodeB.balance, nodeC.balance];
        vm.revertToStateAndDelete(snapshot);
        uint256[] memory batch = escrow.claimBatch(rs, sigs);
        for (uint256 i; i < n; ++i) {
            assertEq(batch[i], single[i], "item pays the same");
        }
        assertEq(nodeA.balance, balances[0], "A");
        assertEq(nodeB.balance, balances[1], "B");
        assertEq(nodeC.balance, balances[2], "C");
    }

    // ---------------------------------------------------------------- views
    function test_reservedUntilDiscountsOnlyWhatCanThawBy() public {
        _reserve(client, nodeA, 5 ether);
        uint64 later = uint64(_now() + 10 days);
        assertEq(escrow.reservedUntil(client, nodeA, later), 5 ether, "no request: everything");
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(2 ether));
        uint64 readyAt = uint64(_now()) + THAW;
        assertEq(escrow.reservedUntil(client, nodeA, readyAt - 1), 5 ether, "before readyAt: everything");
        assertEq(escrow.reservedUntil(client, nodeA, readyAt), 3 ether, "from readyAt: less the thawing part");
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 4 ether);
        escrow.claim(r, _sign(CLIENT_KEY, r));
        assertEq(escrow.reservedUntil(client, nodeA, readyAt), 0, "thawing exceeds what is left");
        assertEq(escrow.reservedUntil(client, nodeA, readyAt - 1), 1 ether, "what is left");
        assertEq(escrow.reservedUntil(client, nodeB, later), 0, "nothing for B");
    }

    /// Fuzz: reservedUntil never exceeds the allocation, and equals it for times before readyAt.
    function testFuzz_reservedUntil(uint96 reserved, uint96 thawing, uint64 until) public {
        reserved = uint96(bound(reserved, 1, 50 ether));
        thawing = uint96(bound(thawing, 1, reserved));
        _reserve(client, nodeA, reserved);
        vm.prank(client);
        escrow.requestRelease(_list(nodeA), _list(thawing));
        uint64 readyAt = uint64(_now()) + THAW;
        uint256 v = escrow.reservedUntil(client, nodeA, until);
        assertEq(v, until < readyAt ? reserved : reserved - thawing, "reservedUntil");
    }

    function test_domainSeparatorBindsNameVersionChainAndAddress() public view {
        bytes32 expected = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("P2P-LLM PaymentEscrow"),
                keccak256("2"),
                block.chainid,
                address(escrow)
            )
        );
        assertEq(escrow.domainSeparator(), expected, "domain");
    }

    function test_receiptDigestIsEip712() public view {
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 1 ether);
        bytes32 typeHash = keccak256(
            "Receipt(address client,address node,bytes32 sessionId,uint64 tokens,uint256 amount,uint64 deadline)"
        );
        assertEq(escrow.RECEIPT_TYPEHASH(), typeHash, "type hash");
        bytes32 structHash =
            keccak256(abi.encode(typeHash, r.client, r.node, r.sessionId, r.tokens, r.amount, r.deadline));
        assertEq(
            escrow.receiptDigest(r),
            keccak256(abi.encodePacked("\x19\x01", escrow.domainSeparator(), structHash)),
            "digest"
        );
    }
}
