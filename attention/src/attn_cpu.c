/* CPU reference of paged attention: decode and prefill/extend over per-stream CSR block
 * tables, GQA, KV in f32/f16/bf16, f32 accumulation.
 *
 * Work item = one stream = (sequence, kv head). An item walks the stream block by block: it
 * converts a block's K rows to f32 once and scores them against the whole GQA group (four
 * heads per K load; in prefill, for a tile of up to RKVI_ATTN_TILE_ROWS new rows), stores the
 * logits, takes an exact two-pass softmax over them (max first, then an inline vectorised exp
 * of ~1e-7 relative error and the sum; causally masked positions get weight 0), then converts
 * each V block once and accumulates it into the group's outputs with a register-held slice of
 * the accumulator. Stored logits cost rows x max_len floats of workspace but make the softmax
 * safe and give the exact probabilities the H2O score accumulation needs.
 *
 * Items are handed out through an atomic counter to worker threads spawned per call (only
 * when the batch is big enough to pay for them). Score mass is written per item into a
 * private workspace region and added to the pool's scores in one serial pass afterwards, so
 * blocks shared between sequences (forks) never race and the result does not depend on the
 * thread count. The inner loops are specialised for head_dim 64/128/256 so that -O2
 * vectorises them with fixed trip counts (other head dims take the generic path), and each
 * is also compiled for AVX2, picked at run time. Explicit partial sums fix the order of every
 * addition, so all of these variants and any thread count give bit-identical results. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "attn_cpu.h"
#include "backend_impl.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define MAX_THREADS 256u
#define LANES 16u
/* Multiply-adds one extra thread must have to be worth its creation: threads are spawned per
 * call (~20 µs each), so each should get ~100 µs of work. */
#define WORK_PER_THREAD (1u << 21)

static size_t align64(size_t n) {
  return (n + 63u) & ~(size_t)63u;
}

uint32_t rkvi_attn_cpu_threads(const rkv_kv_pool *pool) {
  int32_t n = pool && pool->backend ? pool->backend->num_threads : 1;
  if (n <= 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    n = c > 0 ? (int32_t)(c > (long)MAX_THREADS ? (long)MAX_THREADS : c) : 1;
  }
  return n > (int32_t)MAX_THREADS ? MAX_THREADS : (uint32_t)n;
}

uint32_t rkvi_attn_cpu_workers(const rkv_kv_pool *pool, const rkvi_attn_shape *sh) {
  uint32_t w = rkvi_attn_cpu_threads(pool);
  if (w > sh->num_items) w = sh->num_items;
  double by_work = 1.0 + sh->work / (double)WORK_PER_THREAD;
  if ((double)w > by_work) w = (uint32_t)by_work;
  return w ? w : 1;
}

/* Per-worker byte counts of each region, in the order they are laid out. */
typedef struct worker_layout {
  size_t logits, acc, inv, rows;
} worker_layout;

static int worker_regions(const rkvi_attn_shape *sh, uint32_t d, worker_layout *wl) {
  size_t nq = (size_t)sh->tile_rows * sh->group, n;
  if (rkvi_mul_size(nq, (size_t)(sh->max_len > 0 ? sh->max_len : 0), &n) ||
      rkvi_mul_size(n, sizeof(float), &n) || n > SIZE_MAX / 2)
    return 1;
  wl->logits = align64(n);
  if (rkvi_mul_size(nq, d, &n) || rkvi_mul_size(n, sizeof(float), &n) || n > SIZE_MAX / 2) return 1;
  wl->acc = align64(n);
  wl->inv = align64(nq * sizeof(float));
  if (rkvi_mul_size((size_t)sh->block_size, d, &n) || rkvi_mul_size(n, sizeof(float), &n) ||
      n > SIZE_MAX / 2)
    return 1;
  wl->rows = align64(n);
  return 0;
}

