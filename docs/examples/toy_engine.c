/* A toy serving engine over librkv's public headers only: a 4-layer "model" whose Q/K/V rows
 * are a hash of (request, position, layer, head), a continuous-batching scheduler, and the
 * executor. docs/EMBEDDING.md walks through serve(), the per-step glue an engine writes; the
 * rest of this file is the toy model and the test harness (workloads, checks).
 *
 *   toy_engine WORKLOAD [POLICY]
 *     WORKLOAD  reserve | optimistic | swap | fork | fork-optimistic
 *     POLICY    full | rkv | snapkv | streaming | h2o (default rkv)
 *
 * Exit 0 when every request finished with every check passing after every step: the
 * scheduler's and block manager's invariants, the executor's (its table mirror equals the
 * block manager's tables, the query windows are consistent), and the eviction bound (after a
 * sequence's first compression no stream holds more than B + buffer tokens). Built and run by
 * ctest (tests/unit/scheduler/tests.cmake). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/executor.h>
#include <rkv/scheduler.h>

enum { LAYERS = 4, KV_HEADS = 2, Q_HEADS = 4, HEAD_DIM = 16, BLOCK = 4, MAX_SEQS = 32 };
enum { REQUESTS = 48, MAX_ROWS = 256 };

typedef struct toy_model {
  float q[MAX_ROWS * Q_HEADS * HEAD_DIM], out[MAX_ROWS * Q_HEADS * HEAD_DIM];
  float k[MAX_ROWS * KV_HEADS * HEAD_DIM], v[MAX_ROWS * KV_HEADS * HEAD_DIM];
  double eos_rate; /* chance that a sampled token is EOS */
} toy_model;

