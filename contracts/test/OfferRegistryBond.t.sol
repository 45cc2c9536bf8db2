// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {BondFixture} from "./utils/BondFixture.sol";
import {Vm} from "./utils/Test.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";
import {RevertingNode} from "./utils/Nodes.sol";

/// @notice A reporter contract that, when paid its reward, tries to re-enter the registry and records how it failed.
contract ReenteringReporter {
    OfferRegistry internal immutable registry;
    OfferRegistry.Commitment internal a;
    OfferRegistry.Commitment internal b;
    bytes internal sigA;
    bytes internal sigB;
    bool internal armed;
    bytes public innerRevert;

    constructor(OfferRegistry registry_) {
        registry = registry_;
    }

    /// @dev On its next payment, slash again with this second proof (of another node).
    function arm(
        OfferRegistry.Commitment calldata a_,
        bytes calldata sigA_,
        OfferRegistry.Commitment calldata b_,
        bytes calldata sigB_
    ) external {
        (a, sigA, b, sigB, armed) = (a_, sigA_, b_, sigB_, true);
    }

    function slash(
        OfferRegistry.Commitment calldata a_,
        bytes calldata sigA_,
        OfferRegistry.Commitment calldata b_,
        bytes calldata sigB_
    ) external {
        registry.slash(a_, sigA_, b_, sigB_);
    }

    receive() external payable {
        if (!armed) return;
        armed = false;
        try registry.slash(a, sigA, b, sigB) {
            innerRevert = "succeeded";
        } catch (bytes memory reason) {
            innerRevert = reason;
        }
    }
}

