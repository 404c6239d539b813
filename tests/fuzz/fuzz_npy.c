/* Fuzz target for the tools' .npy reader (tools/rkv/npy.c, compiled in here because the
 * fuzz build links one source per target). Any input must parse or fail with RKV_ERR_FORMAT;
 * a parsed array must describe bytes inside the input (every element is read), its shape
 * must match its count, and re-emitting a header for the parsed shape must parse back to the
 * same shape (the writer and the reader agree). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  rt_npy a;
  char err[256];
  rkv_status s = rt_npy_parse(data, size, &a, err, sizeof err);
  if (s != RKV_OK) {
    if (s != RKV_ERR_FORMAT || err[0] == '\0') abort();
    return 0;
  }
  size_t count = 1;
  for (int i = 0; i < a.ndim; i++) count *= (size_t)a.shape[i];
  if (count != a.count || a.data < data || a.data + a.count * a.elem_size != data + size) abort();
  double sum = 0;
  for (size_t i = 0; i < a.count; i++) sum += rt_npy_get(&a, i);
  (void)sum;
  static const char *const kDescr[] = {"<f4", "<f8", "<f2", "<i8", "<i4"};
  char hdr[1024];
  size_t hl = rt_npy_format_header(hdr, sizeof hdr, kDescr[a.type], a.ndim, a.shape);
  if (hl == 0) return 0; /* a shape too long to re-emit in a v1 header */
  size_t n = hl + a.count * a.elem_size;
  if (n > (64u << 20)) return 0;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return 0;
  memcpy(buf, hdr, hl);
  memcpy(buf + hl, a.data, a.count * a.elem_size);
  rt_npy b;
  if (rt_npy_parse(buf, n, &b, err, sizeof err) != RKV_OK || b.ndim != a.ndim || b.type != a.type ||
      b.count != a.count)
    abort();
  for (int i = 0; i < a.ndim; i++)
    if (b.shape[i] != a.shape[i]) abort();
  free(buf);
  return 0;
}
