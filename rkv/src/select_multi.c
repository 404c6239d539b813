/* Selection granularity on the dense path: one compression step of every layer of a sequence
 * where a group of streams (a layer, a kv head index across layers, or the whole sequence)
 * shares one kept set. Each member stream is scored by the per-stream code
 * (rkvi_evict_head_score), the members' joint scores are aggregated in f64 in a fixed order
 * (heads ascending, then layers ascending, as docs/EVICTION.md defines), and the aggregate goes
 * through the same top-k selection and tie rule (rkvi_select_top) as a single stream. Only two
 * score vectors of n are kept besides one head's scratch: members are scored one at a time and
 * folded in, never stored. */
#include <string.h>

#include "evict_internal.h"

static const char *const kGranNames[RKV_EVICT_GRAN_COUNT_] = {"stream", "layer", "kvhead",
                                                              "sequence"};

const char *rkv_evict_granularity_name(rkv_evict_granularity g) {
  if ((int)g < 0 || g >= RKV_EVICT_GRAN_COUNT_) return "invalid";
  return kGranNames[g];
}

rkv_status rkv_evict_granularity_parse(const char *name, rkv_evict_granularity *out) {
  if (!name || !out) return RKV_ERR_INVALID_ARG;
  for (int i = 0; i < RKV_EVICT_GRAN_COUNT_; i++) {
    if (strcmp(name, kGranNames[i]) == 0) {
      *out = (rkv_evict_granularity)i;
      return RKV_OK;
    }
  }
  return RKV_ERR_INVALID_ARG;
}

static bool gran_valid(rkv_evict_granularity g) {
  return (int)g >= 0 && g < RKV_EVICT_GRAN_COUNT_;
}

rkv_status rkv_evict_dense_multi_workspace_size(const rkv_evict_params *p, rkv_evict_granularity g,
                                                uint32_t head_dim, int32_t n, size_t *bytes) {
  if (!bytes) return RKV_ERR_INVALID_ARG;
  *bytes = 0;
  RKV_TRY(rkv_evict_params_validate(p, NULL, 0));
  if (!gran_valid(g) || n < 0 || head_dim < 1 || head_dim > 4096) return RKV_ERR_INVALID_ARG;
  const int32_t len = n > 0 ? n : 1;
  size_t h = rkvi_head_ws_bytes(len, head_dim, p->window);
  if (h == 0) return RKV_ERR_INVALID_ARG;
  /* The group total and one layer's head sum (rkvi_head_ws_bytes already bounds n). */
  *bytes = h + rkvi_gran_extra_bytes(g, len) + RKVI_WS_ALIGN;
  return RKV_OK;
}

/* ---- the aggregation (one implementation for the dense and the paged entries) ---------- */

size_t rkvi_gran_extra_bytes(rkv_evict_granularity g, int32_t n) {
  if (g == RKV_EVICT_GRAN_STREAM) return 0;
  return 2 * rkvi_ws_align_up((size_t)(n > 0 ? n : 1) * sizeof(double));
}

static int32_t *keep_row(const rkvi_gran_job *j, uint32_t l, uint32_t h) {
  return j->keep + ((size_t)l * j->kv + h) * j->stride;
}

/* One group: layers [l0, l1) x heads [h0, h1). total = sum over its layers of (the mean over
 * its heads when it spans the layer's heads, else the single head's) Z; selected once, copied
 * to every member. */
static void select_group(const rkvi_gran_job *j, uint32_t l0, uint32_t l1, uint32_t h0, uint32_t h1,
                         rkvi_head_ws *ws, double *total, double *lay) {
  const rkv_evict_params *p = j->p;
  const int32_t n_c = j->n - p->window;
  const double heads = (double)(h1 - h0);
  for (int32_t i = 0; i < n_c; i++) total[i] = 0.0;
  for (uint32_t l = l0; l < l1; l++) {
    for (int32_t i = 0; i < n_c; i++) lay[i] = 0.0;
    for (uint32_t h = h0; h < h1; h++) {
      j->score(j->ctx, l, h, ws);
      for (int32_t i = 0; i < n_c; i++) lay[i] += ws->z[i];
    }
    /* The mean as documented (sum, then one division; exact for a single head), not a
     * multiply by 1/H, so a reference written from the text rounds the same way. */
    for (int32_t i = 0; i < n_c; i++) total[i] += lay[i] / heads;
  }
  int32_t *first = keep_row(j, l0, h0);
  rkvi_select_top(total, n_c, p->budget - p->window, j->n, ws->heap, ws->mark, first);
  for (uint32_t l = l0; l < l1; l++)
    for (uint32_t h = h0; h < h1; h++)
      if (l != l0 || h != h0) memcpy(keep_row(j, l, h), first, (size_t)p->budget * sizeof(int32_t));
}

