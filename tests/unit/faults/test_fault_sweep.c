/* Allocation-failure sweep (the SQLite habit): a realistic serving workload — admission,
 * chunked prefill, swap and recompute preemption, forks, aborts, every eviction policy, the
 * executor with a CPU pool and in bookkeeping mode — is run once fault-free, recording after
 * every public call its status and a digest of everything observable (block manager stats and
 * tables, scheduler metrics and per-request progress, the pool's bytes, every plan, attention
 * output and finish output handed out so far). Then, for every k, the run is repeated with
 * the k-th allocation failing (one-shot), and again with every allocation from the k-th on
 * failing until the call returns (persistent). A call that fails must return
 * RKV_ERR_NO_MEMORY with the digest equal to the fault-free one before the call and every
 * check walker passing; it is retried, and from then on every call must return what it
 * returned fault-free with the same digest (the run converges). The allocator also checks
 * that every block is freed once, with the size it was allocated with, and that nothing
 * leaks. Capacity (rkv_exec_memory_bytes, grown arrays) is not state: growth may stay.
 * Prints how many failures it injected; any violation fails the test. */
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

enum { LAYERS = 2, KV_HEADS = 2, Q_HEADS = 4, HEAD_DIM = 8, BLOCK = 4, MAX_SEQS = 6 };
enum { MAX_TOKENS = 12, MAX_IDS = 64, MAX_OPS = 8192 };

/* ---- the failing allocator ---------------------------------------------------------------- */

typedef struct fault {
  uint64_t count;   /* allocations counted in this run */
  uint64_t fail_at; /* 1-based allocation that fails; 0 = none */
  bool persistent;  /* every allocation after fail_at fails too, until the call returns */
  bool paused;      /* digests and walkers allocate without counting */
  uint32_t injected_in_call;
  uint64_t injected; /* in this run */
  int64_t live;      /* blocks allocated and not freed */
  uint64_t bad_frees;
} fault;

#define HDR 256 /* >= every alignment librkv asks for (RKV_BUFFER_ALIGN); holds the size */

static void *f_take(fault *f, size_t size, size_t align, bool counted) {
  if (counted && !f->paused) {
    f->count++;
    if (f->fail_at && (f->count == f->fail_at || (f->persistent && f->count > f->fail_at))) {
      if (getenv("FAIL_ABORT") && f->count == (uint64_t)atoll(getenv("FAIL_ABORT"))) abort();
      f->injected_in_call++;
      f->injected++;
      return NULL;
    }
  }
  if (align > HDR) return NULL;
  void *p = NULL;
  if (posix_memalign(&p, HDR, size + HDR) != 0) return NULL;
  memcpy(p, &size, sizeof size);
  f->live++;
  return (char *)p + HDR;
}

static void *f_alloc(void *ctx, size_t size, size_t align) {
  return f_take(ctx, size, align, true);
}

/* The emulated device's allocator: its buffers' memory (device and pinned, RKV_BUFFER_ALIGN:
 * what cudaMalloc / cudaHostAlloc give on a GPU) fails like any other allocation; its own
 * bookkeeping (the queue of transfers and the host bytes each saves to check the async rule,
 * buffer handles) has no counterpart on a GPU and is never failed. */
static void *f_alloc_dev(void *ctx, size_t size, size_t align) {
  return f_take(ctx, size, align, align == RKV_BUFFER_ALIGN);
}

static void f_free(void *ctx, void *ptr, size_t size) {
  fault *f = ctx;
  if (!ptr) return;
  void *base = (char *)ptr - HDR;
  size_t was;
  memcpy(&was, base, sizeof was);
  if (was != size) f->bad_frees++;
  f->live--;
  free(base);
}

/* ---- scenarios ---------------------------------------------------------------------------- */

typedef struct scenario {
  const char *name;
  rkv_sched_admission admission;
  rkv_sched_preempt_mode preempt;
  uint32_t host_blocks;
  uint32_t num_blocks;
  bool pool;       /* CPU pool; else the bookkeeping executor */
  bool plan_slots; /* plans carry the slot mapping (the executor then writes through it) */
  bool checks;     /* check_every_op and check_every_step: the walkers allocate inside calls */
  bool emu;        /* the pool lives on the emulated device (<rkv/buffer_emu.h>) */
  bool prefix;     /* prefix caching: requests share system prompts (rkv_sched_set_prefix) */
  rkv_sched_prefix_rule rule;
  uint32_t requests;
  uint32_t burst; /* step of a late burst of two more requests */
  uint32_t max_steps;
} scenario;

