/* The two entries of one compression step: the dense one (f32 arrays in, keep lists out) and
 * the paged one (rkv_evict_layer), which gathers each over-budget stream's keys block by
 * block from the KV pool through the block manager's table, scores and selects with the same
 * per-head code, compacts the streams with rkv_blockmgr_compact, applies the move plan to the
 * pool and clears the scores of slots that no longer hold a token (so H2O's accumulated mass
 * of a reused slot starts at zero). Also the CPU H2O accumulation. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "evict_internal.h"
#include "qwindow_internal.h"

static void *align_ptr(void *p) {
  uintptr_t u = (uintptr_t)p;
  return (void *)((u + RKVI_WS_ALIGN - 1) & ~(uintptr_t)(RKVI_WS_ALIGN - 1));
}

static bool scored(rkv_evict_policy p) {
  return rkvi_policy_of(p)->needs_queries;
}

static bool mass(rkv_evict_policy p) {
  return rkvi_policy_of(p)->needs_mass;
}

int32_t rkv_evict_kept_count(const rkv_evict_params *p, int32_t n) {
  if (!p || n < 0 || rkv_evict_params_validate(p, NULL, 0) != RKV_OK) return 0;
  if (!rkvi_policy_of(p->policy)->evicts || n <= p->budget) return n;
  return p->budget;
}

/* ---- Dense entry ------------------------------------------------------------------------ */

rkv_status rkv_evict_dense_workspace_size(const rkv_evict_params *p, uint32_t head_dim, int32_t n,
                                          size_t *bytes) {
  if (!bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  RKV_TRY(rkv_evict_params_validate(p, NULL, 0));
  if (n < 0 || head_dim < 1 || head_dim > 4096) return RKV_ERR_INVALID_ARG;
  size_t h = rkvi_head_ws_bytes(n > 0 ? n : 1, head_dim, p->window);
  if (h == 0) return RKV_ERR_INVALID_ARG;
  *bytes = h + RKVI_WS_ALIGN;
  return RKV_OK;
}

rkv_status rkv_evict_select_dense(const rkv_evict_params *p, const float *keys,
                                  const float *queries, const float *acc, uint32_t num_kv_heads,
                                  uint32_t num_q_heads, int32_t n, uint32_t head_dim, int32_t *keep,
                                  const rkv_evict_scores *dump, void *workspace, size_t ws_bytes,
                                  char *err, size_t err_len) {
  if (err && err_len > 0) err[0] = '\0';
  RKV_TRY(rkv_evict_params_validate(p, err, err_len));
  if (num_kv_heads < 1 || num_q_heads < num_kv_heads || num_q_heads % num_kv_heads != 0)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG,
                      "num_q_heads %u must be a positive multiple of num_kv_heads %u", num_q_heads,
                      num_kv_heads);
  if (n < 0 || head_dim < 1 || head_dim > 4096)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "bad sizes: n %d, head_dim %u", n,
                      head_dim);
  if (!keep) return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "keep is NULL");
  const int32_t kept = rkv_evict_kept_count(p, n);
  const bool compress = kept < n;
  if (compress) {
    if (scored(p->policy) && (!keys || !queries))
      return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "%s needs keys and queries",
                        rkv_evict_policy_name(p->policy));
    if (mass(p->policy) && !acc)
      return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "h2o needs accumulated scores");
  }
  size_t need = 0;
  RKV_TRY(rkv_evict_dense_workspace_size(p, head_dim, n, &need));
  if (compress && (!workspace || ws_bytes < need))
    return rkvi_failn(err, err_len, RKV_ERR_CAPACITY, "workspace of %zu bytes < %zu needed",
                      ws_bytes, need);
  const uint32_t group = num_q_heads / num_kv_heads;
  const int32_t n_c = n - p->window;
  rkvi_head_ws ws;
  if (compress) rkvi_head_ws_carve(align_ptr(workspace), n, head_dim, p->window, &ws);
  for (uint32_t h = 0; h < num_kv_heads; h++) {
    int32_t *row = keep + (size_t)h * kept;
    if (!compress) {
      for (int32_t j = 0; j < n; j++) row[j] = j;
      continue;
    }
    if (keys) memcpy(ws.k, keys + (size_t)h * n * head_dim, (size_t)n * head_dim * sizeof(float));
    rkvi_head_dump hd = {NULL, NULL, NULL}, *hdp = NULL;
    if (dump) {
      size_t off = (size_t)h * n_c;
      hd.importance = dump->importance ? dump->importance + off : NULL;
      hd.redundancy = dump->redundancy ? dump->redundancy + off : NULL;
      hd.joint = dump->joint ? dump->joint + off : NULL;
      hdp = &hd;
    }
    const float *q = queries ? queries + (size_t)h * group * p->window * head_dim : NULL;
    rkvi_evict_head(p, n, head_dim, group, q, acc ? acc + (size_t)h * n : NULL, &ws, row, hdp);
  }
  return RKV_OK;
}

