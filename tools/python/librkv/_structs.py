"""ctypes mirrors of librkv's public C structs and enums, field for field.

Every struct with a ``struct_size`` field gets it set to ``ctypes.sizeof`` of the mirror, and
the ``*_INIT`` defaults of the headers are written out in ``*_INIT`` dicts below (kept equal to
the headers by tests/test_abi.py, which compiles a C program that prints sizeof / offsetof of
each struct and the values of the ``*_INIT`` initialisers).
"""
import ctypes
from ctypes import (POINTER, Structure, c_bool, c_double, c_float, c_int, c_int32, c_int64,
                    c_uint8, c_uint32, c_uint64, c_void_p)
import enum


# ---- enums (C enums are int) ---------------------------------------------------------------

class Status(enum.IntEnum):
    """rkv_status."""
    OK = 0
    ERR_INVALID_ARG = 1
    ERR_NO_MEMORY = 2
    ERR_NO_BLOCKS = 3
    ERR_NOT_FOUND = 4
    ERR_EXISTS = 5
    ERR_UNSUPPORTED = 6
    ERR_CORRUPT = 7
    ERR_CUDA = 8
    ERR_COMM = 9
    ERR_IO = 10
    ERR_FORMAT = 11
    ERR_TIMEOUT = 12
    ERR_STATE = 13
    ERR_CAPACITY = 14
    ERR_INTERNAL = 15


class DType(enum.IntEnum):
    """rkv_dtype: KV element type."""
    F32 = 0
    F16 = 1
    BF16 = 2


class BackendKind(enum.IntEnum):
    """rkv_backend_kind."""
    AUTO = 0
    CPU = 1
    CUDA = 2


class EvictPolicy(enum.IntEnum):
    """rkv_evict_policy."""
    FULL = 0
    RKV = 1
    SNAPKV = 2
    STREAMING = 3
    H2O = 4


class Granularity(enum.IntEnum):
    """rkv_evict_granularity: which streams share one kept set."""
    STREAM = 0
    LAYER = 1
    KVHEAD = 2
    SEQUENCE = 3


class Admission(enum.IntEnum):
    """rkv_sched_admission."""
    RESERVE = 0
    OPTIMISTIC = 1


class PreemptMode(enum.IntEnum):
    """rkv_sched_preempt_mode."""
    RECOMPUTE = 0
    SWAP = 1


class PrefixRule(enum.IntEnum):
    """rkv_sched_prefix_rule."""
    PROTECT = 0
    COPY = 1


class SeqKind(enum.IntEnum):
    """rkv_sched_kind: what a scheduled sequence runs this step."""
    PREFILL = 0
    DECODE = 1


class RequestState(enum.IntEnum):
    """rkv_sched_state."""
    WAITING = 0
    RUNNING = 1
    SWAPPED = 2
    FINISHED = 3


