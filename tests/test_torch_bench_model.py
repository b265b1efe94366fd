"""The decode benchmark's code path (python -m flashspmm._bench_model) on the CPU with a tiny LLaMA config."""

import csv

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import flashspmm.torch as fst  # noqa: E402
from flashspmm import _bench_model as bm  # noqa: E402
from test_torch_common import rel_err  # noqa: E402


def test_build_is_deterministic_and_sparse_build_matches():
    config = bm.make_config("tiny", None)
    cpu = torch.device("cpu")
    a, _ = bm.build_model(config, cpu, seed=3, progress=False)
    b, _ = bm.build_model(config, cpu, seed=3, sparsity=0.5, progress=False)
    c, worst = bm.build_model(config, cpu, seed=3, sparsity=0.5, compress_layers=True, progress=False, check_first=True)
    assert worst is not None and worst <= 2e-3
    assert a.model.embed_tokens.weight.dtype == torch.float16
    dense, pruned = a.model.layers[1].mlp.up_proj.weight, b.model.layers[1].mlp.up_proj.weight
    assert not torch.equal(dense, pruned) and torch.equal(fst.prune_weight(dense, 0.5), pruned)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    fused = c.model.layers[1].mlp.gate_up_proj
    assert torch.equal(
        fused.to_dense(), torch.cat([b.model.layers[1].mlp.gate_proj.weight, b.model.layers[1].mlp.up_proj.weight])
    )
    assert bm.weight_bytes(c) < bm.weight_bytes(b)
    ids = torch.randint(0, config.vocab_size, (2, 6))
    with torch.no_grad():
        assert rel_err(c(ids).logits, b(ids).logits) <= 2e-3


@pytest.mark.parametrize("sparse", [False, True])
def test_decoder_steps_match_a_full_forward(sparse):
    config = bm.make_config("tiny", None)
    model, _ = bm.build_model(
        config, torch.device("cpu"), seed=1, sparsity=0.5 if sparse else None, compress_layers=sparse, progress=False
    )
    d = bm.Decoder(model, batch=2, prompt=5, cache_len=12, device="cpu", seed=2)
    seq = d.prompt_ids
    with torch.no_grad():
        for _ in range(4):
            feed = d.ids.clone()
            logits = d.step()
            d.pos += 1
            seq = torch.cat([seq, feed], dim=1)
            want = model(input_ids=seq, use_cache=False).logits[:, -1]
            assert rel_err(logits[:, -1], want) <= 1e-2
            assert torch.equal(d.ids, logits[:, -1:].argmax(-1))
    assert d.run(3) > 0 and d.pos == 5 + 4 + 3
    with pytest.raises(ValueError, match="KV cache"):
        d.run(1)


def test_run_writes_the_csv(tmp_path, capsys):
    out = tmp_path / "b.csv"
    parser = bm._configure(__import__("argparse").ArgumentParser())
    args = parser.parse_args(
        [
            "--device",
            "cpu",
            "--models",
            "tiny",
            "--batch",
            "1,2",
            "--sparsity",
            "50,70",
            "--steps",
            "3",
            "--prompt",
            "4",
            "--csv",
            str(out),
            "--png",
            "",
            "--no-progress",
        ]
    )
    assert bm.run(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for v in ("dense", "sparse50", "sparse70") for b in ("1", "2")
    ]
    for r in rows:
        assert r["status"] == "ok" and r["mode"] == "eager" and float(r["ms_per_step"]) > 0
        assert float(r["tokens_per_s"]) > 0 and float(r["speedup"]) > 0
        if r["variant"] != "dense":
            assert float(r["check_rel_err"]) <= bm.CHECK_TOL
            assert float(r["weight_gb"]) < float(rows[0]["weight_gb"])
    text = capsys.readouterr().out
    assert "tokens/s" in text and "sparse70" in text


def test_options():
    parser = bm._configure(__import__("argparse").ArgumentParser())
    assert parser.parse_args(["--sparsity", "50,70"]).sparsity == [0.5, 0.7]
    assert parser.parse_args(["--sparsity", "0.6"]).sparsity == [0.6]
    with pytest.raises(SystemExit):
        parser.parse_args(["--sparsity", "100"])
    args = parser.parse_args(["--models", "nope", "--device", "cpu"])
    assert bm.run(args) == 2
    sub = __import__("argparse").ArgumentParser().add_subparsers()
    p = bm.add_parser(sub)
    assert p.parse_args(["--quick"]).run is bm.run
    # shapes: the dense byte estimate is the real parameter count of the built model
    config = bm.make_config("tiny", None)
    model, _ = bm.build_model(config, torch.device("cpu"), seed=0, progress=False)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    assert bm._dense_bytes(config) == params


def test_result_line_shows_the_kernel_columns():
    # (filled only with CUDA graphs; the CPU runs above leave them empty)
    row = {f: "" for f in bm.FIELDS}
    row.update(model="llama2-7b", layers=32, variant="sparse90", batch=1, mode="graph", ms_per_step=4.39)
    row.update(tokens_per_s=227.8, speedup=1.57, kernel_speedup=2.13, kernel_speedup_tw=2.07, proj_share=0.44)
    text = bm._row_text(row)
    assert "2.07x" in text and "44%" in text and "2.13x" not in text  # the time-weighted speedup is shown
    row.update(kernel_speedup="", kernel_speedup_tw="", proj_share="")
    assert "2.07x" not in bm._row_text(row) and "%" not in bm._row_text(row)
    assert len(bm._row_text(None).split()) == len(bm._row_text(row).split()) + 1  # "-" per empty column
