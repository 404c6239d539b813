"""The PyTorch client (tools/model/serve.py) against `rkv eval`: the trained test model served
from Python, with librkv's scheduler, paged KV, attention and eviction reached through the
binding, must generate exactly what the C tool generates: the same text for every problem,
in the same finishing order, and the same steps, compressions and peak blocks. Runs full and
R-KV at B = 192 over 100 problems (RKV_CLIENT_PROBLEMS overrides: sanitizer builds use
fewer). Skipped without PyTorch or without the build's rkv tool."""
import json
import os
import subprocess
import sys

import pytest

from conftest import SOURCE_DIR, build_dir

torch = pytest.importorskip("torch", reason="PyTorch (python3-torch) is not installed")

PROBLEMS = int(os.environ.get("RKV_CLIENT_PROBLEMS", "100"))
BUDGET = 192
SAME_STATS = ("steps", "compressions", "tokens_evicted", "blocks_freed", "correct",
              "peak_kv_blocks")


def run(cmd):
    # a sanitizer build's rkv carries its own ASan runtime: not the one preloaded for python
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if cmd[0] != sys.executable:
        env.pop("LD_PRELOAD", None)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, "%s failed (%d):\n%s%s" % (cmd[:2], p.returncode, p.stdout,
                                                        p.stderr[-4000:])
    return json.loads(p.stdout)


def lines(path):
    with open(path) as f:
        return [json.loads(s) for s in f]


def test_python_client_matches_rkv_eval(tmp_path):
    b = build_dir()
    rkv = b / "tools" / "rkv" if b else None
    if rkv is None or not rkv.is_file():
        pytest.skip("no rkv tool in the build tree (RKV_BUILD_DIR)")
    c_gen, py_gen = tmp_path / "c.jsonl", tmp_path / "py.jsonl"
    c = run([str(rkv), "eval", "--policies", "full,rkv", "--budgets", str(BUDGET),
             "--problems", str(PROBLEMS), "--json", "--generations", str(c_gen)])
    py = run([sys.executable, str(SOURCE_DIR / "tools" / "model" / "serve.py"),
              "--policies", "full,rkv", "--budget", str(BUDGET), "--problems", str(PROBLEMS),
              "--json", "--generations", str(py_gen)])

    cg, pg = lines(c_gen), lines(py_gen)
    assert len(cg) == 2 * PROBLEMS, "rkv eval wrote %d generations" % len(cg)
    for i, (a, b_) in enumerate(zip(cg, pg)):
        assert a == b_, "generation %d differs:\n  rkv eval: %s\n  python:   %s" % (i, a, b_)
    assert len(pg) == len(cg)

    for cr, pr in zip(c["runs"], py["runs"]):
        assert (cr["policy"], cr["budget"]) == (pr["policy"], pr["budget"])
        for k in SAME_STATS:
            assert cr[k] == pr[k], "%s B=%d: %s %s (rkv eval) vs %s (python)" % (
                cr["policy"], cr["budget"], k, cr[k], pr[k])
    full, rkv_run = py["runs"]
    assert full["correct"] == PROBLEMS, "the full cache solves every held-out problem"
    assert rkv_run["compressions"] > 0 and rkv_run["peak_kv_blocks"] < full["peak_kv_blocks"]


def test_python_client_emulated_device(tmp_path):
    """The same client with its KV pool on the emulated device (DeviceArray I/O) and the CUDA
    path's zero-padded head dimension and scaled queries (--pad-head-dim): still rkv eval's
    tokens (12 problems)."""
    b = build_dir()
    rkv = b / "tools" / "rkv" if b else None
    if rkv is None or not rkv.is_file():
        pytest.skip("no rkv tool in the build tree (RKV_BUILD_DIR)")
    n = min(PROBLEMS, 12)
    c_gen, py_gen = tmp_path / "c.jsonl", tmp_path / "py.jsonl"
    c = run([str(rkv), "eval", "--policies", "full,rkv", "--budgets", str(BUDGET),
             "--problems", str(n), "--json", "--generations", str(c_gen)])
    py = run([sys.executable, str(SOURCE_DIR / "tools" / "model" / "serve.py"),
              "--policies", "full,rkv", "--budget", str(BUDGET), "--problems", str(n),
              "--backend", "emulated", "--pad-head-dim", "--json", "--generations",
              str(py_gen)])
    assert lines(c_gen) == lines(py_gen)
    for cr, pr in zip(c["runs"], py["runs"]):
        assert pr["backend"] == "emulated"
        for k in SAME_STATS:
            assert cr[k] == pr[k], "%s: %s %s (rkv eval) vs %s (emulated)" % (
                cr["policy"], k, cr[k], pr[k])
