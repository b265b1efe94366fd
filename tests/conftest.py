"""Shared pytest set-up: the `gpu` marker, random generators, and helpers for subprocess checks."""

import importlib.util
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA device (flashspmm.device_count() > 0) and torch or cupy; skipped otherwise")


def _gpu_skip_reason():
    try:
        import flashspmm

        count = flashspmm.device_count()
    except Exception as exc:  # the import failing is reported by the CPU tests
        return f"flashspmm not usable: {exc}"
    if count == 0:
        return "no CUDA device visible to flashspmm"
    if not any(importlib.util.find_spec(name) is not None for name in ("torch", "cupy")):
        return "neither torch nor cupy is importable"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def rng():
    """A numpy Generator with a fresh seed for every test (printed, so a failure can be replayed)."""
    seed = secrets.randbits(63)
    print(f"numpy seed: {seed}")
    return np.random.default_rng(seed)


def run_python(code, *args, timeout=300):
    """Run `code` in a fresh interpreter (so a crash fails a test instead of killing pytest)."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def run_py():
    return run_python
