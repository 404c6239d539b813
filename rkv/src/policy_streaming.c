/* StreamingLLM: the first `sinks` tokens (attention sinks) and the newest budget - sinks,
 * whatever their content. */
#include "evict_internal.h"

void rkvi_keep_streaming(const rkv_evict_params *p, int32_t n, int32_t *keep) {
  const int32_t recent = p->budget - p->sinks;
  int32_t m = 0;
  for (int32_t j = 0; j < p->sinks; j++) keep[m++] = j;
  for (int32_t j = n - recent; j < n; j++) keep[m++] = j;
}
