// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {EscrowFixture} from "./utils/EscrowFixture.sol";
import {Vm, console} from "./utils/Test.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";
import {OfferRegistry} from "../src/OfferRegistry.sol";

/// @notice Reports a call's cost as a transaction: 21,000 + calldata + execution (vm.lastCallGas), before refunds.
abstract contract GasMeter is EscrowFixture {
    function _calldataGas(bytes memory data) internal pure returns (uint256 gas) {
        for (uint256 i; i < data.length; ++i) {
            gas += data[i] == 0 ? 4 : 16;
        }
    }

    function _report(string memory what, bytes memory data) internal view returns (uint256 txGas) {
        Vm.Gas memory used = vm.lastCallGas();
        txGas = 21_000 + _calldataGas(data) + used.gasTotalUsed;
        console.log(string.concat(what, ": execution / tx gas"), used.gasTotalUsed, txGas);
        if (used.gasRefunded != 0) console.log(string.concat(what, ": refund"), uint256(int256(used.gasRefunded)));
    }
}

/// @notice Gas of claims and batches, on cold storage and funded node EOAs, as in a fresh transaction.
contract EscrowGasTest is GasMeter {
    bytes32 internal constant FIRST = "first";
    PaymentEscrow.Receipt internal laterReceipt;
    bytes internal laterSig;
    PaymentEscrow.Receipt internal firstReceipt;
    bytes internal firstSig;
    PaymentEscrow.Receipt[] internal batch10;
    bytes[] internal sigs10;
    PaymentEscrow.Receipt[] internal batch10Nodes;
    bytes[] internal sigs10Nodes;

    function setUp() public override {
        super.setUp();
        vm.deal(nodeA, 1);
        address[] memory nodes = new address[](11);
        uint256[] memory amounts = new uint256[](11);
        nodes[0] = nodeA;
        amounts[0] = 10 ether;
        for (uint256 i = 1; i <= 10; ++i) {
            nodes[i] = address(uint160(0xE000 + i));
            amounts[i] = 1 ether;
            vm.deal(nodes[i], 1);
        }
        vm.prank(client);
        escrow.reserve{value: 20 ether}(nodes, amounts);
        // A session that was already claimed once, and its next receipt.
        PaymentEscrow.Receipt memory r = _receipt(nodeA, 0.1 ether);
        escrow.claim(r, _sign(CLIENT_KEY, r));
        laterReceipt = _receipt(nodeA, 0.2 ether);
        laterSig = _sign(CLIENT_KEY, laterReceipt);
        firstReceipt = _receiptOf(client, nodeA, FIRST, 0.1 ether);
        firstSig = _sign(CLIENT_KEY, firstReceipt);
        PaymentEscrow.Receipt memory b;
        for (uint256 i; i < 10; ++i) {
            b = _receiptOf(client, nodeA, bytes32(0x10 + i), 0.1 ether);
            batch10.push(b);
            sigs10.push(_sign(CLIENT_KEY, b));
            b = _receiptOf(client, nodes[i + 1], bytes32(0x20 + i), 0.1 ether);
            batch10Nodes.push(b);
            sigs10Nodes.push(_sign(CLIENT_KEY, b));
        }
    }

    function test_gas_claimFirstReceiptOfASession() public {
        escrow.claim(firstReceipt, firstSig);
        uint256 txGas =
            _report("claim, first receipt of a session", abi.encodeCall(escrow.claim, (firstReceipt, firstSig)));
        assertLe(txGas, 110_000, "claim (first) stays cheap");
    }

    function test_gas_claimLaterReceiptOfASession() public {
        escrow.claim(laterReceipt, laterSig);
        uint256 txGas =
            _report("claim, later receipt of a session", abi.encodeCall(escrow.claim, (laterReceipt, laterSig)));
        assertLe(txGas, 95_000, "claim (later) stays cheap");
    }

    function test_gas_claimBatchOneVersusTen() public {
        // The 1-item batch pays another node, so the 10-item batch still meets cold storage and a cold node.
        PaymentEscrow.Receipt[] memory one = new PaymentEscrow.Receipt[](1);
        bytes[] memory oneSig = new bytes[](1);
        (one[0], oneSig[0]) = (batch10Nodes[0], sigs10Nodes[0]);
        escrow.claimBatch(one, oneSig);
        uint256 gasOne = _report("claimBatch, 1 first-claim", abi.encodeCall(escrow.claimBatch, (one, oneSig)));
        escrow.claimBatch(batch10, sigs10);
        uint256 gasTen =
            _report("claimBatch, 10 first-claims, one node", abi.encodeCall(escrow.claimBatch, (batch10, sigs10)));
        console.log("claimBatch marginal gas per item (one node)", (gasTen - gasOne) / 9);
        assertLe((gasTen - gasOne) / 9, 50_000, "marginal item");
    }

    function test_gas_claimBatchTenNodes() public {
        escrow.claimBatch(batch10Nodes, sigs10Nodes);
        uint256 ten = _report(
            "claimBatch, 10 first-claims, 10 nodes", abi.encodeCall(escrow.claimBatch, (batch10Nodes, sigs10Nodes))
        );
        console.log("claimBatch gas per item (10 nodes)", ten / 10);
    }
}

