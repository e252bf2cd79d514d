"""The service's answers to errors, in the OpenAI error shape, mapped once from deskgen's tree.

```json
{"error": {"message": "...", "type": "invalid_request_error", "param": "size", "code": null}}
```

The official ``openai`` client turns these into its own exceptions by status (400
``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, 409 ``ConflictError``,
413/422 ``APIStatusError``, 429 ``RateLimitError``, 5xx ``InternalServerError``). Messages are
deskgen's (they say how to fix the request); absolute paths are cut out and no traceback ever
leaves the server.
"""

from __future__ import annotations

import re
from typing import Any

from .. import _exceptions
from .._exceptions import (
    ContentPolicyError,
    DeskgenError,
    GenerationCancelledError,
    ImageInputError,
    ImageTooLargeError,
    InvalidOutputError,
    InvalidRequestError,
    OutOfMemoryError,
    RateLimitedError,
    ServiceError,
)
from ._jobs import JobError

__all__ = ["ApiError", "api_error", "from_job_error", "job_error", "scrub"]

_PATH = re.compile(r"(?<![\w:/.])(?:~|/)(?:[\w.@+-]+/)+[\w.@+-]*")


def scrub(message: str) -> str:
    """``message`` without absolute paths (the server's folders are nobody else's business)."""
    return _PATH.sub("<path>", message)


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI error ``type``, the ``param`` at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = scrub(message)
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# (error class, status, type, code), most specific first
_MAPPING: tuple[tuple[type[DeskgenError], int, str, str | None], ...] = (
    (ImageTooLargeError, 413, "invalid_request_error", "image_too_large"),
    (ImageInputError, 400, "invalid_request_error", "invalid_image"),
    (ContentPolicyError, 400, "invalid_request_error", "content_policy_violation"),
    (InvalidRequestError, 400, "invalid_request_error", None),
    (GenerationCancelledError, 410, "invalid_request_error", "cancelled"),
    (OutOfMemoryError, 503, "server_error", "out_of_memory"),
    (RateLimitedError, 503, "server_error", "upstream_rate_limited"),
    (InvalidOutputError, 500, "server_error", "invalid_output"),
    (ServiceError, 502, "server_error", "upstream_error"),
)


def api_error(exc: DeskgenError) -> ApiError:
    """The answer for a deskgen error raised while checking or running a request."""
    for cls, status, kind, code in _MAPPING:
        if isinstance(exc, cls):
            return ApiError(status, str(exc), type=kind, code=code)
    return ApiError(500, str(exc), type="server_error", code=type(exc).__name__)


def job_error(exc: BaseException) -> JobError:
    """What a failed job records: deskgen's message, or a generic one for anything else (the
    traceback goes to the server's log only)."""
    if isinstance(exc, DeskgenError):
        retryable = isinstance(exc, (OutOfMemoryError, RateLimitedError))
        return JobError(type=type(exc).__name__, message=scrub(str(exc)), retryable=retryable)
    return JobError(
        type="InternalError",
        message="The server failed while running this job; its log has the details. Submit it "
        "again, and report it if it keeps failing.",
        retryable=True,
    )


def from_job_error(error: JobError) -> ApiError:
    """The answer of the synchronous Images endpoints for a job that failed."""
    cls = getattr(_exceptions, error.type, None)
    if isinstance(cls, type) and issubclass(cls, DeskgenError):
        for known, status, kind, code in _MAPPING:
            if issubclass(cls, known):
                return ApiError(status, error.message, type=kind, code=code or error.type)
    return ApiError(500, error.message, type="server_error", code=error.type)
