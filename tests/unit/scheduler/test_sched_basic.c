/* Scheduler unit tests: request validation (nothing disturbed by a rejection), chunked
 * prefill arithmetic, reserve-mode admission by bounded footprint (full vs R-KV budget), the
 * external free-block cap, metrics and their Prometheus rendering, plan hashing. */
#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

static rkv_blockmgr *make_bm(uint32_t blocks, uint32_t bs, uint32_t layers, uint32_t heads) {
  return te_make_bm(blocks, bs, layers, heads, 0.0f, 256, false);
}

static rkv_evict_params small_evict(rkv_evict_policy pol, int32_t budget, int32_t buffer) {
  rkv_evict_params e = RKV_EVICT_PARAMS_INIT;
  e.policy = pol;
  e.budget = budget;
  e.buffer = buffer;
  e.window = 2;
  e.sinks = 2;
  return e;
}

static rkv_sched_request mkreq(int64_t id, int64_t prompt, int64_t gen) {
  rkv_sched_request r = {id, prompt, gen, 0, (double)id, NULL};
  return r;
}

static void report_all(rkv_sched *s, const rkv_sched_plan *p) {
  rkv_sched_output o[256];
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    memset(&o[i], 0, sizeof o[i]);
    o[i].id = p->seqs[i].id;
  }
  EXPECT_OK(rkv_sched_report(s, o, p->n_seqs));
}

