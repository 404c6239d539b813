/* librkv scheduler: continuous batching over the block manager with compression-aware
 * admission. Each step it produces a plan the embedding engine executes — which sequences
 * decode, which prefill chunks run, which sequences compress after this step's attention,
 * copy-on-write block copies, swap-out / swap-in ops against a host pool, preemptions — and
 * the engine reports the sampled tokens back.
 *
 * Admission knows eviction: a sequence under budget B never holds more than B + buffer tokens
 * per stream (plus its prompt until the first compression), so its whole-life footprint is
 * bounded and `reserve` mode can admit exactly what never needs preemption.
 *
 * Determinism: decisions depend only on the calls made (order and arguments), never on
 * time, addresses or hashing of pointers; replicas fed the same calls make identical plans
 * (compare rkv_sched_plan_hash). Not internally synchronised: one thread per handle. */
#ifndef RKV_SCHEDULER_H
#define RKV_SCHEDULER_H

#include <rkv/blockmgr.h>
#include <rkv/evict.h>
#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_sched rkv_sched;

typedef enum rkv_sched_admission {
  RKV_SCHED_RESERVE = 0,    /* admit only while the sum of bounded footprints fits: never
                             * preempts (unless the engine skips a flagged compression) */
  RKV_SCHED_OPTIMISTIC = 1, /* admit while the next chunk fits now; preempt when blocks run out */
} rkv_sched_admission;

typedef enum rkv_sched_preempt_mode {
  RKV_SCHED_PREEMPT_RECOMPUTE = 0, /* drop the KV; prompt + generated tokens prefill again
                                    * (under eviction the rebuilt cache is compressed anew,
                                    * so it need not equal the one dropped) */
  RKV_SCHED_PREEMPT_SWAP = 1,      /* copy the KV to the host pool; restore it bit-identical
                                    * (falls back to recompute when the host pool is full) */
} rkv_sched_preempt_mode;

/* What eviction may do to a prompt prefix a request shares through the prefix cache
 * (rkv_sched_set_prefix). */
typedef enum rkv_sched_prefix_rule {
  RKV_SCHED_PREFIX_PROTECT = 0, /* the hashed prefix is protected: compression selects only
                                 * among the tokens after it and the budget counts those; the
                                 * prefix stays shared and cached (TensorRT-LLM's rule) */
  RKV_SCHED_PREFIX_COPY = 1,    /* compression may evict prefix tokens too: shared blocks are
                                 * copied first, so the request gives up sharing them */
} rkv_sched_prefix_rule;

