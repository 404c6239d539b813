/* `rkv bench attention`: paged decode (or, with --prefill N, prefill) attention bandwidth
 * through the public API, against a plain copy of the same bytes measured in the same run
 * (memcpy split over the same number of threads on CPU, rkv_kv_pool_copy_blocks on CUDA).
 * For prefill the K+V bytes are counted once although causal tiles re-read the prefix.
 *
 * Bytes of one decode call = K + V rows actually read (every stream's length x head_dim x
 * dtype size, twice) + Q + O (f32). The copy moves that many bytes: it reads and writes
 * them, so its traffic is twice the bytes. Both GB/s columns count traffic (read + write),
 * and "ratio" = attention GB/s / copy GB/s. Blocks are shuffled over the pool, so the
 * kernel's accesses are as scattered as a long-running server's. On CUDA a second reference,
 * a plain device-to-device copy of the same bytes inside the pool (rkv_buffer_copy over the
 * pool's memory, a cudaMemcpyAsync: the bandwidth ceiling; rkv_kv_pool_copy_blocks also
 * uploads its op list on every call), gives the "of_d2d" column, which `--json` reports as
 * fraction_of_copy. Buffers and copies go through <rkv/buffer.h>.
 *
 * Large CUDA pools (tens of GB) are filled from a random prefix (--fill-mib, default 64 on
 * CUDA) copied over the rest on the device: drawing every element on the host would take
 * minutes at 256 x 16K. The values stay random, never zeros. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rkv_tool.h"

#include <rkv/attention.h>
#include <rkv/buffer.h>

#include "bench.h"

#define CMD "bench attention"
#define MAX_LIST 8
#define MAX_COPY_THREADS 64

typedef struct bench_opts {
  rkv_backend_kind kind;
  rkv_dtype dtype;
  uint32_t q_heads, kv_heads, head_dim, block;
  uint64_t batches[MAX_LIST], ctxs[MAX_LIST];
  int n_batches, n_ctxs;
  bool explicit_shapes;
  double min_time;
  uint64_t max_kv_mib;
  int32_t threads;
  bool scores;
  uint64_t prefill; /* new rows per sequence; 0 = decode */
  uint64_t repeat;  /* measurements per shape, best kept */
  uint64_t seed;
  uint64_t fill_mib; /* random prefix of the pool, copied over the rest; 0 = all random */
  bool json;         /* one JSON object per shape (docs/GPU-CHECK.md rows) */
} bench_opts;

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench attention [options]\n"
          "Decode (or prefill) attention GB/s (K+V read + Q + O) vs a copy of the same bytes, per "
          "batch x context.\n\n"
          "  --backend cpu|cuda   backend (default cpu; cuda needs a CUDA build and a GPU)\n"
          "  --dtype f32|f16|bf16 KV dtype (default bf16)\n"
          "  --q-heads N          query heads (default 32)\n"
          "  --kv-heads N         kv heads (default 8)\n"
          "  --head-dim N         head dim (default 128)\n"
          "  --block N            block size in tokens (default 16)\n"
          "  --batch LIST         comma-separated batch sizes (default 1,8,64)\n"
          "  --ctx LIST           comma-separated context lengths (default 1024,4096)\n"
          "  --max-kv-mib N       skip default shapes whose KV exceeds N MiB (default 512 on "
          "CPU,\n"
          "                       unlimited on CUDA; shapes given with --batch/--ctx always "
          "run)\n"
          "  --threads N          CPU threads (default 0 = one per core)\n"
          "  --min-time S         seconds per measurement (default 0.3)\n"
          "  --repeat N           measurements per shape, attention and copy alternating; the\n"
          "                       fastest of each is reported (default 1)\n"
          "  --scores             also accumulate H2O scores\n"
          "  --prefill N          time rkv_attn_prefill with the last N tokens of each context\n"
          "                       as new rows (causal), instead of decode; K+V counted once\n"
          "  --seed N             data seed (default 1)\n"
          "  --fill-mib N         draw random K/V for the first N MiB of pool blocks only and\n"
          "                       copy them over the rest (default 0 = every block drawn on\n"
          "                       CPU, 64 on CUDA, where a 256 x 16K pool is tens of GB)\n"
          "  --json               one JSON object per shape on stdout (name, shape, seconds,\n"
          "                       gbps, copy_gbps, fraction_of_copy; on CUDA the copy is a\n"
          "                       device-to-device cudaMemcpy, and pool_copy_* the block copy)\n\n"
          "Shape defaults: a Llama-3-8B layer (32 q / 8 kv heads, d 128, bf16, block 16).\n");
}

