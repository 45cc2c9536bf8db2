// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {SwitchNode} from "./utils/Nodes.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";

/// @notice Random client, node and attacker actions on the escrow over five payees per client, with ghost totals.
contract EscrowHandler is Test {
    uint256 public constant CLIENTS = 2;
    uint256 public constant PAYEES = 5;
    uint256 public constant SESSIONS = 2;
    uint256 public constant RING = 4;
    uint256 public constant INITIAL = 1_000 ether;
    uint256 internal constant REFUSER = 2;
    uint256 internal constant SELF = 3;
    uint256 internal constant SECOND = 4;
    address public constant NODE_A = address(0xD0D0);
    address public constant NODE_B = address(0xE0E0);

    PaymentEscrow public immutable escrow;
    SwitchNode public immutable refuser;
    uint256[CLIENTS] internal keys = [uint256(0xA11CE), 0xB0B];
    address[CLIENTS] public clients;
    address[CLIENTS] public secondAddrs;

    /// @dev What reservedUntil promised a node at one moment (floor), until when, and what the node had been
    ///      paid by then (paidAt); packed as floor << 160 | paidAt << 64 | until (each fits: allocations are
    ///      uint96, and everything the handler moves stays far below 2^96).
    uint256 internal constant MASK_96 = (1 << 96) - 1;

    // ghosts, per (client, payee) and per (client, payee, session)
    mapping(uint256 => mapping(uint256 => uint256)) public ghostReserved;
    mapping(uint256 => mapping(uint256 => uint256)) public ghostReleased;
    mapping(uint256 => mapping(uint256 => uint256)) public ghostPaid;
    mapping(uint256 => mapping(uint256 => mapping(uint256 => uint256))) public maxSigned;
    mapping(uint256 => uint256) public ghostDeposited;
    mapping(uint256 => uint256) public ghostWithdrawn;
    mapping(address => uint256) public ghostReceived;
    uint256 public ghostPaidTotal;
    uint256[RING][PAYEES][CLIENTS] internal floors;
    uint256[SESSIONS][PAYEES][CLIENTS] internal lastPaid;
    address[PAYEES][CLIENTS] internal payees;
    uint256 internal ringNext;

    // how often the interesting paths ran (read by nothing but a curious reviewer)
    uint256 public nonzeroReleases;
    uint256 public refusedBatchItems;
    uint256 public activeFloorChecks;

    // violations the invariants assert never happened
    bool public paidDecreased;
    bool public floorBroken;
    bool public releaseMismatch;
    bool public earlyRelease;
    bool public overWithdraw;
    bool public drainOverpaid;
    bool public refusedButPaid;
    bool public validClaimReverted;

    constructor(PaymentEscrow escrow_) {
        escrow = escrow_;
        refuser = new SwitchNode();
        for (uint256 c; c < CLIENTS; ++c) {
            clients[c] = vm.addr(keys[c]);
            secondAddrs[c] = vm.addr(0x5EC0 + c);
            vm.deal(clients[c], INITIAL);
        }
        for (uint256 c; c < CLIENTS; ++c) {
            payees[c] = [NODE_A, NODE_B, address(refuser), clients[c], secondAddrs[c]];
        }
        _observe();
    }

    modifier observed() {
        _;
        _observe();
    }

    function payee(uint256 c, uint256 p) public view returns (address) {
        return payees[c % CLIENTS][p % PAYEES];
    }

    /// @dev The ghost totals of one (client, payee) pair in one call.
    function ghosts(uint256 c, uint256 p) external view returns (uint256 reserved, uint256 released, uint256 paid) {
        return (ghostReserved[c][p], ghostReleased[c][p], ghostPaid[c][p]);
    }

    function allocation(uint256 c, uint256 p) public view returns (uint256 amount) {
        (amount,,) = escrow.allocationOf(clients[c], payee(c, p));
    }

    function paidOn(uint256 c, uint256 p, uint256 s) public view returns (uint256) {
        return escrow.paidFor(clients[c], payee(c, p), bytes32(s));
    }

    // ---------------------------------------------------------------- the client's pool
    function deposit(uint256 c, uint256 amount) external observed {
        c %= CLIENTS;
        amount = bound(amount, 1, 5 ether);
        vm.prank(clients[c]);
        escrow.deposit{value: amount}();
        ghostDeposited[c] += amount;
    }

    function withdraw(uint256 c, uint256 amount) external observed {
        c %= CLIENTS;
        address who = clients[c];
        uint256 pool = escrow.poolOf(who);
        if (amount % 4 == 0) {
            vm.prank(who);
            try escrow.withdraw(pool + 1) {
                overWithdraw = true;
            } catch {}
        }
        if (pool == 0) return;
        amount = bound(amount, 1, pool);
        vm.prank(who);
        escrow.withdraw(amount);
        ghostWithdrawn[c] += amount;
    }

    // ---------------------------------------------------------------- allocations
    function reserve(uint256 c, uint256 seed, uint256 value) external observed {
        c %= CLIENTS;
        address who = clients[c];
        uint256 v = seed % 2 == 0 ? bound(value, 0, 5 ether) : 0;
        uint256 available = escrow.poolOf(who) + v;
        if (available == 0) return;
        uint256 n = bound(seed >> 8, 1, 3);
        address[] memory nodes = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        uint256[] memory picks = new uint256[](n);
        uint256 used;
        for (uint256 i; i < n && available != 0; ++i) {
            picks[i] = (seed >> (16 + 8 * i)) % PAYEES;
            nodes[i] = payee(c, picks[i]);
            amounts[i] = bound(uint256(keccak256(abi.encode(seed, i))), 1, available);
            available -= amounts[i];
            ++used;
        }
        assembly {
            mstore(nodes, used)
            mstore(amounts, used)
        }
        vm.prank(who);
        escrow.reserve{value: v}(nodes, amounts);
        ghostDeposited[c] += v;
        for (uint256 i; i < used; ++i) {
            ghostReserved[c][picks[i]] += amounts[i];
        }
    }

    function requestRelease(uint256 c, uint256 seed, uint256 amount) external observed {
        c = _clientWith(c, false);
        address[] memory nodes = new address[](2);
        uint256[] memory amounts = new uint256[](2);
        uint256 found;
        for (uint256 k; k < PAYEES && found < 2; ++k) {
            uint256 p = (seed % PAYEES + k) % PAYEES;
            uint256 allocated = allocation(c, p);
            if (allocated == 0) continue;
            nodes[found] = payee(c, p);
            amounts[found] = bound(uint256(keccak256(abi.encode(amount, found))), 1, allocated);
            ++found;
            if (seed % 2 == 0) break;
        }
        if (found == 0) return;
        assembly {
            mstore(nodes, found)
            mstore(amounts, found)
        }
        vm.prank(clients[c]);
        escrow.requestRelease(nodes, amounts);
    }

    function cancelRelease(uint256 c, uint256 p) external observed {
        c %= CLIENTS;
        address node = payee(c, p);
        (,, uint64 readyAt) = escrow.allocationOf(clients[c], node);
        if (readyAt == 0) return;
        address[] memory nodes = new address[](1);
        nodes[0] = node;
        vm.prank(clients[c]);
        escrow.cancelRelease(nodes);
    }

    /// Releases up to two pending requests; usually warps to their readyAt first, otherwise tries too early.
    function release(uint256 c, uint256 seed, uint256 warpFirst) external observed {
        c = _clientWith(c, true);
        address who = clients[c];
        address[] memory nodes = new address[](2);
        uint256[] memory picks = new uint256[](2);
        uint256[] memory predicted = new uint256[](2);
        uint256 found;
        uint256 latest;
        for (uint256 k; k < PAYEES && found < 2; ++k) {
            uint256 p = (seed % PAYEES + k) % PAYEES;
            (,, uint64 readyAt) = escrow.allocationOf(who, payee(c, p));
            if (readyAt == 0) continue;
            picks[found] = p;
            nodes[found] = payee(c, p);
            if (readyAt > latest) latest = readyAt;
            ++found;
        }
        if (found == 0) return;
        assembly {
            mstore(nodes, found)
        }
        if (_now() < latest) {
            if (warpFirst % 3 == 0) {
                vm.prank(who);
                try escrow.release(nodes) {
                    earlyRelease = true;
                } catch {}
                return;
            }
            vm.warp(latest);
        }
        uint256 expected;
        for (uint256 i; i < found; ++i) {
            (uint256 amount, uint256 thawing,) = escrow.allocationOf(who, nodes[i]);
            predicted[i] = thawing < amount ? thawing : amount;
            expected += predicted[i];
        }
        uint256 poolBefore = escrow.poolOf(who);
        vm.prank(who);
        uint256 total = escrow.release(nodes);
        if (total != expected || escrow.poolOf(who) != poolBefore + total) releaseMismatch = true;
        if (total != 0) ++nonzeroReleases;
        for (uint256 i; i < found; ++i) {
            ghostReleased[c][picks[i]] += predicted[i];
        }
    }

    // ---------------------------------------------------------------- claims
    function claim(uint256 c, uint256 p, uint256 s, uint256 increment) external observed {
        c %= CLIENTS;
        p %= PAYEES;
        s %= SESSIONS;
        (PaymentEscrow.Receipt memory r, bytes memory sig) = _nextReceipt(c, p, s, increment, true);
        bool refusing = p == REFUSER && refuser.mode() != SwitchNode.Mode.Accept;
        try escrow.claim(r, sig) returns (uint256 paid) {
            if (refusing && paid != 0) refusedButPaid = true;
            _credit(c, p, paid);
        } catch {
            if (!refusing) validClaimReverted = true;
        }
    }

    /// Items across clients, nodes and sessions; runs of the same node are likely, and some items are signed by
    /// the wrong key.
    function claimBatch(uint256 seed, uint256 count) external observed {
        count = bound(count, 1, 6);
        PaymentEscrow.Receipt[] memory rs = new PaymentEscrow.Receipt[](count);
        bytes[] memory sigs = new bytes[](count);
        uint256[] memory cs = new uint256[](count);
        uint256[] memory ps = new uint256[](count);
        for (uint256 i; i < count; ++i) {
            uint256 s = uint256(keccak256(abi.encode(seed, i)));
            bool sameNode = i != 0 && s % 2 == 0;
            cs[i] = sameNode ? cs[i - 1] : (s >> 8) % CLIENTS;
            ps[i] = sameNode ? ps[i - 1] : (s >> 16) % PAYEES;
            (rs[i], sigs[i]) = _nextReceipt(cs[i], ps[i], (s >> 24) % SESSIONS, s >> 32, (s >> 250) % 8 != 0);
        }
        bool refusing = refuser.mode() != SwitchNode.Mode.Accept;
        uint256[] memory paid = escrow.claimBatch(rs, sigs);
        for (uint256 i; i < count; ++i) {
            if (refusing && ps[i] == REFUSER) {
                ++refusedBatchItems;
                if (paid[i] != 0) refusedButPaid = true;
            }
            _credit(cs[i], ps[i], paid[i]);
        }
    }

    /// A malicious client signs a receipt for everything it has to its own address or to its second address,
    /// and submits it from there; it may only get that payee's own allocation.
    function maliciousDrain(uint256 c, uint256 toSecond, uint256 s) external observed {
        c %= CLIENTS;
        s %= SESSIONS;
        uint256 p = toSecond % 2 == 0 ? SELF : SECOND;
        address to = payee(c, p);
        uint256 everything = escrow.poolOf(clients[c]);
        for (uint256 q; q < PAYEES; ++q) {
            everything += allocation(c, q);
        }
        uint256 allowed = allocation(c, p);
        uint256 amount = paidOn(c, p, s) + everything + 1 ether;
        if (amount > maxSigned[c][p][s]) maxSigned[c][p][s] = amount;
        PaymentEscrow.Receipt memory r =
            PaymentEscrow.Receipt(clients[c], to, bytes32(s), 1, amount, uint64(_now() + 1 hours));
        bytes memory sig = _sign(keys[c], r);
        vm.prank(to);
        uint256 paid = escrow.claim(r, sig);
        if (paid > allowed) drainOverpaid = true;
        _credit(c, p, paid);
    }

    // ---------------------------------------------------------------- environment
    function toggleRefuser(uint256 mode) external observed {
        refuser.setMode(SwitchNode.Mode(mode % 3));
    }

    function warp(uint256 secondsAhead) external observed {
        vm.warp(_now() + bound(secondsAhead, 1, 3 days));
    }

    /// @dev Repeated selectors weigh the fuzzer's choice toward the allocation lifecycle and claims.
    function selectors() external pure returns (bytes4[] memory out) {
        out = new bytes4[](16);
        out[0] = this.deposit.selector;
        out[1] = this.withdraw.selector;
        out[2] = this.reserve.selector;
        out[3] = this.reserve.selector;
        out[4] = this.requestRelease.selector;
        out[5] = this.requestRelease.selector;
        out[6] = this.cancelRelease.selector;
        out[7] = this.release.selector;
        out[8] = this.release.selector;
        out[9] = this.claim.selector;
        out[10] = this.claim.selector;
        out[11] = this.claimBatch.selector;
        out[12] = this.claimBatch.selector;
        out[13] = this.maliciousDrain.selector;
        out[14] = this.toggleRefuser.selector;
        out[15] = this.warp.selector;
    }

    // ---------------------------------------------------------------- internal
    function _nextReceipt(uint256 c, uint256 p, uint256 s, uint256 increment, bool signedByClient)
        internal
        returns (PaymentEscrow.Receipt memory r, bytes memory sig)
    {
        uint256 prior = maxSigned[c][p][s];
        // Mostly grow the cumulative amount; sometimes re-sign an older (smaller) amount.
        uint256 amount = increment % 5 == 0 ? prior / 2 : prior + bound(increment, 1, 2 ether);
        uint256 validity = escrow.maxReceiptValidity();
        uint64 deadline = uint64(_now() + bound(increment >> 128, 0, validity));
        r = PaymentEscrow.Receipt(clients[c], payee(c, p), bytes32(s), 1, amount, deadline);
        if (signedByClient) {
            if (amount > prior) maxSigned[c][p][s] = amount;
            sig = _sign(keys[c], r);
        } else {
            sig = _sign(0xBAD, r);
        }
    }

    /// @dev The first client from `c` on with an allocation (or, with `pending`, a release request), else `c`.
    function _clientWith(uint256 c, bool pending) internal view returns (uint256) {
        for (uint256 j; j < CLIENTS; ++j) {
            uint256 cc = (c % CLIENTS + j) % CLIENTS;
            for (uint256 p; p < PAYEES; ++p) {
                (uint256 amount,, uint64 readyAt) = escrow.allocationOf(clients[cc], payees[cc][p]);
                if (pending ? readyAt != 0 : amount != 0) return cc;
            }
        }
        return c % CLIENTS;
    }

    function _sign(uint256 key, PaymentEscrow.Receipt memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 rr, bytes32 ss) = vm.sign(key, escrow.receiptDigest(r));
        return abi.encodePacked(rr, ss, v);
    }

    function _credit(uint256 c, uint256 p, uint256 paid) internal {
        ghostPaid[c][p] += paid;
        ghostReceived[payee(c, p)] += paid;
        ghostPaidTotal += paid;
    }

    /// @dev After every action: paid per session never decreases; every floor reservedUntil promised still
    ///      holds while its time has not passed; then a new floor is recorded per (client, payee).
    function _observe() internal {
        uint256 nowTs = _now();
        uint64 horizon = uint64(nowTs + escrow.maxReceiptValidity());
        uint256 slot = ringNext;
        for (uint256 c; c < CLIENTS; ++c) {
            address who = clients[c];
            for (uint256 p; p < PAYEES; ++p) {
                address node = payees[c][p];
                uint256 paidSum;
                for (uint256 s; s < SESSIONS; ++s) {
                    uint256 current = escrow.paidFor(who, node, bytes32(s));
                    if (current < lastPaid[c][p][s]) paidDecreased = true;
                    lastPaid[c][p][s] = current;
                    paidSum += current;
                }
                (uint256 amount,,) = escrow.allocationOf(who, node);
                uint256[RING] storage ring = floors[c][p];
                for (uint256 k; k < RING; ++k) {
                    uint256 f = ring[k];
                    uint256 until = uint64(f);
                    if (until == 0 || nowTs > until || f >> 160 == 0) continue;
                    ++activeFloorChecks;
                    if (amount + paidSum < (f >> 160) + ((f >> 64) & MASK_96)) floorBroken = true;
                }
                uint256 floor = escrow.reservedUntil(who, node, horizon);
                ring[slot] = floor << 160 | paidSum << 64 | horizon;
            }
        }
        ringNext = (slot + 1) % RING;
    }
}

