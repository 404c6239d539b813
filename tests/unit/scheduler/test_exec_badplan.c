/* rkv_exec_begin on foreign or corrupt plans (issue 17, "Failures change nothing"): a serving
 * workload (chunked prefill, optimistic admission with swap preemption, forks with
 * copy-on-write, an abort, every policy, plan slots, a CPU pool) runs once as the reference.
 * Then, for each kind of corruption, the same workload runs again and, at every step whose plan
 * has what the corruption needs (up to PER_KIND times), a copy of the plan is corrupted and
 * handed to rkv_exec_begin first. Each must be refused with RKV_ERR_INVALID_ARG, leave
 * rkv_exec_check passing and the pool's bytes as they were, and the real plan's begin must then
 * succeed: every step's plan, attention output, finish output and pool bytes must equal the
 * reference run's, which never saw a bad plan. Both on a CPU pool and on a pool of the emulated
 * device (<rkv/buffer_emu.h>: the executor's device path, Q/K/V in DEVICE rows).
 *   test_exec_badplan [KIND]   (no argument: every kind) */
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

enum { LAYERS = 2, KV_HEADS = 2, Q_HEADS = 4, HEAD_DIM = 8, BLOCK = 4, MAX_SEQS = 6 };
enum { NUM_BLOCKS = 56, HOST_BLOCKS = 40, MAX_TOKENS = 12, REQUESTS = 14, MAX_STEPS = 400 };
enum { PER_KIND = 12, CAP = 64, RKV_TEST_WALK = 320 };
static const int64_t FOREIGN = 1000000; /* an id nobody uses */
/* Varies which sequence a corruption hits from one bad plan to the next. */
static uint32_t SALT;
/* The pool is on the emulated device. */
static bool EMU;

/* ---- a plan copy with room to add one id to each list -------------------------------------- */

typedef struct plan_copy {
  rkv_sched_plan p;
  rkv_sched_seq seqs[MAX_SEQS + 1];
  uint8_t rows_changed[MAX_SEQS + 1];
  rkv_block_copy copies[CAP];
  rkv_sched_swap swap_out[CAP], swap_in[CAP];
  int64_t swapped_out[CAP], swapped_in[CAP], started[CAP], dropped[CAP];
  rkv_sched_fork_op forks[CAP];
} plan_copy;

#define COPY_LIST(c, p, field, n)                                            \
  do {                                                                       \
    if ((p)->n > CAP) return false;                                          \
    if ((p)->n) memcpy((c)->field, (p)->field, (p)->n * sizeof *(p)->field); \
    (c)->p.field = (c)->field;                                               \
  } while (0)

static bool copy_plan(plan_copy *c, const rkv_sched_plan *p) {
  memset(c, 0, sizeof *c);
  c->p = *p;
  COPY_LIST(c, p, seqs, n_seqs);
  if (p->rows_changed) {
    memcpy(c->rows_changed, p->rows_changed, p->n_seqs);
    c->p.rows_changed = c->rows_changed;
  }
  COPY_LIST(c, p, copies, n_copies);
  COPY_LIST(c, p, swap_out, n_swap_out);
  COPY_LIST(c, p, swap_in, n_swap_in);
  COPY_LIST(c, p, swapped_out, n_swapped_out);
  COPY_LIST(c, p, swapped_in, n_swapped_in);
  COPY_LIST(c, p, started, n_started);
  COPY_LIST(c, p, dropped, n_dropped);
  COPY_LIST(c, p, forks, n_forks);
  return true;
}

/* ---- the engine ------------------------------------------------------------------------------ */

typedef struct engine {
  rkv_blockmgr *bm;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_sched *s;
  rkv_exec *x;
  rkv_buffer *dq, *dk, *dv, *dout; /* DEVICE rows on the emulated device */
  rkv_evict_params ev[5];
  int64_t next_id;
  /* the previous step: who ran, and who was compressed (their mirror entries re-sync) */
  int64_t prev_ids[MAX_SEQS];
  bool prev_compressed[MAX_SEQS];
  uint32_t prev_n;
  float q[MAX_TOKENS * Q_HEADS * HEAD_DIM], out[MAX_TOKENS * Q_HEADS * HEAD_DIM];
  float k[MAX_TOKENS * KV_HEADS * HEAD_DIM], v[MAX_TOKENS * KV_HEADS * HEAD_DIM];
  rkv_sched_output outs[MAX_SEQS];
  unsigned char pool_bytes[NUM_BLOCKS * 2 * BLOCK * HEAD_DIM * 4];
} engine;