static void test_bad_requests(void) {
  rkv_blockmgr *m = make_bm(64, 4, 1, 2); /* 2 streams: 32 tokens of pool per stream */
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict = small_evict(RKV_EVICT_FULL, 8, 4);
  rkv_sched *s = NULL;
  char err[256];
  EXPECT_OK(rkv_sched_create(&c, m, &s, err, sizeof err));
  rkv_sched_request r = mkreq(1, 10, 5);
  EXPECT_OK(rkv_sched_add_request(s, &r));
  r = mkreq(1, 10, 5);
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_EXISTS);
  EXPECT(strstr(rkv_sched_last_error(s), "already live") != NULL);
  r = mkreq(2, 0, 5);
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_INVALID_ARG);
  r = mkreq(3, 10, -1);
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_INVALID_ARG);
  r = mkreq(-4, 10, 1);
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_INVALID_ARG);
  r = mkreq(5, 129, 1); /* prompt alone larger than the pool (33 blocks x 2 streams) */
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_CAPACITY);
  EXPECT(strstr(rkv_sched_last_error(s), "never fit") != NULL);
  r = mkreq(6, 70, 70); /* full KV: 140 tokens = 35 blocks x 2 streams never fit 64 */
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_CAPACITY);
  rkv_evict_params bad = small_evict(RKV_EVICT_RKV, 2, 4); /* budget <= window */
  r = mkreq(7, 10, 5);
  r.evict = &bad;
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_INVALID_ARG);
  /* under an R-KV budget the same request is bounded by its prompt (B + buffer = 12) */
  rkv_evict_params ok = small_evict(RKV_EVICT_RKV, 8, 4);
  r = mkreq(6, 70, 70);
  r.evict = &ok;
  EXPECT_OK(rkv_sched_add_request(s, &r));
  EXPECT_EQ_INT(rkv_sched_bound_blocks(s, 20, 20, &ok), 2 * 5);
  EXPECT_EQ_INT(rkv_sched_bound_blocks(s, 20, 20, NULL), 2 * 10);
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.num_waiting, 2);
  EXPECT_EQ_INT(mt.num_rejected, 7);
  EXPECT_OK(rkv_sched_check(s));
  rkv_sched_request_info info;
  EXPECT_OK(rkv_sched_get_request(s, 1, &info));
  EXPECT_EQ_INT(info.prompt_len, 10);
  EXPECT_STATUS(rkv_sched_get_request(s, 99, &info), RKV_ERR_NOT_FOUND);
  /* bad configs */
  rkv_sched *s2 = NULL;
  c.max_seqs = 0;
  EXPECT_STATUS(rkv_sched_create(&c, m, &s2, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(s2 == NULL && err[0] != '\0');
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

/* A prompt longer than the token budget runs in chunks, yet a running decode of a
 * lower-priority request still gets its token every step. */
static void test_decode_not_starved(void) {
  rkv_blockmgr *m = make_bm(256, 4, 1, 1);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict = small_evict(RKV_EVICT_FULL, 8, 4);
  c.max_batched_tokens = 16;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  rkv_sched_request lo = mkreq(1, 4, 50);
  EXPECT_OK(rkv_sched_add_request(s, &lo));
  const rkv_sched_plan *p;
  EXPECT_OK(rkv_sched_step(s, &p));
  report_all(s, p);
  rkv_sched_request hi = mkreq(2, 100, 5);
  hi.priority = 9;
  EXPECT_OK(rkv_sched_add_request(s, &hi));
  for (int k = 0; k < 7; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    EXPECT_EQ_INT(p->n_seqs, 2);
    EXPECT_EQ_INT(p->seqs[0].id, 1); /* the decode */
    EXPECT_EQ_INT(p->seqs[1].id, 2);
    EXPECT_EQ_INT(p->seqs[1].n_tokens, k < 6 ? 15 : 10); /* 6 x 15 + 10 = 100 */
    EXPECT_EQ_INT(p->n_batched_tokens, k < 6 ? 16 : 11);
    report_all(s, p);
  }
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

static void test_chunked_prefill(void) {
  rkv_blockmgr *m = make_bm(256, 4, 2, 1);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict = small_evict(RKV_EVICT_FULL, 8, 4);
  c.max_batched_tokens = 32;
  c.max_prefill_chunk = 24;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  rkv_sched_request r = mkreq(10, 70, 3);
  EXPECT_OK(rkv_sched_add_request(s, &r));
  r = mkreq(11, 5, 2);
  EXPECT_OK(rkv_sched_add_request(s, &r));
  const rkv_sched_plan *p;
  /* step 0: 24 of request 10, then 5 of request 11 (fits the 8 left) */
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 2);
  EXPECT_EQ_INT(p->seqs[0].id, 10);
  EXPECT_EQ_INT(p->seqs[0].n_tokens, 24);
  EXPECT_EQ_INT(p->seqs[0].pos, 0);
  EXPECT(!p->seqs[0].samples);
  EXPECT_EQ_INT(p->seqs[1].id, 11);
  EXPECT_EQ_INT(p->seqs[1].n_tokens, 5);
  EXPECT(p->seqs[1].samples);
  EXPECT_EQ_INT(p->n_batched_tokens, 29);
  const rkv_sched_plan *p2 = p;
  EXPECT_STATUS(rkv_sched_step(s, &p2), RKV_ERR_STATE);
  EXPECT(p2 == NULL);
  report_all(s, p);
  /* step 1: the decode of 11 first, then 24 more of 10 (pos 24) */
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 2);
  EXPECT_EQ_INT(p->n_decode, 1);
  EXPECT_EQ_INT(p->seqs[0].id, 11);
  EXPECT_EQ_INT(p->seqs[0].kind, RKV_SCHED_DECODE);
  EXPECT_EQ_INT(p->seqs[0].n_tokens, 1);
  EXPECT_EQ_INT(p->seqs[1].id, 10);
  EXPECT_EQ_INT(p->seqs[1].n_tokens, 24);
  EXPECT_EQ_INT(p->seqs[1].pos, 24);
  EXPECT_EQ_INT(p->seqs[1].kv_len, 48);
  report_all(s, p); /* 11 reaches max_new 2 and finishes */
  /* step 2: the last 22 of 10 sample; 11 is reported finished */
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 1);
  EXPECT_EQ_INT(p->seqs[0].n_tokens, 22);
  EXPECT(p->seqs[0].samples);
  EXPECT_EQ_INT(p->n_finished, 1);
  EXPECT_EQ_INT(p->finished[0], 11);
  report_all(s, p);
  int32_t len = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(m, 10, 1, 0, &len));
  EXPECT_EQ_INT(len, 70);
  for (int k = 0; k < 2; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    EXPECT_EQ_INT(p->n_decode, 1);
    report_all(s, p);
  }
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.num_finished, 2);
  EXPECT_EQ_INT(mt.prompt_tokens, 75);
  EXPECT_EQ_INT(mt.generation_tokens, 5);
  EXPECT_EQ_INT(mt.used_blocks, 0);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 0);
  EXPECT_EQ_INT(p->n_finished, 1);
  report_all(s, p);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

/* Reserve admission: exactly floor(capacity / bound) requests run at once, and with R-KV the
 * bound (B + buffer) admits more than full KV; nothing is ever preempted. */
