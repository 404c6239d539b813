/* The query window's one design on every backend: the batched push (rkv_qwindow_plan,
 * rkv_qwindow_push_planned) against the per-sequence push as the reference, in host memory,
 * on the CPU backend's buffers and on the emulated device (DEVICE memory the host cannot read,
 * transfers queued to the sync, the push kernel's host twin):
 *  - a randomised run of starts, forks, drops and steps mixing decodes and prefill chunks
 *    (more rows than the window, so rings wrap) holds, after every step, exactly the rows of a
 *    host window fed one sequence at a time, for every live sequence and layer, with storage
 *    growth (entries doubling) moving live rings; rkv_qwindow_check after every operation;
 *  - one plan upload per step, no sync of its own while the backend syncs each step, no
 *    copy hazard on the emulated device;
 *  - bad input changes nothing: unknown or repeated sequences, a decreasing indptr, a push
 *    without a plan, twice per layer, after a registration, or apart from the plan; the
 *    per-sequence push on a device window; a version-1 config still makes a host window. */
#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>
#include <rkv/qwindow.h>

#include "qwindow_run.h"
#include "rkv_test.h"

typedef enum { MEM_HOST, MEM_CPU, MEM_EMU } mem_kind;

static rkv_backend *make_backend(mem_kind k) {
  if (k == MEM_HOST) return NULL;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  rkv_backend *be = NULL;
  EXPECT_OK(k == MEM_EMU ? rkv_backend_create_emulated(&bc, &be) : rkv_backend_create(&bc, &be));
  return be;
}

static void test_random(mem_kind k) {
  static const char *names[3] = {"host", "cpu backend", "emulated device"};
  rkv_backend *be = make_backend(k);
  qwr_random_run(be, 7 + (uint64_t)k, names[k]);
  qwr_zero_rows(be, names[k]);
  if (k == MEM_EMU) EXPECT_EQ_INT(rkv_emu_hazards(be), 0);
  rkv_backend_destroy(be);
}

static void test_bad_input(void) {
  rkv_backend *be = make_backend(MEM_EMU);
  rkv_qwindow *w = qwr_make(be, 4);
  EXPECT_OK(rkv_qwindow_seq_add(w, 1));
  EXPECT_OK(rkv_qwindow_seq_add(w, 2));
  float hq[ROW] = {0};
  EXPECT_EQ_INT(rkv_qwindow_push(w, 1, 0, hq, 1), RKV_ERR_UNSUPPORTED);
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 0, NULL), RKV_ERR_STATE); /* no plan */
  const int64_t unknown[2] = {1, 7}, twice[2] = {2, 2}, ok[2] = {2, 1};
  const int32_t ip[3] = {0, 1, 2}, down[3] = {0, 2, 1};
  EXPECT_EQ_INT(rkv_qwindow_plan(w, unknown, ip, 2), RKV_ERR_NOT_FOUND);
  EXPECT_EQ_INT(rkv_qwindow_plan(w, twice, ip, 2), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_qwindow_plan(w, ok, down, 2), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_qwindow_plan(w, ok, NULL, 2), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 0, NULL),
                RKV_ERR_STATE); /* failed plans plan nothing */
  rkv_buffer *q = NULL;
  EXPECT_OK(rkv_buffer_create(be, RKV_BUFFER_DEVICE, 2 * ROW * sizeof(float), &q));
  EXPECT_OK(rkv_buffer_fill(q, 0, 0, 2 * ROW * sizeof(float)));
  const float *dq = rkv_buffer_ptr(q);
  EXPECT_OK(rkv_qwindow_plan(w, ok, ip, 2)); /* the failed plans left no stamp behind */
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, L, dq), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 0, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_qwindow_push_planned(w, 0, dq));
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 0, dq), RKV_ERR_STATE); /* twice */
  EXPECT_OK(rkv_qwindow_seq_add(w, 3));                             /* ends the plan */
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 1, dq), RKV_ERR_STATE);
  /* layer 0 ran ahead of the others: a plan taking layer 0's count cannot push layer 1 */
  EXPECT_OK(rkv_qwindow_plan(w, ok, ip, 2));
  EXPECT_EQ_INT(rkv_qwindow_push_planned(w, 1, dq), RKV_ERR_STATE);
  EXPECT_OK(rkv_qwindow_check(w));
  uint32_t c0 = 9, c1 = 9;
  float out[H * W * D];
  EXPECT_OK(rkv_qwindow_get(w, 1, 0, out, &c0));
  EXPECT_OK(rkv_qwindow_get(w, 1, 1, out, &c1));
  EXPECT_EQ_INT(c0, 1);
  EXPECT_EQ_INT(c1, 0);
  EXPECT_OK(rkv_backend_sync(be));
  EXPECT_EQ_INT(rkv_emu_hazards(be), 0);
  rkv_buffer_destroy(q);
  rkv_qwindow_destroy(w);
  rkv_backend_destroy(be);
}

/* Embedders built against version 1 of the config keep a host window. */
static void test_v1_config(void) {
  rkv_qwindow_config c = RKV_QWINDOW_CONFIG_INIT;
  c.struct_size = (uint32_t)RKV_QWINDOW_CONFIG_V1_SIZE;
  c.num_layers = L, c.num_q_heads = H, c.head_dim = D, c.window = W;
  c.backend = (rkv_backend *)(uintptr_t)1; /* beyond a version-1 struct: never read */
  rkv_qwindow *w = NULL;
  EXPECT_OK(rkv_qwindow_create(&c, &w));
  if (!w) return;
  EXPECT_OK(rkv_qwindow_seq_add(w, 5));
  float q[ROW] = {1, 2, 3, 4, 5, 6, 7, 8}, out[H * W * D];
  uint32_t n = 0;
  EXPECT_OK(rkv_qwindow_push(w, 5, 2, q, 1)); /* a host window: the per-sequence push works */
  EXPECT_OK(rkv_qwindow_get(w, 5, 2, out, &n));
  EXPECT(n == 1 && out[0] == 1 && out[W * D] == 5);
  rkv_qwindow_destroy(w);
  c.struct_size = 12345;
  EXPECT_EQ_INT(rkv_qwindow_create(&c, &w), RKV_ERR_INVALID_ARG);
}

int main(void) {
  test_random(MEM_HOST);
  test_random(MEM_CPU);
  test_random(MEM_EMU);
  test_bad_input();
  test_v1_config();
  return rkv_test_finish();
}
