// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice Unit and fuzz tests of the offer registry.
contract OfferRegistryTest is Test {
    bytes32 internal constant MODEL = keccak256("smollm2-135m");
    uint64 internal constant TTL = 10 minutes;
    OfferRegistry internal registry;
    address internal node = address(0x1111);
    address internal mallory = address(0x6666);

    function setUp() public {
        vm.warp(1_700_000_000);
        registry = new OfferRegistry(TTL);
    }

    function _register(address who, uint16 start, uint16 end, uint256 price) internal returns (uint256 id) {
        vm.prank(who);
        id = registry.register(MODEL, start, end, price, "http://127.0.0.1:8001");
    }

    function test_registerStoresOffer() public {
        uint256 id = _register(node, 8, 16, 2e15);
        OfferRegistry.OfferView memory o = registry.getOffer(id);
        assertEq(o.offerId, id, "id");
        assertEq(o.node, node, "node");
        assertEq(o.modelId, MODEL, "model");
        assertEq(o.layerStart, 8, "start");
        assertEq(o.layerEnd, 16, "end");
        assertEq(o.pricePerToken, 2e15, "price");
        assertEq(o.expiresAt, block.timestamp + TTL, "expiry");
        assertEq(registry.offerCount(node), 1, "count");
    }

    function test_badTtlRejected() public {
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadTtl.selector, uint64(0), uint64(1 days)));
        new OfferRegistry(0);
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

    function test_perNodeCap() public {
        uint256 cap = registry.MAX_OFFERS_PER_NODE();
        for (uint256 i; i < cap; ++i) _register(node, 0, 1, 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__TooManyOffers.selector, node, cap));
        registry.register(MODEL, 0, 1, 1, "http://x");
    }

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
        vm.warp(block.timestamp + 5 minutes);
        vm.startPrank(node);
        registry.updatePrice(id, 42);
        registry.heartbeat(id);
        vm.stopPrank();
        assertEq(registry.getOffer(id).pricePerToken, 42, "price");
        assertEq(registry.getOffer(id).expiresAt, block.timestamp + TTL, "extended");
    }

    function test_pagingSkipsExpiredOffers() public {
        uint256 a = _register(node, 0, 10, 1);
        vm.warp(block.timestamp + TTL / 2);
        uint256 b = _register(node, 10, 20, 1);
        vm.warp(block.timestamp + TTL / 2 + 1); // a expired, b live
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 1, "only live offers");
        assertEq(page[0].offerId, b, "b is live");
        assertEq(next, 0, "end reached");
        vm.prank(node);
        registry.heartbeat(a);
        (page,) = registry.offersByModel(MODEL, 0, 10);
        assertEq(page.length, 2, "a revived by heartbeat");
    }

    function test_pagingCursor() public {
        for (uint16 i; i < 5; ++i) _register(address(uint160(0x100 + i)), i, i + 1, i);
        (OfferRegistry.OfferView[] memory page, uint256 next) = registry.offersByModel(MODEL, 0, 2);
        assertEq(page.length, 2, "page 1");
        assertEq(next, 2, "cursor 1");
        (page, next) = registry.offersByModel(MODEL, next, 2);
        assertEq(page[0].layerStart, 2, "page 2 starts at the third offer");
        (page, next) = registry.offersByModel(MODEL, next, 2);
        assertEq(page.length, 1, "last page");
        assertEq(next, 0, "done");
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__PageTooLarge.selector, 201, 200));
        registry.offersByModel(MODEL, 0, 201);
    }

    function test_removeSwapsAndFreesCapacity() public {
        uint256 a = _register(node, 0, 10, 1);
        uint256 b = _register(node, 10, 20, 2);
        uint256 c = _register(node, 20, 30, 3);
        vm.prank(node);
        registry.remove(a);
        assertEq(registry.offerCountByModel(MODEL), 2, "model list shrank");
        assertEq(registry.offerCount(node), 2, "node count");
        (OfferRegistry.OfferView[] memory page,) = registry.offersByModel(MODEL, 0, 10);
        assertTrue(page[0].offerId == c && page[1].offerId == b, "last moved into the hole");
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, a));
        registry.getOffer(a);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, a));
        registry.remove(a);
    }

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
}
