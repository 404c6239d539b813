// GPU eviction: R-KV / SnapKV / H2O / StreamingLLM selection and the compaction moves for a
// batch of streams whose keys live in a CUDA KV pool (public API in rkv/evict_cuda.h; the
// semantics are docs/EVICTION.md, "The algorithm, exactly", and the CPU path in score_rkv.c /
// select.c, which the GPU tests compare against).
//
// Kernels, in launch order (one launch each for the whole batch, all on the backend stream):
//   1. prep        one warp per key: 1 / (||k|| + 1e-8), zero the column sums, j*(i) = -1
//   2. logits      window queries x candidate keys, GQA max on raw logits (f64 accumulate)
//   3. sim         64x64 tiles of K^K^T in f32 (SIMT), diagonal zeroed; per tile: column
//                  sums (fixed point, so the sum is order-independent and deterministic) and
//                  the largest j with S > T per row (atomicMax)
//   4. finalize    one CTA per stream: softmax rows, mean, max-pool, the j*(i) correction,
//                  softmax over n, joint score, radix top-k with the lower-position tie rule,
//                  kept positions ascending
//   5. gather      kept K/V rows and scores from the old rows into scratch
//      clear       zero the scores of freed blocks and of new-row slots past the budget
//   6. scatter     scratch into the new rows (a separate launch: a new row may reuse an old
//                  block of any stream of the batch, so every read precedes every write)
// Scores are f64 from step 4 on, like the CPU reference, so both rank the same candidates.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>

#include "evict_cuda_internal.h"

// rkv_internal.h has no extern "C" of its own: give its helpers C linkage here.
extern "C" {
#include "rkv_internal.h"
}
#include "backend_impl.h"
#include "cuda_device.cuh"
#include "cuda_dtype.cuh"
#include "cuda_status.h"