static uint32_t reserve_batch(rkv_evict_policy pol, uint32_t *preemptions, uint64_t *fails) {
  rkv_blockmgr *m = make_bm(400, 4, 1, 2);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict = small_evict(pol, 16, 8);
  c.max_batched_tokens = 4096;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  rkv_sched_create(&c, m, &s, NULL, 0);
  test_engine t;
  te_init(&t, m, &c, 256, 0.0, 1);
  for (int i = 0; i < 40; i++) {
    rkv_sched_request r = mkreq(i, 8, 72); /* full: 80 tokens = 20 blocks x 2 streams */
    EXPECT_OK(rkv_sched_add_request(s, &r));
  }
  uint32_t max_run = 0;
  for (int step = 0; step < 2000; step++) {
    const rkv_sched_plan *p;
    if (rkv_sched_step(s, &p) != RKV_OK) break;
    if (p->n_seqs > max_run) max_run = p->n_seqs;
    EXPECT_OK(te_run(&t, s, p));
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    if (mt.num_finished == 40) break;
  }
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.num_finished, 40);
  EXPECT_EQ_INT(mt.used_blocks, 0);
  *preemptions = (uint32_t)mt.num_preemptions;
  *fails = t.value_failures;
  te_fini(&t);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  return max_run;
}

static void test_reserve_admission(void) {
  uint32_t pre = 9;
  uint64_t fails = 9;
  uint32_t full = reserve_batch(RKV_EVICT_FULL, &pre, &fails);
  EXPECT_EQ_INT(full, 400 / 40); /* 20 blocks per stream x 2 streams */
  EXPECT_EQ_INT(pre, 0);
  EXPECT_EQ_INT(fails, 0);
  uint32_t rkv = reserve_batch(RKV_EVICT_STREAMING, &pre, &fails);
  EXPECT_EQ_INT(rkv, 400 / 12); /* B + buffer = 24 tokens = 6 blocks x 2 streams */
  EXPECT_EQ_INT(pre, 0);
  EXPECT_EQ_INT(fails, 0);
}

static void test_free_limit_and_metrics(void) {
  rkv_blockmgr *m = make_bm(64, 4, 1, 1);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict = small_evict(RKV_EVICT_FULL, 8, 4);
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  rkv_sched_request r = mkreq(1, 10, 5); /* 15 tokens: a bound of 4 blocks, 3 for the prompt */
  EXPECT_OK(rkv_sched_add_request(s, &r));
  const rkv_sched_plan *p;
  /* the limit makes the usable pool used + 3 = 3 blocks: the bound can never fit it, and
   * with nothing running the request is aborted (announced in this plan) */
  rkv_sched_set_free_blocks_limit(s, 3);
  EXPECT_STATUS(rkv_sched_add_request(s, &(rkv_sched_request){2, 10, 5, 0, 2.0, NULL}),
                RKV_ERR_CAPACITY);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 0);
  EXPECT_EQ_INT(p->n_finished, 1);
  uint64_t h_empty = rkv_sched_plan_hash(p);
  report_all(s, p);
  rkv_sched_set_free_blocks_limit(s, 4);
  EXPECT_OK(rkv_sched_add_request(s, &r));
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 1);
  EXPECT(rkv_sched_plan_hash(p) != h_empty);
  report_all(s, p);
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.used_blocks, 3);
  EXPECT_NEAR(mt.kv_cache_usage, 3.0 / 64.0, 1e-12);
  EXPECT_NEAR(mt.fragmentation, 2.0 / 12.0, 1e-12);
  EXPECT_EQ_INT(mt.num_running, 1);
  char buf[8192];
  size_t w = 0;
  EXPECT_OK(rkv_sched_metrics_prometheus(&mt, buf, sizeof buf, &w));
  EXPECT_EQ_INT(w, strlen(buf));
  EXPECT(strstr(buf, "# TYPE rkv_kv_cache_usage_perc gauge\nrkv_kv_cache_usage_perc 0.046875\n"));
  EXPECT(strstr(buf, "rkv_num_requests_running 1\n"));
  EXPECT(strstr(buf, "# TYPE rkv_num_preemptions_total counter\n"));
  char small[32];
  size_t need = 0;
  EXPECT_STATUS(rkv_sched_metrics_prometheus(&mt, small, sizeof small, &need), RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(need, w);
  EXPECT_EQ_INT(strlen(small), sizeof small - 1);
  /* abort frees everything and is announced in the next plan */
  EXPECT_OK(rkv_sched_abort(s, 1));
  EXPECT_STATUS(rkv_sched_abort(s, 1), RKV_ERR_NOT_FOUND);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_finished, 1);
  report_all(s, p);
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.used_blocks, 0);
  EXPECT_EQ_INT(mt.num_aborted, 2);
  EXPECT_OK(rkv_sched_check(s));
  /* report validation: unknown ids are rejected and nothing is applied */
  r = mkreq(2, 4, 3);
  EXPECT_OK(rkv_sched_add_request(s, &r));
  EXPECT_OK(rkv_sched_step(s, &p));
  rkv_sched_output o = {77, false, false, 0, 0};
  EXPECT_STATUS(rkv_sched_report(s, &o, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_sched_abort(s, 2), RKV_ERR_STATE);
  report_all(s, p);
  EXPECT_OK(rkv_sched_check(s));
  rkv_sched_destroy(s); /* frees the live request's blocks */
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.used_blocks, 0);
  rkv_blockmgr_destroy(m);
}

