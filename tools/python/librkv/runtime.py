"""Version and build queries, backends and KV pools (runtime.h), with zero-copy numpy views of
a CPU pool's blocks."""
import ctypes
from collections import namedtuple

from . import _lib
from ._base import Handle, RkvError, as_ptr, check, view
from ._structs import (BACKEND_CONFIG_INIT, BackendConfig, BackendKind, BlockCopy, DType,
                       KvLayout, SlotMove, Status, parse_enum)


def version():
    """The version of the loaded library, "MAJOR.MINOR.PATCH" (rkv_version_string)."""
    return _lib.lib().rkv_version_string().decode()


def version_info():
    """The loaded library's version as a tuple of ints (major, minor, patch)."""
    a, b, c = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _lib.lib().rkv_version(ctypes.byref(a), ctypes.byref(b), ctypes.byref(c))
    return (a.value, b.value, c.value)


def build_info():
    """What the loaded library was built with: {"cuda": bool, "nccl", "hwloc", "mpi",
    "blas"}, plus "version" and "library" (the path loaded)."""
    L = _lib.lib()
    info = {c: bool(getattr(L, "rkv_build_has_" + c)()) for c in
            ("cuda", "nccl", "hwloc", "mpi", "blas")}
    info["version"] = version()
    info["library"] = _lib.library_path()
    return info


def status_name(status):
    """The C enum name of a status code, e.g. "RKV_ERR_NO_BLOCKS"."""
    return _lib.lib().rkv_status_name(int(status)).decode()


def status_str(status):
    """The library's description of a status code."""
    return _lib.lib().rkv_status_str(int(status)).decode()


Layout = namedtuple("Layout", "dtype block_size head_dim")
Layout.__doc__ = """KV block layout (rkv_kv_layout): dtype (a DType), block_size, head_dim.
A block holds K [block_size][head_dim] followed by V [block_size][head_dim]."""


def numpy_kv_dtype(dtype):
    """The numpy dtype a pool of this DType is viewed as: float32, float16, or uint16 for
    bf16 (the raw bits: bf16_to_f32 / f32_to_bf16 convert)."""
    import numpy as np
    dtype = parse_enum(DType, dtype, "dtype")
    return {DType.F32: np.dtype(np.float32), DType.F16: np.dtype(np.float16),
            DType.BF16: np.dtype(np.uint16)}[dtype]


def bf16_to_f32(bits):
    """bfloat16 raw bits (uint16 array) to float32 (exact)."""
    import numpy as np
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    """float32 to bfloat16 raw bits (uint16), rounding to nearest even like the library
    (NaN stays NaN)."""
    import numpy as np
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def _layout_struct(layout):
    if isinstance(layout, KvLayout):
        return layout
    if isinstance(layout, Layout) or isinstance(layout, tuple):
        dt, bs, hd = layout
    elif isinstance(layout, dict):
        dt, bs, hd = layout["dtype"], layout["block_size"], layout["head_dim"]
    else:
        raise TypeError("layout: expected Layout, (dtype, block_size, head_dim) or dict")
    return KvLayout(int(parse_enum(DType, dt, "layout.dtype")), int(bs), int(hd))


