"""How a held upstream page stands, by its age: fresh, fresh but to be refreshed ahead of
its expiry, stale but good to answer while it is revalidated, or too old to answer without
the upstream. Pure: upstream_pages.py does what the judgement says.

With a stale bound (`STALE_WHILE_REVALIDATE`) of 0, a page is fresh within its TTL and
waited for past it, as before the bound existed; refreshing ahead comes with the bound, as
both serve one end (no client waits for a page it asks for often).
"""

from __future__ import annotations

import enum
import math

# A hot page is refreshed in the last fifth of its TTL...
REFRESH_AHEAD_SHARE = 0.2
# ...but no later than this before it expires (an upstream may take seconds: `PAGE_TIMEOUT`
# is 10 by default)...
MIN_REFRESH_MARGIN = 10.0
# ...and never in the first half of its TTL (a TTL of a few seconds would otherwise refresh
# on every request).
MAX_REFRESH_SHARE = 0.5


class Judgement(enum.Enum):
    FRESH = "fresh"  # answer with it; nothing else
    FRESH_AND_REFRESH = "fresh, refresh ahead"  # answer with it; refresh it in the background
    STALE_AND_REFRESH = "stale, revalidate"  # answer with it, marked stale; revalidate behind
    WAIT = "wait"  # revalidate, and answer with what that gives

    @property
    def fresh(self) -> bool:
        return self is Judgement.FRESH or self is Judgement.FRESH_AND_REFRESH

    @property
    def served(self) -> bool:
        """Whether the held page answers at once."""
        return self is not Judgement.WAIT

    @property
    def refreshes(self) -> bool:
        """Whether a background refresh is due."""
        return self is Judgement.FRESH_AND_REFRESH or self is Judgement.STALE_AND_REFRESH


def refresh_margin(ttl: float) -> float:
    """How long before a page's expiry a request for it starts its refresh."""
    return min(max(ttl * REFRESH_AHEAD_SHARE, MIN_REFRESH_MARGIN), ttl * MAX_REFRESH_SHARE)


def judge(age: float, ttl: float, stale_bound: float, found: bool) -> Judgement:
    """How a page fetched `age` seconds ago stands, for an index whose pages stay fresh
    `ttl` seconds (for a 404, the negative TTL), stale pages being answered for
    `stale_bound` seconds past it (0: never). `found`: the upstream had the page (a 404 is
    never answered stale: a project that appears upstream must show at once).

    A TTL of 0 asks the upstream every time, whatever the bound: the operator wants every
    answer to be the upstream's. A negative age (a clock behind the one that dated the
    page) counts as just fetched.
    """
    if not ttl > 0:
        return Judgement.WAIT
    if math.isinf(ttl):
        return Judgement.FRESH
    age = max(age, 0.0)
    swr = stale_bound > 0
    if age < ttl:
        if swr and age >= ttl - refresh_margin(ttl):
            return Judgement.FRESH_AND_REFRESH
        return Judgement.FRESH
    if swr and found and age - ttl < stale_bound:
        return Judgement.STALE_AND_REFRESH
    return Judgement.WAIT
