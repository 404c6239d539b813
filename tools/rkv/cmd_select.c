/* `rkv select`: one compression step of a policy on keys (and queries / scores) from .npy
 * files, through the real paged path: the keys go into a CPU KV pool whose block ids are
 * deliberately scattered (a dummy sequence interleaved with the real one and freed, after an
 * earlier one freed in LIFO order), the query window is filled, rkv_evict_layer scores,
 * selects, compacts and moves, and the kept positions are read back from the compacted
 * streams (every token carries its original position in its V row). The dense entry runs on
 * the same inputs as a cross-check and for --dump-scores. */
#include "rkv_tool.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rkv/evict.h>

#include "npy.h"

const char rkv_cmd_select_summary[] =
    "run one eviction step (rkv, snapkv, streaming, h2o) on .npy keys through paged blocks";

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv select --policy rkv|snapkv|streaming|h2o --keys K.npy [--queries Q.npy]\n"
          "                  [--scores S.npy] --budget B [--window 8] [--kernel 7]\n"
          "                  [--lambda 0.1] [--threshold 0.5] [--sinks 4] [--block-size 16]\n"
          "                  [--dtype f32|f16|bf16] --out kept.npy [--dump-scores DIR] [-v]\n\n"
          "One compression step of one layer, per kv head, through the block manager and a\n"
          "CPU KV pool (scattered block ids), exactly as the library runs it.\n"
          "  --keys K.npy     float32/float64 [kv_heads, n, d]: post-RoPE keys in cache order\n"
          "  --queries Q.npy  [q_heads, a, d], a >= window: the last `window` rows are the\n"
          "                   query window (rkv, snapkv); q_heads a multiple of kv_heads\n"
          "  --scores S.npy   [kv_heads, n]: accumulated attention mass (h2o)\n"
          "  --budget B       tokens kept per head (B > window); n <= B keeps everything\n"
          "  --window         alpha, newest tokens always kept (h2o: its 'recent' count)\n"
          "  --kernel --lambda --threshold --sinks   R-KV / StreamingLLM parameters\n"
          "  --dtype          KV pool element type (keys are rounded to it)\n"
          "  --out kept.npy   int64 [kv_heads, min(n, B)], each row ascending positions\n"
          "  --dump-scores D  writes D/importance.npy, D/redundancy.npy, D/joint.npy\n"
          "                   (float32 [kv_heads, n - window], candidates only)\n"
          "  -v               print the pool layout and compaction statistics on stderr\n");
}

typedef struct select_opts {
  rkv_evict_params p;
  const char *keys, *queries, *scores, *out, *dump;
  uint32_t block_size;
  rkv_dtype dtype;
  bool verbose;
} select_opts;

