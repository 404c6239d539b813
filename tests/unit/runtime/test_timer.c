/* Stream timers (rkv_backend_timer in rkv/buffer.h) on the CPU backend, the emulated device and,
 * where one exists, a CUDA device: the order rules (stop before start, elapsed before stop),
 * that a mark waits for the stream on the host-clock backends (the emulated device's queue is
 * run, and a hazard surfaces at the mark), that work between the marks is counted and work
 * before the start is not, the caller allocator, and NULL handles. */
#include <time.h>

#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>

#include "rkv_test.h"

typedef struct count_alloc {
  long long live;
} count_alloc;

static void *ca_alloc(void *ctx, size_t size, size_t align) {
  void *p = NULL;
  if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0) return NULL;
  ((count_alloc *)ctx)->live += (long long)size;
  return p;
}
static void ca_free(void *ctx, void *p, size_t size) {
  ((count_alloc *)ctx)->live -= (long long)size;
  free(p);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void check_order(rkv_backend *b) {
  rkv_backend_timer *t = NULL;
  float ms = -1.0f;
  EXPECT_OK(rkv_backend_timer_create(b, &t));
  if (!t) return;
  EXPECT_STATUS(rkv_backend_timer_stop(t), RKV_ERR_STATE);
  EXPECT_STATUS(rkv_backend_timer_elapsed_ms(t, &ms), RKV_ERR_STATE);
  EXPECT_OK(rkv_backend_timer_start(t));
  EXPECT_STATUS(rkv_backend_timer_elapsed_ms(t, &ms), RKV_ERR_STATE);
  EXPECT(ms == -1.0f);
  EXPECT_OK(rkv_backend_timer_stop(t));
  EXPECT_STATUS(rkv_backend_timer_elapsed_ms(t, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_backend_timer_elapsed_ms(t, &ms));
  EXPECT(ms >= 0.0f && ms < 1000.0f);
  /* a restart forgets the old stop */
  EXPECT_OK(rkv_backend_timer_start(t));
  EXPECT_STATUS(rkv_backend_timer_elapsed_ms(t, &ms), RKV_ERR_STATE);
  rkv_backend_timer_destroy(t);
}

/* On the host-clock backends the work between the marks is host work: a 30 ms sleep between
 * them is counted, one before the start is not. */
static void check_host_interval(rkv_backend *b) {
  rkv_backend_timer *t = NULL;
  float ms = 0.0f;
  EXPECT_OK(rkv_backend_timer_create(b, &t));
  if (!t) return;
  sleep_ms(30);
  EXPECT_OK(rkv_backend_timer_start(t));
  sleep_ms(30);
  EXPECT_OK(rkv_backend_timer_stop(t));
  EXPECT_OK(rkv_backend_timer_elapsed_ms(t, &ms));
  EXPECT(ms >= 29.0f);
  EXPECT(ms < 55.0f); /* the sleep before the start is not counted */
  rkv_backend_timer_destroy(t);
}

/* The emulated device: a mark runs the queue (a queued download lands in host memory at the
 * start mark) and reports a hazard like a sync does. */
static void check_emulated_marks(rkv_backend *b) {
  enum { N = 64 };
  uint8_t src[N], dst[N];
  memset(src, 0x5a, N);
  memset(dst, 0, N);
  rkv_buffer *d = NULL;
  rkv_backend_timer *t = NULL;
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, N, &d));
  EXPECT_OK(rkv_backend_timer_create(b, &t));
  if (!d || !t) goto out;
  EXPECT_OK(rkv_buffer_upload(d, 0, src, N));
  EXPECT_OK(rkv_buffer_download(d, 0, dst, N));
  EXPECT(rkv_emu_pending(b) > 0);
  EXPECT_OK(rkv_backend_timer_start(t));
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT(dst[0] == 0x5a && dst[N - 1] == 0x5a);
  EXPECT_OK(rkv_buffer_upload(d, 0, src, N));
  src[3] ^= 1; /* the host changes an upload's source before the stream ran it */
  EXPECT_STATUS(rkv_backend_timer_stop(t), RKV_ERR_STATE);
  EXPECT_EQ_INT(rkv_emu_hazards(b), 1);
out:
  rkv_backend_timer_destroy(t);
  rkv_buffer_destroy(d);
}

/* On CUDA the marks are events on the stream: an interval over a device fill is measured. */
static void check_cuda_interval(rkv_backend *b) {
  rkv_buffer *d = NULL;
  rkv_backend_timer *t = NULL;
  float ms = -1.0f;
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, (size_t)64 << 20, &d));
  EXPECT_OK(rkv_backend_timer_create(b, &t));
  if (d && t) {
    EXPECT_OK(rkv_backend_timer_start(t));
    for (int i = 0; i < 8; i++) EXPECT_OK(rkv_buffer_fill(d, 0, (uint8_t)i, (size_t)64 << 20));
    EXPECT_OK(rkv_backend_timer_stop(t));
    EXPECT_OK(rkv_backend_timer_elapsed_ms(t, &ms));
    EXPECT(ms > 0.0f && ms < 1000.0f);
  }
  rkv_backend_timer_destroy(t);
  rkv_buffer_destroy(d);
}

static void test_backend(int which) {
  count_alloc ca = {0};
  rkv_allocator al = {ca_alloc, ca_free, &ca};
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = which == 2 ? RKV_BACKEND_CUDA : RKV_BACKEND_CPU;
  cfg.allocator = &al;
  rkv_backend *b = NULL;
  rkv_status s = which == 1 ? rkv_backend_create_emulated(&cfg, &b) : rkv_backend_create(&cfg, &b);
  if (which == 2 && s != RKV_OK) {
    EXPECT(s == RKV_ERR_CUDA || s == RKV_ERR_UNSUPPORTED);
    return;
  }
  EXPECT_OK(s);
  if (!b) return;
  if (which == 2) fprintf(stderr, "note: a CUDA device is present: timing on it\n");
  check_order(b);
  if (which == 2)
    check_cuda_interval(b);
  else
    check_host_interval(b);
  if (which == 1) check_emulated_marks(b);
  rkv_backend_destroy(b);
  EXPECT_EQ_INT(ca.live, 0);
}

static void test_nulls(void) {
  rkv_backend_timer *t = (rkv_backend_timer *)0x1;
  float ms;
  EXPECT_STATUS(rkv_backend_timer_create(NULL, &t), RKV_ERR_INVALID_ARG);
  EXPECT(t == NULL);
  EXPECT_STATUS(rkv_backend_timer_start(NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_backend_timer_stop(NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_backend_timer_elapsed_ms(NULL, &ms), RKV_ERR_INVALID_ARG);
  rkv_backend_timer_destroy(NULL);
}

int main(void) {
  test_backend(0);
  test_backend(1);
  test_backend(2);
  test_nulls();
  return rkv_test_finish();
}
