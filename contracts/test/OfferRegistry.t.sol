// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {RegistryFixture} from "./utils/RegistryFixture.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice Unit and fuzz tests of the offer registry: register, update, heartbeat, remove, prune, paging.
contract OfferRegistryTest is RegistryFixture {
    // ---------------------------------------------------------------- register
    function test_registerStoresOffer() public {
        vm.expectEmit(true, true, true, true, address(registry));
        emit OfferRegistry.OfferRegistered(1, node, MODEL, 8, 16, 2e15, "http://127.0.0.1:8001", uint64(_now() + TTL));
        uint256 id = _register(node, 8, 16, 2e15);
        OfferRegistry.OfferView memory o = registry.getOffer(id);
        assertEq(id, 1, "first id");
        assertEq(registry.nextOfferId(), 2, "next id");
        assertEq(o.offerId, id, "id");
        assertEq(o.node, node, "node");
        assertEq(o.modelId, MODEL, "model");
        assertEq(o.layerStart, 8, "start");
        assertEq(o.layerEnd, 16, "end");
        assertEq(o.pricePerToken, 2e15, "price");
        assertEq(keccak256(bytes(o.endpoint)), keccak256("http://127.0.0.1:8001"), "endpoint");
        assertEq(o.expiresAt, _now() + TTL, "expiry");
        assertEq(registry.offerCount(node), 1, "count");
        assertEq(registry.offerCountByModel(MODEL), 1, "model count");
    }

    function test_ttlBounds() public {
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadTtl.selector, uint64(0), uint64(1 days)));
        _newRegistry(0);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BadTtl.selector, uint64(1 days + 1), uint64(1 days))
        );
        _newRegistry(1 days + 1);
        assertEq(_newRegistry(1).offerTtl(), 1, "1 s");
        assertEq(_newRegistry(1 days).offerTtl(), 1 days, "1 day");
        assertEq(registry.PRUNE_DELAY(), 1 days, "prune delay");
        assertEq(registry.MAX_PAGE(), 200, "max page");
        assertEq(registry.MAX_OFFERS_PER_NODE(), 16, "cap");
    }

    function test_emptyRangeRejected() public {
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__EmptyRange.selector, uint16(5), uint16(5)));
        registry.register(MODEL, 5, 5, 1, "http://x");
    }

    function test_emptyEndpointRejected() public {
        vm.prank(node);
        vm.expectRevert(OfferRegistry.Registry__EmptyEndpoint.selector);
        registry.register(MODEL, 0, 5, 1, "");
    }

    function test_endpointLengthCapped() public {
        bytes memory longest = new bytes(256);
        for (uint256 i; i < 256; ++i) {
            longest[i] = "a";
        }
        uint256 due = _due(node);
        vm.prank(node);
        registry.register{value: due}(MODEL, 0, 5, 1, string(longest));
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__EndpointTooLong.selector, 257, 256));
        registry.register(MODEL, 0, 5, 1, string.concat(string(longest), "a"));
    }

    function test_perNodeCap() public {
        uint256 cap = registry.MAX_OFFERS_PER_NODE();
        for (uint256 i; i < cap; ++i) {
            _register(node, 0, 1, 1);
        }
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__TooManyOffers.selector, node, cap));
        registry.register(OTHER_MODEL, 0, 1, 1, "http://x");
        _register(address(0x2222), 0, 1, 1);
        assertEq(registry.offerCount(node), cap, "count at cap");
    }

    // ---------------------------------------------------------------- owner actions
    function test_onlyOwnerChangesOffer() public {
        uint256 id = _register(node, 0, 10, 1);
        bytes memory notOwner = abi.encodeWithSelector(OfferRegistry.Registry__NotOwner.selector, id, mallory, node);
        vm.startPrank(mallory);
        vm.expectRevert(notOwner);
        registry.updatePrice(id, 0);
        vm.expectRevert(notOwner);
        registry.heartbeat(id);
        vm.expectRevert(notOwner);
        registry.remove(id);
        vm.stopPrank();
        assertEq(registry.getOffer(id).pricePerToken, 1, "price untouched");
    }

    function test_updatePriceAndHeartbeat() public {
        uint256 id = _register(node, 0, 10, 1);
        vm.warp(_now() + 5 minutes);
        vm.startPrank(node);
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.OfferPriceUpdated(id, 1, 42);
        registry.updatePrice(id, 42);
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.OfferHeartbeat(id, uint64(_now() + TTL));
        registry.heartbeat(id);
        vm.stopPrank();
        assertEq(registry.getOffer(id).pricePerToken, 42, "price");
        assertEq(registry.getOffer(id).expiresAt, _now() + TTL, "extended");
    }

    function test_unknownOfferRejected() public {
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, 0));
        registry.getOffer(0);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, 7));
        registry.getOffer(7);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, 7));
        registry.updatePrice(7, 1);
    }

    function test_removeUnlinksAndKeepsOrder() public {
        uint256[] memory ids = new uint256[](5);
        for (uint256 i; i < 5; ++i) {
            ids[i] = _register(node, uint16(i), uint16(i + 1), i);
        }
        vm.startPrank(node);
        vm.expectEmit(true, true, false, true, address(registry));
        emit OfferRegistry.OfferRemoved(ids[2], node);
        registry.remove(ids[2]); // middle
        registry.remove(ids[0]); // head
        registry.remove(ids[4]); // tail
        vm.stopPrank();
        uint256[] memory want = new uint256[](2);
        (want[0], want[1]) = (ids[1], ids[3]);
        _assertIds(_walk(MODEL, 200), want, "registration order kept");
        assertEq(registry.offerCountByModel(MODEL), 2, "model count");
        assertEq(registry.offerCount(node), 2, "node count");
        uint256 later = _register(node, 9, 10, 9);
        want = new uint256[](3);
        (want[0], want[1], want[2]) = (ids[1], ids[3], later);
        _assertIds(_walk(MODEL, 1), want, "appended at the tail");
    }

    function test_removedOfferIsGone() public {
        uint256 a = _register(node, 0, 10, 1);
        vm.prank(node);
        registry.remove(a);
        bytes memory unknown = abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, a);
        vm.expectRevert(unknown);
        registry.getOffer(a);
        vm.startPrank(node);
        vm.expectRevert(unknown);
        registry.remove(a);
        vm.expectRevert(unknown);
        registry.heartbeat(a);
        vm.expectRevert(unknown);
        registry.updatePrice(a, 5);
        vm.stopPrank();
        assertEq(registry.offerCount(node), 0, "count freed once");
        assertEq(registry.offerCountByModel(MODEL), 0, "model list empty");
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length + next, 0, "empty page");
    }

    function test_removeFreesCapacity() public {
        uint256 cap = registry.MAX_OFFERS_PER_NODE();
        uint256 first;
        for (uint256 i; i < cap; ++i) {
            uint256 id = _register(node, 0, 1, 1);
            if (i == 0) first = id;
        }
        vm.prank(node);
        registry.remove(first);
        _register(node, 0, 1, 1);
        assertEq(registry.offerCount(node), cap, "back at the cap");
    }

    // ---------------------------------------------------------------- paging
    function test_pagingSkipsExpiredOffers() public {
        uint256 a = _register(node, 0, 10, 1);
        vm.warp(_now() + TTL / 2);
        uint256 b = _register(node, 10, 20, 1);
        vm.warp(_now() + TTL / 2 + 1); // a expired, b live
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 1, "only live offers");
        assertEq(page[0].offerId, b, "b is live");
        assertEq(next, 0, "end reached");
        assertEq(registry.offerCountByModel(MODEL), 2, "expired offer still counted until pruned");
        assertEq(registry.getOffer(a).offerId, a, "expired offer still readable");
        vm.prank(node);
        registry.heartbeat(a);
        (page,) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 2, "a revived by heartbeat");
    }

    function test_offerExpiresAfterExactlyTtl() public {
        _register(node, 0, 10, 1);
        vm.warp(_now() + TTL);
        (OfferRegistry.OfferView[] memory page,) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 1, "live at expiresAt");
        vm.warp(_now() + 1);
        (page,) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 0, "expired after expiresAt");
    }

    function test_pagingCursorIsAnOfferId() public {
        for (uint16 i; i < 5; ++i) {
            _register(address(uint160(0x100 + i)), i, i + 1, i);
        }
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 2);
        _assertIds(_ids(page), _seq(1, 2), "page 1");
        assertEq(next, 3, "cursor = id of the next offer");
        (page, next) = registry.offersByModel(MODEL, next, 2);
        _assertIds(_ids(page), _seq(3, 4), "page 2");
        (page, next) = registry.offersByModel(MODEL, next, 2);
        _assertIds(_ids(page), _seq(5, 5), "last page");
        assertEq(next, 0, "done");
        (page, next) = registry.offersByModel(MODEL, 0, 0);
        assertEq(page.length, 0, "limit 0 reads nothing");
        assertEq(next, 1, "and stays at the head");
    }

    function test_pageTooLargeRejected() public {
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__PageTooLarge.selector, 201, 200));
        registry.offersByModel(MODEL, 0, 201);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__PageTooLarge.selector, 201, 200));
        registry.prune(MODEL, 0, 201);
        registry.offersByModel(MODEL, 0, 200);
    }

    function test_badCursorRejected() public {
        uint256 a = _register(node, 0, 1, 1);
        uint256 other = _registerFor(node, OTHER_MODEL);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, other));
        registry.offersByModel(MODEL, other, 10);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, 3));
        registry.offersByModel(MODEL, 3, 10);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, OTHER_MODEL, a));
        registry.prune(OTHER_MODEL, a, 10);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadCursor.selector, MODEL, 3));
        registry.prune(MODEL, 3, 10);
        (OfferRegistry.OfferView[] memory page,) = registry.offersByModel(MODEL, a, 10);
        assertEq(page.length, 1, "own cursor accepted");
    }

    function test_cursorOnRemovedOfferContinues() public {
        for (uint16 i; i < 4; ++i) {
            _register(node, i, i + 1, i);
        }
        (, uint256 next) = registry.offersByModel(MODEL, 0, 2);
        assertEq(next, 3, "cursor");
        vm.prank(node);
        registry.remove(3);
        (OfferRegistry.OfferView[] memory page, uint256 end) = registry.offersByModel(MODEL, next, 2);
        _assertIds(_ids(page), _seq(4, 4), "continues after the removed cursor");
        assertEq(end, 0, "end");
    }

    /// A cursor on an offer that was the tail when it was removed ends the pass there: offers registered after
    /// the removal are not promised to that reader; a fresh pass from cursor 0 sees them.
    function test_cursorOnRemovedTailEndsThePass() public {
        uint256 a = _register(node, 0, 1, 1);
        _register(node, 0, 1, 2);
        (, uint256 cursor) = registry.offersByModel(MODEL, 0, 1);
        assertEq(cursor, 2, "reader holds the tail");
        vm.prank(node);
        registry.remove(2);
        uint256 c = _register(node, 0, 1, 3);
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, cursor, 10);
        assertEq(page.length + next, 0, "the stale pass ends");
        uint256[] memory want = new uint256[](2);
        (want[0], want[1]) = (a, c);
        _assertIds(_walk(MODEL, 1), want, "a fresh pass sees the later offer");
    }

    function test_modelsHaveSeparateLists() public {
        uint256 a = _registerFor(node, MODEL);
        uint256 b = _registerFor(node, OTHER_MODEL);
        uint256 c = _registerFor(node, MODEL);
        uint256[] memory want = new uint256[](2);
        (want[0], want[1]) = (a, c);
        _assertIds(_walk(MODEL, 200), want, "model list");
        _assertIds(_walk(OTHER_MODEL, 200), _seq(b, b), "other model list");
        assertEq(registry.offerCountByModel(OTHER_MODEL), 1, "other count");
    }

    // ---------------------------------------------------------------- prune
    function test_pruneRemovesOnlyLongExpiredOffers() public {
        uint256 old = _register(node, 0, 1, 1);
        vm.warp(_now() + 1 hours);
        uint256 recent = _register(node, 0, 1, 1);
        uint64 oldExpiry = registry.getOffer(old).expiresAt;
        vm.warp(oldExpiry + 1 days); // old: exactly PRUNE_DELAY after expiry, not yet prunable
        vm.prank(mallory);
        (uint256 pruned,) = registry.prune(MODEL, 0, 10);
        assertEq(pruned, 0, "not before expiresAt + PRUNE_DELAY has passed");
        uint256 live = _register(address(0x2222), 0, 1, 1);
        vm.warp(_now() + 1);
        vm.expectEmit(true, true, true, true, address(registry));
        emit OfferRegistry.OfferPruned(old, node, mallory);
        vm.prank(mallory);
        uint256 next;
        (pruned, next) = registry.prune(MODEL, 0, 10);
        assertEq(pruned, 1, "old pruned");
        assertEq(next, 0, "scan reached the end");
        uint256[] memory want = new uint256[](2);
        (want[0], want[1]) = (recent, live);
        uint256[] memory left = new uint256[](2);
        (left[0], left[1]) = (registry.getOffer(recent).offerId, registry.getOffer(live).offerId);
        _assertIds(left, want, "recently expired and live offers stay");
        assertEq(registry.offerCount(node), 1, "owner's count freed");
        assertEq(registry.offerCountByModel(MODEL), 2, "model count");
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, old));
        registry.getOffer(old);
    }

    function test_pruneScansAtMostLimitEntries() public {
        for (uint256 i; i < 5; ++i) {
            _register(address(uint160(0x100 + i)), 0, 1, 1);
        }
        vm.warp(_now() + TTL + 1 days + 1);
        (uint256 pruned, uint256 next) = registry.prune(MODEL, 0, 2);
        assertEq(pruned, 2, "two scanned, two pruned");
        assertEq(next, 3, "continue at offer 3");
        (pruned, next) = registry.prune(MODEL, next, 2);
        assertEq(pruned, 2, "two more");
        assertEq(next, 5, "continue at offer 5");
        (pruned, next) = registry.prune(MODEL, next, 2);
        assertEq(pruned, 1, "last one");
        assertEq(next, 0, "end");
        assertEq(registry.offerCountByModel(MODEL), 0, "empty");
        (pruned, next) = registry.prune(MODEL, 0, 200);
        assertEq(pruned + next, 0, "empty list: nothing to do");
    }

    function test_heartbeatBeforePruneSavesAnExpiredOffer() public {
        uint256 id = _register(node, 0, 1, 1);
        vm.warp(_now() + TTL + 1 days);
        vm.prank(node);
        registry.heartbeat(id);
        vm.warp(_now() + 1);
        (uint256 pruned,) = registry.prune(MODEL, 0, 10);
        assertEq(pruned, 0, "revived offer is live");
        assertEq(registry.getOffer(id).offerId, id, "still there");
    }

    // ---------------------------------------------------------------- fuzz
    function testFuzz_registerAnyValidRange(uint16 start, uint16 end, uint256 price) public {
        vm.assume(start < end);
        uint256 id = _register(node, start, end, price);
        OfferRegistry.OfferView memory o = registry.getOffer(id);
        assertEq(o.layerStart, start, "start");
        assertEq(o.layerEnd, end, "end");
        assertEq(o.pricePerToken, price, "price");
    }

    function testFuzz_invalidRangeAlwaysRejected(uint16 start, uint16 end) public {
        vm.assume(start >= end);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__EmptyRange.selector, start, end));
        registry.register(MODEL, start, end, 1, "http://x");
    }

    /// Fuzz: after random removals and expiries, paging with any page size returns each live offer once, in
    /// registration order, and a full prune leaves exactly the offers that are not long expired.
    function testFuzz_pagingAndPruneMatchAModel(uint256 seed, uint256 limit) public {
        limit = bound(limit, 1, 200);
        uint256 n = bound(seed, 1, 40);
        bool[] memory removed = new bool[](n + 1);
        uint64[] memory expiry = new uint64[](n + 1);
        for (uint256 id = 1; id <= n; ++id) {
            uint256 s = uint256(keccak256(abi.encode(seed, id)));
            vm.warp(_now() + (s % 3) * 1 hours);
            _register(address(uint160(0x1000 + id % 5)), 0, 1, id);
            expiry[id] = uint64(_now() + TTL);
        }
        for (uint256 id = 1; id <= n; ++id) {
            if (uint256(keccak256(abi.encode(seed, id, "rm"))) % 4 == 0) {
                vm.prank(address(uint160(0x1000 + id % 5)));
                registry.remove(id);
                removed[id] = true;
            }
        }
        vm.warp(_now() + bound(seed >> 64, 0, 2 days));
        uint256 liveCount;
        uint256 keptCount;
        for (uint256 id = 1; id <= n; ++id) {
            if (removed[id]) continue;
            if (expiry[id] >= _now()) ++liveCount;
            if (uint256(expiry[id]) + 1 days >= _now()) ++keptCount;
        }
        uint256[] memory seen = _walk(MODEL, limit);
        assertEq(seen.length, liveCount, "live offers seen");
        uint256 last;
        for (uint256 i; i < seen.length; ++i) {
            assertTrue(seen[i] > last, "registration order, no repeats");
            assertTrue(!removed[seen[i]] && expiry[seen[i]] >= _now(), "only live offers");
            last = seen[i];
        }
        uint256 cursor;
        do {
            (, cursor) = registry.prune(MODEL, cursor, limit);
        } while (cursor != 0);
        assertEq(registry.offerCountByModel(MODEL), keptCount, "prune keeps exactly the recent offers");
        _assertIds(_walk(MODEL, limit), seen, "pruning changes no page");
    }
}
