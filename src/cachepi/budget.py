"""A least-recently-used map bounded by the bytes its values cost, not by their count. Pure.

Pages differ in size by four orders of magnitude (a project of one file, one of 20,000): a
bound by count lets a worker's memory reach gigabytes. Each value is put with its cost in
bytes, estimated by the caller; the least recently used go until the sum fits. A value
costing more than the whole budget is not kept at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BudgetedLRU(Generic[K, V]):
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if not kept."""
        held = self._entries.get(key)
        if held is None:
            return None
        self._entries.move_to_end(key)
        return held[0]

    def put(self, key: K, value: V, cost: int) -> None:
        """Keep `value` (replacing what `key` held), dropping the least recently used values
        until every cost fits in the budget."""
        self.pop(key)
        if cost > self.budget:
            return
        self._entries[key] = (value, cost)
        self.used += cost
        while self.used > self.budget:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.used -= dropped

    def pop(self, key: K) -> V | None:
        held = self._entries.pop(key, None)
        if held is None:
            return None
        self.used -= held[1]
        return held[0]

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0
