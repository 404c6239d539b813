/* Every public header compiles together as C11 through the umbrella header, and the
 * build-capability queries agree with each other (NCCL implies CUDA). */
#include <rkv/rkv.h>

#include "rkv_test.h"

int main(void) {
  EXPECT(rkv_status_str(RKV_OK) != NULL);
  if (rkv_build_has_nccl()) EXPECT(rkv_build_has_cuda());
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  EXPECT_EQ_INT(bc.struct_size, sizeof(rkv_blockmgr_config));
  rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
  EXPECT_OK(rkv_evict_params_validate(&ep, NULL, 0));
  rkv_attn_params ap = RKV_ATTN_PARAMS_INIT;
  EXPECT_EQ_INT(ap.struct_size, sizeof(rkv_attn_params));
  return rkv_test_finish();
}