def parse_enum(cls, value, what):
    """An enum member from a member, an int or a case-insensitive name ("bf16", "rkv")."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace("-", "_")
        aliases = {"FLOAT32": "F32", "FP32": "F32", "FLOAT16": "F16", "FP16": "F16",
                   "BFLOAT16": "BF16"}
        key = aliases.get(key, key)
        if key in cls.__members__:
            return cls[key]
        raise ValueError("%s: unknown %s %r (one of %s)" % (
            what, cls.__name__, value, ", ".join(m.lower() for m in cls.__members__)))
    try:
        return cls(int(value))
    except (ValueError, TypeError):
        raise ValueError("%s: invalid %s %r" % (what, cls.__name__, value)) from None


# ---- runtime.h -----------------------------------------------------------------------------

class KvLayout(Structure):
    """rkv_kv_layout: one block = K [block_size][head_dim] then V [block_size][head_dim]."""
    _fields_ = [("dtype", c_int), ("block_size", c_uint32), ("head_dim", c_uint32)]


class BlockCopy(Structure):
    """rkv_block_copy (copy-on-write op: whole block src -> dst)."""
    _fields_ = [("src", c_int32), ("dst", c_int32)]


class SlotMove(Structure):
    """rkv_slot_move (compaction move: global slot src -> dst)."""
    _fields_ = [("src", c_int64), ("dst", c_int64)]


class BackendConfig(Structure):
    """rkv_backend_config."""
    _fields_ = [("struct_size", c_uint32), ("kind", c_int), ("device", c_int32),
                ("num_threads", c_int32), ("allocator", c_void_p), ("logger", c_void_p)]


BACKEND_CONFIG_INIT = dict(kind=BackendKind.AUTO, device=0, num_threads=0)

# ---- blockmgr.h ----------------------------------------------------------------------------


class BlockManagerConfig(Structure):
    """rkv_blockmgr_config."""
    _fields_ = [("struct_size", c_uint32), ("num_blocks", c_uint32), ("block_size", c_uint32),
                ("num_layers", c_uint32), ("num_kv_heads", c_uint32), ("head_dim", c_uint32),
                ("dtype", c_int), ("max_seqs", c_uint32), ("watermark", c_float),
                ("check_every_op", c_bool), ("allocator", c_void_p), ("logger", c_void_p),
                ("prefix_cache", c_bool)]


BLOCKMGR_CONFIG_INIT = dict(num_blocks=0, block_size=16, num_layers=1, num_kv_heads=1,
                            head_dim=128, dtype=DType.BF16, max_seqs=0, watermark=0.01,
                            check_every_op=False, prefix_cache=False)


class KeepList(Structure):
    """rkv_keep_list: the positions one stream keeps in a compaction."""
    _fields_ = [("layer", c_uint32), ("head", c_uint32), ("pos", POINTER(c_int32)),
                ("n", c_uint32)]


class BlockManagerStats(Structure):
    """rkv_blockmgr_stats."""
    _fields_ = [("total_blocks", c_uint32), ("free_blocks", c_uint32),
                ("used_blocks", c_uint32), ("watermark_blocks", c_uint32),
                ("shared_blocks", c_uint32), ("num_seqs", c_uint32),
                ("allocated_slots", c_uint64), ("token_slots", c_uint64),
                ("fragmentation_slots", c_uint64), ("peak_used_blocks", c_uint32)]


class PrefixStats(Structure):
    """rkv_prefix_stats."""
    _fields_ = [("struct_size", c_uint32), ("entries", c_uint32), ("cached_blocks", c_uint32),
                ("reclaimable_blocks", c_uint32), ("lookups", c_uint64),
                ("hit_groups", c_uint64), ("inserted", c_uint64), ("invalidated", c_uint64),
                ("reclaimed", c_uint64)]


# ---- evict.h -------------------------------------------------------------------------------

class EvictParams(Structure):
    """rkv_evict_params: an eviction policy and its parameters.

    ``EvictParams(policy="rkv", budget=32, window=4, buffer=8)``: keywords override the
    header's RKV_EVICT_PARAMS_INIT (rkv, budget 1024, window 8, buffer 128, kernel 7,
    lambda 0.1, threshold 0.5, sinks 4); ``policy`` takes a name or an EvictPolicy; ``lambda_``
    is the field ``lambda`` (a Python keyword; ``lam`` is accepted too).
    """
    _fields_ = [("struct_size", c_uint32), ("policy", c_int), ("budget", c_int32),
                ("window", c_int32), ("buffer", c_int32), ("kernel", c_int32),
                ("lambda_", c_float), ("threshold", c_float), ("sinks", c_int32)]

    def __init__(self, policy=None, **kw):
        super().__init__()
        vals = dict(EVICT_PARAMS_INIT)
        if policy is not None:
            vals["policy"] = policy
        if "lam" in kw:
            kw["lambda_"] = kw.pop("lam")
        if "lambda" in kw:
            kw["lambda_"] = kw.pop("lambda")
        for k in kw:
            if k not in vals:
                raise TypeError("EvictParams: unknown field %r (fields: %s)" % (
                    k, ", ".join(vals)))
        vals.update(kw)
        self.struct_size = ctypes.sizeof(EvictParams)
        self.policy = parse_enum(EvictPolicy, vals.pop("policy"), "EvictParams.policy")
        for k, v in vals.items():
            setattr(self, k, v)

    @classmethod
    def coerce(cls, value, what="evict"):
        """An EvictParams from an EvictParams, a dict of fields, a policy name, or None
        (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, (str, EvictPolicy, int)):
            return cls(policy=value)
        raise TypeError("%s: expected EvictParams, dict or policy name, got %s" % (
            what, type(value).__name__))

    def copy(self):
        """An independent copy."""
        c = EvictParams()
        ctypes.memmove(ctypes.byref(c), ctypes.byref(self), ctypes.sizeof(EvictParams))
        return c

    def to_dict(self):
        """The fields as a dict (policy as its lower-case name, ``lambda`` as ``lambda_``)."""
        d = {k: getattr(self, k) for k, _ in self._fields_ if k != "struct_size"}
        d["policy"] = EvictPolicy(d["policy"]).name.lower()
        return d

    def __repr__(self):
        return "EvictParams(%s)" % ", ".join("%s=%r" % kv for kv in self.to_dict().items())

    def __eq__(self, other):
        return isinstance(other, EvictParams) and bytes(self) == bytes(other)


