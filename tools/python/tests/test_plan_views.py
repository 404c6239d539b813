"""Plan views: the numpy views of a step's plan agree with the block manager and the
scheduler, are read-only, and go stale at the next step."""
import numpy as np
import pytest

import librkv

L, H, BS = 3, 2, 4


def make(plan_slots=True, **kw):
    bm = librkv.BlockManager(400, block_size=BS, num_layers=L, num_kv_heads=H, head_dim=8,
                             dtype="f32")
    args = dict(max_batched_tokens=40, max_seqs=8, max_prefill_chunk=16,
                evict=librkv.EvictParams("streaming", budget=16, window=4, buffer=4, sinks=2),
                plan_slots=plan_slots, check_every_step=True)
    args.update(kw)
    return bm, librkv.Scheduler(bm, **args)


def test_plan_fields_match_block_manager():
    bm, s = make()
    for i in range(5):
        s.add_request(i, 10 + 3 * i, 6, priority=i % 2, arrival=float(i))
    seen_started, seen_finished = set(), set()
    x = librkv.Executor.for_scheduler(s, None, H)  # bookkeeping executor: no pool
    for _ in range(200):
        p = s.step()
        seqs = p.seqs
        assert seqs.dtype == librkv.seq_dtype() and seqs.shape == (p.n_seqs,)
        assert int(seqs["n_tokens"].sum()) == p.n_batched_tokens
        assert (seqs["kind"][:p.n_decode] == librkv.SeqKind.DECODE).all()
        assert (seqs["kind"][p.n_decode:] == librkv.SeqKind.PREFILL).all()
        off = p.row_offsets()
        assert off[-1] == p.n_batched_tokens
        slots = p.slots
        assert slots.shape == (L, p.n_batched_tokens, H) and slots.dtype == np.int64
        if p.n_batched_tokens:
            assert slots.strides == (8 * p.slot_layer_stride, 8 * H, 8)
        for i in range(p.n_seqs):
            sid, n, kv = int(seqs["id"][i]), int(seqs["n_tokens"][i]), int(seqs["kv_len"][i])
            for l in range(L):
                for h in range(H):
                    assert bm.stream_len(sid, l, h) == kv
                    for t in range(n):
                        assert slots[l, off[i] + t, h] == bm.stream_slot(sid, l, h, kv - n + t)
            ev = p.evict(i)
            assert ev.policy == librkv.EvictPolicy.STREAMING and ev.budget == 16
        assert p.rows_changed.shape == (p.n_seqs,)
        assert p.copies.shape == (p.n_copies, 2) and p.forks.shape == (p.n_forks, 2)
        assert p.started.dtype == np.int64 and p.finished.shape == (p.n_finished,)
        seen_started |= set(p.started.tolist())
        seen_finished |= set(p.finished.tolist())
        with pytest.raises(ValueError):
            seqs["id"][0:1] = 99  # read-only (an empty plan raises too: no write possible)
        assert p.hash() == p.hash()
        x.begin(p)
        s.report(x.finish())
        x.check()
        m = s.metrics()
        if not p.n_seqs and not p.n_finished and not (m["num_running"] or m["num_waiting"]):
            break
    assert seen_started == seen_finished == set(range(5))
    assert s.metrics()["num_finished"] == 5
    s.check()


def test_stale_plan_and_no_slots():
    bm, s = make(plan_slots=False)
    s.add_request(1, 5, 3)
    p = s.step()
    assert p.slots is None
    assert p.seqs["id"].tolist() == [1]
    assert not p.stale
    outs = librkv.new_outputs(p.n_seqs)
    outs["id"] = p.seqs["id"]
    s.report(outs)
    p2 = s.step()
    assert p.stale and not p2.stale
    assert p.step == 0 and p2.step == 1  # scalars stay readable
    with pytest.raises(librkv.RkvError) as ei:
        p.seqs
    assert ei.value.status == librkv.Status.ERR_STATE and "stale" in str(ei.value)
    with pytest.raises(librkv.RkvError, match="stale"):
        p.finished
    # a step before the report of the outstanding plan is refused; the plan stays valid
    with pytest.raises(librkv.RkvError) as ei:
        s.step()
    assert ei.value.status == librkv.Status.ERR_STATE
    assert not p2.stale


def test_fork_and_abort_in_plans():
    bm, s = make()
    s.add_request(1, 6, 50)
    x = librkv.Executor.for_scheduler(s, None, H)
    p = s.step()
    x.begin(p)
    s.report(x.finish())
    s.fork(1, 2, 20)
    info = s.get_request(2)
    assert info["state"] == librkv.RequestState.RUNNING
    p = s.step()
    assert p.forks.tolist() == [[1, 2]]
    assert sorted(p.seqs["id"].tolist()) == [1, 2]
    assert p.n_copies == L * H  # the child's first append copies the shared partial block
    x.begin(p)
    s.report(x.finish())
    s.abort(2)
    p = s.step()
    assert p.finished.tolist() == [2] and 2 in p.dropped.tolist()
    x.begin(p)
    s.report(x.finish())
    s.check()
    x.check()
    text = s.metrics_prometheus()
    assert "# TYPE rkv_steps_total counter\nrkv_steps_total %d\n" % s.metrics()["steps"] in text
    assert "rkv_prefix_cache_hits_total" not in text  # no prefix cache here


def test_overlap_plans_in_flight():
    """overlap=True: one more step while a plan is unreported; its views stay valid until the
    step after; reports go to the oldest plan; the executor runs the loop of docs/OVERLAP.md."""
    bm, s = make(plan_slots=False, overlap=True,
                 evict=librkv.EvictParams("streaming", budget=8, window=4, buffer=2, sinks=2))
    with pytest.raises(librkv.RkvError):
        make(plan_slots=True, overlap=True)  # they exclude each other
    for i in range(4):
        s.add_request(i, 6 + i, 20)
    x = librkv.Executor.for_scheduler(s, None, H)
    p = s.step()
    steps = 0
    while True:
        x.begin(p)
        nxt = s.step() if s.metrics()["num_running"] else None
        if nxt is not None:
            assert not p.stale and not nxt.stale  # both plans readable while one is in flight
            assert nxt.step == p.step + 1
            with pytest.raises(librkv.RkvError):
                s.step()  # two unreported plans at most
        s.report(x.finish())
        s.check()
        steps += 1
        m = s.metrics()
        if nxt is None:
            if not (m["num_running"] or m["num_waiting"]):
                break
            nxt = s.step()
        p = nxt
    assert s.metrics()["num_finished"] == 4 and s.metrics()["generation_tokens"] == 80
    assert steps < 200
