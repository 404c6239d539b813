/* `rkv sim --tp N`: tensor-parallel serving in the simulator, driven by the real scheduler.
 * Every rank owns kv_heads / N kv heads (whole GQA groups), its own block manager and pool,
 * and runs the same deterministic scheduler on the same request stream; sim_run_policy calls
 * sim_tp_sync at the top of every step (one rkv_comm_step_sync: MIN of free blocks, which
 * becomes the scheduler's free-blocks limit, and the hash of the previous plan, compared
 * across ranks). Ranks are threads over an rkv_comm of kind `local`, or processes under
 * mpirun over kind `mpi`; both run the same code below. Rank 0 prints the usual comparison
 * table plus one memory/agreement row per rank (gathered with one all-gather per policy).
 * Test hooks: --tp-inject-divergence, --tp-die, --tp-rank-blocks-scale. docs/TP.md. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rkv/topo.h>

#include "rkv_tool.h"
#include "sim.h"

#define GATHER_N 10 /* values per rank in the end-of-policy all-gather */

static uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Reports a failed collective and stops this rank. A divergence is seen by every rank in the
 * same collective and the transport still works, so the ranks meet once more (a barrier)
 * to make sure each has printed its report before any exits (mpirun kills the rest when one
 * exits non-zero). Anything else means a peer is gone or stuck: abort the job. */
static bool fail(sim_tp_rank *t, rkv_status st, const char *what) {
  fprintf(stderr, "rkv sim: tp rank %d: %s failed: %s: %s\n", (int)t->rank, what,
          rkv_status_str(st), rkv_comm_last_error(t->comm));
  fflush(stderr);
  if (st == RKV_ERR_CORRUPT)
    (void)rkv_comm_barrier(t->comm);
  else
    rkv_comm_abort(t->comm, 3);
  t->handled = true;
  return false;
}

bool sim_tp_pool_min(sim_tp_rank *t, uint64_t local_blocks, uint64_t *usable) {
  if (t->o->no_pool_min) {
    *usable = local_blocks;
    return true;
  }
  uint64_t mine = local_blocks, min = 0;
  rkv_status st = rkv_comm_allreduce_u64(t->comm, RKV_COMM_OP_MIN, &mine, &min, 1);
  if (st != RKV_OK) return fail(t, st, "start-up MIN of pool sizes");
  *usable = min;
  return true;
}

bool sim_tp_sync(sim_tp_rank *t, rkv_sched *s, uint64_t k, uint64_t prev_hash,
                 uint64_t local_free) {
  if (t->o->die_step >= 0 && t->rank == 1 && k == (uint64_t)t->o->die_step) {
    fprintf(stderr, "rkv sim: tp rank 1: dying at step %llu (--tp-die)\n", (unsigned long long)k);
    fflush(stderr);
    /* a process dies without finalising anything; a thread just stops taking part */
    if (rkv_comm_get_kind(t->comm) == RKV_COMM_MPI) _exit(3);
    t->handled = true;
    return false;
  }
  double t0 = rt_now();
  uint64_t global_free = 0;
  rkv_status st = rkv_comm_step_sync(t->comm, k, prev_hash, local_free, &global_free);
  double dt = rt_now() - t0;
  t->st.sync_s += dt;
  t->st.sync_max_s = dt > t->st.sync_max_s ? dt : t->st.sync_max_s;
  t->st.syncs++;
  if (st != RKV_OK) {
    char what[96];
    /* sync k carries the hash of plan k - 1: that is the plan found to differ */
    snprintf(what, sizeof what, "step sync %llu (checks plan %lld)", (unsigned long long)k,
             (long long)k - 1);
    return fail(t, st, what);
  }
  rkv_sched_set_free_blocks_limit(s, global_free > UINT32_MAX ? UINT32_MAX : (uint32_t)global_free);
  return true;
}

uint64_t sim_tp_plan_hash(sim_tp_rank *t, uint64_t k, const rkv_sched_plan *p) {
  uint64_t h = rkv_sched_plan_hash(p);
  if (t->o->inject_step >= 0 && t->rank == 1 && k == (uint64_t)t->o->inject_step) {
    fprintf(stderr,
            "rkv sim: tp rank 1: perturbing the hash of plan %llu (--tp-inject-divergence)\n",
            (unsigned long long)k);
    h ^= 1;
  }
  t->st.digest = mix(t->st.digest ^ h);
  return h;
}

/* ---- one rank: every policy, then the per-rank rows gathered to rank 0 ------------------- */

typedef struct tp_job {
  const sim_opts *o;
  const sim_req *reqs;
  uint32_t n;
  int32_t size;
  const char *launch;
  rkv_comm_local_group *group;
  sim_result *res; /* rank 0's results [MAX_POLICIES] */
  uint32_t done;   /* policies rank 0 completed */
} tp_job;