/// @notice Unit and fuzz tests of bonds, bond withdrawals, commitments and slashing.
contract OfferRegistryBondTest is BondFixture {
    // ---------------------------------------------------------------- constructor
    function test_constructorBounds() public {
        uint96 maxBond = type(uint96).max;
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadMinBond.selector, 0, maxBond));
        new OfferRegistry(TTL, 0, BOND_THAW, VALIDITY, REWARD_BPS);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BadMinBond.selector, uint256(maxBond) + 1, maxBond)
        );
        new OfferRegistry(TTL, uint256(maxBond) + 1, BOND_THAW, VALIDITY, REWARD_BPS);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadBondPeriods.selector, BOND_THAW, 0));
        new OfferRegistry(TTL, MIN_BOND, BOND_THAW, 0, REWARD_BPS);
        uint64 tooShort = VALIDITY + 1 hours - 1;
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadBondPeriods.selector, tooShort, VALIDITY));
        new OfferRegistry(TTL, MIN_BOND, tooShort, VALIDITY, REWARD_BPS);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadBondPeriods.selector, 60 days + 1, 1));
        new OfferRegistry(TTL, MIN_BOND, 60 days + 1, 1, REWARD_BPS);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadRewardBps.selector, 0));
        new OfferRegistry(TTL, MIN_BOND, BOND_THAW, VALIDITY, 0);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadRewardBps.selector, 10_000));
        new OfferRegistry(TTL, MIN_BOND, BOND_THAW, VALIDITY, 10_000);

        OfferRegistry tight = new OfferRegistry(TTL, 1, VALIDITY + 1 hours, VALIDITY, 9_999);
        assertEq(tight.bondThaw(), VALIDITY + 1 hours, "thaw = validity + margin is allowed");
        assertEq(tight.minBond(), 1, "min bond");
        assertEq(tight.slashRewardBps(), 9_999, "bps");
        assertEq(new OfferRegistry(TTL, maxBond, 60 days, 60 days - 1 hours, 1).bondThaw(), 60 days, "longest thaw");
        assertEq(registry.commitmentValidity(), VALIDITY, "validity");
        assertEq(registry.MIN_BOND_THAW_MARGIN(), 1 hours, "margin");
    }

    // ---------------------------------------------------------------- register and bond
    function test_registerTakesTheBond() public {
        vm.deal(node, 1 ether);
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.BondAdded(node, MIN_BOND, MIN_BOND);
        vm.prank(node);
        registry.register{value: MIN_BOND}(MODEL, 0, 8, 1, "http://n");
        assertEq(registry.bondOf(node), MIN_BOND, "bond");
        assertEq(address(registry).balance, MIN_BOND, "registry holds it");
        vm.recordLogs();
        vm.prank(node);
        registry.register(MODEL, 8, 16, 1, "http://n"); // already bonded: nothing to add
        assertEq(_count(vm.getRecordedLogs(), OfferRegistry.BondAdded.selector), 0, "no BondAdded without value");
        vm.prank(node);
        registry.register{value: 3}(MODEL, 8, 16, 1, "http://n");
        assertEq(registry.bondOf(node), MIN_BOND + 3, "top-up");
        assertEq(registry.offerCount(node), 3, "three offers");
    }

    function test_registerBelowTheMinimumReverts() public {
        vm.deal(node, 1 ether);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BondTooLow.selector, node, 0, MIN_BOND));
        registry.register(MODEL, 0, 8, 1, "http://n");
        vm.prank(node);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BondTooLow.selector, node, MIN_BOND - 1, MIN_BOND)
        );
        registry.register{value: MIN_BOND - 1}(MODEL, 0, 8, 1, "http://n");
        assertEq(address(registry).balance, 0, "nothing kept");
    }

    function test_bondAboveUint96Reverts() public {
        uint256 huge = uint256(type(uint96).max) + 1;
        vm.deal(node, huge);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BondTooLarge.selector, node, huge));
        registry.register{value: huge}(MODEL, 0, 8, 1, "http://n");
    }

    // ---------------------------------------------------------------- withdrawal
    function test_withdrawalNeedsNoOffersAndABond() public {
        uint256 id = _register(node, 0, 8, 1);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__HasOffers.selector, node, 1));
        registry.requestBondWithdrawal();
        vm.prank(mallory);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NoBond.selector, mallory));
        registry.requestBondWithdrawal();
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NoWithdrawalRequest.selector, node));
        registry.withdrawBond();

        vm.prank(node);
        registry.remove(id);
        uint64 readyAt = uint64(_now()) + BOND_THAW;
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.BondWithdrawalRequested(node, MIN_BOND, readyAt);
        vm.prank(node);
        registry.requestBondWithdrawal();
        assertEq(registry.bondWithdrawal(node), readyAt, "ready at");
    }

    function test_withdrawAfterTheThawPaysTheWholeBond() public {
        _leave(node, _one(_register(node, 0, 8, 1)));
        uint64 readyAt = registry.bondWithdrawal(node);
        vm.warp(readyAt - 1);
        vm.prank(node);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__BondStillThawing.selector, node, readyAt, readyAt - 1)
        );
        registry.withdrawBond();
        vm.warp(readyAt);
        uint256 before = node.balance;
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.BondWithdrawn(node, MIN_BOND);
        vm.prank(node);
        assertEq(registry.withdrawBond(), MIN_BOND, "returned amount");
        assertEq(node.balance, before + MIN_BOND, "paid");
        assertEq(registry.bondOf(node), 0, "bond gone");
        assertEq(registry.bondWithdrawal(node), 0, "request gone");
        assertEq(address(registry).balance, 0, "registry empty");
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NoWithdrawalRequest.selector, node));
        registry.withdrawBond();
    }

    function test_requestingAgainRestartsTheThaw() public {
        _leave(node, _one(_register(node, 0, 8, 1)));
        vm.warp(_now() + 1 days);
        vm.prank(node);
        registry.requestBondWithdrawal();
        assertEq(registry.bondWithdrawal(node), _now() + BOND_THAW, "restarted");
    }

    function test_registeringCancelsAPendingWithdrawal() public {
        _leave(node, _one(_register(node, 0, 8, 1)));
        vm.expectEmit(true, false, false, true, address(registry));
        emit OfferRegistry.BondWithdrawalCancelled(node);
        vm.prank(node);
        registry.register(MODEL, 0, 8, 1, "http://n");
        assertEq(registry.bondWithdrawal(node), 0, "cancelled");
        vm.warp(_now() + BOND_THAW);
        vm.prank(node);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NoWithdrawalRequest.selector, node));
        registry.withdrawBond();
        assertEq(registry.bondOf(node), MIN_BOND, "bond kept");
    }

    function test_withdrawToARejectingNodeReverts() public {
        address rejecting = address(new RevertingNode());
        _leave(rejecting, _one(_register(rejecting, 0, 8, 1)));
        vm.warp(_now() + BOND_THAW);
        vm.prank(rejecting);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__TransferFailed.selector, rejecting, MIN_BOND));
        registry.withdrawBond();
        assertEq(registry.bondOf(rejecting), MIN_BOND, "bond kept");
    }

    // ---------------------------------------------------------------- commitments
    function test_commitmentDigestIsEip712() public view {
        OfferRegistry.Commitment memory c = _commitment(keccak256("out"));
        bytes32 typehash = keccak256(
            "Commitment(bytes32 sessionId,uint64 position,uint32 tokens,bytes32 inputHash,bytes32 outputHash,"
            "bytes32 modelId,uint16 layerStart,uint16 layerEnd,uint64 issuedAt)"
        );
        assertEq(registry.COMMITMENT_TYPEHASH(), typehash, "typehash");
        bytes32 separator = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("P2P-LLM OfferRegistry"),
                keccak256("1"),
                block.chainid,
                address(registry)
            )
        );
        assertEq(registry.domainSeparator(), separator, "domain");
        bytes32 structHash = keccak256(
            abi.encode(
                typehash, c.sessionId, c.position, c.tokens, c.inputHash, c.outputHash, c.modelId, c.layerStart,
                c.layerEnd, c.issuedAt
            )
        );
        assertEq(
            registry.commitmentDigest(c), keccak256(abi.encodePacked("\x19\x01", separator, structHash)), "digest"
        );
    }

    // ---------------------------------------------------------------- slash
    function test_slashTakesTheBondPaysTheReporterBurnsTheRestAndRemovesOffers() public {
        uint256 first = _registerBonded(signer, 1 ether);
        uint256 second = _registerFor(signer, OTHER_MODEL);
        uint256 third = _register(signer, 8, 16, 1);
        uint256 bystander = _register(node, 0, 8, 1);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        uint256 burnedBefore = address(0).balance;
        uint256 registryBefore = address(registry).balance;
        vm.recordLogs();
        (address slashed, uint256 reward, uint256 burned) = _slashAs(reporter, a, sigA, b, sigB);
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(slashed, signer, "slashed node");
        assertEq(reward, 0.5 ether, "half to the reporter");
        assertEq(burned, 0.5 ether, "half burned");
        assertEq(reporter.balance, 0.5 ether, "reporter paid");
        assertEq(address(0).balance - burnedBefore, 0.5 ether, "burned");
        assertEq(registryBefore - address(registry).balance, 1 ether, "registry gave up exactly the bond");
        assertEq(address(registry).balance, MIN_BOND, "only the bystander's bond is left");
        assertEq(registry.bondOf(signer), 0, "bond gone");
        assertEq(registry.offerCount(signer), 0, "offers gone");
        assertEq(_count(logs, OfferRegistry.OfferRemoved.selector), 3, "one OfferRemoved per offer");
        assertEq(_count(logs, OfferRegistry.Slashed.selector), 1, "one Slashed");
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == OfferRegistry.Slashed.selector) {
                assertEq(logs[i].topics[1], bytes32(uint256(uint160(signer))), "Slashed names the node");
                assertEq(logs[i].topics[2], bytes32(uint256(uint160(reporter))), "and the reporter");
                assertEq(keccak256(logs[i].data), keccak256(abi.encode(0.5 ether, 0.5 ether)), "reward, burned");
            }
        }
        uint256[3] memory gone = [first, second, third];
        for (uint256 i; i < 3; ++i) {
            vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__UnknownOffer.selector, gone[i]));
            registry.getOffer(gone[i]);
        }
        _assertIds(_walk(MODEL, 200), _seq(bystander, bystander), "only the bystander is listed");
        assertEq(registry.offerCountByModel(OTHER_MODEL), 0, "other model empty");
        assertTrue(registry.proofUsed(registry.commitmentDigest(b), registry.commitmentDigest(a)), "proof used");
        // The node may bond and register again (and is then slashable again by a new proof).
        _register(signer, 0, 8, 1);
        assertEq(registry.bondOf(signer), MIN_BOND, "re-bonded");
    }

    function test_slashRejectsNonConflictingPairs() public {
        _registerBonded(signer, MIN_BOND);
        OfferRegistry.Commitment memory a = _commitment(keccak256("a"));
        OfferRegistry.Commitment memory same = _commitment(keccak256("a"));
        same.issuedAt -= 1; // a later re-signing of the same output is honest
        bytes memory sigA = _sign(NODE_KEY, a);
        bytes memory sigSame = _sign(NODE_KEY, same);
        vm.expectRevert(OfferRegistry.Registry__NotConflicting.selector);
        _slashAs(reporter, a, sigA, same, sigSame);
        for (uint256 field; field < 7; ++field) {
            OfferRegistry.Commitment memory b = _commitment(keccak256("b"));
            _perturb(b, field, 1);
            bytes memory sigB = _sign(NODE_KEY, b);
            vm.expectRevert(OfferRegistry.Registry__NotConflicting.selector);
            _slashAs(reporter, a, sigA, b, sigB);
        }
    }

    function test_slashNeedsFreshCommitments() public {
        _registerBonded(signer, MIN_BOND);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b,) =
            _conflict(NODE_KEY);
        b.issuedAt = uint64(_now() + 1);
        bytes memory future = _sign(NODE_KEY, b);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__CommitmentFromFuture.selector, b.issuedAt, _now())
        );
        _slashAs(reporter, a, sigA, b, future);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__CommitmentFromFuture.selector, b.issuedAt, _now())
        );
        _slashAs(reporter, b, future, a, sigA);
        b.issuedAt = uint64(_now());
        bytes memory sigB = _sign(NODE_KEY, b);
        uint256 lastSecond = _now() + VALIDITY;
        vm.warp(lastSecond + 1);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__CommitmentExpired.selector, a.issuedAt, lastSecond + 1)
        );
        _slashAs(reporter, a, sigA, b, sigB);
        vm.warp(lastSecond);
        _slashAs(reporter, a, sigA, b, sigB); // at exactly issuedAt + validity it still proves
        assertEq(registry.bondOf(signer), 0, "slashed on the last second");
    }

    function test_slashRejectsBadSignatures() public {
        _registerBonded(signer, MIN_BOND);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        bytes memory short = new bytes(64);
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadSignature.selector, 1, address(0), 2));
        _slashAs(reporter, a, sigA, b, short);
        // The malleable twin (n - s, flipped v) of a valid signature: rejected as high-s (error 3).
        (bytes32 r, bytes32 s, uint8 v) = _split(sigA);
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory twin = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadSignature.selector, 0, address(0), 3));
        _slashAs(reporter, a, twin, b, sigB);
        bytes memory badV = abi.encodePacked(r, s, uint8(29));
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__BadSignature.selector, 0, address(0), 1));
        _slashAs(reporter, a, badV, b, sigB);
    }

    function test_slashNeedsOneSignerWithABond() public {
        _registerBonded(signer, MIN_BOND);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b,) =
            _conflict(NODE_KEY);
        bytes memory otherSigB = _sign(OTHER_KEY, b);
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__DifferentSigners.selector, signer, otherSigner)
        );
        _slashAs(reporter, a, sigA, b, otherSigB);
        (a, sigA, b, otherSigB) = _conflict(OTHER_KEY); // never bonded
        vm.expectRevert(abi.encodeWithSelector(OfferRegistry.Registry__NothingToSlash.selector, otherSigner));
        _slashAs(reporter, a, sigA, b, otherSigB);
    }

    function test_slashToARejectingReporterReverts() public {
        _registerBonded(signer, MIN_BOND);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        address rejecting = address(new RevertingNode());
        vm.expectRevert(
            abi.encodeWithSelector(OfferRegistry.Registry__TransferFailed.selector, rejecting, MIN_BOND / 2)
        );
        _slashAs(rejecting, a, sigA, b, sigB);
        assertEq(registry.bondOf(signer), MIN_BOND, "nothing changed");
    }

    // Guard: nonReentrant on slash: a reporter re-entering from its reward hook is refused, and the outer slash
    // (whose effects were all done before paying) stands.
    function test_reporterCannotReenterSlash() public {
        _registerBonded(signer, MIN_BOND);
        _registerBonded(otherSigner, MIN_BOND);
        ReenteringReporter attacker = new ReenteringReporter(registry);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(OTHER_KEY);
        attacker.arm(a, sigA, b, sigB);
        (a, sigA, b, sigB) = _conflict(NODE_KEY);
        attacker.slash(a, sigA, b, sigB);
        assertEq(
            keccak256(attacker.innerRevert()),
            keccak256(abi.encodeWithSignature("ReentrancyGuardReentrantCall()")),
            "inner slash refused by the guard"
        );
        assertEq(registry.bondOf(signer), 0, "outer slash done");
        assertEq(registry.bondOf(otherSigner), MIN_BOND, "inner slash not done");
        assertEq(address(attacker).balance, MIN_BOND / 2, "one reward");
    }

    // ---------------------------------------------------------------- fuzz
    /// Fuzz: a first registration is accepted exactly when it brings the bond to the minimum, and the bond and
    /// the registry's balance are the sum of what was sent.
    function testFuzz_bondAmounts(uint256 first, uint256 second) public {
        first = bound(first, 0, 100 ether);
        second = bound(second, 0, 100 ether);
        vm.deal(node, first + second);
        vm.prank(node);
        if (first < MIN_BOND) {
            vm.expectRevert(
                abi.encodeWithSelector(OfferRegistry.Registry__BondTooLow.selector, node, first, MIN_BOND)
            );
            registry.register{value: first}(MODEL, 0, 8, 1, "http://n");
            first = 0;
            second = second < MIN_BOND ? MIN_BOND : second;
            vm.deal(node, second);
        } else {
            registry.register{value: first}(MODEL, 0, 8, 1, "http://n");
        }
        vm.prank(node);
        registry.register{value: second}(MODEL, 0, 8, 1, "http://n");
        assertEq(registry.bondOf(node), first + second, "bond = sum sent");
        assertEq(address(registry).balance, first + second, "balance = bond");
    }

    /// Fuzz: for any bond and reward share, reward + burned is exactly the bond and the reward is bond * bps / 1e4.
    function testFuzz_rewardSplitSumsExactly(uint256 bond, uint16 bps) public {
        bps = uint16(bound(bps, 1, 9_999));
        bond = bound(bond, 1, type(uint96).max);
        registry = new OfferRegistry(TTL, 1, BOND_THAW, VALIDITY, bps);
        _registerBonded(signer, bond);
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        uint256 burnedBefore = address(0).balance;
        (, uint256 reward, uint256 burned) = _slashAs(reporter, a, sigA, b, sigB);
        assertEq(reward + burned, bond, "reward + burned = bond");
        assertEq(reward, bond * bps / 10_000, "reward share");
        assertEq(reporter.balance, reward, "reporter paid the reward");
        assertEq(address(0).balance - burnedBefore, burned, "the rest burned");
        assertEq(address(registry).balance, 0, "nothing left behind");
    }

    /// Fuzz: changing any field of the step (session, position, tokens, input, model, layers) makes the pair not
    /// conflicting; changing only the output (and any issuedAt within validity) makes it a proof.
    function testFuzz_conflictingVersusNonConflictingFields(uint256 field, uint256 delta, uint256 age) public {
        _registerBonded(signer, MIN_BOND);
        field = bound(field, 0, 7);
        delta = bound(delta, 1, type(uint16).max);
        OfferRegistry.Commitment memory a = _commitment(keccak256("a"));
        OfferRegistry.Commitment memory b = _commitment(keccak256("b"));
        if (field == 7) b.issuedAt = uint64(_now() - bound(age, 0, VALIDITY)); // other time: still a conflict
        else _perturb(b, field, delta);
        bytes memory sigA = _sign(NODE_KEY, a);
        bytes memory sigB = _sign(NODE_KEY, b);
        if (field == 7) {
            (address slashed,,) = _slashAs(reporter, a, sigA, b, sigB);
            assertEq(slashed, signer, "slashed");
            return;
        }
        vm.expectRevert(OfferRegistry.Registry__NotConflicting.selector);
        _slashAs(reporter, a, sigA, b, sigB);
    }

    /// Fuzz: the per-node offer list stays right through removals and prunes in any order: a slash removes
    /// exactly the node's remaining offers and leaves the others' in order.
    function testFuzz_slashRemovesExactlyTheNodesRemainingOffers(uint256 seed) public {
        uint256 n = bound(seed, 1, 16);
        uint256[] memory mine = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            mine[i] = _register(signer, 0, 8, 1);
            if ((seed >> i) & 3 == 0) _register(node, 0, 8, 1);
        }
        uint256 kept = n;
        for (uint256 i; i < n; ++i) {
            if ((seed >> (i + 32)) & 1 == 1) {
                vm.prank(signer);
                registry.remove(mine[i]);
                --kept;
            }
        }
        uint256 others = registry.offerCountByModel(MODEL) - kept;
        assertEq(registry.offerCount(signer), kept, "count before");
        (OfferRegistry.Commitment memory a, bytes memory sigA, OfferRegistry.Commitment memory b, bytes memory sigB)
        = _conflict(NODE_KEY);
        vm.recordLogs();
        _slashAs(reporter, a, sigA, b, sigB);
        assertEq(_count(vm.getRecordedLogs(), OfferRegistry.OfferRemoved.selector), kept, "each remaining removed");
        assertEq(registry.offerCount(signer), 0, "none left");
        assertEq(registry.offerCountByModel(MODEL), others, "others stay");
        uint256[] memory walked = _walk(MODEL, 7);
        assertEq(walked.length, others, "walk sees the others");
        for (uint256 i; i < walked.length; ++i) {
            assertEq(registry.getOffer(walked[i]).node, node, "only the other node's offers");
        }
    }

    // ---------------------------------------------------------------- helpers
    /// @dev Change one field of the step: 0 session, 1 position, 2 tokens, 3 input, 4 model, 5 start, 6 end.
    function _perturb(OfferRegistry.Commitment memory c, uint256 field, uint256 delta) internal pure {
        if (field == 0) c.sessionId = bytes32(uint256(c.sessionId) ^ delta);
        else if (field == 1) c.position += uint64(delta);
        else if (field == 2) c.tokens += uint32(delta);
        else if (field == 3) c.inputHash = bytes32(uint256(c.inputHash) ^ delta);
        else if (field == 4) c.modelId = bytes32(uint256(c.modelId) ^ delta);
        else if (field == 5) c.layerStart += uint16(delta % 8 == 0 ? 1 : delta % 8);
        else c.layerEnd += uint16(delta % 1_000 == 0 ? 1 : delta % 1_000);
    }

    function _split(bytes memory sig) internal pure returns (bytes32 r, bytes32 s, uint8 v) {
        (r, s) = abi.decode(sig, (bytes32, bytes32));
        v = uint8(sig[64]);
    }

    function _count(Vm.Log[] memory logs, bytes32 topic) internal view returns (uint256 n) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(registry) && logs[i].topics[0] == topic) ++n;
        }
    }
}
