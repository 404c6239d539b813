/* `rkv select`: one compression step of a policy on keys (and queries / scores) from .npy
 * files, through the real paged path: the keys go into a CPU KV pool whose block ids are
 * deliberately scattered (a dummy sequence interleaved with the real one and freed, after an
 * earlier one freed in LIFO order), the query window is filled, and every layer is compressed
 * and compacted; the kept positions are read back from the compacted streams (every token
 * carries its original position in its V row). Per-stream selection runs rkv_evict_layer
 * (score, select, compact, move) per layer; the coarser granularities select with the dense
 * entry, because the paged entry selects per stream, and apply the shared sets through
 * rkv_blockmgr_compact and the pool's move plan. The dense entry runs on the same inputs as a
 * cross-check and for --dump-scores. */
#include "rkv_tool.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <rkv/evict.h>

#include "npy.h"

const char rt_cmd_select_summary[] =
    "run one eviction step (rkv, snapkv, streaming, h2o) on .npy keys through paged blocks";

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv select --policy rkv|snapkv|streaming|h2o --keys K.npy [--queries Q.npy]\n"
          "                  [--scores S.npy] --budget B [--granularity G] [--window 8]\n"
          "                  [--kernel 7] [--lambda 0.1] [--threshold 0.5] [--sinks 4]\n"
          "                  [--block-size 16] [--dtype f32|f16|bf16] --out kept.npy\n"
          "                  [--dump-scores DIR] [-v]\n\n"
          "One compression step of every layer of one sequence through the block manager and\n"
          "a CPU KV pool (scattered block ids), exactly as the library runs it.\n"
          "  --keys K.npy     float32/float64 [kv_heads, n, d] (one layer) or\n"
          "                   [layers, kv_heads, n, d]: post-RoPE keys in cache order\n"
          "  --queries Q.npy  [q_heads, a, d] or [layers, q_heads, a, d] (as many dims as the\n"
          "                   keys), a >= window: the last `window` rows are the query window\n"
          "                   (rkv, snapkv); q_heads a multiple of kv_heads\n"
          "  --scores S.npy   [kv_heads, n] or [layers, kv_heads, n]: accumulated attention\n"
          "                   mass (h2o)\n"
          "  --budget B       tokens kept per stream (B > window); n <= B keeps everything\n"
          "  --granularity G  which streams share one kept set (the window is always kept,\n"
          "                   then the best B - window candidates by the aggregated joint\n"
          "                   score Z of every stream of the group; ties: lower position):\n"
          "                     stream    each (layer, kv head) alone (default)\n"
          "                     layer     one set per layer: mean of Z over its kv heads\n"
          "                     kvhead    one set per kv head index: sum of Z over layers\n"
          "                     sequence  one set for all: sum over layers of the head mean\n"
          "                   streaming keeps the same set at every granularity\n"
          "  --window         alpha, newest tokens always kept (h2o: its 'recent' count)\n"
          "  --kernel --lambda --threshold --sinks   R-KV / StreamingLLM parameters\n"
          "  --dtype          KV pool element type (keys are rounded to it)\n"
          "  --out kept.npy   int64 [kv_heads, min(n, B)] for 3-D keys, else\n"
          "                   [layers, kv_heads, min(n, B)]; each row ascending positions\n"
          "  --dump-scores D  writes D/importance.npy, D/redundancy.npy, D/joint.npy\n"
          "                   (float32 [(layers,) kv_heads, n - window], candidates only, per\n"
          "                   stream: the scores before any aggregation)\n"
          "  -v               print the pool layout and compaction statistics on stderr\n");
}

