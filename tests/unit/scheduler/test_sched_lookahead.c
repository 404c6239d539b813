/* Cache-aware admission (rkv_sched_config.cache_lookahead): which waiting request is admitted.
 *
 * One request runs at a time (max_seqs 1), under the full policy, through a bookkeeping
 * executor, with every check after every step. A first request computes system prompt S1,
 * whose blocks stay cached after it ends; then the queue holds requests for an uncached
 * prompt S2 and for S1, and the order of plan.started is the admission order:
 *   - lookahead 0 (and a version 4 config whose struct_size ends before the field, garbage
 *     past it): arrival order;
 *   - lookahead 4: the S1 requests first (admissions_ahead counts them);
 *   - lookahead 2: a request passed over twice goes next (no starvation);
 *   - a higher-priority uncached head is never passed over for a lower-priority hit;
 *   - the prefix cache off: arrival order whatever the lookahead;
 *   - a lookahead above 65536 is refused;
 *   - a step the block manager's allocator fails changes nothing with a window too (its rows
 *     are reserved for any request the window may pick);
 *   - a pick that does not fit hands its admission back to the head, which fits.
 * Each run's Prometheus scrape (rkv_sched_prometheus) reports the prefix stats it ends with. */
#include <stddef.h>
#include <stdlib.h>

#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

enum { BLOCK = 4, SYS = 16, PROMPT = SYS + 4, GEN = 3, MAXN = 12 };

/* The chained hashes of system prompt `sys` (1 or 2; 0 = none). */
static void sys_hashes(int sys, uint64_t h[SYS / BLOCK]) {
  int32_t toks[SYS];
  for (int32_t p = 0; p < SYS; p++) toks[p] = 1000 * sys + p;
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(toks, SYS, BLOCK, 0, h, SYS / BLOCK), SYS / BLOCK);
}

/* One stream (1 layer, 1 kv head, head_dim 4, f32) in `blocks` blocks of BLOCK tokens, with the
 * prefix cache and no watermark. */
static rkv_blockmgr_config one_stream(uint32_t blocks) {
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = blocks, bc.block_size = BLOCK, bc.num_layers = 1, bc.num_kv_heads = 1;
  bc.head_dim = 4, bc.dtype = RKV_DTYPE_F32, bc.prefix_cache = true, bc.watermark = 0.0f;
  return bc;
}

/* Optimistic admission with the prefix cache and a window of w. */
static rkv_sched_config cached_sched(uint32_t tokens, uint32_t seqs, uint64_t w) {
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = tokens, sc.max_seqs = seqs, sc.admission = RKV_SCHED_OPTIMISTIC;
  sc.prefix_cache = true, sc.cache_lookahead = w;
  return sc;
}

typedef struct want_req {
  int sys; /* its system prompt: 1 (cached), 2 (not), 0 (no hashes) */
  int32_t priority;
} want_req;

typedef struct run_cfg {
  uint64_t lookahead;
  bool cache;
  size_t struct_size; /* 0 = sizeof(rkv_sched_config) */
} run_cfg;

/* Steps until nothing is left; appends each admitted id to order[*n]. */
static void drain(rkv_sched *s, rkv_exec *x, int64_t *order, uint32_t *n) {
  rkv_sched_output outs[1];
  for (int guard = 0; guard < 500; guard++) {
    const rkv_sched_plan *p = NULL;
    EXPECT_OK(rkv_sched_step(s, &p));
    for (uint32_t i = 0; i < p->n_started && *n < MAXN; i++) order[(*n)++] = p->started[i];
    EXPECT_OK(rkv_exec_begin(x, p));
    memset(outs, 0, sizeof outs);
    EXPECT_OK(rkv_exec_finish(x, outs, p->n_seqs));
    EXPECT_OK(rkv_sched_report(s, outs, p->n_seqs));
    rkv_sched_metrics m;
    rkv_sched_get_metrics(s, &m);
    if (!p->n_seqs && !m.num_running && !m.num_waiting) return;
  }
  EXPECT(!"the requests did not finish");
}

/* The scrape (rkv_sched_prometheus) holds the scheduler metrics, and the prefix cache's
 * counters (equal to the stats) only with the cache on; a short buffer gets the needed size. */
