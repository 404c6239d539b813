/* R-KV scoring and selection on dense inputs, step by step on cases small enough to compute
 * by hand (d = 1 or 2), then properties on random inputs for every policy and GQA ratio:
 *  - importance: GQA max on raw logits, softmax over candidates only (huge window logits
 *    must not leak in), mean over the window rows, centred max-pool with edges ignored;
 *  - redundancy: the largest j with S > T zeroed per row, j = 0 when no neighbour passes,
 *    column mean over all n, softmax over n;
 *  - joint score, tie-breaking (lower position wins), StreamingLLM, H2O;
 *  - exactly min(n, B) kept, window kept, ascending and unique, n <= B keeps everything;
 *  - the blocked similarity kernel against a naive one (and against BLAS when built). */
#include <stdbool.h>

#include <rkv/evict.h>

#include "rkv_test.h"

/* Private kernel of the module (declared here: tests link the static library). */
void rkvi_gemm_abt(const float *a, int32_t m, const float *b, int32_t nb, uint32_t d, float *out,
                   float *kt, bool use_blas);

static unsigned char g_ws[64 << 20];

static rkv_status run(const rkv_evict_params *p, const float *k, const float *q, const float *acc,
                      uint32_t kvh, uint32_t qh, int32_t n, uint32_t d, int32_t *keep,
                      const rkv_evict_scores *dump) {
  char err[256];
  rkv_status s = rkv_evict_select_dense(p, k, q, acc, kvh, qh, n, d, keep, dump, g_ws, sizeof g_ws,
                                        err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "select_dense: %s\n", err);
  return s;
}

static void expect_keep(const int32_t *got, const int32_t *want, int n, const char *what) {
  for (int i = 0; i < n; i++) {
    if (got[i] != want[i]) {
      RKV_TEST_FAIL_("%s: keep[%d] = %d, expected %d", what, i, got[i], want[i]);
      return;
    }
  }
  rkv_test_passed_++;
}

/* d = 1, two query heads per kv head (G = 2), window 2, n = 6 (4 candidates).
 * Row 0: head 0 q = 1, head 1 q = -1: GQA max = |k| = [0, ln2, ln3, 0] -> exp [1,2,3,1]/7.
 * Row 1: head 0 q = 2, head 1 q = 0: max(2k, 0) = [0, 2 ln2, 0, 0] -> exp [1,4,1,1]/7.
 * Mean: [1/7, 3/7, 2/7, 1/7]. The window keys (+-50) would swamp the softmax if included. */
static void test_importance(void) {
  const float k[6] = {0.0f, (float)log(2.0), (float)-log(3.0), 0.0f, 50.0f, -50.0f};
  const float q[4] = {1.0f, 2.0f, /* head 0 rows 0, 1 */ -1.0f, 0.0f /* head 1 */};
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_SNAPKV, p.window = 2, p.budget = 3, p.kernel = 1, p.sinks = 0;
  float imp[4] = {0}, joint[4] = {0};
  rkv_evict_scores dump = {imp, NULL, joint};
  int32_t keep[3];
  EXPECT_OK(run(&p, k, q, NULL, 1, 2, 6, 1, keep, &dump));
  const double want[4] = {1.0 / 7, 3.0 / 7, 2.0 / 7, 1.0 / 7};
  for (int j = 0; j < 4; j++) {
    EXPECT_NEAR(imp[j], want[j], 1e-6);
    EXPECT_NEAR(joint[j], want[j], 1e-6); /* SnapKV: Z = I */
  }
  expect_keep(keep, (const int32_t[]){1, 4, 5}, 3, "snapkv kernel 1");
  /* Kernel 3: [max(I0,I1), max(I0..I2), max(I1..I3), max(I2,I3)] = [3,3,3,2]/7: the three-way
   * tie goes to the lowest positions. */
  p.kernel = 3;
  EXPECT_OK(run(&p, k, q, NULL, 1, 2, 6, 1, keep, &dump));
  const double pooled[4] = {3.0 / 7, 3.0 / 7, 3.0 / 7, 2.0 / 7};
  for (int j = 0; j < 4; j++) EXPECT_NEAR(imp[j], pooled[j], 1e-6);
  expect_keep(keep, (const int32_t[]){0, 4, 5}, 3, "snapkv kernel 3 tie");
  p.budget = 5;
  int32_t keep5[5];
  EXPECT_OK(run(&p, k, q, NULL, 1, 2, 6, 1, keep5, &dump));
  expect_keep(keep5, (const int32_t[]){0, 1, 2, 4, 5}, 5, "snapkv kernel 3 B=5");
  /* Kernel 7 (default) on 4 candidates: every window covers all of them. */
  p.kernel = 7, p.budget = 3;
  EXPECT_OK(run(&p, k, q, NULL, 1, 2, 6, 1, keep, &dump));
  for (int j = 0; j < 4; j++) EXPECT_NEAR(imp[j], 3.0 / 7, 1e-6);
  /* Max-pool edges ignore outside positions: with 7 candidates [a, 0.., b] and kernel 3 the
   * ends pool over two entries only. Use logits so that I' = [4,1,1,1,1,1,2]/11 (one row). */
  const float k2[8] = {(float)log(4.0), 0, 0, 0, 0, 0, (float)log(2.0), 9.0f};
  const float q2[1] = {1.0f};
  p.window = 1, p.kernel = 3, p.budget = 4;
  float imp2[7];
  rkv_evict_scores dump2 = {imp2, NULL, NULL};
  int32_t keep4[4];
  EXPECT_OK(run(&p, k2, q2, NULL, 1, 1, 8, 1, keep4, &dump2));
  const double want2[7] = {4.0 / 11, 4.0 / 11, 1.0 / 11, 1.0 / 11, 1.0 / 11, 2.0 / 11, 2.0 / 11};
  for (int j = 0; j < 7; j++) EXPECT_NEAR(imp2[j], want2[j], 1e-6);
  expect_keep(keep4, (const int32_t[]){0, 1, 5, 7}, 4, "pool edges");
}

