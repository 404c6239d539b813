/* Selection granularity (rkv_evict_select_dense_multi):
 *  - names and parsing; workspace sizes (stream mode needs exactly the per-layer entry's);
 *  - stream mode equals rkv_evict_select_dense layer by layer (kept sets and score dumps) for
 *    every policy and GQA 1 / 4;
 *  - a hand-computed H2O case where the four units keep four different sets, including a tie
 *    in the aggregate (lower position wins) and a window whose own mass is ignored;
 *  - on random inputs for every policy and unit: every stream of a group gets the same set,
 *    min(n, B) ascending unique positions, the window kept, and no evicted candidate's
 *    aggregate (recomputed here from the per-stream dumps) beats a kept one's;
 *  - streaming, full and n <= B give the same set at every unit;
 *  - bad granularity, shapes, missing inputs and a short workspace fail with a message and
 *    write nothing. */
#include <stdbool.h>

#include <rkv/evict.h>

#include "rkv_test.h"

static unsigned char g_ws[64 << 20];

static const rkv_evict_granularity kGrans[4] = {RKV_EVICT_GRAN_STREAM, RKV_EVICT_GRAN_LAYER,
                                                RKV_EVICT_GRAN_KVHEAD, RKV_EVICT_GRAN_SEQUENCE};

static rkv_status multi(const rkv_evict_params *p, rkv_evict_granularity g, const float *k,
                        const float *q, const float *acc, uint32_t L, uint32_t kvh, uint32_t qh,
                        int32_t n, uint32_t d, int32_t *keep, const rkv_evict_scores *dump) {
  char err[256];
  rkv_status s = rkv_evict_select_dense_multi(p, g, k, q, acc, L, kvh, qh, n, d, keep, dump, g_ws,
                                              sizeof g_ws, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "select_dense_multi: %s\n", err);
  return s;
}

static void test_names(void) {
  const char *names[4] = {"stream", "layer", "kvhead", "sequence"};
  for (int i = 0; i < 4; i++) {
    rkv_evict_granularity g = RKV_EVICT_GRAN_SEQUENCE;
    EXPECT_STREQ(rkv_evict_granularity_name(kGrans[i]), names[i]);
    EXPECT_OK(rkv_evict_granularity_parse(names[i], &g));
    EXPECT_EQ_INT(g, kGrans[i]);
  }
  EXPECT_STREQ(rkv_evict_granularity_name(RKV_EVICT_GRAN_COUNT_), "invalid");
  EXPECT_STREQ(rkv_evict_granularity_name((rkv_evict_granularity)-1), "invalid");
  rkv_evict_granularity g = RKV_EVICT_GRAN_LAYER;
  EXPECT_STATUS(rkv_evict_granularity_parse("head", &g), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_granularity_parse("", &g), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_granularity_parse(NULL, &g), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_granularity_parse("layer", NULL), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(g, RKV_EVICT_GRAN_LAYER); /* a failed parse leaves out alone */
}

static void test_workspace(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  size_t dense = 0, b = 0, coarse = 0;
  EXPECT_OK(rkv_evict_dense_workspace_size(&p, 128, 1152, &dense));
  EXPECT_OK(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_STREAM, 128, 1152, &b));
  EXPECT_EQ_INT(b, dense);
  for (int i = 1; i < 4; i++) {
    EXPECT_OK(rkv_evict_dense_multi_workspace_size(&p, kGrans[i], 128, 1152, &coarse));
    EXPECT(coarse >= dense + 2 * 1152 * sizeof(double));
  }
  b = 7;
  EXPECT_STATUS(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_COUNT_, 128, 1152, &b),
                RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(b, 0);
  EXPECT_STATUS(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 0, 1152, &b),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 128, -1, &b),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 128, 1, NULL),
                RKV_ERR_INVALID_ARG);
  p.window = 0;
  EXPECT_STATUS(rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 128, 1, &b),
                RKV_ERR_INVALID_ARG);
}

static bool same(const int32_t *a, const int32_t *b, size_t n) {
  return memcmp(a, b, n * sizeof(int32_t)) == 0;
}

