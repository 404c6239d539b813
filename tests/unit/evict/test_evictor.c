/* rkv_evictor on a CPU pool:
 *  - it equals the direct calls bit for bit: every policy (FULL too) x f32 / f16 against
 *    rkv_evict_layer on every layer (all layers queued, and one layer queued alone), and every
 *    coarser granularity against rkv_evict_seq: pool bytes, per-slot scores, block tables and
 *    summed results, with several sequences in one run and a protected prefix on one;
 *  - FULL and streams at their budget change nothing;
 *  - bad input is refused with a clear status and changes nothing (pool, scores, tables, free
 *    blocks, the queue): create errors, unknown sequence, bad layer, one layer at a coarser
 *    granularity, bad parameters, a window the evictor does not have, a double add, a full
 *    queue, run with nothing queued, too few results;
 *  - a sequence that runs out of fresh blocks (a fork) is left unchanged while the others of
 *    the run compress, and a sequence freed between add and run is reported, not touched;
 *  - every allocation of a first run failed in turn: RKV_ERR_NO_MEMORY, nothing changed, the
 *    queue kept, and the retry equals a fault-free run.
 * rkv_evictor_check and rkv_blockmgr_check after every run. */
#include "evictor_fixture.h"

static unsigned char g_ws[4 << 20];

/* The direct calls: rkv_evict_layer on `layer` (or every layer), or rkv_evict_seq. */
static void direct(fixture *f, const rkv_evict_params *p, rkv_evict_granularity g, int64_t seq,
                   int32_t layer, rkv_evict_result *sum) {
  char err[256] = "";
  rkv_evict_result r;
  size_t need = 0;
  int32_t n = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(f->m, seq, 0, 0, &n));
  if (g != RKV_EVICT_GRAN_STREAM) {
    EXPECT_OK(rkv_evict_seq_workspace_size(p, g, L, KV, QH, D, n, &need));
    EXPECT(need <= sizeof g_ws);
    if (rkv_evict_seq(p, g, f->m, f->pool, f->qw, QH, seq, g_ws, need, &r, err, sizeof err) !=
        RKV_OK)
      RKV_TEST_FAIL_("rkv_evict_seq: %s", err);
    sum->streams_compressed += r.streams_compressed;
    sum->tokens_evicted += r.tokens_evicted;
    return;
  }
  EXPECT_OK(rkv_evict_workspace_size(p, KV, QH, D, n, &need));
  for (uint32_t l = 0; l < L; l++) {
    if (layer >= 0 && l != (uint32_t)layer) continue;
    if (rkv_evict_layer_ex(p, f->m, f->pool, f->qw, QH, seq, l, g_ws, need, &r, err, sizeof err) !=
        RKV_OK)
      RKV_TEST_FAIL_("rkv_evict_layer %u: %s", l, err);
    sum->streams_compressed += r.streams_compressed;
    sum->tokens_evicted += r.tokens_evicted;
  }
}