#define PROTECT RKV_SCHED_PREFIX_PROTECT
#define COPY RKV_SCHED_PREFIX_COPY
static const scenario SCENARIOS[] = {
    {"optimistic-swap-pool", RKV_SCHED_OPTIMISTIC, RKV_SCHED_PREEMPT_SWAP, 40, 56, true, false,
     false, false, false, PROTECT, 12, 40, 400},
    {"optimistic-recompute-bookkeeping", RKV_SCHED_OPTIMISTIC, RKV_SCHED_PREEMPT_RECOMPUTE, 0, 48,
     false, true, false, false, false, PROTECT, 12, 40, 400},
    {"reserve-swap-pool-slots-checks", RKV_SCHED_RESERVE, RKV_SCHED_PREEMPT_SWAP, 24, 72, true,
     true, true, false, false, PROTECT, 3, 16, 80},
    {"prefix-protect-optimistic-swap-pool", RKV_SCHED_OPTIMISTIC, RKV_SCHED_PREEMPT_SWAP, 40, 56,
     true, false, false, false, true, PROTECT, 10, 30, 400},
    {"prefix-copy-optimistic-recompute-pool-slots", RKV_SCHED_OPTIMISTIC,
     RKV_SCHED_PREEMPT_RECOMPUTE, 0, 48, true, true, false, false, true, COPY, 10, 30, 400},
    {"emu-device-prefix-copy-optimistic-swap", RKV_SCHED_OPTIMISTIC, RKV_SCHED_PREEMPT_SWAP, 40, 56,
     true, false, false, true, true, COPY, 10, 30, 400},
    {"emu-device-prefix-protect-optimistic-swap", RKV_SCHED_OPTIMISTIC, RKV_SCHED_PREEMPT_SWAP, 40,
     56, true, false, false, true, true, PROTECT, 10, 30, 400},
};

static const rkv_evict_policy POLICIES[] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                            RKV_EVICT_H2O, RKV_EVICT_FULL};

/* Prefix scenarios: every request starts with one of two system prompts (2 and 3 blocks) */
enum { N_SYS = 2, MAX_SYS_BLOCKS = 3 };
static const uint32_t SYS_LEN[N_SYS] = {2 * BLOCK, 3 * BLOCK};

static int32_t sys_token(uint32_t sys, uint32_t pos) {
  return (int32_t)(1000 * (sys + 1) + pos);
}

static rkv_evict_params policy_params(rkv_evict_policy pol) {
  rkv_evict_params e = RKV_EVICT_PARAMS_INIT;
  e.policy = pol;
  e.budget = 8;
  e.window = 2;
  e.buffer = 4;
  e.kernel = 3;
  e.sinks = 2;
  return e;
}

/* ---- one run ------------------------------------------------------------------------------ */

typedef struct trace {
  uint64_t digest[MAX_OPS];
  rkv_status status[MAX_OPS];
  uint32_t n;
  uint64_t empty; /* digest before the first call */
} trace;

typedef struct run {
  const scenario *sc;
  trace *want; /* the fault-free trace */
  bool record; /* this is the fault-free run: write `want` */
  fault f;
  uint64_t fail_k; /* the allocation made to fail (0 = none) */
  rkv_allocator al;
  uint32_t call;     /* index of the current call in the trace */
  uint64_t out_hash; /* everything handed out so far (plans, attention outputs, finish outputs) */
  bool dead;         /* a violation ended the run */
  uint64_t nomem_calls, swallowed;
  uint32_t forks;                                            /* forks that succeeded */
  enum { PH_IDLE, PH_STEPPED, PH_BEGUN, PH_FINISHED } phase; /* where the step stands */
  rkv_allocator dev_al; /* the emulated device's: only its buffers' memory fails */
  rkv_blockmgr *bm;
  rkv_sched *s;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_exec *x;
  rkv_buffer *dq, *dk, *dv, *dout; /* the engine's DEVICE rows on the emulated device */
  rkv_evict_params ev[5];
  uint64_t sys_hash[N_SYS][MAX_SYS_BLOCKS];
  uint8_t sys_of[MAX_IDS]; /* the system prompt of each id (prefix scenarios) */
  int64_t ids[MAX_IDS];
  uint32_t n_ids;
  int64_t next_id;
  float q[MAX_TOKENS * Q_HEADS * HEAD_DIM], out[MAX_TOKENS * Q_HEADS * HEAD_DIM];
  float k[MAX_TOKENS * KV_HEADS * HEAD_DIM], v[MAX_TOKENS * KV_HEADS * HEAD_DIM];
  rkv_sched_output outs[MAX_SEQS];
  unsigned char *pool_copy;
} run;

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

static uint64_t mix_double(uint64_t h, double d) {
  uint64_t w;
  memcpy(&w, &d, sizeof w);
  return mix(h, w);
}