/* The newest layout of rkv_sched_config (each field added later says its version) */
#define RKV_SCHED_CONFIG_VERSION 5
typedef struct rkv_sched_config {
  uint32_t struct_size;        /* sizeof(rkv_sched_config) */
  uint32_t max_batched_tokens; /* token budget per step (decode = 1, prefill = chunk) */
  uint32_t max_seqs;           /* sequences per step and running at once */
  uint32_t max_prefill_chunk;  /* longest prefill chunk (0 = max_batched_tokens) */
  rkv_sched_admission admission;
  rkv_sched_preempt_mode preempt;
  uint32_t host_blocks;           /* host (swap) pool size in blocks; 0 = no swapping */
  rkv_evict_params evict;         /* engine default policy; FULL = no eviction */
  const rkv_allocator *allocator; /* NULL = libc */
  const rkv_logger *logger;       /* NULL = silent */
  bool check_every_step;          /* run rkv_sched_check after every step/report (tests) */
  /* Version 2. Plans carry the slot mapping of their appends (plan.slots): int64
   * [layers][max_batched_tokens][kv_heads] allocated at create, 256 slots written per
   * sequence per decode step. Off by default: the executor's K/V write finds each slot through
   * its table mirror (rkv_attn_write_kv_rows), so a decode append costs O(1) per sequence.
   * For engines with their own K/V write. */
  bool plan_slots;
  /* Version 3. Prefix caching: a request admitted with block hashes (rkv_sched_set_prefix)
   * shares the cached groups its prompt starts with and prefills only the rest; its full
   * prompt blocks are registered for later requests. Needs a block manager created with
   * prefix_cache. Under RKV_SCHED_PREFIX_PROTECT reserve admission counts the hit: the
   * shared groups leave the request's own bound (rkv_sched_request_info.bound_blocks) and
   * each is reserved once while any request that shared it runs (docs/PREFIX-CACHING.md);
   * under RKV_SCHED_PREFIX_COPY a sharer reserves its unshared bound. */
  bool prefix_cache;
  /* What compression may do to a hashed prefix, whether or not prefix_cache is on (so runs
   * with and without the cache evict the same tokens). */
  rkv_sched_prefix_rule prefix_rule;
  /* Version 4. Overlap scheduling (vLLM's async scheduling, SGLang's overlap scheduler): step
   * N+1 may be planned while step N is still executing, so the host's planning hides behind
   * the device's step. At most one plan in flight: rkv_sched_step may be called once more
   * before the previous plan is reported, and rkv_sched_report reports the oldest plan. The
   * new plan assumes every token sampled in the plan in flight is not an end of sequence;
   * a sequence reported ended (eos) while already in the new plan runs there once more, its
   * token is discarded (not counted, not to be emitted), and it is freed at that plan's
   * report. A sequence the plan in flight compresses gets its next token at the known
   * post-compression length (protected prefix + budget): the append waits for the report
   * of the plan in flight, so the new plan is complete, and may be begun, only after that
   * report (the order rkv_exec needs anyway: finish N, report N, begin N+1). Sequences in the
   * plan in flight are never preempted by the new plan; one whose compression would copy
   * shared blocks waits a step. Per-sequence results equal sync mode's. Off by default;
   * plan_slots must be off. docs/OVERLAP.md. */
  bool overlap;
  /* Version 5. Cache-aware admission (SGLang's longest-prefix-match order, in a window): with
   * prefix_cache, each admission considers the first cache_lookahead waiting requests of the
   * head's priority and admits the one whose prompt starts with the most cached blocks (ties:
   * queue order), so requests for a prompt still in the cache run before it is reclaimed. A
   * request passed over cache_lookahead times goes first (nobody waits more than that many
   * admissions longer than in queue order). A pick that does not fit hands that admission
   * back to the head (queue order), so it never holds up a request that fits; the admission
   * stops when the head does not fit either. O(cache_lookahead x cached blocks) lookups per
   * admission attempt (a few dozen is plenty: BENCHMARKS.md). 0 = queue order (the default); at
   * most 65536; no effect without prefix_cache. docs/PREFIX-CACHING.md. 64 bits wide so that it
   * starts past the end of a version 4 struct, padding included: a version 4 caller's struct_size
   * leaves it 0. */
  uint64_t cache_lookahead;
} rkv_sched_config;
#define RKV_SCHED_CONFIG_INIT                                                                      \
  {                                                                                                \
    sizeof(rkv_sched_config), 2048, 256, 0, RKV_SCHED_RESERVE, RKV_SCHED_PREEMPT_RECOMPUTE, 0,     \
        RKV_EVICT_PARAMS_INIT, NULL, NULL, false, false, false, RKV_SCHED_PREFIX_PROTECT, false, 0 \
  }

/* One request. `evict` NULL = the engine default (config.evict); when given it is copied. */
typedef struct rkv_sched_request {
  int64_t id;             /* caller-chosen, >= 0, unique among live requests */
  int64_t prompt_len;     /* >= 1 */
  int64_t max_new_tokens; /* >= 1 */
  int32_t priority;       /* larger runs first and is preempted last */
  double arrival;         /* seconds; orders equal priorities (earlier first) */
  const rkv_evict_params *evict;
} rkv_sched_request;

/* ---- Lifecycle ------------------------------------------------------------------------- */