EVICT_PARAMS_INIT = dict(policy=EvictPolicy.RKV, budget=1024, window=8, buffer=128, kernel=7,
                         lambda_=0.1, threshold=0.5, sinks=4)


class EvictScores(Structure):
    """rkv_evict_scores: optional score dumps of the dense selection."""
    _fields_ = [("importance", c_void_p), ("redundancy", c_void_p), ("joint", c_void_p)]


class EvictResult(Structure):
    """rkv_evict_result."""
    _fields_ = [("streams_compressed", c_uint32), ("tokens_evicted", c_uint64),
                ("blocks_freed", c_uint32), ("slot_moves", c_uint32)]


# ---- scheduler.h ---------------------------------------------------------------------------

class SchedConfig(Structure):
    """rkv_sched_config."""
    _fields_ = [("struct_size", c_uint32), ("max_batched_tokens", c_uint32),
                ("max_seqs", c_uint32), ("max_prefill_chunk", c_uint32),
                ("admission", c_int), ("preempt", c_int), ("host_blocks", c_uint32),
                ("evict", EvictParams), ("allocator", c_void_p), ("logger", c_void_p),
                ("check_every_step", c_bool), ("plan_slots", c_bool),
                ("prefix_cache", c_bool), ("prefix_rule", c_int), ("overlap", c_bool),
                ("cache_lookahead", c_uint64)]


SCHED_CONFIG_INIT = dict(max_batched_tokens=2048, max_seqs=256, max_prefill_chunk=0,
                         admission=Admission.RESERVE, preempt=PreemptMode.RECOMPUTE,
                         host_blocks=0, check_every_step=False, plan_slots=False,
                         prefix_cache=False, prefix_rule=PrefixRule.PROTECT, overlap=False,
                         cache_lookahead=0)


class SchedPrefixStats(Structure):
    """rkv_sched_prefix_stats."""
    _fields_ = [("struct_size", c_uint32), ("admissions", c_uint64),
                ("admissions_hit", c_uint64), ("hashed_tokens", c_uint64),
                ("hit_tokens", c_uint64), ("admissions_ahead", c_uint64)]


class SchedRequest(Structure):
    """rkv_sched_request."""
    _fields_ = [("id", c_int64), ("prompt_len", c_int64), ("max_new_tokens", c_int64),
                ("priority", c_int32), ("arrival", c_double),
                ("evict", POINTER(EvictParams))]


class SchedSeq(Structure):
    """rkv_sched_seq: one scheduled sequence of a plan."""
    _fields_ = [("id", c_int64), ("kind", c_int), ("n_tokens", c_uint32), ("pos", c_int64),
                ("kv_len", c_int32), ("samples", c_bool), ("compress", c_bool),
                ("evict", POINTER(EvictParams))]


class SchedSwap(Structure):
    """rkv_sched_swap: device block <-> host pool block."""
    _fields_ = [("device", c_int32), ("host", c_int32)]


class SchedForkOp(Structure):
    """rkv_sched_fork_op."""
    _fields_ = [("parent", c_int64), ("child", c_int64)]


class SchedPlan(Structure):
    """rkv_sched_plan."""
    _fields_ = [("step", c_uint64), ("seqs", POINTER(SchedSeq)), ("n_seqs", c_uint32),
                ("n_decode", c_uint32), ("n_batched_tokens", c_uint32),
                ("copies", POINTER(BlockCopy)), ("n_copies", c_uint32),
                ("swap_out", POINTER(SchedSwap)), ("n_swap_out", c_uint32),
                ("swap_in", POINTER(SchedSwap)), ("n_swap_in", c_uint32),
                ("preempted", POINTER(c_int64)), ("n_preempted", c_uint32),
                ("swapped_out", POINTER(c_int64)), ("n_swapped_out", c_uint32),
                ("swapped_in", POINTER(c_int64)), ("n_swapped_in", c_uint32),
                ("finished", POINTER(c_int64)), ("n_finished", c_uint32),
                ("forks", POINTER(SchedForkOp)), ("n_forks", c_uint32),
                ("slots", POINTER(c_int64)), ("slot_layer_stride", c_uint64),
                ("rows_changed", POINTER(c_uint8)),
                ("started", POINTER(c_int64)), ("n_started", c_uint32),
                ("dropped", POINTER(c_int64)), ("n_dropped", c_uint32)]


