/* Scheduler unit tests for edge cases found in review: swap-in respects the block manager's
 * own sequence limit (a fork can fill it while a victim sits in the host pool); a NaN arrival
 * is rejected (it has no place in the queues' total order); a config whose copy-slot count
 * max_seqs x streams would wrap 32 bits is refused instead of under-allocated; the plan's
 * finished and fork lists stay valid until the next step although aborts, forks and new
 * requests grow the scheduler's own lists; growth preemption re-evaluates the requester's
 * copy-on-write need after each victim; a swapped sequence returns as soon as its blocks plus
 * its next chunk's exact need fit. */
#include <math.h>
#include <stdlib.h>

#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

static rkv_blockmgr *make_bm(uint32_t blocks, uint32_t layers, uint32_t heads, uint32_t max_seqs) {
  rkv_blockmgr *m = te_make_bm(blocks, 4, layers, heads, 0.0f, max_seqs, true);
  EXPECT(m != NULL);
  return m;
}

static void report_all(rkv_sched *s, const rkv_sched_plan *p) {
  rkv_sched_output o[16];
  for (uint32_t i = 0; i < p->n_seqs && i < 16; i++) {
    memset(&o[i], 0, sizeof o[i]);
    o[i].id = p->seqs[i].id;
  }
  EXPECT_OK(rkv_sched_report(s, o, p->n_seqs));
}

/* Block manager of 2 sequences under a scheduler of 8: A (high priority) and B decode; a zero
 * free-block limit makes A's growth swap B out; A forks C, filling the block manager; the next
 * steps must not try to restore B until A or C is gone, and everything finishes. */
static void test_swap_in_respects_bm_max_seqs(void) {
  rkv_blockmgr *m = make_bm(64, 1, 1, 2);
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = RKV_SCHED_PREEMPT_SWAP;
  c.host_blocks = 32;
  c.max_seqs = 8;
  c.evict.policy = RKV_EVICT_FULL;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  rkv_sched_request a = {1, 8, 40, 1, 0.0, NULL}, b = {2, 8, 40, 0, 1.0, NULL};
  EXPECT_OK(rkv_sched_add_request(s, &a));
  EXPECT_OK(rkv_sched_add_request(s, &b));
  const rkv_sched_plan *p = NULL;
  rkv_sched_request_info info;
  /* decode until A holds 12 tokens: its 3 blocks are full, the next token needs a 4th */
  for (int k = 0; k < 10; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    report_all(s, p);
    EXPECT_OK(rkv_sched_get_request(s, 1, &info));
    if (info.kv_len == 12) break;
  }
  EXPECT_EQ_INT(info.kv_len, 12);
  rkv_sched_set_free_blocks_limit(s, 0);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_swapped_out, 1);
  report_all(s, p);
  EXPECT_OK(rkv_sched_get_request(s, 2, &info));
  EXPECT_EQ_INT(info.state, RKV_SCHED_SWAPPED);
  rkv_sched_set_free_blocks_limit(s, UINT32_MAX);
  EXPECT_OK(rkv_sched_fork(s, 1, 3, 40));
  EXPECT_EQ_INT(rkv_blockmgr_num_seqs(m), 2);
  uint32_t finished = 0, swapped_in = 0;
  for (int k = 0; k < 200 && finished < 3; k++) {
    rkv_status st = rkv_sched_step(s, &p);
    EXPECT_OK(st);
    if (st != RKV_OK) {
      printf("step: %s\n", rkv_sched_last_error(s));
      break;
    }
    finished += p->n_finished;
    swapped_in += p->n_swapped_in;
    EXPECT(rkv_blockmgr_num_seqs(m) <= 2);
    report_all(s, p);
  }
  EXPECT_EQ_INT(finished, 3);
  EXPECT_EQ_INT(swapped_in, 1);
  EXPECT_OK(rkv_sched_check(s));
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

static void test_nan_arrival(void) {
  rkv_blockmgr *m = make_bm(64, 1, 1, 0);
  if (!m) return;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(NULL, m, &s, NULL, 0));
  if (!s) return;
  rkv_sched_request r = {1, 4, 4, 0, NAN, NULL};
  EXPECT_STATUS(rkv_sched_add_request(s, &r), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_sched_last_error(s), "NaN") != NULL);
  r.arrival = INFINITY; /* ordered: after every finite arrival */
  EXPECT_OK(rkv_sched_add_request(s, &r));
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.num_waiting, 1);
  EXPECT_EQ_INT(mt.num_rejected, 1);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

