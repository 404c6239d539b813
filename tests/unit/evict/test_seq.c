/* rkv_evict_seq (the paged entry at a selection granularity) over a real CPU pool:
 *  - against rkv_evict_select_dense_multi on the same data (keys, masses and window queries
 *    copied out of the pool): the positions every stream holds afterwards (each token's
 *    original position is encoded in its V row) are the dense entry's, stream by stream, for
 *    every granularity and R-KV, SnapKV, H2O, StreamingLLM; plain, with a protected prefix
 *    (kept in place: same slots) and compressing a forked sequence (the child keeps all of
 *    its tokens); K rows and masses move with their tokens; rkv_blockmgr_check clean;
 *  - granularity stream equals rkv_evict_layer on every layer bit for bit: pool bytes, per-slot
 *    scores, block tables and results, on two identically built fixtures (every policy and
 *    f32 / f16; with a fork: the streams' contents);
 *  - errors change nothing (pool bytes, scores, tables, free blocks): bad granularity, a short
 *    workspace, streams out of lockstep, a window short in one layer, fresh blocks for a fork
 *    in the last layer missing, unknown sequence; n <= P + B and FULL change nothing. */
#include <stdlib.h>

#include <rkv/evict.h>

#include "rkv_test.h"

enum { L = 3, KV = 2, QH = 4, D = 16, BS = 8, W = 8, CAP = 256 };

typedef struct fixture {
  rkv_dtype dt;
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
  uint64_t rng;
} fixture;

static void fx_init(fixture *f, rkv_dtype dt, uint32_t num_blocks, uint64_t seed) {
  memset(f, 0, sizeof *f);
  f->dt = dt, f->rng = seed;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  EXPECT_OK(rkv_backend_create(&bc, &f->be));
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = num_blocks, mc.block_size = BS, mc.num_layers = L, mc.num_kv_heads = KV;
  mc.head_dim = D, mc.dtype = dt, mc.check_every_op = true, mc.watermark = 0;
  EXPECT_OK(rkv_blockmgr_create(&mc, &f->m));
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(f->m);
  EXPECT_OK(rkv_kv_pool_create(f->be, &lay, num_blocks, &f->pool));
  /* zeroed bytes everywhere, so two fixtures built alike compare byte for byte */
  memset(rkv_kv_pool_base(f->pool), 0, (size_t)num_blocks * rkv_kv_block_bytes(&lay));
  memset(rkv_kv_pool_scores(f->pool), 0, (size_t)num_blocks * BS * sizeof(float));
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = L, qc.num_q_heads = QH, qc.head_dim = D, qc.window = W;
  EXPECT_OK(rkv_qwindow_create(&qc, &f->qw));
}

static void fx_fini(fixture *f) {
  rkv_qwindow_destroy(f->qw);
  rkv_kv_pool_destroy(f->pool);
  rkv_blockmgr_destroy(f->m);
  rkv_backend_destroy(f->be);
}

static char *slot_row(fixture *f, int64_t slot, bool v) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(f->pool);
  uint32_t o = (uint32_t)(slot % BS);
  return (char *)rkv_kv_pool_base(f->pool) + (size_t)(slot / BS) * rkv_kv_block_bytes(l) +
         (v ? rkv_kv_v_offset(l, o) : rkv_kv_k_offset(l, o));
}

/* Original position in base-256 digits of the V row (exact in f16 too). */
static void put_pos(fixture *f, int64_t slot, int32_t pos) {
  for (uint32_t i = 0; i < D; i++)
    rkv_dtype_store(f->dt, slot_row(f, slot, true), i, i < 2 ? (float)((pos >> (8 * i)) & 255) : 0);
}
static int32_t get_pos(fixture *f, int64_t slot) {
  int32_t p = 0;
  for (uint32_t i = 0; i < 2; i++)
    p |= (int32_t)rkv_dtype_load(f->dt, slot_row(f, slot, true), i) << (8 * i);
  return p;
}

