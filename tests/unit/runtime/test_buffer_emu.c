/* The emulated device (rkv/buffer_emu.h): transfers wait for the sync, fresh device memory is
 * 0xFF, a device pointer faults on the host and is refused as a host pointer, and each copy
 * hazard is reported — a pageable upload source changed before the sync, a pinned staging
 * chunk reused before the sync, a download destination written before the sync, host memory
 * released while in flight, an emulated kernel access out of bounds — while legal stream
 * order (download into staging then copy from it, upload then overwrite by a download) is
 * not. Destroy and reserve drain the queue first. */
#include <rkv/buffer_emu.h>

#include "rkv_test.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#define HAVE_FORK 1
#endif

static rkv_backend *emu(const rkv_logger *lg) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.logger = lg;
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create_emulated(&cfg, &b));
  return b;
}

static rkv_buffer *buffer(rkv_backend *b, rkv_buffer_kind kind, size_t bytes) {
  rkv_buffer *buf = NULL;
  EXPECT_OK(rkv_buffer_create(b, kind, bytes, &buf));
  return buf;
}

/* What an emulated kernel would read at [dev, dev + n) right now. */
static const uint8_t *kernel_view(rkv_backend *b, const void *dev, size_t n) {
  void *h = NULL;
  EXPECT_OK(rkv_emu_view(b, dev, n, &h));
  return h;
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != v) return false;
  return true;
}

/* A failed sync is not counted by rkv_backend_sync_count; the next, clean one is. */
#define EXPECT_HAZARD(b, needle)                               \
  do {                                                         \
    const uint64_t syncs_ = rkv_backend_sync_count(b);         \
    EXPECT_STATUS(rkv_backend_sync(b), RKV_ERR_STATE);         \
    EXPECT(strstr(rkv_backend_last_error(b), needle) != NULL); \
    EXPECT(strstr(rkv_emu_hazard_text(b), needle) != NULL);    \
    EXPECT_EQ_INT(rkv_backend_sync_count(b), syncs_);          \
    EXPECT_OK(rkv_backend_sync(b)); /* reported once */        \
    EXPECT_EQ_INT(rkv_backend_sync_count(b), syncs_ + 1);      \
  } while (0)

static void test_create(void) {
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create_emulated(NULL, &b));
  EXPECT(b != NULL);
  if (!b) return;
  EXPECT(rkv_backend_is_emulated(b));
  EXPECT_STREQ(rkv_backend_name(b), "emu");
  EXPECT_EQ_INT(rkv_backend_get_kind(b), RKV_BACKEND_CPU); /* CPU pools and kernels */
  EXPECT(!rkv_backend_device_is_host(b));
  EXPECT(rkv_backend_stream(b) == NULL);
  rkv_kv_layout l = {RKV_DTYPE_F32, 4, 8};
  rkv_kv_pool *p = NULL;
  EXPECT_OK(rkv_kv_pool_create(b, &l, 2, &p));
  rkv_kv_pool_destroy(p);
  rkv_backend_destroy(b);

  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA; /* the emulation is the point: no GPU involved */
  b = (rkv_backend *)0x1;
  EXPECT_STATUS(rkv_backend_create_emulated(&cfg, &b), RKV_ERR_INVALID_ARG);
  EXPECT(b == NULL);
  cfg.kind = RKV_BACKEND_CPU;
  cfg.struct_size = 3;
  EXPECT_STATUS(rkv_backend_create_emulated(&cfg, &b), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_backend_create_emulated(NULL, NULL), RKV_ERR_INVALID_ARG);
}

/* Nothing runs before the sync (or a kernel view): a download's destination still holds the
 * old bytes, and a kernel sees every earlier operation. */