/* Clustered keys: runs that repeat earlier ones with noise, so R-KV's redundancy matters. */
static void fill_inputs(uint64_t *seed, float *k, size_t streams, int32_t n, uint32_t d, float *q,
                        size_t qrows, float *acc) {
  for (size_t s = 0; s < streams; s++) {
    float *ks = k + s * (size_t)n * d;
    for (int32_t t = 0; t < n; t++) {
      bool repeat = t >= 8 && rkv_test_uniform(seed) < 0.4;
      int32_t src = repeat ? (int32_t)(rkv_test_uniform(seed) * (t - 1)) : 0;
      for (uint32_t i = 0; i < d; i++) {
        float r = (float)(rkv_test_uniform(seed) * 2.0 - 1.0);
        ks[(size_t)t * d + i] = repeat ? ks[(size_t)src * d + i] + 0.1f * r : r;
      }
    }
  }
  for (size_t i = 0; i < qrows * d; i++) q[i] = (float)(rkv_test_uniform(seed) * 3.0 - 1.5);
  for (size_t i = 0; i < streams * (size_t)n; i++) acc[i] = (float)rkv_test_uniform(seed);
}

#define L_ 3
#define H_ 2
#define N_ 150
#define D_ 32
#define W_ 8
#define B_ 96

static float g_k[L_ * H_ * N_ * D_], g_q[L_ * H_ * 4 * W_ * D_], g_acc[L_ * H_ * N_];
static float g_joint[L_ * H_ * N_], g_imp[L_ * H_ * N_], g_red[L_ * H_ * N_];
static float g_joint1[H_ * N_], g_imp1[H_ * N_], g_red1[H_ * N_];
static int32_t g_keep[L_ * H_ * N_], g_keep1[H_ * N_];

/* Stream mode against rkv_evict_select_dense, layer by layer, dumps included. */
static void test_stream_equals_dense(void) {
  const rkv_evict_policy pols[5] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O,
                                    RKV_EVICT_STREAMING, RKV_EVICT_FULL};
  uint64_t seed = 11;
  for (uint32_t G = 1; G <= 4; G += 3) {
    const uint32_t QH = H_ * G;
    fill_inputs(&seed, g_k, L_ * H_, N_, D_, g_q, (size_t)L_ * QH * W_, g_acc);
    for (int pi = 0; pi < 5; pi++) {
      rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
      p.policy = pols[pi], p.budget = B_, p.window = W_;
      const int32_t kept = rkv_evict_kept_count(&p, N_), nc = N_ - W_;
      rkv_evict_scores dump = {g_imp, g_red, g_joint}, dump1 = {g_imp1, g_red1, g_joint1};
      if (multi(&p, RKV_EVICT_GRAN_STREAM, g_k, g_q, g_acc, L_, H_, QH, N_, D_, g_keep, &dump) !=
          RKV_OK) {
        RKV_TEST_FAIL_("multi failed (policy %s)", rkv_evict_policy_name(p.policy));
        continue;
      }
      bool keep_ok = true, dump_ok = true;
      for (uint32_t l = 0; l < L_; l++) {
        char err[256];
        EXPECT_OK(rkv_evict_select_dense(&p, g_k + (size_t)l * H_ * N_ * D_,
                                         g_q + (size_t)l * QH * W_ * D_,
                                         g_acc + (size_t)l * H_ * N_, H_, QH, N_, D_, g_keep1,
                                         &dump1, g_ws, sizeof g_ws, err, sizeof err));
        keep_ok &= same(g_keep + (size_t)l * H_ * kept, g_keep1, (size_t)H_ * kept);
        if (kept < N_ && p.policy != RKV_EVICT_STREAMING) {
          size_t off = (size_t)l * H_ * nc, len = (size_t)H_ * nc * sizeof(float);
          dump_ok &= memcmp(g_joint + off, g_joint1, len) == 0 &&
                     memcmp(g_imp + off, g_imp1, len) == 0 && memcmp(g_red + off, g_red1, len) == 0;
        }
      }
      if (!keep_ok || !dump_ok)
        RKV_TEST_FAIL_(
            "stream mode differs from the per-layer entry (policy %s, G %u): keep %d, "
            "dumps %d",
            rkv_evict_policy_name(p.policy), G, keep_ok, dump_ok);
      else
        rkv_test_passed_++;
    }
  }
}

