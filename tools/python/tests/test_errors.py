"""Failures become exceptions: RkvError with the status and the library's own message, and
ValueError / TypeError for arguments checked in Python (shapes, dtypes, contiguity)."""
import ctypes.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import librkv
from conftest import PKG_ROOT

S = librkv.Status


def raises(status, fn, *a, match=None, **kw):
    with pytest.raises(librkv.RkvError) as ei:
        fn(*a, **kw)
    e = ei.value
    assert e.status == status, str(e)
    assert str(e).startswith(e.call + ": RKV_" + status.name)
    assert e.detail, "no message from the library: %s" % e
    if match:
        assert match in e.detail, e.detail
    return e


def small():
    bm = librkv.BlockManager(64, block_size=4, num_layers=2, num_kv_heads=2, head_dim=8,
                             dtype="f32")
    pool = librkv.KVPool.for_blockmgr(bm)
    s = librkv.Scheduler(bm, max_batched_tokens=32, max_seqs=4,
                         evict=dict(policy="rkv", budget=16, window=4, buffer=4))
    x = librkv.Executor.for_scheduler(s, pool, 4)
    return bm, pool, s, x


def test_error_object():
    e = librkv.RkvError(3, "rkv_x", "why")
    assert e.status is S.ERR_NO_BLOCKS and e.call == "rkv_x" and e.detail == "why"
    assert str(e) == "rkv_x: RKV_ERR_NO_BLOCKS: why"
    assert librkv.status_name(3) == "RKV_ERR_NO_BLOCKS"
    assert librkv.status_str(3)


