// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";

/// @notice Drives the escrow with random deposits, withdrawals, claims (single and batch) and time,
///         keeping ghost totals the invariants compare against.
contract EscrowHandler is Test {
    PaymentEscrow public immutable escrow;
    uint256 public constant CLIENTS = 3;
    uint256 public constant NODES = 2;
    uint256 public constant SESSIONS = 2;

    uint256[CLIENTS] internal keys = [uint256(0xA11CE), 0xB0B, 0xCA201];
    address[NODES] public nodes = [address(0xD0D0), address(0xE0E0)];

    uint256 public ghostDeposits;
    uint256 public ghostPaid;
    uint256 public ghostWithdrawn;
    /// @dev largest cumulative amount each client signed per channel, and the paid value last seen
    mapping(bytes32 channel => uint256) public maxSigned;
    mapping(bytes32 channel => uint256) public lastPaid;
    bool public paidDecreased;

    constructor(PaymentEscrow escrow_) {
        escrow = escrow_;
        for (uint256 i; i < CLIENTS; ++i) vm.deal(vm.addr(keys[i]), 1_000 ether);
    }

    function client(uint256 i) public view returns (address) {
        return vm.addr(keys[i % CLIENTS]);
    }

    function deposit(uint256 who, uint256 amount) external {
        amount = bound(amount, 1, 5 ether);
        vm.prank(client(who));
        escrow.deposit{value: amount}();
        ghostDeposits += amount;
    }

    function requestWithdraw(uint256 who, uint256 amount) external {
        address c = client(who);
        uint256 balance = escrow.balanceOf(c);
        if (balance == 0) return;
        vm.prank(c);
        escrow.requestWithdraw(bound(amount, 1, balance));
    }

    function cancelWithdraw(uint256 who) external {
        address c = client(who);
        (, uint64 readyAt) = escrow.thawOf(c);
        if (readyAt == 0) return;
        vm.prank(c);
        escrow.cancelWithdraw();
    }

    function withdraw(uint256 who) external {
        address c = client(who);
        (, uint64 readyAt) = escrow.thawOf(c);
        if (readyAt == 0) return;
        if (block.timestamp < readyAt) vm.warp(readyAt);
        vm.prank(c);
        ghostWithdrawn += escrow.withdraw();
        _observe();
    }

    function claim(uint256 who, uint256 node, uint256 session, uint256 increment) external {
        (PaymentEscrow.Receipt memory r, bytes memory sig) = _nextReceipt(who, node, session, increment);
        ghostPaid += escrow.claim(r, sig);
        _observe();
    }

    function claimBatch(uint256 seed, uint256 count) external {
        count = bound(count, 1, 4);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](count);
        bytes[] memory sigs = new bytes[](count);
        for (uint256 i; i < count; ++i) {
            uint256 s = uint256(keccak256(abi.encode(seed, i)));
            (rs[i], sigs[i]) = _nextReceipt(s, s >> 8, s >> 16, s >> 24);
        }
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        for (uint256 i; i < count; ++i) ghostPaid += paid[i];
        _observe();
    }

    function warp(uint256 secondsAhead) external {
        vm.warp(block.timestamp + bound(secondsAhead, 1, 3 days));
    }

    function channel(uint256 who, uint256 node, uint256 session) public view returns (bytes32) {
        return keccak256(abi.encode(client(who), nodes[node % NODES], session % SESSIONS));
    }

    function paidOn(uint256 who, uint256 node, uint256 session) public view returns (uint256) {
        return escrow.paidFor(client(who), nodes[node % NODES], bytes32(session % SESSIONS));
    }

    function _nextReceipt(uint256 who, uint256 node, uint256 session, uint256 increment)
        internal
        returns (PaymentEscrow.Receipt memory r, bytes memory sig)
    {
        bytes32 ch = channel(who, node, session);
        // Mostly grow the cumulative amount; sometimes re-sign an older (smaller) amount.
        uint256 amount = increment % 5 == 0 ? maxSigned[ch] / 2 : maxSigned[ch] + bound(increment, 1, 2 ether);
        if (amount > maxSigned[ch]) maxSigned[ch] = amount;
        r = PaymentEscrow.Receipt(
            client(who), nodes[node % NODES], bytes32(session % SESSIONS), 1, amount, uint64(block.timestamp + 1 hours)
        );
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(keys[who % CLIENTS], escrow.receiptDigest(r));
        sig = abi.encodePacked(rr, s, v);
    }

    function _observe() internal {
        for (uint256 c; c < CLIENTS; ++c) {
            for (uint256 n; n < NODES; ++n) {
                for (uint256 s; s < SESSIONS; ++s) {
                    bytes32 ch = channel(c, n, s);
                    uint256 now_ = paidOn(c, n, s);
                    if (now_ < lastPaid[ch]) paidDecreased = true;
                    lastPaid[ch] = now_;
                }
            }
        }
    }

    function selectors() external pure returns (bytes4[] memory out) {
        out = new bytes4[](7);
        out[0] = this.deposit.selector;
        out[1] = this.requestWithdraw.selector;
        out[2] = this.cancelWithdraw.selector;
        out[3] = this.withdraw.selector;
        out[4] = this.claim.selector;
        out[5] = this.claimBatch.selector;
        out[6] = this.warp.selector;
    }
}

/// @notice Invariants of the escrow under random sequences of the handler's actions.
contract PaymentEscrowInvariantTest is Test {
    PaymentEscrow internal escrow;
    EscrowHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        escrow = new PaymentEscrow(2 days, 1 days);
        handler = new EscrowHandler(escrow);
        targetContract(address(handler));
        targetSelector(FuzzSelector(address(handler), handler.selectors()));
    }

    function _sumBalances() internal view returns (uint256 sum) {
        for (uint256 i; i < handler.CLIENTS(); ++i) sum += escrow.balanceOf(handler.client(i));
    }

    function invariant_ethEqualsSumOfClientBalances() public view {
        assertEq(address(escrow).balance, _sumBalances(), "escrow ETH != sum of balances");
    }

    function invariant_depositsAreConserved() public view {
        assertEq(
            handler.ghostDeposits(),
            _sumBalances() + handler.ghostPaid() + handler.ghostWithdrawn(),
            "deposits != balances + paid + withdrawn"
        );
    }

    function invariant_paidMonotoneAndBoundedBySigned() public view {
        assertTrue(!handler.paidDecreased(), "paid decreased");
        for (uint256 c; c < handler.CLIENTS(); ++c) {
            for (uint256 n; n < handler.NODES(); ++n) {
                for (uint256 s; s < handler.SESSIONS(); ++s) {
                    assertLe(handler.paidOn(c, n, s), handler.maxSigned(handler.channel(c, n, s)), "paid > signed");
                }
            }
        }
    }

    function invariant_nodesReceivedExactlyWhatWasPaid() public view {
        uint256 received;
        for (uint256 n; n < handler.NODES(); ++n) received += handler.nodes(n).balance;
        assertEq(received, handler.ghostPaid(), "node balances != paid");
    }
}
