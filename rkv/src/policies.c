/* The eviction policy table: one row per policy, naming what it reads and where it runs. Every
 * branch on "which policy" in the library goes through these rows (docs/EVICTION.md, "Adding a
 * policy"). The CUDA kernels (evict_cuda.cu) switch on the policy id themselves for the rows
 * marked device. */
#include <string.h>

#include "evict_internal.h"

static const rkvi_policy kPolicies[RKV_EVICT_POLICY_COUNT_] = {
    [RKV_EVICT_FULL] = {"full", {NULL, NULL}, false, false, false, false, true, NULL, NULL},
    [RKV_EVICT_RKV] =
        {"rkv", {"r-kv", "r1kv"}, true, true, false, true, true, rkvi_score_rkv, NULL},
    [RKV_EVICT_SNAPKV] =
        {"snapkv", {NULL, NULL}, true, true, false, false, true, rkvi_score_snapkv, NULL},
    [RKV_EVICT_STREAMING] = {"streaming",
                             {"streamingllm", NULL},
                             true,
                             false,
                             false,
                             false,
                             true,
                             NULL,
                             rkvi_keep_streaming},
    [RKV_EVICT_H2O] = {"h2o", {NULL, NULL}, true, false, true, false, true, rkvi_score_h2o, NULL},
};

const rkvi_policy *rkvi_policy_of(rkv_evict_policy p) {
  return &kPolicies[p];
}

static bool valid(rkv_evict_policy p) {
  return (int)p >= 0 && p < RKV_EVICT_POLICY_COUNT_;
}

const char *rkv_evict_policy_name(rkv_evict_policy p) {
  return valid(p) ? kPolicies[p].name : "invalid";
}

rkv_status rkv_evict_policy_parse(const char *name, rkv_evict_policy *out) {
  if (!name || !out) return RKV_ERR_INVALID_ARG;
  for (int i = 0; i < RKV_EVICT_POLICY_COUNT_; i++) {
    const rkvi_policy *r = &kPolicies[i];
    bool hit = strcmp(name, r->name) == 0;
    for (int a = 0; a < 2 && !hit; a++) hit = r->aliases[a] && strcmp(name, r->aliases[a]) == 0;
    if (hit) {
      *out = (rkv_evict_policy)i;
      return RKV_OK;
    }
  }
  return RKV_ERR_INVALID_ARG;
}

rkv_status rkv_evict_policy_get_info(rkv_evict_policy p, rkv_evict_policy_info *out) {
  if (!valid(p) || !out || out->struct_size < sizeof(uint32_t) ||
      out->struct_size > sizeof(rkv_evict_policy_info))
    return RKV_ERR_INVALID_ARG;
  const rkvi_policy *r = &kPolicies[p];
  rkv_evict_policy_info info = {out->struct_size, r->name,         r->evicts, r->needs_queries,
                                r->needs_mass,    r->keep != NULL, r->device};
  memcpy(out, &info, out->struct_size);
  return RKV_OK;
}
