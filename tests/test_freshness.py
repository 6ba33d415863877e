"""freshness.judge, pure: every boundary of the TTL, the refresh-ahead margin and the stale
bound; TTL 0, an infinite TTL, a bound of 0, 404s, and ages a skewed clock makes."""

from __future__ import annotations

import math

import pytest

from cachepi.freshness import MIN_REFRESH_MARGIN, Judgement, judge, refresh_margin

FRESH = Judgement.FRESH
AHEAD = Judgement.FRESH_AND_REFRESH
STALE = Judgement.STALE_AND_REFRESH
WAIT = Judgement.WAIT
DAY = 86400.0


@pytest.mark.parametrize(
    ("ttl", "margin"),
    [
        (1800, 360),  # a fifth
        (600, 120),
        (50, MIN_REFRESH_MARGIN),  # a fifth would be 10: the floor is the same
        (30, MIN_REFRESH_MARGIN),  # a fifth would be 6: at least 10 s ahead
        (20, 10),  # the floor is half the TTL here
        (10, 5),  # never more than half the TTL
        (1, 0.5),
    ],
)
def test_the_refresh_margin_is_a_fifth_at_least_ten_seconds_at_most_half(
    ttl: float, margin: float
) -> None:
    assert refresh_margin(ttl) == pytest.approx(margin)


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0, FRESH),
        (1, FRESH),
        (479.999, FRESH),
        (480, AHEAD),  # the last fifth of 600 s begins
        (599.999, AHEAD),
        (600, STALE),  # expired: stale from the TTL on
        (600 + DAY - 0.001, STALE),
        (600 + DAY, WAIT),  # the bound is exclusive
        (600 + 10 * DAY, WAIT),
    ],
)
def test_a_found_page_with_a_day_of_bound(age: float, expected: Judgement) -> None:
    assert judge(age, 600, DAY, found=True) is expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, FRESH), (480, FRESH), (599.999, FRESH), (600, WAIT), (600 + DAY, WAIT)],
)
def test_a_bound_of_zero_is_the_ttl_alone_without_refreshing_ahead(
    age: float, expected: Judgement
) -> None:
    assert judge(age, 600, 0, found=True) is expected


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, FRESH), (47.999, FRESH), (48, AHEAD), (59.999, AHEAD), (60, WAIT), (61, WAIT)],
)
def test_a_404_may_be_refreshed_ahead_but_is_never_answered_stale(
    age: float, expected: Judgement
) -> None:
    assert judge(age, 60, DAY, found=False) is expected


@pytest.mark.parametrize("age", [-5.0, 0.0, 0.5, 1.0, 1e9])
@pytest.mark.parametrize("found", [True, False])
@pytest.mark.parametrize("bound", [0, DAY])
def test_a_ttl_of_zero_always_waits(age: float, found: bool, bound: float) -> None:
    assert judge(age, 0, bound, found) is WAIT


@pytest.mark.parametrize("age", [0.0, 1e12, math.inf])
def test_an_infinite_ttl_is_always_fresh_and_never_refreshed(age: float) -> None:
    assert judge(age, math.inf, DAY, found=True) is FRESH


@pytest.mark.parametrize("bound", [0, DAY])
def test_a_page_dated_ahead_of_this_clock_counts_as_just_fetched(bound: float) -> None:
    assert judge(-1.0, 600, bound, found=True) is FRESH
    assert judge(-1e6, 600, bound, found=True) is FRESH
    assert judge(-1.0, 10, bound, found=True) is FRESH  # even where the margin is half


def test_an_infinite_bound_answers_any_stale_page() -> None:
    assert judge(1e12, 600, math.inf, found=True) is STALE


def test_an_age_that_is_not_a_number_waits() -> None:
    assert judge(math.nan, 600, DAY, found=True) is WAIT


def test_a_tiny_ttl_refreshes_in_its_second_half_only() -> None:
    assert [judge(age, 1, DAY, True) for age in (0, 0.49, 0.5, 0.99, 1, 2)] == [
        FRESH, FRESH, AHEAD, AHEAD, STALE, STALE,
    ]  # fmt: skip


def test_the_properties_say_what_each_judgement_does() -> None:
    assert [(j.fresh, j.served, j.refreshes) for j in Judgement] == [
        (True, True, False),  # FRESH
        (True, True, True),  # FRESH_AND_REFRESH
        (False, True, True),  # STALE_AND_REFRESH
        (False, False, False),  # WAIT
    ]


@pytest.mark.parametrize("ttl", [1, 5, 30, 180, 600, 1800, 86400])
@pytest.mark.parametrize("bound", [1, 60, DAY])
@pytest.mark.parametrize("found", [True, False])
def test_judgements_follow_each_other_in_order_as_a_page_ages(
    ttl: int, bound: float, found: bool
) -> None:
    """Fresh, then (refresh ahead), then stale (if found), then wait: never back."""
    order = [FRESH, AHEAD, STALE, WAIT]
    ages = [ttl * i / 100 for i in range(0, 100)] + [ttl + bound * i / 10 for i in range(12)]
    seen = [judge(age, ttl, bound, found) for age in ages]
    assert [order.index(j) for j in seen] == sorted(order.index(j) for j in seen)
    assert {FRESH, AHEAD, WAIT} <= set(seen)
    assert (STALE in seen) is found
