"""`create_app`: the FastAPI app of ``deskgen serve``.

```text
POST   /v1/images/generations   OpenAI Images API: txt2img (JSON), waits, answers images
POST   /v1/images/edits         OpenAI Images API: the desk photo (+ mask) as multipart
GET    /v1/models               the served model (the openai client's models.list())
POST   /v1/jobs                 the same fields as a job: 202 with its status/events URLs
GET    /v1/jobs/{id}            state, queue position, progress, timings, error, images
GET    /v1/jobs/{id}/events     server-sent events: queued, started, step, succeeded, ...
DELETE /v1/jobs/{id}            cancel (a queued job never starts; a running one stops)
GET    /v1/jobs/{id}/images/{k} the PNG with its record (key, or a signed link)
GET    /healthz /readyz /metrics
```
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._version import __version__
from ._errors import ApiError, from_job_error, scrub
from ._jobs import Job
from ._keys import ApiKey
from ._metrics import CONTENT_TYPE
from ._requests import Submission, form_fields, parse_submission
from ._service import Service
from ._settings import ServeSettings
from ._views import check_signature, image_url, job_view

__all__ = ["create_app"]

log = logging.getLogger("deskgen.serve")

_FORM_LIMITS = {"max_files": 16, "max_fields": 64, "max_part_size": 2**20}
_HEARTBEAT = 15.0


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """Pure ASGI: bodies over the limit are refused (413) before they are read whole; every
    request is timed (``deskgen_request_seconds``) and logged without its query (signed
    links) or headers (keys)."""

    def __init__(self, app: ASGIApp, service: Service, max_body: int) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_error(send, _too_large(self.max_body))
            self._record(scope, 413, started)
            return
        seen = [0]

        async def limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body:
                    raise _BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited, sending)
        finally:
            self._record(scope, status[0], started)

    def _record(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "unmatched")
        self.service.metrics.request_seconds.labels(route, scope["method"], str(status)).observe(
            seconds
        )
        log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "ms": round(seconds * 1000, 2),
            },
        )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is over this server's limit of {limit / 2**20:.0f} MiB: send "
        "smaller images",
        code="request_too_large",
    )


async def _send_error(send: Send, error: ApiError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(settings: ServeSettings, *, service: Service | None = None) -> FastAPI:
    """The service's ASGI app; its lifespan starts the workers and drains them at the end."""
    service = service if service is not None else Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.drain)
            service.close()

    app = FastAPI(
        title="deskgen serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    max_body = settings.max_upload_bytes * 4 + 2**20
    app.add_middleware(_Guard, service=service, max_body=max_body)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        )
    _add_handlers(app)
    _add_routes(app, service, settings)
    return app


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(request: Request, exc: _BodyTooLarge) -> JSONResponse:
        service: Service = request.app.state.service
        return _error_response(_too_large(service.settings.max_upload_bytes * 4 + 2**20))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error_response(ApiError(400, f"{param or 'request'}: {first['msg']}", param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(ApiError(exc.status_code, str(exc.detail), type=kind))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
        return _error_response(
            ApiError(500, "The server failed; its log has the details", type="server_error")
        )


async def _read_body(request: Request) -> tuple[dict[str, Any], dict[str, list[bytes]], bool]:
    """A JSON object, or a multipart/urlencoded form (``image[]`` is ``image``; bracketed text
    fields are lists and objects: `form_fields`)."""
    kind = request.headers.get("content-type", "")
    if kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        texts: list[tuple[str, str]] = []
        files: dict[str, list[bytes]] = {}
        async with request.form(**_FORM_LIMITS) as form:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    texts.append((name, value))
                else:
                    files.setdefault(name.removesuffix("[]"), []).append(await value.read())
        return form_fields(texts), files, True
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(
            400, "The body is not JSON: send a JSON object or a multipart form"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object (or a multipart form)")
    return body, {}, False


def _add_routes(app: FastAPI, service: Service, settings: ServeSettings) -> None:
    store = service.store
    max_bytes, max_images = settings.max_upload_bytes, settings.max_images
    served = {settings.backend, "deskgen"} | ({settings.model} if settings.model else set())

    def key_of(request: Request) -> ApiKey | None:
        return service.authenticate(request.headers.get("authorization"))

    def base_of(request: Request) -> str:
        return (settings.public_url or str(request.base_url)).rstrip("/")

    async def submission(request: Request, kind: str) -> tuple[Job, Submission]:
        key = key_of(request)
        body, files, form = await _read_body(request)
        sub = await run_in_threadpool(
            parse_submission, body, files, form=form, max_bytes=max_bytes, max_images=max_images
        )
        if kind == "edit" and "image" not in sub.uploads:
            raise ApiError(400, "image: required: the desk photo to edit", param="image")
        if sub.model is not None and sub.model not in served:
            raise ApiError(
                400,
                f"model: this server runs {settings.model or settings.backend!r}: leave model "
                f"out or give one of {sorted(served)}",
                param="model",
                code="model_not_found",
            )
        if sub.preset is not None and sub.preset != settings.options.get("preset"):
            raise ApiError(
                400,
                f"preset: this server runs preset {settings.options.get('preset')!r}; start "
                f"another one with --option preset={sub.preset} for it",
                param="preset",
            )
        job, _ = await run_in_threadpool(
            lambda: service.submit(
                key=key,
                kind=kind,
                submission=sub,
                idempotency_key=request.headers.get("idempotency-key"),
            )
        )
        return job, sub

    async def finished(job: Job) -> Job:
        deadline = time.monotonic() + settings.wait_timeout
        with service.watch(job.id) as watch:
            while True:
                current = store.get(job.id)
                assert current is not None
                if current.final:
                    return current
                if service.draining and current.status == "queued":
                    raise ApiError(
                        503,
                        f"The server is shutting down; job {job.id} stays queued: poll "
                        f"GET /v1/jobs/{job.id} once it is back",
                        type="server_error",
                        code="shutting_down",
                        headers={"Retry-After": "10"},
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(
                        504,
                        f"Job {job.id} is still {current.status}: poll GET /v1/jobs/{job.id}",
                        type="server_error",
                        code="timeout",
                    )
                await watch.wait(min(1.0, left))

    def images_answer(request: Request, job: Job, sub: Submission) -> dict[str, Any]:
        if job.status == "failed" and job.error is not None:
            raise from_job_error(job.error)
        if job.status == "cancelled":
            # 410, not 409: the openai client retries a 409, which would run the job again
            raise ApiError(410, f"Job {job.id} was cancelled", code="cancelled")
        base = base_of(request)
        data = []
        for image in job.images:
            if sub.response_format == "url":
                url = image_url(
                    base, job.id, image.index, secret=service.link_secret, ttl=settings.url_ttl
                )
                data.append({"url": url, "revised_prompt": None})
            else:
                png = service.results.get(image.key)
                data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": None})
        first = job.images[0] if job.images else None
        return {
            "created": int(job.created),
            "data": data,
            "output_format": "png",
            "size": f"{first.width}x{first.height}" if first else None,
            "deskgen": {"job_id": job.id, "seeds": [image.seed for image in job.images]},
        }

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> dict[str, Any]:
        job, sub = await submission(request, "generation")
        return await run_in_threadpool(images_answer, request, await finished(job), sub)

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> dict[str, Any]:
        job, sub = await submission(request, "edit")
        return await run_in_threadpool(images_answer, request, await finished(job), sub)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        key_of(request)
        name = settings.model or settings.backend
        model = {
            "id": name,
            "object": "model",
            "created": int(service.started),
            "owned_by": "deskgen",
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/jobs", status_code=202)
    async def create_job(request: Request) -> JSONResponse:
        job, _ = await submission(request, "job")
        base = base_of(request)
        body = {
            "id": job.id,
            "object": "deskgen.job",
            "status": job.status,
            "status_url": f"{base}/v1/jobs/{job.id}",
            "events_url": f"{base}/v1/jobs/{job.id}/events",
        }
        return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})

    @app.get("/v1/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> dict[str, Any]:
        job = service.job_for(key_of(request), job_id)
        return job_view(job, position=store.position(job.id), base=base_of(request))

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        job = service.job_for(key_of(request), job_id)
        job = await run_in_threadpool(service.cancel, job)
        return job_view(job, position=store.position(job.id), base=base_of(request))

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str) -> StreamingResponse:
        job = service.job_for(key_of(request), job_id)
        last = request.headers.get("last-event-id", "0")
        after = int(last) if last.isdigit() else 0
        stream = _event_stream(service, job.id, after, base_of(request), request.is_disconnected)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @app.get("/v1/jobs/{job_id}/images/{index}")
    async def job_image(request: Request, job_id: str, index: int) -> Response:
        query = request.query_params
        if check_signature(
            service.link_secret, job_id, index, query.get("expires"), query.get("signature")
        ):
            job = store.get(job_id)
        else:
            job = service.job_for(key_of(request), job_id)
        image = next((i for i in job.images if i.index == index), None) if job else None
        if job is None or image is None:
            raise ApiError(404, f"No image {index} of job {job_id!r}", code="image_not_found")
        png = await run_in_threadpool(service.results.get, image.key)
        disposition = f'inline; filename="{job_id}-{index}.png"'
        return Response(png, media_type="image/png", headers={"Content-Disposition": disposition})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        workers = [
            {
                "name": worker.name,
                "device": worker.device,
                "ready": worker.ready,
                "error": scrub(str(worker.load_error)) if worker.load_error is not None else None,
            }
            for worker in service.workers
        ]
        ready = service.ready and not service.draining
        body = {"status": "ready" if ready else "not ready", "workers": workers}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)


async def _event_stream(
    service: Service,
    job_id: str,
    after: int,
    base: str,
    disconnected: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """The job's events from ``after`` on, as they happen; ends after the final one (or when
    the server drains: the client reconnects with ``Last-Event-ID``)."""
    yield "retry: 2000\n\n"
    quiet = time.monotonic()
    with service.watch(job_id) as watch:
        while True:
            events = service.store.events(job_id, after=after)
            for event in events:
                data = dict(event.data)
                if event.type == "succeeded":
                    job = service.store.get(job_id)
                    data["images"] = [
                        image_url(base, job_id, image.index)
                        for image in (job.images if job else [])
                    ]
                payload = json.dumps({"type": event.type, "time": event.time, **data})
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {payload}\n\n"
                after = event.seq
                if event.type in ("succeeded", "failed", "cancelled"):
                    return
            if events:
                quiet = time.monotonic()
            elif time.monotonic() - quiet > _HEARTBEAT:
                yield ": keep-alive\n\n"
                quiet = time.monotonic()
            if service.draining or await disconnected():
                return
            await watch.wait(1.0)
