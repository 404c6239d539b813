/* The scheduler module's view of the eviction policy table (rkv_evict_policy_get_info): the
 * scheduler and the executor ask what a policy reads instead of testing policy ids. Private to
 * the scheduler module. */
#ifndef RKV_SCHED_POLICY_INFO_H
#define RKV_SCHED_POLICY_INFO_H

#include <string.h>

#include <rkv/evict.h>

static inline rkv_evict_policy_info rkvi_policy_info(rkv_evict_policy p) {
  rkv_evict_policy_info info;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  (void)rkv_evict_policy_get_info(p, &info);
  return info;
}

static inline bool rkvi_needs_queries(rkv_evict_policy p) {
  return rkvi_policy_info(p).needs_query_window;
}

#endif /* RKV_SCHED_POLICY_INFO_H */