static void test_copy_slots_overflow(void) {
  rkv_blockmgr *m = make_bm(16, 64, 64, 4); /* 4096 streams per sequence */
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_seqs = 1u << 20; /* 4096 x 2^20 = 2^32 copy slots: wraps to 0 in 32 bits */
  rkv_sched *s = NULL;
  char err[256] = "";
  EXPECT_STATUS(rkv_sched_create(&c, m, &s, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(s == NULL);
  EXPECT(strstr(err, "max_seqs") != NULL);
  rkv_sched_destroy(s);
  c.max_seqs = 256; /* 2^20 slots: fine */
  EXPECT_OK(rkv_sched_create(&c, m, &s, err, sizeof err));
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

/* An allocator that never returns memory before the end of the test: freed blocks are
 * poisoned and parked, so a plan array freed behind the engine's back reads as garbage
 * (defined behaviour for the test) instead of crashing. */
typedef struct parked {
  void *p[4096];
  uint32_t n;
} parked;

static void *park_alloc(void *ctx, size_t size, size_t align) {
  (void)ctx;
  return aligned_alloc(align < 16 ? 16 : align, (size + 15) / 16 * 16);
}

static void park_free(void *ctx, void *p, size_t size) {
  parked *k = ctx;
  memset(p, 0xAB, size);
  if (k->n < 4096)
    k->p[k->n++] = p;
  else
    free(p);
}

/* The finished list handed out with a plan stays valid until the next step even when
 * aborts and new requests between step and report grow the scheduler's own list (the handed
 * out copy only grows at the start of the next step, before anything changes). */
static void test_finished_list_stays_valid(void) {
  static parked k;
  rkv_allocator al = {park_alloc, park_free, &k};
  rkv_blockmgr *m = make_bm(4096, 1, 1, 0);
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_seqs = 2;
  c.allocator = &al;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  const rkv_sched_plan *p = NULL;
  for (int64_t id = 0; id < 3; id++) {
    rkv_sched_request r = {id, 4, 4, 0, (double)id, NULL};
    EXPECT_OK(rkv_sched_add_request(s, &r));
  }
  EXPECT_OK(rkv_sched_abort(s, 2));
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_finished, 1);
  const int64_t *fin = p->finished;
  /* between step and report: 200 more requests arrive and 150 are aborted */
  for (int64_t id = 100; id < 300; id++) {
    rkv_sched_request r = {id, 4, 4, 0, (double)id, NULL};
    EXPECT_OK(rkv_sched_add_request(s, &r));
  }
  for (int64_t id = 100; id < 250; id++) EXPECT_OK(rkv_sched_abort(s, id));
  EXPECT(p->finished == fin);
  EXPECT_EQ_INT(fin[0], 2);
  report_all(s, p);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_finished, 150);
  EXPECT_EQ_INT(p->finished[0], 100);
  EXPECT_EQ_INT(p->finished[149], 249);
  report_all(s, p);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  for (uint32_t i = 0; i < k.n; i++) free(k.p[i]);
  k.n = 0;
}

/* The same for the fork list: forks made between step and report (of running requests the
 * outstanding plan did not schedule) must not move the plan's `forks` array. */
static void test_fork_list_stays_valid(void) {
  static parked k;
  rkv_allocator al = {park_alloc, park_free, &k};
  rkv_blockmgr *m = make_bm(4096, 1, 1, 0);
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_seqs = 64;
  c.max_batched_tokens = 1; /* one sequence per step: the others stay unscheduled */
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.allocator = &al;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  rkv_sched_request r = {1, 1, 100, 0, 0.0, NULL};
  EXPECT_OK(rkv_sched_add_request(s, &r));
  const rkv_sched_plan *p = NULL;
  EXPECT_OK(rkv_sched_step(s, &p));
  report_all(s, p);
  EXPECT_OK(rkv_sched_fork(s, 1, 2, 100));
  EXPECT_OK(rkv_sched_step(s, &p)); /* announces 1 -> 2, decodes 1 */
  EXPECT_EQ_INT(p->n_forks, 1);
  EXPECT_EQ_INT(p->n_seqs, 1);
  EXPECT_EQ_INT(p->seqs[0].id, 1);
  const rkv_sched_fork_op *f = p->forks;
  for (int64_t id = 10; id < 50; id++) EXPECT_OK(rkv_sched_fork(s, 2, id, 100));
  EXPECT(p->forks == f);
  EXPECT_EQ_INT(f[0].parent, 1);
  EXPECT_EQ_INT(f[0].child, 2);
  report_all(s, p);
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_forks, 40);
  EXPECT_EQ_INT(p->forks[39].child, 49);
  report_all(s, p);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  for (uint32_t i = 0; i < k.n; i++) free(k.p[i]);
  k.n = 0;
}

