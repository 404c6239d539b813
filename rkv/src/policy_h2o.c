/* H2O: a candidate's score is the attention mass it has accumulated from every query so far
 * (rkv_evict_h2o_accumulate, or the attention kernels with accumulate_scores); the newest
 * `window` tokens are kept as for every scored policy. */
#include "evict_internal.h"

void rkvi_score_h2o(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                    const float *q, const float *acc, rkvi_head_ws *ws) {
  (void)d, (void)group, (void)q;
  for (int32_t j = 0; j < n - p->window; j++) ws->z[j] = acc ? (double)acc[j] : 0.0;
}
