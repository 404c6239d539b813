"""Eviction on dense arrays (evict.h): one compression step of R-KV, SnapKV, StreamingLLM, H2O
or full, per kv head or at a coarser granularity, exactly as the serving path selects."""
import ctypes

from . import _lib
from ._base import RkvError, as_ptr, check
from ._structs import EvictParams, EvictPolicy, EvictScores, Granularity, Status, parse_enum


def validate(params):
    """Raises RkvError (RKV_ERR_INVALID_ARG, with the reason) for invalid parameters."""
    p = EvictParams.coerce(params)
    err = ctypes.create_string_buffer(256)
    check(_lib.lib().rkv_evict_params_validate(ctypes.byref(p), err, len(err)),
          "rkv_evict_params_validate", err.raw)


def kept_count(params, n):
    """Tokens a stream of length n keeps after one compression step (n when nothing is
    evicted, else the budget)."""
    p = EvictParams.coerce(params)
    return _lib.lib().rkv_evict_kept_count(ctypes.byref(p), int(n))


def should_compress(params, length, after_prefill=False):
    """True iff a stream of this length compresses now (rkv_evict_should_compress)."""
    p = EvictParams.coerce(params)
    return bool(_lib.lib().rkv_evict_should_compress(ctypes.byref(p), int(length),
                                                     bool(after_prefill)))


def _f32(a, what, ndim):
    import numpy as np
    if a is None:
        return None
    a = np.asarray(a)
    if a.dtype != np.float32:
        raise TypeError("%s: dtype must be float32, got %s" % (what, a.dtype))
    if a.ndim != ndim:
        raise ValueError("%s: expected %d dimensions, got shape %s" % (what, ndim, a.shape))
    return np.ascontiguousarray(a)


def _needs(policy):
    return (policy in (EvictPolicy.RKV, EvictPolicy.SNAPKV),  # queries
            policy == EvictPolicy.H2O)                        # acc


def select(params, keys, queries=None, acc=None, num_q_heads=None, scores=False):
    """One compression step on dense float32 arrays (rkv_evict_select_dense).

    keys    [num_kv_heads, n, head_dim] post-RoPE keys in cache order;
    queries [num_q_heads, window, head_dim] the window queries, oldest first (R-KV, SnapKV);
    acc     [num_kv_heads, n] accumulated attention mass (H2O).
    Returns keep, int32 [num_kv_heads, kept_count(params, n)], each head's kept positions
    ascending; with ``scores=True`` returns (keep, {"importance", "redundancy", "joint"}),
    each float32 [num_kv_heads, n - window] (NaN where a head was not scored).
    """
    import numpy as np
    p = EvictParams.coerce(params, "select: params")
    pol = EvictPolicy(p.policy)
    keys = _f32(keys, "select: keys [num_kv_heads, n, head_dim]", 3)
    H, n, d = keys.shape
    need_q, need_acc = _needs(pol)
    queries = _f32(queries, "select: queries [num_q_heads, window, head_dim]", 3)
    acc = _f32(acc, "select: acc [num_kv_heads, n]", 2)
    if need_q and queries is None:
        raise ValueError("select: policy %s needs queries [num_q_heads, window, head_dim]"
                         % pol.name.lower())
    if need_acc and acc is None:
        raise ValueError("select: policy h2o needs acc [num_kv_heads, n]")
    if queries is not None:
        qh = queries.shape[0]
        if num_q_heads is not None and int(num_q_heads) != qh:
            raise ValueError("select: num_q_heads %d but queries has %d heads" % (
                num_q_heads, qh))
        if queries.shape[1:] != (p.window, d):
            raise ValueError("select: queries must be [num_q_heads, %d, %d] (window, head_dim),"
                             " got %s" % (p.window, d, queries.shape))
    else:
        qh = H if num_q_heads is None else int(num_q_heads)
    if acc is not None and acc.shape != (H, n):
        raise ValueError("select: acc must be [%d, %d], got %s" % (H, n, acc.shape))
    L = _lib.lib()
    ws = ctypes.c_size_t()
    err = ctypes.create_string_buffer(256)
    check(L.rkv_evict_dense_workspace_size(ctypes.byref(p), d, n, ctypes.byref(ws)),
          "rkv_evict_dense_workspace_size", "invalid parameters or sizes (n %d, head_dim %d)"
          % (n, d))
    work = np.empty(max(ws.value, 1), dtype=np.uint8)
    kc = L.rkv_evict_kept_count(ctypes.byref(p), n)
    keep = np.empty((H, max(kc, 0)), dtype=np.int32)
    dump, dumps = None, None
    if scores:
        nc = max(n - p.window, 0)
        dumps = {k: np.full((H, nc), np.nan, dtype=np.float32)
                 for k in ("importance", "redundancy", "joint")}
        dump = EvictScores(*(dumps[k].ctypes.data if nc else None
                             for k in ("importance", "redundancy", "joint")))
    check(L.rkv_evict_select_dense(ctypes.byref(p), as_ptr(keys), as_ptr(queries), as_ptr(acc),
                                   H, qh, n, d, as_ptr(keep),
                                   ctypes.byref(dump) if dump is not None else None,
                                   as_ptr(work), work.nbytes, err, len(err)),
          "rkv_evict_select_dense", err.raw)
    return (keep, dumps) if scores else keep


