/* A strict reader and a writer of NumPy .npy files (format versions 1.0, 2.0 and 3.0):
 * little-endian f4 / f8 / f2 / i8 / i4 in C order. Anything else — Fortran order, big
 * endian, other types, a malformed header, an absurd shape, truncated or trailing data — is
 * RKV_ERR_FORMAT with a message, never a crash (fuzzed by tests/fuzz/fuzz_npy.c). Depends
 * only on the runtime header so the fuzzer can compile it on its own. */
#ifndef RT_NPY_H
#define RT_NPY_H

#include <stddef.h>
#include <stdint.h>

#include <rkv/runtime.h>

#define RT_NPY_MAX_DIMS 8
/* rt_npy_load_f32's limits (docs/EVICTION.md, "Input limits"): numpy itself writes headers
 * of a few hundred bytes; 1 GiB of data is a long context of one layer (8 kv heads x 256K
 * tokens x d 128 in f32) for `rkv select`. */
#define RT_NPY_MAX_HEADER (1u << 20)
#define RT_NPY_MAX_DATA (UINT64_C(1) << 30)

typedef enum rt_npy_type {
  RT_NPY_F4 = 0,
  RT_NPY_F8 = 1,
  RT_NPY_F2 = 2,
  RT_NPY_I8 = 3,
  RT_NPY_I4 = 4
} rt_npy_type;

typedef struct rt_npy {
  rt_npy_type type;
  size_t elem_size;
  int ndim;
  int64_t shape[RT_NPY_MAX_DIMS];
  size_t count;        /* product of the shape (1 for a scalar) */
  const uint8_t *data; /* count * elem_size bytes inside the parsed buffer (unaligned) */
} rt_npy;

/* Parses an in-memory .npy image; out->data points into buf. RKV_ERR_FORMAT (err says why),
 * RKV_ERR_INVALID_ARG for NULL arguments. */
rkv_status rt_npy_parse(const uint8_t *buf, size_t len, rt_npy *out, char *err, size_t err_len);

/* Element i converted to double / to f32. */
double rt_npy_get(const rt_npy *a, size_t i);

/* Reads a whole file and converts it to f32: *data (malloc'd, caller frees) [count].
 * RKV_ERR_IO (cannot read), RKV_ERR_FORMAT, RKV_ERR_NO_MEMORY. Reads only as many bytes as
 * the header describes (plus one to detect trailing data), after checking them against
 * RT_NPY_MAX_HEADER and RT_NPY_MAX_DATA. */
rkv_status rt_npy_load_f32(const char *path, float **data, rt_npy *info, char *err, size_t err_len);

/* Writes a version 1.0 header for `descr` ("<f4", "<i8", ...) into buf; returns its length
 * (a multiple of 64) or 0 when it does not fit in cap. */
size_t rt_npy_format_header(char *buf, size_t cap, const char *descr, int ndim,
                            const int64_t *shape);

/* Writes an array: descr "<f4" (float data) or "<i8" (int64_t data). RKV_ERR_IO. */
rkv_status rt_npy_save(const char *path, const char *descr, int ndim, const int64_t *shape,
                       const void *data, char *err, size_t err_len);

#endif /* RT_NPY_H */