static float hashf(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (float)((double)((z ^ (z >> 31)) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The model: the Q/K/V rows of layer l for the plan's tokens, in plan order. */
static void toy_qkv(toy_model *tm, const rkv_sched_plan *p, uint32_t l) {
  uint32_t r = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    for (uint32_t t = 0; t < p->seqs[i].n_tokens; t++, r++) {
      const uint64_t tok = (uint64_t)p->seqs[i].id << 32 | (uint64_t)(p->seqs[i].pos + t);
      for (uint32_t e = 0; e < Q_HEADS * HEAD_DIM; e++)
        tm->q[r * Q_HEADS * HEAD_DIM + e] = hashf(tok, l * 4096u + e);
      for (uint32_t e = 0; e < KV_HEADS * HEAD_DIM; e++) {
        tm->k[r * KV_HEADS * HEAD_DIM + e] = hashf(tok, 100000u + l * 4096u + e);
        tm->v[r * KV_HEADS * HEAD_DIM + e] = hashf(tok, 200000u + l * 4096u + e);
      }
    }
}

/* Sampling: whether the token sampled for seqs[i] ends it. */
static bool toy_eos(const toy_model *tm, const rkv_sched_seq *q) {
  return (hashf((uint64_t)q->id, (uint64_t)q->pos + 7777u) + 1.0) / 2.0 < tm->eos_rate;
}

typedef struct harness harness;
static int after_step(harness *h, const rkv_sched_plan *p, const rkv_sched_output *outs);

static int fail(const char *what, const char *why) {
  fprintf(stderr, "toy_engine: %s: %s\n", what, why);
  return 1;
}

/* ---- the engine loop: all the per-step glue an embedder writes besides its model ---- */
static int serve(rkv_sched *s, rkv_exec *x, toy_model *tm, rkv_sched_output *outs, harness *h) {
  for (;;) {
    const rkv_sched_plan *p = NULL;
    if (rkv_sched_step(s, &p) != RKV_OK) return fail("step", rkv_sched_last_error(s));
    /* every plan is executed, an empty one too: it carries finished ids, forks and swaps */
    if (rkv_exec_begin(x, p) != RKV_OK) return fail("begin", rkv_exec_last_error(x));
    for (uint32_t l = 0; l < LAYERS && p->n_seqs; l++) {
      toy_qkv(tm, p, l); /* attention output of layer l - 1 would feed this in a real model */
      if (rkv_exec_layer(x, l, tm->q, tm->k, tm->v, tm->out) != RKV_OK)
        return fail("layer", rkv_exec_last_error(x));
    }
    for (uint32_t i = 0; i < p->n_seqs; i++)
      outs[i].eos = p->seqs[i].samples && toy_eos(tm, &p->seqs[i]);
    if (rkv_exec_finish(x, outs, p->n_seqs) != RKV_OK)
      return fail("finish", rkv_exec_last_error(x));
    if (rkv_sched_report(s, outs, p->n_seqs) != RKV_OK)
      return fail("report", rkv_sched_last_error(s));
    rkv_sched_metrics m;
    rkv_sched_get_metrics(s, &m);
    if (after_step(h, p, outs)) return 1;
    /* done once nothing is live and the plan that carried the last finished ids has run */
    if (!p->n_seqs && !p->n_finished && !m.num_running && !m.num_waiting && !m.num_swapped)
      return 0;
  }
}
/* ---- end of the engine loop ---- */

struct harness {
  rkv_sched *s;
  rkv_exec *x;
  rkv_blockmgr *bm;
  rkv_evict_params ev;
  bool forks;
  int64_t next_child;
  uint64_t steps, compressed_checks, forked;
  bool was_compressed[4096]; /* by id: compressed in an earlier step */
};

/* Checks after every step, and the forks of the fork workloads. */
static int after_step(harness *h, const rkv_sched_plan *p, const rkv_sched_output *outs) {
  h->steps++;
  if (rkv_sched_check(h->s) != RKV_OK) return fail("sched check", rkv_sched_last_error(h->s));
  if (rkv_exec_check(h->x) != RKV_OK) return fail("exec check", rkv_exec_last_error(h->x));
  /* a recompute preemption drops the KV: the next admission prefills anew before it compresses */
  for (uint32_t i = 0; i < p->n_dropped; i++) h->was_compressed[p->dropped[i]] = false;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const int64_t id = p->seqs[i].id;
    const bool before = h->was_compressed[id];
    h->was_compressed[id] |= outs[i].compressed;
    if (!before) continue;
    h->compressed_checks++;
    if (p->seqs[i].kv_len > h->ev.budget + h->ev.buffer) {
      char why[128];
      snprintf(why, sizeof why, "request %lld holds %d tokens after a compression (B + buffer %d)",
               (long long)p->seqs[i].id, p->seqs[i].kv_len, h->ev.budget + h->ev.buffer);
      return fail("bound", why);
    }
  }
  /* Fork a running decode every few steps: a child sharing all its parent's blocks. */
  if (h->forks && h->steps % 5 == 0 && h->next_child < 1016 && p->n_decode) {
    const rkv_sched_seq *q = &p->seqs[h->steps / 5 % p->n_decode];
    rkv_sched_request_info info;
    if (rkv_sched_get_request(h->s, q->id, &info) == RKV_OK && info.state == RKV_SCHED_RUNNING) {
      rkv_status st = rkv_sched_fork(h->s, q->id, h->next_child, info.generated + 60);
      if (st == RKV_OK) {
        h->was_compressed[h->next_child] = h->was_compressed[q->id];
        h->next_child++;
        h->forked++;
      } else if (st != RKV_ERR_NO_BLOCKS && st != RKV_ERR_CAPACITY) {
        return fail("fork", rkv_sched_last_error(h->s));
      }
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *wl = argc > 1 ? argv[1] : "reserve";
  rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
  if (argc > 2 && rkv_evict_policy_parse(argv[2], &ev.policy) != RKV_OK)
    return fail("usage", "policy is one of full, rkv, snapkv, streaming, h2o");
  ev.budget = 32;
  ev.window = 4;
  ev.buffer = 8;
  const bool optimistic = strstr(wl, "optimistic") != NULL, swap = !strcmp(wl, "swap");
  const bool forks = !strncmp(wl, "fork", 4);
  if (!optimistic && !swap && !forks && strcmp(wl, "reserve"))
    return fail("usage", "workload is reserve, optimistic, swap, fork or fork-optimistic");

  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = optimistic || swap ? 600 : 900;
  bc.block_size = BLOCK;
  bc.num_layers = LAYERS;
  bc.num_kv_heads = KV_HEADS;
  bc.head_dim = HEAD_DIM;
  bc.dtype = RKV_DTYPE_F32;
  bc.max_seqs = 4096;
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  bec.num_threads = 1;
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = MAX_ROWS;
  sc.max_seqs = MAX_SEQS;
  sc.max_prefill_chunk = 24;
  sc.admission = optimistic || swap ? RKV_SCHED_OPTIMISTIC : RKV_SCHED_RESERVE;
  sc.preempt = swap ? RKV_SCHED_PREEMPT_SWAP : RKV_SCHED_PREEMPT_RECOMPUTE;
  sc.host_blocks = swap ? 400 : 0;
  sc.evict = ev;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = Q_HEADS;
  xc.max_seqs = MAX_SEQS;
  xc.max_stream_tokens = 512;
  xc.host_blocks = sc.host_blocks;
  xc.evict = ev;

  rkv_blockmgr *bm = NULL;
  rkv_backend *be = NULL;
  rkv_kv_pool *pool = NULL;
  rkv_sched *s = NULL;
  rkv_exec *x = NULL;
  char err[256] = "";
  int ret = 1;
  rkv_kv_layout lay;
  toy_model *tm = calloc(1, sizeof *tm);
  rkv_sched_output *outs = calloc(MAX_SEQS, sizeof *outs);
  if (!tm || !outs || rkv_blockmgr_create(&bc, &bm) != RKV_OK) goto done;
  lay = rkv_blockmgr_kv_layout(bm);
  if (rkv_backend_create(&bec, &be) != RKV_OK || rkv_kv_pool_create(be, &lay, bc.num_blocks, &pool))
    goto done;
  if (rkv_sched_create(&sc, bm, &s, err, sizeof err) != RKV_OK ||
      rkv_exec_create(&xc, bm, pool, &x, err, sizeof err) != RKV_OK) {
    fail("create", err);
    goto done;
  }
  tm->eos_rate = 0.01;
  for (int64_t i = 0; i < REQUESTS; i++) {
    rkv_sched_request rq = {i, 8 + (i * 7) % 40, 40 + (i * 13) % 90, 0, (double)i, NULL};
    if (rkv_sched_add_request(s, &rq) != RKV_OK) {
      fail("add_request", rkv_sched_last_error(s));
      goto done;
    }
  }
  static harness h;
  h = (harness){s, x, bm, ev, forks, 1000, 0, 0, 0, {false}};
  ret = serve(s, x, tm, outs, &h);
  rkv_sched_metrics m;
  rkv_sched_get_metrics(s, &m);
  printf(
      "toy_engine %s %s: %llu steps, %llu finished, %llu forks, %llu preemptions "
      "(%llu swap), %llu aborted, %llu compressions, %llu bound checks, query window %zu "
      "B/seq: %s\n",
      wl, rkv_evict_policy_name(ev.policy), (unsigned long long)h.steps,
      (unsigned long long)m.num_finished, (unsigned long long)h.forked,
      (unsigned long long)m.num_preemptions, (unsigned long long)m.num_preempt_swap,
      (unsigned long long)m.num_aborted, (unsigned long long)m.compressions,
      (unsigned long long)h.compressed_checks, rkv_exec_qwindow_bytes_per_seq(x),
      ret ? "FAILED" : "ok");
  if (!ret && m.num_finished + m.num_aborted != REQUESTS + h.forked)
    ret = fail("result", "not every request finished");
  if (!ret && rkv_blockmgr_free_blocks(bm) != bc.num_blocks) ret = fail("result", "blocks leaked");
done:
  rkv_exec_destroy(x);
  rkv_sched_destroy(s);
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(be);
  rkv_blockmgr_destroy(bm);
  free(outs);
  free(tm);
  return ret;
}
