/* Eviction parameters: validation with clear messages, the compression trigger and the
 * workspace size queries of the dense and paged entries (policy names: policies.c). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "evict_internal.h"

/* Writes the message (when wanted) and returns RKV_ERR_INVALID_ARG. */
#define bad(err, err_len, ...) rkvi_failn(err, err_len, RKV_ERR_INVALID_ARG, __VA_ARGS__)

rkv_status rkv_evict_params_validate(const rkv_evict_params *p, char *err, size_t err_len) {
  if (err && err_len > 0) err[0] = '\0';
  if (!p) return bad(err, err_len, "eviction parameters are NULL");
  if (p->struct_size != sizeof(rkv_evict_params))
    return bad(err, err_len,
               "struct_size %u != sizeof(rkv_evict_params) %zu (use RKV_EVICT_PARAMS_INIT)",
               p->struct_size, sizeof(rkv_evict_params));
  if ((int)p->policy < 0 || p->policy >= RKV_EVICT_POLICY_COUNT_)
    return bad(err, err_len, "unknown policy %d", (int)p->policy);
  if (p->window < 1) return bad(err, err_len, "window (alpha) must be >= 1, got %d", p->window);
  if (p->budget <= p->window)
    return bad(err, err_len, "budget B must be > window alpha: B=%d, alpha=%d", p->budget,
               p->window);
  if (p->buffer < 1) return bad(err, err_len, "buffer must be >= 1, got %d", p->buffer);
  if (p->budget > INT32_MAX - p->buffer)
    return bad(err, err_len, "budget + buffer overflows: B=%d, buffer=%d", p->budget, p->buffer);
  if (p->kernel < 1 || p->kernel % 2 == 0)
    return bad(err, err_len, "max-pool kernel must be odd and >= 1, got %d", p->kernel);
  if (!(p->lambda >= 0.0f && p->lambda <= 1.0f))
    return bad(err, err_len, "lambda must be in [0, 1], got %g", (double)p->lambda);
  if (!(p->threshold >= -1.0f && p->threshold <= 1.0f))
    return bad(err, err_len, "redundancy threshold T must be in [-1, 1], got %g",
               (double)p->threshold);
  if (p->sinks < 0 || p->sinks >= p->budget)
    return bad(err, err_len, "sinks must be in [0, B): sinks=%d, B=%d", p->sinks, p->budget);
  return RKV_OK;
}

bool rkv_evict_should_compress(const rkv_evict_params *p, int32_t len, bool after_prefill) {
  if (!p || rkv_evict_params_validate(p, NULL, 0) != RKV_OK) return false;
  if (!rkvi_policy_of(p->policy)->evicts) return false;
  if (after_prefill) return len >= p->budget;
  return len >= p->budget + p->buffer;
}

/* Region sizes in carve order; 0 on overflow (n, d and window are caller-controlled). */
size_t rkvi_head_ws_bytes(int32_t max_len, uint32_t head_dim, int32_t window) {
  if (max_len < 1 || head_dim < 1 || window < 1) return 0;
  size_t n = (size_t)max_len, d = head_dim, w = (size_t)window, tile = RKVI_SIM_TILE;
  size_t nd, wn, tn;
  if (rkvi_mul_size(n, d, &nd) || nd > SIZE_MAX / 16 || rkvi_mul_size(w, n, &wn) ||
      wn > SIZE_MAX / 16 || rkvi_mul_size(tile, n, &tn) || tn > SIZE_MAX / 16)
    return 0;
  size_t sz[17] = {nd * sizeof(double), (size_t)RKVI_LOGIT_ROWS * d * sizeof(double),
                   nd * sizeof(float),  d * 64 * sizeof(float),
                   tn * sizeof(float),  wn * sizeof(double),
                   n * sizeof(double),  n * sizeof(double),
                   n * sizeof(double),  n * sizeof(double),
                   n * sizeof(int32_t), n * sizeof(uint8_t),
                   n * sizeof(int32_t), n * sizeof(int32_t),
                   n * sizeof(double),  n * sizeof(double),
                   n * sizeof(double)};
  size_t total = 0;
  for (int i = 0; i < 17; i++) {
    size_t a = rkvi_ws_align_up(sz[i]);
    if (total > SIZE_MAX - a) return 0;
    total += a;
  }
  return total;
}

void rkvi_head_ws_carve(void *base, int32_t max_len, uint32_t head_dim, int32_t window,
                        rkvi_head_ws *ws) {
  size_t n = (size_t)max_len, d = head_dim, w = (size_t)window, tile = RKVI_SIM_TILE;
  char *c = base;
  ws->kd = (double *)c, c += rkvi_ws_align_up(n * d * sizeof(double));
  ws->qd = (double *)c, c += rkvi_ws_align_up((size_t)RKVI_LOGIT_ROWS * d * sizeof(double));
  ws->k = (float *)c, c += rkvi_ws_align_up(n * d * sizeof(float));
  ws->kt = (float *)c, c += rkvi_ws_align_up(d * 64 * sizeof(float));
  ws->sim = (float *)c, c += rkvi_ws_align_up(tile * n * sizeof(float));
  ws->logit = (double *)c, c += rkvi_ws_align_up(w * n * sizeof(double));
  ws->imp = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->imp0 = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->red = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->z = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->heap = (int32_t *)c, c += rkvi_ws_align_up(n * sizeof(int32_t));
  ws->mark = (uint8_t *)c, c += rkvi_ws_align_up(n * sizeof(uint8_t));
  ws->js = (int32_t *)c, c += rkvi_ws_align_up(n * sizeof(int32_t));
  ws->la = (int32_t *)c, c += rkvi_ws_align_up(n * sizeof(int32_t));
  ws->jv = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->lv = (double *)c, c += rkvi_ws_align_up(n * sizeof(double));
  ws->s0 = (double *)c;
}
