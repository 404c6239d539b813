/* `rkv sim --compute cuda`: the simulator's GPU engine. It mirrors the cpu engine step for step
 * on a CUDA KV pool: swaps (rkv_kv_pool_read_blocks / write_blocks through pinned staging),
 * copy-on-write copies, then per layer the synthetic K/V rows (made on the host by sim_engine.c,
 * the same numbers the cpu engine writes) are copied with cudaMemcpyAsync and scattered with
 * rkv_attn_write_kv, the batch's per-head CSR tables are exported on the host and copied, and
 * rkv_attn_decode / rkv_attn_prefill run with the query rows pushed into a device query-window
 * ring (R-KV, SnapKV). Compression cuts every stream on the host with
 * rkv_blockmgr_compact_uniform and then scores, selects and moves the kept tokens on the device
 * with one rkv_evict_cuda_compress per step (every compressing sequence in one batch).
 *
 * Host cost per step: O(layers x (batch tokens x kv heads x head_dim)) for the synthesis (the
 * stand-in for the model's projections) plus O(layers x table entries of the batch) for the CSR
 * exports, all staged in one pinned arena; no device allocation once buffers have grown. The
 * stream is synchronised at the end of the forward pass and of the compression, so the
 * attention and eviction times are wall times that include the GPU work. See
 * docs/SIMULATOR.md, "--compute cuda"; tests/integration/simcuda/ runs this file's CUDA branch
 * without a GPU against a stand-in CUDA runtime (test_sim_cuda_emu.c). */
#include <stdlib.h>
#include <string.h>

#include <rkv/attention.h>
#include <rkv/attention_cuda.h>
#include <rkv/evict_cuda.h>

#include "rkv_tool.h"
#include "sim_cuda.h"

#ifndef RKV_HAVE_CUDA

bool sim_cuda_create(sim_engine *host, const sim_model *m, rkv_blockmgr *bm,
                     const rkv_evict_params *ev, uint32_t host_blocks, uint32_t max_seqs,
                     sim_engine_times *times, sim_cuda **out) {
  (void)host, (void)m, (void)bm, (void)ev, (void)host_blocks, (void)max_seqs, (void)times;
  *out = NULL;
  fprintf(stderr,
          "rkv sim: --compute cuda: this build of rkv has no CUDA (configure with nvcc "
          "available and RKV_ENABLE_CUDA=ON); use --compute cpu or none\n");
  return false;
}

void sim_cuda_destroy(sim_cuda *c) {
  (void)c;
}

bool sim_cuda_run(sim_cuda *c, const rkv_sched_plan *p, rkv_sched_output *outs) {
  (void)c, (void)p, (void)outs;
  return false;
}

#else /* RKV_HAVE_CUDA */

#include <cuda_runtime.h>

#define ALIGN 256u
/* First size of the pinned staging arena; the emulation test shrinks it so that arena resets
 * happen every step. */
#ifndef SIM_CUDA_STAGE_MIN
#define SIM_CUDA_STAGE_MIN ((size_t)1 << 22)
#endif

struct sim_cuda {
  sim_engine *host;
  sim_model m;
  rkv_blockmgr *bm;
  rkv_evict_params ev;
  sim_engine_times *times;
  rkv_backend *be;
  rkv_kv_pool *pool;
  cudaStream_t cs;
  size_t block_bytes;
  /* host swap pool (pageable; transfers go through the pinned arena) */
  unsigned char *swap;
  uint32_t swap_blocks;
  /* pinned staging arena: bump-allocated, reset once the stream has passed every copy from it */
  unsigned char *stage;
  size_t stage_cap, stage_off;
  /* device buffers, grown (after a stream sync) and reused */
  unsigned char *d_kv;   /* one layer's [slots int64][k rows][v rows] */
  unsigned char *d_q;    /* one group's [q rows][out rows] */
  unsigned char *d_tab;  /* one group's [indptr][indices][last_len][q_indptr] */
  unsigned char *d_meta; /* the step's ring slots (int32) and positions (int64) per seq */
  unsigned char *d_ws, *d_ev, *d_evws;
  size_t d_kv_cap, d_q_cap, d_tab_cap, d_meta_cap, d_ws_cap, d_ev_cap, d_evws_cap;
  /* device query-window ring (data NULL when the policy scores without queries) and the
   * sequence holding each of its slots (-1 = free) */
  rkv_cuda_qwindow ring;
  int64_t *slot_seq;
  /* host scratch */
  uint32_t *sel;
  int32_t *gslot;
  int64_t *gpos, *ids;
  int32_t *swap_ids;
  rkv_compact_map *maps;
  int32_t *old, *newb, *freed;
  rkv_evict_cuda_stream *streams;
  size_t sel_cap, gslot_cap, gpos_cap, ids_cap, swap_ids_cap, maps_cap, old_cap, newb_cap,
      freed_cap, streams_cap;
};