static uint64_t mix(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t mix_bytes(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t w = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    memcpy(&w, b + i, 8);
    h = mix(h, w);
  }
  w = 0;
  memcpy(&w, b + i, n - i);
  return mix(h, w);
}

static float hashf(uint64_t a, uint64_t b) {
  return (float)((double)(mix(a, b) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint64_t pool_digest(engine *e) {
  for (int32_t b = 0; b < NUM_BLOCKS; b++)
    (void)rkv_kv_pool_read_blocks(e->pool, &b, 1,
                                  e->pool_bytes + (size_t)b * (sizeof e->pool_bytes / NUM_BLOCKS));
  return mix_bytes(7, e->pool_bytes, sizeof e->pool_bytes);
}

static bool engine_make(engine *e) {
  memset(e, 0, sizeof *e);
  const rkv_evict_policy pols[5] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                    RKV_EVICT_H2O, RKV_EVICT_FULL};
  for (int i = 0; i < 5; i++) {
    rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
    ev.policy = pols[i];
    ev.budget = 8;
    ev.window = 2;
    ev.buffer = 4;
    ev.kernel = 3;
    ev.sinks = 2;
    e->ev[i] = ev;
  }
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = NUM_BLOCKS;
  bc.block_size = BLOCK;
  bc.num_layers = LAYERS;
  bc.num_kv_heads = KV_HEADS;
  bc.head_dim = HEAD_DIM;
  bc.dtype = RKV_DTYPE_F32;
  bc.max_seqs = 16;
  bc.watermark = 0.02f;
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  bec.num_threads = 1;
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_batched_tokens = MAX_TOKENS;
  c.max_seqs = MAX_SEQS;
  c.max_prefill_chunk = 5;
  c.admission = RKV_SCHED_OPTIMISTIC;
  c.preempt = RKV_SCHED_PREEMPT_SWAP;
  c.host_blocks = HOST_BLOCKS;
  c.evict = e->ev[0];
  c.plan_slots = true;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = Q_HEADS;
  xc.max_seqs = MAX_SEQS;
  xc.host_blocks = HOST_BLOCKS;
  xc.evict = e->ev[0];
  if (rkv_blockmgr_create(&bc, &e->bm) != RKV_OK) return false;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(e->bm);
  if (sizeof e->pool_bytes != NUM_BLOCKS * rkv_kv_block_bytes(&lay)) return false;
  char err[256] = "";
  const size_t qb = sizeof e->q, kb = sizeof e->k;
  if (EMU && (rkv_backend_create_emulated(&bec, &e->be) != RKV_OK ||
              rkv_buffer_create(e->be, RKV_BUFFER_DEVICE, qb, &e->dq) != RKV_OK ||
              rkv_buffer_create(e->be, RKV_BUFFER_DEVICE, kb, &e->dk) != RKV_OK ||
              rkv_buffer_create(e->be, RKV_BUFFER_DEVICE, kb, &e->dv) != RKV_OK ||
              rkv_buffer_create(e->be, RKV_BUFFER_DEVICE, qb, &e->dout) != RKV_OK))
    return false;
  return (EMU || rkv_backend_create(&bec, &e->be) == RKV_OK) &&
         rkv_kv_pool_create(e->be, &lay, NUM_BLOCKS, &e->pool) == RKV_OK &&
         rkv_sched_create(&c, e->bm, &e->s, err, sizeof err) == RKV_OK &&
         rkv_exec_create(&xc, e->bm, e->pool, &e->x, err, sizeof err) == RKV_OK;
}

static void engine_free(engine *e) {
  rkv_exec_destroy(e->x);
  rkv_buffer *b[] = {e->dq, e->dk, e->dv, e->dout};
  for (size_t i = 0; i < 4; i++) rkv_buffer_destroy(b[i]);
  rkv_sched_destroy(e->s);
  rkv_kv_pool_destroy(e->pool);
  rkv_backend_destroy(e->be);
  rkv_blockmgr_destroy(e->bm);
}

/* ---- helpers the corruptions use ------------------------------------------------------------ */

static bool in_list(const int64_t *a, uint32_t n, int64_t id) {
  for (uint32_t i = 0; i < n; i++)
    if (a[i] == id) return true;
  return false;
}

static bool is_child(const rkv_sched_plan *p, int64_t id) {
  for (uint32_t i = 0; i < p->n_forks; i++)
    if (p->forks[i].child == id || p->forks[i].parent == id) return true;
  return false;
}

/* seqs[i] ran in the previous step and this plan neither starts, restores nor forks it: the
 * executor's mirror entry is its own and knows its lengths (a compression in the previous step
 * re-syncs the rows, not the lengths); with `uncompressed` also its rows are current, so this
 * step only grows them. */
static bool known(const engine *e, const rkv_sched_plan *p, uint32_t i, bool uncompressed) {
  const int64_t id = p->seqs[i].id;
  if (in_list(p->started, p->n_started, id) || in_list(p->swapped_in, p->n_swapped_in, id) ||
      is_child(p, id))
    return false;
  for (uint32_t j = 0; j < e->prev_n; j++)
    if (e->prev_ids[j] == id) return !uncompressed || !e->prev_compressed[j];
  return false;
}

static bool current(const engine *e, const rkv_sched_plan *p, uint32_t i) {
  return known(e, p, i, true);
}

/* A scheduled sequence that holds a query window before this plan (ran before, not started). */
static int find_running(const engine *e, const rkv_sched_plan *p) {
  for (uint32_t j = 0; j < p->n_seqs; j++) {
    const uint32_t i = (j + SALT) % p->n_seqs;
    if (known(e, p, i, false)) return (int)i;
  }
  return -1;
}

/* ---- the corruptions ------------------------------------------------------------------------ */

typedef bool (*corrupt_fn)(plan_copy *c, const engine *e);

static bool k_seq_unknown(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_seqs) return false;
  c->seqs[SALT % c->p.n_seqs].id = FOREIGN;
  return true;
}

static bool k_seq_duplicate(plan_copy *c, const engine *e) {
  (void)e;
  rkv_sched_plan *p = &c->p;
  uint32_t i = 0, j = 1; /* two decodes, or two prefill chunks */
  if (p->n_decode < 2) {
    if (p->n_seqs - p->n_decode < 2) return false;
    i = p->n_decode;
    j = i + 1;
  }
  p->n_batched_tokens = p->n_batched_tokens - c->seqs[j].n_tokens + c->seqs[i].n_tokens;
  c->seqs[j] = c->seqs[i];
  c->rows_changed[j] = c->rows_changed[i];
  return true;
}

static bool k_kv_len_plus(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_seqs) return false;
  c->seqs[SALT % c->p.n_seqs].kv_len++;
  return true;
}