void rkvi_select_granular(const rkvi_gran_job *j, rkv_evict_granularity g, rkvi_head_ws *ws,
                          double *total, double *lay) {
  const rkv_evict_params *p = j->p;
  const rkvi_policy *pol = rkvi_policy_of(p->policy);
  if (pol->keep) {
    /* No score: the set depends on n alone, so every unit gives it. */
    for (uint32_t l = 0; l < j->layers; l++)
      for (uint32_t h = 0; h < j->kv; h++) pol->keep(p, j->n, keep_row(j, l, h));
    return;
  }
  switch (g) {
    case RKV_EVICT_GRAN_STREAM:
      /* score + select is rkvi_evict_head, so this is rkv_evict_layer's per-stream step */
      for (uint32_t l = 0; l < j->layers; l++) {
        for (uint32_t h = 0; h < j->kv; h++) {
          j->score(j->ctx, l, h, ws);
          rkvi_select_top(ws->z, j->n - p->window, p->budget - p->window, j->n, ws->heap, ws->mark,
                          keep_row(j, l, h));
        }
      }
      break;
    case RKV_EVICT_GRAN_LAYER:
      for (uint32_t l = 0; l < j->layers; l++) select_group(j, l, l + 1, 0, j->kv, ws, total, lay);
      break;
    case RKV_EVICT_GRAN_KVHEAD:
      for (uint32_t h = 0; h < j->kv; h++) select_group(j, 0, j->layers, h, h + 1, ws, total, lay);
      break;
    default: /* RKV_EVICT_GRAN_SEQUENCE */
      select_group(j, 0, j->layers, 0, j->kv, ws, total, lay);
      break;
  }
}

/* ---- the dense entry -------------------------------------------------------------------- */

/* The borrowed inputs of one call and where stream (l, h) finds its rows. */
typedef struct multi_call {
  const rkv_evict_params *p;
  const float *keys, *queries, *acc;
  uint32_t kv, qh, d, group;
  int32_t n;
  const rkv_evict_scores *dump;
} multi_call;

/* Scores stream (l, h) into ws->z (its n - window candidates): an rkvi_stream_scorer. */
static void score_stream(void *ctx, uint32_t l, uint32_t h, rkvi_head_ws *ws) {
  const multi_call *c = ctx;
  const size_t s = (size_t)l * c->kv + h, n = (size_t)c->n, W = (size_t)c->p->window;
  /* H2O ranks by the masses alone: its keys are never read, so never copied. */
  if (c->keys && rkvi_policy_of(c->p->policy)->needs_queries)
    memcpy(ws->k, c->keys + s * n * c->d, n * c->d * sizeof(float));
  const float *q =
      c->queries ? c->queries + ((size_t)l * c->qh + (size_t)h * c->group) * W * c->d : NULL;
  rkvi_head_dump hd = {NULL, NULL, NULL}, *hdp = NULL;
  if (c->dump) {
    size_t off = s * (n - W);
    hd.importance = c->dump->importance ? c->dump->importance + off : NULL;
    hd.redundancy = c->dump->redundancy ? c->dump->redundancy + off : NULL;
    hd.joint = c->dump->joint ? c->dump->joint + off : NULL;
    hdp = &hd;
  }
  rkvi_evict_head_score(c->p, c->n, c->d, c->group, q, c->acc ? c->acc + s * n : NULL, ws, hdp);
}

