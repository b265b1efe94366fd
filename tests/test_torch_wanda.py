"""Wanda pruning (|w_ij| * ||x_j||_2 per output row) against a float64 reference of the metric (CPU)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flashspmm.torch as fst  # noqa: E402
from test_torch_common import block_linears, rel_err, seed_torch, tiny_model, token_ids  # noqa: E402


def check_wanda_mask(w, pruned, norms64, sparsity):
    """Exactly round(sparsity * K) zeros per row, and no pruned entry scores above a kept one (float64 scores)."""
    M, K = w.shape
    n = int(round(sparsity * K))
    w64 = w.double().numpy()
    score = np.abs(w64) * norms64[None, :]
    kept = (pruned != 0).numpy()
    zero_before = (w == 0).numpy()
    assert np.array_equal(pruned.numpy()[kept], w.numpy()[kept])  # kept values unchanged
    for r in range(M):
        dropped = ~kept[r]
        assert dropped.sum() == max(n, zero_before[r].sum()), r
        if n == 0 or dropped.sum() == K:
            continue
        hi = score[r][dropped].max()
        lo = score[r][kept[r]].min()
        # float32 scores may order near-ties differently than float64: allow their rounding only
        assert hi <= lo * (1 + 1e-6) + 1e-30, (r, hi, lo)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_prune_against_float64(sparsity):
    seed_torch()
    M, K = 37, 150
    w = torch.randn(M, K).half()
    norms = torch.rand(K).double() * 3
    norms[5] = 0.0  # a feature never active: its column goes first
    pruned = fst.wanda_prune(w, norms.float(), sparsity)
    assert pruned.dtype == w.dtype and pruned.shape == w.shape
    check_wanda_mask(w, pruned, norms.numpy(), sparsity)
    assert bool((pruned[:, 5] == 0).all())


def test_wanda_ties_and_count_rule_match_prune():
    # equal norms: Wanda reduces to magnitude, and must pick exactly what flashspmm.prune picks (ties included)
    seed_torch()
    w = torch.randint(-3, 4, (16, 40)).half()  # many ties
    for sparsity in (0.25, 0.5, 0.5125, 0.9):
        assert torch.equal(fst.wanda_prune(w, torch.ones(40), sparsity), fst.prune_weight(w, sparsity)), sparsity


def test_collected_norms_match_float64_inputs():
    seed_torch()
    seq = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.GELU(), torch.nn.Linear(64, 24)).half()
    batches = [torch.randn(b, 48).half() * torch.linspace(0.05, 4, 48).half() for b in (3, 5, 2)]
    layers = [("0", seq[0]), ("2", seq[2])]
    norms = fst.collect_input_norms(seq, layers, batches)
    x0 = torch.cat(batches).double()
    with torch.no_grad():
        x2 = torch.cat([seq[1](seq[0](b)) for b in batches]).double()
    assert rel_err(norms["0"], x0.pow(2).sum(0).sqrt()) <= 1e-5
    assert rel_err(norms["2"], x2.pow(2).sum(0).sqrt()) <= 1e-3  # the hook sees the fp16 activations
    with pytest.raises(ValueError, match="no batches"):
        fst.collect_input_norms(seq, layers, [])


def test_sparsify_wanda_sequential_against_float64_metric():
    seed_torch()
    seq = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32)).half()
    dense = [seq[0].weight.detach().clone(), seq[2].weight.detach().clone()]
    batches = [torch.randn(4, 64).half() * torch.linspace(0.1, 3, 64).half() for _ in range(3)]
    x0 = torch.cat(batches).double()
    first = copy.deepcopy(seq[0])
    with torch.no_grad():  # the second layer's inputs exactly as the model makes them: one batch at a time
        x2 = torch.cat([torch.relu(first(b)) for b in batches]).double()
    report = fst.sparsify(seq, 0.5, method="wanda", calibration=batches, progress=False)
    assert len(report) == 2
    check_wanda_mask(dense[0], seq[0].to_dense(), x0.pow(2).sum(0).sqrt().numpy(), 0.5)
    check_wanda_mask(dense[1], seq[2].to_dense(), x2.pow(2).sum(0).sqrt().numpy(), 0.5)


def test_sparsify_wanda_transformers_dict_batches():
    seed_torch()
    model = tiny_model("llama")
    names = block_linears(model)
    weights = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    batches = [{"input_ids": token_ids(model, 2, 9)} for _ in range(2)]
    # float64 reference norms from the inputs each layer sees in the dense model
    inputs = {n: [] for n in names}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, a, n=n: inputs[n].append(a[0].detach().reshape(-1, a[0].shape[-1]).double())
        )
        for n in names
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    fst.sparsify(model, 0.5, method="wanda", calibration=batches, progress=False)
    for name, m in model.named_modules():
        if isinstance(m, fst.FusedSparseLinear):
            parent = name.rpartition(".")[0]
            rows = 0
            for child, size in zip(m.names, m.splits):
                full = f"{parent}.{child}"
                norms = torch.cat(inputs[full]).pow(2).sum(0).sqrt().numpy()
                check_wanda_mask(weights[full], m.to_dense()[rows : rows + size], norms, 0.5)
                rows += size
        elif isinstance(m, fst.SparseLinear):
            norms = torch.cat(inputs[name]).pow(2).sum(0).sqrt().numpy()
            check_wanda_mask(weights[name], m.to_dense(), norms, 0.5)
    with torch.no_grad():
        assert torch.isfinite(model(token_ids(model)).logits).all()
