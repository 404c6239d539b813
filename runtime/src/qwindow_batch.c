/* The query window's batched push (rkv_qwindow_plan, rkv_qwindow_push_planned): one plan per
 * step maps the batch's sequences to their entries and positions, then one push per layer
 * writes every sequence's rows. In host memory that is a copy loop; on a device the plan
 * uploads its metadata once (pinned arena, one copy; the arena is reused once the backend has
 * synced since) and each push is one kernel launch (qwindow_cuda.cu), or on the emulated device
 * the same loop over the bytes rkv_emu_view returns, so the host logic runs in tests without a
 * GPU. */
#include <string.h>

#include <rkv/buffer_emu.h>

#include "backend_impl.h"
#include "qwindow_impl.h"

#define UP(x) (((x) + (size_t)RKV_BUFFER_ALIGN - 1) & ~((size_t)RKV_BUFFER_ALIGN - 1))

static rkv_status be_fail(rkv_qwindow *w, rkv_status st, const char *what) {
  return rkvi_fail(w->err, st, "query window %s: %s (%s)", what, rkv_status_str(st),
                   rkv_backend_last_error(w->be));
}

void rkvi_qw_plan_free(rkv_qwindow *w) {
  const rkv_allocator *a = rkvi_qw_alloc(w);
  rkvi_free(a, w->pentry, (size_t)w->pcap * sizeof(int32_t));
  rkvi_free(a, w->ppos, (size_t)w->pcap * sizeof(int64_t));
  rkvi_free(a, w->pindptr, ((size_t)w->pcap + 1) * sizeof(int32_t));
  rkvi_free(a, w->pstamp, (size_t)w->cfg.max_seqs * sizeof(uint32_t));
  rkvi_free(a, w->pdone, w->cfg.num_layers);
  rkv_buffer_destroy(w->pstage);
  rkv_buffer_destroy(w->pmeta);
}

/* The device copy of a plan: pos [n] i64, slots [n] i32, indptr [n + 1] i32. */
static size_t meta_bytes(size_t n, size_t *off_slots, size_t *off_indptr) {
  *off_slots = UP(n * 8);
  *off_indptr = *off_slots + UP(n * 4);
  return *off_indptr + (n + 1) * 4;
}

size_t rkvi_qwindow_meta_bytes(uint32_t n) {
  size_t a, b;
  return meta_bytes(n, &a, &b);
}

static void meta_fill(rkv_qwindow *w, unsigned char *h) {
  const size_t n = w->pn;
  (void)meta_bytes(n, &w->off_slots, &w->off_indptr);
  memcpy(h, w->ppos, n * 8);
  memcpy(h + w->off_slots, w->pentry, n * 4);
  memcpy(h + w->off_indptr, w->pindptr, (n + 1) * 4);
}

/* Everything a plan of max_seqs sequences needs, taken by the first plan (an engine makes an
 * empty one at start), so a step's plan never allocates: host arrays and, on a device, the
 * pinned arena and the device copy. All or nothing. */
static rkv_status plan_arrays(rkv_qwindow *w) {
  if (w->pdone) return RKV_OK;
  const rkv_allocator *a = rkvi_qw_alloc(w);
  const size_t ms = w->cfg.max_seqs;
  w->pcap = (uint32_t)ms;
  w->pentry = rkvi_alloc(a, ms * sizeof(int32_t), 16);
  w->ppos = rkvi_alloc(a, ms * sizeof(int64_t), 16);
  w->pindptr = rkvi_alloc(a, (ms + 1) * sizeof(int32_t), 16);
  w->pstamp = rkvi_calloc(a, ms * sizeof(uint32_t), 16);
  uint8_t *done = rkvi_calloc(a, w->cfg.num_layers, 16);
  rkv_status st =
      w->pentry && w->ppos && w->pindptr && w->pstamp && done ? RKV_OK : RKV_ERR_NO_MEMORY;
  if (st != RKV_OK) rkvi_fail(w->err, st, "query window plan of %zu sequences", ms);
  if (st == RKV_OK && !w->host) {
    size_t o1, o2;
    const size_t bytes = meta_bytes(ms, &o1, &o2);
    st = rkv_buffer_create(w->be, RKV_BUFFER_HOST_PINNED, bytes, &w->pstage);
    if (st == RKV_OK) st = rkv_buffer_create(w->be, RKV_BUFFER_DEVICE, bytes, &w->pmeta);
    if (st != RKV_OK) be_fail(w, st, "plan buffers");
  }
  if (st != RKV_OK) {
    rkvi_free(a, done, w->cfg.num_layers);
    rkvi_qw_plan_free(w); /* what was taken; pdone stays NULL, so the next plan retries */
    w->pentry = NULL, w->ppos = NULL, w->pindptr = NULL, w->pstamp = NULL, w->pcap = 0;
    w->pstage = NULL, w->pmeta = NULL;
    return st;
  }
  w->pdone = done;
  return RKV_OK;
}

