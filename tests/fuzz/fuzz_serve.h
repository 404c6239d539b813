/* The driver of fuzz_sched and fuzz_exec: the input picks a tiny configuration (block size,
 * layers, kv heads, pool and host pool sizes, admission and preemption modes, the default
 * eviction policy and budget, plan slots, with fuzz_exec a CPU pool, a pool on the emulated
 * device (<rkv/buffer_emu.h>: the executor's device path, Q/K/V uploaded to DEVICE rows, no
 * copy hazard allowed) or the bookkeeping executor; prefix caching under the protect or the
 * copy rule, requests then starting with one of three system prompts, with or without
 * cache-aware admission) and then scheduler calls in
 * any order: add_request (per-request policies), abort, fork, set_free_blocks_limit, step and
 * report as separate calls (so requests are added, aborted and forked while a plan is outstanding),
 * steps and reports out of turn, and with overlap scheduling a second step while a plan is in
 * flight (the new plan starts when the old one is reported). The engine's outputs come from the
 * input too (EOS; with fuzz_sched whether a flagged compression runs, cut on the host with
 * rkv_blockmgr_compact_uniform; with fuzz_exec the Q/K/V rows the executor writes and attends
 * over); a plan's outputs and compressions are made when it is reported. rkv_sched_check runs after
 * every call, rkv_exec_check after every executed step; a corruption, an unexpected status or a
 * failed executor call aborts. */
#ifndef RKV_FUZZ_SERVE_H
#define RKV_FUZZ_SERVE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "fuzz_cursor.h"

enum { FZ_HEAD_DIM = 4, FZ_MAX_TOKENS = 32, FZ_MAX_SEQS = 8, FZ_MAX_OPS = 400 };

static void fz_die(const char *what, rkv_status st, const char *why) {
  fprintf(stderr, "fuzz: %s: %s: %s\n", what, rkv_status_name(st), why);
  abort();
}

typedef struct fz_world {
  rkv_blockmgr *bm;
  rkv_sched *s;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_exec *x;                     /* fuzz_exec only */
  rkv_buffer *dq, *dk, *dv, *dout; /* DEVICE rows on the emulated device */
  rkv_evict_params ev[5];
  uint32_t layers, kv_heads, q_heads;
  bool overlap;
  bool prefix; /* prefix caching: add_request reads one more byte, the request's prefix */
  const rkv_sched_plan *plans[2]; /* outstanding, oldest first (two with overlap) */
  uint32_t n_plans;
  const rkv_sched_plan *plan; /* the oldest outstanding (plans[0]) or NULL */
  rkv_sched_output outs[FZ_MAX_SEQS];
  float q[FZ_MAX_TOKENS * 4 * FZ_HEAD_DIM], out[FZ_MAX_TOKENS * 4 * FZ_HEAD_DIM];
  float k[FZ_MAX_TOKENS * 2 * FZ_HEAD_DIM], v[FZ_MAX_TOKENS * 2 * FZ_HEAD_DIM];
} fz_world;

static rkv_evict_params fz_policy(rkv_evict_policy pol, int32_t budget) {
  rkv_evict_params e = RKV_EVICT_PARAMS_INIT;
  e.policy = pol;
  e.budget = budget;
  e.window = 2;
  e.buffer = 2 + budget / 2;
  e.kernel = 3;
  e.sinks = 1;
  return e;
}

/* Statuses a call may return on fuzzed input; anything else is a bug. */
static void fz_expect(const char *what, rkv_status st, const rkv_sched *s, bool ok_only) {
  if (st == RKV_OK) return;
  if (!ok_only && (st == RKV_ERR_INVALID_ARG || st == RKV_ERR_NOT_FOUND || st == RKV_ERR_EXISTS ||
                   st == RKV_ERR_CAPACITY || st == RKV_ERR_STATE || st == RKV_ERR_NO_BLOCKS))
    return;
  fz_die(what, st, rkv_sched_last_error(s));
}

/* Compressions cut streams only inside fz_report, right before the report reads them, so
 * the walk holds after every call, plans in flight included. */
static void fz_check(fz_world *w) {
  const rkv_status st = rkv_sched_check(w->s);
  if (st != RKV_OK) fz_die("rkv_sched_check", st, rkv_sched_last_error(w->s));
}

