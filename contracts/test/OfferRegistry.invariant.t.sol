// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./utils/Test.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice Random owner actions, stranger prunes and tampering, time and a paging reader, with ghosts of every offer;
///         bonds paid with registrations, withdrawals requested and executed, and slashes with conflicting
///         commitments signed by the nodes' own keys (vm.sign), with ghost totals of every wei in and out.
contract RegistryHandler is Test {
    uint256 public constant NODES = 3;
    uint256 public constant MODELS = 2;
    address public constant STRANGER = address(0xBAD);
    address public constant REPORTER = address(0x4E90);

    OfferRegistry public immutable registry;
    uint64 public immutable ttl;
    bytes32[MODELS] public models = [keccak256("model"), keccak256("other")];
    uint256[NODES] internal keys = [uint256(0xA11CE1), 0xA11CE2, 0xA11CE3];
    address[NODES] public nodes;

    // bond ghosts: every wei paid in, withdrawn, rewarded and burned
    mapping(address node => uint256) public ghostBond;
    uint256 public ghostBondedIn;
    uint256 public ghostWithdrawn;
    uint256 public ghostRewarded;
    uint256 public ghostBurned;
    uint256 public burnedBefore;
    uint256 public slashes;
    uint256 public withdrawals;
    bytes32 internal lastDigestA;
    bytes32 internal lastDigestB;
    OfferRegistry.Commitment internal lastA;
    OfferRegistry.Commitment internal lastB;
    bytes internal lastSigA;
    bytes internal lastSigB;
    uint256 internal sessionNonce;

    /// @dev The registered offers (live, or expired and not pruned), in no particular order.
    uint256[] public ids;
    mapping(uint256 offerId => address) public ghostOwner;
    mapping(uint256 offerId => uint256) public ghostPrice;
    mapping(uint256 offerId => uint256) public ghostModel;
    mapping(uint256 offerId => uint64) public ghostExpiry;
    mapping(uint256 model => uint256) public ghostCount;

    // The paging reader: one pass at a time over one model.
    bool internal passActive;
    uint256 internal passModel;
    uint256 internal passCursor;
    uint256 public passNumber;
    uint256 public passesCompleted;
    uint256[] internal passStart;
    mapping(uint256 offerId => uint256 pass) internal seenInPass;
    mapping(uint256 offerId => uint256 pass) internal notLiveInPass;

    // violations the invariants assert never happened
    bool public strangerChanged;
    bool public prunedTooEarly;
    bool public pruneMissed;
    bool public pruneCountWrong;
    bool public pagerDuplicate;
    bool public pagerStale;
    bool public pagerMissed;
    bool public bondEscaped;
    bool public slashWrong;
    bool public replayAccepted;

    constructor(OfferRegistry registry_) {
        registry = registry_;
        ttl = registry_.offerTtl();
        for (uint256 i; i < NODES; ++i) {
            nodes[i] = vm.addr(keys[i]);
        }
        burnedBefore = address(0).balance;
    }

    modifier observed() {
        _;
        _markNotLive();
    }

    function idCount() external view returns (uint256) {
        return ids.length;
    }

    function register(uint256 who, uint256 model, uint16 start, uint16 len, uint256 price) external observed {
        _register(who, model, start, len, price);
    }

    /// Several offers at once, from rotating nodes: keeps the lists long enough for paging and pruning to matter.
    function registerMany(uint256 seed, uint256 count) external observed {
        count = bound(count, 1, 8);
        for (uint256 i; i < count; ++i) {
            uint256 s = uint256(keccak256(abi.encode(seed, i)));
            _register(s, s >> 8, uint16(s >> 16), uint16(s >> 32), s >> 48);
        }
    }

    function updatePrice(uint256 pick, uint256 price) external observed {
        if (ids.length == 0) return;
        uint256 id = ids[pick % ids.length];
        vm.prank(ghostOwner[id]);
        registry.updatePrice(id, price);
        ghostPrice[id] = price;
    }

    function heartbeat(uint256 pick) external observed {
        if (ids.length == 0) return;
        uint256 id = ids[pick % ids.length];
        vm.prank(ghostOwner[id]);
        registry.heartbeat(id);
        ghostExpiry[id] = uint64(_now()) + ttl;
    }

    function remove(uint256 pick) external observed {
        if (ids.length == 0) return;
        uint256 index = pick % ids.length;
        uint256 id = ids[index];
        vm.prank(ghostOwner[id]);
        registry.remove(id);
        _forget(index);
    }

    /// A stranger tries to reprice, heartbeat and remove someone's offer; any success is recorded.
    function strangerTamper(uint256 pick, uint256 price) external observed {
        if (ids.length == 0) return;
        uint256 id = ids[pick % ids.length];
        vm.startPrank(STRANGER);
        try registry.updatePrice(id, price) {
            strangerChanged = true;
        } catch {}
        try registry.heartbeat(id) {
            strangerChanged = true;
        } catch {}
        try registry.remove(id) {
            strangerChanged = true;
        } catch {}
        vm.stopPrank();
    }

    /// A stranger prunes a model from its head or from the reader's cursor, `limit` entries.
    function prune(uint256 model, uint256 fromReader, uint256 limit) external observed {
        model %= MODELS;
        limit = bound(limit, 1, 12);
        uint256 cursor;
        if (fromReader % 2 == 0 && passActive && passModel == model) cursor = passCursor;
        vm.prank(STRANGER);
        (uint256 pruned, uint256 next) = registry.prune(models[model], cursor, limit);
        uint256 gone;
        for (uint256 i = ids.length; i > 0; --i) {
            uint256 id = ids[i - 1];
            if (ghostModel[id] != model) continue;
            bool exists;
            try registry.getOffer(id) {
                exists = true;
            } catch {}
            bool prunable = uint256(ghostExpiry[id]) + registry.PRUNE_DELAY() < _now();
            if (!exists) {
                if (!prunable) prunedTooEarly = true;
                _forget(i - 1);
                ++gone;
            } else if (prunable && cursor == 0 && next == 0) {
                pruneMissed = true; // a scan of the whole list left a prunable offer behind
            }
        }
        if (gone != pruned) pruneCountWrong = true;
    }

    /// The reader reads one page; a pass starts at cursor 0 and ends when nextCursor is 0. At the end, every
    /// offer registered at the start, still registered, and live at every step of the pass was seen exactly once.
    function readPage(uint256 model, uint256 limit) external observed {
        if (!passActive) {
            passActive = true;
            passModel = model % MODELS;
            passCursor = 0;
            ++passNumber;
            delete passStart;
            for (uint256 i; i < ids.length; ++i) {
                if (ghostModel[ids[i]] == passModel) passStart.push(ids[i]);
            }
            _markNotLive();
        }
        (OfferRegistry.OfferView[] memory page, uint256 next) =
            registry.offersByModel(models[passModel], passCursor, bound(limit, 1, 4));
        for (uint256 i; i < page.length; ++i) {
            uint256 id = page[i].offerId;
            if (seenInPass[id] == passNumber) pagerDuplicate = true;
            seenInPass[id] = passNumber;
            if (ghostOwner[id] == address(0) || ghostModel[id] != passModel || ghostExpiry[id] < _now()) {
                pagerStale = true;
            }
        }
        passCursor = next;
        if (next == 0) {
            for (uint256 i; i < passStart.length; ++i) {
                uint256 id = passStart[i];
                bool stayed = ghostOwner[id] != address(0) && notLiveInPass[id] != passNumber;
                if (stayed && seenInPass[id] != passNumber) pagerMissed = true;
            }
            passActive = false;
            ++passesCompleted;
        }
    }

    function warp(uint256 secondsAhead) external observed {
        vm.warp(_now() + bound(secondsAhead, 1, 30 hours));
    }

    /// A node removes every offer it has, then asks for its bond back; a request with offers must revert.
    function requestBondWithdrawal(uint256 who, uint256 removeFirst) external observed {
        address node = nodes[who % NODES];
        if (removeFirst % 2 == 0) {
            for (uint256 i = ids.length; i > 0; --i) {
                uint256 id = ids[i - 1];
                if (ghostOwner[id] != node) continue;
                vm.prank(node);
                registry.remove(id);
                _forget(i - 1);
            }
        }
        vm.prank(node);
        try registry.requestBondWithdrawal() {
            if (registry.offerCount(node) != 0 || ghostBond[node] == 0) bondEscaped = true;
        } catch {
            if (registry.offerCount(node) == 0 && ghostBond[node] != 0) bondEscaped = true; // wrongly refused
        }
    }

    /// A node withdraws its bond (half the time after waiting out a pending thaw, to the second or later): it
    /// must succeed exactly when a request has thawed.
    function withdrawBond(uint256 who, uint256 wait) external observed {
        address node = nodes[who % NODES];
        uint64 readyAt = registry.bondWithdrawal(node);
        if (wait % 2 == 0 && readyAt > _now()) vm.warp(uint256(readyAt) - 1 + bound(wait >> 1, 0, 2));
        uint256 before = node.balance;
        vm.prank(node);
        try registry.withdrawBond() returns (uint256 amount) {
            if (readyAt == 0 || _now() < readyAt || amount != ghostBond[node] || node.balance != before + amount) {
                bondEscaped = true;
            }
            ghostWithdrawn += amount;
            ghostBond[node] = 0;
            ++withdrawals;
        } catch {
            if (readyAt != 0 && _now() >= readyAt) bondEscaped = true; // a thawed withdrawal was refused
        }
    }

    /// The reporter slashes a node with two fresh conflicting commitments it signed; the whole bond goes, the
    /// reward is exact, the node's offers are gone. With no bond the slash must revert.
    function slash(uint256 who, uint256 age, bytes32 inputHash) external observed {
        uint256 index = who % NODES;
        address node = nodes[index];
        uint64 issuedAt = uint64(_now() - bound(age, 0, registry.commitmentValidity()));
        OfferRegistry.Commitment memory a = OfferRegistry.Commitment(
            bytes32(++sessionNonce), 7, 1, inputHash, keccak256("out-a"), models[0], 0, 4, issuedAt
        );
        OfferRegistry.Commitment memory b = OfferRegistry.Commitment(
            a.sessionId, 7, 1, inputHash, keccak256("out-b"), models[0], 0, 4, issuedAt
        );
        bytes32 digestA = registry.commitmentDigest(a);
        bytes32 digestB = registry.commitmentDigest(b);
        bytes memory sigA = _sign(keys[index], digestA);
        bytes memory sigB = _sign(keys[index], digestB);
        uint256 bond = ghostBond[node];
        uint256 reporterBefore = REPORTER.balance;
        vm.prank(REPORTER);
        try registry.slash(a, sigA, b, sigB) returns (address slashed, uint256 reward, uint256 burned) {
            if (bond == 0 || slashed != node || reward != bond * registry.slashRewardBps() / 10_000
                    || reward + burned != bond || REPORTER.balance != reporterBefore + reward
                    || registry.offerCount(node) != 0 || registry.bondOf(node) != 0) {
                slashWrong = true;
            }
            ghostRewarded += reward;
            ghostBurned += burned;
            ghostBond[node] = 0;
            ++slashes;
            for (uint256 i = ids.length; i > 0; --i) {
                if (ghostOwner[ids[i - 1]] == node) _forget(i - 1);
            }
            (lastA, lastB, lastSigA, lastSigB) = (a, b, sigA, sigB);
            (lastDigestA, lastDigestB) = (digestA, digestB);
        } catch {
            if (bond != 0) slashWrong = true; // a valid proof against a bonded node was refused
        }
    }

    /// Anyone replays the latest successful proof (either order), whatever the node did since: it must revert.
    function replaySlash(uint256 swap) external observed {
        if (lastDigestA == bytes32(0)) return;
        if (!registry.proofUsed(lastDigestB, lastDigestA)) replayAccepted = true;
        vm.prank(STRANGER);
        if (swap % 2 == 0) {
            try registry.slash(lastA, lastSigA, lastB, lastSigB) {
                replayAccepted = true;
            } catch {}
        } else {
            try registry.slash(lastB, lastSigB, lastA, lastSigA) {
                replayAccepted = true;
            } catch {}
        }
    }

    /// @dev Repeated selectors weigh the fuzzer's choice: registrations, prunes and page reads are frequent.
    function selectors() external pure returns (bytes4[] memory out) {
        out = new bytes4[](17);
        out[0] = this.register.selector;
        out[1] = this.registerMany.selector;
        out[2] = this.registerMany.selector;
        out[3] = this.updatePrice.selector;
        out[4] = this.heartbeat.selector;
        out[5] = this.remove.selector;
        out[6] = this.strangerTamper.selector;
        out[7] = this.prune.selector;
        out[8] = this.prune.selector;
        out[9] = this.readPage.selector;
        out[10] = this.readPage.selector;
        out[11] = this.warp.selector;
        out[12] = this.requestBondWithdrawal.selector;
        out[13] = this.withdrawBond.selector;
        out[14] = this.slash.selector;
        out[15] = this.replaySlash.selector;
        out[16] = this.warp.selector;
    }

    function _sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 sig) = vm.sign(key, digest);
        return abi.encodePacked(r, sig, v);
    }

    function _register(uint256 who, uint256 model, uint16 start, uint16 len, uint256 price) internal {
        address node = nodes[who % NODES];
        if (registry.offerCount(node) == registry.MAX_OFFERS_PER_NODE()) return;
        model %= MODELS;
        start = uint16(bound(start, 0, 100));
        len = uint16(bound(len, 1, 30));
        uint256 minBond = registry.minBond();
        uint256 value = ghostBond[node] >= minBond ? 0 : minBond - ghostBond[node];
        if (price % 4 == 0) value += bound(price >> 8, 0, 1 ether); // sometimes more than the minimum
        vm.deal(node, node.balance + value);
        vm.prank(node);
        uint256 id = registry.register{value: value}(models[model], start, start + len, price, "http://n");
        ghostBond[node] += value;
        ghostBondedIn += value;
        ids.push(id);
        ghostOwner[id] = node;
        ghostPrice[id] = price;
        ghostModel[id] = model;
        ghostExpiry[id] = uint64(_now()) + ttl;
        ++ghostCount[model];
    }

    function _forget(uint256 index) internal {
        uint256 id = ids[index];
        --ghostCount[ghostModel[id]];
        delete ghostOwner[id];
        ids[index] = ids[ids.length - 1];
        ids.pop();
    }

    /// @dev Offers of the running pass that are not live now may be skipped by the reader.
    function _markNotLive() internal {
        if (!passActive) return;
        uint256 nowTs = _now();
        for (uint256 i; i < passStart.length; ++i) {
            uint256 id = passStart[i];
            if (ghostExpiry[id] < nowTs) notLiveInPass[id] = passNumber;
        }
    }
}

