// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice Random register / update / heartbeat / remove by a few nodes and by strangers, with ghosts.
contract RegistryHandler is Test {
    OfferRegistry public immutable registry;
    bytes32 public constant MODEL = keccak256("model");
    address[3] public nodes = [address(0x1001), address(0x1002), address(0x1003)];
    uint256[] public liveIds;
    mapping(uint256 offerId => address) public ghostOwner;
    mapping(uint256 offerId => uint256) public ghostPrice;
    uint256 public strangerChanges;

    constructor(OfferRegistry registry_) {
        registry = registry_;
    }

    function liveCount() external view returns (uint256) {
        return liveIds.length;
    }

    function register(uint256 who, uint16 start, uint16 len, uint256 price) external {
        address node = nodes[who % 3];
        if (registry.offerCount(node) == registry.MAX_OFFERS_PER_NODE()) return;
        start = uint16(bound(start, 0, 100));
        len = uint16(bound(len, 1, 30));
        vm.prank(node);
        uint256 id = registry.register(MODEL, start, start + len, price, "http://n");
        liveIds.push(id);
        ghostOwner[id] = node;
        ghostPrice[id] = price;
    }

    function updatePrice(uint256 pick, uint256 price) external {
        if (liveIds.length == 0) return;
        uint256 id = liveIds[pick % liveIds.length];
        vm.prank(ghostOwner[id]);
        registry.updatePrice(id, price);
        ghostPrice[id] = price;
    }

    function heartbeat(uint256 pick) external {
        if (liveIds.length == 0) return;
        uint256 id = liveIds[pick % liveIds.length];
        vm.prank(ghostOwner[id]);
        registry.heartbeat(id);
    }

    function remove(uint256 pick) external {
        if (liveIds.length == 0) return;
        uint256 index = pick % liveIds.length;
        uint256 id = liveIds[index];
        vm.prank(ghostOwner[id]);
        registry.remove(id);
        liveIds[index] = liveIds[liveIds.length - 1];
        liveIds.pop();
    }

    /// A stranger tries to change someone's offer; success is recorded and must never happen.
    function strangerUpdate(uint256 pick, uint256 price) external {
        if (liveIds.length == 0) return;
        uint256 id = liveIds[pick % liveIds.length];
        vm.prank(address(0xBAD));
        try registry.updatePrice(id, price) {
            strangerChanges++;
        } catch {}
        vm.prank(address(0xBAD));
        try registry.remove(id) {
            strangerChanges++;
        } catch {}
    }

    function warp(uint256 secondsAhead) external {
        vm.warp(block.timestamp + bound(secondsAhead, 1, 1 hours));
    }

    function selectors() external pure returns (bytes4[] memory out) {
        out = new bytes4[](6);
        out[0] = this.register.selector;
        out[1] = this.updatePrice.selector;
        out[2] = this.heartbeat.selector;
        out[3] = this.remove.selector;
        out[4] = this.strangerUpdate.selector;
        out[5] = this.warp.selector;
    }
}

/// @notice Invariants of the registry under random sequences of the handler's actions.
contract OfferRegistryInvariantTest is Test {
    OfferRegistry internal registry;
    RegistryHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        registry = new OfferRegistry(30 minutes);
        handler = new RegistryHandler(registry);
        targetContract(address(handler));
        targetSelector(FuzzSelector(address(handler), handler.selectors()));
    }

    function invariant_modelListMatchesLiveOffers() public view {
        uint256 n = handler.liveCount();
        assertEq(registry.offerCountByModel(handler.MODEL()), n, "model list length");
        uint256 perNode;
        for (uint256 i; i < 3; ++i) perNode += registry.offerCount(handler.nodes(i));
        assertEq(perNode, n, "sum of per-node counts");
        for (uint256 i; i < n; ++i) {
            uint256 id = handler.liveIds(i);
            OfferRegistry.OfferView memory o = registry.getOffer(id);
            assertEq(o.node, handler.ghostOwner(id), "owner");
            assertEq(o.pricePerToken, handler.ghostPrice(id), "price");
            assertTrue(o.layerStart < o.layerEnd, "non-empty range");
        }
    }

    function invariant_capAndOwnership() public view {
        for (uint256 i; i < 3; ++i) {
            assertLe(registry.offerCount(handler.nodes(i)), registry.MAX_OFFERS_PER_NODE(), "cap");
        }
        assertEq(handler.strangerChanges(), 0, "a stranger changed an offer");
    }

    function invariant_pagesHoldOnlyLiveOffers() public view {
        (OfferRegistry.OfferView[] memory page,) = registry.offersByModel(handler.MODEL(), 0, 200);
        for (uint256 i; i < page.length; ++i) {
            assertGe(page[i].expiresAt, block.timestamp, "expired offer in page");
        }
    }
}
