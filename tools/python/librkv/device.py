"""Device memory for a device pool's executor: DeviceArray (an rkv_buffer of a backend's
DEVICE memory with a shape and dtype) and the checks that let Executor.layer take device
arrays: a DeviceArray, or on CUDA anything with ``__cuda_array_interface__`` (a torch CUDA
tensor, a CuPy array)."""
import ctypes

from . import _lib
from ._base import Handle, RkvError, check
from ._structs import BackendKind, Status

_BUFFER_DEVICE = 0


def _np():
    import numpy as np
    return np


class DeviceArray(Handle):
    """A C-contiguous array in DEVICE memory of ``backend`` (an rkv_buffer): on CUDA device
    memory, on the emulated device memory behind an address the host must not touch, on the
    CPU host memory. ``DeviceArray(backend, shape, dtype="float32")`` (contents undefined) or
    ``DeviceArray.from_numpy(backend, a)``.

    ``upload(a)`` and ``download()`` copy through the backend's stream. An upload reads its
    numpy source at some moment before the next sync (the library's async rule,
    docs/RUNTIME-BUFFERS.md), so the backend keeps a reference to the source until
    ``Backend.sync()`` or ``Executor.finish()`` (both synchronise); ``download()`` syncs and
    returns a new numpy array. On CUDA ``__cuda_array_interface__`` hands the memory to PyTorch
    or CuPy without a copy (``torch.as_tensor(arr, device="cuda")``).
    """
    _destroy_fn = "rkv_buffer_destroy"
    _kind = "DeviceArray"

    def __init__(self, backend, shape, dtype="float32"):
        super().__init__()
        np = _np()
        self.shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list))
                                            else (shape,)))
        if any(s < 0 for s in self.shape):
            raise ValueError("DeviceArray: negative dimension in %s" % (self.shape,))
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.backend = backend
        h = ctypes.c_void_p()
        check(_lib.lib().rkv_buffer_create(backend.handle, _BUFFER_DEVICE, self.nbytes,
                                           ctypes.byref(h)),
              "rkv_buffer_create", lambda: backend.last_error)
        self._set(h.value)
        self._borrow(backend)

    @classmethod
    def from_numpy(cls, backend, a):
        """A new DeviceArray with a's shape and dtype, its contents uploaded."""
        a = _np().asarray(a)
        d = cls(backend, a.shape, a.dtype)
        d.upload(a)
        return d

    @property
    def ptr(self):
        """The device address (int; 0 for an empty array)."""
        return _lib.lib().rkv_buffer_ptr(self.handle) or 0

    def _check(self, st, call):
        return check(st, call, lambda: self.backend.last_error)

    def upload(self, a):
        """Copies numpy array a (same shape; converted to this dtype) into the array, in
        stream order."""
        np = _np()
        src = np.ascontiguousarray(a, dtype=self.dtype)
        if src.shape != self.shape:
            raise ValueError("DeviceArray.upload: shape %s, the array is %s" % (src.shape,
                                                                                 self.shape))
        if not self.backend.device_is_host:  # the CPU backend copies before returning
            self.backend._keep_until_sync(src)
        self._check(_lib.lib().rkv_buffer_upload(self.handle, 0, src.ctypes.data, self.nbytes),
                    "rkv_buffer_upload")

    def download(self):
        """The contents as a new numpy array (queued work finishes first: a sync)."""
        out = _np().empty(self.shape, dtype=self.dtype)
        self._check(_lib.lib().rkv_buffer_download(self.handle, 0, out.ctypes.data,
                                                   self.nbytes), "rkv_buffer_download")
        self.backend.sync()
        return out

    @property
    def __cuda_array_interface__(self):
        if self.closed or self.backend.kind != BackendKind.CUDA:
            raise AttributeError("__cuda_array_interface__: only an open DeviceArray of a "
                                 "CUDA backend has one")
        return {"version": 3, "shape": self.shape, "typestr": self.dtype.str,
                "data": (self.ptr, False), "strides": None, "stream": None}


def device_rows(a, backend, want, name, writable):
    """The device address of Executor.layer's argument ``name`` on a device pool: a
    DeviceArray of the pool's backend, or on CUDA an object with ``__cuda_array_interface__``;
    float32, shape ``want``, C-contiguous."""
    np = _np()
    if isinstance(a, DeviceArray):
        if a.backend is not backend:
            raise ValueError("Executor.layer: %s is a DeviceArray of another backend" % name)
        if a.dtype != np.float32 or a.shape != want:
            raise ValueError("Executor.layer: %s must be float32 %s, got %s %s"
                             % (name, list(want), a.dtype, list(a.shape)))
        return a.ptr
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is None or backend.kind != BackendKind.CUDA:
        raise TypeError("Executor.layer: %s: a device pool (%s) takes device memory: a "
                        "librkv.DeviceArray%s, got %s" % (
                            name, backend.name,
                            " or a CUDA array (__cuda_array_interface__)"
                            if backend.kind == BackendKind.CUDA else "", type(a).__name__))
    shape = tuple(int(s) for s in cai["shape"])
    if np.dtype(cai["typestr"]) != np.float32 or shape != want:
        raise ValueError("Executor.layer: %s must be float32 %s, got %s %s"
                         % (name, list(want), cai["typestr"], list(shape)))
    strides = cai.get("strides")
    if strides is not None and tuple(strides) != tuple(
            int(np.prod(shape[i + 1:], dtype=np.int64)) * 4 for i in range(len(shape))):
        raise ValueError("Executor.layer: %s must be C-contiguous (.contiguous())" % name)
    ptr, readonly = cai["data"]
    if writable and readonly:
        raise ValueError("Executor.layer: %s must be writable" % name)
    if not ptr and int(np.prod(shape)):
        raise RkvError(Status.ERR_INVALID_ARG, "Executor.layer", "%s has no memory" % name)
    return int(ptr)
