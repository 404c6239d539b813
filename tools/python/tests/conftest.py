"""Shared set-up of the librkv Python tests.

Environment (ctest sets them, tools/python/tests.cmake -> tests/python/tests.cmake):
  RKV_LIBRARY    the librkv.so under test
  RKV_BUILD_DIR  the CMake build tree (ABI, install and toy-engine comparisons; derived from
                 RKV_LIBRARY when unset: <build>/lib/librkv.so)
  CMAKE          the cmake to install with (default: cmake on PATH)
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
PKG_ROOT = HERE.parent                # tools/python
SOURCE_DIR = PKG_ROOT.parent.parent   # the repository
if str(PKG_ROOT) not in sys.path:
    sys.path.insert(0, str(PKG_ROOT))

import librkv  # noqa: E402


def build_dir():
    """The build tree under test, or None."""
    d = os.environ.get("RKV_BUILD_DIR")
    if d:
        return Path(d)
    lib = os.environ.get("RKV_LIBRARY")
    if lib:
        cand = Path(lib).resolve().parent.parent
        if (cand / "CMakeCache.txt").is_file():
            return cand
    return None


@pytest.fixture
def need_build_dir():
    d = build_dir()
    if d is None:
        pytest.skip("no build tree: set RKV_BUILD_DIR (ctest does)")
    return d


# ---- the toy model of docs/examples/toy_engine.c, bit for bit -----------------------------

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def hashf(a, b):
    """toy_engine.c's hashf over numpy uint64 arrays (broadcast): float32 in [-1, 1)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (a * np.uint64(0x9E3779B97F4A7C15)) ^ (b + np.uint64(0x632BE59BD9B4E019))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = ((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64)
    return (x / 9007199254740992.0 * 2.0 - 1.0).astype(np.float32)


class ToyModel:
    """Q/K/V rows of layer l are a hash of (request, position, layer, element)."""

    def __init__(self, q_heads, kv_heads, head_dim, eos_rate=0.01):
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, head_dim
        self.eos_rate = eos_rate

    def tokens(self, plan):
        seqs = plan.seqs
        ids = np.repeat(seqs["id"].astype(np.uint64), seqs["n_tokens"])
        off = plan.row_offsets()
        t = np.arange(plan.n_batched_tokens, dtype=np.int64) - np.repeat(off[:-1],
                                                                        seqs["n_tokens"])
        pos = np.repeat(seqs["pos"], seqs["n_tokens"]) + t
        return (ids << np.uint64(32)) | pos.astype(np.uint64)

    def qkv(self, plan, layer):
        tok = self.tokens(plan)[:, None]
        rows = tok.shape[0]
        eq = np.arange(self.q_heads * self.head_dim, dtype=np.uint64)[None, :]
        ek = np.arange(self.kv_heads * self.head_dim, dtype=np.uint64)[None, :]
        lo = np.uint64(layer * 4096)
        q = hashf(tok, lo + eq).reshape(rows, self.q_heads, self.head_dim)
        k = hashf(tok, np.uint64(100000) + lo + ek).reshape(rows, self.kv_heads, self.head_dim)
        v = hashf(tok, np.uint64(200000) + lo + ek).reshape(rows, self.kv_heads, self.head_dim)
        return q, k, v

    def eos(self, plan):
        seqs = plan.seqs
        h = hashf(seqs["id"].astype(np.uint64), (seqs["pos"] + 7777).astype(np.uint64))
        return seqs["samples"] & ((h.astype(np.float64) + 1.0) / 2.0 < self.eos_rate)
