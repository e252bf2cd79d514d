"""The JSON the service answers with: jobs, and the Images API's ``ImagesResponse``."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from ._jobs import Job

__all__ = ["check_signature", "image_url", "job_view", "sign_image"]


def sign_image(secret: bytes, job_id: str, index: int, expires: int) -> str:
    message = f"{job_id}/{index}/{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def check_signature(
    secret: bytes, job_id: str, index: int, expires: str | None, signature: str | None
) -> bool:
    """A ``response_format=url`` link's signature, valid and not expired."""
    if expires is None or signature is None or not expires.isdigit():
        return False
    if int(expires) < time.time():
        return False
    return hmac.compare_digest(sign_image(secret, job_id, index, int(expires)), signature)


def image_url(
    base: str, job_id: str, index: int, *, secret: bytes | None = None, ttl: int = 3600
) -> str:
    """Where image ``index`` of a job is fetched; with ``secret``, a signed link that works
    without the API key until it expires (the Images API's ``url``)."""
    url = f"{base}/v1/jobs/{job_id}/images/{index}"
    if secret is None:
        return url
    expires = int(time.time()) + ttl
    return f"{url}?expires={expires}&signature={sign_image(secret, job_id, index, expires)}"


def job_view(job: Job, *, position: int | None, base: str = "") -> dict[str, Any]:
    """``GET /v1/jobs/{id}``: state, queue position, progress, timings, error, images."""
    return {
        "id": job.id,
        "object": "deskgen.job",
        "status": job.status,
        "created_at": job.created,
        "started_at": job.started,
        "finished_at": job.finished,
        "queue_position": position,
        "attempts": job.attempts,
        "progress": {"step": job.step, "total_steps": job.total_steps},
        "cancel_requested": job.cancel_requested,
        "timings": job.timings,
        "error": job.error.model_dump() if job.error is not None else None,
        "images": [
            {
                "index": image.index,
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
                "url": image_url(base, job.id, image.index),
            }
            for image in job.images
        ],
        "request": job.fields,
        "status_url": f"{base}/v1/jobs/{job.id}",
        "events_url": f"{base}/v1/jobs/{job.id}/events",
    }
