// Host <-> device transfers of whole blocks (swap) and of their per-slot scores on a CUDA pool:
// per chunk of ids one id upload, one gather or scatter kernel and one contiguous copy, where
// one cudaMemcpyAsync per block would cost microseconds of API time per block (a swapped
// 4K-token sequence of a 32-layer model with 8 kv heads is 65,536 blocks). Ids are validated
// by the caller (backend.c). C linkage entry points declared in backend_impl.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "backend_impl.h"
#include "cuda_device.cuh"
#include "cuda_status.h"

namespace {

constexpr size_t kChunkBytes = size_t{8} << 20;  // staging rows per chunk
constexpr size_t kChunkIds = 4096;               // bounds scatter's duplicate scan (n^2 / 2)
constexpr int kThreads = 128;

// Pool rows of one kind: whole blocks, or one block's scores.
struct Rows {
  uint8_t *base;
  size_t row_bytes;
};

__device__ void copy_row(uint8_t *dst, const uint8_t *src, size_t bytes) {
  if (bytes % 16 == 0) {
    for (size_t w = threadIdx.x; w < bytes / 16; w += blockDim.x)
      reinterpret_cast<uint4 *>(dst)[w] = src ? reinterpret_cast<const uint4 *>(src)[w] : uint4{};
  } else {
    for (size_t w = threadIdx.x; w < bytes; w += blockDim.x) dst[w] = src ? src[w] : 0;
  }
}

// CTA i copies pool row ids[i] into staging row i.
__global__ void gather_rows(Rows r, const int32_t *ids, uint8_t *stage) {
  const size_t i = blockIdx.x;
  copy_row(stage + i * r.row_bytes, r.base + (size_t)ids[i] * r.row_bytes, r.row_bytes);
}

// CTA i copies staging row i (zeros when stage is null) into pool row ids[i], unless a later
// entry of the chunk names the same row: the last one wins, as when rows are copied one by one
// in the order of ids (chunks run in stream order, so across chunks too).
__global__ void scatter_rows(Rows r, const int32_t *ids, int n, const uint8_t *stage) {
  const int i = blockIdx.x;
  const int32_t id = ids[i];
  int later = 0;
  for (int j = i + 1 + (int)threadIdx.x; j < n; j += blockDim.x) later |= ids[j] == id;
  if (__syncthreads_or(later)) return;
  copy_row(r.base + (size_t)id * r.row_bytes, stage ? stage + (size_t)i * r.row_bytes : nullptr,
           r.row_bytes);
}

// Moves n rows between the pool and host (row i of host <-> pool row ids[i]). `zero`, when
// given, is a second kind of row written with zeros for the same ids (write_blocks' scores).
rkv_status transfer(rkv_backend *b, Rows rows, const Rows *zero, const int32_t *ids, size_t n,
                    uint8_t *host, bool to_host) {
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(b->err, RKV_ERR_CUDA, "CUDA context poisoned earlier");
  if (n == 0) return RKV_OK;
  cudaStream_t st = static_cast<cudaStream_t>(b->stream);
  size_t chunk = kChunkBytes / rows.row_bytes;
  if (chunk < 1) chunk = 1;
  if (chunk > kChunkIds) chunk = kChunkIds;
  if (chunk > n) chunk = n;
  const size_t ids_off = (chunk * rows.row_bytes + 255) / 256 * 256;
  uint8_t *stage = nullptr;
  RKVI_CUDA_TRY(
      b, cudaMallocAsync(reinterpret_cast<void **>(&stage), ids_off + chunk * sizeof *ids, st));
  int32_t *d_ids = reinterpret_cast<int32_t *>(stage + ids_off);
  cudaError_t e = cudaSuccess;
  // One staging buffer for every chunk: stream order keeps a chunk from overwriting rows the
  // previous one has not copied out yet.
  for (size_t i = 0; i < n && e == cudaSuccess; i += chunk) {
    const size_t k = n - i < chunk ? n - i : chunk;
    uint8_t *h = host + i * rows.row_bytes;
    e = cudaMemcpyAsync(d_ids, ids + i, k * sizeof *ids, cudaMemcpyHostToDevice, st);
    if (e != cudaSuccess) break;
    if (to_host) {
      gather_rows<<<(unsigned)k, kThreads, 0, st>>>(rows, d_ids, stage);
      e = cudaGetLastError();
      if (e == cudaSuccess)
        e = cudaMemcpyAsync(h, stage, k * rows.row_bytes, cudaMemcpyDeviceToHost, st);
    } else {
      e = cudaMemcpyAsync(stage, h, k * rows.row_bytes, cudaMemcpyHostToDevice, st);
      if (e == cudaSuccess) {
        scatter_rows<<<(unsigned)k, kThreads, 0, st>>>(rows, d_ids, (int)k, stage);
        e = cudaGetLastError();
      }
      if (e == cudaSuccess && zero) {
        scatter_rows<<<(unsigned)k, kThreads, 0, st>>>(*zero, d_ids, (int)k, nullptr);
        e = cudaGetLastError();
      }
    }
  }
  cudaFreeAsync(stage, st);  // also on failure: the staging buffer never leaks
  if (e != cudaSuccess)
    return rkvi_cuda_fail(b, nullptr, (int)e, "pool transfer", __FILE__, __LINE__);
  RKVI_CUDA_TRY(b, cudaStreamSynchronize(st));  // the host rows are the caller's
  return RKV_OK;
}

Rows block_rows(const rkv_kv_pool *p) {
  return Rows{static_cast<uint8_t *>(p->base), p->block_bytes};
}

Rows score_rows(const rkv_kv_pool *p) {
  return Rows{reinterpret_cast<uint8_t *>(p->scores), p->layout.block_size * sizeof(float)};
}

}  // namespace

extern "C" {

rkv_status rkvi_cuda_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n, void *host) {
  return transfer(p->backend, block_rows(p), nullptr, ids, n, static_cast<uint8_t *>(host), true);
}

rkv_status rkvi_cuda_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n, const void *host) {
  // Like the CPU path: written blocks start with no H2O mass (not the previous owner's).
  const Rows scores = score_rows(p);
  return transfer(p->backend, block_rows(p), &scores, ids, n,
                  const_cast<uint8_t *>(static_cast<const uint8_t *>(host)), false);
}

rkv_status rkvi_cuda_scores_copy(rkv_kv_pool *p, const int32_t *ids, size_t n, float *host,
                                 bool to_host) {
  return transfer(p->backend, score_rows(p), nullptr, ids, n, reinterpret_cast<uint8_t *>(host),
                  to_host);
}

}  // extern "C"