rkv_status rkvi_attn_cpu_plan(const rkvi_attn_shape *sh, uint32_t head_dim, uint32_t workers,
                              rkvi_attn_plan *out) {
  worker_layout wl;
  if (workers == 0) workers = 1;
  if (worker_regions(sh, head_dim, &wl)) return RKV_ERR_INVALID_ARG;
  size_t per = wl.logits + wl.acc, fixed = 0, all;
  if (per < wl.logits || per > SIZE_MAX - wl.inv - wl.rows) return RKV_ERR_INVALID_ARG;
  per += wl.inv + wl.rows;
  if (sh->scores) {
    size_t m, o;
    if (rkvi_mul_size((size_t)sh->total_len, sizeof(float), &m) ||
        rkvi_mul_size(sh->num_items, sizeof(int64_t), &o) || m > SIZE_MAX / 4)
      return RKV_ERR_INVALID_ARG;
    fixed = align64(m) + align64(o);
  }
  if (rkvi_mul_size(per, workers, &all) || all > SIZE_MAX - fixed - 64) return RKV_ERR_INVALID_ARG;
  out->workers = workers;
  out->per_worker = per;
  out->fixed = fixed;
  out->total = fixed + all + 64;
  return RKV_OK;
}

/* ---- Row loaders and inner loops ------------------------------------------------------ */

typedef union f32_bits {
  uint32_t u;
  float f;
} f32_bits;

/* f16 -> f32 without branches so the row loop vectorises: shifting exponent+mantissa into
 * place and multiplying by 2^112 rebias normals and subnormals exactly; inf/NaN are patched. */
static ALWAYS_INLINE float f16_to_f32_fast(uint16_t h) {
  f32_bits v, r;
  uint32_t em = h & 0x7fffu;
  v.u = em << 13;
  r.f = v.f * 0x1p112f;
  uint32_t special = 0x7f800000u | (v.u & 0x007fe000u);
  uint32_t mask = 0u - (uint32_t)(em >= 0x7c00u);
  r.u = (r.u & ~mask) | (special & mask);
  r.u |= (uint32_t)(h & 0x8000u) << 16;
  return r.f;
}

/* n rows of d elements starting at src as f32: the rows themselves for f32, else converted
 * into buf [n][d]. */
static ALWAYS_INLINE const float *load_rows(rkv_dtype dt, const uint8_t *src, float *restrict buf,
                                            size_t n) {
  if (dt == RKV_DTYPE_F32) return (const float *)(const void *)src;
  const uint16_t *h = (const uint16_t *)(const void *)src;
  if (dt == RKV_DTYPE_F16) {
    for (size_t j = 0; j < n; j++) buf[j] = f16_to_f32_fast(h[j]);
  } else {
    for (size_t j = 0; j < n; j++) {
      f32_bits v;
      v.u = (uint32_t)h[j] << 16;
      buf[j] = v.f;
    }
  }
  return buf;
}

/* GNU vector types (GCC and clang): written with plain loops, compilers keep accumulator
 * slices in memory. An 8-float vector is one AVX2 register or two SSE ones. */
typedef float rkvi_v8f __attribute__((vector_size(32)));
typedef int32_t rkvi_v8i __attribute__((vector_size(32)));
typedef uint32_t rkvi_v8u __attribute__((vector_size(32)));
#define V8_LOAD(x, p) memcpy(&(x), (p), sizeof(rkvi_v8f))
#define V8_STORE(p, x) memcpy((p), &(x), sizeof(rkvi_v8f))
#if defined(__clang__)
#define V8_SHUF(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#else
#define V8_SHUF(a, b, i0, i1, i2, i3, i4, i5, i6, i7) \
  __builtin_shuffle(a, b, (rkvi_v8i){i0, i1, i2, i3, i4, i5, i6, i7})
#endif

/* Transposing reduction: lane i of the result is the sum of the 8 lanes of r[i], added in a
 * fixed tree (so every instruction set gives the same bits). */
/* (A macro: vector-typed arguments would trip -Wpsabi in the baseline build.) */
#define V8_PAIR_SUM(a, b) \
  (V8_SHUF(a, b, 0, 8, 2, 10, 4, 12, 6, 14) + V8_SHUF(a, b, 1, 9, 3, 11, 5, 13, 7, 15))
