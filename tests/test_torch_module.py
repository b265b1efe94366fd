"""flashspmm.torch.SparseLinear and the flashspmm::linear op on the CPU (the library's C++ reference)."""

import copy
import io

import pytest

torch = pytest.importorskip("torch")

import flashspmm  # noqa: E402
import flashspmm.torch as fst  # noqa: E402
from test_torch_common import rel_err, seed_torch  # noqa: E402

TOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def random_pruned(M, K, sparsity, dtype=torch.float16):
    w = torch.randn(M, K, dtype=torch.float32).to(dtype)
    return fst.prune_weight(w, sparsity)


def reference(x, w, bias=None):
    y = x.double() @ w.double().T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl", "auto"])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (2, 1, 4)])
def test_forward_matches_float64(dtype, fmt, lead):
    seed_torch()
    M, K = 70, 130  # neither a multiple of 64: partial tiles
    w = random_pruned(M, K, 0.6, dtype)
    bias = torch.randn(M).to(dtype)
    m = fst.SparseLinear.from_dense(w, bias, format=fmt)
    assert (m.in_features, m.out_features, m.dtype) == (K, M, dtype)
    assert m.format == (fmt if fmt != "auto" else m.matrix.format)
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(*lead, K).to(dtype)
    with torch.no_grad():
        y = m(x)
    assert y.shape == (*lead, M) and y.dtype == dtype and isinstance(y, torch.Tensor)
    assert rel_err(y, reference(x, w, bias)) <= TOL[dtype]


def test_from_linear_prunes_and_keeps_the_original():
    seed_torch()
    lin = torch.nn.Linear(96, 40).half()
    before = lin.weight.detach().clone()
    m = fst.SparseLinear.from_linear(lin, sparsity=0.75)
    assert torch.equal(lin.weight, before)
    dense = m.to_dense()
    assert torch.equal(dense, fst.prune_weight(before, 0.75))
    assert int((dense == 0).sum(dim=1).min()) == 72 and m.nnz == 40 * 24
    assert torch.equal(m.bias, lin.bias)
    assert not m.bias.requires_grad
    x = torch.randn(3, 96).half()
    with torch.no_grad():
        assert rel_err(m(x), reference(x, dense, lin.bias)) <= 1e-3
    assert "in_features=96, out_features=40, bias=True" in repr(m)


def test_from_linear_wanda_uses_the_norms():
    seed_torch()
    lin = torch.nn.Linear(64, 16, bias=False).half()
    with torch.no_grad():  # |w| in [0.5, 1]: scores of the first columns >= 50 > every other score (<= 1.1)
        lin.weight.copy_((torch.rand(16, 64) * 0.5 + 0.5) * torch.sign(torch.randn(16, 64)))
        lin.weight[:, :8] *= 0.5  # the smallest magnitudes: magnitude pruning would drop them first
    norms = torch.rand(64) + 0.1
    norms[:8] = 200.0
    m = fst.SparseLinear.from_linear(lin, sparsity=0.5, method="wanda", act_norms=norms)
    assert bool((m.to_dense()[:, :8] != 0).all())
    assert bool((fst.prune_weight(lin.weight.detach(), 0.5)[:, :8] == 0).all())
    with pytest.raises(ValueError, match="act_norms"):
        fst.SparseLinear.from_linear(lin, sparsity=0.5, method="wanda")


def test_bad_inputs_are_clear_errors():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5))
    with torch.no_grad():
        with pytest.raises(TypeError, match="dtype"):
            m(torch.randn(2, 64))  # float32
        with pytest.raises(ValueError, match="64"):
            m(torch.randn(2, 63).half())
    with pytest.raises(TypeError, match="half"):
        fst.SparseLinear.from_linear(torch.nn.Linear(8, 8))  # float32 weights
    with pytest.raises(TypeError, match="nn.Linear"):
        fst.SparseLinear.from_linear(torch.nn.Conv1d(4, 4, 1).half())
    with pytest.raises(ValueError, match="shape"):
        fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5), torch.zeros(31).half())
    with pytest.raises(TypeError, match="uint8"):
        fst.SparseLinear(torch.zeros(300, dtype=torch.int16))
    with pytest.raises(flashspmm.Error):
        fst.SparseLinear(torch.zeros(300, dtype=torch.uint8))  # not a blob


