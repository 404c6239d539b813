/* The dense kernels of scoring: out = A B^T products (the key similarity tiles, O(n^2 d), and
 * the window logits) and the vector loops of the redundancy row pass. With a BLAS a product
 * is one cblas_sgemm (OpenBLAS brings its own threads and AVX kernels); without one a
 * blocked kernel packs a panel of B transposed so the inner loop is a contiguous
 * multiply-add over 16 columns that compilers vectorise without reassociation, i.e. every
 * dot product is still summed in index order. */
#include <string.h>

#include "evict_internal.h"

#if defined(RKV_HAVE_BLAS)
#include <cblas.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
/* -O2 (RelWithDebInfo) does not vectorise the register tile below; -O3 does. */
#pragma GCC optimize("O3")
#endif

bool rkvi_have_blas(void) {
#if defined(RKV_HAVE_BLAS)
  return true;
#else
  return false;
#endif
}

enum { kJB = 64, kMR = 4, kNR = 16 };

/* The build targets baseline x86-64 (SSE2); with GCC on x86-64 the blocked product is also
 * compiled for AVX2+FMA and AVX-512 and picked at load time (ifunc). Clang builds (the
 * sanitizer preset) keep the portable version. FMA contracts a*b+c into one rounding, so
 * the clones' last bits may differ from the baseline's; the BLAS path differs likewise. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__gnu_linux__)
#define RKVI_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define RKVI_CLONES
#endif

/* out[i][j0 + jj] for a 4-row by 16-column register tile; kt is the packed panel [d][kJB].
 * GNU vector types (8 floats) keep the 8 accumulators in registers: compilers do not find
 * that layout from plain loops. Each lane still sums its dot product in index order. */
typedef float rkvi_v8 __attribute__((vector_size(32)));

static inline void micro_tile(const float *a0, const float *a1, const float *a2, const float *a3,
                              const float *kt, uint32_t d, float c[kMR][kNR]) {
  const rkvi_v8 zero = {0, 0, 0, 0, 0, 0, 0, 0};
  rkvi_v8 c00 = zero, c01 = zero, c10 = zero, c11 = zero, c20 = zero, c21 = zero, c30 = zero,
          c31 = zero, b0, b1;
  for (uint32_t k = 0; k < d; k++) {
    const float *b = kt + (size_t)k * kJB;
    memcpy(&b0, b, sizeof b0);
    memcpy(&b1, b + 8, sizeof b1);
    const rkvi_v8 x0 = zero + a0[k], x1 = zero + a1[k], x2 = zero + a2[k], x3 = zero + a3[k];
    c00 += x0 * b0, c01 += x0 * b1;
    c10 += x1 * b0, c11 += x1 * b1;
    c20 += x2 * b0, c21 += x2 * b1;
    c30 += x3 * b0, c31 += x3 * b1;
  }
  memcpy(c[0], &c00, sizeof c00), memcpy(c[0] + 8, &c01, sizeof c01);
  memcpy(c[1], &c10, sizeof c10), memcpy(c[1] + 8, &c11, sizeof c11);
  memcpy(c[2], &c20, sizeof c20), memcpy(c[2] + 8, &c21, sizeof c21);
  memcpy(c[3], &c30, sizeof c30), memcpy(c[3] + 8, &c31, sizeof c31);
}

