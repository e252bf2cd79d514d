from __future__ import annotations

from typing import ClassVar

import pytest

import deskgen
from deskgen import MissingDependencyError, UnknownBackendError, list_backends, register_backend
from deskgen._registry import get_backend_class
from deskgen.backends import Backend

from . import fakes


def test_builtins_are_listed_with_install_state() -> None:
    infos = {info.name: info for info in list_backends()}
    assert {"sd", "sdxl"} <= set(infos)
    assert infos["sdxl"].installed is True  # the test environment has the local extra
    assert infos["sdxl"].extra == "local"
    assert infos["sdxl"].default_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert infos["sd"].default_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert [i.name for i in list_backends()] == sorted(infos)


def test_missing_dependency_is_reported_and_names_the_extra() -> None:
    info = next(i for i in list_backends() if i.name == "fake-missing")
    assert info.installed is False
    assert info.missing == ["deskgen_no_such_module_xyz"]
    with pytest.raises(MissingDependencyError, match=r"pip install 'deskgen\[imaginary\]'"):
        deskgen.DeskGenerator("fake-missing")


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError) as info:
        deskgen.DeskGenerator("sdxxl")
    assert "sdxl" in str(info.value) and "sd," in str(info.value)
    assert "sdxl" in info.value.known
    assert isinstance(info.value, LookupError)


def test_registering_a_taken_name_needs_replace() -> None:
    class Other(fakes.FakeBackend):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_backend("fake")(Other)
    assert get_backend_class("fake") is fakes.FakeBackend


def test_only_backend_subclasses_register() -> None:
    with pytest.raises(TypeError):
        register_backend("not-a-backend")(object)  # type: ignore[type-var]


def test_a_custom_backend_works_through_the_facade() -> None:
    @register_backend("custom-test", replace=True)
    class Custom(fakes.FakeBackend):
        description: ClassVar[str] = "custom"

    assert Custom.name == "custom-test"
    assert issubclass(Custom, Backend)
    with deskgen.DeskGenerator("custom-test") as gen:
        result = gen.generate(prompt="a desk", seed=1, steps=2)
    assert result.backend == "custom-test"
    assert result.model == "fake/model"


def test_replacing_a_built_in_before_first_lookup() -> None:
    import subprocess
    import sys

    code = """
import deskgen
from deskgen.backends import Backend
@deskgen.register_backend("sdxl", replace=True)
class Mine(Backend):
    pass
names = [b.name for b in deskgen.list_backends()]
from deskgen._registry import get_backend_class
assert get_backend_class("sdxl", check_installed=False) is Mine, names
assert "sd" in names
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
