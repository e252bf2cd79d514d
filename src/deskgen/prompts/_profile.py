"""What the prompt builder needs to know of a backend: its text encoders and prompt defaults.

`PromptProfile` is the prompt half of a backend's declaration (`deskgen.backends.Backend`'s
``text_encoders``, ``default_long_prompt``, ``default_negative_preset``). The prompt builder
takes one, or a backend name that the backend registry resolves: the registry installs the
resolver when it is imported (`set_profile_resolver`), so this package never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._report import LongPromptMode, TextEncoderSpec

__all__ = ["PromptProfile", "prompt_profile", "set_profile_resolver"]


@dataclass(frozen=True)
class PromptProfile:
    """A backend's text encoders and prompt defaults, as the prompt builder plans for them."""

    name: str
    text_encoders: tuple[TextEncoderSpec, ...] = ()
    """Empty: no text encoder to count for (an API backend)."""
    default_long_prompt: LongPromptMode = LongPromptMode.CHUNK
    default_negative_preset: str | None = None
    """What ``negative_prompt="preset:default"`` means there."""


_resolver: Callable[[str], PromptProfile] | None = None


def set_profile_resolver(resolver: Callable[[str], PromptProfile]) -> None:
    """Install how backend names become profiles (the backend registry does, on import)."""
    global _resolver
    _resolver = resolver


def prompt_profile(backend: str | PromptProfile) -> PromptProfile:
    """``backend`` as a `PromptProfile` (a name is looked up through the installed resolver).

    Raises:
        UnknownBackendError: no backend of that name (from the registry).
    """
    if isinstance(backend, PromptProfile):
        return backend
    if _resolver is None:  # only when deskgen.prompts is used without deskgen (never in practice)
        import deskgen  # noqa: F401  (importing deskgen imports the registry, which installs it)
    assert _resolver is not None
    return _resolver(backend)
