"""Zero-copy views of a CPU KV pool: writes through the numpy views are what the library
reads (read_blocks, copy_blocks, apply_moves, paged attention in the executor), and what the
library writes (write_kv, the executor's K/V writes) shows in the views."""
import gc

import numpy as np
import pytest

import librkv


def make_pool(dtype="f32", num_blocks=32, block_size=4, layers=1, kv_heads=2, head_dim=8):
    bm = librkv.BlockManager(num_blocks, block_size=block_size, num_layers=layers,
                             num_kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)
    pool = librkv.KVPool.for_blockmgr(bm)
    return bm, pool


def test_views_shape_and_sharing():
    bm, pool = make_pool()
    b = pool.blocks
    assert b.shape == (32, 2, 4, 8) and b.dtype == np.float32 and b.flags.writeable
    assert pool.k_blocks.shape == pool.v_blocks.shape == (32, 4, 8)
    assert np.shares_memory(b, pool.k_blocks) and np.shares_memory(b, pool.v_blocks)
    assert pool.block_bytes == 2 * 4 * 8 * 4 == b[0].nbytes
    assert pool.scores.shape == (32, 4) and pool.scores.dtype == np.float32
    a = np.asarray(pool)  # __array_interface__
    assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    assert a.shape == b.shape
    d = np.from_dlpack(pool)  # __dlpack__ / __dlpack_device__
    assert d.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    assert pool.__dlpack_device__() == (1, 0)
    assert not b.any()  # pools start zeroed


