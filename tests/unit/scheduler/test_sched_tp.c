/* Scheduler unit test for tensor-parallel replicas over UNEQUAL pools: two schedulers over block
 * managers of different sizes (and so different watermarks), fed the same calls, each given the
 * MIN of their free blocks before every step (what rkv_comm_step_sync computes), must make
 * identical plans at every step: growth preemption in optimistic mode, reserve-mode admission
 * when the reserved bounds fill the smaller pool, and add_request's "can never fit" rejection.
 * A control run without the limit shows that the pools really would diverge. */
#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

#define SMALL_BLOCKS 96
#define BIG_BLOCKS 160

/* watermark 1%: 1 block of the small pool, 2 of the big one */
static rkv_blockmgr *make_bm(uint32_t blocks) {
  return te_make_bm(blocks, 4, 2, 2, 0.01f, 64, false);
}

static rkv_sched_config make_cfg(rkv_sched_admission adm) {
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = adm;
  c.evict.policy = RKV_EVICT_RKV;
  c.evict.budget = 24;
  c.evict.buffer = 12;
  c.evict.window = 2;
  c.evict.sinks = 2;
  c.max_batched_tokens = 64;
  c.check_every_step = true;
  return c;
}

typedef struct tp_result {
  uint32_t steps, same, first_diff;
  uint64_t preemptions[2];
  uint32_t max_running[2];
  uint32_t reserve_blocked; /* steps where reserve admission left requests waiting */
  uint32_t rejected_same;   /* add_request statuses equal on both replicas */
  uint64_t finished[2];
} tp_result;

/* Runs `nreq` requests through two replicas (pools SMALL_BLOCKS and BIG_BLOCKS); with_limit
 * passes the MIN of the free blocks before every step and before the first add_request. */
static tp_result run_pair(rkv_sched_admission adm, uint32_t nreq, bool with_limit) {
  tp_result res;
  memset(&res, 0, sizeof res);
  res.first_diff = UINT32_MAX;
  rkv_blockmgr *m[2] = {make_bm(SMALL_BLOCKS), make_bm(BIG_BLOCKS)};
  rkv_sched *s[2] = {NULL, NULL};
  rkv_sched_config c = make_cfg(adm);
  static test_engine t[2];
  for (int k = 0; k < 2; k++) {
    EXPECT_OK(rkv_sched_create(&c, m[k], &s[k], NULL, 0));
    EXPECT_EQ_INT(te_init(&t[k], m[k], &c, 256, 0.0, 11), 0);
  }
  if (!s[0] || !s[1]) return res;
  uint32_t lim = 0;
  for (int step = 0; step < 20000; step++) {
    if (with_limit) {
      rkv_blockmgr_stats a, b;
      rkv_blockmgr_get_stats(m[0], &a);
      rkv_blockmgr_get_stats(m[1], &b);
      lim = a.free_blocks < b.free_blocks ? a.free_blocks : b.free_blocks;
      for (int k = 0; k < 2; k++) rkv_sched_set_free_blocks_limit(s[k], lim);
    }
    if (step == 0) {
      for (uint32_t i = 0; i < nreq; i++) {
        rkv_sched_request r = {(int64_t)i,       8 + (i % 5) * 3, 120 + (i % 4) * 20,
                               (int32_t)(i % 3), (double)i,       NULL};
        rkv_status st[2];
        for (int k = 0; k < 2; k++) st[k] = rkv_sched_add_request(s[k], &r);
        EXPECT_OK(st[0]);
        res.rejected_same += st[0] == st[1];
      }
      /* a full-cache request whose 27 blocks per stream (108) fit only the big pool */
      rkv_evict_params full = c.evict;
      full.policy = RKV_EVICT_FULL;
      rkv_sched_request r = {1000, 8, 100, 0, 1000.0, &full};
      rkv_status st[2];
      for (int k = 0; k < 2; k++) st[k] = rkv_sched_add_request(s[k], &r);
      EXPECT_STATUS(st[0], RKV_ERR_CAPACITY);
      res.rejected_same += st[0] == st[1];
    }
    const rkv_sched_plan *p[2];
    for (int k = 0; k < 2; k++) EXPECT_OK(rkv_sched_step(s[k], &p[k]));
    res.steps++;
    if (rkv_sched_plan_hash(p[0]) == rkv_sched_plan_hash(p[1]))
      res.same++;
    else if (res.first_diff == UINT32_MAX)
      res.first_diff = (uint32_t)step;
    rkv_sched_metrics mt[2];
    for (int k = 0; k < 2; k++) {
      EXPECT_OK(te_run(&t[k], s[k], p[k]));
      rkv_sched_get_metrics(s[k], &mt[k]);
      if (mt[k].num_running > res.max_running[k]) res.max_running[k] = mt[k].num_running;
    }
    if (adm == RKV_SCHED_RESERVE && mt[0].num_waiting && mt[0].num_running) res.reserve_blocked++;
    if (mt[0].num_finished >= nreq && mt[1].num_finished >= nreq) break;
  }
  for (int k = 0; k < 2; k++) {
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s[k], &mt);
    res.preemptions[k] = mt.num_preemptions;
    res.finished[k] = mt.num_finished;
    EXPECT_OK(rkv_sched_check(s[k]));
    EXPECT_EQ_INT(t[k].value_failures, 0);
    rkv_sched_destroy(s[k]);
    te_fini(&t[k]);
    rkv_blockmgr_destroy(m[k]);
  }
  return res;
}