/* Appends n tokens to every stream of seq, one at a time with a dummy sequence (1000)
 * growing in between when `scatter`, so block ids interleave. Clustered keys: every 5th
 * token repeats the one 7 back with noise (R-KV's redundancy has something to find). */
static void fx_append(fixture *f, int64_t seq, int32_t at, int32_t n, bool scatter) {
  int64_t slots[L * KV];
  rkv_block_copy copies[L * KV];
  uint32_t nc = 0;
  if (scatter && !rkv_blockmgr_seq_exists(f->m, 1000))
    EXPECT_OK(rkv_blockmgr_seq_create(f->m, 1000));
  for (int32_t t = 0; t < n; t++) {
    rkv_status s = rkv_blockmgr_append(f->m, seq, 1, slots, copies, &nc);
    if (s != RKV_OK) {
      EXPECT_OK(s);
      return;
    }
    if (nc) EXPECT_OK(rkv_kv_pool_copy_blocks(f->pool, copies, nc));
    if (scatter && t % 3 == 0) EXPECT_OK(rkv_blockmgr_append(f->m, 1000, 1, NULL, NULL, &nc));
    for (uint32_t s2 = 0; s2 < L * KV; s2++) {
      int64_t back = -1;
      if ((at + t) % 5 == 4 && at + t >= 7)
        rkv_blockmgr_stream_slot(f->m, seq, s2 / KV, s2 % KV, at + t - 7, &back);
      for (uint32_t i = 0; i < D; i++) {
        float x = (float)rkv_test_uniform(&f->rng) * 2 - 1;
        if (back >= 0) x = rkv_dtype_load(f->dt, slot_row(f, back, false), i) + 0.05f * x;
        rkv_dtype_store(f->dt, slot_row(f, slots[s2], false), i, x);
      }
      put_pos(f, slots[s2], at + t);
      rkv_kv_pool_scores(f->pool)[slots[s2]] = (float)rkv_test_uniform(&f->rng);
    }
  }
  if (scatter) EXPECT_OK(rkv_blockmgr_seq_free(f->m, 1000));
}

static void fx_push_queries(fixture *f, int64_t seq, uint32_t layer, uint32_t rows) {
  static float q[W * QH * D];
  for (size_t i = 0; i < (size_t)rows * QH * D; i++)
    q[i] = (float)rkv_test_uniform(&f->rng) * 2 - 1;
  EXPECT_OK(rkv_qwindow_push(f->qw, seq, layer, q, rows));
}

/* Sequence 1 of n tokens with full windows; forked into 2 when `fork`, protected to P. */
static void fx_seq(fixture *f, int32_t n, int32_t P, bool fork) {
  EXPECT_OK(rkv_blockmgr_seq_create(f->m, 1));
  EXPECT_OK(rkv_qwindow_seq_add(f->qw, 1));
  fx_append(f, 1, 0, n, true);
  for (uint32_t l = 0; l < L; l++) fx_push_queries(f, 1, l, W);
  if (P) EXPECT_OK(rkv_blockmgr_seq_protect(f->m, 1, P));
  if (fork) EXPECT_OK(rkv_blockmgr_seq_fork(f->m, 1, 2));
}

static unsigned char g_ws[16 << 20];
static unsigned char g_ws2[16 << 20];
static float g_k[L * KV * CAP * D], g_acc[L * KV * CAP], g_q[L * QH * W * D];
static int32_t g_keep[L * KV * CAP];
static float g_k_orig[L * KV][CAP * D], g_acc_orig[L * KV][CAP];

/* Dense copies of positions [P, n) of every stream of seq 1 (and each position's K row and
 * mass by original position, for checking the moves), and every layer's window. */
