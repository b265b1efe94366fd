"""Shared pytest set-up: the `gpu` marker, the seeded `rng` fixture, and helpers for subprocess checks."""

import importlib.util
import os
import subprocess
import sys

import pytest

import _toolkit

# JAX would otherwise take 75 % of the GPU memory at its first use, leaving little to torch and cupy.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA device (flashspmm.device_count() > 0) and torch or cupy; skipped otherwise"
    )


def pytest_report_header(config):
    return f"flashspmm test base seed: {_toolkit.base_seed()} (set {_toolkit.SEED_ENV} to replay a run)"


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Name the seed (and the command that replays it) in the report of every failing test that drew one."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and getattr(item, "_fspmm_seeded", False):
        report.sections.append(("flashspmm seed", _toolkit.replay_hint(item.nodeid)))


@pytest.fixture
def rng(request):
    """The test's numpy Generator: seeded from the run's base seed and the test's node id (see _toolkit)."""
    request.node._fspmm_seeded = True
    return _toolkit.make_rng(request.node.nodeid)


def run_python(code, *args, timeout=300):
    """Run `code` in a fresh interpreter (so a crash fails a test instead of killing pytest)."""
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture
def run_py():
    return run_python
