// The query window's push kernel (qwindow_internal.h): the device half of
// rkv_qwindow_push_planned, and of the deprecated rkv_attn_cuda_qwindow_push. Compiled only
// when nvcc is found; qwindow_batch.c has the stand-in.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda_device.cuh"
#include "cuda_status.h"
#include "qwindow_internal.h"

namespace {

struct PushParams {
  float *ring;
  int layers, hq, d, window, layer, nslots;
  const float *q;
  const int32_t *indptr;  // NULL: one row per sequence
  const int32_t *slots;
  const int64_t *pos;
};

// CTA per (sequence, query head): the last `window` of the sequence's new rows land at ring
// row (pos + r) % window of its slot, head-major ([hq][window][d] per layer) as the eviction
// kernels read it.
__global__ void push_kernel(PushParams p) {
  const int b = blockIdx.x, qh = blockIdx.y;
  const int slot = p.slots[b];
  if (slot < 0 || slot >= p.nslots) return;
  int64_t r0 = b, n = 1;
  if (p.indptr) {
    r0 = p.indptr[b];
    n = p.indptr[b + 1] - r0;
  }
  const int64_t first = n > p.window ? n - p.window : 0;
  const int64_t base = p.pos[b];
  if (base < 0) return;
  float *ring = p.ring + (((size_t)slot * p.layers + p.layer) * p.hq + qh) * (size_t)p.window * p.d;
  for (int64_t r = first; r < n; r++) {
    const int64_t at = (base + r) % p.window;
    const float *src = p.q + ((size_t)(r0 + r) * p.hq + qh) * p.d;
    float *dst = ring + (size_t)at * p.d;
    for (int e = threadIdx.x; e < p.d; e += blockDim.x) dst[e] = src[e];
  }
}

}  // namespace

extern "C" rkv_status rkvi_qwindow_cuda_push(rkv_backend *be, const rkvi_qwindow_ring *r,
                                             uint32_t layer, const float *q, const int32_t *indptr,
                                             const int32_t *slots, const int64_t *pos, uint32_t n) {
  if (!be) return RKV_ERR_INVALID_ARG;
  char *err = be->err;
  if (be->kind != RKV_BACKEND_CUDA)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "query window push: backend is not CUDA");
  rkvi_cuda::DeviceScope dev_scope(be);
  if (be->poisoned)
    return rkvi_fail(err, RKV_ERR_CUDA, "query window push: CUDA context poisoned earlier");
  if (!r || !r->data || !r->layers || !r->hq || !r->d || !r->window || !r->nslots)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "query window push: ring NULL or with a zero size");
  if (layer >= r->layers)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "query window push: layer %u >= %u layers", layer,
                     r->layers);
  if (r->hq > 65535)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "query window push: %u query heads > 65535", r->hq);
  if (n == 0) return RKV_OK;
  if (!q || !slots || !pos)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "query window push: q, slots, pos must be non-NULL");
  PushParams p{};
  p.ring = r->data;
  p.layers = (int)r->layers;
  p.hq = (int)r->hq;
  p.d = (int)r->d;
  p.window = (int)r->window;
  p.layer = (int)layer;
  p.nslots = (int)r->nslots;
  p.q = q;
  p.indptr = indptr;
  p.slots = slots;
  p.pos = pos;
  push_kernel<<<dim3(n, r->hq), 128, 0, static_cast<cudaStream_t>(be->stream)>>>(p);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return rkvi_cuda_fail(be, err, (int)e, "query window push: launch", __FILE__, __LINE__);
  return RKV_OK;
}
