// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test, Vm} from "./Test.sol";
import {PaymentEscrow} from "../../src/PaymentEscrow.sol";

/// @notice Shared set-up for escrow tests: one escrow, a client key, two nodes, reservations, receipt signing.
abstract contract EscrowFixture is Test {
    uint64 internal constant THAW = 2 days;
    uint64 internal constant VALIDITY = 1 days;
    uint256 internal constant CLIENT_KEY = 0xC11E47;
    bytes32 internal constant SESSION = keccak256("session-1");

    PaymentEscrow internal escrow;
    address internal client;
    address internal nodeA = address(0xA0A0);
    address internal nodeB = address(0xB0B0);

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        escrow = new PaymentEscrow(THAW, VALIDITY);
        client = vm.addr(CLIENT_KEY);
        vm.deal(client, 100 ether);
    }

    function _deposit(address who, uint256 amount) internal {
        vm.prank(who);
        escrow.deposit{value: amount}();
    }

    /// @dev `who` sends `amount` with reserve() and reserves all of it for `node`.
    function _reserve(address who, address node, uint256 amount) internal {
        vm.prank(who);
        escrow.reserve{value: amount}(_list(node), _list(amount));
    }

    function _list(address a) internal pure returns (address[] memory out) {
        out = new address[](1);
        out[0] = a;
    }

    function _list(address a, address b) internal pure returns (address[] memory out) {
        out = new address[](2);
        out[0] = a;
        out[1] = b;
    }

    function _list(uint256 a) internal pure returns (uint256[] memory out) {
        out = new uint256[](1);
        out[0] = a;
    }

    function _list(uint256 a, uint256 b) internal pure returns (uint256[] memory out) {
        out = new uint256[](2);
        out[0] = a;
        out[1] = b;
    }

    function _allocation(address who, address node) internal view returns (uint256 amount) {
        (amount,,) = escrow.allocationOf(who, node);
    }

    function _receipt(address node, uint256 amount) internal view returns (PaymentEscrow.Receipt memory) {
        return PaymentEscrow.Receipt(client, node, SESSION, uint64(amount / 1 gwei), amount, uint64(_now() + 1 hours));
    }

    function _receiptOf(address who, address node, bytes32 session, uint256 amount)
        internal
        view
        returns (PaymentEscrow.Receipt memory)
    {
        return PaymentEscrow.Receipt(who, node, session, uint64(amount / 1 gwei), amount, uint64(_now() + 1 hours));
    }

    /// @dev How many ClaimRejected(index, client, node, sessionId, reason) events the escrow emitted in `logs`.
    function _rejections(
        Vm.Log[] memory logs,
        uint256 index,
        address who,
        address node,
        bytes32 session,
        PaymentEscrow.RejectReason reason
    ) internal view returns (uint256 count) {
        for (uint256 i; i < logs.length; ++i) {
            Vm.Log memory log = logs[i];
            if (log.emitter != address(escrow) || log.topics[0] != PaymentEscrow.ClaimRejected.selector) continue;
            if (
                log.topics[1] == bytes32(index) && log.topics[2] == bytes32(uint256(uint160(who)))
                    && log.topics[3] == bytes32(uint256(uint160(node)))
                    && keccak256(log.data) == keccak256(abi.encode(session, reason))
            ) ++count;
        }
    }

    /// @dev How many events with topic0 `topic` the escrow emitted in `logs`.
    function _eventCount(Vm.Log[] memory logs, bytes32 topic) internal view returns (uint256 count) {
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(escrow) && logs[i].topics[0] == topic) ++count;
        }
    }

    function _sign(uint256 key, PaymentEscrow.Receipt memory receipt) internal view returns (bytes memory) {
        return _signOn(escrow, key, receipt);
    }

    function _signOn(PaymentEscrow target, uint256 key, PaymentEscrow.Receipt memory receipt)
        internal
        view
        returns (bytes memory)
    {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, target.receiptDigest(receipt));
        return abi.encodePacked(r, s, v);
    }
}
