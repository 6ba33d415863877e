"""The access log's buffer: lines go out together, soon, and all of them by a graceful stop."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from pathlib import Path

import pytest

from cachepi.web import accesslog
from cachepi.web.accesslog import FLUSH_BYTES, FLUSH_SECONDS, LineBuffer, keep_log_order
from tests.fakeupstream import FakeUpstream
from tests.fetching import get_json
from tests.served import ServedProxy


async def test_lines_wait_then_go_out_together_within_the_flush_interval() -> None:
    out = io.StringIO()
    lines = LineBuffer(out)
    lines.add("one\n")
    lines.add("two\n")
    assert out.getvalue() == ""
    await asyncio.sleep(FLUSH_SECONDS + 0.2)
    assert out.getvalue() == "one\ntwo\n"
    lines.add("three\n")  # a new batch has a timer of its own
    await asyncio.sleep(FLUSH_SECONDS + 0.2)
    assert out.getvalue() == "one\ntwo\nthree\n"


async def test_a_full_buffer_goes_out_at_once_and_flush_sends_the_rest() -> None:
    out = io.StringIO()
    lines = LineBuffer(out)
    line = "x" * 99 + "\n"
    count = -(-FLUSH_BYTES // len(line))  # the line that fills it sends them all
    for _ in range(count - 1):
        lines.add(line)
    assert out.getvalue() == ""
    lines.add(line)
    assert out.getvalue() == line * count
    lines.add("last\n")
    lines.flush()
    assert out.getvalue().endswith(line + "last\n")
    lines.flush()  # nothing waiting: nothing written
    assert out.getvalue().count("last\n") == 1


def test_off_the_event_loop_a_line_is_written_at_once() -> None:
    out = io.StringIO()
    LineBuffer(out).add("now\n")
    assert out.getvalue() == "now\n"


async def test_a_log_record_goes_out_after_the_access_lines_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    lines = LineBuffer(out)
    monkeypatch.setattr(accesslog, "LINES", lines)
    keep_log_order()
    lines.add("GET /a\n")
    logging.getLogger("cachepi.test").warning("after a")
    assert out.getvalue() == "GET /a\nafter a\n"


async def test_a_graceful_stop_writes_every_line(
    fake_upstream: FakeUpstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    """Lines still waiting when SIGTERM comes are written before the workers exit (the
    flush interval made an hour here, so that only the stop can write them)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import cachepi.web.accesslog as a\na.FLUSH_SECONDS = 3600.0\n"
    )
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    server = ServedProxy(
        fake_upstream.url, tmp_path / "cache", unused_tcp_port, workers=2,
        env={"PYTHONPATH": path},
    )  # fmt: skip
    await server.start()
    try:
        sent = 30
        replies = await asyncio.gather(*(get_json(server.index_url + "lib/") for _ in range(sent)))
        assert {r.status for r in replies} == {200}
        await asyncio.sleep(0.5)
        assert not page_lines(server), "held in the buffer until the stop"
    finally:
        await server.stop()
    assert len(page_lines(server)) == sent, server.log_text()


def page_lines(server: ServedProxy) -> list[str]:
    return [line for line in server.log if '"GET /index/lib/ HTTP/1.1" 200' in line]