/* Three sequences (one protected) compressed directly in `a` and by one run in `b`. */
static void compare_case(rkv_evict_policy pol, rkv_dtype dt, rkv_evict_granularity g,
                         int32_t layer) {
  fixture a, b;
  const int32_t n[3] = {90, 75, 60};
  fx_twins(&a, &b, false, false, dt, 400, 77 + (uint64_t)pol, n,
           (const uint32_t[]){W + 1, W + 2, W + 3}, 3);
  EXPECT_OK(rkv_blockmgr_seq_protect(a.m, 2, 5));
  EXPECT_OK(rkv_blockmgr_seq_protect(b.m, 2, 5));
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = pol, p.budget = 40, p.window = W;
  rkv_evict_result want = {0};
  for (int64_t s = 1; s <= 3; s++) direct(&a, &p, g, s, layer, &want);
  rkv_evictor *ev = fx_evictor(&b, &p, g);
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  for (int64_t s = 1; s <= 3; s++) EXPECT_OK(rkv_evictor_add(ev, s, layer, NULL, NULL));
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 3);
  EXPECT_OK(rkv_evictor_check(ev));
  const uint32_t free0 = rkv_blockmgr_free_blocks(b.m);
  EXPECT_OK(rkv_evictor_run(ev, res, MAXSEQ, &nr));
  EXPECT_EQ_INT(nr, 3);
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 0);
  uint64_t tok = 0, str = 0, freed = 0;
  for (uint32_t i = 0; i < nr; i++) {
    EXPECT_EQ_INT(res[i].seq, (int64_t)i + 1);
    EXPECT_OK(res[i].status);
    EXPECT(res[i].compressed == (pol != RKV_EVICT_FULL));
    tok += res[i].tokens_evicted, str += res[i].streams_compressed, freed += res[i].blocks_freed;
  }
  EXPECT_EQ_INT(tok, want.tokens_evicted);
  EXPECT_EQ_INT(str, want.streams_compressed);
  EXPECT_EQ_INT(freed, rkv_blockmgr_free_blocks(b.m) - free0);
  if (pol != RKV_EVICT_FULL) EXPECT(tok > 0);
  char what[128];
  snprintf(what, sizeof what, "%s %s %s layer %d", rkv_evict_policy_name(pol), rkv_dtype_name(dt),
           rkv_evict_granularity_name(g), layer);
  expect_same(&a, &b, true, true, what);
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_OK(rkv_blockmgr_check(b.m));
  rkv_evictor_destroy(ev);
  fx_fini(&a);
  fx_fini(&b);
}

static void test_equals_direct(void) {
  const rkv_evict_policy pols[5] = {RKV_EVICT_FULL, RKV_EVICT_RKV, RKV_EVICT_SNAPKV,
                                    RKV_EVICT_STREAMING, RKV_EVICT_H2O};
  for (int pi = 0; pi < 5; pi++) {
    compare_case(pols[pi], RKV_DTYPE_F32, RKV_EVICT_GRAN_STREAM, RKV_EVICTOR_ALL_LAYERS);
    compare_case(pols[pi], RKV_DTYPE_F16, RKV_EVICT_GRAN_STREAM, RKV_EVICTOR_ALL_LAYERS);
    compare_case(pols[pi], RKV_DTYPE_F32, RKV_EVICT_GRAN_STREAM, 1);
    for (int g = RKV_EVICT_GRAN_LAYER; g < RKV_EVICT_GRAN_COUNT_; g++)
      compare_case(pols[pi], RKV_DTYPE_F32, (rkv_evict_granularity)g, RKV_EVICTOR_ALL_LAYERS);
  }
}

