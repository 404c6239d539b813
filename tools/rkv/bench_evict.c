/* `rkv bench evict`: time of one layer's compression on the CPU (rkv_evict_layer: gather
 * through the block tables, score, select, compact, move) at n = B + buffer, the similarity
 * part's GFLOP/s (2 n^2 d per kv head) measured as R-KV's time over SnapKV's (same path
 * without the redundancy), against a plain cblas_sgemm of the same size timed in the same
 * run, and the block manager's compaction (plan + pool moves) alone. The CUDA eviction path
 * is not part of this file. */
#include "rkv_tool.h"

#include <stdlib.h>
#include <string.h>

#include <rkv/evict.h>

#include "bench.h"

#if defined(RKV_HAVE_BLAS)
#include <cblas.h>
#endif

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench evict [--backend cpu|cuda] [--budgets 512,1024,2048]\n"
          "                       [--buffer 128] [--head-dim 128] [--kv-heads 8] [--gqa 4]\n"
          "                       [--dtype f32|f16|bf16] [--block-size 16] [--reps 5]\n\n"
          "Compresses one layer of one sequence from n = B + buffer to B tokens, repeatedly\n"
          "(steady state: decode `buffer` tokens, compress), and reports per budget:\n"
          "  rkv ms       median rkv_evict_layer time with policy rkv (whole step)\n"
          "  snapkv ms    the same with policy snapkv (no redundancy term)\n"
          "  sim GF/s     2 n^2 d * kv_heads / (rkv - snapkv): the similarity work's rate\n"
          "  sgemm GF/s   cblas_sgemm n x n x d, kv_heads times, same run (reference)\n"
          "  ratio        sim / sgemm (target >= 0.5)\n"
          "  compact ms   rkv_blockmgr_compact + rkv_kv_pool_apply_moves for the layer\n");
}

static bool parse_list(const char *s, int32_t *out, int *n, int cap) {
  *n = 0;
  while (*s) {
    char *end;
    /* digits only: strtol alone would take blanks and a sign */
    if (*s < '0' || *s > '9') return false;
    long v = strtol(s, &end, 10);
    if (end == s || v < 16 || v > (1 << 20) || *n >= cap) return false;
    out[(*n)++] = (int32_t)v;
    if (*end && *end != ',') return false;
    s = *end == ',' ? end + 1 : end;
    if (*end == ',' && !*s) return false; /* a trailing comma: an empty item */
  }
  return *n > 0;
}

typedef struct bench_cfg {
  uint32_t kv, gqa, d, bs;
  int32_t buffer;
  rkv_dtype dt;
  int reps;
} bench_cfg;

typedef struct bench_ctx {
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
  void *ws;
  size_t ws_bytes;
  int64_t *slots;
  float *qrows;
  uint64_t rng;
} bench_ctx;