def select_multi(params, keys, queries=None, acc=None, granularity="stream", num_q_heads=None):
    """One compression step of every layer of a sequence at a selection granularity
    (rkv_evict_select_dense_multi): "stream", "layer", "kvhead" or "sequence".

    keys [num_layers, num_kv_heads, n, head_dim]; queries [num_layers, num_q_heads, window,
    head_dim] (R-KV, SnapKV); acc [num_layers, num_kv_heads, n] (H2O). Returns keep, int32
    [num_layers, num_kv_heads, kept_count(params, n)].
    """
    import numpy as np
    p = EvictParams.coerce(params, "select_multi: params")
    g = parse_enum(Granularity, granularity, "select_multi: granularity")
    pol = EvictPolicy(p.policy)
    keys = _f32(keys, "select_multi: keys [num_layers, num_kv_heads, n, head_dim]", 4)
    Lr, H, n, d = keys.shape
    need_q, need_acc = _needs(pol)
    queries = _f32(queries, "select_multi: queries [num_layers, num_q_heads, window, head_dim]",
                   4)
    acc = _f32(acc, "select_multi: acc [num_layers, num_kv_heads, n]", 3)
    if need_q and queries is None:
        raise ValueError("select_multi: policy %s needs queries" % pol.name.lower())
    if need_acc and acc is None:
        raise ValueError("select_multi: policy h2o needs acc")
    if queries is not None:
        qh = queries.shape[1]
        if queries.shape[0] != Lr or queries.shape[2:] != (p.window, d):
            raise ValueError("select_multi: queries must be [%d, num_q_heads, %d, %d], got %s"
                             % (Lr, p.window, d, queries.shape))
    else:
        qh = H if num_q_heads is None else int(num_q_heads)
    if acc is not None and acc.shape != (Lr, H, n):
        raise ValueError("select_multi: acc must be [%d, %d, %d], got %s" % (Lr, H, n,
                                                                              acc.shape))
    L = _lib.lib()
    ws = ctypes.c_size_t()
    err = ctypes.create_string_buffer(256)
    check(L.rkv_evict_dense_multi_workspace_size(ctypes.byref(p), int(g), d, n,
                                                 ctypes.byref(ws)),
          "rkv_evict_dense_multi_workspace_size",
          "invalid parameters, granularity or sizes (n %d, head_dim %d)" % (n, d))
    work = np.empty(max(ws.value, 1), dtype=np.uint8)
    kc = L.rkv_evict_kept_count(ctypes.byref(p), n)
    keep = np.empty((Lr, H, max(kc, 0)), dtype=np.int32)
    check(L.rkv_evict_select_dense_multi(ctypes.byref(p), int(g), as_ptr(keys), as_ptr(queries),
                                         as_ptr(acc), Lr, H, qh, n, d, as_ptr(keep), None,
                                         as_ptr(work), work.nbytes, err, len(err)),
          "rkv_evict_select_dense_multi", err.raw)
    return keep


__all__ = ["EvictParams", "EvictPolicy", "Granularity", "RkvError", "Status", "validate",
           "kept_count", "should_compress", "select", "select_multi"]
