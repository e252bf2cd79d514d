"""The backend registry: backends register by name, the facade creates them by name.

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``. The built-in backend
modules are imported on the first registry lookup; they import no heavy library (backends import
torch and diffusers inside their methods).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from ._exceptions import MissingDependencyError, UnknownBackendError
from .backends._base import Backend
from .backends._profile import BackendProfile, Capability
from .prompts._profile import PromptProfile, set_profile_resolver

__all__ = [
    "BackendInfo",
    "backends_for_pipeline",
    "backends_with",
    "either",
    "get_backend_class",
    "list_backends",
    "pipeline_classes",
    "register_backend",
]

_REGISTRY: dict[str, type[Backend]] = {}
_LOCK = threading.Lock()
_builtins_loaded = False
_BUILTIN_MODULES = (
    "deskgen.backends.diffusers.flux2_klein",
    "deskgen.backends.diffusers.flux_kontext",
    "deskgen.backends.diffusers.hidream",
    "deskgen.backends.diffusers.qwen_image_edit",
    "deskgen.backends.diffusers.sd",
    "deskgen.backends.diffusers.sdxl",
    "deskgen.backends.diffusers.sdxl_controlnet",
    "deskgen.backends.janus",
    "deskgen.backends.openai",
)
"""One line per built-in backend module: adding a backend adds its line here, nothing else."""

B = TypeVar("B", bound=type[Backend])


class BackendInfo(BaseModel):
    """One registered backend, as `list_backends` reports it."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    extra: str
    """``pip install 'deskgen[<extra>]'`` installs what it needs."""
    default_model: str | None
    installed: bool
    """All of its dependencies can be imported."""
    missing: list[str]
    """Dependencies that cannot be imported."""
    pipelines: list[str] = []
    """The diffusers pipeline classes (``model_index.json``'s ``_class_name``) it is the
    backend for (`pipeline_classes`)."""
    profile: BackendProfile = BackendProfile()
    """What it can do (`deskgen.backends.BackendProfile`)."""


def register_backend(name: str, *, replace: bool = False) -> Callable[[B], B]:
    """Class decorator that registers a `Backend` subclass under ``name``.

    ```python
    @deskgen.register_backend("my-backend")
    class MyBackend(deskgen.backends.Backend): ...
    ```
    Registering a taken name raises `ValueError` unless ``replace=True``.
    """

    def decorator(cls: B) -> B:
        _load_builtins()  # so a user's replace=True really replaces a built-in, once
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"{cls!r} is not a subclass of deskgen.backends.Backend")
        with _LOCK:
            if name in _REGISTRY and not replace and _REGISTRY[name] is not cls:
                raise ValueError(
                    f"A backend named {name!r} is already registered "
                    f"({_REGISTRY[name].__qualname__}); pass replace=True to override it."
                )
            cls.name = name
            _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # first: the built-in modules call register_backend themselves
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def _missing(cls: type[Backend]) -> list[str]:
    return [mod for mod in cls.requirements if importlib.util.find_spec(mod) is None]


def list_backends() -> list[BackendInfo]:
    """Every registered backend, sorted by name, with whether its dependencies are installed."""
    _load_builtins()
    with _LOCK:
        classes = sorted(_REGISTRY.items())
    infos = []
    for name, cls in classes:
        missing = _missing(cls)
        infos.append(
            BackendInfo(
                name=name,
                description=cls.description,
                extra=cls.extra,
                default_model=cls.default_model,
                installed=not missing,
                missing=missing,
                pipelines=list(pipeline_classes(cls)),
                profile=cls.profile,
            )
        )
    return infos


def get_backend_class(name: str, *, check_installed: bool = True) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises:
        UnknownBackendError: no such name (the message lists the known ones).
        MissingDependencyError: its extra is not installed (the message names it).
    """
    _load_builtins()
    with _LOCK:
        cls = _REGISTRY.get(name)
        known = sorted(_REGISTRY)
    if cls is None:
        raise UnknownBackendError(name, known)
    if check_installed and (missing := _missing(cls)):
        raise MissingDependencyError(f"The {name!r} backend", extra=cls.extra, missing=missing)
    return cls


def pipeline_classes(cls: type[Backend], *, accepted: bool = False) -> tuple[str, ...]:
    """The diffusers pipeline classes a backend declares as its own: its ``txt2img_class``
    and ``img2img_class`` (with ``accepted=True`` also the others it can load, its
    ``accepted_pipelines``: ``sdxl-controlnet`` takes plain SDXL pipelines too). Empty for
    backends that load no diffusers pipeline."""
    own = [getattr(cls, name, None) for name in ("txt2img_class", "img2img_class")]
    names = [name for name in own if isinstance(name, str)]
    if accepted:
        names += sorted(set(getattr(cls, "accepted_pipelines", ())) - set(names))
    return tuple(names)


def backends_for_pipeline(class_name: str) -> list[str]:
    """The registered backends whose own pipeline classes include ``class_name`` (else those
    that accept it), sorted by name: what ``model_index.json`` says a model is for."""
    _load_builtins()
    with _LOCK:
        classes = sorted(_REGISTRY.items())
    for accepted in (False, True):
        names = [
            name for name, cls in classes if class_name in pipeline_classes(cls, accepted=accepted)
        ]
        if names:
            return names
    return []


def backends_with(capability: Capability, *, mode: str | None = None) -> list[str]:
    """The registered backends whose profile has ``capability`` (and runs ``mode``, when
    given), sorted by name: what a refusal suggests instead."""
    _load_builtins()
    with _LOCK:
        classes = sorted(_REGISTRY.items())
    return [
        name
        for name, cls in classes
        if cls.profile.has(capability) and (mode is None or mode in cls.profile.modes)
    ]


def either(names: list[str], *, conjunction: str = "or") -> str:
    """``'a', 'b' or 'c'``: backend names as a refusal's hint words them."""
    quoted = [repr(name) for name in names]
    if len(quoted) <= 1:
        return "".join(quoted) or "none"
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def _prompt_profile(name: str) -> PromptProfile:
    cls = get_backend_class(name, check_installed=False)
    return PromptProfile(
        name=name,
        text_encoders=cls.text_encoders,
        default_long_prompt=cls.default_long_prompt,
        default_negative_preset=cls.default_negative_preset,
    )


set_profile_resolver(_prompt_profile)  # the prompt builder resolves backend names through it
