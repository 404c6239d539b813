"""A device pool from Python on the emulated device (CPU kernels behind device memory the host
cannot touch, transfers checked against the async rule): Executor.layer takes DeviceArrays,
and the toy engine's swap and fork-free workloads give, step by step, the same plans, outputs
and attention results as on a CPU pool. The same code takes torch CUDA tensors on a CUDA pool
(``__cuda_array_interface__``); that part needs a GPU."""
import numpy as np
import pytest

import librkv
from conftest import ToyModel

LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, BLOCK = 2, 2, 4, 16, 4


def stack(backend, policy, swap, head_dim=HEAD_DIM, block=BLOCK):
    """Executor, scheduler, pool and block manager of the toy workload (24 requests)."""
    ev = librkv.EvictParams(policy, budget=32, window=4, buffer=8)
    blocks = (300 if swap else 900) * BLOCK // block
    bm = librkv.BlockManager(blocks, block_size=block, num_layers=LAYERS,
                             num_kv_heads=KV_HEADS, head_dim=head_dim, dtype="f32",
                             max_seqs=256)
    pool = librkv.KVPool(backend, bm.kv_layout, bm.config["num_blocks"])
    s = librkv.Scheduler(bm, max_batched_tokens=128, max_seqs=16, max_prefill_chunk=24,
                         admission="optimistic" if swap else "reserve",
                         preempt="swap" if swap else "recompute",
                         host_blocks=blocks if swap else 0, evict=ev)
    x = librkv.Executor.for_scheduler(s, pool, Q_HEADS, max_stream_tokens=128)
    for i in range(24):
        s.add_request(i, 8 + (i * 7) % 40, 30 + (i * 13) % 70, 0, float(i))
    return [x, s, pool, bm]


def lockstep(dev, policy, swap, head_dim=HEAD_DIM, block=BLOCK, to_device=None, tol=0.0):
    """Runs the workload on a CPU pool and on device backend `dev` side by side: equal plans
    and outputs at every step, attention outputs equal (within tol) at every layer.
    to_device(a) makes the device arrays (default: DeviceArray.from_numpy); it returns
    (array, a function reading it back as numpy)."""
    cpu = librkv.Backend("cpu", num_threads=1)
    xc, sc, pc, bc = c = stack(cpu, policy, swap, head_dim, block)
    xe, se, pe, be = e = stack(dev, policy, swap, head_dim, block)
    if to_device is None:
        def to_device(a):
            d = librkv.DeviceArray.from_numpy(dev, a)
            return d, d.download
    tm = ToyModel(Q_HEADS, KV_HEADS, head_dim, eos_rate=0.01)
    steps = compressed = 0
    while True:
        p, q = sc.step(), se.step()
        assert p.n_seqs == q.n_seqs and p.n_batched_tokens == q.n_batched_tokens
        np.testing.assert_array_equal(p.seqs["id"], q.seqs["id"])
        xc.begin(p)
        xe.begin(q)
        rows = p.n_batched_tokens
        out = np.empty((rows, Q_HEADS, head_dim), dtype=np.float32)
        for l in range(LAYERS if p.n_seqs else 0):
            qq, k, v = tm.qkv(p, l)
            xc.layer(l, qq, k, v, out)
            d = [to_device(a)[0] for a in (qq, k, v)]
            od, read = to_device(np.full_like(out, np.nan))
            xe.layer(l, *d, od)
            np.testing.assert_allclose(read(), out, rtol=tol, atol=tol,
                                       err_msg="layer %d of step %d" % (l, steps))
        eos = tm.eos(p)
        oc, oe = xc.finish(eos), xe.finish(eos)
        np.testing.assert_array_equal(oc, oe)
        compressed += int(oc["compressed"].sum())
        sc.report(oc)
        se.report(oe)
        sc.check(), se.check(), xc.check(), xe.check()
        steps += 1
        m = sc.metrics()
        if (not p.n_seqs and not p.n_finished and not m["num_running"]
                and not m["num_waiting"] and not m["num_swapped"]):
            break
    assert se.metrics() == m
    assert compressed > 0
    if swap:
        assert m["num_preempt_swap"] > 0, "the swap workload should swap"
    for o in c + e:
        o.close()


@pytest.mark.parametrize("policy,swap", [("rkv", True), ("h2o", True), ("snapkv", False)])
def test_emulated_matches_cpu(policy, swap):
    cpu, emu = librkv.Backend("cpu", num_threads=1), librkv.Backend.emulated()
    assert cpu.device_is_host and not emu.device_is_host
    assert cpu.stream is None and emu.stream is None
    lockstep(emu, policy, swap)


def test_device_arrays_and_refusals():
    emu, cpu = librkv.Backend.emulated(), librkv.Backend("cpu", num_threads=1)
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    d = librkv.DeviceArray.from_numpy(emu, a)
    assert d.shape == (2, 3, 4) and d.nbytes == 96 and d.ptr
    np.testing.assert_array_equal(d.download(), a)
    d.upload(a * 2)
    np.testing.assert_array_equal(d.download(), a * 2)
    with pytest.raises(ValueError, match="shape"):
        d.upload(a[:1])
    assert not hasattr(d, "__cuda_array_interface__")  # CUDA backends only
    with pytest.raises(librkv.RkvError, match="still used by DeviceArray"):
        emu.close()
    d.close()

    xe, se, pe, be = e = stack(emu, "rkv", False)
    p = se.step()
    xe.begin(p)
    rows = p.n_batched_tokens
    good = [librkv.DeviceArray(emu, (rows, h, HEAD_DIM)) for h in (Q_HEADS, KV_HEADS, KV_HEADS,
                                                                   Q_HEADS)]
    with pytest.raises(TypeError, match="DeviceArray"):
        xe.layer(0, np.zeros((rows, Q_HEADS, HEAD_DIM), np.float32), *good[1:])
    with pytest.raises(ValueError, match="another backend"):
        xe.layer(0, librkv.DeviceArray(cpu, (rows, Q_HEADS, HEAD_DIM)), *good[1:])
    with pytest.raises(ValueError, match="float32"):
        xe.layer(0, librkv.DeviceArray(emu, (rows + 1, Q_HEADS, HEAD_DIM)), *good[1:])
    with pytest.raises(ValueError, match="float32"):
        xe.layer(0, librkv.DeviceArray(emu, (rows, Q_HEADS, HEAD_DIM), "float16"), *good[1:])
    xe.layer(0, *good)  # contents undefined (0xFF on the emulated device): runs all the same
    for o in good:
        o.close()
    for o in e:
        o.close()
