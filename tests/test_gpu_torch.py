"""flashspmm.torch on a CUDA device (marked `gpu`; skipped without one): the module and the op (eager,
torch.compile, CUDA graphs, reduce-overhead), sparsify on transformers models, Wanda, checkpoints, the CLI and the
decode benchmark's short form."""

import argparse
import csv
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)
transformers = pytest.importorskip("transformers")

import flashspmm.torch as fst  # noqa: E402
from test_torch_common import FAMILIES, block_linears, pruned_copy, rel_err, seed_torch, tiny_model, token_ids  # noqa: E402
from test_torch_wanda import check_wanda_mask  # noqa: E402

CUDA = torch.device("cuda", torch.cuda.current_device())
TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def random_pruned(M, K, sparsity, dtype=torch.float16, device=CUDA):
    return fst.prune_weight(torch.randn(M, K, device=device).to(dtype), sparsity)


def reference(x, w, bias=None):
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("lead", [(), (1,), (8,), (2, 3, 5)])
def test_module_on_cuda(dtype, fmt, lead):
    seed_torch()
    M, K = 200, 320
    w = random_pruned(M, K, 0.7, dtype)
    bias = torch.randn(M, device=CUDA).to(dtype)
    m = fst.SparseLinear.from_dense(w, bias, format=fmt)
    assert m.blob.is_cuda and m.matrix.device == f"cuda:{CUDA.index}"
    assert m.blob.data_ptr() == m.matrix.data_ptr  # compressed on the GPU into the buffer itself
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(*lead, K, device=CUDA).to(dtype)
    with torch.no_grad():
        y = m(x)
    assert y.is_cuda and y.shape == (*lead, M)
    assert rel_err(y, reference(x, w, bias)) <= TOL[dtype]


def test_moves_and_state_dict_across_devices():
    seed_torch()
    w = random_pruned(96, 128, 0.5, device="cpu")
    bias = torch.randn(96).half()
    m = fst.SparseLinear.from_dense(w, bias)
    x = torch.randn(4, 128).half()
    with torch.no_grad():
        y_cpu = m(x)
        m.cuda()
        assert m.blob.is_cuda and m.bias.is_cuda and m.matrix.device.startswith("cuda")
        y_gpu = m(x.cuda())
        assert rel_err(y_gpu.cpu(), y_cpu) <= 2e-3
        with pytest.raises(ValueError, match="module.to"):
            m(x)  # a CPU input for a CUDA module
        m.to("cpu")
        assert torch.equal(m(x), y_cpu)
    # CUDA state into a CPU module and back
    g = fst.SparseLinear.from_dense(random_pruned(96, 128, 0.8), torch.randn(96, device=CUDA).half())
    m.load_state_dict(g.state_dict())
    assert m.blob.device.type == "cpu" and torch.equal(m.to_dense(), g.to_dense().cpu())
    g2 = fst.SparseLinear.from_dense(random_pruned(96, 128, 0.3), torch.randn(96, device=CUDA).half())
    g2.load_state_dict(m.state_dict())
    assert g2.blob.is_cuda and torch.equal(g2.to_dense(), g.to_dense()) and torch.equal(g2.bias, g.bias)
    with pytest.raises(RuntimeError, match='Unexpected key.*"bias"'):  # torch's rule: no bias to load into
        fst.SparseLinear.from_dense(random_pruned(96, 128, 0.3)).load_state_dict(m.state_dict())
    with pytest.raises(TypeError, match="cannot be converted"):
        g2.float()