static void test_queue(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 64);
  if (!b || !d) goto out;
  EXPECT(all_bytes(kernel_view(b, rkv_buffer_ptr(d), 64), 64, 0xFF)); /* fresh: 0xFF */
  uint8_t up[64], down[64];
  for (int i = 0; i < 64; i++) up[i] = (uint8_t)i;
  memset(down, 0x11, sizeof down);
  EXPECT_OK(rkv_buffer_upload(d, 0, up, 64));
  EXPECT_OK(rkv_buffer_fill(d, 60, 0x22, 4));
  EXPECT_OK(rkv_buffer_download(d, 0, down, 64));
  EXPECT_EQ_INT(rkv_emu_pending(b), 3);
  EXPECT(all_bytes(down, 64, 0x11)); /* a host that reads before the sync gets stale bytes */
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT(memcmp(down, up, 60) == 0 && all_bytes(down + 60, 4, 0x22));

  /* An emulated kernel writes through its view; later transfers see it in stream order. */
  EXPECT_OK(rkv_buffer_fill(d, 0, 0x33, 8));
  uint8_t *k = (uint8_t *)kernel_view(b, (uint8_t *)rkv_buffer_ptr(d) + 4, 8);
  EXPECT(k && all_bytes(k, 4, 0x33) && k[4] == 8);
  if (k) k[0] = 0x44;
  EXPECT_OK(rkv_buffer_download(d, 0, down, 8));
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT(down[3] == 0x33 && down[4] == 0x44 && down[5] == 0x33);
  EXPECT_EQ_INT(rkv_emu_hazards(b), 0);
out:
  rkv_buffer_destroy(d);
  rkv_backend_destroy(b);
}

#ifdef HAVE_FORK
/* Runs fn(arg) in a child; true when the child ended cleanly. */
static bool child_ok(void (*fn)(const void *), const void *arg) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return true; /* cannot tell: the caller's expectation decides */
  if (pid == 0) {
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    if (!freopen("/dev/null", "w", stderr)) _exit(3); /* the sanitizer's SEGV report */
    fn(arg);
    _exit(0);
  }
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) return true;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void read_byte(const void *p) {
  volatile const uint8_t *q = p;
  uint8_t v = *q;
  (void)v;
}
#endif

/* A device pointer is not host memory: dereferencing it faults, passing it as a host pointer
 * is refused. */
static void test_device_pointer(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 100), *d2 = buffer(b, RKV_BUFFER_DEVICE, 100);
  if (!b || !d || !d2) goto out;
#ifdef HAVE_FORK
  const uint8_t *k = kernel_view(b, rkv_buffer_ptr(d), 100);
  EXPECT(child_ok(read_byte, k)); /* control: the harness itself works */
  EXPECT(!child_ok(read_byte, rkv_buffer_ptr(d)));
  EXPECT(!child_ok(read_byte, (uint8_t *)rkv_buffer_ptr(d) + 99));
#endif
  EXPECT_STATUS(rkv_buffer_upload(d, 0, rkv_buffer_ptr(d2), 10), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_backend_last_error(b), "is a device address") != NULL);
  EXPECT_STATUS(rkv_buffer_download(d, 0, (uint8_t *)rkv_buffer_ptr(d2) + 95, 10),
                RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT_EQ_INT(rkv_emu_hazards(b), 0);
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(d2);
  rkv_backend_destroy(b);
}

static int log_errors;
static void count_log(void *ctx, rkv_log_level level, const char *msg) {
  (void)ctx;
  if (level == RKV_LOG_ERROR && strstr(msg, "hazard")) log_errors++;
}

