"""The plan executor (executor.h): runs a scheduler's plans against a KV pool, so that an
engine only produces each layer's Q/K/V and samples tokens."""
import ctypes

from . import _lib
from ._base import Handle, RkvError, as_ptr, check
from .device import DeviceArray, device_rows
from ._structs import EXEC_CONFIG_INIT, EvictParams, ExecConfig, Granularity, Status, parse_enum
from .blockmgr import BlockManager
from .runtime import KVPool
from .scheduler import Plan, Scheduler, _outputs_arg, new_outputs


class Executor(Handle):
    """An executor over a block manager and a CPU KV pool (rkv_exec).

    ``Executor(bm, pool, num_q_heads, scale=0.0, max_seqs=256, max_stream_tokens=0,
    host_blocks=0, evict=None, granularity="stream")``: defaults are RKV_EXEC_CONFIG_INIT's
    (granularity: stream, layer, kvhead or sequence; CPU pools only for the coarser ones); give it the
    scheduler's max_seqs, host_blocks and evict (``Executor.for_scheduler`` copies them).
    pool None makes a bookkeeping executor (no bytes move; ``layer`` is not called).

    One step::

        plan = sched.step()
        x.begin(plan)
        for l in range(num_layers):          # skipped when plan.n_seqs == 0
            x.layer(l, q, k, v, out)         # q, out [rows, num_q_heads, head_dim] float32,
                                             # k, v [rows, num_kv_heads, head_dim] float32
        outs = x.finish(eos)                 # eos: bool [n_seqs] (or None = all False)
        sched.report(outs)
    """
    _destroy_fn = "rkv_exec_destroy"
    _kind = "Executor"

    def __init__(self, bm, pool, num_q_heads, **kw):
        super().__init__()
        if not isinstance(bm, BlockManager):
            raise TypeError("Executor: bm must be a librkv.BlockManager")
        if pool is not None and not isinstance(pool, KVPool):
            raise TypeError("Executor: pool must be a librkv.KVPool or None")
        vals = dict(EXEC_CONFIG_INIT, num_q_heads=num_q_heads, evict=None)
        for k in kw:
            if k not in vals:
                raise TypeError("Executor: unknown option %r (options: %s)" % (
                    k, ", ".join(vals)))
        vals.update(kw)
        cfg = ExecConfig()
        cfg.struct_size = ctypes.sizeof(ExecConfig)
        cfg.evict = EvictParams.coerce(vals.pop("evict"), "Executor evict")
        vals["granularity"] = int(parse_enum(Granularity, vals["granularity"],
                                             "Executor granularity"))
        for k, v in vals.items():
            setattr(cfg, k, v)
        err = ctypes.create_string_buffer(256)
        h = ctypes.c_void_p()
        check(_lib.lib().rkv_exec_create(ctypes.byref(cfg), bm.handle,
                                          pool.handle if pool is not None else None,
                                          ctypes.byref(h), err, len(err)),
              "rkv_exec_create", err.raw)
        self._set(h.value)
        self.bm, self.pool = bm, pool
        self._borrow(bm)
        if pool is not None:
            self._borrow(pool)
        c = bm.config
        self.num_layers, self.num_kv_heads, self.head_dim = (c["num_layers"], c["num_kv_heads"],
                                                             c["head_dim"])
        self.num_q_heads = int(num_q_heads)
        # a device pool (CUDA, emulated) takes device memory in layer(), a CPU pool numpy
        self._device = pool is not None and not pool.backend.device_is_host
        self._plan = None
        self._layers_done = None

    @classmethod
    def for_scheduler(cls, sched, pool, num_q_heads, **kw):
        """An executor over the scheduler's block manager with its max_seqs, host_blocks and
        default eviction parameters (keywords override)."""
        c = sched.config
        args = dict(max_seqs=c["max_seqs"], host_blocks=c["host_blocks"], evict=c["evict"])
        args.update(kw)
        return cls(sched.bm, pool, num_q_heads, **args)

    def _check(self, st, call):
        return check(st, call, lambda: self.last_error)

    @property
    def last_error(self):
        """Text of the last failed call ("" if none)."""
        return (_lib.lib().rkv_exec_last_error(self.handle) or b"").decode()

    def begin(self, plan):
        """Opens a step: applies forks, drops, swaps, copy-on-write copies and query-window
        changes of the plan, and brings the table mirror up to date. Every plan is begun, an
        empty one too."""
        if not isinstance(plan, Plan):
            raise TypeError("Executor.begin: expected a librkv.Plan from Scheduler.step")
        if plan._sched.bm is not self.bm:
            raise ValueError("Executor.begin: the plan's scheduler runs another block manager")
        plan._live("begin")
        self._check(_lib.lib().rkv_exec_begin(self.handle, plan._ptr), "rkv_exec_begin")
        self._plan = plan
        self._layers_done = set()

    def _rows(self, what):
        if self._plan is None:
            raise RkvError(Status.ERR_STATE, "Executor.%s" % what, "no open step (call begin)")
        self._plan._live(what)
        return self._plan.n_batched_tokens

    def _arg(self, a, name, heads, rows, writable=False):
        import numpy as np
        want = (rows, heads, self.head_dim)
        if self._device:
            return device_rows(a, self.pool.backend, want, name, writable)
        if not isinstance(a, np.ndarray):
            raise TypeError("Executor.layer: %s must be a numpy array %s float32 (a CPU pool), "
                            "got %s" % (name, list(want), type(a).__name__))
        if a.dtype != np.float32:
            raise TypeError("Executor.layer: %s must be float32, got %s" % (name, a.dtype))
        if a.shape != want:
            raise ValueError("Executor.layer: %s must have shape %s (rows = plan.n_batched_"
                             "tokens, %s, head_dim), got %s" % (
                                 name, want, "num_q_heads" if name in ("q", "out")
                                 else "num_kv_heads", a.shape))
        if not a.flags.c_contiguous:
            raise ValueError("Executor.layer: %s must be C-contiguous "
                             "(np.ascontiguousarray)" % name)
        if writable and not a.flags.writeable:
            raise ValueError("Executor.layer: %s must be writable" % name)
        return a.ctypes.data

    def layer(self, layer, q, k, v, out):
        """Runs one layer of the open step: writes k/v into the plan's slots, runs paged
        attention into out, pushes q into the query window, accumulates H2O mass.
        q, out: float32 [rows, num_q_heads, head_dim]; k, v: float32 [rows, num_kv_heads,
        head_dim]; rows = plan.n_batched_tokens, token-major in plan order, C-contiguous."""
        rows = self._rows("layer")
        if self.pool is None:
            raise RkvError(Status.ERR_STATE, "Executor.layer",
                           "a bookkeeping executor (no pool) runs no layers")
        layer = int(layer)
        if not 0 <= layer < self.num_layers:
            raise ValueError("Executor.layer: layer %d out of range (num_layers %d)" % (
                layer, self.num_layers))
        q = self._arg(q, "q", self.num_q_heads, rows)
        k = self._arg(k, "k", self.num_kv_heads, rows)
        v = self._arg(v, "v", self.num_kv_heads, rows)
        out = self._arg(out, "out", self.num_q_heads, rows, writable=True)
        ptr = ctypes.c_void_p
        self._check(_lib.lib().rkv_exec_layer(self.handle, layer, ptr(q), ptr(k), ptr(v),
                                              ptr(out)), "rkv_exec_layer")
        self._layers_done.add(layer)

    def finish(self, eos=None, outs=None):
        """Closes the step: runs the flagged compressions and returns the outputs array
        (output_dtype(), one record per plan sequence) to hand to Scheduler.report.
        eos: bool [n_seqs], whether the token sampled for seqs[i] ended it (None = none did).
        outs: an outputs array to fill (new_outputs(n_seqs); its eos is used when eos is
        None). RKV_ERR_NO_BLOCKS (a compression without reserved blocks) still closes the
        step: the RkvError carries the filled array as ``.outputs``."""
        import numpy as np
        self._rows("finish")
        n = self._plan.n_seqs
        if outs is None and isinstance(eos, np.ndarray) and eos.dtype.fields is not None:
            eos, outs = None, eos  # finish(outs)
        if outs is None:
            outs = new_outputs(n)
        else:
            outs = _outputs_arg(outs, "Executor.finish")
            if not outs.flags.writeable:
                raise ValueError("Executor.finish: outs must be writable")
        if outs.shape[0] != n:
            raise ValueError("Executor.finish: outs has %d records, the plan %d sequences" % (
                outs.shape[0], n))
        if eos is not None:
            e = np.asarray(eos, dtype=bool).reshape(-1)
            if e.shape[0] != n:
                raise ValueError("Executor.finish: eos has %d entries, the plan %d sequences"
                                 % (e.shape[0], n))
            outs["eos"] = e
        st = _lib.lib().rkv_exec_finish(self.handle, as_ptr(outs), n)
        if st == 0 or st == Status.ERR_NO_BLOCKS:
            self._plan = None
        if st == 0 and self.pool is not None:
            self.pool.backend._synced()  # finish synchronised the stream
        try:
            self._check(st, "rkv_exec_finish")
        except RkvError as e:
            e.outputs = outs
            raise
        return outs

    def run(self, plan, qkv, eos=None):
        """Convenience for one whole step after Scheduler.step: begin, every layer with
        ``q, k, v = qkv(plan, layer)`` (arrays as for ``layer``), then finish(eos). eos may be
        a callable eos(plan) -> bool [n_seqs]. Returns (outs, out of the last layer: a numpy
        array, or on a device pool a DeviceArray)."""
        import numpy as np
        self.begin(plan)
        out = None
        if plan.n_seqs and self.pool is not None:
            shape = (plan.n_batched_tokens, self.num_q_heads, self.head_dim)
            out = (DeviceArray(self.pool.backend, shape) if self._device
                   else np.empty(shape, dtype=np.float32))
            for l in range(self.num_layers):
                q, k, v = qkv(plan, l)
                self.layer(l, q, k, v, out)
        if callable(eos):
            eos = eos(plan)
        return self.finish(eos), out

    @property
    def qwindow_bytes_per_seq(self):
        """Bytes of query window kept per live sequence (0 when the policy needs none)."""
        return _lib.lib().rkv_exec_qwindow_bytes_per_seq(self.handle)

    @property
    def memory_bytes(self):
        """Total bytes the executor allocated."""
        return _lib.lib().rkv_exec_memory_bytes(self.handle)

    def check(self):
        """Walks the executor's invariants (table mirror vs the block manager, query
        windows); RkvError RKV_ERR_CORRUPT on a violation."""
        self._check(_lib.lib().rkv_exec_check(self.handle), "rkv_exec_check")