/* Growth preemption re-evaluates the requester's need after each victim: P's last block is
 * shared with its fork child C, so P's decode needs a copy-on-write block; preempting C (the
 * tail) frees nothing but makes P's block exclusive, so P then needs no block at all and
 * must decode instead of being preempted too. */
static void test_growth_need_after_victim(void) {
  rkv_blockmgr *m = make_bm(8, 1, 1, 0); /* 8 blocks of 4 slots, one stream */
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.evict.policy = RKV_EVICT_FULL;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  rkv_sched_request q = {1, 23, 2, 2, 0.0, NULL};  /* 6 blocks, one free slot */
  rkv_sched_request pr = {2, 6, 20, 1, 1.0, NULL}; /* 2 blocks, the last half full */
  EXPECT_OK(rkv_sched_add_request(s, &q));
  EXPECT_OK(rkv_sched_add_request(s, &pr));
  const rkv_sched_plan *p = NULL;
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 2);
  report_all(s, p);
  EXPECT_OK(rkv_sched_fork(s, 2, 3, 20)); /* C shares both of P's blocks; the pool is full */
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_preempted, 1);
  EXPECT_EQ_INT(p->n_preempted ? p->preempted[0] : -1, 3);
  EXPECT_EQ_INT(p->n_seqs, 2); /* Q and P both decode */
  EXPECT_EQ_INT(p->n_copies, 0);
  report_all(s, p);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

/* A swapped sequence comes back as soon as its blocks plus what its next chunk really needs
 * fit: A (low priority) holds 9 of the pool's 10 blocks when B's growth swaps it out; once B
 * is done, A's 9 blocks plus its next token (no new block: 35 tokens in 9 blocks of 4) fit.
 * A fixed allowance of two blocks per stream would leave A swapped forever. */
static void test_swap_in_exact_need(void) {
  rkv_blockmgr *m = make_bm(10, 1, 1, 0);
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = RKV_SCHED_PREEMPT_SWAP;
  c.host_blocks = 16;
  c.evict.policy = RKV_EVICT_FULL;
  c.check_every_step = true;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  rkv_sched_request a = {1, 4, 36, 0, 0.0, NULL}; /* whole life: 40 tokens = the pool */
  EXPECT_OK(rkv_sched_add_request(s, &a));
  const rkv_sched_plan *p = NULL;
  rkv_sched_request_info info;
  memset(&info, 0, sizeof info);
  for (int k = 0; k < 40 && info.kv_len < 34; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    report_all(s, p);
    EXPECT_OK(rkv_sched_get_request(s, 1, &info));
  }
  EXPECT_EQ_INT(info.kv_len, 34);
  rkv_sched_request b = {2, 4, 2, 1, 1.0, NULL};
  EXPECT_OK(rkv_sched_add_request(s, &b));
  uint32_t finished = 0, swapped_out = 0, swapped_in = 0;
  for (int k = 0; k < 100 && finished < 2; k++) {
    EXPECT_OK(rkv_sched_step(s, &p));
    finished += p->n_finished;
    swapped_out += p->n_swapped_out;
    swapped_in += p->n_swapped_in;
    report_all(s, p);
  }
  EXPECT_EQ_INT(swapped_out, 1);
  EXPECT_EQ_INT(swapped_in, 1);
  EXPECT_EQ_INT(finished, 2);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
}

/* An allocator that fails about one call in `one_in` (fixed seed) and checks that every free
 * names the size that was allocated (a grown array recorded with its old size would not). */
typedef struct flaky {
  uint64_t rng;
  uint32_t one_in;
  uint64_t fails, size_mismatches;
} flaky;

#define FLAKY_HDR 64 /* covers every alignment the scheduler asks for */

static void *flaky_alloc(void *ctx, size_t size, size_t align) {
  flaky *f = ctx;
  if (align > FLAKY_HDR) return NULL;
  if (f->one_in && rkv_test_rand(&f->rng) % f->one_in == 0) {
    f->fails++;
    return NULL;
  }
  char *base = aligned_alloc(FLAKY_HDR, FLAKY_HDR + (size + FLAKY_HDR - 1) / FLAKY_HDR * FLAKY_HDR);
  if (!base) return NULL;
  memcpy(base, &size, sizeof size);
  return base + FLAKY_HDR;
}

static void flaky_free(void *ctx, void *p, size_t size) {
  flaky *f = ctx;
  char *base = (char *)p - FLAKY_HDR;
  size_t had;
  memcpy(&had, base, sizeof had);
  if (had != size) f->size_mismatches++;
  free(base);
}