/* Returns 0 to run, 1 after --help, 2 on a usage error. */
static int parse(int argc, char **argv, bench_opts *o) {
  memset(o, 0, sizeof *o);
  o->kind = RKV_BACKEND_CPU;
  o->dtype = RKV_DTYPE_BF16;
  o->q_heads = 32, o->kv_heads = 8, o->head_dim = 128, o->block = 16;
  o->batches[0] = 1, o->batches[1] = 8, o->batches[2] = 64, o->n_batches = 3;
  o->ctxs[0] = 1024, o->ctxs[1] = 4096, o->n_ctxs = 2;
  o->min_time = 0.3;
  o->repeat = 1;
  o->max_kv_mib = 0;
  o->seed = 1;
  bool have_max = false, have_fill = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    uint64_t u;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 1;
    } else if (strcmp(a, "--scores") == 0) {
      o->scores = true;
    } else if (strcmp(a, "--json") == 0) {
      o->json = true;
    } else if (strcmp(a, "--fill-mib") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 0, UINT64_C(1) << 30, &o->fill_mib)) return 2;
      have_fill = true;
    } else if (strcmp(a, "--backend") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (strcmp(v, "cpu") == 0) {
        o->kind = RKV_BACKEND_CPU;
      } else if (strcmp(v, "cuda") == 0) {
        o->kind = RKV_BACKEND_CUDA;
      } else {
        fprintf(stderr, "rkv " CMD ": bad value for --backend: '%s' (cpu or cuda)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--dtype") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (rkv_dtype_parse(v, &o->dtype) != RKV_OK) {
        fprintf(stderr, "rkv " CMD ": bad value for --dtype: '%s' (f32, f16, bf16)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--batch") == 0 || strcmp(a, "--ctx") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      bool batch = a[2] == 'b';
      if (!rt_parse_u64_list(CMD, a, v, 1, 1u << 20, batch ? o->batches : o->ctxs, MAX_LIST,
                             batch ? &o->n_batches : &o->n_ctxs))
        return 2;
      o->explicit_shapes = true;
    } else if (strcmp(a, "--q-heads") == 0 || strcmp(a, "--kv-heads") == 0 ||
               strcmp(a, "--head-dim") == 0 || strcmp(a, "--block") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 1, 4096, &u)) return 2;
      uint32_t *dst = strcmp(a, "--q-heads") == 0    ? &o->q_heads
                      : strcmp(a, "--kv-heads") == 0 ? &o->kv_heads
                      : strcmp(a, "--head-dim") == 0 ? &o->head_dim
                                                     : &o->block;
      *dst = (uint32_t)u;
    } else if (strcmp(a, "--max-kv-mib") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 1, UINT64_C(1) << 30, &o->max_kv_mib)) return 2;
      have_max = true;
    } else if (strcmp(a, "--threads") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 0, 256, &u)) return 2;
      o->threads = (int32_t)u;
    } else if (strcmp(a, "--min-time") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_f64(CMD, a, v, 0.0, 600.0, &o->min_time)) return 2;
    } else if (strcmp(a, "--repeat") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 1, 1000, &o->repeat)) return 2;
    } else if (strcmp(a, "--prefill") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 1, 1u << 20, &o->prefill)) return 2;
    } else if (strcmp(a, "--seed") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_u64(CMD, a, v, 0, UINT64_MAX, &o->seed)) return 2;
    } else {
      fprintf(stderr, "rkv " CMD ": unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  if (o->q_heads % o->kv_heads != 0) {
    fprintf(stderr, "rkv " CMD ": --q-heads %u is not a multiple of --kv-heads %u\n", o->q_heads,
            o->kv_heads);
    return 2;
  }
  for (int c = 0; c < o->n_ctxs; c++)
    if (o->prefill > o->ctxs[c]) {
      fprintf(stderr, "rkv " CMD ": --prefill %llu exceeds the context %llu\n",
              (unsigned long long)o->prefill, (unsigned long long)o->ctxs[c]);
      return 2;
    }
  if (!have_max) o->max_kv_mib = o->kind == RKV_BACKEND_CPU ? 512 : 0;
  if (!have_fill) o->fill_mib = o->kind == RKV_BACKEND_CPU ? 0 : 64;
  return 0;
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* ---- Buffers on the backend's side (host memory on CPU, device memory on CUDA) ---------- */

/* A DEVICE buffer of the backend holding `bytes` host bytes (at least one byte, so that its
 * address is never NULL); NULL on failure. The caller syncs before src goes. */
static rkv_buffer *buf_upload(rkv_backend *be, const void *src, size_t bytes) {
  rkv_buffer *b = NULL;
  if (rkv_buffer_create(be, RKV_BUFFER_DEVICE, bytes ? bytes : 1, &b) != RKV_OK) return NULL;
  if (rkv_buffer_upload(b, 0, src, bytes) != RKV_OK) {
    rkv_buffer_destroy(b);
    return NULL;
  }
  return b;
}

/* ---- Threaded memcpy reference (CPU) ---------------------------------------------------- */

typedef struct copy_part {
  unsigned char *dst;
  const unsigned char *src;
  size_t n;
} copy_part;

static void *copy_main(void *arg) {
  copy_part *c = arg;
  memcpy(c->dst, c->src, c->n);
  return NULL;
}

static void threaded_copy(unsigned char *dst, const unsigned char *src, size_t n,
                          uint32_t threads) {
  copy_part parts[MAX_COPY_THREADS];
  pthread_t tid[MAX_COPY_THREADS];
  if (threads > MAX_COPY_THREADS) threads = MAX_COPY_THREADS;
  if (threads < 1) threads = 1;
  const size_t chunk = (n / threads + 63) & ~(size_t)63;
  uint32_t started = 0;
  for (uint32_t i = 0; i < threads; i++) {
    size_t lo = (size_t)i * chunk;
    parts[i].dst = dst + (lo < n ? lo : n);
    parts[i].src = src + (lo < n ? lo : n);
    parts[i].n = lo < n ? (n - lo < chunk ? n - lo : chunk) : 0;
  }
  for (uint32_t i = 1; i < threads; i++) {
    if (pthread_create(&tid[i], NULL, copy_main, &parts[i]) != 0) {
      copy_main(&parts[i]);
      continue;
    }
    tid[started++] = tid[i];
  }
  copy_main(&parts[0]);
  for (uint32_t i = 0; i < started; i++) pthread_join(tid[i], NULL);
}

/* ---- One shape ------------------------------------------------------------------------- */

typedef struct result {
  double attn_s, copy_s;
  double d2d_s; /* CUDA: cudaMemcpy device-to-device of the same bytes (0 on CPU) */
  double bytes;
  int iters;
} result;

/* Repeats fn until min_time has passed (at least 3 runs, after one warm-up); returns seconds per
 * call. */
#define TIME_LOOP(min_time, iters_out, secs_out, sync, body) \
  do {                                                       \
    body;                                                    \
    sync;                                                    \
    int it_ = 0;                                             \
    double t0_ = rt_now(), el_ = 0.0;                        \
    while (it_ < 3 || el_ < (min_time)) {                    \
      body;                                                  \
      it_++;                                                 \
      if (it_ % 4 == 0 || it_ < 4) {                         \
        sync;                                                \
        el_ = rt_now() - t0_;                                \
      }                                                      \
    }                                                        \
    sync;                                                    \
    el_ = rt_now() - t0_;                                    \
    (iters_out) = it_;                                       \
    (secs_out) = el_ / it_;                                  \
  } while (0)

static int run_shape(rkv_backend *be, const bench_opts *o, uint32_t batch, uint32_t ctx,
                     result *r) {
  const rkv_backend_kind kind = rkv_backend_get_kind(be);
  const uint32_t H = o->kv_heads, Hq = o->q_heads, d = o->head_dim, bs = o->block;
  const uint32_t S = batch * H, per = (ctx + bs - 1) / bs;
  const uint32_t used = S * per;
  /* Twice the blocks: the copy reference writes into the second half (CUDA). */
  const uint32_t nblocks = used * 2;
  rkv_kv_layout lay = {o->dtype, bs, d};
  rkv_kv_pool *pool = NULL;
  int ret = 1;
  rkv_buffer *dq = NULL, *dout = NULL, *dindptr = NULL, *dindices = NULL, *dlast = NULL;
  rkv_buffer *ws = NULL, *dqi = NULL, *pool_mem = NULL;
  int32_t *q_indptr = NULL;
  const uint32_t new_rows = o->prefill ? (uint32_t)o->prefill : 1u, rows = batch * new_rows;
  if (new_rows > ctx) {
    fprintf(stderr, "rkv " CMD ": --prefill %u exceeds the context %u\n", new_rows, ctx);
    return 1;
  }
  unsigned char *csrc = NULL, *cdst = NULL;
  rkv_block_copy *ops = NULL;
  rkv_status st = rkv_kv_pool_create(be, &lay, nblocks, &pool);
  if (st != RKV_OK) {
    fprintf(stderr, "rkv " CMD ": pool of %u blocks: %s (%s)\n", nblocks, rkv_status_str(st),
            rkv_backend_last_error(be));
    return 1;
  }
  /* Random K/V in [-1, 1] block by block (rounded by the conversion). */
  const size_t bb = rkv_kv_block_bytes(&lay), esz = rkv_dtype_size(o->dtype);
  const uint32_t chunk_blocks = 256;
  unsigned char *host = malloc(bb * chunk_blocks);
  int32_t *ids = malloc(sizeof(int32_t) * (nblocks > chunk_blocks ? nblocks : chunk_blocks));
  int32_t *indptr = malloc(sizeof(int32_t) * (S + 1)), *last = malloc(sizeof(int32_t) * S);
  float *q = malloc(sizeof(float) * (size_t)rows * Hq * d);
  q_indptr = malloc(sizeof(int32_t) * (batch + 1));
  uint64_t rng = o->seed;
  if (!host || !ids || !indptr || !last || !q || !q_indptr) {
    fprintf(stderr, "rkv " CMD ": out of host memory\n");
    goto done;
  }
  /* Random blocks: all of them, or a prefix of fill_mib MiB copied over the rest. */
  uint32_t drawn = nblocks;
  if (o->fill_mib) {
    const uint64_t want = (o->fill_mib << 20) / bb;
    drawn = want < 1 ? 1u : want < nblocks ? (uint32_t)want : nblocks;
  }
  for (uint32_t b0 = 0; b0 < drawn; b0 += chunk_blocks) {
    uint32_t n = drawn - b0 < chunk_blocks ? drawn - b0 : chunk_blocks;
    for (size_t e = 0; e < (size_t)n * bb / esz; e++) {
      float x = (float)((double)(rng_next(&rng) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
      rkv_dtype_store(o->dtype, host, e, x);
    }
    for (uint32_t i = 0; i < n; i++) ids[i] = (int32_t)(b0 + i);
    if ((st = rkv_kv_pool_write_blocks(pool, ids, n, host)) != RKV_OK) {
      fprintf(stderr, "rkv " CMD ": write_blocks: %s\n", rkv_backend_last_error(be));
      goto done;
    }
  }
  if (drawn < nblocks) {
    const uint32_t per_call = 1u << 20;
    ops = malloc(sizeof *ops * per_call);
    if (!ops) {
      fprintf(stderr, "rkv " CMD ": out of host memory\n");
      goto done;
    }
    for (uint32_t b0 = drawn; b0 < nblocks; b0 += per_call) {
      const uint32_t n = nblocks - b0 < per_call ? nblocks - b0 : per_call;
      for (uint32_t i = 0; i < n; i++)
        ops[i].src = (int32_t)((b0 + i) % drawn), ops[i].dst = (int32_t)(b0 + i);
      if ((st = rkv_kv_pool_copy_blocks(pool, ops, n)) != RKV_OK) {
        fprintf(stderr, "rkv " CMD ": fill (copy_blocks): %s\n", rkv_backend_last_error(be));
        goto done;
      }
    }
    free(ops);
    ops = NULL;
  }
  /* Scattered table: streams take blocks from a shuffled permutation of the whole pool. */
  for (uint32_t i = 0; i < nblocks; i++) ids[i] = (int32_t)i;
  for (uint32_t i = nblocks; i > 1; i--) {
    uint32_t j = (uint32_t)(rng_next(&rng) % i);
    int32_t t = ids[i - 1];
    ids[i - 1] = ids[j];
    ids[j] = t;
  }
  for (uint32_t s = 0; s <= S; s++) indptr[s] = (int32_t)(s * per);
  for (uint32_t s = 0; s < S; s++) last[s] = (int32_t)(ctx - (per - 1) * bs);
  for (size_t i = 0; i < (size_t)rows * Hq * d; i++)
    q[i] = (float)((double)(rng_next(&rng) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  for (uint32_t b = 0; b <= batch; b++) q_indptr[b] = (int32_t)(b * new_rows);

  const size_t qbytes = sizeof(float) * (size_t)rows * Hq * d;
  dqi = buf_upload(be, q_indptr, sizeof(int32_t) * (batch + 1));
  dq = buf_upload(be, q, qbytes);
  dindptr = buf_upload(be, indptr, sizeof(int32_t) * (S + 1));
  dindices = buf_upload(be, ids, sizeof(int32_t) * used);
  dlast = buf_upload(be, last, sizeof(int32_t) * S);
  if (rkv_buffer_create(be, RKV_BUFFER_DEVICE, qbytes ? qbytes : 1, &dout) != RKV_OK) dout = NULL;
  if (!dq || !dout || !dindptr || !dindices || !dlast || !dqi || rkv_backend_sync(be) != RKV_OK) {
    fprintf(stderr, "rkv " CMD ": buffer allocation or upload failed\n");
    goto done;
  }
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = batch, p.num_q_heads = Hq, p.num_kv_heads = H, p.head_dim = d;
  p.q = rkv_buffer_ptr(dq), p.out = rkv_buffer_ptr(dout);
  p.accumulate_scores = o->scores;
  rkv_status (*const fn)(rkv_kv_pool *, const rkv_attn_params *, void *, size_t) =
      o->prefill ? rkv_attn_prefill : rkv_attn_decode;
  /* Workspace sizing reads a host copy of the table (required on CUDA). */
  rkv_block_table host_t = {(int32_t)S, (int32_t)bs, indptr, ids, last};
  p.table = host_t;
  p.q_indptr = o->prefill ? q_indptr : NULL;
  size_t wsb = 0;
  if ((st = rkv_attn_workspace_size(pool, &p, &wsb)) != RKV_OK) {
    fprintf(stderr, "rkv " CMD ": workspace_size: %s (%s)\n", rkv_status_str(st),
            rkv_backend_last_error(be));
    goto done;
  }
  if (rkv_buffer_create(be, RKV_BUFFER_DEVICE, wsb ? wsb : 1, &ws) != RKV_OK) goto done;
  void *wsp = rkv_buffer_ptr(ws);
  rkv_block_table dev_t = {(int32_t)S, (int32_t)bs, rkv_buffer_ptr(dindptr),
                           rkv_buffer_ptr(dindices), rkv_buffer_ptr(dlast)};
  p.table = dev_t;
  p.q_indptr = o->prefill ? rkv_buffer_ptr(dqi) : NULL;
  if ((st = fn(pool, &p, wsp, wsb)) != RKV_OK) {
    fprintf(stderr, "rkv " CMD ": %s: %s (%s)\n", o->prefill ? "prefill" : "decode",
            rkv_status_str(st), rkv_backend_last_error(be));
    goto done;
  }
  const double kv_bytes = 2.0 * S * (double)ctx * d * esz;
  r->bytes = kv_bytes + 2.0 * (double)qbytes;
  /* Reference: a copy of the same bytes. */
  size_t nops = 0, ncopy = (size_t)r->bytes;
  double copied = r->bytes;
  uint32_t threads = (uint32_t)(o->threads > 0 ? o->threads : sysconf(_SC_NPROCESSORS_ONLN));
  if (kind == RKV_BACKEND_CUDA) {
    /* Whole blocks of the first half into the second: as close to r->bytes as blocks allow. */
    nops = (size_t)ceil(r->bytes / (double)bb);
    if (nops > used) nops = used;
    ops = malloc(sizeof *ops * (nops ? nops : 1));
    if (!ops) goto done;
    for (size_t i = 0; i < nops; i++) ops[i].src = (int32_t)i, ops[i].dst = (int32_t)(used + i);
    copied = (double)nops * bb;
  } else {
    csrc = malloc(ncopy);
    cdst = malloc(ncopy);
    if (!csrc || !cdst) goto done;
    memset(csrc, 1, ncopy);
    memset(cdst, 0, ncopy);
  }
  r->attn_s = r->copy_s = INFINITY;
  for (uint64_t rep = 0; rep < o->repeat; rep++) {
    int it = 0, copy_it = 0;
    double a_s = 0.0, c_s = 0.0;
    TIME_LOOP(o->min_time, it, a_s, rkv_backend_sync(be), fn(pool, &p, wsp, wsb));
    if (kind == RKV_BACKEND_CUDA) {
      TIME_LOOP(o->min_time, copy_it, c_s, rkv_backend_sync(be),
                rkv_kv_pool_copy_blocks(pool, ops, nops));
      c_s *= r->bytes / copied; /* scale to the same byte count */
    } else {
      TIME_LOOP(o->min_time, copy_it, c_s, (void)0, threaded_copy(cdst, csrc, ncopy, threads));
    }
    (void)copy_it;
    if (a_s < r->attn_s) r->attn_s = a_s, r->iters = it;
    if (c_s < r->copy_s) r->copy_s = c_s;
    if (kind == RKV_BACKEND_CUDA) {
      /* The ceiling: one plain device-to-device copy, first half of the pool into the second,
       * through a buffer over the pool's memory. */
      const double cap = (double)used * (double)bb;
      const size_t dbytes = (size_t)(r->bytes < cap ? r->bytes : cap);
      if (!pool_mem && rkv_buffer_wrap(be, RKV_BUFFER_DEVICE, rkv_kv_pool_base(pool),
                                       (size_t)nblocks * bb, &pool_mem) != RKV_OK) {
        fprintf(stderr, "rkv " CMD ": wrap the pool: %s\n", rkv_backend_last_error(be));
        goto done;
      }
      int d_it = 0;
      double d_s = 0.0;
      bool ok = true;
      TIME_LOOP(o->min_time, d_it, d_s, rkv_backend_sync(be),
                ok &= rkv_buffer_copy(pool_mem, (size_t)used * bb, pool_mem, 0, dbytes) == RKV_OK);
      (void)d_it;
      if (!ok) {
        fprintf(stderr, "rkv " CMD ": device-to-device copy failed: %s\n",
                rkv_backend_last_error(be));
        goto done;
      }
      d_s *= r->bytes / (double)dbytes;
      if (r->d2d_s == 0.0 || d_s < r->d2d_s) r->d2d_s = d_s;
    }
  }
  ret = 0;
done:
  free(csrc), free(cdst), free(ops), free(host), free(ids), free(indptr), free(last), free(q);
  free(q_indptr), rkv_buffer_destroy(dqi), rkv_buffer_destroy(pool_mem);
  rkv_buffer_destroy(ws), rkv_buffer_destroy(dq), rkv_buffer_destroy(dout);
  rkv_buffer_destroy(dindptr), rkv_buffer_destroy(dindices), rkv_buffer_destroy(dlast);
  rkv_kv_pool_destroy(pool);
  return ret;
}

int rt_bench_attention(int argc, char **argv) {
  bench_opts o;
  int rc = parse(argc, argv, &o);
  if (rc) return rc == 1 ? 0 : 2;
  if (o.kind == RKV_BACKEND_CUDA && !rkv_build_has_cuda()) {
    fprintf(stderr, "rkv " CMD ": --backend cuda: librkv was built without CUDA\n");
    return 2;
  }
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = o.kind;
  bc.num_threads = o.threads;
  rkv_backend *be = NULL;
  rkv_status st = rkv_backend_create(&bc, &be);
  if (st != RKV_OK) {
    fprintf(stderr, "rkv " CMD ": backend %s: %s\n", o.kind == RKV_BACKEND_CUDA ? "cuda" : "cpu",
            rkv_status_str(st));
    return 1;
  }
  if (o.kind == RKV_BACKEND_CUDA) {
    char err[160];
    if (rkv_attn_cuda_supported(o.head_dim, o.block, o.dtype, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv " CMD ": %s\n", err);
      rkv_backend_destroy(be);
      return 2;
    }
  }
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  const bool cuda = o.kind == RKV_BACKEND_CUDA;
  /* With --json the header goes to stderr and stdout holds only the rows. */
  FILE *hf = o.json ? stderr : stdout;
  if (o.prefill)
    fprintf(hf, "# prefill: %llu new rows per sequence (causal)\n", (unsigned long long)o.prefill);
  fprintf(hf,
          "# rkv bench attention: backend %s, %s KV, %u q / %u kv heads, head_dim %u, block %u, "
          "threads %d (cores %ld)%s\n",
          rkv_backend_name(be), rkv_dtype_name(o.dtype), o.q_heads, o.kv_heads, o.head_dim, o.block,
          o.threads, cores, o.scores ? ", scores" : "");
  if (o.repeat > 1)
    fprintf(hf, "# best of %llu measurements per shape\n", (unsigned long long)o.repeat);
  if (o.fill_mib)
    fprintf(hf, "# K/V: random first %llu MiB of the pool, copied over the rest\n",
            (unsigned long long)o.fill_mib);
  fprintf(hf, "# GB/s = (read + written bytes) / time; copy = %s of the same bytes%s\n",
          cuda ? "rkv_kv_pool_copy_blocks" : "threaded memcpy",
          cuda ? "; d2d = cudaMemcpy device to device (the ceiling)" : "");
  if (!o.json) {
    printf("%6s %6s %10s %12s %10s %10s %7s", "batch", "ctx", "MB/call", "us/call", "attn_GB/s",
           "copy_GB/s", "ratio");
    if (cuda) printf(" %10s %7s", "d2d_GB/s", "of_d2d");
    printf("\n");
  }
  int failed = 0;
  for (int bi = 0; bi < o.n_batches; bi++)
    for (int ci = 0; ci < o.n_ctxs; ci++) {
      const uint32_t batch = (uint32_t)o.batches[bi], ctx = (uint32_t)o.ctxs[ci];
      const double kv_mib =
          2.0 * batch * o.kv_heads * (double)ctx * o.head_dim * rkv_dtype_size(o.dtype) / 1048576.0;
      if (!o.explicit_shapes && o.max_kv_mib && kv_mib > (double)o.max_kv_mib) {
        fprintf(hf, "%6u %6u   skipped: KV %.0f MiB > --max-kv-mib %llu\n", batch, ctx, kv_mib,
                (unsigned long long)o.max_kv_mib);
        continue;
      }
      result r;
      memset(&r, 0, sizeof r);
      if (run_shape(be, &o, batch, ctx, &r) != 0) {
        failed++;
        continue;
      }
      const double ag = r.bytes / r.attn_s / 1e9, cg = 2.0 * r.bytes / r.copy_s / 1e9;
      const double dg = r.d2d_s > 0 ? 2.0 * r.bytes / r.d2d_s / 1e9 : 0.0;
      if (o.json) {
        /* Rows of docs/GPU-CHECK.md: fraction_of_copy against the strictest copy measured. */
        const double ref = cuda ? dg : cg;
        printf(
            "{\"name\": \"attn_%s\", \"backend\": \"%s\", \"shape\": {\"batch\": %u, \"ctx\": %u, "
            "\"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"block\": %u, \"dtype\": "
            "\"%s\", \"prefill\": %llu, \"scores\": %s}, \"bytes\": %.0f, \"seconds\": %.9g, "
            "\"iters\": %d, \"gbps\": %.6g, \"copy\": \"%s\", \"copy_gbps\": %.6g, "
            "\"fraction_of_copy\": %.6g",
            o.prefill ? "prefill" : "decode", rkv_backend_name(be), batch, ctx, o.q_heads,
            o.kv_heads, o.head_dim, o.block, rkv_dtype_name(o.dtype), (unsigned long long)o.prefill,
            o.scores ? "true" : "false", r.bytes, r.attn_s, r.iters, ag,
            cuda ? "cudaMemcpy device to device" : "threaded memcpy", ref,
            ref > 0 ? ag / ref : 0.0);
        if (cuda)
          printf(", \"pool_copy_gbps\": %.6g, \"fraction_of_pool_copy\": %.6g", cg, ag / cg);
        printf("}\n");
      } else {
        printf("%6u %6u %10.2f %12.1f %10.2f %10.2f %7.3f", batch, ctx, r.bytes / 1e6,
               r.attn_s * 1e6, ag, cg, ag / cg);
        if (cuda) printf(" %10.2f %7.3f", dg, dg > 0 ? ag / dg : 0.0);
        printf("\n");
      }
      fflush(stdout);
    }
  rkv_backend_destroy(be);
  return failed ? 1 : 0;
}
