// CUDA paged attention: the launchers of attn_cuda.h (decode with split-KV, prefill/extend with
// a causal mask, KV write). The CPU reference (attn_cpu.c) defines the numbers; tests/cuda
// compares the two. (The query-window push is the query window's own: runtime/src.)
//
// One kernel serves decode and prefill. A CTA owns one stream (sequence x kv head) and a set of
// NQ "query pairs" (query head g of the GQA group x query row), so the G heads of a group share
// every K/V load. It walks the stream's blocks in cache order; each block (K[bs][D] then
// V[bs][D], contiguous in the pool) is copied whole into shared memory with 16-byte cp.async,
// two stages deep, rows padded by 16 bytes so that lanes reading different rows hit different
// banks. Per block: logits (a segment of bs lanes per query pair, one lane per token), online
// softmax with segment shuffles, then V accumulation (a thread per (pair, 8-element chunk)).
//   decode:  NQ = G, one row; when batch x kv heads cannot fill the GPU the stream's blocks
//            are split over `nsplit` CTAs that write (o, lse) partials, merged by a second
//            kernel (log-sum-exp). The split count is planned on the host from the shape and
//            the workspace the caller gave, so a run needs no host sync and can be captured.
//   prefill: NQ = G x QT rows of one sequence's new tokens; CTAs loop over row tiles (the row
//            counts live on the device, so the grid cannot be sized by them).
// H2O (accumulate_scores): a second pass over the K rows adds each slot's probability, summed
// over the CTA's pairs, to the pool's per-slot scores with atomicAdd (shared blocks of forked
// sequences may meet). Decode does not split in that mode (the pass needs the final lse).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include <rkv/attention_cuda.h>

#include "attn_cuda.h"
// rkv_internal.h has no extern "C" of its own: give its helpers C linkage here.
extern "C" {
#include "rkv_internal.h"
}
#include "backend_impl.h"
#include "cuda_device.cuh"
#include "cuda_dtype.cuh"
#include "cuda_status.h"

