"""The continuous-batching scheduler (scheduler.h) and its plans as zero-copy numpy views."""
import ctypes

from . import _lib
from ._base import Handle, RkvError, as_ptr, check, view
from ._structs import (SCHED_CONFIG_INIT, Admission, EvictParams, PreemptMode, PrefixRule,
                       RequestState,
                       SchedConfig, SchedForkOp, SchedPrefixStats, SchedMetrics, SchedOutput, SchedPlan,
                       SchedRequest, SchedRequestInfo, SchedSeq, SchedSwap, Status,
                       numpy_dtype, parse_enum)
from .blockmgr import BlockManager


def _dtypes():
    global SEQ_DTYPE, OUTPUT_DTYPE
    if SEQ_DTYPE is None:
        SEQ_DTYPE = numpy_dtype(SchedSeq, ("id", "kind", "n_tokens", "pos", "kv_len", "samples",
                                           "compress"))
        OUTPUT_DTYPE = numpy_dtype(SchedOutput)
    return SEQ_DTYPE, OUTPUT_DTYPE


SEQ_DTYPE = None     # numpy dtype of Plan.seqs (rkv_sched_seq without its evict pointer)
OUTPUT_DTYPE = None  # numpy dtype of the outputs array (rkv_sched_output)


def seq_dtype():
    """The numpy structured dtype of Plan.seqs: the byte layout of rkv_sched_seq with fields
    id, kind, n_tokens, pos, kv_len, samples, compress (the evict pointer is left out:
    Plan.evict(i) reads it)."""
    return _dtypes()[0]


def output_dtype():
    """The numpy structured dtype of rkv_sched_output: id, eos, compressed, tokens_evicted,
    blocks_freed (the array Executor.finish fills and Scheduler.report reads)."""
    return _dtypes()[1]


def new_outputs(n):
    """A zeroed outputs array of n rkv_sched_output records."""
    import numpy as np
    return np.zeros(int(n), dtype=output_dtype())