namespace {

constexpr int kSimTile = 64;      // rows/cols of one similarity tile
constexpr int kSimK = 32;         // reduction chunk of the tile kernel
constexpr int kLogitKeys = 32;    // keys per CTA of the logits kernel
constexpr int kFinThreads = 512;  // finalize CTA
constexpr int kMaxWindow = 256;   // window rows the finalize CTA keeps stats for
constexpr int kMoveWarps = 8;     // rows per CTA of the move kernels
constexpr int kMaxSimLen = RKVI_EVICT_CUDA_MAX_SIM_LEN;  // grid.y of the similarity tiles
static_assert(kMaxSimLen == 65535 * kSimTile, "the evictor's limit is the similarity grid's");
constexpr double kFixScale = 4294967296.0;  // 2^32: fixed-point column sums

using rkvi_cuda::load8;

// ---- parameters -----------------------------------------------------------------------------

struct EvParams {
  uint8_t *base;  // pool base
  float *scores;  // pool per-slot scores
  size_t block_bytes;
  size_t row_bytes;  // head_dim * dtype size
  int bs;            // block size
  int d;             // head dim
  const rkv_evict_cuda_stream *streams;
  const int32_t *old_blocks;
  const int32_t *new_blocks;
  const float *qwin;
  int32_t *kept_out;            // optional [S][budget]
  const int32_t *clear_blocks;  // optional: blocks whose scores are zeroed
  int n_clear;
  bool tensor_cores;  // RKV_EVICT_CUDA_TENSOR_CORES
  int policy;
  int budget;
  int window;
  int kernel;
  double lambda;
  float threshold;
  int sinks;
  int group;
  int max_len;
  int gran;              // rkv_evict_granularity
  int layers, kv_heads;  // a coarser granularity: streams come as whole sequences of these
  double scale;          // 1 / sqrt(d)
  // workspace, each region [S][...]
  float *invnorm;              // [S][L]
  unsigned long long *colsum;  // [S][L] fixed point, 2^-32 units
  int *jstar;                  // [S][L]
  double *logits;              // [S][window][L]
  double *imp0;                // [S][L]
  double *imp;                 // [S][L]
  double *z;                   // [S][L]
  int32_t *kept;               // [S][budget]
  uint8_t *scratch;            // [S][budget][2][row_bytes]
  float *scratch_scores;       // [S][budget]
};

// The stream's n when it is compressed by this call, else 0.
__device__ __forceinline__ int active_len(const EvParams &p, int s) {
  int n = p.streams[s].old_len;
  return (n > p.budget && n <= p.max_len) ? n : 0;
}

__device__ __forceinline__ int64_t old_slot(const EvParams &p, const rkv_evict_cuda_stream &st,
                                            int pos) {
  return (int64_t)p.old_blocks[st.old_offset + pos / p.bs] * p.bs + pos % p.bs;
}

__device__ __forceinline__ int64_t new_slot(const EvParams &p, const rkv_evict_cuda_stream &st,
                                            int pos) {
  return (int64_t)p.new_blocks[st.new_offset + pos / p.bs] * p.bs + pos % p.bs;
}

template <typename T>
__device__ __forceinline__ const T *key_row(const EvParams &p, int64_t slot) {
  int64_t blk = slot / p.bs, off = slot % p.bs;
  return reinterpret_cast<const T *>(p.base + (size_t)blk * p.block_bytes +
                                     (size_t)off * p.row_bytes);
}

// ---- 1. prep --------------------------------------------------------------------------------

template <typename T>
__global__ void prep_kernel(EvParams p) {
  const int s = blockIdx.y;
  const int n = active_len(p, s);
  const int lane = threadIdx.x & 31;
  const int j = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (j >= n) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const T *k = key_row<T>(p, old_slot(p, st, j));
  double ss = 0.0;
  for (int e = lane * 8; e < p.d; e += 32 * 8) {
    float v[8];
    load8(k + e, v);
#pragma unroll
    for (int t = 0; t < 8; t++) ss += (double)v[t] * (double)v[t];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (lane == 0) {
    const size_t i = (size_t)s * p.max_len + j;
    p.invnorm[i] = (float)(1.0 / (sqrt(ss) + 1e-8));
    p.colsum[i] = 0ull;
    p.jstar[i] = -1;
  }
}

// ---- 2. logits ------------------------------------------------------------------------------

// CTA: kLogitKeys candidate keys x all window rows. Keys staged in shared memory (row pitch
// d + 1 floats: lanes read different keys at the same e without bank conflicts); the window
// queries are read through L1 at warp-uniform addresses (broadcast).
template <typename T>
__global__ void logits_kernel(EvParams p) {
  extern __shared__ float ks[];  // [kLogitKeys][d + 1]
  const int s = blockIdx.y;
  const int n = active_len(p, s);
  const int nc = n - p.window;
  const int j0 = blockIdx.x * kLogitKeys;
  if (j0 >= nc) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const int pitch = p.d + 1;
  const int chunks = p.d / 8;
  for (int c = threadIdx.x; c < kLogitKeys * chunks; c += blockDim.x) {
    const int r = c / chunks, e = (c % chunks) * 8;
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (j0 + r < nc) load8(key_row<T>(p, old_slot(p, st, j0 + r)) + e, v);
#pragma unroll
    for (int t = 0; t < 8; t++) ks[r * pitch + e + t] = v[t];
  }
  __syncthreads();
  const int jj = threadIdx.x % kLogitKeys;
  const int j = j0 + jj;
  if (j >= nc) return;
  const float *q = p.qwin + st.qwin_offset;
  const float *kr = ks + jj * pitch;
  for (int a = threadIdx.x / kLogitKeys; a < p.window; a += blockDim.x / kLogitKeys) {
    double best = -INFINITY;  // as the CPU: a NaN logit never wins the max over the group
    for (int g = 0; g < p.group; g++) {
      const float *qr = q + ((size_t)g * p.window + a) * p.d;
      double acc = 0.0;
      for (int e = 0; e < p.d; e++) acc += (double)__ldg(qr + e) * (double)kr[e];
      acc *= p.scale;
      if (acc > best) best = acc;
    }
    p.logits[((size_t)s * p.window + a) * p.max_len + j] = best;
  }
}

// ---- 3. similarity tiles --------------------------------------------------------------------

// 256 threads, 16 x 16, each a 4 x 4 register tile of S for rows i0 + ty*4 + r, columns
// j0 + tx*4 + c. Keys are normalised as they are staged (k * inv rounded to f32, as the CPU
// reference normalises in place), so S is a plain f32 dot of normalised rows.
// TC = true (RKV_EVICT_CUDA_TENSOR_CORES): the products run on tensor cores as three TF32
// products per pair of values (hi*hi + hi*lo + lo*hi, where hi = tf32(x), lo = tf32(x - hi)),
// which keeps about 21 mantissa bits, close to f32; 8 warps each own a 16 x 32 strip, the
// accumulators go through shared memory to the same epilogue.
template <typename T, bool TC>
__global__ void __launch_bounds__(256) sim_kernel(EvParams p) {
  __shared__ __align__(32) float as[kSimK][kSimTile + 4];
  __shared__ __align__(32) float bs[kSimK][kSimTile + 4];
  __shared__ __align__(32) float ct[TC ? kSimTile : 1][kSimTile + 4];
  __shared__ double red[16][kSimTile];
  const int s = blockIdx.z;
  const int n = active_len(p, s);
  const int i0 = blockIdx.y * kSimTile, j0 = blockIdx.x * kSimTile;
  if (i0 >= n || j0 >= n) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const float *inv = p.invnorm + (size_t)s * p.max_len;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;

  // Loader mapping: 64 rows x 32 columns = 256 threads x 8 elements.
  const int lr = threadIdx.x / 4, lc = (threadIdx.x % 4) * 8;
  const T *arow = nullptr, *brow = nullptr;
  float ainv = 0.f, binv = 0.f;
  if (i0 + lr < n) {
    arow = key_row<T>(p, old_slot(p, st, i0 + lr));
    ainv = inv[i0 + lr];
  }
  if (j0 + lr < n) {
    brow = key_row<T>(p, old_slot(p, st, j0 + lr));
    binv = inv[j0 + lr];
  }

  float acc[4][4];
#pragma unroll
  for (int r = 0; r < 4; r++)
#pragma unroll
    for (int c = 0; c < 4; c++) acc[r][c] = 0.f;
  namespace wm = nvcuda::wmma;
  using FragA = wm::fragment<wm::matrix_a, 16, 16, 8, wm::precision::tf32, wm::col_major>;
  using FragB = wm::fragment<wm::matrix_b, 16, 16, 8, wm::precision::tf32, wm::row_major>;
  using FragC = wm::fragment<wm::accumulator, 16, 16, 8, float>;
  const int warp = threadIdx.x / 32, wr = (warp / 2) * 16, wc = (warp % 2) * 32;
  FragC cf[2];
  if constexpr (TC) {
    wm::fill_fragment(cf[0], 0.f);
    wm::fill_fragment(cf[1], 0.f);
  }

  for (int e0 = 0; e0 < p.d; e0 += kSimK) {
    float va[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (arow) load8(arow + e0 + lc, va);
    if (brow) load8(brow + e0 + lc, vb);
#pragma unroll
    for (int t = 0; t < 8; t++) {
      as[lc + t][lr] = va[t] * ainv;
      bs[lc + t][lr] = vb[t] * binv;
    }
    __syncthreads();
    if constexpr (TC) {
#pragma unroll
      for (int k = 0; k < kSimK; k += 8) {
        // A (rows i, depth k) is as[k][i]: column-major; B (depth k, cols j) is bs[k][j].
        FragA ah, al;
        wm::load_matrix_sync(ah, &as[k][wr], kSimTile + 4);
#pragma unroll
        for (int t = 0; t < ah.num_elements; t++) {
          const float x = ah.x[t], hi = wm::__float_to_tf32(x);
          ah.x[t] = hi;
          al.x[t] = wm::__float_to_tf32(x - hi);
        }
#pragma unroll
        for (int c = 0; c < 2; c++) {
          FragB bh, bl;
          wm::load_matrix_sync(bh, &bs[k][wc + c * 16], kSimTile + 4);
#pragma unroll
          for (int t = 0; t < bh.num_elements; t++) {
            const float x = bh.x[t], hi = wm::__float_to_tf32(x);
            bh.x[t] = hi;
            bl.x[t] = wm::__float_to_tf32(x - hi);
          }
          wm::mma_sync(cf[c], al, bh, cf[c]);
          wm::mma_sync(cf[c], ah, bl, cf[c]);
          wm::mma_sync(cf[c], ah, bh, cf[c]);
        }
      }
    } else {
#pragma unroll 8
      for (int e = 0; e < kSimK; e++) {
        float4 a4 = *reinterpret_cast<const float4 *>(&as[e][ty * 4]);
        float4 b4 = *reinterpret_cast<const float4 *>(&bs[e][tx * 4]);
        float av[4] = {a4.x, a4.y, a4.z, a4.w}, bv[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
          for (int c = 0; c < 4; c++) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
      }
    }
    __syncthreads();
  }
  if constexpr (TC) {
    wm::store_matrix_sync(&ct[wr][wc], cf[0], kSimTile + 4, wm::mem_row_major);
    wm::store_matrix_sync(&ct[wr][wc + 16], cf[1], kSimTile + 4, wm::mem_row_major);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
      for (int c = 0; c < 4; c++) acc[r][c] = ct[ty * 4 + r][tx * 4 + c];
  }

  // Epilogue: zero the diagonal, then per row the largest j with S > T, per column the sum.
  double colpart[4] = {0, 0, 0, 0};
  int *jstar = p.jstar + (size_t)s * p.max_len;
#pragma unroll
  for (int r = 0; r < 4; r++) {
    const int i = i0 + ty * 4 + r;
    int best = -1;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int j = j0 + tx * 4 + c;
      float v = (i == j) ? 0.f : acc[r][c];
      if (i < n && j < n) {
        colpart[c] += (double)v;
        if (v > p.threshold) best = j;  // c ascending: the last hit is the largest j
      }
    }
    // The 16 threads of one ty are the 16 consecutive lanes of a half warp.
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    if (tx == 0 && i < n && best >= 0) atomicMax(jstar + i, best);
  }
#pragma unroll
  for (int c = 0; c < 4; c++) red[ty][tx * 4 + c] = colpart[c];
  __syncthreads();
  if (threadIdx.x < kSimTile) {
    const int j = j0 + threadIdx.x;
    if (j < n) {
      double sum = 0.0;
      for (int r = 0; r < 16; r++) sum += red[r][threadIdx.x];
      long long fx = __double2ll_rn(sum * kFixScale);
      atomicAdd(p.colsum + (size_t)s * p.max_len + j, (unsigned long long)fx);
    }
  }
}

// ---- 4. finalize ----------------------------------------------------------------------------

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_max(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct FinShared {
  double wred[kFinThreads / 32];
  double row_max[kMaxWindow];
  double row_inv[kMaxWindow];
  unsigned int hist[256];
  int wcount[kFinThreads / 32];
  unsigned long long prefix;
  int need;
  int carry;
};

// Block-wide reductions (every thread gets the result).
__device__ double block_sum(FinShared &sh, double v) {
  v = warp_sum(v);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh.wred[w] = v;
  __syncthreads();
  double t = 0.0;
  for (int i = 0; i < (int)(blockDim.x / 32); i++) t += sh.wred[i];  // fixed order
  return t;
}
__device__ double block_max(FinShared &sh, double v) {
  v = warp_max(v);
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) sh.wred[w] = v;
  __syncthreads();
  double t = -INFINITY;
  for (int i = 0; i < (int)(blockDim.x / 32); i++) t = fmax(t, sh.wred[i]);
  return t;
}

// Exclusive prefix count of `flag` over the block in thread order; returns the thread's
// offset and adds the block total to sh.carry (read it after the call, before the next).
__device__ int block_scan(FinShared &sh, int flag) {
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  const int in_warp = __popc(ballot & ((1u << lane) - 1u));
  __syncthreads();
  if (lane == 0) sh.wcount[w] = __popc(ballot);
  __syncthreads();
  int before = sh.carry;
  for (int i = 0; i < w; i++) before += sh.wcount[i];
  __syncthreads();
  if (threadIdx.x == blockDim.x - 1) sh.carry = before + in_warp + flag;
  __syncthreads();
  return before + in_warp;
}

// Order-preserving map of a double to an unsigned key (NaN ranks below everything; -0 and +0
// are one key, as they compare equal on the CPU).
__device__ __forceinline__ unsigned long long order_key(double v) {
  if (v != v) v = -INFINITY;
  if (v == 0.0) v = 0.0;
  unsigned long long u = (unsigned long long)__double_as_longlong(v);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

// What one launch of finalize_kernel does: a stream granularity runs both phases in one
// launch; a coarser one scores, aggregates each group's scores (group_kernel), then selects.
constexpr int kPhaseScore = 1;
constexpr int kPhaseSelect = 2;

template <typename T>
__global__ void __launch_bounds__(kFinThreads) finalize_kernel(EvParams p, int phase) {
  __shared__ FinShared sh;
  const int s = blockIdx.x;
  const int n = active_len(p, s);
  if (n == 0) return;
  const int tid = threadIdx.x, nthr = blockDim.x;
  const int B = p.budget, W = p.window;
  int32_t *kept = p.kept + (size_t)s * B;
  if (tid == 0) sh.carry = 0;

  if (p.policy == RKV_EVICT_STREAMING) {
    if (!(phase & kPhaseSelect)) return;
    const int recent = B - p.sinks;
    for (int i = tid; i < B; i += nthr) kept[i] = i < p.sinks ? i : n - recent + (i - p.sinks);
  } else {
    const int nc = n - W, kc = B - W;
    const size_t off = (size_t)s * p.max_len;
    double *z = p.z + off;
    const rkv_evict_cuda_stream st = p.streams[s];
    if (!(phase & kPhaseScore)) {
      // z holds the group's aggregate (group_kernel)
    } else if (p.policy == RKV_EVICT_H2O) {
      for (int j = tid; j < nc; j += nthr) z[j] = (double)p.scores[old_slot(p, st, j)];
    } else {
      // Steps 1-2: softmax of each window row over the candidates (a warp per row).
      const double *lg = p.logits + (size_t)s * W * p.max_len;
      const int w = tid / 32, lane = tid % 32, nw = nthr / 32;
      for (int a = w; a < W; a += nw) {
        const double *row = lg + (size_t)a * p.max_len;
        double mx = -INFINITY;
        for (int j = lane; j < nc; j += 32) mx = fmax(mx, row[j]);
        mx = warp_max(mx);
        double sum = 0.0;
        for (int j = lane; j < nc; j += 32) sum += exp(row[j] - mx);
        sum = warp_sum(sum);
        if (lane == 0) {
          sh.row_max[a] = mx;
          sh.row_inv[a] = 1.0 / sum;
        }
      }
      __syncthreads();
      double *imp0 = p.imp0 + off, *imp = p.imp + off;
      for (int j = tid; j < nc; j += nthr) {
        double acc = 0.0;
        for (int a = 0; a < W; a++)
          acc += exp(lg[(size_t)a * p.max_len + j] - sh.row_max[a]) * sh.row_inv[a];
        imp0[j] = acc / (double)W;
      }
      __syncthreads();
      const int h = p.kernel / 2;
      for (int j = tid; j < nc; j += nthr) {
        const int lo = j - h < 0 ? 0 : j - h, hi = j + h >= nc ? nc - 1 : j + h;
        double m = imp0[lo];
        for (int t = lo + 1; t <= hi; t++) m = fmax(m, imp0[t]);
        imp[j] = m;
      }
      if (p.policy == RKV_EVICT_SNAPKV) {
        for (int j = tid; j < nc; j += nthr) z[j] = imp[j];
      } else {
        // R-KV: check_params refused full and rkv_evict_params_validate unknown policies.
        // Step 3: remove each row's S[i][j*(i)] from its column (fixed point, so the
        // result does not depend on the order of the atomics).
        unsigned long long *col = p.colsum + off;
        const int *js = p.jstar + off;
        const float *inv = p.invnorm + off;
        for (int i = tid; i < n; i += nthr) {
          int jj = js[i] < 0 ? 0 : js[i];
          if (jj == i) continue;  // S[i][i] is already 0
          const T *ki = key_row<T>(p, old_slot(p, st, i));
          const T *kj = key_row<T>(p, old_slot(p, st, jj));
          const float fi = inv[i], fj = inv[jj];
          float dot = 0.f;
          for (int e = 0; e < p.d; e += 8) {
            float a8[8], b8[8];
            load8(ki + e, a8);
            load8(kj + e, b8);
#pragma unroll
            for (int t = 0; t < 8; t++) dot = fmaf(a8[t] * fi, b8[t] * fj, dot);
          }
          long long fx = __double2ll_rn((double)dot * kFixScale);
          atomicAdd(col + jj, (unsigned long long)(-fx));
        }
        __syncthreads();
        // r = column mean; R = softmax over all n; Z over the candidates. imp0 is free now
        // and holds r.
        double mx = -INFINITY;
        for (int j = tid; j < n; j += nthr) {
          double r = (double)(long long)__ldcg(col + j) / kFixScale / (double)n;
          imp0[j] = r;
          mx = fmax(mx, r);
        }
        mx = block_max(sh, mx);
        double sum = 0.0;
        for (int j = tid; j < n; j += nthr) sum += exp(imp0[j] - mx);
        sum = block_sum(sh, sum);
        const double lam = p.lambda;
        for (int j = tid; j < nc; j += nthr) {
          double R = exp(imp0[j] - mx) / sum;
          z[j] = lam * imp[j] - (1.0 - lam) * R;
        }
      }
    }
    if (!(phase & kPhaseSelect)) return;
    __syncthreads();

    // Step 5: the kc-th largest key by an 8-bit radix select over the candidates' scores.
    if (tid == 0) {
      sh.prefix = 0ull;
      sh.need = kc;
    }
    unsigned long long mask = 0ull;
    for (int shift = 56; shift >= 0 && kc > 0; shift -= 8) {
      for (int b = tid; b < 256; b += nthr) sh.hist[b] = 0u;
      __syncthreads();
      const unsigned long long prefix = sh.prefix;
      for (int j = tid; j < nc; j += nthr) {
        unsigned long long k = order_key(z[j]);
        if ((k & mask) == prefix) atomicAdd(&sh.hist[(k >> shift) & 255u], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        int need = sh.need;
        for (int b = 255; b >= 0; b--) {
          int c = (int)sh.hist[b];
          if (c >= need) {
            sh.prefix = prefix | ((unsigned long long)b << shift);
            break;
          }
          need -= c;
        }
        sh.need = need;
      }
      mask |= 255ull << shift;
      __syncthreads();
    }
    // Keep every candidate above the threshold key and the first `need` (lowest positions)
    // equal to it; then the window. Positions ascending by a running block scan.
    const unsigned long long thr = sh.prefix;
    const int need_eq = sh.need;
    __syncthreads();
    // First pass: rank the ties in position order.
    if (tid == 0) sh.carry = 0;
    __syncthreads();
    const int rounds = (n + nthr - 1) / nthr;
    for (int r = 0; r < rounds; r++) {
      const int j = r * nthr + tid;
      int eq = 0;
      if (kc > 0 && j < nc) eq = order_key(z[j]) == thr;
      const int rank = block_scan(sh, eq);
      // Ties beyond need_eq lose; mark kept flags in imp0 is not needed: recompute below.
      if (eq) p.imp0[off + j] = rank < need_eq ? 1.0 : 0.0;
    }
    __syncthreads();
    if (tid == 0) sh.carry = 0;
    __syncthreads();
    for (int r = 0; r < rounds; r++) {
      const int j = r * nthr + tid;
      int keep = 0;
      if (j < nc) {
        if (kc > 0) {
          unsigned long long k = order_key(z[j]);
          keep = k > thr || (k == thr && p.imp0[off + j] != 0.0);
        }
      } else if (j < n) {
        keep = 1;
      }
      const int idx = block_scan(sh, keep);
      if (keep && idx < B) kept[idx] = j;
    }
  }
  __syncthreads();
  if (p.kept_out)
    for (int i = tid; i < B; i += nthr) p.kept_out[(size_t)s * B + i] = kept[i];
}

// ---- 4b. a coarser granularity: one score per group ---------------------------------------

// One thread per candidate position of one group: the sum over the group's layers of the
// mean over its heads of the members' scores, added in the CPU's order (heads ascending, then
// layers ascending; sum then one division, docs/EVICTION.md), so the aggregate is the CPU's
// bit for bit for equal member scores. Written back into every member's z: each member then
// selects the same positions. Reads of a position happen before its writes, in one thread.
// Groups per sequence at a coarser granularity: one per layer, per kv head, or one.
__host__ __device__ inline int groups_per_seq(const EvParams &p) {
  return p.gran == RKV_EVICT_GRAN_LAYER    ? p.layers
         : p.gran == RKV_EVICT_GRAN_KVHEAD ? p.kv_heads
                                           : 1;
}

__global__ void group_kernel(EvParams p) {
  const int per_seq = p.layers * p.kv_heads, groups = groups_per_seq(p);
  const int seq = blockIdx.y / groups, k = blockIdx.y % groups;
  int l0 = 0, l1 = p.layers, h0 = 0, h1 = p.kv_heads;
  if (p.gran == RKV_EVICT_GRAN_LAYER) l0 = k, l1 = k + 1;
  if (p.gran == RKV_EVICT_GRAN_KVHEAD) h0 = k, h1 = k + 1;
  const int first = seq * per_seq;
  const int n = active_len(p, first + l0 * p.kv_heads + h0);
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (n == 0 || j >= n - p.window) return;
  const double heads = (double)(h1 - h0);
  double total = 0.0;
  for (int l = l0; l < l1; l++) {
    double lay = 0.0;
    for (int h = h0; h < h1; h++) lay += p.z[(size_t)(first + l * p.kv_heads + h) * p.max_len + j];
    total += lay / heads;
  }
  for (int l = l0; l < l1; l++)
    for (int h = h0; h < h1; h++) p.z[(size_t)(first + l * p.kv_heads + h) * p.max_len + j] = total;
}

// ---- 5/6. compaction moves ------------------------------------------------------------------

__device__ __forceinline__ uint8_t *slot_k(const EvParams &p, int64_t slot) {
  return p.base + (size_t)(slot / p.bs) * p.block_bytes + (size_t)(slot % p.bs) * p.row_bytes;
}

__device__ __forceinline__ void copy_row(uint8_t *dst, const uint8_t *src, size_t bytes, int lane) {
  const uint4 *s4 = reinterpret_cast<const uint4 *>(src);
  uint4 *d4 = reinterpret_cast<uint4 *>(dst);
  for (size_t w = lane; w < bytes / 16; w += 32) d4[w] = s4[w];
}

// One warp per kept token: K row, V row and score into scratch. A token already in place
// (same slot before and after) is skipped here and in scatter.
__global__ void gather_kernel(EvParams p) {
  const int s = blockIdx.y;
  const int n = active_len(p, s);
  const int i = blockIdx.x * kMoveWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n == 0 || i >= p.budget) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const int pos = p.kept[(size_t)s * p.budget + i];
  const int64_t src = old_slot(p, st, pos), dst = new_slot(p, st, i);
  if (lane == 0) p.scratch_scores[(size_t)s * p.budget + i] = p.scores[src];
  if (src == dst) return;
  const size_t vofs = (size_t)p.bs * p.row_bytes;
  uint8_t *scr = p.scratch + ((size_t)s * p.budget + i) * 2 * p.row_bytes;
  const uint8_t *k = slot_k(p, src);
  copy_row(scr, k, p.row_bytes, lane);
  copy_row(scr + p.row_bytes, k + vofs, p.row_bytes, lane);
}

// Between gather and scatter: zero the per-slot scores of the caller's freed blocks (CTAs
// below n_clear) and of each new row's slots past the budget, so a reused slot starts at zero
// (as the CPU path does). Kept tokens get their scores back in scatter.
__global__ void clear_kernel(EvParams p) {
  const int c = blockIdx.x;
  if (c < p.n_clear) {
    const int64_t base = (int64_t)p.clear_blocks[c] * p.bs;
    for (int t = threadIdx.x; t < p.bs; t += blockDim.x) p.scores[base + t] = 0.f;
    return;
  }
  const int s = c - p.n_clear;
  if (active_len(p, s) == 0) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const int end = (p.budget + p.bs - 1) / p.bs * p.bs;
  for (int pos = p.budget + threadIdx.x; pos < end; pos += blockDim.x)
    p.scores[new_slot(p, st, pos)] = 0.f;
}

__global__ void scatter_kernel(EvParams p) {
  const int s = blockIdx.y;
  const int n = active_len(p, s);
  const int i = blockIdx.x * kMoveWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (n == 0 || i >= p.budget) return;
  const rkv_evict_cuda_stream st = p.streams[s];
  const int pos = p.kept[(size_t)s * p.budget + i];
  const int64_t src = old_slot(p, st, pos), dst = new_slot(p, st, i);
  if (lane == 0) p.scores[dst] = p.scratch_scores[(size_t)s * p.budget + i];
  if (src == dst) return;
  const size_t vofs = (size_t)p.bs * p.row_bytes;
  const uint8_t *scr = p.scratch + ((size_t)s * p.budget + i) * 2 * p.row_bytes;
  uint8_t *k = slot_k(p, dst);
  copy_row(k, scr, p.row_bytes, lane);
  copy_row(k + vofs, scr + p.row_bytes, p.row_bytes, lane);
}

// ---- host side ------------------------------------------------------------------------------

constexpr size_t kAlign = 256;

size_t align_up(size_t x) {
  return (x + kAlign - 1) / kAlign * kAlign;
}

// Region sizes of the workspace; false on overflow.
struct Carve {
  size_t invnorm, colsum, jstar, logits, imp0, imp, z, kept, scratch, scratch_scores, total;
};

bool carve_sizes(const rkv_evict_params *p, const rkv_kv_layout *lay, uint32_t S, int32_t L,
                 Carve *c) {
  const double sl = (double)S * (double)L;
  const double row = (double)lay->head_dim * (double)rkv_dtype_size(lay->dtype);
  const double sb = (double)S * (double)p->budget;
  double tot = sl * (4 + 8 + 4 + 8 * 3) + sl * p->window * 8 + sb * (4 + 2 * row + 4) + 16 * kAlign;
  if (tot > 9.0e18) return false;
  c->invnorm = align_up((size_t)S * L * 4);
  c->colsum = align_up((size_t)S * L * 8);
  c->jstar = align_up((size_t)S * L * 4);
  c->logits = align_up((size_t)S * L * (size_t)p->window * 8);
  c->imp0 = c->imp = c->z = align_up((size_t)S * L * 8);
  c->kept = align_up((size_t)S * p->budget * 4);
  c->scratch = align_up((size_t)S * p->budget * 2 * (size_t)row);
  c->scratch_scores = align_up((size_t)S * p->budget * 4);
  c->total = c->invnorm + c->colsum + c->jstar + c->logits + c->imp0 + c->imp + c->z + c->kept +
             c->scratch + c->scratch_scores + kAlign;
  return true;
}

rkv_status check_layout(const rkv_kv_layout *lay, char *err) {
  if (lay->head_dim != 64 && lay->head_dim != 128 && lay->head_dim != 256)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: head_dim %u not in {64,128,256}",
                     lay->head_dim);
  if (lay->block_size != 16 && lay->block_size != 32)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: block_size %u not in {16,32}",
                     lay->block_size);
  if (lay->dtype != RKV_DTYPE_F32 && lay->dtype != RKV_DTYPE_F16 && lay->dtype != RKV_DTYPE_BF16)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: dtype %d unsupported", (int)lay->dtype);
  return RKV_OK;
}

rkv_status check_params(const rkv_evict_params *p, uint32_t S, uint32_t group, int32_t L,
                        char *err) {
  char msg[160];
  if (!p) return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: params NULL");
  if (rkv_evict_params_validate(p, msg, sizeof msg) != RKV_OK)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: %s", msg);
  if (p->policy == RKV_EVICT_FULL)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: policy full never compresses");
  if (p->window > kMaxWindow)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: window %d > %d", p->window, kMaxWindow);
  if (S == 0 || S > RKVI_EVICT_CUDA_MAX_STREAMS)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: num_streams %u not in 1..%u", S,
                     RKVI_EVICT_CUDA_MAX_STREAMS);
  if (group == 0 || group > 1024)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: group %u not in 1..1024", group);
  if (L <= p->budget)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: max_len %d <= budget %d", L, p->budget);
  // R-KV's similarity grid is ceil(L / 64) tiles along y (limit 65535): refuse here rather
  // than fail at launch after the first kernels were enqueued.
  if (p->policy == RKV_EVICT_RKV && L > kMaxSimLen)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: max_len %d > %d (similarity grid)", L,
                     kMaxSimLen);
  return RKV_OK;
}