/* Creates a scheduler over a caller-owned block manager `m` (borrowed: it must outlive the
 * scheduler, and nobody else may create or free sequences in it while the scheduler runs).
 * cfg NULL = defaults. RKV_ERR_INVALID_ARG (bad config or evict params, or max_seqs x
 * streams per sequence above 2^30; text in err when err_len > 0), RKV_ERR_NO_MEMORY.
 * *out = NULL on failure. O(host_blocks + max_seqs * streams_per_seq) memory for the plan
 * arrays, allocated once here. */
RKV_API rkv_status rkv_sched_create(const rkv_sched_config *cfg, rkv_blockmgr *m, rkv_sched **out,
                                    char *err, size_t err_len);
/* Accepts NULL. Frees the scheduler's own memory; the sequences it created in the block
 * manager are freed too. */
RKV_API void rkv_sched_destroy(rkv_sched *s);
/* Text of the last failed call on this handle ("" if none). */
RKV_API const char *rkv_sched_last_error(const rkv_sched *s);

/* Queues a request (state waiting). RKV_ERR_INVALID_ARG (id < 0, lengths < 1, NaN arrival, bad
 * evict params), RKV_ERR_EXISTS (duplicate live id), RKV_ERR_CAPACITY (its bounded footprint can
 * never fit the pool: e.g. a prompt larger than the whole pool), RKV_ERR_NO_MEMORY. A rejected
 * request changes nothing. Amortised O(log live) plus O(waiting) for the ordered insert. */
RKV_API rkv_status rkv_sched_add_request(rkv_sched *s, const rkv_sched_request *req);
/* Attaches the prompt's chained block hashes (rkv_prefix_hash_blocks over its first
 * n * block_size tokens; copied) to a waiting request that has not run yet. At admission
 * (config.prefix_cache) the request shares the cached groups its prompt starts with, and
 * prefills from there; at least the last token of the prompt is always computed (the last
 * `window` tokens for policies that read the query window, so the window is the one a run
 * without the cache sees). Its full prompt blocks are registered as they are planned. Under
 * RKV_SCHED_PREFIX_PROTECT the first n * block_size tokens become its protected prefix
 * (rkv_blockmgr_seq_protect), with or without the cache. n = 0 detaches.
 * RKV_ERR_NOT_FOUND, RKV_ERR_STATE (not waiting, or it ran before), RKV_ERR_INVALID_ARG
 * (n * block_size > prompt_len, hashes NULL with n > 0), RKV_ERR_NO_MEMORY; nothing changes
 * on failure. */
RKV_API rkv_status rkv_sched_set_prefix(rkv_sched *s, int64_t id, const uint64_t *block_hashes,
                                        uint32_t n);

typedef struct rkv_sched_prefix_stats {
  uint32_t struct_size;    /* sizeof(rkv_sched_prefix_stats), set by the caller */
  uint64_t admissions;     /* admissions (first and after recompute) of hashed requests */
  uint64_t admissions_hit; /* of those, with at least one cached group */
  uint64_t hashed_tokens;  /* prompt tokens covered by hashes at those admissions */
  uint64_t hit_tokens;     /* of those, taken from the cache instead of computed */
  /* Since version 5: admissions made ahead of an earlier waiting request (cache-aware
   * admission, config.cache_lookahead) */
  uint64_t admissions_ahead;
} rkv_sched_prefix_stats;
/* RKV_ERR_INVALID_ARG on NULL or a bad struct_size. */
RKV_API rkv_status rkv_sched_get_prefix_stats(const rkv_sched *s, rkv_sched_prefix_stats *out);

/* Aborts a live request in any state; its blocks (device and host) are freed now.
 * RKV_ERR_NOT_FOUND. Not valid for a request in an unreported plan (RKV_ERR_STATE). */
RKV_API rkv_status rkv_sched_abort(rkv_sched *s, int64_t id);