static uint64_t digest_bm(const run *r, uint64_t h) {
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(r->bm, &st);
  const uint64_t f[] = {st.total_blocks,     st.free_blocks,   st.used_blocks,
                        st.watermark_blocks, st.shared_blocks, st.num_seqs,
                        st.allocated_slots,  st.token_slots,   st.fragmentation_slots,
                        st.peak_used_blocks};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) h = mix(h, f[i]);
  int64_t seqs[MAX_IDS];
  const uint32_t n = rkv_blockmgr_list_seqs(r->bm, seqs, MAX_IDS);
  h = mix(h, n);
  for (uint32_t i = 0; i < n && i < MAX_IDS; i++) {
    h = mix(h, (uint64_t)seqs[i]);
    h = mix(h, (uint64_t)rkv_blockmgr_seq_index(r->bm, seqs[i]));
    for (uint32_t l = 0; l < LAYERS; l++)
      for (uint32_t hd = 0; hd < KV_HEADS; hd++) {
        int32_t len = -1, nb = 0;
        const int32_t *ids = NULL;
        (void)rkv_blockmgr_stream_len(r->bm, seqs[i], l, hd, &len);
        (void)rkv_blockmgr_stream_blocks(r->bm, seqs[i], l, hd, &ids, &nb);
        h = mix(h, (uint64_t)len);
        h = mix_bytes(h, ids, (size_t)nb * sizeof *ids);
      }
  }
  for (int32_t b = 0; b < (int32_t)st.total_blocks; b++) {
    uint32_t ref = 0;
    (void)rkv_blockmgr_block_ref(r->bm, b, &ref);
    h = mix(h, ref);
  }
  return h;
}

static uint64_t digest_sched(const run *r, uint64_t h) {
  rkv_sched_metrics m;
  rkv_sched_get_metrics(r->s, &m);
  /* num_rejected counts failed add_request calls, like the last-error text: not state */
  const uint64_t f[] = {m.num_running,       m.num_waiting,
                        m.num_swapped,       m.used_blocks,
                        m.free_blocks,       m.total_blocks,
                        m.host_used_blocks,  m.host_total_blocks,
                        m.reserved_blocks,   m.steps,
                        m.num_preemptions,   m.num_preempt_recompute,
                        m.num_preempt_swap,  m.swapped_out_blocks,
                        m.swapped_in_blocks, m.prompt_tokens,
                        m.generation_tokens, m.num_finished,
                        m.num_aborted,       m.compressions,
                        m.evicted_tokens,    m.compaction_freed_blocks,
                        m.max_running};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) h = mix(h, f[i]);
  h = mix_double(mix_double(h, m.kv_cache_usage), m.fragmentation);
  for (uint32_t i = 0; i < r->n_ids; i++) {
    rkv_sched_request_info info;
    memset(&info, 0, sizeof info);
    const rkv_status st = rkv_sched_get_request(r->s, r->ids[i], &info);
    if (st != RKV_OK) continue; /* ids are never reused: a dead one adds nothing */
    const uint64_t g[] = {info.state,
                          (uint64_t)info.prompt_len,
                          (uint64_t)info.generated,
                          (uint64_t)info.computed,
                          (uint64_t)info.kv_len,
                          info.preemptions,
                          info.compressions,
                          info.bound_blocks};
    for (size_t j = 0; j < sizeof g / sizeof g[0]; j++) h = mix(h, g[j]);
  }
  return h;
}

static uint64_t digest(run *r) {
  r->f.paused = true;
  uint64_t h = mix(0x5eed, r->out_hash);
  h = mix(h, (uint64_t)(r->bm != NULL) | (uint64_t)(r->s != NULL) << 1 |
                 (uint64_t)(r->x != NULL) << 2 | (uint64_t)(r->pool != NULL) << 3);
  if (r->bm) h = digest_bm(r, h);
  if (r->s) h = digest_sched(r, h);
  if (r->sc->prefix && r->bm && r->s) {
    rkv_prefix_stats ps;
    memset(&ps, 0, sizeof ps);
    ps.struct_size = sizeof ps;
    (void)rkv_blockmgr_prefix_stats(r->bm, &ps);
    const uint64_t f[] = {ps.entries,    ps.cached_blocks, ps.reclaimable_blocks, ps.lookups,
                          ps.hit_groups, ps.inserted,      ps.invalidated,        ps.reclaimed};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) h = mix(h, f[i]);
    rkv_sched_prefix_stats ss;
    memset(&ss, 0, sizeof ss);
    ss.struct_size = sizeof ss;
    (void)rkv_sched_get_prefix_stats(r->s, &ss);
    h = mix(mix(mix(mix(h, ss.admissions), ss.admissions_hit), ss.hashed_tokens), ss.hit_tokens);
    for (uint32_t k = 0; k < N_SYS; k++) {
      uint32_t hit = 0;
      (void)rkv_blockmgr_prefix_match(r->bm, r->sys_hash[k], SYS_LEN[k] / BLOCK, &hit);
      h = mix(h, hit);
    }
  }
  if (r->pool) {
    const uint32_t nb = r->sc->num_blocks;
    rkv_kv_layout lay = rkv_blockmgr_kv_layout(r->bm);
    const size_t bb = rkv_kv_block_bytes(&lay);
    for (int32_t b = 0; b < (int32_t)nb; b++)
      (void)rkv_kv_pool_read_blocks(r->pool, &b, 1, r->pool_copy + (size_t)b * bb);
    h = mix_bytes(h, r->pool_copy, (size_t)nb * bb);
  }
  r->f.paused = false;
  return h;
}