/* Reference redundancy of the doc on tiny inputs, written as plainly as possible.
 * zero_j0: the official rule (row without a neighbour zeroes j = 0); false = the paper's. */
static void ref_redundancy(const float *k, int n, int d, double T, bool zero_j0, double *R) {
  double kh[16][4], S[16][16], r[16];
  for (int i = 0; i < n; i++) {
    double nrm = 0;
    for (int t = 0; t < d; t++) nrm += (double)k[i * d + t] * k[i * d + t];
    for (int t = 0; t < d; t++) kh[i][t] = k[i * d + t] / (sqrt(nrm) + 1e-8);
  }
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      S[i][j] = 0;
      for (int t = 0; t < d; t++) S[i][j] += kh[i][t] * kh[j][t];
    }
  for (int i = 0; i < n; i++) S[i][i] = 0;
  for (int i = 0; i < n; i++) {
    int js = -1;
    for (int j = 0; j < n; j++)
      if (S[i][j] > T) js = j;
    if (js < 0 && zero_j0) js = 0;
    if (js >= 0) S[i][js] = 0;
  }
  double mx = -1e300, sum = 0;
  for (int j = 0; j < n; j++) {
    r[j] = 0;
    for (int i = 0; i < n; i++) r[j] += S[i][j];
    r[j] /= n;
    mx = r[j] > mx ? r[j] : mx;
  }
  for (int j = 0; j < n; j++) sum += exp(r[j] - mx);
  for (int j = 0; j < n; j++) R[j] = exp(r[j] - mx) / sum;
}

/* k0 = (1,0), k1 = (1,.1) and k3 = (1,.05) are near-duplicates; k2 = (.3,1) has none (its
 * similarity to k0 is 0.287 < T, so its row zeroes S[2][0], which matters). Window 1. */