/// @notice Invariants of the escrow under random handler actions; the handler never reverts, so any revert fails.
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: deep.invariant.fail-on-revert = true
contract PaymentEscrowInvariantTest is Test {
    PaymentEscrow internal escrow;
    EscrowHandler internal handler;
    uint256 internal constant CLIENTS = 2;
    uint256 internal constant PAYEES = 5;
    uint256 internal constant SESSIONS = 2;
    address[CLIENTS] internal clients;
    address[PAYEES][CLIENTS] internal payees;

    function setUp() public {
        vm.warp(1_700_000_000);
        escrow = new PaymentEscrow(2 days, 1 days);
        handler = new EscrowHandler(escrow);
        assertEq(handler.CLIENTS(), CLIENTS, "clients");
        assertEq(handler.PAYEES(), PAYEES, "payees");
        assertEq(handler.SESSIONS(), SESSIONS, "sessions");
        for (uint256 c; c < CLIENTS; ++c) {
            clients[c] = handler.clients(c);
            for (uint256 p; p < PAYEES; ++p) {
                payees[c][p] = handler.payee(c, p);
            }
        }
        targetContract(address(handler));
        targetSelector(FuzzSelector(address(handler), handler.selectors()));
    }

    function _allocation(uint256 c, uint256 p) internal view returns (uint256 amount) {
        (amount,,) = escrow.allocationOf(clients[c], payees[c][p]);
    }

    function _paid(uint256 c, uint256 p, uint256 s) internal view returns (uint256) {
        return escrow.paidFor(clients[c], payees[c][p], bytes32(s));
    }

    function invariant_escrowBalanceEqualsPoolsPlusAllocations() public view {
        uint256 held;
        uint256 deposited;
        uint256 withdrawn;
        for (uint256 c; c < CLIENTS; ++c) {
            held += escrow.poolOf(clients[c]);
            for (uint256 p; p < PAYEES; ++p) {
                held += _allocation(c, p);
            }
            deposited += handler.ghostDeposited(c);
            withdrawn += handler.ghostWithdrawn(c);
        }
        assertEq(address(escrow).balance, held, "escrow ETH != pools + allocations");
        assertEq(deposited, held + withdrawn + handler.ghostPaidTotal(), "deposits != held + withdrawn + paid");
    }

    function invariant_allocationEqualsReservedMinusReleasedMinusPaid() public view {
        for (uint256 c; c < CLIENTS; ++c) {
            for (uint256 p; p < PAYEES; ++p) {
                (uint256 reserved, uint256 released, uint256 ghostPaid) = handler.ghosts(c, p);
                uint256 paid;
                for (uint256 s; s < SESSIONS; ++s) {
                    paid += _paid(c, p, s);
                }
                assertEq(paid, ghostPaid, "sum of paidFor != ghost paid");
                assertLe(paid, reserved - released, "paid > reserved - released");
                assertEq(_allocation(c, p), reserved - released - paid, "allocation != reserved - released - paid");
            }
        }
    }

    function invariant_paidPerSessionMonotoneAndBoundedBySigned() public view {
        assertFalse(handler.paidDecreased(), "paid decreased");
        for (uint256 c; c < CLIENTS; ++c) {
            for (uint256 p; p < PAYEES; ++p) {
                for (uint256 s; s < SESSIONS; ++s) {
                    assertLe(_paid(c, p, s), handler.maxSigned(c, p, s), "paid > largest amount signed");
                }
            }
        }
    }

    function invariant_reservedUntilIsAFloorUntilItsTime() public view {
        assertFalse(handler.floorBroken(), "reserved funds shrank before their thaw ended");
        assertFalse(handler.earlyRelease(), "release before readyAt succeeded");
    }

    function invariant_nodesReceivedExactlyWhatWasPaid() public view {
        uint256 received;
        for (uint256 p; p < 3; ++p) {
            address node = payees[0][p];
            assertEq(node.balance, handler.ghostReceived(node), "node balance != paid to it");
            received += handler.ghostReceived(node);
        }
        for (uint256 c; c < CLIENTS; ++c) {
            address who = clients[c];
            address second = payees[c][4];
            assertEq(second.balance, handler.ghostReceived(second), "second address balance != paid to it");
            assertEq(
                who.balance,
                handler.INITIAL() - handler.ghostDeposited(c) + handler.ghostWithdrawn(c) + handler.ghostReceived(who),
                "client wallet != initial - deposited + withdrawn + self-paid"
            );
            received += handler.ghostReceived(second) + handler.ghostReceived(who);
        }
        assertEq(received, handler.ghostPaidTotal(), "received != paid");
    }

    function invariant_guardsHeld() public view {
        assertFalse(handler.releaseMismatch(), "release returned other than min(thawing, allocation)");
        assertFalse(handler.overWithdraw(), "withdrew more than the pool");
        assertFalse(handler.drainOverpaid(), "a self / second-address receipt got more than its own allocation");
        assertFalse(handler.refusedButPaid(), "a refusing node's item was reported paid");
        assertFalse(handler.validClaimReverted(), "a valid claim to a receiving node reverted");
    }
}
