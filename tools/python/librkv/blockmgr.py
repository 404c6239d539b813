"""The paged KV block manager (blockmgr.h): block ids, reference counts and per-stream
tables. Metadata only: the K/V bytes live in a KVPool."""
import ctypes
from collections import namedtuple

from . import _lib
from ._base import Handle, RkvError, as_ptr, check
from ._structs import (BLOCKMGR_CONFIG_INIT, BlockManagerConfig, BlockManagerStats, DType,
                       PrefixStats,
                       KeepList, Status, parse_enum, struct_dict)
from .runtime import Layout

AppendResult = namedtuple("AppendResult", "slots copies")
AppendResult.__doc__ = """Result of BlockManager.append.

slots:  int64 [num_layers, num_kv_heads, n], the global slot of each new token in each stream
        (slot = block * block_size + offset);
copies: int32 [n_copies, 2] (src, dst) copy-on-write block copies to apply to the pool
        (KVPool.copy_blocks) BEFORE writing the new tokens."""

CsrTable = namedtuple("CsrTable", "indptr indices last_len")
CsrTable.__doc__ = """One layer's block table in CSR form (rkv_blockmgr_export_csr), streams
batch-major, kv-head-minor: indptr int32 [n_seqs*kv_heads + 1], indices int32 [nnz],
last_len int32 [n_seqs*kv_heads]."""


