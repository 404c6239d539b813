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
  size_t extra =
      g == RKV_EVICT_GRAN_STREAM ? 0 : 2 * rkvi_ws_align_up((size_t)len * sizeof(double));
  *bytes = h + extra + RKVI_WS_ALIGN;
  return RKV_OK;
}

/* The borrowed inputs of one call and where stream (l, h) finds its rows. */
typedef struct multi_call {
  const rkv_evict_params *p;
  const float *keys, *queries, *acc;
  uint32_t kv, qh, d, group;
  int32_t n, kept;
  int32_t *keep;
  const rkv_evict_scores *dump;
} multi_call;

static size_t stream_index(const multi_call *c, uint32_t l, uint32_t h) {
  return (size_t)l * c->kv + h;
}

/* Scores stream (l, h) into ws->z (its n - window candidates). */
static void score_stream(const multi_call *c, uint32_t l, uint32_t h, rkvi_head_ws *ws) {
  const size_t s = stream_index(c, l, h), n = (size_t)c->n, W = (size_t)c->p->window;
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

static int32_t *keep_row(const multi_call *c, uint32_t l, uint32_t h) {
  return c->keep + stream_index(c, l, h) * (size_t)c->kept;
}

/* One group: layers [l0, l1) x heads [h0, h1). total = sum over its layers of (the mean over
 * its heads when it spans the layer's heads, else the single head's) Z; selected once, copied
 * to every member. */
static void select_group(const multi_call *c, uint32_t l0, uint32_t l1, uint32_t h0, uint32_t h1,
                         rkvi_head_ws *ws, double *total, double *lay) {
  const int32_t n_c = c->n - c->p->window;
  const double heads = (double)(h1 - h0);
  for (int32_t j = 0; j < n_c; j++) total[j] = 0.0;
  for (uint32_t l = l0; l < l1; l++) {
    for (int32_t j = 0; j < n_c; j++) lay[j] = 0.0;
    for (uint32_t h = h0; h < h1; h++) {
      score_stream(c, l, h, ws);
      for (int32_t j = 0; j < n_c; j++) lay[j] += ws->z[j];
    }
    /* The mean as documented (sum, then one division; exact for a single head), not a
     * multiply by 1/H, so a reference written from the text rounds the same way. */
    for (int32_t j = 0; j < n_c; j++) total[j] += lay[j] / heads;
  }
  int32_t *first = keep_row(c, l0, h0);
  rkvi_select_top(total, n_c, c->p->budget - c->p->window, c->n, ws->heap, ws->mark, first);
  for (uint32_t l = l0; l < l1; l++)
    for (uint32_t h = h0; h < h1; h++)
      if (l != l0 || h != h0) memcpy(keep_row(c, l, h), first, (size_t)c->kept * sizeof(int32_t));
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
      n, kept, keep,    dump};
  char *base = align_ptr(workspace);
  rkvi_head_ws ws;
  rkvi_head_ws_carve(base, n, head_dim, p->window, &ws);
  if (pol->keep) {
    /* No score: the set depends on n alone, so every unit gives it. */
    for (uint32_t l = 0; l < num_layers; l++)
      for (uint32_t h = 0; h < num_kv_heads; h++)
        rkvi_evict_head(p, n, head_dim, c.group, NULL, NULL, &ws, keep_row(&c, l, h), NULL);
    return RKV_OK;
  }
  const int32_t n_c = n - p->window;
  if (g == RKV_EVICT_GRAN_STREAM) {
    for (uint32_t l = 0; l < num_layers; l++) {
      for (uint32_t h = 0; h < num_kv_heads; h++) {
        score_stream(&c, l, h, &ws);
        rkvi_select_top(ws.z, n_c, p->budget - p->window, n, ws.heap, ws.mark, keep_row(&c, l, h));
      }
    }
    return RKV_OK;
  }
  size_t vec = rkvi_ws_align_up((size_t)n * sizeof(double));
  double *total = (double *)(void *)(base + rkvi_head_ws_bytes(n, head_dim, p->window));
  double *lay = (double *)(void *)((char *)total + vec);
  switch (g) {
    case RKV_EVICT_GRAN_LAYER:
      for (uint32_t l = 0; l < num_layers; l++)
        select_group(&c, l, l + 1, 0, num_kv_heads, &ws, total, lay);
      break;
    case RKV_EVICT_GRAN_KVHEAD:
      for (uint32_t h = 0; h < num_kv_heads; h++)
        select_group(&c, 0, num_layers, h, h + 1, &ws, total, lay);
      break;
    default: /* RKV_EVICT_GRAN_SEQUENCE */
      select_group(&c, 0, num_layers, 0, num_kv_heads, &ws, total, lay);
      break;
  }
  return RKV_OK;
}
