"""python -m flashspmm info / demo / bench."""

import importlib.util
import subprocess
import sys

import flashspmm


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "flashspmm", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_info():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert f"flashspmm {flashspmm.__version__}" in proc.stdout
    assert "CUDA devices:" in proc.stdout
    assert flashspmm.cmake_dir() in proc.stdout


def test_demo():
    proc = run("demo")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "all checks passed" in proc.stdout
    assert "relative error" in proc.stdout


def test_small_demo_options():
    proc = run("demo", "--m", "100", "--k", "70", "--tokens", "3")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"


def test_usage_and_unknown_command():
    assert run("--help").returncode == 0
    proc = run("frobnicate")
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_bench_dispatch():
    proc = run("bench", "--help")
    if importlib.util.find_spec("flashspmm._bench") is None:
        assert proc.returncode == 2 and "flashspmm._bench" in proc.stderr
    else:
        assert "Traceback" not in proc.stderr


def test_bench_convert_dispatch():
    proc = run("bench-convert", "--help")
    assert proc.returncode == 0 and "bench-convert" in proc.stdout and "Traceback" not in proc.stderr
