"""tools/model/serve.py with its KV pool on a CUDA device and the model on the GPU (label gpu;
skipped without PyTorch's CUDA, a CUDA build or a device, failed instead of skipped for want
of a device when RKV_TEST_REQUIRE_GPU=1). The GPU's dense math rounds differently from the C
runner's, so tokens may differ from `rkv eval --backend cuda`; the full cache must still solve
every problem, R-KV must compress, and the two clients' R-KV accuracies stay within 2 of 16."""
import os
import sys

import pytest

from conftest import SOURCE_DIR, build_dir
from test_model_client import BUDGET, run

torch = pytest.importorskip("torch", reason="PyTorch (python3-torch) is not installed")


def test_python_client_cuda():
    import librkv
    if not librkv.build_info()["cuda"]:
        pytest.skip("librkv built without CUDA")
    try:
        librkv.Backend("cuda").close()
    except librkv.RkvError as e:
        if os.environ.get("RKV_TEST_REQUIRE_GPU") == "1":
            raise
        pytest.skip("no usable CUDA device: %s" % e)
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    b = build_dir()
    rkv = b / "tools" / "rkv" if b else None
    if rkv is None or not rkv.is_file():
        pytest.skip("no rkv tool in the build tree (RKV_BUILD_DIR)")
    n = 16
    c = run([str(rkv), "eval", "--backend", "cuda", "--policies", "full,rkv", "--budgets",
             str(BUDGET), "--problems", str(n), "--json"])
    py = run([sys.executable, str(SOURCE_DIR / "tools" / "model" / "serve.py"),
              "--policies", "full,rkv", "--budget", str(BUDGET), "--problems", str(n),
              "--backend", "cuda", "--json"])
    (cf, cr), (pf, pr) = c["runs"], py["runs"]
    assert pf["backend"] == "cuda"
    assert pf["correct"] == cf["correct"] == n, "the full cache solves every problem"
    assert pr["compressions"] > 0 and pr["peak_kv_blocks"] < pf["peak_kv_blocks"]
    assert abs(pr["correct"] - cr["correct"]) <= 2, (pr["correct"], cr["correct"])
