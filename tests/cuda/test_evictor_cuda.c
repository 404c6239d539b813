/* rkv_evictor on a CUDA pool against the same evictor on a CPU pool built identically (the
 * fixture of tests/unit/evict, at head_dim 64 and block 16, inside the kernels' closed set):
 * three sequences in one run with two parameter sets (two batched launches), the windows as
 * rotated rings in device memory; every policy, f32 / f16 / bf16, and one layer alone. After
 * the run the CUDA pool is read back: lengths, block tables, K/V rows and masses of every kept
 * token, every slot's mass and the free blocks equal the CPU run's (the kernels select like the
 * CPU except on scores tied to ~1e-12, which random keys do not produce). Every coarser
 * granularity (layer, kvhead, sequence: the group kernel sums the members' scores) the same
 * way, in bf16. The same with the evictor's own query window in device memory (an rkv_qwindow
 * on the CUDA backend filled by its batched push; adds name no window), f32 and bf16. With a
 * protected prefix of one block (prefix caching's protect rule): selection after it, every
 * policy, f32 per stream and bf16 per sequence. Also: a window over 256 is refused. Skips (77)
 * without a CUDA build or device. */
#define EVF_HEAD_DIM 64
#define EVF_BLOCK 16
#include "../unit/evict/evictor_fixture.h"
#include "cuda_test_util.h"

#ifndef RKV_HAVE_CUDA
int main(void) {
  return cuda_test_skip("librkv built without CUDA");
}
#else

enum { NBLK = 400 };

static void pool_to_device(fixture *f, rkv_kv_pool *gp, int32_t *ids) {
  EXPECT_OK(rkv_kv_pool_write_blocks(gp, ids, NBLK, rkv_kv_pool_base(f->pool)));
  CK_DEV(cudaMemcpy(rkv_kv_pool_scores(gp), rkv_kv_pool_scores(f->pool), (size_t)NBLK * BS * 4,
                    cudaMemcpyHostToDevice));
}

static void pool_to_host(rkv_kv_pool *gp, fixture *f, int32_t *ids) {
  EXPECT_OK(rkv_kv_pool_read_blocks(gp, ids, NBLK, rkv_kv_pool_base(f->pool)));
  CK_DEV(cudaMemcpy(rkv_kv_pool_scores(f->pool), rkv_kv_pool_scores(gp), (size_t)NBLK * BS * 4,
                    cudaMemcpyDeviceToHost));
}

static rkv_evictor *make(rkv_blockmgr *m, rkv_kv_pool *pool, const rkv_qwindow *qw,
                         const rkv_evict_params *p, rkv_evict_granularity g) {
  rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
  c.num_q_heads = QH, c.params = *p, c.max_seqs = MAXSEQ, c.qwindow = qw, c.granularity = g;
  rkv_evictor *ev = NULL;
  char err[256] = "";
  if (rkv_evictor_create(&c, m, pool, &ev, err, sizeof err) != RKV_OK)
    RKV_TEST_FAIL_("rkv_evictor_create: %s", err);
  return ev;
}

/* The host windows of sequences 1..3 in an rkv_qwindow on the CUDA backend: each layer's W
 * rows, oldest first, through one plan and one batched push per layer. */
static rkv_qwindow *device_windows(rkv_backend *gb, fixture *f) {
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = L, qc.num_q_heads = QH, qc.head_dim = D, qc.window = W, qc.backend = gb;
  rkv_qwindow *w = NULL;
  EXPECT_OK(rkv_qwindow_create(&qc, &w));
  if (!w) return NULL;
  static float hq[L][3 * W][QH * D], tmp[QH * W * D];
  int64_t ids[3];
  int32_t ip[4] = {0, W, 2 * W, 3 * W};
  for (int64_t s = 1; s <= 3; s++) {
    ids[s - 1] = s;
    EXPECT_OK(rkv_qwindow_seq_add(w, s));
    for (uint32_t l = 0; l < L; l++) {
      uint32_t cnt = 0;
      EXPECT_OK(rkv_qwindow_get(f->qw, s, l, tmp, &cnt));
      EXPECT_EQ_INT(cnt, W);
      for (uint32_t r = 0; r < W; r++)
        for (uint32_t h = 0; h < QH; h++)
          memcpy(&hq[l][(s - 1) * W + r][h * D], tmp + ((size_t)h * W + r) * D, D * sizeof(float));
    }
  }
  float *dq = dup_to_dev(hq, sizeof hq);
  EXPECT_OK(rkv_qwindow_plan(w, ids, ip, 3));
  for (uint32_t l = 0; l < L; l++)
    EXPECT_OK(rkv_qwindow_push_planned(w, l, dq + (size_t)l * 3 * W * QH * D));
  EXPECT_OK(rkv_backend_sync(gb));
  CK(cudaFree(dq));
  return w;
}

