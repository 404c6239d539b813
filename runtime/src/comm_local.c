/* rkv_comm kind `local`: tensor-parallel ranks that are threads of one process. The ranks meet
 * in a shared group (a mutex, a condition variable and staging arrays); the last rank to arrive
 * at a collective computes the result for everyone. It exists so `rkv sim --tp N` and tests can
 * run the real per-step protocol (comm_core.c's step_sync, divergence report included) without
 * mpirun. Failure rules match the process transports: every wait has the handle's deadline, a
 * timeout or abort breaks the group so the other ranks fail at once instead of waiting out
 * their own deadlines, and a thread that silently stops calling is caught by the deadline. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"

#define LOCAL_MAX_SIZE 4096
#define LOCAL_GATHER (-1) /* the collective id of an all-gather; all-reduces use their op */

struct rkv_comm_local_group {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int32_t size;
  bool has_alloc;
  rkv_allocator alloc;
  uint64_t gen;    /* collectives completed */
  int32_t arrived; /* ranks inside the current collective */
  int cur_op;      /* the current collective (op or LOCAL_GATHER) and count, set by the first */
  uint32_t cur_count;
  bool broken;
  char why[RKV_ERRBUF];
  unsigned char *joined; /* [size] */
  uint64_t *in;          /* [size][RKV_COMM_MAX_COUNT] */
  uint64_t *out;         /* [size][RKV_COMM_MAX_COUNT]: the last completed collective's result */
};

static size_t group_bytes(int32_t size) {
  return (size_t)size * RKV_COMM_MAX_COUNT * sizeof(uint64_t);
}

rkv_status rkv_comm_local_group_create(int32_t size, const rkv_allocator *allocator,
                                       rkv_comm_local_group **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (size < 1 || size > LOCAL_MAX_SIZE) return RKV_ERR_INVALID_ARG;
  rkv_comm_local_group *g = rkvi_calloc(allocator, sizeof(*g), _Alignof(max_align_t));
  if (!g) return RKV_ERR_NO_MEMORY;
  if (allocator) g->alloc = *allocator, g->has_alloc = true;
  g->size = size;
  g->joined = rkvi_calloc(allocator, (size_t)size, 1);
  g->in = rkvi_calloc(allocator, group_bytes(size), _Alignof(uint64_t));
  g->out = rkvi_calloc(allocator, group_bytes(size), _Alignof(uint64_t));
  pthread_condattr_t ca;
  bool sync_ok = false;
  if (g->joined && g->in && g->out && pthread_condattr_init(&ca) == 0) {
    /* deadlines are monotonic: a wall-clock jump must not fire or stretch them */
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
        pthread_cond_init(&g->cv, &ca) == 0) {
      if (pthread_mutex_init(&g->mu, NULL) == 0)
        sync_ok = true;
      else
        pthread_cond_destroy(&g->cv);
    }
    pthread_condattr_destroy(&ca);
  }
  if (!sync_ok) {
    rkvi_free(allocator, g->joined, (size_t)size);
    rkvi_free(allocator, g->in, group_bytes(size));
    rkvi_free(allocator, g->out, group_bytes(size));
    rkvi_free(allocator, g, sizeof(*g));
    return RKV_ERR_NO_MEMORY;
  }
  *out = g;
  return RKV_OK;
}

void rkv_comm_local_group_destroy(rkv_comm_local_group *g) {
  if (!g) return;
  rkv_allocator a = g->alloc;
  const rkv_allocator *ap = g->has_alloc ? &a : NULL;
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
  rkvi_free(ap, g->joined, (size_t)g->size);
  rkvi_free(ap, g->in, group_bytes(g->size));
  rkvi_free(ap, g->out, group_bytes(g->size));
  rkvi_free(ap, g, sizeof(*g));
}

/* Caller holds the mutex. */
static void break_group(rkv_comm_local_group *g, const char *why) {
  if (!g->broken) {
    g->broken = true;
    snprintf(g->why, sizeof g->why, "%s", why);
  }
  pthread_cond_broadcast(&g->cv);
}

static void reduce(rkv_comm_local_group *g) {
  uint32_t n = g->cur_count;
  if (g->cur_op == LOCAL_GATHER) {
    for (int32_t r = 0; r < g->size; r++)
      memcpy(g->out + (size_t)r * n, g->in + (size_t)r * RKV_COMM_MAX_COUNT, n * sizeof(uint64_t));
    return;
  }
  for (uint32_t i = 0; i < n; i++) {
    uint64_t v = g->in[i];
    for (int32_t r = 1; r < g->size; r++) {
      uint64_t x = g->in[(size_t)r * RKV_COMM_MAX_COUNT + i];
      switch ((rkv_comm_op)g->cur_op) {
        case RKV_COMM_OP_MIN:
          v = x < v ? x : v;
          break;
        case RKV_COMM_OP_MAX:
          v = x > v ? x : v;
          break;
        default:
          v += x;
          break;
      }
    }
    g->out[i] = v;
  }
}