/* Forks a running request (parallel sampling, beam search): `child` shares every block of
 * `parent` (ref counts, nothing copied now; the first append into a shared partial block
 * puts a copy-on-write op in a plan's `copies`), inherits its progress (tokens computed and
 * generated so far, priority, arrival, eviction policy) and stops after max_new_tokens
 * generated in total (counting the parent's). Announced in the next plan's `forks` so the
 * engine can fork per-sequence state (query window, sampler). The child reserves its own
 * whole-life bound, as if nothing were shared.
 * RKV_ERR_NOT_FOUND (parent not live), RKV_ERR_STATE (parent not running, or in the
 * outstanding plan), RKV_ERR_EXISTS (child id live, or finished since the last plan: the next
 * plan drops its engine state after its forks, so such an id may be a child only after the
 * next step), RKV_ERR_INVALID_ARG (child < 0,
 * max_new_tokens <= tokens already generated), RKV_ERR_CAPACITY (max_seqs running),
 * RKV_ERR_NO_BLOCKS (reserve mode: the child's bound does not fit now; retry later),
 * RKV_ERR_NO_MEMORY. Nothing changes on error. O(blocks of the parent). */
RKV_API rkv_status rkv_sched_fork(rkv_sched *s, int64_t parent, int64_t child,
                                  int64_t max_new_tokens);

/* Limits the pool the scheduler plans with to min(total, used + limit) blocks, `used` read
 * from the block manager now: pass a free count measured since the block manager last
 * changed. Tensor parallelism: ranks MIN-all-reduce their free blocks and pass the result
 * before each step; ranks whose block managers hold the same used blocks (same calls, same
 * compressions) then all plan with the smallest rank's pool, whatever their own sizes, and
 * make identical plans. Every decision that reads the pool's size uses this usable pool:
 * the free count of admission, swap-in and growth preemption (optimistic mode preempts
 * once the usable pool is full), reserve admission (usable - watermark, the watermark being
 * the block manager's fraction of the usable pool), rkv_sched_fork's reserve check,
 * add_request's RKV_ERR_CAPACITY, and the abort of a waiting recompute whose bound no longer
 * fits (under a limit only once nothing is running). So a limit below a request's bound
 * rejects or aborts it: treat the limit as the pool size, not as a transient throttle.
 * The host (swap) pool is not limited: give replicas equal host_blocks. UINT32_MAX (the
 * default) = no limit. Sticky until changed. Reads the block manager's stats once (O(1) until
 * some block is shared, then O(blocks + table entries)). */
RKV_API void rkv_sched_set_free_blocks_limit(rkv_sched *s, uint32_t limit);

/* ---- Steps ----------------------------------------------------------------------------- */

typedef enum rkv_sched_kind {
  RKV_SCHED_PREFILL = 0, /* a prompt chunk (or a recompute chunk after preemption) */
  RKV_SCHED_DECODE = 1,  /* one token */
} rkv_sched_kind;

/* One scheduled sequence. Its n_tokens new tokens are cache positions
 * [kv_len - n_tokens, kv_len) of EVERY stream (blocks already appended in the block manager;
 * read slots with rkv_blockmgr_stream_slot or an exported table). Before the step, streams
 * held kv_len - n_tokens tokens. */
typedef struct rkv_sched_seq {
  int64_t id;
  rkv_sched_kind kind;
  uint32_t n_tokens;
  int64_t pos;    /* logical token index of the first new token (0 = prompt start) */
  int32_t kv_len; /* per-stream cached tokens after this step's append */
  bool samples;   /* this chunk ends the (re)prefill or is a decode: a token is sampled */
  bool compress;  /* after this step's attention, compress every stream of the
                   * sequence (each layer) with `evict` down to evict->budget */
  const rkv_evict_params *evict; /* owned by the scheduler; valid while the request lives */
} rkv_sched_seq;

/* Copies a swapped block: device block `device` <-> host pool block `host`. */
typedef struct rkv_sched_swap {
  int32_t device;
  int32_t host;
} rkv_sched_swap;

