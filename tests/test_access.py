"""Access control: an admin token guards invalidation; an htpasswd file guards everything
but /health. And invalidation is cheap: it marks pages stale, it cannot stampede."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from argon2 import PasswordHasher

from cachepi.web.auth import ADMIN_TOKEN_HEADER, private
from cachepi.web.htpasswd import RELOAD_SECONDS
from cachepi.web.origin import cross_site
from tests.clients import pip_install, uv_install
from tests.conftest import ProxyFactory
from tests.fakeupstream import FakeUpstream
from tests.fetching import JSON, Reply, fetch, get_json
from tests.proxy import RunningProxy

TOKEN = "a-long-admin-token-0123456789"
USERS = {"alice": "wonderland-7", "bob": "builder-42", "carol": "singer-99"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def write_htpasswd(path: Path) -> Path:
    """alice: bcrypt $2b$, bob: argon2id, carol: bcrypt written as Apache's $2y$."""
    alice = bcrypt.hashpw(USERS["alice"].encode(), bcrypt.gensalt(rounds=4)).decode()
    bob = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(USERS["bob"])
    carol = bcrypt.hashpw(USERS["carol"].encode(), bcrypt.gensalt(rounds=4)).decode()
    assert alice.startswith("$2b$") and bob.startswith("$argon2id$")
    carol = "$2y$" + carol.removeprefix("$2b$")
    path.write_text(f"# users\nalice:{alice}\nbob:{bob}\ncarol:{carol}\n")
    return path


# -- the admin token ----------------------------------------------------------------------


