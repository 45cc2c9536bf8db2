// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {BondFixture} from "./utils/BondFixture.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice The bond's attack checklist: each test names the guard it exercises and would fail without it.
contract OfferRegistryBondAttacksTest is BondFixture {
    address internal secondReporter = address(0x4E91);

    // Guard: _usedProofs keyed by the sorted pair of digests: after a slash the node bonds again, and the same
    // proof, in the same or the swapped order, cannot take the new bond.
    function test_attack_replayedProof() public {
        _registerBonded(signer, MIN_BOND);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        _slashAs(reporter, a, sigA, b, sigB);
        _registerBonded(signer, 2 ether);
        bytes32 key = _key(a, b);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__ProofUsed.selector, key));
        _slashAs(mallory, a, sigA, b, sigB);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__ProofUsed.selector, key));
        _slashAs(mallory, b, sigB, a, sigA);
        assertEq(registry.bondOf(signer), 2 ether, "the new bond is untouched");
        assertEq(mallory.balance, 0, "no reward for a replay");
        // A new equivocation is a new proof.
        OfferRegistry.Commitment memory c = _commitment(keccak256("c"));
        bytes memory sigC = _sign(NODE_KEY, c);
        _slashAs(mallory, a, sigA, c, sigC);
        assertEq(registry.bondOf(signer), 0, "a fresh proof slashes");
    }

    // Guard: the node slashed is the one both signatures recover to (there is no node argument), and both must
    // recover to the same address: a proof of one node cannot touch another's bond, nor can two nodes' honest
    // commitments be combined into a "conflict".
    function test_attack_proofForAnotherNode() public {
        _registerBonded(signer, 1 ether);
        _registerBonded(otherSigner, 1 ether);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b,) =
            _conflict(NODE_KEY);
        bytes memory otherSigB = _sign(OTHER_KEY, b); // the other node honestly computed output "b"
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__DifferentSigners.selector, signer, otherSigner)
        );
        _slashAs(mallory, a, sigA, b, otherSigB);
        // A commitment signed for another registry (another domain) recovers to someone else.
        OfferRegistry elsewhere = _newRegistry(TTL);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(NODE_KEY, elsewhere.commitmentDigest(b));
        bytes memory foreignSigB = abi.encodePacked(r, s, v);
        vm.expectRevert(); // DifferentSigners(signer, <some address>)
        _slashAs(mallory, a, sigA, b, foreignSigB);
        assertEq(registry.bondOf(signer), 1 ether, "first node untouched");
        assertEq(registry.bondOf(otherSigner), 1 ether, "other node untouched");
        bytes memory sigB = _sign(NODE_KEY, b);
        (address slashed,,) = _slashAs(mallory, a, sigA, b, sigB);
        assertEq(slashed, signer, "the signer is slashed");
        assertEq(registry.bondOf(otherSigner), 1 ether, "the other node's bond stays");
        assertEq(registry.offerCount(otherSigner), 1, "and its offer");
    }

    // Guard: a.outputHash == b.outputHash → NotConflicting: two signatures over the same output (re-signed later,
    // or the very same commitment twice) are honest.
    function test_attack_equalOutputHashes() public {
        _registerBonded(signer, MIN_BOND);
        OfferRegistry.Commitment memory a = _commitment(keccak256("a"));
        OfferRegistry.Commitment memory later = _commitment(keccak256("a"));
        vm.warp(_now() + 1 hours);
        later.issuedAt = uint64(_now());
        bytes memory sigA = _sign(NODE_KEY, a);
        bytes memory sigLater = _sign(NODE_KEY, later);
        vm.expectRevert(OfferRegistry.Registry__NotConflicting.selector);
        _slashAs(mallory, a, sigA, later, sigLater);
        vm.expectRevert(OfferRegistry.Registry__NotConflicting.selector);
        _slashAs(mallory, a, sigA, a, sigA);
        assertEq(registry.bondOf(signer), MIN_BOND, "bond kept");
    }

    // Guard: bondThaw >= commitmentValidity + MIN_BOND_THAW_MARGIN (constructor): a node that equivocates and
    // at once leaves the market cannot get its bond out while its commitments still prove it; a registry with a
    // shorter thaw cannot be deployed.
    function test_attack_bondWithdrawnBeforeTheSlash() public {
        uint256 id = _registerBonded(signer, 1 ether);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        _leave(signer, _one(id)); // in the same second as the equivocation
        uint256 lastSlashable = uint256(a.issuedAt) + VALIDITY;
        vm.warp(lastSlashable);
        uint64 readyAt = registry.bondWithdrawal(signer);
        assertGe(readyAt, lastSlashable + 1 hours, "the thaw outlasts the proof by the margin");
        vm.prank(signer);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BondStillThawing.selector, signer, readyAt, _now())
        );
        registry.withdrawBond();
        (, uint256 reward,) = _slashAs(reporter, a, sigA, b, sigB);
        assertEq(reward, 0.5 ether, "slashed on the commitments' last valid second");
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BadBondPeriods.selector, VALIDITY, VALIDITY)
        );
        new OfferRegistry(TTL, MIN_BOND, VALIDITY, VALIDITY, REWARD_BPS);
    }

    // Guard: same; and once the thaw is over the proof has expired, so a withdrawn bond is never "slashed" from
    // other nodes' money: the slash reverts and the registry still holds exactly the others' bonds.
    function test_attack_slashAfterALegitimateWithdrawalTakesNothing() public {
        uint256 id = _registerBonded(signer, 1 ether);
        _register(node, 0, 8, 1);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        _leave(signer, _one(id));
        vm.warp(_now() + BOND_THAW);
        vm.prank(signer);
        registry.withdrawBond();
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__CommitmentExpired.selector, a.issuedAt, _now())
        );
        _slashAs(reporter, a, sigA, b, sigB);
        // Even with a (hypothetically) still-fresh proof, a withdrawn node has nothing to slash.
        (a, sigA, b, sigB) = _conflict(NODE_KEY);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NothingToSlash.selector, signer));
        _slashAs(reporter, a, sigA, b, sigB);
        assertEq(address(registry).balance, MIN_BOND, "the bystander's bond stays");
    }

    // Guard: slash ignores a pending withdrawal and deletes the node's whole state: a thawing bond is slashable,
    // and the withdrawal request dies with it.
    function test_attack_slashDuringTheBondsThaw() public {
        uint256 id = _registerBonded(signer, 1 ether);
        _leave(signer, _one(id));
        vm.warp(_now() + BOND_THAW - 1);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        (, uint256 reward, uint256 burned) = _slashAs(reporter, a, sigA, b, sigB);
        assertEq(reward + burned, 1 ether, "the thawing bond is taken");
        assertEq(registry.bondWithdrawal(signer), 0, "request gone");
        vm.warp(_now() + 1);
        uint256 before = signer.balance;
        vm.prank(signer);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NoWithdrawalRequest.selector, signer));
        registry.withdrawBond();
        assertEq(signer.balance, before, "the node got nothing back");
        assertEq(address(registry).balance, 0, "nothing left");
    }

    // Guard: effects before interactions (bond zeroed, proof marked) under nonReentrant: of two reporters racing
    // with the same proof or with two proofs of the same node, the first is paid and the second reverts.
    function test_attack_twoReportersRacing() public {
        _registerBonded(signer, 1 ether);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        OfferRegistry.Commitment memory c = _commitment(keccak256("c"));
        bytes memory sigC = _sign(NODE_KEY, c);
        _slashAs(reporter, a, sigA, b, sigB);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__ProofUsed.selector, _key(a, b)));
        _slashAs(secondReporter, b, sigB, a, sigA);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NothingToSlash.selector, signer));
        _slashAs(secondReporter, a, sigA, c, sigC);
        assertEq(reporter.balance, 0.5 ether, "the first reporter is paid");
        assertEq(secondReporter.balance, 0, "the second is not");
        assertFalse(registry.proofUsed(registry.commitmentDigest(a), registry.commitmentDigest(c)), "c unused");
    }

    function _key(OfferRegistry.Commitment memory a, OfferRegistry.Commitment memory b)
        internal
        view
        returns (bytes32)
    {
        bytes32 da = registry.commitmentDigest(a);
        bytes32 db = registry.commitmentDigest(b);
        return da < db ? keccak256(abi.encode(da, db)) : keccak256(abi.encode(db, da));
    }
}
