"""Errors of the daemon itself, and the one way the daemon describes any error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from acquired.common.errors import AcquiredError
from acquired.common.redact import redact_text, redact_value


class DaemonError(AcquiredError):
    """Base of failures raised by the daemon (configuration, manifests, control)."""

    code: ClassVar[str] = "daemon.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False


@dataclass(frozen=True)
class ErrorInfo:
    """What the store and the control socket keep of an error."""

    code: str
    message: str
    hint: str
    retryable: bool
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The error as a JSON-able dict, as the control socket sends it."""
        return {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "retryable": self.retryable,
            "details": self.details,
        }


def describe(exc: BaseException) -> ErrorInfo:
    """Describe an error from any package: sources and unpack share no base class with the
    daemon, so their ``code``/``hint``/``details`` attributes are read by duck typing."""
    code = getattr(exc, "code", None)
    if not isinstance(code, str):
        if isinstance(exc, OSError):
            return ErrorInfo(
                code="os.error",
                message=f"{exc.strerror or exc} ({exc.filename or 'no file'})",
                hint="Check permissions and free space under the data root.",
                retryable=True,
                details={"errno": exc.errno},
            )
        return ErrorInfo(
            code="internal.error",
            message=f"{type(exc).__name__}: {exc}",
            hint="This is a bug in acquired; please report it with the daemon's log.",
            retryable=False,
            details={},
        )
    details = getattr(exc, "details", {}) or {}
    return ErrorInfo(
        code=code,
        message=redact_text(str(exc)),
        hint=str(getattr(exc, "hint", "")),
        retryable=bool(getattr(exc, "retryable", False)),
        details={k: redact_value(v) for k, v in details.items() if _jsonable(v)},
    )


def _jsonable(value: object) -> bool:
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False
