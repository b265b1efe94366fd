"""GPU paths of prune and of DLPack-only inputs (JAX), marked `gpu`; skipped without a device."""
import numpy as np
import pytest

import flashspmm

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("scope", ["row", "tensor"])
def test_prune_torch_cuda_matches_cpu(rng, scope):
    torch = pytest.importorskip("torch")
    w = rng.standard_normal((96, 130)).astype(np.float16)
    got = flashspmm.prune(torch.from_numpy(w).cuda(), 0.7, scope=scope)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.float16
    np.testing.assert_array_equal(got.cpu().numpy().view(np.uint16),
                                  flashspmm.prune(w, 0.7, scope=scope).view(np.uint16))


def test_prune_cupy(rng):
    cp = pytest.importorskip("cupy")
    w = rng.standard_normal((40, 64)).astype(np.float16)
    got = flashspmm.prune(cp.asarray(w), 0.5)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(got), flashspmm.prune(w, 0.5))


def test_jax_linear_and_prune_through_dlpack(rng):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees no GPU")
    w = flashspmm.prune(rng.standard_normal((256, 320)).astype(np.float16), 0.7)
    W = flashspmm.compress(w).to("cuda")
    x = jnp.asarray(rng.standard_normal((5, 320)).astype(np.float16))
    y = flashspmm.linear(x, W)
    assert isinstance(y, jax.Array) and y.shape == (5, 256)
    ref = np.asarray(x, dtype=np.float64) @ w.astype(np.float64).T
    err = np.linalg.norm(np.asarray(y, dtype=np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-3
    p = flashspmm.prune(jnp.asarray(rng.standard_normal((32, 48)).astype(np.float16)), 0.5)
    assert isinstance(p, jax.Array) and int((np.asarray(p) == 0).sum()) == 32 * 24