static uint64_t hash_plan(uint64_t h, const rkv_sched_plan *p) {
  h = mix(h, rkv_sched_plan_hash(p));
  h = mix(h, p->n_decode);
  h = mix(h, p->n_batched_tokens);
  h = mix_bytes(h, p->started, p->n_started * sizeof *p->started);
  h = mix_bytes(h, p->dropped, p->n_dropped * sizeof *p->dropped);
  h = mix_bytes(h, p->swapped_in, p->n_swapped_in * sizeof *p->swapped_in);
  h = mix_bytes(h, p->rows_changed, p->n_seqs);
  for (uint32_t i = 0; i < p->n_seqs; i++)
    h = mix(h, (uint64_t)p->seqs[i].evict->policy << 32 | (uint32_t)p->seqs[i].evict->budget);
  if (p->slots)
    for (uint32_t l = 0; l < LAYERS; l++)
      h = mix_bytes(h, p->slots + l * p->slot_layer_stride,
                    (size_t)p->n_batched_tokens * KV_HEADS * sizeof *p->slots);
  return h;
}

/* ---- the call protocol -------------------------------------------------------------------- */

static int violations;

static void violation(run *r, const char *what, const char *fmt, const char *detail) {
  fprintf(stderr, "VIOLATION [%s, %s allocation %llu]: call %u (%s): %s %s\n", r->sc->name,
          r->f.persistent ? "persistent from" : "one-shot", (unsigned long long)r->fail_k, r->call,
          what, fmt, detail ? detail : "");
  violations++;
  rkv_test_failed_++;
  r->dead = true;
}

/* The walkers, allocating without being counted. */
static const char *walkers_fail(run *r) {
  const char *why = NULL;
  r->f.paused = true;
  if (r->bm && rkv_blockmgr_check(r->bm) != RKV_OK) why = rkv_blockmgr_last_error(r->bm);
  /* Between a finish that compressed and the report, the scheduler has not yet read the new
   * lengths; between a step and its begin, the executor's mirror lags the appends: both by
   * design (docs/EMBEDDING.md: check after a report). */
  if (!why && r->s && r->phase != PH_FINISHED && rkv_sched_check(r->s) != RKV_OK)
    why = rkv_sched_last_error(r->s);
  if (!why && r->x && r->phase != PH_STEPPED && rkv_exec_check(r->x) != RKV_OK)
    why = rkv_exec_last_error(r->x);
  r->f.paused = false;
  return why;
}

/* After each call: record it (fault-free run), or hold it against the record. True when the
 * call failed from an injected allocation failure and must be retried. */
static bool call_done(run *r, const char *what, rkv_status st, uint64_t out) {
  const bool injected = r->f.injected_in_call > 0;
  r->f.injected_in_call = 0;
  if (injected) r->f.fail_at = 0; /* one failure (or one failing run) per run */
  if (injected && st == RKV_ERR_NO_MEMORY) {
    r->nomem_calls++;
    const uint64_t before = r->call ? r->want->digest[r->call - 1] : r->want->empty;
    if (digest(r) != before)
      violation(r, what, "failed with RKV_ERR_NO_MEMORY but changed state", NULL);
    const char *why = walkers_fail(r);
    if (why) violation(r, what, "check walker after the failure:", why);
    return !r->dead;
  }
  if (injected) r->swallowed++;
  r->out_hash = mix(r->out_hash, out);
  /* before the first injected failure a run is the fault-free run: skip its digests */
  const uint64_t d = r->record || r->f.injected ? digest(r) : r->want->digest[r->call];
  if (r->record) {
    if (r->call >= MAX_OPS) {
      violation(r, what, "trace longer than MAX_OPS", NULL);
      return false;
    }
    r->want->digest[r->call] = d;
    r->want->status[r->call] = st;
    r->want->n = ++r->call;
    const char *why = walkers_fail(r);
    if (why) violation(r, what, "check walker in the fault-free run:", why);
    return false;
  }
  if (r->call >= r->want->n) {
    violation(r, what, "more calls than the fault-free run", NULL);
    return false;
  }
  if (st != r->want->status[r->call]) {
    violation(r, what, "returned", rkv_status_name(st));
    return false;
  }
  if (d != r->want->digest[r->call]) {
    violation(r, what, "state differs from the fault-free run after the call", NULL);
    return false;
  }
  r->call++;
  return false;
}