/* FULL, and a sequence at its budget, run and change nothing. */
static void test_noop(void) {
  fixture f, t;
  fx_twins(&f, &t, false, false, RKV_DTYPE_F32, 200, 5, (const int32_t[]){70, 40},
           (const uint32_t[]){W, W}, 2);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evict_params full = p;
  full.policy = RKV_EVICT_FULL;
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, &full, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_OK(rkv_evictor_run(ev, res, MAXSEQ, &nr));
  EXPECT_EQ_INT(nr, 2);
  EXPECT(!res[0].compressed && res[0].tokens_evicted == 0 && res[0].blocks_freed == 0);
  EXPECT(res[1].tokens_evicted == 0 && res[1].blocks_freed == 0 && res[1].streams_compressed == 0);
  expect_same(&f, &t, true, true, "FULL / at budget");
  EXPECT_OK(rkv_evictor_check(ev));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

static void test_create_errors(fixture *f) {
  rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
  c.num_q_heads = QH, c.max_seqs = 2, c.qwindow = f->qw;
  c.params.budget = 40, c.params.window = W;
  rkv_evictor *ev = NULL;
  char err[256] = "";
  rkv_evictor_config bad = c;
  bad.num_q_heads = 3;
  EXPECT_STATUS(rkv_evictor_create(&bad, f->m, f->pool, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(ev == NULL && strstr(err, "num_q_heads") != NULL);
  bad = c, bad.struct_size = 8;
  EXPECT_STATUS(rkv_evictor_create(&bad, f->m, f->pool, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "struct_size") != NULL);
  bad = c, bad.max_seqs = 0;
  EXPECT_STATUS(rkv_evictor_create(&bad, f->m, f->pool, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  bad = c, bad.params.window = 0;
  EXPECT_STATUS(rkv_evictor_create(&bad, f->m, f->pool, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "params") != NULL);
  bad = c, bad.granularity = RKV_EVICT_GRAN_COUNT_;
  EXPECT_STATUS(rkv_evictor_create(&bad, f->m, f->pool, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "granularity") != NULL);
  EXPECT_STATUS(rkv_evictor_create(&c, f->m, NULL, &ev, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evictor_create(&c, f->m, f->pool, NULL, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(ev == NULL);
}

/* Every refused call: the status, a message, the queue and the state unchanged. */
static void test_bad_input(void) {
  fixture f, t;
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &t : &f;
    fx_init(x, RKV_DTYPE_F32, 200, 9, false);
    fx_seq(x, 1, 60, W);
    fx_seq(x, 2, 60, W - 3); /* a window short of W rows in every layer */
    EXPECT_OK(rkv_blockmgr_seq_create(x->m, 3));
    EXPECT_OK(rkv_blockmgr_seq_create(x->m, 4));
  }
  test_create_errors(&f);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 99;
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_STATE);
  EXPECT(strstr(rkv_evictor_last_error(ev), "nothing queued") != NULL && nr == 99);
  EXPECT_STATUS(rkv_evictor_add(ev, 7, RKV_EVICTOR_ALL_LAYERS, NULL, NULL), RKV_ERR_NOT_FOUND);
  EXPECT(strstr(rkv_evictor_last_error(ev), "unknown sequence") != NULL);
  EXPECT_STATUS(rkv_evictor_add(ev, 1, L, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(ev), "layer") != NULL);
  EXPECT_STATUS(rkv_evictor_add(ev, 1, -2, NULL, NULL), RKV_ERR_INVALID_ARG);
  rkv_evict_params bad = p;
  bad.budget = W; /* must exceed the window */
  EXPECT_STATUS(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, &bad, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(ev), "params") != NULL);
  bad = p, bad.window = W / 2; /* the evictor's query window holds W rows */
  EXPECT_STATUS(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, &bad, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(ev), "query window") != NULL);
  bad = p, bad.struct_size = 4;
  EXPECT_STATUS(rkv_evictor_add(ev, 1, 0, &bad, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evictor_add(NULL, 1, 0, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 0);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_STATUS(rkv_evictor_add(ev, 1, 0, NULL, NULL), RKV_ERR_EXISTS);
  EXPECT(strstr(rkv_evictor_last_error(ev), "already queued") != NULL);
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evict_params streaming = p, full = p;
  streaming.policy = RKV_EVICT_STREAMING, full.policy = RKV_EVICT_FULL;
  EXPECT_OK(rkv_evictor_add(ev, 3, RKV_EVICTOR_ALL_LAYERS, &streaming, NULL)); /* empty */
  EXPECT_OK(rkv_evictor_add(ev, 4, 2, &full, NULL));
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_STATUS(rkv_evictor_add(ev, 1000, 0, NULL, NULL), RKV_ERR_NOT_FOUND);
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 5));
  EXPECT_STATUS(rkv_evictor_add(ev, 5, 0, NULL, NULL), RKV_ERR_CAPACITY);
  EXPECT(strstr(rkv_evictor_last_error(ev), "max_seqs") != NULL);
  EXPECT_STATUS(rkv_evictor_run(ev, res, 3, &nr), RKV_ERR_CAPACITY);
  EXPECT_STATUS(rkv_evictor_run(ev, NULL, 4, &nr), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evictor_run(ev, res, 4, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 4);
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 5));
  expect_same(&f, &t, true, true, "refused adds and runs");
  /* the run itself: sequence 2's window is short (changes nothing), the others run */
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_STATE);
  EXPECT(strstr(rkv_evictor_last_error(ev), "compress 2") != NULL);
  EXPECT_EQ_INT(nr, 4);
  EXPECT_OK(res[0].status);
  EXPECT(res[0].compressed && res[0].tokens_evicted == (uint64_t)L * KV * 20);
  EXPECT_STATUS(res[1].status, RKV_ERR_STATE);
  EXPECT(!res[1].compressed && res[1].tokens_evicted == 0);
  EXPECT(res[2].status == RKV_OK && res[2].tokens_evicted == 0);
  EXPECT(res[3].status == RKV_OK && !res[3].compressed);
  EXPECT_EQ_INT(fx_check_seq(&f, 1, 40), 0);
  EXPECT_EQ_INT(fx_check_seq(&f, 2, 60), 0);
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 0);
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  /* a policy reading queries needs the evictor's window */
  rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
  c.num_q_heads = QH, c.params = p, c.params.policy = RKV_EVICT_H2O;
  rkv_evictor *nq = NULL;
  EXPECT_OK(rkv_evictor_create(&c, f.m, f.pool, &nq, NULL, 0));
  EXPECT_STATUS(rkv_evictor_add(nq, 2, RKV_EVICTOR_ALL_LAYERS, &p, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(nq), "none") != NULL);
  EXPECT_OK(rkv_evictor_add(nq, 2, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evictor_clear(nq);
  EXPECT_EQ_INT(rkv_evictor_queued(nq), 0);
  rkv_evictor_destroy(nq);
  /* a coarser granularity takes whole sequences only */
  rkv_evictor *gs = fx_evictor(&f, &p, RKV_EVICT_GRAN_SEQUENCE);
  EXPECT_STATUS(rkv_evictor_add(gs, 1, 0, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(gs), "granularity") != NULL);
  rkv_evictor_destroy(gs);
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

/* A forked sequence whose compression needs more fresh blocks than are free stays as it was;
 * the other sequence of the run compresses; one freed after its add is reported. */
static void test_no_blocks(void) {
  fixture f, t;
  /* 6 streams x 5 blocks each for 1 and 3, 12 more for the dummy while 3 is written: 14 stay
   * free; keeping 24 of 40 in the fork's parent takes 3 fresh blocks per stream (18) */
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &t : &f;
    fx_init(x, RKV_DTYPE_F32, 30 + 30 + 12 + 2, 12, false);
    fx_seq(x, 1, 40, W);
    EXPECT_OK(rkv_blockmgr_seq_fork(x->m, 1, 2));
    EXPECT_OK(rkv_qwindow_seq_fork(x->qw, 1, 2));
    fx_seq(x, 3, 40, W);
    fx_seq(x, 4, 0, 0);
  }
  EXPECT_EQ_INT(rkv_blockmgr_free_blocks(f.m), 14);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 24, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 3, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 4, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 4));
  EXPECT_OK(rkv_blockmgr_seq_free(t.m, 4));
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_NO_BLOCKS);
  EXPECT(strstr(rkv_evictor_last_error(ev), "fresh blocks") != NULL);
  EXPECT_STATUS(res[0].status, RKV_ERR_NO_BLOCKS);
  EXPECT(!res[0].compressed && res[0].blocks_freed == 0);
  EXPECT_OK(res[1].status);
  EXPECT_STATUS(res[2].status, RKV_ERR_NOT_FOUND);
  /* the twin compresses only sequence 3, directly */
  size_t need = 0;
  EXPECT_OK(rkv_evict_workspace_size(&p, KV, QH, D, 40, &need));
  for (uint32_t l = 0; l < L; l++)
    EXPECT_OK(rkv_evict_layer(&p, t.m, t.pool, t.qw, QH, 3, l, g_ws, need, &(rkv_evict_result){0}));
  expect_same(&f, &t, true, true, "out of blocks: 1 and 2 unchanged, 3 compressed");
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  /* with the child gone the parent's blocks are its own: it compresses */
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 2));
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_run(ev, res, MAXSEQ, &nr));
  EXPECT(res[0].compressed && res[0].tokens_evicted == (uint64_t)L * KV * 16);
  EXPECT_EQ_INT(fx_check_seq(&f, 1, 24), 0);
  EXPECT_OK(rkv_blockmgr_check(f.m));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

int main(void) {
  test_bad_input();
  test_noop();
  test_no_blocks();
  fx_nomem_sweep(false);
  test_equals_direct();
  return rkv_test_finish();
}
