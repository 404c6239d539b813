"""Finding and loading librkv.so, and the C prototypes of every function the package calls.

The library is searched, in this order:

1. the path in the environment variable ``RKV_LIBRARY`` (a file; an error if it cannot be
   loaded, no fallback);
2. the package directory itself (a ``librkv.so*`` copied next to ``__init__.py``);
3. the ``lib`` directories of the install prefix the package sits in
   (``<prefix>/lib/python3/dist-packages/librkv`` -> ``<prefix>/lib``, ``lib64`` and
   ``lib/<multiarch>``; the same for a venv's ``lib/python3.X/site-packages``);
4. ``ctypes.util.find_library("rkv")`` (the dynamic loader's cache: ``ldconfig``).
"""
import ctypes
import ctypes.util
import os
import sysconfig
from pathlib import Path

from . import _structs as S

ENV_VAR = "RKV_LIBRARY"
_SONAMES = ("librkv.so.0", "librkv.so")

_lib = None
_lib_path = None


class LibraryNotFoundError(OSError):
    """librkv.so could not be found or loaded; the message lists every place searched."""


def _prefix_lib_dirs(pkg_dir):
    """Library directories of the install prefix that holds the package directory."""
    dirs = []
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    parents = pkg_dir.parents
    # <prefix>/lib/python3/dist-packages/librkv or <prefix>/lib/python3.X/site-packages/librkv:
    # parents[0] = dist-packages, [1] = python3(.X), [2] = lib(64), [3] = prefix
    if len(parents) > 3:
        prefix = parents[3]
        for sub in ("lib", "lib64", os.path.join("lib", multiarch) if multiarch else None):
            if sub:
                dirs.append(prefix / sub)
    return dirs


def _candidates():
    pkg_dir = Path(__file__).resolve().parent
    cands = []
    for d in [pkg_dir] + _prefix_lib_dirs(pkg_dir):
        for name in _SONAMES:
            cands.append(d / name)
    return cands


def _load():
    global _lib, _lib_path
    if _lib is not None:
        return _lib
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            lib = ctypes.CDLL(env)
        except OSError as e:
            raise LibraryNotFoundError(
                "librkv: %s=%s cannot be loaded: %s" % (ENV_VAR, env, e)) from None
        path = os.path.abspath(env) if os.sep in env else env
    else:
        lib = None
        tried = []
        for c in _candidates():
            tried.append(str(c))
            if c.is_file():
                try:
                    lib = ctypes.CDLL(str(c))
                    path = str(c)
                    break
                except OSError as e:
                    tried[-1] += " (%s)" % e
        if lib is None:
            name = ctypes.util.find_library("rkv")
            tried.append('ctypes.util.find_library("rkv") -> %s' % name)
            if name:
                try:
                    lib = ctypes.CDLL(name)
                    path = name
                except OSError as e:
                    tried[-1] += " (%s)" % e
        if lib is None:
            raise LibraryNotFoundError(
                "librkv: librkv.so not found. Set %s to the library file "
                "(e.g. build/release/lib/librkv.so.0), or install the C library "
                "(cmake --install build/release [--prefix P]; then ldconfig for a system "
                "prefix). Searched:\n  %s" % (ENV_VAR, "\n  ".join(tried)))
    _declare(lib)
    _lib, _lib_path = lib, path
    return lib


def lib():
    """The loaded ctypes.CDLL (loaded on first use)."""
    return _lib if _lib is not None else _load()


def library_path():
    """Path (or loader name) of the librkv that was loaded."""
    lib()
    return _lib_path


c_int, c_u32, c_i32, c_i64, c_u64 = (ctypes.c_int, ctypes.c_uint32, ctypes.c_int32,
                                     ctypes.c_int64, ctypes.c_uint64)
c_size, c_bool, c_float, c_char_p, c_void_p = (ctypes.c_size_t, ctypes.c_bool, ctypes.c_float,
                                               ctypes.c_char_p, ctypes.c_void_p)
P = ctypes.POINTER


