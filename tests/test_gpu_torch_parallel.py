"""flashspmm.torch.parallel on GPUs over NCCL: the scenarios of test_torch_parallel.py on 2 and 4 GPUs (one rank
per GPU, spawned processes), and the tensor-parallel benchmark's code path under torchrun.

Needs at least 2 GPUs (4 for the world-4 cases); skipped otherwise. NVLink multicast stays off (the environment
defaults below, inherited by the spawned ranks). The comparisons are those of the CPU tests, except that outputs
computed by different kernels (a shard's matrix against the whole one, split-K chosen per shape) are compared
within tolerances rather than bit for bit.
"""

import csv
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
dist = torch.distributed

import test_torch_parallel as cpu  # noqa: E402  (the scenarios and checks, shared)

for _key, _value in {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}.items():
    os.environ.setdefault(_key, _value)

pytestmark = pytest.mark.gpu


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _need(world: int) -> None:
    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("torch.distributed with NCCL is not available")
    if _gpus() < world:
        pytest.skip(f"needs {world} GPUs, {_gpus()} visible")


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def nccl_results(request, tmp_path_factory):
    world = request.param
    _need(world)
    seed, results = cpu.spawn_world(world, tmp_path_factory.mktemp(f"nccl{world}"), backend="nccl", timeout=600)
    return world, results


def test_nccl_parallel_layers(nccl_results):
    world, results = nccl_results
    cpu.check_layers(results, world, exact=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_nccl_parallel_llama_logits(nccl_results, dtype):
    if not cpu._has_transformers():
        pytest.skip("transformers is not installed")
    world, results = nccl_results
    cpu.check_model(results, world, getattr(torch, dtype), exact=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_nccl_checkpoint_shards_round_trip(nccl_results, dtype):
    if not cpu._has_transformers():
        pytest.skip("transformers is not installed")
    world, results = nccl_results
    cpu.check_checkpoint(results, world, getattr(torch, dtype), exact=False)


def _bench(tmp_path, *args):
    out = tmp_path / "bench.csv"
    cmd = [sys.executable, "-m", "flashspmm.torch._bench_tp", *args, "--check", "--csv", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = list(csv.DictReader(out.open()))
    assert rows and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        assert float(r["tokens_per_s"]) > 0 and float(r["peak_gb_per_gpu"]) > 0
        if r["variant"] != "dense":
            assert 0 < float(r["check_rel_err"]) <= 2e-2, r
    return rows


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_bench_tp_tiny(tmp_path, mode):
    """The benchmark on 2 GPUs with a tiny model: CUDA graphs with NCCL collectives captured, and eager."""
    _need(2)
    if not cpu._has_transformers():
        pytest.skip("transformers is not installed")
    rows = _bench(
        tmp_path,
        "--tp",
        "2",
        "--model",
        "tiny",
        "--batch",
        "1,8",
        "--prompt",
        "16",
        "--steps",
        "8",
        "--sparsity",
        "50,70",
        "--mode",
        mode,
    )
    assert [r["variant"] for r in rows] == ["dense"] * 2 + ["sparse50"] * 2 + ["sparse70"] * 2
    assert {r["mode"] for r in rows} == {mode}


def test_bench_tp_llama70b_two_layers(tmp_path):
    """LLaMA-2-70B's shapes (64 query / 8 key-value heads split over the ranks), two decoder layers."""
    _need(2)
    if not cpu._has_transformers():
        pytest.skip("transformers is not installed")
    rows = _bench(
        tmp_path,
        "--tp",
        "2",
        "--model",
        "llama2-70b",
        "--layers",
        "2",
        "--batch",
        "1,8",
        "--prompt",
        "32",
        "--steps",
        "8",
        "--sparsity",
        "50",
    )
    dense = [r for r in rows if r["variant"] == "dense"]
    sparse = [r for r in rows if r["variant"] == "sparse50"]
    assert len(dense) == len(sparse) == 2
    assert float(sparse[0]["weight_gb_per_gpu"]) < float(dense[0]["weight_gb_per_gpu"])
