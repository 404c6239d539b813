/* Decode attention of the CPU reference against a dense double-precision attention over the
 * same rounded K/V: every dtype, GQA group sizes 1/4/8, head dims on and off the specialised
 * set, odd block sizes, ragged per-stream lengths (as after per-head compaction), blocks
 * scattered over the pool, an empty stream, a custom scale, H2O score accumulation, and
 * bit-identical results for 1 and 4 threads. Tolerance rule: see attn_model.h. */
#include "attn_model.h"

typedef struct dcase {
  rkv_dtype dt;
  uint32_t bs, d, B, H, G;
  int64_t max_len;
  float scale; /* 0 = default */
  int32_t threads;
  bool empty_stream; /* stream 1 stays empty */
} dcase;

/* Builds the model, runs one decode with score accumulation, checks out and scores against
 * the reference. Returns the worst scaled error (out), or INFINITY when setup failed. */
static double run_case(const dcase *c, uint64_t seed, float *out_copy, float *scores_copy) {
  uint64_t rng = seed;
  attn_model m;
  if (attn_model_init(&m, c->dt, c->bs, c->d, c->B, c->H, c->G, c->max_len, c->threads, &rng)) {
    RKV_TEST_FAIL_("model init failed");
    return INFINITY;
  }
  for (int32_t s = 0; s < m.S; s++) {
    int64_t n = 1 + (int64_t)(rkv_test_rand(&rng) % (uint64_t)c->max_len);
    if (s == 0) n = c->max_len;           /* the longest */
    if (s == 2 % m.S) n = c->bs;          /* exactly one full block */
    if (s == 1 && c->empty_stream) n = 0; /* nothing written */
    EXPECT_OK(attn_model_append(&m, s, n, &rng));
  }
  const size_t qn = (size_t)c->B * m.Hq * c->d;
  float *q = malloc(qn * sizeof(float)), *out = malloc(qn * sizeof(float));
  for (size_t i = 0; i < qn; i++) q[i] = attn_uniform(&rng, -3.0f, 3.0f);
  for (size_t i = 0; i < qn; i++) out[i] = NAN;
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = c->B;
  p.num_q_heads = m.Hq;
  p.num_kv_heads = c->H;
  p.head_dim = c->d;
  p.scale = c->scale;
  p.q = q;
  p.out = out;
  p.table = attn_model_table(&m);
  p.accumulate_scores = true;
  size_t ws_bytes = 0;
  EXPECT_OK(rkv_attn_workspace_size(m.pool, &p, &ws_bytes));
  void *ws = malloc(ws_bytes + 1);
  /* Misalign on purpose: the kernel aligns its regions itself. */
  EXPECT_OK(rkv_attn_decode(m.pool, &p, (char *)ws + 1, ws_bytes));
  const double scale = c->scale != 0.0f ? c->scale : 1.0 / sqrt((double)c->d);
  double worst = 0.0, worst_score = 0.0;
  double *ref = malloc(sizeof(double) * c->d);
  double *probs = malloc(sizeof(double) * (size_t)c->max_len);
  double *mass = malloc(sizeof(double) * (size_t)c->max_len);
  const float *sc = rkv_kv_pool_scores(m.pool);
  for (uint32_t b = 0; b < c->B; b++)
    for (uint32_t h = 0; h < c->H; h++) {
      const int32_t s = (int32_t)(b * c->H + h);
      for (int64_t j = 0; j < m.len[s]; j++) mass[j] = 0.0;
      for (uint32_t g = 0; g < c->G; g++) {
        const uint32_t qh = h * c->G + g;
        const float *o = out + ((size_t)b * m.Hq + qh) * c->d;
        if (m.len[s] == 0) {
          for (uint32_t k = 0; k < c->d; k++) ref[k] = 0.0;
        } else {
          attn_ref(&m, s, q + ((size_t)b * m.Hq + qh) * c->d, m.len[s], scale, ref, probs);
          for (int64_t j = 0; j < m.len[s]; j++) mass[j] += probs[j];
        }
        double e = attn_err(o, ref, c->d);
        if (e > worst) worst = e;
      }
      double total = 0.0;
      for (int64_t j = 0; j < m.len[s]; j++) {
        const int64_t slot = (int64_t)m.blk[s][j / c->bs] * c->bs + j % c->bs;
        double e = fabs(sc[slot] - mass[j]);
        if (e > worst_score) worst_score = e;
        total += sc[slot];
      }
      /* Each of the G query heads' probabilities sums to 1. */
      EXPECT_NEAR(total, m.len[s] ? (double)c->G : 0.0, 1e-4 * c->G);
    }
  EXPECT_NEAR(worst_score, 0.0, ATTN_TOL);
  if (out_copy) memcpy(out_copy, out, qn * sizeof(float));
  if (scores_copy) memcpy(scores_copy, sc, sizeof(float) * (size_t)m.num_blocks * c->bs);
  free(ref), free(probs), free(mass), free(ws), free(q), free(out);
  attn_model_free(&m);
  return worst;
}

int main(void) {
  static const rkv_dtype dts[] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  static const uint32_t groups[] = {1, 4, 8};
  static const uint32_t dims[] = {128, 64, 40};
  uint64_t seed = 1234;
  for (size_t di = 0; di < 3; di++)
    for (size_t gi = 0; gi < 3; gi++)
      for (size_t hi = 0; hi < 3; hi++) {
        dcase c = {dts[di], hi == 2 ? 7u : 16u, dims[hi], 3, 2, groups[gi], 150, 0.0f, 1, false};
        double e = run_case(&c, seed++, NULL, NULL);
        if (!(e <= ATTN_TOL))
          RKV_TEST_FAIL_("decode %s G=%u d=%u bs=%u: error %.3g > %.1g", rkv_dtype_name(c.dt), c.G,
                         c.d, c.bs, e, ATTN_TOL);
        else
          rkv_test_passed_++;
        printf("decode %-4s G=%u d=%3u bs=%2u: max scaled error %.3g\n", rkv_dtype_name(c.dt), c.G,
               c.d, c.bs, e);
      }
  /* head_dim 256, a custom scale, an empty stream (zero output, no mass), 2 threads. */
  {
    dcase c = {RKV_DTYPE_BF16, 32, 256, 2, 4, 2, 90, 0.3f, 2, true};
    double e = run_case(&c, 77, NULL, NULL);
    EXPECT_NEAR(e, 0.0, ATTN_TOL);
  }
  /* Big enough for 4 workers: results must not depend on the thread count. */
  {
    dcase c = {RKV_DTYPE_F16, 16, 128, 8, 8, 4, 300, 0.0f, 1, false};
    const size_t qn = (size_t)c.B * c.H * c.G * c.d;
    float *o1 = malloc(qn * sizeof(float)), *o4 = malloc(qn * sizeof(float));
    /* Same seed -> same pool size and contents in both runs. */
    size_t nslots = ((size_t)(c.max_len / c.bs + 1) * c.B * c.H * 2 + 3) * c.bs;
    float *s1 = malloc(nslots * sizeof(float)), *s4 = malloc(nslots * sizeof(float));
    double e1 = run_case(&c, 99, o1, s1);
    c.threads = 4;
    double e4 = run_case(&c, 99, o4, s4);
    EXPECT_NEAR(e1, 0.0, ATTN_TOL);
    EXPECT_NEAR(e4, 0.0, ATTN_TOL);
    EXPECT(memcmp(o1, o4, qn * sizeof(float)) == 0);
    EXPECT(memcmp(s1, s4, nslots * sizeof(float)) == 0);
    free(o1), free(o4), free(s1), free(s4);
  }
  return rkv_test_finish();
}
