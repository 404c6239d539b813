/* Private seam between the simulator's engine front (sim_engine.c: the synthetic token / K/V / Q
 * model and the none / cpu engines) and its CUDA engine (sim_engine_cuda.c). The CUDA engine
 * reuses the host synthesis, so `--compute cpu` and `--compute cuda` attend over the same
 * numbers; only where the kernels run differs. */
#ifndef RKV_TOOL_SIM_CUDA_H
#define RKV_TOOL_SIM_CUDA_H

#include "sim.h"

/* ---- host synthesis, implemented in sim_engine.c ---------------------------------------- */

/* Grows *p (realloc, capacity doubling from 64) to hold `need` elements of `elem` bytes;
 * prints and returns false when out of memory (*p intact). */
bool sim_grow(void **p, size_t *cap, size_t need, size_t elem);

/* Token ids of request `id` (made on first use, NULL when id is unknown or out of memory). */
const int32_t *sim_engine_tokens(sim_engine *e, int64_t id);
/* Releases the token ids of a finished request. */
void sim_engine_drop_tokens(sim_engine *e, int64_t id);
/* K and V rows [head_dim] of the token at logical position pos (layer l, kv head h). */
void sim_engine_make_kv(const sim_engine *e, int64_t id, int64_t pos, int32_t tok, uint32_t l,
                        uint32_t h, float *k, float *v);
/* Query rows [q_heads][head_dim] of the token at logical position pos (layer l). */
void sim_engine_make_q(const sim_engine *e, int64_t id, int64_t pos, int32_t tok, uint32_t l,
                       float *q);

/* ---- CUDA engine, implemented in sim_engine_cuda.c -------------------------------------- */

typedef struct sim_cuda sim_cuda;

/* Creates the GPU state for one policy run: a CUDA backend and KV pool shaped like bm, the
 * device query-window ring (R-KV, SnapKV), a host swap pool of host_blocks blocks. Without a
 * CUDA build, without a usable GPU, or for a shape outside the kernels' closed set it prints
 * one clear line on stderr ("rkv sim: --compute cuda: ...") and returns false. `host` provides
 * the synthesis and must outlive the engine; `times` is where the metrics accumulate. */
bool sim_cuda_create(sim_engine *host, const sim_model *m, rkv_blockmgr *bm,
                     const rkv_evict_params *ev, uint32_t host_blocks, uint32_t max_seqs,
                     sim_engine_times *times, sim_cuda **out);
void sim_cuda_destroy(sim_cuda *c);
/* Executes a plan on the GPU and fills outs[plan->n_seqs] (ids already set, the rest zero).
 * Returns false with a message on stderr. */
bool sim_cuda_run(sim_cuda *c, const rkv_sched_plan *p, rkv_sched_output *outs);

#endif /* RKV_TOOL_SIM_CUDA_H */