static void test_optimistic_unequal_pools(void) {
  tp_result r = run_pair(RKV_SCHED_OPTIMISTIC, 12, true);
  printf("optimistic: %u steps, %u same, preemptions %llu / %llu, batch %u / %u\n", r.steps, r.same,
         (unsigned long long)r.preemptions[0], (unsigned long long)r.preemptions[1],
         r.max_running[0], r.max_running[1]);
  EXPECT(r.steps > 100);
  EXPECT_EQ_INT(r.same, r.steps);
  EXPECT_EQ_INT(r.first_diff, UINT32_MAX);
  EXPECT(r.preemptions[0] > 0); /* the workload really preempts for growth */
  EXPECT_EQ_INT(r.preemptions[0], r.preemptions[1]);
  EXPECT_EQ_INT(r.max_running[0], r.max_running[1]);
  EXPECT_EQ_INT(r.finished[0], 12);
  EXPECT_EQ_INT(r.finished[1], 12);
  EXPECT_EQ_INT(r.rejected_same, 13);
  /* control: without the limit the bigger pool preempts less and the plans differ */
  tp_result c = run_pair(RKV_SCHED_OPTIMISTIC, 12, false);
  printf("optimistic control: %u steps, %u same, preemptions %llu / %llu, batch %u / %u\n", c.steps,
         c.same, (unsigned long long)c.preemptions[0], (unsigned long long)c.preemptions[1],
         c.max_running[0], c.max_running[1]);
  EXPECT(c.same < c.steps);
  EXPECT(c.max_running[1] > c.max_running[0]);
}

static void test_reserve_unequal_pools(void) {
  tp_result r = run_pair(RKV_SCHED_RESERVE, 12, true);
  printf("reserve: %u steps, %u same, batch %u / %u, %u steps with requests held back\n", r.steps,
         r.same, r.max_running[0], r.max_running[1], r.reserve_blocked);
  EXPECT(r.steps > 100);
  EXPECT_EQ_INT(r.same, r.steps);
  EXPECT(r.reserve_blocked > 0); /* the reserved bounds fill the pool */
  EXPECT_EQ_INT(r.preemptions[0], 0);
  EXPECT_EQ_INT(r.preemptions[1], 0);
  /* each bound is 4 streams * 9 blocks: the small pool (95 usable) holds 2 at once */
  EXPECT_EQ_INT(r.max_running[0], 2);
  EXPECT_EQ_INT(r.max_running[1], 2);
  EXPECT_EQ_INT(r.finished[0], 12);
  EXPECT_EQ_INT(r.rejected_same, 13);
  tp_result c = run_pair(RKV_SCHED_RESERVE, 12, false);
  EXPECT(c.same < c.steps);
  EXPECT(c.max_running[1] > c.max_running[0]);
}

int main(void) {
  test_optimistic_unequal_pools();
  test_reserve_unequal_pools();
  return rkv_test_finish();
}
