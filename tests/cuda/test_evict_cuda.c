/* GPU eviction against the CPU path: the same sequence is built in two block managers (one
 * over a CPU pool, one over a CUDA pool, identical bytes), compressed with rkv_evict_layer on
 * the CPU and with compact_uniform + rkv_evict_cuda_describe + rkv_evict_cuda_compress on the
 * GPU, and every kept stream is compared token by token (K and V bytes, H2O scores). Keys
 * include clusters of near-duplicates so the redundancy rule matters; the query window reaches
 * the GPU through rkv_attn_cuda_qwindow_push. Covers R-KV (every dtype and head_dim, block
 * 16/32, GQA 1/4/8, several tile counts), SnapKV, StreamingLLM, H2O, a forked sequence (shared
 * blocks replaced by fresh ones: moves across streams through scratch), and the kept-position
 * output. Skips (77) without a CUDA build or device. */
/* Tests the deprecated calls themselves: they must keep working this release. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <rkv/attention_cuda.h>
#include <rkv/evict.h>
#include <rkv/evict_cuda.h>

#include "cuda_test_util.h"
#include "rkv_test.h"

/* R-KV's similarity grid has ceil(max_len / 64) tiles along y, at most 65535: a longer max_len
 * must be refused up front (RKV_ERR_UNSUPPORTED, nothing enqueued), not fail at launch after
 * the first kernels ran. The size query validates like compress and needs no device (a CPU
 * pool's layout is enough); without CUDA it always says UNSUPPORTED. */
static void grid_limit_checks(void) {
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  rkv_backend *be = NULL;
  EXPECT_OK(rkv_backend_create(&bc, &be));
  if (!be) return;
  rkv_kv_layout lay = {RKV_DTYPE_BF16, 16, 128};
  rkv_kv_pool *pool = NULL;
  EXPECT_OK(rkv_kv_pool_create(be, &lay, 4, &pool));
  rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
  size_t bytes = 1;
  const int32_t max_ok = 65535 * 64;
#ifdef RKV_HAVE_CUDA
  EXPECT_OK(rkv_evict_cuda_workspace_size(&ep, pool, 1, 4, max_ok, &bytes));
  EXPECT(bytes > (size_t)max_ok);
#else
  EXPECT_STATUS(rkv_evict_cuda_workspace_size(&ep, pool, 1, 4, max_ok, &bytes),
                RKV_ERR_UNSUPPORTED);
#endif
  EXPECT_STATUS(rkv_evict_cuda_workspace_size(&ep, pool, 1, 4, max_ok + 1, &bytes),
                RKV_ERR_UNSUPPORTED);
  EXPECT_EQ_INT(bytes, 0);
#ifdef RKV_HAVE_CUDA
  ep.policy = RKV_EVICT_SNAPKV; /* no similarity tiles: no such limit */
  EXPECT_OK(rkv_evict_cuda_workspace_size(&ep, pool, 1, 4, max_ok + 1, &bytes));
#endif
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(be);
}

