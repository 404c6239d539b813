/* Overlap scheduling (rkv_sched_config.overlap) against sync mode. Random workloads (both
 * admission modes, swap and recompute preemption, forks, every eviction policy, EOS decided by
 * each request's own position) run through the executor twice: sync plans step N+1 after step
 * N's report; overlap plans it while N is in flight (after N's layers, before its finish and
 * report), and now and then drains (forks are made only then: a parent in flight cannot
 * fork). Checked after every call: rkv_sched_check (which covers the plan in flight),
 * rkv_exec_check, every cached K/V row is one its writers wrote, swap-ins are bit-identical.
 * Then, per request that was neither forked off nor ever preempted by recompute (a recompute
 * rebuilds a compressed cache anew; nor, under H2O, a fork parent: attention mass on shared
 * blocks is pooled over the sequences that read them), both runs sampled the same number of tokens
 * with the same attention output, bit for bit, for each. Overlap runs must also have exercised a
 * late EOS (a discarded token), an append deferred behind a compression in flight, and preemption.
 */
#include <rkv/scheduler.h>

#include "rkv_test.h"
#include "sched_test_engine.h"

enum { MAX_REQ = 40, MAX_TOK = 160, CHILD0 = 1000, MAX_ITERS = 20000 };

typedef struct run_out {
  uint64_t digest[MAX_REQ][MAX_TOK]; /* per request and sampled token: its output rows' hash */
  uint32_t n_tok[MAX_REQ];
  bool recomputed[MAX_REQ];
  bool forked[MAX_REQ];     /* a parent: H2O pools the mass of shared blocks over their readers */
  bool ended[CHILD0 + 256]; /* the engine sampled its eos */
  uint64_t discarded, deferred, preemptions, forks, steps, compressions, rejected;
  bool ok;
} run_out;

typedef struct workload {
  uint64_t seed;
  uint32_t n;
  int64_t prompt[MAX_REQ], max_new[MAX_REQ];
  uint32_t arrive_iter[MAX_REQ];
} workload;

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* A token's end depends only on who samples it and where: equal in both runs. */
static bool eos_at(uint64_t seed, int64_t id, int64_t pos) {
  return mix(seed ^ mix((uint64_t)id * 131 + (uint64_t)pos)) % 1000 < 25;
}

static uint64_t hash_rows(const float *x, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; i++) {
    uint32_t b;
    memcpy(&b, &x[i], 4);
    h = mix(h ^ b);
  }
  return h;
}

/* Records each sampled token's output for layer l (the last row of its sequence). */
static void record_layer(run_out *o, const test_engine *t, const rkv_sched_plan *p, uint64_t *dig) {
  const size_t row = (size_t)t->kv_heads * t->head_dim;
  uint32_t r0 = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    if (q->samples)
      dig[i] = mix(dig[i] ^ hash_rows(t->out + (size_t)(r0 + q->n_tokens - 1) * row, row));
    r0 += q->n_tokens;
  }
  (void)o;
}

/* Begins p and runs its layers; fills outs' eos; records the sampled tokens. */
static bool run_layers(run_out *o, test_engine *t, const workload *w, const rkv_sched_plan *p) {
  te_note_forks(t, p);
  if (rkv_exec_begin(t->x, p) != RKV_OK) {
    fprintf(stderr, "begin: %s\n", rkv_exec_last_error(t->x));
    return false;
  }
  te_check_swap_ins(t, p);
  if (rkv_exec_check(t->x) != RKV_OK) {
    fprintf(stderr, "exec check after begin: %s\n", rkv_exec_last_error(t->x));
    return false;
  }
  if (!te_grow_rows(t, p->n_batched_tokens)) return false;
  static uint64_t dig[1024];
  memset(dig, 0, sizeof(uint64_t) * p->n_seqs);
  for (uint32_t l = 0; l < t->layers; l++) {
    te_layer_rows(t, p, l);
    if (rkv_exec_layer(t->x, l, t->q, t->k, t->v, t->out) != RKV_OK) {
      fprintf(stderr, "layer: %s\n", rkv_exec_last_error(t->x));
      return false;
    }
    record_layer(o, t, p, dig);
  }
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    memset(&t->outs[i], 0, sizeof t->outs[i]);
    const int64_t id = q->id;
    const bool known = id >= 0 && id < CHILD0 + 256;
    if (known && o->ended[id]) { /* in a plan made before its eos was reported */
      o->discarded++;
      t->outs[i].eos = true;
      continue;
    }
    if (!q->samples) continue;
    t->outs[i].eos = eos_at(w->seed, id, q->pos + q->n_tokens - 1);
    if (known && t->outs[i].eos) o->ended[id] = true;
    if (id < MAX_REQ && o->n_tok[id] < MAX_TOK) o->digest[id][o->n_tok[id]++] = dig[i];
  }
  return true;
}

