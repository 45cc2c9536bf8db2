// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

// The contract as it was before issue 13, kept only as the target of the witness tests.

/// @title OfferRegistry
/// @notice On-chain market of P2P-LLM node offers: a node offers the half-open layer range
///         [layerStart, layerEnd) of a model at a price per token, reachable at an endpoint.
///         Offers expire unless the owner heartbeats them; views page through a model's live offers.
/// @dev Every loop is bounded by a caller-chosen page size capped at MAX_PAGE.
contract OfferRegistryV1 {
    // ---------------------------------------------------------------- errors
    error Registry__EmptyRange(uint16 layerStart, uint16 layerEnd);
    error Registry__EmptyEndpoint();
    error Registry__EndpointTooLong(uint256 length, uint256 maxLength);
    error Registry__TooManyOffers(address node, uint256 cap);
    error Registry__NotOwner(uint256 offerId, address caller, address owner);
    error Registry__UnknownOffer(uint256 offerId);
    error Registry__BadTtl(uint64 ttl, uint64 maxTtl);
    error Registry__PageTooLarge(uint256 limit, uint256 maxPage);

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

    // ---------------------------------------------------------------- types
    /// @dev Packed: slot 0 = node|layerStart|layerEnd|expiresAt; slot 1 = modelId;
    ///      slot 2 = pricePerToken; slot 3.. = endpoint; the model-list index lives in `_indexInModel`.
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

    // ---------------------------------------------------------------- storage
    uint256 public constant MAX_OFFERS_PER_NODE = 16;
    uint256 public constant MAX_ENDPOINT_BYTES = 256;
    uint256 public constant MAX_PAGE = 200;

    /// @notice How long an offer lives after registration or its latest heartbeat.
    uint64 public immutable offerTtl;

    uint256 public nextOfferId = 1;
    mapping(uint256 offerId => Offer) private _offers;
    mapping(bytes32 modelId => uint256[] offerIds) private _offersByModel;
    mapping(uint256 offerId => uint256 index) private _indexInModel;
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
        uint256[] storage list = _offersByModel[modelId];
        _indexInModel[offerId] = list.length;
        list.push(offerId);
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
        Offer storage offer = _ownedOffer(offerId);
        bytes32 modelId = offer.modelId;
        uint256[] storage list = _offersByModel[modelId];
        uint256 index = _indexInModel[offerId];
        uint256 lastId = list[list.length - 1];
        list[index] = lastId;
        _indexInModel[lastId] = index;
        list.pop();
        delete _indexInModel[offerId];
        delete _offers[offerId];
        offerCount[msg.sender] -= 1;
        emit OfferRemoved(offerId, msg.sender);
    }

    // ---------------------------------------------------------------- views
    /// @notice One offer by id (live or expired); reverts for unknown or removed ids.
    function getOffer(uint256 offerId) external view returns (OfferView memory) {
        Offer storage offer = _offers[offerId];
        if (offer.node == address(0)) revert Registry__UnknownOffer(offerId);
        return _view(offerId, offer);
    }

    /// @notice Number of registered (live or expired) offers for a model: the cursor range of `offersByModel`.
    function offerCountByModel(bytes32 modelId) external view returns (uint256) {
        return _offersByModel[modelId].length;
    }

    /// @notice Page through the live offers of a model. Scans at most `limit` entries from `cursor`,
    ///         skipping expired ones; `nextCursor` is 0 when the scan reached the end.
    function offersByModel(bytes32 modelId, uint256 cursor, uint256 limit)
        external
        view
        returns (OfferView[] memory page, uint256 nextCursor)
    {
        if (limit > MAX_PAGE) revert Registry__PageTooLarge(limit, MAX_PAGE);
        uint256[] storage list = _offersByModel[modelId];
        uint256 end = cursor + limit;
        if (end > list.length) end = list.length;
        OfferView[] memory found = new OfferView[](end > cursor ? end - cursor : 0);
        uint256 live;
        for (uint256 i = cursor; i < end; ++i) {
            Offer storage offer = _offers[list[i]];
            if (offer.expiresAt >= block.timestamp) found[live++] = _view(list[i], offer);
        }
        page = new OfferView[](live);
        for (uint256 i; i < live; ++i) {
            page[i] = found[i];
        }
        nextCursor = end < list.length ? end : 0;
    }

    // ---------------------------------------------------------------- internal
    function _ownedOffer(uint256 offerId) internal view returns (Offer storage offer) {
        offer = _offers[offerId];
        address owner = offer.node;
        if (owner == address(0)) revert Registry__UnknownOffer(offerId);
        if (owner != msg.sender) revert Registry__NotOwner(offerId, msg.sender, owner);
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