static size_t align_up(size_t x) {
  return (x + ALIGN - 1) & ~(size_t)(ALIGN - 1);
}

static bool cu_ok(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return true;
  fprintf(stderr, "rkv sim: cuda: %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

static bool be_ok(const sim_cuda *c, rkv_status st, const char *what) {
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: cuda: %s: %s (%s)\n", what, rkv_status_str(st),
          rkv_backend_last_error(c->be));
  return false;
}

static bool bm_ok(const sim_cuda *c, rkv_status st, const char *what) {
  if (st == RKV_OK) return true;
  fprintf(stderr, "rkv sim: cuda: %s: %s (%s)\n", what, rkv_status_str(st),
          rkv_blockmgr_last_error(c->bm));
  return false;
}

/* Device buffers only grow. Work already enqueued may still read the old buffer, hence the
 * sync before the free (growth stops after the first steps of a run). */
static bool dev_grow(sim_cuda *c, unsigned char **p, size_t *cap, size_t need) {
  if (need <= *cap) return true;
  size_t nc = *cap ? *cap : 65536;
  while (nc < need) nc *= 2;
  if (!cu_ok(cudaStreamSynchronize(c->cs), "stream sync")) return false;
  cudaFree(*p);
  *p = NULL;
  *cap = 0;
  if (!cu_ok(cudaMalloc((void **)p, nc), "cudaMalloc")) return false;
  *cap = nc;
  return true;
}

/* A chunk of the pinned arena. Fill it and enqueue its copy before asking for the next one:
 * a full arena is reset after a stream sync, which reuses the memory of earlier chunks. */
static unsigned char *stage(sim_cuda *c, size_t bytes) {
  bytes = align_up(bytes ? bytes : 1);
  if (c->stage_off + bytes > c->stage_cap) {
    if (!cu_ok(cudaStreamSynchronize(c->cs), "stream sync")) return NULL;
    c->stage_off = 0;
    if (bytes > c->stage_cap) {
      size_t nc = c->stage_cap ? c->stage_cap : SIM_CUDA_STAGE_MIN;
      while (nc < bytes) nc *= 2;
      cudaFreeHost(c->stage);
      c->stage = NULL;
      c->stage_cap = 0;
      if (!cu_ok(cudaMallocHost((void **)&c->stage, nc), "cudaMallocHost (staging)")) return NULL;
      c->stage_cap = nc;
    }
  }
  unsigned char *p = c->stage + c->stage_off;
  c->stage_off += bytes;
  return p;
}

static bool upload(sim_cuda *c, void *dst, const void *src, size_t bytes) {
  if (!bytes) return true;
  return cu_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->cs), "copy to device");
}

static bool uses_ring(rkv_evict_policy p) {
  return p == RKV_EVICT_RKV || p == RKV_EVICT_SNAPKV;
}

/* ---- ring slots (the device twin of rkv_qwindow_seq_add / _remove / _fork) ------------- */

static int32_t slot_find(const sim_cuda *c, int64_t id) {
  for (uint32_t i = 0; i < c->ring.max_seqs; i++)
    if (c->slot_seq[i] == id) return (int32_t)i;
  return -1;
}

static int32_t slot_get(sim_cuda *c, int64_t id) {
  int32_t s = slot_find(c, id);
  if (s >= 0) return s;
  for (uint32_t i = 0; i < c->ring.max_seqs; i++)
    if (c->slot_seq[i] < 0) {
      c->slot_seq[i] = id;
      return (int32_t)i;
    }
  return -1;
}

static void slot_drop(sim_cuda *c, int64_t id) {
  int32_t s = slot_find(c, id);
  if (s >= 0) c->slot_seq[s] = -1;
}

static size_t ring_slot_elems(const sim_cuda *c) {
  return (size_t)c->ring.num_layers * c->ring.num_q_heads * c->ring.window * c->ring.head_dim;
}