/* ---- Paged entry ------------------------------------------------------------------------ */

/* The paged workspace: one head's scratch, the window queries, gathered H2O scores, every
 * head's keep list, the keep-list records, the move plan and the old block rows. */
typedef struct layer_ws {
  rkvi_head_ws head;
  float *q;             /* [q_heads][window][d] */
  float *acc;           /* [max_len] */
  int32_t *keep;        /* [kv_heads][max_len]: protected prefix + budget */
  rkv_keep_list *lists; /* [kv_heads] */
  rkv_slot_move *moves; /* [kv_heads * max_len] */
  int32_t *old_ids;     /* [kv_heads][max_len] (worst case block_size 1) */
  int32_t *old_nb;      /* [kv_heads] blocks each listed stream had before compaction */
} layer_ws;

static size_t layer_ws_bytes(const rkv_evict_params *p, uint32_t kv, uint32_t qh, uint32_t d,
                             int32_t max_len, layer_ws *ws, void *base) {
  size_t nh = rkvi_head_ws_bytes(max_len, d, p->window);
  if (nh == 0) return 0;
  /* Keep lists and moves hold a protected prefix too (up to the whole stream). */
  size_t n = (size_t)max_len;
  size_t sz[7] = {(size_t)qh * (size_t)p->window * d * sizeof(float),
                  n * sizeof(float),
                  kv * n * sizeof(int32_t),
                  kv * sizeof(rkv_keep_list),
                  kv * n * sizeof(rkv_slot_move),
                  kv * n * sizeof(int32_t),
                  kv * sizeof(int32_t)};
  /* Region offsets, then typed pointers: storing through (void **) aliases of the float * /
   * int32_t * fields would break strict aliasing. */
  size_t off[7], total = nh;
  for (int i = 0; i < 7; i++) {
    off[i] = total;
    total += rkvi_ws_align_up(sz[i]);
  }
  if (ws) {
    char *c = base;
    rkvi_head_ws_carve(base, max_len, d, p->window, &ws->head);
    ws->q = (float *)(void *)(c + off[0]);
    ws->acc = (float *)(void *)(c + off[1]);
    ws->keep = (int32_t *)(void *)(c + off[2]);
    ws->lists = (rkv_keep_list *)(void *)(c + off[3]);
    ws->moves = (rkv_slot_move *)(void *)(c + off[4]);
    ws->old_ids = (int32_t *)(void *)(c + off[5]);
    ws->old_nb = (int32_t *)(void *)(c + off[6]);
  }
  return total + RKVI_WS_ALIGN;
}

