/* Private interface of `rkv sim` (the serving simulator): model shapes and the roofline cost
 * model, workloads (Azure traces, Poisson, fixed batch) with reasoning-length generations,
 * the synthetic token/K/V model, the compute engines (none / cpu / cuda) and the report
 * writers (table, JSON, SVG). docs/SIMULATOR.md describes every rule used here. */
#ifndef RT_SIM_H
#define RT_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <rkv/blockmgr.h>
#include <rkv/comm.h>
#include <rkv/evict.h>
#include <rkv/scheduler.h>

/* ---- model shape and the roofline ------------------------------------------------------ */

typedef struct sim_model {
  char name[32];
  uint32_t layers, q_heads, kv_heads, head_dim;
  double params; /* parameter count (weights read once per step) */
} sim_model;

typedef struct sim_gpu {
  const char *name;
  double mem_bw;    /* bytes/s, peak */
  double flops;     /* dense bf16 tensor flop/s, peak */
  double mem_eff;   /* achievable fraction of mem_bw */
  double flop_eff;  /* achievable fraction of flops for the model's matmuls */
  double evict_eff; /* achievable fraction for the eviction kernels */
  double launch_s;  /* fixed overhead per layer per step (launches, norms, sampling) */
} sim_gpu;

bool sim_model_preset(const char *name, sim_model *out);
/* params estimate for an explicit shape: per layer 2h^2 + 2h*kv*d + 3h*ffn (ffn = 3.5h),
 * plus 2 * 32000 * h for embeddings and head; h = q_heads * d. */
double sim_model_params_estimate(const sim_model *m);
const sim_gpu *sim_gpu_find(const char *name);

/* Modelled seconds of one step (see docs/SIMULATOR.md "Cost model"). */
typedef struct sim_cost {
  double total, mem, compute, evict, overhead;
  double evict_flops, attn_flops, bytes;
} sim_cost;
void sim_cost_step(const sim_model *m, const sim_gpu *g, size_t kv_elem_bytes,
                   const rkv_sched_plan *p, sim_cost *out);

/* ---- workloads -------------------------------------------------------------------------- */

typedef struct sim_req {
  int64_t id;
  double arrival; /* seconds */
  int64_t prompt;
  int64_t gen;     /* tokens the request will generate (EOS after exactly this many) */
  int32_t sys;     /* shared system prompt its prompt starts with (-1 = none) */
  int64_t sys_len; /* that system prompt's tokens (included in prompt) */
} sim_req;

typedef struct sim_workload_opts {
  const char *kind;   /* azure-conv | azure-code | poisson | fixed */
  const char *trace;  /* explicit CSV path (overrides the kind's file) */
  uint32_t n;         /* requests */
  double rate;        /* poisson: requests/s */
  double span;        /* trace: rescale the first n arrivals to this many seconds (0 = as is) */
  const char *gen;    /* reasoning | trace | fixed */
  double gen_mean;    /* reasoning: mean of the lognormal before clipping */
  double gen_sigma;   /* reasoning: lognormal sigma */
  int64_t gen_cap;    /* clip generations to this */
  int64_t gen_fixed;  /* fixed: every request generates this */
  int64_t prompt_len; /* poisson / fixed prompts */
  int64_t prompt_cap; /* clip trace prompts (0 = no clip) */
  uint64_t seed;
  /* shared-prefix workload: every prompt starts with one of n_prefixes system prompts of
   * prefix_lo..prefix_hi tokens (0 = none) */
  uint32_t n_prefixes;
  int64_t prefix_lo, prefix_hi;
} sim_workload_opts;

/* Length of system prompt k of a shared-prefix workload (drawn once per prompt from the
 * seed, in prefix_lo..prefix_hi). */
int64_t sim_system_prompt_len(const sim_workload_opts *o, uint32_t k);
/* Builds the request list (sorted by arrival). Returns false with a message on stderr. */
bool sim_workload_build(const sim_workload_opts *o, sim_req **out, uint32_t *n_out);

/* ---- synthetic token stream and K/V/Q --------------------------------------------------- */

#define SIM_VOCAB 512

/* Writes the first `len` synthetic token ids of request `id` (deterministic in (seed, id)). */
void sim_tokens(uint64_t seed, int64_t id, int32_t *out, int64_t len);
/* The identity whose token stream (sim_tokens) and K/V a request's position pos belongs to:
 * its system prompt's (-1 - sys) inside it, else the request's own id. */
static inline int64_t sim_token_owner(const sim_req *r, int64_t pos) {
  return r->sys >= 0 && pos < r->sys_len ? -1 - (int64_t)r->sys : r->id;
}
/* Tokens of request r, [0, len): its system prompt's, then its own stream. */
void sim_req_tokens(uint64_t seed, const sim_req *r, int32_t *out, int64_t len);
/* Chained block hashes of system prompt `sys` (its full blocks; rkv_prefix_hash_blocks).
 * Returns the block count (written up to cap). */
