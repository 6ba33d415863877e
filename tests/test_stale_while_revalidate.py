"""Stale-while-revalidate against a delayed upstream, end to end: a real `cachepi serve` with
two workers in front of a fake upstream whose page answers take 3 s.

Timings are asserted structurally: every answer arrived before the one revalidation could
have ended (the upstream's own record of when it answered it), not against a stopwatch.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.fakeupstream import FakeUpstream
from tests.fetching import JSON, Reply, fetch
from tests.served import ServedProxy

UPSTREAM_SECONDS = 3.0
# A page is dated by when it was asked for: the 3 s revalidation brings a page 3 s old, which
# must be fresh for a while yet, and not already in its last part (refreshed ahead: the
# last half of a 10 s TTL), for "one revalidation" to be exact.
TTL = 10
CLIENTS = 24
PAGE = "/simple/hot/"


def filenames(reply: Reply) -> list[str]:
    return [file["filename"] for file in json.loads(reply.body)["files"]]


@pytest.mark.slow  # waits out a 10 s TTL, then a 3 s upstream
async def test_a_stale_page_is_answered_at_once_while_one_slow_revalidation_runs(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    fake_upstream.add_project("hot", ["1.0"], sdist=False)
    # STALE_WHILE_REVALIDATE is left at its default (a day).
    served = ServedProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, workers=2,
        options=("--index-ttl", str(TTL)),
    )  # fmt: skip
    await served.start()
    try:
        url = served.index_url + "hot/"
        first = await fetch(url, headers=JSON)
        assert (first.status, first.stale) == (200, False)
        old = filenames(first)
        fake_upstream.add_project("hot", ["2.0"], sdist=False)
        fake_upstream.delay(PAGE, UPSTREAM_SECONDS)
        await asyncio.sleep(TTL + 0.2)  # past the TTL (and not asked in its last part)
        loop = asyncio.get_running_loop()

        async def timed() -> tuple[Reply, float]:
            reply = await fetch(url, headers=JSON)  # a connection of its own: either worker
            return reply, loop.time()

        answers = await asyncio.gather(*(timed() for _ in range(CLIENTS)))
        await fake_upstream.wait_for_requests(PAGE, 2)
        revalidation = fake_upstream.requests_to(PAGE)[-1]
        for reply, _ in answers:
            assert (reply.status, reply.stale, filenames(reply)) == (200, True, old)
            assert reply.headers["Cache-Control"] == "no-cache"
        # Not one answer waited for the revalidation: it was still unanswered when the last
        # answer arrived.
        last_answer = max(arrived for _, arrived in answers)
        assert revalidation.finished is None or last_answer < revalidation.finished
        assert fake_upstream.count(PAGE) == 2  # one revalidation, for both workers

        async with asyncio.timeout(UPSTREAM_SECONDS + 10):
            while revalidation.finished is None:  # noqa: ASYNC110 - the log has no event
                await asyncio.sleep(0.05)
        assert revalidation.status == 200  # the page changed: a whole new page
        # The other worker learns of it by its own refresh, which finds the store's page
        # fresh and asks nothing; once both know, every answer is the new page, unmarked.
        async with asyncio.timeout(TTL / 2 - UPSTREAM_SECONDS):  # before it is refreshed ahead
            while True:
                replies = await asyncio.gather(*(fetch(url, headers=JSON) for _ in range(8)))
                if not any(reply.stale for reply in replies):
                    break
                await asyncio.sleep(0.1)
        assert {len(filenames(reply)) for reply in replies} == {len(old) + 1}
        assert fake_upstream.count(PAGE) == 2  # the first fetch, and ONE revalidation
    finally:
        await served.stop()