// A batch's selection granularity (the version-2 fields, or STREAM for a version-1 batch).
struct Grouping {
  uint32_t granularity, layers, kv_heads;
};

rkv_status check_grouping(const Grouping &g, uint32_t S, char *err) {
  if (g.granularity >= RKV_EVICT_GRAN_COUNT_)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: granularity %u unknown", g.granularity);
  if (g.granularity == RKV_EVICT_GRAN_STREAM) return RKV_OK;
  if (g.layers == 0 || g.kv_heads == 0 || g.layers > 65535 || g.kv_heads > 65535 ||
      (uint64_t)g.layers * g.kv_heads > S || S % (g.layers * g.kv_heads) != 0)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG,
                     "evict cuda: granularity %s needs whole sequences of layers x kv_heads "
                     "streams (%u x %u) and got %u streams",
                     rkv_evict_granularity_name((rkv_evict_granularity)g.granularity), g.layers,
                     g.kv_heads, S);
  return RKV_OK;
}

// Sticky errors (a kernel fault seen at a later launch) poison the backend: cuda_status.h.
#define EV_LAUNCH_CHECK(be, err)                                                             \
  do {                                                                                       \
    cudaError_t e_ = cudaGetLastError();                                                     \
    if (e_ != cudaSuccess)                                                                   \
      return rkvi_cuda_fail((be), (err), (int)e_, "evict cuda: launch", __FILE__, __LINE__); \
  } while (0)