async def invalidations(proxy: RunningProxy, headers: dict[str, str]) -> list[Reply]:
    return [
        await fetch(proxy.url + "/cache/list", method="DELETE", headers=headers),
        await fetch(proxy.url + "/cache/lib", method="DELETE", headers=headers),
        await fetch(
            proxy.url + "/cache/invalidate",
            method="POST",
            data={"project": "lib"},
            headers=headers,
            allow_redirects=False,
        ),
    ]


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token-but-long-enough"), bearer(""), {"Authorization": TOKEN}],
    ids=["none", "wrong", "empty", "no-scheme"],
)
async def test_invalidation_without_the_admin_token_is_401(
    headers: dict[str, str], fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    await get_json(proxy.index_url + "lib/")
    for reply in await invalidations(proxy, headers):
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    await get_json(proxy.index_url + "lib/")
    assert fake_upstream.count("/simple/lib/") == 1  # nothing was invalidated


async def test_invalidation_with_the_admin_token_works_and_reads_stay_open(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    replies = await invalidations(proxy, bearer(TOKEN))
    assert [r.status for r in replies] == [200, 200, 303]
    form = await fetch(
        proxy.url + "/cache/invalidate",
        method="POST",
        data={"project": "lib", "token": TOKEN},
        allow_redirects=False,
    )
    assert form.status == 303
    wheel = fake_upstream.dists("lib")[0]
    for url in (
        proxy.url + "/",
        proxy.url + "/health",
        proxy.index_url,
        proxy.index_url + "lib/",
        f"{proxy.index_url}lib/{wheel.filename}",
    ):
        assert (await fetch(url)).status == 200, url


async def test_invalidations_cannot_stampede_the_upstream(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    before = await get_json(proxy.index_url + "lib/")
    for _ in range(50):
        reply = await fetch(proxy.url + "/cache/lib", method="DELETE", headers=bearer(TOKEN))
        assert reply.status == 200
    fake_upstream.delay("/simple/lib/", 0.3)  # all 50 requests arrive while it is asked
    pages = await asyncio.gather(*(get_json(proxy.index_url + "lib/") for _ in range(50)))
    assert {(p.status, p.body) for p in pages} == {(200, before.body)}
    revalidations = fake_upstream.requests_to("/simple/lib/")[1:]
    assert len(revalidations) <= 1
    assert all(r.headers.get("If-None-Match") and r.status == 304 for r in revalidations)


async def test_an_invalidated_page_is_still_served_stale_when_upstream_is_down(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    before = await get_json(proxy.index_url + "lib/")
    await fetch(proxy.url + "/cache/lib", method="DELETE", headers=bearer(TOKEN))
    await fake_upstream.stop()
    after = await get_json(proxy.index_url + "lib/")
    assert (after.status, after.stale, after.body) == (200, True, before.body)


# -- basic auth from an htpasswd file -----------------------------------------------------


@pytest.fixture
async def guarded(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> RunningProxy:
    return await proxy_factory(fake_upstream, htpasswd=write_htpasswd(tmp_path / "htpasswd"))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("alice", "wrong"),
        basic("mallory", "anything"),
        basic("alice", ""),
        {"Authorization": "Basic"},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()},
        bearer(TOKEN),
    ],
    ids=[
        "none",
        "wrong-password",
        "unknown-user",
        "empty-password",
        "no-credentials",
        "not-base64",
        "no-colon",
        "not-utf8",
        "bearer",
    ],
)
async def test_every_endpoint_but_health_needs_basic_auth(
    headers: dict[str, str], guarded: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    wheel = fake_upstream.dists("lib")[0]
    for method, url in [
        ("GET", guarded.url + "/"),
        ("GET", guarded.index_url),
        ("GET", guarded.index_url + "lib/"),
        ("GET", f"{guarded.index_url}lib/{wheel.filename}"),
        ("HEAD", f"{guarded.index_url}lib/{wheel.filename}"),
        ("GET", guarded.url + "/simple/lib/"),
        ("DELETE", guarded.url + "/cache/lib"),
        ("GET", guarded.url + "/nowhere"),
    ]:
        reply = await fetch(url, method=method, headers=headers)
        assert reply.status == 401, (method, url, reply.status)
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="cachepi"'
    assert (await fetch(guarded.url + "/health")).status == 200
    assert fake_upstream.requests == []


@pytest.mark.parametrize("user", USERS)
async def test_bcrypt_and_argon2_users_get_in(
    user: str, guarded: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    wheel = fake_upstream.dists("lib")[0]
    credentials = basic(user, USERS[user])
    page = await fetch(guarded.index_url + "lib/", headers=credentials | JSON)
    assert page.status == 200
    file = await fetch(f"{guarded.index_url}lib/{wheel.filename}", headers=credentials)
    assert (file.status, file.sha256) == (200, wheel.sha256)


@pytest.mark.slow  # real pip and uv runs
@pytest.mark.parametrize("installer", ["pip", "uv"])
async def test_installers_use_credentials_in_the_index_url(
    installer: str, guarded: RunningProxy, tmp_path: Path
) -> None:
    install = {"pip": pip_install, "uv": uv_install}[installer]
    index_url = f"http://alice:{USERS['alice']}@127.0.0.1:{guarded.port}/index/"
    result = await install(index_url, tmp_path / "t", "app", home=tmp_path)
    installed = {p.name for p in (tmp_path / "t").iterdir() if (p / "__init__.py").is_file()}
    assert installed == {"app", "lib", "util_pkg"}, result.output
    assert guarded.seen and all("Authorization" in s.headers for s in guarded.seen)


# -- password checks: equal cost, limits, their own threads --------------------------------


def write_users(path: Path, rounds: int, **users: str) -> Path:
    path.write_text(
        "".join(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()}\n"
            for user, password in users.items()
        )
    )
    return path


async def timed(url: str, headers: dict[str, str], session: aiohttp.ClientSession) -> float:
    started = time.perf_counter()
    reply = await fetch(url, headers=headers, session=session)
    assert reply.status == 401
    return time.perf_counter() - started


async def test_an_unknown_user_is_refused_as_slowly_as_a_wrong_password(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    path = write_users(tmp_path / "htpasswd", 10, alice=USERS["alice"])
    proxy = await proxy_factory(fake_upstream, htpasswd=path)
    known, unknown = [], []
    async with aiohttp.ClientSession() as session:
        for i in range(7):  # fewer failures than any limit allows; interleaved, so that a
            # busy moment of the machine slows both alike
            known.append(await timed(proxy.index_url, basic("alice", f"w{i}"), session))
            unknown.append(await timed(proxy.index_url, basic("mallory", f"w{i}"), session))
    print(
        f"wrong password {statistics.median(known):.4f} s, unknown user"
        f" {statistics.median(unknown):.4f} s"
    )
    # A bcrypt check at cost 10 takes tens of milliseconds, an HTTP round trip far less.
    assert statistics.median(known) > 0.01
    assert statistics.median(unknown) >= statistics.median(known) / 2, (known, unknown)


async def test_over_the_limit_wrong_credentials_get_429_and_right_ones_still_get_in(
    guarded: RunningProxy,
) -> None:
    statuses = [
        (await fetch(guarded.index_url, headers=basic(f"guess{i}", "guess"))).status
        for i in range(20)
    ]
    assert statuses == [401] * 19 + [429]
    limited = await fetch(guarded.index_url, headers=basic("alice", "wrong"))
    assert limited.status == 429 and limited.one_line
    assert 1 <= int(limited.headers["Retry-After"]) <= 3
    # From the same address (127.0.0.1): right credentials never checked before get in.
    for user in USERS:
        assert (await fetch(guarded.index_url, headers=basic(user, USERS[user]))).status == 200
    assert (await fetch(guarded.index_url, headers=basic("alice", "wrong"))).status == 429


@pytest.mark.slow  # 40 clients guess at cost-11 bcrypt hashes for a few seconds
async def test_guessers_do_not_slow_down_a_client_whose_credentials_are_right(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    for i in range(12):
        fake_upstream.add_project(f"p{i}", ["1.0"], sdist=False)
    others = {f"user{k}": f"password{k}" for k in range(4)}  # known: a full check each
    path = write_users(tmp_path / "htpasswd", 11, alice=USERS["alice"], **others)
    proxy = await proxy_factory(fake_upstream, htpasswd=path)
    alice = basic("alice", USERS["alice"]) | JSON

    async def pages(names: range) -> float:
        """Mean seconds for project pages never asked before: each is fetched upstream,
        then parsed and rendered on the default thread pool."""
        started = time.perf_counter()
        for i in names:
            assert (await fetch(f"{proxy.index_url}p{i}/", headers=alice)).status == 200
        return (time.perf_counter() - started) / len(names)

    assert (await fetch(proxy.index_url, headers=alice)).status == 200  # now remembered
    alone = await pages(range(6))
    refused: list[int] = []
    checking = asyncio.Event()

    async def guess(n: int) -> None:
        for i in itertools.count():
            reply = await fetch(proxy.index_url, headers=basic(f"user{n % 4}", f"guess-{i}"))
            refused.append(reply.status)
            checking.set()

    guessers = [asyncio.create_task(guess(n)) for n in range(40)]
    try:
        await checking.wait()  # checks have begun, most of the first 40 are still waiting
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, time.perf_counter)
        default_pool_wait = time.perf_counter() - started
        besieged = await pages(range(6, 12))
    finally:
        for guesser in guessers:
            guesser.cancel()
        await asyncio.gather(*guessers, return_exceptions=True)
    print(
        f"pages alone {alone:.3f} s, with 40 guessers {besieged:.3f} s, {refused.count(429)}"
        f" of {len(refused)} guesses 429; default pool {default_pool_wait:.3f} s"
    )
    assert set(refused) <= {401, 429}
    # On a shared pool, the next job would wait behind the guesses (~0.1 s each).
    assert default_pool_wait < 0.25
    assert besieged < 5 * alone + 0.5, (alone, besieged)


@pytest.mark.slow  # the file is looked at every 5 s: two looks while it is gone, one after
async def test_without_its_password_file_the_proxy_lets_nobody_in_and_says_so_once(
    guarded: RunningProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = basic("alice", USERS["alice"])
    assert (await fetch(guarded.index_url, headers=alice)).status == 200  # remembered
    path = tmp_path / "htpasswd"
    text = path.read_text()
    caplog.set_level(logging.INFO, "cachepi.web.htpasswd")
    path.unlink()
    refused = await poll(guarded.index_url, alice, 503)
    assert refused.one_line and refused.headers["Retry-After"] == "5"
    assert b"htpasswd" not in refused.body  # the path is for the log only
    deadline = time.monotonic() + RELOAD_SECONDS + 1
    while time.monotonic() < deadline:  # past the next look at the file
        for headers in (alice, basic("bob", USERS["bob"]), basic("bob", "wrong")):
            assert (await fetch(guarded.index_url, headers=headers)).status == 503
        health = await fetch(guarded.url + "/health")
        assert (health.status, json.loads(health.body)) == (200, {"status": "degraded"})
        await asyncio.sleep(0.2)
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
    assert str(path) in caplog.text
    path.write_text(text)
    await poll(guarded.index_url, alice, 200)
    assert (await fetch(guarded.index_url, headers=basic("bob", USERS["bob"]))).status == 200
    assert json.loads((await fetch(guarded.url + "/health")).body) == {"status": "ok"}


async def poll(url: str, headers: dict[str, str], status: int) -> Reply:
    """The first reply with `status`, asking every 0.1 s for up to two looks at the file."""
    deadline = time.monotonic() + 2 * RELOAD_SECONDS
    while (reply := await fetch(url, headers=headers)).status != status:
        assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.1)
    return reply


# -- the admin token alongside basic auth --------------------------------------------------


async def test_the_admin_token_has_its_own_header_beside_basic_auth(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd")
    proxy = await proxy_factory(fake_upstream, htpasswd=htpasswd, admin_token=TOKEN)
    alice = basic("alice", USERS["alice"])
    await fetch(proxy.index_url + "lib/", headers=alice | JSON)
    for headers in ({}, {ADMIN_TOKEN_HEADER: "wrong-token-but-long-enough"}):
        reply = await fetch(proxy.url + "/cache/lib", method="DELETE", headers=alice | headers)
        # The user is in (a 401 would say the password is wrong): not allowed is 403.
        assert (reply.status, reply.one_line) == (403, True)
        assert ADMIN_TOKEN_HEADER.encode() in reply.body
    admin = alice | {ADMIN_TOKEN_HEADER: TOKEN}
    for target in ("/cache/lib", "/cache/list"):
        reply = await fetch(proxy.url + target, method="DELETE", headers=admin)
        assert reply.status == 200
    # The token still needs a user: basic auth comes first.
    alone = await fetch(proxy.url + "/cache/lib", method="DELETE", headers=bearer(TOKEN))
    assert alone.status == 401
    form = await fetch(
        proxy.url + "/cache/invalidate",
        method="POST",
        data={"project": "lib", "token": TOKEN},
        headers=alice | {"Origin": proxy.url},
        allow_redirects=False,
    )
    assert form.status == 303
    assert (await fetch(proxy.index_url + "lib/", headers=alice | JSON)).status == 200
    assert fake_upstream.count("/simple/lib/") == 2  # the first invalidation took


async def test_without_basic_auth_the_token_header_works_too(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    headers = {ADMIN_TOKEN_HEADER: TOKEN}
    reply = await fetch(proxy.url + "/cache/lib", method="DELETE", headers=headers)
    assert reply.status == 200


# -- responses under auth are for one client -----------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "private"),
        ("max-age=600, public", "max-age=600, private"),
        ("max-age=365000000, immutable", "max-age=365000000, immutable, private"),
        ("no-cache", "no-cache, private"),
        ("Public,s-maxage=60 , max-age=5", "max-age=5, private"),
        ("private, max-age=1", "max-age=1, private"),
    ],
)
def test_private_keeps_what_a_cache_control_says_but_for_sharing(
    given: str | None, expected: str
) -> None:
    assert private(given) == expected


async def test_every_response_under_auth_is_private(
    guarded: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    alice = basic("alice", USERS["alice"])
    wheel = fake_upstream.dists("lib")[0]
    file_url = f"{guarded.index_url}lib/{wheel.filename}"
    page = await fetch(guarded.index_url + "lib/", headers=alice | JSON)
    file = await fetch(file_url, headers=alice)
    replies = {
        "page": page,
        "page 304": await fetch(
            guarded.index_url + "lib/",
            headers=alice | JSON | {"If-None-Match": page.headers["ETag"]},
        ),
        "file": file,
        "file hit": await fetch(file_url, headers=alice),
        "file 304": await fetch(file_url, headers=alice | {"If-None-Match": file.headers["ETag"]}),
        "file HEAD": await fetch(file_url, method="HEAD", headers=alice),
        "dashboard": await fetch(guarded.url + "/", headers=alice),
        "metrics": await fetch(guarded.url + "/metrics", headers=alice),
        "404": await fetch(guarded.index_url + "no-such-project/", headers=alice),
        "401": await fetch(guarded.index_url + "lib/"),
        "health": await fetch(guarded.url + "/health"),
    }
    assert [(k, r.status) for k, r in replies.items() if r.status >= 400] == [
        ("404", 404),
        ("401", 401),
    ]
    assert replies["page 304"].status == replies["file 304"].status == 304
    for what, reply in replies.items():
        directives = [d.strip() for d in reply.headers["Cache-Control"].split(",")]
        assert "private" in directives and "public" not in directives, what
    assert replies["page"].headers["Cache-Control"] == "max-age=600, private"
    assert replies["page 304"].headers["Cache-Control"] == "max-age=600, private"
    assert replies["file"].headers["Cache-Control"] == "max-age=365000000, immutable, private"


async def test_without_auth_pages_stay_public(proxy: RunningProxy) -> None:
    page = await get_json(proxy.index_url + "lib/")
    assert page.headers["Cache-Control"] == "max-age=600, public"


# -- /health -------------------------------------------------------------------------------


async def test_health_without_credentials_says_only_ok_or_degraded(
    guarded: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    anonymous = await fetch(guarded.url + "/health")
    assert (anonymous.status, json.loads(anonymous.body)) == (200, {"status": "ok"})
    detailed = await fetch(guarded.url + "/health", headers=basic("alice", USERS["alice"]))
    document = json.loads(detailed.body)
    assert document["status"] == "ok" and document["indexes"][0]["url"] == fake_upstream.url
    assert {"node", "storage", "metadata"} <= document.keys()
    wrong = await fetch(guarded.url + "/health", headers=basic("alice", "wrong"))
    assert wrong.status == 401  # guessing here counts as anywhere
    await fake_upstream.stop()  # an index fails: degraded, and why is for users
    await fetch(guarded.index_url + "new-project/", headers=basic("alice", USERS["alice"]))
    anonymous = await fetch(guarded.url + "/health")
    assert json.loads(anonymous.body) == {"status": "degraded"}
    assert b"127.0.0.1" not in anonymous.body


async def test_health_without_auth_keeps_every_detail(
    proxy: RunningProxy, fake_upstream: FakeUpstream
) -> None:
    document = json.loads((await fetch(proxy.url + "/health")).body)
    assert document["indexes"][0]["url"] == fake_upstream.url and "node" in document


# -- cross-site form posts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "referer", "refused"),
    [
        ("http://proxy.example", None, False),
        ("http://PROXY.example:80", "https://elsewhere.example/", False),
        (None, "http://proxy.example/?q=lib", False),
        (None, None, False),  # not a browser
        ("https://proxy.example", None, True),  # another scheme
        ("http://proxy.example:8080", None, True),  # another port
        ("http://evil.example", "http://proxy.example/", True),  # Origin decides
        ("http://proxy.example.evil.example", None, True),
        ("null", None, True),  # a hidden origin cannot be told from another
        ("", None, True),
        (None, "http://evil.example/proxy.example", True),
        (None, "not a url", True),
    ],
)
def test_cross_site_is_decided_by_origin_then_referer(
    origin: str | None, referer: str | None, refused: bool
) -> None:
    assert cross_site(origin, referer, "http", "proxy.example") is refused


def test_cross_site_compares_ports_and_ipv6_hosts() -> None:
    assert not cross_site("https://[::1]:8443", None, "https", "[::1]:8443")
    assert not cross_site("https://proxy.example", None, "https", "proxy.example:443")
    assert cross_site("http://[::1]:8443", None, "https", "[::1]:8443")


async def test_the_invalidation_form_refuses_posts_from_other_sites(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    await get_json(proxy.index_url + "lib/")

    async def post(headers: dict[str, str]) -> Reply:
        return await fetch(
            proxy.url + "/cache/invalidate",
            method="POST",
            data={"project": "lib", "token": TOKEN},
            headers=headers,
            allow_redirects=False,
        )

    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page"},
        {"Origin": f"http://localhost:{proxy.port}"},  # another host name is another site
    ):
        reply = await post(headers)
        assert (reply.status, reply.one_line) == (403, True), headers
    await get_json(proxy.index_url + "lib/")
    assert fake_upstream.count("/simple/lib/") == 1  # nothing was invalidated
    assert (await post({"Origin": proxy.url})).status == 303
    assert (await post({"Referer": proxy.url + "/?q=lib"})).status == 303
    # Not from a browser: no Origin, no Referer.
    assert (await post({})).status == 303
    delete = await fetch(proxy.url + "/cache/lib", method="DELETE", headers=bearer(TOKEN))
    assert delete.status == 200