namespace {

constexpr int kMaxIt = 4;          // (pair, chunk) items per thread in the V phase
constexpr int kMaxSplits = 16;     // split-KV partials per stream at most
constexpr int kMaxThreads = 512;   // CTA size cap (about 120 registers per thread)
constexpr int kPrefillPairs = 64;  // query pairs per prefill tile (G x rows)

__device__ __forceinline__ void from_f32(float v, float *d) {
  *d = v;
}
__device__ __forceinline__ void from_f32(float v, __half *d) {
  *d = __float2half_rn(v);
}
__device__ __forceinline__ void from_f32(float v, __nv_bfloat16 *d) {
  *d = __float2bfloat16_rn(v);
}

using rkvi_cuda::load8;

/* The "memory" clobbers tell the compiler these touch shared memory, so no read of a stage
 * moves across them even where no barrier follows. */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

struct AttnParams {
  const uint8_t *base;
  float *scores;
  size_t block_bytes;
  int bs;
  const float *q;  // [rows][hq][D]
  float *out;      // [rows][hq][D]
  int hq;
  int hkv;
  int group;
  float scale;
  const int32_t *indptr;
  const int32_t *indices;
  const int32_t *last_len;
  const int32_t *q_indptr;  // prefill only
  // Padded rows form (rkv_block_rows) when rows != NULL; the CSR arrays above are then unused.
  const int32_t *rows;
  const int32_t *lens;
  const int32_t *seq_row;
  const int32_t *seq_lens;  // NULL: per-row lens
  int64_t stride;
  int stream_offset;
  int prefill;
  int qt;           // query rows per tile (1 for decode)
  int nq;           // query pairs per tile = group * qt
  int nsplit;       // decode splits (1 = write out directly)
  int accumulate;   // H2O score pass
  float *part_o;    // [seqs][hq][nsplit][D]
  float *part_lse;  // [seqs][hq][nsplit]
};

// Shared memory: two block stages, then the tile's queries and per-pair state.
template <typename T, int D>
struct Smem {
  static constexpr int kRowBytes = D * (int)sizeof(T);
  static constexpr int kPitch = kRowBytes + 16;
  static __host__ __device__ size_t stage_bytes(int bs) { return (size_t)2 * bs * kPitch; }
  static __host__ __device__ size_t total(int bs, int nq) {
    return 2 * stage_bytes(bs) + (size_t)nq * D * 4 + (size_t)nq * bs * 4 + (size_t)nq * 4 * 4;
  }
};

template <typename T, int D>
__device__ __forceinline__ void issue_block(uint8_t *stage, const uint8_t *gblk, int bs) {
  using S = Smem<T, D>;
  constexpr int kChunks = S::kRowBytes / 16;
  for (int c = threadIdx.x; c < 2 * bs * kChunks; c += blockDim.x) {
    const int r = c / kChunks, k = c % kChunks;
    cp_async16(stage + r * S::kPitch + k * 16, gblk + (size_t)r * S::kRowBytes + k * 16);
  }
}

template <typename T, int D>
__device__ __forceinline__ float dot_q_row(const float *q, const uint8_t *row) {
  float acc = 0.f;
#pragma unroll 4
  for (int e = 0; e < D; e += 8) {
    float k8[8];
    load8(reinterpret_cast<const T *>(row) + e, k8);
    const float4 a = *reinterpret_cast<const float4 *>(q + e);
    const float4 b = *reinterpret_cast<const float4 *>(q + e + 4);
    acc = fmaf(a.x, k8[0], acc);
    acc = fmaf(a.y, k8[1], acc);
    acc = fmaf(a.z, k8[2], acc);
    acc = fmaf(a.w, k8[3], acc);
    acc = fmaf(b.x, k8[4], acc);
    acc = fmaf(b.y, k8[5], acc);
    acc = fmaf(b.z, k8[6], acc);
    acc = fmaf(b.w, k8[7], acc);
  }
  return acc;
}

// Reductions over a segment of `bs` consecutive lanes (bs = 16 or 32 divides the warp).
__device__ __forceinline__ unsigned seg_mask(int bs) {
  return bs == 32 ? 0xffffffffu : (0xffffu << (threadIdx.x & 16));
}
__device__ __forceinline__ float seg_max(float v, int bs, unsigned mask) {
  for (int o = bs / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(mask, v, o));
  return v;
}
__device__ __forceinline__ float seg_sum(float v, int bs, unsigned mask) {
  for (int o = bs / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  return v;
}

// grid: (streams, nsplit) for decode, (streams, tiles-in-flight) for prefill.
template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads) attn_kernel(AttnParams p) {
  using S = Smem<T, D>;
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t *stage0 = smem;
  float *qs = reinterpret_cast<float *>(smem + 2 * S::stage_bytes(p.bs));  // [nq][D]
  float *ps = qs + (size_t)p.nq * D;                                       // [nq][bs]
  float *m_s = ps + (size_t)p.nq * p.bs;                                   // [nq]
  float *l_s = m_s + p.nq;
  float *corr = l_s + p.nq;
  int *lim = reinterpret_cast<int *>(corr + p.nq);

  const int stream = blockIdx.x;
  const int seq = stream / p.hkv, h = stream % p.hkv;
  const int bs = p.bs;
  int nblk, last;
  int64_t len;
  const int32_t *ids;
  if (p.rows) {
    const int64_t row = (int64_t)p.seq_row[seq] + p.stream_offset + h;
    ids = p.rows + row * p.stride;
    len = p.seq_lens ? p.seq_lens[seq] : p.lens[row];
    nblk = (int)((len + bs - 1) / bs);
    last = nblk ? (int)(len - (int64_t)(nblk - 1) * bs) : 0;
  } else {
    const int blk0 = p.indptr[stream];
    nblk = p.indptr[stream + 1] - blk0;
    last = p.last_len[stream];
    len = nblk ? (int64_t)(nblk - 1) * bs + last : 0;
    ids = p.indices + blk0;
  }
  const int tid = threadIdx.x, nthr = blockDim.x;
  const unsigned mask = seg_mask(bs);
  constexpr int kChunks = D / 8;
  const int items = p.nq * kChunks;

  int64_t row0 = seq, n_new = 1;  // query rows of this sequence
  if (p.prefill) {
    row0 = p.q_indptr[seq];
    n_new = p.q_indptr[seq + 1] - row0;
  }
  const int ntiles = p.prefill ? (int)((n_new + p.qt - 1) / p.qt) : 1;
  const int tile_step = p.prefill ? (int)gridDim.y : 1;

  for (int tile = p.prefill ? (int)blockIdx.y : 0; tile < ntiles; tile += tile_step) {
    const int64_t t0 = (int64_t)tile * p.qt;
    const int nt = (int)((n_new - t0) < p.qt ? (n_new - t0) : p.qt);
    const int nq = nt * p.group;  // active pairs (pair i: row i / group, head i % group)
    // Block range: decode splits the stream; prefill stops after the last visible block.
    int b0 = 0, b1 = nblk;
    if (!p.prefill && p.nsplit > 1) {
      const int per = (nblk + p.nsplit - 1) / p.nsplit;
      b0 = min(nblk, (int)blockIdx.y * per);
      b1 = min(nblk, b0 + per);
    }
    if (p.prefill) {
      const int64_t vis_end = len - n_new + t0 + nt;  // exclusive
      b1 = (int)min((int64_t)nblk, (vis_end + bs - 1) / bs);
    }
    __syncthreads();  // the previous tile is done with qs / ps
    for (int x = tid; x < p.nq * D; x += nthr) {
      const int i = x / D, e = x % D;
      float v = 0.f;
      if (i < nq) {
        const int64_t row = row0 + t0 + i / p.group;
        v = p.q[((size_t)row * p.hq + (size_t)h * p.group + i % p.group) * D + e] * p.scale;
      }
      qs[x] = v;
    }
    for (int i = tid; i < p.nq; i += nthr) {
      m_s[i] = -INFINITY;
      l_s[i] = 0.f;
      // Decode sees the whole stream; prefill row t0 + r sees positions <= len - n_new + t0 + r.
      lim[i] = p.prefill ? (int)(len - n_new + t0 + i / p.group) : (int)(len - 1);
      if (i >= nq) lim[i] = -1;
    }
    // The block loop's barriers publish m_s / l_s / lim / qs to other warps, but an empty range
    // (a split past the stream's end, an empty stream) runs no iteration: the output phase
    // would read them unsynchronised.
    __syncthreads();
    float acc[kMaxIt][8];
#pragma unroll
    for (int k = 0; k < kMaxIt; k++)
#pragma unroll
      for (int c = 0; c < 8; c++) acc[k][c] = 0.f;

    if (b0 < b1) issue_block<T, D>(stage0, p.base + (size_t)ids[b0] * p.block_bytes, bs);
    cp_async_commit();
    for (int b = b0; b < b1; b++) {
      uint8_t *cur = stage0 + ((b - b0) & 1) * S::stage_bytes(bs);
      if (b + 1 < b1) {
        uint8_t *nxt = stage0 + ((b + 1 - b0) & 1) * S::stage_bytes(bs);
        issue_block<T, D>(nxt, p.base + (size_t)ids[b + 1] * p.block_bytes, bs);
      }
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();
      const int nvalid = b == nblk - 1 ? last : bs;
      const int pos0 = b * bs;
      // Logits and the online softmax update: a segment of bs lanes per pair.
      for (int x = tid; x < p.nq * bs; x += nthr) {
        const int i = x / bs, t = x % bs;
        const bool valid = t < nvalid && pos0 + t <= lim[i];
        float s = valid ? dot_q_row<T, D>(qs + (size_t)i * D, cur + t * S::kPitch) : -INFINITY;
        const float mx = seg_max(s, bs, mask);
        const float m_old = m_s[i];
        const float m_new = fmaxf(m_old, mx);
        const float pr = (m_new == -INFINITY || !valid) ? 0.f : __expf(s - m_new);
        const float sum = seg_sum(pr, bs, mask);
        ps[x] = pr;
        __syncwarp(mask);  // every lane of the segment has read m_s[i] before lane 0 writes it
        if (t == 0) {
          const float c = m_old == -INFINITY ? 0.f : __expf(m_old - m_new);
          corr[i] = c;
          l_s[i] = l_s[i] * c + sum;
          m_s[i] = m_new;
        }
      }
      __syncthreads();
      // V accumulation: thread item (pair, 8-element chunk).
      const uint8_t *vbase = cur + bs * S::kPitch;
#pragma unroll
      for (int k = 0; k < kMaxIt; k++) {
        const int it = tid + k * nthr;
        if (it < items) {
          const int i = it / kChunks, ch = it % kChunks;
          const float c = corr[i];
#pragma unroll
          for (int e = 0; e < 8; e++) acc[k][e] *= c;
          const float *pr = ps + (size_t)i * bs;
          for (int t = 0; t < nvalid; t++) {
            const float w = pr[t];
            if (w == 0.f) continue;
            float v8[8];
            load8(reinterpret_cast<const T *>(vbase + t * S::kPitch) + ch * 8, v8);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[k][e] = fmaf(w, v8[e], acc[k][e]);
          }
        }
      }
      __syncthreads();
    }
    cp_async_wait<0>();

    // Output: normalised rows, or a split partial with its lse.
#pragma unroll
    for (int k = 0; k < kMaxIt; k++) {
      const int it = tid + k * nthr;
      if (it < items) {
        const int i = it / kChunks, ch = it % kChunks;
        if (i < nq) {
          const float l = l_s[i];
          const float inv = l > 0.f ? 1.f / l : 0.f;
          const int64_t row = row0 + t0 + i / p.group;
          const int qh = h * p.group + i % p.group;
          float *dst;
          if (p.nsplit > 1) {
            const size_t pi = ((size_t)seq * p.hq + qh) * p.nsplit + blockIdx.y;
            dst = p.part_o + pi * D + ch * 8;
            if (ch == 0) p.part_lse[pi] = l > 0.f ? m_s[i] + logf(l) : -INFINITY;
          } else {
            dst = p.out + ((size_t)row * p.hq + qh) * D + ch * 8;
          }
#pragma unroll
          for (int e = 0; e < 8; e++) dst[e] = acc[k][e] * inv;
        }
      }
    }

    if (p.accumulate) {
      // Second pass over K: each slot's probability summed over this tile's pairs.
      __syncthreads();
      for (int b = 0; b < b1; b++) {
        issue_block<T, D>(stage0, p.base + (size_t)ids[b] * p.block_bytes, bs);
        cp_async_commit();
        cp_async_wait<0>();
        for (int t = tid; t < bs; t += nthr) ps[t] = 0.f;  // ps reused as mass[bs]
        __syncthreads();
        const int nvalid = b == nblk - 1 ? last : bs;
        const int pos0 = b * bs;
        for (int x = tid; x < p.nq * bs; x += nthr) {
          const int i = x / bs, t = x % bs;
          if (t < nvalid && pos0 + t <= lim[i] && l_s[i] > 0.f) {
            const float s = dot_q_row<T, D>(qs + (size_t)i * D, stage0 + t * S::kPitch);
            atomicAdd(ps + t, __expf(s - m_s[i]) / l_s[i]);
          }
        }
        __syncthreads();
        for (int t = tid; t < nvalid; t += nthr)
          if (ps[t] != 0.f) atomicAdd(p.scores + (size_t)ids[b] * bs + t, ps[t]);
        __syncthreads();
      }
    }
  }
}

// Log-sum-exp merge of the split partials: one CTA per (sequence, query head).
template <int D>
__global__ void merge_kernel(AttnParams p) {
  const int sq = blockIdx.x;  // seq * hq + qh
  const float *lse = p.part_lse + (size_t)sq * p.nsplit;
  float M = -INFINITY;
  for (int s = 0; s < p.nsplit; s++) M = fmaxf(M, lse[s]);
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float num = 0.f, den = 0.f;
    if (M != -INFINITY)
      for (int s = 0; s < p.nsplit; s++) {
        if (lse[s] == -INFINITY) continue;
        const float w = __expf(lse[s] - M);
        num = fmaf(w, p.part_o[((size_t)sq * p.nsplit + s) * D + e], num);
        den += w;
      }
    p.out[(size_t)sq * D + e] = den > 0.f ? num / den : 0.f;
  }
}