rkv_status rkv_evict_workspace_size(const rkv_evict_params *p, uint32_t num_kv_heads,
                                    uint32_t num_q_heads, uint32_t head_dim, int32_t max_len,
                                    size_t *bytes) {
  if (!bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  RKV_TRY(rkv_evict_params_validate(p, NULL, 0));
  if (num_kv_heads < 1 || num_kv_heads > 65536 || num_q_heads < num_kv_heads ||
      num_q_heads % num_kv_heads != 0 || num_q_heads > 65536 || head_dim < 1 || head_dim > 4096 ||
      max_len < 0)
    return RKV_ERR_INVALID_ARG;
  size_t b =
      layer_ws_bytes(p, num_kv_heads, num_q_heads, head_dim, max_len > 0 ? max_len : 1, NULL, NULL);
  if (b == 0) return RKV_ERR_INVALID_ARG;
  *bytes = b;
  return RKV_OK;
}

/* Converts one row of d elements of dtype dt to f32. */
static void load_row(rkv_dtype dt, const void *src, uint32_t d, float *dst) {
  switch (dt) {
    case RKV_DTYPE_F32:
      memcpy(dst, src, d * sizeof(float));
      break;
    case RKV_DTYPE_F16: {
      const uint16_t *s = src;
      for (uint32_t i = 0; i < d; i++) dst[i] = rkv_f16_to_f32(s[i]);
      break;
    }
    default: {
      const uint16_t *s = src;
      for (uint32_t i = 0; i < d; i++) {
        uint32_t u = (uint32_t)s[i] << 16;
        memcpy(&dst[i], &u, sizeof u);
      }
      break;
    }
  }
}

void rkvi_gather_stream(const rkv_kv_pool *pool, const int32_t *ids, int32_t nb, int32_t len,
                        int32_t P, float *k, float *acc) {
  const rkv_kv_layout *lay = rkv_kv_pool_layout(pool);
  const size_t block_bytes = rkv_kv_block_bytes(lay);
  const char *base = rkv_kv_pool_base((rkv_kv_pool *)pool);
  const float *scores = rkv_kv_pool_scores((rkv_kv_pool *)pool);
  const int32_t bs = (int32_t)lay->block_size;
  const uint32_t d = lay->head_dim;
  for (int32_t b = 0; b < nb; b++) {
    const char *blk = base + (size_t)ids[b] * block_bytes;
    int32_t first = b * bs, cnt = len - first < bs ? len - first : bs;
    int32_t o0 = first < P ? P - first : 0;
    if (o0 > cnt) o0 = cnt;
    if (k)
      for (int32_t o = o0; o < cnt; o++)
        load_row(lay->dtype, blk + rkv_kv_k_offset(lay, (uint32_t)o), d,
                 k + (size_t)(first + o - P) * d);
    if (acc && o0 < cnt)
      memcpy(acc + first + o0 - P, scores + (size_t)ids[b] * (size_t)bs + o0,
             (size_t)(cnt - o0) * sizeof(float));
  }
}

rkv_status rkvi_check_pool(const rkv_blockmgr *m, const rkv_kv_pool *pool, uint32_t layer,
                           uint32_t num_q_heads, char *err, size_t err_len) {
  if (!m || !pool) return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "manager or pool is NULL");
  if (rkv_backend_get_kind(rkv_kv_pool_backend(pool)) != RKV_BACKEND_CPU)
    return rkvi_failn(err, err_len, RKV_ERR_UNSUPPORTED,
                      "CPU eviction needs a CPU KV pool (this one is %s)",
                      rkv_backend_name(rkv_kv_pool_backend(pool)));
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  const rkv_kv_layout *l = rkv_kv_pool_layout(pool);
  if (l->block_size != c->block_size || l->head_dim != c->head_dim || l->dtype != c->dtype)
    return rkvi_failn(
        err, err_len, RKV_ERR_INVALID_ARG,
        "pool layout (%s, block %u, dim %u) differs from the manager's (%s, block %u, "
        "dim %u)",
        rkv_dtype_name(l->dtype), l->block_size, l->head_dim, rkv_dtype_name(c->dtype),
        c->block_size, c->head_dim);
  if (rkv_kv_pool_num_blocks(pool) < c->num_blocks)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "pool has %u blocks, the manager %u",
                      rkv_kv_pool_num_blocks(pool), c->num_blocks);
  if (layer >= c->num_layers)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "layer %u >= num_layers %u", layer,
                      c->num_layers);
  if (num_q_heads < c->num_kv_heads || num_q_heads % c->num_kv_heads != 0)
    return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG,
                      "num_q_heads %u must be a positive multiple of the manager's kv heads %u",
                      num_q_heads, c->num_kv_heads);
  return RKV_OK;
}

