/* rkv_comm over NCCL (one CUDA device per rank). The unique id travels by MPI (rank 0
 * broadcasts it with a polled MPI_Ibcast) or by a file that rank 0 writes atomically and the
 * others poll. The communicator is created non-blocking (ncclConfig_t.blocking = 0) so
 * initialisation and every collective are polled against a deadline with
 * ncclCommGetAsyncError / cudaStreamQuery; on timeout or an async error the communicator is
 * aborted (ncclCommAbort) and the handle fails: the process never hangs in NCCL.
 * Collectives stage through a small device buffer owned by the handle. */
#ifdef RKV_HAVE_NCCL

/* nccl.h declares a few functions with empty parameter lists. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cuda_runtime.h>
#include <nccl.h>
#pragma GCC diagnostic pop
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#ifdef RKV_HAVE_MPI
#include <mpi.h>
#endif

#include "comm_impl.h"
#include "cuda_device.h"

/* libnccl is opened on the first NCCL communicator instead of being linked: it is a CUDA
 * library, and a link-time dependency would make every program that uses librkv.so need it
 * to start, CPU-only ones included (docs/PACKAGING.md). The table is process-wide because the
 * library is; it is written once (pthread_once) and only read afterwards. Only the functions
 * below are used; NCCL_CONFIG_INITIALIZER and the types come from nccl.h as before. */
typedef struct nccl_api {
  ncclResult_t (*GetUniqueId)(ncclUniqueId *id);
  ncclResult_t (*CommInitRankConfig)(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank,
                                     ncclConfig_t *config);
  ncclResult_t (*CommFinalize)(ncclComm_t comm);
  ncclResult_t (*CommDestroy)(ncclComm_t comm);
  ncclResult_t (*CommAbort)(ncclComm_t comm);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t comm, ncclResult_t *async_error);
  const char *(*GetErrorString)(ncclResult_t result);
  const char *(*GetLastError)(ncclComm_t comm);
  ncclResult_t (*AllReduce)(const void *send, void *recv, size_t count, ncclDataType_t type,
                            ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
  ncclResult_t (*AllGather)(const void *send, void *recv, size_t count, ncclDataType_t type,
                            ncclComm_t comm, cudaStream_t stream);
} nccl_api;

#ifndef RKV_NCCL_SONAME
#define RKV_NCCL_SONAME "libnccl.so.2"
#endif

static nccl_api g_nccl;
static bool g_nccl_loaded;
static char g_nccl_error[512];
static pthread_once_t g_nccl_once = PTHREAD_ONCE_INIT;

/* Resolves one symbol into *slot (a function pointer of the right type). memcpy because ISO C
 * has no conversion from dlsym's object pointer to a function pointer. */
static bool nccl_sym(void *lib, const char *name, void *slot, size_t size) {
  void *sym = dlsym(lib, name);
  if (!sym) {
    snprintf(g_nccl_error, sizeof g_nccl_error, "%s has no %s (NCCL >= 2.14 is needed)",
             RKV_NCCL_SONAME, name);
    return false;
  }
  memcpy(slot, &sym, size);
  return true;
}

#define NCCL_SYM(lib, f) nccl_sym(lib, "nccl" #f, &g_nccl.f, sizeof g_nccl.f)

static void nccl_load(void) {
  /* The soname first (ld.so.conf, LD_LIBRARY_PATH, the caller's runpath), then the library
   * configure found, for toolkits that are not in the loader's search path. */
  void *lib = dlopen(RKV_NCCL_SONAME, RTLD_NOW | RTLD_LOCAL);
#ifdef RKV_NCCL_FALLBACK_PATH
  if (!lib) lib = dlopen(RKV_NCCL_FALLBACK_PATH, RTLD_NOW | RTLD_LOCAL);
#endif
  if (!lib) {
    const char *why = dlerror();
    snprintf(g_nccl_error, sizeof g_nccl_error, "cannot load %s: %s", RKV_NCCL_SONAME,
             why ? why : "unknown error");
    return;
  }
  if (NCCL_SYM(lib, GetUniqueId) && NCCL_SYM(lib, CommInitRankConfig) &&
      NCCL_SYM(lib, CommFinalize) && NCCL_SYM(lib, CommDestroy) && NCCL_SYM(lib, CommAbort) &&
      NCCL_SYM(lib, CommGetAsyncError) && NCCL_SYM(lib, GetErrorString) &&
      NCCL_SYM(lib, GetLastError) && NCCL_SYM(lib, AllReduce) && NCCL_SYM(lib, AllGather)) {
    g_nccl_loaded = true;
    return;
  }
  /* Kept open: a partly resolved library is never used, and closing it could run NCCL's
   * destructors in a process that did not ask for NCCL. */
}