template <typename T>
rkv_status launch_all(const EvParams &prm, uint32_t S, rkv_backend *b, char *err) {
  cudaStream_t st = static_cast<cudaStream_t>(b->stream);
  const unsigned L = (unsigned)prm.max_len;
  const bool scored = prm.policy == RKV_EVICT_RKV || prm.policy == RKV_EVICT_SNAPKV;
  if (prm.policy == RKV_EVICT_RKV) {
    prep_kernel<T><<<dim3((L + 7) / 8, S), 256, 0, st>>>(prm);
    EV_LAUNCH_CHECK(b, err);
  }
  if (scored) {
    size_t smem = (size_t)kLogitKeys * (prm.d + 1) * sizeof(float);
    logits_kernel<T><<<dim3((L + kLogitKeys - 1) / kLogitKeys, S), 128, smem, st>>>(prm);
    EV_LAUNCH_CHECK(b, err);
  }
  if (prm.policy == RKV_EVICT_RKV) {
    const unsigned t = (L + kSimTile - 1) / kSimTile;
    if (prm.tensor_cores)
      sim_kernel<T, true><<<dim3(t, t, S), 256, 0, st>>>(prm);
    else
      sim_kernel<T, false><<<dim3(t, t, S), 256, 0, st>>>(prm);
    EV_LAUNCH_CHECK(b, err);
  }
  if (prm.gran == RKV_EVICT_GRAN_STREAM || prm.policy == RKV_EVICT_STREAMING) {
    finalize_kernel<T><<<S, kFinThreads, 0, st>>>(prm, kPhaseScore | kPhaseSelect);
    EV_LAUNCH_CHECK(b, err);
  } else {
    finalize_kernel<T><<<S, kFinThreads, 0, st>>>(prm, kPhaseScore);
    EV_LAUNCH_CHECK(b, err);
    const unsigned groups = S / (unsigned)(prm.layers * prm.kv_heads) * groups_per_seq(prm);
    group_kernel<<<dim3((L + 255) / 256, groups), 256, 0, st>>>(prm);
    EV_LAUNCH_CHECK(b, err);
    finalize_kernel<T><<<S, kFinThreads, 0, st>>>(prm, kPhaseSelect);
    EV_LAUNCH_CHECK(b, err);
  }
  const unsigned mb = ((unsigned)prm.budget + kMoveWarps - 1) / kMoveWarps;
  gather_kernel<<<dim3(mb, S), kMoveWarps * 32, 0, st>>>(prm);
  EV_LAUNCH_CHECK(b, err);
  clear_kernel<<<(unsigned)prm.n_clear + S, 32, 0, st>>>(prm);
  EV_LAUNCH_CHECK(b, err);
  scatter_kernel<<<dim3(mb, S), kMoveWarps * 32, 0, st>>>(prm);
  EV_LAUNCH_CHECK(b, err);
  return RKV_OK;
}

}  // namespace