/* L = 2, H = 2, n = 6, window 1 (position 5), B = 3: two of the five candidates.
 *   (0,0) [9 0 0 1 0]  (0,1) [0 0 8 1 0]  (1,0) [0 7 0 1 0]  (1,1) [0 0 0 1 9]
 * stream:   {0,3} {2,3} {1,3} {3,4};
 * layer:    layer 0 mean [4.5 0 4 1 0] -> {0,2}; layer 1 mean [0 3.5 0 1 4.5] -> {1,4};
 * kvhead:   head 0 sum [9 7 0 2 0] -> {0,1}; head 1 sum [0 0 8 2 9] -> {2,4};
 * sequence: sum of the layer means [4.5 3.5 4 2 4.5] -> {0,4}.
 * With B = 2 (one candidate) the sequence aggregate ties 4.5 at 0 and 4: position 0 wins.
 * The window's own mass (-100 / 1000) must play no part. */
static void test_h2o_by_hand(void) {
  const float acc[2][2][6] = {{{9, 0, 0, 1, 0, -100}, {0, 0, 8, 1, 0, 1000}},
                              {{0, 7, 0, 1, 0, -100}, {0, 0, 0, 1, 9, 1000}}};
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_H2O, p.window = 1, p.budget = 3, p.sinks = 0;
  const int32_t want3[4][4][3] = {
      {{0, 3, 5}, {2, 3, 5}, {1, 3, 5}, {3, 4, 5}}, /* stream: (0,0) (0,1) (1,0) (1,1) */
      {{0, 2, 5}, {0, 2, 5}, {1, 4, 5}, {1, 4, 5}}, /* layer */
      {{0, 1, 5}, {2, 4, 5}, {0, 1, 5}, {2, 4, 5}}, /* kvhead */
      {{0, 4, 5}, {0, 4, 5}, {0, 4, 5}, {0, 4, 5}}, /* sequence */
  };
  const int32_t want2[4][4][2] = {
      {{0, 5}, {2, 5}, {1, 5}, {4, 5}},
      {{0, 5}, {0, 5}, {4, 5}, {4, 5}},
      {{0, 5}, {4, 5}, {0, 5}, {4, 5}},
      {{0, 5}, {0, 5}, {0, 5}, {0, 5}}, /* the tie at 4.5: lower position */
  };
  for (int gi = 0; gi < 4; gi++) {
    int32_t keep[4 * 3];
    p.budget = 3;
    EXPECT_OK(multi(&p, kGrans[gi], NULL, NULL, &acc[0][0][0], 2, 2, 2, 6, 4, keep, NULL));
    if (!same(keep, &want3[gi][0][0], 12))
      RKV_TEST_FAIL_("%s B=3: got [%d %d %d | %d %d %d | %d %d %d | %d %d %d]",
                     rkv_evict_granularity_name(kGrans[gi]), keep[0], keep[1], keep[2], keep[3],
                     keep[4], keep[5], keep[6], keep[7], keep[8], keep[9], keep[10], keep[11]);
    else
      rkv_test_passed_++;
    p.budget = 2;
    EXPECT_OK(multi(&p, kGrans[gi], NULL, NULL, &acc[0][0][0], 2, 2, 2, 6, 4, keep, NULL));
    if (!same(keep, &want2[gi][0][0], 8))
      RKV_TEST_FAIL_("%s B=2: got [%d %d | %d %d | %d %d | %d %d]",
                     rkv_evict_granularity_name(kGrans[gi]), keep[0], keep[1], keep[2], keep[3],
                     keep[4], keep[5], keep[6], keep[7]);
    else
      rkv_test_passed_++;
  }
}

/* Members of stream (l, h)'s group under g, as layer / head ranges. */
static void group_of(rkv_evict_granularity g, uint32_t l, uint32_t h, uint32_t L, uint32_t H,
                     uint32_t r[4]) {
  bool all_l = g == RKV_EVICT_GRAN_KVHEAD || g == RKV_EVICT_GRAN_SEQUENCE;
  bool all_h = g == RKV_EVICT_GRAN_LAYER || g == RKV_EVICT_GRAN_SEQUENCE;
  r[0] = all_l ? 0 : l, r[1] = all_l ? L : l + 1;
  r[2] = all_h ? 0 : h, r[3] = all_h ? H : h + 1;
}