static void copy_out(fixture *f, int32_t n, int32_t P) {
  const int32_t m = n - P;
  for (uint32_t s = 0; s < L * KV; s++) {
    for (int32_t j = 0; j < n; j++) {
      int64_t slot;
      EXPECT_OK(rkv_blockmgr_stream_slot(f->m, 1, s / KV, s % KV, j, &slot));
      const int32_t pos = get_pos(f, slot);
      for (uint32_t i = 0; i < D; i++) {
        float x = rkv_dtype_load(f->dt, slot_row(f, slot, false), i);
        g_k_orig[s][(size_t)pos * D + i] = x;
        if (j >= P) g_k[((size_t)s * m + (j - P)) * D + i] = x;
      }
      g_acc_orig[s][pos] = rkv_kv_pool_scores(f->pool)[slot];
      if (j >= P) g_acc[(size_t)s * m + (j - P)] = rkv_kv_pool_scores(f->pool)[slot];
    }
  }
  for (uint32_t l = 0; l < L; l++) {
    uint32_t cnt = 0;
    EXPECT_OK(rkv_qwindow_get(f->qw, 1, l, g_q + (size_t)l * QH * W * D, &cnt));
  }
}

static rkv_status run_seq(fixture *f, const rkv_evict_params *p, rkv_evict_granularity g,
                          rkv_evict_result *res, char *err, size_t err_len) {
  size_t need = 0;
  int32_t n = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(f->m, 1, 0, 0, &n));
  EXPECT_OK(rkv_evict_seq_workspace_size(p, g, L, KV, QH, D, n, &need));
  EXPECT(need <= sizeof g_ws);
  return rkv_evict_seq(p, g, f->m, f->pool, f->qw, QH, 1, g_ws, need, res, err, err_len);
}

/* The streams of seq 1 after the step against the dense keep lists. */
static int check_against_dense(fixture *f, int32_t n, int32_t P, int32_t B, int64_t (*before)[64]) {
  int bad = 0;
  for (uint32_t s = 0; s < L * KV; s++) {
    int32_t len = 0;
    EXPECT_OK(rkv_blockmgr_stream_len(f->m, 1, s / KV, s % KV, &len));
    bad += len != P + B;
    for (int32_t j = 0; j < len; j++) {
      int64_t slot;
      rkv_blockmgr_stream_slot(f->m, 1, s / KV, s % KV, j, &slot);
      const int32_t pos = get_pos(f, slot);
      const int32_t want = j < P ? j : P + g_keep[(size_t)s * B + (j - P)];
      bad += pos != want;
      if (j < P && before) bad += slot != before[s][j];
      for (uint32_t i = 0; i < D; i++)
        bad +=
            rkv_dtype_load(f->dt, slot_row(f, slot, false), i) != g_k_orig[s][(size_t)want * D + i];
      bad += rkv_kv_pool_scores(f->pool)[slot] != g_acc_orig[s][want];
    }
  }
  (void)n;
  return bad;
}

