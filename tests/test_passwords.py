"""Password checks without HTTP: failure limits on a fake clock (attempts.py), the password
file and its decoy (htpasswd.py), and which thread checks what (passwords.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import pytest
from argon2 import PasswordHasher, extract_parameters

from cachepi.web.attempts import FailedAttempts
from cachepi.web.htpasswd import (
    RELOAD_SECONDS,
    Htpasswd,
    Users,
    cost,
    decoy,
    parse,
    verify_password,
)
from cachepi.web.passwords import PasswordChecks, Verdict, address_key


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def argon2_hash(password: str, time_cost: int = 1) -> str:
    return PasswordHasher(time_cost=time_cost, memory_cost=1024, parallelism=1).hash(password)


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


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        (None, ""),
        ("/run/cachepi.sock", "/run/cachepi.sock"),
    ],
)
def test_failures_count_per_ipv4_address_and_ipv6_64(remote: str | None, key: str) -> None:
    assert address_key(remote) == key


def names(users: Users | None) -> set[str]:
    assert users is not None
    return set(users.hashes)


# -- the password file ---------------------------------------------------------------------


def test_the_file_keeps_bcrypt_and_argon2_users_and_names_what_it_ignores() -> None:
    alice, bob = bcrypt_hash("a"), argon2_hash("b")
    carol = "$2y$" + bcrypt_hash("c").removeprefix("$2b$")
    users, ignored = parse(
        f"# users\n\nalice:{alice}\nbob:{bob}\r\ncarol:{carol}\ndave:plain\n"
        "erin:$apr1$abc$def\nno colon here\nfrank:$2b$99$" + "a" * 53 + "\n"
    )
    assert users.hashes == {"alice": alice, "bob": bob, "carol": carol}
    assert ignored == ["dave", "erin", "line 8", "frank"]
    assert parse("# nobody\n")[0].decoy is None


@pytest.mark.parametrize(
    "stored",
    [
        bcrypt_hash("x", 5),
        "$2y$" + bcrypt_hash("x", 6).removeprefix("$2b$"),
        "$2a$" + bcrypt_hash("x", 4).removeprefix("$2b$"),
        argon2_hash("x", time_cost=3),
    ],
    ids=["bcrypt", "bcrypt-2y", "bcrypt-2a", "argon2id"],
)
def test_a_decoy_has_the_kind_and_cost_of_its_model_and_matches_no_password(
    stored: str,
) -> None:
    fake = decoy(stored)
    assert fake != stored and len(fake) == len(stored)
    assert cost(fake) == cost(stored) and cost(stored) is not None
    if stored.startswith("$argon2"):
        assert extract_parameters(fake) == extract_parameters(stored)
    assert verify_password("x", stored)
    assert not verify_password("x", fake)


def test_the_decoy_is_modelled_on_the_cost_most_users_have() -> None:
    text = "".join(f"u{i}:{bcrypt_hash('p', 5)}\n" for i in range(3)) + f"a:{argon2_hash('p')}\n"
    assert cost(parse(text)[0].decoy or "") == "bcrypt 05"


def test_an_unreadable_file_lets_nobody_in_is_logged_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcrypt_hash('a')}\n")
    htpasswd = Htpasswd(path)
    assert names(htpasswd.users(0.0)) == {"alice"}
    path.unlink()
    assert htpasswd.users(1.0) is not None  # looked at every RELOAD_SECONDS only
    caplog.set_level(logging.INFO, "cachepi.web.htpasswd")
    for poll in range(1, 5):
        assert htpasswd.users(poll * RELOAD_SECONDS) is None
    path.mkdir()  # unreadable as a file
    assert htpasswd.users(5 * RELOAD_SECONDS) is None
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    path.rmdir()
    path.write_text(f"bob:{bcrypt_hash('b')}\n")
    assert names(htpasswd.users(6 * RELOAD_SECONDS)) == {"bob"}
    assert "can be read again" in caplog.records[-1].getMessage()


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcrypt_hash('a')}\n")
    htpasswd = Htpasswd(path)
    htpasswd.users(0.0)
    path.write_text(f"alice:{bcrypt_hash('a')}\nbob:{bcrypt_hash('b')}\n")
    assert names(htpasswd.users(RELOAD_SECONDS - 0.1)) == {"alice"}
    assert names(htpasswd.users(RELOAD_SECONDS)) == {"alice", "bob"}


# -- checks: remembered, limited, on their own threads --------------------------------------


class Checker:
    """A PasswordChecks on a fake clock whose verifier (the real one) records what it checks
    and on which thread."""

    def __init__(self, path: Path, users: dict[str, str]) -> None:
        path.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in users.items()))
        self.now = 0.0
        self.seen: list[tuple[str, str, str]] = []  # password, stored hash, thread name
        self.lock = threading.Lock()
        self.checks = PasswordChecks(Htpasswd(path), self._verify, lambda: self.now)

    def _verify(self, password: str, stored: str) -> bool:
        with self.lock:
            self.seen.append((password, stored, threading.current_thread().name))
        return verify_password(password, stored)

    def threads(self) -> list[str]:
        return [name.rpartition("_")[0] for _, _, name in self.seen]


@pytest.fixture
async def checker(tmp_path: Path) -> AsyncIterator[Checker]:
    checker = Checker(tmp_path / "htpasswd", {"alice": "a-secret", "bob": "b-secret"})
    yield checker
    checker.checks.close()


async def test_right_credentials_are_remembered_and_then_not_checked(checker: Checker) -> None:
    checks = checker.checks
    assert (await checks.check("alice", "a-secret", "192.0.2.1")).verdict is Verdict.PASS
    for _ in range(3):
        assert (await checks.check("alice", "a-secret", "192.0.2.2")).verdict is Verdict.PASS
    assert len(checker.seen) == 1
    assert (await checks.check("alice", "b-secret", "192.0.2.1")).verdict is Verdict.WRONG
    assert len(checker.seen) == 2


async def test_an_unknown_user_is_checked_against_a_decoy_of_the_files_cost(
    checker: Checker,
) -> None:
    assert (await checker.checks.check("mallory", "a-secret", "192.0.2.1")).verdict is (
        Verdict.WRONG
    )
    [(password, stored, _)] = checker.seen
    assert password == "a-secret" and cost(stored) == "bcrypt 04"


async def test_over_the_limit_wrong_ones_are_limited_on_their_own_thread_right_ones_pass(
    checker: Checker,
) -> None:
    checks, address = checker.checks, "192.0.2.1"
    verdicts = [(await checks.check(f"user{i}", "guess", address)).verdict for i in range(25)]
    assert verdicts == [Verdict.WRONG] * 19 + [Verdict.LIMITED] * 6
    assert checker.threads() == ["password"] * 20 + ["password-suspect"] * 5
    limited = await checks.check("alice", "guess", address)
    assert (limited.verdict, limited.retry_after) == (Verdict.LIMITED, 3)
    # Right credentials from the limited address: checked (on the suspect thread), let in.
    assert (await checks.check("bob", "b-secret", address)).verdict is Verdict.PASS
    assert checker.threads()[-1] == "password-suspect"
    # Another address is not limited by it.
    assert (await checks.check("user0", "guess", "192.0.2.2")).verdict is Verdict.WRONG
    assert checker.threads()[-1] == "password"
    # In time, the address is let try again.
    checker.now += 3
    assert (await checks.check("user99", "guess", address)).verdict is Verdict.LIMITED
    assert checker.threads()[-1] == "password"


async def test_a_user_guessed_at_from_many_addresses_is_limited_but_gets_in(
    checker: Checker,
) -> None:
    checks = checker.checks
    verdicts = [(await checks.check("alice", f"g{i}", f"192.0.2.{i}")).verdict for i in range(12)]
    assert verdicts == [Verdict.WRONG] * 9 + [Verdict.LIMITED] * 3
    assert (await checks.check("alice", "a-secret", "198.51.100.1")).verdict is Verdict.PASS
    assert checker.threads()[-1] == "password-suspect"


async def test_simultaneous_guesses_cannot_all_take_the_normal_threads(
    checker: Checker,
) -> None:
    outcomes = await asyncio.gather(
        *(checker.checks.check(f"user{i}", f"g{i}", "192.0.2.1") for i in range(50))
    )
    assert checker.threads().count("password") == 20
    assert checker.threads().count("password-suspect") == 30
    assert {o.verdict for o in outcomes} <= {Verdict.WRONG, Verdict.LIMITED}
    assert not any(name.startswith("asyncio") for _, _, name in checker.seen)


async def test_suspect_checks_take_turns_by_address(checker: Checker) -> None:
    checks = checker.checks
    for i in range(20):  # both addresses over their limit
        await checks.check(f"a{i}", "g", "192.0.2.1")
        await checks.check(f"b{i}", "g", "192.0.2.2")
    checker.seen.clear()
    flood = [asyncio.ensure_future(checks.check("x", f"flood{i}", "192.0.2.1")) for i in range(8)]
    await asyncio.sleep(0)  # the flood is queued first
    assert (await checks.check("bob", "b-secret", "192.0.2.2")).verdict is Verdict.PASS
    await asyncio.gather(*flood)
    # One of the flood was being checked; bob came next, not after the other seven.
    assert [password for password, _, _ in checker.seen].index("b-secret") <= 2


async def test_simultaneous_checks_of_the_same_credentials_run_once(checker: Checker) -> None:
    outcomes = await asyncio.gather(
        *(checker.checks.check("alice", "a-secret", f"192.0.2.{i}") for i in range(10))
    )
    assert {o.verdict for o in outcomes} == {Verdict.PASS}
    assert len(checker.seen) == 1


async def test_nobody_gets_in_while_the_file_cannot_be_read(
    checker: Checker, tmp_path: Path
) -> None:
    checks = checker.checks
    assert (await checks.check("alice", "a-secret", "192.0.2.1")).verdict is Verdict.PASS
    text = (tmp_path / "htpasswd").read_text()
    (tmp_path / "htpasswd").unlink()
    checker.now += RELOAD_SECONDS
    assert not checks.readable()
    for user, password in [("alice", "a-secret"), ("bob", "b-secret"), ("bob", "wrong")]:
        assert (await checks.check(user, password, "192.0.2.1")).verdict is Verdict.UNAVAILABLE
    (tmp_path / "htpasswd").write_text(text)
    checker.now += RELOAD_SECONDS
    assert checks.readable()
    assert (await checks.check("alice", "a-secret", "192.0.2.1")).verdict is Verdict.PASS