/* A fork made by rkv_sched_fork since the previous plan. */
typedef struct rkv_sched_fork_op {
  int64_t parent;
  int64_t child;
} rkv_sched_fork_op;

/* A step's plan. Every array is owned by the scheduler and valid until the next
 * rkv_sched_step (with config.overlap: until the step after that) / rkv_sched_destroy. The
 * engine executes, in this order:
 *  0. forks (engine-side state only: the blocks are already shared), then drops `finished`,
 *  1. swap_out (device -> host), 2. swap_in (host -> device), 3. copies (CoW, whole blocks),
 *  4. forward over seqs (write K/V, attention), 5. for seqs with compress, evict each layer,
 *  then calls rkv_sched_report. Device blocks of swapped-out / preempted sequences are
 * already free in the block manager and may be handed to other sequences in this very plan:
 * step 1 must finish before step 4 writes anything. */
typedef struct rkv_sched_plan {
  uint64_t step;             /* 0, 1, 2, ... */
  const rkv_sched_seq *seqs; /* [n_seqs] decodes first, then prefill chunks
                              * (each group in priority, then arrival order) */
  uint32_t n_seqs;
  uint32_t n_decode;
  uint32_t n_batched_tokens;    /* sum of n_tokens */
  const rkv_block_copy *copies; /* [n_copies] */
  uint32_t n_copies;
  const rkv_sched_swap *swap_out;
  uint32_t n_swap_out;
  const rkv_sched_swap *swap_in;
  uint32_t n_swap_in;
  const int64_t *preempted; /* [n_preempted] ids preempted this step (KV gone or swapped) */
  uint32_t n_preempted;
  const int64_t *swapped_out; /* [n_swapped_out] subset of preempted that went to the host */
  uint32_t n_swapped_out;
  const int64_t *swapped_in; /* [n_swapped_in] ids restored this step (also in seqs) */
  uint32_t n_swapped_in;
  const int64_t *finished; /* [n_finished] ids finished (or aborted) since the last plan;
                            * their blocks are already free */
  uint32_t n_finished;
  const rkv_sched_fork_op *forks; /* [n_forks] forks since the last plan, in call order
                                   * (a child aborted since is also in `finished`) */
  uint32_t n_forks;
  /* ---- since version 2 (an engine built against version 1 never reads these) ---- */
  /* The slot mapping the appends of this plan computed (NULL unless config.plan_slots), laid
   * out the way K/V rows leave a QKV projection: token t of seqs[i] at plan row
   * row_i + t (row_i = the n_tokens of the sequences before it) has, in layer l and kv head
   * h, the global slot slots[l * slot_layer_stride + (row_i + t) * kv_heads + h]. So
   * slots + l * slot_layer_stride is layer l's whole slot mapping, [n_batched_tokens][kv_heads]. */
  const int64_t *slots;
  uint64_t slot_layer_stride; /* max_batched_tokens x kv_heads */
  /* [n_seqs] 1 when the sequence's block-table rows changed beyond their lengths since the
   * previous plan's append (a block taken, a shared block copied, the sequence created or
   * restored; compactions are the executor's own): table mirrors need only the lengths
   * where it is 0. */
  const uint8_t *rows_changed;
  /* Ids whose KV starts empty in this plan: admitted, or re-admitted after a recompute
   * preemption (their first chunk has pos 0). Engine state for them starts fresh. */
  const int64_t *started;
  uint32_t n_started;
  /* Ids whose KV is gone since the previous plan: finished, aborted, or preempted by
   * recompute in this step (not swapped out: that KV comes back). Drop their engine state,
   * before handling `started` (an id may finish and be added again as a new request). */
  const int64_t *dropped;
  uint32_t n_dropped;
} rkv_sched_plan;

