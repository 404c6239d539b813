/* The evictor's state, shared by its host half (evictor.c), its device half
 * (evictor_device.c) and the emulated device's twin of the batched kernel (evictor_emu.c).
 * Private to the rkv module. */
#ifndef RKV_EVICTOR_INTERNAL_H
#define RKV_EVICTOR_INTERNAL_H

#include <rkv/buffer.h>
#include <rkv/evictor.h>

#include "evict_cuda_internal.h"
#include "rkv_internal.h"
#include "stage_fence.h"

/* One queued compression. */
typedef struct rkvi_evq {
  int64_t seq;
  int32_t layer; /* RKV_EVICTOR_ALL_LAYERS or one layer */
  rkv_evict_params params;
  rkv_evictor_window win; /* device pools, policies that read queries */
  bool from_window;       /* win is looked up in the evictor's query window at the run */
  int64_t win_pushed;     /* then: the fewest rows pushed into one of its layers */
  uint32_t launch;        /* device run: its parameter set's launch (rkvi_evdev_reserve) */
} rkvi_evq;

/* Device half: buffers of the pool's backend and the host arrays of one batched launch. */
typedef struct rkvi_evdev {
  rkv_buffer *desc;  /* DEVICE: the packed descriptors of a launch */
  rkv_buffer *ws;    /* DEVICE: the CUDA kernels' workspace */
  rkv_buffer *stage; /* HOST_PINNED: the descriptors before their one upload */
  /* The arena: each launch of a run packs its descriptors at its own offset (no launch waits
   * for another's upload); the next run reuses it from 0 once the backend has synced since
   * the last upload (the fence), else it syncs first. */
  rkvi_fence staged;
  size_t arena_used; /* bytes of the arena this run's launches took */
  uint32_t launches; /* distinct parameter sets that evict in the queue (reserve) */
  /* The most streams one launch takes (RKVI_EVICT_CUDA_MAX_STREAMS; tests lower it): a
   * parameter set with more is split into several launches at sequence boundaries. */
  uint32_t launch_streams;
  /* The longest R-KV stream a launch takes (RKVI_EVICT_CUDA_MAX_SIM_LEN; tests lower it) */
  int32_t sim_len_max;
  /* one launch (grown before the first cut of a run) */
  rkv_compact_map *maps;
  rkv_evict_cuda_stream *streams;
  int32_t *oldest; /* [streams] the ring row of each stream's oldest query (emulated device) */
  int32_t *old, *newb, *freed;
  size_t maps_cap, streams_cap, oldest_cap, old_cap, newb_cap, freed_cap; /* elements */
  /* the emulated kernel's scratch (evictor_emu.c) */
  void *escr[7];
  size_t escr_cap[7];
} rkvi_evdev;

struct rkv_evictor {
  rkv_evictor_config cfg;
  rkv_allocator alloc_copy;
  const rkv_allocator *al;
  rkv_blockmgr *bm;
  rkv_kv_pool *pool;
  rkv_backend *be;
  uint32_t L, Hq, Hkv, d, bs;
  bool device; /* the pool's memory is not the host's: the batched path */
  bool emu;    /* the emulated device: the batched kernel's host twin */
  rkvi_evq *q; /* [max_seqs] */
  uint32_t n_q;
  /* host path scratch: the eviction workspace and one layer's window (the row check) */
  void *ws;
  size_t ws_cap;
  float *qbuf;
  size_t qbuf_cap; /* bytes */
  rkvi_evdev *dev;
  char err[RKV_ERRBUF];
};

/* The policy table's row, as the public query returns it. */
rkv_evict_policy_info rkvi_evictor_policy(rkv_evict_policy p);

/* RKV_ERR_NO_BLOCKS (before any change) unless the fresh blocks the compaction of q's shared
 * leading blocks needs are free (evictor_run.c; both backends). */
rkv_status rkvi_evictor_fresh_check(rkv_evictor *ev, const rkvi_evq *q);

/* Device half (evictor_device.c). */
rkv_status rkvi_evdev_create(rkv_evictor *ev);
void rkvi_evdev_destroy(rkv_evictor *ev);
size_t rkvi_evdev_memory_bytes(const rkv_evictor *ev);
/* Groups the queue into launches (one per distinct parameter set that evicts) and grows
 * everything a run of it will allocate; capacity only, nothing observable. Every
 * rkvi_evdev_run follows one. */
rkv_status rkvi_evdev_reserve(rkv_evictor *ev);
/* Cuts every queued sequence on the host and launches one batch per parameter set (several
 * when a set holds more than launch_streams streams). */
rkv_status rkvi_evdev_run(rkv_evictor *ev, rkv_evictor_result *res);
/* Tests only: lowers the streams per launch (0 restores the default), so a small run splits
 * its launches the way a serving batch of 65535+ streams does. */
void rkvi_evictor_set_launch_streams(rkv_evictor *ev, uint32_t n);
/* Tests only: lowers the longest R-KV stream the device path takes (0 restores the default),
 * so a short stream meets the refusal a 4M-token one would. */
void rkvi_evictor_set_sim_len_max(rkv_evictor *ev, int32_t n);

/* The emulated device's twin of rkvi_evict_cuda_compress (evictor_emu.c): the scratch a
 * launch of ns streams of up to nmax tokens at granularity g needs, and the launch itself over the
 * batch as uploaded (descriptors read from device memory: the first `end` bytes of the
 * descriptor buffer hold them). */
rkv_status rkvi_evemu_sizes(const rkv_evictor *ev, const rkv_evict_params *p,
                            rkv_evict_granularity g, uint32_t ns, int32_t nmax, size_t sz[7]);
rkv_status rkvi_evemu_reserve(rkv_evictor *ev, const size_t sz[7]);
rkv_status rkvi_evemu_compress(rkv_evictor *ev, const rkv_evict_params *p,
                               const rkv_evict_cuda_batch *db, size_t end);

#endif /* RKV_EVICTOR_INTERNAL_H */
