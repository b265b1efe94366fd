"""flashspmm.torch.sparsify on tiny transformers models of each family and on nn.Sequential (CPU)."""

import copy
import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import flashspmm.torch as fst  # noqa: E402
from test_torch_common import FAMILIES, block_linears, pruned_copy, rel_err, seed_torch, tiny_model, token_ids  # noqa: E402

TOL = 2e-3  # fp16 logits of the same pruned weights through two code paths


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fuse", [True, False])
def test_family_matches_the_pruned_dense_model(family, fuse):
    seed_torch()
    model = tiny_model(family)
    names = block_linears(model)
    ref = pruned_copy(model, 0.6, names)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    report = fst.sparsify(model, 0.6, fuse=fuse, progress=False)

    # never the embeddings or the LM head; every block Linear replaced
    assert model.get_input_embeddings().weight is embed
    assert model.get_output_embeddings() is head and isinstance(head, torch.nn.Linear)
    assert not any(isinstance(m, torch.nn.Linear) for n, m in model.named_modules() if ".layers." in n)
    layers = len(model.model.layers) if family != "opt" else len(model.model.decoder.layers)
    assert len(report) == layers * (4 if fuse else 7 if family != "opt" else 6)
    for r in report:
        assert abs(r.sparsity - 0.6) < 0.02 and r.bytes_after < r.bytes_before
    text = str(report)
    assert "total" in text and report[0].name in text

    # the sparse weights are exactly the reference's pruned weights
    for name, m in model.named_modules():
        if isinstance(m, fst.FusedSparseLinear):
            parent = name.rpartition(".")[0]
            stacked = torch.cat([ref.get_submodule(f"{parent}.{c}").weight for c in m.names])
            assert torch.equal(m.to_dense(), stacked), name
            assert fuse
        elif isinstance(m, fst.SparseLinear):
            assert torch.equal(m.to_dense(), ref.get_submodule(name).weight), name

    ids = token_ids(model)
    with torch.no_grad():
        got = model(ids).logits
        want = ref(ids).logits
    assert torch.isfinite(got).all()
    assert rel_err(got, want) <= TOL


def test_fused_siblings_share_one_call_and_run_the_model_code_unchanged(monkeypatch):
    seed_torch()
    model = tiny_model("llama")
    fst.sparsify(model, 0.5, progress=False)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, fst.SparseLinearSlice) and isinstance(attn.qkv_proj, fst.FusedSparseLinear)
    assert attn.q_proj.fused is attn.qkv_proj
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (64, 32)
    # the fused matrix is stored once
    sd = model.state_dict()
    assert "model.layers.0.self_attn.qkv_proj.blob" in sd
    assert not any(k.startswith("model.layers.0.self_attn.q_proj") for k in sd)

    calls = []
    real = torch.ops.flashspmm.linear

    class Counting:
        def __call__(self, *args):
            calls.append(args[3])
            return real(*args)

    monkeypatch.setattr(torch.ops.flashspmm, "linear", Counting())
    with torch.no_grad():
        model(token_ids(model))
    assert len(calls) == 2 * 4  # qkv, o, gate+up, down per layer
    assert attn.qkv_proj._cache_input is None  # nothing kept after the siblings took their parts

    # siblings called on different inputs still get their own product
    h1, h2 = torch.randn(2, 3, 64).half(), torch.randn(2, 3, 64).half()
    with torch.no_grad():
        q1, k2 = attn.q_proj(h1), attn.k_proj(h2)
        dense = attn.qkv_proj.to_dense()
        assert rel_err(q1, h1.double() @ dense[:64].double().T) <= 1e-3
        assert rel_err(k2, h2.double() @ dense[64:96].double().T) <= 1e-3


def test_deepcopy_and_pickle_of_a_sparsified_model():
    import io

    seed_torch()
    model = tiny_model("llama")
    fst.sparsify(model, 0.5, progress=False)
    ids = token_ids(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buf, weights_only=False)):
        attn = copied.model.layers[0].self_attn
        assert attn.q_proj.fused is attn.qkv_proj and attn.qkv_proj is not model.model.layers[0].self_attn.qkv_proj
        with torch.no_grad():
            assert torch.equal(copied(ids).logits, model(ids).logits)


