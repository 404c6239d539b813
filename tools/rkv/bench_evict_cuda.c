/* `rkv bench evict --backend cuda`: time of one GPU compression (every layer of a batch of
 * sequences at B + buffer tokens cut back to B) through the public API
 * (rkv_blockmgr_compact_uniform, rkv_evict_cuda_describe, rkv_evict_cuda_compress), timed with
 * the backend's stream timer (CUDA events; rkv_backend_timer), device memory through rkv_buffer;
 * and, when `python3 -c "import torch"` works with a GPU, the speed-up over a straightforward
 * PyTorch implementation of the same math on dense tensors (tools/bench/evict_torch.py, same
 * shapes, torch.cuda.Event timing), run through popen.
 *
 * The host plan (compact_uniform + describe + uploads) happens once; the device part is then
 * replayed on the same descriptors (later replays score keys that earlier ones moved: the work
 * and its shape are the same, the bytes differ). */
/* A kernel benchmark: it times the device protocol's calls one by one, which rkv_evictor
 * hides behind one run, so it keeps calling the deprecated entry points directly. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rkv_tool.h"

#include <rkv/attention_cuda.h>
#include <rkv/blockmgr.h>
#include <rkv/buffer.h>
#include <rkv/evict_cuda.h>

#include "bench.h"

#ifndef RKV_SOURCE_DIR
#define RKV_SOURCE_DIR "."
#endif

#define CMD "bench evict --backend cuda"

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench evict --backend cuda [options]\n"
          "  GPU compression of every layer of a batch of sequences from budget + buffer tokens\n"
          "  back to budget; median time per compression, and the speed-up over PyTorch.\n"
          "  --policy P     rkv | snapkv | streaming | h2o (default rkv)\n"
          "  --seqs N       sequences compressed together (default 4)\n"
          "  --layers N     layers per sequence, all in one batch (default 8)\n"
          "  --kv-heads N   (default 8)        --q-heads N   (default 32)\n"
          "  --head-dim D   64 | 128 | 256 (default 128)\n"
          "  --block N      16 | 32 (default 16)  --dtype T  f32 | f16 | bf16 (default bf16)\n"
          "  --budget B     (default 1024)     --buffer N    (default 128)\n"
          "  --window A     (default 8)        --iters N     timed runs (default 20)\n"
          "  --no-torch     skip the PyTorch comparison\n");
}

typedef struct opts {
  rkv_evict_policy policy;
  uint64_t seqs, layers, kvh, qh, d, bs, budget, buffer, window, iters;
  rkv_dtype dt;
  bool torch;
} opts;

static int cmp_f(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

#define RK(expr)                                                               \
  do {                                                                         \
    rkv_status s_ = (expr);                                                    \
    if (s_ != RKV_OK) {                                                        \
      fprintf(stderr, "rkv %s: %s: %s (%s)\n", CMD, #expr, rkv_status_str(s_), \
              be ? rkv_backend_last_error(be) : "");                           \
      goto done;                                                               \
    }                                                                          \
  } while (0)

static bool parse(int argc, char **argv, opts *o) {
  *o = (opts){RKV_EVICT_RKV, 4, 8, 8, 32, 128, 16, 1024, 128, 8, 20, RKV_DTYPE_BF16, true};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    struct {
      const char *name;
      uint64_t *dst, lo, hi;
    } nums[] = {{"--seqs", &o->seqs, 1, 4096},        {"--layers", &o->layers, 1, 256},
                {"--kv-heads", &o->kvh, 1, 256},      {"--q-heads", &o->qh, 1, 4096},
                {"--head-dim", &o->d, 64, 256},       {"--block", &o->bs, 16, 32},
                {"--budget", &o->budget, 2, 1 << 20}, {"--buffer", &o->buffer, 1, 1 << 20},
                {"--window", &o->window, 1, 256},     {"--iters", &o->iters, 1, 100000}};
    bool done = false;
    for (size_t k = 0; k < sizeof nums / sizeof nums[0] && !done; k++)
      if (!strcmp(a, nums[k].name)) {
        if (!(v = rt_optval(CMD, argc, argv, &i)) ||
            !rt_parse_u64(CMD, a, v, nums[k].lo, nums[k].hi, nums[k].dst))
          return false;
        done = true;
      }
    if (done) continue;
    if (!strcmp(a, "--policy")) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return false;
      if (rkv_evict_policy_parse(v, &o->policy) != RKV_OK || o->policy == RKV_EVICT_FULL) {
        fprintf(stderr, "rkv %s: bad value for --policy: '%s'\n", CMD, v);
        return false;
      }
    } else if (!strcmp(a, "--dtype")) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return false;
      if (rkv_dtype_parse(v, &o->dt) != RKV_OK) {
        fprintf(stderr, "rkv %s: bad value for --dtype: '%s'\n", CMD, v);
        return false;
      }
    } else if (!strcmp(a, "--backend")) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return false; /* dispatched already */
    } else if (!strcmp(a, "--no-torch")) {
      o->torch = false;
    } else {
      fprintf(stderr, "rkv %s: unknown option '%s'\n", CMD, a);
      usage(stderr);
      return false;
    }
  }
  if (o->qh % o->kvh != 0) {
    fprintf(stderr, "rkv %s: --q-heads must be a multiple of --kv-heads\n", CMD);
    return false;
  }
  return true;
}

