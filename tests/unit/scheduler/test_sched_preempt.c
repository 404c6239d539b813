/* Scheduler unit tests: optimistic admission running out of blocks preempts by priority then
 * recency; recompute and swap round trips keep every cached K/V row what it was (bit for bit
 * through a CPU pool and a host buffer, checked after every swap-in); nothing leaks once every
 * request has finished. */
#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

static rkv_blockmgr *make_bm(uint32_t blocks, uint32_t bs, uint32_t layers, uint32_t heads) {
  return te_make_bm(blocks, bs, layers, heads, 0.0f, 64, true);
}

typedef struct run_result {
  uint64_t preempt_recompute, preempt_swap, finished, gen_tokens, steps;
  uint64_t swap_checks, swap_failures, value_failures, compressions;
  uint32_t used_after, host_used_after, bm_seqs_after;
  int64_t first_victim;
  bool high_prio_preempted;
} run_result;

/* Three (or more) requests with distinct priorities sharing a pool too small for all. */
static run_result run_pressure(rkv_sched_preempt_mode mode, rkv_evict_policy pol, uint32_t layers,
                               uint32_t heads, uint32_t nreq) {
  run_result res;
  memset(&res, 0, sizeof res);
  res.first_victim = -1;
  rkv_blockmgr *m = make_bm(48 * layers * heads, 4, layers, heads);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = mode;
  c.host_blocks = mode == RKV_SCHED_PREEMPT_SWAP ? 64 * layers * heads : 0;
  c.evict.policy = pol;
  c.evict.budget = 24;
  c.evict.buffer = 12;
  c.evict.window = 2;
  c.evict.sinks = 2;
  c.max_batched_tokens = 64;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  char err[256];
  EXPECT_OK(rkv_sched_create(&c, m, &s, err, sizeof err));
  test_engine t;
  te_init(&t, m, &c, 256, 0.0, 7);
  static const int32_t prio[] = {0, 5, 1, 3, 2, 4};
  for (uint32_t i = 0; i < nreq; i++) {
    rkv_sched_request r = {(int64_t)i,  8 + i,     pol == RKV_EVICT_FULL ? 100 : 150,
                           prio[i % 6], (double)i, NULL};
    EXPECT_OK(rkv_sched_add_request(s, &r));
  }
  for (int step = 0; step < 20000; step++) {
    const rkv_sched_plan *p;
    rkv_status st = rkv_sched_step(s, &p);
    EXPECT_OK(st);
    if (st != RKV_OK) break;
    for (uint32_t i = 0; i < p->n_preempted; i++) {
      if (res.first_victim < 0) res.first_victim = p->preempted[i];
      if (p->preempted[i] == 1) res.high_prio_preempted = true;
    }
    st = te_run(&t, s, p);
    EXPECT_OK(st);
    if (st != RKV_OK) break;
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    if (mt.num_finished == nreq) break;
  }
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  res.preempt_recompute = mt.num_preempt_recompute;
  res.preempt_swap = mt.num_preempt_swap;
  res.finished = mt.num_finished;
  res.gen_tokens = mt.generation_tokens;
  res.steps = mt.steps;
  res.used_after = mt.used_blocks;
  res.host_used_after = mt.host_used_blocks;
  res.bm_seqs_after = rkv_blockmgr_num_seqs(m);
  res.swap_checks = t.swap_checks;
  res.swap_failures = t.swap_failures;
  res.value_failures = t.value_failures;
  res.compressions = t.compressions;
  EXPECT_OK(rkv_sched_check(s));
  te_fini(&t);
  rkv_sched_destroy(s);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
  return res;
}

static void test_priority_recompute(void) {
  run_result r = run_pressure(RKV_SCHED_PREEMPT_RECOMPUTE, RKV_EVICT_FULL, 1, 1, 3);
  EXPECT(r.preempt_recompute > 0);
  EXPECT_EQ_INT(r.preempt_swap, 0);
  EXPECT_EQ_INT(r.first_victim, 0); /* lowest priority first */
  EXPECT(!r.high_prio_preempted);
  EXPECT_EQ_INT(r.finished, 3);
  EXPECT_EQ_INT(r.gen_tokens, 300); /* recompute re-feeds tokens, never re-samples them */
  EXPECT_EQ_INT(r.value_failures, 0);
  EXPECT_EQ_INT(r.used_after, 0);
  EXPECT_EQ_INT(r.bm_seqs_after, 0);
}

