"""The API reference lists every public llmbook object together with its docstring.

The pages are rendered by a build of the API reference alone (:mod:`tests.book.api_build`, the book's
own autodoc2 settings), so these tests never build the book or execute a chapter.
"""

from __future__ import annotations

import html
import inspect
import re

import pytest

from tests.book.api_build import build_api_reference
from tests.test_docstrings import OBJECTS


def module_of(qualname: str) -> str:
    obj = OBJECTS[qualname]
    return obj.__module__


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    api = build_api_reference(tmp_path_factory.mktemp("api"))
    return {p.stem: p.read_text(encoding="utf-8") for p in api.glob("*.html")}


@pytest.mark.parametrize("qualname", sorted(OBJECTS))
def test_object_is_documented_in_the_reference(pages, qualname):
    page = pages.get(module_of(qualname))
    assert page is not None, f"no API page for {module_of(qualname)}"
    assert f'id="{qualname}"' in page, f"{qualname} missing from the API reference"
    # The first sentence of the docstring is rendered next to the anchor.
    first = inspect.getdoc(OBJECTS[qualname]).split("\n")[0]
    words = re.findall(r"[A-Za-z]{4,}", first)[:3]
    section = page.split(f'id="{qualname}"', 1)[1][:20000]
    text = html.unescape(re.sub(r"<[^>]+>", " ", section))
    for word in words:
        assert word in text, f"docstring of {qualname} not rendered ({word!r} missing)"
