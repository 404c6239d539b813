/* CUDA attention kernels against the CPU reference: decode (split-KV on and off, GQA 1/4/8,
 * ragged lengths including empty streams, blocks scattered through the pool, every dtype and
 * head_dim 64/128/256, block 16/32), prefill/extend with the causal mask, H2O score
 * accumulation, the KV write (bit-exact), the device query-window push, and the closed-set
 * refusals. Outputs are poisoned with NaN before every kernel so unwritten elements fail.
 * Skips (77) without a CUDA build or device. */
#include <rkv/attention.h>
#include <rkv/attention_cuda.h>
#include <rkv/evict_cuda.h>

#include "cuda_test_util.h"
#include "rkv_test.h"

/* Checks that run in every build. */
static void host_checks(void) {
  char err[128] = "";
  EXPECT_STATUS(rkv_attn_cuda_supported(96, 16, RKV_DTYPE_BF16, err, sizeof err),
                RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(err, "96") != NULL);
  EXPECT_STATUS(rkv_attn_cuda_supported(128, 8, RKV_DTYPE_F16, err, sizeof err),
                RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(err, "8") != NULL);
  EXPECT_OK(rkv_attn_cuda_supported(256, 32, RKV_DTYPE_F32, err, sizeof err));
  rkv_cuda_qwindow w = {NULL, 3, 2, 4, 8, 64};
  size_t bytes = 0;
  EXPECT_OK(rkv_attn_cuda_qwindow_bytes(&w, &bytes));
  EXPECT_EQ_INT(bytes, 3u * 2 * 4 * 8 * 64 * sizeof(float));
  w.window = 0;
  EXPECT_STATUS(rkv_attn_cuda_qwindow_bytes(&w, &bytes), RKV_ERR_INVALID_ARG);
}

#ifndef RKV_HAVE_CUDA
int main(void) {
  host_checks();
  return cuda_test_skip("librkv built without CUDA");
}
#else
typedef struct tcase {
  rkv_dtype dt;
  uint32_t d, bs, hkv, group, seqs;
  int32_t max_len;
  bool prefill, split, scores;
  bool graph; /* run the CUDA call through a captured CUDA graph */
} tcase;

/* A random paged batch mirrored in a CPU pool and a CUDA pool with identical bytes. */
typedef struct batch {
  rkv_kv_pool *cpu, *gpu;
  int32_t *indptr, *indices, *last_len, *q_indptr;
  int32_t *d_indptr, *d_indices, *d_last_len, *d_q_indptr;
  uint32_t streams, rows, num_blocks;
  int32_t max_len;
} batch;

static void batch_free(batch *b) {
  rkv_kv_pool_destroy(b->cpu);
  rkv_kv_pool_destroy(b->gpu);
  free(b->indptr), free(b->indices), free(b->last_len), free(b->q_indptr);
  cudaFree(b->d_indptr), cudaFree(b->d_indices), cudaFree(b->d_last_len), cudaFree(b->d_q_indptr);
}

