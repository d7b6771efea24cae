"""Every public object of llmbook has a docstring that sphinx-autodoc2 can render."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import llmbook


def public_modules():
    yield llmbook
    for info in pkgutil.walk_packages(llmbook.__path__, prefix="llmbook."):
        yield importlib.import_module(info.name)


def public_objects():
    """(qualified name, object) for every public function, class and public method defined in llmbook."""
    for module in public_modules():
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            yield f"{module.__name__}.{name}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not inspect.isfunction(member):
                        continue
                    yield f"{module.__name__}.{name}.{attr}", member


OBJECTS = dict(public_objects())


def test_found_the_api():
    assert "llmbook.model.gpt.GPT" in OBJECTS
    assert "llmbook.model.attention.attention_reference" in OBJECTS


@pytest.mark.parametrize("module", [m.__name__ for m in public_modules()])
def test_module_has_docstring(module):
    assert (importlib.import_module(module).__doc__ or "").strip(), module


@pytest.mark.parametrize("qualname", sorted(OBJECTS))
def test_public_object_has_field_list_docstring(qualname):
    doc = inspect.getdoc(OBJECTS[qualname]) or ""
    assert doc.strip(), f"{qualname} has no docstring"
    assert not re.search(r"^\s*(Args|Returns|Raises):\s*$", doc, re.M), (
        f"{qualname} uses Google-style sections; use :param x: / :returns: field lists"
    )
    obj = OBJECTS[qualname]
    if inspect.isfunction(obj):
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        for p in params:
            assert f":param {p}:" in doc, f"{qualname} does not document parameter {p!r}"