static rkv_status collective(rkv_comm *c, int op, const uint64_t *send, uint64_t *recv,
                             uint32_t count) {
  rkv_comm_local_group *g = c->impl;
  const char *what = op == LOCAL_GATHER ? "allgather" : "allreduce";
  char why[RKV_ERRBUF];
  pthread_mutex_lock(&g->mu);
  if (g->broken) {
    snprintf(why, sizeof why, "%s", g->why);
    pthread_mutex_unlock(&g->mu);
    return rkvi_fail(c->err, RKV_ERR_COMM, "comm local rank %d: %s: the group is broken: %s",
                     (int)c->rank, what, why);
  }
  if (g->arrived == 0) {
    g->cur_op = op;
    g->cur_count = count;
  } else if (g->cur_op != op || g->cur_count != count) {
    snprintf(why, sizeof why,
             "ranks called different collectives (rank %d: %s of %u; others: %s of %u)",
             (int)c->rank, what, count, g->cur_op == LOCAL_GATHER ? "allgather" : "allreduce",
             g->cur_count);
    break_group(g, why);
    pthread_mutex_unlock(&g->mu);
    return rkvi_fail(c->err, RKV_ERR_COMM, "comm local rank %d: %s", (int)c->rank, why);
  }
  memcpy(g->in + (size_t)c->rank * RKV_COMM_MAX_COUNT, send, count * sizeof(uint64_t));
  uint64_t my_gen = g->gen;
  if (++g->arrived == g->size) {
    reduce(g);
    g->arrived = 0;
    g->gen++;
    pthread_cond_broadcast(&g->cv);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double end = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + c->timeout_s;
    ts.tv_sec = (time_t)end;
    ts.tv_nsec = (long)((end - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    while (g->gen == my_gen && !g->broken) {
      int rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
      if (rc == ETIMEDOUT && g->gen == my_gen && !g->broken) {
        int32_t arrived = g->arrived;
        snprintf(why, sizeof why, "rank %d timed out after %.1f s in %s (%d of %d ranks arrived)",
                 (int)c->rank, c->timeout_s, what, (int)arrived, (int)g->size);
        break_group(g, why);
        pthread_mutex_unlock(&g->mu);
        return rkvi_fail(c->err, RKV_ERR_TIMEOUT,
                         "RKV_ERR_TIMEOUT after %.1f s: comm local rank %d: %s waited for peers "
                         "(%d of %d ranks arrived): a peer died or hangs",
                         c->timeout_s, (int)c->rank, what, (int)arrived, (int)g->size);
      }
    }
    if (g->gen == my_gen) {
      snprintf(why, sizeof why, "%s", g->why);
      pthread_mutex_unlock(&g->mu);
      return rkvi_fail(c->err, RKV_ERR_COMM, "comm local rank %d: %s: the group broke: %s",
                       (int)c->rank, what, why);
    }
  }
  /* out holds this collective's result until every rank (this one included) has entered the
   * next one, so reading it after the wake-up is safe */
  size_t n = op == LOCAL_GATHER ? (size_t)g->size * count : count;
  memcpy(recv, g->out, n * sizeof(uint64_t));
  pthread_mutex_unlock(&g->mu);
  return RKV_OK;
}

static rkv_status local_allreduce(rkv_comm *c, rkv_comm_op op, const uint64_t *send, uint64_t *recv,
                                  uint32_t count) {
  return collective(c, (int)op, send, recv, count);
}

static rkv_status local_allgather(rkv_comm *c, const uint64_t *send, uint64_t *recv,
                                  uint32_t count) {
  return collective(c, LOCAL_GATHER, send, recv, count);
}

static void local_abort(rkv_comm *c, int errorcode) {
  rkv_comm_local_group *g = c->impl;
  char why[96];
  snprintf(why, sizeof why, "rank %d aborted (error code %d)", (int)c->rank, errorcode);
  pthread_mutex_lock(&g->mu);
  break_group(g, why);
  pthread_mutex_unlock(&g->mu);
}

static void local_destroy(rkv_comm *c) {
  (void)c; /* the group belongs to the caller */
}

static const rkv_comm_vtbl kLocalVtbl = {local_allreduce, local_allgather, local_abort,
                                         local_destroy};

rkv_status rkvi_comm_local_init(rkv_comm *c, const rkv_comm_config *cfg) {
  rkv_comm_local_group *g = cfg->local_group;
  if (!g)
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG,
                     "rkv_comm_create(local): local_group is NULL (rkv_comm_local_group_create)");
  if (cfg->rank < 0 || cfg->rank >= g->size)
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG,
                     "rkv_comm_create(local): rank %d outside the group of %d", (int)cfg->rank,
                     (int)g->size);
  pthread_mutex_lock(&g->mu);
  bool taken = g->joined[cfg->rank] != 0;
  g->joined[cfg->rank] = 1;
  pthread_mutex_unlock(&g->mu);
  if (taken)
    return rkvi_fail(c->err, RKV_ERR_INVALID_ARG, "rkv_comm_create(local): rank %d joined twice",
                     (int)cfg->rank);
  c->rank = cfg->rank;
  c->size = g->size;
  c->v = &kLocalVtbl;
  c->impl = g;
  return RKV_OK;
}
