/* `rkv sim` compute engines. `none` keeps real block accounting but does no tensor math: the
 * executor without a pool (bookkeeping mode) cuts every stream of a flagged sequence to the
 * budget (which tokens survive does not change any block count). `cpu` runs the library's plan
 * executor (rkv/executor.h) on a CPU KV pool: this file only synthesises each layer's Q/K/V rows
 * (see sim_tokens and docs/SIMULATOR.md) and measures; the executor does swaps, copies, K/V writes,
 * paged attention and compressions. `cuda` is the same executor over a CUDA KV pool: the rows
 * are synthesised into pinned staging and copied into DEVICE buffers (<rkv/buffer.h>), and the
 * executor runs the kernels; `emu` is that engine on the emulated device (the CPU kernels behind
 * device memory), which tests its host logic without a GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/executor.h>

#include "rkv_tool.h"
#include "sim.h"

struct sim_engine {
  sim_compute kind;
  sim_model m;
  rkv_blockmgr *bm;
  rkv_evict_params ev;
  uint64_t seed;
  sim_engine_times times;
  /* cpu */
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_exec *x;
  const sim_req *reqs;
  uint32_t n_reqs;
  int32_t **tokens;        /* [n_reqs] by id, made on first use */
  const sim_req **by_id;   /* [n_reqs] request records by id */
  float *ek, *ev_tab, *mu; /* [L][Hkv][V][d], [L][Hkv][V][d], [L][Hkv][d] */
  float *q, *k, *v, *out;  /* one layer's rows, token-major */
  size_t q_cap, k_cap, v_cap, out_cap;
  float *dup_k;
  size_t dup_cap;
  /* cuda / emu: pinned staging in two halves (the host fills one layer's rows while the
   * copies of the previous layer may still be queued) and the DEVICE rows */
  rkv_buffer *stage, *dq, *dk, *dv, *dout;
  bool half_busy[2];
};

static uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Unit-variance noise in [-sqrt(3), sqrt(3)] from a counter hash. */
static float noise(uint64_t key, uint32_t e) {
  uint64_t z = mix(key ^ ((uint64_t)e * 0xD1B54A32D192ED03ull));
  return (float)(((double)(z >> 11) * (1.0 / 9007199254740992.0) - 0.5) * 3.4641016151377544);
}

