/* The executor's device path (scheduler/src/exec_device.c) on the emulated device
 * (<rkv/buffer_emu.h>): two engines run the same requests in lockstep, one with a plain CPU
 * executor, one with an executor over a pool of the emulated backend, whose Q/K/V arrive in
 * DEVICE buffers through pinned staging, as a CUDA engine's do. After every step:
 *   - the plans and the executors' outputs (compressed, evicted tokens, freed blocks) agree;
 *   - every layer's attention output, downloaded from the device, equals the CPU one bit for bit;
 *   - every live stream holds the same K/V bytes and H2O mass at every position;
 *   - both executors pass rkv_exec_check (the device one compares its device table mirror,
 *     kept by delta uploads, with the host mirror);
 *   - a decode step whose tables did not change uploads only the step metadata (one queued
 *     copy after begin: the rows go up by deltas, never as a full export);
 *   - the step waited for the device once (rkv_backend_sync_count), in its finish: the
 *     evictor's next run reuses its descriptor arena without another sync.
 * At the end the emulator saw no copy hazard. Workloads: reserve, optimistic admission with
 * swap preemption, forks, and prefix caching under the protect rule (three system prompts of
 * four blocks, shared through the cache and protected: the device compression selects after
 * them, and at every step must hold what the CPU one holds); every policy. Plus the refusals: host
 * pointers where the device path wants device memory, and the emulated kernels' bounds.
 *   test_exec_device [WORKLOAD POLICY]   (no argument: every combination) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

enum { LAYERS = 3, KV_HEADS = 2, Q_HEADS = 4, HEAD_DIM = 16, BLOCK = 4, MAX_SEQS = 16 };
enum { REQUESTS = 24, MAX_ROWS = 192 };
#define QROW (Q_HEADS * HEAD_DIM)
#define KROW (KV_HEADS * HEAD_DIM)

static int fails;

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                   \
      fprintf(stderr, "\n");                                          \
      fails++;                                                        \
      return 1;                                                       \
    }                                                                 \
  } while (0)

static float hashf(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (float)((double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void make_qkv(const rkv_sched_plan *p, uint32_t l, float *q, float *k, float *v) {
  uint32_t r = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    for (uint32_t t = 0; t < p->seqs[i].n_tokens; t++, r++) {
      const uint64_t tok = (uint64_t)p->seqs[i].id << 32 | (uint64_t)(p->seqs[i].pos + t);
      for (uint32_t e = 0; e < QROW; e++) q[r * QROW + e] = hashf(tok, l * 4096u + e);
      for (uint32_t e = 0; e < KROW; e++) {
        k[r * KROW + e] = hashf(tok, 100000u + l * 4096u + e);
        v[r * KROW + e] = hashf(tok, 200000u + l * 4096u + e);
      }
    }
}

static bool eos_of(const rkv_sched_seq *q) {
  return (hashf((uint64_t)q->id, (uint64_t)q->pos + 7777u) + 1.0) / 2.0 < 0.01;
}

/* One engine: scheduler, block manager, pool, executor. */
typedef struct engine {
  rkv_blockmgr *bm;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_sched *s;
  rkv_exec *x;
} engine;

static void engine_free(engine *e) {
  rkv_exec_destroy(e->x);
  rkv_sched_destroy(e->s);
  rkv_kv_pool_destroy(e->pool);
  rkv_backend_destroy(e->be);
  rkv_blockmgr_destroy(e->bm);
  memset(e, 0, sizeof *e);
}

typedef struct setup {
  bool optimistic, swap, forks, prefix;
  rkv_evict_params ev;
} setup;

enum { PREFIX_BLOCKS = 4, PREFIXES = 3 };

/* The prefix workload's request i: a prompt of PREFIX_BLOCKS blocks of system prompt i %
 * PREFIXES, then its own tokens; the chained hashes of the system prompt's blocks. */