static int parse(int argc, char **argv, select_opts *o) {
  const char *cmd = "select";
  rkv_evict_params def = RKV_EVICT_PARAMS_INIT;
  o->p = def;
  o->p.budget = -1;
  o->block_size = 16;
  o->dtype = RKV_DTYPE_F32;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    int64_t iv;
    double dv;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
      o->verbose = true;
    } else if (strcmp(a, "--policy") == 0) {
      if (!(v = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
      if (rkv_evict_policy_parse(v, &o->p.policy) != RKV_OK || o->p.policy == RKV_EVICT_FULL) {
        fprintf(stderr, "rkv select: bad value for --policy: '%s' (rkv, snapkv, streaming, h2o)\n",
                v);
        return 2;
      }
    } else if (strcmp(a, "--keys") == 0) {
      if (!(o->keys = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--queries") == 0) {
      if (!(o->queries = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--scores") == 0) {
      if (!(o->scores = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--out") == 0) {
      if (!(o->out = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--dump-scores") == 0) {
      if (!(o->dump = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--budget") == 0 || strcmp(a, "--window") == 0 ||
               strcmp(a, "--kernel") == 0 || strcmp(a, "--sinks") == 0 ||
               strcmp(a, "--block-size") == 0) {
      if (!(v = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
      if (!rkv_tool_parse_i64(cmd, a, v, 0, 1 << 24, &iv)) return 2;
      if (a[2] == 'b' && a[3] == 'u') o->p.budget = (int32_t)iv;
      if (a[2] == 'w') o->p.window = (int32_t)iv;
      if (a[2] == 'k') o->p.kernel = (int32_t)iv;
      if (a[2] == 's') o->p.sinks = (int32_t)iv;
      if (a[2] == 'b' && a[3] == 'l') {
        if (iv < 1 || iv > 1024) {
          fprintf(stderr, "rkv select: --block-size must be in [1, 1024]\n");
          return 2;
        }
        o->block_size = (uint32_t)iv;
      }
    } else if (strcmp(a, "--lambda") == 0 || strcmp(a, "--threshold") == 0) {
      if (!(v = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
      if (!rkv_tool_parse_f64(cmd, a, v, -1e9, 1e9, &dv)) return 2;
      if (a[2] == 'l')
        o->p.lambda = (float)dv;
      else
        o->p.threshold = (float)dv;
    } else if (strcmp(a, "--dtype") == 0) {
      if (!(v = rkv_tool_optval(cmd, argc, argv, &i))) return 2;
      if (rkv_dtype_parse(v, &o->dtype) != RKV_OK) {
        fprintf(stderr, "rkv select: bad value for --dtype: '%s' (f32, f16, bf16)\n", v);
        return 2;
      }
    } else {
      fprintf(stderr, "rkv select: unknown option '%s' (rkv select --help)\n", a);
      return 2;
    }
  }
  if (!o->keys || !o->out || o->p.budget < 0) {
    fprintf(stderr, "rkv select: --keys, --budget and --out are required (rkv select --help)\n");
    return 2;
  }
  char err[256];
  if (rkv_evict_params_validate(&o->p, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: %s\n", err);
    return 2;
  }
  return -1;
}

/* Original positions ride in V as three base-256 digits: exact in f32, f16 and bf16. */
static void put_pos(rkv_dtype dt, void *v, uint32_t d, int32_t pos) {
  for (uint32_t i = 0; i < d; i++)
    rkv_dtype_store(dt, v, i, i < 3 ? (float)((pos >> (8 * i)) & 255) : 0.0f);
}
static int32_t get_pos(rkv_dtype dt, const void *v) {
  int32_t p = 0;
  for (uint32_t i = 0; i < 3; i++) p |= (int32_t)rkv_dtype_load(dt, v, i) << (8 * i);
  return p;
}

static int save_dump(const char *dir, const char *name, int64_t h, int64_t nc, const float *x) {
  char path[4096], err[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int64_t shape[2] = {h, nc};
  if (rkv_npy_save(path, "<f4", 2, shape, x, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: %s\n", err);
    return 1;
  }
  return 0;
}

/* NaN or Inf in the inputs (or an f8 value beyond float range) would make every score NaN
 * and the selection meaningless while still exiting 0: refuse, naming the option, the file
 * and the first bad element. */
static bool all_finite(const char *opt, const char *path, const float *x, const rkv_npy *info) {
  for (size_t i = 0; i < info->count; i++) {
    if (isfinite(x[i])) continue;
    size_t idx[RKV_NPY_MAX_DIMS] = {0}, rest = i;
    for (int dim = info->ndim - 1; dim >= 0; dim--) { /* C order: last dimension fastest */
      size_t ext = (size_t)info->shape[dim];
      idx[dim] = rest % ext; /* ext > 0: the array holds element i */
      rest /= ext;
    }
    char where[RKV_NPY_MAX_DIMS * 22 + 1] = "";
    for (int dim = 0, len = 0; dim < info->ndim; dim++)
      len += snprintf(where + len, sizeof where - (size_t)len, "%s%zu", dim ? ", " : "", idx[dim]);
    fprintf(stderr, "rkv select: %s: %s: element [%s] is %s; inputs must be finite\n", opt, path,
            where,
            isnan(x[i]) ? "NaN"
            : x[i] > 0  ? "+Inf"
                        : "-Inf");
    return false;
  }
  return true;
}

typedef struct select_state {
  float *k, *q, *s, *kr, *dense_ws_mem, *qtok, *dumps;
  void *ws;
  int32_t *keep_dense;
  int64_t *kept;
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
} select_state;

static void cleanup(select_state *st) {
  free(st->k), free(st->q), free(st->s), free(st->kr), free(st->qtok), free(st->dumps);
  free(st->ws), free(st->dense_ws_mem), free(st->keep_dense), free(st->kept);
  rkv_qwindow_destroy(st->qw);
  rkv_kv_pool_destroy(st->pool);
  rkv_blockmgr_destroy(st->m);
  rkv_backend_destroy(st->be);
}

#define TRY_TOOL(expr, what)                                             \
  do {                                                                   \
    rkv_status s_ = (expr);                                              \
    if (s_ != RKV_OK) {                                                  \
      fprintf(stderr, "rkv select: %s: %s\n", what, rkv_status_str(s_)); \
      goto fail;                                                         \
    }                                                                    \
  } while (0)

int rkv_cmd_select(int argc, char **argv) {
  select_opts o;
  memset(&o, 0, sizeof o);
  int rc = parse(argc, argv, &o);
  if (rc >= 0) return rc;
  const rkv_evict_params *p = &o.p;
  bool scored = p->policy == RKV_EVICT_RKV || p->policy == RKV_EVICT_SNAPKV;
  select_state st;
  memset(&st, 0, sizeof st);
  char err[512];
  rkv_npy ki, qi, si;
  rc = 1;
  if (rkv_npy_load_f32(o.keys, &st.k, &ki, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: --keys: %s\n", err);
    goto fail;
  }
  if (!all_finite("--keys", o.keys, st.k, &ki)) goto fail;
  if (ki.ndim != 3 || ki.shape[0] < 1 || ki.shape[0] > 1024 || ki.shape[1] < 1 ||
      ki.shape[1] >= (1 << 24) || ki.shape[2] < 3 || ki.shape[2] > 4096) {
    fprintf(stderr,
            "rkv select: %s: want [kv_heads 1..1024, n 1..2^24-1, d 3..4096], got %d dims\n",
            o.keys, ki.ndim);
    goto fail;
  }
  const uint32_t H = (uint32_t)ki.shape[0], d = (uint32_t)ki.shape[2];
  const int32_t n = (int32_t)ki.shape[1], W = p->window;
  uint32_t QH = H;
  int64_t arows = 0;
  if (scored || o.queries) {
    if (!o.queries) {
      fprintf(stderr, "rkv select: policy %s needs --queries\n", rkv_evict_policy_name(p->policy));
      goto fail;
    }
    if (rkv_npy_load_f32(o.queries, &st.q, &qi, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv select: --queries: %s\n", err);
      goto fail;
    }
    if (!all_finite("--queries", o.queries, st.q, &qi)) goto fail;
    if (qi.ndim != 3 || qi.shape[0] < H || qi.shape[0] % H != 0 || qi.shape[0] > 65536 ||
        qi.shape[1] < W || qi.shape[2] != d) {
      fprintf(stderr, "rkv select: %s: want [q_heads (a multiple of %u), a >= window %d, d = %u]\n",
              o.queries, H, W, d);
      goto fail;
    }
    QH = (uint32_t)qi.shape[0];
    arows = qi.shape[1];
  }
  if (p->policy == RKV_EVICT_H2O) {
    if (!o.scores) {
      fprintf(stderr, "rkv select: policy h2o needs --scores\n");
      goto fail;
    }
    if (rkv_npy_load_f32(o.scores, &st.s, &si, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv select: --scores: %s\n", err);
      goto fail;
    }
    if (!all_finite("--scores", o.scores, st.s, &si)) goto fail;
    if (si.ndim != 2 || si.shape[0] != H || si.shape[1] != n) {
      fprintf(stderr, "rkv select: %s: want [%u, %d]\n", o.scores, H, n);
      goto fail;
    }
  }

  /* Pool and manager: room for the stream plus the scattering dummies. */
  const uint32_t bs = o.block_size;
  const uint32_t per_stream = (uint32_t)((n + bs - 1) / bs);
  const uint64_t nblocks64 = (uint64_t)H * per_stream * 2 + 2 * H + 8;
  if (nblocks64 * bs >= (1ull << 31)) {
    fprintf(stderr, "rkv select: %u heads x %d tokens is too large for one pool\n", H, n);
    goto fail;
  }
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  TRY_TOOL(rkv_backend_create(&bc, &st.be), "backend");
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = (uint32_t)nblocks64, mc.block_size = bs, mc.num_layers = 1;
  mc.num_kv_heads = H, mc.head_dim = d, mc.dtype = o.dtype, mc.max_seqs = 8, mc.watermark = 0;
  TRY_TOOL(rkv_blockmgr_create(&mc, &st.m), "block manager");
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(st.m);
  TRY_TOOL(rkv_kv_pool_create(st.be, &lay, mc.num_blocks, &st.pool), "KV pool");
  char *base = rkv_kv_pool_base(st.pool);
  float *pool_scores = rkv_kv_pool_scores(st.pool);
  const size_t bbytes = rkv_kv_block_bytes(&lay);

  /* Scatter: a first dummy takes about half the stream's blocks and is freed (the LIFO free
   * list then hands ids out in reverse); a second grows between the real appends. */
  const int64_t seq = 0, dummy1 = 1, dummy2 = 2;
  TRY_TOOL(rkv_blockmgr_seq_create(st.m, dummy2), "seq create");
  TRY_TOOL(rkv_blockmgr_append(st.m, dummy2, (per_stream / 2 + 1) * bs, NULL, NULL, NULL),
           "append");
  TRY_TOOL(rkv_blockmgr_seq_free(st.m, dummy2), "seq free");
  TRY_TOOL(rkv_blockmgr_seq_create(st.m, seq), "seq create");
  TRY_TOOL(rkv_blockmgr_seq_create(st.m, dummy1), "seq create");
  int64_t *slots = malloc((size_t)H * bs * sizeof(int64_t));
  if (!slots) goto fail;
  for (int32_t t0 = 0, chunk = 0; t0 < n; t0 += (int32_t)bs, chunk++) {
    uint32_t cnt = (uint32_t)(n - t0 < (int32_t)bs ? n - t0 : (int32_t)bs);
    rkv_status s = rkv_blockmgr_append(st.m, seq, cnt, slots, NULL, NULL);
    if (s == RKV_OK && chunk % 3 != 2) s = rkv_blockmgr_append(st.m, dummy1, bs, NULL, NULL, NULL);
    if (s != RKV_OK) {
      free(slots);
      fprintf(stderr, "rkv select: append: %s (%s)\n", rkv_status_str(s),
              rkv_blockmgr_last_error(st.m));
      goto fail;
    }
    for (uint32_t h = 0; h < H; h++) {
      for (uint32_t t = 0; t < cnt; t++) {
        int64_t slot = slots[(size_t)h * cnt + t];
        char *blk = base + (size_t)(slot / bs) * bbytes;
        uint32_t off = (uint32_t)(slot % bs);
        const float *src = st.k + ((size_t)h * n + (size_t)(t0 + (int32_t)t)) * d;
        void *kd = blk + rkv_kv_k_offset(&lay, off);
        for (uint32_t i = 0; i < d; i++) rkv_dtype_store(o.dtype, kd, i, src[i]);
        put_pos(o.dtype, blk + rkv_kv_v_offset(&lay, off), d, t0 + (int32_t)t);
        if (st.s) pool_scores[slot] = st.s[(size_t)h * n + (size_t)(t0 + (int32_t)t)];
      }
    }
  }
  free(slots);
  TRY_TOOL(rkv_blockmgr_seq_free(st.m, dummy1), "seq free");
  if (o.verbose) {
    uint32_t jumps = 0, pairs = 0;
    for (uint32_t h = 0; h < H; h++) {
      const int32_t *ids;
      int32_t nb;
      rkv_blockmgr_stream_blocks(st.m, seq, 0, h, &ids, &nb);
      for (int32_t b = 1; b < nb; b++, pairs++) jumps += ids[b] != ids[b - 1] + 1;
    }
    fprintf(stderr,
            "rkv select: %u streams x %d tokens in %u-token blocks; %u of %u block steps "
            "non-contiguous\n",
            H, n, bs, jumps, pairs);
  }

  /* Query window: token-major rows, all a of them (the ring keeps the last `window`). */
  if (st.q) {
    rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
    qc.num_layers = 1, qc.num_q_heads = QH, qc.head_dim = d, qc.window = (uint32_t)W;
    qc.max_seqs = 4;
    TRY_TOOL(rkv_qwindow_create(&qc, &st.qw), "query window");
    TRY_TOOL(rkv_qwindow_seq_add(st.qw, seq), "query window");
    st.qtok = malloc((size_t)arows * QH * d * sizeof(float));
    if (!st.qtok) goto fail;
    for (int64_t a = 0; a < arows; a++)
      for (uint32_t h = 0; h < QH; h++)
        memcpy(st.qtok + ((size_t)a * QH + h) * d, st.q + ((size_t)h * arows + (size_t)a) * d,
               d * sizeof(float));
    TRY_TOOL(rkv_qwindow_push(st.qw, seq, 0, st.qtok, (uint32_t)arows), "query window push");
  }

  /* The step itself. */
  size_t wsb = 0;
  TRY_TOOL(rkv_evict_workspace_size(p, H, QH, d, n, &wsb), "workspace size");
  st.ws = malloc(wsb);
  if (!st.ws) goto fail;
  rkv_evict_result res;
  double t0 = rkv_tool_now();
  rkv_status s =
      rkv_evict_layer_ex(p, st.m, st.pool, st.qw, QH, seq, 0, st.ws, wsb, &res, err, sizeof err);
  double t1 = rkv_tool_now();
  if (s != RKV_OK) {
    fprintf(stderr, "rkv select: eviction failed: %s: %s\n", rkv_status_str(s), err);
    goto fail;
  }
  s = rkv_blockmgr_check(st.m);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv select: block manager check failed: %s\n", rkv_blockmgr_last_error(st.m));
    goto fail;
  }
  if (o.verbose)
    fprintf(stderr,
            "rkv select: %s: %u streams compressed, %llu tokens evicted, %u blocks "
            "freed, %u slot moves, %.3f ms\n",
            rkv_evict_policy_name(p->policy), res.streams_compressed,
            (unsigned long long)res.tokens_evicted, res.blocks_freed, res.slot_moves,
            (t1 - t0) * 1e3);

  /* Read the kept positions back from the compacted streams. */
  const int32_t kept = rkv_evict_kept_count(p, n);
  st.kept = malloc((size_t)H * (size_t)kept * sizeof(int64_t) + 1);
  if (!st.kept) goto fail;
  for (uint32_t h = 0; h < H; h++) {
    int32_t len = 0;
    TRY_TOOL(rkv_blockmgr_stream_len(st.m, seq, 0, h, &len), "stream length");
    if (len != kept) {
      fprintf(stderr, "rkv select: internal error: head %u holds %d tokens, expected %d\n", h, len,
              kept);
      goto fail;
    }
    for (int32_t j = 0; j < len; j++) {
      int64_t slot;
      TRY_TOOL(rkv_blockmgr_stream_slot(st.m, seq, 0, h, j, &slot), "stream slot");
      const char *blk = base + (size_t)(slot / bs) * bbytes;
      st.kept[(size_t)h * kept + j] =
          get_pos(o.dtype, blk + rkv_kv_v_offset(&lay, (uint32_t)(slot % bs)));
    }
  }

  /* Cross-check against the dense entry on the same dtype-rounded keys; dump scores. */
  st.kr = malloc((size_t)H * n * d * sizeof(float));
  st.keep_dense = malloc((size_t)H * (size_t)kept * sizeof(int32_t) + 1);
  if (!st.kr || !st.keep_dense) goto fail;
  for (size_t i = 0; i < (size_t)H * n * d; i++) {
    uint32_t tmp = 0;
    rkv_dtype_store(o.dtype, &tmp, 0, st.k[i]);
    st.kr[i] = rkv_dtype_load(o.dtype, &tmp, 0);
  }
  size_t dwsb = 0;
  TRY_TOOL(rkv_evict_dense_workspace_size(p, d, n, &dwsb), "dense workspace size");
  st.dense_ws_mem = malloc(dwsb);
  if (!st.dense_ws_mem) goto fail;
  const float *qwin = NULL;
  float *qlast = NULL;
  if (st.q) {
    /* The last `window` rows of every head. */
    qlast = malloc((size_t)QH * W * d * sizeof(float));
    if (!qlast) goto fail;
    for (uint32_t h = 0; h < QH; h++)
      memcpy(qlast + (size_t)h * W * d, st.q + ((size_t)h * arows + (size_t)(arows - W)) * d,
             (size_t)W * d * sizeof(float));
    qwin = qlast;
  }
  s = rkv_evict_select_dense(p, st.kr, qwin, st.s, H, QH, n, d, st.keep_dense, NULL,
                             st.dense_ws_mem, dwsb, err, sizeof err);
  if (s != RKV_OK) {
    free(qlast);
    fprintf(stderr, "rkv select: dense cross-check failed: %s\n", err);
    goto fail;
  }
  for (size_t i = 0; i < (size_t)H * kept; i++) {
    if (st.kept[i] != st.keep_dense[i]) {
      free(qlast);
      fprintf(stderr, "rkv select: internal error: paged and dense selections differ (head %zu)\n",
              i / (size_t)kept);
      goto fail;
    }
  }
  if (o.dump) {
    /* Scores do not depend on B: score with the smallest budget so every candidate is
     * scored even when this n would keep everything. */
    const int64_t nc = n > W ? n - W : 0;
    st.dumps = calloc((size_t)(3 * H * nc + 1), sizeof(float));
    if (!st.dumps) {
      free(qlast);
      goto fail;
    }
    rkv_evict_params dp = *p;
    dp.budget = W + 1, dp.sinks = 0;
    if (nc > 1 && p->policy != RKV_EVICT_STREAMING) {
      int32_t *tmpkeep = malloc((size_t)H * (size_t)(W + 1) * sizeof(int32_t));
      rkv_evict_scores sc = {st.dumps, st.dumps + H * nc, st.dumps + 2 * H * nc};
      s = tmpkeep ? rkv_evict_select_dense(&dp, st.kr, qwin, st.s, H, QH, n, d, tmpkeep, &sc,
                                           st.dense_ws_mem, dwsb, err, sizeof err)
                  : RKV_ERR_NO_MEMORY;
      free(tmpkeep);
      if (s != RKV_OK) {
        free(qlast);
        fprintf(stderr, "rkv select: score dump failed: %s\n", rkv_status_str(s));
        goto fail;
      }
    }
    if (mkdir(o.dump, 0777) != 0 && errno != EEXIST) {
      free(qlast);
      fprintf(stderr, "rkv select: cannot create %s: %s\n", o.dump, strerror(errno));
      goto fail;
    }
    if (save_dump(o.dump, "importance.npy", H, nc, st.dumps) ||
        save_dump(o.dump, "redundancy.npy", H, nc, st.dumps + H * nc) ||
        save_dump(o.dump, "joint.npy", H, nc, st.dumps + 2 * H * nc)) {
      free(qlast);
      goto fail;
    }
  }
  free(qlast);
  int64_t shape[2] = {H, kept};
  if (rkv_npy_save(o.out, "<i8", 2, shape, st.kept, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: %s\n", err);
    goto fail;
  }
  rc = 0;
fail:
  cleanup(&st);
  return rc;
}