static bool k_kv_len_minus(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_seqs) return false;
  c->seqs[SALT % c->p.n_seqs].kv_len--;
  return true;
}

/* A prefill chunk one token longer (the sum kept consistent): its cache would have held one
 * token fewer before the step. Detectable where the executor knows that length: a sequence
 * that starts now, or one that ran in the previous step. */
static bool k_n_tokens_plus(plan_copy *c, const engine *e) {
  rkv_sched_plan *p = &c->p;
  const uint32_t np = p->n_seqs - p->n_decode;
  for (uint32_t j = 0; j < np; j++) {
    const uint32_t i = p->n_decode + (j + SALT) % np;
    if (!in_list(p->started, p->n_started, c->seqs[i].id) && !known(e, p, i, false)) continue;
    c->seqs[i].n_tokens++;
    p->n_batched_tokens++;
    return true;
  }
  return false;
}

static bool k_n_batched_plus(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_seqs) return false;
  c->p.n_batched_tokens++;
  return true;
}

static bool k_n_decode_over(plan_copy *c, const engine *e) {
  (void)e;
  c->p.n_decode = c->p.n_seqs + 1;
  return true;
}

static bool k_n_decode_minus(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_decode) return false;
  c->p.n_decode--;
  return true;
}

static bool k_kind_flip(plan_copy *c, const engine *e) {
  (void)e;
  if (c->p.n_seqs == c->p.n_decode) return false;
  c->seqs[c->p.n_decode].kind = RKV_SCHED_DECODE;
  return true;
}

static bool k_copy_range(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_copies) return false;
  c->copies[0].dst = NUM_BLOCKS;
  return true;
}

static bool k_swap_out_device(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_swap_out) return false;
  c->swap_out[c->p.n_swap_out - 1].device = NUM_BLOCKS + 3;
  return true;
}

