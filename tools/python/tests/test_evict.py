"""Dense eviction (librkv.evict.select / select_multi, rkv_evict_select_dense[_multi])
against the repository's independent NumPy reference tests/unit/evict/ref_rkv.py: the same
kept positions (up to near ties of the float64 reference) and the same score dumps."""
import sys

import numpy as np
import pytest

import librkv
from conftest import SOURCE_DIR

sys.path.insert(0, str(SOURCE_DIR / "tests" / "unit" / "evict"))
import ref_rkv  # noqa: E402

POLICIES = ["rkv", "snapkv", "streaming", "h2o", "full"]


def inputs(rng, L, H, G, n, d, window):
    K = rng.standard_normal((L, H, n, d)).astype(np.float32)
    K[..., ::5, :] += K[..., :1, :]  # some redundancy for R-KV to find
    Q = rng.standard_normal((L, H * G, window, d)).astype(np.float32)
    acc = rng.random((L, H, n)).astype(np.float32)
    return K, Q, acc


def same_sets(kept, ref, Z, n, window):
    """Per head, equal sets, or differences only at near ties of the reference key Z."""
    assert kept.shape == ref.shape
    for h in range(ref.shape[0]):
        a, b = set(kept[h].tolist()), set(ref[h].tolist())
        if a == b:
            continue
        assert Z is not None, "head %d: %s vs %s" % (h, sorted(a - b), sorted(b - a))
        cand = ref[h][ref[h] < n - window]
        cut = Z[h][cand].min()
        scale = np.abs(Z[h]).max()
        for j in a ^ b:
            assert j < n - window and abs(Z[h][j] - cut) <= 1e-6 * scale, (
                "head %d position %d is not a near tie" % (h, j))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("n", [40, 100])
def test_select_matches_reference(policy, n):
    rng = np.random.default_rng(n * 7 + POLICIES.index(policy))
    H, G, d, B, window = 2, 2, 16, 48, 8
    p = librkv.EvictParams(policy, budget=B, window=window, kernel=5, lam=0.2, threshold=0.4,
                           sinks=3)
    K, Q, acc = inputs(rng, 1, H, G, n, d, window)
    keep, dumps = librkv.evict.select(p, K[0], Q[0], acc[0], scores=True)
    assert keep.dtype == np.int32
    kc = n if policy == "full" else min(n, B)
    assert keep.shape == (H, librkv.evict.kept_count(p, n)) == (H, kc)
    assert (np.diff(keep, axis=1) > 0).all()
    if policy == "full":  # never evicts (the reference has no such policy)
        assert np.array_equal(keep, np.tile(np.arange(n), (H, 1)))
        return
    ref, Z = ref_rkv.select(policy, K[0], Q[0], acc[0], budget=B, window=window, kernel=5,
                            lam=np.float32(0.2), threshold=np.float32(0.4), sinks=3)
    same_sets(keep, ref, Z, n, window)
    if Z is not None and policy != "streaming":
        # the selection key the library dumps is the reference's Z
        np.testing.assert_allclose(dumps["joint"], Z, rtol=2e-3, atol=1e-5 * np.abs(Z).max())
    if policy == "rkv" and n > B:
        I = ref_rkv.importance(K[0], Q[0], window, 5)
        R, _, _ = ref_rkv.redundancy(K[0], window, np.float32(0.4))
        np.testing.assert_allclose(dumps["importance"], I, rtol=2e-3, atol=1e-6)
        np.testing.assert_allclose(dumps["redundancy"], R, rtol=2e-3, atol=1e-7)


@pytest.mark.parametrize("gran", ["stream", "layer", "kvhead", "sequence"])
@pytest.mark.parametrize("policy", ["rkv", "h2o"])
def test_select_multi_matches_reference(gran, policy):
    rng = np.random.default_rng(11)
    L, H, G, n, d, B, window = 3, 2, 2, 90, 16, 40, 4
    p = librkv.EvictParams(policy, budget=B, window=window)
    K, Q, acc = inputs(rng, L, H, G, n, d, window)
    keep = librkv.evict.select_multi(p, K, Q, acc, granularity=gran)
    assert keep.shape == (L, H, B)
    ref, A = ref_rkv.select_multi(policy, gran, K, Q, acc, budget=B, window=window,
                                  lam=np.float32(0.1), threshold=np.float32(0.5))
    same_sets(keep.reshape(L * H, B), ref.reshape(L * H, B),
              None if A is None else A.reshape(L * H, -1), n, window)
    if gran == "stream":  # the per-stream step is select() layer by layer
        for l in range(L):
            assert np.array_equal(keep[l], librkv.evict.select(p, K[l], Q[l], acc[l]))


def test_helpers():
    p = librkv.EvictParams("rkv", budget=32, window=4, buffer=8)
    assert librkv.evict.kept_count(p, 20) == 20 and librkv.evict.kept_count(p, 50) == 32
    assert librkv.evict.should_compress(p, 40) and not librkv.evict.should_compress(p, 39)
    assert librkv.evict.should_compress(p, 32, after_prefill=True)
    assert not librkv.evict.should_compress("full", 10 ** 6)
    librkv.evict.validate(p)
    d = p.to_dict()
    assert d["policy"] == "rkv" and d["budget"] == 32
    assert librkv.EvictParams(**d) == p
    assert librkv.EvictParams() == librkv.EvictParams("rkv", budget=1024, window=8, buffer=128,
                                                      kernel=7, lam=0.1, threshold=0.5, sinks=4)
