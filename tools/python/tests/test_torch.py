"""PyTorch interop of the pool views (DLPack): skipped, with the reason, where torch is not
installed (it is optional: numpy is all the package needs)."""
import numpy as np
import pytest

import librkv

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the torch / DLPack tensor views are untested "
                    "here (pip install torch to run them)")


def pool_of(dtype):
    bm = librkv.BlockManager(8, block_size=4, num_layers=1, num_kv_heads=1, head_dim=8,
                             dtype=dtype)
    return bm, librkv.KVPool.for_blockmgr(bm)


@pytest.mark.parametrize("dtype,tdtype", [("f32", "float32"), ("f16", "float16"),
                                          ("bf16", "bfloat16")])
def test_to_torch_shares_memory(dtype, tdtype):
    bm, pool = pool_of(dtype)
    t = pool.to_torch()
    assert t.shape == (8, 2, 4, 8) and t.dtype == getattr(torch, tdtype)
    t[1, 0, 2] = 1.5           # K row 2 of block 1, written by torch
    pool.write_kv(np.full((1, 8), 3.0, np.float32), np.zeros((1, 8), np.float32), [0])
    k, _ = pool.read_slots([4 + 2])
    if dtype == "bf16":
        k = librkv.bf16_to_f32(k)
    assert np.all(np.asarray(k, np.float32) == 1.5)
    assert float(t[0, 0, 0, 0]) == 3.0  # the library's write shows in the tensor
    del t


def test_from_dlpack():
    bm, pool = pool_of("f32")
    t = torch.from_dlpack(pool)
    t[0, 1, 0, 0] = 2.0
    assert pool.v_blocks[0, 0, 0] == 2.0