def _declare(L):
    """restype / argtypes of every function used (status-returning ones return c_int)."""
    def f(name, res, *args):
        fn = getattr(L, name)
        fn.restype = res
        fn.argtypes = list(args)

    # runtime
    f("rkv_status_str", c_char_p, c_int)
    f("rkv_status_name", c_char_p, c_int)
    f("rkv_version_string", c_char_p)
    f("rkv_version", None, P(c_int), P(c_int), P(c_int))
    for cap in ("cuda", "nccl", "hwloc", "mpi", "blas"):
        f("rkv_build_has_" + cap, c_bool)
    f("rkv_dtype_size", c_size, c_int)
    f("rkv_dtype_name", c_char_p, c_int)
    f("rkv_kv_block_bytes", c_size, P(S.KvLayout))
    f("rkv_backend_create", c_int, P(S.BackendConfig), P(c_void_p))
    f("rkv_backend_destroy", None, c_void_p)
    f("rkv_backend_get_kind", c_int, c_void_p)
    f("rkv_backend_name", c_char_p, c_void_p)
    f("rkv_backend_last_error", c_char_p, c_void_p)
    f("rkv_backend_sync", c_int, c_void_p)
    f("rkv_backend_create_emulated", c_int, P(S.BackendConfig), P(c_void_p))
    f("rkv_backend_device_is_host", c_bool, c_void_p)
    f("rkv_backend_stream", c_void_p, c_void_p)
    f("rkv_buffer_create", c_int, c_void_p, c_int, c_size, P(c_void_p))
    f("rkv_buffer_destroy", None, c_void_p)
    f("rkv_buffer_ptr", c_void_p, c_void_p)
    f("rkv_buffer_upload", c_int, c_void_p, c_size, c_void_p, c_size)
    f("rkv_buffer_download", c_int, c_void_p, c_size, c_void_p, c_size)
    f("rkv_kv_pool_create", c_int, c_void_p, P(S.KvLayout), c_u32, P(c_void_p))
    f("rkv_kv_pool_destroy", None, c_void_p)
    f("rkv_kv_pool_base", c_void_p, c_void_p)
    f("rkv_kv_pool_layout", P(S.KvLayout), c_void_p)
    f("rkv_kv_pool_num_blocks", c_u32, c_void_p)
    f("rkv_kv_pool_scores", c_void_p, c_void_p)
    f("rkv_kv_pool_copy_blocks", c_int, c_void_p, c_void_p, c_size)
    f("rkv_kv_pool_apply_moves", c_int, c_void_p, c_void_p, c_size)
    f("rkv_kv_pool_read_blocks", c_int, c_void_p, c_void_p, c_size, c_void_p)
    f("rkv_kv_pool_write_blocks", c_int, c_void_p, c_void_p, c_size, c_void_p)
    # attention (write_kv: a direct way to put K/V rows into slots)
    f("rkv_attn_write_kv", c_int, c_void_p, c_void_p, c_void_p, c_void_p, c_u32)
    # block manager
    f("rkv_blockmgr_create", c_int, P(S.BlockManagerConfig), P(c_void_p))
    f("rkv_blockmgr_validate_config", c_int, P(S.BlockManagerConfig), c_char_p, c_size)
    f("rkv_blockmgr_destroy", None, c_void_p)
    f("rkv_blockmgr_last_error", c_char_p, c_void_p)
    f("rkv_blockmgr_get_config", P(S.BlockManagerConfig), c_void_p)
    f("rkv_blockmgr_streams_per_seq", c_u32, c_void_p)
    f("rkv_blockmgr_kv_layout", S.KvLayout, c_void_p)
    f("rkv_blockmgr_seq_create", c_int, c_void_p, c_i64)
    f("rkv_blockmgr_seq_free", c_int, c_void_p, c_i64)
    f("rkv_blockmgr_seq_fork", c_int, c_void_p, c_i64, c_i64)
    f("rkv_blockmgr_seq_restore", c_int, c_void_p, c_i64, c_void_p)
    f("rkv_blockmgr_seq_exists", c_bool, c_void_p, c_i64)
    f("rkv_blockmgr_num_seqs", c_u32, c_void_p)
    f("rkv_blockmgr_seq_index", c_i32, c_void_p, c_i64)
    f("rkv_blockmgr_list_seqs", c_u32, c_void_p, c_void_p, c_u32)
    f("rkv_blockmgr_append", c_int, c_void_p, c_i64, c_u32, c_void_p, c_void_p, P(c_u32))
    f("rkv_blockmgr_blocks_needed", c_int, c_void_p, c_i64, c_u32, P(c_u32))
    f("rkv_blockmgr_can_append", c_bool, c_void_p, c_i64, c_u32)
    f("rkv_blockmgr_stream_len", c_int, c_void_p, c_i64, c_u32, c_u32, P(c_i32))
    f("rkv_blockmgr_stream_blocks", c_int, c_void_p, c_i64, c_u32, c_u32, P(c_void_p),
      P(c_i32))
    f("rkv_blockmgr_stream_slot", c_int, c_void_p, c_i64, c_u32, c_u32, c_i32, P(c_i64))
    f("rkv_blockmgr_block_ref", c_int, c_void_p, c_i32, P(c_u32))
    f("rkv_blockmgr_compact", c_int, c_void_p, c_i64, c_void_p, c_u32, c_void_p, c_u32,
      P(c_u32))
    f("rkv_blockmgr_truncate", c_int, c_void_p, c_i64, c_i32, c_i32, P(c_u64))
    f("rkv_blockmgr_compact_fresh_bound_after", c_int, c_void_p, c_i64, c_i32, c_i32, c_u32,
      P(c_u32))
    f("rkv_blockmgr_compact_copy_bound", c_int, c_void_p, c_i64, c_i32, c_i32, c_u32, c_u32,
      P(c_u32))
    f("rkv_blockmgr_compact_prepare", c_int, c_void_p, c_i64, c_i32, c_i32, P(c_u32))
    f("rkv_blockmgr_export_size", c_int, c_void_p, c_u32, c_void_p, c_u32, P(c_u32))
    f("rkv_blockmgr_export_csr", c_int, c_void_p, c_u32, c_void_p, c_u32, c_void_p, c_void_p,
      c_u32, c_void_p, P(c_u32), c_void_p)
    f("rkv_blockmgr_get_stats", None, c_void_p, P(S.BlockManagerStats))
    f("rkv_blockmgr_free_blocks", c_u32, c_void_p)
    f("rkv_blockmgr_seq_footprint", c_int, c_void_p, c_i64, P(c_u32), P(c_u32))
    f("rkv_blockmgr_blocks_for_tokens", c_u64, c_void_p, c_u64)
    f("rkv_blockmgr_check", c_int, c_void_p)
    f("rkv_prefix_hash_blocks", c_u32, c_void_p, c_u32, c_u32, c_u64, c_void_p, c_u32)
    f("rkv_blockmgr_prefix_match", c_int, c_void_p, c_void_p, c_u32, P(c_u32))
    f("rkv_blockmgr_prefix_cost", c_int, c_void_p, c_void_p, c_u32, P(c_u32))
    f("rkv_blockmgr_seq_create_cached", c_int, c_void_p, c_i64, c_void_p, c_u32)
    f("rkv_blockmgr_prefix_insert", c_int, c_void_p, c_i64, c_void_p, c_u32, P(c_u32))
    f("rkv_blockmgr_prefix_clear", None, c_void_p)
    f("rkv_blockmgr_seq_protect", c_int, c_void_p, c_i64, c_i32)
    f("rkv_blockmgr_seq_protected", c_i32, c_void_p, c_i64)
    f("rkv_blockmgr_prefix_stats", c_int, c_void_p, P(S.PrefixStats))
    # eviction
    f("rkv_evict_policy_name", c_char_p, c_int)
    f("rkv_evict_policy_parse", c_int, c_char_p, P(c_int))
    f("rkv_evict_params_validate", c_int, P(S.EvictParams), c_char_p, c_size)
    f("rkv_evict_should_compress", c_bool, P(S.EvictParams), c_i32, c_bool)
    f("rkv_evict_kept_count", c_i32, P(S.EvictParams), c_i32)
    f("rkv_evict_dense_workspace_size", c_int, P(S.EvictParams), c_u32, c_i32, P(c_size))
    f("rkv_evict_select_dense", c_int, P(S.EvictParams), c_void_p, c_void_p, c_void_p, c_u32,
      c_u32, c_i32, c_u32, c_void_p, P(S.EvictScores), c_void_p, c_size, c_char_p, c_size)
    f("rkv_evict_granularity_name", c_char_p, c_int)
    f("rkv_evict_granularity_parse", c_int, c_char_p, P(c_int))
    f("rkv_evict_dense_multi_workspace_size", c_int, P(S.EvictParams), c_int, c_u32, c_i32,
      P(c_size))
    f("rkv_evict_select_dense_multi", c_int, P(S.EvictParams), c_int, c_void_p, c_void_p,
      c_void_p, c_u32, c_u32, c_u32, c_i32, c_u32, c_void_p, P(S.EvictScores), c_void_p,
      c_size, c_char_p, c_size)
    # scheduler
    f("rkv_sched_create", c_int, P(S.SchedConfig), c_void_p, P(c_void_p), c_char_p, c_size)
    f("rkv_sched_destroy", None, c_void_p)
    f("rkv_sched_last_error", c_char_p, c_void_p)
    f("rkv_sched_add_request", c_int, c_void_p, P(S.SchedRequest))
    f("rkv_sched_abort", c_int, c_void_p, c_i64)
    f("rkv_sched_fork", c_int, c_void_p, c_i64, c_i64, c_i64)
    f("rkv_sched_set_prefix", c_int, c_void_p, c_i64, c_void_p, c_u32)
    f("rkv_sched_get_prefix_stats", c_int, c_void_p, P(S.SchedPrefixStats))
    f("rkv_sched_set_free_blocks_limit", None, c_void_p, c_u32)
    f("rkv_sched_step", c_int, c_void_p, P(P(S.SchedPlan)))
    f("rkv_sched_report", c_int, c_void_p, c_void_p, c_u32)
    f("rkv_sched_get_request", c_int, c_void_p, c_i64, P(S.SchedRequestInfo))
    f("rkv_sched_bound_blocks", c_u64, c_void_p, c_i64, c_i64, P(S.EvictParams))
    f("rkv_sched_get_metrics", None, c_void_p, P(S.SchedMetrics))
    f("rkv_sched_metrics_prometheus", c_int, P(S.SchedMetrics), c_char_p, c_size, P(c_size))
    f("rkv_sched_prometheus", c_int, c_void_p, c_char_p, c_size, P(c_size))
    f("rkv_sched_plan_hash", c_u64, P(S.SchedPlan))
    f("rkv_sched_check", c_int, c_void_p)
    f("rkv_sched_admission_name", c_char_p, c_int)
    f("rkv_sched_preempt_mode_name", c_char_p, c_int)
    # executor
    f("rkv_exec_create", c_int, P(S.ExecConfig), c_void_p, c_void_p, P(c_void_p), c_char_p,
      c_size)
    f("rkv_exec_destroy", None, c_void_p)
    f("rkv_exec_last_error", c_char_p, c_void_p)
    f("rkv_exec_begin", c_int, c_void_p, P(S.SchedPlan))
    f("rkv_exec_layer", c_int, c_void_p, c_u32, c_void_p, c_void_p, c_void_p, c_void_p)
    f("rkv_exec_finish", c_int, c_void_p, c_void_p, c_u32)
    f("rkv_exec_qwindow_bytes_per_seq", c_size, c_void_p)
    f("rkv_exec_memory_bytes", c_size, c_void_p)
    f("rkv_exec_check", c_int, c_void_p)