static bool k_swap_out_host_twice(plan_copy *c, const engine *e) {
  (void)e;
  if (c->p.n_swap_out < 2) return false;
  c->swap_out[c->p.n_swap_out - 1].host = c->swap_out[0].host;
  return true;
}

static bool k_swap_in_host(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_swap_in) return false;
  c->swap_in[0].host = HOST_BLOCKS;
  return true;
}

static bool k_fork_parent(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_forks) return false;
  c->forks[0].parent = FOREIGN;
  return true;
}

static bool k_fork_child(plan_copy *c, const engine *e) {
  rkv_sched_plan *p = &c->p;
  if (!p->n_forks) return false;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    if (known(e, p, i, false) && c->seqs[i].id != c->forks[0].parent) {
      c->forks[0].child = c->seqs[i].id;
      return true;
    }
  return false;
}

static bool k_started_live(plan_copy *c, const engine *e) {
  const int i = find_running(e, &c->p);
  if (i < 0) return false;
  c->started[c->p.n_started++] = c->seqs[i].id;
  c->p.started = c->started;
  return true;
}

static bool k_started_foreign(plan_copy *c, const engine *e) {
  (void)e;
  c->started[c->p.n_started++] = FOREIGN;
  c->p.started = c->started;
  return true;
}

static bool k_dropped_live(plan_copy *c, const engine *e) {
  const int i = find_running(e, &c->p);
  if (i < 0) return false;
  c->dropped[c->p.n_dropped++] = c->seqs[i].id;
  c->p.dropped = c->dropped;
  return true;
}

static bool k_swapped_in_foreign(plan_copy *c, const engine *e) {
  (void)e;
  c->swapped_in[c->p.n_swapped_in++] = FOREIGN;
  c->p.swapped_in = c->swapped_in;
  return true;
}

/* A boundary step announced as "rows unchanged": the mirror would miss the new block. */
static bool k_rows_changed_boundary(plan_copy *c, const engine *e) {
  rkv_sched_plan *p = &c->p;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &c->seqs[i];
    const int32_t before = q->kv_len - (int32_t)q->n_tokens;
    if (!c->rows_changed[i] || !current(e, p, i)) continue;
    if ((q->kv_len + BLOCK - 1) / BLOCK == (before + BLOCK - 1) / BLOCK) continue;
    c->rows_changed[i] = 0;
    return true;
  }
  return false;
}

static bool k_slot_stride(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.slots || !c->p.n_batched_tokens) return false;
  c->p.slot_layer_stride = (uint64_t)c->p.n_batched_tokens * KV_HEADS - 1;
  return true;
}

static bool k_bad_policy(plan_copy *c, const engine *e) {
  (void)e;
  static rkv_evict_params bogus;
  if (!c->p.n_seqs) return false;
  const uint32_t i = SALT % c->p.n_seqs;
  bogus = *c->seqs[i].evict;
  bogus.policy = (rkv_evict_policy)42;
  c->seqs[i].evict = &bogus;
  return true;
}

static bool k_null_array(plan_copy *c, const engine *e) {
  (void)e;
  if (!c->p.n_seqs) return false;
  c->p.seqs = NULL;
  return true;
}

typedef struct kind {
  const char *name;
  corrupt_fn fn;
} kind;

static const kind KINDS[] = {
    {"seq_unknown_id", k_seq_unknown},
    {"seq_duplicate_id", k_seq_duplicate},
    {"kv_len_plus_one", k_kv_len_plus},
    {"kv_len_minus_one", k_kv_len_minus},
    {"n_tokens_plus_one", k_n_tokens_plus},
    {"n_batched_tokens_plus_one", k_n_batched_plus},
    {"n_decode_over_n_seqs", k_n_decode_over},
    {"n_decode_minus_one", k_n_decode_minus},
    {"prefill_kind_decode", k_kind_flip},
    {"copy_dst_out_of_range", k_copy_range},
    {"swap_out_device_out_of_range", k_swap_out_device},
    {"swap_out_host_twice", k_swap_out_host_twice},
    {"swap_in_host_out_of_range", k_swap_in_host},
    {"fork_parent_without_window", k_fork_parent},
    {"fork_child_with_window", k_fork_child},
    {"started_live_window", k_started_live},
    {"started_unscheduled", k_started_foreign},
    {"dropped_live_sequence", k_dropped_live},
    {"swapped_in_unscheduled", k_swapped_in_foreign},
    {"rows_changed_cleared_at_boundary", k_rows_changed_boundary},
    {"slot_layer_stride_short", k_slot_stride},
    {"evict_policy_invalid", k_bad_policy},
    {"seqs_null", k_null_array},
};
enum { NKINDS = sizeof KINDS / sizeof KINDS[0] };

