/* `rkv bench swap`: the KV pool's host transfers, the ones the executor's swap preemption
 * makes, against one contiguous transfer of the same bytes between the same memories measured
 * in the same run. Swap-out is rkv_kv_pool_read_blocks of `n` blocks scattered over the pool
 * (a running server's blocks are), swap-in is rkv_kv_pool_write_blocks back to them; the
 * references move the pool's first n blocks in one piece (rkv_buffer_download / upload, a
 * cudaMemcpyAsync, on CUDA; memcpy on the CPU backend). Only K/V bytes are counted (a block
 * write also clears the block's scores: 1/64 of the bytes at head_dim 128, bf16). Host memory
 * is pinned (rkv_buffer HOST_PINNED) or pageable (malloc), as chosen. */
#include <stdlib.h>
#include <string.h>

#include "rkv_tool.h"

#include <rkv/buffer.h>

#include "bench.h"

#define CMD "bench swap"
#define MAX_LIST 8
#define SWAP_TRY(expr)             \
  do {                             \
    const rkv_status st_ = (expr); \
    if (st_ != RKV_OK) return st_; \
  } while (0)

typedef struct swap_opts {
  rkv_backend_kind kind;
  rkv_dtype dtype;
  uint32_t head_dim, block;
  uint64_t sizes[MAX_LIST];
  int n_sizes;
  uint64_t pool_blocks; /* 0 = twice the largest size */
  bool pageable, json;
  double min_time;
  uint64_t repeat, seed;
} swap_opts;

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench swap [options]\n"
          "Swap-out (rkv_kv_pool_read_blocks) and swap-in (write_blocks) GB/s of blocks\n"
          "scattered over a KV pool vs one contiguous transfer of the same bytes.\n\n"
          "  --backend cpu|cuda     backend (default cpu; cuda needs a CUDA build and a GPU)\n"
          "  --dtype f32|f16|bf16   KV dtype (default bf16)\n"
          "  --head-dim N           head dim (default 128)\n"
          "  --block N              block size in tokens (default 16)\n"
          "  --blocks LIST          blocks per swap, comma-separated (default 256,4096,32768;\n"
          "                         65536 is a 4K-token sequence of 32 layers x 8 kv heads)\n"
          "  --pool-blocks N        pool size in blocks (default twice the largest --blocks)\n"
          "  --host pinned|pageable host memory of the swap (default pinned)\n"
          "  --min-time S           seconds per measurement (default 0.3)\n"
          "  --repeat N             measurements per size, swap and copy alternating; the\n"
          "                         fastest of each is reported (default 1)\n"
          "  --seed N               block order seed (default 1)\n"
          "  --json                 one JSON object per size and direction on stdout (name,\n"
          "                         shape, seconds, gbps, copy_gbps, fraction_of_copy)\n");
}

/* Returns 0 to run, 1 after --help, 2 on a usage error. */
static int parse(int argc, char **argv, swap_opts *o) {
  memset(o, 0, sizeof *o);
  o->kind = RKV_BACKEND_CPU;
  o->dtype = RKV_DTYPE_BF16;
  o->head_dim = 128, o->block = 16;
  o->sizes[0] = 256, o->sizes[1] = 4096, o->sizes[2] = 32768, o->n_sizes = 3;
  o->min_time = 0.3;
  o->repeat = 1, o->seed = 1;
  uint64_t head_dim = o->head_dim, block = o->block;
  const rt_u64_opt nums[] = {{"--head-dim", &head_dim, 1, 4096},
                             {"--block", &block, 1, 4096},
                             {"--pool-blocks", &o->pool_blocks, 1, UINT64_C(1) << 26},
                             {"--repeat", &o->repeat, 1, 1000},
                             {"--seed", &o->seed, 0, UINT64_MAX}};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    const int got = rt_parse_u64_opt(CMD, argc, argv, &i, nums, sizeof nums / sizeof nums[0]);
    if (got < 0) return 2;
    if (got > 0) continue;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 1;
    } else if (strcmp(a, "--json") == 0) {
      o->json = true;
    } else if (strcmp(a, "--backend") == 0 || strcmp(a, "--host") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      const bool backend = a[2] == 'b';
      const char *one = backend ? "cpu" : "pinned", *two = backend ? "cuda" : "pageable";
      if (strcmp(v, one) != 0 && strcmp(v, two) != 0) {
        fprintf(stderr, "rkv " CMD ": bad value for %s: '%s' (%s or %s)\n", a, v, one, two);
        return 2;
      }
      if (backend)
        o->kind = strcmp(v, "cuda") == 0 ? RKV_BACKEND_CUDA : RKV_BACKEND_CPU;
      else
        o->pageable = strcmp(v, "pageable") == 0;
    } else if (strcmp(a, "--dtype") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (rkv_dtype_parse(v, &o->dtype) != RKV_OK) {
        fprintf(stderr, "rkv " CMD ": bad value for --dtype: '%s' (f32, f16, bf16)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--blocks") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i)) ||
          !rt_parse_u64_list(CMD, a, v, 1, UINT64_C(1) << 24, o->sizes, MAX_LIST, &o->n_sizes))
        return 2;
    } else if (strcmp(a, "--min-time") == 0) {
      if (!(v = rt_optval(CMD, argc, argv, &i))) return 2;
      if (!rt_parse_f64(CMD, a, v, 0.0, 600.0, &o->min_time)) return 2;
    } else {
      fprintf(stderr, "rkv " CMD ": unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
  }
  o->head_dim = (uint32_t)head_dim, o->block = (uint32_t)block;
  uint64_t largest = 0;
  for (int k = 0; k < o->n_sizes; k++)
    if (o->sizes[k] > largest) largest = o->sizes[k];
  if (!o->pool_blocks) o->pool_blocks = 2 * largest;
  if (largest > o->pool_blocks) {
    fprintf(stderr, "rkv " CMD ": --blocks %llu exceeds --pool-blocks %llu\n",
            (unsigned long long)largest, (unsigned long long)o->pool_blocks);
    return 2;
  }
  return 0;
}