/* ---- create / destroy ------------------------------------------------------------------ */

void sim_cuda_destroy(sim_cuda *c) {
  if (!c) return;
  if (c->cs) (void)cudaStreamSynchronize(c->cs);
  cudaFree(c->d_kv);
  cudaFree(c->d_q);
  cudaFree(c->d_tab);
  cudaFree(c->d_meta);
  cudaFree(c->d_ws);
  cudaFree(c->d_ev);
  cudaFree(c->d_evws);
  cudaFree(c->ring.data);
  cudaFreeHost(c->stage);
  free(c->swap);
  free(c->slot_seq);
  free(c->sel);
  free(c->gslot);
  free(c->gpos);
  free(c->ids);
  free(c->swap_ids);
  free(c->maps);
  free(c->old);
  free(c->newb);
  free(c->freed);
  free(c->streams);
  rkv_kv_pool_destroy(c->pool);
  rkv_backend_destroy(c->be);
  free(c);
}

bool sim_cuda_create(sim_engine *host, const sim_model *m, rkv_blockmgr *bm,
                     const rkv_evict_params *ev, uint32_t host_blocks, uint32_t max_seqs,
                     sim_engine_times *times, sim_cuda **out) {
  *out = NULL;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CUDA;
  rkv_backend *be = NULL;
  rkv_status st = rkv_backend_create(&bc, &be);
  if (st != RKV_OK) {
    fprintf(stderr,
            "rkv sim: --compute cuda: no usable GPU (CUDA backend: %s); use --compute cpu or "
            "none\n",
            rkv_status_str(st));
    return false;
  }
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(bm);
  char err[256] = "";
  if (rkv_attn_cuda_supported(lay.head_dim, lay.block_size, lay.dtype, err, sizeof err) != RKV_OK) {
    fprintf(stderr,
            "rkv sim: --compute cuda: %s (the CUDA kernels take head_dim 64/128/256, block size "
            "16/32)\n",
            err);
    rkv_backend_destroy(be);
    return false;
  }
  if (uses_ring(ev->policy) && ev->window > 256) {
    fprintf(stderr, "rkv sim: --compute cuda: --window %d > 256 (the GPU eviction's limit)\n",
            ev->window);
    rkv_backend_destroy(be);
    return false;
  }
  sim_cuda *c = calloc(1, sizeof *c);
  if (!c) {
    rkv_backend_destroy(be);
    return false;
  }
  c->be = be;
  c->host = host;
  c->m = *m;
  c->bm = bm;
  c->ev = *ev;
  c->times = times;
  c->cs = (cudaStream_t)rkv_backend_stream(be);
  c->block_bytes = rkv_kv_block_bytes(&lay);
  const rkv_blockmgr_config *cfg = rkv_blockmgr_get_config(bm);
  st = rkv_kv_pool_create(be, &lay, cfg->num_blocks, &c->pool);
  if (st != RKV_OK) {
    fprintf(stderr,
            "rkv sim: --compute cuda: KV pool of %u blocks (%.3f GiB) on the GPU: %s (%s)\n",
            cfg->num_blocks, (double)cfg->num_blocks * (double)c->block_bytes / 1073741824.0,
            rkv_status_str(st), rkv_backend_last_error(be));
    sim_cuda_destroy(c);
    return false;
  }
  c->swap_blocks = host_blocks;
  if (host_blocks) {
    c->swap = malloc((size_t)host_blocks * c->block_bytes);
    if (!c->swap) {
      fprintf(stderr, "rkv sim: host swap pool of %u blocks: out of memory\n", host_blocks);
      sim_cuda_destroy(c);
      return false;
    }
  }
  /* One ring slot per running sequence; with swapping, swapped-out sequences keep theirs (as
   * the host rkv_qwindow keeps their rows), so leave room for as many again. */
  c->ring.max_seqs = host_blocks ? 2 * max_seqs : max_seqs;
  c->ring.num_layers = m->layers;
  c->ring.num_q_heads = m->q_heads;
  c->ring.window = (uint32_t)ev->window;
  c->ring.head_dim = m->head_dim;
  c->slot_seq = malloc(sizeof(int64_t) * c->ring.max_seqs);
  if (!c->slot_seq) {
    sim_cuda_destroy(c);
    return false;
  }
  for (uint32_t i = 0; i < c->ring.max_seqs; i++) c->slot_seq[i] = -1;
  if (uses_ring(ev->policy)) {
    size_t bytes = 0;
    if (rkv_attn_cuda_qwindow_bytes(&c->ring, &bytes) != RKV_OK ||
        !cu_ok(cudaMalloc((void **)&c->ring.data, bytes), "cudaMalloc (query-window ring)") ||
        !cu_ok(cudaMemsetAsync(c->ring.data, 0, bytes, c->cs), "ring clear") ||
        !cu_ok(cudaStreamSynchronize(c->cs), "stream sync")) {
      fprintf(stderr,
              "rkv sim: --compute cuda: query-window ring of %.1f MiB (%u slots) failed; a "
              "smaller --max-seqs shrinks it\n",
              (double)bytes / 1048576.0, c->ring.max_seqs);
      sim_cuda_destroy(c);
      return false;
    }
  }
  *out = c;
  return true;
}