def test_sequential_and_include_exclude():
    seed_torch()
    seq = torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 80), torch.nn.ReLU(), torch.nn.Linear(80, 16)
    ).half()
    ref = pruned_copy(seq, 0.5, ["0", "2"])
    report = fst.sparsify(seq, 0.5, exclude=r"^4$", progress=False)
    assert [r.name for r in report] == ["0", "2"]
    assert isinstance(seq[0], fst.SparseLinear) and isinstance(seq[4], torch.nn.Linear)
    x = torch.randn(5, 64).half()
    with torch.no_grad():
        assert rel_err(seq(x), ref(x)) <= TOL

    model = tiny_model("llama")
    report = fst.sparsify(model, 0.5, include=r"mlp\.(gate|up)_proj", progress=False)
    assert [r.name for r in report] == [f"model.layers.{i}.mlp.gate_proj+up_proj" for i in range(2)]
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    # include may name the head explicitly
    model = tiny_model("llama")
    report = fst.sparsify(model, 0.5, include=r"^lm_head$", progress=False)
    assert [r.name for r in report] == ["lm_head"]


def test_dense_layers_are_released_one_by_one():
    seed_torch()
    model = tiny_model("mistral")
    olds = [weakref.ref(model.get_submodule(n)) for n in block_linears(model)]
    fst.sparsify(model, 0.5, progress=False)
    gc.collect()
    assert all(r() is None for r in olds)


def test_errors_leave_the_model_untouched():
    seed_torch()
    model = tiny_model("llama", dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match=r"model\.half\(\)"):
        fst.sparsify(model, 0.5, progress=False)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            fst.sparsify(model, bad, progress=False)
    with pytest.raises(TypeError):
        fst.sparsify(model, "0.5", progress=False)
    with pytest.raises(ValueError, match="method"):
        fst.sparsify(model, 0.5, method="sparsegpt", progress=False)
    with pytest.raises(ValueError, match="calibration"):
        fst.sparsify(model, 0.5, method="wanda", progress=False)
    with pytest.raises(ValueError, match="no nn.Linear"):
        fst.sparsify(model, 0.5, include="nothing-matches", progress=False)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    half = copy.deepcopy(model).half()
    before = copy.deepcopy(half.state_dict())
    consumed = []

    def calibration():  # an unknown format fails before the calibration pass starts
        consumed.append(1)
        yield token_ids(half)

    for bad, error in (("csr", ValueError), (3, TypeError)):
        with pytest.raises(error, match="format"):
            fst.sparsify(half, 0.5, method="wanda", calibration=calibration(), format=bad, progress=False)
    assert not consumed
    after = half.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_sparsity_zero_and_bfloat16():
    seed_torch()
    model = tiny_model("qwen2", dtype=torch.bfloat16)
    ref = copy.deepcopy(model)
    report = fst.sparsify(model, 0.0, progress=False)
    assert all(r.sparsity < 0.01 for r in report)
    ids = token_ids(model)
    with torch.no_grad():
        assert rel_err(model(ids).logits, ref(ids).logits) <= 1e-2


def test_sparsified_model_under_torch_compile_fullgraph():
    torch._dynamo.reset()
    seed_torch()
    model = tiny_model("llama")
    fst.sparsify(model, 0.5, progress=False)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g.forward)(gm, example_inputs)

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    ids = token_ids(model)
    with torch.no_grad():
        want = model(ids).logits
        got = compiled(ids).logits
    assert torch.equal(got, want)
    assert len(graphs) == 1
    ops = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "flashspmm" in str(n.target)]
    assert len(ops) == 2 * 4  # fusion survives tracing: one op per group
    # the blobs are static inputs of the graph (what CUDA graph trees need)
    blobs = [m.blob for m in model.modules() if isinstance(m, fst.SparseLinear)]
    assert all(getattr(b, "_dynamo_static_input_type", None) is not None for b in blobs)
