"""BlockManager round trip: create, append, fork with copy-on-write, compaction, export,
restore, free, cuts and their fresh-block bounds; every invariant checked and every block back
on the free list at the end."""
import numpy as np
import pytest

import librkv


def make(num_blocks=128, **kw):
    args = dict(block_size=4, num_layers=2, num_kv_heads=3, head_dim=8, dtype="f32")
    args.update(kw)
    return librkv.BlockManager(num_blocks, **args)


def test_config_and_layout():
    bm = make()
    c = bm.config
    assert (c["num_blocks"], c["block_size"], c["num_layers"], c["num_kv_heads"],
            c["head_dim"], c["dtype"]) == (128, 4, 2, 3, 8, librkv.DType.F32)
    assert c["max_seqs"] == 4096  # 0 = 4096, filled in
    assert bm.streams_per_seq == 6
    assert bm.kv_layout == librkv.Layout(librkv.DType.F32, 4, 8)
    assert librkv.BlockManager(8).config["block_size"] == 16  # RKV_BLOCKMGR_CONFIG_INIT
    assert librkv.BlockManager(8).config["dtype"] == librkv.DType.BF16


def test_round_trip():
    bm = make(check_every_op=True)
    bs = 4
    bm.seq_create(5)
    assert 5 in bm and bm.num_seqs == 1 and bm.seq_index(5) >= 0
    r = bm.append(5, 6)
    assert r.slots.dtype == np.int64 and r.slots.shape == (2, 3, 6)
    assert r.copies.shape == (0, 2)
    for l in range(2):
        for h in range(3):
            assert bm.stream_len(5, l, h) == 6
            blocks = bm.stream_blocks(5, l, h)
            assert blocks.dtype == np.int32 and blocks.shape == (2,)
            want = blocks[np.arange(6) // bs].astype(np.int64) * bs + np.arange(6) % bs
            assert np.array_equal(r.slots[l, h], want)
            assert np.array_equal(bm.stream_slots(5, l, h), want)
            assert bm.stream_slot(5, l, h, 5) == want[5]
    # every slot distinct across streams
    assert len(np.unique(r.slots)) == r.slots.size
    assert np.array_equal(bm.stream_lens(5), np.full((2, 3), 6))
    st = bm.stats()
    assert st["used_blocks"] == 12 and st["token_slots"] == 36 and st["num_seqs"] == 1
    assert bm.seq_footprint(5) == (12, 12)
    assert bm.blocks_for_tokens(6) == 12
    assert bm.blocks_needed(5, 2) == 0 and bm.blocks_needed(5, 3) == 6
    assert bm.can_append(5, 3)

    # fork: the child shares every block; its first append copies the shared partial block
    bm.seq_fork(5, 6)
    assert bm.stats()["shared_blocks"] == 12
    last = bm.stream_blocks(5, 1, 2)[-1]
    assert bm.block_ref(last) == 2
    r2 = bm.append(6, 1)
    assert r2.copies.shape == (6, 2) and r2.copies.dtype == np.int32
    assert last in r2.copies[:, 0]
    assert bm.block_ref(last) == 1
    assert not np.array_equal(bm.stream_blocks(6, 1, 2), bm.stream_blocks(5, 1, 2))
    assert np.array_equal(bm.stream_blocks(6, 1, 2)[:1], bm.stream_blocks(5, 1, 2)[:1])

    # export: CSR rows equal the streams' blocks, batch-major, head-minor
    t = bm.export_csr(1, [5, 6])
    assert t.indptr.shape == (7,) and t.last_len.shape == (6,)
    for b, seq in enumerate((5, 6)):
        for h in range(3):
            s = b * 3 + h
            assert np.array_equal(t.indices[t.indptr[s]:t.indptr[s + 1]],
                                  bm.stream_blocks(seq, 1, h))
            n = bm.stream_len(seq, 1, h)
            assert (t.indptr[s + 1] - t.indptr[s] - 1) * bs + t.last_len[s] == n

    # compaction: keep positions of one stream; the tail block goes back to the free list
    free0 = bm.free_blocks
    moves = bm.compact(6, {(0, 1): [0, 3, 6]})
    assert moves.dtype == np.int64 and moves.shape[1] == 2
    assert bm.stream_len(6, 0, 1) == 3
    assert bm.free_blocks >= free0
    bm.check()

    assert sorted(bm.list_seqs().tolist()) == [5, 6]
    bm.seq_free(5)
    bm.seq_free(6)
    assert bm.num_seqs == 0 and bm.free_blocks == 128
    assert bm.stats()["peak_used_blocks"] >= 12
    bm.check()


def test_restore():
    bm = make()
    lens = np.arange(6, dtype=np.int32).reshape(2, 3) + 1
    bm.seq_restore(9, lens)
    assert np.array_equal(bm.stream_lens(9), lens)
    with pytest.raises(ValueError, match="6 entries"):
        bm.seq_restore(10, [1, 2])
    bm.seq_free(9)
    bm.check()


def test_no_blocks_changes_nothing():
    bm = make(num_blocks=6)
    bm.seq_create(1)
    bm.append(1, 4)   # one block per stream: 6 blocks
    assert bm.free_blocks == 0
    assert not bm.can_append(1, 1)
    with pytest.raises(librkv.RkvError) as ei:
        bm.append(1, 1)
    assert ei.value.status == librkv.Status.ERR_NO_BLOCKS
    assert bm.stream_len(1, 0, 0) == 4
    bm.check()


def test_cut_and_fresh_bounds():
    """truncate, compact_fresh_bound and compact_copy_bound: a fork's shared kept blocks, then
    a prefix-cache hit on blocks nobody shares yet; each cut takes no more fresh blocks than
    the bound said."""
    bm = make(num_blocks=96, prefix_cache=True)  # 2 layers x 3 heads = 6 streams, block 4
    bm.seq_create(1)
    bm.append(1, 10)                 # 3 blocks per stream, the last partly filled
    bm.seq_fork(1, 2)
    assert bm.compact_fresh_bound(2, 8) == 6 * 2      # two shared kept blocks per stream
    assert bm.compact_fresh_bound(2, 12) == 0         # no stream is over 12
    assert bm.compact_fresh_bound(2, 12, pending=3) == 6 * 3
    assert bm.compact_fresh_bound(2, 8, layer=1) == 3 * 2
    free = bm.free_blocks
    assert bm.truncate(2, 8) == 6 * 2                 # 2 tokens cut in each stream
    assert free - bm.free_blocks == 6 * 2             # the copies, within the bound
    assert bm.stream_lens(2).tolist() == [[8] * 3] * 2
    assert bm.compact_fresh_bound(1, 4) == 0          # nothing shared any more
    # cached blocks: sequence 3 registers two groups; a later hit would share them
    toks = np.arange(12, dtype=np.int32)
    h = librkv.prefix_hash_blocks(toks, 4)
    bm.seq_create(3)
    bm.append(3, 12)
    assert bm.compact_copy_bound(3, 8) == 0
    assert bm.compact_copy_bound(3, 8, registering=1) == 6
    bm.prefix_insert(3, h[:2])
    assert bm.compact_fresh_bound(3, 8) == 0
    assert bm.compact_copy_bound(3, 8) == 6 * 2
    bm.seq_create_cached(4, h, 2)
    free = bm.free_blocks
    bm.truncate(3, 8)
    assert free - bm.free_blocks == 6 * 2 - 6         # 2 copies per stream, tail block back
    with pytest.raises(librkv.RkvError):
        bm.compact_copy_bound(9, 8)
    with pytest.raises(librkv.RkvError):
        bm.truncate(3, -1)
    assert bm.stream_lens(3).tolist() == [[8] * 3] * 2
    for s in (1, 2, 3, 4):
        bm.seq_free(s)
    bm.check()


def test_compaction_keeps_cached_prompt():
    """A sequence compacting its own cached prompt copies the blocks it keeps: the next
    request with the prompt still hits all of it. compact_prepare says how many copies."""
    bm = make(num_blocks=96, prefix_cache=True)  # 6 streams, block 4
    toks = np.arange(12, dtype=np.int32)
    h = librkv.prefix_hash_blocks(toks, 4)
    bm.seq_create(1)
    bm.append(1, 12)
    bm.prefix_insert(1, h)
    assert bm.compact_prepare(1, 8) == 6 * 2         # blocks 0 and 1 of every stream
    assert bm.compact_prepare(1, 8, layer=0) == 3 * 2
    free = bm.free_blocks
    bm.truncate(1, 8)
    assert bm.free_blocks == free + 6                # copies for parked originals, tails back
    assert bm.prefix_match(h) == 3                   # the whole prompt still hits
    with pytest.raises(librkv.RkvError):
        bm.compact_prepare(9, 8)
    bm.seq_free(1)
    bm.check()