static void test_swap_round_trip(void) {
  run_result r = run_pressure(RKV_SCHED_PREEMPT_SWAP, RKV_EVICT_FULL, 1, 1, 3);
  EXPECT(r.preempt_swap > 0);
  EXPECT_EQ_INT(r.first_victim, 0);
  EXPECT(!r.high_prio_preempted);
  EXPECT(r.swap_checks > 0);
  EXPECT_EQ_INT(r.swap_failures, 0);
  EXPECT_EQ_INT(r.value_failures, 0);
  EXPECT_EQ_INT(r.finished, 3);
  EXPECT_EQ_INT(r.gen_tokens, 300);
  EXPECT_EQ_INT(r.used_after, 0);
  EXPECT_EQ_INT(r.host_used_after, 0);
}

/* Swap with eviction and several streams: compacted streams come back bit-identical too. */
static void test_swap_with_eviction(void) {
  run_result r = run_pressure(RKV_SCHED_PREEMPT_SWAP, RKV_EVICT_STREAMING, 2, 2, 6);
  EXPECT(r.preempt_swap > 0);
  EXPECT(r.compressions > 0);
  EXPECT(r.swap_checks > 0);
  EXPECT_EQ_INT(r.swap_failures, 0);
  EXPECT_EQ_INT(r.value_failures, 0);
  EXPECT_EQ_INT(r.finished, 6);
  EXPECT_EQ_INT(r.gen_tokens, 6 * 150);
  EXPECT_EQ_INT(r.used_after, 0);
  EXPECT_EQ_INT(r.host_used_after, 0);
  r = run_pressure(RKV_SCHED_PREEMPT_RECOMPUTE, RKV_EVICT_STREAMING, 2, 2, 6);
  EXPECT(r.preempt_recompute > 0);
  EXPECT_EQ_INT(r.value_failures, 0);
  EXPECT_EQ_INT(r.finished, 6);
  EXPECT_EQ_INT(r.used_after, 0);
}

/* Fork: the child shares the parent's blocks, the first append into the shared partial block
 * is a copy-on-write op in the plan, both finish with the right K/V, nothing leaks. */
static void test_fork_cow(void) {
  rkv_blockmgr *m = make_bm(64, 4, 1, 2);
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.evict.policy = RKV_EVICT_FULL;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  test_engine t;
  te_init(&t, m, &c, 64, 0.0, 3);
  rkv_sched_request r = {1, 10, 20, 0, 0.0, NULL};
  EXPECT_OK(rkv_sched_add_request(s, &r));
  EXPECT_STATUS(rkv_sched_fork(s, 1, 2, 20), RKV_ERR_STATE); /* still waiting */
  const rkv_sched_plan *p;
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_STATUS(rkv_sched_fork(s, 1, 2, 20), RKV_ERR_STATE); /* in the outstanding plan */
  EXPECT_OK(te_run(&t, s, p));
  EXPECT_STATUS(rkv_sched_fork(s, 9, 2, 20), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_sched_fork(s, 1, 2, 1), RKV_ERR_INVALID_ARG); /* 1 already generated */
  EXPECT_STATUS(rkv_sched_fork(s, 1, 1, 20), RKV_ERR_EXISTS);
  rkv_blockmgr_stats before;
  rkv_blockmgr_get_stats(m, &before);
  EXPECT_OK(rkv_sched_fork(s, 1, 2, 15));
  rkv_blockmgr_stats after;
  rkv_blockmgr_get_stats(m, &after);
  EXPECT_EQ_INT(after.used_blocks, before.used_blocks); /* shared, nothing copied yet */
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_forks, 1);
  EXPECT_EQ_INT(p->forks[0].parent, 1);
  EXPECT_EQ_INT(p->forks[0].child, 2);
  EXPECT_EQ_INT(p->n_seqs, 2);
  EXPECT_EQ_INT(p->n_copies, 2); /* one per stream: the 2-token partial block */
  EXPECT_OK(te_run(&t, s, p));
  rkv_sched_request_info info;
  EXPECT_OK(rkv_sched_get_request(s, 2, &info));
  EXPECT_EQ_INT(info.generated, 2);
  for (int k = 0; k < 40; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    EXPECT_EQ_INT(p->n_copies, 0);
    EXPECT_OK(te_run(&t, s, p));
  }
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.num_finished, 2);
  EXPECT_EQ_INT(mt.generation_tokens, 20 + 14); /* the child generated 15 - 1 itself */
  EXPECT_EQ_INT(mt.used_blocks, 0);
  EXPECT_EQ_INT(t.value_failures, 0);
  EXPECT_EQ_INT(t.copies, 2);
  te_fini(&t);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_fork_cow();
  test_priority_recompute();
  test_swap_round_trip();
  test_swap_with_eviction();
  return rkv_test_finish();
}
