// CUDA backend: device selection, a non-blocking stream, KV pools in cudaMalloc'd memory, and
// the pool kernels (block copies for copy-on-write, slot moves for compaction). Compiled only
// when nvcc is found; C linkage entry points declared in backend_impl.h.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>

#include "backend_impl.h"
#include "cuda_device.cuh"
#include "cuda_status.h"

namespace {

rkv_status cuda_fail(rkv_backend *b, cudaError_t e, const char *what, const char *file, int line) {
  return rkvi_cuda_fail(b, nullptr, (int)e, what, file, line);
}

struct CopyBlocksParams {
  uint8_t *base;
  float *scores;
  const rkv_block_copy *ops;
  size_t block_bytes;  // multiple of 16
  uint32_t block_size;
};

// One CUDA block per copy op; 16-byte vector copies.
__global__ void copy_blocks_kernel(CopyBlocksParams p) {
  const rkv_block_copy op = p.ops[blockIdx.x];
  const uint4 *src = reinterpret_cast<const uint4 *>(p.base + (size_t)op.src * p.block_bytes);
  uint4 *dst = reinterpret_cast<uint4 *>(p.base + (size_t)op.dst * p.block_bytes);
  for (size_t i = threadIdx.x; i < p.block_bytes / 16; i += blockDim.x) dst[i] = src[i];
  for (uint32_t i = threadIdx.x; i < p.block_size; i += blockDim.x)
    p.scores[(size_t)op.dst * p.block_size + i] = p.scores[(size_t)op.src * p.block_size + i];
}

struct MovesParams {
  uint8_t *base;
  float *scores;
  const rkv_slot_move *moves;
  uint8_t *scratch;  // [n][2][row_bytes] staging: gather then scatter, so order never matters
  float *scratch_scores;
  size_t n;
  size_t block_bytes;
  size_t row_bytes;  // multiple of 4
  uint32_t block_size;
};

__device__ inline uint8_t *slot_row(const MovesParams &p, int64_t slot, bool v) {
  int64_t blk = slot / p.block_size, off = slot % p.block_size;
  return p.base + (size_t)blk * p.block_bytes + ((v ? p.block_size : 0) + off) * p.row_bytes;
}

__global__ void gather_moves_kernel(MovesParams p) {
  size_t i = blockIdx.x;
  const rkv_slot_move m = p.moves[i];
  for (int v = 0; v < 2; v++) {
    const uint32_t *src = reinterpret_cast<const uint32_t *>(slot_row(p, m.src, v));
    uint32_t *dst = reinterpret_cast<uint32_t *>(p.scratch + (i * 2 + v) * p.row_bytes);
    for (size_t w = threadIdx.x; w < p.row_bytes / 4; w += blockDim.x) dst[w] = src[w];
  }
  if (threadIdx.x == 0) p.scratch_scores[i] = p.scores[m.src];
}

__global__ void scatter_moves_kernel(MovesParams p) {
  size_t i = blockIdx.x;
  const rkv_slot_move m = p.moves[i];
  for (int v = 0; v < 2; v++) {
    const uint32_t *src = reinterpret_cast<const uint32_t *>(p.scratch + (i * 2 + v) * p.row_bytes);
    uint32_t *dst = reinterpret_cast<uint32_t *>(slot_row(p, m.dst, v));
    for (size_t w = threadIdx.x; w < p.row_bytes / 4; w += blockDim.x) dst[w] = src[w];
  }
  if (threadIdx.x == 0) p.scores[m.dst] = p.scratch_scores[i];
}

cudaStream_t stream_of(const rkv_backend *b) {
  return static_cast<cudaStream_t>(b->stream);
}

}  // namespace

