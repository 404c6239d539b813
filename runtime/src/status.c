/* Status names and messages, build capabilities, version, and the internal error/log/alloc
 * helpers every module uses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rkv_internal.h"

static const char *const kStatusText[RKV_STATUS_COUNT_][2] = {
    {"RKV_OK", "success"},
    {"RKV_ERR_INVALID_ARG", "invalid argument"},
    {"RKV_ERR_NO_MEMORY", "out of host memory"},
    {"RKV_ERR_NO_BLOCKS", "out of KV blocks"},
    {"RKV_ERR_NOT_FOUND", "no such sequence or request"},
    {"RKV_ERR_EXISTS", "id already exists"},
    {"RKV_ERR_UNSUPPORTED", "unsupported in this build or configuration"},
    {"RKV_ERR_CORRUPT", "invariant check failed"},
    {"RKV_ERR_CUDA", "CUDA error"},
    {"RKV_ERR_COMM", "communication error"},
    {"RKV_ERR_IO", "I/O error"},
    {"RKV_ERR_FORMAT", "malformed or unsupported format"},
    {"RKV_ERR_TIMEOUT", "timed out"},
    {"RKV_ERR_STATE", "invalid in the current state"},
    {"RKV_ERR_CAPACITY", "buffer or table too small"},
    {"RKV_ERR_INTERNAL", "internal error"},
};

const char *rkv_status_str(rkv_status s) {
  if ((unsigned)s >= RKV_STATUS_COUNT_) return "unknown status";
  return kStatusText[s][1];
}

const char *rkv_status_name(rkv_status s) {
  if ((unsigned)s >= RKV_STATUS_COUNT_) return "RKV_ERR_UNKNOWN";
  return kStatusText[s][0];
}

bool rkv_build_has_cuda(void) {
#ifdef RKV_HAVE_CUDA
  return true;
#else
  return false;
#endif
}
bool rkv_build_has_nccl(void) {
#ifdef RKV_HAVE_NCCL
  return true;
#else
  return false;
#endif
}
bool rkv_build_has_hwloc(void) {
#ifdef RKV_HAVE_HWLOC
  return true;
#else
  return false;
#endif
}
bool rkv_build_has_mpi(void) {
#ifdef RKV_HAVE_MPI
  return true;
#else
  return false;
#endif
}
bool rkv_build_has_blas(void) {
#ifdef RKV_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

const char *rkv_version_string(void) {
  return RKV_VERSION_STRING;
}

void rkv_version(int *major, int *minor, int *patch) {
  if (major) *major = RKV_VERSION_MAJOR;
  if (minor) *minor = RKV_VERSION_MINOR;
  if (patch) *patch = RKV_VERSION_PATCH;
}

static void vfailn(char *buf, size_t cap, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void vfailn(char *buf, size_t cap, const char *fmt, va_list ap) {
  if (buf && cap > 0) vsnprintf(buf, cap, fmt, ap);
}

rkv_status rkvi_fail(char *errbuf, rkv_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfailn(errbuf, RKV_ERRBUF, fmt, ap);
  va_end(ap);
  return s;
}

rkv_status rkvi_failn(char *buf, size_t cap, rkv_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfailn(buf, cap, fmt, ap);
  va_end(ap);
  return s;
}

void rkvi_log(const rkv_logger *lg, rkv_log_level level, const char *fmt, ...) {
  if (!lg || !lg->fn || level > lg->level) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  lg->fn(lg->ctx, level, buf);
}

void rkvi_assert_fail(const char *expr, const char *file, int line) {
  fprintf(stderr, "librkv internal assertion failed: %s (%s:%d)\n", expr, file, line);
  abort();
}

/* The caller's allocator is used only when it has both functions: with one of them missing,
 * libc does both, so a block is always freed by the allocator that made it. */
static bool custom_alloc(const rkv_allocator *a) {
  return a && a->alloc && a->free;
}

void *rkvi_alloc(const rkv_allocator *a, size_t size, size_t align) {
  if (size == 0) size = 1;
  if (align < sizeof(void *)) align = sizeof(void *);
  if (custom_alloc(a)) return a->alloc(a->ctx, size, align);
  void *p = NULL;
  if (posix_memalign(&p, align, size) != 0) return NULL;
  return p;
}

void *rkvi_calloc(const rkv_allocator *a, size_t size, size_t align) {
  void *p = rkvi_alloc(a, size, align);
  if (p) memset(p, 0, size ? size : 1);
  return p;
}

void rkvi_free(const rkv_allocator *a, void *p, size_t size) {
  if (!p) return;
  if (custom_alloc(a)) {
    a->free(a->ctx, p, size ? size : 1);
    return;
  }
  free(p);
}

bool rkvi_grow_scratch(const rkv_allocator *a, void **p, size_t *cap, size_t need, size_t *tried) {
  if (need <= *cap) return true;
  size_t nc = *cap ? *cap : 4096;
  while (nc < need) nc *= 2;
  void *n = rkvi_alloc(a, nc, 64);
  if (!n) {
    if (tried) *tried = nc;
    return false;
  }
  rkvi_free(a, *p, *cap);
  *p = n;
  *cap = nc;
  return true;
}

void *rkvi_realloc(const rkv_allocator *a, void *p, size_t old_size, size_t new_size,
                   size_t align) {
  void *q = rkvi_alloc(a, new_size, align);
  if (!q) return NULL;
  if (p) {
    memcpy(q, p, old_size < new_size ? old_size : new_size);
    rkvi_free(a, p, old_size);
  }
  return q;
}