static float fz_val(uint32_t seed, uint32_t i) {
  uint32_t z = seed * 0x9E3779B9u ^ (i + 0x7F4A7C15u);
  z = (z ^ (z >> 15)) * 0x2C1B3C6Du;
  z = (z ^ (z >> 12)) * 0x297A2D39u;
  return (float)((z ^ (z >> 15)) & 0xFFFF) / 32768.0f - 1.0f;
}

/* Starts the oldest outstanding plan on the executor: begin and every layer (the engine's
 * forward pass; with overlap the next plan may be made after this). */
static void fz_launch(fz_world *w, fz_cursor *c) {
  const rkv_sched_plan *p = w->plan;
  memset(w->outs, 0, sizeof w->outs);
  if (!w->x) return;
  rkv_status st = rkv_exec_begin(w->x, p);
  if (st != RKV_OK) fz_die("rkv_exec_begin", st, rkv_exec_last_error(w->x));
  const uint32_t seed = fz_byte(c);
  const size_t nq = (size_t)p->n_batched_tokens * w->q_heads * FZ_HEAD_DIM;
  const size_t nk = (size_t)p->n_batched_tokens * w->kv_heads * FZ_HEAD_DIM;
  for (uint32_t l = 0; w->pool && p->n_seqs && l < w->layers; l++) {
    /* the last layer's uploads read q, k and v until a sync (the async rule) */
    if (w->dq && (st = rkv_backend_sync(w->be)) != RKV_OK)
      fz_die("rkv_backend_sync", st, rkv_backend_last_error(w->be));
    for (size_t i = 0; i < nq; i++) w->q[i] = fz_val(seed + l, (uint32_t)i);
    for (size_t i = 0; i < nk; i++) {
      w->k[i] = fz_val(seed + 100 + l, (uint32_t)i);
      w->v[i] = fz_val(seed + 200 + l, (uint32_t)i);
    }
    if (w->dq) {
      st = rkv_buffer_upload(w->dq, 0, w->q, nq * sizeof(float));
      if (st == RKV_OK) st = rkv_buffer_upload(w->dk, 0, w->k, nk * sizeof(float));
      if (st == RKV_OK) st = rkv_buffer_upload(w->dv, 0, w->v, nk * sizeof(float));
      if (st != RKV_OK) fz_die("rkv_buffer_upload", st, rkv_backend_last_error(w->be));
      st = rkv_exec_layer(w->x, l, rkv_buffer_ptr(w->dq), rkv_buffer_ptr(w->dk),
                          rkv_buffer_ptr(w->dv), rkv_buffer_ptr(w->dout));
    } else {
      st = rkv_exec_layer(w->x, l, w->q, w->k, w->v, w->out);
    }
    if (st != RKV_OK) fz_die("rkv_exec_layer", st, rkv_exec_last_error(w->x));
  }
  st = rkv_exec_check(w->x);
  if (st != RKV_OK) fz_die("rkv_exec_check after begin", st, rkv_exec_last_error(w->x));
}

/* Ends the oldest plan on the executor: EOS from the input, then finish (its compressions). */
static void fz_finish(fz_world *w, fz_cursor *c) {
  const rkv_sched_plan *p = w->plan;
  rkv_status st;
  const uint8_t eos = fz_byte(c);
  for (uint32_t i = 0; i < p->n_seqs; i++)
    w->outs[i].eos = p->seqs[i].samples && (eos >> (i % 8)) & 1;
  st = rkv_exec_finish(w->x, w->outs, p->n_seqs);
  if (st != RKV_OK) fz_die("rkv_exec_finish", st, rkv_exec_last_error(w->x));
  /* the mirror is current unless a plan made since has appended (overlap) */
  st = w->n_plans == 1 ? rkv_exec_check(w->x) : RKV_OK;
  if (st != RKV_OK) fz_die("rkv_exec_check", st, rkv_exec_last_error(w->x));
}

/* Without an executor: the engine's outputs straight from the input. A flagged compression
 * runs (a host cut to the budget) when its bit says so; skipping it is allowed. */