static void pack(const sim_tp_rank_stats *x, uint64_t *v) {
  v[0] = x->pool_blocks;
  v[1] = x->usable_blocks;
  v[2] = x->peak_blocks;
  v[3] = x->max_running;
  v[4] = x->preemptions;
  v[5] = x->steps;
  v[6] = x->digest;
  v[7] = x->syncs;
  memcpy(&v[8], &x->sync_s, sizeof(double));
  memcpy(&v[9], &x->sync_max_s, sizeof(double));
}

static void unpack(const uint64_t *v, sim_tp_rank_stats *x) {
  x->pool_blocks = v[0];
  x->usable_blocks = v[1];
  x->peak_blocks = v[2];
  x->max_running = v[3];
  x->preemptions = v[4];
  x->steps = v[5];
  x->digest = v[6];
  x->syncs = v[7];
  memcpy(&x->sync_s, &v[8], sizeof(double));
  memcpy(&x->sync_max_s, &v[9], sizeof(double));
}

static int rank_run(tp_job *j, int32_t rank, rkv_comm *c) {
  sim_opts o = *j->o;
  o.quiet = o.quiet || rank != 0;
  if (o.threads == 0) o.threads = 1; /* N ranks share the cores: one kernel thread each */
  for (uint32_t i = 0; i < o.n_policies; i++) {
    sim_tp_rank t;
    memset(&t, 0, sizeof t);
    t.comm = c;
    t.rank = rank;
    t.size = j->size;
    t.o = &j->o->tp;
    sim_result mine;
    sim_result *r = rank == 0 ? &j->res[i] : &mine;
    bool ok = sim_run_policy(&o, j->reqs, j->n, o.policies[i], &t, r);
    if (r == &mine) free(mine.tl);
    if (!ok) return 1;
    uint64_t v[GATHER_N], all[SIM_TP_MAX_RANKS * GATHER_N];
    pack(&t.st, v);
    rkv_status st = rkv_comm_allgather_u64(c, v, all, GATHER_N);
    if (st != RKV_OK) {
      fail(&t, st, "gathering the per-rank rows");
      return 1;
    }
    if (rank == 0) {
      sim_tp_stats *ts = &j->res[i].tp;
      ts->size = j->size;
      ts->launch = j->launch;
      ts->kv_heads_per_rank = o.model.kv_heads / (uint32_t)j->size;
      ts->q_heads_per_rank = o.model.q_heads / (uint32_t)j->size;
      for (int32_t k = 0; k < j->size; k++) unpack(all + (size_t)k * GATHER_N, &ts->rank[k]);
      j->done = i + 1;
    }
  }
  return 0;
}

/* Binds the calling thread to local rank `local` of `n_local` (before the communicator is
 * created, so transport threads inherit the mask). Failure is a warning, not an error. */
static void bind_rank(int32_t local, int32_t n_local) {
  rkv_topo *topo = NULL;
  char err[256] = "";
  rkv_topo_placement *pl = calloc((size_t)n_local, sizeof *pl);
  rkv_status st = pl ? rkv_topo_create(NULL, &topo, err, sizeof err) : RKV_ERR_NO_MEMORY;
  if (st == RKV_OK) st = rkv_topo_place(topo, (uint32_t)n_local, NULL, pl);
  if (st == RKV_OK) st = rkv_topo_bind_thread(topo, &pl[local]);
  if (st != RKV_OK)
    fprintf(stderr, "rkv sim: tp local rank %d: not bound (%s%s%s)\n", (int)local,
            rkv_status_str(st), topo ? ": " : "", topo ? rkv_topo_last_error(topo) : err);
  else
    fprintf(stderr, "rkv sim: tp local rank %d: bound to NUMA node %d's core(s) #%u..#%u (%s)\n",
            (int)local, (int)pl[local].core_numa, pl[local].core_first,
            pl[local].core_first + pl[local].core_count - 1,
            rkv_topo_place_reason_name(pl[local].reason));
  rkv_topo_destroy(topo);
  free(pl);
}

/* ---- threads: N ranks over an in-process communicator ------------------------------------ */

typedef struct tp_thread {
  tp_job *job;
  int32_t rank;
  int rc;
} tp_thread;

