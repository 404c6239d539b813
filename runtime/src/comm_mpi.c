/* rkv_comm over MPI (CPU ranks). The handle works on its own duplicate of the caller's
 * communicator with MPI_ERRORS_RETURN, and runs every collective as a non-blocking
 * MPI_I* call polled with MPI_Test against a deadline: a peer that died or stopped calling
 * collectives becomes RKV_ERR_TIMEOUT on the survivors instead of a hang. (Open MPI usually
 * kills the whole job itself when a rank exits without MPI_Finalize; the deadline covers the
 * cases it does not notice, such as a rank stuck in a loop.) MPI forbids cancelling or
 * freeing a pending collective request, so its staging buffers outlive a timed-out handle. */
#ifdef RKV_HAVE_MPI

#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "comm_impl.h"

typedef struct mpi_impl {
  MPI_Comm comm;
  MPI_Request req;
  bool pending;   /* req is an unfinished collective (only after a timeout) */
  bool owns_init; /* this handle called MPI_Init_thread */
  size_t bytes;   /* size of this struct + its gather buffer */
  uint64_t send[RKV_COMM_MAX_COUNT];
  uint64_t recv[RKV_COMM_MAX_COUNT];
  uint64_t *gather; /* [size][RKV_COMM_MAX_COUNT] */
} mpi_impl;

static rkv_status mpi_fail(rkv_comm *c, int rc, const char *what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
  return rkvi_fail(c->err, RKV_ERR_COMM, "comm mpi rank %d: %s failed: %s", (int)c->rank, what,
                   msg);
}

/* Polls m->req until it completes, fails, or the deadline passes. */
static rkv_status mpi_wait(rkv_comm *c, mpi_impl *m, const char *what) {
  double deadline = rkvi_comm_now() + c->timeout_s;
  m->pending = true;
  for (uint64_t it = 0;; it++) {
    int done = 0;
    int rc = MPI_Test(&m->req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, what);
    if (done) {
      m->pending = false;
      return RKV_OK;
    }
    if (rkvi_comm_now() > deadline)
      return rkvi_fail(c->err, RKV_ERR_TIMEOUT,
                       "comm mpi rank %d of %d: %s did not complete within %.1f s (a peer rank "
                       "died, hung, or called a different collective); communicator failed",
                       (int)c->rank, (int)c->size, what, c->timeout_s);
    rkvi_comm_backoff(it);
  }
}

static rkv_status mpi_allreduce(rkv_comm *c, rkv_comm_op op, const uint64_t *send, uint64_t *recv,
                                uint32_t count) {
  mpi_impl *m = c->impl;
  static const char *const kWhat[RKV_COMM_OP_COUNT_] = {
      "MPI_Iallreduce(MIN)", "MPI_Iallreduce(MAX)", "MPI_Iallreduce(SUM)"};
  MPI_Op mop = op == RKV_COMM_OP_MIN ? MPI_MIN : op == RKV_COMM_OP_MAX ? MPI_MAX : MPI_SUM;
  memcpy(m->send, send, count * sizeof(uint64_t));
  int rc = MPI_Iallreduce(m->send, m->recv, (int)count, MPI_UINT64_T, mop, m->comm, &m->req);
  if (rc != MPI_SUCCESS) return mpi_fail(c, rc, kWhat[op]);
  RKV_TRY(mpi_wait(c, m, kWhat[op]));
  memcpy(recv, m->recv, count * sizeof(uint64_t));
  return RKV_OK;
}

static rkv_status mpi_allgather(rkv_comm *c, const uint64_t *send, uint64_t *recv, uint32_t count) {
  mpi_impl *m = c->impl;
  memcpy(m->send, send, count * sizeof(uint64_t));
  int rc = MPI_Iallgather(m->send, (int)count, MPI_UINT64_T, m->gather, (int)count, MPI_UINT64_T,
                          m->comm, &m->req);
  if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "MPI_Iallgather");
  RKV_TRY(mpi_wait(c, m, "MPI_Iallgather"));
  memcpy(recv, m->gather, (size_t)c->size * count * sizeof(uint64_t));
  return RKV_OK;
}