def test_requires_grad_names_no_grad():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(16, 64, 0.5))
    x = torch.randn(2, 64).half().requires_grad_()
    with pytest.raises(RuntimeError, match=r"torch\.no_grad\(\).*torch\.inference_mode\(\)"):
        m(x)
    with torch.no_grad():
        m(x)
    with torch.inference_mode():
        y = m(torch.randn(2, 64).half())
    assert y.shape == (2, 16)


def test_state_dict_round_trip_and_torch_save():
    seed_torch()
    a = fst.SparseLinear.from_dense(random_pruned(48, 80, 0.5), torch.randn(48).half())
    b = fst.SparseLinear.from_dense(random_pruned(48, 80, 0.9), torch.randn(48).half())  # another blob size
    sd = a.state_dict()
    assert set(sd) == {"blob", "bias"} and sd["blob"].dtype == torch.uint8
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf)
    result = b.load_state_dict(loaded)
    assert not result.missing_keys and not result.unexpected_keys
    assert b.nbytes == a.nbytes and b.nnz == a.nnz
    assert torch.equal(b.to_dense(), a.to_dense()) and torch.equal(b.bias, a.bias)
    assert b.blob.data_ptr() != loaded["blob"].data_ptr()  # copied, not aliased
    x = torch.randn(4, 80).half()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_load_state_dict_refuses_bad_blobs_and_keeps_the_module():
    seed_torch()
    a = fst.SparseLinear.from_dense(random_pruned(48, 80, 0.5))
    before = a.to_dense()
    other = fst.SparseLinear.from_dense(random_pruned(40, 80, 0.5))
    with pytest.raises(RuntimeError, match="40 x 80"):
        a.load_state_dict(other.state_dict())
    corrupt = a.state_dict()
    corrupt["blob"] = corrupt["blob"].clone()
    corrupt["blob"][200] ^= 0x5A
    with pytest.raises(RuntimeError, match="cannot load blob"):
        a.load_state_dict(corrupt)
    bf16 = fst.SparseLinear.from_dense(random_pruned(48, 80, 0.5, torch.bfloat16))
    with pytest.raises(RuntimeError, match="bfloat16"):
        a.load_state_dict(bf16.state_dict())
    assert torch.equal(a.to_dense(), before)


def test_pickle_and_deepcopy_rebuild_the_matrix():
    seed_torch()
    a = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5), torch.randn(32).half())
    x = torch.randn(3, 64).half()
    with torch.no_grad():
        ref = a(x)
        b = copy.deepcopy(a)
        assert b.blob.data_ptr() != a.blob.data_ptr() and b.matrix is not a.matrix
        assert torch.equal(b(x), ref)
        buf = io.BytesIO()
        torch.save(a, buf)
        buf.seek(0)
        c = torch.load(buf, weights_only=False)
        assert torch.equal(c(x), ref)
        del a  # the copies do not depend on the original
        assert torch.equal(b(x), ref) and torch.equal(c(x), ref)


def test_dtype_changes_are_refused_device_moves_kept():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5), torch.randn(32).half())
    ptr = m.blob.data_ptr()
    assert m.half() is m and m.to("cpu") is m and m.blob.data_ptr() == ptr
    for convert in (lambda: m.float(), lambda: m.bfloat16(), lambda: m.to(torch.float32), lambda: m.double()):
        with pytest.raises(TypeError, match="cannot be converted"):
            convert()
    assert m.bias.dtype == torch.float16  # nothing was converted
    b = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5, torch.bfloat16))
    with pytest.raises(TypeError, match="bfloat16"):
        b.half()
    seq = torch.nn.Sequential(m, torch.nn.ReLU())
    with pytest.raises(TypeError):
        seq.float()