/* prot: tokens every sequence protects (whole blocks), 0 for none. */
static void run_case(rkv_backend *gb, rkv_evict_policy pol, rkv_dtype dt, int32_t layer,
                     rkv_evict_granularity gran, bool own, int32_t prot) {
  fixture c, g;
  const int32_t n[3] = {90, 75, 60};
  for (int k = 0; k < 2; k++) {
    fixture *f = k ? &g : &c;
    fx_init(f, dt, NBLK, 41 + (uint64_t)pol, false);
    for (int64_t s = 1; s <= 3; s++) fx_seq(f, s, n[s - 1], W + 3 * (uint32_t)s);
    for (int64_t s = 1; prot && s <= 3; s++) EXPECT_OK(rkv_blockmgr_seq_protect(f->m, s, prot));
  }
  int32_t ids[NBLK];
  for (int32_t i = 0; i < NBLK; i++) ids[i] = i;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(g.m);
  rkv_kv_pool *gp = NULL;
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, NBLK, &gp));
  if (!gp) return;
  pool_to_device(&g, gp, ids);
  for (int64_t s = 1; s <= 3; s++) (void)fx_ring_image(&g, s, (int32_t)(s * 3) % W);
  float *ring = dup_to_dev(g.host_ring, sizeof g.host_ring);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT, p3;
  p.policy = pol, p.budget = 40, p.window = W;
  p3 = p, p3.budget = 33, p3.lambda = 0.3f;
  rkv_qwindow *gqw = own ? device_windows(gb, &g) : NULL;
  rkv_evictor *ec = make(c.m, c.pool, c.qw, &p, gran), *eg = make(g.m, gp, gqw, &p, gran);
  for (int64_t s = 1; s <= 3; s++) {
    const rkv_evict_params *ps = s == 3 ? &p3 : NULL;
    const rkv_evictor_window win = {ring + (size_t)(s - 1) * L * QH * W * D, (int32_t)(s * 3) % W};
    EXPECT_OK(rkv_evictor_add(ec, s, layer, ps, NULL));
    EXPECT_OK(rkv_evictor_add(eg, s, layer, ps, own ? NULL : &win));
  }
  rkv_evictor_result rc[MAXSEQ], rg[MAXSEQ];
  uint32_t nc = 0, ng = 0;
  EXPECT_OK(rkv_evictor_run(ec, rc, MAXSEQ, &nc));
  if (rkv_evictor_run(eg, rg, MAXSEQ, &ng) != RKV_OK)
    RKV_TEST_FAIL_("cuda run: %s", rkv_evictor_last_error(eg));
  EXPECT_OK(rkv_backend_sync(gb));
  EXPECT_EQ_INT(ng, nc);
  for (uint32_t i = 0; i < nc && i < ng; i++) {
    EXPECT(rg[i].status == RKV_OK && rg[i].compressed == rc[i].compressed);
    EXPECT_EQ_INT(rg[i].tokens_evicted, rc[i].tokens_evicted);
    EXPECT_EQ_INT(rg[i].blocks_freed, rc[i].blocks_freed);
  }
  pool_to_host(gp, &g, ids);
  char what[96];
  snprintf(what, sizeof what, "cuda %s %s layer %d granularity %s%s protect %d",
           rkv_evict_policy_name(pol), rkv_dtype_name(dt), layer, rkv_evict_granularity_name(gran),
           own ? ", the evictor's window" : "", prot);
  expect_same(&c, &g, true, false, what);
  EXPECT_OK(rkv_evictor_check(eg));
  EXPECT_OK(rkv_blockmgr_check(g.m));
  rkv_evictor_destroy(ec);
  rkv_evictor_destroy(eg);
  rkv_qwindow_destroy(gqw);
  CK(cudaFree(ring));
  rkv_kv_pool_destroy(gp);
  fx_fini(&c);
  fx_fini(&g);
}

static void test_refusals(rkv_backend *gb) {
  fixture f;
  fx_init(&f, RKV_DTYPE_F32, 64, 3, false);
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(f.m);
  rkv_kv_pool *gp = NULL;
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, 64, &gp));
  rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
  c.num_q_heads = QH, c.params.window = 300, c.params.budget = 400;
  rkv_evictor *ev = NULL;
  char err[256] = "";
  EXPECT_STATUS(rkv_evictor_create(&c, f.m, gp, &ev, err, sizeof err), RKV_ERR_UNSUPPORTED);
  EXPECT(ev == NULL && strstr(err, "256") != NULL);
  rkv_kv_pool_destroy(gp);
  fx_fini(&f);
}

int main(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *gb = NULL;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) return cuda_test_skip("no usable CUDA device");
  test_refusals(gb);
  const rkv_evict_policy pols[5] = {RKV_EVICT_FULL, RKV_EVICT_RKV, RKV_EVICT_SNAPKV,
                                    RKV_EVICT_STREAMING, RKV_EVICT_H2O};
  const rkv_dtype dts[3] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  for (int pi = 0; pi < 5; pi++) {
    for (int di = 0; di < 3; di++)
      run_case(gb, pols[pi], dts[di], RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, false, 0);
    run_case(gb, pols[pi], RKV_DTYPE_F32, 1, RKV_EVICT_GRAN_STREAM, false, 0);
    for (int gi = RKV_EVICT_GRAN_LAYER; gi < RKV_EVICT_GRAN_COUNT_; gi++)
      run_case(gb, pols[pi], RKV_DTYPE_BF16, RKV_EVICTOR_ALL_LAYERS, (rkv_evict_granularity)gi,
               false, 0);
    run_case(gb, pols[pi], RKV_DTYPE_F32, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, true, 0);
    run_case(gb, pols[pi], RKV_DTYPE_BF16, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_SEQUENCE, true,
             0);
    run_case(gb, pols[pi], RKV_DTYPE_F32, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, true, BS);
    run_case(gb, pols[pi], RKV_DTYPE_BF16, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_SEQUENCE, false,
             BS);
  }
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
#endif