static float gauss(uint64_t *s) {
  double u1 = ((double)(mix(*s += 1) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  double u2 = ((double)(mix(*s += 1) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* Grows *p (realloc, capacity doubling from 64) to hold `need` elements of `elem` bytes;
 * prints and returns false when out of memory (*p intact). */
static bool sim_grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t nc = *cap ? *cap : 64;
  while (nc < need) nc *= 2;
  void *np = realloc(*p, nc * elem);
  if (!np) {
    fprintf(stderr, "rkv sim: out of memory (%zu bytes)\n", nc * elem);
    return false;
  }
  *p = np;
  *cap = nc;
  return true;
}

/* The synthetic model's embedding tables (shared by the cpu and cuda engines). */
static bool make_tables(sim_engine *e, const sim_model *m, uint64_t seed, uint32_t n_reqs) {
  e->tokens = calloc(n_reqs, sizeof(int32_t *));
  e->by_id = calloc(n_reqs ? n_reqs : 1, sizeof *e->by_id);
  if (!e->by_id) {
    fprintf(stderr, "rkv sim: out of memory for the request index\n");
    return false;
  }
  size_t d = m->head_dim, tab = (size_t)m->layers * m->kv_heads * SIM_VOCAB * d;
  e->ek = malloc(tab * sizeof(float));
  e->ev_tab = malloc(tab * sizeof(float));
  e->mu = malloc((size_t)m->layers * m->kv_heads * d * sizeof(float));
  if (!e->tokens || !e->ek || !e->ev_tab || !e->mu) {
    fprintf(stderr, "rkv sim: out of memory for the synthetic model tables\n");
    return false;
  }
  /* ids are trace indices 0..n-1 (the array is sorted by arrival) */
  for (uint32_t i = 0; i < n_reqs; i++)
    if (e->reqs[i].id >= 0 && (uint64_t)e->reqs[i].id < n_reqs)
      e->by_id[e->reqs[i].id] = &e->reqs[i];
  uint64_t s = seed * 31 + 7;
  for (size_t i = 0; i < tab; i++) e->ek[i] = gauss(&s);
  for (size_t i = 0; i < tab; i++) e->ev_tab[i] = gauss(&s);
  for (size_t i = 0; i < (size_t)m->layers * m->kv_heads * d; i++) e->mu[i] = gauss(&s);
  return true;
}

/* The library's executor over the pool (NULL: bookkeeping only). Its table mirror starts at
 * the policy's B + buffer per stream and grows itself when a prompt is longer. */
static bool make_exec(sim_engine *e, const sim_model *m, rkv_blockmgr *bm, rkv_kv_pool *pool,
                      const rkv_evict_params *ev, rkv_evict_granularity g, uint32_t host_blocks,
                      uint32_t max_seqs) {
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.granularity = g;
  xc.num_q_heads = m->q_heads;
  xc.max_seqs = max_seqs;
  xc.host_blocks = host_blocks;
  xc.evict = *ev;
  char err[256];
  if (rkv_exec_create(&xc, bm, pool, &e->x, err, sizeof err) == RKV_OK) return true;
  if (e->kind == SIM_COMPUTE_CUDA)
    fprintf(stderr,
            "rkv sim: --compute cuda: %s (the CUDA kernels take head_dim 64/128/256, block "
            "size 16/32, window <= 256)\n",
            err);
  else
    fprintf(stderr, "rkv sim: executor: %s\n", err);
  return false;
}

/* The backend and KV pool of a computing engine. A missing GPU is one line on stderr. */
static bool make_pool(sim_engine *e, sim_compute kind, rkv_blockmgr *bm, int threads) {
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = kind == SIM_COMPUTE_CUDA ? RKV_BACKEND_CUDA : RKV_BACKEND_CPU;
  bc.num_threads = threads;
  rkv_status st = kind == SIM_COMPUTE_EMU ? rkv_backend_create_emulated(&bc, &e->be)
                                          : rkv_backend_create(&bc, &e->be);
  if (st != RKV_OK && kind == SIM_COMPUTE_CUDA) {
    fprintf(stderr,
            rkv_build_has_cuda()
                ? "rkv sim: --compute cuda: no usable GPU (CUDA backend: %s); use --compute cpu "
                  "or none\n"
                : "rkv sim: --compute cuda: this build of rkv has no CUDA (configure with nvcc "
                  "available and RKV_ENABLE_CUDA=ON); use --compute cpu or none (%s)\n",
            rkv_status_str(st));
    return false;
  }
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(bm);
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(bm);
  if (st == RKV_OK) st = rkv_kv_pool_create(e->be, &lay, c->num_blocks, &e->pool);
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: %s KV pool of %u blocks (%.3f GiB): %s (%s)\n",
          kind == SIM_COMPUTE_CUDA ? "GPU" : "CPU", c->num_blocks,
          (double)c->num_blocks * (double)rkv_kv_block_bytes(&lay) / 1073741824.0,
          rkv_status_str(st), e->be ? rkv_backend_last_error(e->be) : "");
  return false;
}

/* The device engines' transfer buffers, empty until the first step sizes them. */
static bool make_device_rows(sim_engine *e) {
  rkv_buffer **dev[] = {&e->dq, &e->dk, &e->dv, &e->dout};
  rkv_status st = rkv_buffer_create(e->be, RKV_BUFFER_HOST_PINNED, 0, &e->stage);
  for (size_t i = 0; i < 4 && st == RKV_OK; i++)
    st = rkv_buffer_create(e->be, RKV_BUFFER_DEVICE, 0, dev[i]);
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: device buffers: %s (%s)\n", rkv_status_str(st),
          rkv_backend_last_error(e->be));
  return false;
}

bool sim_engine_create(sim_compute kind, const sim_model *m, rkv_blockmgr *bm,
                       const rkv_evict_params *ev, rkv_evict_granularity granularity,
                       uint32_t host_blocks, uint32_t max_seqs, uint64_t seed, const sim_req *reqs,
                       uint32_t n_reqs, int threads, sim_engine **out) {
  *out = NULL;
  sim_engine *e = calloc(1, sizeof *e);
  if (!e) return false;
  e->kind = kind;
  e->m = *m;
  e->bm = bm;
  e->ev = *ev;
  e->seed = seed;
  e->reqs = reqs;
  e->n_reqs = n_reqs;
  const bool ok = kind == SIM_COMPUTE_NONE
                      ? make_exec(e, m, bm, NULL, ev, granularity, host_blocks, max_seqs)
                      : make_pool(e, kind, bm, threads) &&
                            (kind == SIM_COMPUTE_CPU || make_device_rows(e)) &&
                            make_exec(e, m, bm, e->pool, ev, granularity, host_blocks, max_seqs) &&
                            make_tables(e, m, seed, n_reqs);
  if (!ok) {
    sim_engine_destroy(e);
    return false;
  }
  *out = e;
  return true;
}

void sim_engine_destroy(sim_engine *e) {
  if (!e) return;
  if (e->tokens)
    for (uint32_t i = 0; i < e->n_reqs; i++) free(e->tokens[i]);
  free(e->tokens);
  free(e->by_id);
  free(e->ek);
  free(e->ev_tab);
  free(e->mu);
  free(e->q);
  free(e->k);
  free(e->v);
  free(e->out);
  free(e->dup_k);
  rkv_exec_destroy(e->x);
  rkv_buffer *bufs[] = {e->stage, e->dq, e->dk, e->dv, e->dout};
  for (size_t i = 0; i < 5; i++) rkv_buffer_destroy(bufs[i]);
  rkv_kv_pool_destroy(e->pool);
  rkv_backend_destroy(e->be);
  free(e);
}

const sim_engine_times *sim_engine_get_times(const sim_engine *e) {
  return &e->times;
}

/* ---- cpu ------------------------------------------------------------------------------- */

static const sim_req *req_of(const sim_engine *e, int64_t id) {
  return id >= 0 && (uint64_t)id < e->n_reqs ? e->by_id[id] : NULL;
}

static const int32_t *tokens_of(sim_engine *e, int64_t id) {
  if (id < 0 || (uint64_t)id >= e->n_reqs) return NULL;
  if (!e->tokens[id]) {
    const sim_req *r = req_of(e, id);
    if (!r) return NULL;
    int64_t len = r->prompt + r->gen + 1;
    e->tokens[id] = malloc(sizeof(int32_t) * (size_t)len);
    if (!e->tokens[id]) return NULL;
    sim_req_tokens(e->seed, r, e->tokens[id], len);
  }
  return e->tokens[id];
}

/* K and V rows of the token at logical position pos (layer l, kv head h). */
static void make_kv(const sim_engine *e, int64_t id, int64_t pos, int32_t tok, uint32_t l,
                    uint32_t h, float *k, float *v) {
  size_t d = e->m.head_dim;
  size_t base = (((size_t)l * e->m.kv_heads + h) * SIM_VOCAB + (size_t)tok) * d;
  const float *mu = e->mu + ((size_t)l * e->m.kv_heads + h) * d;
  uint64_t key = mix((uint64_t)id * 0x100000001B3ull ^ (uint64_t)pos) ^ ((uint64_t)l << 40) ^
                 ((uint64_t)h << 52);
  for (size_t i = 0; i < d; i++) {
    k[i] = e->ek[base + i] + 0.5f * mu[i] + 0.3f * noise(key, (uint32_t)i);
    v[i] = e->ev_tab[base + i] + 0.3f * noise(key ^ 0xABCDEFull, (uint32_t)i);
  }
}

static void make_q(const sim_engine *e, int64_t id, int64_t pos, int32_t tok, uint32_t l,
                   float *q) {
  size_t d = e->m.head_dim;
  uint32_t G = e->m.q_heads / e->m.kv_heads;
  for (uint32_t j = 0; j < e->m.q_heads; j++) {
    uint32_t h = j / G;
    size_t base = (((size_t)l * e->m.kv_heads + h) * SIM_VOCAB + (size_t)tok) * d;
    uint64_t key = mix((uint64_t)id * 0x100000001B3ull ^ (uint64_t)pos) ^ ((uint64_t)l << 40) ^
                   ((uint64_t)j << 48) ^ 0x5151ull;
    for (size_t i = 0; i < d; i++)
      q[(size_t)j * d + i] = 0.7f * e->ek[base + i] + 0.7f * noise(key, (uint32_t)i);
  }
}

/* Redundancy left in a cache: for the keys of stream (layer 0, kv head 0), the number of
 * near-duplicates (cosine > 0.5, R-KV's threshold T) each has among the others, summed.
 * Counted before and after each compression, so the report can show how much redundancy
 * each policy removes. O(n^2 d) per compression: a diagnostic for small models. */
static void dup_stat(sim_engine *e, int64_t seq, uint64_t *dups, uint64_t *keys) {
  int32_t n = 0;
  if (rkv_blockmgr_stream_len(e->bm, seq, 0, 0, &n) != RKV_OK || n < 2) return;
  size_t d = e->m.head_dim;
  size_t need = (size_t)n * d;
  if (!sim_grow((void **)&e->dup_k, &e->dup_cap, need, sizeof(float))) return;
  const rkv_kv_layout *lay = rkv_kv_pool_layout(e->pool);
  const char *base = rkv_kv_pool_base(e->pool);
  for (int32_t j = 0; j < n; j++) {
    int64_t slot = 0;
    (void)rkv_blockmgr_stream_slot(e->bm, seq, 0, 0, j, &slot);
    const char *blk = base + (size_t)(slot / lay->block_size) * rkv_kv_block_bytes(lay);
    const void *row = blk + rkv_kv_k_offset(lay, (uint32_t)(slot % lay->block_size));
    double nn = 0.0;
    float *k = e->dup_k + (size_t)j * d;
    for (size_t t = 0; t < d; t++) {
      k[t] = rkv_dtype_load(lay->dtype, row, t);
      nn += (double)k[t] * k[t];
    }
    float inv = (float)(1.0 / (sqrt(nn) + 1e-8));
    for (size_t t = 0; t < d; t++) k[t] *= inv;
  }
  for (int32_t i = 0; i < n; i++) {
    for (int32_t j = 0; j < n; j++) {
      if (i == j) continue;
      float dot = 0.0f;
      for (size_t t = 0; t < d; t++)
        dot += e->dup_k[(size_t)i * d + t] * e->dup_k[(size_t)j * d + t];
      if (dot > 0.5f) (*dups)++;
    }
  }
  *keys += (uint64_t)n;
}

static bool exec_ok(const sim_engine *e, rkv_status st, const char *what) {
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: %s: %s (%s)\n", what, rkv_status_str(st), rkv_exec_last_error(e->x));
  return false;
}

/* One layer's synthetic rows for the whole plan, token-major as the executor takes them. */
static bool synth_layer(sim_engine *e, const rkv_sched_plan *p, uint32_t l, float *qr, float *k,
                        float *v) {
  const size_t d = e->m.head_dim, Hkv = e->m.kv_heads, Hq = e->m.q_heads;
  size_t r = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    const int32_t *tk = tokens_of(e, q->id);
    const sim_req *rq = req_of(e, q->id);
    if (!tk || !rq) return false;
    for (uint32_t t = 0; t < q->n_tokens; t++, r++) {
      const int64_t pos = q->pos + t;
      /* a shared system prompt has one K/V for every request that starts with it */
      const int64_t owner = sim_token_owner(rq, pos);
      for (uint32_t h = 0; h < Hkv; h++)
        make_kv(e, owner, pos, tk[pos], l, h, k + (r * Hkv + h) * d, v + (r * Hkv + h) * d);
      make_q(e, owner, pos, tk[pos], l, qr + r * Hq * d);
    }
  }
  return true;
}

static void sim_engine_drop_tokens(sim_engine *e, int64_t id) {
  if (id >= 0 && (uint64_t)id < e->n_reqs) {
    free(e->tokens[id]);
    e->tokens[id] = NULL;
  }
}

static bool launch_cpu(sim_engine *e, const rkv_sched_plan *p) {
  for (uint32_t i = 0; i < p->n_finished; i++) sim_engine_drop_tokens(e, p->finished[i]);
  double t0 = rt_now();
  if (!exec_ok(e, rkv_exec_begin(e->x, p), "executor begin")) return false;
  e->times.swap += rt_now() - t0;
  const size_t rows = p->n_batched_tokens, d = e->m.head_dim;
  if (!sim_grow((void **)&e->q, &e->q_cap, rows * e->m.q_heads * d + 1, sizeof(float)) ||
      !sim_grow((void **)&e->out, &e->out_cap, rows * e->m.q_heads * d + 1, sizeof(float)) ||
      !sim_grow((void **)&e->k, &e->k_cap, rows * e->m.kv_heads * d + 1, sizeof(float)) ||
      !sim_grow((void **)&e->v, &e->v_cap, rows * e->m.kv_heads * d + 1, sizeof(float)))
    return false;
  for (uint32_t l = 0; l < e->m.layers && rows; l++) {
    double t1 = rt_now();
    if (!synth_layer(e, p, l, e->q, e->k, e->v)) return false;
    double t2 = rt_now();
    e->times.kv_synth += t2 - t1;
    if (!exec_ok(e, rkv_exec_layer(e->x, l, e->q, e->k, e->v, e->out), "executor layer"))
      return false;
    e->times.attn += rt_now() - t2;
  }
  return true;
}

static bool finish_cpu(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs) {
  /* compression after this step's attention, with the redundancy diagnostic around it */
  double t3 = rt_now();
  for (uint32_t i = 0; i < p->n_seqs; i++)
    if (p->seqs[i].compress)
      dup_stat(e, p->seqs[i].id, &e->times.dup_before, &e->times.keys_before);
  if (!exec_ok(e, rkv_exec_finish(e->x, outs, p->n_seqs), "executor finish")) return false;
  for (uint32_t i = 0; i < p->n_seqs; i++)
    if (outs[i].compressed) dup_stat(e, outs[i].id, &e->times.dup_after, &e->times.keys_after);
  e->times.evict += rt_now() - t3;
  return true;
}

static bool dev_ok(const sim_engine *e, rkv_status st, const char *what) {
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: %s: %s (%s)\n", what, rkv_status_str(st),
          rkv_backend_last_error(e->be));
  return false;
}

