/* rkv_comm, the generic layer: configuration checks, the single-rank transport, the sticky
 * failed state, and the per-step agreement (MIN of free blocks + step-plan hash check) built
 * on one all-reduce. Transports (comm_mpi.c, comm_nccl.c) only move small uint64 arrays
 * with a deadline; they stage them in buffers they own, so a timed-out transfer that lands
 * late can never write into caller memory. */
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"

#define RKV_COMM_DEFAULT_TIMEOUT_S 60.0

double rkvi_comm_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void rkvi_comm_backoff(uint64_t iteration) {
  if (iteration < 1024) return;
  if (iteration < 65536) {
    /* Yield rather than sleep: a short nanosleep lasts ~50 us (timer slack), while a yield
     * hands the core straight to a peer rank sharing it (oversubscribed CI). */
    sched_yield();
    return;
  }
  struct timespec ts = {0, 100000L};
  nanosleep(&ts, NULL);
}

/* ---- single: world size 1 ----------------------------------------------------------------- */

static rkv_status single_allreduce(rkv_comm *c, rkv_comm_op op, const uint64_t *send,
                                   uint64_t *recv, uint32_t count) {
  (void)c;
  (void)op;
  memmove(recv, send, count * sizeof(uint64_t));
  return RKV_OK;
}

static rkv_status single_allgather(rkv_comm *c, const uint64_t *send, uint64_t *recv,
                                   uint32_t count) {
  (void)c;
  memmove(recv, send, count * sizeof(uint64_t));
  return RKV_OK;
}

static void single_abort(rkv_comm *c, int errorcode) {
  (void)c, (void)errorcode;
}
static void single_destroy(rkv_comm *c) {
  (void)c;
}

static const rkv_comm_vtbl kSingleVtbl = {single_allreduce, single_allgather, single_abort,
                                          single_destroy};

/* ---- handle lifetime -------------------------------------------------------------------- */

/* Bytes of the allocated divergence buffer (0: the inline array serves). */
static size_t diverge_bytes(const rkv_comm *c) {
  return c->size > RKVI_COMM_DIVERGE_INLINE ? (size_t)c->size * 2 * sizeof(uint64_t) : 0;
}

static void copy_err(char *dst, size_t len, const char *src) {
  if (!dst || len == 0) return;
  snprintf(dst, len, "%s", src);
}

rkv_status rkv_comm_create(const rkv_comm_config *cfg, rkv_comm **out, char *err_out,
                           size_t err_len) {
  static const rkv_comm_config kDefault = RKV_COMM_CONFIG_INIT;
  char err[RKV_ERRBUF] = "";
  rkv_status ret;
  if (err_out && err_len) err_out[0] = '\0';
  if (!out) {
    copy_err(err_out, err_len, "rkv_comm_create: out is NULL");
    return RKV_ERR_INVALID_ARG;
  }
  *out = NULL;
  if (!cfg) cfg = &kDefault;
  if (cfg->struct_size < sizeof(rkv_comm_config)) {
    ret = rkvi_fail(err, RKV_ERR_INVALID_ARG,
                    "rkv_comm_create: struct_size %u < %zu (use RKV_COMM_CONFIG_INIT)",
                    cfg->struct_size, sizeof(rkv_comm_config));
    copy_err(err_out, err_len, err);
    return ret;
  }
  if ((unsigned)cfg->kind >= RKV_COMM_KIND_COUNT_ || !(cfg->timeout_s >= 0.0)) {
    ret = rkvi_fail(err, RKV_ERR_INVALID_ARG, "rkv_comm_create: bad kind %d or timeout %g",
                    (int)cfg->kind, cfg->timeout_s);
    copy_err(err_out, err_len, err);
    return ret;
  }
  rkv_comm *c = rkvi_calloc(cfg->allocator, sizeof(*c), _Alignof(max_align_t));
  if (!c) {
    copy_err(err_out, err_len, "rkv_comm_create: out of host memory");
    return RKV_ERR_NO_MEMORY;
  }
  if (cfg->allocator) c->alloc = *cfg->allocator, c->has_alloc = true;
  if (cfg->logger) c->logger = *cfg->logger, c->has_logger = true;
  c->kind = cfg->kind;
  c->timeout_s = cfg->timeout_s > 0.0 ? cfg->timeout_s : RKV_COMM_DEFAULT_TIMEOUT_S;
  switch (cfg->kind) {
    case RKV_COMM_SINGLE:
      c->rank = 0;
      c->size = 1;
      c->v = &kSingleVtbl;
      ret = RKV_OK;
      break;
    case RKV_COMM_MPI:
      ret = rkvi_comm_mpi_init(c, cfg);
      break;
    case RKV_COMM_NCCL:
      ret = rkvi_comm_nccl_init(c, cfg);
      break;
    case RKV_COMM_LOCAL:
      ret = rkvi_comm_local_init(c, cfg);
      break;
    default:
      ret = RKV_ERR_INTERNAL;
      break;
  }
  if (ret == RKV_OK) {
    c->diverge = diverge_bytes(c)
                     ? rkvi_alloc(rkvi_comm_alloc(c), diverge_bytes(c), _Alignof(uint64_t))
                     : c->diverge_inline;
    if (!c->diverge) {
      /* only past RKVI_COMM_DIVERGE_INLINE ranks: this rank fails alone after a collective
       * init, and its peers time out at their first collective */
      c->v->destroy(c);
      snprintf(c->err, sizeof c->err, "comm: out of memory");
      ret = RKV_ERR_NO_MEMORY;
    }
  }
  if (ret != RKV_OK) {
    copy_err(err_out, err_len, c->err);
    rkvi_free(cfg->allocator, c, sizeof(*c));
    return ret;
  }
  rkvi_log(rkvi_comm_logger(c), RKV_LOG_INFO, "comm %s: rank %d of %d, timeout %.1f s",
           rkv_comm_kind_name(c->kind), (int)c->rank, (int)c->size, c->timeout_s);
  *out = c;
  return RKV_OK;
}