/* ---- swaps, copies and per-sequence state ---------------------------------------------- */

static bool run_swaps(sim_cuda *c, const rkv_sched_plan *p) {
  uint32_t n = p->n_swap_out > p->n_swap_in ? p->n_swap_out : p->n_swap_in;
  if (!sim_grow((void **)&c->swap_ids, &c->swap_ids_cap, n + 1, sizeof(int32_t))) return false;
  /* read_blocks / write_blocks wait for their copies, so staged memory is free again after */
  if (p->n_swap_out) {
    unsigned char *buf = stage(c, (size_t)p->n_swap_out * c->block_bytes);
    if (!buf) return false;
    for (uint32_t i = 0; i < p->n_swap_out; i++) c->swap_ids[i] = p->swap_out[i].device;
    if (!be_ok(c, rkv_kv_pool_read_blocks(c->pool, c->swap_ids, p->n_swap_out, buf), "swap out"))
      return false;
    for (uint32_t i = 0; i < p->n_swap_out; i++)
      memcpy(c->swap + (size_t)p->swap_out[i].host * c->block_bytes, buf + i * c->block_bytes,
             c->block_bytes);
  }
  if (p->n_swap_in) {
    unsigned char *buf = stage(c, (size_t)p->n_swap_in * c->block_bytes);
    if (!buf) return false;
    for (uint32_t i = 0; i < p->n_swap_in; i++) {
      c->swap_ids[i] = p->swap_in[i].device;
      memcpy(buf + i * c->block_bytes, c->swap + (size_t)p->swap_in[i].host * c->block_bytes,
             c->block_bytes);
    }
    if (!be_ok(c, rkv_kv_pool_write_blocks(c->pool, c->swap_ids, p->n_swap_in, buf), "swap in"))
      return false;
  }
  if (p->n_copies &&
      !be_ok(c, rkv_kv_pool_copy_blocks(c->pool, p->copies, p->n_copies), "copy-on-write copies"))
    return false;
  return true;
}

/* Ring slots follow the sequences' KV as the cpu engine's query windows do: forked with it,
 * dropped with it, kept across a swap. */
static bool track_seqs(sim_cuda *c, const rkv_sched_plan *p) {
  size_t slot_bytes = ring_slot_elems(c) * sizeof(float);
  for (uint32_t i = 0; i < p->n_forks && c->ring.data; i++) {
    int32_t ps = slot_find(c, p->forks[i].parent);
    int32_t cs = slot_get(c, p->forks[i].child);
    if (ps >= 0 && cs >= 0 &&
        !cu_ok(cudaMemcpyAsync((unsigned char *)c->ring.data + (size_t)cs * slot_bytes,
                               (unsigned char *)c->ring.data + (size_t)ps * slot_bytes, slot_bytes,
                               cudaMemcpyDeviceToDevice, c->cs),
               "fork of a query window"))
      return false;
  }
  for (uint32_t i = 0; i < p->n_finished; i++) {
    slot_drop(c, p->finished[i]);
    sim_engine_drop_tokens(c->host, p->finished[i]);
  }
  for (uint32_t i = 0; i < p->n_preempted; i++) {
    bool swapped = false;
    for (uint32_t j = 0; j < p->n_swapped_out; j++) swapped |= p->swapped_out[j] == p->preempted[i];
    if (!swapped) slot_drop(c, p->preempted[i]);
  }
  return true;
}

/* ---- forward ---------------------------------------------------------------------------- */