#define V8_QUAD_SUM(a, b) \
  (V8_SHUF(a, b, 0, 1, 8, 9, 4, 5, 12, 13) + V8_SHUF(a, b, 2, 3, 10, 11, 6, 7, 14, 15))
#define V8_REDUCE8(r0, r1, r2, r3, r4, r5, r6, r7, out)                      \
  do {                                                                       \
    const rkvi_v8f x0_ = V8_PAIR_SUM(r0, r1), x1_ = V8_PAIR_SUM(r2, r3);     \
    const rkvi_v8f x2_ = V8_PAIR_SUM(r4, r5), x3_ = V8_PAIR_SUM(r6, r7);     \
    const rkvi_v8f u0_ = V8_QUAD_SUM(x0_, x1_), u1_ = V8_QUAD_SUM(x2_, x3_); \
    const rkvi_v8f s_ = V8_SHUF(u0_, u1_, 0, 1, 2, 3, 8, 9, 10, 11) +        \
                        V8_SHUF(u0_, u1_, 4, 5, 6, 7, 12, 13, 14, 15);       \
    V8_STORE(out, s_);                                                       \
  } while (0)

/* Logits of 8 (query, K row) pairs at once, d % 8 == 0: out[i] = q[i] . k[i]. Eight named
 * accumulators: compilers do not keep an array of them in registers. */
static ALWAYS_INLINE void dot8(const float *const *q, const float *const *k, uint32_t d,
                               float *out) {
  const float *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3], *q4 = q[4], *q5 = q[5], *q6 = q[6],
              *q7 = q[7];
  const float *k0 = k[0], *k1 = k[1], *k2 = k[2], *k3 = k[3], *k4 = k[4], *k5 = k[5], *k6 = k[6],
              *k7 = k[7];
  rkvi_v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
  rkvi_v8f x, y;
