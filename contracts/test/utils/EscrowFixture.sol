// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Test} from "./Test.sol";
import {PaymentEscrow} from "../../src/PaymentEscrow.sol";

/// @notice Shared set-up for escrow tests: one escrow, a client key, two nodes, receipt signing.
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

    function _receipt(address node, uint256 amount) internal view returns (PaymentEscrow.Receipt memory) {
        return PaymentEscrow.Receipt(client, node, SESSION, uint64(amount / 1 gwei), amount, uint64(block.timestamp + 1 hours));
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