static void mpi_abort(rkv_comm *c, int errorcode) {
  mpi_impl *m = c->impl;
  rkvi_log(rkvi_comm_logger(c), RKV_LOG_ERROR, "comm mpi rank %d: aborting the job (code %d)",
           (int)c->rank, errorcode);
  MPI_Abort(m && m->comm != MPI_COMM_NULL ? m->comm : MPI_COMM_WORLD, errorcode);
}

static void mpi_destroy(rkv_comm *c) {
  mpi_impl *m = c->impl;
  if (!m) return;
  if (m->pending) {
    int done = 0;
    if (MPI_Test(&m->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) {
      /* MPI may still write into m->recv / m->gather: leak them rather than free memory a
       * late transfer could land in. */
      rkvi_log(rkvi_comm_logger(c), RKV_LOG_WARN,
               "comm mpi rank %d: destroying with a pending collective; leaking %zu bytes",
               (int)c->rank, m->bytes);
      c->impl = NULL;
      return;
    }
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
  if (!finalized && m->owns_init && !c->failed) MPI_Finalize();
  rkvi_free(rkvi_comm_alloc(c), m, m->bytes);
  c->impl = NULL;
}

static const rkv_comm_vtbl kMpiVtbl = {mpi_allreduce, mpi_allgather, mpi_abort, mpi_destroy};

rkv_status rkvi_comm_mpi_init(rkv_comm *c, const rkv_comm_config *cfg) {
  int inited = 0, finalized = 0, rc;
  bool owns_init = false;
  MPI_Finalized(&finalized);
  if (finalized)
    return rkvi_fail(c->err, RKV_ERR_STATE, "rkv_comm_create(mpi): MPI is already finalized");
  MPI_Initialized(&inited);
  if (!inited) {
    if (cfg->mpi_comm)
      return rkvi_fail(c->err, RKV_ERR_INVALID_ARG,
                       "rkv_comm_create(mpi): mpi_comm given but MPI is not initialised");
    int provided = 0;
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "MPI_Init_thread");
    owns_init = true;
  }
  MPI_Comm parent = cfg->mpi_comm ? *(const MPI_Comm *)cfg->mpi_comm : MPI_COMM_WORLD;
  int rank = 0, size = 0;
  rc = MPI_Comm_rank(parent, &rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(parent, &size);
  if (rc != MPI_SUCCESS) return mpi_fail(c, rc, "MPI_Comm_rank/size");
  c->rank = rank;
  c->size = size;

  size_t gather_bytes = (size_t)size * RKV_COMM_MAX_COUNT * sizeof(uint64_t);
  size_t bytes = sizeof(mpi_impl) + gather_bytes;
  mpi_impl *m = rkvi_calloc(rkvi_comm_alloc(c), bytes, _Alignof(max_align_t));
  if (!m) {
    if (owns_init) MPI_Finalize();
    return rkvi_fail(c->err, RKV_ERR_NO_MEMORY, "rkv_comm_create(mpi): out of host memory");
  }
  m->bytes = bytes;
  m->owns_init = owns_init;
  m->comm = MPI_COMM_NULL;
  m->gather = (uint64_t *)(m + 1);
  c->impl = m;
  c->v = &kMpiVtbl;

  /* The duplicate is collective too: use the non-blocking form so a missing rank times out
   * here rather than hanging at start-up. */
  rkv_status ret;
  rc = MPI_Comm_idup(parent, &m->comm, &m->req);
  if (rc != MPI_SUCCESS) {
    ret = mpi_fail(c, rc, "MPI_Comm_idup");
    goto fail;
  }
  ret = mpi_wait(c, m, "MPI_Comm_idup");
  if (ret != RKV_OK) goto fail;
  rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) {
    ret = mpi_fail(c, rc, "MPI_Comm_set_errhandler");
    goto fail;
  }
  return RKV_OK;

fail:
  if (m->pending) {
    c->impl = NULL; /* leaked on purpose, see mpi_destroy */
  } else {
    if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
    if (owns_init) MPI_Finalize();
    rkvi_free(rkvi_comm_alloc(c), m, bytes);
    c->impl = NULL;
  }
  c->v = NULL;
  return ret;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int rkvi_comm_mpi_not_built;
#endif /* RKV_HAVE_MPI */