static void test_redundancy(void) {
  const float k[8] = {1, 0, 1, 0.1f, 0.3f, 1, 1, 0.05f};
  const float q[2] = {0, 0}; /* uniform importance */
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_RKV, p.window = 1, p.budget = 2, p.lambda = 0.1f, p.sinks = 0;
  float imp[3], red[3], joint[3];
  rkv_evict_scores dump = {imp, red, joint};
  int32_t keep[2];
  EXPECT_OK(run(&p, k, q, NULL, 1, 1, 4, 2, keep, &dump));
  double R[4], Rpaper[4];
  ref_redundancy(k, 4, 2, 0.5, true, R);
  ref_redundancy(k, 4, 2, 0.5, false, Rpaper);
  for (int j = 0; j < 3; j++) {
    EXPECT_NEAR(red[j], R[j], 1e-7);
    EXPECT_NEAR(imp[j], 1.0 / 3, 1e-7);
    EXPECT_NEAR(joint[j], 0.1 * imp[j] - 0.9 * red[j], 1e-7);
  }
  /* The j = 0 rule is visible: R[0] differs from the paper's variant. */
  EXPECT(fabs(R[0] - Rpaper[0]) > 1e-3);
  EXPECT(fabs(red[0] - Rpaper[0]) > 1e-3);
  /* By hand: S01 = .995, S02 = .287, S03 = .9988, S12 = .381, S13 = .9989, S23 = .335.
   * Row 0 zeroes S03, row 1 zeroes S13 (newest neighbour 3), row 2 has no neighbour and
   * zeroes S20, row 3 zeroes S31. Column sums: col0 = S10 + S30 = 1.994, col1 = S01 + S21 =
   * 1.376, col2 = S02 + S12 + S32 = 1.003, col3 = S23 = .335. */
  const double cols[4] = {1.9938, 1.3762, 1.0031, 0.3349};
  double e[4], sum = 0;
  for (int j = 0; j < 4; j++) sum += e[j] = exp(cols[j] / 4);
  for (int j = 0; j < 3; j++) EXPECT_NEAR(red[j], e[j] / sum, 2e-4);
  EXPECT(red[0] > red[1] && red[1] > red[2]);
  /* Importance uniform: the unique key k2 is the least redundant candidate and stays. */
  expect_keep(keep, (const int32_t[]){2, 3}, 2, "rkv redundancy");
  /* Bigger: random clustered keys, several thresholds, against the plain reference. */
  uint64_t rng = 7;
  float kk[16 * 3];
  float qq[2 * 3] = {0};
  for (int t = 0; t < 16 * 3; t++) kk[t] = (float)(rkv_test_uniform(&rng) * 2 - 1);
  for (int t = 8 * 3; t < 12 * 3; t++) kk[t] = kk[t - 8 * 3] + 0.05f; /* duplicates */
  const float thr[4] = {0.5f, 0.9f, -0.2f, 0.99f};
  for (int ti = 0; ti < 4; ti++) {
    p.threshold = thr[ti], p.window = 2, p.budget = 5;
    float red2[14];
    rkv_evict_scores d2 = {NULL, red2, NULL};
    int32_t keep5[5];
    EXPECT_OK(run(&p, kk, qq, NULL, 1, 1, 16, 3, keep5, &d2));
    double R2[16];
    ref_redundancy(kk, 16, 3, thr[ti], true, R2);
    double worst = 0;
    for (int j = 0; j < 14; j++) worst = fmax(worst, fabs(red2[j] - R2[j]));
    EXPECT_NEAR(worst, 0, 1e-7);
  }
}

/* Identical scores everywhere: the lowest positions win. */
static void test_ties(void) {
  enum { N = 40, D = 4 };
  float k[N * D], q[8 * D], acc[N];
  for (int i = 0; i < N * D; i++) k[i] = 1.0f;
  for (int i = 0; i < 8 * D; i++) q[i] = 0.5f;
  for (int i = 0; i < N; i++) acc[i] = 3.0f;
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 20;
  int32_t keep[20], want[20];
  for (int i = 0; i < 12; i++) want[i] = i;
  for (int i = 12; i < 20; i++) want[i] = N - 20 + i;
  p.policy = RKV_EVICT_SNAPKV;
  EXPECT_OK(run(&p, k, q, NULL, 1, 1, N, D, keep, NULL));
  expect_keep(keep, want, 20, "snapkv ties");
  p.policy = RKV_EVICT_H2O;
  EXPECT_OK(run(&p, NULL, NULL, acc, 1, 1, N, D, keep, NULL));
  expect_keep(keep, want, 20, "h2o ties");
  /* H2O: distinct masses, plus one tie at the cut (positions 5 and 9 both 2.0: 5 wins). */
  for (int i = 0; i < N; i++) acc[i] = 0.01f * (float)i;
  acc[5] = 2.0f, acc[9] = 2.0f, acc[30] = 5.0f, acc[2] = 4.0f;
  p.budget = 11; /* 3 candidates */
  int32_t keep11[11];
  EXPECT_OK(run(&p, NULL, NULL, acc, 1, 1, N, D, keep11, NULL));
  expect_keep(keep11, (const int32_t[]){2, 5, 30, 32, 33, 34, 35, 36, 37, 38, 39}, 11, "h2o");
  /* NaN ranks last. */
  acc[2] = NAN;
  EXPECT_OK(run(&p, NULL, NULL, acc, 1, 1, N, D, keep11, NULL));
  expect_keep(keep11, (const int32_t[]){5, 9, 30, 32, 33, 34, 35, 36, 37, 38, 39}, 11, "h2o nan");
  /* R-KV with identical keys: every row's newest neighbour is n-1 (n-2 for row n-1), so
   * column n-1 is the least redundant; the other candidates tie -> lowest positions. */
  p.policy = RKV_EVICT_RKV, p.budget = 20;
  EXPECT_OK(run(&p, k, q, NULL, 1, 1, N, D, keep, NULL));
  expect_keep(keep, want, 20, "rkv ties");
}

