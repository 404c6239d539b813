"""Independent NumPy reference of one compression step (docs/EVICTION.md, "The algorithm,
exactly"), written from the algorithm text, vectorised, in float64. Used by
crosscheck_select.py against `rkv select`.

Shapes: K [H, n, d] keys in cache order; Q [QH, window, d] the window queries (QH a multiple
of H; query head q belongs to kv head q // (QH // H)); acc [H, n] accumulated mass (H2O).
Every function returns per-head results; `select_*` return int64 [H, min(n, B)] ascending.
"""
import numpy as np


def importance(K, Q, window, kernel):
    """Steps 1-2: GQA max on raw logits / sqrt(d), softmax over the n - window candidates,
    mean over the window rows, centred max-pool (outside positions ignored). [H, n - window]"""
    H, n, d = K.shape
    G = Q.shape[0] // H
    nc = n - window
    Qg = Q.reshape(H, G, window, d).astype(np.float64)
    A = np.einsum("hgad,hjd->hgaj", Qg, K[:, :nc].astype(np.float64)) / np.sqrt(d)
    A = A.max(axis=1)                                  # [H, window, nc]
    A = A - A.max(axis=-1, keepdims=True)
    P = np.exp(A)
    P /= P.sum(axis=-1, keepdims=True)
    I0 = P.mean(axis=1)                                # [H, nc]
    h = kernel // 2
    padded = np.full((H, nc + 2 * h), -np.inf)
    padded[:, h:h + nc] = I0
    win = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=1)
    return win.max(axis=-1)


def redundancy(K, window, threshold):
    """Step 3 over all n keys: cosine similarity with a zero diagonal; per row zero the entry
    of the largest j with S > T (j = 0 when none); column mean; softmax over n; candidates."""
    H, n, d = K.shape
    K = K.astype(np.float64)
    Kh = K / (np.linalg.norm(K, axis=-1, keepdims=True) + 1e-8)
    S = Kh @ Kh.transpose(0, 2, 1)
    idx = np.arange(n)
    S[:, idx, idx] = 0.0
    above = S > threshold
    last = n - 1 - np.argmax(above[:, :, ::-1], axis=-1)
    jstar = np.where(above.any(axis=-1), last, 0)      # [H, n]
    S[np.arange(H)[:, None], idx[None, :], jstar] = 0.0
    r = S.sum(axis=1) / n                              # column mean, divisor n
    r = r - r.max(axis=-1, keepdims=True)
    R = np.exp(r)
    R /= R.sum(axis=-1, keepdims=True)
    return R[:, :n - window], S, jstar


def top_with_window(Z, n, budget, window):
    """Top budget - window candidates by Z (ties: lower position), plus the window."""
    H, nc = Z.shape
    out = np.empty((H, budget), dtype=np.int64)
    pos = np.arange(nc)
    for h in range(H):
        order = np.lexsort((pos, -Z[h]))               # by -Z, then position
        kept = np.sort(order[:budget - window])
        out[h] = np.concatenate([kept, np.arange(nc, n)])
    return out


def joint(K, Q, window, kernel, lam, threshold):
    I = importance(K, Q, window, kernel)
    R, _, _ = redundancy(K, window, threshold)
    return lam * I - (1.0 - lam) * R, I, R


def select(policy, K, Q=None, acc=None, budget=1024, window=8, kernel=7, lam=0.1,
           threshold=0.5, sinks=4):
    """Kept positions [H, min(n, B)] and the selection key Z [H, n - window] (None for
    streaming or when nothing is evicted)."""
    H, n, _ = K.shape
    if n <= budget:
        return np.tile(np.arange(n, dtype=np.int64), (H, 1)), None
    if policy == "streaming":
        keep = np.concatenate([np.arange(sinks), np.arange(n - (budget - sinks), n)])
        return np.tile(keep.astype(np.int64), (H, 1)), None
    if policy == "h2o":
        Z = acc[:, :n - window].astype(np.float64)
    elif policy == "snapkv":
        Z = importance(K, Q, window, kernel)
    elif policy == "rkv":
        Z, _, _ = joint(K, Q, window, kernel, lam, threshold)
    else:
        raise ValueError(policy)
    return top_with_window(Z, n, budget, window), Z


GRANULARITIES = ("stream", "layer", "kvhead", "sequence")


def aggregate(Z, granularity):
    """Selection granularity (docs/EVICTION.md): Z [L, H, nc] per-stream joint scores of one
    sequence -> the score each stream's kept set is chosen by, [L, H, nc]. Streams of one
    group get the same row:
      stream    Z itself
      layer     mean over the layer's kv heads
      kvhead    sum over layers (one set per kv head index)
      sequence  sum over layers of the mean over kv heads
    Sums run in ascending index order, f64; a mean is the sum divided by the head count."""
    L, H, nc = Z.shape
    if granularity == "stream":
        return Z.copy()
    if granularity == "kvhead":
        A = np.zeros((H, nc))
        for l in range(L):
            A = A + Z[l]
        return np.broadcast_to(A[None], Z.shape).copy()
    M = np.zeros((L, nc))                              # per-layer head mean
    for h in range(H):
        M = M + Z[:, h]
    M = M / H
    if granularity == "layer":
        return np.broadcast_to(M[:, None], Z.shape).copy()
    if granularity == "sequence":
        A = np.zeros(nc)
        for l in range(L):
            A = A + M[l]
        return np.broadcast_to(A[None, None], Z.shape).copy()
    raise ValueError(granularity)


def select_multi(policy, granularity, K, Q=None, acc=None, budget=1024, window=8, kernel=7,
                 lam=0.1, threshold=0.5, sinks=4):
    """One step of every layer at a granularity. K [L, H, n, d], Q [L, QH, window, d],
    acc [L, H, n]. Returns kept positions [L, H, min(n, B)] and the aggregated key
    [L, H, n - window] (None when nothing is scored: streaming or n <= B)."""
    L, H, n, _ = K.shape
    Zs = []
    for l in range(L):
        keep, Z = select(policy, K[l], None if Q is None else Q[l],
                         None if acc is None else acc[l], budget, window, kernel, lam,
                         threshold, sinks)
        if Z is None:                                  # streaming or n <= B: same everywhere
            return np.stack([keep] * L), None
        Zs.append(Z)
    A = aggregate(np.stack(Zs), granularity)
    keep = top_with_window(A.reshape(L * H, n - window), n, budget, window)
    return keep.reshape(L, H, budget), A