// ---- KV write -----------------------------------------------------------------------------

struct WriteParams {
  uint8_t *base;
  float *scores;
  size_t block_bytes;
  int bs;
  int d;
  int64_t num_slots;
  const float *k;
  const float *v;
  const int64_t *slots;
  uint32_t n_rows;
};

// One warp per row; out-of-range slots are skipped (the host cannot read device slots). The
// slot's H2O score restarts at zero, as on the CPU.
template <typename T>
__global__ void write_kv_kernel(WriteParams p) {
  const uint32_t r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= p.n_rows) return;
  const int64_t slot = p.slots[r];
  if (slot < 0 || slot >= p.num_slots) return;
  uint8_t *blk = p.base + (size_t)(slot / p.bs) * p.block_bytes;
  const int o = (int)(slot % p.bs);
  T *kd = reinterpret_cast<T *>(blk) + (size_t)o * p.d;
  T *vd = reinterpret_cast<T *>(blk) + ((size_t)p.bs + o) * p.d;
  const float *ks = p.k + (size_t)r * p.d, *vs = p.v + (size_t)r * p.d;
  for (int e = lane; e < p.d; e += 32) {
    from_f32(ks[e], kd + e);
    from_f32(vs[e], vd + e);
  }
  if (lane == 0) p.scores[slot] = 0.f;  // a new token starts with no attention mass
}

