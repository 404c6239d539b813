/* The query window in CUDA device memory (rkv_qwindow_config.backend = a CUDA backend): the
 * batched push's kernel against the per-sequence push of a host window, through the same
 * randomised run of starts, forks, drops and mixed decode / prefill steps the runtime unit
 * test gives the host, CPU-backend and emulated-device windows (tests/common/qwindow_run.h);
 * a plan of zero rows pushed with no q; then the per-sequence push refused on a device window.
 * Skips (77) without a CUDA build or device. */
#include "cuda_test_util.h"
#include "qwindow_run.h"
#include "rkv_test.h"

int main(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *gb = NULL;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) return cuda_test_skip("no usable CUDA device");
  qwr_random_run(gb, 11, "cuda");
  qwr_zero_rows(gb, "cuda");
  rkv_qwindow *w = qwr_make(gb, 2);
  if (w) {
    float q[ROW] = {0};
    EXPECT_OK(rkv_qwindow_seq_add(w, 1));
    EXPECT_STATUS(rkv_qwindow_push(w, 1, 0, q, 1), RKV_ERR_UNSUPPORTED);
    EXPECT_OK(rkv_qwindow_check(w));
  }
  rkv_qwindow_destroy(w);
  EXPECT_OK(rkv_backend_sync(gb));
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
