/* Runtime buffers (rkv/buffer.h): the same transfer sequence on every backend this machine has
 * (CPU, the emulated device, CUDA when a device exists), each call's error paths with the
 * check that a failed call changed nothing, growth by reserve (contents kept, failure keeps
 * the old memory), the caller allocator (all memory returned, allocation failures clean), and
 * the CUDA kind's clean error without a device. Emulator specifics: test_buffer_emu.c. */
#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>

#include "rkv_test.h"

/* Counts live bytes; fails every allocation once `budget` allocations have been made (-1:
 * never), so each allocation of a call can be made to fail in turn. */
typedef struct test_alloc {
  long long live;
  long calls, budget;
} test_alloc;

static void *ta_alloc(void *ctx, size_t size, size_t align) {
  test_alloc *t = ctx;
  if (t->budget >= 0 && t->calls >= t->budget) return NULL;
  void *p = NULL;
  if (posix_memalign(&p, align, size) != 0) return NULL;
  t->calls++;
  t->live += (long long)size;
  return p;
}
static void ta_free(void *ctx, void *p, size_t size) {
  test_alloc *t = ctx;
  t->live -= (long long)size;
  free(p);
}

static rkv_backend *make_backend(int which, const rkv_allocator *al) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = which == 2 ? RKV_BACKEND_CUDA : RKV_BACKEND_CPU;
  cfg.allocator = al;
  rkv_backend *b = NULL;
  rkv_status s = which == 1 ? rkv_backend_create_emulated(&cfg, &b) : rkv_backend_create(&cfg, &b);
  return s == RKV_OK ? b : NULL;
}

static void pattern(uint8_t *p, size_t n, uint8_t seed) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(seed + i * 7u);
}

/* Upload, device-to-device copy, pinned staging in and out, fill, download: the path a device
 * engine takes, checked only through downloads after a sync (valid on every backend). */
static void check_transfers(rkv_backend *b) {
  enum { N = 1000 };
  rkv_buffer *d1 = NULL, *d2 = NULL, *pin = NULL;
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, N, &d1));
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, N, &d2));
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_HOST_PINNED, N, &pin));
  if (!d1 || !d2 || !pin) goto out;
  EXPECT(rkv_buffer_get_kind(d1) == RKV_BUFFER_DEVICE);
  EXPECT(rkv_buffer_get_kind(pin) == RKV_BUFFER_HOST_PINNED);
  EXPECT(rkv_buffer_backend(d1) == b);
  EXPECT_EQ_INT(rkv_buffer_size(d1), N);
  EXPECT_EQ_INT((uintptr_t)rkv_buffer_ptr(d1) % RKV_BUFFER_ALIGN, 0);
  EXPECT_EQ_INT((uintptr_t)rkv_buffer_ptr(pin) % RKV_BUFFER_ALIGN, 0);

  static uint8_t src[N], got[N], want[N];
  pattern(src, N, 3);
  EXPECT_OK(rkv_buffer_upload(d1, 0, src, N));
  EXPECT_OK(rkv_buffer_copy(d2, 100, d1, 0, 500)); /* device -> device */
  uint8_t *staging = rkv_buffer_ptr(pin);          /* host memory on every backend */
  pattern(staging, N, 101);
  EXPECT_OK(rkv_buffer_copy(d2, 0, pin, 0, 100)); /* pinned -> device */
  EXPECT_OK(rkv_buffer_fill(d2, 600, 0xAB, 400));
  EXPECT_OK(rkv_buffer_copy(pin, 500, d2, 0, 500)); /* device -> pinned */
  EXPECT_OK(rkv_buffer_download(d2, 0, got, N));
  EXPECT_OK(rkv_buffer_upload(d1, 10, NULL, 0)); /* empty transfers: no-ops */
  EXPECT_OK(rkv_buffer_download(d1, N, NULL, 0));
  EXPECT_OK(rkv_buffer_copy(d1, 0, d1, 0, 0));
  EXPECT_OK(rkv_buffer_fill(d1, N, 0, 0));
  EXPECT_OK(rkv_backend_sync(b));
  pattern(want, 100, 101);
  memcpy(want + 100, src, 500);
  memset(want + 600, 0xAB, 400);
  EXPECT(memcmp(got, want, N) == 0);
  EXPECT(memcmp(staging + 500, want, 500) == 0);
  uint8_t tail[N];
  pattern(tail, 500, 101);
  EXPECT(memcmp(staging, tail, 500) == 0); /* the pinned bytes not copied into stay */
