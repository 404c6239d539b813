"""docs/examples/toy_engine.c ported to Python: the same toy model (Q/K/V from a hash), the
same serve() loop over Scheduler + Executor, the same harness (every check after every step,
forks every fifth step, the B + buffer bound after a compression). Each workload runs to
completion; where the C example is built, its summary line must equal the Python run's."""
import os
import re
import subprocess

import numpy as np
import pytest

import librkv
from conftest import ToyModel, build_dir

LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, BLOCK, MAX_SEQS = 4, 2, 4, 16, 4, 32
REQUESTS, MAX_ROWS = 48, 256


class Harness:
    def __init__(self, sched, x, ev, forks):
        self.s, self.x, self.ev, self.forks = sched, x, ev, forks
        self.next_child = 1000
        self.steps = self.compressed_checks = self.forked = 0
        self.was_compressed = np.zeros(4096, dtype=bool)

    def after_step(self, p, outs):
        """Checks after every step, and the forks of the fork workloads."""
        self.steps += 1
        self.s.check()
        self.x.check()
        self.was_compressed[p.dropped] = False
        seqs = p.seqs
        for i in range(p.n_seqs):
            sid = int(seqs["id"][i])
            before = self.was_compressed[sid]
            self.was_compressed[sid] |= bool(outs["compressed"][i])
            if not before:
                continue
            self.compressed_checks += 1
            assert seqs["kv_len"][i] <= self.ev.budget + self.ev.buffer, (
                "request %d holds %d tokens after a compression (B + buffer %d)" % (
                    sid, seqs["kv_len"][i], self.ev.budget + self.ev.buffer))
        if self.forks and self.steps % 5 == 0 and self.next_child < 1016 and p.n_decode:
            q = seqs[self.steps // 5 % p.n_decode]
            parent = int(q["id"])
            try:
                info = self.s.get_request(parent)
            except librkv.RkvError:
                return
            if info["state"] != librkv.RequestState.RUNNING:
                return
            try:
                self.s.fork(parent, self.next_child, info["generated"] + 60)
            except librkv.RkvError as e:
                if e.status not in (librkv.Status.ERR_NO_BLOCKS, librkv.Status.ERR_CAPACITY):
                    raise
                return
            self.was_compressed[self.next_child] = self.was_compressed[parent]
            self.next_child += 1
            self.forked += 1


def serve(s, x, tm, h):
    """The engine loop of docs/EMBEDDING.md in Python."""
    out = np.empty((MAX_ROWS, Q_HEADS, HEAD_DIM), dtype=np.float32)
    while True:
        p = s.step()
        x.begin(p)  # every plan is executed, an empty one too
        for l in range(LAYERS if p.n_seqs else 0):
            q, k, v = tm.qkv(p, l)
            x.layer(l, q, k, v, out[:p.n_batched_tokens])
        outs = x.finish(tm.eos(p))
        s.report(outs)
        m = s.metrics()
        h.after_step(p, outs)
        if (not p.n_seqs and not p.n_finished and not m["num_running"]
                and not m["num_waiting"] and not m["num_swapped"]):
            return


def run_workload(wl, policy):
    ev = librkv.EvictParams(policy, budget=32, window=4, buffer=8)
    optimistic, swap, forks = "optimistic" in wl, wl == "swap", wl.startswith("fork")
    bm = librkv.BlockManager(600 if optimistic or swap else 900, block_size=BLOCK,
                             num_layers=LAYERS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                             dtype="f32", max_seqs=4096)
    pool = librkv.KVPool.for_blockmgr(bm, num_threads=1)
    s = librkv.Scheduler(bm, max_batched_tokens=MAX_ROWS, max_seqs=MAX_SEQS,
                         max_prefill_chunk=24,
                         admission="optimistic" if optimistic or swap else "reserve",
                         preempt="swap" if swap else "recompute",
                         host_blocks=400 if swap else 0, evict=ev)
    x = librkv.Executor.for_scheduler(s, pool, Q_HEADS, max_stream_tokens=512)
    tm = ToyModel(Q_HEADS, KV_HEADS, HEAD_DIM, eos_rate=0.01)
    for i in range(REQUESTS):
        s.add_request(i, 8 + (i * 7) % 40, 40 + (i * 13) % 90, 0, float(i))
    h = Harness(s, x, ev, forks)
    serve(s, x, tm, h)
    m = s.metrics()
    assert m["num_finished"] + m["num_aborted"] == REQUESTS + h.forked, "not every request finished"
    assert bm.free_blocks == bm.config["num_blocks"], "blocks leaked"
    summary = dict(steps=h.steps, finished=m["num_finished"], forks=h.forked,
                   preemptions=m["num_preemptions"], swap=m["num_preempt_swap"],
                   aborted=m["num_aborted"], compressions=m["compressions"],
                   bound_checks=h.compressed_checks, qwindow=x.qwindow_bytes_per_seq)
    # destroy in the reverse order of creation
    for o in (x, s, pool, bm):
        o.close()
    return summary


def c_summary(wl, policy):
    """The C example's summary line as the same dict, or None where it is not built."""
    b = build_dir()
    exe = b / "tests" / "example_toy_engine" if b else None
    if exe is None or not exe.is_file():
        return None
    # a sanitizer build's example carries its own ASan runtime: not the one preloaded for python
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    p = subprocess.run([str(exe), wl, policy], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r": (\d+) steps, (\d+) finished, (\d+) forks, (\d+) preemptions \((\d+) swap\), "
                  r"(\d+) aborted, (\d+) compressions, (\d+) bound checks, query window (\d+) "
                  r"B/seq: ok", p.stdout)
    assert m, p.stdout
    keys = ("steps finished forks preemptions swap aborted compressions bound_checks "
            "qwindow").split()
    return dict(zip(keys, map(int, m.groups())))


@pytest.mark.parametrize("wl,policy", [
    ("reserve", "rkv"), ("reserve", "full"), ("swap", "rkv"), ("swap", "h2o"),
    ("fork", "rkv"), ("fork-optimistic", "snapkv"), ("optimistic", "streaming"),
])
def test_toy_engine(wl, policy):
    got = run_workload(wl, policy)
    assert got["finished"] >= REQUESTS - got["aborted"]
    if wl == "swap":
        assert got["swap"] > 0, "the swap workload should swap"
    if wl.startswith("fork"):
        assert got["forks"] > 0, "the fork workload should fork"
    if policy != "full":
        assert got["compressions"] > 0
    ref = c_summary(wl, policy)
    if ref is not None:
        assert got == ref, "Python run differs from docs/examples/toy_engine.c"