static void note_plan(run_out *o, const rkv_sched_plan *p, const rkv_sched_plan *prev) {
  for (uint32_t i = 0; i < p->n_preempted; i++) {
    bool swapped = false;
    for (uint32_t j = 0; j < p->n_swapped_out; j++) swapped |= p->swapped_out[j] == p->preempted[i];
    if (!swapped && p->preempted[i] < MAX_REQ) o->recomputed[p->preempted[i]] = true;
  }
  o->preemptions += p->n_preempted;
  /* a sequence compressed by the plan in flight and already in this one: a deferred append */
  for (uint32_t i = 0; prev && i < p->n_seqs; i++)
    for (uint32_t j = 0; j < prev->n_seqs; j++)
      if (prev->seqs[j].id == p->seqs[i].id && prev->seqs[j].compress) o->deferred++;
}

static void try_fork(run_out *o, rkv_sched *s, uint64_t *rng, const workload *w) {
  if (o->forks >= 200 || rkv_test_uniform(rng) > 0.6) return;
  const int64_t parent = (int64_t)(rkv_test_rand(rng) % w->n);
  rkv_sched_request_info info;
  if (rkv_sched_get_request(s, parent, &info) != RKV_OK || info.state != RKV_SCHED_RUNNING) return;
  const rkv_status st = rkv_sched_fork(s, parent, CHILD0 + (int64_t)o->forks,
                                       info.generated + 1 + (int64_t)(rkv_test_rand(rng) % 20));
  if (st == RKV_OK) o->forks++;
  if (st == RKV_OK) o->forked[parent] = true;
}

