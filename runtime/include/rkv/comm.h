/* librkv communicator: the few small collectives tensor-parallel ranks need to stay in lockstep.
 *
 * Under tensor parallelism every rank runs the same deterministic scheduler on the same request
 * stream, so ranks never ship block tables. They only agree on two numbers per step: the MIN of
 * their free-block counts (admission may not promise blocks some rank lacks) and a hash of the
 * step plan (a mismatch means the schedulers diverged; continuing would corrupt KV, so the
 * check fails loudly instead). Four implementations sit behind one handle:
 *   single  world size 1, no dependency (every build);
 *   mpi     CPU ranks over MPI (Open MPI);
 *   nccl    GPU ranks over NCCL, unique id bootstrapped through MPI or a file handshake;
 *   local   ranks that are threads of one process, meeting in a shared rkv_comm_local_group
 *           (the simulator's `--tp N` without mpirun, and tests).
 * Every collective has a deadline: a dead or stuck peer yields RKV_ERR_TIMEOUT, never a hang.
 * After a timeout or transport error the handle is "failed" (sticky): later collectives return
 * RKV_ERR_STATE and the caller should call rkv_comm_abort. Handles are not thread-safe; all
 * ranks must call the same collectives in the same order. */
#ifndef RKV_COMM_H
#define RKV_COMM_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_comm rkv_comm;
/* The meeting point of RKV_COMM_LOCAL ranks: one per group of threads, created before and
 * destroyed after every handle that uses it. */
typedef struct rkv_comm_local_group rkv_comm_local_group;

typedef enum rkv_comm_kind {
  RKV_COMM_SINGLE = 0, /* world size 1, no transport */
  RKV_COMM_MPI = 1,    /* MPI (needs rkv_build_has_mpi()) */
  RKV_COMM_NCCL = 2,   /* NCCL on one CUDA device per rank (needs rkv_build_has_nccl()) */
  RKV_COMM_LOCAL = 3,  /* threads of one process sharing an rkv_comm_local_group */
  RKV_COMM_KIND_COUNT_
} rkv_comm_kind;

typedef enum rkv_comm_op {
  RKV_COMM_OP_MIN = 0,
  RKV_COMM_OP_MAX = 1,
  RKV_COMM_OP_SUM = 2, /* wraps modulo 2^64 */
  RKV_COMM_OP_COUNT_
} rkv_comm_op;

/* How an NCCL communicator obtains its unique id. */
typedef enum rkv_comm_bootstrap {
  RKV_COMM_BOOTSTRAP_AUTO = 0, /* MPI when built with MPI; else FILE when nccl_id_path is set;
                                  else world size 1 */
  RKV_COMM_BOOTSTRAP_MPI = 1,  /* rank 0 broadcasts the id over MPI */
  RKV_COMM_BOOTSTRAP_FILE = 2  /* rank 0 writes nccl_id_path (atomic rename), others poll it */
} rkv_comm_bootstrap;

/* Largest element count of one collective: they are tiny by design (a few counters and
 * hashes), and the handle stages them through fixed buffers so a timed-out transfer can never
 * write into caller memory later. */
#define RKV_COMM_MAX_COUNT 64

#define RKV_COMM_CONFIG_VERSION 1
typedef struct rkv_comm_config {
  uint32_t struct_size; /* sizeof(rkv_comm_config) */
  rkv_comm_kind kind;
  double timeout_s; /* deadline of every collective and of initialisation; 0 = 60 s */
  /* MPI and MPI bootstrap: pointer to an MPI_Comm value (borrowed, duplicated inside). NULL =
   * MPI_COMM_WORLD; then, if MPI is not initialised yet, the library calls MPI_Init_thread
   * (MPI_THREAD_FUNNELED: use the handle from the creating thread) and this handle calls
   * MPI_Finalize on destroy, so destroy it after every other MPI user. */
  const void *mpi_comm;
  /* NCCL only. */
  int32_t cuda_device; /* device ordinal this rank drives */
  void *cuda_stream;   /* cudaStream_t to order collectives on (each collective then waits
                          for all work queued on it); NULL = the handle's own stream */
  rkv_comm_bootstrap bootstrap;
  /* FILE bootstrap: a fresh path per job on a filesystem all ranks see; read during create,
   * removed by rank 0 once every rank has joined. */
  const char *nccl_id_path;
  int32_t rank;                      /* FILE bootstrap and LOCAL: this rank (MPI: ignored) */
  int32_t world_size;                /* FILE bootstrap: number of ranks (LOCAL: the group's) */
  const rkv_allocator *allocator;    /* copied at create; NULL = libc */
  const rkv_logger *logger;          /* copied at create; NULL = silent */
  rkv_comm_local_group *local_group; /* LOCAL: the group (borrowed; must outlive the handle) */
} rkv_comm_config;
#define RKV_COMM_CONFIG_INIT                                                                     \
  {                                                                                              \
    sizeof(rkv_comm_config), RKV_COMM_SINGLE, 0.0, NULL, 0, NULL, RKV_COMM_BOOTSTRAP_AUTO, NULL, \
        0, 1, NULL, NULL, NULL                                                                   \
  }