static void prefix_hashes(int64_t i, uint64_t *hashes) {
  int32_t tok[PREFIX_BLOCKS * BLOCK];
  for (int32_t j = 0; j < PREFIX_BLOCKS * BLOCK; j++) tok[j] = (int32_t)(i % PREFIXES) * 1000 + j;
  (void)rkv_prefix_hash_blocks(tok, PREFIX_BLOCKS * BLOCK, BLOCK, 0, hashes, PREFIX_BLOCKS);
}

static int engine_make(engine *e, const setup *su, bool emulated) {
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = su->optimistic ? 420 : 900;
  bc.block_size = BLOCK;
  bc.num_layers = LAYERS;
  bc.num_kv_heads = KV_HEADS;
  bc.head_dim = HEAD_DIM;
  bc.dtype = RKV_DTYPE_F32;
  bc.max_seqs = 256;
  bc.prefix_cache = su->prefix;
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  bec.num_threads = 2;
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = MAX_ROWS;
  sc.max_seqs = MAX_SEQS;
  sc.max_prefill_chunk = 24;
  sc.admission = su->optimistic ? RKV_SCHED_OPTIMISTIC : RKV_SCHED_RESERVE;
  sc.preempt = su->swap ? RKV_SCHED_PREEMPT_SWAP : RKV_SCHED_PREEMPT_RECOMPUTE;
  sc.host_blocks = su->swap ? 400 : 0;
  sc.evict = su->ev;
  sc.prefix_cache = su->prefix;
  sc.prefix_rule = RKV_SCHED_PREFIX_PROTECT;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = Q_HEADS;
  xc.max_seqs = MAX_SEQS;
  xc.max_stream_tokens = 48; /* small: the mirror doubles (and re-syncs) during the run */
  xc.host_blocks = sc.host_blocks;
  xc.evict = su->ev;
  char err[256] = "";
  CHECK(rkv_blockmgr_create(&bc, &e->bm) == RKV_OK, "blockmgr");
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(e->bm);
  rkv_status st =
      emulated ? rkv_backend_create_emulated(&bec, &e->be) : rkv_backend_create(&bec, &e->be);
  CHECK(st == RKV_OK, "backend");
  CHECK(rkv_kv_pool_create(e->be, &lay, bc.num_blocks, &e->pool) == RKV_OK, "pool");
  CHECK(rkv_sched_create(&sc, e->bm, &e->s, err, sizeof err) == RKV_OK, "%s", err);
  CHECK(rkv_exec_create(&xc, e->bm, e->pool, &e->x, err, sizeof err) == RKV_OK, "%s", err);
  for (int64_t i = 0; i < REQUESTS; i++) {
    rkv_sched_request rq = {i, 8 + (i * 7) % 40, 40 + (i * 13) % 90, 0, (double)i, NULL};
    if (su->prefix) rq.prompt_len += PREFIX_BLOCKS * BLOCK;
    CHECK(rkv_sched_add_request(e->s, &rq) == RKV_OK, "%s", rkv_sched_last_error(e->s));
    if (su->prefix) {
      uint64_t h[PREFIX_BLOCKS];
      prefix_hashes(i, h);
      CHECK(rkv_sched_set_prefix(e->s, i, h, PREFIX_BLOCKS) == RKV_OK, "%s",
            rkv_sched_last_error(e->s));
    }
  }
  return 0;
}

/* The device engine's transfer buffers: pinned staging with a section per layer (the host
 * fills layer l + 1 while the copies of layer l may still be queued) and DEVICE rows. */
typedef struct xfer {
  rkv_buffer *stage, *outs, *q, *k, *v, *out;
} xfer;

static const size_t QB = (size_t)MAX_ROWS * QROW * 4, KB = (size_t)MAX_ROWS * KROW * 4;