struct WriteRowsParams {
  uint8_t *base;
  float *scores;
  size_t block_bytes;
  int bs, d, hkv;
  uint32_t num_blocks;
  const float *k;
  const float *v;
  const int32_t *q_indptr;  // NULL: one row per sequence
  const int32_t *rows, *lens, *seq_row, *seq_lens;
  int64_t stride;
  int stream_offset;
};

// CTA per (sequence, kv head), a warp per new row: the slot of the stream's position
// len - n + t comes from its block row, as rkv_attn_write_kv_rows' CPU path computes it.
template <typename T>
__global__ void write_kv_rows_kernel(WriteRowsParams p) {
  const int b = blockIdx.x, h = blockIdx.y;
  int64_t r0 = b, n = 1;
  if (p.q_indptr) {
    r0 = p.q_indptr[b];
    n = p.q_indptr[b + 1] - r0;
  }
  const int64_t row = (int64_t)p.seq_row[b] + p.stream_offset + h;
  const int64_t len = p.seq_lens ? p.seq_lens[b] : p.lens[row];
  const int32_t *ids = p.rows + row * p.stride;
  const int lane = threadIdx.x % 32, nw = blockDim.x / 32;
  for (int64_t t = threadIdx.x / 32; t < n; t += nw) {
    const int64_t pos = len - n + t;
    if (pos < 0) continue;
    const int32_t id = ids[pos / p.bs];
    if (id < 0 || (uint32_t)id >= p.num_blocks) continue;
    const int o = (int)(pos % p.bs);
    uint8_t *blk = p.base + (size_t)id * p.block_bytes;
    T *kd = reinterpret_cast<T *>(blk) + (size_t)o * p.d;
    T *vd = reinterpret_cast<T *>(blk) + ((size_t)p.bs + o) * p.d;
    const size_t src = ((size_t)(r0 + t) * p.hkv + h) * p.d;
    for (int e = lane; e < p.d; e += 32) {
      from_f32(p.k[src + e], kd + e);
      from_f32(p.v[src + e], vd + e);
    }
    if (lane == 0) p.scores[(int64_t)id * p.bs + o] = 0.f;
  }
}

