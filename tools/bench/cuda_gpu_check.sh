#!/bin/sh
# One-call GPU check of the CUDA kernels (for a lent GPU machine): builds the `gpu` preset's
# targets that matter, runs the two GPU-vs-CPU tests, the PyTorch reference's self-check, and
# the eviction / attention benchmarks, and `rkv eval --backend cuda --compare-cpu` on the
# trained test model. Logs go to $OUT (or ./gpu-check-out) and a short
# summary is printed last.
#   sh tools/bench/cuda_gpu_check.sh [build-dir]
set -u
B=${1:-build/gpu}
O=${OUT:-gpu-check-out}
mkdir -p "$O"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv > "$O/gpu.txt" 2>&1
cmake -S . -B "$B" -DRKV_WERROR=ON -DRKV_REQUIRE_CUDA=ON -DRKV_REQUIRE_GPU_TESTS=ON \
  > "$O/configure.log" 2>&1 || { tail -20 "$O/configure.log"; exit 1; }
cmake --build "$B" -j16 --target cuda_test_attn_cuda cuda_test_evict_cuda rkv \
  > "$O/build.log" 2>&1 || { grep -E "error" "$O/build.log" | head -20; exit 1; }
rc=0
for t in cuda_test_attn_cuda cuda_test_evict_cuda; do
  RKV_TEST_REQUIRE_GPU=1 timeout 600 "$B/tests/$t" > "$O/$t.log" 2>&1 || rc=1
done
PY=python3
$PY -c "import torch" 2>/dev/null || PY=/usr/bin/python3
$PY tools/bench/evict_torch.py --check > "$O/torch_check.log" 2>&1 || rc=1
for pol in rkv snapkv; do
  timeout 300 "$B/tools/rkv" bench evict --backend cuda --policy $pol --iters 20 \
    > "$O/bench_evict_$pol.log" 2>&1 || rc=1
done
timeout 300 "$B/tools/rkv" bench attention --backend cuda > "$O/bench_attention.log" 2>&1 || rc=1
# The trained test model with its KV cache on the GPU, every run repeated on the CPU backend
# (--compare-cpu: exit 3 if any accuracy differs).
timeout 600 "$B/tools/rkv" eval --backend cuda --compare-cpu --problems 100 \
  --policies full,rkv,snapkv,streaming --budgets 128,256 > "$O/eval_cuda.log" 2>&1 || rc=1
echo "== summary ($(cat "$O/gpu.txt" | tail -1))"
for f in "$O"/cuda_test_*.log "$O"/torch_check.log; do echo "$(basename "$f"): $(tail -1 "$f")"; done
grep -h -E "gpu compression|torch reference" "$O"/bench_evict_*.log
tail -5 "$O/bench_attention.log"
tail -12 "$O/eval_cuda.log"
exit $rc