extern "C" {

bool rkvi_cuda_error_sticky(int cuda_error) {
  switch ((cudaError_t)cuda_error) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

rkv_status rkvi_cuda_fail(rkv_backend *b, char *err, int cuda_error, const char *what,
                          const char *file, int line) {
  // A failed runtime call also leaves its error in the thread's last-error slot: a non-sticky
  // one is cleared, or the next launch check would report it as that launch's failure.
  if (rkvi_cuda_error_sticky(cuda_error))
    b->poisoned = true;
  else
    (void)cudaGetLastError();
  return rkvi_fail(err ? err : b->err, RKV_ERR_CUDA, "%s: %s (%s:%d)%s", what,
                   cudaGetErrorString((cudaError_t)cuda_error), file, line,
                   b->poisoned ? " [context poisoned]" : "");
}

int rkvi_cuda_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

rkv_status rkvi_cuda_backend_init(rkv_backend *b) {
  int n = rkvi_cuda_device_count();
  if (n <= 0) return rkvi_fail(b->err, RKV_ERR_CUDA, "no CUDA device available");
  if (b->device >= n)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "CUDA device %d out of range (%d)", b->device, n);
  // The stream belongs to the backend's device; the caller's current device is kept.
  rkvi_cuda::DeviceScope dev_scope(b);
  if (!dev_scope.ok())
    return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA device %d cannot be made current", b->device);
  cudaStream_t s;
  RKVI_CUDA_TRY(b, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  b->stream = s;
  return RKV_OK;
}

void rkvi_cuda_backend_fini(rkv_backend *b) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->stream) cudaStreamDestroy(stream_of(b));
  b->stream = nullptr;
}

rkv_status rkvi_cuda_event_pair_create(rkv_backend *b, void **start, void **stop) {
  rkvi_cuda::DeviceScope dev_scope(b);
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  *start = *stop = nullptr;
  cudaError_t e = cudaEventCreate(&e0);
  if (e == cudaSuccess) e = cudaEventCreate(&e1);
  if (e != cudaSuccess) {
    if (e0) cudaEventDestroy(e0);
    return cuda_fail(b, e, "cudaEventCreate", __FILE__, __LINE__);
  }
  *start = e0;
  *stop = e1;
  return RKV_OK;
}

void rkvi_cuda_event_pair_destroy(void *start, void *stop) {
  if (start) cudaEventDestroy(static_cast<cudaEvent_t>(start));
  if (stop) cudaEventDestroy(static_cast<cudaEvent_t>(stop));
}

rkv_status rkvi_cuda_event_record(rkv_backend *b, void *event) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  RKVI_CUDA_TRY(b, cudaEventRecord(static_cast<cudaEvent_t>(event), stream_of(b)));
  return RKV_OK;
}

rkv_status rkvi_cuda_event_elapsed(rkv_backend *b, void *start, void *stop, float *ms) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  RKVI_CUDA_TRY(b, cudaEventSynchronize(static_cast<cudaEvent_t>(stop)));
  RKVI_CUDA_TRY(
      b, cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(stop)));
  return RKV_OK;
}

rkv_status rkvi_cuda_sync(rkv_backend *b) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  RKVI_CUDA_TRY(b, cudaStreamSynchronize(stream_of(b)));
  return RKV_OK;
}

rkv_status rkvi_cuda_pool_alloc(rkv_kv_pool *p) {
  rkv_backend *b = p->backend;
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  const size_t score_bytes = (size_t)p->num_blocks * p->layout.block_size * sizeof(float);
  void *base = nullptr, *scores = nullptr;
  const char *what = "cudaMalloc(base)";
  cudaError_t e = cudaMalloc(&base, p->bytes);
  if (e != cudaSuccess) base = nullptr;
  if (e == cudaSuccess) {
    what = "cudaMalloc(scores)";
    e = cudaMalloc(&scores, score_bytes);
    if (e != cudaSuccess) scores = nullptr;
  }
  if (e == cudaSuccess) {
    what = "cudaMemsetAsync";
    e = cudaMemsetAsync(base, 0, p->bytes, stream_of(b));
  }
  if (e == cudaSuccess) e = cudaMemsetAsync(scores, 0, score_bytes, stream_of(b));
  if (e == cudaSuccess) {
    what = "cudaStreamSynchronize";
    e = cudaStreamSynchronize(stream_of(b));
  }
  if (e != cudaSuccess) {  // all or nothing: no allocation outlives a failed step
    cudaFree(base);
    cudaFree(scores);
    return cuda_fail(b, e, what, __FILE__, __LINE__);
  }
  p->base = base;
  p->scores = static_cast<float *>(scores);
  return RKV_OK;
}