static void fz_outputs(fz_world *w, fz_cursor *c) {
  const rkv_sched_plan *p = w->plan;
  const uint8_t eos = fz_byte(c), run = fz_byte(c);
  rkv_compact_map maps[16];
  int32_t old[1024];
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    rkv_sched_output *o = &w->outs[i];
    memset(o, 0, sizeof *o);
    o->id = p->seqs[i].id;
    o->eos = p->seqs[i].samples && (eos >> (i % 8)) & 1;
    if (!p->seqs[i].compress || o->eos || !((run >> (i % 8)) & 1)) continue;
    const rkv_evict_params *ev = p->seqs[i].evict;
    if (ev->policy == RKV_EVICT_FULL) continue;
    uint32_t nm = 0, no = 0;
    const uint32_t free0 = rkv_blockmgr_free_blocks(w->bm);
    /* the engine's cut keeps the protected prefix (prefix caching's protect rule) */
    const int32_t keep = rkv_blockmgr_seq_protected(w->bm, o->id) + ev->budget;
    const rkv_status st =
        rkv_blockmgr_compact_uniform(w->bm, o->id, -1, keep, maps, 16, &nm, old, 1024, &no);
    if (st != RKV_OK) fz_die("compact_uniform", st, rkv_blockmgr_last_error(w->bm));
    o->compressed = true;
    o->blocks_freed = rkv_blockmgr_free_blocks(w->bm) - free0;
  }
}

/* A step: with nothing outstanding the new plan starts at once; with overlap one plan may be
 * in flight, and the new one starts when that one is reported. */
static void fz_step(fz_world *w, fz_cursor *c) {
  const rkv_sched_plan *p = NULL;
  const rkv_status st = rkv_sched_step(w->s, &p);
  if (w->n_plans >= (w->overlap ? 2u : 1u)) {
    if (st != RKV_ERR_STATE) fz_die("step with a plan outstanding", st, rkv_sched_last_error(w->s));
    return;
  }
  fz_expect("rkv_sched_step", st, w->s, true);
  w->plans[w->n_plans++] = p;
  w->plan = w->plans[0];
  if (rkv_sched_check(w->s) != RKV_OK)
    fz_die("check after step", RKV_ERR_CORRUPT, rkv_sched_last_error(w->s));
  if (w->n_plans == 1) fz_launch(w, c);
}

static void fz_report(fz_world *w, fz_cursor *c) {
  const uint32_t n = w->plan ? w->plan->n_seqs : 0;
  if (w->plan) {
    if (w->x)
      fz_finish(w, c);
    else
      fz_outputs(w, c);
  }
  const uint8_t b = fz_byte(c);
  if (w->plan && n && (b & 0xF) == 0xF) { /* a bad report: a duplicate id changes nothing */
    rkv_sched_output bad[FZ_MAX_SEQS];
    memcpy(bad, w->outs, sizeof bad);
    bad[n - 1].id = bad[0].id + (n == 1);
    fz_expect("bad report", rkv_sched_report(w->s, bad, n), w->s, false);
  }
  const rkv_status st = rkv_sched_report(w->s, w->outs, n);
  if (!w->plan) {
    if (st != RKV_ERR_STATE) fz_die("report without a plan", st, rkv_sched_last_error(w->s));
    return;
  }
  fz_expect("rkv_sched_report", st, w->s, true);
  w->plans[0] = w->plans[1];
  w->n_plans--;
  w->plan = w->n_plans ? w->plans[0] : NULL;
  if (w->plan) fz_launch(w, c); /* the plan made while the reported one ran */
}

/* The prefix of a request just added, from byte f: its first f % 4 blocks are those of system
 * prompt (f >> 2) % 3, hashed by rkv_prefix_hash_blocks, so later requests share the cached
 * groups. */
static void fz_prefix(fz_world *w, int64_t id, uint8_t f) {
  enum { MAXB = 3, MAXBS = 4 }; /* blocks of a system prompt; the largest block size */
  const uint32_t bs = rkv_blockmgr_get_config(w->bm)->block_size, n = f % 4;
  int32_t tok[MAXB * MAXBS];
  for (uint32_t j = 0; j < MAXB * bs; j++) tok[j] = (int32_t)((f >> 2) % 3 * 1000 + j);
  uint64_t h[MAXB];
  (void)rkv_prefix_hash_blocks(tok, MAXB * bs, bs, 0, h, MAXB);
  fz_expect("set_prefix", rkv_sched_set_prefix(w->s, id, n ? h : NULL, n), w->s, false);
}