/* Host helpers that need no GPU. */
static void host_checks(void) {
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = 64;
  cfg.block_size = 16;
  cfg.num_layers = 2;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 64;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&cfg, &m));
  if (!m) return;
  EXPECT_OK(rkv_blockmgr_seq_create(m, 7));
  EXPECT_OK(rkv_blockmgr_append(m, 7, 50, NULL, NULL, NULL));
  rkv_compact_map maps[4];
  int32_t old[64];
  uint32_t n_maps = 0, n_old = 0;
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 7, -1, 20, maps, 4, &n_maps, old, 64, &n_old));
  EXPECT_EQ_INT(n_maps, 4);
  rkv_evict_cuda_stream st[4];
  int32_t nb[16];
  uint32_t n_new = 0;
  EXPECT_STATUS(rkv_evict_cuda_describe(m, 7, maps, n_maps, 8, 8, 0, 0, 0, st, nb, 3, &n_new),
                RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(n_new, 8); /* 4 streams x ceil(20/16) */
  EXPECT_OK(rkv_evict_cuda_describe(m, 7, maps, n_maps, 8, 8, 1000, 5, 2, st, nb, 16, &n_new));
  for (uint32_t i = 0; i < n_maps; i++) {
    EXPECT_EQ_INT(st[i].old_len, 50);
    EXPECT_EQ_INT(st[i].old_offset, 5 + maps[i].old_offset);
    EXPECT_EQ_INT(st[i].new_offset, 2 + 2 * (int32_t)i);
    /* [layers][q_heads 8][window 8][d 64], group 4 */
    EXPECT_EQ_INT(st[i].qwin_offset,
                  1000 + ((int64_t)maps[i].layer * 8 + (int64_t)maps[i].head * 4) * 8 * 64);
  }
  int32_t freed[64];
  uint32_t n_freed = 0;
  EXPECT_OK(rkv_evict_cuda_freed_blocks(m, old, n_old, freed, 64, &n_freed));
  EXPECT_EQ_INT(n_freed, 4u * (4 - 2)); /* 50 tokens = 4 blocks, 20 = 2 */
  EXPECT_STATUS(rkv_evict_cuda_describe(m, 8, maps, n_maps, 8, 8, 0, 0, 0, st, nb, 16, &n_new),
                RKV_ERR_NOT_FOUND);
  /* this protocol cuts to the budget, through a protected prefix: refused (rkv_evictor
   * compresses such sequences) */
  EXPECT_OK(rkv_blockmgr_seq_protect(m, 7, 16));
  EXPECT_STATUS(rkv_evict_cuda_describe(m, 7, maps, n_maps, 8, 8, 0, 0, 0, st, nb, 16, &n_new),
                RKV_ERR_UNSUPPORTED);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
  grid_limit_checks();
}

#ifndef RKV_HAVE_CUDA
int main(void) {
  host_checks();
  return cuda_test_skip("librkv built without CUDA");
}
#else
typedef struct ecase {
  rkv_evict_policy policy;
  rkv_dtype dt;
  uint32_t d, bs, hkv, group, layers;
  int32_t budget, window, n;
  bool fork;
  bool graph;     /* capture the compression in a CUDA graph and replay it */
  uint32_t flags; /* rkv_evict_cuda_batch.flags */
  uint32_t seqs;  /* sequences in the batch (0 = 1); more than 1 adds a skipped short one */
} ecase;

/* Original cache position of the token whose K+V row equals `row` (-1 if none). */
static int32_t find_pos(const uint8_t *orig_rows, int32_t n, const uint8_t *row, size_t rb) {
  for (int32_t j = 0; j < n; j++)
    if (memcmp(orig_rows + (size_t)j * 2 * rb, row, 2 * rb) == 0) return j;
  return -1;
}

/* Copies the K and V rows of a slot out of a host image of the whole pool. */
static void slot_row(const uint8_t *img, size_t bb, uint32_t bs, size_t rb, int64_t slot,
                     uint8_t *out) {
  const uint8_t *blk = img + (size_t)(slot / bs) * bb;
  const size_t o = (size_t)(slot % bs);
  memcpy(out, blk + o * rb, rb);
  memcpy(out + rb, blk + (bs + o) * rb, rb);
}

/* Sequence s of a case has n - 37 s tokens (all over budget); with seqs > 1 a short extra
 * sequence (budget - 3 tokens) gets a hand-made descriptor that the kernels must skip. */
static int32_t seq_len(const ecase *c, uint32_t s) {
  return c->n - 37 * (int32_t)s;
}