static bool batch_make(rkv_backend *cb, rkv_backend *gb, const tcase *c, uint64_t *rng, batch *b) {
  memset(b, 0, sizeof *b);
  const rkv_kv_layout lay = {c->dt, c->bs, c->d};
  b->streams = c->seqs * c->hkv;
  int32_t *lens = calloc(b->streams, sizeof *lens);
  int32_t *n_new = calloc(c->seqs, sizeof *n_new);
  for (uint32_t s = 0; s < c->seqs; s++) {
    /* Ragged: every length in [0, max_len], with a few exact block multiples. */
    int32_t len = (int32_t)(rkv_test_rand(rng) % (uint64_t)(c->max_len + 1));
    if (s % 5 == 3) len = (len / (int32_t)c->bs) * (int32_t)c->bs;
    if (c->prefill) {
      if (len == 0) len = 1;
      n_new[s] = 1 + (int32_t)(rkv_test_rand(rng) % (uint64_t)(len < 150 ? len : 150));
      if (s == 0) n_new[s] = len; /* a whole prompt */
    }
    for (uint32_t h = 0; h < c->hkv; h++) lens[s * c->hkv + h] = len;
  }
  if (c->seqs > 1 && !c->prefill) lens[c->hkv] = 0; /* an empty stream */
  b->indptr = calloc(b->streams + 1, sizeof(int32_t));
  b->last_len = calloc(b->streams, sizeof(int32_t));
  for (uint32_t s = 0; s < b->streams; s++) {
    int32_t nb = (lens[s] + (int32_t)c->bs - 1) / (int32_t)c->bs;
    b->indptr[s + 1] = b->indptr[s] + nb;
    b->last_len[s] = nb ? lens[s] - (nb - 1) * (int32_t)c->bs : 0;
    if (lens[s] > b->max_len) b->max_len = lens[s];
  }
  const int32_t nnz = b->indptr[b->streams];
  b->num_blocks = (uint32_t)nnz + 7;
  /* Blocks scattered: a random permutation of the pool's ids. */
  int32_t *perm = malloc(b->num_blocks * sizeof *perm);
  for (uint32_t i = 0; i < b->num_blocks; i++) perm[i] = (int32_t)i;
  for (uint32_t i = b->num_blocks - 1; i > 0; i--) {
    uint32_t j = (uint32_t)(rkv_test_rand(rng) % (i + 1));
    int32_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  b->indices = malloc((size_t)(nnz ? nnz : 1) * sizeof(int32_t));
  memcpy(b->indices, perm, (size_t)nnz * sizeof(int32_t));
  free(perm);
  if (c->prefill) {
    b->q_indptr = calloc(c->seqs + 1, sizeof(int32_t));
    for (uint32_t s = 0; s < c->seqs; s++) b->q_indptr[s + 1] = b->q_indptr[s] + n_new[s];
    b->rows = (uint32_t)b->q_indptr[c->seqs];
  } else {
    b->rows = c->seqs;
  }
  free(lens);
  free(n_new);
  if (rkv_kv_pool_create(cb, &lay, b->num_blocks, &b->cpu) != RKV_OK ||
      rkv_kv_pool_create(gb, &lay, b->num_blocks, &b->gpu) != RKV_OK) {
    RKV_TEST_FAIL_("pool create: %s / %s", rkv_backend_last_error(cb), rkv_backend_last_error(gb));
    return false;
  }
  const size_t bb = rkv_kv_block_bytes(&lay);
  const size_t per_block = bb / rkv_dtype_size(c->dt);
  uint8_t *host = malloc(bb * b->num_blocks);
  int32_t *ids = malloc(b->num_blocks * sizeof *ids);
  for (uint32_t i = 0; i < b->num_blocks; i++) ids[i] = (int32_t)i;
  for (size_t i = 0; i < per_block * b->num_blocks; i++)
    rkv_dtype_store(c->dt, host, i, frand(rng));
  EXPECT_OK(rkv_kv_pool_write_blocks(b->cpu, ids, b->num_blocks, host));
  EXPECT_OK(rkv_kv_pool_write_blocks(b->gpu, ids, b->num_blocks, host));
  free(host);
  free(ids);
  b->d_indptr = dup_to_dev(b->indptr, (b->streams + 1) * sizeof(int32_t));
  b->d_indices = dup_to_dev(b->indices, (size_t)nnz * sizeof(int32_t));
  b->d_last_len = dup_to_dev(b->last_len, b->streams * sizeof(int32_t));
  if (c->prefill) b->d_q_indptr = dup_to_dev(b->q_indptr, (c->seqs + 1) * sizeof(int32_t));
  return true;
}

/* Elementwise |a - b| <= atol + rtol |b|, every a finite; prints the first few misses. */
static int compare(const char *what, const float *got, const float *want, size_t n, double atol,
                   double rtol) {
  int bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - (double)want[i]);
    if (!isfinite(got[i]) || e > atol + rtol * fabs((double)want[i])) {
      if (bad < 5) fprintf(stderr, "  %s[%zu]: got %.8g want %.8g\n", what, i, got[i], want[i]);
      bad++;
    }
    if (e > worst) worst = e;
  }
  if (bad)
    fprintf(stderr, "  %s: %d of %zu elements off (max abs err %.3g)\n", what, bad, n, worst);
  return bad;
}