static void test_streaming(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_STREAMING, p.budget = 10, p.sinks = 4, p.window = 2;
  int32_t keep[20]; /* two kv heads */
  EXPECT_OK(run(&p, NULL, NULL, NULL, 2, 2, 30, 8, keep, NULL));
  expect_keep(keep, (const int32_t[]){0, 1, 2, 3, 24, 25, 26, 27, 28, 29}, 10, "streaming");
  expect_keep(keep + 10, (const int32_t[]){0, 1, 2, 3, 24, 25, 26, 27, 28, 29}, 10,
              "streaming head 1");
  p.sinks = 0;
  EXPECT_OK(run(&p, NULL, NULL, NULL, 1, 1, 11, 8, keep, NULL));
  expect_keep(keep, (const int32_t[]){1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 10, "streaming 0 sinks");
}

/* Random inputs: every policy, GQA 1/4/8, n below, at and above B. */
static void test_properties(void) {
  enum { D = 16, MAXN = 300 };
  static float k[8 * MAXN * D], q[64 * 8 * D], acc[8 * MAXN];
  static int32_t keep[8 * MAXN];
  uint64_t rng = 1234;
  const uint32_t gqa[3] = {1, 4, 8};
  const int32_t ns[5] = {50, 64, 65, 192, 300};
  int bad = 0, runs = 0;
  for (int pol = 0; pol < RKV_EVICT_POLICY_COUNT_; pol++) {
    for (int gi = 0; gi < 3; gi++) {
      for (int ni = 0; ni < 5; ni++) {
        const uint32_t kvh = 2, qh = kvh * gqa[gi];
        const int32_t n = ns[ni];
        rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
        p.policy = (rkv_evict_policy)pol, p.budget = 64;
        for (int i = 0; i < (int)(kvh * n * D); i++) k[i] = (float)rkv_test_uniform(&rng) - 0.5f;
        for (int i = 0; i < (int)(qh * 8 * D); i++) q[i] = (float)rkv_test_uniform(&rng) * 4 - 2;
        for (int i = 0; i < (int)(kvh * n); i++) acc[i] = (float)rkv_test_uniform(&rng);
        for (int i = 0; i < 8 * MAXN; i++) keep[i] = -7;
        if (run(&p, k, q, acc, kvh, qh, n, D, keep, NULL) != RKV_OK) {
          bad++;
          continue;
        }
        runs++;
        int32_t kept = rkv_evict_kept_count(&p, n);
        int32_t want = pol == RKV_EVICT_FULL || n <= p.budget ? n : p.budget;
        bad += kept != want;
        for (uint32_t h = 0; h < kvh; h++) {
          const int32_t *row = keep + (size_t)h * kept;
          for (int32_t i = 0; i < kept; i++) {
            bad += row[i] < 0 || row[i] >= n;
            if (i > 0) bad += row[i] <= row[i - 1];
          }
          /* The newest tokens are always kept: the window (B - sinks for streaming). */
          int32_t recent = pol == RKV_EVICT_STREAMING ? p.budget - p.sinks : p.window;
          if (recent > kept) recent = kept;
          for (int32_t i = 0; i < recent; i++) bad += row[kept - 1 - i] != n - 1 - i;
          if (n <= p.budget)
            for (int32_t i = 0; i < n; i++) bad += row[i] != i;
        }
        bad += keep[kvh * kept] != -7; /* nothing written past the rows */
      }
    }
  }
  EXPECT_EQ_INT(runs, RKV_EVICT_POLICY_COUNT_ * 15);
  EXPECT_EQ_INT(bad, 0);
}

/* GQA: the logit is the max over the group's raw logits. With positive keys, queries
 * q - 100 give far lower logits than q, so a group whose head 2 holds q and whose other
 * heads hold q - 100 must score exactly like one head holding q (a mean or a softmax over
 * the group would not). */
static void test_gqa_equivalence(void) {
  enum { N = 120, D = 8, G = 4 };
  static float k[N * D], q1[8 * D], qg[G * 8 * D];
  uint64_t rng = 99;
  for (int i = 0; i < N * D; i++) k[i] = (float)rkv_test_uniform(&rng) + 0.1f; /* positive */
  for (int i = 0; i < 8 * D; i++) q1[i] = (float)rkv_test_uniform(&rng) * 3;
  for (int g = 0; g < G; g++)
    for (int i = 0; i < 8 * D; i++) qg[g * 8 * D + i] = g == 2 ? q1[i] : q1[i] - 100.0f;
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40;
  int32_t a[40], b[40];
  float ia[N], ib[N];
  rkv_evict_scores da = {ia, NULL, NULL}, db = {ib, NULL, NULL};
  EXPECT_OK(run(&p, k, q1, NULL, 1, 1, N, D, a, &da));
  EXPECT_OK(run(&p, k, qg, NULL, 1, G, N, D, b, &db));
  expect_keep(a, b, 40, "gqa max");
  double worst = 0;
  for (int j = 0; j < N - 8; j++) worst = fmax(worst, fabs(ia[j] - ib[j]));
  EXPECT_NEAR(worst, 0, 1e-10);
}

/* The products behind the similarity tiles and the logits: the blocked kernel (always) and
 * BLAS (when built) against a naive double loop, on shapes that are not multiples of the
 * 4 x 16 register tile or the 64-column panel. */
static void test_gemm_kernel(void) {
  enum { N = 203, D = 37 };
  static float x[N * D], out_b[N * N], out_f[N * N], kt[D * 64];
  uint64_t rng = 5;
  for (int i = 0; i < N * D; i++) x[i] = (float)rkv_test_uniform(&rng) * 2 - 1;
  /* (row offset, rows, column offset, columns) */
  const int32_t shapes[5][4] = {
      {0, 203, 0, 203}, {5, 7, 5, 198}, {200, 3, 200, 3}, {0, 1, 0, 64}, {17, 30, 3, 129}};
  for (int t = 0; t < 5; t++) {
    int32_t i0 = shapes[t][0], m = shapes[t][1], j0 = shapes[t][2], nb = shapes[t][3];
    rkvi_gemm_abt(x + i0 * D, m, x + j0 * D, nb, D, out_f, kt, false);
    rkvi_gemm_abt(x + i0 * D, m, x + j0 * D, nb, D, out_b, kt, true); /* BLAS when built */
    double worst_f = 0, worst_b = 0;
    for (int i = 0; i < m; i++)
      for (int j = 0; j < nb; j++) {
        double s = 0;
        for (int c = 0; c < D; c++) s += (double)x[(i0 + i) * D + c] * x[(j0 + j) * D + c];
        worst_f = fmax(worst_f, fabs(out_f[i * nb + j] - s));
        worst_b = fmax(worst_b, fabs(out_b[i * nb + j] - s));
      }
    EXPECT_NEAR(worst_f, 0, 1e-5);
    EXPECT_NEAR(worst_b, 0, 1e-5);
  }
}

static void test_errors(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 16;
  float k[64 * 4] = {0}, q[8 * 4] = {0};
  int32_t keep[64];
  char err[256];
  EXPECT_STATUS(rkv_evict_select_dense(&p, k, q, NULL, 2, 3, 32, 4, keep, NULL, g_ws, sizeof g_ws,
                                       err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "multiple") != NULL);
  EXPECT_STATUS(rkv_evict_select_dense(&p, NULL, q, NULL, 1, 1, 32, 4, keep, NULL, g_ws,
                                       sizeof g_ws, err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_select_dense(&p, k, q, NULL, 1, 1, 32, 4, keep, NULL, g_ws, 100, err, sizeof err),
      RKV_ERR_CAPACITY);
  p.policy = RKV_EVICT_H2O;
  EXPECT_STATUS(rkv_evict_select_dense(&p, k, q, NULL, 1, 1, 32, 4, keep, NULL, g_ws, sizeof g_ws,
                                       err, sizeof err),
                RKV_ERR_INVALID_ARG);
  /* n <= B needs no workspace at all. */
  p.policy = RKV_EVICT_RKV;
  EXPECT_OK(
      rkv_evict_select_dense(&p, k, q, NULL, 1, 1, 16, 4, keep, NULL, NULL, 0, err, sizeof err));
  EXPECT_EQ_INT(keep[15], 15);
  p.lambda = 2;
  EXPECT_STATUS(rkv_evict_select_dense(&p, k, q, NULL, 1, 1, 32, 4, keep, NULL, g_ws, sizeof g_ws,
                                       err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "lambda") != NULL);
}

int main(void) {
  test_importance();
  test_redundancy();
  test_ties();
  test_streaming();
  test_properties();
  test_gqa_equivalence();
  test_gemm_kernel();
  test_errors();
  return rkv_test_finish();
}
