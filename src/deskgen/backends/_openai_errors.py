"""The ``openai`` backend's error translation: the client's exceptions, and answers that are not
what the API promises, as deskgen's `ServiceError` tree and `InvalidOutputError`."""

from __future__ import annotations

import contextlib
import email.utils
import time
from typing import Any

from .._exceptions import (
    AuthenticationError,
    ContentPolicyError,
    InvalidOutputError,
    RateLimitedError,
    ServiceError,
    ServiceRequestError,
    ServiceTimeoutError,
)

__all__ = ["malformed_answer", "translate_openai_error"]

_REFUSAL_CODES = frozenset({"content_policy_violation", "moderation_blocked"})

_NOT_AN_ANSWER = (
    "Check that base_url points at an OpenAI-compatible server; if the answer was cut short "
    "(a proxy or the network), try again."
)


def malformed_answer(what: str, exc: BaseException | None = None) -> InvalidOutputError:
    """The error for a successful (200) answer that is not what the API promises: JSON cut
    short, no JSON at all, another shape, image data that is not base64."""
    cause = f" ({exc})" if exc is not None else ""
    return InvalidOutputError(f"The image service's answer {what}{cause}. {_NOT_AN_ANSWER}")


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                try:  # an HTTP date
                    when = email.utils.parsedate_to_datetime(value)
                except (TypeError, ValueError):
                    continue
                return max(0.0, when.timestamp() - time.time())
            return seconds / 1000 if name.endswith("ms") else seconds
    return None


def translate_openai_error(exc: Exception, *, retries: int) -> Exception:
    """deskgen's exception for an ``openai`` client exception (the caller chains it; the
    backend scrubs the API key from both where they leave it)."""
    import openai

    status = getattr(exc, "status_code", None)
    code = getattr(exc, "code", None)
    detail = str(getattr(exc, "message", "") or exc)
    request = getattr(getattr(exc, "response", None), "request", None)
    if request is not None:  # the client's own count (it skips retries the server forbids)
        with contextlib.suppress(TypeError, ValueError):
            retries = int(request.headers.get("x-stainless-retry-count", retries))
    tried = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return ContentPolicyError(
            "The service's content filter stopped the answer. Use another photo or instruction."
        )
    if isinstance(exc, openai.LengthFinishReasonError):
        return ServiceError("The service's answer was cut off before it was complete.")
    if isinstance(exc, openai.APIResponseValidationError):  # the client's strict validation
        return malformed_answer(f"({status}) does not have the API's shape: {detail}")
    if isinstance(exc, openai.APITimeoutError):
        return ServiceTimeoutError(
            f"The image service did not answer in time{tried}. Raise timeout=..., or try later."
        )
    if isinstance(exc, openai.APIConnectionError):
        return ServiceTimeoutError(
            f"Could not connect to the image service{tried} ({detail}). Check base_url and the "
            "network."
        )
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return AuthenticationError(
            f"The image service refused the API key ({status}: {detail}). Check OPENAI_API_KEY "
            "or api_key=..., and that the key's project may use this model.",
            status=status,
            code=code,
        )
    if isinstance(exc, openai.RateLimitError):
        wait = _retry_after(exc)
        hint = f" The service asks to wait {wait:g} s." if wait is not None else ""
        return RateLimitedError(
            f"Rate limited by the image service{tried} ({detail}).{hint} Slow down, or raise "
            "max_retries.",
            retry_after=wait,
            code=code,
        )
    if isinstance(exc, openai.BadRequestError) and code in _REFUSAL_CODES:
        return ContentPolicyError(
            f"The image service's safety system refused the request ({code}): {detail}. "
            "Rephrase the prompt or use another photo; retrying the same request won't help.",
            status=status,
            code=code,
        )
    if isinstance(exc, openai.APIStatusError) and status is not None and status < 500:
        return ServiceRequestError(
            f"The image service rejected the request ({status}{', ' + code if code else ''}): "
            f"{detail}",
            status=status,
            code=code,
        )
    if isinstance(exc, openai.APIStatusError):
        return ServiceError(
            f"The image service failed ({status}){tried}: {detail}. Try again later.",
            status=status,
            code=code,
        )
    return ServiceError(f"The image service call failed: {type(exc).__name__}: {detail}")