static float frand(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)((double)(z >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Appends n tokens of random keys (every 4th a near-copy of a recent one) to sequence 0. */
static rkv_status feed(bench_ctx *c, const bench_cfg *b, uint32_t n) {
  rkv_status s = rkv_blockmgr_append(c->m, 0, n, c->slots, NULL, NULL);
  if (s != RKV_OK) return s;
  const rkv_kv_layout *l = rkv_kv_pool_layout(c->pool);
  char *base = rkv_kv_pool_base(c->pool);
  size_t bb = rkv_kv_block_bytes(l);
  for (uint32_t h = 0; h < b->kv; h++)
    for (uint32_t t = 0; t < n; t++) {
      int64_t slot = c->slots[(size_t)h * n + t];
      void *k = base + (size_t)(slot / b->bs) * bb + rkv_kv_k_offset(l, (uint32_t)(slot % b->bs));
      for (uint32_t i = 0; i < b->d; i++) rkv_dtype_store(b->dt, k, i, frand(&c->rng));
    }
  for (size_t i = 0; i < (size_t)n * b->kv * b->gqa * b->d; i++) c->qrows[i] = frand(&c->rng);
  return rkv_qwindow_push(c->qw, 0, 0, c->qrows, n);
}

static void ctx_free(bench_ctx *c) {
  free(c->ws), free(c->slots), free(c->qrows);
  rkv_qwindow_destroy(c->qw);
  rkv_kv_pool_destroy(c->pool);
  rkv_blockmgr_destroy(c->m);
  rkv_backend_destroy(c->be);
  memset(c, 0, sizeof *c);
}

static double sgemm_gflops(int32_t n, uint32_t d, uint32_t kv, int reps) {
#if defined(RKV_HAVE_BLAS)
  float *a = malloc((size_t)n * d * sizeof(float)), *c = malloc((size_t)n * n * sizeof(float));
  if (!a || !c) {
    free(a), free(c);
    return 0;
  }
  uint64_t rng = 5;
  for (size_t i = 0; i < (size_t)n * d; i++) a[i] = frand(&rng);
  double t[64];
  if (reps > 64) reps = 64;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, (int)d, 1.0f, a, (int)d, a, (int)d,
              0.0f, c, n); /* warm-up: thread pool start */
  for (int r = 0; r < reps; r++) {
    double t0 = rt_now();
    for (uint32_t h = 0; h < kv; h++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, (int)d, 1.0f, a, (int)d, a, (int)d,
                  0.0f, c, n);
    t[r] = rt_now() - t0;
  }
  free(a), free(c);
  return 2.0 * n * n * d * kv / rt_median(t, reps) * 1e-9;
#else
  (void)n, (void)d, (void)kv, (void)reps;
  return 0;
#endif
}

/* One budget: returns 0 or an exit code. */
static int bench_budget(const bench_cfg *b, int32_t B) {
  bench_ctx c;
  memset(&c, 0, sizeof c);
  c.rng = 42 + (uint64_t)B;
  const int32_t n = B + b->buffer;
  const uint32_t qh = b->kv * b->gqa;
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = B, p.buffer = b->buffer;
  char err[256];
  if (rkv_evict_params_validate(&p, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv bench evict: %s\n", err);
    return 2;
  }
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = b->kv * (uint32_t)((n + (int32_t)b->bs - 1) / (int32_t)b->bs + 2) + 16;
  mc.block_size = b->bs, mc.num_layers = 1, mc.num_kv_heads = b->kv, mc.head_dim = b->d;
  mc.dtype = b->dt, mc.max_seqs = 4, mc.watermark = 0;
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = 1, qc.num_q_heads = qh, qc.head_dim = b->d, qc.window = (uint32_t)p.window;
  qc.max_seqs = 4;
  rkv_status s = rkv_backend_create(&bc, &c.be);
  if (s == RKV_OK) s = rkv_blockmgr_create(&mc, &c.m);
  rkv_kv_layout lay;
  if (s == RKV_OK)
    lay = rkv_blockmgr_kv_layout(c.m), s = rkv_kv_pool_create(c.be, &lay, mc.num_blocks, &c.pool);
  if (s == RKV_OK) s = rkv_qwindow_create(&qc, &c.qw);
  if (s == RKV_OK) s = rkv_blockmgr_seq_create(c.m, 0);
  if (s == RKV_OK) s = rkv_qwindow_seq_add(c.qw, 0);
  if (s == RKV_OK) s = rkv_evict_workspace_size(&p, b->kv, qh, b->d, n, &c.ws_bytes);
  c.ws = s == RKV_OK ? malloc(c.ws_bytes) : NULL;
  c.slots = malloc((size_t)b->kv * (size_t)n * sizeof(int64_t));
  c.qrows = malloc((size_t)n * qh * b->d * sizeof(float));
  if (s == RKV_OK && (!c.ws || !c.slots || !c.qrows)) s = RKV_ERR_NO_MEMORY;
  if (s == RKV_OK) s = feed(&c, b, (uint32_t)n);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv bench evict: setup: %s\n", rkv_status_str(s));
    ctx_free(&c);
    return 1;
  }
  double t_rkv[64], t_snap[64], t_comp[64];
  int reps = b->reps > 64 ? 64 : b->reps;
  /* Warm-up compression (BLAS threads, page faults), then alternate rkv / snapkv. */
  for (int r = -1; r < reps; r++) {
    for (int pol = 0; pol < 2; pol++) {
      p.policy = pol == 0 ? RKV_EVICT_RKV : RKV_EVICT_SNAPKV;
      rkv_evict_result res;
      double t0 = rt_now();
      s = rkv_evict_layer_ex(&p, c.m, c.pool, c.qw, qh, 0, 0, c.ws, c.ws_bytes, &res, err,
                             sizeof err);
      double t1 = rt_now();
      if (s == RKV_OK && res.streams_compressed != b->kv) s = RKV_ERR_INTERNAL;
      if (s == RKV_OK) s = feed(&c, b, (uint32_t)b->buffer);
      if (s != RKV_OK) {
        fprintf(stderr, "rkv bench evict: %s: %s %s\n", rkv_evict_policy_name(p.policy),
                rkv_status_str(s), err);
        ctx_free(&c);
        return 1;
      }
      if (r >= 0) (pol == 0 ? t_rkv : t_snap)[r] = t1 - t0;
    }
  }
  /* Compaction alone: keep every other candidate plus the window, as a selection would. */
  int32_t *keep = malloc((size_t)b->kv * (size_t)B * sizeof(int32_t));
  rkv_keep_list *lists = malloc(b->kv * sizeof *lists);
  rkv_slot_move *moves = malloc((size_t)b->kv * (size_t)B * sizeof *moves);
  if (!keep || !lists || !moves) s = RKV_ERR_NO_MEMORY;
  for (int r = 0; r < reps && s == RKV_OK; r++) {
    for (uint32_t h = 0; h < b->kv; h++) {
      int32_t *k = keep + (size_t)h * B, m = 0;
      for (int32_t j = 0; j < B - p.window; j++) k[m++] = (j * (n - p.window)) / (B - p.window);
      for (int32_t j = n - p.window; j < n; j++) k[m++] = j;
      lists[h] = (rkv_keep_list){0, h, k, (uint32_t)B};
    }
    uint32_t nm = 0;
    double t0 = rt_now();
    s = rkv_blockmgr_compact(c.m, 0, lists, b->kv, moves, b->kv * (uint32_t)B, &nm);
    if (s == RKV_OK) s = rkv_kv_pool_apply_moves(c.pool, moves, nm);
    t_comp[r] = rt_now() - t0;
    if (s == RKV_OK) s = feed(&c, b, (uint32_t)b->buffer);
  }
  free(keep), free(lists), free(moves);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv bench evict: compaction: %s (%s)\n", rkv_status_str(s),
            rkv_blockmgr_last_error(c.m));
    ctx_free(&c);
    return 1;
  }
  ctx_free(&c);
  double mr = rt_median(t_rkv, reps), ms = rt_median(t_snap, reps), mc2 = rt_median(t_comp, reps);
  double flops = 2.0 * n * n * b->d * b->kv;
  double sim = mr > ms ? flops / (mr - ms) * 1e-9 : 0;
  double ref = sgemm_gflops(n, b->d, b->kv, reps);
  if (ref > 0)
    printf("%6d %6d %10.3f %10.3f %9.1f %10.1f %6.2f %11.3f\n", B, n, mr * 1e3, ms * 1e3, sim, ref,
           sim / ref, mc2 * 1e3);
  else
    printf("%6d %6d %10.3f %10.3f %9.1f %10s %6s %11.3f\n", B, n, mr * 1e3, ms * 1e3, sim, "n/a",
           "n/a", mc2 * 1e3);
  fflush(stdout);
  return 0;
}

