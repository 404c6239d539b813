"""The Python device-pool path on a CUDA pool (label gpu; skipped without a CUDA build or
device, failed instead when RKV_TEST_REQUIRE_GPU=1): the toy workload in lockstep with a CPU
pool, first with DeviceArray I/O, then with torch CUDA tensors handed over through
``__cuda_array_interface__`` on the backend's stream. StreamingLLM keeps positions, not
scores, so the two pools keep the same tokens however the GPU rounds; attention outputs must
agree within the CUDA tests' tolerance. The swap workload moves blocks through the pool's
chunked host transfers and the executor's pinned swap pool."""
import os

import numpy as np
import pytest

import librkv
from test_device import lockstep

TOL = 2e-4


def cuda_backend():
    if not librkv.build_info()["cuda"]:
        pytest.skip("librkv built without CUDA")
    try:
        return librkv.Backend("cuda")
    except librkv.RkvError as e:
        if os.environ.get("RKV_TEST_REQUIRE_GPU") == "1":
            raise
        pytest.skip("no usable CUDA device: %s" % e)


@pytest.mark.parametrize("swap", [True, False])
def test_cuda_matches_cpu(swap):
    be = cuda_backend()
    assert not be.device_is_host and be.stream is not None
    lockstep(be, "streaming", swap, head_dim=64, block=16, tol=TOL)


def test_cuda_pool_host_calls():
    """What a CUDA pool does from the host: block transfers to and from numpy, a torch view of
    its blocks, and a clear refusal where the C call would read host arrays on the device."""
    be = cuda_backend()
    pool = librkv.KVPool(be, ("f32", 16, 64), 40)
    data = np.random.default_rng(3).standard_normal((5, 2, 16, 64)).astype(np.float32)
    ids = np.array([7, 3, 39, 0, 21], dtype=np.int32)
    pool.write_blocks(ids, data)
    np.testing.assert_array_equal(pool.read_blocks(ids[::-1]), data[::-1])
    with pytest.raises(librkv.RkvError, match="device arrays"):
        pool.write_kv(data[0, 0], data[0, 1], np.arange(16))
    with pytest.raises(librkv.RkvError, match="host views need a CPU pool"):
        pool.blocks
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        t = pool.to_torch()  # zero-copy through __cuda_array_interface__
        assert t.is_cuda and tuple(t.shape) == (40, 2, 16, 64)
        np.testing.assert_array_equal(t[torch.from_numpy(ids).long().cuda()].cpu().numpy(), data)
        del t
    pool.close()


def test_cuda_torch_tensors():
    be = cuda_backend()
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    stream = torch.cuda.ExternalStream(be.stream)

    def to_device(a):
        with torch.cuda.stream(stream):
            t = torch.from_numpy(a).to("cuda")
        return t, lambda: t.cpu().numpy()  # .cpu() waits for the stream

    with torch.cuda.stream(stream):
        lockstep(be, "streaming", True, head_dim=64, block=16, to_device=to_device, tol=TOL)
