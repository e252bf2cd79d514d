"""deskgen's exceptions: one tree, every error a user can cause, each with a fix in its message.

```text
DeskgenError                      base of everything deskgen raises on purpose
├── InvalidRequestError           a generation request that cannot run (ValueError)
│   ├── PromptTooLongError        over a text encoder's limit with long_prompt="error"
│   └── UnsupportedOperationError the backend can't do that (e.g. describe a photo)
├── ConfigError                   bad DeskGenerator options: device, dtype, options (ValueError)
├── ImageInputError               a photo that cannot be used (ValueError)
│   └── ImageTooLargeError        over Pillow's pixel (bomb) limit or 100 MiB, refused unread
├── UnknownBackendError           a backend name nobody registered (LookupError)
├── MissingDependencyError        an optional extra is not installed (ImportError)
├── ModelLoadError                weights could not be loaded (OSError)
│   ├── ModelNotFoundError        no such folder, or a hub id missing from the offline cache
│   └── ModelMismatchError        the weights are for another backend (e.g. SD 1.5 given to "sdxl")
│       └── LoraMismatchError     a LoRA for another base model, or with modules this one lacks
├── BackendError                  a backend failed while generating (RuntimeError)
│   ├── InvalidOutputError        NaN/black output, or an API answer without an image
│   ├── OutOfMemoryError          a request too large for the free memory (refused before it
│   │                             runs), or an allocation that failed (MemoryError)
│   └── ServiceError              a hosted API (OpenAI) failed, after the client's own retries
│       ├── AuthenticationError   the API key was refused (401/403)
│       ├── RateLimitedError      still rate limited (429) after the retries; has retry_after
│       ├── ContentPolicyError    the service refused the prompt or photo (never retried)
│       ├── ServiceRequestError   the service rejected the request (other 4xx)
│       └── ServiceTimeoutError   no answer in time, or no connection
├── GenerationCancelledError      the caller cancelled a request between steps
├── GeneratorClosedError          the DeskGenerator was closed (RuntimeError)
└── RecordError                   no readable record in a file, or an unsaveable path (ValueError)
```

Third-party exceptions (diffusers, huggingface_hub, torch, Pillow) are translated into this tree at
the backend boundary and chained (``raise ... from exc``) so the original stays visible.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendError",
    "ConfigError",
    "ContentPolicyError",
    "DeskgenError",
    "GenerationCancelledError",
    "GeneratorClosedError",
    "ImageInputError",
    "ImageTooLargeError",
    "InvalidOutputError",
    "InvalidRequestError",
    "LoraMismatchError",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "PromptTooLongError",
    "RateLimitedError",
    "RecordError",
    "ServiceError",
    "ServiceRequestError",
    "ServiceTimeoutError",
    "UnknownBackendError",
    "UnsupportedOperationError",
]


class DeskgenError(Exception):
    """Base class of every error deskgen raises on purpose."""


class InvalidRequestError(DeskgenError, ValueError):
    """A generation request that cannot run as given (the message says which field and why)."""


class PromptTooLongError(InvalidRequestError):
    """A prompt over a text encoder's limit (or a character limit) with ``long_prompt="error"``."""

    def __init__(self, *, role: str, encoder: str, tokens: int, limit: int, overflow: str) -> None:
        self.role = role
        self.encoder = encoder
        self.tokens = tokens
        self.limit = limit
        self.overflow = overflow
        unit = "characters" if encoder == "characters" else "tokens"
        where = "the backend takes" if encoder == "characters" else f"{encoder} sees"
        super().__init__(
            f"The {role} is {tokens} {unit} but {where} {limit} (long_prompt='error'). "
            f"Over the limit: {overflow!r}. Shorten it, or use long_prompt='chunk' to encode "
            "all of it, or 'fit' to drop its last phrases."
        )


class UnsupportedOperationError(InvalidRequestError):
    """The chosen backend can't do what was asked (e.g. ``describe`` on a diffusion backend)."""


class ConfigError(DeskgenError, ValueError):
    """Options given to `DeskGenerator` that cannot work (device, dtype, backend options)."""


class ImageInputError(DeskgenError, ValueError):
    """An input photo that cannot be read: unknown format, corrupt data, wrong type."""


class ImageTooLargeError(ImageInputError):
    """A photo with more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (refused before decoding), or
    a file over 100 MiB (refused before reading)."""


class UnknownBackendError(DeskgenError, LookupError):
    """A backend name that is not registered; the message lists the known ones."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(
            f"Unknown backend {name!r}. Known backends: {', '.join(known) or '(none)'}. "
            "See deskgen.list_backends() or `deskgen backends`."
        )


class MissingDependencyError(DeskgenError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""

    def __init__(self, what: str, *, extra: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{what} needs {', '.join(missing)}, which is not installed. "
            f"Install it with: pip install 'deskgen[{extra}]'"
        )


class ModelLoadError(DeskgenError, OSError):
    """Weights could not be loaded (corrupt files, unsupported layout, out of memory)."""


class ModelNotFoundError(ModelLoadError):
    """A local folder that does not exist, or a hub id that is neither cached nor downloadable."""


class ModelMismatchError(ModelLoadError):
    """The weights belong to another model family than the chosen backend expects."""


class LoraMismatchError(ModelMismatchError):
    """A LoRA that does not fit the loaded model: made for another base model, or naming modules
    or shapes the model lacks. Nothing of it was applied."""


class BackendError(DeskgenError, RuntimeError):
    """A backend failed while generating; the original exception is chained."""


class InvalidOutputError(BackendError):
    """The model produced NaN or all-black images; they are never returned as valid images."""


class OutOfMemoryError(BackendError, MemoryError):
    """A request that does not fit in the memory available: refused before it runs when its
    estimated working memory is over what is free (``largest_size`` is then the largest size
    that fits, at its aspect ratio), or an allocation that failed while it ran (torch's
    ``OutOfMemoryError`` on a GPU, the CPU allocator's error). The message says what to change:
    a smaller size, fewer images at once, VAE tiling, half precision."""

    def __init__(
        self,
        message: str,
        *,
        needed_bytes: int | None = None,
        available_bytes: int | None = None,
        largest_size: tuple[int, int] | None = None,
    ) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.largest_size = largest_size
        super().__init__(message)


class ServiceError(BackendError):
    """A hosted image API failed (5xx, or an unexpected answer) after the client's retries."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class AuthenticationError(ServiceError):
    """The service refused the API key (401), or the key lacks access (403)."""


class RateLimitedError(ServiceError):
    """Still rate limited (429) after the client's retries; ``retry_after`` is in seconds."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        status: int | None = 429,
        code: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code)


class ContentPolicyError(ServiceError):
    """The service's safety system refused the prompt or photo; retrying would not help."""


class ServiceRequestError(ServiceError):
    """The service rejected the request as invalid (400, 404, 422...); the message says why."""


class ServiceTimeoutError(ServiceError):
    """No answer within the timeout, or no connection to the service, after the retries."""


class GenerationCancelledError(DeskgenError):
    """The request was cancelled between denoising steps; nothing was returned or written."""

    def __init__(self, message: str, *, step: int, total_steps: int) -> None:
        self.step = step
        self.total_steps = total_steps
        super().__init__(message)


class GeneratorClosedError(DeskgenError, RuntimeError):
    """The `DeskGenerator` was closed; create a new one to generate again."""


class RecordError(DeskgenError, ValueError):
    """A file that carries no readable deskgen record, or a path a record can't be saved to."""