typedef struct nccl_impl {
  ncclComm_t comm; /* NULL after an abort */
  cudaStream_t stream;
  bool own_stream;
  bool owns_mpi_init;
  int device;
  size_t bytes;    /* this struct + host gather buffer */
  uint64_t *d_buf; /* device [2 * MAX + size * MAX]: send, recv, gather */
  uint64_t h_send[RKV_COMM_MAX_COUNT];
  uint64_t h_recv[RKV_COMM_MAX_COUNT];
  uint64_t *h_gather; /* host [size * MAX] */
} nccl_impl;

static rkv_status nccl_fail(rkv_comm *c, ncclResult_t r, const char *what) {
  nccl_impl *n = c->impl;
  const char *last = n && n->comm ? g_nccl.GetLastError(n->comm) : NULL;
  return rkvi_fail(c->err, RKV_ERR_COMM, "comm nccl rank %d: %s: %s%s%s", (int)c->rank, what,
                   g_nccl.GetErrorString(r), last && last[0] ? ": " : "", last ? last : "");
}

/* Reports e and clears the thread's last CUDA error (a sticky one stays): left set, the next
 * launch check of this thread, in the backend's kernels too, would take it for its own. */
static rkv_status cuda_fail(rkv_comm *c, cudaError_t e, const char *what) {
  (void)cudaGetLastError();
  return rkvi_fail(c->err, RKV_ERR_CUDA, "comm nccl rank %d: %s: %s", (int)c->rank, what,
                   cudaGetErrorString(e));
}

static void abort_comm(nccl_impl *n) {
  if (n && n->comm) {
    g_nccl.CommAbort(n->comm);
    n->comm = NULL;
  }
}

static rkv_status timeout_fail(rkv_comm *c, const char *what) {
  abort_comm(c->impl);
  return rkvi_fail(c->err, RKV_ERR_TIMEOUT,
                   "comm nccl rank %d of %d: %s did not complete within %.1f s (a peer died or "
                   "stopped calling collectives); communicator aborted",
                   (int)c->rank, (int)c->size, what, c->timeout_s);
}

/* Waits until NCCL has finished the non-blocking call in flight (init, enqueue, finalize). */
static rkv_status wait_async(rkv_comm *c, const char *what) {
  nccl_impl *n = c->impl;
  double deadline = rkvi_comm_now() + c->timeout_s;
  for (uint64_t it = 0;; it++) {
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = g_nccl.CommGetAsyncError(n->comm, &st);
    if (r != ncclSuccess) st = r;
    if (st == ncclSuccess) return RKV_OK;
    if (st != ncclInProgress) {
      rkv_status s = nccl_fail(c, st, what);
      abort_comm(n);
      return s;
    }
    if (rkvi_comm_now() > deadline) return timeout_fail(c, what);
    rkvi_comm_backoff(it);
  }
}

/* Waits for the stream to drain while watching for NCCL async errors. */
static rkv_status wait_stream(rkv_comm *c, const char *what) {
  nccl_impl *n = c->impl;
  double deadline = rkvi_comm_now() + c->timeout_s;
  for (uint64_t it = 0;; it++) {
    cudaError_t e = cudaStreamQuery(n->stream);
    if (e == cudaSuccess) return RKV_OK;
    /* "not ready" is no error: not left for a later launch check to find (as PyTorch) */
    if (e == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady)
      (void)cudaGetLastError();
    if (e != cudaErrorNotReady) {
      rkv_status s = cuda_fail(c, e, what);
      abort_comm(n);
      return s;
    }
    ncclResult_t st = ncclSuccess;
    if (g_nccl.CommGetAsyncError(n->comm, &st) == ncclSuccess && st != ncclSuccess &&
        st != ncclInProgress) {
      rkv_status s = nccl_fail(c, st, what);
      abort_comm(n);
      return s;
    }
    if (rkvi_comm_now() > deadline) return timeout_fail(c, what);
    rkvi_comm_backoff(it);
  }
}

