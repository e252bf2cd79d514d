"""`ServeSettings`: everything ``deskgen serve`` is started with, checked before anything loads."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._lifecycle import redact

__all__ = ["ServeSettings"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class ServeSettings(BaseModel):
    """How to run the service: the model, where jobs and results live, who gets in, limits.

    ```python
    from deskgen.serve import ServeSettings, create_app
    app = create_app(ServeSettings(backend="sdxl", model="stabilityai/...", data="serve-data"))
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    backend: str
    """The backend every worker runs (`deskgen.list_backends`)."""
    model: str | None = None
    """Hub id or folder; ``None``: the backend's default."""
    devices: Annotated[tuple[str, ...], Field(strict=False)] = ("auto",)
    """One worker per device, each owning one `DeskGenerator` (``("cuda:0", "cuda:1")``)."""
    dtype: str = "auto"
    options: dict[str, Any] = Field(default_factory=dict)
    """`DeskGenerator` options (``preset``, ``memory``, ``loras``, ...)."""
    data: Annotated[Path, Field(strict=False)] = Path("deskgen-serve")
    """The jobs database (``jobs.sqlite3``), the server's signing secrets, and (by default)
    the results store, ``DATA/results``."""
    jobs: str | None = Field(default=None, repr=False)  # a Redis URL may hold a password
    """Where jobs live: ``None``, SQLite in ``DATA/jobs.sqlite3`` (one server); a Redis URL
    (``redis://host:6379/0``, ``rediss://``, ``unix:///path.sock``) shared by several servers
    (with ``appendonly yes`` on the Redis server, or acknowledged jobs can be lost)."""
    lease: float = Field(default=30.0, ge=1.0)
    """Seconds a worker holds a running job without renewing it (it renews every third);
    with a shared store, a job whose machine died runs again elsewhere after this."""
    results: str | None = None
    """Where uploads and result images are kept: a folder or any fsspec URL (``s3://...``
    with its driver installed); ``None``: ``DATA/results``."""
    keys: Annotated[Path | None, Field(strict=False)] = None
    """The API key file (`deskgen keys new`); ``None``: no keys, loopback only."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    """The address clients reach the service at (behind a proxy), for result URLs; ``None``:
    the address each request came to."""
    max_attempts: int = Field(default=3, ge=1)
    """Runs of a job that a crash interrupted before it is failed (with the reason)."""
    max_upload_bytes: int = Field(default=20 * 2**20, ge=1024)
    """Largest image upload; the whole body may hold a few."""
    max_images: int = Field(default=4, ge=1, le=16)
    """Largest ``n`` per request."""
    max_queue: int = Field(default=1000, ge=1)
    """Queued jobs beyond which new ones are refused (503 with Retry-After)."""
    wait_timeout: float = Field(default=600.0, gt=0)
    """Seconds the synchronous Images endpoints wait for their job (it keeps running after)."""
    drain_timeout: float = Field(default=30.0, ge=0)
    """On SIGTERM: seconds running jobs get to finish before they are re-queued."""
    url_ttl: int = Field(default=3600, ge=1)
    """Seconds a ``response_format=url`` link stays valid."""
    cors_origins: Annotated[tuple[str, ...], Field(strict=False)] = ()
    """Origins browsers may call from; none by default (CORS off)."""
    threads: int | None = Field(default=None, ge=1)
    """torch intra-op threads for the workers; ``None``: the CPU cores shared between them."""
    webhook_hosts: Annotated[frozenset[str], Field(strict=False)] = frozenset()
    """Hosts job webhooks may be sent to; none: webhooks refused (no requests to anywhere)."""
    mask_model: str | None = None
    """The segmentation model ``mask="auto"`` finds desks with on the closed-set route
    (requests cannot name models: a model is a file or a download); ``None``: `DeskMask`'s
    default."""
    detector_model: str | None = None
    """The Grounding DINO detector of the open-vocabulary mask route; ``None``: `DeskMask`'s
    default."""
    sam_model: str | None = None
    """The SAM model of the open-vocabulary mask route; ``None``: `DeskMask`'s default."""
    log_prompts: bool = False
    """Put prompts in the logs (never by default)."""

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if self.keys is None and not _loopback(self.host):
            raise ValueError(
                f"host={self.host!r} without API keys would let anyone on the network in: "
                "create keys (deskgen keys new NAME --keys keys.toml) and pass keys, or "
                "listen on 127.0.0.1"
            )
        if not self.devices:
            raise ValueError("give at least one device")
        if self.jobs is not None and not self.jobs.startswith(_REDIS_SCHEMES):
            raise ValueError(
                f"jobs={redact(self.jobs)!r}: give a Redis URL (redis://host:6379/0, "
                "rediss://..., unix:///path.sock), or leave it out for SQLite under data"
            )
        return self

    @property
    def results_url(self) -> str:
        return self.results if self.results is not None else str(self.data / "results")