uint32_t sim_prefix_hashes(uint64_t seed, int32_t sys, int64_t sys_len, uint32_t block_size,
                           uint64_t *out, uint32_t cap);

/* ---- tensor parallelism (sim_tp.c, docs/TP.md) ---------------------------------------- */

typedef enum sim_tp_launch {
  SIM_TP_AUTO = 0,    /* mpi when started by mpirun with several ranks, else threads */
  SIM_TP_THREADS = 1, /* N threads in this process over an rkv_comm of kind local */
  SIM_TP_MPI = 2      /* one rank per process over an rkv_comm of kind mpi */
} sim_tp_launch;

typedef struct sim_tp_opts {
  uint32_t tp; /* ranks (0/1 = no tensor parallelism) */
  sim_tp_launch launch;
  int64_t inject_step; /* rank 1 perturbs its plan hash of this step (-1 = never) */
  int64_t die_step;    /* rank 1 stops dead at this step (-1 = never) */
  int32_t scale_rank;  /* this rank's pool is scale x the others' (-1 = none) */
  double scale;
  double timeout_s; /* deadline of every collective */
  bool bind;        /* bind each rank's thread with rkv_topo_place + rkv_topo_bind_thread */
  bool no_pool_min; /* skip the start-up MIN of pool sizes (test: the step MIN suffices) */
} sim_tp_opts;

/* Per rank and policy, gathered to rank 0 after each policy's run. */
#define SIM_TP_MAX_RANKS 64
typedef struct sim_tp_rank_stats {
  uint64_t pool_blocks;   /* what this rank's memory holds */
  uint64_t usable_blocks; /* after the start-up MIN over ranks */
  uint64_t peak_blocks, max_running, preemptions, steps, digest, syncs;
  double sync_s;     /* wall seconds inside rkv_comm_step_sync */
  double sync_max_s; /* slowest single sync */
} sim_tp_rank_stats;

typedef struct sim_tp_stats {
  int32_t size;
  const char *launch;
  uint32_t kv_heads_per_rank, q_heads_per_rank;
  sim_tp_rank_stats rank[SIM_TP_MAX_RANKS];
} sim_tp_stats;

/* One rank inside a policy run: its communicator and the per-step protocol's bookkeeping. */
typedef struct sim_tp_rank {
  rkv_comm *comm;
  int32_t rank, size;
  const sim_tp_opts *o;
  sim_tp_rank_stats st;
  bool handled; /* the failure was reported and handled in sim_tp_*: do not abort again */
} sim_tp_rank;

/* Start of a policy run: MIN all-reduce of the pool sizes (reserve admission and the
 * add-request fit test count the pool total, which must be equal on every rank).
 * Returns false after printing the error (and aborting the job on a transport failure). */
bool sim_tp_pool_min(sim_tp_rank *t, uint64_t local_blocks, uint64_t *usable);
/* Top of step k: step_sync(k, hash of plan k-1, local free) -> the scheduler's free-blocks
 * limit. Also where --tp-die strikes. Returns false after printing the error. */
bool sim_tp_sync(sim_tp_rank *t, rkv_sched *s, uint64_t k, uint64_t prev_hash, uint64_t local_free);
/* Hash of plan k as this rank reports it (perturbed on rank 1 at --tp-inject-divergence),
 * folded into the rank's digest. */
uint64_t sim_tp_plan_hash(sim_tp_rank *t, uint64_t k, const rkv_sched_plan *p);

/* ---- compute engines -------------------------------------------------------------------- */

typedef enum sim_compute {
  SIM_COMPUTE_NONE = 0,
  SIM_COMPUTE_CPU = 1,
  SIM_COMPUTE_CUDA = 2,
  /* the cuda engine on the emulated device (<rkv/buffer_emu.h>): its host logic, with the CPU
   * kernels, on machines without a GPU (tests) */
  SIM_COMPUTE_EMU = 3
} sim_compute;

typedef struct sim_engine sim_engine;

typedef struct sim_engine_times {
  double kv_synth; /* making K/V/Q (the stand-in for the model's projections) */
  double attn;     /* KV write + attention kernels */
  double evict;    /* compression (scoring + compaction, or compaction only with none) */
  double swap;     /* swap copies */
  /* redundancy of stream (layer 0, head 0) around compressions (cpu only): near-duplicate
   * (cosine > 0.5) ordered key pairs, and keys looked at */
  uint64_t dup_before, keys_before, dup_after, keys_after;
} sim_engine_times;