static void *thread_main(void *arg) {
  tp_thread *a = arg;
  if (a->job->o->tp.bind) bind_rank(a->rank, a->job->size);
  rkv_comm_config cc = RKV_COMM_CONFIG_INIT;
  cc.kind = RKV_COMM_LOCAL;
  cc.local_group = a->job->group;
  cc.rank = a->rank;
  cc.timeout_s = a->job->o->tp.timeout_s;
  rkv_comm *c = NULL;
  char err[256];
  if (rkv_comm_create(&cc, &c, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv sim: tp rank %d: communicator: %s\n", (int)a->rank, err);
    a->rc = 1;
    return NULL;
  }
  a->rc = rank_run(a->job, a->rank, c);
  rkv_comm_destroy(c);
  return NULL;
}

static int run_threads(tp_job *j) {
  if (rkv_comm_local_group_create(j->size, NULL, &j->group) != RKV_OK) {
    fprintf(stderr, "rkv sim: tp: cannot create the rank group\n");
    return 1;
  }
  tp_thread th[SIM_TP_MAX_RANKS];
  pthread_t tid[SIM_TP_MAX_RANKS];
  bool started[SIM_TP_MAX_RANKS] = {false};
  int rc = 0;
  for (int32_t r = 0; r < j->size; r++) {
    th[r] = (tp_thread){j, r, 0};
    started[r] = pthread_create(&tid[r], NULL, thread_main, &th[r]) == 0;
    if (!started[r]) {
      /* the started ranks will time out waiting for this one */
      fprintf(stderr, "rkv sim: tp: cannot start the thread of rank %d\n", (int)r);
      rc = 1;
    }
  }
  for (int32_t r = 0; r < j->size; r++) {
    if (!started[r]) continue;
    pthread_join(tid[r], NULL);
    if (th[r].rc) rc = 1;
  }
  rkv_comm_local_group_destroy(j->group);
  j->group = NULL;
  return rc;
}

/* ---- entry ------------------------------------------------------------------------------- */

int sim_tp_env_world_size(void) {
  static const char *const kVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
  for (size_t i = 0; i < sizeof kVars / sizeof kVars[0]; i++) {
    const char *v = getenv(kVars[i]);
    if (v && *v) return atoi(v);
  }
  return 0;
}

static bool check_shape(const sim_opts *o, int32_t size) {
  if (size < 1 || size > SIM_TP_MAX_RANKS) {
    fprintf(stderr, "rkv sim: --tp %d: 1..%d ranks\n", (int)size, SIM_TP_MAX_RANKS);
    return false;
  }
  if (o->model.kv_heads % (uint32_t)size) {
    fprintf(stderr,
            "rkv sim: --tp %d does not divide the model's %u kv heads: each rank must own whole "
            "GQA groups (kv_heads / tp heads)\n",
            (int)size, o->model.kv_heads);
    return false;
  }
  if (o->tp.scale_rank >= size) {
    fprintf(stderr, "rkv sim: --tp-rank-blocks-scale: rank %d but only %d ranks\n",
            (int)o->tp.scale_rank, (int)size);
    return false;
  }
  return true;
}

int sim_tp_main(const sim_opts *o, const sim_req *reqs, uint32_t n) {
  sim_result *res = calloc(MAX_POLICIES, sizeof *res);
  if (!res) return 1;
  tp_job j = {o, reqs, n, 0, "threads", NULL, res, 0};
  int rc = 0;
  bool report = false;
  sim_tp_launch launch = o->tp.launch;
  if (launch == SIM_TP_AUTO) launch = sim_tp_env_world_size() > 1 ? SIM_TP_MPI : SIM_TP_THREADS;
  if (launch == SIM_TP_THREADS) {
    j.size = (int32_t)o->tp.tp;
    if (!check_shape(o, j.size)) {
      rc = 2;
    } else {
      rc = run_threads(&j);
      report = rc == 0;
    }
  } else {
    j.launch = "mpi";
    if (o->tp.bind) {
      const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
      const char *ls = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
      if (lr && ls) bind_rank(atoi(lr), atoi(ls));
    }
    rkv_comm_config cc = RKV_COMM_CONFIG_INIT;
    cc.kind = RKV_COMM_MPI;
    cc.timeout_s = o->tp.timeout_s;
    rkv_comm *c = NULL;
    char err[256];
    if (rkv_comm_create(&cc, &c, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv sim: tp: MPI communicator: %s\n", err);
      free(res);
      return 1;
    }
    j.size = rkv_comm_size(c);
    int32_t rank = rkv_comm_rank(c);
    if (o->tp.tp > 1 && (int32_t)o->tp.tp != j.size) {
      fprintf(stderr, "rkv sim: tp rank %d: --tp %u but mpirun started %d ranks\n", (int)rank,
              o->tp.tp, (int)j.size);
      rc = 2;
    } else if (!check_shape(o, j.size)) {
      rc = 2;
    } else {
      rc = rank_run(&j, rank, c);
      report = rc == 0 && rank == 0;
    }
    /* only a clean run finalises MPI; a failed or aborted handle must not wait for peers */
    rkv_comm_destroy(c);
  }
  if (report && !sim_report(o, res, j.done, n)) rc = 1;
  for (uint32_t i = 0; i < MAX_POLICIES; i++) free(res[i].tl);
  free(res);
  return rc;
}
