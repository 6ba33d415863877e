"""Access control: an admin token guards invalidation; an htpasswd file guards everything
but /health. And invalidation is cheap: it marks pages stale, it cannot stampede."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher

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