/// @notice Gas of a fresh client's first reserve for three fresh nodes, paying with msg.value.
contract ReserveGasTest is GasMeter {
    address internal fresh = address(0xF2E54);

    function setUp() public override {
        super.setUp();
        vm.deal(fresh, 10 ether);
    }

    function test_gas_reserveThreeFreshNodesWithValue() public {
        address[] memory nodes = new address[](3);
        (nodes[0], nodes[1], nodes[2]) = (address(0xF1), address(0xF2), address(0xF3));
        uint256[] memory amounts = new uint256[](3);
        (amounts[0], amounts[1], amounts[2]) = (1 ether, 1 ether, 1 ether);
        vm.prank(fresh);
        escrow.reserve{value: 3 ether}(nodes, amounts);
        uint256 txGas = _report(
            "reserve, fresh client, 3 fresh nodes, msg.value", abi.encodeCall(escrow.reserve, (nodes, amounts))
        );
        assertLe(txGas, 120_000, "reserve");
    }
}

/// @notice Gas of pruning expired offers: one call over 200 expired offers, and one over a single offer.
contract PruneGasTest is GasMeter {
    bytes32 internal constant MODEL = keccak256("model");
    OfferRegistry internal registry;

    function setUp() public override {
        super.setUp();
        registry = new OfferRegistry(10 minutes, 0.01 ether, 2 days, 1 days, 5_000);
        for (uint256 i; i < 200; ++i) {
            address owner = address(uint160(0x5BA0000 + i / 10));
            uint256 bond = i % 10 == 0 ? 0.01 ether : 0; // each owner bonds with its first offer
            vm.deal(owner, bond);
            vm.prank(owner);
            registry.register{value: bond}(MODEL, 0, 1, 1, "http://127.0.0.1:8001");
        }
        vm.warp(_now() + 10 minutes + 1 days + 1);
    }

    function test_gas_prunePerOffer() public {
        uint256 snapshot = vm.snapshotState();
        registry.prune(MODEL, 0, 1);
        uint256 one = _report("prune, 1 expired offer", abi.encodeCall(registry.prune, (MODEL, 0, 1)));
        vm.revertToStateAndDelete(snapshot);
        vm.cool(address(registry));
        registry.prune(MODEL, 0, 200);
        uint256 all = _report("prune, 200 expired offers", abi.encodeCall(registry.prune, (MODEL, 0, 200)));
        console.log("prune gas per offer (marginal, before refunds)", (all - one) / 199);
        console.log("prune gas per offer of 200, after the refund (capped at 1/5)", (all - all / 5) / 200);
        assertLe((all - one) / 199, 40_000, "prune per offer");
    }
}

/// @notice Gas of bonded registration and of slashing: a fresh node's first offer with its bond (into a model that
///         already has an offer), a bonded node's next offer, and slashes of a node with 1 and with 16 offers.
contract BondGasTest is GasMeter {
    bytes32 internal constant MODEL = keccak256("model");
    uint256 internal constant NODE_KEY = 0xB0B1;
    OfferRegistry internal registry;
    address internal bonded;
    address internal reporter = address(0x4E90);

    function setUp() public override {
        super.setUp();
        registry = new OfferRegistry(10 minutes, 0.01 ether, 2 days, 1 days, 5_000);
        vm.deal(address(0x0FFE), 1 ether);
        vm.prank(address(0x0FFE));
        registry.register{value: 0.01 ether}(MODEL, 0, 10, 1, "http://127.0.0.1:9000");
        bonded = vm.addr(NODE_KEY);
        vm.deal(bonded, 1 ether);
        vm.deal(reporter, 1);
    }

    function test_gas_registerBonded() public {
        bytes memory data = abi.encodeCall(registry.register, (MODEL, 10, 20, 2e12, "http://127.0.0.1:9001"));
        vm.prank(bonded);
        registry.register{value: 0.01 ether}(MODEL, 10, 20, 2e12, "http://127.0.0.1:9001");
        uint256 first = _report("register, first offer with its bond", data);
        vm.cool(address(registry));
        vm.prank(bonded);
        registry.register(MODEL, 10, 20, 2e12, "http://127.0.0.1:9001");
        uint256 next = _report("register, a bonded node's next offer", data);
        assertLe(first, 205_000, "bonded registration stays near the unbonded one (194,990 before bonds)");
        assertLe(next, 205_000, "next offer");
    }

    function test_gas_slashOneAndSixteenOffers() public {
        uint256 one = _slash(1);
        uint256 sixteen = _slash(16);
        console.log("slash gas per removed offer (marginal)", (sixteen - one) / 15);
        assertLe(one, 150_000, "slash, 1 offer");
        assertLe(sixteen, 600_000, "slash, 16 offers (bounded by MAX_OFFERS_PER_NODE)");
    }

    function _slash(uint256 offers) internal returns (uint256 txGas) {
        uint256 snapshot = vm.snapshotState();
        for (uint256 i; i < offers; ++i) {
            vm.prank(bonded);
            registry.register{value: i == 0 ? 0.01 ether : 0}(MODEL, 10, 20, 2e12, "http://127.0.0.1:9001");
        }
        OfferRegistry.Commitment memory a = OfferRegistry.Commitment(
            keccak256("s"), 12, 1, keccak256("in"), keccak256("a"), MODEL, 10, 20, uint64(_now())
        );
        OfferRegistry.Commitment memory b = OfferRegistry.Commitment(
            keccak256("s"), 12, 1, keccak256("in"), keccak256("b"), MODEL, 10, 20, uint64(_now())
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(NODE_KEY, registry.commitmentDigest(a));
        bytes memory sigA = abi.encodePacked(r, s, v);
        (v, r, s) = vm.sign(NODE_KEY, registry.commitmentDigest(b));
        bytes memory sigB = abi.encodePacked(r, s, v);
        vm.cool(address(registry));
        vm.prank(reporter);
        registry.slash(a, sigA, b, sigB);
        txGas = _report(
            offers == 1 ? "slash, node with 1 offer" : "slash, node with 16 offers",
            abi.encodeCall(registry.slash, (a, sigA, b, sigB))
        );
        vm.revertToStateAndDelete(snapshot);
    }
}
