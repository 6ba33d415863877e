"""Failed password attempts per key (a client address, a user name), pure: the caller passes
the time, so tests drive it with a fake clock.

Each key holds a level that every failure raises by one, up to `burst`, and that drains by
one every `every` seconds (a leaky bucket). A key is limited while its level is above
`burst - 1`: after `burst` failures in quick succession, then for `every` seconds after each
further one. At most `capacity` keys are kept, those that failed least recently dropped
first, so that varying addresses or names cannot grow memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable


class FailedAttempts:
    def __init__(self, burst: int, every: float, capacity: int) -> None:
        self.burst = burst
        self.every = every
        self._capacity = capacity
        self._levels: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # level, at

    def _level(self, key: Hashable, now: float) -> float:
        level, at = self._levels.get(key, (0.0, now))
        return max(0.0, level - (now - at) / self.every)

    def fail(self, key: Hashable, now: float) -> float:
        """Count a failure; what it added to the level (less than 1 at the cap)."""
        before = self._level(key, now)
        # Capped: what a limited key suffers is where it is checked (passwords.py), and how
        # long it is told to wait stays at most `every`.
        after = min(before + 1, self.burst)
        self._levels[key] = (after, now)
        self._levels.move_to_end(key)
        if len(self._levels) > self._capacity:
            self._levels.popitem(last=False)
        return after - before

    def forgive(self, key: Hashable, added: float, now: float) -> None:
        """Take back what `fail` added for an attempt that turned out not to be one."""
        if key in self._levels:
            level = self._level(key, now) - added
            if level > 0:
                self._levels[key] = (level, now)
            else:
                del self._levels[key]

    def retry_after(self, key: Hashable, now: float) -> int:
        """Whole seconds until the key is no longer limited; 0 when it is not."""
        excess = self._level(key, now) - (self.burst - 1)
        # Less a nanosecond, so that float error does not round 6.000000000000001 up to 7.
        return math.ceil(excess * self.every - 1e-9) if excess > 0 else 0