/* One layer's K/V of every scheduled token: synthesised into the arena, copied, scattered. */
static bool write_kv(sim_cuda *c, const rkv_sched_plan *p, uint32_t l) {
  size_t d = c->m.head_dim, Hkv = c->m.kv_heads;
  size_t rows = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) rows += (size_t)p->seqs[i].n_tokens * Hkv;
  if (!rows) return true;
  size_t o_k = align_up(rows * sizeof(int64_t)), o_v = o_k + align_up(rows * d * sizeof(float));
  size_t bytes = o_v + rows * d * sizeof(float);
  if (!dev_grow(c, &c->d_kv, &c->d_kv_cap, bytes)) return false;
  unsigned char *h = stage(c, bytes);
  if (!h) return false;
  int64_t *slots = (int64_t *)h;
  float *k = (float *)(h + o_k), *v = (float *)(h + o_v);
  double t0 = rkv_tool_now();
  size_t r = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    const int32_t *tk = sim_engine_tokens(c->host, q->id);
    if (!tk) return false;
    for (uint32_t hh = 0; hh < Hkv; hh++)
      for (uint32_t t = 0; t < q->n_tokens; t++, r++) {
        int32_t cpos = q->kv_len - (int32_t)q->n_tokens + (int32_t)t;
        if (!bm_ok(c, rkv_blockmgr_stream_slot(c->bm, q->id, l, hh, cpos, &slots[r]),
                   "stream_slot"))
          return false;
        sim_engine_make_kv(c->host, q->id, q->pos + t, tk[q->pos + t], l, hh, k + r * d, v + r * d);
      }
  }
  c->times->kv_synth += rkv_tool_now() - t0;
  if (!upload(c, c->d_kv, h, bytes)) return false;
  return be_ok(
      c,
      rkv_attn_write_kv(c->pool, (const float *)(c->d_kv + o_k), (const float *)(c->d_kv + o_v),
                        (const int64_t *)c->d_kv, (uint32_t)r),
      "write_kv");
}

/* One layer's attention over a group of plan seqs (decode or prefill); d_slots / d_pos are the
 * group's ring slots and first positions on the device. */