/* Runs one staged collective: host send -> device, launch, poll, device -> host. */
static rkv_status run_collective(rkv_comm *c, bool gather, rkv_comm_op op, uint32_t count) {
  nccl_impl *n = c->impl;
  static const ncclRedOp_t kOps[RKV_COMM_OP_COUNT_] = {ncclMin, ncclMax, ncclSum};
  const char *what = gather ? "ncclAllGather" : "ncclAllReduce";
  uint64_t *d_send = n->d_buf, *d_recv = n->d_buf + RKV_COMM_MAX_COUNT;
  uint64_t *d_gather = n->d_buf + 2 * RKV_COMM_MAX_COUNT;
  int prev = -1;
  rkv_status ret = RKV_OK;
  cudaError_t e = (cudaError_t)rkvi_cuda_device_enter(n->device, &prev);
  if (e == cudaSuccess)
    e = cudaMemcpyAsync(d_send, n->h_send, count * sizeof(uint64_t), cudaMemcpyHostToDevice,
                        n->stream);
  if (e != cudaSuccess) {
    ret = cuda_fail(c, e, "staging copy to device");
    goto out;
  }
  ncclResult_t r =
      gather ? g_nccl.AllGather(d_send, d_gather, count, ncclUint64, n->comm, n->stream)
             : g_nccl.AllReduce(d_send, d_recv, count, ncclUint64, kOps[op], n->comm, n->stream);
  if (r != ncclSuccess && r != ncclInProgress) {
    ret = nccl_fail(c, r, what);
    abort_comm(n);
    goto out;
  }
  if (r == ncclInProgress) RKV_TRY_GOTO(wait_async(c, what), out);
  /* Copy back only after the collective finished: a device-to-pageable copy would block the
   * host behind a collective that may never end. */
  RKV_TRY_GOTO(wait_stream(c, what), out);
  size_t back = gather ? (size_t)c->size * count * sizeof(uint64_t) : count * sizeof(uint64_t);
  e = cudaMemcpyAsync(gather ? (void *)n->h_gather : (void *)n->h_recv, gather ? d_gather : d_recv,
                      back, cudaMemcpyDeviceToHost, n->stream);
  if (e != cudaSuccess) {
    ret = cuda_fail(c, e, "staging copy to host");
    goto out;
  }
  RKV_TRY_GOTO(wait_stream(c, "staging copy to host"), out);
out:
  rkvi_cuda_device_leave(prev);
  return ret;
}

static rkv_status nccl_allreduce(rkv_comm *c, rkv_comm_op op, const uint64_t *send, uint64_t *recv,
                                 uint32_t count) {
  nccl_impl *n = c->impl;
  memcpy(n->h_send, send, count * sizeof(uint64_t));
  RKV_TRY(run_collective(c, false, op, count));
  memcpy(recv, n->h_recv, count * sizeof(uint64_t));
  return RKV_OK;
}

static rkv_status nccl_allgather(rkv_comm *c, const uint64_t *send, uint64_t *recv,
                                 uint32_t count) {
  nccl_impl *n = c->impl;
  memcpy(n->h_send, send, count * sizeof(uint64_t));
  RKV_TRY(run_collective(c, true, RKV_COMM_OP_MIN, count));
  memcpy(recv, n->h_gather, (size_t)c->size * count * sizeof(uint64_t));
  return RKV_OK;
}

static void nccl_abort(rkv_comm *c, int errorcode) {
  rkvi_log(rkvi_comm_logger(c), RKV_LOG_ERROR, "comm nccl rank %d: aborting (code %d)",
           (int)c->rank, errorcode);
  abort_comm(c->impl);
}

static void nccl_destroy(rkv_comm *c) {
  nccl_impl *n = c->impl;
  if (!n) return;
  if (n->comm && !c->failed) {
    ncclResult_t r = g_nccl.CommFinalize(n->comm);
    if (r == ncclInProgress)
      r = wait_async(c, "ncclCommFinalize") == RKV_OK ? ncclSuccess : ncclInternalError;
    if (n->comm && r == ncclSuccess) {
      g_nccl.CommDestroy(n->comm);
      n->comm = NULL;
    }
  }
  abort_comm(n);
  if (n->d_buf) cudaFree(n->d_buf);
  if (n->own_stream && n->stream) cudaStreamDestroy(n->stream);
#ifdef RKV_HAVE_MPI
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (n->owns_mpi_init && !finalized) MPI_Finalize();
#endif
  rkvi_free(rkvi_comm_alloc(c), n, n->bytes);
  c->impl = NULL;
}

static const rkv_comm_vtbl kNcclVtbl = {nccl_allreduce, nccl_allgather, nccl_abort, nccl_destroy};

/* ---- unique-id bootstrap ---------------------------------------------------------------- */

