"""flashspmm.torch.parallel on CPUs: column/row-parallel sparse linears, a parallelized LLaMA, per-rank checkpoints.

Every world (2 and 4 ranks) is one set of spawned processes joined over gloo (init_method file://), which runs all
the scenarios below in turn and saves what it saw; the tests then compare. References: the single-process
flashspmm model with the same pruned weights (the CPU reference linear), and float64 / float32 dense products.
A scenario that raises on a rank is recorded with its traceback; the ranks agree after each scenario, so one
failure never leaves the others waiting in a collective. The GPU tests (test_gpu_torch_parallel.py) run the same
scenarios over NCCL.
"""

from __future__ import annotations

import copy
import datetime
import os
import pickle
import secrets
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
dist = torch.distributed
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available in this torch build", allow_module_level=True)

import flashspmm.torch as fst  # noqa: E402
from flashspmm.torch import parallel as tp  # noqa: E402

TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}  # of max |reference|: partial sums rounded, added in another order
MODEL_TOL = {torch.float16: 1e-2, torch.bfloat16: 4e-2}
SPARSITY = 0.5
M, K = 96, 160  # layer tests: both divisible by 2 and 4, K / 4 = 40 is not a multiple of 8


def _has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the spawned side ------------------------------------------------------------------------------------------