/* One layer on a device: rows synthesised into a free half of the pinned arena, copied into the
 * DEVICE rows, handed to the executor (which enqueues its kernels and returns). */
static bool device_layer(sim_engine *e, const rkv_sched_plan *p, uint32_t l, size_t qb, size_t kb) {
  const uint32_t h = l & 1;
  if (e->half_busy[h]) { /* its copies from two layers ago must have run */
    if (!dev_ok(e, rkv_backend_sync(e->be), "stream sync")) return false;
    e->half_busy[0] = e->half_busy[1] = false;
  }
  const size_t off = h * (qb + 2 * kb);
  unsigned char *st = (unsigned char *)rkv_buffer_ptr(e->stage) + off;
  const double t0 = rt_now();
  if (!synth_layer(e, p, l, (float *)st, (float *)(st + qb), (float *)(st + qb + kb))) return false;
  const double t1 = rt_now();
  e->times.kv_synth += t1 - t0;
  if (!dev_ok(e, rkv_buffer_copy(e->dq, 0, e->stage, off, qb), "copy to device") ||
      !dev_ok(e, rkv_buffer_copy(e->dk, 0, e->stage, off + qb, kb), "copy to device") ||
      !dev_ok(e, rkv_buffer_copy(e->dv, 0, e->stage, off + qb + kb, kb), "copy to device"))
    return false;
  e->half_busy[h] = true;
  bool ok = exec_ok(e,
                    rkv_exec_layer(e->x, l, rkv_buffer_ptr(e->dq), rkv_buffer_ptr(e->dk),
                                   rkv_buffer_ptr(e->dv), rkv_buffer_ptr(e->dout)),
                    "executor layer");
  e->times.attn += rt_now() - t1;
  return ok;
}