def test_manual_cuda_graph_capture():
    seed_torch()
    model = torch.nn.Sequential(
        fst.SparseLinear.from_dense(random_pruned(256, 128, 0.5), torch.randn(256, device=CUDA).half()),
        torch.nn.SiLU(),
        fst.SparseLinear.from_dense(random_pruned(64, 256, 0.7)),
    ).eval()
    x = torch.randn(8, 128, device=CUDA).half()
    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            model(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = model(x)
        for _ in range(3):
            x.copy_(torch.randn(8, 128, device=CUDA).half())
            y.fill_(float("nan"))
            g.replay()
            torch.cuda.synchronize()
            assert rel_err(y, model(x)) <= 1e-3


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compile_fullgraph_on_cuda(mode):
    torch._dynamo.reset()
    seed_torch()
    model = torch.nn.Sequential(
        fst.SparseLinear.from_dense(random_pruned(256, 128, 0.5), torch.randn(256, device=CUDA).half()),
        torch.nn.GELU(),
        fst.SparseLinear.from_dense(random_pruned(64, 256, 0.7)),
    ).eval()
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    with torch.no_grad():
        for _ in range(4):  # warm-up, recording and replays of the CUDA graph trees
            x = torch.randn(4, 128, device=CUDA).half()
            got = compiled(x).clone()
            assert rel_err(got, model(x)) <= 2e-3


def test_hf_model_reduce_overhead():
    torch._dynamo.reset()
    seed_torch()
    model = tiny_model("llama").to(CUDA)
    fst.sparsify(model, 0.5, progress=False)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        for _ in range(4):
            ids = token_ids(model).to(CUDA)
            got = compiled(input_ids=ids, use_cache=False).logits.clone()
            assert rel_err(got, model(input_ids=ids, use_cache=False).logits) <= 2e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_sparsify_families_on_cuda(family):
    seed_torch()
    model = tiny_model(family).to(CUDA)
    names = block_linears(model)
    ref = pruned_copy(model, 0.5, names)
    report = fst.sparsify(model, 0.5, progress=False)
    assert len(report) > 0
    assert all(m.blob.is_cuda for m in model.modules() if isinstance(m, fst.SparseLinear))
    ids = token_ids(model, 3, 11).to(CUDA)
    with torch.no_grad():
        assert rel_err(model(ids).logits, ref(ids).logits) <= 2e-2
        one = ids[:, :1]
        assert rel_err(model(one).logits, ref(one).logits) <= 2e-2


def test_wanda_on_cuda_against_float64():
    seed_torch()
    seq = torch.nn.Sequential(torch.nn.Linear(128, 192), torch.nn.ReLU(), torch.nn.Linear(192, 64)).half().to(CUDA)
    w0 = seq[0].weight.detach().cpu()
    batches = [
        torch.randn(6, 128, device=CUDA).half() * torch.linspace(0.1, 3, 128, device=CUDA).half() for _ in range(3)
    ]
    fst.sparsify(seq, 0.6, method="wanda", calibration=batches, progress=False)
    norms = torch.cat(batches).double().pow(2).sum(0).sqrt().cpu().numpy()
    check_wanda_mask(w0, seq[0].to_dense().cpu(), norms, 0.6)


def test_checkpoint_to_cuda_and_sparse_bitmask(tmp_path):
    seed_torch()
    model = tiny_model("qwen2").to(CUDA)
    fst.sparsify(model, 0.5, progress=False)
    fst.save_sparse(model, tmp_path / "ck", max_shard_size="40KB")
    loaded = fst.from_pretrained(tmp_path / "ck", device=CUDA)
    assert all(m.blob.is_cuda for m in loaded.modules() if isinstance(m, fst.SparseLinear))
    ids = token_ids(model).to(CUDA)
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, model(ids).logits) <= 2e-2

    from safetensors.torch import save_file

    from test_torch_checkpoint import bitmask_entries

    w = random_pruned(96, 64, 0.6, device="cpu")
    save_file(bitmask_entries("layer", w), str(tmp_path / "ct.safetensors"))
    mats = fst.read_sparse_bitmask(tmp_path / "ct.safetensors", device=CUDA)
    assert mats["layer.weight"].device.startswith("cuda")
    assert torch.equal(torch.as_tensor(mats["layer.weight"].to_dense()).cpu(), w)


def test_cli_on_cuda(tmp_path):
    seed_torch()
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "dense", max_shard_size="40KB")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashspmm._cli_sparsify",
            str(tmp_path / "dense"),
            str(tmp_path / "sparse"),
            "--sparsity",
            "0.5",
            "--device",
            "auto",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr
    assert "on cuda" in r.stdout
    loaded = fst.from_pretrained(tmp_path / "sparse", device=CUDA)
    ref = pruned_copy(model, 0.5, block_linears(model)).to(CUDA)
    ids = token_ids(model).to(CUDA)
    with torch.no_grad():
        assert rel_err(loaded(ids).logits, ref(ids).logits) <= 2e-2
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "flashspmm._cli_sparsify",
            str(tmp_path / "dense"),
            str(tmp_path / "bad"),
            "--sparsity",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and not (tmp_path / "bad").exists()


def test_bench_decoder_graph_matches_a_full_forward():
    from flashspmm import _bench_model as bm

    config = bm.make_config("tiny", None)
    model, _ = bm.build_model(config, CUDA, seed=1, sparsity=0.5, compress_layers=True, progress=False)
    d = bm.Decoder(model, batch=2, prompt=6, cache_len=24, device=CUDA, seed=2)
    d.capture()
    seq = torch.cat([d.prompt_ids, *d.history], dim=1)  # the prompt and the tokens of the warm-up steps
    with torch.no_grad():
        for _ in range(3):
            feed = d.ids.clone()
            d.logits.fill_(float("nan"))
            d.graph.replay()
            seq = torch.cat([seq, feed], dim=1)
            want = model(input_ids=seq, use_cache=False).logits[:, -1]
            torch.cuda.synchronize()
            assert rel_err(d.logits[:, -1], want) <= 2e-2
            assert torch.equal(d.ids, d.logits[:, -1:].argmax(-1))


def test_bench_model_short_form(tmp_path):
    from flashspmm import _bench_model as bm

    out = tmp_path / "b.csv"
    parser = bm._configure(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--models",
            "tiny",
            "--batch",
            "1,4",
            "--sparsity",
            "50,70",
            "--mode",
            "graph,eager",
            "--steps",
            "8",
            "--prompt",
            "8",
            "--csv",
            str(out),
            "--png",
            str(tmp_path / "b.png"),
            "--no-progress",
        ]
    )
    assert bm.run(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        assert r["status"] == "ok", r
        assert float(r["tokens_per_s"]) > 0 and float(r["peak_gb"]) > 0
        if r["variant"] != "dense":
            assert float(r["check_rel_err"]) <= bm.CHECK_TOL
            if r["mode"] == "graph":
                assert float(r["kernel_speedup"]) > 0