static void test_vs_dense(void) {
  const rkv_evict_policy pols[4] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O,
                                    RKV_EVICT_STREAMING};
  const rkv_evict_granularity grans[4] = {RKV_EVICT_GRAN_STREAM, RKV_EVICT_GRAN_LAYER,
                                          RKV_EVICT_GRAN_KVHEAD, RKV_EVICT_GRAN_SEQUENCE};
  const char *variants[3] = {"plain", "protected", "fork"};
  const int32_t n = 150;
  for (int pi = 0; pi < 4; pi++) {
    for (int gi = 0; gi < 4; gi++) {
      for (int vi = 0; vi < 3; vi++) {
        const int32_t P = vi == 1 ? 13 : 0;
        fixture f;
        fx_init(&f, vi == 2 ? RKV_DTYPE_F16 : RKV_DTYPE_F32, 400, 77 + (uint64_t)pi);
        fx_seq(&f, n, P, vi == 2);
        rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
        p.policy = pols[pi], p.budget = 60, p.window = W, p.buffer = 20;
        copy_out(&f, n, P);
        static int64_t before[L * KV][64];
        for (uint32_t s = 0; s < L * KV; s++)
          for (int32_t j = 0; j < P; j++)
            rkv_blockmgr_stream_slot(f.m, 1, s / KV, s % KV, j, &before[s][j]);
        char err[256] = "";
        EXPECT_OK(rkv_evict_select_dense_multi(&p, grans[gi], g_k, g_q, g_acc, L, KV, QH, n - P, D,
                                               g_keep, NULL, g_ws2, sizeof g_ws2, err, sizeof err));
        rkv_evict_result res;
        rkv_status st = run_seq(&f, &p, grans[gi], &res, err, sizeof err);
        char what[96];
        snprintf(what, sizeof what, "%s %s %s", rkv_evict_policy_name(p.policy),
                 rkv_evict_granularity_name(grans[gi]), variants[vi]);
        if (st != RKV_OK) RKV_TEST_FAIL_("%s: rkv_evict_seq: %s", what, err);
        EXPECT_EQ_INT(res.streams_compressed, L * KV);
        EXPECT_EQ_INT(res.tokens_evicted, (uint64_t)L * KV * (n - P - p.budget));
        EXPECT_OK(rkv_blockmgr_check(f.m));
        int bad = check_against_dense(&f, n, P, p.budget, P ? before : NULL);
        if (vi == 2) { /* the child still holds every token, unmoved */
          for (uint32_t s = 0; s < L * KV; s++) {
            int32_t len = 0;
            EXPECT_OK(rkv_blockmgr_stream_len(f.m, 2, s / KV, s % KV, &len));
            bad += len != n;
            for (int32_t j = 0; j < len; j++) {
              int64_t slot;
              rkv_blockmgr_stream_slot(f.m, 2, s / KV, s % KV, j, &slot);
              bad += get_pos(&f, slot) != j;
            }
          }
        }
        if (bad)
          RKV_TEST_FAIL_("%s: %d positions, K rows or masses differ from the dense entry", what,
                         bad);
        else
          rkv_test_passed_++;
        /* at P + B nothing more happens */
        EXPECT_OK(run_seq(&f, &p, grans[gi], &res, err, sizeof err));
        EXPECT_EQ_INT(res.streams_compressed, 0);
        fx_fini(&f);
      }
    }
  }
}

/* Everything a compression can change, for comparing two fixtures or before and after. */
static int diff_state(fixture *a, fixture *b, bool bytes) {
  int bad = 0;
  const rkv_kv_layout *l = rkv_kv_pool_layout(a->pool);
  const size_t nb = rkv_kv_pool_num_blocks(a->pool);
  if (bytes) {
    bad += memcmp(rkv_kv_pool_base(a->pool), rkv_kv_pool_base(b->pool),
                  nb * rkv_kv_block_bytes(l)) != 0;
    bad += memcmp(rkv_kv_pool_scores(a->pool), rkv_kv_pool_scores(b->pool),
                  nb * BS * sizeof(float)) != 0;
  }
  bad += rkv_blockmgr_free_blocks(a->m) != rkv_blockmgr_free_blocks(b->m);
  for (int64_t seq = 1; seq <= 2; seq++) {
    if (!rkv_blockmgr_seq_exists(a->m, seq)) continue;
    for (uint32_t s = 0; s < L * KV; s++) {
      const int32_t *ia = NULL, *ib = NULL;
      int32_t na = 0, nbk = 0, la = 0, lb = 0;
      rkv_blockmgr_stream_blocks(a->m, seq, s / KV, s % KV, &ia, &na);
      rkv_blockmgr_stream_blocks(b->m, seq, s / KV, s % KV, &ib, &nbk);
      rkv_blockmgr_stream_len(a->m, seq, s / KV, s % KV, &la);
      rkv_blockmgr_stream_len(b->m, seq, s / KV, s % KV, &lb);
      bad += la != lb;
      if (bytes) bad += na != nbk || (na && memcmp(ia, ib, (size_t)na * sizeof(int32_t)) != 0);
      /* contents: K and V rows and the mass of every position */
      for (int32_t j = 0; la == lb && j < la; j++) {
        int64_t sa, sb;
        rkv_blockmgr_stream_slot(a->m, seq, s / KV, s % KV, j, &sa);
        rkv_blockmgr_stream_slot(b->m, seq, s / KV, s % KV, j, &sb);
        const size_t row = D * rkv_dtype_size(a->dt);
        bad += memcmp(slot_row(a, sa, false), slot_row(b, sb, false), row) != 0;
        bad += memcmp(slot_row(a, sa, true), slot_row(b, sb, true), row) != 0;
        bad += rkv_kv_pool_scores(a->pool)[sa] != rkv_kv_pool_scores(b->pool)[sb];
      }
    }
  }
  return bad;
}