/* Properties at every unit and policy on random inputs (GQA 4). */
static void test_properties(void) {
  const rkv_evict_policy pols[4] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O,
                                    RKV_EVICT_STREAMING};
  const uint32_t G = 4, QH = H_ * G;
  uint64_t seed = 23;
  fill_inputs(&seed, g_k, L_ * H_, N_, D_, g_q, (size_t)L_ * QH * W_, g_acc);
  for (int pi = 0; pi < 4; pi++) {
    rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
    p.policy = pols[pi], p.budget = B_, p.window = W_;
    const int32_t nc = N_ - W_, k = B_ - W_;
    int32_t stream_keep[L_ * H_ * B_];
    for (int gi = 0; gi < 4; gi++) {
      rkv_evict_scores dump = {NULL, NULL, g_joint};
      const char *what = rkv_evict_granularity_name(kGrans[gi]);
      if (multi(&p, kGrans[gi], g_k, g_q, g_acc, L_, H_, QH, N_, D_, g_keep, &dump) != RKV_OK) {
        RKV_TEST_FAIL_("%s %s failed", rkv_evict_policy_name(p.policy), what);
        continue;
      }
      if (gi == 0) memcpy(stream_keep, g_keep, sizeof stream_keep);
      if (p.policy == RKV_EVICT_STREAMING) {
        EXPECT(same(g_keep, stream_keep, (size_t)L_ * H_ * B_));
        continue;
      }
      int bad_shape = 0, bad_group = 0, bad_rank = 0;
      for (uint32_t l = 0; l < L_; l++) {
        for (uint32_t h = 0; h < H_; h++) {
          const int32_t *row = g_keep + ((size_t)l * H_ + h) * B_;
          for (int32_t i = 0; i < B_; i++)
            bad_shape += row[i] < 0 || row[i] >= N_ || (i > 0 && row[i] <= row[i - 1]);
          for (int32_t i = 0; i < W_; i++) bad_shape += row[k + i] != nc + i; /* the window */
          uint32_t r[4];
          group_of(kGrans[gi], l, h, L_, H_, r);
          for (uint32_t l2 = r[0]; l2 < r[1]; l2++)
            for (uint32_t h2 = r[2]; h2 < r[3]; h2++)
              bad_group += !same(row, g_keep + ((size_t)l2 * H_ + h2) * B_, B_);
          /* The aggregate from the f32 dumps: no evicted candidate may rank clearly above a
           * kept one (f32 rounding of the dump is the only slack). */
          double agg[N_] = {0}, scale = 0.0;
          for (uint32_t l2 = r[0]; l2 < r[1]; l2++) {
            double lay[N_] = {0};
            for (uint32_t h2 = r[2]; h2 < r[3]; h2++)
              for (int32_t j = 0; j < nc; j++) lay[j] += g_joint[((size_t)l2 * H_ + h2) * nc + j];
            for (int32_t j = 0; j < nc; j++) agg[j] += lay[j] / (double)(r[3] - r[2]);
          }
          for (int32_t j = 0; j < nc; j++) scale = fabs(agg[j]) > scale ? fabs(agg[j]) : scale;
          uint8_t kept[N_] = {0};
          double lo = INFINITY, hi = -INFINITY;
          for (int32_t i = 0; i < k; i++) kept[row[i]] = 1;
          for (int32_t j = 0; j < nc; j++) {
            if (kept[j]) lo = agg[j] < lo ? agg[j] : lo;
            if (!kept[j]) hi = agg[j] > hi ? agg[j] : hi;
          }
          bad_rank += hi > lo + 1e-6 * scale;
        }
      }
      if (bad_shape || bad_group || bad_rank)
        RKV_TEST_FAIL_("%s %s: %d shape, %d group, %d rank violations",
                       rkv_evict_policy_name(p.policy), what, bad_shape, bad_group, bad_rank);
      else
        rkv_test_passed_++;
      /* Coarser units must actually differ from per-stream selection on these inputs. */
      if (gi > 0) EXPECT(!same(g_keep, stream_keep, (size_t)L_ * H_ * B_));
    }
  }
}

/* n <= B and full: everything kept, at every unit. */
static void test_no_compression(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_RKV, p.budget = 64, p.window = 8;
  for (int gi = 0; gi < 4; gi++) {
    for (int full = 0; full < 2; full++) {
      p.policy = full ? RKV_EVICT_FULL : RKV_EVICT_RKV;
      const int32_t n = full ? 100 : 64;
      int32_t keep[2 * 3 * 100];
      EXPECT_OK(multi(&p, kGrans[gi], g_k, g_q, NULL, 2, 3, 3, n, 4, keep, NULL));
      int bad = 0;
      for (int s = 0; s < 6; s++)
        for (int32_t j = 0; j < n; j++) bad += keep[s * n + j] != j;
      EXPECT_EQ_INT(bad, 0);
    }
  }
}