class SchedOutput(Structure):
    """rkv_sched_output: what the engine reports per scheduled sequence."""
    _fields_ = [("id", c_int64), ("eos", c_bool), ("compressed", c_bool),
                ("tokens_evicted", c_uint64), ("blocks_freed", c_uint32)]


class SchedRequestInfo(Structure):
    """rkv_sched_request_info."""
    _fields_ = [("state", c_int), ("prompt_len", c_int64), ("generated", c_int64),
                ("computed", c_int64), ("kv_len", c_int32), ("preemptions", c_uint32),
                ("compressions", c_uint32), ("bound_blocks", c_uint64)]


class SchedMetrics(Structure):
    """rkv_sched_metrics."""
    _fields_ = [("kv_cache_usage", c_double), ("fragmentation", c_double),
                ("num_running", c_uint32), ("num_waiting", c_uint32),
                ("num_swapped", c_uint32), ("used_blocks", c_uint32),
                ("free_blocks", c_uint32), ("total_blocks", c_uint32),
                ("host_used_blocks", c_uint32), ("host_total_blocks", c_uint32),
                ("reserved_blocks", c_uint64), ("steps", c_uint64),
                ("num_preemptions", c_uint64), ("num_preempt_recompute", c_uint64),
                ("num_preempt_swap", c_uint64), ("swapped_out_blocks", c_uint64),
                ("swapped_in_blocks", c_uint64), ("prompt_tokens", c_uint64),
                ("generation_tokens", c_uint64), ("num_finished", c_uint64),
                ("num_aborted", c_uint64), ("num_rejected", c_uint64),
                ("compressions", c_uint64), ("evicted_tokens", c_uint64),
                ("compaction_freed_blocks", c_uint64), ("max_running", c_uint32)]


# ---- executor.h ----------------------------------------------------------------------------

class ExecConfig(Structure):
    """rkv_exec_config."""
    _fields_ = [("struct_size", c_uint32), ("num_q_heads", c_uint32), ("scale", c_float),
                ("max_seqs", c_uint32), ("max_stream_tokens", c_uint32),
                ("host_blocks", c_uint32), ("evict", EvictParams), ("allocator", c_void_p),
                ("granularity", c_int)]


EXEC_CONFIG_INIT = dict(num_q_heads=0, scale=0.0, max_seqs=256, max_stream_tokens=0,
                        host_blocks=0, granularity=0)


def struct_dict(s):
    """A ctypes Structure's fields as a dict (pointers and struct_size left out)."""
    out = {}
    for name, typ in s._fields_:
        if name in ("struct_size", "allocator", "logger") or name == "evict":
            continue
        out[name] = getattr(s, name)
    return out


def numpy_dtype(struct, names=None):
    """A numpy structured dtype with exactly the byte layout of a ctypes Structure (same
    offsets and itemsize), for zero-copy views of C arrays. ``names`` selects the fields
    (pointer fields are best left out); padding and left-out fields stay in the itemsize."""
    import numpy as np
    conv = {c_int64: "<i8", c_uint64: "<u8", c_int32: "<i4", c_uint32: "<u4", c_int: "<i4",
            c_bool: "?", c_uint8: "u1", c_float: "<f4", c_double: "<f8"}
    fields = {}
    for name, typ in struct._fields_:
        if names is not None and name not in names:
            continue
        if typ not in conv:
            raise TypeError("numpy_dtype: field %s of %s has no numpy equivalent" % (
                name, struct.__name__))
        fields[name] = (np.dtype(conv[typ]), getattr(struct, name).offset)
    return np.dtype({"names": list(fields), "formats": [v[0] for v in fields.values()],
                     "offsets": [v[1] for v in fields.values()],
                     "itemsize": ctypes.sizeof(struct)})