static void test_stream_equals_layer(void) {
  const rkv_evict_policy pols[5] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O,
                                    RKV_EVICT_STREAMING, RKV_EVICT_FULL};
  const rkv_dtype dts[2] = {RKV_DTYPE_F32, RKV_DTYPE_F16};
  for (int pi = 0; pi < 5; pi++) {
    for (int di = 0; di < 2; di++) {
      for (int fork = 0; fork < 2; fork++) {
        fixture a, b;
        const int32_t n = 140, P = fork ? 0 : 9;
        fx_init(&a, dts[di], 400, 500 + (uint64_t)pi);
        fx_init(&b, dts[di], 400, 500 + (uint64_t)pi);
        fx_seq(&a, n, P, fork);
        fx_seq(&b, n, P, fork);
        rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
        p.policy = pols[pi], p.budget = 50, p.window = W;
        char err[256] = "";
        rkv_evict_result ra = {0}, rb, r1;
        size_t need = 0;
        EXPECT_OK(rkv_evict_workspace_size(&p, KV, QH, D, n, &need));
        for (uint32_t l = 0; l < L; l++) {
          rkv_status st = rkv_evict_layer_ex(&p, a.m, a.pool, a.qw, QH, 1, l, g_ws2, need, &r1, err,
                                             sizeof err);
          if (st != RKV_OK) RKV_TEST_FAIL_("evict_layer %u: %s", l, err);
          ra.streams_compressed += r1.streams_compressed;
          ra.tokens_evicted += r1.tokens_evicted;
          ra.blocks_freed += r1.blocks_freed;
          ra.slot_moves += r1.slot_moves;
        }
        rkv_status st = run_seq(&b, &p, RKV_EVICT_GRAN_STREAM, &rb, err, sizeof err);
        if (st != RKV_OK) RKV_TEST_FAIL_("evict_seq: %s", err);
        EXPECT_EQ_INT(rb.streams_compressed, ra.streams_compressed);
        EXPECT_EQ_INT(rb.tokens_evicted, ra.tokens_evicted);
        EXPECT_EQ_INT(rb.slot_moves, ra.slot_moves);
        EXPECT_EQ_INT(rb.blocks_freed, ra.blocks_freed);
        /* Without sharing the pools match byte for byte; a fork takes fresh blocks in one
         * call instead of one per layer, so there the contents are compared. */
        int bad = diff_state(&a, &b, !fork);
        if (bad)
          RKV_TEST_FAIL_("%s %s fork %d: stream step differs from rkv_evict_layer (%d)",
                         rkv_evict_policy_name(p.policy), rkv_dtype_name(dts[di]), fork, bad);
        else
          rkv_test_passed_++;
        fx_fini(&a);
        fx_fini(&b);
      }
    }
  }
}

/* A copy of a fixture's state to compare with after a refused call. */
static void expect_unchanged(fixture *f, fixture *twin, const char *what) {
  int bad = diff_state(f, twin, true);
  if (bad)
    RKV_TEST_FAIL_("%s: refused call changed state (%d)", what, bad);
  else
    rkv_test_passed_++;
}