class Backend(Handle):
    """A compute backend (rkv_backend). ``Backend("cpu", num_threads=1)``.

    kind: "cpu" (default), "auto" (CUDA when built and a device is present) or "cuda";
    ``Backend.emulated()`` is the emulated device (<rkv/buffer_emu.h>: CPU kernels, device
    memory the host cannot touch), which runs a device pool's code paths without a GPU.
    Pool views are for CPU pools; the executor takes numpy arrays on a CPU pool and device
    memory (librkv.DeviceArray, or on CUDA a torch / CuPy CUDA array) on a device pool.
    """
    _destroy_fn = "rkv_backend_destroy"
    _kind = "Backend"

    def __init__(self, kind="cpu", num_threads=0, device=0, _emulated=False):
        super().__init__()
        cfg = BackendConfig()
        cfg.struct_size = ctypes.sizeof(BackendConfig)
        init = dict(BACKEND_CONFIG_INIT, kind=parse_enum(BackendKind, kind, "Backend kind"),
                    num_threads=num_threads, device=device)
        for k, v in init.items():
            setattr(cfg, k, int(v))
        h = ctypes.c_void_p()
        create = "rkv_backend_create_emulated" if _emulated else "rkv_backend_create"
        check(getattr(_lib.lib(), create)(ctypes.byref(cfg), ctypes.byref(h)), create,
              "kind %s" % ("emulated" if _emulated else BackendKind(cfg.kind).name.lower()))
        self._set(h.value)
        self._inflight = []  # upload sources the stream may still read (the async rule)

    @classmethod
    def emulated(cls, num_threads=1):
        """The emulated device: a CPU backend whose DEVICE memory the host cannot touch and
        whose transfers run at the next sync, checking the async rule."""
        return cls("cpu", num_threads=num_threads, _emulated=True)

    @property
    def device_is_host(self):
        """True when device memory is host memory (the CPU backend): pools then have numpy
        views and the executor takes numpy arrays."""
        return bool(_lib.lib().rkv_backend_device_is_host(self.handle))

    @property
    def stream(self):
        """The backend's CUDA stream as an int (``torch.cuda.ExternalStream(b.stream)`` runs
        a model on it, in order with the library's work), or None without one."""
        return _lib.lib().rkv_backend_stream(self.handle) or None

    def _keep_until_sync(self, src):
        self._inflight.append(src)

    def _synced(self):
        """The stream was synchronised (sync(), Executor.finish()): upload sources are free."""
        self._inflight.clear()

    @property
    def kind(self):
        """BackendKind of the created backend (AUTO resolves to CPU or CUDA)."""
        return BackendKind(_lib.lib().rkv_backend_get_kind(self.handle))

    @property
    def name(self):
        """The backend's name ("cpu", "cuda")."""
        return _lib.lib().rkv_backend_name(self.handle).decode()

    @property
    def last_error(self):
        """Text of the last failed call on this backend or its pools ("" if none)."""
        return (_lib.lib().rkv_backend_last_error(self.handle) or b"").decode()

    def sync(self):
        """Waits for queued work (no-op on CPU); upload sources are free again after it."""
        check(_lib.lib().rkv_backend_sync(self.handle), "rkv_backend_sync",
              lambda: self.last_error)
        self._synced()