static void run_case(rkv_backend *cb, rkv_backend *gb, const tcase *c, uint64_t seed) {
  if (!cuda_test_case_selected()) return;
  uint64_t rng = seed;
  batch b;
  if (!batch_make(cb, gb, c, &rng, &b)) return;
  const uint32_t hq = c->hkv * c->group;
  /* every shape launched here passes the up-front check, and it changes nothing */
  EXPECT_OK(rkv_attn_check_heads(b.gpu, hq, c->hkv));
  const size_t qn = (size_t)b.rows * hq * c->d;
  float *q = malloc(qn * sizeof *q), *ref = malloc(qn * sizeof *ref),
        *got = malloc(qn * sizeof *got);
  for (size_t i = 0; i < qn; i++) q[i] = 2.0f * frand(&rng);
  float *d_q = dup_to_dev(q, qn * sizeof *q), *d_out = dalloc(qn * sizeof(float));
  CK_DEV(cudaMemset(d_out, 0xFF, qn * sizeof(float))); /* NaN poison */
  for (size_t i = 0; i < qn; i++) ref[i] = NAN;

  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = c->seqs;
  p.num_q_heads = hq;
  p.num_kv_heads = c->hkv;
  p.head_dim = c->d;
  p.accumulate_scores = c->scores;
  p.table.num_streams = (int32_t)b.streams;
  p.table.block_size = (int32_t)c->bs;
  /* CPU run. */
  p.q = q;
  p.out = ref;
  p.table.indptr = b.indptr;
  p.table.indices = b.indices;
  p.table.last_len = b.last_len;
  p.q_indptr = b.q_indptr;
  size_t ws_cpu = 0;
  EXPECT_OK(rkv_attn_workspace_size(b.cpu, &p, &ws_cpu));
  void *wc = malloc(ws_cpu ? ws_cpu : 1);
  EXPECT_OK(c->prefill ? rkv_attn_prefill(b.cpu, &p, wc, ws_cpu)
                       : rkv_attn_decode(b.cpu, &p, wc, ws_cpu));
  free(wc);
  /* CUDA run. */
  size_t ws_gpu = 0;
  void *wg = NULL;
  if (c->split) {
    EXPECT_OK(rkv_attn_workspace_bound(b.gpu, c->seqs, hq, c->d, b.max_len, &ws_gpu));
    if (ws_gpu) wg = dalloc(ws_gpu);
  }
  p.q = d_q;
  p.out = d_out;
  p.table.indptr = b.d_indptr;
  p.table.indices = b.d_indices;
  p.table.last_len = b.d_last_len;
  p.q_indptr = b.d_q_indptr;
  rkv_status st;
  if (c->graph) {
    /* Capture (strict global mode: any synchronising call inside would break it), then poison
     * the output again and replay: the graph alone must produce the result. */
    cudaStream_t cs = (cudaStream_t)rkv_backend_stream(gb);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
    st = c->prefill ? rkv_attn_prefill(b.gpu, &p, wg, ws_gpu)
                    : rkv_attn_decode(b.gpu, &p, wg, ws_gpu);
    CK(cudaStreamEndCapture(cs, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK_DEV(cudaMemset(d_out, 0xFF, qn * sizeof(float)));
    CK(cudaGraphLaunch(exec, cs));
    CK(cudaStreamSynchronize(cs));
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
  } else {
    st = c->prefill ? rkv_attn_prefill(b.gpu, &p, wg, ws_gpu)
                    : rkv_attn_decode(b.gpu, &p, wg, ws_gpu);
  }
  EXPECT_OK(st);
  if (st != RKV_OK) fprintf(stderr, "  %s\n", rkv_backend_last_error(gb));
  EXPECT_OK(rkv_backend_sync(gb));
  CK_DEV(cudaMemcpy(got, d_out, qn * sizeof(float), cudaMemcpyDeviceToHost));
  char what[160];
  snprintf(what, sizeof what, "%s %s d=%u bs=%u G=%u hkv=%u seqs=%u split=%d scores=%d out",
           c->prefill ? "prefill" : "decode", rkv_dtype_name(c->dt), c->d, c->bs, c->group, c->hkv,
           c->seqs, c->split, c->scores);
  int bad = compare(what, got, ref, qn, 2e-5, 2e-4);
  EXPECT(bad == 0);
  if (bad) fprintf(stderr, "  case: %s (max_len %d, ws %zu)\n", what, b.max_len, ws_gpu);
  if (c->scores) {
    const size_t ns = (size_t)b.num_blocks * c->bs;
    float *sc = malloc(ns * sizeof *sc);
    CK_DEV(cudaMemcpy(sc, rkv_kv_pool_scores(b.gpu), ns * sizeof(float), cudaMemcpyDeviceToHost));
    snprintf(what, sizeof what, "%s %s d=%u G=%u scores", c->prefill ? "prefill" : "decode",
             rkv_dtype_name(c->dt), c->d, c->group);
    EXPECT(compare(what, sc, rkv_kv_pool_scores(b.cpu), ns, 1e-5, 1e-4) == 0);
    free(sc);
  }
  cudaFree(wg);
  cudaFree(d_q);
  cudaFree(d_out);
  free(q), free(ref), free(got);
  batch_free(&b);
}

static void test_write_kv(rkv_backend *cb, rkv_backend *gb, rkv_dtype dt, uint32_t d, uint32_t bs,
                          uint64_t seed) {
  uint64_t rng = seed;
  const rkv_kv_layout lay = {dt, bs, d};
  const uint32_t nb = 9, n = 37;
  rkv_kv_pool *cp = NULL, *gp = NULL;
  EXPECT_OK(rkv_kv_pool_create(cb, &lay, nb, &cp));
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, nb, &gp));
  if (!cp || !gp) return;
  int64_t slots[37];
  /* Distinct random slots: a prefix of a shuffled range. */
  int64_t all[9 * 32];
  const uint32_t ns = nb * bs;
  for (uint32_t i = 0; i < ns; i++) all[i] = i;
  for (uint32_t i = ns - 1; i > 0; i--) {
    uint32_t j = (uint32_t)(rkv_test_rand(&rng) % (i + 1));
    int64_t t = all[i];
    all[i] = all[j];
    all[j] = t;
  }
  memcpy(slots, all, sizeof slots);
  float *k = malloc((size_t)n * d * sizeof *k), *v = malloc((size_t)n * d * sizeof *v);
  for (size_t i = 0; i < (size_t)n * d; i++) k[i] = 3.0f * frand(&rng), v[i] = frand(&rng);
  float seed_sc[9 * 32];
  for (uint32_t i = 0; i < ns; i++) seed_sc[i] = 1.0f + (float)i;
  memcpy(rkv_kv_pool_scores(cp), seed_sc, ns * sizeof(float));
  CK_DEV(cudaMemcpy(rkv_kv_pool_scores(gp), seed_sc, ns * sizeof(float), cudaMemcpyHostToDevice));
  EXPECT_OK(rkv_attn_write_kv(cp, k, v, slots, n));
  float *dk = dup_to_dev(k, (size_t)n * d * sizeof *k),
        *dv = dup_to_dev(v, (size_t)n * d * sizeof *v);
  int64_t *ds = dup_to_dev(slots, sizeof slots);
  EXPECT_OK(rkv_attn_write_kv(gp, dk, dv, ds, n));
  const size_t bb = rkv_kv_block_bytes(&lay);
  uint8_t *hc = malloc(bb * nb), *hg = malloc(bb * nb);
  int32_t ids[9];
  for (uint32_t i = 0; i < nb; i++) ids[i] = (int32_t)i;
  EXPECT_OK(rkv_kv_pool_read_blocks(cp, ids, nb, hc));
  EXPECT_OK(rkv_kv_pool_read_blocks(gp, ids, nb, hg));
  EXPECT(memcmp(hc, hg, bb * nb) == 0);
  /* Written slots restart their H2O mass at zero; others keep theirs. */
  float sc[9 * 32];
  CK_DEV(cudaMemcpy(sc, rkv_kv_pool_scores(gp), ns * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT(memcmp(sc, rkv_kv_pool_scores(cp), ns * sizeof(float)) == 0);
  free(hc), free(hg), free(k), free(v);
  cudaFree(dk), cudaFree(dv), cudaFree(ds);
  rkv_kv_pool_destroy(cp);
  rkv_kv_pool_destroy(gp);
}

static void test_qwindow(rkv_backend *gb, uint64_t seed) {
  uint64_t rng = seed;
  rkv_cuda_qwindow w = {NULL, 3, 2, 4, 4, 64};
  size_t bytes = 0;
  EXPECT_OK(rkv_attn_cuda_qwindow_bytes(&w, &bytes));
  w.data = dalloc(bytes);
  CK_DEV(cudaMemset(w.data, 0xFF, bytes));
  const size_t nf = bytes / sizeof(float);
  float *model = malloc(bytes), *got = malloc(bytes);
  memset(model, 0xFF, bytes);
  /* Prefill push into layer 1: sequence 0 -> slot 2 (5 rows from position 10), sequence 1 ->
   * slot 0 (2 rows from position 3). */
  const int32_t q_indptr[3] = {0, 5, 7};
  const int32_t slots[2] = {2, 0};
  const int64_t pos[2] = {10, 3};
  const size_t row = (size_t)w.num_q_heads * w.head_dim;
  float *q = malloc(7 * row * sizeof *q);
  for (size_t i = 0; i < 7 * row; i++) q[i] = frand(&rng);
  float *dq = dup_to_dev(q, 7 * row * sizeof *q);
  int32_t *dqi = dup_to_dev(q_indptr, sizeof q_indptr), *dsl = dup_to_dev(slots, sizeof slots);
  int64_t *dpos = dup_to_dev(pos, sizeof pos);
  EXPECT_OK(rkv_attn_cuda_qwindow_push(gb, &w, 1, dq, dqi, dsl, dpos, 2));
  for (int b = 0; b < 2; b++)
    for (int32_t r = q_indptr[b]; r < q_indptr[b + 1]; r++) {
      const int64_t t = pos[b] + (r - q_indptr[b]);
      if (q_indptr[b + 1] - r > (int32_t)w.window) continue; /* only the last window rows */
      for (uint32_t h = 0; h < w.num_q_heads; h++)
        memcpy(model + ((((size_t)slots[b] * w.num_layers + 1) * w.num_q_heads + h) * w.window +
                        (size_t)(t % w.window)) *
                           w.head_dim,
               q + (size_t)r * row + (size_t)h * w.head_dim, w.head_dim * sizeof(float));
    }
  /* Decode push into layer 0 (NULL q_indptr): row b is sequence b's token at pos[b]. */
  EXPECT_OK(rkv_attn_cuda_qwindow_push(gb, &w, 0, dq, NULL, dsl, dpos, 2));
  for (int b = 0; b < 2; b++)
    for (uint32_t h = 0; h < w.num_q_heads; h++)
      memcpy(model + ((((size_t)slots[b] * w.num_layers + 0) * w.num_q_heads + h) * w.window +
                      (size_t)(pos[b] % w.window)) *
                         w.head_dim,
             q + (size_t)b * row + (size_t)h * w.head_dim, w.head_dim * sizeof(float));
  EXPECT_STATUS(rkv_attn_cuda_qwindow_push(gb, &w, 2, dq, NULL, dsl, dpos, 2), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_backend_sync(gb));
  CK_DEV(cudaMemcpy(got, w.data, bytes, cudaMemcpyDeviceToHost));
  EXPECT(memcmp(got, model, bytes) == 0);
  (void)nf;
  free(model), free(got), free(q);
  cudaFree(w.data), cudaFree(dq), cudaFree(dqi), cudaFree(dsl), cudaFree(dpos);
}

/* A GQA group too large for one CTA is refused up front, before any launch. */
static void test_check_heads(rkv_backend *gb) {
  const rkv_kv_layout lay = {RKV_DTYPE_BF16, 16, 256};
  rkv_kv_pool *pool = NULL;
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, 4, &pool));
  if (!pool) return;
  EXPECT_OK(rkv_attn_check_heads(pool, 32, 8));
  EXPECT_OK(rkv_attn_check_heads(pool, 64, 1));
  EXPECT_STATUS(rkv_attn_check_heads(pool, 1024, 1), RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(rkv_backend_last_error(gb), "GQA group 1024") != NULL);
  EXPECT_STATUS(rkv_attn_check_heads(pool, 12, 8), RKV_ERR_INVALID_ARG);
  rkv_kv_pool_destroy(pool);
}