static void *align_ptr(void *p) {
  uintptr_t u = (uintptr_t)p;
  return (void *)((u + RKVI_WS_ALIGN - 1) & ~(uintptr_t)(RKVI_WS_ALIGN - 1));
}

#define bad(...) rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, __VA_ARGS__)

rkv_status rkv_evict_select_dense_multi(const rkv_evict_params *p, rkv_evict_granularity g,
                                        const float *keys, const float *queries, const float *acc,
                                        uint32_t num_layers, uint32_t num_kv_heads,
                                        uint32_t num_q_heads, int32_t n, uint32_t head_dim,
                                        int32_t *keep, const rkv_evict_scores *dump,
                                        void *workspace, size_t ws_bytes, char *err,
                                        size_t err_len) {
  if (err && err_len > 0) err[0] = '\0';
  RKV_TRY(rkv_evict_params_validate(p, err, err_len));
  if (!gran_valid(g))
    return bad("unknown selection granularity %d (stream, layer, kvhead, sequence)", (int)g);
  if (num_layers < 1 || num_layers > 65536)
    return bad("num_layers must be in [1, 65536], got %u", num_layers);
  if (num_kv_heads < 1 || num_kv_heads > 65536 || num_q_heads < num_kv_heads ||
      num_q_heads > 65536 || num_q_heads % num_kv_heads != 0)
    return bad("num_q_heads %u must be a positive multiple of num_kv_heads %u (both <= 65536)",
               num_q_heads, num_kv_heads);
  if (n < 0 || head_dim < 1 || head_dim > 4096)
    return bad("bad sizes: n %d, head_dim %u", n, head_dim);
  /* The largest array (keys) must be addressable; the others are no larger. */
  size_t streams = (size_t)num_layers * num_kv_heads, cells = 0, elems = 0;
  if (rkvi_mul_size(streams, (size_t)n, &cells) || rkvi_mul_size(cells, head_dim, &elems) ||
      elems > SIZE_MAX / sizeof(float) ||
      rkvi_mul_size((size_t)num_layers * num_q_heads, (size_t)p->window * head_dim, &elems) ||
      elems > SIZE_MAX / sizeof(float))
    return bad("%u layers x %u kv heads x %d tokens x %u dims overflows memory sizes", num_layers,
               num_kv_heads, n, head_dim);
  if (!keep) return bad("keep is NULL");
  const int32_t kept = rkv_evict_kept_count(p, n);
  const bool compress = kept < n;
  const rkvi_policy *pol = rkvi_policy_of(p->policy);
  const bool scored = pol->needs_queries;
  if (compress) {
    if (scored && (!keys || !queries))
      return bad("%s needs keys and queries", rkv_evict_policy_name(p->policy));
    if (pol->needs_mass && !acc)
      return bad("%s needs accumulated scores", rkv_evict_policy_name(p->policy));
  }
  size_t need = 0;
  RKV_TRY(rkv_evict_dense_multi_workspace_size(p, g, head_dim, n, &need));
  if (compress && (!workspace || ws_bytes < need))
    return rkvi_failn(err, err_len, RKV_ERR_CAPACITY, "workspace of %zu bytes < %zu needed",
                      ws_bytes, need);

  if (!compress) {
    for (size_t s = 0; s < streams; s++)
      for (int32_t j = 0; j < n; j++) keep[s * (size_t)n + (size_t)j] = j;
    return RKV_OK;
  }
  multi_call c = {
      p, keys, queries, acc, num_kv_heads, num_q_heads, head_dim, num_q_heads / num_kv_heads,
      n, dump};
  char *base = align_ptr(workspace);
  rkvi_head_ws ws;
  rkvi_head_ws_carve(base, n, head_dim, p->window, &ws);
  double *total = (double *)(void *)(base + rkvi_head_ws_bytes(n, head_dim, p->window));
  double *lay = (double *)(void *)((char *)total + rkvi_gran_extra_bytes(g, n) / 2);
  rkvi_gran_job j = {p, num_layers, num_kv_heads, n, score_stream, &c, keep, (size_t)kept};
  rkvi_select_granular(&j, g, &ws, total, lay);
  return RKV_OK;
}
