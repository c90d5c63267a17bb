"""Optional test dependencies: skipped where they are missing, except in CI (`.ci/run` sets CI=1),
where every one of them is installed and a missing one must fail loudly instead of skipping."""

import importlib
import os

import pytest


def need(module: str):
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)
