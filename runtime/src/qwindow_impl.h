/* The query window's state, shared by its map and registrations (qwindow.c), its storage
 * (qwindow_store.c) and its batched push (qwindow_batch.c). Private to runtime/src. */
#ifndef RKV_QWINDOW_IMPL_H
#define RKV_QWINDOW_IMPL_H

#include <rkv/buffer.h>

#include "qwindow_internal.h"
#include "rkv_internal.h"
#include "stage_fence.h"

struct rkv_qwindow {
  rkv_qwindow_config cfg;
  rkv_allocator alloc;
  bool has_alloc;
  rkv_backend *be;                              /* NULL: host memory */
  bool host;                                    /* the host may read the storage */
  size_t row_floats, ring_floats, entry_floats; /* q_heads*d, *window, *layers */
  /* the map: hash slots -> entries */
  uint32_t cap; /* hash slots: a power of two >= 2 * max_seqs */
  uint32_t live;
  int32_t *slot;     /* [cap] entry or -1 */
  int64_t *ids;      /* [max_seqs] the sequence of each entry, -1 when free */
  int64_t *next;     /* [max_seqs][layers] rows pushed so far (ring row of the next: % window) */
  int32_t *free_ids; /* [max_seqs] stack of free entries, lowest on top at creation */
  uint32_t n_free;
  /* the storage: entries [0, entries) of [entry][layers][q_heads][window][d] f32 */
  uint32_t entries;
  float *hdata;     /* no backend */
  rkv_buffer *data; /* a backend's DEVICE memory */
  /* the batched push's plan (qwindow_batch.c) */
  bool planned;
  uint32_t pn, pcap;  /* sequences planned, capacity of the arrays below */
  int32_t *pentry;    /* [pcap] entry of each */
  int64_t *ppos;      /* [pcap] rows pushed before this plan (layer 0's) */
  int32_t *pindptr;   /* [pcap + 1] */
  uint32_t *pstamp;   /* [max_seqs] plan number that last took each entry (repeats) */
  uint32_t pgen;      /* plans made */
  uint8_t *pdone;     /* [layers] pushed under this plan */
  rkv_buffer *pstage; /* HOST_PINNED: the plan's metadata before its upload (device) */
  rkv_buffer *pmeta;  /* DEVICE: pos [n] i64, slots [n] i32, indptr [n + 1] i32 */
  size_t off_slots, off_indptr;
  const void *meta_dev; /* where the pushes read the plan's metadata: pmeta, or a caller's
                         * upload (rkvi_qwindow_plan_staged) */
  rkvi_fence staged;    /* pstage's last upload */
  char err[RKV_ERRBUF];
};

static inline const rkv_allocator *rkvi_qw_alloc(const rkv_qwindow *w) {
  return w->has_alloc ? &w->alloc : NULL;
}

/* Entry of id, or -1. */
int32_t rkvi_qw_entry(const rkv_qwindow *w, int64_t id);
/* Copies n token-major rows into ring (host memory, [q_heads][window][d]) from row pos on. */
void rkvi_qw_copy_rows(const rkv_qwindow *w, float *ring, int64_t pos, const float *q, uint32_t n);

/* Storage (qwindow_store.c). */
rkv_status rkvi_qw_store_init(rkv_qwindow *w);
void rkvi_qw_store_free(rkv_qwindow *w);
/* Makes the storage hold entries [0, need): doubles, at most max_seqs; contents move along.
 * RKV_ERR_NO_MEMORY with nothing changed. */
rkv_status rkvi_qw_store_grow(rkv_qwindow *w, uint32_t need);
/* The ring of (entry, layer) in the window's memory (a DEVICE address on a device). */
float *rkvi_qw_ring(const rkv_qwindow *w, int32_t entry, uint32_t layer);
/* Zeroes entry e's rings / copies entry src's rings onto dst (queued on a device). */
rkv_status rkvi_qw_store_clear(rkv_qwindow *w, int32_t e);
rkv_status rkvi_qw_store_copy(rkv_qwindow *w, int32_t dst, int32_t src);
/* Downloads the ring of (e, layer) into a fresh host array of ring_floats (the caller frees
 * it with the window's allocator); syncs the backend. */
rkv_status rkvi_qw_store_read(rkv_qwindow *w, int32_t e, uint32_t layer, float **out);

/* Plan (qwindow_batch.c). */
void rkvi_qw_plan_free(rkv_qwindow *w);
rkv_status rkvi_qw_plan_check(const rkv_qwindow *w);

#endif /* RKV_QWINDOW_IMPL_H */
