"""The usage examples in the library's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import anomaly_spotter

# Every module of every room (walk_packages: iter_modules would see only the top level).
MODULES = sorted(info.name for info in pkgutil.walk_packages(anomaly_spotter.__path__, "anomaly_spotter."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, (
        f"{result.failed} docstring example(s) of {name} failed "
        f"(run pytest --doctest-modules src/{name.replace('.', '/')}.py)"
    )