// ---- host side ------------------------------------------------------------------------------

// Sticky errors (a kernel fault seen at a later launch) poison the backend: cuda_status.h.
#define ATTN_LAUNCH_CHECK(be, err)                                                               \
  do {                                                                                           \
    cudaError_t e_ = cudaGetLastError();                                                         \
    if (e_ != cudaSuccess)                                                                       \
      return rkvi_cuda_fail((be), (err), (int)e_, "attention cuda: launch", __FILE__, __LINE__); \
  } while (0)

#define ATTN_CUDA_TRY(be, err, expr)                                                             \
  do {                                                                                           \
    cudaError_t e_ = (expr);                                                                     \
    if (e_ != cudaSuccess)                                                                       \
      return rkvi_cuda_fail((be), (err), (int)e_, "attention cuda: " #expr, __FILE__, __LINE__); \
  } while (0)

size_t part_bytes(uint32_t seqs, uint32_t hq, uint32_t d, int nsplit) {
  return (size_t)seqs * hq * (size_t)nsplit * ((size_t)d + 1) * sizeof(float) + 256;
}

// Threads so that each holds at most kMaxIt (pair, chunk) items, at least 128 (callers check
// the kMaxThreads cap).
int pick_threads(int nq, int d) {
  const int items = nq * (d / 8);
  int t = (items + kMaxIt - 1) / kMaxIt;
  t = (t + 31) / 32 * 32;
  if (t < 128) t = 128;
  return t;
}

// What one CTA of attn_kernel<T, D> needs for a GQA group: query rows per tile, threads and
// dynamic shared memory, against the device's opt-in maximum.
struct KernelFit {
  int qt, threads, smem_optin;
  size_t smem;
};

template <typename T, int D>
rkv_status fit_kernel(rkv_backend *b, int G, int bs, bool prefill, KernelFit *f, char *err) {
  f->qt = prefill ? (G >= kPrefillPairs ? 1 : kPrefillPairs / G) : 1;
  const int nq = G * f->qt;
  f->threads = pick_threads(nq, D);
  if (f->threads > kMaxThreads || nq * (D / 8) > kMaxIt * f->threads)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED,
                     "attention cuda: GQA group %d too large for head_dim %d", G, D);
  ATTN_CUDA_TRY(
      b, err,
      cudaDeviceGetAttribute(&f->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, b->device));
  f->smem = Smem<T, D>::total(bs, nq);
  if (f->smem > (size_t)f->smem_optin)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED,
                     "attention cuda: %zu bytes of shared memory needed (GQA group %d, %s), "
                     "device allows %d",
                     f->smem, G, prefill ? "prefill" : "decode", f->smem_optin);
  return RKV_OK;
}