static bool attend(sim_cuda *c, const rkv_sched_plan *p, const uint32_t *sel, uint32_t ns,
                   bool decode, uint32_t l, const int32_t *d_slots, const int64_t *d_pos) {
  if (!ns) return true;
  size_t d = c->m.head_dim, Hq = c->m.q_heads, Hkv = c->m.kv_heads;
  for (uint32_t i = 0; i < ns; i++) c->ids[i] = p->seqs[sel[i]].id;
  uint32_t nnz = 0;
  if (!bm_ok(c, rkv_blockmgr_export_size(c->bm, l, c->ids, ns, &nnz), "export_size")) return false;
  size_t streams = (size_t)ns * Hkv, rows = 0;
  for (uint32_t i = 0; i < ns; i++) rows += p->seqs[sel[i]].n_tokens;
  /* table chunk: [indptr][indices][last_len][q_indptr], each 256-byte aligned */
  size_t o_ind = align_up((streams + 1) * sizeof(int32_t));
  size_t o_last = o_ind + align_up(((size_t)nnz + 1) * sizeof(int32_t));
  size_t o_qi = o_last + align_up(streams * sizeof(int32_t));
  size_t tab_bytes = o_qi + (ns + 1) * sizeof(int32_t);
  size_t q_elems = rows * Hq * d, q_bytes = q_elems * sizeof(float);
  if (!dev_grow(c, &c->d_tab, &c->d_tab_cap, tab_bytes) ||
      !dev_grow(c, &c->d_q, &c->d_q_cap, align_up(q_bytes) + q_bytes))
    return false;
  unsigned char *h = stage(c, tab_bytes);
  if (!h) return false;
  int32_t *qi = (int32_t *)(h + o_qi);
  rkv_block_table tab;
  if (!bm_ok(c,
             rkv_blockmgr_export_csr(c->bm, l, c->ids, ns, (int32_t *)h, (int32_t *)(h + o_ind),
                                     nnz + 1, (int32_t *)(h + o_last), &nnz, &tab),
             "export_csr"))
    return false;
  qi[0] = 0;
  for (uint32_t i = 0; i < ns; i++) qi[i + 1] = qi[i] + (int32_t)p->seqs[sel[i]].n_tokens;
  rkv_attn_params ap = RKV_ATTN_PARAMS_INIT;
  ap.num_seqs = ns;
  ap.num_q_heads = (uint32_t)Hq;
  ap.num_kv_heads = (uint32_t)Hkv;
  ap.head_dim = (uint32_t)d;
  ap.table = tab; /* host view: the workspace query reads lengths on the host */
  ap.q_indptr = decode ? NULL : qi;
  ap.accumulate_scores = c->ev.policy == RKV_EVICT_H2O;
  ap.seq_ids = c->ids;
  ap.layer = l;
  ap.q = (const float *)c->d_q;
  ap.out = (float *)(c->d_q + align_up(q_bytes));
  size_t ws = 0;
  if (!be_ok(c, rkv_attn_workspace_size(c->pool, &ap, &ws), "attention workspace") ||
      !dev_grow(c, &c->d_ws, &c->d_ws_cap, ws + ALIGN) || !upload(c, c->d_tab, h, tab_bytes))
    return false;
  ap.table.indptr = (const int32_t *)c->d_tab;
  ap.table.indices = (const int32_t *)(c->d_tab + o_ind);
  ap.table.last_len = (const int32_t *)(c->d_tab + o_last);
  const int32_t *d_qi = (const int32_t *)(c->d_tab + o_qi);
  ap.q_indptr = decode ? NULL : d_qi;
  float *q = (float *)stage(c, q_bytes);
  if (!q) return false;
  double t0 = rkv_tool_now();
  size_t r = 0;
  for (uint32_t i = 0; i < ns; i++) {
    const rkv_sched_seq *s = &p->seqs[sel[i]];
    const int32_t *tk = sim_engine_tokens(c->host, s->id);
    if (!tk) return false;
    for (uint32_t t = 0; t < s->n_tokens; t++, r++)
      sim_engine_make_q(c->host, s->id, s->pos + t, tk[s->pos + t], l, q + r * Hq * d);
  }
  c->times->kv_synth += rkv_tool_now() - t0;
  if (!upload(c, c->d_q, q, q_bytes)) return false;
  rkv_status st = decode ? rkv_attn_decode(c->pool, &ap, c->d_ws, c->d_ws_cap)
                         : rkv_attn_prefill(c->pool, &ap, c->d_ws, c->d_ws_cap);
  if (!be_ok(c, st, decode ? "attention decode" : "attention prefill")) return false;
  if (c->ring.data && !be_ok(c,
                             rkv_attn_cuda_qwindow_push(c->be, &c->ring, l, ap.q,
                                                        decode ? NULL : d_qi, d_slots, d_pos, ns),
                             "query-window push"))
    return false;
  return true;
}

static bool run_forward(sim_cuda *c, const rkv_sched_plan *p) {
  uint32_t ns = p->n_seqs;
  if (!ns) return true;
  if (!sim_grow((void **)&c->sel, &c->sel_cap, ns, sizeof(uint32_t)) ||
      !sim_grow((void **)&c->ids, &c->ids_cap, ns, sizeof(int64_t)) ||
      !sim_grow((void **)&c->gslot, &c->gslot_cap, ns, sizeof(int32_t)) ||
      !sim_grow((void **)&c->gpos, &c->gpos_cap, ns, sizeof(int64_t)))
    return false;
  uint32_t nd = 0;
  for (uint32_t i = 0; i < ns; i++)
    if (p->seqs[i].kind == RKV_SCHED_DECODE) c->sel[nd++] = i;
  uint32_t np = nd;
  for (uint32_t i = 0; i < ns; i++)
    if (p->seqs[i].kind != RKV_SCHED_DECODE) c->sel[np++] = i;
  /* Ring rows are addressed by logical position, so after a compression (which shortens the
   * cache) the ring still holds exactly the last `window` queries. */
  for (uint32_t i = 0; i < ns; i++) {
    const rkv_sched_seq *q = &p->seqs[c->sel[i]];
    c->gslot[i] = c->ring.data ? slot_get(c, q->id) : -1;
    if (c->ring.data && c->gslot[i] < 0) {
      fprintf(stderr, "rkv sim: cuda: query-window ring full (%u slots)\n", c->ring.max_seqs);
      return false;
    }
    c->gpos[i] = q->pos;
  }
  size_t o_pos = align_up(ns * sizeof(int32_t)), meta = o_pos + ns * sizeof(int64_t);
  if (!dev_grow(c, &c->d_meta, &c->d_meta_cap, meta)) return false;
  unsigned char *h = stage(c, meta);
  if (!h) return false;
  memcpy(h, c->gslot, ns * sizeof(int32_t));
  memcpy(h + o_pos, c->gpos, ns * sizeof(int64_t));
  if (!upload(c, c->d_meta, h, meta)) return false;
  const int32_t *d_slots = (const int32_t *)c->d_meta;
  const int64_t *d_pos = (const int64_t *)(c->d_meta + o_pos);
  for (uint32_t l = 0; l < c->m.layers; l++) {
    if (!write_kv(c, p, l) || !attend(c, p, c->sel, nd, true, l, d_slots, d_pos) ||
        !attend(c, p, c->sel + nd, ns - nd, false, l, d_slots + nd, d_pos + nd))
      return false;
  }
  return cu_ok(cudaStreamSynchronize(c->cs), "forward (stream sync)");
}