/* Runs `expr` (which sets st_ and out_) until it does not fail from an injected failure. */
#define CALL(r, what, expr)                      \
  do {                                           \
    rkv_status st_;                              \
    uint64_t out_;                               \
    do {                                         \
      out_ = 0;                                  \
      expr;                                      \
    } while (call_done((r), (what), st_, out_)); \
    if ((r)->dead) return;                       \
  } while (0)

/* ---- the workload ------------------------------------------------------------------------- */

static float hashf(uint64_t a, uint64_t b) {
  const uint64_t z = mix(a, b);
  return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* What the model sees at (id, pos): in prefix scenarios the system prompt's tokens are the
 * same for every request that starts with it (so are their Q/K/V). */
static uint64_t token_of(const run *r, int64_t id, int64_t pos) {
  if (r->sc->prefix && id < MAX_IDS && pos < (int64_t)SYS_LEN[r->sys_of[id]])
    return (uint64_t)sys_token(r->sys_of[id], (uint32_t)pos);
  return (uint64_t)id << 32 | (uint64_t)pos;
}

static void fill_qkv(run *r, const rkv_sched_plan *p, uint32_t l) {
  uint32_t row = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    for (uint32_t t = 0; t < p->seqs[i].n_tokens; t++, row++) {
      const uint64_t tok = token_of(r, p->seqs[i].id, p->seqs[i].pos + (int64_t)t);
      for (uint32_t e = 0; e < Q_HEADS * HEAD_DIM; e++)
        r->q[row * Q_HEADS * HEAD_DIM + e] = hashf(tok, l * 4096u + e);
      for (uint32_t e = 0; e < KV_HEADS * HEAD_DIM; e++) {
        r->k[row * KV_HEADS * HEAD_DIM + e] = hashf(tok, 100000u + l * 4096u + e);
        r->v[row * KV_HEADS * HEAD_DIM + e] = hashf(tok, 200000u + l * 4096u + e);
      }
    }
}

/* On the emulated device Q/K/V go up into DEVICE rows and the output comes back down (the
 * transfers and the sync allocate only the emulator's uncounted bookkeeping). */
static rkv_status run_layer_emu(run *r, const rkv_sched_plan *p, uint32_t l) {
  const size_t qb = (size_t)p->n_batched_tokens * Q_HEADS * HEAD_DIM * 4;
  const size_t kb = (size_t)p->n_batched_tokens * KV_HEADS * HEAD_DIM * 4;
  rkv_status st = rkv_buffer_upload(r->dq, 0, r->q, qb);
  if (st == RKV_OK) st = rkv_buffer_upload(r->dk, 0, r->k, kb);
  if (st == RKV_OK) st = rkv_buffer_upload(r->dv, 0, r->v, kb);
  if (st != RKV_OK) return RKV_ERR_INTERNAL;
  st = rkv_exec_layer(r->x, l, rkv_buffer_ptr(r->dq), rkv_buffer_ptr(r->dk), rkv_buffer_ptr(r->dv),
                      rkv_buffer_ptr(r->dout));
  /* the host's rows must stay put until the copies ran, whatever the layer returned */
  const rkv_status t = rkv_buffer_download(r->dout, 0, r->out, qb);
  const rkv_status y = rkv_backend_sync(r->be);
  return st != RKV_OK ? st : t != RKV_OK || y != RKV_OK ? RKV_ERR_INTERNAL : RKV_OK;
}

static rkv_status run_layer(run *r, const rkv_sched_plan *p, uint32_t l, uint64_t *out) {
  fill_qkv(r, p, l);
  memset(r->out, 0, sizeof r->out);
  const rkv_status st =
      r->sc->emu ? run_layer_emu(r, p, l) : rkv_exec_layer(r->x, l, r->q, r->k, r->v, r->out);
  *out =
      st == RKV_OK ? mix_bytes(l, r->out, (size_t)p->n_batched_tokens * Q_HEADS * HEAD_DIM * 4) : 0;
  return st;
}

static rkv_status run_finish(run *r, const rkv_sched_plan *p, uint64_t *out) {
  memset(r->outs, 0, sizeof r->outs);
  for (uint32_t i = 0; i < p->n_seqs; i++)
    r->outs[i].eos = p->seqs[i].samples &&
                     hashf((uint64_t)p->seqs[i].id, (uint64_t)p->seqs[i].pos + 7777u) > 0.9f;
  const rkv_status st = rkv_exec_finish(r->x, r->outs, p->n_seqs);
  uint64_t h = 0;
  for (uint32_t i = 0; st == RKV_OK && i < p->n_seqs; i++) {
    const rkv_sched_output *o = &r->outs[i];
    h = mix(h, (uint64_t)o->id);
    h = mix(h, (uint64_t)o->eos | (uint64_t)o->compressed << 1 | (uint64_t)o->blocks_freed << 8);
    h = mix(h, o->tokens_evicted);
  }
  *out = h;
  return st;
}

static void track(run *r, int64_t id) {
  if (r->n_ids < MAX_IDS) r->ids[r->n_ids++] = id;
}

/* The first tracked id in `state`, or -1. */
static int64_t pick(run *r, rkv_sched_state state, uint32_t skip) {
  for (uint32_t i = 0; i < r->n_ids; i++) {
    rkv_sched_request_info info;
    r->f.paused = true;
    const rkv_status st = rkv_sched_get_request(r->s, r->ids[i], &info);
    r->f.paused = false;
    if (st == RKV_OK && info.state == state && !skip--) return r->ids[i];
  }
  return -1;
}

/* The backend and pool are not under test: created with the plain allocator, uncounted. The
 * emulated device's takes the run's allocator for the buffers the executor grows (the
 * engine's own DEVICE rows are made here, uncounted). */
static rkv_status make_pool(run *r) {
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  bec.num_threads = 1;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(r->bm);
  r->f.paused = true;
  rkv_status st;
  if (r->sc->emu) {
    bec.allocator = &r->dev_al;
    st = rkv_backend_create_emulated(&bec, &r->be);
    const size_t qb = MAX_TOKENS * Q_HEADS * HEAD_DIM * 4,
                 kb = MAX_TOKENS * KV_HEADS * HEAD_DIM * 4;
    if (st == RKV_OK) st = rkv_buffer_create(r->be, RKV_BUFFER_DEVICE, qb, &r->dq);
    if (st == RKV_OK) st = rkv_buffer_create(r->be, RKV_BUFFER_DEVICE, kb, &r->dk);
    if (st == RKV_OK) st = rkv_buffer_create(r->be, RKV_BUFFER_DEVICE, kb, &r->dv);
    if (st == RKV_OK) st = rkv_buffer_create(r->be, RKV_BUFFER_DEVICE, qb, &r->dout);
  } else {
    st = rkv_backend_create(&bec, &r->be);
  }
  if (st == RKV_OK) st = rkv_kv_pool_create(r->be, &lay, r->sc->num_blocks, &r->pool);
  if (st == RKV_OK) r->pool_copy = malloc((size_t)r->sc->num_blocks * rkv_kv_block_bytes(&lay));
  r->f.paused = false;
  return st;
}

static void create_all(run *r) {
  const scenario *sc = r->sc;
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = sc->num_blocks;
  bc.block_size = BLOCK;
  bc.num_layers = LAYERS;
  bc.num_kv_heads = KV_HEADS;
  bc.head_dim = HEAD_DIM;
  bc.dtype = RKV_DTYPE_F32;
  bc.max_seqs = 16;
  bc.watermark = 0.02f;
  bc.check_every_op = sc->checks;
  bc.prefix_cache = sc->prefix;
  bc.allocator = &r->al;
  CALL(r, "blockmgr_create", st_ = rkv_blockmgr_create(&bc, &r->bm));
  if (sc->pool) CALL(r, "pool_create", st_ = make_pool(r));
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_batched_tokens = MAX_TOKENS;
  c.max_seqs = MAX_SEQS;
  c.max_prefill_chunk = 5;
  c.admission = sc->admission;
  c.preempt = sc->preempt;
  c.host_blocks = sc->host_blocks;
  c.evict = r->ev[0];
  c.allocator = &r->al;
  c.check_every_step = sc->checks;
  c.plan_slots = sc->plan_slots;
  c.prefix_cache = sc->prefix;
  c.prefix_rule = sc->rule;
  CALL(r, "sched_create", st_ = rkv_sched_create(&c, r->bm, &r->s, NULL, 0));
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = Q_HEADS;
  xc.max_seqs = MAX_SEQS;
  xc.host_blocks = sc->host_blocks;
  xc.evict = r->ev[0];
  xc.allocator = &r->al;
  CALL(r, "exec_create", st_ = rkv_exec_create(&xc, r->bm, r->pool, &r->x, NULL, 0));
}

static void destroy_all(run *r) {
  r->f.paused = true;
  rkv_exec_destroy(r->x);
  rkv_buffer *bufs[] = {r->dq, r->dk, r->dv, r->dout};
  for (size_t i = 0; i < 4; i++) rkv_buffer_destroy(bufs[i]);
  if (r->be && rkv_emu_hazards(r->be)) {
    r->f.paused = false;
    violation(r, "end", "the emulated device saw a hazard:", rkv_emu_hazard_text(r->be));
    r->f.paused = true;
  }
  rkv_sched_destroy(r->s);
  rkv_kv_pool_destroy(r->pool);
  rkv_backend_destroy(r->be);
  rkv_blockmgr_destroy(r->bm);
  free(r->pool_copy);
  r->x = NULL, r->s = NULL, r->pool = NULL, r->be = NULL, r->bm = NULL, r->pool_copy = NULL;
  r->dq = r->dk = r->dv = r->dout = NULL;
  r->f.paused = false;
}

/* Requests arrive over the first steps; forks, an abort and a late burst come at fixed steps,
 * on whichever requests are running then (the same ones in every run: the state is). */
static void steps(run *r) {
  const scenario *sc = r->sc;
  uint64_t rng = 12345;
  for (uint32_t step = 0; step < sc->max_steps; step++) {
    for (uint32_t i = 0; i < sc->requests; i++) {
      if (i * 2 != step && !(step == sc->burst && i >= sc->requests - 2)) continue;
      rkv_sched_request rq = {0};
      rq.id = r->next_id++;
      rq.prompt_len = 3 + (int64_t)(rkv_test_rand(&rng) % 14);
      rq.max_new_tokens = 6 + (int64_t)(rkv_test_rand(&rng) % 20);
      rq.priority = (int32_t)(i % 3 == 2);
      rq.arrival = (double)step;
      rq.evict = &r->ev[i % 5];
      const uint32_t sys = i % N_SYS;
      if (sc->prefix) rq.prompt_len = SYS_LEN[sys] + 1 + rq.prompt_len % 8;
      if (rq.id < MAX_IDS) r->sys_of[rq.id] = (uint8_t)sys;
      track(r, rq.id);
      CALL(r, "add_request", st_ = rkv_sched_add_request(r->s, &rq));
      if (sc->prefix)
        CALL(r, "set_prefix",
             st_ = rkv_sched_set_prefix(r->s, rq.id, r->sys_hash[sys], SYS_LEN[sys] / BLOCK));
    }
    if (step % 9 == 5) {
      const int64_t parent = pick(r, RKV_SCHED_RUNNING, step % 2);
      if (parent >= 0) {
        const int64_t child = r->next_id++;
        track(r, child);
        rkv_sched_request_info info;
        r->f.paused = true;
        (void)rkv_sched_get_request(r->s, parent, &info);
        r->f.paused = false;
        if (child < MAX_IDS && parent < MAX_IDS) r->sys_of[child] = r->sys_of[parent];
        CALL(r, "fork", st_ = rkv_sched_fork(r->s, parent, child, info.generated + 5));
        r->forks += r->want->status[r->call - 1] == RKV_OK;
      }
    }
    if (step == 17 || step == 31) {
      const int64_t victim = pick(r, step == 17 ? RKV_SCHED_WAITING : RKV_SCHED_RUNNING, 0);
      if (victim >= 0) CALL(r, "abort", st_ = rkv_sched_abort(r->s, victim));
    }
    const rkv_sched_plan *p = NULL;
    CALL(r, "step", {
      st_ = rkv_sched_step(r->s, &p);
      if (st_ == RKV_OK) out_ = hash_plan(step, p);
      if (st_ == RKV_OK) r->phase = PH_STEPPED;
    });
    CALL(r, "exec_begin", {
      st_ = rkv_exec_begin(r->x, p);
      if (st_ == RKV_OK) r->phase = PH_BEGUN;
    });
    for (uint32_t l = 0; r->pool && p->n_seqs && l < LAYERS; l++)
      CALL(r, "exec_layer", st_ = run_layer(r, p, l, &out_));
    CALL(r, "exec_finish", {
      st_ = run_finish(r, p, &out_);
      if (st_ == RKV_OK) r->phase = PH_FINISHED;
    });
    CALL(r, "report", {
      st_ = rkv_sched_report(r->s, r->outs, p->n_seqs);
      if (st_ == RKV_OK) r->phase = PH_IDLE;
    });
    rkv_sched_metrics m;
    r->f.paused = true;
    rkv_sched_get_metrics(r->s, &m);
    r->f.paused = false;
    if (step > sc->burst && !p->n_seqs && !p->n_finished && !m.num_running && !m.num_waiting &&
        !m.num_swapped)
      return;
  }
}

/* A run's allocators, policies and system prompts. */
static void run_init(run *r) {
  for (uint32_t i = 0; i < 5; i++) r->ev[i] = policy_params(POLICIES[i]);
  r->al.alloc = f_alloc;
  r->al.free = f_free;
  r->al.ctx = &r->f;
  r->dev_al = r->al;
  r->dev_al.alloc = f_alloc_dev;
  r->next_id = 1;
  for (uint32_t k = 0; k < N_SYS; k++) {
    int32_t toks[MAX_SYS_BLOCKS * BLOCK];
    for (uint32_t p = 0; p < SYS_LEN[k]; p++) toks[p] = sys_token(k, p);
    (void)rkv_prefix_hash_blocks(toks, SYS_LEN[k], BLOCK, 0, r->sys_hash[k], MAX_SYS_BLOCKS);
  }
}

static void run_once(run *r) {
  run_init(r);
  create_all(r);
  if (!r->dead) steps(r);
  destroy_all(r);
  if (!r->dead && !r->record && r->call != r->want->n)
    violation(r, "end", "the run made fewer calls than the fault-free run", NULL);
  if (r->f.live != 0 || r->f.bad_frees) {
    char detail[96];
    snprintf(detail, sizeof detail, "%lld blocks leaked, %llu freed with another size",
             (long long)r->f.live, (unsigned long long)r->f.bad_frees);
    violation(r, "end", "allocator:", detail);
  }
}

static trace TRACE;

static void sweep(const scenario *sc) {
  run *r = calloc(1, sizeof *r);
  r->sc = sc;
  r->want = &TRACE;
  r->record = true;
  TRACE.empty = mix(mix(0x5eed, 0), 0);
  /* the fault-free run: its allocation count bounds k */
  run_init(r);
  create_all(r);
  rkv_sched_metrics m;
  memset(&m, 0, sizeof m);
  rkv_sched_prefix_stats ps;
  memset(&ps, 0, sizeof ps);
  ps.struct_size = sizeof ps;
  if (!r->dead) {
    steps(r);
    rkv_sched_get_metrics(r->s, &m);
    (void)rkv_sched_get_prefix_stats(r->s, &ps);
  }
  destroy_all(r);
  const uint64_t total = r->f.count;
  EXPECT(!r->dead);
  EXPECT(total > 0);
  printf(
      "%s: fault-free: %u calls, %llu allocations; %llu steps, %llu finished, %llu aborted, "
      "%llu preempted (%llu swap, %llu recompute), %llu compressions, %u forks, %llu of %llu "
      "hashed admissions hit the prefix cache (%llu tokens)\n",
      sc->name, TRACE.n, (unsigned long long)total, (unsigned long long)m.steps,
      (unsigned long long)m.num_finished, (unsigned long long)m.num_aborted,
      (unsigned long long)m.num_preemptions, (unsigned long long)m.num_preempt_swap,
      (unsigned long long)m.num_preempt_recompute, (unsigned long long)m.compressions, r->forks,
      (unsigned long long)ps.admissions_hit, (unsigned long long)ps.admissions,
      (unsigned long long)ps.hit_tokens);
  free(r);
  if (violations) return;
  for (int persistent = 0; persistent < 2; persistent++) {
    uint64_t injected = 0, nomem = 0, swallowed = 0, runs = 0;
    for (uint64_t k = 1; k <= total; k++) {
      run *f = calloc(1, sizeof *f);
      f->sc = sc;
      f->want = &TRACE;
      f->f.fail_at = k;
      f->fail_k = k;
      f->f.persistent = persistent;
      run_once(f);
      runs++;
      injected += f->f.injected;
      nomem += f->nomem_calls;
      swallowed += f->swallowed;
      if (f->f.injected == 0) {
        fprintf(stderr, "VIOLATION [%s]: allocation %llu never happened\n", sc->name,
                (unsigned long long)k);
        violations++;
        rkv_test_failed_++;
      }
      free(f);
      if (violations > 20) return;
    }
    rkv_test_passed_++;
    printf(
        "%s: %s: %llu runs, %llu allocation failures injected, %llu calls failed with "
        "RKV_ERR_NO_MEMORY and were retried, %llu failures absorbed by a call that succeeded\n",
        sc->name, persistent ? "persistent" : "one-shot", (unsigned long long)runs,
        (unsigned long long)injected, (unsigned long long)nomem, (unsigned long long)swallowed);
  }
}

int main(int argc, char **argv) {
  for (size_t i = 0; i < sizeof SCENARIOS / sizeof SCENARIOS[0]; i++)
    if (argc < 2 || strcmp(argv[1], SCENARIOS[i].name) == 0) sweep(&SCENARIOS[i]);
  printf("fault sweep: %d violations\n", violations);
  return rkv_test_finish();
}