static void test_unsupported(rkv_backend *gb) {
  const rkv_kv_layout bad_d = {RKV_DTYPE_BF16, 16, 96}, bad_bs = {RKV_DTYPE_F16, 8, 128};
  rkv_kv_pool *pool = NULL;
  if (rkv_kv_pool_create(gb, &bad_d, 4, &pool) == RKV_OK) {
    rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
    int32_t *z = dalloc(64);
    float *f = dalloc(96 * 4 * 4);
    p.num_seqs = 1, p.num_q_heads = 1, p.num_kv_heads = 1, p.head_dim = 96;
    p.q = f, p.out = f;
    p.table.num_streams = 1, p.table.block_size = 16;
    p.table.indptr = z, p.table.indices = z, p.table.last_len = z;
    EXPECT_STATUS(rkv_attn_decode(pool, &p, NULL, 0), RKV_ERR_UNSUPPORTED);
    EXPECT(strstr(rkv_backend_last_error(gb), "96") != NULL);
    EXPECT_STATUS(rkv_attn_check_heads(pool, 8, 1), RKV_ERR_UNSUPPORTED);
    EXPECT(strstr(rkv_backend_last_error(gb), "96") != NULL);
    rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
    size_t bytes = 0;
/* the deprecated call must keep refusing layouts outside the kernels' set */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    EXPECT_STATUS(rkv_evict_cuda_workspace_size(&ep, pool, 1, 1, 2048, &bytes),
                  RKV_ERR_UNSUPPORTED);
#pragma GCC diagnostic pop
    cudaFree(z), cudaFree(f);
    rkv_kv_pool_destroy(pool);
  }
  pool = NULL;
  if (rkv_kv_pool_create(gb, &bad_bs, 4, &pool) == RKV_OK) {
    float *k = dalloc(128 * 4);
    int64_t *s = dalloc(8);
    rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
    int32_t *z = dalloc(64);
    p.num_seqs = 1, p.num_q_heads = 1, p.num_kv_heads = 1, p.head_dim = 128;
    p.q = k, p.out = k;
    p.table.num_streams = 1, p.table.block_size = 8;
    p.table.indptr = z, p.table.indices = z, p.table.last_len = z;
    EXPECT_STATUS(rkv_attn_decode(pool, &p, NULL, 0), RKV_ERR_UNSUPPORTED);
    EXPECT(strstr(rkv_backend_last_error(gb), "8") != NULL);
    cudaFree(k), cudaFree(s), cudaFree(z);
    rkv_kv_pool_destroy(pool);
  }
}

