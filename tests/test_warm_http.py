"""`POST /warm` and `GET /warm/{id}` (web/warmjobs.py) against cachepi in front of the fake
upstream: a lock's files fetched once into the cache, progress as JSON from any process on
the cache, the admin token, malformed locks, files the index lacks, the body cap, the bound
on jobs, a job the server stopped, and the README's CI recipe with curl and jq."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from cachepi.policy import Policy, parse_rule
from cachepi.warm.jobs import RUNNING_AT_ONCE
from cachepi.web.keys import METADATA
from cachepi.web.warmjobs import BODY_LIMIT
from tests.clients import run
from tests.conftest import ProxyFactory
from tests.fakeupstream import Dist, FakeUpstream
from tests.proxy import RunningProxy
from tests.system import ensure_debian_package
from tests.warming import add_native, blob_path, finished_job, pylock

TOKEN = "warm-admin-token-0123456789"


def locked(upstream: FakeUpstream) -> list[Dist]:
    """What a lock of `app` names: every file of app 1.0, lib 1.1 and util-pkg 0.5."""
    return [
        d
        for project, version in (("app", "1.0"), ("lib", "1.1"), ("util-pkg", "0.5"))
        for d in upstream.dists(project)
        if d.version == version
    ]


async def post(
    session: aiohttp.ClientSession, proxy: RunningProxy, body: str | bytes, query: str = "",
    **headers: str,
) -> aiohttp.ClientResponse:  # fmt: skip
    async with session.post(f"{proxy.url}/warm{query}", data=body, headers=headers) as response:
        await response.read()
        return response


async def test_a_posted_lock_is_warmed_once_and_reported(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    dists = locked(fake_upstream)
    async with aiohttp.ClientSession() as session:
        # The lock was made against another mirror: only names and hashes matter.
        response = await post(session, proxy, pylock(dists), "?filename=pylock.toml")
        assert response.status == 202, await response.text()
        started = await response.json()
        assert response.headers["Location"] == started["url"]
        assert response.headers["Cache-Control"] == "no-store"
        assert started["url"] == f"{proxy.url}/warm/{started['id']}"
        assert (started["source"], started["format"]) == ("pylock.toml", "pylock.toml")
        report = await finished_job(session, started["url"])
        assert report["status"] == "done", report
        size = sum(d.size for d in dists)
        assert (report["files"], report["cached"], report["already"], report["failed"]) == (
            6, 6, 0, 0
        )  # fmt: skip
        assert report["bytes"] == report["done_bytes"] == size
        assert report["done_files"] == 6 and report["failures"] == []
        for dist in dists:
            assert blob_path(proxy.settings.cache_dir, dist.sha256).is_file(), dist.filename
            assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 1

        again = await post(session, proxy, pylock(dists), "?filename=pylock.toml")
        report = await finished_job(session, (await again.json())["url"])
    assert (report["cached"], report["already"], report["done_bytes"]) == (0, 6, size)
    for dist in dists:
        assert fake_upstream.count(fake_upstream.file_path(dist.filename)) == 1


async def test_files_the_index_lacks_are_reported_and_the_others_cached(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    app = fake_upstream.dists("app")
    ghost = Dist.from_bytes("app-9.9-py3-none-any.whl", b"never listed")
    stranger = Dist.from_bytes("nobody-1.0.tar.gz", b"no such project")
    wrong = Dist.from_bytes(app[1].filename, b"other bytes than the index's")
    body = pylock([app[0], ghost, stranger]) + pylock([wrong]).split("\n", 2)[2]
    async with aiohttp.ClientSession() as session:
        response = await post(session, proxy, body, "?filename=pylock.toml")
        report = await finished_job(session, (await response.json())["url"])
    assert report["status"] == "done"
    assert (report["files"], report["cached"], report["failed"]) == (4, 1, 3)
    reasons = {f["file"]: f["reason"] for f in report["failures"]}
    assert reasons == {
        ghost.filename: "the index lists no such file of app",
        stranger.filename: "the index has no project nobody",
        wrong.filename: f"the index's file is not the lock's: sha256 {app[1].sha256[:16]}…,"
        f" the lock says {wrong.sha256[:16]}…",
    }
    assert blob_path(proxy.settings.cache_dir, app[0].sha256).is_file()
    assert not blob_path(proxy.settings.cache_dir, app[1].sha256).exists()


async def test_what_the_policy_refuses_is_reported_with_its_reason(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    policy = Policy(deny=(parse_rule("lib==1.1"), parse_rule("util-pkg")))
    proxy = await proxy_factory(fake_upstream, policy=policy)
    dists = locked(fake_upstream)
    async with aiohttp.ClientSession() as session:
        response = await post(session, proxy, pylock(dists))
        report = await finished_job(session, (await response.json())["url"])
    assert (report["cached"], report["failed"]) == (2, 4)  # app's two files
    reasons = {f["file"]: f["reason"] for f in report["failures"]}
    lib = [d.filename for d in dists if d.project == "lib"]
    assert reasons == {
        **{name: f"{name} is denied by the policy rule 'lib==1.1'" for name in lib},
        **{
            d.filename: "refused: util-pkg is denied by the policy rule 'util-pkg'"
            for d in dists
            if d.project == "util-pkg"
        },
    }
    assert not any(fake_upstream.count(fake_upstream.file_path(name)) for name in lib)


async def test_a_file_the_upstream_fails_to_send_is_reported(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    dists = locked(fake_upstream)
    fake_upstream.fail(fake_upstream.file_path(dists[0].filename), 500)
    async with aiohttp.ClientSession() as session:
        response = await post(session, proxy, pylock(dists))
        report = await finished_job(session, (await response.json())["url"])
    assert (report["cached"], report["failed"]) == (len(dists) - 1, 1)
    (failure,) = report["failures"]
    assert failure["file"] == dists[0].filename and "500" in failure["reason"], failure


async def test_the_query_narrows_the_lock_to_targets(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    native = add_native(fake_upstream)
    app = fake_upstream.dists("app")
    query = "?platform=manylinux_2_28_x86_64&python-version=3.12&only-wheels"
    async with aiohttp.ClientSession() as session:
        response = await post(session, proxy, pylock(native + app), query)
        report = await finished_job(session, (await response.json())["url"])
    assert report["narrowing"] == "platform manylinux_2_28_x86_64, python 3.12, wheels only"
    fetched = {
        d.filename for d in native + app if fake_upstream.count(fake_upstream.file_path(d.filename))
    }
    assert fetched == {"native-1.0-cp312-cp312-manylinux_2_28_x86_64.whl", app[0].filename}
    assert report["cached"] == 2


async def test_a_malformed_lock_is_a_400_naming_its_line(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    text = pylock(locked(fake_upstream)).replace("[[packages]]", "[[packages]", 2)
    line = text.splitlines().index("[[packages]") + 1
    async with aiohttp.ClientSession() as session:
        response = await post(session, proxy, text, "?filename=pylock.toml")
        assert response.status == 400
        assert (await response.text()).startswith(f"pylock.toml, line {line}: not valid TOML")
        response = await post(session, proxy, "app\nlib>=1\n", "?filename=requirements.txt")
        assert response.status == 400
        assert "requirements without --hash name projects, not files" in await response.text()
        response = await post(session, proxy, pylock([]), "?platform=many%20linux")
        assert response.status == 400
        assert "'many linux' is not a platform tag" in await response.text()
    assert proxy.app[METADATA].overview(0, 0, 10).jobs == []  # no job was started


async def test_the_admin_token_is_needed_when_one_is_set(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    body = pylock(fake_upstream.dists("util-pkg"))
    async with aiohttp.ClientSession() as session:
        assert (await post(session, proxy, body)).status == 401
        assert (
            await post(session, proxy, body, **{"X-Cachepi-Admin-Token": "x" * 20})
        ).status == 401
        accepted = await post(session, proxy, body, **{"X-Cachepi-Admin-Token": TOKEN})
        assert accepted.status == 202
        bearer = await post(session, proxy, body, Authorization=f"Bearer {TOKEN}")
        assert bearer.status == 202
        # Progress needs no token: an unguessable id, and what the dashboard shows anyway.
        report = await finished_job(session, (await accepted.json())["url"])
    assert report["already"] + report["cached"] == 2


async def test_a_body_up_to_the_routes_own_cap_is_taken(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    body = pylock(fake_upstream.dists("lib")) + "# padding\n" * 20_000  # 200 KB: above 64 KiB
    async with aiohttp.ClientSession() as session:
        assert (await post(session, proxy, body)).status == 202
        too_big = b"#" * (BODY_LIMIT + 1)
        assert (await post(session, proxy, too_big)).status == 413


async def test_any_process_on_the_cache_reports_a_job(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    """Workers share the cache directory; what one runs, another reports (a job's report is
    in the metadata store), also while it runs."""
    first = await proxy_factory(fake_upstream)
    second = await proxy_factory(fake_upstream, reconcile=False)
    dists = locked(fake_upstream)
    fake_upstream.hang(fake_upstream.file_path(dists[0].filename))
    async with aiohttp.ClientSession() as session:
        response = await post(session, first, pylock(dists))
        job = (await response.json())["id"]
        await fake_upstream.wait_for_requests(fake_upstream.file_path(dists[0].filename))
        async with session.get(f"{second.url}/warm/{job}") as seen:
            assert seen.status == 200
            assert (await seen.json())["status"] == "running"
        fake_upstream.clear()
        report = await finished_job(session, f"{second.url}/warm/{job}")
        assert report["status"] == "done" and report["cached"] == len(dists)
        async with session.get(f"{second.url}/warm/no-such-job") as missing:
            assert missing.status == 404


async def test_a_worker_runs_a_few_jobs_at_once(
    fake_upstream: FakeUpstream, proxy: RunningProxy
) -> None:
    dists = locked(fake_upstream)
    fake_upstream.hang(fake_upstream.file_path(dists[0].filename))
    async with aiohttp.ClientSession() as session:
        for _ in range(RUNNING_AT_ONCE):
            assert (await post(session, proxy, pylock(dists))).status == 202
        refused = await post(session, proxy, pylock(dists))
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "10"
        fake_upstream.clear()


async def test_a_job_the_server_stopped_says_so(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(fake_upstream)
    dists = locked(fake_upstream)
    fake_upstream.hang(fake_upstream.file_path(dists[0].filename))
    async with aiohttp.ClientSession() as session:
        job = (await (await post(session, proxy, pylock(dists))).json())["id"]
        await fake_upstream.wait_for_requests(fake_upstream.file_path(dists[0].filename))
        await proxy.stop()
        fake_upstream.clear()
        later = await proxy_factory(fake_upstream, reconcile=False)
        report = await finished_job(session, f"{later.url}/warm/{job}")
    assert report["status"] == "failed"
    assert report["error"] == "the server stopped before the job was done"


def readme_recipe() -> str:
    """The README's `ci/warm.sh`, as it is written there."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    match = re.search(r"```sh\n(# ci/warm.sh .*?)```", readme, re.DOTALL)
    assert match, "the README has no ci/warm.sh"
    return match[1]


