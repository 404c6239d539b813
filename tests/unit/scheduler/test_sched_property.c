/* Scheduler property test: random workloads (admission mode, preemption mode, host pool,
 * eviction policy, request sizes, priorities, arrivals between steps, random EOS and aborts)
 * run to completion with rkv_sched_check after every step and every report; the engine checks
 * every cached K/V row and every swap-in (half the seeds write K/V through plan slots). Then: no
 * leaks, reserve mode never preempts, and the same seed replays to the same plan-hash sequence (the
 * tensor-parallel replica property). */
#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

typedef struct outcome {
  uint64_t hash;
  uint64_t preemptions;
  uint64_t finished, aborted, forks, copies;
  uint32_t used_after, host_used_after;
  uint64_t swap_failures, value_failures;
  bool ok;
} outcome;

static outcome run_random(uint64_t seed) {
  outcome o;
  memset(&o, 0, sizeof o);
  uint64_t rng = seed;
  uint32_t layers = 1 + (uint32_t)(rkv_test_rand(&rng) % 2);
  uint32_t heads = 1 + (uint32_t)(rkv_test_rand(&rng) % 2);
  uint32_t bs = (rkv_test_rand(&rng) % 2) ? 4 : 8;
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = (60 + (uint32_t)(rkv_test_rand(&rng) % 80)) * layers * heads;
  bc.block_size = bs;
  bc.num_layers = layers;
  bc.num_kv_heads = heads;
  bc.head_dim = 4;
  bc.dtype = RKV_DTYPE_F32;
  bc.watermark = (rkv_test_rand(&rng) % 2) ? 0.0f : 0.02f;
  bc.max_seqs = 64;
  rkv_blockmgr *m = NULL;
  if (rkv_blockmgr_create(&bc, &m) != RKV_OK) return o;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = (rkv_test_rand(&rng) % 2) ? RKV_SCHED_OPTIMISTIC : RKV_SCHED_RESERVE;
  c.preempt = (rkv_test_rand(&rng) % 2) ? RKV_SCHED_PREEMPT_SWAP : RKV_SCHED_PREEMPT_RECOMPUTE;
  c.host_blocks = c.preempt == RKV_SCHED_PREEMPT_SWAP ? (uint32_t)(rkv_test_rand(&rng) % 200) : 0;
  c.max_batched_tokens = 16 + (uint32_t)(rkv_test_rand(&rng) % 100);
  c.max_prefill_chunk = (uint32_t)(rkv_test_rand(&rng) % 40);
  c.max_seqs = 1 + (uint32_t)(rkv_test_rand(&rng) % 24);
  c.evict.policy = (rkv_evict_policy)(rkv_test_rand(&rng) % 4); /* full, rkv, snapkv, streaming */
  c.evict.budget = 8 + (int32_t)(rkv_test_rand(&rng) % 24);
  c.evict.buffer = 1 + (int32_t)(rkv_test_rand(&rng) % 16);
  c.evict.window = 2;
  c.evict.sinks = 2;
  c.check_every_step = true;
  /* every other seed, the executor writes K/V through the plan's slot mapping (the engine's
   * row checks then verify those slots); from the seed, so the workloads stay as they were */
  c.plan_slots = (seed >> 1) & 1;
  rkv_sched *s = NULL;
  char err[256];
  if (rkv_sched_create(&c, m, &s, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "create: %s\n", err);
    rkv_blockmgr_destroy(m);
    return o;
  }
  test_engine t;
  te_init(&t, m, &c, 256, 0.02, seed ^ 0x55);
  rkv_evict_params other = c.evict; /* a per-request override */
  other.policy = RKV_EVICT_STREAMING;
  other.budget = 12;
  other.buffer = 4;
  uint64_t h = 0;
  int64_t next_id = 0;
  const int64_t total = 40;
  o.ok = true;
  for (int step = 0; step < 20000 && o.ok; step++) {
    /* arrivals */
    while (next_id < total && rkv_test_uniform(&rng) < 0.3) {
      rkv_sched_request r = {next_id,
                             1 + (int64_t)(rkv_test_rand(&rng) % 60),
                             1 + (int64_t)(rkv_test_rand(&rng) % 90),
                             (int32_t)(rkv_test_rand(&rng) % 3),
                             (double)step,
                             NULL};
      if (rkv_test_rand(&rng) % 4 == 0) r.evict = &other;
      rkv_status st = rkv_sched_add_request(s, &r);
      if (st != RKV_OK && st != RKV_ERR_CAPACITY) o.ok = false;
      next_id++;
    }
    /* an occasional abort of a live request */
    if (rkv_test_rand(&rng) % 50 == 0 && next_id > 0) {
      int64_t id = (int64_t)(rkv_test_rand(&rng) % (uint64_t)next_id);
      rkv_status st = rkv_sched_abort(s, id);
      if (st != RKV_OK && st != RKV_ERR_NOT_FOUND) o.ok = false;
    }
    /* an occasional fork of a running request (parallel sampling) */
    if (rkv_test_rand(&rng) % 20 == 0 && next_id < total) {
      int64_t live[64];
      uint32_t nl = rkv_blockmgr_list_seqs(m, live, 64);
      if (nl) {
        int64_t parent = live[rkv_test_rand(&rng) % nl];
        rkv_sched_request_info info;
        rkv_status st = rkv_sched_get_request(s, parent, &info);
        int64_t mx = info.generated + 1 + (int64_t)(rkv_test_rand(&rng) % 40);
        if (st == RKV_OK) st = rkv_sched_fork(s, parent, next_id, mx);
        if (st == RKV_OK) {
          next_id++;
          o.forks++;
        } else if (st != RKV_ERR_NO_BLOCKS && st != RKV_ERR_CAPACITY) {
          fprintf(stderr, "seed %llu: fork: %s\n", (unsigned long long)seed,
                  rkv_sched_last_error(s));
          o.ok = false;
        }
      }
    }
    const rkv_sched_plan *p;
    rkv_status st = rkv_sched_step(s, &p);
    if (st != RKV_OK) {
      fprintf(stderr, "seed %llu step %d: %s: %s\n", (unsigned long long)seed, step,
              rkv_status_name(st), rkv_sched_last_error(s));
      o.ok = false;
      break;
    }
    h = h * 31 + rkv_sched_plan_hash(p);
    st = te_run(&t, s, p);
    if (st != RKV_OK) {
      fprintf(stderr, "seed %llu step %d: report %s: %s\n", (unsigned long long)seed, step,
              rkv_status_name(st), rkv_sched_last_error(s));
      o.ok = false;
      break;
    }
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    if (next_id == total && mt.num_running + mt.num_waiting + mt.num_swapped == 0) break;
  }
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  if (mt.num_running + mt.num_waiting + mt.num_swapped != 0) {
    fprintf(stderr, "seed %llu: did not drain (%u running, %u waiting, %u swapped)\n",
            (unsigned long long)seed, mt.num_running, mt.num_waiting, mt.num_swapped);
    o.ok = false;
  }
  if (c.admission == RKV_SCHED_RESERVE && mt.num_preemptions) {
    fprintf(stderr, "seed %llu: reserve mode preempted\n", (unsigned long long)seed);
    o.ok = false;
  }
  o.hash = h;
  o.preemptions = mt.num_preemptions;
  o.finished = mt.num_finished;
  o.aborted = mt.num_aborted;
  o.used_after = mt.used_blocks;
  o.host_used_after = mt.host_used_blocks;
  o.swap_failures = t.swap_failures;
  o.value_failures = t.value_failures;
  o.copies = t.copies;
  if (rkv_sched_check(s) != RKV_OK) {
    fprintf(stderr, "seed %llu: %s\n", (unsigned long long)seed, rkv_sched_last_error(s));
    o.ok = false;
  }
  te_fini(&t);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  return o;
}

int main(void) {
  uint64_t preempting = 0, forks = 0, copies = 0;
  for (uint64_t seed = 1; seed <= 200; seed++) {
    outcome a = run_random(seed);
    EXPECT(a.ok);
    EXPECT_EQ_INT(a.used_after, 0);
    EXPECT_EQ_INT(a.host_used_after, 0);
    EXPECT_EQ_INT(a.swap_failures, 0);
    EXPECT_EQ_INT(a.value_failures, 0);
    if (a.preemptions) preempting++;
    forks += a.forks;
    copies += a.copies;
    if (seed % 10 == 0) {
      outcome b = run_random(seed);
      EXPECT(b.hash == a.hash);
      EXPECT_EQ_INT(b.finished, a.finished);
      outcome c = run_random(seed + 1000);
      EXPECT(c.hash != a.hash);
    }
  }
  EXPECT(preempting > 0); /* the random mix really exercises preemption */
  EXPECT(forks > 0);
  EXPECT(copies > 0); /* and copy-on-write */
  printf("%llu runs preempted, %llu forks, %llu CoW copies\n", (unsigned long long)preempting,
         (unsigned long long)forks, (unsigned long long)copies);
  return rkv_test_finish();
}
