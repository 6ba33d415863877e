"""A circuit breaker for a shared store: after a failure, calls fail fast for a while, so an
outage costs one timeout every couple of seconds instead of one per request."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from cachepi.store.protocols import StoreHealth, StoreUnavailable

T = TypeVar("T")
_RETRY_AFTER = 2.0  # seconds of failing fast after the store did not answer


class Breaker:
    """Runs calls to one store, records its health, and turns its failures into
    StoreUnavailable. `answers` are exceptions that are answers, not failures (not found,
    already exists)."""

    def __init__(
        self,
        name: str,
        failures: tuple[type[Exception], ...],
        answers: tuple[type[Exception], ...] = (),
    ) -> None:
        self.health = StoreHealth()
        self._name = name
        self._failures = failures
        self._answers = answers
        self._retry_at = 0.0

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around one call (which may await)."""
        if not self.health.healthy and time.monotonic() < self._retry_at:
            raise StoreUnavailable(f"{self._name}: {self.health.last_error}")
        try:
            yield
        except self._answers:
            self.health.ok()
            raise
        except StoreUnavailable:
            raise
        except self._failures as error:
            self.health.failed(error)
            self._retry_at = time.monotonic() + _RETRY_AFTER
            raise StoreUnavailable(f"{self._name}: {self.health.last_error}") from error
        self.health.ok()

    def call(self, action: Callable[[], T]) -> T:
        with self.guard():
            return action()