/* The device copy of the plan: pos, slots and indptr in one upload. */
static rkv_status plan_upload(rkv_qwindow *w) {
  const size_t bytes = meta_bytes(w->pn, &w->off_slots, &w->off_indptr);
  /* the last plan's upload may still read the arena unless the backend synced since */
  rkv_status st = rkvi_fence_wait(&w->staged, w->be);
  if (st != RKV_OK) return be_fail(w, st, "plan: sync before reusing the arena");
  meta_fill(w, rkv_buffer_ptr(w->pstage));
  st = rkv_buffer_copy(w->pmeta, 0, w->pstage, 0, bytes);
  if (st != RKV_OK) return be_fail(w, st, "plan upload");
  rkvi_fence_arm(&w->staged, w->be);
  w->meta_dev = rkv_buffer_ptr(w->pmeta);
  return RKV_OK;
}

/* The host half of a plan: validated, then the entries, positions and row ranges recorded. */
static rkv_status plan_host(rkv_qwindow *w, const int64_t *seqs, const int32_t *indptr,
                            uint32_t n) {
  w->planned = false; /* the last plan is gone, whether this one succeeds or not */
  if (n && (!seqs || !indptr))
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "plan: seqs and indptr are required");
  if (n > w->cfg.max_seqs)
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "plan: %u sequences > max_seqs %u", n,
                     w->cfg.max_seqs);
  if (n && indptr[0] < 0)
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "plan: indptr[0] %d < 0", indptr[0]);
  RKV_TRY(plan_arrays(w));
  const uint32_t gen = w->pgen + 1 ? w->pgen + 1 : 1; /* 0 marks "never planned" */
  for (uint32_t b = 0; b < n; b++) {
    const int32_t e = w->pentry[b] = rkvi_qw_entry(w, seqs[b]);
    rkv_status bad = RKV_OK;
    if (e < 0)
      bad = rkvi_fail(w->err, RKV_ERR_NOT_FOUND, "plan: sequence %lld has no query window",
                      (long long)seqs[b]);
    else if (w->pstamp[e] == gen)
      bad = rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "plan: sequence %lld is planned twice",
                      (long long)seqs[b]);
    else if (indptr[b + 1] < indptr[b])
      bad = rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "plan: indptr[%u] %d < indptr[%u] %d", b + 1,
                      indptr[b + 1], b, indptr[b]);
    if (bad != RKV_OK) {
      /* undo the stamps: they are the only thing this pass wrote */
      for (uint32_t i = 0; i < b; i++) w->pstamp[w->pentry[i]] = gen - 1;
      return bad;
    }
    w->pstamp[e] = gen;
  }
  w->pgen = gen;
  const size_t L = w->cfg.num_layers;
  for (uint32_t b = 0; b < n; b++) w->ppos[b] = w->next[(size_t)w->pentry[b] * L];
  if (n)
    memcpy(w->pindptr, indptr, ((size_t)n + 1) * sizeof(int32_t));
  else
    w->pindptr[0] = 0;
  w->pn = n;
  memset(w->pdone, 0, L);
  return RKV_OK;
}

rkv_status rkv_qwindow_plan(rkv_qwindow *w, const int64_t *seqs, const int32_t *indptr,
                            uint32_t n) {
  if (!w) return RKV_ERR_INVALID_ARG;
  RKV_TRY(plan_host(w, seqs, indptr, n));
  if (!w->host && n) RKV_TRY(plan_upload(w));
  w->planned = true;
  return RKV_OK;
}

rkv_status rkvi_qwindow_plan_staged(rkv_qwindow *w, const int64_t *seqs, const int32_t *indptr,
                                    uint32_t n, void *host_stage, const void *dev_meta) {
  RKV_TRY(plan_host(w, seqs, indptr, n));
  if (!w->host && n) {
    meta_fill(w, host_stage);
    w->meta_dev = dev_meta;
  }
  w->planned = true;
  return RKV_OK;
}

/* The emulated device's twin of the push kernel: the same loop as a host window's, on the
 * bytes the kernel would read and write (the plan's metadata from its device copy). */
static rkv_status push_emulated(rkv_qwindow *w, uint32_t layer, const float *q) {
  const size_t n = w->pn, rows = (size_t)w->pindptr[n];
  unsigned char *m = NULL;
  float *ring = NULL, *hq = NULL;
  rkv_status st = rkv_emu_view(w->be, w->meta_dev, w->off_indptr + (n + 1) * 4, (void **)&m);
  if (st == RKV_OK)
    st = rkv_emu_view(w->be, rkv_buffer_ptr(w->data),
                      (size_t)w->entries * w->entry_floats * sizeof(float), (void **)&ring);
  if (st == RKV_OK && rows)
    st = rkv_emu_view(w->be, q, rows * w->row_floats * sizeof(float), (void **)&hq);
  if (st != RKV_OK) return be_fail(w, st, "push (emulated device)");
  const int64_t *pos = (const int64_t *)m;
  const int32_t *slots = (const int32_t *)(m + w->off_slots);
  const int32_t *ip = (const int32_t *)(m + w->off_indptr);
  for (size_t b = 0; b < n; b++)
    rkvi_qw_copy_rows(w, ring + (size_t)slots[b] * w->entry_floats + layer * w->ring_floats, pos[b],
                      hq + (size_t)ip[b] * w->row_floats, (uint32_t)(ip[b + 1] - ip[b]));
  return RKV_OK;
}

