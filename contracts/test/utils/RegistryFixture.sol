// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./Test.sol";
import {OfferRegistry} from "../../src/OfferRegistry.sol";

/// @notice Shared set-up for registry tests: one registry, a model, registration (bonding what is missing) and
///         paging helpers.
abstract contract RegistryFixture is Test {
    bytes32 internal constant MODEL = keccak256("smollm2-135m");
    bytes32 internal constant OTHER_MODEL = keccak256("qwen2.5-0.5b");
    uint64 internal constant TTL = 10 minutes;
    uint256 internal constant MIN_BOND = 0.01 ether;
    uint64 internal constant VALIDITY = 1 days;
    uint64 internal constant BOND_THAW = 2 days;
    uint16 internal constant REWARD_BPS = 5_000;
    OfferRegistry internal registry;
    address internal node = address(0x1111);
    address internal mallory = address(0x6666);

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        registry = _newRegistry(TTL);
    }

    function _newRegistry(uint64 ttl) internal returns (OfferRegistry) {
        return new OfferRegistry(ttl, MIN_BOND, BOND_THAW, VALIDITY, REWARD_BPS);
    }

    /// @dev What `who` must send with its next registration to reach the minimum bond; deals it to `who`.
    function _due(address who) internal returns (uint256 due) {
        uint256 bond = registry.bondOf(who);
        due = bond >= MIN_BOND ? 0 : MIN_BOND - bond;
        vm.deal(who, who.balance + due);
    }

    function _register(address who, uint16 start, uint16 end, uint256 price) internal returns (uint256 id) {
        uint256 due = _due(who);
        vm.prank(who);
        id = registry.register{value: due}(MODEL, start, end, price, "http://127.0.0.1:8001");
    }

    function _registerFor(address who, bytes32 model) internal returns (uint256 id) {
        uint256 due = _due(who);
        vm.prank(who);
        id = registry.register{value: due}(model, 0, 1, 1, "http://n");
    }

    /// @dev Every live offer of `model`, read page by page with `limit` entries per page.
    function _walk(bytes32 model, uint256 limit) internal view returns (uint256[] memory ids) {
        uint256[] memory buffer = new uint256[](registry.nextOfferId());
        uint256 count;
        uint256 cursor;
        do {
            OfferRegistry.OfferView[] memory page;
            (page, cursor) = registry.offersByModel(model, cursor, limit);
            for (uint256 i; i < page.length; ++i) {
                buffer[count++] = page[i].offerId;
            }
        } while (cursor != 0);
        ids = new uint256[](count);
        for (uint256 i; i < count; ++i) {
            ids[i] = buffer[i];
        }
    }

    function _ids(OfferRegistry.OfferView[] memory page) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](page.length);
        for (uint256 i; i < page.length; ++i) {
            ids[i] = page[i].offerId;
        }
    }

    function _assertIds(uint256[] memory got, uint256[] memory want, string memory message) internal pure {
        assertEq(got.length, want.length, string.concat(message, ": length"));
        for (uint256 i; i < want.length; ++i) {
            assertEq(got[i], want[i], message);
        }
    }

    function _seq(uint256 from, uint256 to) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](to - from + 1);
        for (uint256 i; i < ids.length; ++i) {
            ids[i] = from + i;
        }
    }
}