/* ---- one run --------------------------------------------------------------------------------- */

typedef struct record {
  uint64_t step[MAX_STEPS];
  uint32_t n;
} record;

static record REF;

typedef struct result {
  uint32_t applied;
  bool refused_all; /* every bad plan: INVALID_ARG, check passes, pool unchanged */
  bool same;        /* the run equals the reference */
  char msgs[6][320];
  uint32_t n_msgs;
  char why[800];
} result;

static void fill_qkv(engine *e, const rkv_sched_plan *p, uint32_t l) {
  uint32_t row = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    for (uint32_t t = 0; t < p->seqs[i].n_tokens; t++, row++) {
      const uint64_t tok = (uint64_t)p->seqs[i].id << 32 | (uint64_t)(p->seqs[i].pos + t);
      for (uint32_t j = 0; j < Q_HEADS * HEAD_DIM; j++)
        e->q[row * Q_HEADS * HEAD_DIM + j] = hashf(tok, l * 4096u + j);
      for (uint32_t j = 0; j < KV_HEADS * HEAD_DIM; j++) {
        e->k[row * KV_HEADS * HEAD_DIM + j] = hashf(tok, 100000u + l * 4096u + j);
        e->v[row * KV_HEADS * HEAD_DIM + j] = hashf(tok, 200000u + l * 4096u + j);
      }
    }
}

/* One layer: host rows on a CPU pool; on the emulated device up into DEVICE rows, and the
 * output back down (read after the sync). */
static rkv_status layer(engine *e, const rkv_sched_plan *p, uint32_t l) {
  if (!EMU) return rkv_exec_layer(e->x, l, e->q, e->k, e->v, e->out);
  const size_t qb = (size_t)p->n_batched_tokens * Q_HEADS * HEAD_DIM * 4;
  const size_t kb = (size_t)p->n_batched_tokens * KV_HEADS * HEAD_DIM * 4;
  if (rkv_buffer_upload(e->dq, 0, e->q, qb) != RKV_OK ||
      rkv_buffer_upload(e->dk, 0, e->k, kb) != RKV_OK ||
      rkv_buffer_upload(e->dv, 0, e->v, kb) != RKV_OK)
    return RKV_ERR_INTERNAL;
  rkv_status st = rkv_exec_layer(e->x, l, rkv_buffer_ptr(e->dq), rkv_buffer_ptr(e->dk),
                                 rkv_buffer_ptr(e->dv), rkv_buffer_ptr(e->dout));
  if (st == RKV_OK) st = rkv_buffer_download(e->dout, 0, e->out, qb);
  const rkv_status y = rkv_backend_sync(e->be);
  return st != RKV_OK ? st : y;
}

/* The first running request (not the i-th skipped), or -1. */
static int64_t pick_running(engine *e, uint32_t skip) {
  for (int64_t id = 0; id < e->next_id; id++) {
    rkv_sched_request_info info;
    if (rkv_sched_get_request(e->s, id, &info) == RKV_OK && info.state == RKV_SCHED_RUNNING &&
        !skip--)
      return id;
  }
  return -1;
}

/* Two refusals by the same check: equal once every number is blanked out. */
static bool same_check(const char *a, const char *b) {
  for (;;) {
    const bool da = *a >= '0' && *a <= '9', db = *b >= '0' && *b <= '9';
    if (da && db) {
      while (*a >= '0' && *a <= '9') a++;
      while (*b >= '0' && *b <= '9') b++;
      continue;
    }
    if (*a != *b) return false;
    if (!*a) return true;
    a++, b++;
  }
}