/* The deliberate hazards, each next to its correct form. */
static void test_hazards(void) {
  rkv_logger lg = {count_log, NULL, RKV_LOG_ERROR};
  rkv_backend *b = emu(&lg);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 256), *pin = buffer(b, RKV_BUFFER_HOST_PINNED, 64);
  if (!b || !d || !pin) goto out;
  uint8_t host[64], got[64];

  /* A pageable upload source changed before the sync. The device ends with the bytes at the
   * sync (what a late DMA would read), and the hazard says which operation. */
  memset(host, 1, sizeof host);
  EXPECT_OK(rkv_buffer_upload(d, 0, host, 64));
  host[5] = 9;
  EXPECT_HAZARD(b, "upload #1: the host changed its source");
  EXPECT_EQ_INT(rkv_emu_hazards(b), 1);
  EXPECT_EQ_INT(log_errors, 1);
  EXPECT(kernel_view(b, rkv_buffer_ptr(d), 64)[5] == 9);
  /* correct: the source changes after the sync */
  EXPECT_OK(rkv_buffer_upload(d, 0, host, 64));
  EXPECT_OK(rkv_backend_sync(b));
  host[5] = 10;
  EXPECT_OK(rkv_backend_sync(b));

  /* A pinned staging chunk refilled before the copy from it ran (the bug a staging arena
   * that resets without a sync has). */
  uint8_t *stage = rkv_buffer_ptr(pin);
  memset(stage, 0xA1, 64);
  EXPECT_OK(rkv_buffer_copy(d, 0, pin, 0, 64));
  memset(stage, 0xA2, 64);
  EXPECT_OK(rkv_buffer_copy(d, 64, pin, 0, 64));
  EXPECT_HAZARD(b, "copy #3: the host changed its source");
  /* correct: sync before reusing the chunk */
  memset(stage, 0xA1, 64);
  EXPECT_OK(rkv_buffer_copy(d, 0, pin, 0, 64));
  EXPECT_OK(rkv_backend_sync(b));
  memset(stage, 0xA2, 64);
  EXPECT_OK(rkv_buffer_copy(d, 64, pin, 0, 64));
  EXPECT_OK(rkv_backend_sync(b));
  const uint8_t *k = kernel_view(b, rkv_buffer_ptr(d), 128);
  EXPECT(k && all_bytes(k, 64, 0xA1) && all_bytes(k + 64, 64, 0xA2));

  /* A download destination written by the host before the sync; and a pinned one. */
  memset(got, 0, sizeof got);
  EXPECT_OK(rkv_buffer_download(d, 0, got, 64));
  got[0] = 7;
  EXPECT_HAZARD(b, "download #7: the host wrote its destination");
  EXPECT(all_bytes(got, 64, 0xA1)); /* the device's bytes land anyway */
  EXPECT_OK(rkv_buffer_copy(pin, 0, d, 64, 16));
  stage[3] = 0;
  EXPECT_HAZARD(b, "copy #8: the host wrote its destination");

  EXPECT_EQ_INT(rkv_emu_hazards(b), 4);
  EXPECT_EQ_INT(log_errors, 4);
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(pin);
  rkv_backend_destroy(b);
}

/* Host memory freed while a transfer still uses it: declared with rkv_emu_host_release, which
 * reports it and detaches the operation, so the sync never touches the freed bytes (the asan
 * build checks that). */
static void test_release(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 32);
  if (!b || !d) goto out;
  uint8_t *src = malloc(32), *dst = malloc(32), other[8];
  if (!src || !dst) {
    free(src);
    free(dst);
    goto out;
  }
  memset(src, 0x5A, 32);
  EXPECT_OK(rkv_buffer_upload(d, 0, src, 32));
  EXPECT_OK(rkv_emu_host_release(b, other, sizeof other)); /* unrelated memory */
  EXPECT_STATUS(rkv_emu_host_release(b, src + 31, 1), RKV_ERR_STATE);
  memset(src, 0, 32); /* as a free + reuse would */
  free(src);
  EXPECT_OK(rkv_buffer_download(d, 0, dst, 32));
  EXPECT_STATUS(rkv_emu_host_release(b, dst, 32), RKV_ERR_STATE);
  free(dst);
  EXPECT_HAZARD(b, "upload #1: its host source");
  EXPECT_EQ_INT(rkv_emu_hazards(b), 2);
  EXPECT(all_bytes(kernel_view(b, rkv_buffer_ptr(d), 32), 32, 0x5A)); /* the saved bytes */
out:
  rkv_buffer_destroy(d);
  rkv_backend_destroy(b);
}