/* Runs tools/bench/evict_torch.py with the same shapes under the first python3 that imports
 * torch with a GPU (the first python3 on PATH may lack torch): $RKV_PYTHON, python3, the GPU
 * image's venv, Debian's; returns its median ms or -1. */
static double torch_ms(const opts *o, uint64_t streams) {
  const char *env = getenv("RKV_PYTHON");
  const char *const pys[] = {env && env[0] ? env : "python3", "python3",
                             "/opt/torch/.venv/bin/python3", "/usr/bin/python3"};
  const char *py = NULL;
  char cmd[1024];
  for (size_t i = 0; i < sizeof pys / sizeof pys[0] && !py; i++) {
    snprintf(cmd, sizeof cmd,
             "%s -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' "
             ">/dev/null 2>&1",
             pys[i]);
    if (system(cmd) == 0) py = pys[i];
  }
  if (!py) return -1.0;
  snprintf(cmd, sizeof cmd,
           "%s %s/tools/bench/evict_torch.py --policy %s --streams %llu --n %llu "
           "--budget %llu --window %llu --head-dim %llu --group %llu --dtype %s --iters %llu",
           py, RKV_SOURCE_DIR, rkv_evict_policy_name(o->policy), (unsigned long long)streams,
           (unsigned long long)(o->budget + o->buffer), (unsigned long long)o->budget,
           (unsigned long long)o->window, (unsigned long long)o->d,
           (unsigned long long)(o->qh / o->kvh), rkv_dtype_name(o->dt),
           (unsigned long long)o->iters);
  FILE *f = popen(cmd, "r");
  if (!f) return -1.0;
  char line[256];
  double ms = -1.0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "torch_ms_median %lf", &ms) == 1) break;
  pclose(f);
  return ms;
}

/* A DEVICE buffer holding `bytes` host bytes (at least `min_bytes` long); the upload reads src
 * by the next rkv_backend_sync. */
static rkv_status device_copy(rkv_backend *be, const void *src, size_t bytes, size_t min_bytes,
                              rkv_buffer **out) {
  rkv_status s =
      rkv_buffer_create(be, RKV_BUFFER_DEVICE, bytes > min_bytes ? bytes : min_bytes, out);
  return s == RKV_OK ? rkv_buffer_upload(*out, 0, src, bytes) : s;
}

