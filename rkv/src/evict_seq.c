/* The paged entry at a selection granularity (rkv_evict_seq): one compression step of every
 * layer of one sequence. Every stream is gathered from the pool and scored by the per-stream
 * scorer rkv_evict_layer uses, the scores go through the granularity core the dense entry
 * uses (rkvi_select_granular: one implementation of the aggregation), and all streams are
 * compacted by a single rkv_blockmgr_compact call, which takes every layer's fresh blocks
 * before it changes anything: the sequence compresses whole or not at all. */
#include <string.h>

#include "evict_internal.h"
#include "qwindow_internal.h"

static void *align_ptr(void *p) {
  uintptr_t u = (uintptr_t)p;
  return (void *)((u + RKVI_WS_ALIGN - 1) & ~(uintptr_t)(RKVI_WS_ALIGN - 1));
}

/* The workspace: one head's scratch, the granularity's two score vectors, one layer's window
 * queries, one stream's masses, then per stream (S = layers x kv heads) its keep list, its
 * keep-list record, its share of the move plan and its old block row. */
typedef struct seq_ws {
  rkvi_head_ws head;
  double *total, *lay;  /* [max_len] each (not for stream granularity) */
  float *q;             /* [q_heads][window][d] */
  float *acc;           /* [max_len] */
  int32_t *keep;        /* [S][max_len]: protected prefix + budget */
  rkv_keep_list *lists; /* [S] */
  rkv_slot_move *moves; /* [S * max_len] */
  int32_t *old_ids;     /* [S][max_len] (worst case block_size 1) */
  int32_t *old_nb;      /* [S] */
} seq_ws;

/* Bytes of the workspace (0 on overflow); carves it into ws when ws is non-NULL. */
static size_t seq_ws_bytes(const rkv_evict_params *p, rkv_evict_granularity g, size_t S,
                           uint32_t qh, uint32_t d, int32_t max_len, seq_ws *ws, void *base) {
  const size_t nh = rkvi_head_ws_bytes(max_len, d, p->window);
  const size_t n = (size_t)max_len;
  size_t cells = 0;
  /* The move plan's capacity is a uint32_t. */
  if (nh == 0 || rkvi_mul_size(S, n, &cells) || cells > UINT32_MAX) return 0;
  const size_t sz[8] = {rkvi_gran_extra_bytes(g, max_len),
                        (size_t)qh * (size_t)p->window * d * sizeof(float),
                        n * sizeof(float),
                        cells * sizeof(int32_t),
                        S * sizeof(rkv_keep_list),
                        cells * sizeof(rkv_slot_move),
                        cells * sizeof(int32_t),
                        S * sizeof(int32_t)};
  size_t off[8], total = nh;
  for (int i = 0; i < 8; i++) {
    off[i] = total;
    total += rkvi_ws_align_up(sz[i]);
  }
  if (ws) {
    char *c = base;
    rkvi_head_ws_carve(base, max_len, d, p->window, &ws->head);
    ws->total = (double *)(void *)(c + off[0]);
    ws->lay = (double *)(void *)(c + off[0] + sz[0] / 2);
    ws->q = (float *)(void *)(c + off[1]);
    ws->acc = (float *)(void *)(c + off[2]);
    ws->keep = (int32_t *)(void *)(c + off[3]);
    ws->lists = (rkv_keep_list *)(void *)(c + off[4]);
    ws->moves = (rkv_slot_move *)(void *)(c + off[5]);
    ws->old_ids = (int32_t *)(void *)(c + off[6]);
    ws->old_nb = (int32_t *)(void *)(c + off[7]);
  }
  return total + RKVI_WS_ALIGN;
}

static bool gran_valid(rkv_evict_granularity g) {
  return (int)g >= 0 && g < RKV_EVICT_GRAN_COUNT_;
}