/* ---- compression ------------------------------------------------------------------------ */

/* Host half for one sequence: cut its streams to the budget and append their descriptors to
 * the batch being built. */
static bool plan_seq(sim_cuda *c, const rkv_sched_seq *q, rkv_sched_output *o, uint32_t *n_streams,
                     uint32_t *n_old, uint32_t *n_new, int32_t *max_len) {
  int32_t slot = slot_find(c, q->id);
  if (uses_ring(q->evict->policy) && slot < 0) {
    fprintf(stderr, "rkv sim: cuda: sequence %lld compresses without a query window\n",
            (long long)q->id);
    return false;
  }
  rkv_blockmgr_stats a, b;
  rkv_blockmgr_get_stats(c->bm, &a);
  size_t per_seq = (size_t)c->m.layers * c->m.kv_heads;
  if (!sim_grow((void **)&c->maps, &c->maps_cap, *n_streams + per_seq, sizeof *c->maps) ||
      !sim_grow((void **)&c->streams, &c->streams_cap, *n_streams + per_seq, sizeof *c->streams) ||
      !sim_grow((void **)&c->old, &c->old_cap, *n_old + per_seq, sizeof *c->old) ||
      !sim_grow((void **)&c->newb, &c->newb_cap, *n_new + per_seq, sizeof *c->newb))
    return false;
  uint32_t nm = 0, no = 0;
  for (;;) {
    rkv_status st =
        rkv_blockmgr_compact_uniform(c->bm, q->id, -1, q->evict->budget, c->maps + *n_streams,
                                     (uint32_t)(c->maps_cap - *n_streams), &nm, c->old + *n_old,
                                     (uint32_t)(c->old_cap - *n_old), &no);
    if (st == RKV_ERR_CAPACITY) {
      if (!sim_grow((void **)&c->maps, &c->maps_cap, *n_streams + nm, sizeof *c->maps) ||
          !sim_grow((void **)&c->streams, &c->streams_cap, *n_streams + nm, sizeof *c->streams) ||
          !sim_grow((void **)&c->old, &c->old_cap, *n_old + no + 1, sizeof *c->old))
        return false;
      continue;
    }
    if (!bm_ok(c, st, "compact_uniform")) return false;
    break;
  }
  rkv_blockmgr_get_stats(c->bm, &b);
  o->blocks_freed = b.free_blocks - a.free_blocks;
  o->compressed = true;
  const rkv_compact_map *mp = c->maps + *n_streams;
  for (uint32_t i = 0; i < nm; i++) {
    o->tokens_evicted += (uint64_t)(mp[i].old_len - mp[i].new_len);
    if (mp[i].old_len > *max_len) *max_len = mp[i].old_len;
  }
  int64_t qoff = slot >= 0 ? (int64_t)slot * (int64_t)ring_slot_elems(c) : 0;
  uint32_t nn = 0;
  for (;;) {
    rkv_status st =
        rkv_evict_cuda_describe(c->bm, q->id, mp, nm, c->m.q_heads, q->evict->window, qoff,
                                (int32_t)*n_old, (int32_t)*n_new, c->streams + *n_streams,
                                c->newb + *n_new, (uint32_t)(c->newb_cap - *n_new), &nn);
    if (st == RKV_ERR_CAPACITY) {
      if (!sim_grow((void **)&c->newb, &c->newb_cap, *n_new + nn + 1, sizeof *c->newb))
        return false;
      continue;
    }
    if (!bm_ok(c, st, "rkv_evict_cuda_describe")) return false;
    break;
  }
  *n_streams += nm;
  *n_old += no;
  *n_new += nn;
  return true;
}