/* Creates the engine for one policy run. `reqs` lives as long as the engine (token ids). */
bool sim_engine_create(sim_compute kind, const sim_model *m, rkv_blockmgr *bm,
                       const rkv_evict_params *ev, rkv_evict_granularity granularity,
                       uint32_t host_blocks, uint32_t max_seqs, uint64_t seed, const sim_req *reqs,
                       uint32_t n_reqs, int threads, sim_engine **out);
void sim_engine_destroy(sim_engine *e);
/* Executes a plan (swaps, copies, K/V writes, attention, compressions) and fills outs
 * [plan->n_seqs], in two halves so that the next plan may be made between them (overlap
 * scheduling): launch begins it and runs its layers (on a device: enqueued, not waited for);
 * finish waits, compresses and fills outs. Return false with a message on stderr. */
bool sim_engine_launch(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs);
bool sim_engine_finish(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs);
const sim_engine_times *sim_engine_get_times(const sim_engine *e);

/* ---- a whole run (cmd_sim.c) ------------------------------------------------------------ */

#define MAX_POLICIES 8

typedef struct sim_opts {
  sim_model model;
  const char *model_name;
  rkv_dtype dtype;
  uint32_t block_size;
  double pool_gib;
  uint64_t pool_blocks;
  double host_gib;
  sim_workload_opts wl;
  rkv_evict_policy policies[MAX_POLICIES];
  uint32_t n_policies;
  rkv_evict_params ev;
  rkv_sched_admission admission;
  rkv_sched_preempt_mode preempt;
  uint32_t max_batched_tokens, max_seqs, max_prefill_chunk;
  sim_compute compute;
  const sim_gpu *gpu;
  uint64_t max_steps;
  int threads;
  bool json, quiet, check;
  const char *plot;
  sim_tp_opts tp;
  bool prefix_cache;                 /* --prefix-cache on */
  rkv_sched_prefix_rule prefix_rule; /* --prefix-rule */
  uint32_t cache_lookahead;          /* --cache-lookahead: cache-aware admission window */
  bool overlap;                      /* --overlap on: plan step N+1 while N runs */
  rkv_evict_granularity granularity; /* --granularity (the executor's; --compute cpu) */
} sim_opts;

typedef struct sim_sample {
  float t;
  uint32_t used_blocks;
  uint32_t running;
} sim_sample;

typedef struct sim_result {
  rkv_evict_policy policy;
  uint64_t pool_blocks;
  double block_bytes;
  uint32_t peak_blocks;
  double mean_blocks; /* time-weighted over the modelled run */
  uint32_t max_running;
  rkv_sched_metrics m;
  double model_time, model_evict, model_attn_flops, model_evict_flops;
  double wall, sched_wall;
  /* host time of the scheduler (measured) against the modelled device step: plan_wall =
   * rkv_sched_step, report_wall = rkv_sched_report; model_time_host = the modelled run with
   * them on the host's critical path (sync: plan + step + report; overlap: the next plan
   * hides behind the step), hidden_host = planning time overlap hid */
  double plan_wall, report_wall, model_time_host, hidden_host;
  sim_engine_times et;
  uint64_t steps, rejected;
  double lat_sum, lat_max;
  uint64_t lat_n;
  double wait_sum, wait_max; /* arrival to first admission (modelled seconds) */
  uint64_t wait_n;
  bool complete;                 /* every request finished (not cut by --steps) */
  rkv_sched_prefix_stats prefix; /* hashed / hit prompt tokens (shared-prefix workloads) */
  rkv_prefix_stats cache;        /* the block manager's groups at the end (rank 0) */
  sim_sample *tl;
  size_t tl_n, tl_cap;
  /* tensor parallelism (rank 0's view; tp.size == 0 in a single-rank run) */
  sim_tp_stats tp;
} sim_result;

/* One policy over the workload; tp NULL = a single-rank run, else this rank's shard
 * (kv_heads / tp heads, its own block manager and pool) in lockstep with the others. */
bool sim_run_policy(const sim_opts *o, const sim_req *reqs, uint32_t n, rkv_evict_policy pol,
                    sim_tp_rank *tp, sim_result *res);
/* Table or JSON on stdout, then the SVG plot; false when the plot cannot be written. */
bool sim_report(const sim_opts *o, const sim_result *r, uint32_t np, uint32_t n_req);
/* `rkv sim --tp N` (sim_tp.c): runs every policy on N ranks; rank 0 reports. Exit code. */
int sim_tp_main(const sim_opts *o, const sim_req *reqs, uint32_t n);
/* World size announced by mpirun in the environment (0 when not under a launcher). */
int sim_tp_env_world_size(void);

#endif /* RT_SIM_H */