/* Hands the corrupted copy to begin; false when the run cannot go on. */
static bool try_bad(engine *e, const plan_copy *c, result *r) {
  const uint64_t before = pool_digest(e);
  /* between a step and its begin the mirror lags the appends by design, so the walker may
   * report that lag: it must report exactly the same before and after the refusal (and pass
   * after the real plan's finish, below) */
  char walk[RKV_TEST_WALK];
  const rkv_status walk_st = rkv_exec_check(e->x);
  snprintf(walk, sizeof walk, "%s", walk_st == RKV_OK ? "" : rkv_exec_last_error(e->x));
  const rkv_status st = rkv_exec_begin(e->x, &c->p);
  /* the distinct refusals (up to the first digit: which check refused) */
  const char *msg = st == RKV_ERR_INVALID_ARG ? rkv_exec_last_error(e->x) : rkv_status_name(st);
  bool seen = false;
  for (uint32_t i = 0; i < r->n_msgs; i++) seen |= same_check(r->msgs[i], msg);
  if (!seen && r->n_msgs < 6) snprintf(r->msgs[r->n_msgs++], sizeof r->msgs[0], "%s", msg);
  if (st == RKV_OK) {
    snprintf(r->why, sizeof r->why, "begin accepted the bad plan");
    r->refused_all = false;
    return false;
  }
  if (st != RKV_ERR_INVALID_ARG) {
    snprintf(r->why, sizeof r->why, "begin returned %s: %s", rkv_status_name(st),
             rkv_exec_last_error(e->x));
    r->refused_all = false;
  }
  const rkv_status walk_after = rkv_exec_check(e->x);
  if (walk_after != walk_st ||
      strcmp(walk, walk_after == RKV_OK ? "" : rkv_exec_last_error(e->x)) != 0) {
    snprintf(r->why, sizeof r->why, "rkv_exec_check changed with the refusal: \"%s\" -> \"%s\"",
             walk, walk_after == RKV_OK ? "" : rkv_exec_last_error(e->x));
    r->refused_all = false;
  }
  if (pool_digest(e) != before) {
    snprintf(r->why, sizeof r->why, "the refused begin changed the pool's bytes");
    r->refused_all = false;
  }
  return true;
}