void rkv_comm_destroy(rkv_comm *c) {
  if (!c) return;
  if (c->v) c->v->destroy(c);
  if (diverge_bytes(c)) rkvi_free(rkvi_comm_alloc(c), c->diverge, diverge_bytes(c));
  rkv_allocator a = c->alloc;
  rkvi_free(c->has_alloc ? &a : NULL, c, sizeof(*c));
}

void rkv_comm_abort(rkv_comm *c, int errorcode) {
  if (!c) return;
  c->failed = true;
  if (c->v) c->v->abort(c, errorcode);
}

int32_t rkv_comm_rank(const rkv_comm *c) {
  return c ? c->rank : -1;
}
int32_t rkv_comm_size(const rkv_comm *c) {
  return c ? c->size : 0;
}
rkv_comm_kind rkv_comm_get_kind(const rkv_comm *c) {
  return c ? c->kind : RKV_COMM_KIND_COUNT_;
}
bool rkv_comm_is_failed(const rkv_comm *c) {
  return c ? c->failed : true;
}
const char *rkv_comm_last_error(const rkv_comm *c) {
  return c ? c->err : "NULL comm";
}

static const char *const kKindNames[RKV_COMM_KIND_COUNT_] = {"single", "mpi", "nccl", "local"};

const char *rkv_comm_kind_name(rkv_comm_kind k) {
  return (unsigned)k < RKV_COMM_KIND_COUNT_ ? kKindNames[k] : "invalid";
}

rkv_status rkv_comm_kind_parse(const char *name, rkv_comm_kind *out) {
  if (!name || !out) return RKV_ERR_INVALID_ARG;
  for (unsigned k = 0; k < RKV_COMM_KIND_COUNT_; k++) {
    if (strcmp(name, kKindNames[k]) == 0) {
      *out = (rkv_comm_kind)k;
      return RKV_OK;
    }
  }
  return RKV_ERR_INVALID_ARG;
}

/* ---- collectives ------------------------------------------------------------------------ */

static rkv_status check_ready(rkv_comm *c, const void *send, const void *recv, uint32_t count,
                              const char *what) {
  if (!send || !recv || count == 0)
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG, "%s: NULL buffer or zero count", what);
  if (count > RKV_COMM_MAX_COUNT)
    return rkvi_fail(c->err, RKV_ERR_CAPACITY, "%s: count %u > RKV_COMM_MAX_COUNT %d", what, count,
                     RKV_COMM_MAX_COUNT);
  if (c->failed)
    return rkvi_fail(c->err, RKV_ERR_STATE,
                     "%s: the communicator failed earlier (timeout or transport error); "
                     "call rkv_comm_abort",
                     what);
  return RKV_OK;
}

/* A transport error poisons the handle: peers may be inside a collective we left. */
static rkv_status note_failure(rkv_comm *c, rkv_status s) {
  if (s != RKV_OK) {
    c->failed = true;
    rkvi_log(rkvi_comm_logger(c), RKV_LOG_ERROR, "comm %s rank %d: %s", rkv_comm_kind_name(c->kind),
             (int)c->rank, c->err);
  }
  return s;
}

