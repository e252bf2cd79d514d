"""Backends: the `Backend` interface and the built-in implementations.

The built-ins (the diffusers families in `deskgen.backends.diffusers`, ``janus``, ``openai``)
register themselves when their
modules are imported, which the registry does on its first lookup; none of them imports torch or
diffusers before a backend is created.
"""

from __future__ import annotations

from ._base import Backend, BackendOptions, BackendOutput, Job
from ._profile import BackendProfile, MemoryProfile
from .diffusers import DiffusersBackend, DiffusersOptions

__all__ = [
    "Backend",
    "BackendOptions",
    "BackendOutput",
    "BackendProfile",
    "DiffusersBackend",
    "DiffusersOptions",
    "Job",
    "MemoryProfile",
]
