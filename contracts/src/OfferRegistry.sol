// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @title OfferRegistry
/// @notice On-chain market of P2P-LLM node offers: a node offers the half-open layer range
///         [layerStart, layerEnd) of a model at a price per token, reachable at an endpoint.
///         Offers expire unless the owner heartbeats them; anyone may prune an offer PRUNE_DELAY after it
///         expired. Views page through a model's offers in registration order.
/// @dev A model's offers form a doubly linked list in registration order; a page cursor is an offer id.
///      A removed offer keeps its links, so a reader paging while offers are removed or pruned still sees every
///      offer that stayed registered, exactly once. Every loop is bounded by a page size capped at MAX_PAGE.
contract OfferRegistry {
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

    /// @dev Neighbours of an offer in its model's list (0 = none).
    struct Link {
        uint64 prev;
        uint64 next;
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

    /// @notice How long an offer lives after registration or its latest heartbeat.
    uint64 public immutable offerTtl;

    uint256 public nextOfferId = 1;
    mapping(uint256 offerId => Offer) private _offers;
    mapping(uint256 offerId => Link) private _links;
    mapping(bytes32 modelId => List) private _lists;
    mapping(address node => uint256 count) public offerCount;

    // ---------------------------------------------------------------- constructor
    /// @param ttl seconds an offer stays live without a heartbeat (1 s .. 1 day)
    constructor(uint64 ttl) {
        if (ttl == 0 || ttl > 1 days) revert Registry__BadTtl(ttl, 1 days);
        offerTtl = ttl;
    }

    // ---------------------------------------------------------------- external
    /// @notice Offer layers [layerStart, layerEnd) of `modelId` at `pricePerToken` wei per token.
    function register(
        bytes32 modelId,
        uint16 layerStart,
        uint16 layerEnd,
        uint256 pricePerToken,
        string calldata endpoint
    ) external returns (uint256 offerId) {
        if (layerStart >= layerEnd) revert Registry__EmptyRange(layerStart, layerEnd);
        uint256 endpointLength = bytes(endpoint).length;
        if (endpointLength == 0) revert Registry__EmptyEndpoint();
        if (endpointLength > MAX_ENDPOINT_BYTES) revert Registry__EndpointTooLong(endpointLength, MAX_ENDPOINT_BYTES);
        uint256 count = offerCount[msg.sender];
        if (count >= MAX_OFFERS_PER_NODE) revert Registry__TooManyOffers(msg.sender, MAX_OFFERS_PER_NODE);

        offerId = nextOfferId;
        nextOfferId = offerId + 1;
        offerCount[msg.sender] = count + 1;
        uint64 expiresAt = uint64(block.timestamp) + offerTtl;
        _offers[offerId] = Offer(msg.sender, layerStart, layerEnd, expiresAt, modelId, pricePerToken, endpoint);
        List memory list = _lists[modelId];
        uint64 id = uint64(offerId);
        _links[offerId] = Link(list.tail, 0);
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

    /// @dev Take an offer out of its model's list and clear it, keeping its modelId and links for pagers.
    function _unlink(uint256 offerId, address node) internal {
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
        offerCount[node] -= 1;
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
