// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {RegistryFixture} from "./utils/RegistryFixture.sol";
import {Vm} from "./utils/Test.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice The registry's attack checklist: each test names the guard it exercises and would fail without it.
contract OfferRegistryAttacksTest is RegistryFixture {
    uint256 internal constant SPAMMERS = 100;
    uint256 internal constant PER_SPAMMER = 10;
    address internal pruner = address(0x9999);

    function _spammer(uint256 i) internal pure returns (address) {
        return address(uint160(0x5BA0000 + i));
    }

    /// @dev 1,000 offers from 100 addresses (10 each), then time until they are prunable, then `live` fresh
    ///      offers from honest nodes. Returns the live offers' ids.
    function _spamThenLive(uint256 live) internal returns (uint256[] memory liveIds) {
        for (uint256 s; s < SPAMMERS; ++s) {
            _register(_spammer(s), 0, 1, 1); // bonds; the other nine ride on it
            vm.startPrank(_spammer(s));
            for (uint256 k = 1; k < PER_SPAMMER; ++k) {
                registry.register(MODEL, 0, 1, 1, "http://spam");
            }
            vm.stopPrank();
        }
        assertEq(registry.offerCountByModel(MODEL), SPAMMERS * PER_SPAMMER, "spam registered");
        vm.warp(_now() + TTL + registry.PRUNE_DELAY() + 1);
        liveIds = new uint256[](live);
        for (uint256 i; i < live; ++i) {
            liveIds[i] = _register(address(uint160(0xA11 + i)), 0, 1, 1);
        }
    }

    function _assertSpamGone(uint256[] memory liveIds) internal view {
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 200);
        _assertIds(_ids(page), liveIds, "first page holds exactly the live offers");
        assertEq(next, 0, "and nothing after them");
        for (uint256 s; s < SPAMMERS; ++s) {
            assertEq(registry.offerCount(_spammer(s)), 0, "spammer's count back to 0");
        }
        assertEq(registry.offerCountByModel(MODEL), liveIds.length, "model count = live offers");
    }

    // Guard: prune() by anyone after PRUNE_DELAY: a third party clears 1,000 expired offers, 200 per call.
    function test_attack_expiredSpamPrunedByThirdParty() public {
        uint256[] memory liveIds = _spamThenLive(3);
        vm.recordLogs();
        uint256 cursor;
        uint256 total;
        uint256 calls;
        do {
            uint256 pruned;
            vm.prank(pruner);
            (pruned, cursor) = registry.prune(MODEL, cursor, 200);
            total += pruned;
            ++calls;
        } while (cursor != 0);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(total, 1_000, "all spam pruned");
        assertEq(calls, 6, "five full scans of 200, one over the live tail");
        uint256 byPruner;
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == OfferRegistry.OfferPruned.selector) {
                assertEq(logs[i].topics[3], bytes32(uint256(uint160(pruner))), "pruner named");
                ++byPruner;
            }
        }
        assertEq(byPruner, 1_000, "one OfferPruned per offer");
        _assertSpamGone(liveIds);
        _register(_spammer(0), 0, 1, 1);
        assertEq(registry.offerCount(_spammer(0)), 1, "pruned capacity is usable again");
    }

    // Guard: same; pruning always from the head (cursor 0) also clears the spam, 200 offers per call.
    function test_attack_expiredSpamPrunedFromTheHead() public {
        uint256[] memory liveIds = _spamThenLive(4);
        for (uint256 i; i < 5; ++i) {
            vm.prank(pruner);
            (uint256 pruned, uint256 next) = registry.prune(MODEL, 0, 200);
            assertEq(pruned, 200, "200 per call");
            assertTrue(next != 0, "more to scan");
        }
        _assertSpamGone(liveIds);
    }

    // Guard: expiresAt + PRUNE_DELAY < now: recently expired (or exactly at the delay) and live offers stay.
    function test_attack_recentlyExpiredAndLiveOffersNotPruned() public {
        uint256 expired = _register(node, 0, 1, 1);
        uint256 live = _register(address(0x2222), 0, 1, 1);
        uint256 prunableAfter = uint256(registry.getOffer(expired).expiresAt) + registry.PRUNE_DELAY();
        while (_now() + TTL <= prunableAfter) {
            vm.warp(_now() + TTL);
            vm.prank(address(0x2222));
            registry.heartbeat(live);
            vm.prank(pruner);
            (uint256 pruned,) = registry.prune(MODEL, 0, 200);
            assertEq(pruned, 0, "nothing prunable yet");
        }
        vm.warp(prunableAfter);
        vm.prank(pruner);
        (uint256 atBoundary,) = registry.prune(MODEL, 0, 200);
        assertEq(atBoundary, 0, "not at exactly expiresAt + PRUNE_DELAY");
        vm.warp(prunableAfter + 1);
        vm.prank(address(0x2222));
        registry.heartbeat(live);
        vm.prank(pruner);
        (uint256 after_,) = registry.prune(MODEL, 0, 200);
        assertEq(after_, 1, "pruned one second later");
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, expired));
        registry.getOffer(expired);
        for (uint256 round; round < 300; ++round) {
            vm.warp(_now() + TTL);
            vm.prank(address(0x2222));
            registry.heartbeat(live);
            vm.prank(pruner);
            (uint256 pruned,) = registry.prune(MODEL, 0, 200);
            assertEq(pruned, 0, "live offer never pruned");
        }
        assertEq(registry.getOffer(live).offerId, live, "live offer still there");
    }

    // Guard: removed/pruned offers keep modelId and links: a held cursor survives removals before, at and after it.
    function test_attack_pagerSurvivesRemovalsAndPrunesAroundItsCursor() public {
        vm.warp(1_700_000_000);
        registry = _newRegistry(1 days);
        address[10] memory owners;
        for (uint256 i; i < 10; ++i) {
            owners[i] = address(uint160(0x700 + i));
            _register(owners[i], 0, 1, i); // ids 1..10
        }
        (OfferRegistry.OfferView[] memory page, uint256 cursor) = registry.offersByModel(MODEL, 0, 4);
        _assertIds(_ids(page), _seq(1, 4), "page 1");
        assertEq(cursor, 5, "reader holds offer 5");
        // Offers 6 and 9 go stale; every other offer is kept alive by its owner.
        for (uint256 round; round < 2; ++round) {
            vm.warp(_now() + 1 days - 1);
            for (uint256 i; i < 10; ++i) {
                if (i == 5 || i == 8) continue;
                vm.prank(owners[i]);
                registry.heartbeat(i + 1);
            }
        }
        vm.warp(_now() + 3);
        vm.prank(owners[1]);
        registry.remove(2); // before the cursor
        vm.prank(owners[4]);
        registry.remove(5); // the cursor itself
        vm.prank(owners[6]);
        registry.remove(7); // after the cursor
        vm.prank(pruner);
        (uint256 pruned,) = registry.prune(MODEL, 0, 200); // 6 and 9, after the cursor
        assertEq(pruned, 2, "6 and 9 pruned");
        uint256[] memory rest = new uint256[](10);
        uint256 count;
        while (cursor != 0) {
            (page, cursor) = registry.offersByModel(MODEL, cursor, 2);
            for (uint256 i; i < page.length; ++i) {
                rest[count++] = page[i].offerId;
            }
        }
        uint256[] memory want = new uint256[](2);
        (want[0], want[1]) = (8, 10);
        uint256[] memory got = new uint256[](count);
        for (uint256 i; i < count; ++i) {
            got[i] = rest[i];
        }
        _assertIds(got, want, "every remaining offer after the cursor, once");
    }

    // Guard: same, when the reader's cursor offer is pruned and so is the offer after it.
    function test_attack_pagerSurvivesPruningOfItsCursorAndSuccessor() public {
        vm.warp(1_700_000_000);
        registry = _newRegistry(1 days);
        for (uint256 i; i < 6; ++i) {
            _register(address(uint160(0x700 + i)), 0, 1, i); // ids 1..6
        }
        (, uint256 cursor) = registry.offersByModel(MODEL, 0, 2);
        assertEq(cursor, 3, "reader holds offer 3");
        // 3 and 4 go stale; the others are kept alive by their owners.
        for (uint256 round; round < 2; ++round) {
            vm.warp(_now() + 1 days - 1);
            for (uint256 id = 1; id <= 6; ++id) {
                if (id == 3 || id == 4) continue;
                vm.prank(address(uint160(0x700 + id - 1)));
                registry.heartbeat(id);
            }
        }
        vm.warp(_now() + 3);
        vm.prank(pruner);
        (uint256 pruned,) = registry.prune(MODEL, 0, 200);
        assertEq(pruned, 2, "3 and 4 pruned");
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, cursor, 200);
        _assertIds(_ids(page), _seq(5, 6), "the reader continues with 5 and 6");
        assertEq(next, 0, "end");
    }

    // Guard: _ownedOffer: a stranger can neither reprice, heartbeat nor remove a live offer, nor prune it.
    function test_attack_strangerCannotChangeOrRemoveALiveOffer() public {
        uint256 id = _register(node, 0, 10, 1);
        bytes memory notOwner = abi.encodeWithSelector(OfferRegistry.Registry__NotOwner.selector, id, mallory, node);
        vm.startPrank(mallory);
        vm.expectRevert(notOwner);
        registry.updatePrice(id, 0);
        vm.expectRevert(notOwner);
        registry.heartbeat(id);
        vm.expectRevert(notOwner);
        registry.remove(id);
        (uint256 pruned,) = registry.prune(MODEL, 0, 200);
        vm.stopPrank();
        assertEq(pruned, 0, "live offer not prunable");
        OfferRegistry.OfferView memory o = registry.getOffer(id);
        assertEq(o.pricePerToken, 1, "price untouched");
        assertEq(o.expiresAt, _now() + TTL, "expiry untouched");
    }

    // Guard: MAX_OFFERS_PER_NODE bounds one address's spam, and prune gives the owner its capacity back once.
    function test_attack_perNodeCapBoundsSpam() public {
        uint256 cap = registry.MAX_OFFERS_PER_NODE();
        for (uint256 i; i < cap; ++i) {
            _register(mallory, 0, 1, 1);
        }
        vm.prank(mallory);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__TooManyOffers.selector, mallory, cap));
        registry.register(OTHER_MODEL, 0, 1, 1, "http://spam");
        vm.warp(_now() + TTL + 1 days + 1);
        registry.prune(MODEL, 0, 200);
        assertEq(registry.offerCount(mallory), 0, "capacity back");
        (uint256 again,) = registry.prune(MODEL, 0, 200);
        assertEq(again, 0, "nothing pruned twice");
        assertEq(registry.offerCount(mallory), 0, "count not decremented twice");
    }

    // Guard: MAX_PAGE caps every scan, so no page or prune call can be made to run out of gas by list length.
    function test_attack_pageAndPruneSizeCapped() public {
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__PageTooLarge.selector, 1_000, 200));
        registry.offersByModel(MODEL, 0, 1_000);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__PageTooLarge.selector, type(uint256).max, 200));
        registry.prune(MODEL, 0, type(uint256).max);
    }

    // Guard: _start's cursor check: another model's (or an unissued) cursor cannot steer a page or a prune.
    function test_attack_cursorFromAnotherModelRejected() public {
        uint256 other = _registerFor(node, OTHER_MODEL);
        _register(node, 0, 1, 1);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, other));
        registry.offersByModel(MODEL, other, 10);
        vm.warp(_now() + TTL + 1 days + 1);
        vm.prank(pruner);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, other));
        registry.prune(MODEL, other, 10);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, 99));
        registry.prune(MODEL, 99, 10);
        assertEq(registry.offerCountByModel(OTHER_MODEL), 1, "other model untouched");
    }

    // Guard: _unlink clears the owner: a pruned offer cannot be revived, repriced or unlinked twice.
    function test_attack_prunedOfferCannotBeRevivedOrRemovedAgain() public {
        uint256 a = _register(node, 0, 1, 1);
        _register(node, 0, 1, 2);
        vm.warp(_now() + TTL + 1 days + 1);
        uint256 c = _register(address(0x2222), 0, 1, 3);
        registry.prune(MODEL, 0, 200);
        bytes memory unknown = abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, a);
        vm.startPrank(node);
        vm.expectRevert(unknown);
        registry.heartbeat(a);
        vm.expectRevert(unknown);
        registry.updatePrice(a, 9);
        vm.expectRevert(unknown);
        registry.remove(a);
        vm.stopPrank();
        assertEq(registry.offerCount(node), 0, "count freed exactly once");
        _assertIds(_walk(MODEL, 200), _seq(c, c), "list holds only the live offer");
    }
}