def _agree(ok: bool, device) -> bool:
    """True when the scenario succeeded on every rank."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _error(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _randn(shape, gen, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * scale).to(device=device, dtype=dtype)


def scenario_layers(rank, world, workdir, seed, device):
    """Column- and row-parallel layers against SparseLinear and float64, both dtypes; error messages."""
    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        gen = _gen(seed, device)
        w = _randn((M, K), gen, dtype, device, K**-0.5)
        bias = _randn((M,), gen, dtype, device)  # O(1): a bias added more than once shows
        w2 = _randn((K, M), gen, dtype, device, M**-0.5)
        x = _randn((2, 3, K), gen, dtype, device)
        nan = torch.full((2, 3, M), float("nan"), dtype=dtype, device=device)
        rows = slice(rank * M // world, (rank + 1) * M // world)
        cols = slice(rank * K // world, (rank + 1) * K // world)
        r = {"rows": (rows.start, rows.stop), "cols": (cols.start, cols.stop)}
        with torch.inference_mode():
            # column-parallel: the shard's rows pruned as whole rows
            pruned = fst.prune_weight(w, SPARSITY)
            ref = fst.SparseLinear.from_dense(pruned, bias)
            col = tp.ColumnParallelSparseLinear.from_dense(w, bias, sparsity=SPARSITY, gather_output=True)
            y = nan.clone()
            y.copy_(col(x))
            r["col_gathered"], r["col_ref"] = y, ref(x)
            r["col_ref64"] = x.double() @ pruned.double().T + bias.double()
            r["col_shard_dense"], r["col_shard_expected"] = col.to_dense(), pruned[rows]
            local = tp.ColumnParallelSparseLinear.from_dense(w, bias, sparsity=SPARSITY, gather_output=False)
            r["col_local"] = local(x)
            r["col_sizes"] = (col.out_features, col.total_out_features, col.in_features)
            # row-parallel: every rank prunes its own block of every row
            blocks = [
                fst.prune_weight(w[:, i * K // world : (i + 1) * K // world].contiguous(), SPARSITY)
                for i in range(world)
            ]
            pruned_rows = torch.cat(blocks, dim=1)
            ref_row = fst.SparseLinear.from_dense(pruned_rows, bias)
            row = tp.RowParallelSparseLinear.from_dense(w, bias, sparsity=SPARSITY, input_is_parallel=True)
            row_full = tp.RowParallelSparseLinear.from_dense(w, bias, sparsity=SPARSITY, input_is_parallel=False)
            r["row"], r["row_full_input"] = row(x[..., cols].contiguous()), row_full(x)
            r["row_ref"] = ref_row(x)
            r["row_ref64"] = x.double() @ pruned_rows.double().T + bias.double()
            r["row_shard_dense"], r["row_shard_expected"] = row.to_dense(), blocks[rank]
            r["row_sizes"] = (row.out_features, row.in_features, row.total_in_features)
            # Wanda: the whole layer's activation norms, sliced for the row-parallel shard
            norms = torch.rand(K, generator=gen) + 0.5
            r["wanda_col"] = tp.ColumnParallelSparseLinear.from_dense(
                w, None, sparsity=SPARSITY, method="wanda", act_norms=norms
            ).to_dense()
            r["wanda_col_expected"] = fst.wanda_prune(w, norms, SPARSITY)[rows]
            r["wanda_row"] = tp.RowParallelSparseLinear.from_dense(
                w, None, sparsity=SPARSITY, method="wanda", act_norms=norms
            ).to_dense()
            r["wanda_row_expected"] = fst.wanda_prune(w[:, cols].contiguous(), norms[cols], SPARSITY)
            # a column-parallel layer feeding a row-parallel one (the MLP pattern), weights pruned beforehand
            up = tp.ColumnParallelSparseLinear.from_dense(pruned, bias, gather_output=False)
            pruned2 = fst.prune_weight(w2, SPARSITY)
            down = tp.RowParallelSparseLinear.from_dense(pruned2, None, input_is_parallel=True)
            r["chain"] = down(torch.relu(up(x)))
            r["chain_ref"] = fst.SparseLinear.from_dense(pruned2)(torch.relu(ref(x)))
            # copies: deepcopy shares the group, pickling keeps the default group
            r["deepcopy"] = copy.deepcopy(col)(x)
            r["pickled"] = pickle.loads(pickle.dumps(col))(x)
            # errors
            r["err_col_divisible"] = _error(lambda: tp.ColumnParallelSparseLinear.from_dense(w[: M - 1], None))
            r["err_row_divisible"] = _error(lambda: tp.RowParallelSparseLinear.from_dense(w[:, : K - 1], None))
            r["err_shard_total"] = _error(lambda: tp.ColumnParallelSparseLinear(col.blob, total_out_features=2 * M))
            r["err_row_shard_total"] = _error(lambda: tp.RowParallelSparseLinear(row.blob, total_in_features=K + world))
            r["err_row_whole_input"] = _error(lambda: row(x))
            other = tp.ColumnParallelSparseLinear.from_dense(torch.cat([w, w]), None)  # a shard twice as tall
            r["err_state_dict"] = _error(lambda: other.load_state_dict(col.state_dict(), strict=False))
            r["err_dtype"] = _error(lambda: tp.ColumnParallelSparseLinear.from_dense(w.float(), None))
        out[str(dtype)] = r
    return out


def _tiny_config(world: int, **overrides):
    import transformers

    spec = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=96,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    spec.update(overrides)
    return transformers.LlamaConfig(**spec)


def _tiny_model(config, seed: int, dtype, device):
    import transformers

    torch.manual_seed(seed)
    # built in dtype rather than converted, so the rotary inv_freq buffer stays float32 as a loaded model has it
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    with torch.no_grad():  # weights large enough that the layers matter (the default init is very small)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return model.to(device=device).eval()


def _prune_blocks(model):
    with torch.no_grad():
        for _, m in fst.select_linears(model):
            m.weight.copy_(fst.prune_weight(m.weight, SPARSITY))
    return model


def _decode_logits(model, ids, prefill: int):
    """Logits of a prefill of ``ids[:, :prefill]``, then of one step per further token of ``ids`` through the
    model's default KV cache (given tokens, not the model's own choice: both models see the same inputs)."""
    import inspect

    # transformers 5.x renamed past_key_values to cache (argument and output); take whichever this one has
    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    outs = []
    with torch.inference_mode():
        out = model(input_ids=ids[:, :prefill], use_cache=True)
        outs.append(out.logits)
        for step in range(prefill, ids.shape[1]):
            cache = getattr(out, key, None)
            assert cache is not None, f"the model returned no {key}"
            out = model(input_ids=ids[:, step : step + 1], use_cache=True, **{key: cache})
            outs.append(out.logits)
    return outs


def scenario_model(rank, world, workdir, seed, device, dtype):
    """A tiny parallelized LlamaForCausalLM against the single-process sparse model with the same weights."""
    import transformers

    r = {}
    config = _tiny_config(world)
    dense = _tiny_model(config, seed, dtype, device)
    pruned = _prune_blocks(copy.deepcopy(dense))
    gen = _gen(seed + 1, device)
    ids = torch.randint(0, config.vocab_size, (2, 7), generator=gen).to(device)

    ref = copy.deepcopy(pruned)
    fst.sparsify(ref, 0.0, progress=False)  # the same pruned weights, compressed in one process
    model = copy.deepcopy(pruned)
    report = fst.parallelize(model)  # no sparsity: the weights are compressed as they are
    r["report_names"] = [x.name for x in report]
    r["report_shapes"] = [x.shape for x in report]
    with torch.inference_mode():
        r["ref"] = ref(input_ids=ids, use_cache=False).logits
        r["tp"] = model(input_ids=ids, use_cache=False).logits
        r["dense32"] = copy.deepcopy(pruned).float()(input_ids=ids, use_cache=False).logits
    r["ref_decode"] = _decode_logits(ref, ids, 4)
    r["tp_decode"] = _decode_logits(model, ids, 4)
    with torch.inference_mode():  # transformers' own generation loop (default cache), greedy
        r["generated"] = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False, pad_token_id=0
        )
    attn = model.model.layers[0].self_attn
    r["generated_prompt"] = ids
    r["modules"] = {name: type(m).__name__ for name, m in model.model.layers[0].named_modules() if name}
    r["qkv_splits"] = (tuple(attn.qkv_proj.splits), tuple(attn.qkv_proj.total_splits))
    r["o_sizes"] = (attn.o_proj.in_features, attn.o_proj.total_in_features, attn.o_proj.out_features)

    unfused = copy.deepcopy(pruned)
    fst.parallelize(unfused, fuse=False)
    with torch.inference_mode():
        r["tp_unfused"] = unfused(input_ids=ids, use_cache=False).logits
    r["unfused_q"] = type(unfused.model.layers[0].self_attn.q_proj).__name__

    # each rank prunes its own shards: column shards get the rows of the whole matrix's pruning, row shards
    # their own block's pruning
    own = copy.deepcopy(dense)
    fst.parallelize(own, sparsity=SPARSITY)
    shard_ok = {}
    for name, m in dense.named_modules():
        if not isinstance(m, torch.nn.Linear) or ".layers." not in f".{name}":
            continue
        parent, _, child = name.rpartition(".")
        w = m.weight.detach()
        if child in ("o_proj", "down_proj"):
            k = w.shape[1] // world
            expected = fst.prune_weight(w[:, rank * k : (rank + 1) * k].contiguous(), SPARSITY)
        else:
            n = w.shape[0] // world
            expected = fst.prune_weight(w, SPARSITY)[rank * n : (rank + 1) * n]
        layer = own.get_submodule(name)
        if isinstance(layer, fst.SparseLinearSlice):
            fused = layer.fused
            start = sum(fused.splits[: layer.index])
            got = fused.to_dense()[start : start + fused.splits[layer.index]]
        else:
            got = layer.to_dense()
        shard_ok[name] = bool(torch.equal(got, expected))
    r["own_shards_equal"] = shard_ok
    with torch.inference_mode():
        r["own_logits_finite"] = bool(torch.isfinite(own(input_ids=ids, use_cache=False).logits).all())

    # Wanda through parallelize: activation norms from the dense model's calibration pass, every shard half zeros
    wanda = copy.deepcopy(dense)
    fst.parallelize(wanda, sparsity=SPARSITY, method="wanda", calibration=[ids])
    r["wanda_density"] = sorted({round(m.density, 3) for m in wanda.modules() if isinstance(m, tp._TensorParallel)})
    with torch.inference_mode():
        r["wanda_logits_finite"] = bool(torch.isfinite(wanda(input_ids=ids, use_cache=False).logits).all())

    # errors: heads that cannot be split, an already parallel model, a tp-parallel checkpoint of a model twice
    bad = _tiny_model(
        _tiny_config(world, hidden_size=16 * world, num_attention_heads=2 * world, num_key_value_heads=1),
        seed,
        dtype,
        device,
    )
    r["err_heads"] = _error(lambda: fst.parallelize(bad))
    r["err_twice"] = _error(lambda: fst.parallelize(model))
    r["err_after_sparsify"] = _error(lambda: fst.parallelize(ref))
    r["err_plan_pairing"] = _error(
        lambda: fst.parallelize(
            copy.deepcopy(pruned), plan={k: v for k, v in tp.DEFAULT_TP_PLAN.items() if "o_proj" not in k}
        )
    )
    r["err_plan_style"] = _error(lambda: fst.parallelize(copy.deepcopy(pruned), plan={"layers.*.mlp.up_proj": "x"}))
    del transformers
    return r, model, config, ids


def scenario_checkpoint(rank, world, workdir, seed, device, model, config, ids):
    """Per-rank shards: save, load into a meta skeleton, same logits; metadata; wrong world sizes."""
    import transformers

    from flashspmm.torch._safetensors import SafetensorsFile

    r = {}
    path = os.path.join(workdir, f"ckpt-{model.dtype}".replace("torch.", ""))
    written = fst.save_sparse_parallel(model, path)
    r["written"] = os.path.basename(written)
    f = SafetensorsFile(written)
    r["meta"] = __import__("json").loads(f.metadata["flashspmm_tp"])
    f.close()
    r["files"] = sorted(os.listdir(path))
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(config)
    loaded = fst.load_sparse_parallel(skeleton, path, device=device)
    with torch.inference_mode():
        r["before"] = model(input_ids=ids, use_cache=False).logits
        r["after"] = loaded(input_ids=ids, use_cache=False).logits
    r["loaded_types"] = sorted({type(m).__name__ for m in loaded.modules() if isinstance(m, tp._TensorParallel)})

    # the checkpoint read by a smaller group: ranks [0, world / 2) only (every rank creates the group)
    sub = dist.new_group(list(range(world // 2)))
    if rank < world // 2:
        with torch.device("meta"):
            other = transformers.LlamaForCausalLM(config)
        r["err_world"] = _error(lambda: fst.load_sparse_parallel(other, path, group=sub, device=device))
    dist.barrier()
    return r


def _worker(rank, world, workdir, seed, backend):
    torch.set_num_threads(1)  # several ranks share few cores
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    dist.init_process_group(
        backend,
        init_method=f"file://{workdir}/init",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    results = {}
    try:
        steps = [("layers", lambda: scenario_layers(rank, world, workdir, seed, device))]
        if _has_transformers():
            state = {}

            def model_step(dtype):
                def run():
                    r, model, config, ids = scenario_model(rank, world, workdir, seed, device, dtype)
                    state[dtype] = (model, config, ids)
                    return r

                return run

            def checkpoint_step(dtype):
                return lambda: scenario_checkpoint(rank, world, workdir, seed, device, *state[dtype])

            for dtype in (torch.bfloat16, torch.float16):
                steps.append((f"model-{dtype}", model_step(dtype)))
                steps.append((f"checkpoint-{dtype}", checkpoint_step(dtype)))
        for name, fn in steps:
            t0 = time.perf_counter()
            try:
                results[name] = fn()
                ok = True
            except Exception:
                results[name] = {"__error__": traceback.format_exc()}
                ok = False
            results[name + ".seconds"] = time.perf_counter() - t0
            if not _agree(ok, device):
                results["__stopped__"] = f"a rank failed in {name!r}; later scenarios were not run"
                break
    finally:
        torch.save(_to_cpu(results), os.path.join(workdir, f"result-{rank}.pt"))
        dist.destroy_process_group()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def spawn_world(world: int, workdir, backend: str = "gloo", timeout: float = 240.0):
    """Run every scenario on ``world`` spawned ranks; returns (seed, [results of rank 0, 1, ...])."""
    import torch.multiprocessing as mp

    seed = secrets.randbits(31)
    print(f"world {world} ({backend}): torch seed {seed}")
    workdir = os.fspath(workdir)
    ctx = mp.start_processes(
        _worker, args=(world, workdir, seed, backend), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"world {world}: the ranks did not finish within {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return seed, [torch.load(os.path.join(workdir, f"result-{r}.pt"), weights_only=False) for r in range(world)]


# ---- checks, shared with the GPU tests --------------------------------------------------------------------------


def scenario(results, rank: int, name: str):
    r = results[rank]
    if name not in r:
        pytest.fail(r.get("__stopped__", f"scenario {name!r} did not run"))
    if "__error__" in r[name]:
        pytest.fail(f"rank {rank}, scenario {name!r} raised:\n{r[name]['__error__']}")
    return r[name]


def close(got, ref, tol, what):
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = float(ref.abs().max())
    err = float((got - ref).abs().max())
    assert scale > 0, f"{what}: the reference is all zeros (a test that cannot fail)"
    assert err <= tol * scale, f"{what}: max |error| {err:.3g} > {tol} x max |ref| {scale:.3g}"
    return err / scale


def check_layers(results, world, exact: bool):
    for rank in range(world):
        per_dtype = scenario(results, rank, "layers")
        for key, r in per_dtype.items():
            dtype = getattr(torch, key.replace("torch.", ""))
            tol = TOL[dtype]
            what = f"rank {rank} {key}"
            a, b = r["rows"]
            c, d = r["cols"]
            assert (b - a, d - c) == (M // world, K // world)
            assert r["col_sizes"] == (M // world, M, K)
            assert r["row_sizes"] == (M, K // world, K)
            assert torch.equal(r["col_shard_dense"], r["col_shard_expected"]), f"{what}: column shard"
            assert torch.equal(r["row_shard_dense"], r["row_shard_expected"]), f"{what}: row shard"
            assert torch.equal(r["wanda_col"], r["wanda_col_expected"]), f"{what}: Wanda column shard"
            assert torch.equal(r["wanda_row"], r["wanda_row_expected"]), f"{what}: Wanda row shard"
            if exact:  # the same rows, the same reference arithmetic: the gathered output is bit for bit
                assert torch.equal(r["col_gathered"], r["col_ref"]), f"{what}: column-parallel gathered"
                assert torch.equal(r["col_local"], r["col_ref"][..., a:b]), f"{what}: column-parallel shard"
            close(r["col_gathered"], r["col_ref"], tol, f"{what}: column-parallel vs SparseLinear")
            close(r["col_gathered"], r["col_ref64"], tol, f"{what}: column-parallel vs float64")
            close(r["col_local"], r["col_ref"][..., a:b], tol, f"{what}: column-parallel shard")
            close(r["row"], r["row_ref"], tol, f"{what}: row-parallel vs SparseLinear")
            close(r["row"], r["row_ref64"], tol, f"{what}: row-parallel vs float64")
            assert torch.equal(r["row_full_input"], r["row"]), f"{what}: input_is_parallel=False"
            close(r["chain"], r["chain_ref"], 2 * tol, f"{what}: column -> row chain")
            assert torch.equal(r["deepcopy"], r["col_gathered"]) and torch.equal(r["pickled"], r["col_gathered"])
            if rank > 0:  # every rank has the same reduced / gathered result
                r0 = scenario(results, 0, "layers")[key]
                for k in ("col_gathered", "row", "chain"):
                    if exact:
                        assert torch.equal(r[k], r0[k]), f"{what}: {k} differs from rank 0"
                    else:
                        close(r[k], r0[k], 1e-3, f"{what}: {k} against rank 0")
            assert (
                "not divisible by the world size" in r["err_col_divisible"] and "ValueError" in r["err_col_divisible"]
            )
            assert "in_features" in r["err_row_divisible"] and "ValueError" in r["err_row_divisible"]
            assert "ValueError" in r["err_shard_total"] and "world size" in r["err_shard_total"]
            assert "ValueError" in r["err_row_shard_total"] and "do not match" in r["err_row_shard_total"]
            assert "input_is_parallel=False" in r["err_row_whole_input"]
            assert "rank" in r["err_state_dict"] and "load_sparse_parallel" in r["err_state_dict"]
            assert r["err_dtype"].startswith("TypeError")


def check_model(results, world, dtype, exact: bool):
    tol = MODEL_TOL[dtype]
    name = f"model-{dtype}"
    for rank in range(world):
        r = scenario(results, rank, name)
        what = f"rank {rank} {dtype}"
        close(r["tp"], r["ref"], tol, f"{what}: logits vs the single-process sparse model")
        close(r["tp"], r["dense32"], 2.5 * tol, f"{what}: logits vs the float32 dense model")
        assert len(r["tp_decode"]) == len(r["ref_decode"]) == 4
        for step, (got, ref) in enumerate(zip(r["tp_decode"], r["ref_decode"])):
            close(got, ref, tol, f"{what}: decode step {step} with the KV cache")
        # the sharded KV cache gives what the whole sequence at once gives
        close(r["tp_decode"][-1][:, -1], r["tp"][:, -1], tol, f"{what}: last decode step vs no cache")
        if exact:
            assert torch.equal(r["tp_unfused"], r["tp"]), f"{what}: fuse=False"
        else:
            close(r["tp_unfused"], r["tp"], tol, f"{what}: fuse=False")
        assert r["unfused_q"] == "ColumnParallelSparseLinear"
        types = r["modules"]
        assert types["self_attn.qkv_proj"] == "ColumnParallelFusedSparseLinear"
        assert types["self_attn.q_proj"] == "SparseLinearSlice"
        assert types["self_attn.o_proj"] == "RowParallelSparseLinear"
        assert types["mlp.gate_up_proj"] == "ColumnParallelFusedSparseLinear"
        assert types["mlp.down_proj"] == "RowParallelSparseLinear"
        head_dim = 8
        assert r["qkv_splits"] == (
            (8 // world * head_dim, 4 // world * head_dim, 4 // world * head_dim),
            (8 * head_dim, 4 * head_dim, 4 * head_dim),
        )
        assert r["o_sizes"] == (64 // world, 64, 64)
        assert all(r["own_shards_equal"].values()) and len(r["own_shards_equal"]) == 14, r["own_shards_equal"]
        assert r["own_logits_finite"]
        assert r["wanda_density"] == [0.5] and r["wanda_logits_finite"], r["wanda_density"]
        assert "ValueError" in r["err_heads"] and "key/value heads" in r["err_heads"]
        assert "already tensor-parallel" in r["err_twice"]
        assert r["err_after_sparsify"].startswith("TypeError") and "already compressed" in r["err_after_sparsify"]
        assert "o_proj" in r["err_plan_pairing"] and "rowwise" in r["err_plan_pairing"]
        assert "style 'x'" in r["err_plan_style"]
        assert r["generated"].shape == (2, 7 + 3) and torch.equal(r["generated"][:, :7], r["generated_prompt"])
        if rank > 0:
            r0 = scenario(results, 0, name)
            # every rank computes the same logits, so greedy generation picks the same tokens everywhere
            assert torch.equal(r["generated"], r0["generated"]), f"{what}: generated tokens differ from rank 0"
            if exact:
                assert torch.equal(r["tp"], r0["tp"]), f"{what}: logits differ from rank 0"
            else:
                close(r["tp"], r0["tp"], 1e-3, f"{what}: logits against rank 0")


def check_checkpoint(results, world, dtype, exact: bool):
    name = f"checkpoint-{dtype}"
    for rank in range(world):
        r = scenario(results, rank, name)
        assert r["written"] == f"tp-rank-{rank:05d}-of-{world:05d}.safetensors"
        expected = {f"tp-rank-{i:05d}-of-{world:05d}.safetensors" for i in range(world)}
        assert expected <= set(r["files"]) and "config.json" in r["files"]
        meta = r["meta"]
        assert (meta["rank"], meta["world_size"]) == (rank, world)
        layers = meta["layers"]
        assert len(layers) == 2 * 4  # per decoder layer: qkv, o, gate_up, down
        qkv = layers["model.layers.0.self_attn.qkv_proj"]
        assert qkv["style"] == "colwise" and qkv["parts"] == [["q_proj", 64], ["k_proj", 32], ["v_proj", 32]]
        down = layers["model.layers.1.mlp.down_proj"]
        assert down["style"] == "rowwise" and down["total_shape"] == [64, 128] and down["input_is_parallel"]
        assert down["shard"] == [rank * 128 // world, (rank + 1) * 128 // world]
        if exact:
            assert torch.equal(r["after"], r["before"]), f"rank {rank}: logits changed by save + load"
        else:  # the rotary tables of a loaded model are computed on its GPU, the original's on the CPU
            close(r["after"], r["before"], 1e-3, f"rank {rank}: logits after save + load")
        assert r["loaded_types"] == ["ColumnParallelFusedSparseLinear", "RowParallelSparseLinear"]
        if rank > 0:
            assert meta["checkpoint_id"] == scenario(results, 0, name)["meta"]["checkpoint_id"]
        if rank < world // 2:
            err = r["err_world"]
            assert err is not None and err.startswith("ValueError"), err
            assert f"world size of {world}" in err and f"has {world // 2} rank" in err, err
        else:
            assert "err_world" not in r


# ---- the tests -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def world_results(request, tmp_path_factory):
    world = request.param
    t0 = time.monotonic()
    seed, results = spawn_world(world, tmp_path_factory.mktemp(f"tp{world}"))
    print(
        f"world {world}: {time.monotonic() - t0:.1f} s, scenarios "
        + ", ".join(f"{k[:-8]} {v:.1f} s" for k, v in results[0].items() if k.endswith(".seconds"))
    )
    return world, results


def test_parallel_layers(world_results):
    world, results = world_results
    check_layers(results, world, exact=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_parallel_llama_logits(world_results, dtype):
    if not _has_transformers():
        pytest.skip("transformers is not installed")
    world, results = world_results
    check_model(results, world, getattr(torch, dtype), exact=True)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_checkpoint_shards_round_trip(world_results, dtype):
    if not _has_transformers():
        pytest.skip("transformers is not installed")
    world, results = world_results
    check_checkpoint(results, world, getattr(torch, dtype), exact=True)


def test_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    w = torch.randn(8, 8).half()
    for build in (
        lambda: tp.ColumnParallelSparseLinear.from_dense(w),
        lambda: tp.RowParallelSparseLinear.from_dense(w),
        lambda: fst.parallelize(torch.nn.Sequential(torch.nn.Linear(8, 8).half())),
        lambda: fst.load_sparse_parallel(torch.nn.Linear(8, 8), "nowhere"),
    ):
        with pytest.raises(RuntimeError, match="not initialised"):
            build()


def test_shard_file_names():
    assert tp.shard_file_name(3, 8) == "tp-rank-00003-of-00008.safetensors"
    assert tp._SHARD_RE.fullmatch(tp.shard_file_name(0, 2))


def test_bench_tp_code_path_on_cpus(tmp_path):
    """The tensor-parallel benchmark's code path (launcher, torchrun, dense and sparse builds, the logits check,
    decoding) on 2 CPU ranks with a tiny model; the timings themselves mean nothing here."""
    import csv
    import subprocess
    import sys

    if not _has_transformers():
        pytest.skip("transformers is not installed")
    out = tmp_path / "bench.csv"
    cmd = [
        sys.executable,
        "-m",
        "flashspmm.torch._bench_tp",
        "--tp",
        "2",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--batch",
        "1,3",
        "--prompt",
        "6",
        "--steps",
        "3",
        "--sparsity",
        "50,70",
        "--check",
        "--csv",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "NCCL_NVLS_ENABLE=0" in proc.stderr  # the launcher's environment defaults
    rows = list(csv.DictReader(out.open()))
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for v in ("dense", "sparse50", "sparse70") for b in ("1", "3")
    ]
    for r in rows:
        assert r["status"] == "ok" and float(r["tokens_per_s"]) > 0 and r["tp"] == "2"
        if r["variant"] != "dense":
            # the check ran (a number); on CPUs the CPU reference linear can match the dense fp16 model exactly
            assert r["check_rel_err"] != "" and 0 <= float(r["check_rel_err"]) <= 2e-2, r
            assert float(r["weight_gb_per_gpu"]) < float(rows[0]["weight_gb_per_gpu"])
    assert "tokens/s" in proc.stdout and "sparse70" in proc.stdout
