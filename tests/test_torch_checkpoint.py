"""Sparse safetensors checkpoints: save_sparse / load_sparse / from_pretrained, the streaming writer and reader,
and the import of compressed-tensors "sparse-bitmask" files (CPU)."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import flashspmm  # noqa: E402
import flashspmm.torch as fst  # noqa: E402
from flashspmm.torch._safetensors import SafetensorsError, SafetensorsFile, SafetensorsWriter  # noqa: E402
from test_torch_common import rel_err, seed_torch, tiny_config, tiny_model, token_ids  # noqa: E402


def meta_model(family, **kw):
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(tiny_config(family, **kw), dtype=torch.float16).eval()


def all_tensors_via_safetensors(files):
    out = {}
    for f in files:
        if f.endswith(".safetensors"):
            with safe_open(f, framework="pt") as g:
                meta = g.metadata()
                assert meta["format"] == "pt" and "flashspmm" in meta
                for k in g.keys():
                    out[k] = g.get_tensor(k)
    return out


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("shards", [None, "30KB"])
def test_save_load_round_trip(tmp_path, family, shards):
    seed_torch()
    model = tiny_model(family, tie=(family == "opt"))
    fst.sparsify(model, 0.5, progress=False)
    ids = token_ids(model)
    with torch.no_grad():
        want = model(ids).logits
    files = fst.save_sparse(model, tmp_path / "ckpt", max_shard_size=shards)
    names = sorted(os.listdir(tmp_path / "ckpt"))
    if shards:
        assert "model.safetensors.index.json" in names and sum(n.endswith(".safetensors") for n in names) > 1
        index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) <= set(names)
    else:
        assert "model.safetensors" in names
    assert "config.json" in names
    assert not [n for n in names if n.endswith(".tmp")]

    # readable by the safetensors package, byte for byte what the model holds
    stored = all_tensors_via_safetensors(files)
    sd = model.state_dict()
    for k, v in stored.items():
        assert torch.equal(v, sd[k]), k
    blob = stored[
        "model.layers.0.self_attn.qkv_proj.blob"
        if family == "llama"
        else "model.decoder.layers.0.self_attn.qkv_proj.blob"
    ]
    assert blob.dtype == torch.uint8
    expected = (192, 64) if family == "opt" else (128, 64)
    assert flashspmm.SparseMatrix.from_blob(blob.numpy().tobytes()).shape == expected

    # into a skeleton on the meta device (no dense weights allocated) ...
    skeleton = meta_model(family, tie=(family == "opt"))
    fst.load_sparse(skeleton, tmp_path / "ckpt", device="cpu")
    assert not [n for n, t in skeleton.state_dict().items() if t.device.type == "meta"]
    with torch.no_grad():
        assert torch.equal(skeleton(ids).logits, want)
    if family == "opt":  # tied: one tensor in the file, one parameter in the model
        assert skeleton.lm_head.weight is skeleton.model.decoder.embed_tokens.weight
    # ... and with from_pretrained (config.json + the checkpoint)
    again = fst.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert rel_err(again(ids).logits, want) <= 2e-3  # rotary tables in float32 here, float16 in the original
    assert isinstance(
        again.get_submodule("model.layers.0.mlp.gate_up_proj" if family == "llama" else "model.decoder.layers.0.fc1"),
        fst.SparseLinear,
    )


def test_single_file_and_dense_into_dense(tmp_path):
    seed_torch()
    seq = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 16)).half()
    fst.sparsify(seq, 0.7, progress=False)
    path = tmp_path / "seq.safetensors"
    assert fst.save_sparse(seq, path) == [str(path)]
    other = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 16)).half()
    fst.load_sparse(other, path)
    x = torch.randn(3, 64).half()
    with torch.no_grad():
        assert torch.equal(other(x), seq(x))
    with pytest.raises(ValueError, match="directory"):
        fst.save_sparse(seq, tmp_path / "x.safetensors", max_shard_size="1MB")


def test_load_errors(tmp_path):
    seed_torch()
    model = tiny_model("llama")
    fst.sparsify(model, 0.5, progress=False)
    fst.save_sparse(model, tmp_path / "ok")
    # a model of another shape: the blob's shape is checked against the Linear it replaces
    wrong = tiny_model("llama", layers=2)
    wrong.model.layers[0].mlp.down_proj = torch.nn.Linear(100, 64, bias=False).half()
    with pytest.raises(ValueError, match="down_proj"):
        fst.load_sparse(wrong, tmp_path / "ok")
    # a model without some layer
    fewer = tiny_model("llama", layers=1)
    with pytest.raises(KeyError, match="layers.1"):
        fst.load_sparse(fewer, tmp_path / "ok")
    # strict: tensors left over
    extra = tiny_model("llama")
    extra.model.register_buffer("extra_buffer", torch.zeros(3))
    with pytest.raises(KeyError, match="extra_buffer"):
        fst.load_sparse(extra, tmp_path / "ok")
    fst.load_sparse(tiny_model("llama"), tmp_path / "ok", strict=True)
    # a corrupted blob is refused before use
    data = bytearray((tmp_path / "ok" / "model.safetensors").read_bytes())
    f = SafetensorsFile(str(tmp_path / "ok" / "model.safetensors"))
    info = f.tensors["model.layers.0.self_attn.o_proj.blob"]
    data[info.begin + 300] ^= 0xFF
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(flashspmm.Error, match="CORRUPT|checksum"):
        fst.load_sparse(tiny_model("llama"), tmp_path / "bad")
    # not safetensors / missing shard / no checkpoint
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(SafetensorsError, match="not a valid safetensors"):
        fst.load_sparse(tiny_model("llama"), tmp_path / "junk.safetensors")
    fst.save_sparse(model, tmp_path / "sharded", max_shard_size="20KB")
    shard = sorted(p for p in os.listdir(tmp_path / "sharded") if p.startswith("model-"))[1]
    os.remove(tmp_path / "sharded" / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        fst.load_sparse(tiny_model("llama"), tmp_path / "sharded")
    with pytest.raises(FileNotFoundError):
        fst.load_sparse(tiny_model("llama"), tmp_path / "nothing-here")


def test_writer_streams_unknown_sizes_and_reader_checks(tmp_path):
    rng = np.random.default_rng(seed_torch())
    path = str(tmp_path / "s.safetensors")
    a = rng.integers(0, 255, 1000, dtype=np.uint8)
    b = rng.standard_normal((3, 5)).astype(np.float32)
    c = rng.standard_normal(7).astype(np.float16)
    w = SafetensorsWriter(
        path, [("a", "U8", None, 4096), ("b", "F32", (3, 5), b.nbytes), ("c", "F16", (7,), 14)], {"note": "x" * 40}
    )
    w.write("a", a)
    with pytest.raises(ValueError, match="order"):
        w.write("c", c)
    w.write("b", b)
    w.write("c", c)
    w.close({"note": "short"})
    with safe_open(path, framework="np") as g:
        assert g.metadata() == {"note": "short"}
        assert np.array_equal(g.get_tensor("a"), a) and np.array_equal(g.get_tensor("b"), b)
        assert np.array_equal(g.get_tensor("c"), c)
    f = SafetensorsFile(path)
    assert torch.equal(f.tensor("b"), torch.from_numpy(b)) and f.tensors["a"].begin % 64 == 0
    # files of the safetensors package read back
    save_file({"x": torch.arange(10, dtype=torch.bfloat16), "y": torch.ones(2, 3)}, str(tmp_path / "p.safetensors"))
    g = SafetensorsFile(str(tmp_path / "p.safetensors"))
    assert torch.equal(g.tensor("x"), torch.arange(10, dtype=torch.bfloat16))
    # truncated / inconsistent files
    raw = (tmp_path / "p.safetensors").read_bytes()
    for bad in (raw[:-1], raw[:5], b"\xff" * 8 + raw[8:], raw[:8] + b"[" + raw[9:]):
        (tmp_path / "q.safetensors").write_bytes(bad)
        with pytest.raises(SafetensorsError):
            SafetensorsFile(str(tmp_path / "q.safetensors"))


def bitmask_entries(prefix, dense):
    """The compressed-tensors sparse-bitmask tensors of one weight, built here the way that layout specifies."""
    mask = (dense != 0).numpy()
    counts = mask.sum(axis=1)
    return {
        f"{prefix}.shape": torch.tensor(list(dense.shape)),
        f"{prefix}.compressed": dense[torch.from_numpy(mask)],
        f"{prefix}.bitmask": torch.from_numpy(np.packbits(mask, axis=-1, bitorder="little")),
        f"{prefix}.row_offsets": torch.from_numpy(np.cumsum(counts) - counts),
    }


def test_compressed_tensors_sparse_bitmask_import(tmp_path):
    seed_torch()
    model = tiny_model("llama")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    tensors = {}
    for name, value in model.state_dict().items():
        module = name.rpartition(".")[0]
        if module in names and name.endswith(".weight"):
            pruned = fst.prune_weight(value, 0.6)
            model.get_submodule(module).weight.data.copy_(pruned)
            tensors.update(bitmask_entries(module, pruned))
        else:
            tensors[name] = value.contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    mats = fst.read_sparse_bitmask(tmp_path / "model.safetensors")
    assert sorted(mats) == sorted(n + ".weight" for n in names)
    for n in names:
        W = mats[n + ".weight"]
        assert isinstance(W, flashspmm.SparseMatrix)
        assert np.array_equal(
            W.to_dense().view(np.uint16), model.get_submodule(n).weight.detach().numpy().view(np.uint16)
        )
    loaded = fst.load_sparse(meta_model("llama"), tmp_path / "model.safetensors", device="cpu")
    ids = token_ids(model)
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, model(ids).logits) <= 2e-3
    assert isinstance(loaded.model.layers[1].mlp.gate_up_proj, fst.FusedSparseLinear)

    # inconsistent entries are refused
    bad = dict(tensors)
    prefix = names[0]
    bad[f"{prefix}.row_offsets"] = bad[f"{prefix}.row_offsets"] + 1
    save_file(bad, str(tmp_path / "bad1.safetensors"))
    with pytest.raises(ValueError, match="row_offsets"):
        fst.read_sparse_bitmask(tmp_path / "bad1.safetensors")
    bad = dict(tensors)
    bad[f"{prefix}.compressed"] = bad[f"{prefix}.compressed"][:-1].clone()
    save_file(bad, str(tmp_path / "bad2.safetensors"))
    with pytest.raises(ValueError, match="marks"):
        fst.read_sparse_bitmask(tmp_path / "bad2.safetensors")
