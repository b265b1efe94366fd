"""``flashspmm sparsify`` (python -m flashspmm._cli_sparsify) on small checkpoints: good and bad inputs (CPU)."""

import argparse
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import flashspmm.torch as fst  # noqa: E402
from flashspmm import _cli_sparsify  # noqa: E402
from test_torch_common import block_linears, pruned_copy, rel_err, seed_torch, tiny_model, token_ids  # noqa: E402


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "flashspmm._cli_sparsify", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith(".tmp")]


@pytest.mark.parametrize("family,shard", [("llama", "40KB"), ("qwen2", None)])
def test_sharded_directory(tmp_path, family, shard):
    seed_torch()
    model = tiny_model(family, tie=(family == "qwen2"))
    src = tmp_path / "dense"
    model.save_pretrained(src, **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (src / "model.safetensors.index.json").exists()
    r = cli(src, tmp_path / "sparse", "--sparsity", "0.5")
    assert r.returncode == 0, r.stderr
    assert "sparsified" in r.stdout and "GB" in r.stdout
    assert "tensors" in r.stderr  # the progress bar
    out = tmp_path / "sparse"
    assert sorted(p for p in os.listdir(src)) == sorted(p for p in os.listdir(out))  # same files, config included
    assert not leftovers(tmp_path)
    names = block_linears(model)
    for f in os.listdir(out):
        if f.endswith(".safetensors"):
            with safe_open(str(out / f), framework="pt") as g:
                meta = json.loads(g.metadata()["flashspmm"])
                for module, record in meta["layers"].items():
                    assert module in names and record["blob"] in g.keys()
                    assert g.get_tensor(record["blob"]).dtype == torch.uint8
                for k in g.keys():
                    assert not (k.endswith(".weight") and k[: -len(".weight")] in names)
    if shard:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert sum(k.endswith(".blob") for k in index["weight_map"]) == len(names)

    loaded = fst.from_pretrained(out)
    ref = pruned_copy(model, 0.5, names)
    ids = token_ids(model)
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, ref(ids).logits) <= 2e-3
    if family == "qwen2":
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_single_file_include_exclude_format(tmp_path):
    seed_torch()
    model = tiny_model("llama")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    r = cli(
        tmp_path / "m.safetensors",
        tmp_path / "o.safetensors",
        "--sparsity",
        "0.7",
        "--include",
        r"mlp\.",
        "--exclude",
        r"down_proj",
        "--format",
        "tiled_csl",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    with safe_open(str(tmp_path / "o.safetensors"), framework="pt") as g:
        blobs = sorted(k for k in g.keys() if k.endswith(".blob"))
        layers = json.loads(g.metadata()["flashspmm"])["layers"]
    assert blobs == [f"model.layers.{i}.mlp.{p}.blob" for i in range(2) for p in ("gate_proj", "up_proj")]
    assert {r["format"] for r in layers.values()} == {"tiled_csl"}
    skeleton = tiny_model("llama")
    fst.load_sparse(skeleton, tmp_path / "o.safetensors", fuse=False)
    assert isinstance(skeleton.model.layers[0].mlp.up_proj, fst.SparseLinear)
    assert isinstance(skeleton.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert int((skeleton.model.layers[1].mlp.gate_proj.to_dense() == 0).sum(1).min()) == round(0.7 * 64)


def test_bad_inputs_leave_nothing_behind(tmp_path):
    seed_torch()
    model = tiny_model("llama")
    src = tmp_path / "dense"
    model.save_pretrained(src, max_shard_size="40KB")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    cases = [
        ((junk, tmp_path / "o1.safetensors", "--sparsity", "0.5"), "not a valid safetensors"),
        ((src, tmp_path / "o2", "--sparsity", "1.0"), r"\[0, 1\)"),
        ((src, tmp_path / "o3", "--sparsity", "-0.25"), r"\[0, 1\)"),
        ((src, tmp_path / "o4", "--sparsity", "0.5", "--method", "wanda"), "Wanda"),
        ((tmp_path / "missing", tmp_path / "o5", "--sparsity", "0.5"), "no such file"),
        ((src, src, "--sparsity", "0.5"), "differ"),
        ((src, tmp_path / "o6", "--sparsity", "0.5", "--include", "("), "regular expression"),
    ]
    for args, message in cases:
        r = cli(*args, "--no-progress")
        assert r.returncode != 0, args
        assert "error" in r.stderr and __import__("re").search(message, r.stderr), (args, r.stderr)
        assert "Traceback" not in r.stderr
    # a float32 checkpoint: unsupported dtype (or converted with --dtype)
    f32 = tmp_path / "f32.safetensors"
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, str(f32))
    r = cli(f32, tmp_path / "o7.safetensors", "--sparsity", "0.5", "--no-progress")
    assert r.returncode == 1 and "F32" in r.stderr and "--dtype" in r.stderr
    r = cli(f32, tmp_path / "o8.safetensors", "--sparsity", "0.5", "--dtype", "float16", "--no-progress")
    assert r.returncode == 0, r.stderr
    # a shard named by the index is missing
    shard = sorted(p for p in os.listdir(src) if p.startswith("model-"))[-1]
    os.rename(src / shard, tmp_path / "moved")
    r = cli(src, tmp_path / "o9", "--sparsity", "0.5", "--no-progress")
    assert r.returncode == 1 and shard in r.stderr
    os.rename(tmp_path / "moved", src / shard)
    # an existing output is not replaced without --force, and --force keeps the kind
    (tmp_path / "taken").mkdir()
    r = cli(src, tmp_path / "taken", "--sparsity", "0.5", "--no-progress")
    assert r.returncode == 1 and "--force" in r.stderr
    r = cli(f32, tmp_path / "taken", "--sparsity", "0.5", "--dtype", "float16", "--force", "--no-progress")
    assert r.returncode == 1 and "same kind" in r.stderr
    r = cli(src, tmp_path / "taken", "--sparsity", "0.5", "--force", "--no-progress")
    assert r.returncode == 0 and (tmp_path / "taken" / "model.safetensors.index.json").exists()
    for name in ("o1.safetensors", "o2", "o3", "o4", "o5", "o6", "o7.safetensors", "o9"):
        assert not (tmp_path / name).exists(), name
    assert not leftovers(tmp_path)


def test_failure_midway_removes_the_partial_output(tmp_path, monkeypatch):
    seed_torch()
    model = tiny_model("llama")
    src = tmp_path / "dense"
    model.save_pretrained(src, max_shard_size="40KB")
    import flashspmm

    calls = []
    real = flashspmm.compress

    def failing(*args, **kwargs):  # the 5th matrix fails, after some shards are written
        calls.append(1)
        if len(calls) == 5:
            raise flashspmm.Error(flashspmm._native.lib.FSPMM_ERR_INVALID_ARGUMENT, "injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(flashspmm, "compress", failing)
    parser = argparse.ArgumentParser()
    _cli_sparsify.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sparsify", str(src), str(tmp_path / "out"), "--sparsity", "0.5", "--no-progress"])
    assert args.run is _cli_sparsify.run
    assert _cli_sparsify.run(args) == 1
    assert len(calls) == 5
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
