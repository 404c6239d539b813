/* Private interface of `rkv sim` (the serving simulator): model shapes and the roofline cost
 * model, workloads (Azure traces, Poisson, fixed batch) with reasoning-length generations,
 * the synthetic token/K/V model, the compute engines (none / cpu / cuda) and the report
 * writers (table, JSON, SVG). docs/SIMULATOR.md describes every rule used here. */
#ifndef RKV_TOOL_SIM_H
#define RKV_TOOL_SIM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <rkv/blockmgr.h>
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
  int64_t gen; /* tokens the request will generate (EOS after exactly this many) */
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
} sim_workload_opts;

/* Builds the request list (sorted by arrival). Returns false with a message on stderr. */
bool sim_workload_build(const sim_workload_opts *o, sim_req **out, uint32_t *n_out);

/* ---- synthetic token stream and K/V/Q --------------------------------------------------- */

#define SIM_VOCAB 512

/* Writes the first `len` synthetic token ids of request `id` (deterministic in (seed, id)). */
void sim_tokens(uint64_t seed, int64_t id, int32_t *out, int64_t len);

/* ---- compute engines -------------------------------------------------------------------- */

typedef enum sim_compute {
  SIM_COMPUTE_NONE = 0,
  SIM_COMPUTE_CPU = 1,
  SIM_COMPUTE_CUDA = 2
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
                       const rkv_evict_params *ev, uint32_t host_blocks, uint32_t max_seqs,
                       uint64_t seed, const sim_req *reqs, uint32_t n_reqs, int threads,
                       sim_engine **out);
void sim_engine_destroy(sim_engine *e);
/* Executes a plan (swaps, copies, K/V writes, attention, compressions) and fills outs
 * [plan->n_seqs]. Returns false with a message on stderr. */
bool sim_engine_run(sim_engine *e, const rkv_sched_plan *p, rkv_sched_output *outs);
const sim_engine_times *sim_engine_get_times(const sim_engine *e);

#endif /* RKV_TOOL_SIM_H */
