"""The dashboard (`/`) in a real browser: Debian's chromium driven by Playwright.

No JavaScript is needed by the page; the browser proves that what a person sees and the
forms they submit work: the indexes table, cache numbers, the search form and the
invalidate form with the admin token (and its refusal without the right one).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright

from cachepi.web.keys import METADATA, METRICS
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fetching import fetch, get_json
from tests.system import ensure_debian_package
from tests.warming import finished_job, pylock

pytestmark = pytest.mark.slow  # drives chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-admin-token-0123456789"
ARTIFACT = Path(__file__).parent / "artifacts" / "dashboard.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium: installed with apt-get when missing and we may (root); otherwise
    the browser tests are skipped, saying why, never passed without a browser."""
    return ensure_debian_package(CHROMIUM, "chromium")


async def submit(page: Page, form: str) -> int:
    """Submit the form matching `form` as a person would; the status of the page it leads to
    (after redirects)."""
    async with page.expect_navigation() as navigation:
        await page.locator(f"{form} button, {form} [type=submit]").first.click()
    response = await navigation.value
    assert response is not None
    return response.status


async def test_dashboard_shows_the_cache_and_its_forms_work(
    chromium: Path, fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN, cache_size=10 * 1024**2)
    wheel = fake_upstream.dists("app")[0]
    file_url = f"{proxy.index_url}app/{wheel.filename}"
    assert (await get_json(proxy.index_url + "app/")).status == 200
    assert (await fetch(file_url)).sha256 == wheel.sha256  # a miss
    assert (await fetch(file_url)).sha256 == wheel.sha256  # a hit
    proxy.app[METRICS].flush(proxy.app[METADATA])  # this hour's traffic, for the chart
    async with aiohttp.ClientSession() as session:
        lock = pylock([wheel])  # already cached: the meter below stays as it is
        headers = {"X-Cachepi-Admin-Token": TOKEN}
        async with session.post(f"{proxy.url}/warm", data=lock, headers=headers) as response:
            assert response.status == 202
            await finished_job(session, (await response.json())["url"])

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)  # a missing element fails fast, not in 30 s
            response = await page.goto(proxy.url + "/")
            assert response is not None and response.status == 200

            indexes = await page.locator("#indexes").inner_text()
            assert fake_upstream.url in indexes
            assert "ok" in indexes
            assert "1800" in indexes  # the TTL

            meter = page.locator("#cache meter")
            assert await meter.count() == 1
            value = float(await meter.get_attribute("value") or "nan")
            maximum = float(await meter.get_attribute("max") or "1")
            assert value / maximum == pytest.approx(wheel.size / (10 * 1024**2), rel=0.01)
            assert wheel.filename in await page.locator("#recent").inner_text()
            assert await page.locator("#traffic svg rect.cache").count() == 24
            assert "done" in await page.locator("#warm").inner_text()
            assert "app" in await page.locator("#biggest").inner_text()

            # Search an exact cached project: its pages and its cached file.
            await page.locator("#search input[name=q]").fill("app")
            assert await submit(page, "#search") == 200
            assert "q=app" in page.url
            result = await page.locator("#result").inner_text()
            assert wheel.filename in result
            assert "fresh" in result  # its page, fetched moments ago
            await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
            # A prefix lists the cached projects starting with it.
            await page.locator("#search input[name=q]").fill("ap")
            assert await submit(page, "#search") == 200
            assert "app" in await page.locator("#result").inner_text()

            # A wrong token is refused and invalidates nothing.
            await page.goto(proxy.url + "/")
            form = "#invalidate-project"
            await page.locator(f"{form} input[name=project]").fill("app")
            await page.locator(f"{form} input[name=token]").fill("wrong-token-but-long-enough")
            assert await submit(page, form) in (401, 403)
            before = fake_upstream.count("/simple/app/")
            assert (await get_json(proxy.index_url + "app/")).status == 200
            assert fake_upstream.count("/simple/app/") == before

            # The right token invalidates: the next page request goes upstream again.
            await page.goto(proxy.url + "/")
            await page.locator(f"{form} input[name=project]").fill("app")
            await page.locator(f"{form} input[name=token]").fill(TOKEN)
            assert await submit(page, form) == 200  # back to the dashboard
            assert (await get_json(proxy.index_url + "app/")).status == 200
            assert fake_upstream.count("/simple/app/") == before + 1
        finally:
            await browser.close()

    shot = tmp_path / "dashboard.png"
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACT)
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000