static void prometheus_has(const rkv_sched *s, bool cache, const rkv_sched_prefix_stats *ps) {
  char buf[16384], line[128];
  size_t w = 0, need = 0;
  EXPECT_OK(rkv_sched_prometheus(s, buf, sizeof buf, &w));
  EXPECT_EQ_INT(w, strlen(buf));
  EXPECT(strstr(buf, "# TYPE rkv_num_requests_running gauge\n") != NULL);
  snprintf(line, sizeof line, "\nrkv_prefix_cache_hits_total %llu\n",
           (unsigned long long)ps->hit_tokens);
  EXPECT((strstr(buf, line) != NULL) == cache);
  snprintf(line, sizeof line, "\nrkv_prefix_cache_queries_total %llu\n",
           (unsigned long long)ps->hashed_tokens);
  EXPECT((strstr(buf, line) != NULL) == cache);
  snprintf(line, sizeof line, "\nrkv_prefix_cache_admissions_ahead_total %llu\n",
           (unsigned long long)ps->admissions_ahead);
  EXPECT((strstr(buf, line) != NULL) == cache);
  EXPECT((strstr(buf, "# TYPE rkv_prefix_cache_groups_reclaimed_total counter\n") != NULL) ==
         cache);
  char small[16];
  EXPECT_STATUS(rkv_sched_prometheus(s, small, sizeof small, &need), RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(need, w);
  EXPECT_EQ_INT(strlen(small), sizeof small - 1);
  EXPECT_STATUS(rkv_sched_prometheus(s, buf, sizeof buf, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_sched_prometheus(NULL, buf, sizeof buf, &w), RKV_ERR_INVALID_ARG);
}

/* Request 0 caches S1; requests 1..n then wait together. Returns the admission order of 1..n
 * in order[] and the admissions made ahead. */
static uint64_t admit_order(const run_cfg *c, const want_req *w, uint32_t n, int64_t *order) {
  const rkv_blockmgr_config bc = one_stream(64);
  rkv_sched_config sc = cached_sched(64, 1, c->lookahead);
  sc.prefix_cache = c->cache, sc.check_every_step = true;
  if (c->struct_size) {
    memset((char *)&sc + c->struct_size, 0xA5, sizeof sc - c->struct_size);
    sc.struct_size = (uint32_t)c->struct_size;
  }
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = 1, xc.max_seqs = 1;
  rkv_blockmgr *bm = NULL;
  rkv_sched *s = NULL;
  rkv_exec *x = NULL;
  char err[256] = "";
  EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
  EXPECT_OK(rkv_sched_create(&sc, bm, &s, err, sizeof err));
  EXPECT_OK(rkv_exec_create(&xc, bm, NULL, &x, err, sizeof err));
  uint64_t h[SYS / BLOCK];
  int64_t first[MAXN];
  uint32_t nf = 0;
  for (uint32_t i = 0; i <= n; i++) {
    const want_req r0 = {1, 0};
    const want_req *r = i ? &w[i - 1] : &r0;
    rkv_sched_request rq = {i, PROMPT, GEN, r->priority, (double)i, NULL};
    EXPECT_OK(rkv_sched_add_request(s, &rq));
    if (r->sys) {
      sys_hashes(r->sys, h);
      EXPECT_OK(rkv_sched_set_prefix(s, i, h, SYS / BLOCK));
    }
    if (!i) drain(s, x, first, &nf); /* S1's blocks stay cached, parked */
  }
  EXPECT_EQ_INT(nf, 1);
  uint32_t no = 0;
  drain(s, x, order, &no);
  EXPECT_EQ_INT(no, n);
  rkv_sched_prefix_stats ps = {sizeof ps, 0, 0, 0, 0, 0};
  EXPECT_OK(rkv_sched_get_prefix_stats(s, &ps));
  EXPECT_OK(rkv_sched_check(s));
  prometheus_has(s, c->cache, &ps);
  rkv_exec_destroy(x);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(bm);
  return ps.admissions_ahead;
}

static void expect_order(const int64_t *got, const int64_t *want, uint32_t n, const char *what) {
  for (uint32_t i = 0; i < n; i++)
    if (got[i] != want[i]) {
      fprintf(stderr, "FAIL: %s: admission %u is request %lld, expected %lld\n", what, i,
              (long long)got[i], (long long)want[i]);
      EXPECT(got[i] == want[i]);
      return;
    }
}

/* 1, 2: uncached S2; 3, 4: cached S1; 5: no hashes. */
static const want_req MIXED[] = {{2, 0}, {2, 0}, {1, 0}, {1, 0}, {0, 0}};

static void test_arrival_order(void) {
  const int64_t want[] = {1, 2, 3, 4, 5};
  int64_t got[MAXN];
  run_cfg c = {0, true, 0};
  EXPECT_EQ_INT(admit_order(&c, MIXED, 5, got), 0);
  expect_order(got, want, 5, "lookahead 0");
  /* a version 4 caller: the bytes past its struct (0xA5 here) are not read */
  c.struct_size = offsetof(rkv_sched_config, cache_lookahead);
  EXPECT_EQ_INT(admit_order(&c, MIXED, 5, got), 0);
  expect_order(got, want, 5, "a version 4 config");
  /* without the prefix cache nothing is cached: arrival order */
  run_cfg off = {4, false, 0};
  EXPECT_EQ_INT(admit_order(&off, MIXED, 5, got), 0);
  expect_order(got, want, 5, "lookahead 4, prefix cache off");
}

static void test_cached_first(void) {
  /* S1's requests jump the two S2 ones; then S2 (cached by request 1 now) and the rest */
  const int64_t want[] = {3, 4, 1, 2, 5};
  int64_t got[MAXN];
  run_cfg c = {4, true, 0};
  EXPECT_EQ_INT(admit_order(&c, MIXED, 5, got), 2);
  expect_order(got, want, 5, "lookahead 4");
}

static void test_no_starvation(void) {
  /* 1: uncached; 2..6: cached. Lookahead 2: request 1 is passed over by 2 and 3, then goes. */
  const want_req w[] = {{2, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}, {1, 0}};
  const int64_t want[] = {2, 3, 1, 4, 5, 6};
  int64_t got[MAXN];
  run_cfg c = {2, true, 0};
  EXPECT_EQ_INT(admit_order(&c, w, 6, got), 2);
  expect_order(got, want, 6, "lookahead 2, starvation bound");
}

static void test_priority_first(void) {
  /* 1: uncached at priority 1 goes before the cached 2 and 3 at priority 0 */
  const want_req w[] = {{2, 1}, {1, 0}, {1, 0}};
  const int64_t want[] = {1, 2, 3};
  int64_t got[MAXN];
  run_cfg c = {4, true, 0};
  EXPECT_EQ_INT(admit_order(&c, w, 3, got), 0);
  expect_order(got, want, 3, "lookahead 4, priorities");
}

/* Outputs for every sequence of a plan, none ending early. */
static void report_plain(rkv_sched *s, const rkv_sched_plan *p) {
  rkv_sched_output o[4];
  memset(o, 0, sizeof o);
  for (uint32_t i = 0; i < p->n_seqs; i++) o[i].id = p->seqs[i].id;
  EXPECT_OK(rkv_sched_report(s, o, p->n_seqs));
}

/* n steps, each plan reported with no sequence ending early. */
static void steps(rkv_sched *s, int n) {
  for (int i = 0; i < n; i++) {
    const rkv_sched_plan *p = NULL;
    EXPECT_OK(rkv_sched_step(s, &p));
    report_plain(s, p);
  }
}

/* The scene of a cache-aware pick: request 0 registers the prompt hashed h[0..nh) and runs
 * `warm` steps, request 1 joins and runs `gap` steps, then request 2 (the head) and request 3
 * (0's prompt) wait. */
static void pick_scene(rkv_sched *s, const rkv_sched_request rq[4], const uint64_t *h, uint32_t nh,
                       int warm, int gap) {
  EXPECT_OK(rkv_sched_add_request(s, &rq[0]));
  EXPECT_OK(rkv_sched_set_prefix(s, 0, h, nh));
  steps(s, warm);
  EXPECT_OK(rkv_sched_add_request(s, &rq[1]));
  steps(s, gap);
  EXPECT_OK(rkv_sched_add_request(s, &rq[2]));
  EXPECT_OK(rkv_sched_add_request(s, &rq[3]));
  EXPECT_OK(rkv_sched_set_prefix(s, 3, h, nh));
}

/* A 64-token prompt's chained hashes (16 blocks of 4). */
static void long_hashes(uint64_t h[16]) {
  int32_t toks[64];
  for (int32_t i = 0; i < 64; i++) toks[i] = 1000 + i;
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(toks, 64, BLOCK, 0, h, 16), 16);
}

/* An allocator that refuses allocations of `limit` bytes or more while armed. */
typedef struct picky {
  bool armed;
  size_t limit;
} picky;
static void *picky_alloc(void *ctx, size_t size, size_t align) {
  const picky *p = ctx;
  if (p->armed && size >= p->limit) return NULL;
  const size_t a = align < 16 ? 16 : align; /* aligned_alloc: size a multiple of a */
  return aligned_alloc(a, (size + a - 1) / a * a);
}
static void picky_free(void *ctx, void *ptr, size_t size) {
  (void)ctx, (void)size;
  free(ptr);
}

/* A failed step changes nothing, also when the cache-aware pick is not the head: the step
 * reserves every block-table row before its first change, for any request the window may
 * pick (it reserved the head's row only, so the pick's longer cached row grew after the
 * running sequence was appended, and a refusal left it counted in a plan nobody held).
 * Request 3 (68 tokens, 16 cached blocks) waits behind request 2 (1 token); the block
 * manager then refuses every allocation of 40 bytes or more. Found by a review. */
static void test_failed_step_changes_nothing(void) {
  for (uint64_t w = 0; w <= 4; w += 4) {
    picky pk = {false, 40};
    const rkv_allocator al = {picky_alloc, picky_free, &pk};
    rkv_blockmgr_config bc = one_stream(64);
    bc.allocator = &al;
    rkv_sched_config sc = cached_sched(128, 2, w);
    sc.evict.policy = RKV_EVICT_FULL;
    rkv_blockmgr *bm = NULL;
    rkv_sched *s = NULL;
    char err[256] = "";
    EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
    EXPECT_OK(rkv_sched_create(&sc, bm, &s, err, sizeof err));
    uint64_t h[16];
    long_hashes(h);
    const rkv_sched_request rq[4] = {{0, 68, 1, 0, 0.0, NULL},
                                     {1, 1, 100, 0, 1.0, NULL},
                                     {2, 1, 1, 0, 2.0, NULL},
                                     {3, 68, 1, 0, 3.0, NULL}};
    const rkv_sched_plan *p = NULL;
    pick_scene(s, rq, h, 16, 4, 1);
    pk.armed = true;
    const rkv_status st = rkv_sched_step(s, &p);
    pk.armed = false;
    if (st != RKV_OK) EXPECT_STATUS(st, RKV_ERR_NO_MEMORY);
    if (st == RKV_OK) report_plain(s, p);
    if (rkv_sched_check(s) != RKV_OK)
      RKV_TEST_FAIL_("lookahead %llu: after a step that returned %s: %s", (unsigned long long)w,
                     rkv_status_str(st), rkv_sched_last_error(s));
    for (int i = 0; i < 8; i++) { /* and it goes on */
      steps(s, 1);
      EXPECT_OK(rkv_sched_check(s));
    }
    rkv_sched_destroy(s);
    rkv_blockmgr_destroy(bm);
  }
}

/* A cache-aware pick that does not fit hands its admission back to the head, so it never
 * holds up a request that fits: request 3 (93 tokens, 8 cached blocks) does not fit next to
 * the running request 1 for ~50 steps, request 2 (1 token) ahead of it fits at once and
 * starts in the first step with or without the window. Found by a review (it waited for 3). */
static void test_pick_that_does_not_fit(void) {
  for (uint64_t w = 0; w <= 4; w += 4) {
    const rkv_blockmgr_config bc = one_stream(40);
    rkv_sched_config sc = cached_sched(64, 4, w);
    sc.check_every_step = true, sc.evict.policy = RKV_EVICT_FULL;
    rkv_blockmgr *bm = NULL;
    rkv_sched *s = NULL;
    char err[256] = "";
    EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
    EXPECT_OK(rkv_sched_create(&sc, bm, &s, err, sizeof err));
    int32_t t[32];
    for (int32_t i = 0; i < 32; i++) t[i] = 7 + i;
    uint64_t h[8];
    EXPECT_EQ_INT(rkv_prefix_hash_blocks(t, 32, BLOCK, 0, h, 8), 8);
    const rkv_sched_request rq[4] = {{0, 33, 1, 0, 0.0, NULL},
                                     {1, 80, 50, 0, 1.0, NULL},
                                     {2, 1, 3, 0, 2.0, NULL},
                                     {3, 93, 1, 0, 3.0, NULL}};
    const rkv_sched_plan *p = NULL;
    pick_scene(s, rq, h, 8, 3, 2);
    int started_h = -1, started_c = -1;
    for (int step = 0; step < 200 && started_c < 0; step++) {
      EXPECT_OK(rkv_sched_step(s, &p));
      for (uint32_t i = 0; i < p->n_started; i++) {
        if (p->started[i] == 2) started_h = step;
        if (p->started[i] == 3) started_c = step;
      }
      report_plain(s, p);
    }
    if (started_h != 0 || started_c <= 0)
      RKV_TEST_FAIL_("lookahead %llu: request 2 started in step %d, request 3 in step %d",
                     (unsigned long long)w, started_h, started_c);
    rkv_sched_destroy(s);
    rkv_blockmgr_destroy(bm);
  }
}

static void test_config_errors(void) {
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = 16, bc.block_size = BLOCK, bc.num_layers = 1, bc.num_kv_heads = 1;
  bc.prefix_cache = true;
  rkv_blockmgr *bm = NULL;
  EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  EXPECT_EQ_INT(sc.cache_lookahead, 0);
  sc.prefix_cache = true;
  sc.cache_lookahead = 65537;
  rkv_sched *s = NULL;
  char err[256] = "";
  EXPECT_STATUS(rkv_sched_create(&sc, bm, &s, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(s == NULL && strstr(err, "cache_lookahead") != NULL);
  sc.cache_lookahead = 65536;
  EXPECT_OK(rkv_sched_create(&sc, bm, &s, err, sizeof err));
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(bm);
}

int main(void) {
  test_config_errors();
  test_arrival_order();
  test_cached_first();
  test_no_starvation();
  test_priority_first();
  test_failed_step_changes_nothing();
  test_pick_that_does_not_fit();
  return rkv_test_finish();
}