/* The workload; with k >= 0 every applicable step first sees a bad plan of kind k. */
static void run(int k, record *rec, result *r) {
  engine *e = calloc(1, sizeof *e);
  memset(r, 0, sizeof *r);
  r->refused_all = true;
  r->same = true;
  if (!e || !engine_make(e)) {
    snprintf(r->why, sizeof r->why, "setup failed");
    r->same = false;
    goto out;
  }
  uint64_t rng = 99;
  for (uint32_t step = 0; step < MAX_STEPS; step++) {
    for (uint32_t i = 0; i < REQUESTS; i++) {
      if (i * 2 != step && !(step == 40 && i >= REQUESTS - 2)) continue;
      rkv_sched_request rq = {0};
      rq.id = e->next_id++;
      rq.prompt_len = 3 + (int64_t)(rkv_test_rand(&rng) % 14);
      rq.max_new_tokens = 6 + (int64_t)(rkv_test_rand(&rng) % 20);
      rq.arrival = (double)step;
      rq.evict = &e->ev[i % 5];
      (void)rkv_sched_add_request(e->s, &rq);
    }
    if (step % 7 == 3) {
      const int64_t parent = pick_running(e, step % 2);
      rkv_sched_request_info info;
      if (parent >= 0 && rkv_sched_get_request(e->s, parent, &info) == RKV_OK) {
        (void)rkv_sched_fork(e->s, parent, e->next_id, info.generated + 5);
        e->next_id++;
      }
    }
    if (step == 21) {
      const int64_t victim = pick_running(e, 1);
      if (victim >= 0) (void)rkv_sched_abort(e->s, victim);
    }
    const rkv_sched_plan *p = NULL;
    if (rkv_sched_step(e->s, &p) != RKV_OK) {
      snprintf(r->why, sizeof r->why, "step %u: %s", step, rkv_sched_last_error(e->s));
      r->same = false;
      goto out;
    }
    uint64_t h = mix(step, rkv_sched_plan_hash(p));
    plan_copy *c = malloc(sizeof *c);
    SALT = (uint32_t)(mix(step, (uint64_t)k) >> 40);
    if (k >= 0 && r->applied < PER_KIND && (SALT & 1) && c && copy_plan(c, p) &&
        KINDS[k].fn(c, e)) {
      r->applied++;
      if (!try_bad(e, c, r)) {
        free(c);
        r->same = false;
        goto out;
      }
    }
    free(c);
    rkv_status st = rkv_exec_begin(e->x, p);
    for (uint32_t l = 0; st == RKV_OK && p->n_seqs && l < LAYERS; l++) {
      fill_qkv(e, p, l);
      memset(e->out, 0, sizeof e->out);
      st = layer(e, p, l);
      h = mix_bytes(h, e->out, (size_t)p->n_batched_tokens * Q_HEADS * HEAD_DIM * 4);
    }
    if (st == RKV_OK) {
      memset(e->outs, 0, sizeof e->outs);
      for (uint32_t i = 0; i < p->n_seqs; i++)
        e->outs[i].eos = p->seqs[i].samples &&
                         hashf((uint64_t)p->seqs[i].id, (uint64_t)p->seqs[i].pos + 7777u) > 0.9f;
      st = rkv_exec_finish(e->x, e->outs, p->n_seqs);
    }
    if (st == RKV_OK) st = rkv_exec_check(e->x);
    if (st != RKV_OK) {
      snprintf(r->why, sizeof r->why, "step %u with the real plan: %s: %s", step,
               rkv_status_name(st), rkv_exec_last_error(e->x));
      r->same = false;
      goto out;
    }
    e->prev_n = p->n_seqs;
    for (uint32_t i = 0; i < p->n_seqs; i++) {
      const rkv_sched_output *o = &e->outs[i];
      h = mix(h, (uint64_t)o->id);
      h = mix(h, (uint64_t)o->eos | (uint64_t)o->compressed << 1 | (uint64_t)o->blocks_freed << 8);
      h = mix(h, o->tokens_evicted);
      e->prev_ids[i] = o->id;
      e->prev_compressed[i] = o->compressed;
    }
    h = mix(h, pool_digest(e));
    if (rkv_sched_report(e->s, e->outs, p->n_seqs) != RKV_OK || rkv_sched_check(e->s) != RKV_OK) {
      snprintf(r->why, sizeof r->why, "step %u: report: %s", step, rkv_sched_last_error(e->s));
      r->same = false;
      goto out;
    }
    if (k < 0) {
      rec->step[rec->n++] = h;
    } else if (step >= rec->n || rec->step[step] != h) {
      snprintf(r->why, sizeof r->why, "step %u differs from the run without bad plans", step);
      r->same = false;
      goto out;
    }
    rkv_sched_metrics m;
    rkv_sched_get_metrics(e->s, &m);
    if (step > 40 && !p->n_seqs && !m.num_running && !m.num_waiting && !m.num_swapped) break;
  }
  if (k >= 0 && r->same) {
    /* the reference ran to the same end */
    rkv_sched_metrics m;
    rkv_sched_get_metrics(e->s, &m);
    if (m.steps != rec->n) {
      snprintf(r->why, sizeof r->why, "%llu steps, the reference made %u",
               (unsigned long long)m.steps, rec->n);
      r->same = false;
    }
  }
out:
  if (e && e->be && rkv_emu_hazards(e->be) && r->same) {
    snprintf(r->why, sizeof r->why, "emulated device hazard: %s", rkv_emu_hazard_text(e->be));
    r->same = false;
  }
  if (e) engine_free(e);
  free(e);
}

int main(int argc, char **argv) {
  int failed = 0;
  for (int emu = 0; emu < 2; emu++) {
    EMU = emu;
    result r;
    memset(&REF, 0, sizeof REF);
    run(-1, &REF, &r);
    EXPECT(r.same);
    if (!r.same) {
      fprintf(stderr, "reference run%s: %s\n", EMU ? " (emulated device)" : "", r.why);
      continue;
    }
    printf("%s pool: reference of %u steps\n", EMU ? "emulated device" : "CPU", REF.n);
    for (int k = 0; k < NKINDS; k++) {
      if (argc > 1 && strcmp(argv[1], KINDS[k].name) != 0) continue;
      run(k, &REF, &r);
      const bool ok = r.applied > 0 && r.refused_all && r.same;
      printf("%-34s %s: %u bad plans%s%s\n", KINDS[k].name, ok ? "ok  " : "FAIL", r.applied,
             r.why[0] ? "; " : "", r.why);
      for (uint32_t i = 0; i < r.n_msgs; i++) printf("    %s\n", r.msgs[i]);
      EXPECT(r.applied > 0);
      EXPECT(r.refused_all);
      EXPECT(r.same);
      failed += !ok;
    }
  }
  printf("bad plans: %d of %d kinds x 2 pools failed\n", failed, NKINDS);
  return rkv_test_finish();
}