async def test_the_readmes_ci_recipe_warms_with_curl_and_jq(
    fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    ensure_debian_package("curl", "curl")
    ensure_debian_package("jq", "jq")
    proxy = await proxy_factory(fake_upstream, admin_token=TOKEN)
    script = tmp_path / "warm.sh"
    script.write_text(readme_recipe())
    good, bad = tmp_path / "good" / "pylock.toml", tmp_path / "bad" / "pylock.toml"
    for path in (good, bad):
        path.parent.mkdir()
    good.write_text(pylock(locked(fake_upstream)))
    bad.write_text(pylock([Dist.from_bytes("lib-7.0.tar.gz", b"not on the index")]))
    env = {"PATH": "/usr/bin:/bin", "CACHEPI": proxy.url, "CACHEPI_ADMIN_TOKEN": TOKEN}

    warmed = await run("sh", script, good, "only-wheels=1", env=env)
    assert warmed.returncode == 0, warmed.output
    assert '"cached": 3' in warmed.output and '"failed": 0' in warmed.output, warmed.output
    wheels = [d for d in locked(fake_upstream) if d.is_wheel]
    assert all(blob_path(proxy.settings.cache_dir, d.sha256).is_file() for d in wheels)

    failed = await run("sh", script, bad, env=env)
    assert failed.returncode == 1, failed.output
    assert "the index lists no such file of lib" in failed.output
    refused = await run("sh", script, good, env=env | {"CACHEPI_ADMIN_TOKEN": "wrong" * 4})
    assert refused.returncode == 2, refused.output
    assert "this needs the admin token" in refused.output
    broken = tmp_path / "uv.lock"
    broken.write_text('version = 1\n\n[[package]\nname = "lib"\n')
    malformed = await run("sh", script, broken, env=env)
    assert malformed.returncode == 2, malformed.output
    assert "uv.lock, line 3: not valid TOML" in malformed.output, malformed.output