void rkvi_cuda_pool_free(rkv_kv_pool *p) {
  rkvi_cuda::DeviceScope dev_scope(p->backend);
  cudaFree(p->base);
  cudaFree(p->scores);
}

// Ops arrive from the host: staged through a temporary device buffer. Used off the hot path
// (copy-on-write after fork, CPU-planned compaction); the serving step uses the device-side
// compaction kernels of the eviction module instead.
rkv_status rkvi_cuda_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n) {
  rkv_backend *b = p->backend;
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  if (p->block_bytes % 16) return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "block bytes %% 16 != 0");
  rkv_block_copy *d_ops = nullptr;
  RKVI_CUDA_TRY(b, cudaMallocAsync(&d_ops, n * sizeof *ops, stream_of(b)));
  cudaError_t e =
      cudaMemcpyAsync(d_ops, ops, n * sizeof *ops, cudaMemcpyHostToDevice, stream_of(b));
  if (e == cudaSuccess) {
    CopyBlocksParams prm{static_cast<uint8_t *>(p->base), p->scores, d_ops, p->block_bytes,
                         p->layout.block_size};
    copy_blocks_kernel<<<(unsigned)n, 256, 0, stream_of(b)>>>(prm);
    e = cudaGetLastError();
  }
  cudaFreeAsync(d_ops, stream_of(b));  // also on failure: the staging buffer never leaks
  if (e != cudaSuccess) return cuda_fail(b, e, "copy_blocks", __FILE__, __LINE__);
  RKVI_CUDA_TRY(b, cudaStreamSynchronize(stream_of(b)));  // ops buffer is the caller's
  return RKV_OK;
}

rkv_status rkvi_cuda_apply_moves(rkv_kv_pool *p, const rkv_slot_move *moves, size_t n) {
  rkv_backend *b = p->backend;
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  size_t row = (size_t)p->layout.head_dim * rkv_dtype_size(p->layout.dtype);
  if (row % 4) return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "row bytes %% 4 != 0");
  size_t scratch_bytes = n * sizeof(rkv_slot_move) + n * 2 * row + n * sizeof(float);
  uint8_t *scratch = nullptr;
  RKVI_CUDA_TRY(b,
                cudaMallocAsync(reinterpret_cast<void **>(&scratch), scratch_bytes, stream_of(b)));
  cudaError_t e =
      cudaMemcpyAsync(scratch, moves, n * sizeof *moves, cudaMemcpyHostToDevice, stream_of(b));
  if (e == cudaSuccess) {
    MovesParams prm{};
    prm.base = static_cast<uint8_t *>(p->base);
    prm.scores = p->scores;
    prm.moves = reinterpret_cast<const rkv_slot_move *>(scratch);
    prm.scratch = scratch + n * sizeof(rkv_slot_move);
    prm.scratch_scores = reinterpret_cast<float *>(prm.scratch + n * 2 * row);
    prm.n = n;
    prm.block_bytes = p->block_bytes;
    prm.row_bytes = row;
    prm.block_size = p->layout.block_size;
    gather_moves_kernel<<<(unsigned)n, 128, 0, stream_of(b)>>>(prm);
    e = cudaGetLastError();
    if (e == cudaSuccess) {
      scatter_moves_kernel<<<(unsigned)n, 128, 0, stream_of(b)>>>(prm);
      e = cudaGetLastError();
    }
  }
  cudaFreeAsync(scratch, stream_of(b));  // also on failure: the staging buffer never leaks
  if (e != cudaSuccess) return cuda_fail(b, e, "apply_moves", __FILE__, __LINE__);
  RKVI_CUDA_TRY(b, cudaStreamSynchronize(stream_of(b)));
  return RKV_OK;
}

}  // extern "C"