#ifdef RKV_HAVE_MPI
static rkv_status bootstrap_mpi(rkv_comm *c, const rkv_comm_config *cfg, ncclUniqueId *id,
                                bool *owns_init) {
  int inited = 0, rc;
  MPI_Initialized(&inited);
  if (!inited) {
    int provided = 0;
    rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS)
      return rkvi_fail(c->err, RKV_ERR_COMM, "comm nccl: MPI_Init_thread failed (%d)", rc);
    *owns_init = true;
  }
  MPI_Comm comm = cfg->mpi_comm ? *(const MPI_Comm *)cfg->mpi_comm : MPI_COMM_WORLD;
  int rank = 0, size = 0;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &size) != MPI_SUCCESS)
    return rkvi_fail(c->err, RKV_ERR_COMM, "comm nccl: MPI_Comm_rank/size failed");
  c->rank = rank;
  c->size = size;
  /* MPI may not cancel a pending broadcast, so its buffer is heap memory that a timeout
   * leaks rather than a stack slot a late transfer could overwrite. */
  ncclUniqueId *buf = rkvi_calloc(rkvi_comm_alloc(c), sizeof(*buf), _Alignof(max_align_t));
  if (!buf) return rkvi_fail(c->err, RKV_ERR_NO_MEMORY, "comm nccl: out of host memory");
  if (rank == 0) {
    ncclResult_t r = g_nccl.GetUniqueId(buf);
    if (r != ncclSuccess) {
      rkvi_free(rkvi_comm_alloc(c), buf, sizeof(*buf));
      return nccl_fail(c, r, "ncclGetUniqueId");
    }
  }
  MPI_Request req;
  rc = MPI_Ibcast(buf, (int)sizeof(*buf), MPI_BYTE, 0, comm, &req);
  if (rc != MPI_SUCCESS) {
    rkvi_free(rkvi_comm_alloc(c), buf, sizeof(*buf));
    return rkvi_fail(c->err, RKV_ERR_COMM, "comm nccl: MPI_Ibcast of the unique id failed (%d)",
                     rc);
  }
  double deadline = rkvi_comm_now() + c->timeout_s;
  for (uint64_t it = 0;; it++) {
    int done = 0;
    if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
      return rkvi_fail(c->err, RKV_ERR_COMM, "comm nccl: MPI_Test on the id broadcast failed");
    if (done) {
      *id = *buf;
      rkvi_free(rkvi_comm_alloc(c), buf, sizeof(*buf));
      return RKV_OK;
    }
    if (rkvi_comm_now() > deadline)
      return rkvi_fail(c->err, RKV_ERR_TIMEOUT,
                       "comm nccl rank %d: the unique-id broadcast did not finish within %.1f s",
                       rank, c->timeout_s);
    rkvi_comm_backoff(it);
  }
}
#endif

