/* When a pinned staging buffer may be rewritten: an upload from it reads the host bytes until
 * the stream gets there, so the buffer is free once the backend has synced after the last
 * upload. The fence remembers whether an upload was enqueued and the backend's sync count then
 * (rkv_backend_sync_count); if anyone synced since (an engine's end-of-step sync), reuse needs
 * no wait of its own. Used by every staging arena of the library (the executor's step
 * metadata, the evictor's descriptors, the query window's plan). Not installed. */
#ifndef RKV_STAGE_FENCE_H
#define RKV_STAGE_FENCE_H

#include <rkv/runtime.h>

typedef struct rkvi_fence {
  bool armed;     /* an upload from the buffer was enqueued ... */
  uint64_t syncs; /* ... when the backend had synced this many times */
} rkvi_fence;

/* Call after enqueueing an upload from the buffer. */
static inline void rkvi_fence_arm(rkvi_fence *f, const rkv_backend *be) {
  f->armed = true;
  f->syncs = rkv_backend_sync_count(be);
}

/* Call before rewriting the buffer: syncs only when an upload is enqueued and the backend has
 * not synced since. A failed sync leaves the fence armed. */
static inline rkv_status rkvi_fence_wait(rkvi_fence *f, rkv_backend *be) {
  if (f->armed && rkv_backend_sync_count(be) == f->syncs) {
    const rkv_status st = rkv_backend_sync(be);
    if (st != RKV_OK) return st;
  }
  f->armed = false;
  return RKV_OK;
}

#endif /* RKV_STAGE_FENCE_H */