static rkv_status push_device(rkv_qwindow *w, uint32_t layer, const float *q) {
  if (rkv_backend_is_emulated(w->be)) return push_emulated(w, layer, q);
  const rkvi_qwindow_ring r = {(float *)rkv_buffer_ptr(w->data),
                               w->entries,
                               w->cfg.num_layers,
                               w->cfg.num_q_heads,
                               w->cfg.window,
                               w->cfg.head_dim};
  const unsigned char *m = w->meta_dev;
  rkv_status st =
      rkvi_qwindow_cuda_push(w->be, &r, layer, q, (const int32_t *)(m + w->off_indptr),
                             (const int32_t *)(m + w->off_slots), (const int64_t *)m, w->pn);
  return st == RKV_OK ? RKV_OK : be_fail(w, st, "push");
}

rkv_status rkv_qwindow_push_planned(rkv_qwindow *w, uint32_t layer, const float *q) {
  if (!w) return RKV_ERR_INVALID_ARG;
  if (!w->planned)
    return rkvi_fail(w->err, RKV_ERR_STATE,
                     "push: no plan (rkv_qwindow_plan first; a registration ends the plan)");
  if (layer >= w->cfg.num_layers)
    return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "push: layer %u >= num_layers %u", layer,
                     w->cfg.num_layers);
  if (w->pdone[layer])
    return rkvi_fail(w->err, RKV_ERR_STATE, "push: layer %u was pushed under this plan", layer);
  const size_t L = w->cfg.num_layers;
  /* a plan of zero rows moves nothing (q may be NULL then): no copy, no launch */
  const bool rows = w->pindptr[w->pn] > w->pindptr[0];
  if (rows && !q) return rkvi_fail(w->err, RKV_ERR_INVALID_ARG, "push: q is NULL");
  for (uint32_t b = 0; b < w->pn; b++) {
    const int64_t have = w->next[(size_t)w->pentry[b] * L + layer];
    if (have != w->ppos[b])
      return rkvi_fail(w->err, RKV_ERR_STATE,
                       "push: sequence %lld layer %u holds %lld rows, the plan %lld (pushed "
                       "apart from the plan since)",
                       (long long)w->ids[w->pentry[b]], layer, (long long)have,
                       (long long)w->ppos[b]);
  }
  if (rows && !w->host) {
    RKV_TRY(push_device(w, layer, q));
  } else if (rows) {
    for (uint32_t b = 0; b < w->pn; b++)
      rkvi_qw_copy_rows(w, rkvi_qw_ring(w, w->pentry[b], layer), w->ppos[b],
                        q + (size_t)w->pindptr[b] * w->row_floats,
                        (uint32_t)(w->pindptr[b + 1] - w->pindptr[b]));
  }
  for (uint32_t b = 0; b < w->pn; b++)
    w->next[(size_t)w->pentry[b] * L + layer] += w->pindptr[b + 1] - w->pindptr[b];
  w->pdone[layer] = 1;
  return RKV_OK;
}

rkv_status rkvi_qw_plan_check(const rkv_qwindow *w) {
  if (!w->planned) return RKV_OK;
  char *err = ((rkv_qwindow *)w)->err;
  for (uint32_t b = 0; b < w->pn; b++) {
    const int32_t e = w->pentry[b];
    if (e < 0 || (uint32_t)e >= w->cfg.max_seqs || w->ids[e] < 0)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "plan: sequence %u names a dead entry %d", b, e);
    if (w->pindptr[b + 1] < w->pindptr[b])
      return rkvi_fail(err, RKV_ERR_CORRUPT, "plan: indptr decreases at %u", b);
  }
  return RKV_OK;
}

#ifndef RKV_HAVE_CUDA
rkv_status rkvi_qwindow_cuda_push(rkv_backend *be, const rkvi_qwindow_ring *ring, uint32_t layer,
                                  const float *q, const int32_t *indptr, const int32_t *slots,
                                  const int64_t *pos, uint32_t n) {
  (void)ring, (void)layer, (void)q, (void)indptr, (void)slots, (void)pos, (void)n;
  if (!be) return RKV_ERR_INVALID_ARG;
  return rkvi_fail(be->err, RKV_ERR_UNSUPPORTED,
                   "query window push: librkv was built without CUDA");
}
#endif