class KVPool(Handle):
    """A KV pool (rkv_kv_pool): ``num_blocks`` blocks of a layout on a backend.

    ``KVPool.for_blockmgr(bm)`` makes the pool a block manager's ids index (its layout and
    num_blocks, on a new single-threaded CPU backend unless one is given).

    Zero-copy views of a CPU pool's host memory (the memory is the pool's: the views are
    valid while the pool is open, and ``close()`` refuses while one is alive):

    * ``blocks``: [num_blocks, 2, block_size, head_dim], index 0 of axis 1 is K, 1 is V;
    * ``k_blocks`` / ``v_blocks``: [num_blocks, block_size, head_dim] (strided slices);
    * ``scores``: [num_blocks, block_size] float32, the per-slot H2O attention mass.

    The element type is float32 / float16, or uint16 raw bits for bf16 (``bf16_to_f32``).
    ``np.asarray(pool)`` is ``pool.blocks`` (``__array_interface__``); ``__dlpack__`` and
    ``to_torch()`` hand the same memory to PyTorch when it is installed.
    """
    _destroy_fn = "rkv_kv_pool_destroy"
    _kind = "KVPool"

    def __init__(self, backend, layout, num_blocks):
        super().__init__()
        if not isinstance(backend, Backend):
            raise TypeError("KVPool: backend must be a librkv.Backend")
        lay = _layout_struct(layout)
        h = ctypes.c_void_p()
        check(_lib.lib().rkv_kv_pool_create(backend.handle, ctypes.byref(lay), int(num_blocks),
                                             ctypes.byref(h)),
              "rkv_kv_pool_create", lambda: backend.last_error)
        self._set(h.value)
        self.backend = backend
        self._borrow(backend)
        self._own_backend = False

    @classmethod
    def for_blockmgr(cls, bm, backend=None, num_threads=1):
        """A pool with the block manager's layout and num_blocks (rkv_blockmgr_kv_layout). A
        CPU backend with ``num_threads`` threads is created (and owned) when none is given."""
        own = backend is None
        if own:
            backend = Backend("cpu", num_threads=num_threads)
        pool = cls(backend, bm.kv_layout, bm.config["num_blocks"])
        pool._own_backend = own
        return pool

    def close(self):
        """Destroys the pool (and the backend for_blockmgr created for it)."""
        was_open = not self.closed
        super().close()
        if was_open and self._own_backend:
            self.backend.close()

    # ---- shape ----
    @property
    def layout(self):
        """The pool's Layout (dtype, block_size, head_dim)."""
        p = _lib.lib().rkv_kv_pool_layout(self.handle).contents
        return Layout(DType(p.dtype), p.block_size, p.head_dim)

    @property
    def num_blocks(self):
        """Blocks in the pool."""
        return _lib.lib().rkv_kv_pool_num_blocks(self.handle)

    @property
    def block_bytes(self):
        """Bytes per block: 2 x block_size x head_dim x element size."""
        lay = _lib.lib().rkv_kv_pool_layout(self.handle)
        return _lib.lib().rkv_kv_block_bytes(lay)

    def _host_base(self, what):
        if self.backend.kind != BackendKind.CPU:
            raise RkvError(Status.ERR_UNSUPPORTED, "KVPool.%s" % what,
                           "host views need a CPU pool (this one is on %s)" % self.backend.name)
        return _lib.lib().rkv_kv_pool_base(self.handle)

    # ---- zero-copy views ----
    @property
    def blocks(self):
        """Zero-copy view [num_blocks, 2, block_size, head_dim] of the pool (K = [:, 0],
        V = [:, 1]); writes go straight into the pool."""
        base = self._host_base("blocks")
        lay = self.layout
        return view(self, base, (self.num_blocks, 2, lay.block_size, lay.head_dim),
                    numpy_kv_dtype(lay.dtype))

    @property
    def k_blocks(self):
        """Zero-copy view [num_blocks, block_size, head_dim] of every block's K rows."""
        return self.blocks[:, 0]

    @property
    def v_blocks(self):
        """Zero-copy view [num_blocks, block_size, head_dim] of every block's V rows."""
        return self.blocks[:, 1]

    @property
    def scores(self):
        """Zero-copy view [num_blocks, block_size] float32 of the per-slot score buffer
        (accumulated attention mass, indexed by global slot = block * block_size + offset)."""
        base = self._host_base("scores")
        lay = self.layout
        addr = _lib.lib().rkv_kv_pool_scores(self.handle)
        return view(self, addr, (self.num_blocks, lay.block_size), "<f4")

    @property
    def __array_interface__(self):
        """The ``blocks`` view's array interface (``np.asarray(pool)`` is zero-copy)."""
        return self.blocks.__array_interface__

    def __dlpack__(self, stream=None):
        """DLPack capsule of ``blocks`` (CPU device). bf16 travels as uint16 bits;
        ``to_torch()`` gives a torch.bfloat16 tensor instead."""
        return self.blocks.__dlpack__()

    def __dlpack_device__(self):
        """(kDLCPU = 1, 0)."""
        return (1, 0)

    @property
    def __cuda_array_interface__(self):
        """A CUDA pool's blocks, [num_blocks, 2, block_size, head_dim] in device memory, for
        torch or CuPy (bf16 as int16 bits; ``to_torch()`` gives torch.bfloat16). Only CUDA
        pools have it."""
        if self.closed or self.backend.kind != BackendKind.CUDA:
            raise AttributeError("__cuda_array_interface__: only an open CUDA pool has one")
        import numpy as np
        lay = self.layout
        typestr = "<i2" if lay.dtype == DType.BF16 else np.dtype(numpy_kv_dtype(lay.dtype)).str
        return {"version": 3, "shape": (self.num_blocks, 2, lay.block_size, lay.head_dim),
                "typestr": typestr, "data": (_lib.lib().rkv_kv_pool_base(self.handle), False),
                "strides": None, "stream": None}

    def to_torch(self):
        """A torch tensor sharing the pool's memory, [num_blocks, 2, block_size, head_dim],
        dtype float32 / float16 / bfloat16: a CPU tensor for a CPU pool, a CUDA tensor for a
        CUDA pool (the library's work on it is ordered by the backend's stream). Requires
        PyTorch (ImportError otherwise)."""
        import torch
        if self.backend.kind == BackendKind.CUDA:
            t = torch.as_tensor(self, device="cuda")  # through __cuda_array_interface__
            return t.view(torch.bfloat16) if self.layout.dtype == DType.BF16 else t
        blocks = self.blocks
        if self.layout.dtype == DType.BF16:
            return torch.from_dlpack(blocks.view("<i2")).view(torch.bfloat16)
        return torch.from_dlpack(blocks)

    # ---- slot helpers (copies) ----
    def read_slots(self, slots):
        """K and V rows of global slots (int array of any shape) as copies:
        (k, v), each slots.shape + (head_dim,)."""
        import numpy as np
        slots = np.asarray(slots, dtype=np.int64)
        bs = self.layout.block_size
        if slots.size and (slots.min() < 0 or slots.max() >= self.num_blocks * bs):
            raise RkvError(Status.ERR_INVALID_ARG, "KVPool.read_slots", "slot out of range")
        b = self.blocks
        return b[slots // bs, 0, slots % bs].copy(), b[slots // bs, 1, slots % bs].copy()

    def write_kv(self, k, v, slots):
        """Writes K/V rows into global slots through the library (rkv_attn_write_kv):
        k, v [n, head_dim] float32, slots [n] int64 (distinct, in range); converted to the
        pool's dtype."""
        import numpy as np
        if self.backend.kind == BackendKind.CUDA:
            # the C call reads k, v and slots on the device: host arrays would fault it
            raise RkvError(Status.ERR_UNSUPPORTED, "KVPool.write_kv",
                           "a CUDA pool's K/V writes take device arrays: run them through the "
                           "Executor (Executor.layer)")
        hd = self.layout.head_dim
        k = _f32_rows(k, hd, "KVPool.write_kv: k")
        v = _f32_rows(v, hd, "KVPool.write_kv: v")
        slots = np.ascontiguousarray(slots, dtype=np.int64).reshape(-1)
        if not (k.shape[0] == v.shape[0] == slots.shape[0]):
            raise ValueError("KVPool.write_kv: k, v and slots need the same number of rows "
                             "(%d, %d, %d)" % (k.shape[0], v.shape[0], slots.shape[0]))
        check(_lib.lib().rkv_attn_write_kv(self.handle, as_ptr(k), as_ptr(v), as_ptr(slots),
                                            slots.shape[0]),
              "rkv_attn_write_kv", lambda: self.backend.last_error)

    # ---- whole-block operations ----
    def copy_blocks(self, copies):
        """Applies copy-on-write ops: copies [n, 2] int32 (src, dst) block ids, e.g. the
        ``copies`` of BlockManager.append or of a plan (rkv_kv_pool_copy_blocks)."""
        import numpy as np
        c = np.ascontiguousarray(copies, dtype=np.int32).reshape(-1, 2)
        check(_lib.lib().rkv_kv_pool_copy_blocks(self.handle, as_ptr(c), c.shape[0]),
              "rkv_kv_pool_copy_blocks", lambda: self.backend.last_error)

    def apply_moves(self, moves):
        """Applies a compaction move plan: moves [n, 2] int64 (src, dst) global slots, in
        order (rkv_kv_pool_apply_moves)."""
        import numpy as np
        m = np.ascontiguousarray(moves, dtype=np.int64).reshape(-1, 2)
        check(_lib.lib().rkv_kv_pool_apply_moves(self.handle, as_ptr(m), m.shape[0]),
              "rkv_kv_pool_apply_moves", lambda: self.backend.last_error)

    def read_blocks(self, ids):
        """Copies of whole blocks: [len(ids), 2, block_size, head_dim] (rkv_kv_pool_read_blocks)."""
        import numpy as np
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        lay = self.layout
        out = np.empty((ids.shape[0], 2, lay.block_size, lay.head_dim),
                       dtype=numpy_kv_dtype(lay.dtype))
        check(_lib.lib().rkv_kv_pool_read_blocks(self.handle, as_ptr(ids), ids.shape[0],
                                                  as_ptr(out)),
              "rkv_kv_pool_read_blocks", lambda: self.backend.last_error)
        return out

    def write_blocks(self, ids, data):
        """Writes whole blocks from data [len(ids), 2, block_size, head_dim] of the pool's
        numpy dtype (rkv_kv_pool_write_blocks; zeroes those blocks' scores)."""
        import numpy as np
        ids = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        lay = self.layout
        want = (ids.shape[0], 2, lay.block_size, lay.head_dim)
        data = np.asarray(data)
        if data.dtype != numpy_kv_dtype(lay.dtype) or data.shape != want:
            raise ValueError("KVPool.write_blocks: data must be %s %s, got %s %s" % (
                numpy_kv_dtype(lay.dtype), want, data.dtype, data.shape))
        data = np.ascontiguousarray(data)
        check(_lib.lib().rkv_kv_pool_write_blocks(self.handle, as_ptr(ids), ids.shape[0],
                                                   as_ptr(data)),
              "rkv_kv_pool_write_blocks", lambda: self.backend.last_error)


def _f32_rows(a, head_dim, what):
    import numpy as np
    if not isinstance(a, np.ndarray):
        raise TypeError("%s: expected a numpy array" % what)
    if a.dtype != np.float32:
        raise TypeError("%s: dtype must be float32, got %s" % (what, a.dtype))
    if a.ndim != 2 or a.shape[1] != head_dim:
        raise ValueError("%s: shape must be (n, %d), got %s" % (what, head_dim, a.shape))
    return np.ascontiguousarray(a)
