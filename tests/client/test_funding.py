"""Funding a route: `plan_reservation` (pure, table-driven and property-tested) and `Funder` against a real
anvil escrow (one transaction reserves for every hop, the pool pays first, the wallet the rest)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.funding import Funder, InsufficientPool, Need, Reservation, plan_reservation
from tests.chain_fixtures import THAW_S, DevChain

A, B, C = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20


@pytest.mark.parametrize(("needs", "reserved", "pool", "expected"), [
    ([Need(A, 0, 10)], {A: 10}, 0, None),
    ([Need(A, 0, 10)], {A: 15}, 0, None),
    ([Need(A, 5, 10)], {A: 10}, 100, Reservation((A,), (5,), 0)),
    ([Need(A, 0, 10), Need(B, 0, 20)], {}, 25, Reservation((A, B), (10, 20), 5)),
    ([Need(A, 0, 10), Need(B, 0, 20)], {B: 30}, 0, Reservation((A,), (10,), 10)),
    # one node on two hops of a route: its needs add up
    ([Need(A, 3, 10), Need(B, 0, 5), Need(A.upper().replace("0X", "0x"), 0, 7)], {A: 12}, 0,
     Reservation((A, B), (8, 5), 13)),
])
def test_plan(needs: list[Need], reserved: dict[str, int], pool: int, expected: Reservation | None) -> None:
    assert plan_reservation(needs, reserved, pool) == expected


def test_ahead_tops_up_to_several_sessions_only_when_short() -> None:
    assert plan_reservation([Need(A, 5, 10)], {A: 15}, 100, ahead=3) is None  # covered: no transaction
    assert plan_reservation([Need(A, 5, 10)], {A: 14}, 100, ahead=3) == Reservation((A,), (21,), 0)
    with pytest.raises(ValueError):
        plan_reservation([Need(A, 0, 1)], {}, 0, ahead=0)


def test_negative_needs_are_refused() -> None:
    with pytest.raises(ValueError):
        plan_reservation([Need(A, -1, 5)], {}, 0)


addresses = st.sampled_from([A, B, C])


@given(st.lists(st.builds(Need, addresses, st.integers(0, 10**20), st.integers(0, 10**20)), max_size=6),
       st.dictionaries(addresses, st.integers(0, 10**21)), st.integers(0, 10**21), st.integers(1, 5))
def test_plan_tops_every_node_up_exactly(needs: list[Need], reserved: dict[str, int], pool: int,
                                         ahead: int) -> None:
    plan = plan_reservation(needs, reserved, pool, ahead)
    want: dict[str, int] = {}
    target: dict[str, int] = {}
    for need in needs:
        want[need.node] = want.get(need.node, 0) + need.total_wei
        target[need.node] = target.get(need.node, 0) + need.unpaid_wei + ahead * need.session_wei
    added = dict(zip(plan.nodes, plan.amounts_wei, strict=True)) if plan else {}
    for node, total in want.items():
        have = reserved.get(node, 0)
        assert have + added.get(node, 0) >= total  # covered afterwards
        # a node already covered gets nothing; one that falls short is topped up to `ahead` sessions, no more
        assert added.get(node, 0) == (target[node] - have if total > have else 0)
    assert set(added) <= set(want)
    if plan is not None:
        assert all(a > 0 for a in plan.amounts_wei)
        assert plan.deposit_wei == max(plan.total_wei - pool, 0)


def test_funder_on_anvil(dev_chain: DevChain) -> None:
    client = dev_chain.as_account(2)
    node_a, node_b = dev_chain.as_account(3).address, dev_chain.as_account(4).address
    funder = Funder(client, allow_deposit=True, horizon_s=7200, clock=client.block_timestamp)
    client.deposit(5 * 10**15)
    first_needs = [Need(node_a, 0, 4 * 10**15), Need(node_b, 0, 3 * 10**15)]
    first = funder.ensure(first_needs)
    assert first is not None and first.deposit_wei == 2 * 10**15 and first.tx_hash
    assert client.pool_balance(client.address) == 0
    assert client.allocation_of(client.address, node_a).amount_wei == 4 * 10**15
    # While that session runs, a second one with node A needs room for both: 4 + 3 + 1 unpaid > 4 reserved.
    second = funder.ensure([Need(node_a, 10**15, 3 * 10**15)])
    assert second is not None and second.nodes == (node_a,) and second.amounts_wei == (4 * 10**15,)
    funder.release(first_needs)
    funder.release([Need(node_a, 10**15, 3 * 10**15)])
    assert funder.ensure([Need(node_a, 10**15, 3 * 10**15)]) is None  # already covered: no transaction
    funder.release([Need(node_a, 10**15, 3 * 10**15)])
    # A release ending after the horizon still counts; once it ends before the horizon it does not, and the
    # funder tops the allocation up.
    client.request_release([node_b], [10**15])
    assert funder.ensure([Need(node_b, 0, 3 * 10**15)]) is None
    funder.release([Need(node_b, 0, 3 * 10**15)])
    dev_chain.increase_time(THAW_S - 3600)
    topped = funder.ensure([Need(node_b, 0, 3 * 10**15)])
    assert topped is not None and topped.amounts_wei == (10**15,)
    strict = Funder(client, allow_deposit=False, horizon_s=7200, clock=client.block_timestamp)
    with pytest.raises(InsufficientPool) as short:
        strict.ensure([Need(node_a, 0, 9 * 10**15)])  # 8e15 reserved for A after the two sessions above
    assert short.value.shortfall_wei == 10**15 and short.value.pool_wei == 0
    assert sorted(client.allocated_nodes(client.address)) == sorted([node_a, node_b])
