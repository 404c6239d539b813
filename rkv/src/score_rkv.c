/* One compression step for one kv head on keys gathered as f32 rows: R-KV importance and
 * redundancy and the joint score, SnapKV (importance only), then selection; the policy table
 * (policies.c) picks the scorer (H2O: policy_h2o.c, StreamingLLM: policy_streaming.c). Follows
 * docs/EVICTION.md, "The algorithm, exactly", step by step; the comments name its steps. Reductions
 * run in double; the similarity tiles in f32 (BLAS or the blocked kernel), which is the only O(n^2
 * d) work; the window logits are f64 products. */
#include <math.h>
#include <string.h>

#include "evict_internal.h"

/* Steps 1-2: importance I of the n_c candidates (pooled) into ws->imp; ws->imp0 keeps the
 * pre-pooling mean. q [group][window][d]: row r = g * window + a of one product. */
static void importance(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                       const float *q, rkvi_head_ws *ws) {
  const int32_t w = p->window, n_c = n - w, rows = (int32_t)group * w;
  const double scale = 1.0 / sqrt((double)d);
  for (size_t t = 0; t < (size_t)w * n_c; t++) ws->logit[t] = -INFINITY;
  /* Step 1: logits as f64 products (exact f32 products, f64 sums) per chunk of query rows;
   * GQA max on the raw logits. */
  double *out = (double *)ws->sim;
  for (int32_t r0 = 0; r0 < rows; r0 += RKVI_LOGIT_ROWS) {
    int32_t m = rows - r0 < RKVI_LOGIT_ROWS ? rows - r0 : RKVI_LOGIT_ROWS;
    rkvi_gemm_abt_f64(q + (size_t)r0 * d, m, ws->k, n_c, d, out, ws->qd, ws->kd, true);
    for (int32_t rr = 0; rr < m; rr++) {
      double *row = ws->logit + (size_t)((r0 + rr) % w) * n_c;
      const double *src = out + (size_t)rr * n_c;
      for (int32_t j = 0; j < n_c; j++) {
        double v = src[j] * scale;
        row[j] = v > row[j] ? v : row[j];
      }
    }
  }
  /* Step 2: softmax over the candidates only (the window keys were never multiplied). */
  for (int32_t a = 0; a < w; a++) {
    double *row = ws->logit + (size_t)a * n_c;
    double mx = -INFINITY;
    for (int32_t j = 0; j < n_c; j++) mx = row[j] > mx ? row[j] : mx;
    double sum = 0.0;
    for (int32_t j = 0; j < n_c; j++) {
      row[j] = exp(row[j] - mx);
      sum += row[j];
    }
    double inv = 1.0 / sum;
    for (int32_t j = 0; j < n_c; j++) row[j] *= inv;
  }
  /* Mean over the window rows (summed in row order). */
  for (int32_t j = 0; j < n_c; j++) {
    double s = 0.0;
    for (int32_t a = 0; a < w; a++) s += ws->logit[(size_t)a * n_c + j];
    ws->imp0[j] = s / (double)w;
  }
  /* Centred max-pool; outside positions are ignored, not zero. */
  const int32_t h = p->kernel / 2;
  for (int32_t j = 0; j < n_c; j++) {
    int32_t lo = j - h < 0 ? 0 : j - h, hi = j + h >= n_c ? n_c - 1 : j + h;
    double m = ws->imp0[lo];
    for (int32_t t = lo + 1; t <= hi; t++) m = ws->imp0[t] > m ? ws->imp0[t] : m;
    ws->imp[j] = m;
  }
}

/* Step 3: redundancy R over all n keys, softmax over n, into ws->red[0..n). Normalises
 * ws->k in place.
 * S is symmetric, so only its upper triangle is computed (half the O(n^2 d) work), in tiles
 * of RKVI_SIM_TILE rows, and every entry S[i][j], j > i, is used twice:
 *  - the column sum of j equals the off-diagonal sum of row j: both r[i] and r[j] get it;
 *  - j*(i) = the largest j with S[i][j] > T: row i's own tile answers it when some j > i
 *    passes; otherwise it is the last earlier row j < i with S[j][i] > T, which the pass over
 *    row j recorded (rows are visited in ascending order); otherwise j* = 0 and the zeroed
 *    entry is S[i][0] = S[0][i], remembered from row 0.
 * Then r[j*(i)] -= S[i][j*(i)] for every row, /n, softmax. */