static bool run(const workload *w, const rkv_sched_config *base, const rkv_blockmgr_config *bc,
                bool overlap, run_out *o) {
  memset(o, 0, sizeof *o);
  rkv_blockmgr *m = NULL;
  if (rkv_blockmgr_create(bc, &m) != RKV_OK) return false;
  rkv_sched_config c = *base;
  c.overlap = overlap;
  rkv_sched *s = NULL;
  char err[256];
  if (rkv_sched_create(&c, m, &s, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "create: %s\n", err);
    rkv_blockmgr_destroy(m);
    return false;
  }
  test_engine t;
  bool ok = te_init(&t, m, &c, 512, 0.0, w->seed) == 0;
  uint64_t rng = w->seed ^ 0xF00D;
  uint32_t added = 0;
  const rkv_sched_plan *cur = NULL, *prev = NULL;
  for (uint32_t it = 0; ok && it < MAX_ITERS; it++) {
    while (added < w->n && w->arrive_iter[added] <= it) {
      rkv_sched_request rq = {added, w->prompt[added], w->max_new[added], 0, (double)added, NULL};
      const rkv_status st = rkv_sched_add_request(s, &rq);
      ok = st == RKV_OK || st == RKV_ERR_CAPACITY; /* a pool smaller than its bound */
      o->rejected += st == RKV_ERR_CAPACITY;
      added++;
    }
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    const uint32_t live = mt.num_running + mt.num_waiting + mt.num_swapped;
    if (!cur) {
      if (added == w->n && live == 0) break;
      if (rkv_sched_step(s, &cur) != RKV_OK) {
        fprintf(stderr, "step: %s\n", rkv_sched_last_error(s));
        ok = false;
        break;
      }
      note_plan(o, cur, NULL);
      prev = NULL;
    }
    ok = run_layers(o, &t, w, cur);
    if (!ok) break;
    /* overlap: plan the next step while this one is in flight (its finish not run yet) */
    const rkv_sched_plan *next = NULL;
    const bool ahead = overlap && live && rkv_test_uniform(&rng) > 0.15;
    if (ahead) {
      if (rkv_sched_step(s, &next) != RKV_OK) {
        fprintf(stderr, "overlap step: %s\n", rkv_sched_last_error(s));
        ok = false;
        break;
      }
      note_plan(o, next, cur);
    }
    if (rkv_exec_finish(t.x, t.outs, cur->n_seqs) != RKV_OK) {
      fprintf(stderr, "finish: %s\n", rkv_exec_last_error(t.x));
      ok = false;
      break;
    }
    for (uint32_t i = 0; i < cur->n_seqs; i++) o->compressions += t.outs[i].compressed;
    if (rkv_sched_report(s, t.outs, cur->n_seqs) != RKV_OK) {
      fprintf(stderr, "report: %s\n", rkv_sched_last_error(s));
      ok = false;
      break;
    }
    o->steps++;
    /* the executor's mirror is current between steps only with no plan made since */
    if (!ahead && rkv_exec_check(t.x) != RKV_OK) {
      fprintf(stderr, "exec check: %s\n", rkv_exec_last_error(t.x));
      ok = false;
      break;
    }
    te_snapshot_skip(&t, s, next);

    if (!ahead) try_fork(o, s, &rng, w);
    prev = cur;
    cur = next;
    (void)prev;
  }
  ok = ok && !cur && t.swap_failures == 0 && t.value_failures == 0;
  if (t.swap_failures || t.value_failures)
    fprintf(stderr, "engine: %llu swap failures, %llu value failures\n",
            (unsigned long long)t.swap_failures, (unsigned long long)t.value_failures);
  rkv_sched_metrics mt;
  rkv_sched_get_metrics(s, &mt);
  ok = ok && mt.num_finished == w->n - o->rejected + o->forks &&
       rkv_blockmgr_free_blocks(m) == bc->num_blocks && rkv_sched_check(s) == RKV_OK;
  o->ok = ok;
  te_fini(&t);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(m);
  return ok;
}

