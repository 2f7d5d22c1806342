"""The one error base of acquired: every failure a user can meet has a stable ``code``,
a ``hint`` that says what to do, and whether trying again may help."""

from __future__ import annotations

from typing import Any, ClassVar


def _rebuild(cls: type[AcquiredError], message: str, details: dict[str, Any]) -> AcquiredError:
    return cls(message, **details)


class AcquiredError(Exception):
    """Base of every failure acquired reports.

    ``details`` carries JSON-able facts (URL, expected vs actual, status code) that the
    daemon stores next to the message. Codes are part of the product's interface: never
    rename one once released.
    """

    code: ClassVar[str] = "acquired.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (worker processes); the default pickling would
        # drop the keyword-only details.
        return (_rebuild, (type(self), str(self), dict(self.details)))