template <typename T, int D>
rkv_status launch_attn(rkv_kv_pool *pool, const rkv_attn_params *a, bool prefill, void *ws,
                       size_t ws_bytes, char *err) {
  rkv_backend *b = pool->backend;
  cudaStream_t st = static_cast<cudaStream_t>(b->stream);
  const int G = (int)(a->num_q_heads / a->num_kv_heads);
  AttnParams p{};
  p.base = static_cast<const uint8_t *>(pool->base);
  p.scores = pool->scores;
  p.block_bytes = pool->block_bytes;
  p.bs = (int)pool->layout.block_size;
  p.q = a->q;
  p.out = a->out;
  p.hq = (int)a->num_q_heads;
  p.hkv = (int)a->num_kv_heads;
  p.group = G;
  p.scale = a->scale;
  p.indptr = a->table.indptr;
  p.indices = a->table.indices;
  p.last_len = a->table.last_len;
  if (a->rows) {
    p.rows = a->rows->rows;
    p.lens = a->rows->lens;
    p.seq_row = a->rows->seq_row;
    p.seq_lens = a->rows->seq_lens;
    p.stride = a->rows->stride;
    p.stream_offset = (int)a->rows->stream_offset;
  }
  p.q_indptr = prefill ? a->q_indptr : nullptr;
  p.prefill = prefill ? 1 : 0;
  KernelFit f{};
  RKV_TRY((fit_kernel<T, D>(b, G, p.bs, prefill, &f, err)));
  p.qt = f.qt;
  p.nq = G * p.qt;
  p.accumulate = a->accumulate_scores ? 1 : 0;
  p.nsplit = 1;
  int sms = 132;
  ATTN_CUDA_TRY(b, err, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, b->device));
  // Only above the default 48 KB (prefill tiles, f32 at head_dim 256): decode shapes then make
  // no call outside the stream at all while a graph is being captured.
  // The attribute belongs to the function, not the launch: always the device's opt-in
  // maximum, so a concurrent or captured launch with a larger carve-out never finds it lowered.
  if (f.smem > 48u * 1024u)
    ATTN_CUDA_TRY(b, err,
                  cudaFuncSetAttribute(attn_kernel<T, D>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, f.smem_optin));
  const unsigned streams = a->rows ? a->num_seqs * a->num_kv_heads : (unsigned)a->table.num_streams;
  unsigned gy = 1;
  if (prefill) {
    // Enough CTAs in flight to fill the GPU twice over; each loops over its row tiles.
    gy = (unsigned)((2u * (unsigned)sms + streams - 1) / streams);
    if (gy < 1) gy = 1;
    if (gy > 64) gy = 64;
  } else if (!p.accumulate) {
    // Split-KV when batch x kv heads cannot fill the GPU, bounded by the workspace given.
    int want = (int)((2u * (unsigned)sms + streams - 1) / streams);
    if (want > kMaxSplits) want = kMaxSplits;
    while (want > 1 && (!ws || part_bytes(a->num_seqs, a->num_q_heads, D, want) > ws_bytes)) want--;
    if (want > 1) {
      p.nsplit = want;
      uintptr_t al = (reinterpret_cast<uintptr_t>(ws) + 255) & ~(uintptr_t)255;
      p.part_o = reinterpret_cast<float *>(al);
      p.part_lse = p.part_o + (size_t)a->num_seqs * a->num_q_heads * want * D;
      gy = (unsigned)want;
    }
  }
  if (gy > 65535) gy = 65535;
  attn_kernel<T, D><<<dim3(streams, gy), f.threads, f.smem, st>>>(p);
  ATTN_LAUNCH_CHECK(b, err);
  if (p.nsplit > 1) {
    constexpr int kMergeThreads = D < 128 ? D : 128;
    merge_kernel<D><<<a->num_seqs * a->num_q_heads, kMergeThreads, 0, st>>>(p);
    ATTN_LAUNCH_CHECK(b, err);
  }
  return RKV_OK;
}