static int fz_run(const uint8_t *data, size_t size, bool with_exec) {
  if (size < 4) return 0;
  fz_cursor c = {data, size, 0};
  const uint8_t b0 = fz_byte(&c), b1 = fz_byte(&c), b2 = fz_byte(&c), b3 = fz_byte(&c);
  fz_world w;
  memset(&w, 0, sizeof w);
  w.layers = 1u + ((b0 >> 2) & 1u);
  w.kv_heads = 1u + ((b0 >> 3) & 1u);
  w.q_heads = 2 * w.kv_heads;
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.block_size = 1u + (b0 & 3u);
  bc.num_layers = w.layers;
  bc.num_kv_heads = w.kv_heads;
  bc.head_dim = FZ_HEAD_DIM;
  bc.dtype = RKV_DTYPE_F32;
  bc.num_blocks = 4u + (b1 & 63u);
  bc.max_seqs = 16;
  bc.watermark = (b1 & 64) ? 0.05f : 0.0f;
  w.prefix = (b3 >> 6) & 1;
  bc.prefix_cache = w.prefix;
  if (rkv_blockmgr_create(&bc, &w.bm) != RKV_OK) abort();
  const int32_t budget = 3 + (b3 >> 3) % 8;
  for (int i = 0; i < 5; i++)
    w.ev[i] = fz_policy((rkv_evict_policy)(i == 0   ? RKV_EVICT_RKV
                                           : i == 1 ? RKV_EVICT_SNAPKV
                                           : i == 2 ? RKV_EVICT_STREAMING
                                           : i == 3 ? RKV_EVICT_H2O
                                                    : RKV_EVICT_FULL),
                        budget);
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_seqs = 1u + (b2 & 7u);
  sc.max_batched_tokens = 1u + ((b2 >> 3) & 31u);
  sc.max_prefill_chunk = (b3 & 4) ? 3 : 0;
  sc.admission = (b0 >> 4) & 1 ? RKV_SCHED_OPTIMISTIC : RKV_SCHED_RESERVE;
  sc.preempt = (b0 >> 5) & 1 ? RKV_SCHED_PREEMPT_SWAP : RKV_SCHED_PREEMPT_RECOMPUTE;
  sc.host_blocks = (b1 >> 7) ? 24 : 0;
  /* bit 6: plan slots, or overlap scheduling when max_seqs is even (they exclude each other) */
  w.overlap = ((b0 >> 6) & 1) && (b2 & 1);
  sc.plan_slots = ((b0 >> 6) & 1) && !w.overlap;
  sc.overlap = w.overlap;
  sc.evict = w.ev[b3 % 5];
  sc.prefix_cache = w.prefix;
  /* either prefix rule (copy: a compression copies the shared blocks it keeps) */
  sc.prefix_rule = (b2 & 4) ? RKV_SCHED_PREFIX_COPY : RKV_SCHED_PREFIX_PROTECT;
  /* cache-aware admission windows, small ones reaching the no-starvation rule (the low bits
   * of b3 also pick the policy, through b3 % 5, which every window still reaches) */
  static const uint8_t lookahead[4] = {0, 1, 2, 8};
  sc.cache_lookahead = lookahead[b3 & 3];
  if (rkv_sched_create(&sc, w.bm, &w.s, NULL, 0) != RKV_OK) abort();
  if (with_exec) {
    if ((b0 >> 7) & 1) {
      rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
      bec.kind = RKV_BACKEND_CPU;
      bec.num_threads = 1;
      rkv_kv_layout lay = rkv_blockmgr_kv_layout(w.bm);
      const bool emu = (b3 >> 7) & 1; /* the pool on the emulated device */
      if ((emu ? rkv_backend_create_emulated(&bec, &w.be) : rkv_backend_create(&bec, &w.be)) !=
              RKV_OK ||
          rkv_kv_pool_create(w.be, &lay, bc.num_blocks, &w.pool) != RKV_OK)
        abort();
      if (emu && (rkv_buffer_create(w.be, RKV_BUFFER_DEVICE, sizeof w.q, &w.dq) != RKV_OK ||
                  rkv_buffer_create(w.be, RKV_BUFFER_DEVICE, sizeof w.k, &w.dk) != RKV_OK ||
                  rkv_buffer_create(w.be, RKV_BUFFER_DEVICE, sizeof w.v, &w.dv) != RKV_OK ||
                  rkv_buffer_create(w.be, RKV_BUFFER_DEVICE, sizeof w.out, &w.dout) != RKV_OK))
        abort();
    }
    rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
    xc.num_q_heads = w.q_heads;
    xc.max_seqs = sc.max_seqs;
    xc.host_blocks = sc.host_blocks;
    xc.evict = w.ev[0]; /* keeps a query window of the policies' size */
    char err[256];
    const rkv_status st = rkv_exec_create(&xc, w.bm, w.pool, &w.x, err, sizeof err);
    if (st != RKV_OK) fz_die("rkv_exec_create", st, err);
  }
  for (int ops = 0; c.i < c.n && ops < FZ_MAX_OPS; ops++) {
    const uint8_t op = fz_byte(&c);
    switch (op % 9) {
      case 0:
      case 1: {
        const uint8_t a = fz_byte(&c), b = fz_byte(&c), e = fz_byte(&c);
        rkv_sched_request rq = {
            a % 32,          1 + b % 24, 1 + (b >> 5) * 4 + e % 4, (int32_t)(e >> 6) - 1,
            (double)(e % 5), NULL};
        if (e & 0x20) rq.evict = &w.ev[(e >> 2) % 5];
        const rkv_status st = rkv_sched_add_request(w.s, &rq);
        fz_expect("add_request", st, w.s, false);
        if (w.prefix) {
          const uint8_t f = fz_byte(&c);
          if (st == RKV_OK) fz_prefix(&w, rq.id, f);
        }
        break;
      }
      case 2:
        fz_expect("abort", rkv_sched_abort(w.s, fz_byte(&c) % 32), w.s, false);
        break;
      case 3: {
        const uint8_t a = fz_byte(&c), b = fz_byte(&c);
        fz_expect("fork", rkv_sched_fork(w.s, a % 32, b % 32, 1 + (b >> 5) * 3 + a % 8), w.s,
                  false);
        break;
      }
      case 4:
      case 5:
      case 6:
        fz_step(&w, &c);
        break;
      case 7:
        fz_report(&w, &c);
        break;
      case 8: {
        const uint8_t a = fz_byte(&c);
        rkv_sched_set_free_blocks_limit(w.s, a == 255 ? UINT32_MAX : a);
        break;
      }
    }
    fz_check(&w);
  }
  /* drain: report what is outstanding, then run until nothing is live or 64 steps pass */
  rkv_sched_set_free_blocks_limit(w.s, UINT32_MAX);
  for (int i = 0; i < 64; i++) {
    while (w.plan) fz_report(&w, &c);
    fz_check(&w);
    rkv_sched_metrics m;
    rkv_sched_get_metrics(w.s, &m);
    if (!m.num_running && !m.num_waiting && !m.num_swapped) break;
    fz_step(&w, &c);
  }
  while (w.plan) fz_report(&w, &c);
  fz_check(&w);
  if (w.dq && (rkv_backend_sync(w.be) != RKV_OK || rkv_emu_hazards(w.be) != 0)) {
    fprintf(stderr, "fuzz: emulated device: %s\n", rkv_emu_hazard_text(w.be));
    abort();
  }
  rkv_exec_destroy(w.x);
  rkv_sched_destroy(w.s);
  if (rkv_blockmgr_num_seqs(w.bm) != 0) abort(); /* the scheduler frees what it created */
  rkv_buffer *bufs[4] = {w.dq, w.dk, w.dv, w.dout};
  for (int i = 0; i < 4; i++) rkv_buffer_destroy(bufs[i]);
  rkv_kv_pool_destroy(w.pool);
  rkv_backend_destroy(w.be);
  rkv_blockmgr_destroy(w.bm);
  return 0;
}

#endif /* RKV_FUZZ_SERVE_H */