def test_write_through_view_read_via_api():
    bm, pool = make_pool()
    bm.seq_create(1)
    r = bm.append(1, 6)
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 6, 8)).astype(np.float32)
    v = rng.standard_normal((2, 6, 8)).astype(np.float32)
    slots = r.slots[0]  # [kv_heads, 6]
    pool.k_blocks[slots // 4, slots % 4] = k
    pool.v_blocks[slots // 4, slots % 4] = v
    ids = bm.stream_blocks(1, 0, 1)
    got = pool.read_blocks(ids)  # rkv_kv_pool_read_blocks
    assert got.shape == (2, 2, 4, 8)
    flat_k = got[:, 0].reshape(-1, 8)[:6]
    flat_v = got[:, 1].reshape(-1, 8)[:6]
    assert np.array_equal(flat_k, k[1]) and np.array_equal(flat_v, v[1])
    kk, vv = pool.read_slots(slots)
    assert np.array_equal(kk, k) and np.array_equal(vv, v)

    # library writes show in the view: write_kv, copy_blocks, apply_moves, write_blocks
    bm.seq_create(2)
    s2 = bm.append(2, 3).slots[0, 0]
    kw = np.full((3, 8), 7.0, np.float32)
    pool.write_kv(kw, -kw, s2)
    assert np.array_equal(pool.k_blocks[s2 // 4, s2 % 4], kw)
    assert np.array_equal(pool.v_blocks[s2 // 4, s2 % 4], -kw)
    src, dst = int(ids[0]), int(s2[0] // 4)
    pool.copy_blocks([[src, dst]])
    assert np.array_equal(pool.blocks[dst], pool.blocks[src])
    pool.apply_moves([[src * 4 + 3, src * 4 + 0]])
    assert np.array_equal(pool.k_blocks[src, 0], k[1, 3])
    pool.scores[dst] = 1.5
    pool.write_blocks([dst], np.zeros((1, 2, 4, 8), np.float32))
    assert not pool.blocks[dst].any() and not pool.scores[dst].any()
    with pytest.raises(ValueError, match="write_blocks"):
        pool.write_blocks([dst], np.zeros((1, 2, 4, 8), np.float64))


def test_view_feeds_attention():
    """K/V written through the view are what paged decode attention reads: change one V row
    in the pool between steps and the executor's output follows a numpy reference computed
    from the views."""
    L, H, QH, D, bs = 1, 2, 4, 8, 4
    bm = librkv.BlockManager(64, block_size=bs, num_layers=L, num_kv_heads=H, head_dim=D,
                             dtype="f32")
    pool = librkv.KVPool.for_blockmgr(bm)
    s = librkv.Scheduler(bm, max_batched_tokens=64, max_seqs=4, evict="full",
                         plan_slots=True)  # the test reads the slots the executor wrote
    x = librkv.Executor.for_scheduler(s, pool, QH)
    s.add_request(3, 7, 4)
    rng = np.random.default_rng(7)

    def step(check_ref):
        p = s.step()
        x.begin(p)
        rows = p.n_batched_tokens
        q = rng.standard_normal((rows, QH, D)).astype(np.float32)
        k = rng.standard_normal((rows, H, D)).astype(np.float32)
        v = rng.standard_normal((rows, H, D)).astype(np.float32)
        out = np.empty((rows, QH, D), np.float32)
        x.layer(0, q, k, v, out)
        # the executor wrote k/v into the plan's slots: visible through the views
        sl = p.slots[0]
        assert np.array_equal(pool.k_blocks[sl // bs, sl % bs], k)
        assert np.array_equal(pool.v_blocks[sl // bs, sl % bs], v)
        if check_ref:
            seq = p.seqs[0]
            assert seq["n_tokens"] == 1
            for qh in range(QH):
                h = qh // (QH // H)
                slots = bm.stream_slots(3, 0, h)
                K, V = pool.read_slots(slots)
                a = K.astype(np.float64) @ q[0, qh] / np.sqrt(D)
                w = np.exp(a - a.max())
                w /= w.sum()
                np.testing.assert_allclose(out[0, qh], w @ V, rtol=1e-4, atol=1e-5)
        s.report(x.finish())
        return p

    step(False)                         # prefill 7 tokens
    slot = bm.stream_slot(3, 0, 1, 2)   # position 2 of kv head 1
    pool.v_blocks[slot // bs, slot % bs] = 100.0  # write through the view
    step(True)                          # decode: attention reads the edited V
    step(True)
    for o in (x, s, pool, bm):
        o.close()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_views(dtype):
    bm, pool = make_pool(dtype=dtype)
    bm.seq_create(1)
    slots = bm.append(1, 5).slots[0, 0]
    k = np.linspace(-3, 3, 5 * 8, dtype=np.float32).reshape(5, 8) * np.float32(1.0001)
    pool.write_kv(k, k * 2, slots)
    kv = pool.k_blocks[slots // 4, slots % 4]
    if dtype == "f16":
        assert pool.blocks.dtype == np.float16
        assert np.array_equal(kv, k.astype(np.float16))
    else:
        assert pool.blocks.dtype == np.uint16  # raw bf16 bits
        assert np.array_equal(kv, librkv.f32_to_bf16(k))
        back = librkv.bf16_to_f32(kv)
        np.testing.assert_allclose(back, k, rtol=2 ** -8)
    assert pool.layout.dtype == librkv.DType[dtype.upper()]


def test_views_pin_the_pool():
    bm, pool = make_pool()
    v = pool.k_blocks
    with pytest.raises(librkv.RkvError, match="numpy view"):
        pool.close()
    assert not pool.closed
    del pool
    gc.collect()
    v[0, 0, 0] = 1.0  # the view keeps the pool alive: still valid memory
    assert v[0, 0, 0] == 1.0
    base = v.base
    while not hasattr(base, "owner"):
        base = base.base
    pool = base.owner
    del v, base
    gc.collect()
    pool.close()   # no view left
    assert pool.closed
    with pytest.raises(librkv.RkvError, match="closed"):
        pool.blocks


def test_dependents_block_close():
    bm, pool = make_pool()
    s = librkv.Scheduler(bm, max_batched_tokens=16, max_seqs=2)
    x = librkv.Executor.for_scheduler(s, pool, 2)
    with pytest.raises(librkv.RkvError, match="Executor"):
        pool.close()
    with pytest.raises(librkv.RkvError, match="Executor, Scheduler"):
        bm.close()
    x.close()
    pool.close()
    s.close()
    bm.close()


def test_collector_destroys_children_first(monkeypatch):
    """Objects of one unreachable cycle are finalised in any order: a handle finalised before
    the handles borrowing it waits for them (else the C pool would outlive its backend)."""
    order = []
    real = librkv._base.Handle._destroy

    def spy(self):
        order.append(type(self).__name__)
        real(self)

    monkeypatch.setattr(librkv._base.Handle, "_destroy", spy)
    for _ in range(3):
        bm, pool = make_pool()
        s = librkv.Scheduler(bm, max_batched_tokens=16, max_seqs=2)
        x = librkv.Executor.for_scheduler(s, pool, 2)
        objs = [bm.__dict__, pool.backend, s, x, pool]
        objs.append(objs)  # a cycle holding everything
        for o in (bm, pool.backend, s, x, pool):
            o.__dict__["cycle"] = objs
        del bm, pool, s, x, o, objs
        gc.collect()
    assert len(order) == 15
    for i in range(0, 15, 5):
        got = order[i:i + 5]
        assert got.index("Executor") < got.index("KVPool") < got.index("Backend")
        assert got.index("Executor") < got.index("BlockManager")
        assert got.index("Scheduler") < got.index("BlockManager")