/* All-or-nothing under memory failure: a random workload (arrivals, aborts, forks, steps,
 * reports with random EOS) over an allocator that fails one call in 4. Every failing call
 * returns RKV_ERR_NO_MEMORY with the invariants intact, and the run still completes. */
static void test_out_of_memory_changes_nothing(void) {
  static flaky f;
  f.rng = 99;
  f.one_in = 0;
  rkv_allocator al = {flaky_alloc, flaky_free, &f};
  rkv_blockmgr *m = make_bm(512, 2, 1, 0);
  if (!m) return;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = RKV_SCHED_PREEMPT_SWAP;
  c.host_blocks = 64;
  c.max_seqs = 8;
  c.max_batched_tokens = 32;
  c.evict.policy = RKV_EVICT_FULL;
  c.allocator = &al;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, m, &s, NULL, 0));
  if (!s) return;
  f.one_in = 4;
  uint64_t rng = 5, nomem = 0, added = 0, done = 0;
  int64_t next = 0;
  for (int it = 0; it < 4000 && (next < 200 || done < added); it++) {
    uint64_t dice = rkv_test_rand(&rng) % 8;
    rkv_status st = RKV_OK;
    if (dice < 3 && next < 200) {
      rkv_sched_request r = {next,
                             1 + (int64_t)(rkv_test_rand(&rng) % 20),
                             1 + (int64_t)(rkv_test_rand(&rng) % 30),
                             0,
                             (double)next,
                             NULL};
      st = rkv_sched_add_request(s, &r);
      if (st == RKV_OK) {
        next++;
        added++;
      }
    } else if (dice == 3 && next) {
      /* announced in the next plan's `finished`, which is what `done` counts */
      st = rkv_sched_abort(s, (int64_t)(rkv_test_rand(&rng) % (uint64_t)next));
    } else if (dice == 4 && next < 200) {
      st = rkv_sched_fork(s, (int64_t)(rkv_test_rand(&rng) % (uint64_t)(next + 1)), next, 40);
      if (st == RKV_OK) {
        next++;
        added++;
      }
    } else {
      const rkv_sched_plan *p = NULL;
      st = rkv_sched_step(s, &p);
      if (st == RKV_OK) {
        rkv_sched_output o[8];
        for (uint32_t i = 0; i < p->n_seqs; i++) {
          memset(&o[i], 0, sizeof o[i]);
          o[i].id = p->seqs[i].id;
          o[i].eos = rkv_test_rand(&rng) % 16 == 0;
        }
        done += p->n_finished;
        EXPECT_OK(rkv_sched_report(s, o, p->n_seqs));
      }
    }
    if (st == RKV_ERR_NO_MEMORY) nomem++;
    EXPECT(st == RKV_OK || st == RKV_ERR_NO_MEMORY || st == RKV_ERR_NOT_FOUND ||
           st == RKV_ERR_STATE || st == RKV_ERR_EXISTS || st == RKV_ERR_INVALID_ARG ||
           st == RKV_ERR_CAPACITY);
    if (rkv_sched_check(s) != RKV_OK) {
      EXPECT_OK(rkv_sched_check(s));
      printf("after %s: %s\n", rkv_status_str(st), rkv_sched_last_error(s));
      break;
    }
  }
  /* finish what is left without failures: every request is accounted for */
  f.one_in = 0;
  for (int it = 0; it < 20000 && done < added; it++) {
    const rkv_sched_plan *p = NULL;
    EXPECT_OK(rkv_sched_step(s, &p));
    if (!p) break;
    done += p->n_finished;
    report_all(s, p);
  }
  const rkv_sched_plan *p = NULL;
  EXPECT_OK(rkv_sched_step(s, &p)); /* announces the last finishes */
  if (p) {
    done += p->n_finished;
    report_all(s, p);
  }
  printf(
      "out of memory: %llu failed allocations, %llu calls returned NO_MEMORY, %llu of %llu "
      "requests done\n",
      (unsigned long long)f.fails, (unsigned long long)nomem, (unsigned long long)done,
      (unsigned long long)added);
  EXPECT(nomem > 20);
  EXPECT_EQ_INT(done, added);
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  EXPECT_EQ_INT(mt.used_blocks, 0);
  EXPECT_OK(rkv_sched_check(s));
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  EXPECT_EQ_INT(f.size_mismatches, 0);
}

int main(void) {
  test_swap_in_respects_bm_max_seqs();
  test_nan_arrival();
  test_copy_slots_overflow();
  test_finished_list_stays_valid();
  test_fork_list_stays_valid();
  test_growth_need_after_victim();
  test_swap_in_exact_need();
  test_out_of_memory_changes_nothing();
  return rkv_test_finish();
}
