"""The examples in public docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

from shapecheck._compat import torch_at_least

MODULES = [
    "shapecheck._explain", "shapecheck._report", "shapecheck._clarify", "shapecheck.demo",
    "shapecheck.testing", "shapecheck.strategies", "shapecheck._spec", "shapecheck._variable",
    "shapecheck._text", "shapecheck._fold", "shapecheck._notebook", "shapecheck._sharding",
    *(["shapecheck._world"] if torch_at_least("2.5") else []),  # fake_world needs DTensor
]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0, f"{name} shows no example"