static void run_case(rkv_backend *cb, rkv_backend *gb, const ecase *c, uint64_t seed) {
  if (!cuda_test_case_selected()) return;
  uint64_t rng = seed;
  char tag[200];
  const uint32_t nseq = c->seqs ? c->seqs : 1;
  const bool with_short = nseq > 1;
  const int64_t short_id = 50;
  const int32_t n_short = c->budget - 3;
  snprintf(tag, sizeof tag,
           "%s %s d=%u bs=%u hkv=%u G=%u B=%d a=%d n=%d seqs=%u fork=%d graph=%d flags=%u",
           rkv_evict_policy_name(c->policy), rkv_dtype_name(c->dt), c->d, c->bs, c->hkv, c->group,
           c->budget, c->window, c->n, nseq, c->fork, c->graph, c->flags);
  const uint32_t hq = c->hkv * c->group;
  const uint32_t spseq = c->layers * c->hkv;
  const uint32_t bps = ((uint32_t)c->n + c->bs - 1) / c->bs; /* blocks of the longest stream */
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = (nseq + 1) * spseq * bps * 2 + 16;
  cfg.block_size = c->bs;
  cfg.num_layers = c->layers;
  cfg.num_kv_heads = c->hkv;
  cfg.head_dim = c->d;
  cfg.dtype = c->dt;
  cfg.watermark = 0.0f;
  rkv_blockmgr *mc = NULL, *mg = NULL;
  EXPECT_OK(rkv_blockmgr_create(&cfg, &mc));
  EXPECT_OK(rkv_blockmgr_create(&cfg, &mg));
  const rkv_kv_layout lay = rkv_blockmgr_kv_layout(mc);
  rkv_kv_pool *pc = NULL, *pg = NULL;
  EXPECT_OK(rkv_kv_pool_create(cb, &lay, cfg.num_blocks, &pc));
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, cfg.num_blocks, &pg));
  if (!mc || !mg || !pc || !pg) goto out_early;
  /* Identical histories in both managers: the sequences (each optionally forked), the short
   * one last. */
  for (int k = 0; k < 2; k++) {
    rkv_blockmgr *m = k ? mg : mc;
    for (uint32_t q = 0; q < nseq; q++) {
      EXPECT_OK(rkv_blockmgr_seq_create(m, q));
      EXPECT_OK(rkv_blockmgr_append(m, q, (uint32_t)seq_len(c, q), NULL, NULL, NULL));
      if (c->fork) EXPECT_OK(rkv_blockmgr_seq_fork(m, q, 100 + (int64_t)q));
    }
    if (with_short) {
      EXPECT_OK(rkv_blockmgr_seq_create(m, short_id));
      EXPECT_OK(rkv_blockmgr_append(m, short_id, (uint32_t)n_short, NULL, NULL, NULL));
    }
  }

  /* Pool contents: random K/V, then near-duplicate clusters among each stream's keys. */
  const size_t bb = rkv_kv_block_bytes(&lay), rb = (size_t)c->d * rkv_dtype_size(c->dt);
  const size_t elems = bb / rkv_dtype_size(c->dt);
  uint8_t *img = malloc(bb * cfg.num_blocks);
  for (size_t i = 0; i < elems * cfg.num_blocks; i++) rkv_dtype_store(c->dt, img, i, frand(&rng));
  const size_t slots_total = (size_t)cfg.num_blocks * c->bs;
  for (uint32_t q = 0; q < nseq; q++)
    for (uint32_t l = 0; l < c->layers; l++)
      for (uint32_t h = 0; h < c->hkv; h++)
        for (int32_t j = 1; j < seq_len(c, q); j++) {
          if (rkv_test_rand(&rng) % 4 != 0) continue;
          int32_t src = (int32_t)(rkv_test_rand(&rng) % (uint64_t)j);
          int64_t ss, ds;
          EXPECT_OK(rkv_blockmgr_stream_slot(mg, q, l, h, src, &ss));
          EXPECT_OK(rkv_blockmgr_stream_slot(mg, q, l, h, j, &ds));
          const size_t si = (size_t)(ss / c->bs) * elems + (size_t)(ss % c->bs) * c->d;
          const size_t di = (size_t)(ds / c->bs) * elems + (size_t)(ds % c->bs) * c->d;
          for (uint32_t e = 0; e < c->d; e++)
            rkv_dtype_store(c->dt, img, di + e,
                            rkv_dtype_load(c->dt, img, si + e) * (1.0f + 0.02f * frand(&rng)) +
                                0.01f * frand(&rng));
        }
  int32_t *all_ids = malloc(cfg.num_blocks * sizeof *all_ids);
  for (uint32_t i = 0; i < cfg.num_blocks; i++) all_ids[i] = (int32_t)i;
  EXPECT_OK(rkv_kv_pool_write_blocks(pc, all_ids, cfg.num_blocks, img));
  EXPECT_OK(rkv_kv_pool_write_blocks(pg, all_ids, cfg.num_blocks, img));
  /* H2O mass: distinct random scores per slot, same in both pools. */
  float *sc = malloc(slots_total * sizeof *sc);
  for (size_t i = 0; i < slots_total; i++) sc[i] = (float)rkv_test_uniform(&rng);
  memcpy(rkv_kv_pool_scores(pc), sc, slots_total * sizeof *sc);
  CK_DEV(cudaMemcpy(rkv_kv_pool_scores(pg), sc, slots_total * sizeof *sc, cudaMemcpyHostToDevice));

  /* Original rows per (sequence, stream) by position (K|V), for identification. */
  const size_t orig_stride = (size_t)c->n * 2 * rb; /* one stream */
  uint8_t *orig = malloc((size_t)nseq * spseq * orig_stride);
  for (uint32_t q = 0; q < nseq; q++)
    for (uint32_t l = 0; l < c->layers; l++)
      for (uint32_t h = 0; h < c->hkv; h++)
        for (int32_t j = 0; j < seq_len(c, q); j++) {
          int64_t sl;
          EXPECT_OK(rkv_blockmgr_stream_slot(mg, q, l, h, j, &sl));
          slot_row(img, bb, c->bs, rb, sl,
                   orig + ((size_t)q * spseq + (size_t)l * c->hkv + h) * orig_stride +
                       (size_t)j * 2 * rb);
        }

  /* Query windows: host ring for the CPU; device ring [nseq][layers][hq][window][d] filled by
   * one push per layer for all sequences (ring slot q, positions len - window ..). */
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = c->layers;
  qc.num_q_heads = hq;
  qc.head_dim = c->d;
  qc.window = (uint32_t)c->window;
  qc.max_seqs = nseq + 2;
  rkv_qwindow *qw = NULL;
  EXPECT_OK(rkv_qwindow_create(&qc, &qw));
  for (uint32_t q = 0; q < nseq; q++) EXPECT_OK(rkv_qwindow_seq_add(qw, q));
  rkv_cuda_qwindow ring = {NULL, nseq, c->layers, hq, (uint32_t)c->window, c->d};
  size_t ring_bytes = 0;
  EXPECT_OK(rkv_attn_cuda_qwindow_bytes(&ring, &ring_bytes));
  ring.data = dalloc(ring_bytes);
  CK_DEV(cudaMemset(ring.data, 0xFF, ring_bytes));
  const size_t qrow = (size_t)hq * c->d, qn = (size_t)nseq * c->window * qrow;
  float *q_host = malloc(qn * sizeof *q_host);
  float *dq = dalloc(qn * sizeof *q_host);
  int32_t *qi = malloc((nseq + 1) * sizeof *qi), *slots = malloc(nseq * sizeof *slots);
  int64_t *pos = malloc(nseq * sizeof *pos);
  for (uint32_t q = 0; q <= nseq; q++) qi[q] = (int32_t)q * c->window;
  for (uint32_t q = 0; q < nseq; q++) slots[q] = (int32_t)q, pos[q] = seq_len(c, q) - c->window;
  int32_t *dqi = dup_to_dev(qi, (nseq + 1) * sizeof *qi);
  int32_t *dslot = dup_to_dev(slots, nseq * sizeof *slots);
  int64_t *dpos = dup_to_dev(pos, nseq * sizeof *pos);
  for (uint32_t l = 0; l < c->layers; l++) {
    for (size_t i = 0; i < qn; i++) q_host[i] = 1.5f * frand(&rng);
    for (uint32_t q = 0; q < nseq; q++)
      EXPECT_OK(
          rkv_qwindow_push(qw, q, l, q_host + (size_t)q * c->window * qrow, (uint32_t)c->window));
    CK_DEV(cudaMemcpy(dq, q_host, qn * sizeof *q_host, cudaMemcpyHostToDevice));
    EXPECT_OK(rkv_attn_cuda_qwindow_push(gb, &ring, l, dq, dqi, dslot, dpos, nseq));
  }

  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = c->policy;
  p.budget = c->budget;
  p.window = c->window;
  p.sinks = 4;

  /* CPU path, sequence by sequence, layer by layer. */
  size_t wsc = 0;
  EXPECT_OK(rkv_evict_workspace_size(&p, c->hkv, hq, c->d, c->n, &wsc));
  void *wc = malloc(wsc ? wsc : 1);
  for (uint32_t q = 0; q < nseq; q++)
    for (uint32_t l = 0; l < c->layers; l++) {
      rkv_evict_result res;
      rkv_status s = rkv_evict_layer(&p, mc, pc, qw, hq, q, l, wc, wsc, &res);
      EXPECT_OK(s);
      if (s != RKV_OK) fprintf(stderr, "  cpu evict: %s\n", rkv_backend_last_error(cb));
    }
  free(wc);

  /* GPU path: every layer of every sequence in one batch (+ the short stream's descriptor). */
  const uint32_t cap_maps = nseq * spseq + 1, cap_blk = (nseq + 1) * spseq * bps;
  rkv_compact_map *maps = calloc(cap_maps, sizeof *maps);
  uint32_t *map_seq = calloc(cap_maps, sizeof *map_seq);
  int32_t *old_blocks = malloc(cap_blk * sizeof *old_blocks);
  int32_t *new_blocks = malloc(cap_blk * sizeof *new_blocks);
  int32_t *freed = malloc(cap_blk * sizeof *freed);
  rkv_evict_cuda_stream *st = calloc(cap_maps, sizeof *st);
  uint32_t n_maps = 0, n_old = 0, n_new = 0, n_freed = 0;
  for (uint32_t q = 0; q < nseq; q++) {
    uint32_t nm = 0, no = 0, nn = 0;
    EXPECT_OK(rkv_blockmgr_compact_uniform(mg, q, -1, c->budget, maps + n_maps, cap_maps - n_maps,
                                           &nm, old_blocks + n_old, cap_blk - n_old, &no));
    EXPECT_EQ_INT(nm, spseq);
    const int64_t qoff = (int64_t)q * c->layers * hq * c->window * c->d;
    EXPECT_OK(rkv_evict_cuda_describe(mg, q, maps + n_maps, nm, hq, c->window, qoff, (int32_t)n_old,
                                      (int32_t)n_new, st + n_maps, new_blocks + n_new,
                                      cap_blk - n_new, &nn));
    for (uint32_t i = 0; i < nm; i++) map_seq[n_maps + i] = q;
    n_maps += nm, n_old += no, n_new += nn;
  }
  EXPECT_OK(rkv_evict_cuda_freed_blocks(mg, old_blocks, n_old, freed, cap_blk, &n_freed));
  const uint32_t n_compressed = n_maps;
  const int32_t *short_ids = NULL;
  int32_t short_nb = 0;
  if (with_short) {
    /* Layer 0 head 0 of the short sequence, its own row as old and new: must be skipped. */
    EXPECT_OK(rkv_blockmgr_stream_blocks(mg, short_id, 0, 0, &short_ids, &short_nb));
    st[n_maps].old_len = n_short;
    st[n_maps].old_offset = (int32_t)n_old;
    st[n_maps].new_offset = (int32_t)n_new;
    for (int32_t i = 0; i < short_nb; i++) {
      old_blocks[n_old++] = short_ids[i];
      new_blocks[n_new++] = short_ids[i];
    }
    n_maps++;
  }
  rkv_evict_cuda_batch batch = RKV_EVICT_CUDA_BATCH_INIT;
  batch.num_streams = n_maps;
  batch.group = c->group;
  batch.max_len = c->n + 3; /* a bound, not the exact length */
  batch.streams = dup_to_dev(st, n_maps * sizeof *st);
  batch.old_blocks = dup_to_dev(old_blocks, n_old * sizeof *old_blocks);
  batch.new_blocks = dup_to_dev(new_blocks, n_new * sizeof *new_blocks);
  batch.qwin = ring.data;
  int32_t *d_kept = dalloc((size_t)n_maps * c->budget * sizeof(int32_t));
  CK_DEV(cudaMemset(d_kept, 0xFF, (size_t)n_maps * c->budget * sizeof(int32_t)));
  batch.kept = d_kept;
  batch.clear_blocks = n_freed ? dup_to_dev(freed, n_freed * sizeof *freed) : NULL;
  batch.n_clear = n_freed;
  batch.flags = c->flags;
  size_t wsg = 0;
  EXPECT_OK(rkv_evict_cuda_workspace_size(&p, pg, n_maps, c->group, batch.max_len, &wsg));
  void *wg = dalloc(wsg);
  CK_DEV(cudaMemset(wg, 0xFF, wsg)); /* stale workspace must not matter */
  EXPECT_STATUS(rkv_evict_cuda_compress(&p, pg, &batch, wg, wsg - 1), RKV_ERR_CAPACITY);
  rkv_status s;
  if (c->graph) {
    cudaStream_t cs = (cudaStream_t)rkv_backend_stream(gb);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
    s = rkv_evict_cuda_compress(&p, pg, &batch, wg, wsg);
    CK(cudaStreamEndCapture(cs, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK(cudaGraphLaunch(exec, cs));
    CK(cudaStreamSynchronize(cs));
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
  } else {
    s = rkv_evict_cuda_compress(&p, pg, &batch, wg, wsg);
  }
  EXPECT_OK(s);
  if (s != RKV_OK) fprintf(stderr, "  gpu evict: %s\n", rkv_backend_last_error(gb));
  EXPECT_OK(rkv_backend_sync(gb));
  EXPECT_OK(rkv_blockmgr_check(mc));
  EXPECT_OK(rkv_blockmgr_check(mg));

  /* Compare every compressed stream position by position; identify kept positions. */
  uint8_t *ic = malloc(bb * cfg.num_blocks), *ig = malloc(bb * cfg.num_blocks);
  EXPECT_OK(rkv_kv_pool_read_blocks(pc, all_ids, cfg.num_blocks, ic));
  EXPECT_OK(rkv_kv_pool_read_blocks(pg, all_ids, cfg.num_blocks, ig));
  float *scg = malloc(slots_total * sizeof *scg);
  CK_DEV(
      cudaMemcpy(scg, rkv_kv_pool_scores(pg), slots_total * sizeof *scg, cudaMemcpyDeviceToHost));
  const float *scc = rkv_kv_pool_scores(pc);
  int32_t *kept = malloc((size_t)n_maps * c->budget * sizeof *kept);
  CK_DEV(
      cudaMemcpy(kept, d_kept, (size_t)n_maps * c->budget * sizeof *kept, cudaMemcpyDeviceToHost));
  uint8_t *rowc = malloc(2 * rb), *rowg = malloc(2 * rb);
  int32_t *pc_pos = malloc((size_t)c->budget * sizeof *pc_pos);
  int32_t *pg_pos = malloc((size_t)c->budget * sizeof *pg_pos);
  int streams_bad = 0;
  for (uint32_t i = 0; i < n_compressed; i++) {
    const uint32_t q = map_seq[i], l = maps[i].layer, h = maps[i].head;
    const int32_t n = seq_len(c, q);
    int32_t lc = -1, lg = -1;
    EXPECT_OK(rkv_blockmgr_stream_len(mc, q, l, h, &lc));
    EXPECT_OK(rkv_blockmgr_stream_len(mg, q, l, h, &lg));
    EXPECT_EQ_INT(lc, c->budget);
    EXPECT_EQ_INT(lg, c->budget);
    const uint8_t *o = orig + ((size_t)q * spseq + (size_t)l * c->hkv + h) * orig_stride;
    int diff = 0, score_bad = 0, kept_bad = 0;
    for (int32_t j = 0; j < c->budget && lc == c->budget && lg == c->budget; j++) {
      int64_t sc_slot, sg_slot;
      EXPECT_OK(rkv_blockmgr_stream_slot(mc, q, l, h, j, &sc_slot));
      EXPECT_OK(rkv_blockmgr_stream_slot(mg, q, l, h, j, &sg_slot));
      slot_row(ic, bb, c->bs, rb, sc_slot, rowc);
      slot_row(ig, bb, c->bs, rb, sg_slot, rowg);
      pc_pos[j] = find_pos(o, n, rowc, rb);
      pg_pos[j] = find_pos(o, n, rowg, rb);
      if (pc_pos[j] != pg_pos[j] || pg_pos[j] < 0) diff++;
      if (kept[(size_t)i * c->budget + j] != pg_pos[j]) kept_bad++;
      if (scg[sg_slot] != scc[sc_slot]) score_bad++;
    }
    EXPECT(diff == 0);
    EXPECT(kept_bad == 0);
    EXPECT(score_bad == 0);
    if (diff || kept_bad || score_bad) {
      streams_bad++;
      fprintf(stderr,
              "  %s: seq %u layer %u head %u: %d positions differ, %d kept-list, %d scores\n", tag,
              q, l, h, diff, kept_bad, score_bad);
      for (int32_t j = 0, shown = 0; j < c->budget && shown < 6; j++)
        if (pc_pos[j] != pg_pos[j]) {
          fprintf(stderr, "    new pos %d: cpu kept old %d, gpu kept old %d (kept list %d)\n", j,
                  pc_pos[j], pg_pos[j], kept[(size_t)i * c->budget + j]);
          shown++;
        }
    }
  }
  /* Freed blocks carry no score; a fork child still sees its original tokens; the skipped
   * short stream is untouched (content, scores, and its kept-list row). */
  for (uint32_t i = 0; i < n_freed; i++) {
    int bad = 0;
    for (uint32_t t = 0; t < c->bs; t++) bad += scg[(size_t)freed[i] * c->bs + t] != 0.0f;
    EXPECT(bad == 0);
  }
  if (c->fork) {
    int child_bad = 0;
    for (uint32_t q = 0; q < nseq; q++)
      for (uint32_t l = 0; l < c->layers; l++)
        for (uint32_t h = 0; h < c->hkv; h++)
          for (int32_t j = 0; j < seq_len(c, q); j++) {
            int64_t sg_slot;
            EXPECT_OK(rkv_blockmgr_stream_slot(mg, 100 + (int64_t)q, l, h, j, &sg_slot));
            slot_row(ig, bb, c->bs, rb, sg_slot, rowg);
            child_bad += memcmp(rowg,
                                orig + ((size_t)q * spseq + (size_t)l * c->hkv + h) * orig_stride +
                                    (size_t)j * 2 * rb,
                                2 * rb) != 0;
            child_bad += scg[sg_slot] != sc[sg_slot];
          }
    EXPECT(child_bad == 0);
    if (child_bad) fprintf(stderr, "  %s: fork child changed at %d rows\n", tag, child_bad);
  }
  if (with_short) {
    int short_bad = 0;
    for (int32_t j = 0; j < n_short; j++) {
      const int64_t sl = (int64_t)short_ids[j / (int32_t)c->bs] * c->bs + j % (int32_t)c->bs;
      uint8_t *before = malloc(2 * rb);
      slot_row(img, bb, c->bs, rb, sl, before);
      slot_row(ig, bb, c->bs, rb, sl, rowg);
      short_bad += memcmp(before, rowg, 2 * rb) != 0;
      short_bad += scg[sl] != sc[sl];
      free(before);
    }
    for (int32_t j = 0; j < c->budget; j++)
      short_bad += kept[(size_t)(n_maps - 1) * c->budget + j] != -1;
    EXPECT(short_bad == 0);
    if (short_bad) fprintf(stderr, "  %s: skipped short stream changed (%d)\n", tag, short_bad);
  }
  if (streams_bad) fprintf(stderr, "  case failed: %s\n", tag);

  free(rowc), free(rowg), free(pc_pos), free(pg_pos), free(kept), free(scg), free(ic), free(ig);
  cudaFree(wg), cudaFree(d_kept), cudaFree((void *)batch.streams),
      cudaFree((void *)batch.old_blocks), cudaFree((void *)batch.new_blocks),
      cudaFree((void *)batch.clear_blocks);
  free(st), free(new_blocks), free(freed), free(maps), free(map_seq), free(old_blocks);
  cudaFree(dq), cudaFree(dqi), cudaFree(dslot), cudaFree(dpos), cudaFree(ring.data);
  free(q_host), free(qi), free(slots), free(pos);
  rkv_qwindow_destroy(qw);
  free(orig), free(sc), free(all_ids), free(img);
out_early:
  rkv_kv_pool_destroy(pc);
  rkv_kv_pool_destroy(pg);
  rkv_blockmgr_destroy(mc);
  rkv_blockmgr_destroy(mg);
}

/* Refusals that are checked before anything is enqueued. */
static void test_refusals(rkv_backend *gb) {
  const rkv_kv_layout lay = {RKV_DTYPE_BF16, 16, 128};
  rkv_kv_pool *pool = NULL;
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, 8, &pool));
  if (!pool) return;
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 32;
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  int32_t *z = dalloc(64);
  b.num_streams = 1;
  b.max_len = 64;
  b.streams = (const rkv_evict_cuda_stream *)z;
  b.old_blocks = z;
  b.new_blocks = z;
  size_t bytes = 0;
  EXPECT_OK(rkv_evict_cuda_workspace_size(&p, pool, 1, 1, 64, &bytes));
  EXPECT_STATUS(rkv_evict_cuda_compress(&p, pool, &b, NULL, 0), RKV_ERR_INVALID_ARG); /* qwin */
  p.policy = RKV_EVICT_FULL;
  EXPECT_STATUS(rkv_evict_cuda_compress(&p, pool, &b, z, 64), RKV_ERR_INVALID_ARG);
  p.policy = RKV_EVICT_STREAMING;
  EXPECT_STATUS(rkv_evict_cuda_compress(&p, pool, &b, z, 64), RKV_ERR_CAPACITY);
  b.max_len = 32; /* not above the budget */
  EXPECT_STATUS(rkv_evict_cuda_compress(&p, pool, &b, z, 64), RKV_ERR_INVALID_ARG);
  cudaFree(z);
  rkv_kv_pool_destroy(pool);
}