RKVI_CLONES static void gemm_abt_blocked(const float *a, int32_t m, const float *b, int32_t nb,
                                         uint32_t d, float *out, float *kt) {
  for (int32_t j0 = 0; j0 < nb; j0 += kJB) {
    int32_t nj = nb - j0 < kJB ? nb - j0 : kJB;
    /* Pack rows j0.. of b transposed, zero-padded to a whole panel. */
    for (int32_t jj = 0; jj < kJB; jj++) {
      if (jj < nj) {
        const float *src = b + (size_t)(j0 + jj) * d;
        for (uint32_t k = 0; k < d; k++) kt[(size_t)k * kJB + jj] = src[k];
      } else {
        for (uint32_t k = 0; k < d; k++) kt[(size_t)k * kJB + jj] = 0.0f;
      }
    }
    for (int32_t i = 0; i < m; i += kMR) {
      int32_t mr = m - i < kMR ? m - i : kMR;
      const float *ar[kMR];
      /* Missing rows of a short tile repeat the first row; their results are dropped. */
      for (int r = 0; r < kMR; r++) ar[r] = a + (size_t)(i + (r < mr ? r : 0)) * d;
      for (int32_t jj = 0; jj < nj; jj += kNR) {
        float c[kMR][kNR];
        micro_tile(ar[0], ar[1], ar[2], ar[3], kt + jj, d, c);
        int32_t nr = nj - jj < kNR ? nj - jj : kNR;
        for (int r = 0; r < mr; r++)
          memcpy(out + (size_t)(i + r) * nb + j0 + jj, c[r], (size_t)nr * sizeof(float));
      }
    }
  }
}

void rkvi_gemm_abt(const float *a, int32_t m, const float *b, int32_t nb, uint32_t d, float *out,
                   float *kt, bool use_blas) {
  if (m <= 0 || nb <= 0) return;
#if defined(RKV_HAVE_BLAS)
  if (use_blas) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nb, (int)d, 1.0f, a, (int)d, b, (int)d,
                0.0f, out, nb);
    return;
  }
#else
  (void)use_blas;
#endif
  gemm_abt_blocked(a, m, b, nb, d, out, kt);
}

void rkvi_gemm_abt_f64(const float *a, int32_t m, const float *b, int32_t nb, uint32_t d,
                       double *out, double *ad, double *bd, bool use_blas) {
  if (m <= 0 || nb <= 0) return;
#if defined(RKV_HAVE_BLAS)
  if (use_blas) {
    for (size_t t = 0; t < (size_t)m * d; t++) ad[t] = a[t];
    for (size_t t = 0; t < (size_t)nb * d; t++) bd[t] = b[t];
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nb, (int)d, 1.0, ad, (int)d, bd, (int)d,
                0.0, out, nb);
    return;
  }
#else
  (void)use_blas, (void)ad, (void)bd;
#endif
  for (int32_t i = 0; i < m; i++)
    for (int32_t j = 0; j < nb; j++)
      out[(size_t)i * nb + j] = rkvi_dot_f32(a + (size_t)i * d, b + (size_t)j * d, d);
}

/* Eight independent partial sums: vectorisable without reassociating a single chain. */
double rkvi_sum_f32(const float *u, int32_t m) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t t = 0;
  for (; t + 8 <= m; t += 8)
    for (int l = 0; l < 8; l++) acc[l] += (double)u[t + l];
  double s = 0.0;
  for (; t < m; t++) s += (double)u[t];
  for (int l = 0; l < 8; l++) s += acc[l];
  return s;
}

double rkvi_dot_f32(const float *a, const float *b, uint32_t d) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t t = 0;
  for (; t + 8 <= d; t += 8)
    for (int l = 0; l < 8; l++) acc[l] += (double)a[t + l] * (double)b[t + l];
  double s = 0.0;
  for (; t < d; t++) s += (double)a[t] * (double)b[t];
  for (int l = 0; l < 8; l++) s += acc[l];
  return s;
}

void rkvi_add_f32(double *r, const float *u, int32_t m) {
  for (int32_t t = 0; t < m; t++) r[t] += (double)u[t];
}

void rkvi_mark_above(const float *u, int32_t m, float thr, int32_t row, int32_t *last_row,
                     double *last_val) {
  for (int32_t t = 0; t < m; t++) {
    bool above = u[t] > thr;
    last_row[t] = above ? row : last_row[t];
    last_val[t] = above ? (double)u[t] : last_val[t];
  }
}