/* Tensor-parallel replicas: two schedulers over two identical block managers, fed the same
 * calls, with the MIN of their free blocks passed in before every step, produce the same plan
 * hash at every step (and the cap really limits admission). */
static void test_replicas(void) {
  rkv_blockmgr *m[2];
  rkv_sched *s[2];
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = RKV_SCHED_PREEMPT_SWAP;
  c.host_blocks = 64;
  c.evict = small_evict(RKV_EVICT_STREAMING, 16, 8);
  c.max_batched_tokens = 48;
  for (int k = 0; k < 2; k++) {
    m[k] = make_bm(160, 4, 2, 1);
    EXPECT_OK(rkv_sched_create(&c, m[k], &s[k], NULL, 0));
  }
  uint64_t rng = 42;
  int64_t next = 0;
  uint32_t same = 0, steps = 0, capped_empty = 0;
  for (int step = 0; step < 3000; step++) {
    if (next < 30 && rkv_test_uniform(&rng) < 0.2) {
      rkv_sched_request r = mkreq(next++, 1 + (int64_t)(rkv_test_rand(&rng) % 40),
                                  1 + (int64_t)(rkv_test_rand(&rng) % 80));
      r.priority = (int32_t)(rkv_test_rand(&rng) % 3);
      for (int k = 0; k < 2; k++) EXPECT_OK(rkv_sched_add_request(s[k], &r));
    }
    rkv_sched_metrics a, b;
    rkv_sched_get_metrics(s[0], &a);
    rkv_sched_get_metrics(s[1], &b);
    /* the all-reduce a real deployment does; every 7th step a rank claims fewer blocks */
    uint32_t lim = a.free_blocks < b.free_blocks ? a.free_blocks : b.free_blocks;
    if (step % 7 == 3) lim = 0;
    const rkv_sched_plan *p[2];
    for (int k = 0; k < 2; k++) {
      rkv_sched_set_free_blocks_limit(s[k], lim);
      EXPECT_OK(rkv_sched_step(s[k], &p[k]));
    }
    steps++;
    same += rkv_sched_plan_hash(p[0]) == rkv_sched_plan_hash(p[1]);
    for (int k = 0; k < 2; k++) report_all(s[k], p[k]);
    rkv_sched_metrics after;
    rkv_sched_get_metrics(s[0], &after);
    /* a zero cap: no block can be taken, so growth preempts and nothing is admitted */
    if (lim == 0 && a.num_waiting && !p[0]->n_swapped_in && after.num_running <= a.num_running)
      capped_empty++;
    if (next == 30 && a.num_running + a.num_waiting + a.num_swapped == 0) break;
  }
  EXPECT_EQ_INT(same, steps);
  EXPECT(capped_empty > 0); /* a zero cap admitted nothing new */
  rkv_sched_metrics a;
  rkv_sched_get_metrics(s[0], &a);
  EXPECT_EQ_INT(a.num_finished, 30);
  for (int k = 0; k < 2; k++) {
    EXPECT_OK(rkv_sched_check(s[k]));
    rkv_sched_destroy(s[k]);
    rkv_blockmgr_destroy(m[k]);
  }
}

int main(void) {
  test_bad_requests();
  test_chunked_prefill();
  test_decode_not_starved();
  test_reserve_admission();
  test_free_limit_and_metrics();
  test_replicas();
  return rkv_test_finish();
}
