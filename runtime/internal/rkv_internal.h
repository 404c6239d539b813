/* Private helpers shared by every librkv module (not installed): allocation through the
 * caller's allocator, per-handle error text, logging, assert levels, cleanup macros.
 * Modules include it from runtime/internal, the one directory of internals shared across
 * modules (their CMake target adds it privately; no module sees another module's src/). */
#ifndef RKV_INTERNAL_H
#define RKV_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <rkv/runtime.h>

#ifndef RKV_DEBUG
#define RKV_DEBUG 1
#endif

#define RKV_ERRBUF 256

#ifdef __cplusplus
extern "C" {
#endif

/* Allocation (a == NULL, or either of its fns NULL -> libc for both). Zeroed variant too. */
void *rkvi_alloc(const rkv_allocator *a, size_t size, size_t align);
void *rkvi_calloc(const rkv_allocator *a, size_t size, size_t align);
void rkvi_free(const rkv_allocator *a, void *p, size_t size);
/* Grows an array to new_size bytes, copying old_size bytes; NULL on failure (old intact). */
void *rkvi_realloc(const rkv_allocator *a, void *p, size_t old_size, size_t new_size, size_t align);
/* Grows a scratch buffer (contents not kept, 64-byte aligned) of *cap bytes to at least
 * `need`, doubling from 4 KiB. False on allocation failure, with *p and *cap untouched; a
 * failed size goes to *tried when tried is not NULL. */
bool rkvi_grow_scratch(const rkv_allocator *a, void **p, size_t *cap, size_t need, size_t *tried);

/* Formats into a handle's error buffer (RKV_ERRBUF bytes) and returns `s` unchanged. */
rkv_status rkvi_fail(char *errbuf, rkv_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same into a caller's buffer of cap bytes (buf NULL or cap 0: text dropped), for entry
 * points without a handle that take (char *err, size_t err_len). */
rkv_status rkvi_failn(char *buf, size_t cap, rkv_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void rkvi_log(const rkv_logger *lg, rkv_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Overflow-checked size arithmetic: returns 0 and sets *out, or 1 on overflow. */
static inline int rkvi_mul_size(size_t a, size_t b, size_t *out) {
  if (a && b > SIZE_MAX / a) return 1;
  *out = a * b;
  return 0;
}

#define RKV_TRY(expr)                            \
  do {                                           \
    rkv_status rkv_try_s_ = (expr);              \
    if (rkv_try_s_ != RKV_OK) return rkv_try_s_; \
  } while (0)

#define RKV_TRY_GOTO(expr, label)  \
  do {                             \
    ret = (expr);                  \
    if (ret != RKV_OK) goto label; \
  } while (0)

/* Assert levels: 1 cheap, 2 internal, 3 expensive walks. Failing asserts abort: they guard
 * librkv's own invariants, never caller input. */
void rkvi_assert_fail(const char *expr, const char *file, int line);
#define RKV_ASSERT_LEVEL(lvl, cond)                                                 \
  do {                                                                              \
    if (RKV_DEBUG >= (lvl) && !(cond)) rkvi_assert_fail(#cond, __FILE__, __LINE__); \
  } while (0)
#define RKV_ASSERT(cond) RKV_ASSERT_LEVEL(1, cond)

#ifdef __cplusplus
}
#endif
#endif /* RKV_INTERNAL_H */
