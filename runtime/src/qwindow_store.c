/* Where the query window's rings live: one array of entries in host memory (no backend) or
 * in a backend's DEVICE memory (an rkv_buffer, so the CPU, CUDA and emulated backends all take
 * the same path), grown by doubling as entries are taken. */
#include <string.h>

#include "qwindow_impl.h"

static size_t entry_bytes(const rkv_qwindow *w) {
  return w->entry_floats * sizeof(float);
}

static rkv_status be_fail(rkv_qwindow *w, rkv_status st, const char *what) {
  return rkvi_fail(w->err, st, "query window %s: %s (%s)", what, rkv_status_str(st),
                   rkv_backend_last_error(w->be));
}

rkv_status rkvi_qw_store_init(rkv_qwindow *w) {
  if (!w->be) return RKV_OK;
  return rkv_buffer_create(w->be, RKV_BUFFER_DEVICE, 0, &w->data);
}

void rkvi_qw_store_free(rkv_qwindow *w) {
  rkvi_free(rkvi_qw_alloc(w), w->hdata, (size_t)w->entries * entry_bytes(w));
  rkv_buffer_destroy(w->data);
}

rkv_status rkvi_qw_store_grow(rkv_qwindow *w, uint32_t need) {
  if (need <= w->entries) return RKV_OK;
  uint32_t n = w->entries ? w->entries : 4;
  while (n < need) n *= 2;
  if (n > w->cfg.max_seqs) n = w->cfg.max_seqs;
  const size_t bytes = (size_t)n * entry_bytes(w);
  if (w->data) {
    rkv_status st = rkv_buffer_reserve(w->data, bytes); /* keeps the contents */
    if (st != RKV_OK) return be_fail(w, st, "growth");
  } else {
    float *p = rkvi_alloc(rkvi_qw_alloc(w), bytes, 64);
    if (!p)
      return rkvi_fail(w->err, RKV_ERR_NO_MEMORY, "no memory for %u query windows of %zu floats", n,
                       w->entry_floats);
    if (w->hdata) memcpy(p, w->hdata, (size_t)w->entries * entry_bytes(w));
    rkvi_free(rkvi_qw_alloc(w), w->hdata, (size_t)w->entries * entry_bytes(w));
    w->hdata = p;
  }
  w->entries = n;
  return RKV_OK;
}

float *rkvi_qw_ring(const rkv_qwindow *w, int32_t entry, uint32_t layer) {
  float *base = w->data ? (float *)rkv_buffer_ptr(w->data) : w->hdata;
  return base + (size_t)entry * w->entry_floats + (size_t)layer * w->ring_floats;
}

rkv_status rkvi_qw_store_clear(rkv_qwindow *w, int32_t e) {
  if (!w->data) {
    memset(rkvi_qw_ring(w, e, 0), 0, entry_bytes(w));
    return RKV_OK;
  }
  rkv_status st = rkv_buffer_fill(w->data, (size_t)e * entry_bytes(w), 0, entry_bytes(w));
  return st == RKV_OK ? RKV_OK : be_fail(w, st, "clear");
}

rkv_status rkvi_qw_store_copy(rkv_qwindow *w, int32_t dst, int32_t src) {
  if (!w->data) {
    memcpy(rkvi_qw_ring(w, dst, 0), rkvi_qw_ring(w, src, 0), entry_bytes(w));
    return RKV_OK;
  }
  rkv_status st = rkv_buffer_copy(w->data, (size_t)dst * entry_bytes(w), w->data,
                                  (size_t)src * entry_bytes(w), entry_bytes(w));
  return st == RKV_OK ? RKV_OK : be_fail(w, st, "fork copy");
}

rkv_status rkvi_qw_store_read(rkv_qwindow *w, int32_t e, uint32_t layer, float **out) {
  const size_t bytes = w->ring_floats * sizeof(float);
  float *h = rkvi_alloc(rkvi_qw_alloc(w), bytes, 64);
  if (!h) return rkvi_fail(w->err, RKV_ERR_NO_MEMORY, "query window read: %zu bytes", bytes);
  const size_t off = (size_t)e * entry_bytes(w) + (size_t)layer * bytes;
  rkv_status st = rkv_buffer_download(w->data, off, h, bytes);
  if (st == RKV_OK) st = rkv_backend_sync(w->be);
  if (st != RKV_OK) {
    rkvi_free(rkvi_qw_alloc(w), h, bytes);
    return be_fail(w, st, "read");
  }
  *out = h;
  return RKV_OK;
}
