/* `rkv eval --policies oracle`: an upper-bound proxy for any selection at a budget, from the
 * task's structure. The generator knows which tokens the rest of a trace reads (the operand
 * digits until their column's line is written, a column's talk until its line is written,
 * the line until the answer copies its digit); the oracle keeps those first and, when the
 * budget has room for more, the newest of the rest.
 *
 * It runs through the library's own selection and compaction: the executor compresses with
 * H2O's rule (the `window` newest plus the top `budget - window` by per-slot score), and just
 * before each step's compressions the oracle overwrites the per-slot scores of every
 * flagged sequence with its values. It keeps, per stream, the logical position held in each
 * cache slot (a mirror it updates with the same rule) and checks after every compression that
 * the scores the library moved agree with it, so a divergence is an error, never a silent
 * mislabelling. CPU pools, generator version 2, stream granularity only. */
#ifndef RT_EVAL_ORACLE_H
#define RT_EVAL_ORACLE_H

#include <rkv/blockmgr.h>
#include <rkv/scheduler.h>

#include "model.h"

typedef struct rt_oracle rt_oracle;

/* State for n_req requests of up to max_len tokens over layers x kv_heads streams. NULL when
 * out of memory. */
rt_oracle *rt_oracle_create(uint32_t n_req, uint32_t layers, uint32_t kv_heads, int32_t max_len);
void rt_oracle_destroy(rt_oracle *o);

/* Request req's problem: which position is needed until when (generator version 2).
 * RKV_ERR_UNSUPPORTED for another version. */
rkv_status rt_oracle_set_problem(rt_oracle *o, uint32_t req, const rt_task_problem *p,
                                 int32_t prompt_len);

/* A plan fed positions [ss->pos, ss->pos + n_tokens) of request req to every stream. */
rkv_status rt_oracle_append(rt_oracle *o, uint32_t req, const rkv_sched_seq *ss);

/* Before the step's compressions: writes the oracle's value into the score of every slot of
 * request req (which the plan flags), seen from position `now` (the next token's). */
rkv_status rt_oracle_score(rt_oracle *o, uint32_t req, int64_t seq, const rkv_blockmgr *m,
                           float *scores, int32_t now);

/* After the compression of request req under `ep`: the mirror keeps what H2O's rule keeps
 * and must match the scores the library moved. RKV_ERR_INTERNAL (message in err) if not. */
rkv_status rt_oracle_after(rt_oracle *o, uint32_t req, int64_t seq, const rkv_blockmgr *m,
                           const float *scores, const rkv_evict_params *ep, int32_t now, char *err,
                           size_t err_len);

#endif /* RT_EVAL_ORACLE_H */
