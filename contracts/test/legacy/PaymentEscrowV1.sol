// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;
// The contract as it was before issue 13, kept only as the target of the witness tests.

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title PaymentEscrow
/// @notice Clients deposit ETH; nodes are paid from it by EIP-712 receipts the client signed.
///         A receipt carries the cumulative amount owed for (client, node, sessionId); a claim pays
///         the part not yet paid, capped by the client's balance, straight to the receipt's node.
///         Withdrawals thaw for longer than any receipt may stay valid, and funds stay claimable while thawing.
contract PaymentEscrowV1 is EIP712, ReentrancyGuardTransient {
    // ---------------------------------------------------------------- errors
    error Escrow__ZeroDeposit();
    error Escrow__BadPeriods(uint64 thawPeriod, uint64 maxReceiptValidity);
    error Escrow__ReceiptExpired(uint64 deadline, uint256 nowTs);
    error Escrow__DeadlineTooFar(uint64 deadline, uint256 latestAllowed);
    error Escrow__BadSignature(address expectedSigner, address recovered, uint8 errorCode);
    error Escrow__ZeroNode();
    error Escrow__LengthMismatch(uint256 receipts, uint256 signatures);
    error Escrow__BadWithdrawAmount(uint256 requested, uint256 balance);
    error Escrow__NoWithdrawRequest(address client);
    error Escrow__StillThawing(uint64 readyAt, uint256 nowTs);
    error Escrow__TransferFailed(address to, uint256 amount);

    // ---------------------------------------------------------------- events
    event Deposited(address indexed client, uint256 amount, uint256 balance);
    event WithdrawRequested(address indexed client, uint256 amount, uint64 readyAt);
    event WithdrawCancelled(address indexed client);
    event Withdrawn(address indexed client, uint256 amount, uint256 balance);
    /// @dev `paid` is this claim's payout; `paidFor(client, node, sessionId)` gives the session's total.
    event Claimed(address indexed node, address indexed client, bytes32 sessionId, uint256 paid);
    event ClaimRejected(uint256 indexed index, RejectReason reason);

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

    struct Thaw {
        uint256 amount;
        uint64 readyAt;
    }

    /// @notice Why a batch item paid nothing.
    enum RejectReason {
        None,
        Expired,
        DeadlineTooFar,
        BadSignature,
        ZeroNode,
        NothingOwed
    }

    // ---------------------------------------------------------------- storage
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(address client,address node,bytes32 sessionId,uint64 tokens,uint256 amount,uint64 deadline)"
    );

    /// @notice Seconds a withdrawal waits between request and payout.
    uint64 public immutable thawPeriod;
    /// @notice Latest deadline a receipt may carry, in seconds from the time it is claimed.
    uint64 public immutable maxReceiptValidity;

    mapping(address client => uint256 amount) public balanceOf;
    mapping(address client => Thaw) public thawOf;
    mapping(bytes32 channelKey => uint256 amount) private _paid;

    // ---------------------------------------------------------------- constructor
    constructor(uint64 thawPeriod_, uint64 maxReceiptValidity_) EIP712("P2P-LLM PaymentEscrow", "1") {
        if (maxReceiptValidity_ == 0 || thawPeriod_ <= maxReceiptValidity_) {
            revert Escrow__BadPeriods(thawPeriod_, maxReceiptValidity_);
        }
        thawPeriod = thawPeriod_;
        maxReceiptValidity = maxReceiptValidity_;
    }

    // ---------------------------------------------------------------- external: clients
    /// @notice Add ETH to the caller's escrow balance.
    function deposit() external payable {
        if (msg.value == 0) revert Escrow__ZeroDeposit();
        uint256 balance = balanceOf[msg.sender] + msg.value;
        balanceOf[msg.sender] = balance;
        emit Deposited(msg.sender, msg.value, balance);
    }

    /// @notice Start (or restart) thawing `amount` of the caller's balance; replaces any pending request.
    function requestWithdraw(uint256 amount) external {
        uint256 balance = balanceOf[msg.sender];
        if (amount == 0 || amount > balance) revert Escrow__BadWithdrawAmount(amount, balance);
        uint64 readyAt = uint64(block.timestamp) + thawPeriod;
        thawOf[msg.sender] = Thaw(amount, readyAt);
        emit WithdrawRequested(msg.sender, amount, readyAt);
    }

    /// @notice Drop the caller's pending withdrawal request.
    function cancelWithdraw() external {
        if (thawOf[msg.sender].readyAt == 0) revert Escrow__NoWithdrawRequest(msg.sender);
        delete thawOf[msg.sender];
        emit WithdrawCancelled(msg.sender);
    }

    /// @notice Pay out the caller's thawed request: its amount, or the whole balance if claims shrank it.
    function withdraw() external nonReentrant returns (uint256 amount) {
        Thaw memory thaw = thawOf[msg.sender];
        if (thaw.readyAt == 0) revert Escrow__NoWithdrawRequest(msg.sender);
        if (block.timestamp < thaw.readyAt) revert Escrow__StillThawing(thaw.readyAt, block.timestamp);
        uint256 balance = balanceOf[msg.sender];
        amount = thaw.amount < balance ? thaw.amount : balance;
        balance -= amount;
        balanceOf[msg.sender] = balance;
        delete thawOf[msg.sender];
        emit Withdrawn(msg.sender, amount, balance);
        _send(msg.sender, amount);
    }

    // ---------------------------------------------------------------- external: claims
    /// @notice Pay the receipt's node what the receipt owes beyond what was paid (capped by the
    ///         client's balance). Anyone may submit; only `receipt.node` is paid. Replays pay 0.
    function claim(Receipt calldata receipt, bytes calldata signature) external nonReentrant returns (uint256 paid) {
        if (block.timestamp > receipt.deadline) revert Escrow__ReceiptExpired(receipt.deadline, block.timestamp);
        if (receipt.deadline > block.timestamp + maxReceiptValidity) {
            revert Escrow__DeadlineTooFar(receipt.deadline, block.timestamp + maxReceiptValidity);
        }
        if (receipt.node == address(0)) revert Escrow__ZeroNode();
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_digest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || signer != receipt.client) {
            revert Escrow__BadSignature(receipt.client, signer, uint8(err));
        }
        paid = _settle(receipt);
        if (paid != 0) _send(receipt.node, paid);
    }

    /// @notice Claim many receipts; a bad item pays 0 (with a ClaimRejected event) and the others proceed.
    ///         Consecutive items for the same node are paid out in one transfer.
    /// @return paid what each item paid, in order
    function claimBatch(Receipt[] calldata receipts, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256[] memory paid)
    {
        uint256 n = receipts.length;
        if (n != signatures.length) revert Escrow__LengthMismatch(n, signatures.length);
        paid = new uint256[](n);
        address pendingNode;
        uint256 pendingAmount;
        for (uint256 i; i < n; ++i) {
            Receipt calldata receipt = receipts[i];
            RejectReason reason = _check(receipt, signatures[i]);
            uint256 amount;
            if (reason == RejectReason.None) {
                amount = _settle(receipt);
                if (amount == 0) reason = RejectReason.NothingOwed;
            }
            if (reason != RejectReason.None) {
                emit ClaimRejected(i, reason);
                continue;
            }
            paid[i] = amount;
            if (receipt.node != pendingNode) {
                if (pendingAmount != 0) _send(pendingNode, pendingAmount);
                pendingNode = receipt.node;
                pendingAmount = 0;
            }
            pendingAmount += amount;
        }
        if (pendingAmount != 0) _send(pendingNode, pendingAmount);
    }

    // ---------------------------------------------------------------- views
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
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(_digest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || signer != receipt.client) return RejectReason.BadSignature;
        return RejectReason.None;
    }

    /// @dev Effects of a verified receipt: pays min(amount - alreadyPaid, balance) and records only that.
    function _settle(Receipt calldata receipt) internal returns (uint256 pay) {
        bytes32 key = _channelKey(receipt.client, receipt.node, receipt.sessionId);
        uint256 already = _paid[key];
        if (receipt.amount <= already) return 0;
        uint256 balance = balanceOf[receipt.client];
        pay = receipt.amount - already;
        if (pay > balance) pay = balance;
        if (pay == 0) return 0;
        _paid[key] = already + pay;
        balanceOf[receipt.client] = balance - pay;
        emit Claimed(receipt.node, receipt.client, receipt.sessionId, pay);
    }

    function _send(address to, uint256 amount) internal {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert Escrow__TransferFailed(to, amount);
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