def test_blockmgr_errors():
    raises(S.ERR_INVALID_ARG, librkv.BlockManager, 0, match="num_blocks")
    raises(S.ERR_INVALID_ARG, librkv.BlockManager, 16, block_size=0)
    with pytest.raises(TypeError, match="unknown option 'blocksize'"):
        librkv.BlockManager(16, blocksize=4)
    with pytest.raises(ValueError, match="unknown DType 'f64'"):
        librkv.BlockManager(16, dtype="f64")
    bm = librkv.BlockManager(16, block_size=4)
    raises(S.ERR_NOT_FOUND, bm.seq_free, 42)
    raises(S.ERR_NOT_FOUND, bm.append, 42, 1)
    bm.seq_create(1)
    e = raises(S.ERR_EXISTS, bm.seq_create, 1)
    assert bm.last_error == e.detail
    raises(S.ERR_INVALID_ARG, bm.seq_create, -1)
    raises(S.ERR_INVALID_ARG, bm.stream_len, 1, 5, 0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bm.append(1, 0)
    bm.append(1, 3)
    raises(S.ERR_INVALID_ARG, bm.compact, 1, {(0, 0): [2, 1]})  # unsorted
    bm.close()
    with pytest.raises(librkv.RkvError, match="closed"):
        bm.seq_create(2)


def test_scheduler_errors():
    bm, pool, s, x = small()
    raises(S.ERR_INVALID_ARG, librkv.Scheduler, bm, evict=dict(budget=4, window=8))
    raises(S.ERR_INVALID_ARG, s.add_request, 1, 0, 5)
    s.add_request(1, 5, 5)
    raises(S.ERR_EXISTS, s.add_request, 1, 5, 5)
    raises(S.ERR_CAPACITY, s.add_request, 2, 100000, 5)
    raises(S.ERR_NOT_FOUND, s.abort, 77)
    raises(S.ERR_NOT_FOUND, s.get_request, 77)
    raises(S.ERR_STATE, s.report, librkv.new_outputs(0))  # no plan outstanding
    with pytest.raises(TypeError, match="output_dtype"):
        s.report(np.zeros(1))
    p = s.step()
    raises(S.ERR_STATE, s.step)                            # not reported
    raises(S.ERR_INVALID_ARG, s.report, librkv.new_outputs(p.n_seqs))  # id 0 not scheduled
    x.begin(p)
    q = np.zeros((p.n_batched_tokens, 4, 8), np.float32)
    kv = np.zeros((p.n_batched_tokens, 2, 8), np.float32)
    for l in range(2):
        x.layer(l, q, kv, kv, q.copy())
    s.report(x.finish())
    with pytest.raises(ValueError, match="unknown Admission"):
        librkv.Scheduler(bm, admission="eager")


def test_executor_errors():
    bm, pool, s, x = small()
    raises(S.ERR_INVALID_ARG, librkv.Executor, bm, pool, 3)  # not a multiple of kv heads
    q = np.zeros((5, 4, 8), np.float32)
    kv = np.zeros((5, 2, 8), np.float32)
    with pytest.raises(librkv.RkvError, match="no open step"):
        x.layer(0, q, kv, kv, q.copy())
    with pytest.raises(librkv.RkvError, match="no open step"):
        x.finish()
    s.add_request(1, 5, 5)
    p = s.step()
    assert p.n_batched_tokens == 5
    x.begin(p)
    raises(S.ERR_STATE, x.begin, p)                        # a step is open
    out = np.empty_like(q)
    with pytest.raises(TypeError, match="q must be float32, got float64"):
        x.layer(0, q.astype(np.float64), kv, kv, out)
    with pytest.raises(ValueError, match=r"k must have shape \(5, 2, 8\)"):
        x.layer(0, q, kv[:4], kv, out)
    with pytest.raises(ValueError, match="v must be C-contiguous"):
        x.layer(0, q, kv, np.zeros((5, 8, 2), np.float32).transpose(0, 2, 1), out)
    with pytest.raises(TypeError, match="numpy array"):
        x.layer(0, q.tolist(), kv, kv, out)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        x.layer(0, q, kv, kv, ro)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        x.layer(2, q, kv, kv, out)
    x.layer(0, q, kv, kv, out)
    raises(S.ERR_STATE, x.layer, 0, q, kv, kv, out)        # layer already run
    raises(S.ERR_STATE, x.finish)                          # layer 1 not run
    x.layer(1, q, kv, kv, out)
    with pytest.raises(ValueError, match="eos has 3 entries"):
        x.finish([True, False, True])
    outs = x.finish([False])
    assert outs.shape == (1,) and outs["id"][0] == 1
    s.report(outs)
    with pytest.raises(TypeError, match="librkv.Plan"):
        x.begin(object())


def test_evict_errors():
    with pytest.raises(librkv.RkvError, match="budget"):
        librkv.evict.validate(dict(budget=4, window=8))
    with pytest.raises(TypeError, match="unknown field 'budgets'"):
        librkv.EvictParams(budgets=3)
    with pytest.raises(ValueError, match="needs queries"):
        librkv.evict.select("rkv", np.zeros((1, 10, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        librkv.evict.select("streaming", np.zeros((1, 10, 4)))
    raises(S.ERR_INVALID_ARG, librkv.evict.select,
           librkv.EvictParams("rkv", budget=8, window=4), np.zeros((2, 20, 4), np.float32),
           np.zeros((3, 4, 4), np.float32))                # 3 q heads over 2 kv heads


def _run_import(env, cwd):
    code = ("import librkv\n"
            "try:\n    librkv.version()\n"
            "except librkv.LibraryNotFoundError as e:\n    print('NOTFOUND', e)\n"
            "else:\n    print('FOUND', librkv.library_path())\n")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_library_not_found(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONDONTWRITEBYTECODE="1",
               RKV_LIBRARY=str(tmp_path / "nope.so"))
    r = _run_import(env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NOTFOUND") and "RKV_LIBRARY=" in r.stdout, r.stdout
    # no variable, a package copy with no library near it: the search list, or the loader's
    shutil.copytree(PKG_ROOT / "librkv", tmp_path / "pkg" / "librkv")
    env = dict(env, PYTHONPATH=str(tmp_path / "pkg"))
    env.pop("RKV_LIBRARY")
    r = _run_import(env, tmp_path)
    assert r.returncode == 0, r.stderr
    if ctypes.util.find_library("rkv") is None:
        assert r.stdout.startswith("NOTFOUND") and "Searched:" in r.stdout, r.stdout
        assert "find_library" in r.stdout
    else:
        assert r.stdout.startswith("FOUND"), r.stdout