/* An emulated kernel may touch the bytes of live buffers only. */
static void test_view_bounds(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 100), *pin = buffer(b, RKV_BUFFER_HOST_PINNED, 16);
  if (!b || !d || !pin) goto out;
  uint8_t *dev = rkv_buffer_ptr(d);
  void *h = NULL;
  EXPECT_OK(rkv_emu_view(b, dev + 100, 0, &h)); /* the end, empty */
  EXPECT_OK(rkv_emu_view(b, rkv_buffer_ptr(pin), 16, &h));
  EXPECT(h == rkv_buffer_ptr(pin)); /* a kernel may read pinned memory as it is */
  EXPECT_EQ_INT(rkv_emu_hazards(b), 0);
  EXPECT_STATUS(rkv_emu_view(b, dev + 1, 100, &h), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_backend_last_error(b), "outside every live buffer") != NULL);
  int stack = 0;
  EXPECT_STATUS(rkv_emu_view(b, &stack, sizeof stack, &h), RKV_ERR_INVALID_ARG); /* pageable */
  EXPECT_EQ_INT(rkv_emu_hazards(b), 2);
  EXPECT_HAZARD(b, "outside every live buffer");
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(pin);
  rkv_backend_destroy(b);
}

/* Stream order makes these legal without a sync in between. */
static void test_stream_order(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 64), *d2 = buffer(b, RKV_BUFFER_DEVICE, 64);
  rkv_buffer *pin = buffer(b, RKV_BUFFER_HOST_PINNED, 64);
  if (!b || !d || !d2 || !pin) goto out;
  uint8_t x[64], y[64];
  memset(x, 3, sizeof x);
  EXPECT_OK(rkv_buffer_upload(d, 0, x, 64));
  EXPECT_OK(rkv_buffer_copy(pin, 0, d, 0, 64));  /* device -> staging ... */
  EXPECT_OK(rkv_buffer_copy(d2, 0, pin, 0, 64)); /* ... -> device again */
  EXPECT_OK(rkv_buffer_fill(d, 0, 4, 64));
  EXPECT_OK(rkv_buffer_download(d, 0, x, 64)); /* writes what the upload read: after it */
  EXPECT_OK(rkv_buffer_download(d2, 0, y, 64));
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT(all_bytes(x, 64, 4));
  EXPECT(all_bytes(y, 64, 3));
  EXPECT_EQ_INT(rkv_emu_hazards(b), 0);
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(d2);
  rkv_buffer_destroy(pin);
  rkv_backend_destroy(b);
}

/* Destroying a pinned source and growing a buffer wait for the queue: no hazard, no lost
 * transfer; growth keeps the bytes and fills the new part with 0xFF. */
static void test_drain(void) {
  rkv_backend *b = emu(NULL);
  rkv_buffer *d = buffer(b, RKV_BUFFER_DEVICE, 32), *pin = buffer(b, RKV_BUFFER_HOST_PINNED, 32);
  if (!b || !d || !pin) goto out;
  memset(rkv_buffer_ptr(pin), 0x66, 32);
  EXPECT_OK(rkv_buffer_copy(d, 0, pin, 0, 32));
  rkv_buffer_destroy(pin);
  pin = NULL;
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT_OK(rkv_buffer_fill(d, 0, 0x77, 8));
  void *old = rkv_buffer_ptr(d);
  EXPECT_OK(rkv_buffer_reserve(d, 5000));
  EXPECT(rkv_buffer_ptr(d) != old);
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  const uint8_t *k = kernel_view(b, rkv_buffer_ptr(d), 5000);
  EXPECT(k && all_bytes(k, 8, 0x77) && all_bytes(k + 8, 24, 0x66) &&
         all_bytes(k + 32, 5000 - 32, 0xFF));
  EXPECT_OK(rkv_backend_sync(b));
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(pin);
  rkv_backend_destroy(b);
}

int main(void) {
  test_create();
  test_queue();
  test_device_pointer();
  test_hazards();
  test_release();
  test_view_bounds();
  test_stream_order();
  test_drain();
  return rkv_test_finish();
}