#define DOT8_STEP(i)    \
  V8_LOAD(x, q##i + j); \
  V8_LOAD(y, k##i + j); \
  a##i += x * y;
  for (uint32_t j = 0; j < d; j += 8) {
    DOT8_STEP(0)
    DOT8_STEP(1)
    DOT8_STEP(2)
    DOT8_STEP(3)
    DOT8_STEP(4)
    DOT8_STEP(5)
    DOT8_STEP(6)
    DOT8_STEP(7)
  }
#undef DOT8_STEP
  V8_REDUCE8(a0, a1, a2, a3, a4, a5, a6, a7, out);
}

/* Logits of n K rows (K [n][d]) for G query vectors (q [G][d]) into out + g * S + t, scaled,
 * eight (head, row) pairs per dot8: four heads x two rows when G % 4 == 0, else one head x
 * eight rows. Rows past n are clamped to the last one and their results dropped. */
static ALWAYS_INLINE void logits_v8(const float *q, uint32_t G, const float *K, size_t n,
                                    uint32_t d, float scale, float *out, int64_t S) {
  const float *qp[8], *kp[8];
  float r[8];
  if (G % 4 == 0) {
    for (uint32_t g = 0; g < G; g += 4)
      for (size_t t = 0; t < n; t += 2) {
        const size_t t1 = t + 1 < n ? t + 1 : t;
        for (int i = 0; i < 8; i++) {
          qp[i] = q + (size_t)(g + (uint32_t)(i >> 1)) * d;
          kp[i] = K + ((i & 1) ? t1 : t) * d;
        }
        dot8(qp, kp, d, r);
        for (int i = 0; i < 8; i++)
          if ((i & 1) == 0 || t + 1 < n)
            out[(g + (uint32_t)(i >> 1)) * S + t + (i & 1)] = r[i] * scale;
      }
    return;
  }
  for (uint32_t g = 0; g < G; g++)
    for (size_t t = 0; t < n; t += 8) {
      for (int i = 0; i < 8; i++) {
        qp[i] = q + (size_t)g * d;
        kp[i] = K + (t + i < n ? t + i : n - 1) * d;
      }
      dot8(qp, kp, d, r);
      for (size_t i = 0; i < 8 && t + i < n; i++) out[g * S + t + i] = r[i] * scale;
    }
}

/* out[t * S] = scale * (q . k_t) for n rows k_t of K [n][d]. LANES partial sums keep the loop
 * vectorisable without reassociating. */
static ALWAYS_INLINE void logits1(const float *restrict q, const float *restrict K, size_t n,
                                  uint32_t d, float scale, float *restrict out) {
  for (size_t t = 0; t < n; t++) {
    const float *k = K + t * d;
    float acc[LANES] = {0};
    uint32_t j = 0;
    for (; j + LANES <= d; j += LANES)
      for (uint32_t l = 0; l < LANES; l++) acc[l] += q[j + l] * k[j + l];
    float tail = 0.0f;
    for (; j < d; j++) tail += q[j] * k[j];
    for (uint32_t w = LANES / 2; w > 0; w /= 2)
      for (uint32_t l = 0; l < w; l++) acc[l] += acc[l + w];
    out[t] = (acc[0] + tail) * scale;
  }
}

/* Four query heads at once: each K element is loaded once for the four dot products.
 * out + g * S + t receives head g's logit of row t. */
static ALWAYS_INLINE void logits4(const float *restrict q, const float *restrict K, size_t n,
                                  uint32_t d, float scale, float *restrict out, int64_t S) {
  enum { L4 = 8 };
  const float *q0 = q, *q1 = q + d, *q2 = q + 2 * (size_t)d, *q3 = q + 3 * (size_t)d;
  for (size_t t = 0; t < n; t++) {
    const float *k = K + t * d;
    float a0[L4] = {0}, a1[L4] = {0}, a2[L4] = {0}, a3[L4] = {0};
    uint32_t j = 0;
    for (; j + L4 <= d; j += L4)
      for (uint32_t l = 0; l < L4; l++) {
        const float kv = k[j + l];
        a0[l] += q0[j + l] * kv;
        a1[l] += q1[j + l] * kv;
        a2[l] += q2[j + l] * kv;
        a3[l] += q3[j + l] * kv;
      }
    float t0 = 0.0f, t1 = 0.0f, t2 = 0.0f, t3 = 0.0f;
    for (; j < d; j++) {
      t0 += q0[j] * k[j];
      t1 += q1[j] * k[j];
      t2 += q2[j] * k[j];
      t3 += q3[j] * k[j];
    }
    for (uint32_t w = L4 / 2; w > 0; w /= 2)
      for (uint32_t l = 0; l < w; l++) {
        a0[l] += a0[l + w];
        a1[l] += a1[l + w];
        a2[l] += a2[l + w];
        a3[l] += a3[l + w];
      }
    out[t] = (a0[0] + t0) * scale;
    out[S + t] = (a1[0] + t1) * scale;
    out[2 * S + t] = (a2[0] + t2) * scale;
    out[3 * S + t] = (a3[0] + t3) * scale;
  }
}

/* acc[d] += sum_t w[t] * V[t][:]. A 32-float slice of acc stays in four 8-lane registers
 * across the n rows (one load/store of acc per block instead of per row; four independent
 * add chains hide the add latency). GNU vector types, because compilers otherwise keep such
 * a slice in memory. Each lane still adds the rows in order, as the scalar tail does. */
static ALWAYS_INLINE void pv(float *restrict acc, const float *restrict w, const float *restrict V,
                             size_t n, uint32_t d) {
  uint32_t j = 0;
  for (; j + 32 <= d; j += 32) {
    rkvi_v8f a0, a1, a2, a3, v0, v1, v2, v3;
    V8_LOAD(a0, acc + j);
    V8_LOAD(a1, acc + j + 8);
    V8_LOAD(a2, acc + j + 16);
    V8_LOAD(a3, acc + j + 24);
    for (size_t t = 0; t < n; t++) {
      const float wt = w[t];
      const float *v = V + t * d + j;
      V8_LOAD(v0, v);
      V8_LOAD(v1, v + 8);
      V8_LOAD(v2, v + 16);
      V8_LOAD(v3, v + 24);
      a0 += wt * v0;
      a1 += wt * v1;
      a2 += wt * v2;
      a3 += wt * v3;
    }
    V8_STORE(acc + j, a0);
    V8_STORE(acc + j + 8, a1);
    V8_STORE(acc + j + 16, a2);
    V8_STORE(acc + j + 24, a3);
  }
  for (; j < d; j++) {
    float a = acc[j];
    for (size_t t = 0; t < n; t++) a += w[t] * V[t * d + j];
    acc[j] = a;
  }
}

/* exp(x) of 8 softmax arguments (x <= 0 after subtracting the row max), Cephes-style: round
 * x*log2(e) to n, reduce r = x - n*ln2 in two steps, a degree-5 polynomial for e^r, scale by
 * 2^n through the exponent bits. Relative error ~1e-7; x < -87 gives 0 and NaN stays NaN.
 * Plain vector arithmetic (no libm call), so the softmax loop vectorises and every
 * instruction set computes the same bits. */
static ALWAYS_INLINE void v8_exp_le0(rkvi_v8f *xp) {
  const rkvi_v8f x = *xp;
  const rkvi_v8i tiny = x < -87.0f, nan = x != x;
  const rkvi_v8f xc =
      (rkvi_v8f)(((rkvi_v8i)x & ~tiny) | ((rkvi_v8i)((rkvi_v8f){0} - 87.0f) & tiny));
  const rkvi_v8f big = xc * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: round to int */
  const rkvi_v8f n = big - 12582912.0f;
  rkvi_v8f r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  rkvi_v8f p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  rkvi_v8f y = p * (r * r) + r + 1.0f;
  /* Unsigned: wraps instead of overflowing on the NaN lanes (masked out below). */
  const rkvi_v8u e = (((rkvi_v8u)big - 0x4B400000u) + 127u) << 23;
  y = y * (rkvi_v8f)e;
  const rkvi_v8i yi = ((rkvi_v8i)y & ~tiny & ~nan) | ((rkvi_v8i)x & nan);
  *xp = (rkvi_v8f)yi;
}

/* Softmax numerators of one logit row in place: l[k] = exp(l[k] - max) for k < vis, 0 for
 * vis <= k < vis_end (causally masked). Returns 1 / sum. Max and sum use 8 lanes reduced in a
 * fixed order. */
static ALWAYS_INLINE float softmax_row(float *restrict l, int64_t vis, int64_t vis_end) {
  rkvi_v8f x, acc;
  float lane[8];
  float m = l[0];
  int64_t k = 0;
  if (vis >= 8) {
    V8_LOAD(acc, l);
    for (k = 8; k + 8 <= vis; k += 8) {
      V8_LOAD(x, l + k);
      const rkvi_v8i gt = x > acc;
      acc = (rkvi_v8f)(((rkvi_v8i)x & gt) | ((rkvi_v8i)acc & ~gt));
    }
    V8_STORE(lane, acc);
    m = lane[0];
    for (int j = 1; j < 8; j++) m = lane[j] > m ? lane[j] : m;
  }
  for (; k < vis; k++) m = l[k] > m ? l[k] : m;
  acc = (rkvi_v8f){0};
  for (k = 0; k + 8 <= vis; k += 8) {
    V8_LOAD(x, l + k);
    x = x - m;
    v8_exp_le0(&x);
    V8_STORE(l + k, x);
    acc += x;
  }
  if (k < vis) { /* tail: pad with -inf, whose exp is 0 */
    const int64_t rem = vis - k;
    for (int j = 0; j < 8; j++) lane[j] = j < rem ? l[k + j] - m : -INFINITY;
    V8_LOAD(x, lane);
    v8_exp_le0(&x);
    acc += x;
    V8_STORE(lane, x);
    for (int64_t j = 0; j < rem; j++) l[k + j] = lane[j];
  }
  V8_STORE(lane, acc);
  const float sum =
      ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
  for (k = vis; k < vis_end; k++) l[k] = 0.0f;
  return 1.0f / sum;
}

/* Blocks are scattered over the pool, so the hardware prefetcher stops at every block edge:
 * ask for the next block's half while the current one is being used. */
static ALWAYS_INLINE void prefetch(const uint8_t *p, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* ---- One work item --------------------------------------------------------------------- */

typedef struct attn_job {
  const rkv_attn_params *p;
  const uint8_t *base;
  size_t block_bytes;
  size_t row_bytes;
  uint32_t bs;
  rkv_dtype dt;
  uint32_t group, tile_rows;
  bool prefill;
  int64_t stride; /* floats between the logit rows of two query vectors (= max_len) */
  worker_layout wl;
  float *mass;             /* per-stream score mass regions, or NULL */
  const int64_t *mass_off; /* [num_items] */
  uint8_t *ws;             /* first worker's region (64-aligned) */
  size_t per_worker;
  atomic_uint next;
  void (*item)(const struct attn_job *job, uint32_t s, uint8_t *w);
} attn_job;

static ALWAYS_INLINE void item_body(const attn_job *J, uint32_t s, uint8_t *w, uint32_t d) {
  const rkv_attn_params *p = J->p;
  const uint32_t G = J->group, hq = p->num_q_heads, bs = J->bs;
  const uint32_t b = s / p->num_kv_heads, h = s % p->num_kv_heads;
  const rkvi_stream_ref sr = rkvi_attn_stream(p, s, (int32_t)bs);
  const int32_t nblk = sr.nblk, last = sr.last;
  const int32_t *ids = sr.ids;
  const int64_t len = sr.len;
  int64_t r0 = b, n_new = 1;
  if (J->prefill) {
    r0 = p->q_indptr[b];
    n_new = p->q_indptr[b + 1] - r0;
  }
  float *L = (float *)(void *)w;
  float *acc = (float *)(void *)(w + J->wl.logits);
  float *inv = (float *)(void *)(w + J->wl.logits + J->wl.acc);
  float *rows = (float *)(void *)(w + J->wl.logits + J->wl.acc + J->wl.inv);
  float *mass = J->mass ? J->mass + J->mass_off[s] : NULL;
  const int64_t S = J->stride;
  const float scale = p->scale;
  const size_t half = (size_t)bs * J->row_bytes; /* K half of a block; V follows */

  if (mass && len) memset(mass, 0, (size_t)len * sizeof(float));
  if (len == 0) { /* decode only (validated): nothing to attend to, zero output */
    for (int64_t r = r0; r < r0 + n_new; r++)
      memset(p->out + ((size_t)r * hq + (size_t)h * G) * d, 0, (size_t)G * d * sizeof(float));
    return;
  }
  for (int64_t t0 = 0; t0 < n_new; t0 += J->tile_rows) {
    const int64_t nt = n_new - t0 < (int64_t)J->tile_rows ? n_new - t0 : (int64_t)J->tile_rows;
    /* Tile row tt (new token t0 + tt) sees stream positions j <= base_vis + tt; every row of
     * the tile is scored over [0, vis_end) and the masked tail gets weight 0 below. */
    const int64_t base_vis = len - n_new + t0, vis_end = base_vis + nt;
    const int64_t nq = nt * G;
    const float *q0 = p->q + ((size_t)(r0 + t0) * hq + (size_t)h * G) * d;
    const size_t qstride = (size_t)hq * d;

    /* Pass 1: logits, block by block. */
    int64_t j = 0;
    for (int32_t kb = 0; kb < nblk && j < vis_end; kb++) {
      const uint8_t *blk = J->base + (size_t)ids[kb] * J->block_bytes;
      int64_t n = kb == nblk - 1 ? (int64_t)last : (int64_t)bs;
      if (j + n > vis_end) n = vis_end - j;
      if (kb + 1 < nblk) prefetch(J->base + (size_t)ids[kb + 1] * J->block_bytes, half);
      const float *K = load_rows(J->dt, blk, rows, (size_t)n * d);
      for (int64_t tt = 0; tt < nt; tt++) {
        const float *qr = q0 + (size_t)tt * qstride;
        if (d % 8 == 0) {
          logits_v8(qr, G, K, (size_t)n, d, scale, L + tt * G * S + j, S);
          continue;
        }
        uint32_t g = 0;
        for (; g + 4 <= G; g += 4)
          logits4(qr + (size_t)g * d, K, (size_t)n, d, scale, L + (tt * G + g) * S + j, S);
        for (; g < G; g++)
          logits1(qr + (size_t)g * d, K, (size_t)n, d, scale, L + (tt * G + g) * S + j);
      }
      j += n;
    }
    /* Softmax per query vector over its visible prefix (exact: max first); masked tail = 0. */
    for (int64_t i = 0; i < nq; i++) inv[i] = softmax_row(L + i * S, base_vis + i / G + 1, vis_end);
    /* Pass 2: probability-weighted V rows, block by block. */
    memset(acc, 0, (size_t)nq * d * sizeof(float));
    j = 0;
    for (int32_t kb = 0; kb < nblk && j < vis_end; kb++) {
      const uint8_t *blk = J->base + (size_t)ids[kb] * J->block_bytes + half;
      int64_t n = kb == nblk - 1 ? (int64_t)last : (int64_t)bs;
      if (j + n > vis_end) n = vis_end - j;
      if (kb + 1 < nblk) prefetch(J->base + (size_t)ids[kb + 1] * J->block_bytes + half, half);
      const float *V = load_rows(J->dt, blk, rows, (size_t)n * d);
      for (int64_t i = 0; i < nq; i++) pv(acc + (size_t)i * d, L + i * S + j, V, (size_t)n, d);
      j += n;
    }
    for (int64_t i = 0; i < nq; i++) {
      float *o = p->out + ((size_t)(r0 + t0 + i / G) * hq + (size_t)h * G + (size_t)(i % G)) * d;
      const float c = inv[i];
      const float *a = acc + (size_t)i * d;
      for (uint32_t k = 0; k < d; k++) o[k] = a[k] * c;
    }
    if (mass) {
      for (int64_t i = 0; i < nq; i++) {
        const float c = inv[i];
        const float *l = L + i * S;
        for (int64_t k = 0; k < vis_end; k++) mass[k] += l[k] * c;
      }
    }
  }
}

static void item_d64(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 64);
}
static void item_d128(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 128);
}
static void item_d256(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 256);
}
static void item_any(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, J->p->head_dim);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same loops compiled for AVX2 (8 lanes), chosen at run time when the CPU has it: the
 * library itself targets baseline x86-64. No FMA: results stay bit-identical to the baseline
 * clones (no contraction of a * b + c), so the tests hold on every machine. */