/// @notice Invariants of the registry under random handler actions; the handler never reverts, so any revert fails.
/// forge-config: default.invariant.fail-on-revert = true
/// forge-config: deep.invariant.fail-on-revert = true
contract OfferRegistryInvariantTest is Test {
    OfferRegistry internal registry;
    RegistryHandler internal handler;

    function setUp() public {
        vm.warp(1_700_000_000);
        registry = new OfferRegistry(30 minutes, 0.01 ether, 2 days, 1 days, 5_000);
        handler = new RegistryHandler(registry);
        targetContract(address(handler));
        targetSelector(FuzzSelector(address(handler), handler.selectors()));
    }

    /// The registry holds exactly the sum of its bonds: every wei paid in was withdrawn, rewarded, burned or is
    /// still a bond, and each bond equals its ghost.
    function invariant_balanceEqualsSumOfBonds() public view {
        uint256 bonds;
        for (uint256 i; i < handler.NODES(); ++i) {
            address node = handler.nodes(i);
            assertEq(registry.bondOf(node), handler.ghostBond(node), "bond != ghost");
            bonds += registry.bondOf(node);
        }
        assertEq(address(registry).balance, bonds, "registry balance != sum of bonds");
        assertEq(
            handler.ghostBondedIn(),
            bonds + handler.ghostWithdrawn() + handler.ghostRewarded() + handler.ghostBurned(),
            "in != bonds + withdrawn + rewarded + burned"
        );
        assertEq(address(0).balance - handler.burnedBefore(), handler.ghostBurned(), "burned reached address(0)");
        assertFalse(handler.bondEscaped(), "a bond left early, or a due withdrawal was refused");
        assertFalse(handler.slashWrong(), "a slash paid wrongly, or a valid one was refused");
        assertFalse(handler.replayAccepted(), "a used proof slashed again");
    }

    function invariant_listLengthsMatchCountsAndGhosts() public view {
        uint256 listed;
        for (uint256 m; m < handler.MODELS(); ++m) {
            uint256 length = registry.offerCountByModel(handler.models(m));
            assertEq(length, handler.ghostCount(m), "model list length != ghost count");
            listed += length;
        }
        uint256 perNode;
        for (uint256 i; i < handler.NODES(); ++i) {
            uint256 count = registry.offerCount(handler.nodes(i));
            assertLe(count, registry.MAX_OFFERS_PER_NODE(), "cap");
            perNode += count;
        }
        assertEq(perNode, listed, "sum of per-node counts != sum of list lengths");
        assertEq(handler.idCount(), listed, "ghost offers != listed offers");
    }

    function invariant_offersMatchGhostsAndStrangersChangeNothing() public view {
        assertFalse(handler.strangerChanged(), "a stranger changed an offer");
        assertFalse(handler.prunedTooEarly(), "an offer was pruned before expiresAt + PRUNE_DELAY");
        assertFalse(handler.pruneMissed(), "a full prune scan left a prunable offer");
        assertFalse(handler.pruneCountWrong(), "prune's count != offers removed");
        for (uint256 i; i < handler.idCount(); ++i) {
            uint256 id = handler.ids(i);
            OfferRegistry.OfferView memory o = registry.getOffer(id);
            assertEq(o.node, handler.ghostOwner(id), "owner");
            assertEq(o.pricePerToken, handler.ghostPrice(id), "price");
            assertEq(o.expiresAt, handler.ghostExpiry(id), "expiry");
            assertEq(o.modelId, handler.models(handler.ghostModel(id)), "model");
            assertTrue(o.layerStart < o.layerEnd, "non-empty range");
        }
    }

    function invariant_pagesHoldOnlyLiveOffers() public view {
        for (uint256 m; m < handler.MODELS(); ++m) {
            (OfferRegistry.OfferView[] memory page,) = registry.offersByModel(handler.models(m), 0, 200);
            for (uint256 i; i < page.length; ++i) {
                assertGe(page[i].expiresAt, _now(), "expired offer in page");
                assertEq(page[i].node, handler.ghostOwner(page[i].offerId), "page offer is registered");
            }
        }
    }

    /// Walking each model's list with pages of 3 scans every listed offer once and returns each live one once, in
    /// registration order.
    function invariant_fullWalkVisitsEachLiveOfferOnce() public view {
        uint256 nowTs = _now();
        for (uint256 m; m < handler.MODELS(); ++m) {
            bytes32 model = handler.models(m);
            uint256 cursor;
            uint256 last;
            uint256 seen;
            uint256 pages;
            do {
                OfferRegistry.OfferView[] memory page;
                (page, cursor) = registry.offersByModel(model, cursor, 3);
                ++pages;
                for (uint256 i; i < page.length; ++i) {
                    assertTrue(page[i].offerId > last, "registration order, each once");
                    last = page[i].offerId;
                    ++seen;
                }
            } while (cursor != 0);
            uint256 live;
            for (uint256 i; i < handler.idCount(); ++i) {
                uint256 id = handler.ids(i);
                if (handler.ghostModel(id) == m && handler.ghostExpiry(id) >= nowTs) ++live;
            }
            assertEq(seen, live, "walk saw every live offer");
            uint256 length = registry.offerCountByModel(model);
            assertEq(pages, length == 0 ? 1 : (length + 2) / 3, "walk scanned each listed offer once");
        }
    }

    function invariant_readerPassSeesEveryRemainingOfferOnce() public view {
        assertFalse(handler.pagerDuplicate(), "a pass saw an offer twice");
        assertFalse(handler.pagerStale(), "a pass saw a removed, expired or foreign offer");
        assertFalse(handler.pagerMissed(), "a pass missed an offer that stayed registered and live");
    }
}