static void test_errors(void) {
  fixture f, t;
  const int32_t n = 100;
  fx_init(&f, RKV_DTYPE_F32, 400, 9);
  fx_init(&t, RKV_DTYPE_F32, 400, 9);
  fx_seq(&f, n, 0, false);
  fx_seq(&t, n, 0, false);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  char err[256] = "";
  rkv_evict_result res;
  size_t need = 0;
  EXPECT_OK(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_LAYER, L, KV, QH, D, n, &need));
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_COUNT_, f.m, f.pool, f.qw, QH, 1, g_ws, need, &res,
                              err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "granularity") != NULL);
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_LAYER, f.m, f.pool, f.qw, QH, 1, g_ws, need - 1,
                              &res, err, sizeof err),
                RKV_ERR_CAPACITY);
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_LAYER, f.m, f.pool, f.qw, QH, 7, g_ws, need, &res,
                              err, sizeof err),
                RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_LAYER, f.m, f.pool, f.qw, 3, 1, g_ws, need, &res,
                              err, sizeof err),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_LAYER, f.m, f.pool, NULL, QH, 1, g_ws, need, &res,
                              err, sizeof err),
                RKV_ERR_INVALID_ARG);
  expect_unchanged(&f, &t, "bad arguments");
  /* a window short in the last layer */
  fixture f2, t2;
  fx_init(&f2, RKV_DTYPE_F32, 400, 10);
  fx_init(&t2, RKV_DTYPE_F32, 400, 10);
  for (int i = 0; i < 2; i++) {
    fixture *x = i ? &t2 : &f2;
    EXPECT_OK(rkv_blockmgr_seq_create(x->m, 1));
    EXPECT_OK(rkv_qwindow_seq_add(x->qw, 1));
    fx_append(x, 1, 0, n, true);
    for (uint32_t l = 0; l < L; l++) fx_push_queries(x, 1, l, l == L - 1 ? 3 : W);
  }
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_LAYER, f2.m, f2.pool, f2.qw, QH, 1, g_ws, need,
                              &res, err, sizeof err),
                RKV_ERR_STATE);
  EXPECT(strstr(err, "layer 2") != NULL);
  expect_unchanged(&f2, &t2, "short window");
  /* H2O needs no window: the same sequence compresses */
  p.policy = RKV_EVICT_H2O;
  EXPECT_OK(rkv_evict_seq(&p, RKV_EVICT_GRAN_SEQUENCE, f2.m, f2.pool, NULL, QH, 1, g_ws, need, &res,
                          err, sizeof err));
  EXPECT_EQ_INT(res.tokens_evicted, (uint64_t)L * KV * (n - 40));
  fx_fini(&f2);
  fx_fini(&t2);
  /* streams out of lockstep: layer 0 compressed alone */
  p.policy = RKV_EVICT_RKV;
  size_t lneed = 0;
  EXPECT_OK(rkv_evict_workspace_size(&p, KV, QH, D, n, &lneed));
  EXPECT_OK(rkv_evict_layer(&p, f.m, f.pool, f.qw, QH, 1, 0, g_ws2, lneed, &res));
  EXPECT_OK(rkv_evict_layer(&p, t.m, t.pool, t.qw, QH, 1, 0, g_ws2, lneed, &res));
  EXPECT_STATUS(rkv_evict_seq(&p, RKV_EVICT_GRAN_STREAM, f.m, f.pool, f.qw, QH, 1, g_ws, need, &res,
                              err, sizeof err),
                RKV_ERR_STATE);
  EXPECT(strstr(err, "lockstep") != NULL);
  expect_unchanged(&f, &t, "lockstep");
  fx_fini(&f);
  fx_fini(&t);
  /* FULL and n <= P + B change nothing */
  fixture f3, t3;
  fx_init(&f3, RKV_DTYPE_F32, 400, 11);
  fx_init(&t3, RKV_DTYPE_F32, 400, 11);
  fx_seq(&f3, 50, 5, false);
  fx_seq(&t3, 50, 5, false);
  p.budget = 45;
  EXPECT_OK(rkv_evict_seq(&p, RKV_EVICT_GRAN_KVHEAD, f3.m, f3.pool, f3.qw, QH, 1, g_ws, 0, &res,
                          err, sizeof err));
  EXPECT_EQ_INT(res.streams_compressed, 0);
  p.policy = RKV_EVICT_FULL, p.budget = 16;
  EXPECT_OK(rkv_evict_seq(&p, RKV_EVICT_GRAN_KVHEAD, f3.m, f3.pool, f3.qw, QH, 1, g_ws, 0, &res,
                          err, sizeof err));
  expect_unchanged(&f3, &t3, "nothing to do");
  fx_fini(&f3);
  fx_fini(&t3);
}

