// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {RegistryFixture} from "./RegistryFixture.sol";
import {OfferRegistry} from "../../src/OfferRegistry.sol";

/// @notice Bond and slash helpers on top of RegistryFixture: node keys, commitments, signatures, slashing.
abstract contract BondFixture is RegistryFixture {
    uint256 internal constant NODE_KEY = 0xB0B1;
    uint256 internal constant OTHER_KEY = 0xB0B2;
    bytes32 internal constant SESSION = keccak256("session");
    bytes32 internal constant INPUT = keccak256("input");
    address internal signer;
    address internal otherSigner;
    address internal reporter = address(0x4E90);

    function setUp() public virtual override {
        super.setUp();
        signer = vm.addr(NODE_KEY);
        otherSigner = vm.addr(OTHER_KEY);
    }

    /// @dev A commitment for the standard step, issued now, with output `output`.
    function _commitment(bytes32 output) internal view returns (OfferRegistry.Commitment memory) {
        return OfferRegistry.Commitment(SESSION, 12, 1, INPUT, output, MODEL, 0, 8, uint64(_now()));
    }

    function _sign(uint256 key, OfferRegistry.Commitment memory c) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, registry.commitmentDigest(c));
        return abi.encodePacked(r, s, v);
    }

    /// @dev Two conflicting commitments (outputs "a" and "b") signed by `key`.
    function _conflict(uint256 key)
        internal
        view
        returns (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
    {
        a = _commitment(keccak256("a"));
        b = _commitment(keccak256("b"));
        sigA = _sign(key, a);
        sigB = _sign(key, b);
    }

    function _slashAs(
        address who,
        OfferRegistry.Commitment memory a,
        bytes memory sigA,
        OfferRegistry.Commitment memory b,
        bytes memory sigB
    ) internal returns (address slashed, uint256 reward, uint256 burned) {
        vm.prank(who);
        return registry.slash(a, sigA, b, sigB);
    }

    /// @dev `who` bonds `amount` with an offer of [0, 8).
    function _registerBonded(address who, uint256 amount) internal returns (uint256 id) {
        vm.deal(who, who.balance + amount);
        vm.prank(who);
        id = registry.register{value: amount}(MODEL, 0, 8, 1, "http://127.0.0.1:8001");
    }

    /// @dev `who` removes its offers `ids` and requests its bond back.
    function _leave(address who, uint256[] memory ids) internal {
        vm.startPrank(who);
        for (uint256 i; i < ids.length; ++i) {
            registry.remove(ids[i]);
        }
        registry.requestBondWithdrawal();
        vm.stopPrank();
    }

    function _one(uint256 id) internal pure returns (uint256[] memory ids) {
        ids = new uint256[](1);
        ids[0] = id;
    }
}