static rkv_status bootstrap_file(rkv_comm *c, const rkv_comm_config *cfg, ncclUniqueId *id) {
  c->rank = cfg->rank;
  c->size = cfg->world_size;
  const char *path = cfg->nccl_id_path;
  if (c->rank == 0) {
    ncclResult_t r = g_nccl.GetUniqueId(id);
    if (r != ncclSuccess) return nccl_fail(c, r, "ncclGetUniqueId");
    if (c->size == 1 || !path) return RKV_OK;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
      return rkvi_fail(c->err, RKV_ERR_INVALID_ARG, "comm nccl: nccl_id_path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f) return rkvi_fail(c->err, RKV_ERR_IO, "comm nccl: cannot write %s", tmp);
    size_t w = fwrite(id, 1, sizeof(*id), f);
    if (fclose(f) != 0 || w != sizeof(*id) || rename(tmp, path) != 0)
      return rkvi_fail(c->err, RKV_ERR_IO, "comm nccl: cannot publish the unique id at %s", path);
    return RKV_OK;
  }
  double deadline = rkvi_comm_now() + c->timeout_s;
  for (;;) {
    FILE *f = fopen(path, "rb");
    if (f) {
      size_t got = fread(id, 1, sizeof(*id), f);
      fclose(f);
      if (got == sizeof(*id)) return RKV_OK;
    }
    if (rkvi_comm_now() > deadline)
      return rkvi_fail(c->err, RKV_ERR_TIMEOUT,
                       "comm nccl rank %d: no unique id appeared at %s within %.1f s", (int)c->rank,
                       path, c->timeout_s);
    struct timespec ts = {0, 10000000L};
    nanosleep(&ts, NULL);
  }
}

/* Rank 0 removes the published id once ncclCommInitRankConfig has returned on it: init is
 * collective, so every rank has read the file by then (or init failed and they give up too);
 * a job that reuses the path later cannot meet this job's stale id. Also after any failure
 * past the bootstrap. */
static void drop_id_file(const rkv_comm *c, const rkv_comm_config *cfg, rkv_comm_bootstrap boot) {
  if (boot == RKV_COMM_BOOTSTRAP_FILE && c->rank == 0 && c->size > 1 && cfg->nccl_id_path)
    (void)remove(cfg->nccl_id_path);
}

rkv_status rkvi_comm_nccl_init(rkv_comm *c, const rkv_comm_config *cfg) {
  rkv_comm_bootstrap boot = cfg->bootstrap;
  if (boot == RKV_COMM_BOOTSTRAP_AUTO) {
#ifdef RKV_HAVE_MPI
    boot = RKV_COMM_BOOTSTRAP_MPI;
#else
    boot = RKV_COMM_BOOTSTRAP_FILE;
#endif
  }
  if (boot == RKV_COMM_BOOTSTRAP_FILE &&
      (cfg->world_size < 1 || cfg->rank < 0 || cfg->rank >= cfg->world_size ||
       (cfg->world_size > 1 && !cfg->nccl_id_path)))
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG,
                     "rkv_comm_create(nccl): file bootstrap needs 0 <= rank %d < world_size %d "
                     "and nccl_id_path when world_size > 1",
                     (int)cfg->rank, (int)cfg->world_size);
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || cfg->cuda_device < 0 || cfg->cuda_device >= ndev)
    return rkvi_fail(c->err, RKV_ERR_CUDA,
                     "rkv_comm_create(nccl): CUDA device %d unusable (%d "
                     "devices): %s",
                     (int)cfg->cuda_device, ndev,
                     e == cudaSuccess ? "out of range" : cudaGetErrorString(e));

  pthread_once(&g_nccl_once, nccl_load);
  if (!g_nccl_loaded)
    return rkvi_fail(c->err, RKV_ERR_UNSUPPORTED, "rkv_comm_create(nccl): %s", g_nccl_error);

  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  bool owns_mpi_init = false;
  rkv_status ret;
  if (boot == RKV_COMM_BOOTSTRAP_MPI) {
#ifdef RKV_HAVE_MPI
    ret = bootstrap_mpi(c, cfg, &id, &owns_mpi_init);
#else
    ret = rkvi_fail(c->err, RKV_ERR_UNSUPPORTED, "rkv_comm_create(nccl): no MPI for bootstrap");
#endif
  } else {
    ret = bootstrap_file(c, cfg, &id);
  }
  if (ret != RKV_OK) goto fail_mpi;

  size_t gather_bytes = (size_t)c->size * RKV_COMM_MAX_COUNT * sizeof(uint64_t);
  size_t bytes = sizeof(nccl_impl) + gather_bytes;
  nccl_impl *n = rkvi_calloc(rkvi_comm_alloc(c), bytes, _Alignof(max_align_t));
  if (!n) {
    ret = rkvi_fail(c->err, RKV_ERR_NO_MEMORY, "rkv_comm_create(nccl): out of host memory");
    goto fail_mpi;
  }
  n->bytes = bytes;
  n->device = cfg->cuda_device;
  n->owns_mpi_init = owns_mpi_init;
  n->h_gather = (uint64_t *)(n + 1);
  c->impl = n;
  c->v = &kNcclVtbl;

  int prev = -1;
  e = (cudaError_t)rkvi_cuda_device_enter(n->device, &prev);
  if (e == cudaSuccess)
    e = cudaMalloc((void **)&n->d_buf, (2 * RKV_COMM_MAX_COUNT * sizeof(uint64_t)) + gather_bytes);
  if (e == cudaSuccess) {
    if (cfg->cuda_stream) {
      n->stream = (cudaStream_t)cfg->cuda_stream;
    } else {
      e = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
      n->own_stream = e == cudaSuccess;
    }
  }
  if (e != cudaSuccess) {
    ret = cuda_fail(c, e, "device buffer / stream");
    goto fail;
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = g_nccl.CommInitRankConfig(&n->comm, c->size, id, c->rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    ret = nccl_fail(c, r, "ncclCommInitRankConfig");
    goto fail;
  }
  ret = wait_async(c, "ncclCommInitRankConfig");
  if (ret != RKV_OK) goto fail;
  drop_id_file(c, cfg, boot);
  rkvi_cuda_device_leave(prev);
  return RKV_OK;

fail:
  drop_id_file(c, cfg, boot);
  rkvi_cuda_device_leave(prev);
  c->failed = true; /* destroy aborts instead of finalising */
  nccl_destroy(c);
  c->failed = false;
  c->v = NULL;
  return ret;
fail_mpi:
#ifdef RKV_HAVE_MPI
  /* After a timed-out broadcast a request is still pending: finalising could block. */
  if (owns_mpi_init && ret != RKV_ERR_TIMEOUT) MPI_Finalize();
#endif
  return ret;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int rkvi_comm_nccl_not_built;
#endif /* RKV_HAVE_NCCL */