static int xfer_make(xfer *t, rkv_backend *be) {
  CHECK(
      rkv_buffer_create(be, RKV_BUFFER_HOST_PINNED, LAYERS * (QB + 2 * KB), &t->stage) == RKV_OK &&
          rkv_buffer_create(be, RKV_BUFFER_HOST_PINNED, LAYERS * QB, &t->outs) == RKV_OK &&
          rkv_buffer_create(be, RKV_BUFFER_DEVICE, QB, &t->q) == RKV_OK &&
          rkv_buffer_create(be, RKV_BUFFER_DEVICE, KB, &t->k) == RKV_OK &&
          rkv_buffer_create(be, RKV_BUFFER_DEVICE, KB, &t->v) == RKV_OK &&
          rkv_buffer_create(be, RKV_BUFFER_DEVICE, QB, &t->out) == RKV_OK,
      "buffers");
  return 0;
}

static void xfer_free(xfer *t) {
  rkv_buffer *b[] = {t->stage, t->outs, t->q, t->k, t->v, t->out};
  for (size_t i = 0; i < 6; i++) rkv_buffer_destroy(b[i]);
}

static int same_plans(const rkv_sched_plan *a, const rkv_sched_plan *b) {
  CHECK(a->n_seqs == b->n_seqs && a->n_decode == b->n_decode &&
            a->n_batched_tokens == b->n_batched_tokens && a->n_swap_out == b->n_swap_out &&
            a->n_swap_in == b->n_swap_in && a->n_dropped == b->n_dropped,
        "step %llu: the plans differ", (unsigned long long)a->step);
  for (uint32_t i = 0; i < a->n_seqs; i++)
    CHECK(a->seqs[i].id == b->seqs[i].id && a->seqs[i].n_tokens == b->seqs[i].n_tokens &&
              a->seqs[i].compress == b->seqs[i].compress,
          "step %llu seq %u differs", (unsigned long long)a->step, i);
  return 0;
}

/* Every position of every stream of the plan's sequences: same K/V bytes and H2O mass. */
static int same_cache(const engine *a, const engine *b, const rkv_sched_plan *p) {
  const rkv_kv_layout *lay = rkv_kv_pool_layout(a->pool);
  const size_t bb = rkv_kv_block_bytes(lay), row = HEAD_DIM * 4;
  const unsigned char *ba = rkv_kv_pool_base(a->pool), *bbase = rkv_kv_pool_base(b->pool);
  const float *sa = rkv_kv_pool_scores(a->pool), *sb = rkv_kv_pool_scores(b->pool);
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const int64_t id = p->seqs[i].id;
    if (!rkv_blockmgr_seq_exists(a->bm, id)) continue; /* finished at the report */
    for (uint32_t l = 0; l < LAYERS; l++)
      for (uint32_t h = 0; h < KV_HEADS; h++) {
        int32_t na = 0, nb = 0;
        (void)rkv_blockmgr_stream_len(a->bm, id, l, h, &na);
        (void)rkv_blockmgr_stream_len(b->bm, id, l, h, &nb);
        CHECK(na == nb, "seq %lld stream (%u, %u): %d vs %d tokens", (long long)id, l, h, na, nb);
        for (int32_t t = 0; t < na; t++) {
          int64_t xa = 0, xb = 0;
          (void)rkv_blockmgr_stream_slot(a->bm, id, l, h, t, &xa);
          (void)rkv_blockmgr_stream_slot(b->bm, id, l, h, t, &xb);
          const uint32_t oa = (uint32_t)(xa % BLOCK), ob = (uint32_t)(xb % BLOCK);
          const unsigned char *pa = ba + (size_t)(xa / BLOCK) * bb;
          const unsigned char *pb = bbase + (size_t)(xb / BLOCK) * bb;
          CHECK(!memcmp(pa + rkv_kv_k_offset(lay, oa), pb + rkv_kv_k_offset(lay, ob), row) &&
                    !memcmp(pa + rkv_kv_v_offset(lay, oa), pb + rkv_kv_v_offset(lay, ob), row) &&
                    sa[xa] == sb[xb],
                "seq %lld stream (%u, %u) position %d differs", (long long)id, l, h, t);
        }
      }
  }
  return 0;
}

