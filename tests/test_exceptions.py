from __future__ import annotations

import inspect

import deskgen
from deskgen import _exceptions


def _error_classes() -> list[type[BaseException]]:
    return [
        obj
        for name, obj in vars(_exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, Exception) and name in _exceptions.__all__
    ]


def test_every_error_derives_from_the_base_and_is_exported() -> None:
    classes = _error_classes()
    assert len(classes) == len(_exceptions.__all__)
    for cls in classes:
        assert issubclass(cls, deskgen.DeskgenError)
        assert getattr(deskgen, cls.__name__) is cls


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    doc = _exceptions.__doc__ or ""
    for cls in _error_classes():
        assert cls.__name__ in doc


def test_builtin_bases_for_idiomatic_catching() -> None:
    assert issubclass(deskgen.InvalidRequestError, ValueError)
    assert issubclass(deskgen.ImageInputError, ValueError)
    assert issubclass(deskgen.ModelLoadError, OSError)
    assert issubclass(deskgen.MissingDependencyError, ImportError)
    assert issubclass(deskgen.UnknownBackendError, LookupError)
    assert issubclass(deskgen.InvalidOutputError, deskgen.BackendError)
    assert issubclass(deskgen.ModelNotFoundError, deskgen.ModelLoadError)


def test_messages_say_what_to_do() -> None:
    err = deskgen.MissingDependencyError("The 'sdxl' backend", extra="local", missing=["torch"])
    assert "pip install 'deskgen[local]'" in str(err)
    assert err.extra == "local"
    unknown = deskgen.UnknownBackendError("x", ["sd", "sdxl"])
    assert "sd, sdxl" in str(unknown)
