/* Prefill / extend attention of the CPU reference against dense causal attention in double:
 * a prompt fed in 3 chunks (chunked prefill) on top of ragged per-stream prefixes (streams of
 * one sequence may differ after per-head compaction), sequences with no new rows in a chunk,
 * every dtype and GQA 1/4/8; chunked results equal one whole-prompt prefill; the query window
 * receives the last rows; score mass sums to G per new row. Tolerance rule: attn_model.h. */
#include <rkv/qwindow.h>

#include "attn_model.h"

#define CHUNKS 3
#define WINDOW 4

typedef struct pcase {
  rkv_dtype dt;
  uint32_t bs, d, B, H, G;
  int32_t threads;
} pcase;

/* Runs CHUNKS prefill chunks; checks every output row against the reference; returns the
 * worst scaled error. */
static double run_case(const pcase *c, uint64_t seed) {
  uint64_t rng = seed;
  attn_model m;
  const int64_t cap = 200;
  if (attn_model_init(&m, c->dt, c->bs, c->d, c->B, c->H, c->G, cap, c->threads, &rng)) {
    RKV_TEST_FAIL_("model init failed");
    return INFINITY;
  }
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = 2;
  qc.num_q_heads = m.Hq;
  qc.head_dim = c->d;
  qc.window = WINDOW;
  rkv_qwindow *qw = NULL;
  EXPECT_OK(rkv_qwindow_create(&qc, &qw));
  int64_t *seq_ids = malloc(sizeof(int64_t) * c->B);
  for (uint32_t b = 0; b < c->B; b++) {
    seq_ids[b] = 1000 + 7 * (int64_t)b;
    EXPECT_OK(rkv_qwindow_seq_add(qw, seq_ids[b]));
  }
  /* Ragged cached prefixes (0 .. 40 tokens, per stream). */
  for (int32_t s = 0; s < m.S; s++)
    EXPECT_OK(attn_model_append(&m, s, (int64_t)(rkv_test_rand(&rng) % 41), &rng));

  const uint32_t Hq = m.Hq, d = c->d;
  int32_t *q_indptr = malloc(sizeof(int32_t) * (c->B + 1));
  float *last_rows = calloc((size_t)c->B * WINDOW * Hq * d, sizeof(float)); /* newest rows */
  uint32_t *pushed = calloc(c->B, sizeof(uint32_t));
  double worst = 0.0;
  double *ref = malloc(sizeof(double) * d), *probs = malloc(sizeof(double) * (size_t)cap);
  for (int chunk = 0; chunk < CHUNKS; chunk++) {
    q_indptr[0] = 0;
    for (uint32_t b = 0; b < c->B; b++) {
      int32_t n = 1 + (int32_t)(rkv_test_rand(&rng) % 20);
      if (b == 1 && chunk == 1) n = 0; /* a sequence with nothing new in this chunk */
      q_indptr[b + 1] = q_indptr[b] + n;
      for (uint32_t h = 0; h < c->H; h++)
        EXPECT_OK(attn_model_append(&m, (int32_t)(b * c->H + h), n, &rng));
    }
    const int32_t rows = q_indptr[c->B];
    float *q = malloc(sizeof(float) * (size_t)rows * Hq * d);
    float *out = malloc(sizeof(float) * (size_t)rows * Hq * d);
    for (size_t i = 0; i < (size_t)rows * Hq * d; i++) q[i] = attn_uniform(&rng, -3.0f, 3.0f);
    for (size_t i = 0; i < (size_t)rows * Hq * d; i++) out[i] = NAN;
    rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
    p.num_seqs = c->B;
    p.num_q_heads = Hq;
    p.num_kv_heads = c->H;
    p.head_dim = d;
    p.q = q;
    p.out = out;
    p.table = attn_model_table(&m);
    p.q_indptr = q_indptr;
    p.qwindow = qw;
    p.seq_ids = seq_ids;
    p.layer = 1;
    p.accumulate_scores = true;
    float *sc = rkv_kv_pool_scores(m.pool);
    memset(sc, 0, sizeof(float) * m.num_blocks * c->bs);
    size_t wsb = 0;
    EXPECT_OK(rkv_attn_workspace_size(m.pool, &p, &wsb));
    void *ws = malloc(wsb);
    EXPECT_OK(rkv_attn_prefill(m.pool, &p, ws, wsb));
    free(ws);
    for (uint32_t b = 0; b < c->B; b++) {
      const int32_t n = q_indptr[b + 1] - q_indptr[b];
      for (uint32_t h = 0; h < c->H; h++) {
        const int32_t s = (int32_t)(b * c->H + h);
        double total = 0.0;
        for (int64_t j = 0; j < m.len[s]; j++)
          total += sc[(int64_t)m.blk[s][j / c->bs] * c->bs + j % c->bs];
        EXPECT_NEAR(total, (double)c->G * n, 1e-4 * c->G * (n + 1));
        for (int32_t t = 0; t < n; t++)
          for (uint32_t g = 0; g < c->G; g++) {
            const size_t row = (size_t)(q_indptr[b] + t) * Hq + h * c->G + g;
            attn_ref(&m, s, q + row * d, m.len[s] - n + t + 1, 1.0 / sqrt((double)d), ref, probs);
            double e = attn_err(out + row * d, ref, d);
            if (e > worst) worst = e;
          }
      }
      /* Model of the query window: the newest WINDOW rows of this sequence. */
      for (int32_t t = 0; t < n; t++) {
        memmove(last_rows + (size_t)b * WINDOW * Hq * d,
                last_rows + (size_t)b * WINDOW * Hq * d + (size_t)Hq * d,
                sizeof(float) * (WINDOW - 1) * Hq * d);
        memcpy(last_rows + ((size_t)b * WINDOW + WINDOW - 1) * Hq * d,
               q + (size_t)(q_indptr[b] + t) * Hq * d, sizeof(float) * Hq * d);
        pushed[b]++;
      }
    }
    free(q), free(out);
  }
  /* The window holds the newest min(pushed, WINDOW) rows, as [head][row][d]. */
  float *got = malloc(sizeof(float) * Hq * WINDOW * d);
  for (uint32_t b = 0; b < c->B; b++) {
    uint32_t count = 0;
    EXPECT_OK(rkv_qwindow_get(qw, seq_ids[b], 1, got, &count));
    const uint32_t want = pushed[b] < WINDOW ? pushed[b] : WINDOW;
    EXPECT_EQ_INT(count, want);
    int bad = 0;
    for (uint32_t h = 0; h < Hq; h++)
      for (uint32_t r = 0; r < count; r++) {
        const float *exp_row =
            last_rows + ((size_t)b * WINDOW + (WINDOW - count + r)) * Hq * d + (size_t)h * d;
        if (memcmp(got + ((size_t)h * WINDOW + r) * d, exp_row, sizeof(float) * d) != 0) bad++;
      }
    EXPECT_EQ_INT(bad, 0);
    EXPECT_OK(rkv_qwindow_get(qw, seq_ids[b], 0, got, &count));
    EXPECT_EQ_INT(count, 0); /* layer 0 never pushed */
  }
  free(got), free(ref), free(probs), free(q_indptr), free(last_rows), free(pushed), free(seq_ids);
  rkv_qwindow_destroy(qw);
  attn_model_free(&m);
  return worst;
}