out:
  rkv_buffer_destroy(d1);
  rkv_buffer_destroy(d2);
  rkv_buffer_destroy(pin);
}

/* reserve: no-op within the size; growth keeps the contents and moves the address. */
static void check_reserve(rkv_backend *b) {
  for (int k = 0; k < 2; k++) {
    const rkv_buffer_kind kind = k ? RKV_BUFFER_HOST_PINNED : RKV_BUFFER_DEVICE;
    rkv_buffer *buf = NULL;
    EXPECT_OK(rkv_buffer_create(b, kind, 0, &buf));
    if (!buf) continue;
    EXPECT(rkv_buffer_ptr(buf) == NULL);
    EXPECT_EQ_INT(rkv_buffer_size(buf), 0);
    EXPECT_OK(rkv_buffer_reserve(buf, 0));
    EXPECT_OK(rkv_buffer_reserve(buf, 64));
    EXPECT_EQ_INT(rkv_buffer_size(buf), 64);
    uint8_t src[64], got[64];
    pattern(src, 64, 9);
    if (kind == RKV_BUFFER_DEVICE)
      EXPECT_OK(rkv_buffer_upload(buf, 0, src, 64)); /* still queued when reserve runs */
    else
      memcpy(rkv_buffer_ptr(buf), src, 64);
    void *before = rkv_buffer_ptr(buf);
    EXPECT_OK(rkv_buffer_reserve(buf, 32)); /* smaller: nothing happens */
    EXPECT(rkv_buffer_ptr(buf) == before);
    EXPECT_EQ_INT(rkv_buffer_size(buf), 64);
    EXPECT_OK(rkv_buffer_reserve(buf, 4096));
    EXPECT_EQ_INT(rkv_buffer_size(buf), 4096);
    EXPECT_EQ_INT((uintptr_t)rkv_buffer_ptr(buf) % RKV_BUFFER_ALIGN, 0);
    if (kind == RKV_BUFFER_DEVICE) {
      EXPECT_OK(rkv_buffer_download(buf, 0, got, 64));
      EXPECT_OK(rkv_backend_sync(b));
    } else {
      memcpy(got, rkv_buffer_ptr(buf), 64);
    }
    EXPECT(memcmp(got, src, 64) == 0);
    rkv_buffer_destroy(buf);
  }
}

/* Reads a whole DEVICE buffer back (after a sync). */
static void read_all(rkv_buffer *buf, uint8_t *out) {
  EXPECT_OK(rkv_buffer_download(buf, 0, out, rkv_buffer_size(buf)));
  EXPECT_OK(rkv_backend_sync(rkv_buffer_backend(buf)));
}

#define EXPECT_ERR_TEXT(b, needle) EXPECT(strstr(rkv_backend_last_error(b), needle) != NULL)