template <typename T>
rkv_status dispatch_d(rkv_kv_pool *pool, const rkv_attn_params *a, bool prefill, void *ws,
                      size_t ws_bytes, char *err) {
  switch (pool->layout.head_dim) {
    case 64:
      return launch_attn<T, 64>(pool, a, prefill, ws, ws_bytes, err);
    case 128:
      return launch_attn<T, 128>(pool, a, prefill, ws, ws_bytes, err);
    case 256:
      return launch_attn<T, 256>(pool, a, prefill, ws, ws_bytes, err);
    default:
      return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: unsupported head_dim: %u",
                       pool->layout.head_dim);
  }
}

rkv_status dispatch(rkv_kv_pool *pool, const rkv_attn_params *a, bool prefill, void *ws,
                    size_t ws_bytes, char *err) {
  rkvi_cuda::DeviceScope dev_scope(pool->backend);
  if (pool->backend->poisoned)
    return rkvi_fail(err, RKV_ERR_CUDA, "attention cuda: CUDA context poisoned earlier");
  if (pool->layout.block_size != 16 && pool->layout.block_size != 32)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: unsupported block_size: %u",
                     pool->layout.block_size);
  if (a->num_seqs == 0) return RKV_OK;
  switch (pool->layout.dtype) {
    case RKV_DTYPE_F32:
      return dispatch_d<float>(pool, a, prefill, ws, ws_bytes, err);
    case RKV_DTYPE_F16:
      return dispatch_d<__half>(pool, a, prefill, ws, ws_bytes, err);
    case RKV_DTYPE_BF16:
      return dispatch_d<__nv_bfloat16>(pool, a, prefill, ws, ws_bytes, err);
    default:
      return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: unsupported dtype: %d",
                       (int)pool->layout.dtype);
  }
}

template <typename T>
rkv_status check_heads_d(rkv_kv_pool *pool, int G, char *err) {
  rkv_backend *b = pool->backend;
  const int bs = (int)pool->layout.block_size;
  for (int prefill = 0; prefill < 2; prefill++) {
    KernelFit f{};
    rkv_status st = RKV_OK;
    switch (pool->layout.head_dim) {
      case 64:
        st = fit_kernel<T, 64>(b, G, bs, prefill, &f, err);
        break;
      case 128:
        st = fit_kernel<T, 128>(b, G, bs, prefill, &f, err);
        break;
      default:
        st = fit_kernel<T, 256>(b, G, bs, prefill, &f, err);
        break;
    }
    if (st != RKV_OK) return st;
  }
  return RKV_OK;
}

}  // namespace

extern "C" {

rkv_status rkvi_attn_cuda_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                 size_t ws_bytes, char *err) {
  return dispatch(pool, p, false, ws, ws_bytes, err);
}

rkv_status rkvi_attn_cuda_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                  size_t ws_bytes, char *err) {
  return dispatch(pool, p, true, ws, ws_bytes, err);
}

rkv_status rkvi_attn_cuda_check_heads(rkv_kv_pool *pool, uint32_t num_q_heads,
                                      uint32_t num_kv_heads, char *err) {
  rkvi_cuda::DeviceScope dev_scope(pool->backend);
  if (pool->backend->poisoned)
    return rkvi_fail(err, RKV_ERR_CUDA, "attention cuda: CUDA context poisoned earlier");
  const int G = (int)(num_q_heads / num_kv_heads);
  switch (pool->layout.dtype) {
    case RKV_DTYPE_F32:
      return check_heads_d<float>(pool, G, err);
    case RKV_DTYPE_F16:
      return check_heads_d<__half>(pool, G, err);
    default:
      return check_heads_d<__nv_bfloat16>(pool, G, err);
  }
}