int rt_bench_evict(int argc, char **argv) {
  const char *cmd = "bench evict";
  bench_cfg b = {8, 4, 128, 16, 128, RKV_DTYPE_BF16, 5};
  int32_t budgets[16] = {512, 1024, 2048};
  int nb = 3;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    uint64_t u;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
    if (strcmp(a, "--backend") == 0) {
      /* The CUDA benchmark parses the same options itself (bench_evict_cuda.c). */
      if (strcmp(v, "cuda") == 0) return rkvi_bench_evict_cuda(argc, argv);
      if (strcmp(v, "cpu") != 0) {
        fprintf(stderr, "rkv bench evict: bad value for --backend: '%s' (cpu, cuda)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--budgets") == 0) {
      if (!parse_list(v, budgets, &nb, 16)) {
        fprintf(stderr, "rkv bench evict: bad --budgets '%s' (comma-separated, 16..2^20)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--dtype") == 0) {
      if (rkv_dtype_parse(v, &b.dt) != RKV_OK) {
        fprintf(stderr, "rkv bench evict: bad value for --dtype: '%s' (f32, f16, bf16)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--buffer") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 1 << 16, &u)) return 2;
      b.buffer = (int32_t)u;
    } else if (strcmp(a, "--head-dim") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 4096, &u)) return 2;
      b.d = (uint32_t)u;
    } else if (strcmp(a, "--kv-heads") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 256, &u)) return 2;
      b.kv = (uint32_t)u;
    } else if (strcmp(a, "--gqa") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 64, &u)) return 2;
      b.gqa = (uint32_t)u;
    } else if (strcmp(a, "--block-size") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 1024, &u)) return 2;
      b.bs = (uint32_t)u;
    } else if (strcmp(a, "--reps") == 0) {
      if (!rt_parse_u64(cmd, a, v, 1, 64, &u)) return 2;
      b.reps = (int)u;
    } else {
      fprintf(stderr, "rkv bench evict: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  printf(
      "# rkv bench evict: cpu, %u kv heads, gqa %u, d %u, %s, block %u, buffer %d, blas %s, "
      "median of %d\n",
      b.kv, b.gqa, b.d, rkv_dtype_name(b.dt), b.bs, b.buffer, rkv_build_has_blas() ? "yes" : "no",
      b.reps);
  printf("%6s %6s %10s %10s %9s %10s %6s %11s\n", "B", "n", "rkv_ms", "snapkv_ms", "sim_GF/s",
         "sgemm_GF/s", "ratio", "compact_ms");
  for (int i = 0; i < nb; i++) {
    int rc = bench_budget(&b, budgets[i]);
    if (rc) return rc;
  }
  return 0;
}