typedef struct run_stats {
  uint64_t steps, compressions, quiet_decodes, swaps, forks, h2o_mass;
} run_stats;

/* Device engine: one layer from pinned staging section l through DEVICE rows; the output
 * comes back into pinned section l (read after the step's sync). */
static int device_layer(engine *e, xfer *t, const rkv_sched_plan *p, uint32_t l) {
  const size_t rows = p->n_batched_tokens;
  unsigned char *st = (unsigned char *)rkv_buffer_ptr(t->stage) + l * (QB + 2 * KB);
  make_qkv(p, l, (float *)st, (float *)(st + QB), (float *)(st + QB + KB));
  const size_t qb = rows * QROW * 4, kb = rows * KROW * 4;
  const size_t so = l * (QB + 2 * KB);
  CHECK(rkv_buffer_copy(t->q, 0, t->stage, so, qb) == RKV_OK &&
            rkv_buffer_copy(t->k, 0, t->stage, so + QB, kb) == RKV_OK &&
            rkv_buffer_copy(t->v, 0, t->stage, so + QB + KB, kb) == RKV_OK,
        "staging copies");
  CHECK(rkv_exec_layer(e->x, l, rkv_buffer_ptr(t->q), rkv_buffer_ptr(t->k), rkv_buffer_ptr(t->v),
                       rkv_buffer_ptr(t->out)) == RKV_OK,
        "device layer %u: %s", l, rkv_exec_last_error(e->x));
  CHECK(rkv_buffer_copy(t->outs, l * QB, t->out, 0, qb) == RKV_OK, "output copy");
  return 0;
}

/* Whether begin had nothing to upload but the step metadata: a decode-only step with no
 * table change since the last one (no new block, no compression, no start, fork or swap). */
static bool quiet_step(const rkv_sched_plan *p, bool compressed_before) {
  if (compressed_before || !p->n_seqs || p->n_decode != p->n_seqs || p->n_started || p->n_forks ||
      p->n_swap_in || p->n_swap_out || !p->rows_changed)
    return false;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    if (p->rows_changed[i]) return false;
  return true;
}

