"""Errors, handle life cycle and zero-copy views shared by every wrapper."""
import ctypes
import weakref

from . import _lib
from ._structs import Status


class RkvError(Exception):
    """A librkv call failed.

    Attributes: ``status`` (a :class:`Status`, e.g. ``Status.ERR_NO_BLOCKS``), ``call`` (the C
    function or Python operation that failed) and ``detail`` (the library's message: the
    handle's last error, or the text a create call wrote). ``str(e)`` holds all three.
    """

    def __init__(self, status, call, detail=""):
        try:
            self.status = Status(status)
            name = "RKV_" + self.status.name
        except ValueError:
            self.status = status
            name = "status %d" % status
        self.call = call
        self.detail = detail or ""
        msg = "%s: %s" % (call, name)
        if self.detail:
            msg += ": " + self.detail
        super().__init__(msg)


def _decode(b):
    return b.decode("utf-8", "replace") if b else ""


def check(status, call, detail=None):
    """Raises RkvError unless status is RKV_OK. ``detail`` is a string or a callable that
    returns one (read only on failure: the handle's last error)."""
    if status != 0:
        if callable(detail):
            detail = detail()
        if isinstance(detail, (bytes, bytearray)):
            detail = _decode(bytes(detail).split(b"\0", 1)[0])
        raise RkvError(status, call, detail or "")
    return status


class Handle:
    """Base of every object that owns a C handle.

    ``close()`` destroys the handle now (idempotent); otherwise the garbage collector does.
    Objects built over a handle (a pool over a backend, a scheduler over a block manager, an
    executor over both) hold it, and it is destroyed only after them, whatever order the
    collector finalises them in. ``close()`` refuses (RKV_ERR_STATE) while such a dependent is
    open or a numpy view of the handle's memory is alive: close or delete those first.
    """
    _destroy_fn = None
    _kind = "handle"

    def __init__(self):
        self._h = None
        self._parents = []        # handles this one borrows (strong references)
        self._open_children = 0   # open handles borrowing this one
        self._orphaned = False    # finalised while children were open: destroyed after them
        self._dependents = weakref.WeakSet()
        self._views = weakref.WeakSet()

    def _set(self, h):
        self._h = h

    @property
    def handle(self):
        """The raw C pointer (int); raises RkvError (RKV_ERR_STATE) once closed."""
        if self._h is None:
            raise RkvError(Status.ERR_STATE, self._kind, "the object is closed")
        return self._h

    @property
    def closed(self):
        """True once close() ran (or creation failed)."""
        return self._h is None

    def _borrow(self, parent):
        """Records that this (open) handle uses parent's C object."""
        self._parents.append(parent)
        parent._dependents.add(self)
        parent._open_children += 1

    def _destroy(self):
        h, self._h = self._h, None
        getattr(_lib.lib(), self._destroy_fn)(h)
        for p in self._parents:
            p._child_gone()

    def _child_gone(self):
        self._open_children -= 1
        if self._open_children == 0 and self._orphaned and self._h is not None:
            self._destroy()

    def close(self):
        """Destroys the C object. Raises RkvError (RKV_ERR_STATE) while an object built over
        it is open or a numpy view of its memory is alive."""
        if self._h is None:
            return
        if self._open_children:
            live = sorted(type(d).__name__ for d in self._dependents if not d.closed)
            raise RkvError(Status.ERR_STATE, "%s.close" % self._kind,
                           "still used by %s: close it first" % ", ".join(live))
        views = len(self._views)
        if views:
            raise RkvError(Status.ERR_STATE, "%s.close" % self._kind,
                           "%d numpy view(s) of its memory are alive: delete them first" % views)
        self._destroy()

    def __del__(self):
        # The collector may finalise a handle before the handles that borrow it (objects of
        # one unreachable cycle are finalised in any order): then it waits for them.
        try:
            if self._h is None or self._destroy_fn is None:
                return
            if self._open_children:
                self._orphaned = True
                return
            self._destroy()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _ArrayHolder:
    """The base object of a zero-copy numpy view: exposes ``__array_interface__`` over C
    memory and keeps its owner (a pool, a scheduler) alive while any view of it lives."""
    __slots__ = ("__array_interface__", "owner", "__weakref__")

    def __init__(self, owner, addr, shape, typestr, strides=None, readonly=False):
        self.owner = owner
        ai = {"version": 3, "shape": tuple(int(s) for s in shape), "typestr": typestr,
              "data": (int(addr), bool(readonly)),
              "strides": None if strides is None else tuple(int(s) for s in strides)}
        self.__array_interface__ = ai


def view(owner, addr, shape, dtype, strides=None, readonly=False, track=True):
    """A numpy array over C memory at ``addr`` (no copy). The array's base keeps ``owner``
    alive; with ``track`` the owner's close() refuses while the view lives."""
    import numpy as np
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= int(s)
    if n == 0 or not addr:
        # nothing to share (and the C pointer may be NULL): an empty array of the same kind
        arr = np.empty(shape, dtype=dtype)
        arr.flags.writeable = not readonly
        return arr
    # structured dtypes travel as raw records ("|V<itemsize>") and are viewed afterwards
    typestr = "|V%d" % dtype.itemsize if dtype.fields else dtype.str
    holder = _ArrayHolder(owner, addr, shape, typestr, strides, readonly)
    arr = np.asarray(holder)
    if dtype.fields:
        arr = arr.view(dtype)
    if track and isinstance(owner, Handle):
        owner._views.add(holder)
    return arr


def as_ptr(arr):
    """The data pointer of a numpy array as a c_void_p (None for None)."""
    if arr is None:
        return None
    return ctypes.c_void_p(arr.ctypes.data)
