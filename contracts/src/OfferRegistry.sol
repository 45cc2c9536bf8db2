// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title OfferRegistry
/// @notice On-chain market of P2P-LLM node offers: a node offers the half-open layer range
///         [layerStart, layerEnd) of a model at a price per token, reachable at an endpoint.
///         Offers expire unless the owner heartbeats them; anyone may prune an offer PRUNE_DELAY after it
///         expired. Views page through a model's offers in registration order.
///         Registering takes a bond per node address (at least `minBond`). A node signs an EIP-712 commitment
///         (in this contract's domain) for each step it computes; two fresh commitments of one node for the same
///         step with different outputs are a proof of equivocation: `slash` takes the node's whole bond, pays
///         `slashRewardBps` of it to the reporter, burns the rest and removes every offer of the node.
///         A bond is withdrawn only after the node has no offers and a thaw of `bondThaw`, which is longer than
///         any commitment stays slashable (`commitmentValidity`) plus a margin; deployments also make it longer
///         than the PaymentEscrow's `maxReceiptValidity`, so a node paid by a receipt is still bonded when the
///         step it was paid for can be checked. The bond stays slashable while it thaws.
/// @dev A model's offers form a doubly linked list in registration order; a page cursor is an offer id.
///      A removed offer keeps its links, so a reader paging while offers are removed or pruned still sees every
///      offer that stayed registered, exactly once. Every loop is bounded by a page size capped at MAX_PAGE.
contract OfferRegistry is EIP712, ReentrancyGuardTransient {
    // ---------------------------------------------------------------- errors
    error Registry__EmptyRange(uint16 layerStart, uint16 layerEnd);
    error Registry__EmptyEndpoint();
    error Registry__EndpointTooLong(uint256 length, uint256 maxLength);
    error Registry__TooManyOffers(address node, uint256 cap);
    error Registry__NotOwner(uint256 offerId, address caller, address owner);
    error Registry__UnknownOffer(uint256 offerId);
    error Registry__BadTtl(uint64 ttl, uint64 maxTtl);
    error Registry__PageTooLarge(uint256 limit, uint256 maxPage);
    error Registry__BadCursor(bytes32 modelId, uint256 cursor);
    error Registry__BadMinBond(uint256 minBond, uint256 maxBond);
    error Registry__BadBondPeriods(uint64 bondThaw, uint64 commitmentValidity);
    error Registry__BadRewardBps(uint16 slashRewardBps);
    error Registry__BondTooLow(address node, uint256 bond, uint256 minBond);
    error Registry__BondTooLarge(address node, uint256 bond);
    error Registry__HasOffers(address node, uint256 offerCount);
    error Registry__NoBond(address node);
    error Registry__NoWithdrawalRequest(address node);
    error Registry__BondStillThawing(address node, uint64 readyAt, uint256 nowTs);
    error Registry__TransferFailed(address to, uint256 amount);
    error Registry__NotConflicting();
    error Registry__CommitmentFromFuture(uint64 issuedAt, uint256 nowTs);
    error Registry__CommitmentExpired(uint64 issuedAt, uint256 nowTs);
    error Registry__BadSignature(uint8 which, address recovered, uint8 errorCode);
    error Registry__DifferentSigners(address signerA, address signerB);
    error Registry__ProofUsed(bytes32 proofKey);
    error Registry__NothingToSlash(address node);

    // ---------------------------------------------------------------- events
    event OfferRegistered(
        uint256 indexed offerId,
        address indexed node,
        bytes32 indexed modelId,
        uint16 layerStart,
        uint16 layerEnd,
        uint256 pricePerToken,
        string endpoint,
        uint64 expiresAt
    );
    event OfferPriceUpdated(uint256 indexed offerId, uint256 oldPrice, uint256 newPrice);
    event OfferHeartbeat(uint256 indexed offerId, uint64 expiresAt);
    event OfferRemoved(uint256 indexed offerId, address indexed node);
    event OfferPruned(uint256 indexed offerId, address indexed node, address indexed pruner);
    event BondAdded(address indexed node, uint256 amount, uint256 bond);
    event BondWithdrawalRequested(address indexed node, uint256 bond, uint64 readyAt);
    event BondWithdrawalCancelled(address indexed node);
    event BondWithdrawn(address indexed node, uint256 amount);
    /// @dev The node's offers removed by the slash each emit OfferRemoved too.
    event Slashed(address indexed node, address indexed reporter, uint256 reward, uint256 burned);

    // ---------------------------------------------------------------- types
    /// @dev Packed: slot 0 = node|layerStart|layerEnd|expiresAt; slot 1 = modelId; slot 2 = pricePerToken;
    ///      slot 3.. = endpoint. A removed offer keeps only its modelId (to validate cursors) and its links.
    struct Offer {
        address node;
        uint16 layerStart;
        uint16 layerEnd;
        uint64 expiresAt;
        bytes32 modelId;
        uint256 pricePerToken;
        string endpoint;
    }

    /// @notice An offer as returned by views, with its id.
    struct OfferView {
        uint256 offerId;
        address node;
        bytes32 modelId;
        uint16 layerStart;
        uint16 layerEnd;
        uint256 pricePerToken;
        string endpoint;
        uint64 expiresAt;
    }

    /// @dev Neighbours of an offer in its model's list and, while the offer is registered, in its node's list
    ///      (0 = none). One slot.
    struct Link {
        uint64 prev;
        uint64 next;
        uint64 nodePrev;
        uint64 nodeNext;
    }

    /// @dev A node: its bond, when its requested bond withdrawal unlocks (0 = none requested), how many offers
    ///      it has and the newest of them (the head of its list). One slot.
    struct NodeState {
        uint96 bond;
        uint64 withdrawableAt;
        uint32 offerCount;
        uint64 head;
    }

    /// @notice A node's claim for one step of a session: through layers [layerStart, layerEnd) of `modelId`,
    ///         tokens [position, position + tokens) with input `inputHash` gave output `outputHash`.
    struct Commitment {
        bytes32 sessionId;
        uint64 position;
        uint32 tokens;
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 modelId;
        uint16 layerStart;
        uint16 layerEnd;
        uint64 issuedAt;
    }

    /// @dev A model's list: first and last offer, and how many offers it holds. One slot.
    struct List {
        uint64 head;
        uint64 tail;
        uint64 length;
    }

    // ---------------------------------------------------------------- storage
    uint256 public constant MAX_OFFERS_PER_NODE = 16;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    uint256 public constant MAX_PAGE = 200;
    /// @notice How long after its expiry an offer becomes prunable by anyone.
    uint64 public constant PRUNE_DELAY = 1 days;
    bytes32 public constant COMMITMENT_TYPEHASH = keccak256(
        "Commitment(bytes32 sessionId,uint64 position,uint32 tokens,bytes32 inputHash,bytes32 outputHash,"
        "bytes32 modelId,uint16 layerStart,uint16 layerEnd,uint64 issuedAt)"
    );
    /// @notice Least time a bond thaws beyond the last moment a commitment signed before the request is slashable.
    uint64 public constant MIN_BOND_THAW_MARGIN = 1 hours;
    /// @notice Longest bond thaw a deployment may set.
    uint64 public constant MAX_BOND_THAW = 60 days;
    uint16 public constant BPS = 10_000;

    /// @notice How long an offer lives after registration or its latest heartbeat.
    uint64 public immutable offerTtl;
    /// @notice Least bond (wei) a node must hold after any registration.
    uint256 public immutable minBond;
    /// @notice Seconds between a bond withdrawal request and the withdrawal.
    uint64 public immutable bondThaw;
    /// @notice Seconds after its `issuedAt` a commitment can still prove equivocation.
    uint64 public immutable commitmentValidity;
    /// @notice Share of a slashed bond paid to the reporter, in basis points; the rest is burned.
    uint16 public immutable slashRewardBps;

    uint256 public nextOfferId = 1;
    mapping(uint256 offerId => Offer) private _offers;
    mapping(uint256 offerId => Link) private _links;
    mapping(bytes32 modelId => List) private _lists;
    mapping(address node => NodeState) private _nodes;
    mapping(bytes32 proofKey => bool) private _usedProofs;

    // ---------------------------------------------------------------- constructor
    /// @param ttl seconds an offer stays live without a heartbeat (1 s .. 1 day)
    /// @param minBond_ least bond per node, wei (> 0, fits uint96)
    /// @param bondThaw_ seconds a bond withdrawal thaws: >= commitmentValidity_ + MIN_BOND_THAW_MARGIN, at most
    ///        MAX_BOND_THAW; deploy it above the escrow's maxReceiptValidity too
    /// @param commitmentValidity_ seconds a commitment stays slashable after its issuedAt (> 0)
    /// @param slashRewardBps_ the reporter's share of a slashed bond, 1 .. 9,999 basis points: some of it is
    ///        always burned, so a node that reports itself still loses
    constructor(uint64 ttl, uint256 minBond_, uint64 bondThaw_, uint64 commitmentValidity_, uint16 slashRewardBps_)
        EIP712("P2P-LLM OfferRegistry", "1")
    {
        if (ttl == 0 || ttl > 1 days) revert Registry__BadTtl(ttl, 1 days);
        if (minBond_ == 0 || minBond_ > type(uint96).max) revert Registry__BadMinBond(minBond_, type(uint96).max);
        if (
            commitmentValidity_ == 0 || bondThaw_ > MAX_BOND_THAW
                || uint256(commitmentValidity_) + MIN_BOND_THAW_MARGIN > bondThaw_
        ) {
            revert Registry__BadBondPeriods(bondThaw_, commitmentValidity_);
        }
        if (slashRewardBps_ == 0 || slashRewardBps_ >= BPS) revert Registry__BadRewardBps(slashRewardBps_);
        offerTtl = ttl;
        minBond = minBond_;
        bondThaw = bondThaw_;
        commitmentValidity = commitmentValidity_;
        slashRewardBps = slashRewardBps_;
    }

    // ---------------------------------------------------------------- external
    /// @notice Offer layers [layerStart, layerEnd) of `modelId` at `pricePerToken` wei per token. `msg.value`
    ///         adds to the caller's bond, which must then be at least `minBond`; a pending bond withdrawal is
    ///         cancelled.
    function register(
        bytes32 modelId,
        uint16 layerStart,
        uint16 layerEnd,
        uint256 pricePerToken,
        string calldata endpoint
    ) external payable returns (uint256 offerId) {
        if (layerStart >= layerEnd) revert Registry__EmptyRange(layerStart, layerEnd);
        uint256 endpointLength = bytes(endpoint).length;
        if (endpointLength == 0) revert Registry__EmptyEndpoint();
        if (endpointLength > MAX_ENDPOINT_BYTES) revert Registry__EndpointTooLong(endpointLength, MAX_ENDPOINT_BYTES);
        NodeState memory state = _nodes[msg.sender];
        if (state.offerCount >= MAX_OFFERS_PER_NODE) revert Registry__TooManyOffers(msg.sender, MAX_OFFERS_PER_NODE);
        uint256 bond = state.bond + msg.value;
        if (bond < minBond) revert Registry__BondTooLow(msg.sender, bond, minBond);
        if (bond > type(uint96).max) revert Registry__BondTooLarge(msg.sender, bond);
        if (msg.value != 0) emit BondAdded(msg.sender, msg.value, bond);
        if (state.withdrawableAt != 0) emit BondWithdrawalCancelled(msg.sender);

        offerId = nextOfferId;
        nextOfferId = offerId + 1;
        uint64 id = uint64(offerId);
        uint64 nodeNext = state.head;
        _nodes[msg.sender] = NodeState(uint96(bond), 0, state.offerCount + 1, id);
        if (nodeNext != 0) _links[nodeNext].nodePrev = id;
        uint64 expiresAt = uint64(block.timestamp) + offerTtl;
        _offers[offerId] = Offer(msg.sender, layerStart, layerEnd, expiresAt, modelId, pricePerToken, endpoint);
        List memory list = _lists[modelId];
        _links[offerId] = Link(list.tail, 0, 0, nodeNext);
        if (list.tail == 0) list.head = id;
        else _links[list.tail].next = id;
        list.tail = id;
        ++list.length;
        _lists[modelId] = list;
        emit OfferRegistered(offerId, msg.sender, modelId, layerStart, layerEnd, pricePerToken, endpoint, expiresAt);
    }

    /// @notice Change the price of one of the caller's offers.
    function updatePrice(uint256 offerId, uint256 newPrice) external {
        Offer storage offer = _ownedOffer(offerId);
        uint256 oldPrice = offer.pricePerToken;
        offer.pricePerToken = newPrice;
        emit OfferPriceUpdated(offerId, oldPrice, newPrice);
    }

    /// @notice Keep one of the caller's offers live for another `offerTtl` seconds from now.
    function heartbeat(uint256 offerId) external {
        Offer storage offer = _ownedOffer(offerId);
        uint64 expiresAt = uint64(block.timestamp) + offerTtl;
        offer.expiresAt = expiresAt;
        emit OfferHeartbeat(offerId, expiresAt);
    }

    /// @notice Withdraw one of the caller's offers from the market.
    function remove(uint256 offerId) external {
        _ownedOffer(offerId);
        _unlink(offerId, msg.sender);
        emit OfferRemoved(offerId, msg.sender);
    }

    /// @notice Start (or restart) the thaw of the caller's whole bond; the caller must have no offers. The bond
    ///         stays slashable until it is withdrawn; registering again cancels the request.
    function requestBondWithdrawal() external {
        NodeState memory state = _nodes[msg.sender];
        if (state.offerCount != 0) revert Registry__HasOffers(msg.sender, state.offerCount);
        if (state.bond == 0) revert Registry__NoBond(msg.sender);
        uint64 readyAt = uint64(block.timestamp) + bondThaw;
        _nodes[msg.sender].withdrawableAt = readyAt;
        emit BondWithdrawalRequested(msg.sender, state.bond, readyAt);
    }

    /// @notice Pay the caller's whole bond to the caller once its requested withdrawal has thawed.
    function withdrawBond() external nonReentrant returns (uint256 amount) {
        NodeState memory state = _nodes[msg.sender];
        if (state.withdrawableAt == 0) revert Registry__NoWithdrawalRequest(msg.sender);
        if (block.timestamp < state.withdrawableAt) {
            revert Registry__BondStillThawing(msg.sender, state.withdrawableAt, block.timestamp);
        }
        amount = state.bond;
        delete _nodes[msg.sender]; // no offers: a registration would have cancelled the request
        emit BondWithdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert Registry__TransferFailed(msg.sender, amount);
    }

    /// @notice Punish equivocation: `a` and `b` name the same step (session, position, tokens, input, model,
    ///         layers) with different outputs, both are fresh, and both are signed by the same node. Takes the
    ///         node's whole bond (thawing or not), pays `slashRewardBps` of it to the caller, burns the rest and
    ///         removes every offer of the node. A proof (the pair, in either order) slashes at most once.
    function slash(Commitment calldata a, bytes calldata sigA, Commitment calldata b, bytes calldata sigB)
        external
        nonReentrant
        returns (address node, uint256 reward, uint256 burned)
    {
        if (
            a.outputHash == b.outputHash || a.sessionId != b.sessionId || a.position != b.position
                || a.tokens != b.tokens || a.inputHash != b.inputHash || a.modelId != b.modelId
                || a.layerStart != b.layerStart || a.layerEnd != b.layerEnd
        ) revert Registry__NotConflicting();
        _checkFresh(a.issuedAt);
        _checkFresh(b.issuedAt);
        bytes32 digestA = _commitmentDigest(a);
        bytes32 digestB = _commitmentDigest(b);
        node = _signer(digestA, sigA, 0);
        address signerB = _signer(digestB, sigB, 1);
        if (node != signerB) revert Registry__DifferentSigners(node, signerB);
        bytes32 key = _proofKey(digestA, digestB);
        if (_usedProofs[key]) revert Registry__ProofUsed(key);
        NodeState memory state = _nodes[node];
        if (state.bond == 0) revert Registry__NothingToSlash(node);

        _usedProofs[key] = true;
        uint256 id = state.head;
        while (id != 0) {
            uint256 next = _links[id].nodeNext;
            _unlinkFromModel(id);
            emit OfferRemoved(id, node);
            id = next;
        }
        delete _nodes[node];
        reward = uint256(state.bond) * slashRewardBps / BPS;
        burned = state.bond - reward;
        emit Slashed(node, msg.sender, reward, burned);
        (bool ok,) = address(0).call{value: burned}("");
        if (!ok) revert Registry__TransferFailed(address(0), burned);
        (ok,) = msg.sender.call{value: reward}("");
        if (!ok) revert Registry__TransferFailed(msg.sender, reward);
    }

    /// @notice Remove the offers of `modelId` that expired more than PRUNE_DELAY ago, scanning at most `limit`
    ///         list entries from `cursor` (0 = the first offer). Anyone may call it.
    /// @return pruned how many offers were removed
    /// @return nextCursor where to continue, 0 when the scan reached the end of the list
    function prune(bytes32 modelId, uint256 cursor, uint256 limit)
        external
        returns (uint256 pruned, uint256 nextCursor)
    {
        uint256 id = _start(modelId, cursor, limit);
        for (uint256 scanned; id != 0 && scanned < limit; ++scanned) {
            Offer storage offer = _offers[id];
            address node = offer.node;
            uint256 next = _links[id].next;
            if (node != address(0) && uint256(offer.expiresAt) + PRUNE_DELAY < block.timestamp) {
                _unlink(id, node);
                emit OfferPruned(id, node, msg.sender);
                ++pruned;
            }
            id = next;
        }
        nextCursor = id;
    }

    // ---------------------------------------------------------------- views
    /// @notice How many offers `node` has registered (live, or expired and not yet pruned).
    function offerCount(address node) external view returns (uint256) {
        return _nodes[node].offerCount;
    }

    /// @notice The bond `node` holds (thawing or not), wei.
    function bondOf(address node) external view returns (uint256) {
        return _nodes[node].bond;
    }

    /// @notice When `node`'s requested bond withdrawal unlocks; 0 when none is pending.
    function bondWithdrawal(address node) external view returns (uint64 readyAt) {
        return _nodes[node].withdrawableAt;
    }

    /// @notice The EIP-712 digest a node signs for `commitment` on this chain and this registry.
    function commitmentDigest(Commitment calldata commitment) external view returns (bytes32) {
        return _commitmentDigest(commitment);
    }

    /// @notice Whether the pair of commitment digests (in either order) has already slashed a node.
    function proofUsed(bytes32 digestA, bytes32 digestB) external view returns (bool) {
        return _usedProofs[_proofKey(digestA, digestB)];
    }

    /// @notice The EIP-712 domain separator of commitments (bound to chain id and this contract's address).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice One offer by id (live or expired); reverts for unknown, removed or pruned ids.
    function getOffer(uint256 offerId) external view returns (OfferView memory) {
        Offer storage offer = _offers[offerId];
        if (offer.node == address(0)) revert Registry__UnknownOffer(offerId);
        return _view(offerId, offer);
    }

    /// @notice Number of registered offers of a model (live, or expired and not yet pruned).
    function offerCountByModel(bytes32 modelId) external view returns (uint256) {
        return _lists[modelId].length;
    }

    /// @notice Page through the live offers of a model in registration order: scans at most `limit` entries
    ///         from `cursor` (0 = the first offer; otherwise a `nextCursor` this view returned), skipping
    ///         expired ones; `nextCursor` is 0 when the scan reached the end.
    function offersByModel(bytes32 modelId, uint256 cursor, uint256 limit)
        external
        view
        returns (OfferView[] memory page, uint256 nextCursor)
    {
        uint256 id = _start(modelId, cursor, limit);
        OfferView[] memory found = new OfferView[](limit);
        uint256 live;
        for (uint256 scanned; id != 0 && scanned < limit; ++scanned) {
            Offer storage offer = _offers[id];
            if (offer.node != address(0) && offer.expiresAt >= block.timestamp) found[live++] = _view(id, offer);
            id = _links[id].next;
        }
        page = new OfferView[](live);
        for (uint256 i; i < live; ++i) {
            page[i] = found[i];
        }
        nextCursor = id;
    }

    // ---------------------------------------------------------------- internal
    function _ownedOffer(uint256 offerId) internal view returns (Offer storage offer) {
        offer = _offers[offerId];
        address owner = offer.node;
        if (owner == address(0)) revert Registry__UnknownOffer(offerId);
        if (owner != msg.sender) revert Registry__NotOwner(offerId, msg.sender, owner);
    }

    /// @dev The first list entry a page starting at `cursor` reads.
    function _start(bytes32 modelId, uint256 cursor, uint256 limit) internal view returns (uint256) {
        if (limit > MAX_PAGE) revert Registry__PageTooLarge(limit, MAX_PAGE);
        if (cursor == 0) return _lists[modelId].head;
        if (cursor >= nextOfferId || _offers[cursor].modelId != modelId) revert Registry__BadCursor(modelId, cursor);
        return cursor;
    }

    /// @dev Take an offer out of its model's and its node's lists and clear it.
    function _unlink(uint256 offerId, address node) internal {
        Link memory link = _links[offerId];
        NodeState storage state = _nodes[node];
        if (link.nodePrev == 0) state.head = link.nodeNext;
        else _links[link.nodePrev].nodeNext = link.nodeNext;
        if (link.nodeNext != 0) _links[link.nodeNext].nodePrev = link.nodePrev;
        state.offerCount -= 1;
        _unlinkFromModel(offerId);
    }

    /// @dev Take an offer out of its model's list and clear it, keeping its modelId and links for pagers. Its
    ///      node's list and count are the caller's to update.
    function _unlinkFromModel(uint256 offerId) internal {
        Offer storage offer = _offers[offerId];
        List memory list = _lists[offer.modelId];
        Link memory link = _links[offerId];
        if (link.prev == 0) list.head = link.next;
        else _links[link.prev].next = link.next;
        if (link.next == 0) list.tail = link.prev;
        else _links[link.next].prev = link.prev;
        --list.length;
        _lists[offer.modelId] = list;
        delete offer.node;
        delete offer.layerStart;
        delete offer.layerEnd;
        delete offer.expiresAt;
        delete offer.pricePerToken;
        delete offer.endpoint;
    }

    function _checkFresh(uint64 issuedAt) internal view {
        if (issuedAt > block.timestamp) revert Registry__CommitmentFromFuture(issuedAt, block.timestamp);
        if (block.timestamp > uint256(issuedAt) + commitmentValidity) {
            revert Registry__CommitmentExpired(issuedAt, block.timestamp);
        }
    }

    /// @dev ECDSA.tryRecover of a 65-byte r || s || v signature (high s and bad v rejected, as by the escrow);
    ///      reverts naming which signature (0 = a, 1 = b) failed.
    function _signer(bytes32 digest, bytes calldata signature, uint8 which) internal pure returns (address) {
        if (signature.length != 65) {
            revert Registry__BadSignature(which, address(0), uint8(ECDSA.RecoverError.InvalidSignatureLength));
        }
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(digest, uint8(signature[64]), bytes32(signature[0:32]), bytes32(signature[32:64]));
        if (err != ECDSA.RecoverError.NoError) revert Registry__BadSignature(which, signer, uint8(err));
        return signer;
    }

    function _commitmentDigest(Commitment calldata c) internal view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    COMMITMENT_TYPEHASH,
                    c.sessionId,
                    c.position,
                    c.tokens,
                    c.inputHash,
                    c.outputHash,
                    c.modelId,
                    c.layerStart,
                    c.layerEnd,
                    c.issuedAt
                )
            )
        );
    }

    /// @dev One key for a pair of digests, whichever order they come in.
    function _proofKey(bytes32 digestA, bytes32 digestB) internal pure returns (bytes32) {
        return digestA < digestB ? keccak256(abi.encode(digestA, digestB)) : keccak256(abi.encode(digestB, digestA));
    }

    function _view(uint256 offerId, Offer storage offer) internal view returns (OfferView memory) {
        return OfferView(
            offerId,
            offer.node,
            offer.modelId,
            offer.layerStart,
            offer.layerEnd,
            offer.pricePerToken,
            offer.endpoint,
            offer.expiresAt
        );
    }
}