int main(void) {
  host_checks();
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *gb = NULL, *cb = NULL;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) return cuda_test_skip("no usable CUDA device");
  cfg.kind = RKV_BACKEND_CPU;
  cfg.num_threads = 2;
  EXPECT_OK(rkv_backend_create(&cfg, &cb));
  if (!cb) return rkv_test_finish();

  const rkv_dtype dts[3] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  const uint32_t ds[3] = {64, 128, 256};
  const uint32_t groups[3] = {1, 4, 8};
  uint64_t seed = 1000;
  /* Decode: every dtype x head_dim x block size, GQA cycling, split on and off. */
  for (int t = 0; t < 3; t++)
    for (int di = 0; di < 3; di++)
      for (uint32_t bs = 16; bs <= 32; bs *= 2)
        for (int split = 0; split < 2; split++) {
          tcase c = {dts[t], ds[di],     bs,    2,    groups[(t + di + split) % 3], 5, 300,
                     false,  split == 1, false, false};
          run_case(cb, gb, &c, seed++);
        }
  /* Decode with a large batch (no split wanted) and long streams (many splits). */
  {
    tcase c = {RKV_DTYPE_BF16, 128, 16, 8, 4, 40, 200, false, true, false, false};
    run_case(cb, gb, &c, seed++);
    tcase l = {RKV_DTYPE_F16, 128, 32, 1, 8, 2, 5000, false, true, false, false};
    run_case(cb, gb, &l, seed++);
    /* Split-KV decode and a prefill, each captured in a CUDA graph and replayed. */
    tcase g = {RKV_DTYPE_BF16, 128, 16, 2, 4, 3, 900, false, true, false, true};
    run_case(cb, gb, &g, seed++);
    tcase gp = {RKV_DTYPE_F16, 64, 16, 2, 2, 2, 200, true, false, false, true};
    run_case(cb, gb, &gp, seed++);
  }
  /* Prefill / extend: causal mask, several row tiles per sequence. */
  for (int t = 0; t < 3; t++)
    for (int di = 0; di < 3; di++) {
      tcase c = {dts[t], ds[di], t == 1 ? 32u : 16u, 2, groups[(t + di) % 3], 3, 260, true, false,
                 false,  false};
      run_case(cb, gb, &c, seed++);
    }
  /* H2O score accumulation, decode and prefill. */
  for (int di = 0; di < 3; di++) {
    tcase c = {RKV_DTYPE_BF16, ds[di], 16, 2, groups[di], 4, 180, false, true, true, false};
    run_case(cb, gb, &c, seed++);
    tcase p = {RKV_DTYPE_F32, ds[di], 32, 1, groups[di], 2, 120, true, false, true, false};
    run_case(cb, gb, &p, seed++);
  }
  for (int t = 0; t < 3; t++) {
    test_write_kv(cb, gb, dts[t], 64, 16, seed++);
    test_write_kv(cb, gb, dts[t], 256, 32, seed++);
  }
  test_qwindow(gb, seed++);
  test_unsupported(gb);
  test_check_heads(gb);
  rkv_backend_destroy(cb);
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
#endif
