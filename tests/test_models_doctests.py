"""The runnable examples in the models' docstrings stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "models.lms",
    "models.datasets",
    "models.two_layer",
    "models.linear",
    "models.kmeans",
    "models.nets",
    "models.tasks",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
