"""Password checks without HTTP: failure limits on a fake clock (attempts.py)."""

from __future__ import annotations

import pytest

from cachepi.web.attempts import FailedAttempts

# -- failure limits ------------------------------------------------------------------------


def test_a_key_is_limited_after_its_burst_then_one_failure_per_period() -> None:
    limits = FailedAttempts(burst=3, every=10.0, capacity=100)
    for _ in range(2):
        limits.fail("a", 0.0)
        assert limits.retry_after("a", 0.0) == 0
    limits.fail("a", 0.0)
    assert limits.retry_after("a", 0.0) == 10
    assert limits.retry_after("a", 4.0) == 6
    assert limits.retry_after("b", 0.0) == 0  # keys are apart
    assert limits.retry_after("a", 10.0) == 0  # one failure forgiven: one more try
    limits.fail("a", 10.0)
    assert limits.retry_after("a", 10.0) == 10
    assert limits.retry_after("a", 40.0) == 0
    limits.fail("a", 40.0)
    limits.fail("a", 40.0)
    assert limits.retry_after("a", 40.0) == 0  # all drained by then: a new burst


def test_failing_on_while_limited_does_not_lengthen_the_wait() -> None:
    limits = FailedAttempts(burst=3, every=10.0, capacity=100)
    assert [limits.fail("a", 0.0) for _ in range(5)] == [1, 1, 1, 0, 0]
    assert limits.retry_after("a", 0.0) == 10
    assert limits.fail("a", 5.0) == pytest.approx(0.5)
    assert limits.retry_after("a", 5.0) == 10


def test_forgiving_takes_back_what_a_failure_added() -> None:
    limits = FailedAttempts(burst=2, every=10.0, capacity=100)
    limits.fail("a", 0.0)
    added = limits.fail("a", 0.0)
    limits.forgive("a", added, 0.0)
    assert limits.retry_after("a", 0.0) == 0
    at_the_cap = limits.fail("a", 0.0), limits.fail("a", 0.0)
    assert at_the_cap == (1, 0)
    limits.forgive("a", at_the_cap[1], 0.0)
    assert limits.retry_after("a", 0.0) == 10  # still limited
    for _ in range(3):
        limits.forgive("a", 1, 0.0)  # never below nothing
    limits.fail("a", 0.0)
    assert limits.retry_after("a", 0.0) == 0


def test_failures_are_kept_for_a_bounded_number_of_keys() -> None:
    limits = FailedAttempts(burst=1, every=60.0, capacity=3)
    for key in ("a", "b", "c"):
        limits.fail(key, 0.0)
    limits.fail("a", 1.0)  # "a" failed last now: "b" is the oldest
    limits.fail("d", 1.0)
    assert [limits.retry_after(key, 1.0) > 0 for key in "abcd"] == [True, False, True, True]
