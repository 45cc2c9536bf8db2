// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {PaymentEscrow} from "../../src/PaymentEscrow.sol";

/// @notice A node contract whose receive hook always reverts.
contract RevertingNode {
    receive() external payable {
        revert("no ETH");
    }
}

/// @notice A node contract whose receive hook burns every unit of gas it is given.
contract GasBurningNode {
    receive() external payable {
        while (true) {}
    }
}

/// @notice A node contract that accepts ETH, reverts, or burns all its gas, as switched.
contract SwitchNode {
    enum Mode {
        Accept,
        Revert,
        Burn
    }

    Mode public mode;

    function setMode(Mode newMode) external {
        mode = newMode;
    }

    receive() external payable {
        Mode current = mode;
        if (current == Mode.Revert) revert("switched off");
        if (current == Mode.Burn) {
            while (true) {}
        }
    }
}

/// @notice A node contract that counts the transfers it receives (one storage write per transfer).
contract CountingNode {
    uint256 public transfers;

    receive() external payable {
        ++transfers;
    }
}

/// @notice An honest node contract whose receive hook needs `need` gas (up to TRANSFER_GAS), then counts the transfer.
contract HeavyHookNode {
    uint256 public immutable need;
    uint256 public transfers;

    constructor(uint256 need_) {
        need = need_;
    }

    receive() external payable {
        if (gasleft() < need) revert("hook starved");
        ++transfers;
    }
}

/// @notice A client contract that can use the escrow but has no receive hook, so it cannot take ETH back.
contract NoReceiveClient {
    function depositTo(PaymentEscrow escrow) external payable {
        escrow.deposit{value: msg.value}();
    }

    function withdrawFrom(PaymentEscrow escrow, uint256 amount) external {
        escrow.withdraw(amount);
    }
}