int main(void) {
  static run_out a, b;
  uint64_t totals[4] = {0, 0, 0, 0}; /* discarded, deferred, preemptions, compared tokens */
  const int seeds = 64;
  const char *only = getenv("RKV_TEST_SEED"); /* debugging: one seed */
  for (int k = 0; k < seeds; k++) {
    if (only && atoi(only) != k) continue;
    uint64_t rng = 0xA11CE + (uint64_t)k * 7919;
    workload w;
    memset(&w, 0, sizeof w);
    w.seed = rng;
    w.n = 12 + (uint32_t)(rkv_test_rand(&rng) % (MAX_REQ - 12));
    for (uint32_t i = 0; i < w.n; i++) {
      w.prompt[i] = 1 + (int64_t)(rkv_test_rand(&rng) % 40);
      w.max_new[i] = 4 + (int64_t)(rkv_test_rand(&rng) % (MAX_TOK - 4));
      w.arrive_iter[i] = (uint32_t)(rkv_test_rand(&rng) % 60);
    }
    for (uint32_t i = 1; i < w.n; i++) /* arrivals in order */
      if (w.arrive_iter[i] < w.arrive_iter[i - 1]) w.arrive_iter[i] = w.arrive_iter[i - 1];
    const uint32_t layers = 1 + (uint32_t)(rkv_test_rand(&rng) % 2);
    const uint32_t heads = 1 + (uint32_t)(rkv_test_rand(&rng) % 2);
    rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
    bc.block_size = (rkv_test_rand(&rng) % 2) ? 4 : 8;
    bc.num_blocks = (24 + (uint32_t)(rkv_test_rand(&rng) % 60)) * layers * heads;
    bc.num_layers = layers;
    bc.num_kv_heads = heads;
    bc.head_dim = 4;
    bc.dtype = RKV_DTYPE_F32;
    bc.max_seqs = 64;
    rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
    c.admission = (k % 3) ? RKV_SCHED_OPTIMISTIC : RKV_SCHED_RESERVE;
    c.preempt = (k % 2) ? RKV_SCHED_PREEMPT_SWAP : RKV_SCHED_PREEMPT_RECOMPUTE;
    c.host_blocks =
        c.preempt == RKV_SCHED_PREEMPT_SWAP ? 40 + (uint32_t)(rkv_test_rand(&rng) % 200) : 0;
    c.max_batched_tokens = 24 + (uint32_t)(rkv_test_rand(&rng) % 80);
    c.max_prefill_chunk = (uint32_t)(rkv_test_rand(&rng) % 24);
    c.max_seqs = 2 + (uint32_t)(rkv_test_rand(&rng) % 20);
    c.evict.policy = (rkv_evict_policy)(k % RKV_EVICT_POLICY_COUNT_);
    c.evict.budget = 8 + (int32_t)(rkv_test_rand(&rng) % 24);
    c.evict.buffer = 1 + (int32_t)(rkv_test_rand(&rng) % 12);
    c.evict.window = 2;
    c.evict.sinks = 2;
    c.check_every_step = true;
    const bool ok_a = run(&w, &c, &bc, false, &a);
    const bool ok_b = run(&w, &c, &bc, true, &b);
    EXPECT(ok_a);
    EXPECT(ok_b);
    uint64_t compared = 0;
    for (uint32_t i = 0; ok_a && ok_b && i < w.n; i++) {
      const bool pooled = c.evict.policy == RKV_EVICT_H2O && (a.forked[i] || b.forked[i]);
      if (a.recomputed[i] || b.recomputed[i] || pooled || !a.n_tok[i]) continue;
      if (a.n_tok[i] != b.n_tok[i]) {
        fprintf(stderr, "seed %d (%s): request %u sampled %u tokens sync, %u overlap\n", k,
                rkv_evict_policy_name(c.evict.policy), i, a.n_tok[i], b.n_tok[i]);
        EXPECT(false);
        continue;
      }
      for (uint32_t j = 0; j < a.n_tok[i]; j++)
        if (a.digest[i][j] != b.digest[i][j]) {
          fprintf(stderr, "seed %d (%s): request %u token %u differs\n", k,
                  rkv_evict_policy_name(c.evict.policy), i, j);
          EXPECT(false);
          break;
        }
      compared += a.n_tok[i];
    }
    printf(
        "seed %2d %-9s %-10s %-9s: steps %llu sync / %llu overlap, %llu tokens compared, "
        "overlap: %llu discarded, %llu deferred, %llu preempted, %llu forks, %llu rejected\n",
        k, rkv_evict_policy_name(c.evict.policy), rkv_sched_admission_name(c.admission),
        rkv_sched_preempt_mode_name(c.preempt), (unsigned long long)a.steps,
        (unsigned long long)b.steps, (unsigned long long)compared, (unsigned long long)b.discarded,
        (unsigned long long)b.deferred, (unsigned long long)b.preemptions,
        (unsigned long long)b.forks, (unsigned long long)b.rejected);
    totals[0] += b.discarded;
    totals[1] += b.deferred;
    totals[2] += b.preemptions;
    totals[3] += compared;
  }
  printf(
      "overlap vs sync: %llu tokens compared; overlap discarded %llu, deferred %llu, "
      "preempted %llu\n",
      (unsigned long long)totals[3], (unsigned long long)totals[0], (unsigned long long)totals[1],
      (unsigned long long)totals[2]);
  EXPECT(totals[0] > 0);
  EXPECT(totals[1] > 0);
  EXPECT(totals[2] > 0);
  EXPECT(totals[3] > 1000);
  return rkv_test_finish();
}