rkv_status rkv_evict_seq_workspace_size(const rkv_evict_params *p, rkv_evict_granularity g,
                                        uint32_t num_layers, uint32_t num_kv_heads,
                                        uint32_t num_q_heads, uint32_t head_dim, int32_t max_len,
                                        size_t *bytes) {
  if (!bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  RKV_TRY(rkv_evict_params_validate(p, NULL, 0));
  if (!gran_valid(g) || num_layers < 1 || num_layers > 65536 || num_kv_heads < 1 ||
      num_kv_heads > 65536 || num_q_heads < num_kv_heads || num_q_heads % num_kv_heads != 0 ||
      num_q_heads > 65536 || head_dim < 1 || head_dim > 4096 || max_len < 0)
    return RKV_ERR_INVALID_ARG;
  size_t b = seq_ws_bytes(p, g, (size_t)num_layers * num_kv_heads, num_q_heads, head_dim,
                          max_len > 0 ? max_len : 1, NULL, NULL);
  if (b == 0) return RKV_ERR_INVALID_ARG;
  *bytes = b;
  return RKV_OK;
}

/* Where the scorer finds stream (l, h): the pool through the manager's rows, and the window
 * of layer l (loaded when the layer changes; kvhead order revisits layers). */
typedef struct seq_ctx {
  const rkv_evict_params *p;
  const rkv_blockmgr *m;
  const rkv_kv_pool *pool;
  const rkv_qwindow *qw;
  int64_t seq;
  int32_t len, P;
  uint32_t d, group;
  float *q, *acc;
  int64_t q_layer;
} seq_ctx;

/* An rkvi_stream_scorer. Every lookup it makes was checked before selection began. */
static void score_paged(void *vc, uint32_t l, uint32_t h, rkvi_head_ws *ws) {
  seq_ctx *c = vc;
  const rkvi_policy *pol = rkvi_policy_of(c->p->policy);
  const int32_t *ids = NULL;
  int32_t nb = 0;
  (void)rkv_blockmgr_stream_blocks(c->m, c->seq, l, h, &ids, &nb);
  rkvi_gather_stream(c->pool, ids, nb, c->len, c->P, pol->needs_queries ? ws->k : NULL,
                     pol->needs_mass ? c->acc : NULL);
  if (pol->needs_queries && c->q_layer != (int64_t)l) {
    uint32_t count = 0;
    (void)rkv_qwindow_get(c->qw, c->seq, l, c->q, &count);
    c->q_layer = l;
  }
  const size_t W = (size_t)c->p->window;
  rkvi_evict_head_score(c->p, c->len - c->P, c->d, c->group, c->q + (size_t)h * c->group * W * c->d,
                        c->acc, ws, NULL);
}

/* The common length of every stream of seq into *len, or an error: the streams must be in
 * lockstep (what an engine that appends one token to every stream per step has). */
rkv_status rkvi_lockstep_len(const rkv_blockmgr *m, int64_t seq, uint32_t L, uint32_t kv,
                             int32_t *len, char *err, size_t err_len) {
  int32_t first = 0;
  for (uint32_t l = 0; l < L; l++) {
    for (uint32_t h = 0; h < kv; h++) {
      int32_t n = 0;
      rkv_status s = rkv_blockmgr_stream_len(m, seq, l, h, &n);
      if (s != RKV_OK)
        return rkvi_failn(err, err_len, s, "stream (seq %lld, layer %u, head %u): %s",
                          (long long)seq, l, h, rkv_blockmgr_last_error(m));
      if (l == 0 && h == 0) first = n;
      if (n != first)
        return rkvi_failn(err, err_len, RKV_ERR_STATE,
                          "seq %lld: stream (layer %u, head %u) holds %d tokens, stream (0, 0) "
                          "%d; a selection shared across streams needs them in lockstep (the "
                          "stream granularity compresses unequal ones)",
                          (long long)seq, l, h, n, first);
    }
  }
  *len = first;
  return RKV_OK;
}

/* The window of every layer holds `window` rows of the right shape (so the scorer's loads
 * cannot fail half-way). */
static rkv_status check_windows(const rkv_evict_params *p, const rkv_qwindow *qw, int64_t seq,
                                uint32_t L, uint32_t qh, uint32_t d, float *buf, char *err,
                                size_t err_len) {
  if (!qw)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "%s needs a query window",
                      rkv_evict_policy_name(p->policy));
  const rkv_qwindow_config *qc = rkvi_qwindow_config(qw);
  if (qc->num_q_heads != qh || qc->head_dim != d || qc->window != (uint32_t)p->window ||
      qc->num_layers < L)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG,
                      "query window shape (layers %u, q heads %u, dim %u, window %u) does not "
                      "fit %u layers, q heads %u, dim %u, window %d",
                      qc->num_layers, qc->num_q_heads, qc->head_dim, qc->window, L, qh, d,
                      p->window);
  for (uint32_t l = 0; l < L; l++) {
    uint32_t count = 0;
    rkv_status s = rkv_qwindow_get(qw, seq, l, buf, &count);
    if (s != RKV_OK)
      return rkvi_failn(err, err_len, s, "query window of seq %lld layer %u: %s", (long long)seq, l,
                        rkv_status_str(s));
    if (count < (uint32_t)p->window)
      return rkvi_failn(err, err_len, RKV_ERR_STATE,
                        "query window of seq %lld layer %u holds %u of %d rows", (long long)seq, l,
                        count, p->window);
  }
  return RKV_OK;
}