/* The CPU engine `a` runs in lockstep unless a->s is NULL (then b runs alone). */
static int one_step(engine *a, engine *b, xfer *t, float *ref, rkv_sched_output *oa,
                    rkv_sched_output *ob, run_stats *rs, bool *compressed_before, bool *done,
                    const rkv_sched_plan **last) {
  const bool lock = a->s != NULL;
  const rkv_sched_plan *pa = NULL, *pb = NULL;
  CHECK(rkv_sched_step(b->s, &pb) == RKV_OK, "%s", rkv_sched_last_error(b->s));
  if (lock) {
    CHECK(rkv_sched_step(a->s, &pa) == RKV_OK, "%s", rkv_sched_last_error(a->s));
    if (same_plans(pa, pb)) return 1;
    CHECK(rkv_exec_begin(a->x, pa) == RKV_OK, "%s", rkv_exec_last_error(a->x));
  }
  rs->swaps += pb->n_swap_in + pb->n_swap_out;
  const uint64_t syncs0 = rkv_backend_sync_count(b->be);
  CHECK(rkv_exec_begin(b->x, pb) == RKV_OK, "%s", rkv_exec_last_error(b->x));
  const size_t pending = rkv_emu_pending(b->be);
  if (quiet_step(pb, *compressed_before)) {
    rs->quiet_decodes++;
    CHECK(pending == 1, "step %llu: a decode step without table changes queued %zu uploads",
          (unsigned long long)pb->step, pending);
  }
  for (uint32_t l = 0; l < LAYERS && pb->n_seqs; l++) {
    float q[MAX_ROWS * QROW], k[MAX_ROWS * KROW], v[MAX_ROWS * KROW];
    make_qkv(pb, l, q, k, v);
    if (lock)
      CHECK(rkv_exec_layer(a->x, l, q, k, v, ref + (size_t)l * MAX_ROWS * QROW) == RKV_OK, "%s",
            rkv_exec_last_error(a->x));
    if (device_layer(b, t, pb, l)) return 1;
  }
  for (uint32_t i = 0; i < pb->n_seqs; i++)
    oa[i].eos = ob[i].eos = pb->seqs[i].samples && eos_of(&pb->seqs[i]);
  if (lock) CHECK(rkv_exec_finish(a->x, oa, pa->n_seqs) == RKV_OK, "%s", rkv_exec_last_error(a->x));
  CHECK(rkv_exec_finish(b->x, ob, pb->n_seqs) == RKV_OK, "%s", rkv_exec_last_error(b->x));
  /* one wait per step, the finish's: the evictor reuses its arena without syncing again */
  CHECK(rkv_backend_sync_count(b->be) - syncs0 == 1, "step %llu: %llu syncs",
        (unsigned long long)pb->step, (unsigned long long)(rkv_backend_sync_count(b->be) - syncs0));
  /* finish synced: the outputs are in pinned memory now */
  const unsigned char *outs = rkv_buffer_ptr(t->outs);
  for (uint32_t l = 0; lock && l < LAYERS && pb->n_seqs; l++)
    CHECK(!memcmp(ref + (size_t)l * MAX_ROWS * QROW, outs + l * QB,
                  (size_t)pb->n_batched_tokens * QROW * 4),
          "step %llu layer %u: attention outputs differ", (unsigned long long)pb->step, l);
  *compressed_before = false;
  for (uint32_t i = 0; i < pb->n_seqs; i++) {
    CHECK(!lock || (oa[i].id == ob[i].id && oa[i].compressed == ob[i].compressed &&
                    oa[i].tokens_evicted == ob[i].tokens_evicted &&
                    oa[i].blocks_freed == ob[i].blocks_freed),
          "step %llu: outputs of %lld differ (compressed %d/%d, evicted %llu/%llu, freed %u/%u)",
          (unsigned long long)pb->step, (long long)ob[i].id, oa[i].compressed, ob[i].compressed,
          (unsigned long long)oa[i].tokens_evicted, (unsigned long long)ob[i].tokens_evicted,
          oa[i].blocks_freed, ob[i].blocks_freed);
    rs->compressions += ob[i].compressed;
    *compressed_before |= ob[i].compressed;
  }
  if (lock) {
    CHECK(rkv_sched_report(a->s, oa, pa->n_seqs) == RKV_OK, "%s", rkv_sched_last_error(a->s));
    CHECK(rkv_exec_check(a->x) == RKV_OK, "%s", rkv_exec_last_error(a->x));
  }
  CHECK(rkv_sched_report(b->s, ob, pb->n_seqs) == RKV_OK, "%s", rkv_sched_last_error(b->s));
  if (lock && same_cache(a, b, pa)) return 1;
  CHECK(rkv_exec_check(b->x) == RKV_OK, "%s", rkv_exec_last_error(b->x));
  CHECK(rkv_sched_check(b->s) == RKV_OK, "%s", rkv_sched_last_error(b->s));
  rs->steps++;
  *last = pb;
  rkv_sched_metrics m;
  rkv_sched_get_metrics(b->s, &m);
  *done = !pb->n_seqs && !pb->n_finished && !m.num_running && !m.num_waiting && !m.num_swapped;
  return 0;
}

/* Forks a running decode in both engines (the same child id, the same step). */
static int fork_both(engine *a, engine *b, const rkv_sched_plan *p, run_stats *rs, int64_t *child) {
  if (!p->n_decode || *child >= 1000 + 8) return 0;
  const rkv_sched_seq *q = &p->seqs[rs->steps / 5 % p->n_decode];
  rkv_sched_request_info info;
  if (rkv_sched_get_request(b->s, q->id, &info) != RKV_OK || info.state != RKV_SCHED_RUNNING)
    return 0;
  rkv_status sb = rkv_sched_fork(b->s, q->id, *child, info.generated + 40);
  rkv_status sa = a->s ? rkv_sched_fork(a->s, q->id, *child, info.generated + 40) : sb;
  CHECK(sa == sb, "fork: %d vs %d", sa, sb);
  if (sa == RKV_OK) {
    (*child)++;
    rs->forks++;
  }
  return 0;
}