rkv_status rkv_evict_layer_ex(const rkv_evict_params *p, rkv_blockmgr *m, rkv_kv_pool *pool,
                              const rkv_qwindow *qw, uint32_t num_q_heads, int64_t seq,
                              uint32_t layer, void *workspace, size_t ws_bytes,
                              rkv_evict_result *res, char *err, size_t err_len) {
  if (err && err_len > 0) err[0] = '\0';
  if (res) memset(res, 0, sizeof *res);
  RKV_TRY(rkv_evict_params_validate(p, err, err_len));
  RKV_TRY(rkvi_check_pool(m, pool, layer, num_q_heads, err, err_len));
  if (!rkvi_policy_of(p->policy)->evicts) return RKV_OK;
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  const uint32_t kv = c->num_kv_heads, d = c->head_dim;
  const int32_t B = p->budget, W = p->window;
  /* A protected prefix stays as it is; selection runs on the tokens after it, and the budget
   * counts those (blockmgr.h, "protected prefixes"). */
  const int32_t P = rkv_blockmgr_seq_protected(m, seq);
  int32_t max_len = 0;
  for (uint32_t h = 0; h < kv; h++) {
    int32_t len = 0;
    rkv_status s = rkv_blockmgr_stream_len(m, seq, layer, h, &len);
    if (s != RKV_OK)
      return rkvi_failn(err, err_len, s, "stream (seq %lld, layer %u, head %u): %s", (long long)seq,
                        layer, h, rkv_blockmgr_last_error(m));
    max_len = len > max_len ? len : max_len;
  }
  if (max_len - P <= B) return RKV_OK;
  size_t need = 0;
  RKV_TRY(rkv_evict_workspace_size(p, kv, num_q_heads, d, max_len, &need));
  if (!workspace || ws_bytes < need)
    return rkvi_failn(err, err_len, RKV_ERR_CAPACITY,
                      "workspace of %zu bytes < %zu needed for streams of %d tokens", ws_bytes,
                      need, max_len);
  layer_ws ws;
  layer_ws_bytes(p, kv, num_q_heads, d, max_len, &ws, align_ptr(workspace));
  const uint32_t group = num_q_heads / kv;
  if (scored(p->policy)) {
    if (!qw)
      return rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, "%s needs a query window",
                        rkv_evict_policy_name(p->policy));
    const rkv_qwindow_config *qc = rkvi_qwindow_config(qw);
    if (qc->num_q_heads != num_q_heads || qc->head_dim != d || qc->window != (uint32_t)W ||
        layer >= qc->num_layers)
      return rkvi_failn(
          err, err_len, RKV_ERR_INVALID_ARG,
          "query window shape (layers %u, q heads %u, dim %u, window %u) does not fit "
          "layer %u, q heads %u, dim %u, window %d",
          qc->num_layers, qc->num_q_heads, qc->head_dim, qc->window, layer, num_q_heads, d, W);
    uint32_t count = 0;
    rkv_status s = rkv_qwindow_get(qw, seq, layer, ws.q, &count);
    if (s != RKV_OK)
      return rkvi_failn(err, err_len, s, "query window of seq %lld layer %u: %s", (long long)seq,
                        layer, rkv_status_str(s));
    if (count < (uint32_t)W)
      return rkvi_failn(err, err_len, RKV_ERR_STATE,
                        "query window of seq %lld layer %u holds %u of %d rows", (long long)seq,
                        layer, count, W);
  }
  uint32_t n_lists = 0;
  uint64_t evicted = 0;
  int32_t n_old = 0;
  for (uint32_t h = 0; h < kv; h++) {
    int32_t len = 0, nb = 0;
    const int32_t *ids = NULL;
    RKV_TRY(rkv_blockmgr_stream_len(m, seq, layer, h, &len));
    if (len - P <= B) continue;
    RKV_TRY(rkv_blockmgr_stream_blocks(m, seq, layer, h, &ids, &nb));
    /* Keys (and H2O mass) after the protected prefix: position pos lands at index pos - P. */
    rkvi_gather_stream(pool, ids, nb, len, P, scored(p->policy) ? ws.head.k : NULL,
                       mass(p->policy) ? ws.acc : NULL);
    memcpy(ws.old_ids + n_old, ids, (size_t)nb * sizeof(int32_t));
    n_old += nb;
    ws.old_nb[n_lists] = nb;
    int32_t *keep = ws.keep + (size_t)n_lists * max_len;
    for (int32_t i = 0; i < P; i++) keep[i] = i;
    rkvi_evict_head(p, len - P, d, group, ws.q + (size_t)h * group * W * d, ws.acc, &ws.head,
                    keep + P, NULL);
    for (int32_t i = P; i < P + B; i++) keep[i] += P;
    ws.lists[n_lists] = (rkv_keep_list){layer, h, keep, (uint32_t)(P + B)};
    n_lists++;
    evicted += (uint64_t)(len - P - B);
  }
  uint32_t n_moves = 0;
  rkv_status s = rkv_blockmgr_compact(m, seq, ws.lists, n_lists, ws.moves,
                                      (uint32_t)((size_t)kv * max_len), &n_moves);
  if (s != RKV_OK)
    return rkvi_failn(err, err_len, s, "compaction of seq %lld layer %u: %s", (long long)seq, layer,
                      rkv_blockmgr_last_error(m));
  return rkvi_after_compact(m, pool, seq, ws.lists, n_lists, P + B, ws.old_ids, ws.old_nb, ws.moves,
                            n_moves, evicted, res, err, err_len);
}