rkv_status rkvi_attn_cuda_workspace_bound(const rkv_kv_pool *pool, uint32_t max_seqs,
                                          uint32_t num_q_heads, uint32_t head_dim, int64_t max_len,
                                          size_t *bytes) {
  if (!pool || !bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  // Split-KV partials: more splits than blocks never help.
  const int64_t blocks = (max_len + pool->layout.block_size - 1) / pool->layout.block_size;
  const int splits = blocks < kMaxSplits ? (int)blocks : kMaxSplits;
  if (splits <= 1 || max_seqs == 0) return RKV_OK;
  const double need = (double)max_seqs * num_q_heads * splits * ((double)head_dim + 1) * 4 + 256;
  if (need > 1e18) return RKV_ERR_INVALID_ARG;
  *bytes = part_bytes(max_seqs, num_q_heads, head_dim, splits);
  return RKV_OK;
}

rkv_status rkvi_attn_cuda_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                                   const int64_t *slots, uint32_t n_rows, char *err) {
  rkv_backend *b = pool->backend;
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(err, RKV_ERR_CUDA, "attention cuda: context poisoned earlier");
  if (n_rows == 0) return RKV_OK;
  WriteParams p{};
  p.base = static_cast<uint8_t *>(pool->base);
  p.scores = pool->scores;
  p.block_bytes = pool->block_bytes;
  p.bs = (int)pool->layout.block_size;
  p.d = (int)pool->layout.head_dim;
  p.num_slots = (int64_t)pool->num_blocks * pool->layout.block_size;
  p.k = k;
  p.v = v;
  p.slots = slots;
  p.n_rows = n_rows;
  cudaStream_t st = static_cast<cudaStream_t>(b->stream);
  const unsigned grid = (n_rows + 7) / 8;
  switch (pool->layout.dtype) {
    case RKV_DTYPE_F32:
      write_kv_kernel<float><<<grid, 256, 0, st>>>(p);
      break;
    case RKV_DTYPE_F16:
      write_kv_kernel<__half><<<grid, 256, 0, st>>>(p);
      break;
    case RKV_DTYPE_BF16:
      write_kv_kernel<__nv_bfloat16><<<grid, 256, 0, st>>>(p);
      break;
    default:
      return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: unsupported dtype: %d",
                       (int)pool->layout.dtype);
  }
  ATTN_LAUNCH_CHECK(b, err);
  return RKV_OK;
}

rkv_status rkvi_attn_cuda_write_kv_rows(rkv_kv_pool *pool, const float *k, const float *v,
                                        uint32_t num_seqs, uint32_t num_kv_heads,
                                        const int32_t *q_indptr, const rkv_block_rows *rows,
                                        char *err) {
  rkv_backend *b = pool->backend;
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(err, RKV_ERR_CUDA, "attention cuda: context poisoned earlier");
  if (num_kv_heads > 65535)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: %u kv heads", num_kv_heads);
  WriteRowsParams p{};
  p.base = static_cast<uint8_t *>(pool->base);
  p.scores = pool->scores;
  p.block_bytes = pool->block_bytes;
  p.bs = (int)pool->layout.block_size;
  p.d = (int)pool->layout.head_dim;
  p.hkv = (int)num_kv_heads;
  p.num_blocks = pool->num_blocks;
  p.k = k;
  p.v = v;
  p.q_indptr = q_indptr;
  p.rows = rows->rows;
  p.lens = rows->lens;
  p.seq_row = rows->seq_row;
  p.seq_lens = rows->seq_lens;
  p.stride = rows->stride;
  p.stream_offset = (int)rows->stream_offset;
  cudaStream_t st = static_cast<cudaStream_t>(b->stream);
  const dim3 grid(num_seqs, num_kv_heads);
  const unsigned threads = q_indptr ? 256 : 32;
  switch (pool->layout.dtype) {
    case RKV_DTYPE_F32:
      write_kv_rows_kernel<float><<<grid, threads, 0, st>>>(p);
      break;
    case RKV_DTYPE_F16:
      write_kv_rows_kernel<__half><<<grid, threads, 0, st>>>(p);
      break;
    case RKV_DTYPE_BF16:
      write_kv_rows_kernel<__nv_bfloat16><<<grid, threads, 0, st>>>(p);
      break;
    default:
      return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "attention cuda: unsupported dtype: %d",
                       (int)pool->layout.dtype);
  }
  ATTN_LAUNCH_CHECK(b, err);
  return RKV_OK;
}

}  // extern "C"