#define AVX2 __attribute__((target("avx2")))
AVX2 static void item_d64_avx2(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 64);
}
AVX2 static void item_d128_avx2(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 128);
}
AVX2 static void item_d256_avx2(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, 256);
}
AVX2 static void item_any_avx2(const attn_job *J, uint32_t s, uint8_t *w) {
  item_body(J, s, w, J->p->head_dim);
}
static bool have_avx2(void) {
  return __builtin_cpu_supports("avx2");
}
#else
#define item_d64_avx2 item_d64
#define item_d128_avx2 item_d128
#define item_d256_avx2 item_d256
#define item_any_avx2 item_any
static bool have_avx2(void) {
  return false;
}
#endif

typedef void (*item_fn)(const attn_job *J, uint32_t s, uint8_t *w);

static item_fn pick_item(uint32_t d) {
  const bool v = have_avx2();
  switch (d) {
    case 64:
      return v ? item_d64_avx2 : item_d64;
    case 128:
      return v ? item_d128_avx2 : item_d128;
    case 256:
      return v ? item_d256_avx2 : item_d256;
    default:
      return v ? item_any_avx2 : item_any;
  }
}

/* ---- Threads --------------------------------------------------------------------------- */

typedef struct attn_worker {
  attn_job *job;
  uint8_t *ws;
} attn_worker;