rkv_status rkvi_after_compact(rkv_blockmgr *m, rkv_kv_pool *pool, int64_t seq,
                              const rkv_keep_list *lists, uint32_t n_lists, int32_t kept,
                              const int32_t *old_ids, const int32_t *old_nb,
                              const rkv_slot_move *moves, uint32_t n_moves, uint64_t evicted,
                              rkv_evict_result *res, char *err, size_t err_len) {
  const uint32_t bs = rkv_kv_pool_layout(pool)->block_size;
  float *scores = rkv_kv_pool_scores(pool);
  rkv_status s = rkv_kv_pool_apply_moves(pool, moves, n_moves);
  if (s != RKV_OK) /* The manager already changed: the pool and the tables disagree now. */
    return rkvi_failn(err, err_len, RKV_ERR_INTERNAL,
                      "applying %u compaction moves failed: %s (%s)", n_moves, rkv_status_str(s),
                      rkv_backend_last_error(rkv_kv_pool_backend(pool)));
  /* Clear the mass of every slot that holds no token any more: freed blocks and the unused
   * tail of each compacted stream's last block (never shared: every policy keeps the newest
   * token, so the last block always receives a move). Blocks freed, net of the fresh blocks
   * that replaced shared ones, are counted here rather than with two rkv_blockmgr_get_stats
   * calls, whose walk covers every sequence of the manager whenever a block is shared. */
  int64_t released = 0, fresh = 0, n_old = 0;
  for (uint32_t i = 0; i < n_lists; i++) n_old += old_nb[i];
  for (int64_t i = 0; i < n_old; i++) {
    uint32_t ref = 1;
    if (rkv_blockmgr_block_ref(m, old_ids[i], &ref) == RKV_OK && ref == 0) {
      memset(scores + (size_t)old_ids[i] * bs, 0, bs * sizeof(float));
      released++;
    }
  }
  for (uint32_t i = 0, off = 0; i < n_lists; off += (uint32_t)old_nb[i], i++) {
    const int32_t *ids = NULL;
    int32_t nb = 0;
    if (rkv_blockmgr_stream_blocks(m, seq, lists[i].layer, lists[i].head, &ids, &nb) != RKV_OK ||
        !nb)
      continue;
    for (int32_t r = 0; r < nb; r++) fresh += ids[r] != old_ids[off + (uint32_t)r];
    int32_t used = kept - (nb - 1) * (int32_t)bs;
    memset(scores + (size_t)ids[nb - 1] * bs + used, 0, (bs - (uint32_t)used) * sizeof(float));
  }
  if (res) {
    res->streams_compressed = n_lists;
    res->tokens_evicted = evicted;
    res->blocks_freed = released > fresh ? (uint32_t)(released - fresh) : 0;
    res->slot_moves = n_moves;
  }
  return RKV_OK;
}