/* Failures: RKV_ERR_INVALID_ARG / RKV_ERR_CAPACITY with a message, keep and dumps untouched. */
static void test_errors(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_RKV, p.budget = 16, p.window = 4;
  int32_t keep[2 * 2 * 16];
  float joint[2 * 2 * 28];
  rkv_evict_scores dump = {NULL, NULL, joint};
  char err[256];
  struct {
    rkv_evict_granularity g;
    uint32_t L, kvh, qh, d;
    int32_t n;
    bool no_q, no_keep, small_ws;
    rkv_status want;
    const char *says;
  } cases[] = {
      {RKV_EVICT_GRAN_COUNT_, 2, 2, 2, 8, 32, false, false, false, RKV_ERR_INVALID_ARG,
       "granularity"},
      {(rkv_evict_granularity)-1, 2, 2, 2, 8, 32, false, false, false, RKV_ERR_INVALID_ARG,
       "granularity"},
      {RKV_EVICT_GRAN_LAYER, 0, 2, 2, 8, 32, false, false, false, RKV_ERR_INVALID_ARG,
       "num_layers"},
      {RKV_EVICT_GRAN_LAYER, 2, 2, 3, 8, 32, false, false, false, RKV_ERR_INVALID_ARG, "multiple"},
      {RKV_EVICT_GRAN_KVHEAD, 2, 0, 2, 8, 32, false, false, false, RKV_ERR_INVALID_ARG, "multiple"},
      {RKV_EVICT_GRAN_SEQUENCE, 2, 2, 2, 0, 32, false, false, false, RKV_ERR_INVALID_ARG,
       "head_dim"},
      {RKV_EVICT_GRAN_SEQUENCE, 2, 2, 2, 8, -1, false, false, false, RKV_ERR_INVALID_ARG,
       "bad sizes"},
      {RKV_EVICT_GRAN_SEQUENCE, 2, 2, 2, 8, 32, true, false, false, RKV_ERR_INVALID_ARG,
       "needs keys and queries"},
      {RKV_EVICT_GRAN_LAYER, 2, 2, 2, 8, 32, false, true, false, RKV_ERR_INVALID_ARG, "keep"},
      {RKV_EVICT_GRAN_LAYER, 2, 2, 2, 8, 32, false, false, true, RKV_ERR_CAPACITY, "workspace"},
      {RKV_EVICT_GRAN_STREAM, 65537, 1, 1, 8, 32, false, false, false, RKV_ERR_INVALID_ARG,
       "num_layers"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    for (size_t j = 0; j < 64; j++) keep[j] = -7;
    for (size_t j = 0; j < 112; j++) joint[j] = -7.0f;
    err[0] = '\0';
    rkv_status s = rkv_evict_select_dense_multi(
        &p, cases[i].g, g_k, cases[i].no_q ? NULL : g_q, NULL, cases[i].L, cases[i].kvh,
        cases[i].qh, cases[i].n, cases[i].d, cases[i].no_keep ? NULL : keep, &dump, g_ws,
        cases[i].small_ws ? 1024 : sizeof g_ws, err, sizeof err);
    EXPECT_STATUS(s, cases[i].want);
    if (!strstr(err, cases[i].says))
      RKV_TEST_FAIL_("case %zu: message '%s' does not say '%s'", i, err, cases[i].says);
    else
      rkv_test_passed_++;
    int touched = 0;
    for (size_t j = 0; j < 64; j++) touched += keep[j] != -7;
    for (size_t j = 0; j < 112; j++) touched += joint[j] != -7.0f;
    EXPECT_EQ_INT(touched, 0);
  }
  /* H2O without masses; invalid parameters. */
  p.policy = RKV_EVICT_H2O;
  EXPECT_STATUS(rkv_evict_select_dense_multi(&p, RKV_EVICT_GRAN_LAYER, NULL, NULL, NULL, 2, 2, 2,
                                             32, 8, keep, NULL, g_ws, sizeof g_ws, err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "h2o") != NULL);
  p.budget = 2;
  EXPECT_STATUS(rkv_evict_select_dense_multi(&p, RKV_EVICT_GRAN_LAYER, NULL, NULL, g_acc, 2, 2, 2,
                                             32, 8, keep, NULL, g_ws, sizeof g_ws, err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "budget") != NULL);
}

int main(void) {
  test_names();
  test_workspace();
  test_stream_equals_dense();
  test_h2o_by_hand();
  test_properties();
  test_no_compression();
  test_errors();
  return rkv_test_finish();
}
