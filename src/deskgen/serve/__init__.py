"""``deskgen serve``: a makeover service with the OpenAI Images API, jobs, keys and limits.

```python
from deskgen.serve import ServeSettings, create_app

app = create_app(ServeSettings(backend="sdxl", model="stabilityai/stable-diffusion-xl-base-1.0"))
# uvicorn module:app, or `deskgen serve sdxl --model ...`
```

One worker per device owns one `deskgen.DeskGenerator`; jobs live in SQLite (WAL) under the
data folder and results in a folder or any fsspec store, so a crash loses nothing that was
acknowledged. The official ``openai`` client works against it with ``base_url=``. Needs the
``deskgen[serve]`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from .._exceptions import MissingDependencyError

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import python_multipart  # noqa: F401  (the Images API's edits are multipart forms)
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed in tests
    raise MissingDependencyError(
        "deskgen serve", extra="serve", missing=[exc.name or "fastapi"]
    ) from exc

from ._app import create_app
from ._jobs import Job, JobEvent, JobImage, JobStatus, JobStore
from ._keys import ApiKey, KeyRing, new_key, remove_key
from ._results import ResultsStore
from ._server import serve
from ._service import Service
from ._settings import ServeSettings
from ._sqlite import SQLiteJobStore
from ._webhooks import verify as verify_webhook

__all__ = [
    "ApiKey",
    "Job",
    "JobEvent",
    "JobImage",
    "JobStatus",
    "JobStore",
    "KeyRing",
    "ResultsStore",
    "SQLiteJobStore",
    "ServeSettings",
    "Service",
    "create_app",
    "new_key",
    "remove_key",
    "serve",
    "verify_webhook",
]