/* Device half: one rkv_evict_cuda_compress over every stream planned so far. */
static bool flush(sim_cuda *c, const rkv_evict_params *ev, uint32_t n_streams, uint32_t n_old,
                  uint32_t n_new, int32_t max_len) {
  if (!n_streams) return true;
  uint32_t nf = 0;
  if (!sim_grow((void **)&c->freed, &c->freed_cap, n_old + 1, sizeof *c->freed) ||
      !bm_ok(
          c,
          rkv_evict_cuda_freed_blocks(c->bm, c->old, n_old, c->freed, (uint32_t)c->freed_cap, &nf),
          "rkv_evict_cuda_freed_blocks"))
    return false;
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  size_t bytes = 0;
  if (!be_ok(c,
             rkv_evict_cuda_pack(c->streams, n_streams, c->old, n_old, c->newb, n_new, c->freed, nf,
                                 NULL, 0, NULL, NULL, &bytes),
             "rkv_evict_cuda_pack"))
    return false;
  uint32_t group = c->m.q_heads / c->m.kv_heads;
  size_t ws = 0;
  if (!be_ok(c, rkv_evict_cuda_workspace_size(ev, c->pool, n_streams, group, max_len, &ws),
             "eviction workspace") ||
      !dev_grow(c, &c->d_evws, &c->d_evws_cap, ws + ALIGN) ||
      !dev_grow(c, &c->d_ev, &c->d_ev_cap, bytes))
    return false;
  unsigned char *h = stage(c, bytes);
  if (!h ||
      !be_ok(c,
             rkv_evict_cuda_pack(c->streams, n_streams, c->old, n_old, c->newb, n_new, c->freed, nf,
                                 h, bytes, c->d_ev, &b, &bytes),
             "rkv_evict_cuda_pack") ||
      !upload(c, c->d_ev, h, bytes))
    return false;
  b.group = group;
  b.max_len = max_len;
  b.qwin = uses_ring(ev->policy) ? c->ring.data : NULL;
  return be_ok(c, rkv_evict_cuda_compress(ev, c->pool, &b, c->d_evws, c->d_evws_cap),
               "rkv_evict_cuda_compress");
}

static bool run_compress(sim_cuda *c, const rkv_sched_plan *p, rkv_sched_output *outs) {
  uint32_t n_streams = 0, n_old = 0, n_new = 0;
  int32_t max_len = 0;
  const rkv_evict_params *ev = NULL;
  bool any = false;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    if (!q->compress) continue;
    if (q->evict->policy == RKV_EVICT_FULL) { /* as rkv_evict_layer: nothing to do */
      outs[i].compressed = true;
      continue;
    }
    /* one batch per parameter set (the simulator uses one per run) */
    if (ev && memcmp(ev, q->evict, sizeof *ev) != 0) {
      if (!flush(c, ev, n_streams, n_old, n_new, max_len)) return false;
      n_streams = n_old = n_new = 0;
      max_len = 0;
    }
    ev = q->evict;
    any = true;
    if (!plan_seq(c, q, &outs[i], &n_streams, &n_old, &n_new, &max_len)) return false;
  }
  if (!any) return true;
  return flush(c, ev, n_streams, n_old, n_new, max_len) &&
         cu_ok(cudaStreamSynchronize(c->cs), "compression (stream sync)");
}

bool sim_cuda_run(sim_cuda *c, const rkv_sched_plan *p, rkv_sched_output *outs) {
  double t0 = rkv_tool_now();
  if (!run_swaps(c, p)) return false;
  double t1 = rkv_tool_now();
  c->times->swap += t1 - t0;
  if (!track_seqs(c, p)) return false;
  double synth0 = c->times->kv_synth;
  if (!run_forward(c, p)) return false;
  double t2 = rkv_tool_now();
  c->times->attn += (t2 - t1) - (c->times->kv_synth - synth0);
  if (!run_compress(c, p, outs)) return false;
  c->times->evict += rkv_tool_now() - t2;
  /* every copy out of the arena has completed (the step ended with a stream sync, or enqueued
   * nothing since the last one) */
  c->stage_off = 0;
  return true;
}

#endif /* RKV_HAVE_CUDA */