/* The memory and handles one run shares across sizes. */
typedef struct swap_env {
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_buffer *pool_mem; /* the pool's blocks as a DEVICE buffer (NULL: host memory, memcpy) */
  rkv_buffer *pinned;   /* host side when pinned */
  unsigned char *host;  /* host side: the pinned buffer's memory, or malloc'd */
  int32_t *order;       /* a shuffle of every block id: the first n are a swap's blocks */
  size_t block_bytes;
} swap_env;

/* One timed operation: a swap direction or its contiguous reference. */
typedef enum { OP_OUT, OP_IN, OP_COPY_OUT, OP_COPY_IN } swap_op;

static rkv_status run_op(swap_env *e, swap_op op, size_t n) {
  const size_t bytes = n * e->block_bytes;
  switch (op) {
    case OP_OUT:
      return rkv_kv_pool_read_blocks(e->pool, e->order, n, e->host);
    case OP_IN:
      return rkv_kv_pool_write_blocks(e->pool, e->order, n, e->host);
    case OP_COPY_OUT:
      if (!e->pool_mem) {
        memcpy(e->host, rkv_kv_pool_base(e->pool), bytes);
        return RKV_OK;
      }
      SWAP_TRY(rkv_buffer_download(e->pool_mem, 0, e->host, bytes));
      return rkv_backend_sync(e->be);
    default:
      if (!e->pool_mem) {
        memcpy(rkv_kv_pool_base(e->pool), e->host, bytes);
        return RKV_OK;
      }
      SWAP_TRY(rkv_buffer_upload(e->pool_mem, 0, e->host, bytes));
      return rkv_backend_sync(e->be);
  }
}

/* Seconds per operation: calls until min_time has passed (at least two, the first a warm-up). */
static rkv_status time_op(swap_env *e, swap_op op, size_t n, double min_time, double *sec) {
  SWAP_TRY(run_op(e, op, n));
  int iters = 0;
  const double t0 = rt_now();
  double t = t0;
  do {
    SWAP_TRY(run_op(e, op, n));
    iters++;
    t = rt_now();
  } while (t - t0 < min_time);
  *sec = (t - t0) / iters;
  return RKV_OK;
}

static rkv_status env_create(const swap_opts *o, swap_env *e) {
  memset(e, 0, sizeof *e);
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = o->kind;
  SWAP_TRY(rkv_backend_create(&bc, &e->be));
  const rkv_kv_layout lay = {o->dtype, o->block, o->head_dim};
  e->block_bytes = rkv_kv_block_bytes(&lay);
  uint64_t largest = 0;
  for (int k = 0; k < o->n_sizes; k++)
    if (o->sizes[k] > largest) largest = o->sizes[k];
  const size_t host_bytes = (size_t)largest * e->block_bytes;
  SWAP_TRY(rkv_kv_pool_create(e->be, &lay, (uint32_t)o->pool_blocks, &e->pool));
  /* a host pool's blocks are plain memory: the reference is a memcpy (its base need not have
   * the alignment rkv_buffer_wrap asks for) */
  if (!rkv_backend_device_is_host(e->be))
    SWAP_TRY(rkv_buffer_wrap(e->be, RKV_BUFFER_DEVICE, rkv_kv_pool_base(e->pool),
                             (size_t)o->pool_blocks * e->block_bytes, &e->pool_mem));
  if (o->pageable) {
    e->host = malloc(host_bytes);
  } else {
    SWAP_TRY(rkv_buffer_create(e->be, RKV_BUFFER_HOST_PINNED, host_bytes, &e->pinned));
    e->host = rkv_buffer_ptr(e->pinned);
  }
  e->order = malloc((size_t)o->pool_blocks * sizeof *e->order);
  if (!e->host || !e->order) return RKV_ERR_NO_MEMORY;
  /* Random bytes in the host buffer, 8 at a time (512 MB take a fraction of a second; a tail
   * under 8 bytes keeps what the allocation held); swapped in once, the pool holds them too. */
  uint64_t s = o->seed;
  for (size_t i = 0; i + 8 <= host_bytes; i += 8) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    memcpy(e->host + i, &s, 8);
  }
  for (uint64_t i = 0; i < o->pool_blocks; i++) e->order[i] = (int32_t)i;
  for (uint64_t i = o->pool_blocks; i > 1; i--) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const uint64_t j = (s >> 33) % i;
    const int32_t t = e->order[i - 1];
    e->order[i - 1] = e->order[j];
    e->order[j] = t;
  }
  return RKV_OK;
}