/* Plans one step: frees nothing the engine still needs, appends the step's tokens to the
 * block manager, preempts when optimistic admission ran out of blocks, swaps in, admits.
 * An empty plan (n_seqs 0) means nothing can run now (idle or blocked; with a plan in flight
 * also: everything running ends in it, so plan again after its report).
 * RKV_ERR_STATE if the previous plan was not reported (with config.overlap: if two plans are
 * unreported), RKV_ERR_NO_MEMORY if the plan's
 * arrays or the block manager's tables could not grow (both: nothing changes, and the same
 * step may be retried: every allocation the step may need, in the scheduler and in the block
 * manager, is taken before its first change). Any other error means the block manager refused
 * something its own accounting promised (it was modified behind the scheduler's back, or a
 * bug): the scheduler's state is then undefined.
 * Host work O(running sequences + scheduled sequences x streams + preempted / swapped blocks)
 * plus one read of the block manager's stats (O(blocks + table entries) once some block is
 * shared); no allocation except amortised growth: the plan's lists when more requests are
 * live than ever before, block-table rows when a stream outgrows its capacity. */
RKV_API rkv_status rkv_sched_step(rkv_sched *s, const rkv_sched_plan **plan);

/* What the engine reports for each scheduled sequence of the oldest unreported plan (any
 * order; every scheduled id exactly once). */
typedef struct rkv_sched_output {
  int64_t id;
  bool eos;                /* the sampled token ended the sequence (ignored if !samples) */
  bool compressed;         /* the engine ran the flagged compression */
  uint64_t tokens_evicted; /* from rkv_evict_result, summed over layers (metrics only) */
  uint32_t blocks_freed;
} rkv_sched_output;

/* Applies the engine's results for the oldest unreported plan: tokens generated, finishes
 * (max_new_tokens or eos; blocks freed now), compressions (per-stream lengths re-read from the
 * block manager). With a newer plan outstanding (config.overlap) a sequence ending now that
 * the newer plan runs is freed at that plan's report instead (its token there is discarded),
 * and the tokens the newer plan deferred behind this plan's compressions are appended now.
 * All-or-nothing: RKV_ERR_INVALID_ARG (unknown / duplicate / missing id: nothing applied),
 * RKV_ERR_STATE (no plan outstanding). O(n). */
RKV_API rkv_status rkv_sched_report(rkv_sched *s, const rkv_sched_output *outs, uint32_t n);

/* ---- Queries ---------------------------------------------------------------------------- */

typedef enum rkv_sched_state {
  RKV_SCHED_WAITING = 0,
  RKV_SCHED_RUNNING = 1,
  RKV_SCHED_SWAPPED = 2,
  RKV_SCHED_FINISHED = 3, /* only reported by counters: finished ids are forgotten */
} rkv_sched_state;

typedef struct rkv_sched_request_info {
  rkv_sched_state state;
  int64_t prompt_len;
  int64_t generated; /* tokens sampled so far */
  int64_t computed;  /* logical tokens whose K/V is in the cache (or was, if swapped) */
  int32_t kv_len;    /* per-stream cached tokens (after eviction) */
  uint32_t preemptions;
  uint32_t compressions;
  uint64_t bound_blocks; /* whole-life footprint bound used by admission (its own part:
                          * prefix groups it shares under the protect rule are reserved
                          * once for all their sharers, not here) */
} rkv_sched_request_info;

/* RKV_ERR_NOT_FOUND for an id that is not live. */
RKV_API rkv_status rkv_sched_get_request(const rkv_sched *s, int64_t id,
                                         rkv_sched_request_info *out);

/* Blocks a request would need at most over its whole life under `evict` (NULL = default):
 * streams * ceil(min(prompt + max_new, max(prompt, B + buffer)) / block_size), or the full
 * length for RKV_EVICT_FULL. The admission arithmetic, exposed for tools and tests. */
RKV_API uint64_t rkv_sched_bound_blocks(const rkv_sched *s, int64_t prompt_len,
                                        int64_t max_new_tokens, const rkv_evict_params *evict);