typedef struct select_opts {
  rkv_evict_params p;
  rkv_evict_granularity gran;
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
  o->gran = RKV_EVICT_GRAN_STREAM;
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
      if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
      if (rkv_evict_policy_parse(v, &o->p.policy) != RKV_OK || o->p.policy == RKV_EVICT_FULL) {
        fprintf(stderr, "rkv select: bad value for --policy: '%s' (rkv, snapkv, streaming, h2o)\n",
                v);
        return 2;
      }
    } else if (strcmp(a, "--granularity") == 0) {
      if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
      if (rkv_evict_granularity_parse(v, &o->gran) != RKV_OK) {
        fprintf(stderr, "rkv select: unknown granularity '%s' (stream, layer, kvhead, sequence)\n",
                v);
        return 2;
      }
    } else if (strcmp(a, "--keys") == 0) {
      if (!(o->keys = rt_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--queries") == 0) {
      if (!(o->queries = rt_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--scores") == 0) {
      if (!(o->scores = rt_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--out") == 0) {
      if (!(o->out = rt_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--dump-scores") == 0) {
      if (!(o->dump = rt_optval(cmd, argc, argv, &i))) return 2;
    } else if (strcmp(a, "--budget") == 0 || strcmp(a, "--window") == 0 ||
               strcmp(a, "--kernel") == 0 || strcmp(a, "--sinks") == 0 ||
               strcmp(a, "--block-size") == 0) {
      if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
      if (!rt_parse_i64(cmd, a, v, 0, 1 << 24, &iv)) return 2;
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
      if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
      if (!rt_parse_f64(cmd, a, v, -1e9, 1e9, &dv)) return 2;
      if (a[2] == 'l')
        o->p.lambda = (float)dv;
      else
        o->p.threshold = (float)dv;
    } else if (strcmp(a, "--dtype") == 0) {
      if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
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

/* shape: [layers, kv_heads, last]; a one-layer input (ndim 2 here) drops the layer axis. */
static int save_dump(const char *dir, const char *name, int ndim, const int64_t shape[3],
                     const float *x) {
  char path[4096], err[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  if (rt_npy_save(path, "<f4", ndim, shape + (3 - ndim), x, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: %s\n", err);
    return 1;
  }
  return 0;
}

/* NaN or Inf in the inputs (or an f8 value beyond float range) would make every score NaN
 * and the selection meaningless while still exiting 0: refuse, naming the option, the file
 * and the first bad element. */
static bool all_finite(const char *opt, const char *path, const float *x, const rt_npy *info) {
  for (size_t i = 0; i < info->count; i++) {
    if (isfinite(x[i])) continue;
    size_t idx[RT_NPY_MAX_DIMS] = {0}, rest = i;
    for (int dim = info->ndim - 1; dim >= 0; dim--) { /* C order: last dimension fastest */
      size_t ext = (size_t)info->shape[dim];
      idx[dim] = rest % ext; /* ext > 0: the array holds element i */
      rest /= ext;
    }
    char where[RT_NPY_MAX_DIMS * 22 + 1] = "";
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
  float *k, *q, *s, *kr, *dense_ws_mem, *qtok, *qlast, *dumps;
  void *ws;
  int32_t *keep_dense;
  int64_t *slots;
  rkv_keep_list *lists;
  rkv_slot_move *moves;
  int64_t *kept;
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
} select_state;

static void cleanup(select_state *st) {
  free(st->k), free(st->q), free(st->s), free(st->kr), free(st->qtok), free(st->qlast);
  free(st->dumps), free(st->ws), free(st->dense_ws_mem), free(st->keep_dense), free(st->kept);
  free(st->slots), free(st->lists), free(st->moves);
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

/* Sizes of the inputs: L layers (1 for 3-D keys), H kv heads, QH query heads with `arows`
 * query rows each, n tokens of d dims; ndim is the keys' (3 or 4). */
typedef struct select_shape {
  uint32_t L, H, QH, d;
  int32_t n;
  int64_t arows;
  int ndim;
} select_shape;

/* Loads and checks the .npy inputs. */
static int load_inputs(const select_opts *o, select_state *st, select_shape *sh) {
  const rkv_evict_params *p = &o->p;
  bool scored = p->policy == RKV_EVICT_RKV || p->policy == RKV_EVICT_SNAPKV;
  char err[512];
  rt_npy ki, qi, si;
  if (rt_npy_load_f32(o->keys, &st->k, &ki, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv select: --keys: %s\n", err);
    return 1;
  }
  if (!all_finite("--keys", o->keys, st->k, &ki)) return 1;
  const int off = ki.ndim - 3; /* 1 when the keys have a layer axis */
  if ((ki.ndim != 3 && ki.ndim != 4) || (off && (ki.shape[0] < 1 || ki.shape[0] > 1024)) ||
      ki.shape[off] < 1 || ki.shape[off] > 1024 || ki.shape[off + 1] < 1 ||
      ki.shape[off + 1] >= (1 << 24) || ki.shape[off + 2] < 3 || ki.shape[off + 2] > 4096) {
    fprintf(stderr,
            "rkv select: %s: want [kv_heads 1..1024, n 1..2^24-1, d 3..4096] or [layers 1..1024, "
            "kv_heads, n, d], got %d dims\n",
            o->keys, ki.ndim);
    return 1;
  }
  sh->ndim = ki.ndim;
  sh->L = off ? (uint32_t)ki.shape[0] : 1;
  sh->H = (uint32_t)ki.shape[off], sh->n = (int32_t)ki.shape[off + 1];
  sh->d = (uint32_t)ki.shape[off + 2];
  sh->QH = sh->H, sh->arows = 0;
  if (scored || o->queries) {
    if (!o->queries) {
      fprintf(stderr, "rkv select: policy %s needs --queries\n", rkv_evict_policy_name(p->policy));
      return 1;
    }
    if (rt_npy_load_f32(o->queries, &st->q, &qi, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv select: --queries: %s\n", err);
      return 1;
    }
    if (!all_finite("--queries", o->queries, st->q, &qi)) return 1;
    if (qi.ndim != ki.ndim || (off && qi.shape[0] != sh->L) || qi.shape[off] < sh->H ||
        qi.shape[off] % sh->H != 0 || qi.shape[off] > 65536 || qi.shape[off + 1] < p->window ||
        qi.shape[off + 2] != sh->d) {
      fprintf(stderr,
              "rkv select: %s: want [%sq_heads (a multiple of %u), a >= window %d, d = %u]\n",
              o->queries, off ? "layers = keys' layers, " : "", sh->H, p->window, sh->d);
      return 1;
    }
    sh->QH = (uint32_t)qi.shape[off];
    sh->arows = qi.shape[off + 1];
  }
  if (p->policy == RKV_EVICT_H2O) {
    if (!o->scores) {
      fprintf(stderr, "rkv select: policy h2o needs --scores\n");
      return 1;
    }
    if (rt_npy_load_f32(o->scores, &st->s, &si, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv select: --scores: %s\n", err);
      return 1;
    }
    if (!all_finite("--scores", o->scores, st->s, &si)) return 1;
    if (si.ndim != ki.ndim - 1 || (off && si.shape[0] != sh->L) || si.shape[off] != sh->H ||
        si.shape[off + 1] != sh->n) {
      fprintf(stderr, "rkv select: %s: want [%s%u, %d]\n", o->scores, off ? "layers, " : "", sh->H,
              sh->n);
      return 1;
    }
  }
  return 0;
}

/* Compresses every layer: per stream through rkv_evict_layer, or (coarser units) with the
 * dense entry's shared sets compacted through the block manager. keep_dense must hold the
 * dense selection already for the coarse path. Sums the statistics into res. */
static int compress_layers(const select_opts *o, select_state *st, const select_shape *sh,
                           int64_t seq, rkv_evict_result *res) {
  const rkv_evict_params *p = &o->p;
  char err[512];
  memset(res, 0, sizeof *res);
  if (o->gran == RKV_EVICT_GRAN_STREAM) {
    size_t wsb = 0;
    TRY_TOOL(rkv_evict_workspace_size(p, sh->H, sh->QH, sh->d, sh->n, &wsb), "workspace size");
    st->ws = malloc(wsb);
    if (!st->ws) goto fail;
    for (uint32_t l = 0; l < sh->L; l++) {
      rkv_evict_result r;
      rkv_status s = rkv_evict_layer_ex(p, st->m, st->pool, st->qw, sh->QH, seq, l, st->ws, wsb, &r,
                                        err, sizeof err);
      if (s != RKV_OK) {
        fprintf(stderr, "rkv select: eviction of layer %u failed: %s: %s\n", l, rkv_status_str(s),
                err);
        goto fail;
      }
      res->streams_compressed += r.streams_compressed, res->tokens_evicted += r.tokens_evicted;
      res->blocks_freed += r.blocks_freed, res->slot_moves += r.slot_moves;
    }
    return 0;
  }
  const int32_t kept = rkv_evict_kept_count(p, sh->n);
  if (kept == sh->n) return 0;
  st->lists = malloc(sh->H * sizeof(rkv_keep_list));
  st->moves = malloc((size_t)sh->H * (size_t)kept * sizeof(rkv_slot_move));
  if (!st->lists || !st->moves) goto fail;
  for (uint32_t l = 0; l < sh->L; l++) {
    for (uint32_t h = 0; h < sh->H; h++)
      st->lists[h] =
          (rkv_keep_list){l, h, st->keep_dense + ((size_t)l * sh->H + h) * kept, (uint32_t)kept};
    uint32_t n_moves = 0;
    rkv_status s = rkv_blockmgr_compact(st->m, seq, st->lists, sh->H, st->moves,
                                        (uint32_t)((size_t)sh->H * kept), &n_moves);
    if (s != RKV_OK) {
      fprintf(stderr, "rkv select: compaction of layer %u failed: %s (%s)\n", l, rkv_status_str(s),
              rkv_blockmgr_last_error(st->m));
      goto fail;
    }
    TRY_TOOL(rkv_kv_pool_apply_moves(st->pool, st->moves, n_moves), "pool moves");
    res->streams_compressed += sh->H, res->slot_moves += n_moves;
    res->tokens_evicted += (uint64_t)sh->H * (uint64_t)(sh->n - kept);
  }
  return 0;
fail:
  return 1;
}

int rt_cmd_select(int argc, char **argv) {
  select_opts o;
  memset(&o, 0, sizeof o);
  int rc = parse(argc, argv, &o);
  if (rc >= 0) return rc;
  const rkv_evict_params *p = &o.p;
  select_state st;
  memset(&st, 0, sizeof st);
  char err[512];
  select_shape sh;
  rc = 1;
  if (load_inputs(&o, &st, &sh)) goto fail;
  const uint32_t L = sh.L, H = sh.H, QH = sh.QH, d = sh.d;
  const int32_t n = sh.n, W = p->window;
  const size_t streams = (size_t)L * H;

  /* Pool and manager: room for the streams plus the scattering dummies. */
  const uint32_t bs = o.block_size;
  const uint32_t per_stream = (uint32_t)((n + bs - 1) / bs);
  const uint64_t nblocks64 = (uint64_t)streams * per_stream * 2 + 2 * streams + 8;
  if (nblocks64 * bs >= (1ull << 31)) {
    fprintf(stderr, "rkv select: %u layers x %u heads x %d tokens is too large for one pool\n", L,
            H, n);
    goto fail;
  }
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  TRY_TOOL(rkv_backend_create(&bc, &st.be), "backend");
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = (uint32_t)nblocks64, mc.block_size = bs, mc.num_layers = L;
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
  st.slots = malloc(streams * bs * sizeof(int64_t));
  if (!st.slots) goto fail;
  for (int32_t t0 = 0, chunk = 0; t0 < n; t0 += (int32_t)bs, chunk++) {
    uint32_t cnt = (uint32_t)(n - t0 < (int32_t)bs ? n - t0 : (int32_t)bs);
    rkv_status s = rkv_blockmgr_append(st.m, seq, cnt, st.slots, NULL, NULL);
    if (s == RKV_OK && chunk % 3 != 2) s = rkv_blockmgr_append(st.m, dummy1, bs, NULL, NULL, NULL);
    if (s != RKV_OK) {
      fprintf(stderr, "rkv select: append: %s (%s)\n", rkv_status_str(s),
              rkv_blockmgr_last_error(st.m));
      goto fail;
    }
    for (size_t sidx = 0; sidx < streams; sidx++) { /* stream = layer * H + head */
      for (uint32_t t = 0; t < cnt; t++) {
        int64_t slot = st.slots[sidx * cnt + t];
        char *blk = base + (size_t)(slot / bs) * bbytes;
        uint32_t off = (uint32_t)(slot % bs);
        const size_t row = sidx * (size_t)n + (size_t)(t0 + (int32_t)t);
        const float *src = st.k + row * d;
        void *kd = blk + rkv_kv_k_offset(&lay, off);
        for (uint32_t i = 0; i < d; i++) rkv_dtype_store(o.dtype, kd, i, src[i]);
        put_pos(o.dtype, blk + rkv_kv_v_offset(&lay, off), d, t0 + (int32_t)t);
        if (st.s) pool_scores[slot] = st.s[row];
      }
    }
  }
  TRY_TOOL(rkv_blockmgr_seq_free(st.m, dummy1), "seq free");
  if (o.verbose) {
    uint32_t jumps = 0, pairs = 0;
    for (uint32_t l = 0; l < L; l++) {
      for (uint32_t h = 0; h < H; h++) {
        const int32_t *ids;
        int32_t nb;
        rkv_blockmgr_stream_blocks(st.m, seq, l, h, &ids, &nb);
        for (int32_t b = 1; b < nb; b++, pairs++) jumps += ids[b] != ids[b - 1] + 1;
      }
    }
    fprintf(stderr,
            "rkv select: %u layers x %u streams x %d tokens in %u-token blocks; %u of %u block "
            "steps non-contiguous\n",
            L, H, n, bs, jumps, pairs);
  }

  /* Query window: token-major rows, all a of them per layer (the ring keeps the last
   * `window`); the dense entry gets the last `window` rows of every head. */
  const int64_t arows = sh.arows;
  if (st.q) {
    rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
    qc.num_layers = L, qc.num_q_heads = QH, qc.head_dim = d, qc.window = (uint32_t)W;
    qc.max_seqs = 4;
    TRY_TOOL(rkv_qwindow_create(&qc, &st.qw), "query window");
    TRY_TOOL(rkv_qwindow_seq_add(st.qw, seq), "query window");
    st.qtok = malloc((size_t)arows * QH * d * sizeof(float));
    st.qlast = malloc((size_t)L * QH * (size_t)W * d * sizeof(float));
    if (!st.qtok || !st.qlast) goto fail;
    for (uint32_t l = 0; l < L; l++) {
      const float *ql = st.q + (size_t)l * QH * (size_t)arows * d;
      for (int64_t a = 0; a < arows; a++)
        for (uint32_t h = 0; h < QH; h++)
          memcpy(st.qtok + ((size_t)a * QH + h) * d, ql + ((size_t)h * arows + (size_t)a) * d,
                 d * sizeof(float));
      TRY_TOOL(rkv_qwindow_push(st.qw, seq, l, st.qtok, (uint32_t)arows), "query window push");
      for (uint32_t h = 0; h < QH; h++)
        memcpy(st.qlast + ((size_t)l * QH + h) * (size_t)W * d,
               ql + ((size_t)h * arows + (size_t)(arows - W)) * d, (size_t)W * d * sizeof(float));
    }
  }

  /* The dense entry on the same dtype-rounded keys: the selection itself for the coarser
   * units, a cross-check of the paged path for per-stream selection. */
  const int32_t kept = rkv_evict_kept_count(p, n);
  st.kr = malloc(streams * (size_t)n * d * sizeof(float));
  st.keep_dense = malloc(streams * (size_t)kept * sizeof(int32_t) + 1);
  if (!st.kr || !st.keep_dense) goto fail;
  for (size_t i = 0; i < streams * (size_t)n * d; i++) {
    uint32_t tmp = 0;
    rkv_dtype_store(o.dtype, &tmp, 0, st.k[i]);
    st.kr[i] = rkv_dtype_load(o.dtype, &tmp, 0);
  }
  size_t dwsb = 0;
  TRY_TOOL(rkv_evict_dense_multi_workspace_size(p, o.gran, d, n, &dwsb), "dense workspace size");
  st.dense_ws_mem = malloc(dwsb);
  if (!st.dense_ws_mem) goto fail;
  double t0 = rt_now();
  rkv_status s =
      rkv_evict_select_dense_multi(p, o.gran, st.kr, st.qlast, st.s, L, H, QH, n, d, st.keep_dense,
                                   NULL, st.dense_ws_mem, dwsb, err, sizeof err);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv select: dense selection failed: %s\n", err);
    goto fail;
  }
  double t1 = rt_now();
  rkv_evict_result res;
  if (compress_layers(&o, &st, &sh, seq, &res)) goto fail;
  double t2 = rt_now();
  s = rkv_blockmgr_check(st.m);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv select: block manager check failed: %s\n", rkv_blockmgr_last_error(st.m));
    goto fail;
  }
  if (o.verbose)
    fprintf(stderr,
            "rkv select: %s, granularity %s: %u streams compressed, %llu tokens evicted, %u "
            "slot moves; dense selection %.3f ms, %s %.3f ms\n",
            rkv_evict_policy_name(p->policy), rkv_evict_granularity_name(o.gran),
            res.streams_compressed, (unsigned long long)res.tokens_evicted, res.slot_moves,
            (t1 - t0) * 1e3,
            o.gran == RKV_EVICT_GRAN_STREAM ? "paged step (rkv_evict_layer)" : "compaction",
            (t2 - t1) * 1e3);

  /* Read the kept positions back from the compacted streams. */
  st.kept = malloc(streams * (size_t)kept * sizeof(int64_t) + 1);
  if (!st.kept) goto fail;
  for (uint32_t l = 0; l < L; l++) {
    for (uint32_t h = 0; h < H; h++) {
      int32_t len = 0;
      int64_t *row = st.kept + ((size_t)l * H + h) * (size_t)kept;
      TRY_TOOL(rkv_blockmgr_stream_len(st.m, seq, l, h, &len), "stream length");
      if (len != kept) {
        fprintf(stderr,
                "rkv select: internal error: layer %u head %u holds %d tokens, expected %d\n", l, h,
                len, kept);
        goto fail;
      }
      for (int32_t j = 0; j < len; j++) {
        int64_t slot;
        TRY_TOOL(rkv_blockmgr_stream_slot(st.m, seq, l, h, j, &slot), "stream slot");
        const char *blk = base + (size_t)(slot / bs) * bbytes;
        row[j] = get_pos(o.dtype, blk + rkv_kv_v_offset(&lay, (uint32_t)(slot % bs)));
      }
    }
  }
  for (size_t i = 0; i < streams * (size_t)kept; i++) {
    if (st.kept[i] != st.keep_dense[i]) {
      size_t sidx = i / (size_t)kept;
      fprintf(stderr,
              "rkv select: internal error: paged and dense selections differ (layer %zu, head "
              "%zu)\n",
              sidx / H, sidx % H);
      goto fail;
    }
  }
  if (o.dump) {
    /* Scores do not depend on B nor on the granularity (the dumps are per stream): score
     * with the smallest budget so every candidate is scored even when this n would keep
     * everything. */
    const int64_t nc = n > W ? n - W : 0;
    const size_t per = streams * (size_t)nc;
    st.dumps = calloc(3 * per + 1, sizeof(float));
    if (!st.dumps) goto fail;
    rkv_evict_params dp = *p;
    dp.budget = W + 1, dp.sinks = 0;
    if (nc > 1 && p->policy != RKV_EVICT_STREAMING) {
      int32_t *tmpkeep = malloc(streams * (size_t)(W + 1) * sizeof(int32_t));
      rkv_evict_scores sc = {st.dumps, st.dumps + per, st.dumps + 2 * per};
      s = tmpkeep ? rkv_evict_select_dense_multi(&dp, RKV_EVICT_GRAN_STREAM, st.kr, st.qlast, st.s,
                                                 L, H, QH, n, d, tmpkeep, &sc, st.dense_ws_mem,
                                                 dwsb, err, sizeof err)
                  : RKV_ERR_NO_MEMORY;
      free(tmpkeep);
      if (s != RKV_OK) {
        fprintf(stderr, "rkv select: score dump failed: %s\n", rkv_status_str(s));
        goto fail;
      }
    }
    if (mkdir(o.dump, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "rkv select: cannot create %s: %s\n", o.dump, strerror(errno));
      goto fail;
    }
    const int64_t dshape[3] = {L, H, nc};
    const int dnd = sh.ndim - 1;
    if (save_dump(o.dump, "importance.npy", dnd, dshape, st.dumps) ||
        save_dump(o.dump, "redundancy.npy", dnd, dshape, st.dumps + per) ||
        save_dump(o.dump, "joint.npy", dnd, dshape, st.dumps + 2 * per))
      goto fail;
  }
  const int64_t shape[3] = {L, H, kept};
  if (rt_npy_save(o.out, "<i8", sh.ndim - 1, shape + (4 - sh.ndim), st.kept, err, sizeof err) !=
      RKV_OK) {
    fprintf(stderr, "rkv select: %s\n", err);
    goto fail;
  }
  rc = 0;
fail:
  cleanup(&st);
  return rc;
}