def test_meta_device_skeleton():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5), torch.randn(32).half())
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 64).half()
    with torch.no_grad():
        ref = m(x)
        m.to("meta")
        assert m.matrix is None and m.blob.is_meta
        assert m(x.to("meta")).shape == (2, 32)  # the fake implementation answers for meta tensors
        m.load_state_dict(sd, assign=True)
        assert m.blob.device.type == "cpu" and m.bias.device.type == "cpu"
        assert torch.equal(m(x), ref)


def test_share_memory_moves_the_blob_and_the_op_follows():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(32, 64, 0.5))
    x = torch.randn(2, 64).half()
    with torch.no_grad():
        ref = m(x)
        m.share_memory()  # storage replaced in place: a new address
        assert m.matrix.data_ptr == m.blob.data_ptr()
        assert torch.equal(m(x), ref)


def test_op_opcheck_and_direct_use():
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(70, 130, 0.5), torch.randn(70).half())
    op = torch.ops.flashspmm.linear.default
    for x, bias in ((torch.randn(3, 130).half(), m.bias), (torch.randn(2, 1, 130).half(), None)):
        torch.library.opcheck(op, (x, m.blob, bias, 70, 130))
    # a blob no module owns: validated and used for that call
    blob = m.blob.clone()
    x = torch.randn(3, 130).half()
    with torch.no_grad():
        assert torch.equal(op(x, blob, None, 70, 130), op(x, m.blob, None, 70, 130))
    with pytest.raises(ValueError, match="70 x 130"):
        op(x, m.blob, None, 71, 130)
    # flashspmm.torch.linear for a SparseMatrix whose blob is a torch tensor
    with torch.no_grad():
        assert torch.equal(fst.linear(x, m.matrix, m.bias), m(x))


def test_compile_fullgraph_one_op_no_break():
    torch._dynamo.reset()
    seed_torch()
    model = torch.nn.Sequential(
        fst.SparseLinear.from_dense(random_pruned(96, 64, 0.5), torch.randn(96).half()),
        torch.nn.ReLU(),
        fst.SparseLinear.from_dense(random_pruned(32, 96, 0.7)),
    ).eval()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd

        return aot_autograd(fw_compiler=lambda g, _: g.forward)(gm, example_inputs)  # through the fake kernels

    compiled = torch.compile(model, fullgraph=True, backend=backend)
    x = torch.randn(5, 64).half()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(compiled(x), ref)
        x2 = torch.randn(5, 64).half()
        assert torch.equal(compiled(x2), model(x2))
    assert len(graphs) == 1
    ops = [n for n in graphs[0].graph.nodes if n.op == "call_function" and "flashspmm" in str(n.target)]
    assert len(ops) == 2


def test_compile_with_grad_is_a_clear_error():
    torch._dynamo.reset()
    seed_torch()
    m = fst.SparseLinear.from_dense(random_pruned(16, 64, 0.5))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"torch\.no_grad\(\)"):
        compiled(torch.randn(2, 64).half().requires_grad_())


def _inductor_works():
    try:
        torch._dynamo.reset()
        f = torch.compile(lambda t: t * 2 + 1, backend="inductor")
        return bool(torch.equal(f(torch.ones(4)), torch.full((4,), 3.0)))
    except Exception:
        return False


def test_compile_inductor_cpu():
    if not _inductor_works():
        pytest.skip("torch.compile's inductor cannot build CPU kernels here (no C++ toolchain or Python headers)")
    torch._dynamo.reset()
    seed_torch()
    model = torch.nn.Sequential(
        fst.SparseLinear.from_dense(random_pruned(96, 64, 0.5), torch.randn(96).half()),
        torch.nn.GELU(),
        fst.SparseLinear.from_dense(random_pruned(32, 96, 0.7)),
    ).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 64).half()
    with torch.no_grad():
        assert rel_err(compiled(x), model(x)) <= 2e-3
