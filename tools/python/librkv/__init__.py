"""librkv for Python: ctypes bindings over librkv.so (paged KV-cache block manager with
per-head tables, R-KV eviction, a continuous-batching scheduler and a plan executor).

Pure Python; needs numpy and the C library (found through RKV_LIBRARY, the package
directory, the install prefix's lib/, or the loader: see librkv._lib). docs/PYTHON.md has the
guide. The objects mirror the C API one to one:

    bm    = BlockManager(num_blocks, block_size=, num_layers=, num_kv_heads=, head_dim=, dtype=)
    pool  = KVPool.for_blockmgr(bm)                 # CPU pool; pool.blocks is a numpy view
    sched = Scheduler(bm, max_seqs=, evict=EvictParams("rkv", budget=...), ...)
    x     = Executor.for_scheduler(sched, pool, num_q_heads)
    plan  = sched.step(); x.begin(plan); x.layer(l, q, k, v, out) ...; sched.report(x.finish(eos))

Failures raise RkvError (``.status``, ``.call``, ``.detail`` = the library's message).
"""
from ._base import RkvError
from ._lib import LibraryNotFoundError, library_path
from ._structs import (Admission, BackendKind, DType, EvictParams, EvictPolicy, Granularity,
                       PreemptMode, PrefixRule, RequestState, SeqKind, Status)
from .blockmgr import AppendResult, BlockManager, CsrTable, prefix_hash_blocks
from .device import DeviceArray
from .executor import Executor
from .runtime import (Backend, KVPool, Layout, bf16_to_f32, build_info, f32_to_bf16,
                      numpy_kv_dtype, status_name, status_str, version, version_info)
from .scheduler import Plan, Scheduler, new_outputs, output_dtype, seq_dtype
from . import evict

__version__ = "0.2.0"

__all__ = [
    "Admission", "AppendResult", "Backend", "BackendKind", "BlockManager", "CsrTable", "DType",
    "DeviceArray",
    "EvictParams", "EvictPolicy", "Executor", "Granularity", "KVPool", "Layout",
    "LibraryNotFoundError", "Plan", "PreemptMode", "PrefixRule", "RequestState", "RkvError", "Scheduler",
    "SeqKind", "Status", "bf16_to_f32", "build_info", "evict", "f32_to_bf16", "library_path",
    "new_outputs", "numpy_kv_dtype", "output_dtype", "prefix_hash_blocks", "seq_dtype", "status_name", "status_str",
    "version", "version_info",
]