extern "C" {

rkv_status rkvi_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                          uint32_t num_streams, uint32_t group, int32_t max_len,
                                          size_t *bytes) {
  char err[RKV_ERRBUF];
  if (!pool || !bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  RKV_TRY(check_params(p, num_streams, group, max_len, err));
  RKV_TRY(check_layout(&pool->layout, err));
  Carve c;
  if (!carve_sizes(p, &pool->layout, num_streams, max_len, &c)) return RKV_ERR_INVALID_ARG;
  *bytes = c.total;
  return RKV_OK;
}

rkv_status rkvi_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                    const rkv_evict_cuda_batch *batch, void *workspace,
                                    size_t ws_bytes) {
  if (!pool) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = pool->backend;
  char *err = b->err;
  if (b->kind != RKV_BACKEND_CUDA)
    return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: pool is not on a CUDA backend");
  rkvi_cuda::DeviceScope dev_scope(b);
  if (b->poisoned) return rkvi_fail(err, RKV_ERR_CUDA, "evict cuda: CUDA context poisoned earlier");
  if (!batch || batch->struct_size < RKV_EVICT_CUDA_BATCH_V1_SIZE)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: batch NULL or struct_size too small");
  RKV_TRY(check_params(p, batch->num_streams, batch->group, batch->max_len, err));
  Grouping gr = {RKV_EVICT_GRAN_STREAM, 1, 1};
  if (batch->struct_size >= sizeof(rkv_evict_cuda_batch))
    gr = {batch->granularity, batch->layers, batch->kv_heads};
  RKV_TRY(check_grouping(gr, batch->num_streams, err));
  RKV_TRY(check_layout(&pool->layout, err));
  if (batch->n_clear > (1u << 30))
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: n_clear %u too large", batch->n_clear);
  if (!batch->streams || !batch->old_blocks || !batch->new_blocks)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: streams/old_blocks/new_blocks NULL");
  const bool scored = p->policy == RKV_EVICT_RKV || p->policy == RKV_EVICT_SNAPKV;
  if (scored && !batch->qwin)
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: policy %s needs qwin",
                     rkv_evict_policy_name(p->policy));
  Carve c;
  if (!carve_sizes(p, &pool->layout, batch->num_streams, batch->max_len, &c))
    return rkvi_fail(err, RKV_ERR_INVALID_ARG, "evict cuda: workspace size overflows");
  if (!workspace || ws_bytes < c.total)
    return rkvi_fail(err, RKV_ERR_CAPACITY, "evict cuda: workspace %zu bytes < %zu needed",
                     ws_bytes, c.total);

  EvParams prm{};
  prm.base = static_cast<uint8_t *>(pool->base);
  prm.scores = pool->scores;
  prm.block_bytes = pool->block_bytes;
  prm.row_bytes = (size_t)pool->layout.head_dim * rkv_dtype_size(pool->layout.dtype);
  prm.bs = (int)pool->layout.block_size;
  prm.d = (int)pool->layout.head_dim;
  prm.streams = batch->streams;
  prm.old_blocks = batch->old_blocks;
  prm.new_blocks = batch->new_blocks;
  prm.qwin = batch->qwin;
  prm.kept_out = batch->kept;
  prm.tensor_cores = (batch->flags & RKV_EVICT_CUDA_TENSOR_CORES) != 0;
  prm.clear_blocks = batch->clear_blocks;
  prm.n_clear = batch->clear_blocks ? (int)batch->n_clear : 0;
  prm.policy = (int)p->policy;
  prm.budget = p->budget;
  prm.window = p->window;
  prm.kernel = p->kernel;
  prm.lambda = (double)p->lambda;
  prm.threshold = p->threshold;
  prm.sinks = p->sinks;
  prm.group = (int)batch->group;
  prm.max_len = batch->max_len;
  prm.gran = (int)gr.granularity;
  prm.layers = (int)gr.layers;
  prm.kv_heads = (int)gr.kv_heads;
  prm.scale = 1.0 / std::sqrt((double)prm.d);
  uintptr_t a = (reinterpret_cast<uintptr_t>(workspace) + kAlign - 1) / kAlign * kAlign;
  auto take = [&a](size_t bytes) {
    void *r = reinterpret_cast<void *>(a);
    a += bytes;
    return r;
  };
  prm.invnorm = static_cast<float *>(take(c.invnorm));
  prm.colsum = static_cast<unsigned long long *>(take(c.colsum));
  prm.jstar = static_cast<int *>(take(c.jstar));
  prm.logits = static_cast<double *>(take(c.logits));
  prm.imp0 = static_cast<double *>(take(c.imp0));
  prm.imp = static_cast<double *>(take(c.imp));
  prm.z = static_cast<double *>(take(c.z));
  prm.kept = static_cast<int32_t *>(take(c.kept));
  prm.scratch = static_cast<uint8_t *>(take(c.scratch));
  prm.scratch_scores = static_cast<float *>(take(c.scratch_scores));

  switch (pool->layout.dtype) {
    case RKV_DTYPE_F32:
      return launch_all<float>(prm, batch->num_streams, b, err);
    case RKV_DTYPE_F16:
      return launch_all<__half>(prm, batch->num_streams, b, err);
    case RKV_DTYPE_BF16:
      return launch_all<__nv_bfloat16>(prm, batch->num_streams, b, err);
    default:
      return rkvi_fail(err, RKV_ERR_UNSUPPORTED, "evict cuda: dtype %d", (int)pool->layout.dtype);
  }
}

}  // extern "C"
