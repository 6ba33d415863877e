"""The byte-budgeted LRU the page caches keep their memory in. Pure."""

from __future__ import annotations

from cachepi.budget import BudgetedLRU


def test_the_least_recently_used_go_until_the_costs_fit() -> None:
    lru: BudgetedLRU[str, int] = BudgetedLRU(100)
    lru.put("a", 1, 40)
    lru.put("b", 2, 40)
    assert lru.get("a") == 1  # now b is the least recently used
    lru.put("c", 3, 40)
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (1, None, 3)
    assert lru.used == 80 and len(lru) == 2


def test_one_big_value_pushes_out_many_small_ones() -> None:
    lru: BudgetedLRU[int, str] = BudgetedLRU(1000)
    for i in range(100):
        lru.put(i, "x", 10)
    lru.put(-1, "big", 950)
    assert len(lru) == 6 and lru.used == 1000
    assert -1 in lru and 94 not in lru and 95 in lru


def test_a_value_costing_more_than_the_budget_is_not_kept_and_drops_nothing() -> None:
    lru: BudgetedLRU[str, str] = BudgetedLRU(100)
    lru.put("kept", "x", 60)
    lru.put("huge", "y", 101)
    assert "huge" not in lru and lru.get("kept") == "x" and lru.used == 60


def test_replacing_and_popping_keep_the_sum_exact() -> None:
    lru: BudgetedLRU[str, str] = BudgetedLRU(100)
    lru.put("a", "x", 30)
    lru.put("a", "y", 50)
    assert lru.used == 50 and lru.get("a") == "y"
    assert lru.pop("a") == "y" and lru.pop("a") is None
    lru.put("b", "z", 10)
    lru.clear()
    assert lru.used == 0 and len(lru) == 0