static void redundancy(const rkv_evict_params *p, int32_t n, uint32_t d, rkvi_head_ws *ws) {
  for (int32_t j = 0; j < n; j++) {
    float *k = ws->k + (size_t)j * d;
    double nrm = sqrt(rkvi_dot_f32(k, k, d));
    float inv = (float)(1.0 / (nrm + 1e-8));
    for (uint32_t t = 0; t < d; t++) k[t] *= inv;
  }
  double *r = ws->red;
  for (int32_t j = 0; j < n; j++) {
    r[j] = 0.0, ws->js[j] = -1, ws->la[j] = -1, ws->jv[j] = 0.0, ws->lv[j] = 0.0;
    ws->s0[j] = 0.0;
  }
  const float thr = p->threshold;
  for (int32_t i0 = 0; i0 < n; i0 += RKVI_SIM_TILE) {
    const int32_t rows = n - i0 < RKVI_SIM_TILE ? n - i0 : RKVI_SIM_TILE, nc = n - i0;
    const float *x = ws->k + (size_t)i0 * d;
    rkvi_gemm_abt(x, rows, x, nc, d, ws->sim, ws->kt, true); /* S[i0.., i0..] */
    for (int32_t ii = 0; ii < rows; ii++) {
      const int32_t i = i0 + ii, m = nc - ii - 1;
      const float *u = ws->sim + (size_t)ii * nc + ii + 1; /* u[t] = S[i][i + 1 + t] */
      r[i] += rkvi_sum_f32(u, m);
      rkvi_add_f32(r + i + 1, u, m);
      for (int32_t t = m - 1; t >= 0; t--) {
        if (u[t] > thr) {
          ws->js[i] = i + 1 + t, ws->jv[i] = u[t];
          break;
        }
      }
      rkvi_mark_above(u, m, thr, i, ws->la + i + 1, ws->lv + i + 1);
      if (i == 0)
        for (int32_t t = 0; t < m; t++) ws->s0[1 + t] = u[t];
    }
  }
  for (int32_t i = 0; i < n; i++) {
    if (ws->js[i] >= 0)
      r[ws->js[i]] -= ws->jv[i];
    else if (thr < 0.0f)
      continue; /* the zeroed diagonal itself passes S > T: j*(i) = i, nothing left to zero */
    else if (ws->la[i] >= 0)
      r[ws->la[i]] -= ws->lv[i];
    else
      r[0] -= ws->s0[i]; /* no neighbour: S[i][0] (0 on the diagonal for i = 0) */
  }
  double mx = -INFINITY;
  for (int32_t j = 0; j < n; j++) {
    r[j] /= (double)n;
    mx = r[j] > mx ? r[j] : mx;
  }
  double sum = 0.0;
  for (int32_t j = 0; j < n; j++) {
    r[j] = exp(r[j] - mx);
    sum += r[j];
  }
  for (int32_t j = 0; j < n; j++) r[j] /= sum;
}

void rkvi_score_rkv(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                    const float *q, const float *acc, rkvi_head_ws *ws) {
  (void)acc;
  const int32_t n_c = n - p->window;
  importance(p, n, d, group, q, ws);
  redundancy(p, n, d, ws);
  const double lam = p->lambda;
  for (int32_t j = 0; j < n_c; j++) ws->z[j] = lam * ws->imp[j] - (1.0 - lam) * ws->red[j];
}

void rkvi_score_snapkv(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                       const float *q, const float *acc, rkvi_head_ws *ws) {
  (void)acc;
  importance(p, n, d, group, q, ws);
  memcpy(ws->z, ws->imp, (size_t)(n - p->window) * sizeof(double));
}

void rkvi_evict_head_score(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                           const float *q, const float *acc, rkvi_head_ws *ws,
                           const rkvi_head_dump *dump) {
  const rkvi_policy *pol = rkvi_policy_of(p->policy);
  RKV_ASSERT(n > p->window && pol->score);
  pol->score(p, n, d, group, q, acc, ws);
  if (!dump) return;
  for (int32_t j = 0; j < n - p->window; j++) {
    if (dump->importance) dump->importance[j] = pol->needs_queries ? (float)ws->imp[j] : 0.0f;
    if (dump->redundancy) dump->redundancy[j] = pol->redundancy ? (float)ws->red[j] : 0.0f;
    if (dump->joint) dump->joint[j] = (float)ws->z[j];
  }
}

void rkvi_evict_head(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                     const float *q, const float *acc, rkvi_head_ws *ws, int32_t *keep,
                     const rkvi_head_dump *dump) {
  const rkvi_policy *pol = rkvi_policy_of(p->policy);
  RKV_ASSERT(n > p->budget);
  if (pol->keep) {
    pol->keep(p, n, keep);
    return;
  }
  rkvi_evict_head_score(p, n, d, group, q, acc, ws, dump);
  rkvi_select_top(ws->z, n - p->window, p->budget - p->window, n, ws->heap, ws->mark, keep);
}