/* Turns each stream's selected positions (relative to the protected prefix) into its keep
 * list and records its old block row for rkvi_after_compact. */
static void build_lists(const rkv_blockmgr *m, int64_t seq, uint32_t L, uint32_t kv, int32_t len,
                        int32_t P, int32_t B, seq_ws *ws) {
  int32_t n_old = 0;
  for (uint32_t l = 0; l < L; l++) {
    for (uint32_t h = 0; h < kv; h++) {
      const size_t s = (size_t)l * kv + h;
      int32_t *keep = ws->keep + s * (size_t)len;
      for (int32_t i = 0; i < P; i++) keep[i] = i;
      for (int32_t i = P; i < P + B; i++) keep[i] += P;
      ws->lists[s] = (rkv_keep_list){l, h, keep, (uint32_t)(P + B)};
      const int32_t *ids = NULL;
      int32_t nb = 0;
      (void)rkv_blockmgr_stream_blocks(m, seq, l, h, &ids, &nb);
      memcpy(ws->old_ids + n_old, ids, (size_t)nb * sizeof(int32_t));
      ws->old_nb[s] = nb;
      n_old += nb;
    }
  }
}

#define bad(...) rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, __VA_ARGS__)

rkv_status rkv_evict_seq(const rkv_evict_params *p, rkv_evict_granularity g, rkv_blockmgr *m,
                         rkv_kv_pool *pool, const rkv_qwindow *qw, uint32_t num_q_heads,
                         int64_t seq, void *workspace, size_t ws_bytes, rkv_evict_result *res,
                         char *err, size_t err_len) {
  if (err && err_len > 0) err[0] = '\0';
  if (res) memset(res, 0, sizeof *res);
  RKV_TRY(rkv_evict_params_validate(p, err, err_len));
  if (!gran_valid(g))
    return bad("unknown selection granularity %d (stream, layer, kvhead, sequence)", (int)g);
  RKV_TRY(rkvi_check_pool(m, pool, 0, num_q_heads, err, err_len));
  const rkvi_policy *pol = rkvi_policy_of(p->policy);
  if (!pol->evicts) return RKV_OK;
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  const uint32_t L = c->num_layers, kv = c->num_kv_heads, d = c->head_dim;
  const int32_t B = p->budget;
  /* A protected prefix stays in place and out of the count, as in rkv_evict_layer. */
  const int32_t P = rkv_blockmgr_seq_protected(m, seq);
  int32_t len = 0;
  RKV_TRY(rkvi_lockstep_len(m, seq, L, kv, &len, err, err_len));
  if (len - P <= B) return RKV_OK;
  size_t need = 0;
  RKV_TRY(rkv_evict_seq_workspace_size(p, g, L, kv, num_q_heads, d, len, &need));
  if (!workspace || ws_bytes < need)
    return rkvi_failn(err, err_len, RKV_ERR_CAPACITY,
                      "workspace of %zu bytes < %zu needed for %u x %u streams of %d tokens",
                      ws_bytes, need, L, kv, len);
  seq_ws ws;
  const size_t S = (size_t)L * kv;
  seq_ws_bytes(p, g, S, num_q_heads, d, len, &ws, align_ptr(workspace));
  if (pol->needs_queries) RKV_TRY(check_windows(p, qw, seq, L, num_q_heads, d, ws.q, err, err_len));
  seq_ctx ctx = {p, m, pool, qw, seq, len, P, d, num_q_heads / kv, ws.q, ws.acc, -1};
  rkvi_gran_job job = {p, L, kv, len - P, score_paged, &ctx, ws.keep + P, (size_t)len};
  rkvi_select_granular(&job, g, &ws.head, ws.total, ws.lay);
  build_lists(m, seq, L, kv, len, P, B, &ws);
  uint32_t n_moves = 0;
  /* One call for every layer: its fresh blocks are all taken before anything changes. */
  rkv_status s = rkv_blockmgr_compact(m, seq, ws.lists, (uint32_t)S, ws.moves,
                                      (uint32_t)(S * (size_t)len), &n_moves);
  if (s != RKV_OK)
    return rkvi_failn(err, err_len, s, "compaction of seq %lld: %s", (long long)seq,
                      rkv_blockmgr_last_error(m));
  return rkvi_after_compact(m, pool, seq, ws.lists, (uint32_t)S, P + B, ws.old_ids, ws.old_nb,
                            ws.moves, n_moves, (uint64_t)S * (uint64_t)(len - P - B), res, err,
                            err_len);
}