class Plan:
    """One step's plan (rkv_sched_plan), returned by Scheduler.step.

    The array attributes are read-only zero-copy numpy views of the scheduler's plan arrays:
    they are valid until the next Scheduler.step (with overlap=True, until the step after it:
    the plan in flight stays valid while the next one is made) or close; reading an attribute
    of a stale
    Plan raises RkvError (RKV_ERR_STATE), but arrays taken earlier are not guarded: copy what
    must outlive the step. Scalars (step, n_seqs, n_decode, n_batched_tokens and the counts)
    are plain ints.

    seqs          structured [n_seqs] (seq_dtype(): id, kind, n_tokens, pos, kv_len, samples,
                  compress), decodes first, then prefill chunks
    copies        int32 [n_copies, 2] copy-on-write (src, dst) blocks
    swap_out      int32 [n_swap_out, 2] (device, host) blocks; swap_in likewise
    preempted, swapped_out, swapped_in, finished, started, dropped   int64 id arrays
    forks         int64 [n_forks, 2] (parent, child)
    slots         int64 [num_layers, n_batched_tokens, num_kv_heads] slot mapping (strided
                  by slot_layer_stride), or None when the scheduler has plan_slots off
    rows_changed  uint8 [n_seqs]
    """

    _ARRAYS = {  # name: (count field, element, columns)
        "copies": ("n_copies", "<i4", 2), "swap_out": ("n_swap_out", "<i4", 2),
        "swap_in": ("n_swap_in", "<i4", 2), "preempted": ("n_preempted", "<i8", 0),
        "swapped_out": ("n_swapped_out", "<i8", 0), "swapped_in": ("n_swapped_in", "<i8", 0),
        "finished": ("n_finished", "<i8", 0), "forks": ("n_forks", "<i8", 2),
        "started": ("n_started", "<i8", 0), "dropped": ("n_dropped", "<i8", 0),
    }

    def __init__(self, sched, ptr, gen):
        self._sched = sched
        self._ptr = ptr
        self._gen = gen
        p = ptr.contents
        self.step = p.step
        self.n_seqs = p.n_seqs
        self.n_decode = p.n_decode
        self.n_batched_tokens = p.n_batched_tokens
        self.slot_layer_stride = p.slot_layer_stride
        for name, (cnt, _, _) in self._ARRAYS.items():
            setattr(self, cnt, getattr(p, cnt))
        self._cache = {}

    @property
    def stale(self):
        """True once the scheduler has stepped again (or closed): the views are invalid."""
        return self._sched.closed or self._sched._gen - self._gen >= self._sched._plans_live

    def _live(self, what):
        if self.stale:
            raise RkvError(Status.ERR_STATE, "Plan.%s" % what,
                           "the plan of step %d is stale: the scheduler stepped or closed "
                           "since (plan views are valid until the next step)" % self.step)
        return self._ptr.contents

    def _field_addr(self, p, name):
        return ctypes.cast(getattr(p, name), ctypes.c_void_p).value

    def __getattr__(self, name):
        # the id / op arrays, built on first access (only called for missing attributes)
        if name not in Plan._ARRAYS:
            raise AttributeError("Plan has no attribute %r" % name)
        p = self._live(name)
        if name not in self._cache:
            cnt, elt, cols = Plan._ARRAYS[name]
            n = getattr(p, cnt)
            shape = (n, cols) if cols else (n,)
            self._cache[name] = view(self._sched, self._field_addr(p, name), shape, elt,
                                     readonly=True, track=False)
        return self._cache[name]

    @property
    def seqs(self):
        """Structured [n_seqs] view of the scheduled sequences (seq_dtype())."""
        p = self._live("seqs")
        if "seqs" not in self._cache:
            self._cache["seqs"] = view(self._sched, self._field_addr(p, "seqs"), (p.n_seqs,),
                                       seq_dtype(), readonly=True, track=False)
        return self._cache["seqs"]

    @property
    def rows_changed(self):
        """uint8 [n_seqs]: 1 where the sequence's table rows changed beyond their lengths."""
        p = self._live("rows_changed")
        if "rows_changed" not in self._cache:
            self._cache["rows_changed"] = view(self._sched, self._field_addr(p, "rows_changed"),
                                               (p.n_seqs,), "u1", readonly=True, track=False)
        return self._cache["rows_changed"]

    @property
    def slots(self):
        """int64 [num_layers, n_batched_tokens, num_kv_heads] zero-copy slot mapping (layer l
        starts at l * slot_layer_stride), or None without plan_slots."""
        p = self._live("slots")
        addr = self._field_addr(p, "slots")
        if not addr:
            return None
        if "slots" not in self._cache:
            cfg = self._sched.bm.config
            L, H = cfg["num_layers"], cfg["num_kv_heads"]
            self._cache["slots"] = view(self._sched, addr, (L, p.n_batched_tokens, H), "<i8",
                                        strides=(8 * p.slot_layer_stride, 8 * H, 8),
                                        readonly=True, track=False)
        return self._cache["slots"]

    def row_offsets(self):
        """int64 [n_seqs + 1]: sequence i owns plan rows row_offsets[i] .. row_offsets[i+1]."""
        import numpy as np
        out = np.zeros(self.n_seqs + 1, dtype=np.int64)
        np.cumsum(self.seqs["n_tokens"], out=out[1:])
        return out

    def evict(self, i):
        """A copy of seqs[i]'s eviction parameters (EvictParams)."""
        p = self._live("evict")
        if not 0 <= i < p.n_seqs:
            raise IndexError("Plan.evict: index %d out of range (n_seqs %d)" % (i, p.n_seqs))
        ep = p.seqs[i].evict
        return ep.contents.copy() if ep else None

    def hash(self):
        """rkv_sched_plan_hash: equal plans hash equal across processes."""
        self._live("hash")
        return _lib.lib().rkv_sched_plan_hash(self._ptr)

    @property
    def empty(self):
        """True when no sequence runs this step (the plan must still be executed)."""
        return self.n_seqs == 0

    def __repr__(self):
        return ("Plan(step=%d, n_seqs=%d, n_decode=%d, n_batched_tokens=%d, finished=%d%s)"
                % (self.step, self.n_seqs, self.n_decode, self.n_batched_tokens,
                   self.n_finished, ", stale" if self.stale else ""))