/* Metrics in the spirit of vLLM's. Counters are totals since create. */
typedef struct rkv_sched_metrics {
  double kv_cache_usage; /* used / total device blocks, 0..1 */
  double fragmentation;  /* unused slots in allocated blocks / allocated slots */
  uint32_t num_running;
  uint32_t num_waiting;
  uint32_t num_swapped;
  uint32_t used_blocks;
  uint32_t free_blocks;
  uint32_t total_blocks;
  uint32_t host_used_blocks;
  uint32_t host_total_blocks;
  uint64_t reserved_blocks; /* sum of admitted sequences' bounds, plus the shared prefix
                             * groups once each (reserve mode) */
  uint64_t steps;
  uint64_t num_preemptions; /* recompute + swap */
  uint64_t num_preempt_recompute;
  uint64_t num_preempt_swap;
  uint64_t swapped_out_blocks;
  uint64_t swapped_in_blocks;
  uint64_t prompt_tokens;     /* prefill tokens computed (recompute included) */
  uint64_t generation_tokens; /* tokens sampled */
  uint64_t num_finished;
  uint64_t num_aborted;
  uint64_t num_rejected; /* add_request failures */
  uint64_t compressions; /* sequence compressions reported */
  uint64_t evicted_tokens;
  uint64_t compaction_freed_blocks;
  uint32_t max_running; /* most sequences running at once */
} rkv_sched_metrics;

RKV_API void rkv_sched_get_metrics(const rkv_sched *s, rkv_sched_metrics *out);
/* Renders metrics as Prometheus text exposition (names rkv_*; gauges and counters with
 * HELP/TYPE lines) into buf. *written = bytes written without the NUL (or needed, when the
 * buffer is too small: RKV_ERR_CAPACITY, buf then holds a truncated, NUL-terminated prefix).
 * RKV_ERR_INVALID_ARG for NULL m or written. */
RKV_API rkv_status rkv_sched_metrics_prometheus(const rkv_sched_metrics *m, char *buf, size_t cap,
                                                size_t *written);
/* Everything a scrape of this scheduler should show, in the same format and with the same
 * buffer rules: the metrics above (rkv_sched_get_metrics), and with config.prefix_cache the
 * prefix cache's (vLLM's prefix_cache_queries / prefix_cache_hits as
 * rkv_prefix_cache_queries_total / rkv_prefix_cache_hits_total, in prompt tokens; the
 * admissions, those with a hit and those made ahead of an earlier request; the block
 * manager's cached groups and blocks, and the groups inserted, reclaimed and invalidated).
 * RKV_ERR_INVALID_ARG for NULL s or written. */
RKV_API rkv_status rkv_sched_prometheus(const rkv_sched *s, char *buf, size_t cap, size_t *written);

/* 64-bit hash of everything a plan decides (ids, kinds, lengths, flags, ops). Equal plans
 * hash equal across processes and machines. */
RKV_API uint64_t rkv_sched_plan_hash(const rkv_sched_plan *p);

/* Walks every invariant: queue membership and counts, each running/scheduled request has a
 * block-manager sequence of the recorded length and no waiting/swapped one does, only the
 * outstanding plan's requests are marked scheduled (a request counted as computed in a plan
 * nobody holds would decode a prompt whose K/V was never written), host pool chains disjoint
 * and conserved, reserved-block sum, then rkv_blockmgr_check. RKV_OK, RKV_ERR_CORRUPT with the
 * first violation in the last error, or RKV_ERR_NO_MEMORY (the block manager's walk could not
 * get its scratch). O(everything). */
RKV_API rkv_status rkv_sched_check(const rkv_sched *s);

RKV_API const char *rkv_sched_admission_name(rkv_sched_admission a);
RKV_API const char *rkv_sched_preempt_mode_name(rkv_sched_preempt_mode p);

#ifdef __cplusplus
}
#endif
#endif /* RKV_SCHEDULER_H */