class BlockManager(Handle):
    """A block manager (rkv_blockmgr).

    ``BlockManager(num_blocks, block_size=16, num_layers=1, num_kv_heads=1, head_dim=128,
    dtype="bf16", max_seqs=0, watermark=0.01, check_every_op=False, prefix_cache=False)``: the keyword defaults
    are RKV_BLOCKMGR_CONFIG_INIT's. A stream is one (layer, kv head) of a sequence; every call
    is all-or-nothing and a failure raises RkvError with the manager's last error.
    """
    _destroy_fn = "rkv_blockmgr_destroy"
    _kind = "BlockManager"

    def __init__(self, num_blocks, **kw):
        super().__init__()
        vals = dict(BLOCKMGR_CONFIG_INIT, num_blocks=num_blocks)
        for k in kw:
            if k not in vals:
                raise TypeError("BlockManager: unknown option %r (options: %s)" % (
                    k, ", ".join(vals)))
        vals.update(kw)
        vals["dtype"] = parse_enum(DType, vals["dtype"], "BlockManager dtype")
        cfg = BlockManagerConfig()
        cfg.struct_size = ctypes.sizeof(BlockManagerConfig)
        for k, v in vals.items():
            setattr(cfg, k, v)
        L = _lib.lib()
        err = ctypes.create_string_buffer(256)
        check(L.rkv_blockmgr_validate_config(ctypes.byref(cfg), err, len(err)),
              "rkv_blockmgr_create", err.raw)
        h = ctypes.c_void_p()
        check(L.rkv_blockmgr_create(ctypes.byref(cfg), ctypes.byref(h)), "rkv_blockmgr_create",
              "could not create the block manager")
        self._set(h.value)
        c = L.rkv_blockmgr_get_config(h.value).contents
        self._cfg = struct_dict(c)
        self._cfg["dtype"] = DType(self._cfg["dtype"])
        self._spq = L.rkv_blockmgr_streams_per_seq(h.value)

    def _err(self):
        return self.last_error

    def _check(self, st, call):
        return check(st, call, self._err)

    @property
    def last_error(self):
        """Text of the last failed call on this manager ("" if none)."""
        return (_lib.lib().rkv_blockmgr_last_error(self.handle) or b"").decode()

    @property
    def config(self):
        """The configuration in force (defaults filled in) as a dict."""
        return dict(self._cfg)

    @property
    def streams_per_seq(self):
        """num_layers x num_kv_heads (stream index = layer * kv_heads + head)."""
        return self._spq

    @property
    def kv_layout(self):
        """The Layout a pool for this manager needs (rkv_blockmgr_kv_layout)."""
        lay = _lib.lib().rkv_blockmgr_kv_layout(self.handle)
        return Layout(DType(lay.dtype), lay.block_size, lay.head_dim)

    # ---- sequences ----
    def seq_create(self, seq):
        """Creates an empty sequence with the caller-chosen id (>= 0)."""
        self._check(_lib.lib().rkv_blockmgr_seq_create(self.handle, int(seq)),
                    "rkv_blockmgr_seq_create")

    def seq_free(self, seq):
        """Frees a sequence; blocks whose reference count reaches 0 return to the free list."""
        self._check(_lib.lib().rkv_blockmgr_seq_free(self.handle, int(seq)),
                    "rkv_blockmgr_seq_free")

    def seq_fork(self, parent, child):
        """Makes child share every block of parent (copy-on-write on the next append)."""
        self._check(_lib.lib().rkv_blockmgr_seq_fork(self.handle, int(parent), int(child)),
                    "rkv_blockmgr_seq_fork")

    def seq_restore(self, seq, lens):
        """Recreates a sequence with per-stream lengths lens [streams_per_seq] (or
        [num_layers, num_kv_heads]) in fresh private blocks (swap-in)."""
        import numpy as np
        lens = np.ascontiguousarray(lens, dtype=np.int32).reshape(-1)
        if lens.shape[0] != self._spq:
            raise ValueError("seq_restore: lens needs %d entries (streams per sequence), got %d"
                             % (self._spq, lens.shape[0]))
        self._check(_lib.lib().rkv_blockmgr_seq_restore(self.handle, int(seq), as_ptr(lens)),
                    "rkv_blockmgr_seq_restore")

    def seq_exists(self, seq):
        """True iff the sequence is live."""
        return bool(_lib.lib().rkv_blockmgr_seq_exists(self.handle, int(seq)))

    def __contains__(self, seq):
        return self.seq_exists(seq)

    @property
    def num_seqs(self):
        """Live sequences."""
        return _lib.lib().rkv_blockmgr_num_seqs(self.handle)

    def seq_index(self, seq):
        """Dense index of a live sequence in [0, max_seqs), or -1."""
        return _lib.lib().rkv_blockmgr_seq_index(self.handle, int(seq))

    def list_seqs(self):
        """Live sequence ids (int64 array, slot order)."""
        import numpy as np
        n = self.num_seqs
        ids = np.empty(max(n, 1), dtype=np.int64)
        got = _lib.lib().rkv_blockmgr_list_seqs(self.handle, as_ptr(ids), ids.shape[0])
        return ids[:min(got, n)].copy()

    def append(self, seq, n=1):
        """Appends n tokens to every stream of seq. Returns AppendResult(slots int64
        [num_layers, num_kv_heads, n], copies int32 [n_copies, 2]); apply the copies to the
        pool before writing the tokens. RkvError RKV_ERR_NO_BLOCKS when the pool is short
        (nothing changes)."""
        import numpy as np
        n = int(n)
        if n < 1:
            raise ValueError("append: n must be >= 1, got %d" % n)
        slots = np.empty((self._cfg["num_layers"], self._cfg["num_kv_heads"], n),
                         dtype=np.int64)
        copies = np.empty((self._spq, 2), dtype=np.int32)
        nc = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_append(self.handle, int(seq), n, as_ptr(slots),
                                                   as_ptr(copies), ctypes.byref(nc)),
                    "rkv_blockmgr_append")
        return AppendResult(slots, copies[:nc.value].copy())

    def blocks_needed(self, seq, n=1):
        """Blocks an append of n tokens would take from the free list."""
        out = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_blocks_needed(self.handle, int(seq), int(n),
                                                          ctypes.byref(out)),
                    "rkv_blockmgr_blocks_needed")
        return out.value

    def can_append(self, seq, n=1):
        """True iff append(seq, n) would not run out of blocks."""
        return bool(_lib.lib().rkv_blockmgr_can_append(self.handle, int(seq), int(n)))

    # ---- streams ----
    def stream_len(self, seq, layer, head):
        """Tokens in stream (seq, layer, kv head)."""
        out = ctypes.c_int32()
        self._check(_lib.lib().rkv_blockmgr_stream_len(self.handle, int(seq), int(layer),
                                                       int(head), ctypes.byref(out)),
                    "rkv_blockmgr_stream_len")
        return out.value

    def stream_lens(self, seq):
        """Every stream's length, int32 [num_layers, num_kv_heads]."""
        import numpy as np
        L, H = self._cfg["num_layers"], self._cfg["num_kv_heads"]
        out = np.empty((L, H), dtype=np.int32)
        for l in range(L):
            for h in range(H):
                out[l, h] = self.stream_len(seq, l, h)
        return out

    def stream_blocks(self, seq, layer, head):
        """The stream's block ids in cache order (int32 array, a copy)."""
        import numpy as np
        ids = ctypes.c_void_p()
        n = ctypes.c_int32()
        self._check(_lib.lib().rkv_blockmgr_stream_blocks(self.handle, int(seq), int(layer),
                                                          int(head), ctypes.byref(ids),
                                                          ctypes.byref(n)),
                    "rkv_blockmgr_stream_blocks")
        if n.value == 0:
            return np.empty(0, dtype=np.int32)
        arr = (ctypes.c_int32 * n.value).from_address(ids.value)
        return np.array(arr, dtype=np.int32)

    def stream_slot(self, seq, layer, head, pos):
        """Global slot of cache position pos of a stream."""
        out = ctypes.c_int64()
        self._check(_lib.lib().rkv_blockmgr_stream_slot(self.handle, int(seq), int(layer),
                                                        int(head), int(pos), ctypes.byref(out)),
                    "rkv_blockmgr_stream_slot")
        return out.value

    def stream_slots(self, seq, layer, head):
        """Global slots of every cache position of a stream, int64 [len] (from its blocks)."""
        import numpy as np
        bs = self._cfg["block_size"]
        n = self.stream_len(seq, layer, head)
        blocks = self.stream_blocks(seq, layer, head).astype(np.int64)
        pos = np.arange(n, dtype=np.int64)
        return blocks[pos // bs] * bs + pos % bs

    def block_ref(self, block):
        """Reference count of a block (0 = free)."""
        out = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_block_ref(self.handle, int(block),
                                                      ctypes.byref(out)),
                    "rkv_blockmgr_block_ref")
        return out.value

    # ---- compaction / export ----
    def compact(self, seq, keep):
        """Packs kept tokens into leading blocks and frees tail blocks whole.
        keep: {(layer, head): positions} (strictly increasing, each < the stream's length).
        Returns the move plan int64 [n_moves, 2] (src, dst global slots) to apply to the pool
        in order (KVPool.apply_moves)."""
        import numpy as np
        items = list(keep.items()) if isinstance(keep, dict) else list(keep)
        arrs, lists = [], (KeepList * max(len(items), 1))()
        total = 0
        for i, ((layer, head), pos) in enumerate(items):
            p = np.ascontiguousarray(pos, dtype=np.int32).reshape(-1)
            arrs.append(p)
            lists[i].layer, lists[i].head, lists[i].n = int(layer), int(head), p.shape[0]
            lists[i].pos = p.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
            total += p.shape[0]
        moves = np.empty((max(total, 1), 2), dtype=np.int64)
        nm = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_compact(self.handle, int(seq), lists, len(items),
                                                    as_ptr(moves), total, ctypes.byref(nm)),
                    "rkv_blockmgr_compact")
        return moves[:nm.value].copy()

    def truncate(self, seq, keep, layer=-1):
        """Cuts every stream of `layer` (all layers with -1) longer than `keep` to its first
        `keep` tokens: tails return whole, shared leading blocks are replaced by fresh ones
        (rkv_blockmgr_truncate). Returns the tokens cut; nothing changes on an error."""
        out = ctypes.c_uint64()
        self._check(_lib.lib().rkv_blockmgr_truncate(self.handle, int(seq), int(layer),
                                                     int(keep), ctypes.byref(out)),
                    "rkv_blockmgr_truncate")
        return out.value

    def compact_fresh_bound(self, seq, keep, layer=-1, pending=0):
        """Most fresh blocks a compaction of the sequence to `keep` tokens per stream can take
        after `pending` more tokens are appended: its shared kept blocks
        (rkv_blockmgr_compact_fresh_bound_after). What a scheduler reserves first."""
        out = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_compact_fresh_bound_after(
            self.handle, int(seq), int(layer), int(keep), int(pending), ctypes.byref(out)),
                    "rkv_blockmgr_compact_fresh_bound_after")
        return out.value

    def compact_copy_bound(self, seq, keep, layer=-1, pending=0, registering=0):
        """compact_fresh_bound when prefix-cache hits may share the sequence's cached blocks
        (and its first `registering` blocks per stream) before the compaction runs
        (rkv_blockmgr_compact_copy_bound)."""
        out = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_compact_copy_bound(
            self.handle, int(seq), int(layer), int(keep), int(pending), int(registering),
            ctypes.byref(out)), "rkv_blockmgr_compact_copy_bound")
        return out.value

    def compact_prepare(self, seq, keep, layer=-1):
        """Before compacting the sequence to `keep` tokens per stream in one call per layer:
        returns how many cached blocks the calls will copy (their groups stay cached), or 0
        after dropping those groups when the free list cannot hold the copies
        (rkv_blockmgr_compact_prepare)."""
        out = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_compact_prepare(
            self.handle, int(seq), int(layer), int(keep), ctypes.byref(out)),
                    "rkv_blockmgr_compact_prepare")
        return out.value

    def export_csr(self, layer, seqs):
        """One layer's CSR block table over a batch of sequences (CsrTable)."""
        import numpy as np
        seqs = np.ascontiguousarray(seqs, dtype=np.int64).reshape(-1)
        L = _lib.lib()
        nnz = ctypes.c_uint32()
        self._check(L.rkv_blockmgr_export_size(self.handle, int(layer), as_ptr(seqs),
                                               seqs.shape[0], ctypes.byref(nnz)),
                    "rkv_blockmgr_export_size")
        ns = seqs.shape[0] * self._cfg["num_kv_heads"]
        indptr = np.empty(ns + 1, dtype=np.int32)
        indices = np.empty(max(nnz.value, 1), dtype=np.int32)
        last = np.empty(max(ns, 1), dtype=np.int32)
        self._check(L.rkv_blockmgr_export_csr(self.handle, int(layer), as_ptr(seqs),
                                              seqs.shape[0], as_ptr(indptr), as_ptr(indices),
                                              indices.shape[0], as_ptr(last),
                                              ctypes.byref(nnz), None),
                    "rkv_blockmgr_export_csr")
        return CsrTable(indptr, indices[:nnz.value].copy(), last[:ns].copy())

    # ---- accounting ----
    def stats(self):
        """rkv_blockmgr_stats as a dict (total/free/used/watermark/shared blocks, num_seqs,
        allocated/token/fragmentation slots, peak_used_blocks)."""
        s = BlockManagerStats()
        _lib.lib().rkv_blockmgr_get_stats(self.handle, ctypes.byref(s))
        return {k: getattr(s, k) for k, _ in s._fields_}

    @property
    def free_blocks(self):
        """Blocks on the free list now."""
        return _lib.lib().rkv_blockmgr_free_blocks(self.handle)

    def seq_footprint(self, seq):
        """(total, exclusive) blocks the sequence references / references alone."""
        t, e = ctypes.c_uint32(), ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_seq_footprint(self.handle, int(seq),
                                                          ctypes.byref(t), ctypes.byref(e)),
                    "rkv_blockmgr_seq_footprint")
        return t.value, e.value

    # ---- prefix caching (blockmgr.h, "Prefix caching and protected prefixes") ----

    @staticmethod
    def _hashes(hashes):
        import numpy as np
        return np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1)

    def prefix_match(self, hashes):
        """How many leading block hashes are cached (0 without prefix_cache)."""
        h = self._hashes(hashes)
        hit = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_prefix_match(self.handle, as_ptr(h), h.shape[0],
                                                         ctypes.byref(hit)),
                    "rkv_blockmgr_prefix_match")
        return hit.value

    def prefix_cost(self, hashes, hit):
        """Blocks sharing the first `hit` cached groups takes from the free pool."""
        h = self._hashes(hashes)
        n = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_prefix_cost(self.handle, as_ptr(h), int(hit),
                                                        ctypes.byref(n)),
                    "rkv_blockmgr_prefix_cost")
        return n.value

    def seq_create_cached(self, seq, hashes, hit):
        """Creates seq sharing the cached groups of hashes[:hit] in every stream."""
        h = self._hashes(hashes)
        if int(hit) > h.shape[0]:
            raise ValueError("seq_create_cached: hit %d > %d hashes" % (int(hit), h.shape[0]))
        self._check(_lib.lib().rkv_blockmgr_seq_create_cached(self.handle, int(seq), as_ptr(h),
                                                              int(hit)),
                    "rkv_blockmgr_seq_create_cached")

    def prefix_insert(self, seq, hashes):
        """Registers seq's full leading groups under hashes; returns how many were new."""
        h = self._hashes(hashes)
        n = ctypes.c_uint32()
        self._check(_lib.lib().rkv_blockmgr_prefix_insert(self.handle, int(seq), as_ptr(h),
                                                          h.shape[0], ctypes.byref(n)),
                    "rkv_blockmgr_prefix_insert")
        return n.value

    def prefix_clear(self):
        """Drops every cached group."""
        _lib.lib().rkv_blockmgr_prefix_clear(self.handle)

    def seq_protect(self, seq, n):
        """Protects positions [0, n) of every stream of seq (0 removes the protection)."""
        self._check(_lib.lib().rkv_blockmgr_seq_protect(self.handle, int(seq), int(n)),
                    "rkv_blockmgr_seq_protect")

    def seq_protected(self, seq):
        """The protected prefix of seq (0 when none)."""
        return _lib.lib().rkv_blockmgr_seq_protected(self.handle, int(seq))

    def prefix_stats(self):
        """rkv_prefix_stats as a dict."""
        st = PrefixStats()
        st.struct_size = ctypes.sizeof(PrefixStats)
        self._check(_lib.lib().rkv_blockmgr_prefix_stats(self.handle, ctypes.byref(st)),
                    "rkv_blockmgr_prefix_stats")
        return {k: getattr(st, k) for k, _ in st._fields_ if k != "struct_size"}

    def blocks_for_tokens(self, tokens):
        """Blocks that hold `tokens` in every stream of one sequence."""
        return _lib.lib().rkv_blockmgr_blocks_for_tokens(self.handle, int(tokens))

    def check(self):
        """Walks every invariant; RkvError (RKV_ERR_CORRUPT, the first violation) if one
        fails."""
        self._check(_lib.lib().rkv_blockmgr_check(self.handle), "rkv_blockmgr_check")


def prefix_hash_blocks(tokens, block_size, salt=0):
    """Chained hashes of the full blocks of a token prompt (rkv_prefix_hash_blocks), as a
    uint64 array: what BlockManager.prefix_* and Scheduler.set_prefix take."""
    import numpy as np
    t = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
    n = t.shape[0] // int(block_size) if int(block_size) > 0 else 0
    out = np.zeros(n, dtype=np.uint64)
    _lib.lib().rkv_prefix_hash_blocks(as_ptr(t) if t.shape[0] else None, t.shape[0],
                                      int(block_size), int(salt),
                                      as_ptr(out) if n else None, n)
    return out
