"""Helpers shared by the flashspmm.torch tests (tiny transformers models, references), and the import rules.

Every torch test file imports what it needs from here; the tests in this file check that ``import flashspmm``
never imports torch and that ``flashspmm.torch`` imports when torch is there.
"""

import copy
import os
import secrets
import sys

import pytest

torch = pytest.importorskip("torch")

FAMILIES = ("llama", "mistral", "qwen2", "opt")


def seed_torch():
    """Seed torch with a fresh random seed, printed so a failure can be replayed (FSPMM_TORCH_SEED=<seed> sets it)."""
    seed = int(os.environ.get("FSPMM_TORCH_SEED") or secrets.randbits(31))
    print(f"torch seed: {seed} (replay: FSPMM_TORCH_SEED={seed})")
    torch.manual_seed(seed)
    return seed


def rel_err(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def tiny_config(family, *, layers=2, tie=False):
    transformers = pytest.importorskip("transformers")
    common = dict(
        vocab_size=96,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    if family == "opt":
        return transformers.OPTConfig(ffn_dim=160, word_embed_proj_dim=64, **common)
    config_cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
    }[family]
    return config_cls(intermediate_size=160, num_key_value_heads=2, **common)


def tiny_model(family, *, dtype=torch.float16, layers=2, tie=False):
    """A transformers causal LM of ``family`` with random weights (torch's current seed), eval mode."""
    transformers = pytest.importorskip("transformers")
    config = tiny_config(family, layers=layers, tie=tie)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    # biases of a fresh model are zero: give them values so they are tested too
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return model


def pruned_copy(model, sparsity, names):
    """A deep copy of ``model`` with the Linear layers ``names`` pruned by flashspmm.prune (the reference)."""
    import flashspmm.torch as fst

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            m = ref.get_submodule(name)
            m.weight.copy_(fst.prune_weight(m.weight, sparsity))
    return ref


def block_linears(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]


def token_ids(model, batch=2, length=7):
    return torch.randint(0, model.config.vocab_size, (batch, length))


def test_import_flashspmm_does_not_import_torch(run_py):
    r = run_py("import sys, flashspmm; print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_import_flashspmm_torch():
    import flashspmm.torch as fst

    assert "torch" in sys.modules
    for name in fst.__all__:
        assert hasattr(fst, name), name
    assert hasattr(torch.ops.flashspmm, "linear")