static int run(const char *wl, rkv_evict_policy pol) {
  setup su;
  memset(&su, 0, sizeof su);
  su.optimistic = !strcmp(wl, "swap");
  su.swap = su.optimistic;
  su.forks = !strcmp(wl, "fork");
  su.prefix = !strcmp(wl, "prefix");
  su.ev = (rkv_evict_params)RKV_EVICT_PARAMS_INIT;
  su.ev.policy = pol;
  su.ev.budget = 24;
  su.ev.window = 4;
  su.ev.buffer = 8;
  engine a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  xfer t;
  memset(&t, 0, sizeof t);
  float *ref = malloc(sizeof(float) * LAYERS * MAX_ROWS * QROW);
  rkv_sched_output oa[MAX_SEQS], ob[MAX_SEQS];
  run_stats rs;
  memset(&rs, 0, sizeof rs);
  int ret = 1;
  bool done = false, compressed_before = false;
  int64_t child = 1000;
  /* With forks, a compression of shared blocks takes fresh blocks for every shared leading
   * block on the device path (uniform compaction before the batched launch), where the CPU
   * path's per-layer compaction may keep some in place: the block counts, and so the plans,
   * part ways. There the device engine runs alone, with every check but the comparison. */
  const bool lock = !(su.forks && pol != RKV_EVICT_FULL);
  if (!ref || (lock && engine_make(&a, &su, false)) || engine_make(&b, &su, true) ||
      xfer_make(&t, b.be))
    goto out;
  while (!done && rs.steps < 5000) {
    const rkv_sched_plan *last = NULL;
    if (one_step(&a, &b, &t, ref, oa, ob, &rs, &compressed_before, &done, &last)) goto out;
    if (su.forks && !done && rs.steps % 5 == 0 && fork_both(&a, &b, last, &rs, &child)) goto out;
  }
  ret = 0;
out:
  printf(
      "exec_device %s %s%s: %llu steps, %llu compressions, %llu quiet decode steps, %llu swaps, "
      "%llu forks, %llu hazards: %s\n",
      wl, rkv_evict_policy_name(pol), lock ? "" : " (device alone)", (unsigned long long)rs.steps,
      (unsigned long long)rs.compressions, (unsigned long long)rs.quiet_decodes,
      (unsigned long long)rs.swaps, (unsigned long long)rs.forks,
      (unsigned long long)(b.be ? rkv_emu_hazards(b.be) : 0), ret ? "FAILED" : "ok");
  if (!ret && b.be && rkv_emu_hazards(b.be)) {
    fprintf(stderr, "FAIL: hazards: %s\n", rkv_emu_hazard_text(b.be));
    ret = 1;
  }
  if (!ret && !done) {
    fprintf(stderr, "FAIL: the run did not finish\n");
    ret = 1;
  }
  /* the comparison must cover what it claims */
  if (!ret && (pol != RKV_EVICT_FULL && !rs.compressions)) {
    fprintf(stderr, "FAIL: no compression happened\n");
    ret = 1;
  }
  if (!ret && !rs.quiet_decodes) {
    fprintf(stderr, "FAIL: no decode step without table changes (delta check not exercised)\n");
    ret = 1;
  }
  if (!ret && su.forks && !rs.forks) {
    fprintf(stderr, "FAIL: the fork workload forked nothing\n");
    ret = 1;
  }
  if (!ret && su.swap && !rs.swaps) {
    fprintf(stderr, "FAIL: the swap workload swapped nothing\n");
    ret = 1;
  }
  if (!ret && su.prefix) {
    rkv_sched_prefix_stats ps = {sizeof ps, 0, 0, 0, 0, 0};
    if (rkv_sched_get_prefix_stats(b.s, &ps) != RKV_OK || ps.admissions_hit < REQUESTS / 2) {
      fprintf(stderr, "FAIL: the prefix workload shared %llu of %llu admissions\n",
              (unsigned long long)ps.admissions_hit, (unsigned long long)ps.admissions);
      ret = 1;
    }
  }
  xfer_free(&t);
  engine_free(&a);
  engine_free(&b);
  free(ref);
  return ret;
}

