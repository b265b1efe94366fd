"""The command line: ``python -m flashspmm`` / the ``flashspmm`` script (info, demo, bench dispatch, errors)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

import flashspmm
from flashspmm import __main__ as cli


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "flashspmm", *args], capture_output=True, text=True, timeout=timeout)


def test_info():
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    assert f"flashspmm {flashspmm.__version__}" in proc.stdout
    assert "CUDA devices:" in proc.stdout
    assert flashspmm.cmake_dir() in proc.stdout


def test_version():
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"flashspmm {flashspmm.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", flashspmm.__version__)


def test_help_names_the_program_and_every_command():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: flashspmm ")  # the console script's name, not "python -m ..."
    for name, _, _ in cli.COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", proc.stdout, re.M), f"{name} missing from --help"


def test_demo_help_shows_defaults():
    proc = run("demo", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: flashspmm demo")
    assert "(default: 4096)" in proc.stdout and "(default: 0.5,0.7,0.9)" in proc.stdout


def test_no_command_prints_help_and_fails():
    proc = run()
    assert proc.returncode == 2
    assert "usage: flashspmm" in proc.stderr and "demo" in proc.stderr


def test_unknown_command():
    proc = run("frobnicate")
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr and "Traceback" not in proc.stderr


def test_demo():
    proc = run("demo")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "all checks passed" in proc.stdout
    assert "relative error" in proc.stdout


def test_small_demo_options():
    proc = run("demo", "--m", "100", "--k", "70", "--tokens", "3", "--sparsity", "0,0.95", "--seed", "12345")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "seed 12345" in proc.stdout and "all checks passed" in proc.stdout
    assert re.search(r"^\s+0%\s+bitmap", proc.stdout, re.M) and re.search(r"^\s+95%\s+auto", proc.stdout, re.M)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--m", "0"], "argument --m: 0 is outside [1, "),
        (["--k", "-3"], "argument --k: -3 is outside [1, "),
        (["--m", "abc"], "argument --m: 'abc' is not an integer"),
        (["--k", "1e9"], "argument --k: '1e9' is not an integer"),
        (["--m", str(2**40)], "argument --m: 1099511627776 is outside"),
        (["--m", "100000", "--k", "100000"], "10000000000 elements; the demo allows at most"),
        (["--tokens", "0"], "argument --tokens: 0 is outside [1, "),
        (["--tokens", "1000000"], "argument --tokens: 1000000 is outside"),
        (["--sparsity", "1"], "sparsity 1 is outside [0, 1)"),
        (["--sparsity", "0.5,1.5"], "sparsity 1.5 is outside [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity -0.1 is outside [0, 1)"),
        (["--sparsity", "nan"], "sparsity nan is outside [0, 1)"),
        (["--sparsity", "half"], "'half' is not a number"),
        (["--seed", "-1"], "argument --seed: -1 is outside"),
    ],
)
def test_demo_refuses_impossible_sizes(args, message):
    proc = run("demo", *args, timeout=60)
    assert proc.returncode == 2, f"{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "usage: flashspmm demo" in proc.stderr
    assert proc.stdout == ""  # refused before any work


def test_bench_dispatch():
    proc = run("bench", "--help")
    if importlib.util.find_spec("flashspmm._bench") is None:
        assert proc.returncode == 2 and "flashspmm._bench" in proc.stderr
    else:
        assert proc.returncode == 0 and "--quick" in proc.stdout and "Traceback" not in proc.stderr


def test_bench_refuses_unknown_formats():
    if importlib.util.find_spec("flashspmm._bench") is None:
        pytest.skip("flashspmm._bench is not installed")
    proc = run("bench", "--formats", "bitmap,bitmpa:direct", timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown format(s) ['bitmpa:direct']" in proc.stderr and "auto_n1" in proc.stderr
    assert proc.stdout == ""  # refused before any work


def test_bench_byte_limit():
    """The byte limit a bench point is measured against: dense over compressed bytes, x and y included (4096 x
    4096 at 50 %, the bitmap blob of docs/FORMATS.md, one token: 1.77x)."""
    from flashspmm._bench import byte_limit

    io = 4096 * 2 + 4096 * 2
    assert abs(byte_limit(18_907_280, 33_554_432, io) - 1.7739) < 1e-3
    assert byte_limit(100, 100, 10) == 1.0


def test_bench_convert_dispatch():
    proc = run("bench-convert", "--help")
    assert proc.returncode == 0 and "bench-convert" in proc.stdout and "Traceback" not in proc.stderr
    assert "--shapes" in proc.stdout  # the module's own options, handed over unchanged


def test_registered_module_plugs_in(tmp_path, monkeypatch, capsys):
    """One COMMANDS entry adds a command from its own module (add_parser(subparsers) / run(args))."""
    (tmp_path / "fspmm_cli_plugin.py").write_text(
        "def add_parser(subparsers):\n"
        "    p = subparsers.add_parser('echo', help='print a word')\n"
        "    p.add_argument('--word', default='hello')\n"
        "    return p\n"
        "def run(args):\n"
        "    print('echo:', args.word)\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, ("echo", "fspmm_cli_plugin", "add_parser")])
    assert cli.main(["echo", "--word", "sparse"]) == 3
    assert capsys.readouterr().out == "echo: sparse\n"
    # A module this install lacks leaves its command listed, and running it is a clear failure.
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, ("gone", "fspmm_no_such_module", "add_parser")])
    assert cli.main(["info"]) == 0
    assert cli.main(["gone"]) == 2
    assert "no module fspmm_no_such_module" in capsys.readouterr().err


def test_console_script_usage_names_flashspmm():
    """The installed `flashspmm` script (absent when running from a source tree) prints the same usage."""
    script = shutil.which("flashspmm")
    if script is None or os.environ.get("FLASHSPMM_LIBRARY"):
        pytest.skip("no installed flashspmm console script (running from a source tree or a plain CMake build)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: flashspmm ")


def test_cli_format_names_are_compress_names():
    """The CLIs' --format choices (listed without loading the library) are exactly compress()'s format names."""
    from flashspmm._cli_sparsify import FORMAT_CHOICES

    assert tuple(FORMAT_CHOICES) == tuple(flashspmm._matrix.FORMATS)
