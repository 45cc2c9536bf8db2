// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {RevertingNode} from "./utils/Nodes.sol";
import {PaymentEscrowV1} from "./legacy/PaymentEscrowV1.sol";
import {OfferRegistryV1} from "./legacy/OfferRegistryV1.sol";

/// @notice Witnesses that the attacks the new attack tests guard against worked on the pre-issue-13 contracts.
contract LegacyAttacksWitnessTest is Test {
    uint64 internal constant THAW = 2 days;
    uint64 internal constant VALIDITY = 1 days;
    uint256 internal constant CLIENT_KEY = 0xC11E47;
    uint256 internal constant SECOND_KEY = 0x5EC0;
    bytes32 internal constant SESSION = keccak256("session-1");
    bytes32 internal constant MODEL = keccak256("smollm2-135m");

    PaymentEscrowV1 internal escrow;
    address internal client;
    address internal nodeA = address(0xA0A0);
    address internal nodeB = address(0xB0B0);

    function setUp() public {
        vm.warp(1_700_000_000);
        escrow = new PaymentEscrowV1(THAW, VALIDITY);
        client = vm.addr(CLIENT_KEY);
        vm.deal(client, 100 ether);
        vm.prank(client);
        escrow.deposit{value: 10 ether}();
    }

    function _receipt(address node, uint256 amount) internal view returns (PaymentEscrowV1.Receipt memory) {
        return PaymentEscrowV1.Receipt(client, node, SESSION, 1, amount, uint64(_now() + 1 hours));
    }

    function _sign(PaymentEscrowV1.Receipt memory receipt) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(CLIENT_KEY, escrow.receiptDigest(receipt));
        return abi.encodePacked(r, s, v);
    }

    /// V1 paid any receipt from the client's whole balance: a receipt to its own address took the balance back
    /// at once (no thaw), and node A's receipt, signed for work already done, paid 0.
    function test_witness_selfReceiptDrainEmptiesTheBalance() public {
        PaymentEscrowV1.Receipt memory honest = _receipt(nodeA, 10 ether);
        bytes memory honestSig = _sign(honest);
        PaymentEscrowV1.Receipt memory drain = _receipt(client, 10 ether);
        uint256 walletBefore = client.balance;
        assertEq(escrow.claim(drain, _sign(drain)), 10 ether, "self receipt paid the whole balance");
        assertEq(client.balance - walletBefore, 10 ether, "back in the client's wallet at once");
        assertEq(escrow.balanceOf(client), 0, "balance emptied");
        assertEq(escrow.claim(honest, honestSig), 0, "A's receipt pays 0");
        assertEq(nodeA.balance, 0, "A unpaid");
    }

    /// The same with a second key the client controls posing as a node.
    function test_witness_secondAddressDrainEmptiesTheBalance() public {
        address second = vm.addr(SECOND_KEY);
        PaymentEscrowV1.Receipt memory honest = _receipt(nodeA, 10 ether);
        bytes memory honestSig = _sign(honest);
        PaymentEscrowV1.Receipt memory drain = _receipt(second, 10 ether);
        vm.prank(second);
        assertEq(escrow.claim(drain, _sign(drain)), 10 ether, "second address paid the whole balance");
        assertEq(second.balance, 10 ether, "second address holds it");
        assertEq(escrow.balanceOf(client), 0, "balance emptied");
        assertEq(escrow.claim(honest, honestSig), 0, "A's receipt pays 0");
    }

    /// V1's batch sent each node its payout with all gas and reverted on any failure: one reverting node made
    /// the whole batch revert, so nobody was paid.
    function test_witness_batchWithARevertingNodeRevertsEntirely() public {
        address reverting = address(new RevertingNode());
        PaymentEscrowV1.Receipt[] memory rs = new PaymentEscrowV1.Receipt[](3);
        bytes[] memory sigs = new bytes[](3);
        rs[0] = _receipt(nodeA, 1 ether);
        rs[1] = _receipt(reverting, 1 ether);
        rs[2] = _receipt(nodeB, 1 ether);
        for (uint256 i; i < 3; ++i) {
            sigs[i] = _sign(rs[i]);
        }
        vm.expectRevert(abi.encodeWithSelector(PaymentEscrowV1.Escrow__TransferFailed.selector, reverting, 1 ether));
        escrow.claimBatch(rs, sigs);
        assertEq(nodeA.balance + nodeB.balance, 0, "nobody paid");
        assertEq(escrow.paidFor(client, nodeA, SESSION), 0, "nothing recorded");
    }

    /// V1 accepted any thaw period above the receipt validity: near type(uint64).max, requestWithdraw overflows
    /// now + thawPeriod and panics, so the client can never start a withdrawal.
    function test_witness_hugeThawOverflowsRequestWithdraw() public {
        PaymentEscrowV1 huge = new PaymentEscrowV1(type(uint64).max - 1, VALIDITY);
        vm.startPrank(client);
        huge.deposit{value: 1 ether}();
        vm.expectRevert(abi.encodeWithSignature("Panic(uint256)", 0x11));
        huge.requestWithdraw(1 ether);
        vm.stopPrank();
    }

    /// V1 also accepted a thaw only one second longer than the receipt validity (no margin).
    function test_witness_thawWithoutMarginAccepted() public {
        PaymentEscrowV1 tight = new PaymentEscrowV1(VALIDITY + 1, VALIDITY);
        assertEq(tight.thawPeriod(), VALIDITY + 1, "no MIN_THAW_MARGIN");
    }

    /// V1 had no prune: a stranger cannot remove an expired offer, and 1,000 expired offers from 100 addresses
    /// stay in the list forever, so the live offers registered after them are not on the first pages.
    function test_witness_expiredSpamStaysForever() public {
        OfferRegistryV1 registry = new OfferRegistryV1(10 minutes);
        for (uint256 s; s < 100; ++s) {
            vm.startPrank(address(uint160(0x5BA0000 + s)));
            for (uint256 k; k < 10; ++k) {
                registry.register(MODEL, 0, 1, 1, "http://spam");
            }
            vm.stopPrank();
        }
        vm.warp(_now() + 30 days);
        assertEq(registry.offerCountByModel(MODEL), 1_000, "1,000 entries, all long expired, stay listed");
        vm.prank(address(0xA11));
        uint256 live = registry.register(MODEL, 0, 1, 1, "http://live");
        address stranger = address(0x9999);
        vm.prank(stranger);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistryV1.Registry__NotOwner.selector, 1, stranger, address(0x5BA0000))
        );
        registry.remove(1);
        assertEq(registry.offerCountByModel(MODEL), 1_001, "and the live offer is listed after them");
        assertEq(registry.offerCount(address(0x5BA0000)), 10, "spammer's count stays");
        (OfferRegistryV1.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 200);
        assertEq(page.length, 0, "first page holds no live offer");
        assertEq(next, 200, "and the reader must page on");
        (page,) = registry.offersByModel(MODEL, 1_000, 200);
        assertEq(page[0].offerId, live, "the live offer sits behind the spam");
    }

    /// V1's swap-and-pop removal moved the last offer into the hole: a reader paging by index while an offer
    /// before its cursor was removed skipped the moved offer.
    function test_witness_swapAndPopPagerMissesAnOffer() public {
        OfferRegistryV1 registry = new OfferRegistryV1(10 minutes);
        address owner = address(0x700);
        vm.startPrank(owner);
        for (uint256 i; i < 5; ++i) {
            registry.register(MODEL, 0, 1, i, "http://n"); // ids 1..5
        }
        vm.stopPrank();
        (OfferRegistryV1.OfferView[] memory page, uint256 cursor) = registry.offersByModel(MODEL, 0, 2);
        assertEq(page[0].offerId + page[1].offerId, 1 + 2, "page 1 = offers 1, 2");
        vm.prank(owner);
        registry.remove(1); // offer 5 moves to index 0
        uint256 seenFive;
        uint256 seen;
        while (cursor != 0) {
            (page, cursor) = registry.offersByModel(MODEL, cursor, 2);
            for (uint256 i; i < page.length; ++i) {
                ++seen;
                if (page[i].offerId == 5) ++seenFive;
            }
        }
        assertEq(seen, 2, "the rest of the pass saw only 3 and 4");
        assertEq(seenFive, 0, "offer 5, registered throughout, was never seen");
    }
}