/* Sizes the transfer buffers for a plan (growth waits for the stream: first steps only). */
static bool device_reserve(sim_engine *e, size_t qb, size_t kb) {
  const size_t need[] = {2 * (qb + 2 * kb), qb, kb, kb, qb};
  rkv_buffer *b[] = {e->stage, e->dq, e->dk, e->dv, e->dout};
  for (size_t i = 0; i < 5; i++) {
    if (need[i] <= rkv_buffer_size(b[i])) continue;
    size_t n = 65536;
    while (n < need[i]) n *= 2;
    if (!dev_ok(e, rkv_buffer_reserve(b[i], n), "device buffer")) return false;
  }
  e->half_busy[0] = e->half_busy[1] = false; /* a growth synchronised */
  return true;
}

/* cuda / emu: the executor over a device pool; the model's rows travel through pinned
 * staging. The stream is synchronised after the forward pass (so the attention time is a wall
 * time that includes the GPU work) and by finish. */
static bool launch_device(sim_engine *e, const rkv_sched_plan *p) {
  for (uint32_t i = 0; i < p->n_finished; i++) sim_engine_drop_tokens(e, p->finished[i]);
  double t0 = rt_now();
  if (!exec_ok(e, rkv_exec_begin(e->x, p), "executor begin")) return false;
  e->times.swap += rt_now() - t0;
  const size_t rows = p->n_batched_tokens, d = e->m.head_dim;
  const size_t qb = rows * e->m.q_heads * d * sizeof(float);
  const size_t kb = rows * e->m.kv_heads * d * sizeof(float);
  if (rows && !device_reserve(e, qb, kb)) return false;
  for (uint32_t l = 0; l < e->m.layers && rows; l++)
    if (!device_layer(e, p, l, qb, kb)) return false;
  return true;
}