class Scheduler(Handle):
    """A continuous-batching scheduler over a BlockManager (rkv_sched).

    ``Scheduler(bm, max_batched_tokens=2048, max_seqs=256, max_prefill_chunk=0,
    admission="reserve", preempt="recompute", host_blocks=0, evict=None,
    check_every_step=False, plan_slots=False, prefix_cache=False, prefix_rule="protect",
    overlap=False, cache_lookahead=0)``: the defaults are RKV_SCHED_CONFIG_INIT's;
    admission "reserve" | "optimistic", preempt "recompute" | "swap", evict an EvictParams,
    a dict of its fields or a policy name (None = RKV_EVICT_PARAMS_INIT). The block manager
    is borrowed: it stays open while the scheduler is.
    """
    _destroy_fn = "rkv_sched_destroy"
    _kind = "Scheduler"

    def __init__(self, bm, **kw):
        super().__init__()
        if not isinstance(bm, BlockManager):
            raise TypeError("Scheduler: bm must be a librkv.BlockManager")
        vals = dict(SCHED_CONFIG_INIT, evict=None)
        for k in kw:
            if k not in vals:
                raise TypeError("Scheduler: unknown option %r (options: %s)" % (
                    k, ", ".join(vals)))
        vals.update(kw)
        cfg = SchedConfig()
        cfg.struct_size = ctypes.sizeof(SchedConfig)
        cfg.evict = EvictParams.coerce(vals.pop("evict"), "Scheduler evict")
        vals["admission"] = parse_enum(Admission, vals["admission"], "Scheduler admission")
        vals["preempt"] = parse_enum(PreemptMode, vals["preempt"], "Scheduler preempt")
        vals["prefix_rule"] = parse_enum(PrefixRule, vals["prefix_rule"], "Scheduler prefix_rule")
        for k, v in vals.items():
            setattr(cfg, k, v)
        self._config = dict(vals, evict=cfg.evict.copy())
        err = ctypes.create_string_buffer(256)
        h = ctypes.c_void_p()
        check(_lib.lib().rkv_sched_create(ctypes.byref(cfg), bm.handle, ctypes.byref(h), err,
                                           len(err)),
              "rkv_sched_create", err.raw)
        self._set(h.value)
        self.bm = bm
        self._borrow(bm)
        self._gen = 0
        self._plan = None
        self._plans_live = 2 if vals["overlap"] else 1 # overlap: the plan in flight too

    def _check(self, st, call):
        return check(st, call, lambda: self.last_error)

    @property
    def last_error(self):
        """Text of the last failed call ("" if none)."""
        return (_lib.lib().rkv_sched_last_error(self.handle) or b"").decode()

    @property
    def config(self):
        """The configuration given at creation (a dict; evict as EvictParams)."""
        return dict(self._config, evict=self._config["evict"].copy())

    def add_request(self, id, prompt_len, max_new_tokens, priority=0, arrival=0.0, evict=None):
        """Queues a request (state waiting). evict None = the scheduler's default policy."""
        ev = None if evict is None else EvictParams.coerce(evict, "add_request evict")
        rq = SchedRequest(int(id), int(prompt_len), int(max_new_tokens), int(priority),
                          float(arrival), ctypes.pointer(ev) if ev is not None else None)
        self._check(_lib.lib().rkv_sched_add_request(self.handle, ctypes.byref(rq)),
                    "rkv_sched_add_request")

    def set_prefix(self, id, hashes):
        """Attaches the prompt's block hashes (prefix_hash_blocks) to a waiting request: it
        shares cached prompt blocks at admission (prefix_cache) and, under the protect rule,
        keeps them out of eviction."""
        import numpy as np
        h = np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1)
        self._check(_lib.lib().rkv_sched_set_prefix(self.handle, int(id),
                                                    as_ptr(h) if h.shape[0] else None,
                                                    h.shape[0]),
                    "rkv_sched_set_prefix")

    def prefix_stats(self):
        """rkv_sched_prefix_stats as a dict (admissions, admissions_hit, hashed_tokens,
        hit_tokens, admissions_ahead)."""
        st = SchedPrefixStats()
        st.struct_size = ctypes.sizeof(SchedPrefixStats)
        self._check(_lib.lib().rkv_sched_get_prefix_stats(self.handle, ctypes.byref(st)),
                    "rkv_sched_get_prefix_stats")
        return {k: getattr(st, k) for k, _ in st._fields_ if k != "struct_size"}

    def abort(self, id):
        """Aborts a live request; its blocks are freed now."""
        self._check(_lib.lib().rkv_sched_abort(self.handle, int(id)), "rkv_sched_abort")

    def fork(self, parent, child, max_new_tokens):
        """Forks a running request: child shares parent's blocks and progress and stops after
        max_new_tokens generated in total. RkvError RKV_ERR_NO_BLOCKS / RKV_ERR_CAPACITY are
        'retry later'."""
        self._check(_lib.lib().rkv_sched_fork(self.handle, int(parent), int(child),
                                              int(max_new_tokens)), "rkv_sched_fork")

    def set_free_blocks_limit(self, limit):
        """Plans with at most used + limit blocks (tensor parallelism); 2**32 - 1 = no limit."""
        _lib.lib().rkv_sched_set_free_blocks_limit(self.handle, int(limit))

    def step(self):
        """Plans one step and returns its Plan (the previous plan's views become invalid;
        with overlap=True this may be called once while the previous plan is unreported, and
        the views of that plan stay valid until the next step)."""
        ptr = ctypes.POINTER(SchedPlan)()
        st = _lib.lib().rkv_sched_step(self.handle, ctypes.byref(ptr))
        if st == 0:
            self._gen += 1
        self._check(st, "rkv_sched_step")
        self._plan = Plan(self, ptr, self._gen)
        return self._plan

    def report(self, outs):
        """Applies the engine's results for the oldest unreported plan: outs is a structured array of
        output_dtype() with one record per scheduled sequence (Executor.finish returns it)."""
        import numpy as np
        outs = _outputs_arg(outs, "Scheduler.report")
        self._check(_lib.lib().rkv_sched_report(self.handle, as_ptr(outs), outs.shape[0]),
                    "rkv_sched_report")

    def get_request(self, id):
        """A live request's state as a dict (state as RequestState, prompt_len, generated,
        computed, kv_len, preemptions, compressions, bound_blocks)."""
        info = SchedRequestInfo()
        self._check(_lib.lib().rkv_sched_get_request(self.handle, int(id), ctypes.byref(info)),
                    "rkv_sched_get_request")
        d = {k: getattr(info, k) for k, _ in info._fields_}
        d["state"] = RequestState(d["state"])
        return d

    def bound_blocks(self, prompt_len, max_new_tokens, evict=None):
        """Whole-life block bound admission uses for such a request."""
        ev = None if evict is None else EvictParams.coerce(evict)
        return _lib.lib().rkv_sched_bound_blocks(self.handle, int(prompt_len),
                                                 int(max_new_tokens),
                                                 ctypes.byref(ev) if ev is not None else None)

    def _metrics_struct(self):
        m = SchedMetrics()
        _lib.lib().rkv_sched_get_metrics(self.handle, ctypes.byref(m))
        return m

    def metrics(self):
        """rkv_sched_metrics as a dict (gauges and counters since create)."""
        m = self._metrics_struct()
        return {k: getattr(m, k) for k, _ in m._fields_}

    def metrics_prometheus(self):
        """The metrics in Prometheus text exposition format (rkv_sched_prometheus: with
        prefix_cache the prefix cache's counters too)."""
        L = _lib.lib()
        need = ctypes.c_size_t()
        buf = ctypes.create_string_buffer(16384)
        st = L.rkv_sched_prometheus(self.handle, buf, len(buf), ctypes.byref(need))
        if st == Status.ERR_CAPACITY:
            buf = ctypes.create_string_buffer(need.value + 1)
            st = L.rkv_sched_prometheus(self.handle, buf, len(buf), ctypes.byref(need))
        self._check(st, "rkv_sched_prometheus")
        return buf.value.decode()

    def check(self):
        """Walks every invariant (and the block manager's); RkvError RKV_ERR_CORRUPT on a
        violation."""
        self._check(_lib.lib().rkv_sched_check(self.handle), "rkv_sched_check")

    def close(self):
        """Destroys the scheduler (its sequences in the block manager are freed too); the
        last plan's views become invalid."""
        super().close()
        self._gen += 1


def _outputs_arg(outs, what):
    import numpy as np
    if not isinstance(outs, np.ndarray) or outs.dtype != output_dtype():
        raise TypeError("%s: outs must be a numpy array of librkv.output_dtype() (from "
                        "Executor.finish or new_outputs), got %s" % (
                            what, getattr(outs, "dtype", type(outs).__name__)))
    if outs.ndim != 1 or not outs.flags.c_contiguous:
        raise ValueError("%s: outs must be 1-D and C-contiguous" % what)
    return outs