int rkvi_bench_evict_cuda(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    }
  if (!rkv_build_has_cuda()) {
    fprintf(stderr, "rkv %s: not built with CUDA\n", CMD);
    return 2;
  }
  opts o;
  if (!parse(argc, argv, &o)) return 2;
  int rc = 1;
  rkv_backend *be = NULL;
  rkv_blockmgr *m = NULL;
  rkv_kv_pool *pool = NULL;
  rkv_buffer *ws = NULL, *d_streams = NULL, *d_old = NULL, *d_new = NULL, *d_clear = NULL;
  rkv_buffer *d_ring = NULL;
  rkv_backend_timer *timer = NULL;
  float *times = NULL;
  uint8_t *host = NULL;
  rkv_compact_map *maps = NULL;
  rkv_evict_cuda_stream *st = NULL;
  int32_t *old_all = NULL, *new_all = NULL, *freed = NULL, *ids = NULL;

  const uint64_t n = o.budget + o.buffer, G = o.qh / o.kvh;
  const uint64_t sps = o.layers * o.kvh, streams = o.seqs * sps;
  const uint64_t bps = (n + o.bs - 1) / o.bs;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CUDA;
  if (rkv_backend_create(&bc, &be) != RKV_OK) {
    fprintf(stderr, "rkv %s: no usable CUDA device\n", CMD);
    return 2;
  }
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = (uint32_t)(streams * bps + 16);
  mc.block_size = (uint32_t)o.bs;
  mc.num_layers = (uint32_t)o.layers;
  mc.num_kv_heads = (uint32_t)o.kvh;
  mc.head_dim = (uint32_t)o.d;
  mc.dtype = o.dt;
  mc.max_seqs = (uint32_t)o.seqs;
  mc.watermark = 0.0f;
  RK(rkv_blockmgr_create(&mc, &m));
  const rkv_kv_layout lay = rkv_blockmgr_kv_layout(m);
  RK(rkv_kv_pool_create(be, &lay, mc.num_blocks, &pool));
  /* Random KV (values in [-1, 1)), never zeros. */
  const size_t bb = rkv_kv_block_bytes(&lay), per = bb / rkv_dtype_size(o.dt);
  host = malloc(bb * mc.num_blocks);
  ids = malloc(sizeof *ids * mc.num_blocks);
  if (!host || !ids) goto done;
  uint64_t rng = 12345;
  for (size_t i = 0; i < per * mc.num_blocks; i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    rkv_dtype_store(o.dt, host, i, (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0));
  }
  for (uint32_t i = 0; i < mc.num_blocks; i++) ids[i] = (int32_t)i;
  RK(rkv_kv_pool_write_blocks(pool, ids, mc.num_blocks, host));
  /* Device query-window ring [seqs][layers][q_heads][window][d]. */
  rkv_cuda_qwindow ring = {NULL,           (uint32_t)o.seqs,   (uint32_t)o.layers,
                           (uint32_t)o.qh, (uint32_t)o.window, (uint32_t)o.d};
  size_t ring_bytes = 0;
  RK(rkv_attn_cuda_qwindow_bytes(&ring, &ring_bytes));
  {
    float *hr = malloc(ring_bytes);
    if (!hr) goto done;
    for (size_t i = 0; i < ring_bytes / sizeof(float); i++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      hr[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 3.0 - 1.5);
    }
    rkv_status e = device_copy(be, hr, ring_bytes, 1, &d_ring);
    if (e == RKV_OK) e = rkv_backend_sync(be); /* hr is read by then */
    free(hr);
    RK(e);
  }

  /* Host plan: fill every sequence to B + buffer, cut every stream of every layer to B. */
  maps = calloc(streams, sizeof *maps);
  st = calloc(streams, sizeof *st);
  old_all = malloc(sizeof *old_all * streams * bps);
  new_all = malloc(sizeof *new_all * streams * bps);
  freed = malloc(sizeof *freed * streams * bps);
  if (!maps || !st || !old_all || !new_all || !freed) goto done;
  uint32_t tot_maps = 0, tot_old = 0, tot_new = 0, n_freed = 0;
  double t_plan = rt_now();
  for (uint64_t s = 0; s < o.seqs; s++) {
    RK(rkv_blockmgr_seq_create(m, (int64_t)s));
    RK(rkv_blockmgr_append(m, (int64_t)s, (uint32_t)n, NULL, NULL, NULL));
  }
  double t_fill = rt_now();
  for (uint64_t s = 0; s < o.seqs; s++) {
    uint32_t nm = 0, no = 0, nn = 0;
    RK(rkv_blockmgr_compact_uniform(m, (int64_t)s, -1, (int32_t)o.budget, maps + tot_maps,
                                    (uint32_t)(streams - tot_maps), &nm, old_all + tot_old,
                                    (uint32_t)(streams * bps - tot_old), &no));
    const int64_t qoff = (int64_t)s * (int64_t)(o.layers * o.qh * o.window * o.d);
    RK(rkv_evict_cuda_describe(m, (int64_t)s, maps + tot_maps, nm, (uint32_t)o.qh,
                               (int32_t)o.window, qoff, (int32_t)tot_old, (int32_t)tot_new,
                               st + tot_maps, new_all + tot_new,
                               (uint32_t)(streams * bps - tot_new), &nn));
    tot_maps += nm, tot_old += no, tot_new += nn;
  }
  RK(rkv_evict_cuda_freed_blocks(m, old_all, tot_old, freed, (uint32_t)(streams * bps), &n_freed));
  t_plan = rt_now() - t_fill;
  RK(device_copy(be, st, sizeof *st * tot_maps, 1, &d_streams));
  RK(device_copy(be, old_all, sizeof *old_all * tot_old, 1, &d_old));
  RK(device_copy(be, new_all, sizeof *new_all * tot_new, 1, &d_new));
  RK(device_copy(be, freed, sizeof *freed * n_freed, sizeof *freed, &d_clear));
  RK(rkv_backend_sync(be));

  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = o.policy;
  p.budget = (int32_t)o.budget;
  p.buffer = (int32_t)o.buffer;
  p.window = (int32_t)o.window;
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  b.num_streams = tot_maps;
  b.group = (uint32_t)G;
  b.max_len = (int32_t)n;
  b.streams = rkv_buffer_ptr(d_streams);
  b.old_blocks = rkv_buffer_ptr(d_old);
  b.new_blocks = rkv_buffer_ptr(d_new);
  b.qwin = rkv_buffer_ptr(d_ring);
  b.clear_blocks = rkv_buffer_ptr(d_clear);
  b.n_clear = n_freed;
  size_t ws_bytes = 0;
  RK(rkv_evict_cuda_workspace_size(&p, pool, tot_maps, (uint32_t)G, (int32_t)n, &ws_bytes));
  RK(rkv_buffer_create(be, RKV_BUFFER_DEVICE, ws_bytes ? ws_bytes : 1, &ws));
  RK(rkv_backend_timer_create(be, &timer));
  times = malloc(sizeof *times * o.iters);
  if (!times) goto done;
  printf(
      "policy %s  dtype %s  seqs %llu  layers %llu  kv_heads %llu  q_heads %llu  d %llu  "
      "block %llu\n",
      rkv_evict_policy_name(o.policy), rkv_dtype_name(o.dt), (unsigned long long)o.seqs,
      (unsigned long long)o.layers, (unsigned long long)o.kvh, (unsigned long long)o.qh,
      (unsigned long long)o.d, (unsigned long long)o.bs);
  printf("streams %llu  n %llu -> budget %llu  workspace %.1f MiB  host plan %.3f ms\n",
         (unsigned long long)streams, (unsigned long long)n, (unsigned long long)o.budget,
         (double)ws_bytes / 1048576.0, t_plan * 1e3);
  /* R-KV's dominant work: K^K^T over n keys per stream. */
  const double gflop = (double)streams * (double)n * (double)n * (double)o.d * 2.0 * 1e-9;
  double best = 1e30;
  /* R-KV: the default f32 SIMT similarity and the tensor-core (3 x TF32) one. */
  const int variants = o.policy == RKV_EVICT_RKV ? 2 : 1;
  for (int var = 0; var < variants; var++) {
    b.flags = var ? RKV_EVICT_CUDA_TENSOR_CORES : 0u;
    void *wsp = rkv_buffer_ptr(ws);
    for (int w = 0; w < 3; w++) RK(rkv_evict_cuda_compress(&p, pool, &b, wsp, ws_bytes));
    RK(rkv_backend_sync(be));
    for (uint64_t it = 0; it < o.iters; it++) {
      RK(rkv_backend_timer_start(timer));
      RK(rkv_evict_cuda_compress(&p, pool, &b, wsp, ws_bytes));
      RK(rkv_backend_timer_stop(timer));
      RK(rkv_backend_timer_elapsed_ms(timer, &times[it]));
    }
    qsort(times, o.iters, sizeof *times, cmp_f);
    const double med = times[o.iters / 2];
    if (med < best) best = med;
    printf(
        "gpu compression%s: median %.3f ms (min %.3f, max %.3f) over %llu runs; %.3f ms per "
        "(seq, layer)",
        var ? " [tensor cores]" : "", med, (double)times[0], (double)times[o.iters - 1],
        (unsigned long long)o.iters, med / (double)(o.seqs * o.layers));
    if (o.policy == RKV_EVICT_RKV) printf("; similarity at %.1f TFLOP/s", gflop / med);
    printf("\n");
  }
  if (o.torch) {
    fflush(stdout); /* the GPU timings stay on record if the reference is killed */
    double tm = torch_ms(&o, streams);
    if (tm > 0)
      printf("torch reference: median %.3f ms; speed-up of the fastest variant %.2fx\n", tm,
             tm / best);
    else
      printf("torch reference: unavailable (python3 with torch and a GPU not found)\n");
  }
  rc = 0;
done:
  rkv_backend_timer_destroy(timer);
  rkv_buffer_destroy(ws), rkv_buffer_destroy(d_streams), rkv_buffer_destroy(d_old);
  rkv_buffer_destroy(d_new), rkv_buffer_destroy(d_clear), rkv_buffer_destroy(d_ring);
  free(times), free(host), free(ids), free(maps), free(st), free(old_all), free(new_all);
  free(freed);
  rkv_kv_pool_destroy(pool);
  rkv_blockmgr_destroy(m);
  rkv_backend_destroy(be);
  return rc;
}