/* Host arrays where the device path wants DEVICE memory are refused (the emulator faults
 * them as an out-of-buffer kernel access), as are device rows too short for the plan. */
static int refusals(void) {
  setup su;
  memset(&su, 0, sizeof su);
  su.ev = (rkv_evict_params)RKV_EVICT_PARAMS_INIT;
  su.ev.budget = 24;
  su.ev.window = 4;
  su.ev.buffer = 8;
  engine b;
  memset(&b, 0, sizeof b);
  xfer t;
  memset(&t, 0, sizeof t);
  int ret = 1;
  static float q[MAX_ROWS * QROW], k[MAX_ROWS * KROW], v[MAX_ROWS * KROW], o[MAX_ROWS * QROW];
  const rkv_sched_plan *p = NULL;
  if (engine_make(&b, &su, true) || xfer_make(&t, b.be)) goto out;
  if (rkv_sched_step(b.s, &p) != RKV_OK || !p->n_batched_tokens ||
      rkv_exec_begin(b.x, p) != RKV_OK) {
    fprintf(stderr, "FAIL: refusals: first step\n");
    goto out;
  }
  make_qkv(p, 0, q, k, v);
  rkv_status st = rkv_exec_layer(b.x, 0, q, k, v, o);
  if (st != RKV_ERR_INVALID_ARG || !rkv_emu_hazards(b.be) ||
      !strstr(rkv_exec_last_error(b.x), "device access")) {
    fprintf(stderr, "FAIL: host pointers on the device path: %s (%s), %llu hazards\n",
            rkv_status_str(st), rkv_exec_last_error(b.x),
            (unsigned long long)rkv_emu_hazards(b.be));
    goto out;
  }
  /* one row past the end of a DEVICE buffer is refused the same way */
  rkv_buffer *small = NULL;
  if (rkv_buffer_create(b.be, RKV_BUFFER_DEVICE, 64, &small) != RKV_OK) goto out;
  st = rkv_exec_layer(b.x, 0, rkv_buffer_ptr(t.q), rkv_buffer_ptr(t.k), rkv_buffer_ptr(small),
                      rkv_buffer_ptr(t.out));
  rkv_buffer_destroy(small);
  if (st != RKV_ERR_INVALID_ARG) {
    fprintf(stderr, "FAIL: a short V buffer: %s\n", rkv_status_str(st));
    goto out;
  }
  /* the refused calls ran nothing: the layer is still to run, and finish says so */
  rkv_sched_output outs[MAX_SEQS];
  memset(outs, 0, sizeof outs);
  st = rkv_exec_finish(b.x, outs, p->n_seqs);
  if (st != RKV_ERR_STATE) {
    fprintf(stderr, "FAIL: finish after refused layers: %s\n", rkv_status_str(st));
    goto out;
  }
  printf("exec_device refusals: ok\n");
  ret = 0;
out:
  xfer_free(&t);
  engine_free(&b);
  return ret;
}

int main(int argc, char **argv) {
  if (argc > 2) {
    rkv_evict_policy p;
    if (rkv_evict_policy_parse(argv[2], &p) != RKV_OK) return 2;
    return run(argv[1], p);
  }
  static const char *wls[] = {"reserve", "swap", "fork", "prefix"};
  static const rkv_evict_policy pols[] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O,
                                          RKV_EVICT_STREAMING, RKV_EVICT_FULL};
  int bad = refusals();
  for (size_t w = 0; w < 4; w++)
    for (size_t p = 0; p < 5; p++) bad |= run(wls[w], pols[p]);
  return bad || fails ? 1 : 0;
}