/* Creates a communicator (collective over all ranks for MPI and NCCL). NULL cfg = single.
 * Returns RKV_ERR_INVALID_ARG (bad config), RKV_ERR_UNSUPPORTED (kind not built in),
 * RKV_ERR_COMM (transport failed; text in *err_out), RKV_ERR_TIMEOUT (peers did not join in
 * time), RKV_ERR_CUDA, RKV_ERR_NO_MEMORY. *out = NULL on failure. Because no handle exists on
 * failure, the reason is copied to err_out (may be NULL) of err_len bytes. */
RKV_API rkv_status rkv_comm_create(const rkv_comm_config *cfg, rkv_comm **out, char *err_out,
                                   size_t err_len);
/* Creates the meeting point of `size` (1..4096) LOCAL ranks; each thread then creates its
 * handle with kind RKV_COMM_LOCAL, local_group = the group and its own rank (rank may join
 * once). Collectives wait on a condition variable with the handle's deadline. A handle that
 * times out or aborts breaks the group: every rank waiting or arriving later fails at once
 * with RKV_ERR_COMM (a thread that just stops calling is only noticed by the deadline, like a
 * dead process). RKV_ERR_INVALID_ARG, RKV_ERR_NO_MEMORY. */
RKV_API rkv_status rkv_comm_local_group_create(int32_t size, const rkv_allocator *allocator,
                                               rkv_comm_local_group **out);
/* Accepts NULL. Only after every handle of the group was destroyed. */
RKV_API void rkv_comm_local_group_destroy(rkv_comm_local_group *g);

/* Frees the handle (accepts NULL). A failed NCCL handle is aborted instead of finalised; a
 * failed MPI handle leaks its staging buffers on purpose (the pending request may still write
 * them) and skips MPI_Comm_free. */
RKV_API void rkv_comm_destroy(rkv_comm *c);
/* Abandons the job after an error. nccl: ncclCommAbort (the process continues; the handle is
 * failed). mpi: MPI_Abort(errorcode), which Open MPI implements by terminating every rank of
 * the job, this process included. local: breaks the group, so every other rank's pending or
 * next collective fails at once. single: marks the handle failed. Never blocks for long. */
RKV_API void rkv_comm_abort(rkv_comm *c, int errorcode);

RKV_API int32_t rkv_comm_rank(const rkv_comm *c);
RKV_API int32_t rkv_comm_size(const rkv_comm *c);
RKV_API rkv_comm_kind rkv_comm_get_kind(const rkv_comm *c);
/* "single" / "mpi" / "nccl" / "local" ("invalid" otherwise). */
RKV_API const char *rkv_comm_kind_name(rkv_comm_kind k);
/* Parses "single", "mpi", "nccl", "local". RKV_ERR_INVALID_ARG otherwise. */
RKV_API rkv_status rkv_comm_kind_parse(const char *name, rkv_comm_kind *out);
/* True after a timeout or transport error (sticky). */
RKV_API bool rkv_comm_is_failed(const rkv_comm *c);
/* Text of the last error on this handle ("" when none); valid until the next call. */
RKV_API const char *rkv_comm_last_error(const rkv_comm *c);

/* All-reduce of count uint64 values (1..RKV_COMM_MAX_COUNT); send and recv may alias.
 * Returns RKV_ERR_INVALID_ARG, RKV_ERR_CAPACITY (count too large), RKV_ERR_STATE (handle
 * failed), RKV_ERR_TIMEOUT (deadline passed: handle now failed), RKV_ERR_COMM / RKV_ERR_CUDA
 * (transport error: handle now failed). On any error recv is unchanged. Allocation-free. */
RKV_API rkv_status rkv_comm_allreduce_u64(rkv_comm *c, rkv_comm_op op, const uint64_t *send,
                                          uint64_t *recv, uint32_t count);
/* Gathers count values (1..RKV_COMM_MAX_COUNT) from every rank: recv [size][count] in rank
 * order. Statuses as allreduce. Allocation-free. */
RKV_API rkv_status rkv_comm_allgather_u64(rkv_comm *c, const uint64_t *send, uint64_t *recv,
                                          uint32_t count);
/* A barrier with the deadline (an all-reduce of one value). */
RKV_API rkv_status rkv_comm_barrier(rkv_comm *c);

/* The per-step agreement, one collective: *global_free = MIN over ranks of local_free, and
 * every rank's (step, plan_hash) must be identical. global_free may be NULL. On disagreement
 * every rank returns RKV_ERR_CORRUPT, names the diverging ranks, step and hashes in its last
 * error (one extra all-gather on this path only), and leaves *global_free unchanged; the
 * handle stays usable (the transport worked, the schedulers did not). Other statuses as
 * allreduce. Allocation-free. */
RKV_API rkv_status rkv_comm_step_sync(rkv_comm *c, uint64_t step, uint64_t plan_hash,
                                      uint64_t local_free, uint64_t *global_free);

#ifdef __cplusplus
}
#endif
#endif /* RKV_COMM_H */