static void env_destroy(swap_env *e, bool pageable) {
  rkv_buffer_destroy(e->pool_mem);
  if (pageable) free(e->host);
  rkv_buffer_destroy(e->pinned);
  free(e->order);
  rkv_kv_pool_destroy(e->pool);
  rkv_backend_destroy(e->be);
}

static void report(const swap_opts *o, const swap_env *e, size_t n, const char *dir, double sec,
                   double copy_sec) {
  const double bytes = (double)n * (double)e->block_bytes;
  const double gb = bytes / sec / 1e9, cg = bytes / copy_sec / 1e9;
  if (o->json) {
    printf(
        "{\"name\": \"swap_%s\", \"backend\": \"%s\", \"shape\": {\"blocks\": %zu, "
        "\"pool_blocks\": %llu, \"head_dim\": %u, \"block\": %u, \"dtype\": \"%s\", "
        "\"host\": \"%s\"}, \"bytes\": %.0f, \"seconds\": %.9g, \"gbps\": %.6g, "
        "\"copy\": \"one contiguous %s\", \"copy_gbps\": %.6g, \"fraction_of_copy\": %.6g}\n",
        dir, rkv_backend_name(e->be), n, (unsigned long long)o->pool_blocks, o->head_dim, o->block,
        rkv_dtype_name(o->dtype), o->pageable ? "pageable" : "pinned", bytes, sec, gb,
        strcmp(dir, "out") == 0 ? "download" : "upload", cg, gb / cg);
  } else {
    printf("%8zu %9.1f  %-4s %10.1f %10.2f %10.2f %7.3f\n", n, bytes / 1048576.0, dir, sec * 1e6,
           gb, cg, gb / cg);
  }
  fflush(stdout);
}

int rt_bench_swap(int argc, char **argv) {
  swap_opts o;
  const int pr = parse(argc, argv, &o);
  if (pr) return pr == 1 ? 0 : 2;
  swap_env e;
  rkv_status st = env_create(&o, &e);
  if (st != RKV_OK) {
    if (!e.be)
      fprintf(stderr, "rkv " CMD ": no %s backend: %s%s\n",
              o.kind == RKV_BACKEND_CUDA ? "cuda" : "cpu", rkv_status_str(st),
              o.kind == RKV_BACKEND_CUDA ? " (a CUDA build and a usable GPU are needed)" : "");
    else
      fprintf(stderr, "rkv " CMD ": set-up failed: %s: %s\n", rkv_status_str(st),
              rkv_backend_last_error(e.be));
    env_destroy(&e, o.pageable);
    return 1;
  }
  /* With --json the header goes to stderr and stdout holds only the rows. */
  FILE *hf = o.json ? stderr : stdout;
  fprintf(hf,
          "# rkv bench swap: %s, %s, head_dim %u, block %u (%zu bytes), pool %llu blocks, %s "
          "host memory; GB/s of K/V bytes, best of %llu\n",
          rkv_backend_name(e.be), rkv_dtype_name(o.dtype), o.head_dim, o.block, e.block_bytes,
          (unsigned long long)o.pool_blocks, o.pageable ? "pageable" : "pinned",
          (unsigned long long)o.repeat);
  if (!o.json)
    printf("%8s %9s  %-4s %10s %10s %10s %7s\n", "blocks", "MiB", "dir", "us", "swap GB/s",
           "copy GB/s", "ratio");
  int failed = 0;
  for (int k = 0; k < o.n_sizes && !failed; k++) {
    const size_t n = (size_t)o.sizes[k];
    for (int dir = 0; dir < 2 && !failed; dir++) {
      const swap_op op = dir ? OP_IN : OP_OUT, ref = dir ? OP_COPY_IN : OP_COPY_OUT;
      double best = 0, best_ref = 0;
      for (uint64_t r = 0; r < o.repeat && !failed; r++) {
        double t = 0, tr = 0;
        st = time_op(&e, op, n, o.min_time, &t);
        if (st == RKV_OK) st = time_op(&e, ref, n, o.min_time, &tr);
        if (st != RKV_OK) {
          fprintf(stderr, "rkv " CMD ": %zu blocks: %s: %s\n", n, rkv_status_str(st),
                  rkv_backend_last_error(e.be));
          failed = 1;
          break;
        }
        if (r == 0 || t < best) best = t;
        if (r == 0 || tr < best_ref) best_ref = tr;
      }
      if (!failed) report(&o, &e, n, dir ? "in" : "out", best, best_ref);
    }
  }
  env_destroy(&e, o.pageable);
  return failed;
}