int main(void) {
  host_checks();
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *gb = NULL, *cb = NULL;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) return cuda_test_skip("no usable CUDA device");
  cfg.kind = RKV_BACKEND_CPU;
  cfg.num_threads = 1;
  EXPECT_OK(rkv_backend_create(&cfg, &cb));
  if (!cb) return rkv_test_finish();

  const rkv_dtype dts[3] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  const uint32_t ds[3] = {64, 128, 256};
  const uint32_t groups[3] = {1, 4, 8};
  uint64_t seed = 77;
  /* R-KV over the closed set; n spans 1..several similarity tiles and budgets; the f32 SIMT
   * similarity and the 3 x TF32 tensor-core one must both keep the CPU's tokens. */
  for (uint32_t tc = 0; tc < 2; tc++)
    for (int t = 0; t < 3; t++)
      for (int di = 0; di < 3; di++) {
        const int32_t n = 100 + 97 * (t * 3 + di); /* 100 .. 876 */
        ecase c = {RKV_EVICT_RKV,
                   dts[t],
                   ds[di],
                   (t + di) % 2 ? 32u : 16u,
                   2,
                   groups[(t + di) % 3],
                   2,
                   n / 2 + 5,
                   8,
                   n,
                   false,
                   false,
                   tc ? RKV_EVICT_CUDA_TENSOR_CORES : 0u,
                   (uint32_t)(t + di) % 2 + 1};
        run_case(cb, gb, &c, seed++);
      }
  /* Steady-state shape: B + buffer -> B, Llama-like heads. */
  {
    ecase c = {RKV_EVICT_RKV, RKV_DTYPE_BF16, 128,   16, 8, 4, 1, 256, 8,
               256 + 128,     false,          false, 0,  1};
    run_case(cb, gb, &c, seed++);
    c.flags = RKV_EVICT_CUDA_TENSOR_CORES;
    run_case(cb, gb, &c, seed++);
  }
  /* Baselines. */
  {
    ecase s = {RKV_EVICT_SNAPKV, RKV_DTYPE_BF16, 128, 16, 2, 4, 2, 100, 8, 333, false, false, 0, 3};
    run_case(cb, gb, &s, seed++);
    ecase w = {RKV_EVICT_SNAPKV, RKV_DTYPE_F16, 64, 32, 1, 8, 1, 70, 16, 171, false, false, 0, 1};
    run_case(cb, gb, &w, seed++);
    ecase st = {
        RKV_EVICT_STREAMING, RKV_DTYPE_F16, 64, 32, 2, 1, 2, 50, 8, 201, false, false, 0, 2};
    run_case(cb, gb, &st, seed++);
    ecase h = {RKV_EVICT_H2O, RKV_DTYPE_F32, 128, 16, 2, 2, 2, 90, 8, 250, false, false, 0, 3};
    run_case(cb, gb, &h, seed++);
  }
  /* Fork: shared leading blocks are replaced by fresh ones, which may be other streams' freed
   * tails: the scratch gather/scatter must keep every read before every write. The first one
   * also runs through a captured CUDA graph. */
  {
    ecase f = {RKV_EVICT_RKV, RKV_DTYPE_BF16, 128, 16, 2, 4, 2, 40, 8, 200, true, true, 0, 2};
    run_case(cb, gb, &f, seed++);
    ecase h = {RKV_EVICT_H2O, RKV_DTYPE_BF16, 64, 16, 2, 1, 3, 60, 8, 130, true, false, 0, 1};
    run_case(cb, gb, &h, seed++);
  }
  test_refusals(gb);
  rkv_backend_destroy(cb);
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
#endif
