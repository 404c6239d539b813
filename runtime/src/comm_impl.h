/* Private interface between the generic rkv_comm layer (comm_core.c: argument checks, the
 * sticky failed state, the step-plan agreement) and its transports (comm_mpi.c, comm_nccl.c).
 * A transport moves staged uint64 buffers and reports timeouts; it never sees caller memory. */
#ifndef RKV_COMM_IMPL_H
#define RKV_COMM_IMPL_H

#include <rkv/comm.h>

#include "rkv_internal.h"

typedef struct rkv_comm_vtbl {
  /* recv may equal send (both staging buffers of the handle). */
  rkv_status (*allreduce)(rkv_comm *c, rkv_comm_op op, const uint64_t *send, uint64_t *recv,
                          uint32_t count);
  /* recv [size][count]. */
  rkv_status (*allgather)(rkv_comm *c, const uint64_t *send, uint64_t *recv, uint32_t count);
  void (*abort)(rkv_comm *c, int errorcode);
  void (*destroy)(rkv_comm *c);
} rkv_comm_vtbl;

#define RKVI_COMM_DIVERGE_INLINE 64

struct rkv_comm {
  rkv_comm_kind kind;
  int32_t rank;
  int32_t size;
  double timeout_s;
  bool failed;
  bool has_alloc;
  bool has_logger;
  rkv_allocator alloc;
  rkv_logger logger;
  const rkv_comm_vtbl *v;
  void *impl;
  /* [size][2]: every rank's (step, hash) when a step sync finds a divergence, so that every
   * rank joins that all-gather (one that could not allocate would pair its next collective
   * with the others' all-gather). Worlds of up to RKVI_COMM_DIVERGE_INLINE ranks use the
   * inline array; larger ones allocate at create. */
  uint64_t diverge_inline[2 * RKVI_COMM_DIVERGE_INLINE];
  uint64_t *diverge;
  char err[RKV_ERRBUF];
};

static inline const rkv_allocator *rkvi_comm_alloc(const rkv_comm *c) {
  return c->has_alloc ? &c->alloc : NULL;
}
static inline const rkv_logger *rkvi_comm_logger(const rkv_comm *c) {
  return c->has_logger ? &c->logger : NULL;
}

/* Monotonic seconds and a short sleep for polling loops. */
double rkvi_comm_now(void);
/* Waits a little longer the longer a wait lasts: spin first (collectives usually finish in
 * microseconds), then yield, then sleep 100 us so a stuck peer does not burn a core. */
void rkvi_comm_backoff(uint64_t iteration);

/* Transport constructors: fill c->rank, c->size, c->v, c->impl or return an error with the
 * reason in c->err. Built without the transport they return RKV_ERR_UNSUPPORTED. */
rkv_status rkvi_comm_mpi_init(rkv_comm *c, const rkv_comm_config *cfg);
rkv_status rkvi_comm_nccl_init(rkv_comm *c, const rkv_comm_config *cfg);
/* comm_local.c: threads of one process (always built). */
rkv_status rkvi_comm_local_init(rkv_comm *c, const rkv_comm_config *cfg);

#endif /* RKV_COMM_IMPL_H */