/* Every argument error, then proof that none of the failed calls changed or queued anything. */
static void check_errors(rkv_backend *b, rkv_backend *other) {
  enum { N = 256 };
  rkv_buffer *d = NULL, *pin = NULL, *foreign = NULL;
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, N, &d));
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_HOST_PINNED, N, &pin));
  EXPECT_OK(rkv_buffer_create(other, RKV_BUFFER_DEVICE, N, &foreign));
  if (!d || !pin || !foreign) goto out;
  uint8_t orig[N], host[N], keep[N], got[N];
  pattern(orig, N, 42);
  EXPECT_OK(rkv_buffer_upload(d, 0, orig, N));
  EXPECT_OK(rkv_backend_sync(b));
  pattern(host, N, 200);
  memcpy(keep, host, N);
  void *const dptr = rkv_buffer_ptr(d);

  rkv_buffer *nb = (rkv_buffer *)0x1;
  EXPECT_STATUS(rkv_buffer_create(b, (rkv_buffer_kind)7, 8, &nb), RKV_ERR_INVALID_ARG);
  EXPECT(nb == NULL);
  EXPECT_ERR_TEXT(b, "unknown buffer kind");
  nb = (rkv_buffer *)0x1;
  EXPECT_STATUS(rkv_buffer_create(NULL, RKV_BUFFER_DEVICE, 8, &nb), RKV_ERR_INVALID_ARG);
  EXPECT(nb == NULL);
  EXPECT_STATUS(rkv_buffer_create(b, RKV_BUFFER_DEVICE, 8, NULL), RKV_ERR_INVALID_ARG);

  EXPECT_STATUS(rkv_buffer_upload(NULL, 0, host, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_upload(d, N + 1, host, 0), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "upload: bytes [257, 257 + 0) outside a DEVICE buffer of 256 bytes");
  EXPECT_STATUS(rkv_buffer_upload(d, 1, host, N), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_upload(d, 8, host, SIZE_MAX), RKV_ERR_INVALID_ARG); /* no wrap */
  EXPECT_STATUS(rkv_buffer_upload(d, 0, NULL, 4), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "NULL host source");
  EXPECT_STATUS(rkv_buffer_upload(pin, 0, host, 4), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "needs a DEVICE buffer");

  EXPECT_STATUS(rkv_buffer_download(NULL, 0, host, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_download(d, N - 3, host, 4), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_download(d, SIZE_MAX, host, 2), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_download(d, 0, NULL, 4), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_download(pin, 0, host, 4), RKV_ERR_INVALID_ARG);

  EXPECT_STATUS(rkv_buffer_copy(NULL, 0, d, 0, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_copy(d, 0, NULL, 0, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_copy(d, 0, foreign, 0, 4), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "different backends");
  EXPECT_STATUS(rkv_buffer_copy(d, 0, d, 8, 16), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "overlap");
  EXPECT_STATUS(rkv_buffer_copy(d, 8, d, 0, 16), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_copy(d, N - 4, pin, 0, 8), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "copy (destination)");
  EXPECT_STATUS(rkv_buffer_copy(d, 0, pin, N - 4, 8), RKV_ERR_INVALID_ARG);
  EXPECT_ERR_TEXT(b, "copy (source)");
  EXPECT_STATUS(rkv_buffer_copy(pin, 0, d, SIZE_MAX, 1), RKV_ERR_INVALID_ARG);

  EXPECT_STATUS(rkv_buffer_fill(NULL, 0, 1, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_fill(d, 0, 1, N + 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_fill(pin, 0, 1, 4), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_reserve(NULL, 4), RKV_ERR_INVALID_ARG);

  /* Nothing moved: no queued work, same memory, same bytes on both sides. */
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT(rkv_buffer_ptr(d) == dptr);
  EXPECT_EQ_INT(rkv_buffer_size(d), N);
  EXPECT(memcmp(host, keep, N) == 0);
  read_all(d, got);
  EXPECT(memcmp(got, orig, N) == 0);
out:
  rkv_buffer_destroy(d);
  rkv_buffer_destroy(pin);
  rkv_buffer_destroy(foreign);
}

/* rkv_buffer_wrap: a handle over memory another owner holds (here another buffer's, which is
 * device memory on every backend) reaches it through the transfers, cannot grow, and leaves it
 * alive when destroyed; the emulated device refuses, and bad pointers are refused everywhere. */
static void check_wrap(rkv_backend *b) {
  enum { N = 512 };
  uint8_t in[N], got[N];
  rkv_buffer *owner = NULL, *w = (rkv_buffer *)0x1;
  EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, N, &owner));
  if (!owner) return;
  uint8_t *mem = rkv_buffer_ptr(owner);
  if (rkv_backend_is_emulated(b)) {
    EXPECT_STATUS(rkv_buffer_wrap(b, RKV_BUFFER_DEVICE, mem, N, &w), RKV_ERR_UNSUPPORTED);
    EXPECT(w == NULL);
    rkv_buffer_destroy(owner);
    return;
  }
  EXPECT_STATUS(rkv_buffer_wrap(b, RKV_BUFFER_DEVICE, mem + 1, N - 1, &w), RKV_ERR_INVALID_ARG);
  EXPECT(w == NULL);
  EXPECT_STATUS(rkv_buffer_wrap(b, RKV_BUFFER_DEVICE, NULL, N, &w), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_wrap(b, (rkv_buffer_kind)7, mem, N, &w), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_wrap(NULL, RKV_BUFFER_DEVICE, mem, N, &w), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_buffer_wrap(b, RKV_BUFFER_DEVICE, mem, N, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_buffer_wrap(b, RKV_BUFFER_DEVICE, mem, N, &w));
  if (!w) goto out;
  EXPECT(rkv_buffer_ptr(w) == mem);
  EXPECT_EQ_INT(rkv_buffer_size(w), N);
  EXPECT(rkv_buffer_backend(w) == b);
  pattern(in, N, 11);
  EXPECT_OK(rkv_buffer_upload(w, 0, in, N));
  EXPECT_OK(rkv_buffer_download(owner, 0, got, N));
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT(memcmp(got, in, N) == 0);
  EXPECT_OK(rkv_buffer_reserve(w, N));
  EXPECT_STATUS(rkv_buffer_reserve(w, N + 1), RKV_ERR_INVALID_ARG);
  EXPECT(rkv_buffer_ptr(w) == mem);
  EXPECT_EQ_INT(rkv_buffer_size(w), N);
  rkv_buffer_destroy(w);
  memset(got, 0, N);
  EXPECT_OK(rkv_buffer_download(owner, 0, got, N)); /* the memory outlives the wrapper */
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT(memcmp(got, in, N) == 0);
out:
  rkv_buffer_destroy(owner);
}

static void test_backend(int which) {
  test_alloc ta = {0, 0, -1};
  rkv_allocator al = {ta_alloc, ta_free, &ta};
  rkv_backend *b = make_backend(which, which == 2 ? NULL : &al);
  rkv_backend *other = make_backend(0, NULL);
  EXPECT(b != NULL && other != NULL);
  if (!b || !other) {
    rkv_backend_destroy(b);
    rkv_backend_destroy(other);
    return;
  }
  EXPECT(rkv_backend_device_is_host(b) == (which == 0));
  check_transfers(b);
  check_reserve(b);
  check_errors(b, other);
  check_wrap(b);
  EXPECT_EQ_INT(rkv_emu_hazards(b), 0);
  rkv_backend_destroy(other);
  rkv_backend_destroy(b);
  EXPECT_EQ_INT(ta.live, 0);
}

/* Allocation failure at each allocation a call makes: a clean status, no half-made buffer,
 * nothing leaked; a reserve that cannot allocate keeps the old memory and bytes. */
static void test_alloc_failures(int which) {
  test_alloc ta = {0, 0, -1};
  rkv_allocator al = {ta_alloc, ta_free, &ta};
  rkv_backend *b = make_backend(which, &al);
  EXPECT(b != NULL);
  if (!b) return;
  { /* warm-up: the emulated device keeps its queue array once it has one */
    rkv_buffer *w = NULL;
    uint8_t x[4] = {0};
    EXPECT_OK(rkv_buffer_create(b, RKV_BUFFER_DEVICE, 4, &w));
    EXPECT_OK(rkv_buffer_upload(w, 0, x, 4));
    EXPECT_OK(rkv_backend_sync(b));
    rkv_buffer_destroy(w);
  }
  const long long base = ta.live;
  for (int k = 0; k < 2; k++) {
    const rkv_buffer_kind kind = k ? RKV_BUFFER_HOST_PINNED : RKV_BUFFER_DEVICE;
    int failed = 0;
    for (long budget = 0; budget < 4; budget++) {
      ta.calls = 0;
      ta.budget = budget;
      rkv_buffer *buf = (rkv_buffer *)0x1;
      rkv_status s = rkv_buffer_create(b, kind, 100, &buf);
      ta.budget = -1;
      if (s == RKV_OK) {
        rkv_buffer_destroy(buf);
      } else {
        failed++;
        EXPECT_STATUS(s, RKV_ERR_NO_MEMORY);
        EXPECT(buf == NULL);
      }
      EXPECT_EQ_INT(ta.live, base);
    }
    EXPECT(failed >= 2); /* handle, then memory */

    rkv_buffer *buf = NULL;
    EXPECT_OK(rkv_buffer_create(b, kind, 100, &buf));
    if (!buf) continue;
    uint8_t src[100], got[100] = {0};
    pattern(src, 100, 77);
    if (kind == RKV_BUFFER_DEVICE) {
      EXPECT_OK(rkv_buffer_upload(buf, 0, src, 100));
      EXPECT_OK(rkv_backend_sync(b));
    } else {
      memcpy(rkv_buffer_ptr(buf), src, 100);
    }
    void *before = rkv_buffer_ptr(buf);
    ta.calls = 0;
    ta.budget = 0;
    EXPECT_STATUS(rkv_buffer_reserve(buf, 1 << 20), RKV_ERR_NO_MEMORY);
    ta.budget = -1;
    EXPECT(rkv_buffer_ptr(buf) == before);
    EXPECT_EQ_INT(rkv_buffer_size(buf), 100);
    if (kind == RKV_BUFFER_DEVICE) {
      /* On the emulated device the queued upload's saved bytes need memory too. */
      if (rkv_backend_is_emulated(b)) {
        ta.calls = 0;
        ta.budget = 0;
        EXPECT_STATUS(rkv_buffer_upload(buf, 0, got, 10), RKV_ERR_NO_MEMORY);
        ta.budget = -1;
        EXPECT_EQ_INT(rkv_emu_pending(b), 0);
      }
      read_all(buf, got);
    } else {
      memcpy(got, rkv_buffer_ptr(buf), 100);
    }
    EXPECT(memcmp(got, src, 100) == 0);
    rkv_buffer_destroy(buf);
    EXPECT_EQ_INT(ta.live, base);
  }
  rkv_backend_destroy(b);
  EXPECT_EQ_INT(ta.live, 0);
}

/* Without a device (this machine) the CUDA kind fails cleanly, before any buffer exists; with
 * one, the common checks run on it. */
static void test_cuda_kind(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_backend *b = (rkv_backend *)0x1;
  rkv_status s = rkv_backend_create(&cfg, &b);
  if (!rkv_build_has_cuda()) {
    EXPECT_STATUS(s, RKV_ERR_UNSUPPORTED);
  } else if (s != RKV_OK) {
    EXPECT_STATUS(s, RKV_ERR_CUDA);
  }
  if (s != RKV_OK) {
    EXPECT(b == NULL);
    return;
  }
  rkv_backend_destroy(b);
  fprintf(stderr, "note: a CUDA device is present: running the buffer checks on it\n");
  test_backend(2);
}

/* The emulator's queries on a real backend, and the accessors' NULL handling. */
static void test_plain_cpu_and_nulls(void) {
  rkv_backend *b = make_backend(0, NULL);
  EXPECT(b != NULL);
  if (!b) return;
  EXPECT(!rkv_backend_is_emulated(b));
  EXPECT_STREQ(rkv_backend_name(b), "cpu");
  EXPECT_EQ_INT(rkv_emu_pending(b), 0);
  EXPECT_STREQ(rkv_emu_hazard_text(b), "");
  int x = 5;
  void *v = NULL;
  EXPECT_OK(rkv_emu_view(b, &x, sizeof x, &v));
  EXPECT(v == &x); /* device memory is host memory here */
  EXPECT_OK(rkv_emu_host_release(b, &x, sizeof x));
  EXPECT_STATUS(rkv_emu_view(NULL, &x, 1, &v), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_emu_view(b, &x, 1, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_emu_host_release(NULL, &x, 1), RKV_ERR_INVALID_ARG);
  rkv_backend_destroy(b);
  EXPECT(!rkv_backend_device_is_host(NULL));
  EXPECT(!rkv_backend_is_emulated(NULL));
  EXPECT(rkv_buffer_ptr(NULL) == NULL);
  EXPECT_EQ_INT(rkv_buffer_size(NULL), 0);
  EXPECT(rkv_buffer_backend(NULL) == NULL);
  EXPECT_EQ_INT(rkv_emu_hazards(NULL), 0);
  rkv_buffer_destroy(NULL);
}

int main(void) {
  test_backend(0);
  test_backend(1);
  test_alloc_failures(0);
  test_alloc_failures(1);
  test_cuda_kind();
  test_plain_cpu_and_nulls();
  return rkv_test_finish();
}