rkv_status rkv_evict_layer(const rkv_evict_params *p, rkv_blockmgr *m, rkv_kv_pool *pool,
                           const rkv_qwindow *qw, uint32_t num_q_heads, int64_t seq, uint32_t layer,
                           void *workspace, size_t ws_bytes, rkv_evict_result *res) {
  return rkv_evict_layer_ex(p, m, pool, qw, num_q_heads, seq, layer, workspace, ws_bytes, res, NULL,
                            0);
}

/* ---- H2O accumulation ------------------------------------------------------------------- */

rkv_status rkv_evict_h2o_accumulate(const rkv_blockmgr *m, rkv_kv_pool *pool, int64_t seq,
                                    uint32_t layer, const float *q, uint32_t num_q_heads) {
  RKV_TRY(rkvi_check_pool(m, pool, layer, num_q_heads, NULL, 0));
  if (!q) return RKV_ERR_INVALID_ARG;
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  const uint32_t kv = c->num_kv_heads, d = c->head_dim, bs = c->block_size;
  const uint32_t group = num_q_heads / kv;
  const rkv_kv_layout *lay = rkv_kv_pool_layout(pool);
  const size_t block_bytes = rkv_kv_block_bytes(lay);
  const char *base = rkv_kv_pool_base(pool);
  float *scores = rkv_kv_pool_scores(pool);
  const double scale = 1.0 / sqrt((double)d);
  for (uint32_t h = 0; h < kv; h++) {
    int32_t len = 0, nb = 0;
    const int32_t *ids = NULL;
    RKV_TRY(rkv_blockmgr_stream_len(m, seq, layer, h, &len));
    if (len == 0) continue;
    RKV_TRY(rkv_blockmgr_stream_blocks(m, seq, layer, h, &ids, &nb));
    for (uint32_t g = 0; g < group; g++) {
      const float *qh = q + (size_t)(h * group + g) * d;
      /* Pass 1: running max and rescaled sum (online softmax). */
      double mx = -INFINITY, sum = 0.0;
      for (int32_t pos = 0; pos < len; pos++) {
        const char *kp = base + (size_t)ids[pos / (int32_t)bs] * block_bytes +
                         rkv_kv_k_offset(lay, (uint32_t)(pos % (int32_t)bs));
        double v = 0.0;
        for (uint32_t t = 0; t < d; t++) v += (double)qh[t] * rkv_dtype_load(lay->dtype, kp, t);
        v *= scale;
        if (v > mx) {
          sum = sum * exp(mx - v) + 1.0;
          mx = v;
        } else {
          sum += exp(v - mx);
        }
      }
      /* Pass 2: add the probabilities. */
      for (int32_t pos = 0; pos < len; pos++) {
        int32_t blk = ids[pos / (int32_t)bs];
        const char *kp =
            base + (size_t)blk * block_bytes + rkv_kv_k_offset(lay, (uint32_t)(pos % (int32_t)bs));
        double v = 0.0;
        for (uint32_t t = 0; t < d; t++) v += (double)qh[t] * rkv_dtype_load(lay->dtype, kp, t);
        scores[(size_t)blk * bs + (size_t)(pos % (int32_t)bs)] +=
            (float)(exp(v * scale - mx) / sum);
      }
    }
  }
  return RKV_OK;
}
