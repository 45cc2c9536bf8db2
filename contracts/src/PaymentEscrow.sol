// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title PaymentEscrow
/// @notice Clients pay nodes by EIP-712 receipts, from funds reserved per (client, node).
///         A client's pool is free money: deposits, withdrawals and moves into an allocation are instant.
///         An allocation is reserved for one node: only that node's receipts spend it, and the client gets
///         it back only through a release that thaws for longer than any receipt stays valid (plus a margin).
///         A receipt carries the cumulative amount owed for (client, node, sessionId); a claim pays the part
///         not yet paid, capped by the allocation, straight to the receipt's node.
contract PaymentEscrow is EIP712, ReentrancyGuardTransient {
    // ---------------------------------------------------------------- errors
    error Escrow__ZeroAmount();
    error Escrow__ZeroNode();
    error Escrow__BadPeriods(uint64 thawPeriod, uint64 maxReceiptValidity);
    error Escrow__LengthMismatch(uint256 left, uint256 right);
    error Escrow__InsufficientPool(address client, uint256 requested, uint256 pool);
    error Escrow__AllocationTooLarge(address client, address node, uint256 total);
    error Escrow__BadReleaseAmount(address node, uint256 requested, uint256 allocated);
    error Escrow__NoReleaseRequest(address client, address node);
    error Escrow__StillThawing(address node, uint64 readyAt, uint256 nowTs);
    error Escrow__ReceiptExpired(uint64 deadline, uint256 nowTs);
    error Escrow__DeadlineTooFar(uint64 deadline, uint256 latestAllowed);
    error Escrow__BadSignature(address expectedSigner, address recovered, uint8 errorCode);
    error Escrow__TransferFailed(address to, uint256 amount);
    error Escrow__GasTooLowForTransfer(uint256 gasLeft, uint256 needed);

    // ---------------------------------------------------------------- events
    event Deposited(address indexed client, uint256 amount, uint256 pool);
    event Withdrawn(address indexed client, uint256 amount, uint256 pool);
    event Reserved(address indexed client, address indexed node, uint256 amount, uint256 allocation);
    event ReleaseRequested(address indexed client, address indexed node, uint256 amount, uint64 readyAt);
    event ReleaseCancelled(address indexed client, address indexed node);
    event Released(address indexed client, address indexed node, uint256 amount, uint256 allocation);
    /// @dev `paid` is this claim's payout; `paidFor(client, node, sessionId)` gives the session's total.
    event Claimed(address indexed node, address indexed client, bytes32 sessionId, uint256 paid);
    /// @dev A batch item that paid nothing; with `TransferFailed` the item stays claimable.
    event ClaimRejected(
        uint256 indexed index, address indexed client, address indexed node, bytes32 sessionId, RejectReason reason
    );

    // ---------------------------------------------------------------- types
    /// @notice The signed receipt: `amount` is cumulative for (client, node, sessionId).
    struct Receipt {
        address client;
        address node;
        bytes32 sessionId;
        uint64 tokens;
        uint256 amount;
        uint64 deadline;
    }

    /// @notice Funds reserved by a client for one node; `thawing` of them (at most `amount`) return to the
    ///         client's pool once `readyAt` has passed. One storage slot.
    struct Allocation {
        uint96 amount;
        uint96 thawing;
        uint64 readyAt;
    }

    /// @notice Why a batch item paid nothing.
    enum RejectReason {
        None,
        Expired,
        DeadlineTooFar,
        BadSignature,
        ZeroNode,
        NothingOwed,
        TransferFailed
    }

    // ---------------------------------------------------------------- storage
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(address client,address node,bytes32 sessionId,uint64 tokens,uint256 amount,uint64 deadline)"
    );
    /// @notice Longest thaw a deployment may set.
    uint64 public constant MAX_THAW_PERIOD = 30 days;
    /// @notice Least time a release thaws beyond the latest receipt deadline: a node's view of an allocation
    ///         may be this old and still be safe to serve against.
    uint64 public constant MIN_THAW_MARGIN = 1 hours;
    /// @notice Gas a node's receive hook gets when it is paid; a hook that needs more (or reverts) is not paid
    ///         by a batch, and its items stay claimable.
    uint256 public constant TRANSFER_GAS = 50_000;

    /// @notice Seconds a release waits between request and return to the pool.
    uint64 public immutable thawPeriod;
    /// @notice Latest deadline a receipt may carry, in seconds from the time it is claimed.
    uint64 public immutable maxReceiptValidity;

    mapping(address client => uint256 amount) public poolOf;
    mapping(address client => mapping(address node => Allocation)) private _allocations;
    mapping(bytes32 channelKey => uint256 amount) private _paid;

    // ---------------------------------------------------------------- constructor
    /// @dev Requires 0 < maxReceiptValidity and maxReceiptValidity + MIN_THAW_MARGIN <= thawPeriod <= MAX_THAW_PERIOD.
    constructor(uint64 thawPeriod_, uint64 maxReceiptValidity_) EIP712("P2P-LLM PaymentEscrow", "2") {
        if (
            maxReceiptValidity_ == 0 || thawPeriod_ > MAX_THAW_PERIOD
                || uint256(maxReceiptValidity_) + MIN_THAW_MARGIN > thawPeriod_
        ) {
            revert Escrow__BadPeriods(thawPeriod_, maxReceiptValidity_);
        }
        thawPeriod = thawPeriod_;
        maxReceiptValidity = maxReceiptValidity_;
    }

    // ---------------------------------------------------------------- external: the client's pool
    /// @notice Add ETH to the caller's pool.
    function deposit() external payable {
        if (msg.value == 0) revert Escrow__ZeroAmount();
        uint256 pool = poolOf[msg.sender] + msg.value;
        poolOf[msg.sender] = pool;
        emit Deposited(msg.sender, msg.value, pool);
    }

    /// @notice Send `amount` of the caller's pool to the caller, at once (nothing in the pool is reserved).
    function withdraw(uint256 amount) external nonReentrant {
        uint256 pool = poolOf[msg.sender];
        if (amount == 0) revert Escrow__ZeroAmount();
        if (amount > pool) revert Escrow__InsufficientPool(msg.sender, amount, pool);
        pool -= amount;
        poolOf[msg.sender] = pool;
        emit Withdrawn(msg.sender, amount, pool);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert Escrow__TransferFailed(msg.sender, amount);
    }

    // ---------------------------------------------------------------- external: allocations
    /// @notice Deposit `msg.value` (may be 0) into the caller's pool, then move `amounts[i]` from it into the
    ///         allocation for `nodes[i]`: one transaction reserves for every hop of a route.
    function reserve(address[] calldata nodes, uint256[] calldata amounts) external payable {
        uint256 n = nodes.length;
        if (n != amounts.length) revert Escrow__LengthMismatch(n, amounts.length);
        uint256 before = poolOf[msg.sender];
        uint256 pool = before + msg.value;
        if (msg.value != 0) emit Deposited(msg.sender, msg.value, pool);
        for (uint256 i; i < n; ++i) {
            address node = nodes[i];
            uint256 amount = amounts[i];
            if (node == address(0)) revert Escrow__ZeroNode();
            if (amount == 0) revert Escrow__ZeroAmount();
            if (amount > pool) revert Escrow__InsufficientPool(msg.sender, amount, pool);
            unchecked {
                pool -= amount;
            }
            Allocation storage allocation = _allocations[msg.sender][node];
            uint256 total = allocation.amount + amount;
            if (total > type(uint96).max) revert Escrow__AllocationTooLarge(msg.sender, node, total);
            allocation.amount = uint96(total);
            emit Reserved(msg.sender, node, amount, total);
        }
        if (pool != before) poolOf[msg.sender] = pool;
    }

    /// @notice Start (or restart) thawing `amounts[i]` of the caller's allocation for `nodes[i]`; replaces a
    ///         pending request for that node. The node's claims may still spend it until it is released.
    function requestRelease(address[] calldata nodes, uint256[] calldata amounts) external {
        uint256 n = nodes.length;
        if (n != amounts.length) revert Escrow__LengthMismatch(n, amounts.length);
        uint64 readyAt = uint64(block.timestamp) + thawPeriod;
        for (uint256 i; i < n; ++i) {
            Allocation storage allocation = _allocations[msg.sender][nodes[i]];
            uint256 amount = amounts[i];
            if (amount == 0 || amount > allocation.amount) {
                revert Escrow__BadReleaseAmount(nodes[i], amount, allocation.amount);
            }
            allocation.thawing = uint96(amount);
            allocation.readyAt = readyAt;
            emit ReleaseRequested(msg.sender, nodes[i], amount, readyAt);
        }
    }

    /// @notice Drop the caller's pending release requests for `nodes`.
    function cancelRelease(address[] calldata nodes) external {
        for (uint256 i; i < nodes.length; ++i) {
            Allocation storage allocation = _allocations[msg.sender][nodes[i]];
            if (allocation.readyAt == 0) revert Escrow__NoReleaseRequest(msg.sender, nodes[i]);
            allocation.thawing = 0;
            allocation.readyAt = 0;
            emit ReleaseCancelled(msg.sender, nodes[i]);
        }
    }

    /// @notice Return each thawed request to the caller's pool: its amount, or what is left if claims spent
    ///         part of it.
    /// @return total what moved into the pool
    function release(address[] calldata nodes) external returns (uint256 total) {
        for (uint256 i; i < nodes.length; ++i) {
            Allocation memory allocation = _allocations[msg.sender][nodes[i]];
            if (allocation.readyAt == 0) revert Escrow__NoReleaseRequest(msg.sender, nodes[i]);
            if (block.timestamp < allocation.readyAt) {
                revert Escrow__StillThawing(nodes[i], allocation.readyAt, block.timestamp);
            }
            uint96 amount = allocation.thawing < allocation.amount ? allocation.thawing : allocation.amount;
            uint96 left = allocation.amount - amount;
            _allocations[msg.sender][nodes[i]] = Allocation(left, 0, 0);
            total += amount;
            emit Released(msg.sender, nodes[i], amount, left);
        }
        if (total != 0) poolOf[msg.sender] += total;
    }

    // ---------------------------------------------------------------- external: claims
    /// @notice Pay the receipt's node what the receipt owes beyond what was paid, capped by the client's
    ///         allocation for that node. Anyone may submit; only `receipt.node` is paid. Replays pay 0.
    function claim(Receipt calldata receipt, bytes calldata signature) external nonReentrant returns (uint256 paid) {
        if (block.timestamp > receipt.deadline) revert Escrow__ReceiptExpired(receipt.deadline, block.timestamp);
        if (receipt.deadline > block.timestamp + maxReceiptValidity) {
            revert Escrow__DeadlineTooFar(receipt.deadline, block.timestamp + maxReceiptValidity);
        }
        if (receipt.node == address(0)) revert Escrow__ZeroNode();
        (address signer, ECDSA.RecoverError err) = _recover(_digest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || signer != receipt.client) {
            revert Escrow__BadSignature(receipt.client, signer, uint8(err));
        }
        paid = _settle(receipt);
        if (paid != 0) {
            if (!_trySend(receipt.node, paid)) revert Escrow__TransferFailed(receipt.node, paid);
            emit Claimed(receipt.node, receipt.client, receipt.sessionId, paid);
        }
    }

    /// @notice Claim many receipts; a bad item pays 0 (with a ClaimRejected event) and the others proceed.
    ///         Consecutive items for the same node are paid out in one transfer. A node whose transfer fails
    ///         (its receive hook reverts or needs more than TRANSFER_GAS) is not paid: its items are rolled
    ///         back, stay claimable, and are reported as ClaimRejected(TransferFailed).
    /// @return paid what each item paid, in order
    function claimBatch(Receipt[] calldata receipts, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256[] memory paid)
    {
        uint256 n = receipts.length;
        if (n != signatures.length) revert Escrow__LengthMismatch(n, signatures.length);
        paid = new uint256[](n);
        uint256 groupStart;
        address groupNode;
        uint256 groupAmount;
        for (uint256 i; i < n; ++i) {
            Receipt calldata receipt = receipts[i];
            if (receipt.node != groupNode) {
                _payGroup(receipts, paid, groupStart, i, groupAmount);
                groupStart = i;
                groupNode = receipt.node;
                groupAmount = 0;
            }
            RejectReason reason = _check(receipt, signatures[i]);
            uint256 amount;
            if (reason == RejectReason.None) {
                amount = _settle(receipt);
                if (amount == 0) reason = RejectReason.NothingOwed;
            }
            if (reason != RejectReason.None) {
                emit ClaimRejected(i, receipt.client, receipt.node, receipt.sessionId, reason);
                continue;
            }
            paid[i] = amount;
            groupAmount += amount;
        }
        _payGroup(receipts, paid, groupStart, n, groupAmount);
    }

    // ---------------------------------------------------------------- views
    /// @notice The allocation `client` holds for `node`: its amount, how much of it thaws, and when.
    function allocationOf(address client, address node)
        external
        view
        returns (uint256 amount, uint256 thawing, uint64 readyAt)
    {
        Allocation memory allocation = _allocations[client][node];
        return (allocation.amount, allocation.thawing, allocation.readyAt);
    }

    /// @notice What stays reserved for `node` through timestamp `until`, whatever the client does: the
    ///         allocation, less a thawing part that may return to the client's pool by then.
    function reservedUntil(address client, address node, uint64 until) external view returns (uint256) {
        Allocation memory allocation = _allocations[client][node];
        if (allocation.readyAt == 0 || allocation.readyAt > until) return allocation.amount;
        return allocation.thawing < allocation.amount ? allocation.amount - allocation.thawing : 0;
    }

    /// @notice What (client, node, sessionId) has been paid in total.
    function paidFor(address client, address node, bytes32 sessionId) external view returns (uint256) {
        return _paid[_channelKey(client, node, sessionId)];
    }

    /// @notice The EIP-712 digest a client signs for `receipt` on this chain and this escrow.
    function receiptDigest(Receipt calldata receipt) external view returns (bytes32) {
        return _digest(receipt);
    }

    /// @notice The EIP-712 domain separator (bound to chain id and this contract's address).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---------------------------------------------------------------- internal
    function _check(Receipt calldata receipt, bytes calldata signature) internal view returns (RejectReason) {
        if (block.timestamp > receipt.deadline) return RejectReason.Expired;
        if (receipt.deadline > block.timestamp + maxReceiptValidity) return RejectReason.DeadlineTooFar;
        if (receipt.node == address(0)) return RejectReason.ZeroNode;
        (address signer, ECDSA.RecoverError err) = _recover(_digest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || signer != receipt.client) return RejectReason.BadSignature;
        return RejectReason.None;
    }

    /// @dev Effects of a verified receipt: pays min(amount - alreadyPaid, allocation) and records only that.
    function _settle(Receipt calldata receipt) internal returns (uint256 pay) {
        bytes32 key = _channelKey(receipt.client, receipt.node, receipt.sessionId);
        uint256 already = _paid[key];
        if (receipt.amount <= already) return 0;
        Allocation storage allocation = _allocations[receipt.client][receipt.node];
        uint256 available = allocation.amount;
        unchecked {
            pay = receipt.amount - already;
        }
        if (pay > available) pay = available;
        if (pay == 0) return 0;
        unchecked {
            _paid[key] = already + pay;
            allocation.amount = uint96(available - pay);
        }
    }

    /// @dev Pay one node the settled items [start, end) of a batch in one transfer, or roll them back.
    function _payGroup(Receipt[] calldata receipts, uint256[] memory paid, uint256 start, uint256 end, uint256 amount)
        internal
    {
        if (amount == 0) return;
        address node = receipts[start].node;
        bool sent = _trySend(node, amount);
        for (uint256 j = start; j < end; ++j) {
            uint256 pay = paid[j];
            if (pay == 0) continue;
            Receipt calldata receipt = receipts[j];
            if (sent) {
                emit Claimed(node, receipt.client, receipt.sessionId, pay);
                continue;
            }
            _paid[_channelKey(receipt.client, node, receipt.sessionId)] -= pay;
            _allocations[receipt.client][node].amount += uint96(pay);
            paid[j] = 0;
            emit ClaimRejected(j, receipt.client, node, receipt.sessionId, RejectReason.TransferFailed);
        }
    }

    /// @dev Send ETH with at most TRANSFER_GAS for the recipient's code. Reverts if the caller left too little
    ///      gas to give it that much, so a submitter cannot make an honest node's transfer fail on purpose: the
    ///      CALL itself may cost 36,600 (cold account 2,600 + value 9,000 + new account 25,000) and passes on at
    ///      most 63/64 of what is left.
    function _trySend(address to, uint256 amount) internal returns (bool ok) {
        uint256 needed = TRANSFER_GAS + TRANSFER_GAS / 63 + 40_000;
        if (gasleft() < needed) revert Escrow__GasTooLowForTransfer(gasleft(), needed);
        (ok,) = to.call{value: amount, gas: TRANSFER_GAS}("");
    }

    /// @dev ECDSA.tryRecover for a 65-byte r || s || v signature read straight from calldata (no copy to memory);
    ///      any other length (EIP-2098's 64 bytes included) is rejected, so a receipt has one signature encoding.
    function _recover(bytes32 digest, bytes calldata signature) internal pure returns (address, ECDSA.RecoverError) {
        if (signature.length != 65) return (address(0), ECDSA.RecoverError.InvalidSignatureLength);
        (address signer, ECDSA.RecoverError err,) =
            ECDSA.tryRecover(digest, uint8(signature[64]), bytes32(signature[0:32]), bytes32(signature[32:64]));
        return (signer, err);
    }

    function _digest(Receipt calldata receipt) internal view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    receipt.client,
                    receipt.node,
                    receipt.sessionId,
                    receipt.tokens,
                    receipt.amount,
                    receipt.deadline
                )
            )
        );
    }

    function _channelKey(address client, address node, bytes32 sessionId) internal pure returns (bytes32) {
        return keccak256(abi.encode(client, node, sessionId));
    }
}