static void *worker_main(void *arg) {
  attn_worker *wk = arg;
  attn_job *J = wk->job;
  const uint32_t n = rkvi_attn_num_streams(J->p);
  for (;;) {
    uint32_t s = atomic_fetch_add_explicit(&J->next, 1u, memory_order_relaxed);
    if (s >= n) break;
    J->item(J, s, wk->ws);
  }
  return NULL;
}

void rkvi_attn_cpu_run(rkv_kv_pool *pool, const rkv_attn_params *p, const rkvi_attn_shape *sh,
                       bool prefill, void *ws, size_t ws_bytes) {
  const uint32_t d = p->head_dim;
  rkvi_attn_plan one;
  const rkv_status planned = rkvi_attn_cpu_plan(sh, d, 1, &one);
  RKV_ASSERT(planned == RKV_OK && one.total <= ws_bytes); /* attention.c checked both */
  if (planned != RKV_OK || one.total > ws_bytes) return;
  uint32_t workers = rkvi_attn_cpu_workers(pool, sh);
  size_t fit = (ws_bytes - one.fixed - 64) / one.per_worker;
  if ((size_t)workers > fit) workers = (uint32_t)fit;
  if (workers == 0) workers = 1;

  uint8_t *w0 = (uint8_t *)(((uintptr_t)ws + 63u) & ~(uintptr_t)63u);
  attn_job J;
  memset(&J, 0, sizeof J);
  J.p = p;
  J.base = pool->base;
  J.block_bytes = pool->block_bytes;
  J.bs = pool->layout.block_size;
  J.dt = pool->layout.dtype;
  J.row_bytes = (size_t)d * rkv_dtype_size(J.dt);
  J.group = sh->group;
  J.tile_rows = sh->tile_rows;
  J.prefill = prefill;
  J.stride = sh->max_len;
  worker_regions(sh, d, &J.wl);
  J.per_worker = one.per_worker;
  atomic_init(&J.next, 0u);
  J.item = pick_item(d);
  const uint32_t n_streams = rkvi_attn_num_streams(p);
  int64_t *off = NULL;
  if (sh->scores) {
    J.mass = (float *)(void *)w0;
    off = (int64_t *)(void *)(w0 + align64((size_t)sh->total_len * sizeof(float)));
    int64_t acc = 0;
    for (uint32_t s = 0; s < n_streams; s++) {
      off[s] = acc;
      acc += rkvi_attn_stream(p, s, (int32_t)J.bs).len;
    }
    J.mass_off = off;
  }
  J.ws = w0 + one.fixed;

  attn_worker wk[MAX_THREADS];
  pthread_t tid[MAX_THREADS];
  uint32_t started = 0;
  for (uint32_t i = 0; i < workers; i++) {
    wk[i].job = &J;
    wk[i].ws = J.ws + (size_t)i * one.per_worker;
  }
  /* A failed pthread_create only means fewer helpers: the counter hands the rest out. */
  for (uint32_t i = 1; i < workers; i++) {
    if (pthread_create(&tid[i], NULL, worker_main, &wk[i]) != 0) break;
    started = i;
  }
  worker_main(&wk[0]);
  for (uint32_t i = 1; i <= started; i++) pthread_join(tid[i], NULL);

  if (sh->scores) {
    float *scores = pool->scores;
    const uint32_t bs = J.bs;
    for (uint32_t s = 0; s < n_streams; s++) {
      const float *m = J.mass + off[s];
      const rkvi_stream_ref sr = rkvi_attn_stream(p, s, (int32_t)bs);
      for (int32_t kb = 0; kb < sr.nblk; kb++) {
        const uint32_t n = kb == sr.nblk - 1 ? (uint32_t)sr.last : bs;
        float *dst = scores + (size_t)sr.ids[kb] * bs;
        for (uint32_t o = 0; o < n; o++) dst[o] += m[(size_t)kb * bs + o];
      }
    }
  }
}