rkv_status rkv_comm_allreduce_u64(rkv_comm *c, rkv_comm_op op, const uint64_t *send, uint64_t *recv,
                                  uint32_t count) {
  if (!c) return RKV_ERR_INVALID_ARG;
  if ((unsigned)op >= RKV_COMM_OP_COUNT_)
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG, "rkv_comm_allreduce_u64: bad op %d", (int)op);
  RKV_TRY(check_ready(c, send, recv, count, "rkv_comm_allreduce_u64"));
  return note_failure(c, c->v->allreduce(c, op, send, recv, count));
}

rkv_status rkv_comm_allgather_u64(rkv_comm *c, const uint64_t *send, uint64_t *recv,
                                  uint32_t count) {
  if (!c) return RKV_ERR_INVALID_ARG;
  RKV_TRY(check_ready(c, send, recv, count, "rkv_comm_allgather_u64"));
  return note_failure(c, c->v->allgather(c, send, recv, count));
}

rkv_status rkv_comm_barrier(rkv_comm *c) {
  uint64_t one = 1, sum = 0;
  return rkv_comm_allreduce_u64(c, RKV_COMM_OP_SUM, &one, &sum, 1);
}

/* Names the ranks whose (step, hash) differs from rank 0's (every rank joins its all-gather). */
static rkv_status report_divergence(rkv_comm *c, uint64_t step, uint64_t hash,
                                    const uint64_t *red) {
  uint64_t mine[2] = {step, hash};
  uint64_t *all = c->diverge;
  char buf[RKV_ERRBUF];
  int n = snprintf(buf, sizeof buf,
                   "TP step-plan divergence: steps %llu..%llu, hashes %016llx..%016llx differ "
                   "across %d ranks",
                   (unsigned long long)red[1], (unsigned long long)~red[3],
                   (unsigned long long)red[2], (unsigned long long)~red[4], (int)c->size);
  rkv_status s = rkv_comm_allgather_u64(c, mine, all, 2);
  if (s != RKV_OK) return s; /* the transport failed too: report that (handle is now failed) */
  n = snprintf(buf, sizeof buf, "TP step-plan divergence: rank 0 at step %llu hash %016llx;",
               (unsigned long long)all[0], (unsigned long long)all[1]);
  for (int32_t r = 1; r < c->size && n > 0 && (size_t)n < sizeof buf; r++) {
    if (all[2 * r] == all[0] && all[2 * r + 1] == all[1]) continue;
    n += snprintf(buf + n, sizeof buf - (size_t)n, " rank %d step %llu hash %016llx;", (int)r,
                  (unsigned long long)all[2 * r], (unsigned long long)all[2 * r + 1]);
  }
  rkvi_fail(c->err, RKV_ERR_CORRUPT, "%s schedulers disagree; stopping before KV is corrupted",
            buf);
  rkvi_log(rkvi_comm_logger(c), RKV_LOG_ERROR, "comm rank %d: %s", (int)c->rank, c->err);
  return RKV_ERR_CORRUPT;
}

rkv_status rkv_comm_step_sync(rkv_comm *c, uint64_t step, uint64_t plan_hash, uint64_t local_free,
                              uint64_t *global_free) {
  if (!c) return RKV_ERR_INVALID_ARG;
  /* MIN over (x, ~x) yields min and max together, so one all-reduce both bounds admission
   * and proves all ranks hold the same (step, hash). */
  uint64_t v[5] = {local_free, step, plan_hash, ~step, ~plan_hash};
  uint64_t r[5];
  RKV_TRY(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MIN, v, r, 5));
  if (r[1] != ~r[3] || r[2] != ~r[4]) return report_divergence(c, step, plan_hash, r);
  if (global_free) *global_free = r[0];
  return RKV_OK;
}

/* Stubs for transports this build lacks. */
#ifndef RKV_HAVE_MPI
rkv_status rkvi_comm_mpi_init(rkv_comm *c, const rkv_comm_config *cfg) {
  (void)cfg;
  return rkvi_fail(c->err, RKV_ERR_UNSUPPORTED, "rkv_comm_create: this build has no MPI");
}
#endif
#ifndef RKV_HAVE_NCCL
rkv_status rkvi_comm_nccl_init(rkv_comm *c, const rkv_comm_config *cfg) {
  (void)cfg;
  return rkvi_fail(c->err, RKV_ERR_UNSUPPORTED,
                   "rkv_comm_create: this build has no NCCL (needs CUDA and libnccl)");
}
#endif