static bool finish_device(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs) {
  const double t1 = rt_now();
  if (!dev_ok(e, rkv_backend_sync(e->be), "forward (stream sync)")) return false;
  e->half_busy[0] = e->half_busy[1] = false;
  const double t2 = rt_now();
  e->times.attn += t2 - t1;
  if (!exec_ok(e, rkv_exec_finish(e->x, outs, p->n_seqs), "executor finish")) return false;
  e->times.evict += rt_now() - t2;
  return true;
}

static bool device_kind(const sim_engine *e) {
  return e->kind == SIM_COMPUTE_CUDA || e->kind == SIM_COMPUTE_EMU;
}

bool sim_engine_launch(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs) {
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    memset(&outs[i], 0, sizeof outs[i]);
    outs[i].id = p->seqs[i].id;
  }
  if (device_kind(e)) return launch_device(e, p);
  if (e->kind != SIM_COMPUTE_NONE) return launch_cpu(e, p);
  double t0 = rt_now();
  if (!exec_ok(e, rkv_exec_begin(e->x, p), "executor begin")) return false;
  e->times.swap += rt_now() - t0;
  return true;
}

bool sim_engine_finish(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs) {
  if (device_kind(e)) return finish_device(e, p, outs);
  if (e->kind != SIM_COMPUTE_NONE) return finish_cpu(e, p, outs);
  double t1 = rt_now();
  if (!exec_ok(e, rkv_exec_finish(e->x, outs, p->n_seqs), "executor finish")) return false;
  e->times.evict += rt_now() - t1;
  return true;
}