/* A fork whose compaction needs more fresh blocks than are free: RKV_ERR_NO_BLOCKS before
 * any layer changes, although the first layers alone would fit. */
static void test_no_blocks(void) {
  const int32_t n = 40;
  /* 6 streams x 5 blocks; keeping 24 tokens needs 3 fresh blocks per stream (18) */
  fixture f, t;
  fx_init(&f, RKV_DTYPE_F32, 30 + 10, 12);
  fx_init(&t, RKV_DTYPE_F32, 30 + 10, 12);
  for (int i = 0; i < 2; i++) {
    fixture *x = i ? &t : &f;
    EXPECT_OK(rkv_blockmgr_seq_create(x->m, 1));
    EXPECT_OK(rkv_qwindow_seq_add(x->qw, 1));
    fx_append(x, 1, 0, n, false);
    for (uint32_t l = 0; l < L; l++) fx_push_queries(x, 1, l, W);
    EXPECT_OK(rkv_blockmgr_seq_fork(x->m, 1, 2));
  }
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 24, p.window = W;
  char err[256] = "";
  rkv_evict_result res;
  EXPECT_STATUS(run_seq(&f, &p, RKV_EVICT_GRAN_SEQUENCE, &res, err, sizeof err), RKV_ERR_NO_BLOCKS);
  expect_unchanged(&f, &t, "no blocks");
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 2));
  EXPECT_OK(run_seq(&f, &p, RKV_EVICT_GRAN_SEQUENCE, &res, err, sizeof err));
  EXPECT_EQ_INT(res.tokens_evicted, (uint64_t)L * KV * (n - 24));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  fx_fini(&f);
  fx_fini(&t);
}

static void test_workspace(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  size_t s = 0, g = 0, lay = 0;
  EXPECT_OK(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_STREAM, 4, 2, 8, 64, 1000, &s));
  EXPECT_OK(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_SEQUENCE, 4, 2, 8, 64, 1000, &g));
  EXPECT_OK(rkv_evict_workspace_size(&p, 2, 8, 64, 1000, &lay));
  EXPECT(g >= s + 2 * 1000 * sizeof(double));
  EXPECT(s >= lay);
  EXPECT_STATUS(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_COUNT_, 4, 2, 8, 64, 1000, &s),
                RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(s, 0);
  EXPECT_STATUS(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 0, 2, 8, 64, 1000, &s),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 4, 2, 7, 64, 1000, &s),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 65536, 65536, 65536, 64, 1000, &s),
      RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_seq_workspace_size(&p, RKV_EVICT_GRAN_LAYER, 4, 2, 8, 64, 10, NULL),
                RKV_ERR_INVALID_ARG);
}

int main(void) {
  test_workspace();
  test_errors();
  test_no_blocks();
  test_vs_dense();
  test_stream_equals_layer();
  return rkv_test_finish();
}