/* A whole prompt in one prefill equals the same prompt in chunks (row by row, same values). */
static void chunked_equals_whole(void) {
  uint64_t rng = 5;
  attn_model m;
  const uint32_t d = 64, H = 2, G = 4, Hq = H * G;
  const int32_t T = 45, cuts[] = {0, 13, 14, 45};
  if (attn_model_init(&m, RKV_DTYPE_BF16, 16, d, 1, H, G, 64, 1, &rng)) {
    RKV_TEST_FAIL_("model init failed");
    return;
  }
  for (int32_t s = 0; s < m.S; s++) EXPECT_OK(attn_model_append(&m, s, T, &rng));
  float *q = malloc(sizeof(float) * T * Hq * d), *whole = malloc(sizeof(float) * T * Hq * d);
  float *chunked = malloc(sizeof(float) * T * Hq * d);
  for (size_t i = 0; i < (size_t)T * Hq * d; i++) q[i] = attn_uniform(&rng, -2.0f, 2.0f);
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = 1, p.num_q_heads = Hq, p.num_kv_heads = H, p.head_dim = d;
  int32_t qi[2] = {0, T};
  p.q = q, p.out = whole, p.q_indptr = qi, p.table = attn_model_table(&m);
  size_t wsb = 0;
  EXPECT_OK(rkv_attn_workspace_size(m.pool, &p, &wsb));
  void *ws = malloc(wsb);
  EXPECT_OK(rkv_attn_prefill(m.pool, &p, ws, wsb));
  /* The chunks see only their prefix: shorten the streams to each cut. */
  const int64_t full = m.len[0];
  for (int c = 0; c < 3; c++) {
    for (int32_t s = 0; s < m.S; s++) m.len[s] = cuts[c + 1];
    qi[1] = cuts[c + 1] - cuts[c];
    p.table = attn_model_table(&m);
    p.q = q + (size_t)cuts[c] * Hq * d;
    p.out = chunked + (size_t)cuts[c] * Hq * d;
    EXPECT_OK(rkv_attn_prefill(m.pool, &p, ws, wsb));
  }
  for (int32_t s = 0; s < m.S; s++) m.len[s] = full;
  double e = 0.0;
  for (size_t i = 0; i < (size_t)T * Hq * d; i++) {
    double x = fabs((double)whole[i] - chunked[i]);
    if (!(x <= e)) e = x;
  }
  EXPECT_NEAR(e, 0.0, 1e-6);
  free(ws), free(q), free(whole), free(chunked);
  attn_model_free(&m);
}

int main(void) {
  static const rkv_dtype dts[] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  static const uint32_t groups[] = {1, 4, 8};
  uint64_t seed = 4321;
  for (size_t di = 0; di < 3; di++)
    for (size_t gi = 0; gi < 3; gi++) {
      pcase c = {dts[di], gi == 1 ? 5u : 16u, gi == 2 ? 72u : 128u, 3,
                 2,       groups[gi],         (int32_t)gi + 1};
      double e = run_case(&c, seed++);
      if (!(e <= ATTN_TOL))
        RKV_TEST_FAIL_("prefill %s G=%u d=%u: error %.3g", rkv_dtype_name(c.dt), c.G, c.d, e);
      else
        rkv_test_passed_++;
      printf("prefill %-4s G=%u d=%3u bs=%2u threads=%d: max scaled error %.3g\n",
             rkv_dtype_name(c.dt), c.G, c.d, c.bs, c.threads, e);
    }
  /* Enough work for 4 worker threads. */
  {
    pcase c = {RKV_DTYPE_BF16, 16, 128, 4, 4, 4, 4};
    double e = run_case(&c, 777);
    EXPECT_NEAR(e, 0.0, ATTN_TOL);
    printf("prefill bf16 G=4 d=128 B=4 H=4 threads=4: max scaled error %.3g\n", e);
  }
  chunked_equals_whole();
  return rkv_test_finish();
}
