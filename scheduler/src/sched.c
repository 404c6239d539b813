/* The continuous-batching scheduler (rkv/scheduler.h): request bookkeeping, the per-step
 * planner (decodes, chunked prefills, preemption by recompute or swap, swap-in, admission by
 * bounded footprint), the report path, metrics and the invariant walker.
 *
 * Requests live in individually allocated records (so pointers the plan hands out stay put),
 * found by id through an open-addressing hash map, and threaded on intrusive doubly linked
 * queues kept in one total order: priority descending, then arrival, then insertion number.
 * The head of `running` is scheduled first; its tail is the preemption victim. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <rkv/scheduler.h>

#include "policy_info.h"
#include "rkv_internal.h"
#include "sched_metrics.h"

typedef enum { Q_NONE = 0, Q_WAITING, Q_RUNNING, Q_SWAPPED } queue_id;

typedef struct req {
  int64_t id;
  int64_t prompt_len;
  int64_t max_new;
  int32_t priority;
  double arrival;
  uint64_t order; /* insertion number: the last tie-break */
  rkv_evict_params evict;
  queue_id q;
  struct req *prev, *next;
  int64_t generated;
  int64_t computed; /* logical tokens whose K/V is cached */
  int64_t target;   /* tokens the current (re)prefill must compute */
  int32_t kv_len;   /* per-stream cached tokens */
  uint32_t preemptions;
  uint32_t compressions;
  uint64_t bound; /* bound of the current admission (reserved while running) */
  bool reserved;  /* bound counted in s->reserved */
  /* the outstanding plans it is in: sched[step & 1] = step + 1 of a plan that scheduled it
   * (0 = none), at position idx[step & 1]; two with config.overlap (the plan in flight and
   * the one made while it runs) */
  uint64_t sched[2];
  uint32_t idx[2];
  bool reported;
  bool draining; /* overlap: ended (eos) in the plan in flight while already in the next one,
                  * whose extra token is discarded; freed when that plan is reported */
  bool deferred; /* overlap: its append in the newest plan waits for the compression the
                  * plan in flight applies (done by that plan's report) */
  /* swap */
  int32_t host_head; /* first host block of the chain, -1 = none */
  uint32_t host_n;
  int32_t *lens; /* [streams] per-stream lengths at swap-out (swap mode only) */
  /* prefix (rkv_sched_set_prefix): the prompt's chained block hashes, and the tokens they
   * cover, protected under RKV_SCHED_PREFIX_PROTECT */
  uint64_t *hashes;
  uint32_t n_hashes;
  int32_t protect;
  uint32_t hit_groups; /* hashes[0..hit_groups) are cached groups it shared at admission and
                        * reserves through the group counts, not in its own bound */
  bool starting;       /* admitted this step: its first chunk announces it in plan.started */
  bool evicts;         /* the policy table: its policy ever compresses */
  uint32_t passed;     /* waiting: admissions made ahead of it (config.cache_lookahead) */
} req;

/* One plan's arrays. config.overlap keeps two: the plan made while the previous one still
 * executes must not overwrite what the engine is reading. */
typedef struct plan_buf {
  rkv_sched_plan plan;
  rkv_sched_seq *seqs;                /* [max_seqs] */
  req **seq_req;                      /* [max_seqs] */
  rkv_block_copy *copies;             /* [copies_cap] */
  rkv_sched_swap *swap_out, *swap_in; /* [host_blocks] */
  int64_t *preempted, *swapped_out;   /* [max_seqs] */
  int64_t *swapped_in;                /* [max_seqs] */
  int64_t *fin;                       /* [fin_cap] the finished ids handed out (grown by step) */
  int64_t *dropped;                   /* [dropped_cap] finished + recompute-preempted */
  rkv_sched_fork_op *forks;           /* [forks_cap] the forks handed out (grown by step) */
  uint32_t fin_cap, dropped_cap, forks_cap;
  int64_t *slots;        /* [layers][max_batched_tokens][kv_heads] the plan's slot mapping */
  uint8_t *rows_changed; /* [max_seqs] */
  int64_t *started;      /* [max_seqs] */
  uint32_t n_started;
  uint32_t promised; /* fresh blocks promised to this plan's flagged compressions: still
                      * taken while the plan is in flight (overlap) */
} plan_buf;

typedef struct queue {
  req *head, *tail;
  uint32_t n;
} queue;

struct rkv_sched {
  rkv_sched_config cfg;
  rkv_allocator alloc_copy;
  const rkv_allocator *alloc;
  rkv_logger log_copy;
  const rkv_logger *log;
  rkv_blockmgr *bm;
  uint32_t streams;
  uint32_t block_size;
  uint32_t total_blocks;
  uint32_t watermark_blocks;
  float watermark; /* the block manager's fraction, re-applied to a capped pool */
  uint32_t bm_max_seqs;
  uint64_t usable_cap; /* used + limit at the last set_free_blocks_limit; UINT64_MAX = none */
  uint32_t step_used;  /* the block manager's used blocks, tracked through plan_step */
  /* fresh blocks promised to this step's flagged compressions of shared blocks: planned as
   * used, so nothing else of the step takes them */
  uint32_t step_promised;
  uint32_t n_started;
  char err[RKV_ERRBUF];

  /* id -> req map (linear probing, backward-shift deletion) */
  req **map;
  uint32_t map_cap; /* power of two */
  uint32_t live;
  uint64_t next_order;

  queue waiting, running, swapped;
  uint64_t reserved; /* the running requests' own bounds + streams x grp_n (shared groups) */
  /* shared prefix groups under the protect rule: hash -> running requests that hit it (open
   * addressing, count 0 = empty); each group with a count is reserved once */
  uint64_t *grp_key;
  uint32_t *grp_cnt;
  uint32_t grp_cap, grp_n;
  uint64_t hashes_live; /* block hashes attached to live requests: bounds grp_n */

  /* host pool */
  int32_t *host_next; /* [host_blocks] chain links */
  int32_t *host_free; /* [host_blocks] free stack */
  uint32_t host_n_free;

  /* plan storage, sized at create: one buffer, two with config.overlap */
  plan_buf pb[2];
  plan_buf *cur;    /* the buffer of the plan being made (plan_step and its helpers) */
  uint64_t step_no; /* number of the next plan */
  uint32_t n_out;   /* plans handed out and not reported (the oldest is reported next) */
  uint32_t copies_cap;
  int64_t *finished; /* [fin_cap] finished since the last plan; fin_cap >= n_fin + live */
  uint32_t fin_cap, n_fin;
  uint64_t slots_cap; /* max_batched_tokens x streams (0 without config.plan_slots) */
  uint32_t kv_heads;
  rkv_sched_fork_op *forks; /* [forks_cap] forks since the last plan */
  uint32_t forks_cap, n_forks;

  rkv_sched_metrics m;
  rkv_sched_prefix_stats prefix;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t ceil_div(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

/* true if a must run before b */
static bool before(const req *a, const req *b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  if (a->arrival != b->arrival) return a->arrival < b->arrival;
  return a->order < b->order;
}

static queue *queue_of(rkv_sched *s, queue_id q) {
  return q == Q_WAITING ? &s->waiting : q == Q_RUNNING ? &s->running : &s->swapped;
}

static void q_remove(rkv_sched *s, req *r) {
  queue *q = queue_of(s, r->q);
  if (r->prev)
    r->prev->next = r->next;
  else
    q->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    q->tail = r->prev;
  r->prev = r->next = NULL;
  q->n--;
  r->q = Q_NONE;
}

/* Ordered insert, scanning from the tail (new and recent requests belong near it). */
static void q_insert(rkv_sched *s, queue_id qid, req *r) {
  queue *q = queue_of(s, qid);
  req *after = q->tail;
  while (after && before(r, after)) after = after->prev;
  r->prev = after;
  r->next = after ? after->next : q->head;
  if (r->next)
    r->next->prev = r;
  else
    q->tail = r;
  if (after)
    after->next = r;
  else
    q->head = r;
  q->n++;
  r->q = qid;
}

static uint32_t map_slot(const rkv_sched *s, int64_t id) {
  return (uint32_t)(mix64((uint64_t)id) & (s->map_cap - 1));
}

static req *map_find(const rkv_sched *s, int64_t id) {
  if (!s->map_cap) return NULL;
  for (uint32_t i = map_slot(s, id);; i = (i + 1) & (s->map_cap - 1)) {
    if (!s->map[i]) return NULL;
    if (s->map[i]->id == id) return s->map[i];
  }
}

static void map_put_nogrow(rkv_sched *s, req *r) {
  uint32_t i = map_slot(s, r->id);
  while (s->map[i]) i = (i + 1) & (s->map_cap - 1);
  s->map[i] = r;
}

static rkv_status map_reserve(rkv_sched *s, uint32_t want_live) {
  if ((uint64_t)want_live * 2 <= s->map_cap) return RKV_OK;
  uint32_t cap = s->map_cap ? s->map_cap : 64;
  while ((uint64_t)want_live * 2 > cap) {
    if (cap >= (1u << 30)) return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request map full");
    cap *= 2;
  }
  req **nm = rkvi_calloc(s->alloc, sizeof(req *) * cap, sizeof(void *));
  if (!nm) return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request map of %u entries", cap);
  req **old = s->map;
  uint32_t old_cap = s->map_cap;
  s->map = nm;
  s->map_cap = cap;
  for (uint32_t i = 0; i < old_cap; i++)
    if (old[i]) map_put_nogrow(s, old[i]);
  rkvi_free(s->alloc, old, sizeof(req *) * old_cap);
  return RKV_OK;
}

static void map_del(rkv_sched *s, int64_t id) {
  uint32_t mask = s->map_cap - 1, i = map_slot(s, id);
  while (s->map[i] && s->map[i]->id != id) i = (i + 1) & mask;
  if (!s->map[i]) return;
  s->map[i] = NULL;
  /* backward-shift: re-place the rest of the cluster so lookups never stop early */
  for (uint32_t j = (i + 1) & mask; s->map[j]; j = (j + 1) & mask) {
    req *r = s->map[j];
    s->map[j] = NULL;
    map_put_nogrow(s, r);
  }
}

static void req_free(rkv_sched *s, req *r) {
  if (r->lens) rkvi_free(s->alloc, r->lens, sizeof(int32_t) * s->streams);
  if (r->hashes) rkvi_free(s->alloc, r->hashes, sizeof(uint64_t) * r->n_hashes);
  s->hashes_live -= r->n_hashes;
  rkvi_free(s->alloc, r, sizeof(req));
}

static const rkv_evict_params *req_evict(const req *r) {
  return &r->evict;
}

static bool evicts(const rkv_evict_params *e) {
  return rkvi_policy_info(e->policy).evicts;
}

/* Tokens of r's protected prefix held now (a prefix protects only what is computed). */
static int32_t protected_now(const req *r) {
  return r->protect < r->kv_len ? r->protect : r->kv_len;
}

/* Whether r's streams, at len tokens, compress: the protected prefix does not count. */
/* rkv_evict_should_compress without re-validating the request's parameters (validated when
 * it was added) on every sequence of every step. */
static bool compress_due(const req *r, int32_t len, bool after_prefill) {
  if (!r->evicts) return false;
  const int32_t prot = r->protect < len ? r->protect : len;
  const int64_t rest = (int64_t)len - prot;
  return rest >= (int64_t)r->evict.budget + (after_prefill ? 0 : r->evict.buffer);
}

static uint64_t bound_tokens(const rkv_evict_params *e, int32_t protect, int64_t prefill,
                             int64_t remaining) {
  int64_t total = prefill + remaining;
  if (!evicts(e)) return (uint64_t)total;
  int64_t cap = (int64_t)protect + e->budget + e->buffer;
  int64_t peak = prefill > cap ? prefill : cap;
  return (uint64_t)(total < peak ? total : peak);
}

static uint64_t bound_blocks_of(const rkv_sched *s, const rkv_evict_params *e, int32_t protect,
                                int64_t prefill, int64_t remaining) {
  return (uint64_t)s->streams *
         ceil_div(bound_tokens(e, protect, prefill, remaining), s->block_size);
}

/* Bound of a request's next admission: its (re)prefill plus what it may still generate. */
static uint64_t req_bound(const rkv_sched *s, const req *r) {
  int64_t remaining = r->max_new - r->generated;
  return bound_blocks_of(s, &r->evict, r->protect, r->target, remaining > 0 ? remaining : 0);
}

/* Blocks of the pool the scheduler may plan with: the whole pool, or less under an external
 * limit (tensor parallelism). Every decision that reads the pool's total or free count goes
 * through here, so ranks with different pools but equal usage decide alike. */
static uint32_t usable_total(const rkv_sched *s) {
  return s->usable_cap < s->total_blocks ? (uint32_t)s->usable_cap : s->total_blocks;
}

/* The block manager's watermark rule (ceil(watermark * total), float error stripped) applied
 * to the usable pool, so it too is equal on ranks whose physical pools differ. */
static uint32_t usable_watermark(const rkv_sched *s) {
  uint32_t total = usable_total(s);
  if (total == s->total_blocks) return s->watermark_blocks;
  double wm = (double)s->watermark * total;
  return (uint32_t)ceil(wm - wm * 1e-6);
}

static uint32_t reserve_capacity(const rkv_sched *s) {
  uint32_t total = usable_total(s), w = usable_watermark(s);
  return total > w ? total - w : 0;
}

/* ---- shared prefix groups in the reservation ----------------------------------------------
 * Under the protect rule with the prefix cache, a request that shares h cached groups at
 * admission holds them unchanged for its whole run (a protected prefix is never compacted).
 * Its own bound leaves them out; each group is reserved once, while any running request that
 * hit it runs. The group's first owner (the request that computed it) still counts it in its
 * own bound, so a group is reserved at most twice, whatever the number of sharers, and never
 * under-counted when the owner finishes first. */

static bool groups_counted(const rkv_sched *s) {
  return s->cfg.prefix_cache && s->cfg.prefix_rule == RKV_SCHED_PREFIX_PROTECT;
}

static uint32_t grp_slot(const rkv_sched *s, uint64_t key) {
  uint32_t i = (uint32_t)(mix64(key) & (s->grp_cap - 1));
  while (s->grp_cnt[i] && s->grp_key[i] != key) i = (i + 1) & (s->grp_cap - 1);
  return i;
}

static uint32_t grp_count(const rkv_sched *s, uint64_t key) {
  return s->grp_cap ? s->grp_cnt[grp_slot(s, key)] : 0;
}

/* Room for every hash live requests carry (grp_n never exceeds it): taken by set_prefix, so
 * admission and release never allocate. */
static rkv_status grp_reserve(rkv_sched *s, uint64_t keys) {
  if (keys * 2 <= s->grp_cap) return RKV_OK;
  uint64_t cap = s->grp_cap ? s->grp_cap : 64;
  while (keys * 2 > cap) cap *= 2;
  if (cap > (1u << 30)) return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "prefix group map full");
  uint64_t *nk = rkvi_calloc(s->alloc, sizeof(uint64_t) * cap, 16);
  uint32_t *nc = nk ? rkvi_calloc(s->alloc, sizeof(uint32_t) * cap, 16) : NULL;
  if (!nc) {
    rkvi_free(s->alloc, nk, sizeof(uint64_t) * cap);
    return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "prefix group map of %llu entries",
                     (unsigned long long)cap);
  }
  uint64_t *ok = s->grp_key;
  uint32_t *oc = s->grp_cnt, old = s->grp_cap;
  s->grp_key = nk;
  s->grp_cnt = nc;
  s->grp_cap = (uint32_t)cap;
  for (uint32_t i = 0; i < old; i++)
    if (oc[i]) {
      const uint32_t j = grp_slot(s, ok[i]);
      s->grp_key[j] = ok[i];
      s->grp_cnt[j] = oc[i];
    }
  rkvi_free(s->alloc, ok, sizeof(uint64_t) * old);
  rkvi_free(s->alloc, oc, sizeof(uint32_t) * old);
  return RKV_OK;
}

/* Groups among r's first h hashes no running request has hit yet: reserved anew if r runs. */
static uint32_t grp_new(const rkv_sched *s, const req *r, uint32_t h) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < h; i++) n += grp_count(s, r->hashes[i]) == 0;
  return n;
}

static void grp_take(rkv_sched *s, req *r, uint32_t h) {
  for (uint32_t i = 0; i < h; i++) {
    const uint32_t j = grp_slot(s, r->hashes[i]);
    if (!s->grp_cnt[j]++) {
      s->grp_key[j] = r->hashes[i];
      s->grp_n++;
      s->reserved += s->streams;
    }
  }
  r->hit_groups = h;
}

static void grp_drop(rkv_sched *s, req *r) {
  const uint32_t mask = s->grp_cap - 1;
  for (uint32_t i = 0; i < r->hit_groups; i++) {
    uint32_t j = grp_slot(s, r->hashes[i]);
    RKV_ASSERT(s->grp_cnt[j] > 0);
    if (--s->grp_cnt[j]) continue;
    s->grp_n--;
    s->reserved -= s->streams;
    /* backward-shift deletion: re-place the rest of the cluster */
    for (uint32_t k = (j + 1) & mask; s->grp_cnt[k]; k = (k + 1) & mask) {
      const uint64_t key = s->grp_key[k];
      const uint32_t cnt = s->grp_cnt[k];
      s->grp_cnt[k] = 0;
      const uint32_t to = grp_slot(s, key);
      s->grp_key[to] = key;
      s->grp_cnt[to] = cnt;
    }
  }
  r->hit_groups = 0;
}

static void release_reservation(rkv_sched *s, req *r) {
  if (r->reserved) {
    s->reserved -= r->bound;
    r->reserved = false;
  }
  if (r->hit_groups) grp_drop(s, r);
}

/* Free blocks of the usable pool during plan_step. The used count is read once per step (O(1)
 * from the free list) and then tracked through every append, free and restore the step makes,
 * so the step's arithmetic never depends on when it re-reads the manager. */
static uint32_t bm_used(const rkv_sched *s) {
  return (uint32_t)(s->total_blocks - rkv_blockmgr_free_blocks(s->bm));
}

static uint32_t bm_free(const rkv_sched *s) {
  uint32_t total = usable_total(s);
  uint64_t taken = (uint64_t)s->step_used + s->step_promised;
  return total > taken ? (uint32_t)(total - taken) : 0;
}

/* Blocks of r's first len tokens per stream that a hash names (the prompt blocks it may
 * register or hit). */
static uint32_t hashed_blocks(const rkv_sched *s, const req *r, int32_t len) {
  const uint64_t full = (uint64_t)len / s->block_size;
  return full < r->n_hashes ? (uint32_t)full : r->n_hashes;
}

/* Under the copy rule a prefix hit may share r's registered prompt blocks after its
 * compression was flagged (an admission later in the same step, or with overlap in the next
 * step, made while this one runs): the copies its compaction then makes are promised too. At
 * most one per kept block of each stream that a hash names. For a sequence not yet in the
 * block manager (an admission, a swap-in); compress_need asks the block manager. */
static uint32_t hit_promise(const rkv_sched *s, const req *r, int32_t len) {
  if (!s->cfg.prefix_cache || s->cfg.prefix_rule != RKV_SCHED_PREFIX_COPY || !r->n_hashes) return 0;
  const uint64_t named = hashed_blocks(s, r, len);
  const uint64_t lead = ceil_div((uint64_t)r->evict.budget, s->block_size);
  return (uint32_t)(s->streams * (named < lead ? named : lead));
}

/* Whether a chunk of n tokens, with r at `computed` tokens of its target and kv_len cached,
 * flags a compression (record_seq's flag): it samples and the streams then exceed the budget.
 * *len is the length after the chunk. */
static bool compress_flagged(const req *r, int64_t computed, int32_t kv_len, uint32_t n,
                             int32_t *len) {
  const bool decode = computed >= r->target;
  *len = kv_len + (int32_t)n;
  return (decode || computed + n >= r->target) && compress_due(r, *len, !decode);
}

/* Fresh blocks a compaction of r to keep, after `pending` more tokens per stream, may take:
 * the shared leading blocks; under the copy rule also the cached ones (its earlier chunks',
 * or a fork parent's it holds) and the first `named` per stream (those a chunk registers),
 * which a later admission's hit may share. The one rule both promises below read. */
static rkv_status copies_bound(const rkv_sched *s, const req *r, int32_t keep, uint32_t pending,
                               uint32_t named, uint32_t *need) {
  if (!s->cfg.prefix_cache || s->cfg.prefix_rule != RKV_SCHED_PREFIX_COPY)
    return rkv_blockmgr_compact_fresh_bound_after(s->bm, r->id, -1, keep, pending, need);
  return rkv_blockmgr_compact_copy_bound(s->bm, r->id, -1, keep, pending, named, need);
}

/* Fresh blocks the compression this step would flag for r (after appending n tokens) may
 * take. Zero when nothing is shared or cached, or no compression is due. */
static rkv_status compress_need(const rkv_sched *s, const req *r, uint32_t n, uint32_t *need) {
  *need = 0;
  int32_t len = 0;
  if (!compress_flagged(r, r->computed, r->kv_len, n, &len)) return RKV_OK;
  const int32_t prot = r->protect < len ? r->protect : len, keep = prot + r->evict.budget;
  /* after this step's append: a stream at or under the budget now may exceed it then */
  const uint32_t named = r->computed >= r->target ? 0 : hashed_blocks(s, r, len);
  return copies_bound(s, r, keep, n, named, need);
}

/* Fresh blocks the compression of r that the report of the plan in flight re-flags in this
 * plan may take, if the engine skips the one flagged there (append_deferred): a stream holds
 * one more token then than it does now. */
static rkv_status skipped_need(const rkv_sched *s, const req *r, int32_t keep, uint32_t *need) {
  *need = 0;
  return r->draining ? RKV_OK : copies_bound(s, r, keep, 1, 0, need);
}

/* compress_need for a sequence that enters the pool this step with `cached` tokens (an
 * admission, whose cached tokens are its prefix hit; a swap-in, restored into fresh blocks):
 * only blocks a hash names are shared, by the hit now or by a later hit on the blocks its
 * chunk registers, and hit_promise counts each of those once. */
static uint32_t start_need(const rkv_sched *s, const req *r, int64_t computed, int32_t cached,
                           uint32_t n) {
  int32_t len = 0;
  return compress_flagged(r, computed, cached, n, &len) ? hit_promise(s, r, len) : 0;
}

/* Grows an array of `elem`-byte entries ([cap + 1] allocated) to hold `want` entries by
 * doubling. Returns the (possibly moved) array, or NULL with *cap and the array unchanged. */
static void *grow_array(rkv_sched *s, void *a, size_t elem, uint32_t *cap, uint64_t want) {
  if (want <= *cap) return a;
  if (want > (1u << 30)) return NULL;
  uint32_t nc = *cap ? *cap : 16;
  while (nc < want) nc *= 2;
  void *n = rkvi_realloc(s->alloc, a, elem * ((size_t)*cap + 1), elem * ((size_t)nc + 1), 16);
  if (n) *cap = nc;
  return n;
}

#define GROW(s, arr, cap, want)                                            \
  do {                                                                     \
    void *grown_ = grow_array((s), (arr), sizeof(*(arr)), &(cap), (want)); \
    if (!grown_ && (want) > (cap)) /* an empty array may stay NULL */      \
      return rkvi_fail((s)->err, RKV_ERR_NO_MEMORY, "%s of %llu", #arr,    \
                       (unsigned long long)(want));                        \
    (arr) = grown_;                                                        \
  } while (0)

/* Keeps fin_cap >= n_fin + live with `extra` more live requests. Every finished id was a live
 * request, so once add_request and fork have grown the list, abort, step and report push
 * ids without allocating (and so without failing halfway). */
static rkv_status reserve_finished(rkv_sched *s, uint32_t extra) {
  GROW(s, s->finished, s->fin_cap, (uint64_t)s->n_fin + s->live + extra);
  return RKV_OK;
}

static void push_finished(rkv_sched *s, int64_t id) {
  RKV_ASSERT(s->n_fin < s->fin_cap);
  s->finished[s->n_fin++] = id;
}

/* Frees a live request everywhere: queue, block manager, host pool, map, memory. */
static void drop_request(rkv_sched *s, req *r) {
  if (r->q == Q_RUNNING) (void)rkv_blockmgr_seq_free(s->bm, r->id);
  int32_t h = r->host_head;
  while (h >= 0) {
    int32_t nx = s->host_next[h];
    s->host_free[s->host_n_free++] = h;
    h = nx;
  }
  release_reservation(s, r);
  if (r->q != Q_NONE) q_remove(s, r);
  map_del(s, r->id);
  s->live--;
  req_free(s, r);
}

/* A request that ended: its id goes to the next plan's finished list, its blocks are freed. */
static void finish_request(rkv_sched *s, req *r) {
  push_finished(s, r->id);
  drop_request(s, r);
  s->m.num_finished++;
}

/* ---- plans in flight (config.overlap) ------------------------------------------------ */

static plan_buf *buf_of(rkv_sched *s, uint64_t step) {
  return &s->pb[s->cfg.overlap ? step & 1 : 0];
}

static bool in_plan(const req *r, uint64_t step) {
  return r->sched[step & 1] == step + 1;
}

/* Whether r is in a plan handed out and not reported yet. */
static bool outstanding(const rkv_sched *s, const req *r) {
  for (uint32_t k = 1; k <= s->n_out; k++)
    if (in_plan(r, s->step_no - k)) return true;
  return false;
}

/* r's entry in the plan in flight while the next one is made (overlap), else NULL. */
static const rkv_sched_seq *in_flight(rkv_sched *s, const req *r) {
  if (!s->n_out) return NULL;
  const uint64_t f = s->step_no - 1;
  return in_plan(r, f) ? &buf_of(s, f)->seqs[r->idx[f & 1]] : NULL;
}

/* ---- lifecycle -------------------------------------------------------------------------- */

const char *rkv_sched_admission_name(rkv_sched_admission a) {
  return a == RKV_SCHED_RESERVE ? "reserve" : a == RKV_SCHED_OPTIMISTIC ? "optimistic" : "invalid";
}

const char *rkv_sched_preempt_mode_name(rkv_sched_preempt_mode p) {
  return p == RKV_SCHED_PREEMPT_RECOMPUTE ? "recompute"
         : p == RKV_SCHED_PREEMPT_SWAP    ? "swap"
                                          : "invalid";
}

static rkv_status cfg_fail(char *err, size_t err_len, const char *msg) {
  if (err && err_len) snprintf(err, err_len, "%s", msg);
  return RKV_ERR_INVALID_ARG;
}

rkv_status rkv_sched_create(const rkv_sched_config *cfg_in, rkv_blockmgr *m, rkv_sched **out,
                            char *err, size_t err_len) {
  if (err && err_len) err[0] = '\0';
  if (!out) return cfg_fail(err, err_len, "rkv_sched_create: out is NULL");
  *out = NULL;
  if (!m) return cfg_fail(err, err_len, "rkv_sched_create: block manager is NULL");
  rkv_sched_config def = RKV_SCHED_CONFIG_INIT;
  rkv_sched_config cfg = def;
  if (cfg_in) {
    /* version 1 ended at check_every_step; its callers get version 2's defaults after it */
    if (cfg_in->struct_size < offsetof(rkv_sched_config, plan_slots) ||
        cfg_in->struct_size > sizeof(rkv_sched_config))
      return cfg_fail(err, err_len,
                      "rkv_sched_create: struct_size is not a known version (use "
                      "RKV_SCHED_CONFIG_INIT)");
    memcpy(&cfg, cfg_in, cfg_in->struct_size);
    cfg.struct_size = sizeof(rkv_sched_config);
  }
  if (cfg.max_batched_tokens < 1 || cfg.max_seqs < 1 || cfg.max_seqs > (1u << 20))
    return cfg_fail(err, err_len, "max_batched_tokens must be >= 1 and max_seqs in [1, 2^20]");
  if (cfg.max_prefill_chunk == 0 || cfg.max_prefill_chunk > cfg.max_batched_tokens)
    cfg.max_prefill_chunk = cfg.max_batched_tokens;
  if (cfg.admission != RKV_SCHED_RESERVE && cfg.admission != RKV_SCHED_OPTIMISTIC)
    return cfg_fail(err, err_len, "admission must be reserve or optimistic");
  if (cfg.preempt != RKV_SCHED_PREEMPT_RECOMPUTE && cfg.preempt != RKV_SCHED_PREEMPT_SWAP)
    return cfg_fail(err, err_len, "preempt must be recompute or swap");
  if (cfg.host_blocks > (1u << 30)) return cfg_fail(err, err_len, "host_blocks too large");
  if (cfg.prefix_rule != RKV_SCHED_PREFIX_PROTECT && cfg.prefix_rule != RKV_SCHED_PREFIX_COPY)
    return cfg_fail(err, err_len, "prefix_rule must be protect or copy");
  if (cfg.cache_lookahead > 65536)
    return cfg_fail(err, err_len, "cache_lookahead must be at most 65536");
  if (cfg.overlap && cfg.plan_slots)
    return cfg_fail(err, err_len,
                    "overlap and plan_slots exclude each other: a plan made while another runs "
                    "learns some slots only at that plan's report");
  if (cfg.prefix_cache && !rkv_blockmgr_get_config(m)->prefix_cache)
    return cfg_fail(err, err_len,
                    "prefix_cache needs a block manager created with prefix_cache (blockmgr.h)");
  char e2[RKV_ERRBUF];
  if (rkv_evict_params_validate(&cfg.evict, e2, sizeof e2) != RKV_OK) {
    if (err && err_len) snprintf(err, err_len, "default evict params: %s", e2);
    return RKV_ERR_INVALID_ARG;
  }

  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(m);
  rkv_allocator ac = {0};
  if (cfg.allocator) ac = *cfg.allocator;
  rkv_sched *s = rkvi_calloc(cfg.allocator ? &ac : NULL, sizeof *s, 16);
  if (!s) {
    if (err && err_len) snprintf(err, err_len, "out of memory");
    return RKV_ERR_NO_MEMORY;
  }
  s->cfg = cfg;
  if (cfg.allocator) {
    s->alloc_copy = *cfg.allocator;
    s->alloc = &s->alloc_copy;
  }
  s->cfg.allocator = s->alloc;
  if (cfg.logger) {
    s->log_copy = *cfg.logger;
    s->log = &s->log_copy;
  }
  s->cfg.logger = s->log;
  s->bm = m;
  s->streams = rkv_blockmgr_streams_per_seq(m);
  s->kv_heads = rkv_blockmgr_get_config(m)->num_kv_heads;
  s->block_size = bc->block_size;
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  s->total_blocks = st.total_blocks;
  s->watermark_blocks = st.watermark_blocks;
  s->watermark = bc->watermark;
  s->bm_max_seqs = bc->max_seqs ? bc->max_seqs : 4096;
  s->usable_cap = UINT64_MAX;
  /* at most one CoW copy per stream per step (checked: 65536 streams x 2^20 seqs wraps) */
  uint64_t copies_cap = (uint64_t)s->streams * cfg.max_seqs;
  if (copies_cap > (1u << 30)) {
    rkvi_free(s->alloc, s, sizeof *s);
    return cfg_fail(err, err_len, "max_seqs x streams per sequence exceeds 2^30 copy slots");
  }
  s->copies_cap = (uint32_t)copies_cap;
  if (cfg.plan_slots) {
    s->slots_cap = (uint64_t)cfg.max_batched_tokens * s->streams;
    if (s->slots_cap > ((uint64_t)1 << 28)) {
      rkvi_free(s->alloc, s, sizeof *s);
      return cfg_fail(err, err_len,
                      "plan_slots: max_batched_tokens x streams per sequence exceeds 2^28 slots "
                      "(lower max_batched_tokens, or turn plan_slots off)");
    }
  }

  uint32_t ms = cfg.max_seqs, hb = cfg.host_blocks;
  s->fin_cap = ms + 16;
  rkv_status ret = RKV_OK;
#define ALLOC_ARR(p, n) \
  if (!((p) = rkvi_calloc(s->alloc, sizeof(*(p)) * ((size_t)(n) + 1), 16))) goto oom
  for (uint32_t b = 0; b < (cfg.overlap ? 2u : 1u); b++) {
    plan_buf *pb = &s->pb[b];
    ALLOC_ARR(pb->seqs, ms);
    ALLOC_ARR(pb->seq_req, ms);
    ALLOC_ARR(pb->copies, s->copies_cap);
    ALLOC_ARR(pb->swap_out, hb);
    ALLOC_ARR(pb->swap_in, hb);
    ALLOC_ARR(pb->preempted, ms);
    ALLOC_ARR(pb->swapped_out, ms);
    ALLOC_ARR(pb->swapped_in, ms);
    ALLOC_ARR(pb->fin, s->fin_cap);
    pb->fin_cap = s->fin_cap;
    ALLOC_ARR(pb->dropped, s->fin_cap);
    pb->dropped_cap = s->fin_cap;
    ALLOC_ARR(pb->rows_changed, ms);
    ALLOC_ARR(pb->started, ms);
    /* cache-line aligned: with 8 kv heads a decode row's slots of one layer are one line, not
     * two half lines each written with a read-for-ownership */
    if (cfg.plan_slots &&
        !(pb->slots = rkvi_calloc(s->alloc, sizeof(int64_t) * (s->slots_cap + 1), 64)))
      goto oom;
  }
  s->cur = &s->pb[0];
  ALLOC_ARR(s->finished, s->fin_cap);
  ALLOC_ARR(s->host_next, hb);
  ALLOC_ARR(s->host_free, hb);
#undef ALLOC_ARR
  /* free stack popped from the end: lowest ids first, deterministic */
  for (uint32_t i = 0; i < hb; i++) s->host_free[i] = (int32_t)(hb - 1 - i);
  s->host_n_free = hb;
  ret = map_reserve(s, 32);
  if (ret != RKV_OK) goto oom;
  s->m.total_blocks = s->total_blocks;
  s->m.host_total_blocks = hb;
  *out = s;
  return RKV_OK;
oom:
  rkv_sched_destroy(s);
  if (err && err_len) snprintf(err, err_len, "out of memory for scheduler arrays");
  return RKV_ERR_NO_MEMORY;
}

void rkv_sched_destroy(rkv_sched *s) {
  if (!s) return;
  for (uint32_t i = 0; s->map && i < s->map_cap; i++) {
    req *r = s->map[i];
    if (!r) continue;
    if (r->q == Q_RUNNING) (void)rkv_blockmgr_seq_free(s->bm, r->id);
    req_free(s, r);
  }
  uint32_t ms = s->cfg.max_seqs, hb = s->cfg.host_blocks;
  const rkv_allocator *a = s->alloc;
  rkvi_free(a, s->map, sizeof(req *) * s->map_cap);
  for (uint32_t b = 0; b < 2; b++) {
    plan_buf *pb = &s->pb[b];
    rkvi_free(a, pb->seqs, sizeof(*pb->seqs) * (ms + 1));
    rkvi_free(a, pb->seq_req, sizeof(*pb->seq_req) * (ms + 1));
    rkvi_free(a, pb->copies, sizeof(*pb->copies) * (s->copies_cap + 1));
    rkvi_free(a, pb->swap_out, sizeof(*pb->swap_out) * (hb + 1));
    rkvi_free(a, pb->swap_in, sizeof(*pb->swap_in) * (hb + 1));
    rkvi_free(a, pb->preempted, sizeof(int64_t) * (ms + 1));
    rkvi_free(a, pb->swapped_out, sizeof(int64_t) * (ms + 1));
    rkvi_free(a, pb->swapped_in, sizeof(int64_t) * (ms + 1));
    rkvi_free(a, pb->fin, sizeof(int64_t) * (pb->fin_cap + 1));
    rkvi_free(a, pb->dropped, sizeof(int64_t) * (pb->dropped_cap + 1));
    rkvi_free(a, pb->rows_changed, ms + 1);
    rkvi_free(a, pb->started, sizeof(int64_t) * (ms + 1));
    if (pb->slots) rkvi_free(a, pb->slots, sizeof(int64_t) * (s->slots_cap + 1));
    rkvi_free(a, pb->forks, sizeof(*pb->forks) * (pb->forks_cap + 1));
  }
  rkvi_free(a, s->finished, sizeof(int64_t) * (s->fin_cap + 1));
  rkvi_free(a, s->forks, sizeof(*s->forks) * (s->forks_cap + 1));
  rkvi_free(a, s->grp_key, sizeof(uint64_t) * s->grp_cap);
  rkvi_free(a, s->grp_cnt, sizeof(uint32_t) * s->grp_cap);
  rkvi_free(a, s->host_next, sizeof(int32_t) * (hb + 1));
  rkvi_free(a, s->host_free, sizeof(int32_t) * (hb + 1));
  rkvi_free(a, s, sizeof *s);
}

const char *rkv_sched_last_error(const rkv_sched *s) {
  return s ? s->err : "NULL scheduler";
}

void rkv_sched_set_free_blocks_limit(rkv_sched *s, uint32_t limit) {
  if (!s) return;
  if (limit == UINT32_MAX) {
    s->usable_cap = UINT64_MAX;
    return;
  }
  /* A free count is only meaningful against the usage it was measured at: fix it as a cap on
   * the pool (used + limit) so later frees and appends in this process count exactly as they
   * do on every other rank. */
  s->usable_cap = (uint64_t)bm_used(s) + limit;
}

uint64_t rkv_sched_bound_blocks(const rkv_sched *s, int64_t prompt_len, int64_t max_new_tokens,
                                const rkv_evict_params *evict) {
  if (!s || prompt_len < 0 || max_new_tokens < 0) return 0;
  return bound_blocks_of(s, evict ? evict : &s->cfg.evict, 0, prompt_len, max_new_tokens);
}

rkv_status rkv_sched_add_request(rkv_sched *s, const rkv_sched_request *rq) {
  if (!s) return RKV_ERR_INVALID_ARG;
  rkv_status ret;
  if (!rq) {
    ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "add_request: request is NULL");
    goto rejected;
  }
  if (rq->id < 0) {
    ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "request id %lld: ids must be >= 0",
                    (long long)rq->id);
    goto rejected;
  }
  if (isnan(rq->arrival)) {
    /* NaN compares unordered with everything: the queues' total order would break */
    ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "request %lld: arrival is NaN", (long long)rq->id);
    goto rejected;
  }
  if (rq->prompt_len < 1 || rq->max_new_tokens < 1 || rq->prompt_len > INT32_MAX / 2 ||
      rq->max_new_tokens > INT32_MAX / 2) {
    ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG,
                    "request %lld: prompt_len %lld and max_new_tokens %lld must be in [1, 2^30)",
                    (long long)rq->id, (long long)rq->prompt_len, (long long)rq->max_new_tokens);
    goto rejected;
  }
  const rkv_evict_params *e = rq->evict ? rq->evict : &s->cfg.evict;
  if (rq->evict) {
    char e2[RKV_ERRBUF];
    if (rq->evict->struct_size < sizeof(rkv_evict_params) ||
        rkv_evict_params_validate(rq->evict, e2, sizeof e2) != RKV_OK) {
      ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "request %lld: bad evict params: %s",
                      (long long)rq->id,
                      rq->evict->struct_size < sizeof(rkv_evict_params) ? "struct_size" : e2);
      goto rejected;
    }
  }
  if (map_find(s, rq->id)) {
    ret = rkvi_fail(s->err, RKV_ERR_EXISTS, "request id %lld is already live", (long long)rq->id);
    goto rejected;
  }
  uint64_t bound = bound_blocks_of(s, e, 0, rq->prompt_len, rq->max_new_tokens);
  uint64_t prompt_blocks = (uint64_t)s->streams * ceil_div((uint64_t)rq->prompt_len, s->block_size);
  if (prompt_blocks > usable_total(s) || bound > reserve_capacity(s)) {
    ret = rkvi_fail(s->err, RKV_ERR_CAPACITY,
                    "request %lld can never fit: needs up to %llu blocks (prompt alone %llu), "
                    "pool has %u usable of %u",
                    (long long)rq->id, (unsigned long long)bound, (unsigned long long)prompt_blocks,
                    reserve_capacity(s), usable_total(s));
    goto rejected;
  }
  ret = map_reserve(s, s->live + 1);
  if (ret == RKV_OK) ret = reserve_finished(s, 1);
  if (ret != RKV_OK) goto rejected;
  req *r = rkvi_calloc(s->alloc, sizeof(req), 16);
  if (!r) {
    ret = rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request record");
    goto rejected;
  }
  if (s->cfg.preempt == RKV_SCHED_PREEMPT_SWAP && s->cfg.host_blocks) {
    r->lens = rkvi_calloc(s->alloc, sizeof(int32_t) * s->streams, 16);
    if (!r->lens) {
      rkvi_free(s->alloc, r, sizeof(req));
      ret = rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request swap lengths");
      goto rejected;
    }
  }
  r->id = rq->id;
  r->prompt_len = rq->prompt_len;
  r->max_new = rq->max_new_tokens;
  r->priority = rq->priority;
  r->arrival = rq->arrival;
  r->order = s->next_order++;
  r->evict = *e;
  r->evicts = evicts(e);
  r->evict.struct_size = sizeof(rkv_evict_params);
  r->target = rq->prompt_len;
  r->host_head = -1;
  map_put_nogrow(s, r);
  s->live++;
  q_insert(s, Q_WAITING, r);
  return RKV_OK;
rejected:
  s->m.num_rejected++;
  return ret;
}

rkv_status rkv_sched_set_prefix(rkv_sched *s, int64_t id, const uint64_t *block_hashes,
                                uint32_t n) {
  if (!s) return RKV_ERR_INVALID_ARG;
  req *r = map_find(s, id);
  if (!r)
    return rkvi_fail(s->err, RKV_ERR_NOT_FOUND, "set_prefix: request %lld is not live",
                     (long long)id);
  if (r->q != Q_WAITING || r->preemptions || r->generated)
    return rkvi_fail(s->err, RKV_ERR_STATE,
                     "set_prefix: request %lld must be waiting and never have run", (long long)id);
  if ((n && !block_hashes) || (uint64_t)n * s->block_size > (uint64_t)r->prompt_len)
    return rkvi_fail(s->err, RKV_ERR_INVALID_ARG,
                     "set_prefix: %u block hashes of %u tokens for a prompt of %lld tokens%s", n,
                     s->block_size, (long long)r->prompt_len,
                     n && !block_hashes ? " (hashes is NULL)" : "");
  const int32_t protect =
      s->cfg.prefix_rule == RKV_SCHED_PREFIX_PROTECT ? (int32_t)(n * s->block_size) : 0;
  const uint64_t bound = bound_blocks_of(s, &r->evict, protect, r->prompt_len, r->max_new);
  if (bound > reserve_capacity(s))
    return rkvi_fail(s->err, RKV_ERR_CAPACITY,
                     "set_prefix: request %lld with %d protected tokens can never fit: needs up "
                     "to %llu blocks, %u usable",
                     (long long)id, protect, (unsigned long long)bound, reserve_capacity(s));
  if (groups_counted(s)) RKV_TRY(grp_reserve(s, s->hashes_live - r->n_hashes + n));
  uint64_t *h = NULL;
  if (n) {
    h = rkvi_alloc(s->alloc, sizeof(uint64_t) * n, 16);
    if (!h) return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "set_prefix: %u hashes", n);
    memcpy(h, block_hashes, sizeof(uint64_t) * n);
  }
  if (r->hashes) rkvi_free(s->alloc, r->hashes, sizeof(uint64_t) * r->n_hashes);
  s->hashes_live += (uint64_t)n - r->n_hashes;
  r->hashes = h;
  r->n_hashes = n;
  r->protect = protect;
  return RKV_OK;
}

rkv_status rkv_sched_get_prefix_stats(const rkv_sched *s, rkv_sched_prefix_stats *out) {
  if (!s || !out || out->struct_size < sizeof(uint32_t) ||
      out->struct_size > sizeof(rkv_sched_prefix_stats))
    return RKV_ERR_INVALID_ARG;
  rkv_sched_prefix_stats st = s->prefix;
  st.struct_size = out->struct_size;
  memcpy(out, &st, out->struct_size);
  return RKV_OK;
}

rkv_status rkv_sched_prometheus(const rkv_sched *s, char *buf, size_t cap, size_t *written) {
  if (!s || !written) return RKV_ERR_INVALID_ARG;
  rkv_sched_metrics m;
  rkv_sched_get_metrics(s, &m);
  rkv_prefix_stats c = {sizeof c, 0, 0, 0, 0, 0, 0, 0, 0};
  RKV_TRY(rkv_blockmgr_prefix_stats(s->bm, &c));
  const bool cache = s->cfg.prefix_cache;
  return rkvi_sched_prometheus_render(&m, cache ? &s->prefix : NULL, cache ? &c : NULL, buf, cap,
                                      written);
}

rkv_status rkv_sched_abort(rkv_sched *s, int64_t id) {
  if (!s) return RKV_ERR_INVALID_ARG;
  req *r = map_find(s, id);
  if (!r)
    return rkvi_fail(s->err, RKV_ERR_NOT_FOUND, "abort: request %lld is not live", (long long)id);
  if (outstanding(s, r))
    return rkvi_fail(s->err, RKV_ERR_STATE,
                     "abort: request %lld is in an outstanding plan; report first", (long long)id);
  push_finished(s, id);
  drop_request(s, r);
  s->m.num_aborted++;
  return RKV_OK;
}

rkv_status rkv_sched_fork(rkv_sched *s, int64_t parent, int64_t child, int64_t max_new_tokens) {
  if (!s) return RKV_ERR_INVALID_ARG;
  req *pr = map_find(s, parent);
  if (!pr)
    return rkvi_fail(s->err, RKV_ERR_NOT_FOUND, "fork: parent %lld is not live", (long long)parent);
  if (pr->q != Q_RUNNING || outstanding(s, pr))
    return rkvi_fail(s->err, RKV_ERR_STATE,
                     "fork: parent %lld must be running and not in the outstanding plan",
                     (long long)parent);
  if (child < 0 || max_new_tokens <= pr->generated || max_new_tokens > INT32_MAX / 2)
    return rkvi_fail(s->err, RKV_ERR_INVALID_ARG,
                     "fork: child id %lld must be >= 0 and max_new_tokens %lld > the %lld "
                     "tokens already generated",
                     (long long)child, (long long)max_new_tokens, (long long)pr->generated);
  if (map_find(s, child))
    return rkvi_fail(s->err, RKV_ERR_EXISTS, "fork: child id %lld is already live",
                     (long long)child);
  /* The next plan lists forks before the ids it drops (a child aborted before that plan is
   * dropped after its fork), so an id finished since the last plan cannot be a child yet: the
   * engine would fork into state it has not dropped. */
  for (uint32_t i = 0; i < s->n_fin; i++)
    if (s->finished[i] == child)
      return rkvi_fail(s->err, RKV_ERR_EXISTS,
                       "fork: child id %lld finished since the last plan; reuse it after the "
                       "next step",
                       (long long)child);
  if (s->running.n >= s->cfg.max_seqs || rkv_blockmgr_num_seqs(s->bm) >= s->bm_max_seqs)
    return rkvi_fail(s->err, RKV_ERR_CAPACITY, "fork: %u sequences already running", s->running.n);
  req tmp = *pr;
  tmp.id = child;
  tmp.max_new = max_new_tokens;
  uint64_t bound = req_bound(s, &tmp);
  if (s->cfg.admission == RKV_SCHED_RESERVE && s->reserved + bound > reserve_capacity(s))
    return rkvi_fail(s->err, RKV_ERR_NO_BLOCKS,
                     "fork: child bound %llu blocks does not fit (%llu of %u reserved)",
                     (unsigned long long)bound, (unsigned long long)s->reserved,
                     reserve_capacity(s));
  GROW(s, s->forks, s->forks_cap, (uint64_t)s->n_forks + 1);
  RKV_TRY(map_reserve(s, s->live + 1));
  RKV_TRY(reserve_finished(s, 1));
  req *r = rkvi_calloc(s->alloc, sizeof(req), 16);
  if (!r) return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request record");
  if (pr->lens) {
    r->lens = rkvi_calloc(s->alloc, sizeof(int32_t) * s->streams, 16);
    if (!r->lens) {
      rkvi_free(s->alloc, r, sizeof(req));
      return rkvi_fail(s->err, RKV_ERR_NO_MEMORY, "request swap lengths");
    }
  }
  rkv_status st = rkv_blockmgr_seq_fork(s->bm, parent, child);
  if (st != RKV_OK) {
    req_free(s, r);
    return rkvi_fail(s->err, st, "fork: block manager: %s", rkv_blockmgr_last_error(s->bm));
  }
  int32_t *lens = r->lens;
  *r = tmp;
  r->lens = lens;
  r->hashes = NULL; /* running: the child never needs them (its protection is inherited) */
  r->n_hashes = 0;
  r->order = s->next_order++;
  r->prev = r->next = NULL;
  r->q = Q_NONE;
  r->sched[0] = r->sched[1] = 0;
  r->hit_groups = 0; /* its bound is the full one: nothing it shares is left out */
  r->reported = false;
  r->preemptions = 0;
  r->compressions = 0;
  r->host_head = -1;
  r->host_n = 0;
  r->bound = bound;
  r->reserved = true;
  s->reserved += bound;
  map_put_nogrow(s, r);
  s->live++;
  q_insert(s, Q_RUNNING, r);
  s->forks[s->n_forks].parent = parent;
  s->forks[s->n_forks].child = child;
  s->n_forks++;
  return RKV_OK;
}

/* ---- planning --------------------------------------------------------------------------- */

/* Cached groups r's admission now would share: its prompt's leading cached groups, short of
 * what it must compute. At least the prompt's last token is computed, and its last `window`
 * for a policy that reads the query window: the window then holds the queries a run without
 * the cache sees. */
static rkv_status cached_groups(const rkv_sched *s, const req *r, uint32_t *hit) {
  *hit = 0;
  if (!s->cfg.prefix_cache || !r->n_hashes) return RKV_OK;
  const bool queries = rkvi_needs_queries(r->evict.policy);
  const int64_t keep = queries && r->evict.window > 1 ? r->evict.window : 1;
  const int64_t most = r->target > keep ? (r->target - keep) / s->block_size : 0;
  uint32_t h = 0;
  RKV_TRY(rkv_blockmgr_prefix_match(s->bm, r->hashes, r->n_hashes, &h));
  *hit = (int64_t)h > most ? (uint32_t)most : h;
  return RKV_OK;
}

/* Those groups, and the blocks sharing them takes from the free pool (the groups no sequence
 * holds). */
static rkv_status prefix_hit(const rkv_sched *s, const req *r, uint32_t *hit, uint32_t *cost) {
  *cost = 0;
  RKV_TRY(cached_groups(s, r, hit));
  if (*hit) RKV_TRY(rkv_blockmgr_prefix_cost(s->bm, r->hashes, *hit, cost));
  return RKV_OK;
}

/* The cache-aware window (config.cache_lookahead, with the cache on), 0 = queue order. */
static uint32_t lookahead(const rkv_sched *s) {
  return s->cfg.prefix_cache ? (uint32_t)s->cfg.cache_lookahead : 0; /* <= 65536 (create) */
}

/* The waiting request to admit next: the head in queue order (always when fifo); with a
 * lookahead window, the one of its first requests of the head's priority whose prompt starts
 * with the most cached groups, ties and requests passed over the window's size going in
 * queue order. */
static rkv_status admit_pick(const rkv_sched *s, bool fifo, req **out) {
  req *head = s->waiting.head, *best = head;
  *out = head;
  const uint32_t w = fifo ? 0 : lookahead(s);
  if (!w) return RKV_OK;
  uint32_t most = 0, k = 0;
  for (req *c = head; c && k < w && c->priority == head->priority; c = c->next, k++) {
    if (c->passed >= w) {
      best = c;
      break;
    }
    uint32_t h = 0;
    RKV_TRY(cached_groups(s, c, &h));
    if (h > most) {
      most = h;
      best = c;
    }
  }
  *out = best;
  return RKV_OK;
}

/* The pick r of an admission does not fit: true when the admission should try again in
 * queue order (r was a cache-aware pick ahead of the head), false when it stops. */
static bool retry_fifo(const rkv_sched *s, const req *r, bool *fifo) {
  if (*fifo || r == s->waiting.head) return false;
  *fifo = true;
  return true;
}

/* r is admitted: the requests ahead of it in the queue were passed over once more. */
static void admit_passed(rkv_sched *s, req *r) {
  if (r != s->waiting.head) s->prefix.admissions_ahead++;
  for (req *c = s->waiting.head; c != r; c = c->next) c->passed++;
  r->passed = 0;
}

/* Preempts a running request that is not in this step's plan. */
static rkv_status preempt(rkv_sched *s, req *r) {
  rkv_sched_plan *p = &s->cur->plan;
  const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(s->bm);
  bool swap = false;
  uint32_t held = 0, exclusive = 0; /* blocks it references; those freed with it */
  RKV_TRY(rkv_blockmgr_seq_footprint(s->bm, r->id, &held, &exclusive));
  /* With a plan in flight whose compressions take fresh blocks (copies of shared ones), the
   * victim's freed blocks may be written by them before this plan's swap-out reads them:
   * such a victim is recomputed instead. */
  const bool fresh_in_flight = s->n_out && buf_of(s, s->step_no - 1)->promised;
  if (s->cfg.preempt == RKV_SCHED_PREEMPT_SWAP && r->lens && !fresh_in_flight)
    swap = held <= s->host_n_free && p->n_swap_out + held <= s->cfg.host_blocks;
  if (swap) {
    rkv_sched_swap *ops = s->cur->swap_out + p->n_swap_out;
    uint32_t k = 0;
    int32_t prev = -1;
    r->host_head = -1;
    for (uint32_t l = 0; l < bc->num_layers; l++)
      for (uint32_t h = 0; h < bc->num_kv_heads; h++) {
        const int32_t *ids;
        int32_t n = 0;
        RKV_TRY(rkv_blockmgr_stream_blocks(s->bm, r->id, l, h, &ids, &n));
        RKV_TRY(rkv_blockmgr_stream_len(s->bm, r->id, l, h, &r->lens[l * bc->num_kv_heads + h]));
        for (int32_t b = 0; b < n; b++) {
          int32_t hb = s->host_free[--s->host_n_free];
          s->host_next[hb] = -1;
          if (prev < 0)
            r->host_head = hb;
          else
            s->host_next[prev] = hb;
          prev = hb;
          ops[k].device = ids[b];
          ops[k].host = hb;
          k++;
        }
      }
    r->host_n = k;
    p->n_swap_out += k;
    s->m.swapped_out_blocks += k;
    s->m.num_preempt_swap++;
    s->cur->swapped_out[p->n_swapped_out++] = r->id;
  } else {
    s->m.num_preempt_recompute++;
  }
  RKV_TRY(rkv_blockmgr_seq_free(s->bm, r->id));
  s->step_used -= exclusive;
  release_reservation(s, r);
  q_remove(s, r);
  r->preemptions++;
  s->m.num_preemptions++;
  s->cur->preempted[p->n_preempted++] = r->id;
  if (swap) {
    q_insert(s, Q_SWAPPED, r);
  } else {
    /* everything sampled so far is re-fed; the chunk that completes it samples again */
    r->target = r->prompt_len + r->generated;
    r->computed = 0;
    r->kv_len = 0;
    q_insert(s, Q_WAITING, r);
  }
  return RKV_OK;
}

/* After a prefill chunk: registers the prompt's blocks it completed (the executor writes
 * them in this step, before anything reads them) and extends the protected prefix over what
 * is computed. Neither call allocates. */
static rkv_status prefill_prefix(rkv_sched *s, req *r) {
  /* a fork child carries its parent's protection without hashes: a recompute re-protects */
  if (!r->n_hashes && !r->protect) return RKV_OK;
  if (s->cfg.prefix_cache && r->n_hashes) {
    RKV_TRY(
        rkv_blockmgr_prefix_insert(s->bm, r->id, r->hashes, hashed_blocks(s, r, r->kv_len), NULL));
  }
  if (r->protect) RKV_TRY(rkv_blockmgr_seq_protect(s->bm, r->id, protected_now(r)));
  return RKV_OK;
}

/* Records r's n tokens as the next entry of the plan being made (its blocks are appended, or,
 * deferred, will be by the in-flight plan's report). */
static rkv_status record_seq(rkv_sched *s, req *r, uint32_t n, bool changed, bool deferred) {
  plan_buf *b = s->cur;
  rkv_sched_plan *p = &b->plan;
  const bool decode = r->computed >= r->target;
  int32_t len = 0; /* the promises (compress_need, start_need) read the same rule */
  const bool compress = compress_flagged(r, r->computed, r->kv_len, n, &len);
  b->rows_changed[p->n_seqs] = changed || r->starting;
  r->deferred = deferred;
  if (r->starting) b->started[b->n_started++] = r->id;
  r->starting = false;
  rkv_sched_seq *q = &b->seqs[p->n_seqs];
  q->id = r->id;
  q->kind = decode ? RKV_SCHED_DECODE : RKV_SCHED_PREFILL;
  q->n_tokens = n;
  q->pos = r->computed;
  r->computed += n;
  r->kv_len += (int32_t)n;
  q->kv_len = r->kv_len;
  q->samples = decode || r->computed >= r->target;
  q->compress = compress;
  if (!decode) RKV_TRY(prefill_prefix(s, r));
  q->evict = req_evict(r);
  b->seq_req[p->n_seqs] = r;
  r->sched[s->step_no & 1] = s->step_no + 1;
  r->idx[s->step_no & 1] = p->n_seqs;
  r->reported = false;
  p->n_seqs++;
  if (decode) p->n_decode++;
  p->n_batched_tokens += n;
  if (!decode) s->m.prompt_tokens += n;
  return RKV_OK;
}

/* Appends n tokens for r and records it in the plan. */
/* `popped` is rkv_blockmgr_blocks_needed(r, n) when the caller just computed it, else
 * UINT32_MAX. */
static rkv_status schedule(rkv_sched *s, req *r, uint32_t n, uint32_t popped) {
  rkv_sched_plan *p = &s->cur->plan;
  uint32_t nc = 0;
  RKV_ASSERT(s->copies_cap - p->n_copies >= s->streams);
  if (popped == UINT32_MAX) RKV_TRY(rkv_blockmgr_blocks_needed(s->bm, r->id, n, &popped));
  int64_t *slots = s->cur->slots ? s->cur->slots + (size_t)p->n_batched_tokens * s->kv_heads : NULL;
  RKV_TRY(rkv_blockmgr_append_batch(s->bm, r->id, n, slots,
                                    (size_t)s->cfg.max_batched_tokens * s->kv_heads,
                                    s->cur->copies + p->n_copies, &nc));
  s->step_used += popped;
  p->n_copies += nc;
  return record_seq(s, r, n, popped || nc, false);
}

/* Overlap: r's compression in the plan in flight (fl) has not run when this plan is made, so
 * its next token cannot be appended yet. With a uniform budget its length after the
 * compression is known (protected prefix + budget): this plan says so, and the report of the
 * plan in flight appends the token (rkv_sched_report). That append takes at most a new tail
 * block per stream, promised now; a sequence sharing blocks (its compaction's copies vary)
 * waits a step instead. *done says whether r was scheduled. */
static rkv_status schedule_deferred(rkv_sched *s, req *r, const rkv_sched_seq *fl, bool *done) {
  *done = false;
  uint32_t held = 0, exclusive = 0;
  RKV_TRY(rkv_blockmgr_seq_footprint(s->bm, r->id, &held, &exclusive));
  if (held != exclusive) return RKV_OK;
  const int32_t keep = protected_now(r) + r->evict.budget, bs = (int32_t)s->block_size;
  /* the uncut length counts too: an engine that ends the sequence skips its compression */
  const uint32_t need = keep % bs == 0 || fl->kv_len % bs == 0 ? s->streams : 0;
  const uint32_t ran = compress_due(r, keep + 1, false) ? hit_promise(s, r, keep + 1) : 0;
  /* an engine that skips the compression in flight leaves it due, and the report re-flags it
   * in this plan (append_deferred), after this plan's hits may have shared its blocks: its
   * copies are promised here too */
  uint32_t skipped = 0;
  RKV_TRY(skipped_need(s, r, keep, &skipped));
  const uint32_t fresh = ran > skipped ? ran : skipped;
  if ((uint64_t)need + fresh > bm_free(s)) return RKV_OK;
  s->step_promised += need + fresh;
  s->cur->promised += fresh;
  if (keep < r->kv_len) r->kv_len = keep;
  *done = true;
  return record_seq(s, r, 1, true, true);
}

/* The preemption victim: the last running sequence in no plan it could still be read by
 * (this one, or the one in flight). NULL when there is none. */
static req *victim_of(rkv_sched *s) {
  req *v = s->running.tail;
  while (v && (in_plan(v, s->step_no) || in_flight(s, v))) v = v->prev;
  return v;
}

static uint32_t chunk_for(const rkv_sched *s, const req *r, uint32_t tokens_left) {
  if (r->computed >= r->target) return tokens_left ? 1 : 0;
  int64_t left = r->target - r->computed;
  uint32_t n = s->cfg.max_prefill_chunk < tokens_left ? s->cfg.max_prefill_chunk : tokens_left;
  return left < n ? (uint32_t)left : n;
}

/* Moves the slot row `from` (a decode's one token) to row `to` < from in every layer,
 * shifting the rows between one down. */
static void rotate_slot_row(rkv_sched *s, uint32_t to, uint32_t from) {
  if (!s->cur->slots) return;
  const uint32_t H = s->kv_heads, L = s->streams / H;
  int64_t keep[256];
  for (uint32_t l = 0; l < L; l++) {
    int64_t *base = s->cur->slots + (size_t)l * s->cfg.max_batched_tokens * H;
    for (uint32_t h0 = 0; h0 < H; h0 += 256) {
      const uint32_t w = H - h0 < 256 ? H - h0 : 256;
      memcpy(keep, base + (size_t)from * H + h0, w * sizeof(int64_t));
      for (uint32_t r = from; r > to; r--)
        memcpy(base + (size_t)r * H + h0, base + (size_t)(r - 1) * H + h0, w * sizeof(int64_t));
      memcpy(base + (size_t)to * H + h0, keep, w * sizeof(int64_t));
    }
  }
}

/* The plan lists decodes before prefill chunks (rkv_sched_plan), but a swapped-in sequence
 * that decodes is scheduled after the running prefills (swap-ins wait for the running passes
 * to show no preemption): a stable rotation moves each such decode in front of the chunks,
 * with everything indexed by plan position. Rare (swap-ins only), O(n_seqs) per move. */
static void order_decodes_first(rkv_sched *s) {
  rkv_sched_plan *p = &s->cur->plan;
  uint32_t first_prefill = 0;
  while (first_prefill < p->n_seqs && s->cur->seqs[first_prefill].kind == RKV_SCHED_DECODE)
    first_prefill++;
  uint32_t row_fp = 0; /* plan row of the first prefill chunk */
  for (uint32_t i = 0; i < first_prefill; i++) row_fp += s->cur->seqs[i].n_tokens;
  uint32_t row_i = row_fp;
  for (uint32_t i = first_prefill; i < p->n_seqs; i++) {
    const uint32_t n_i = s->cur->seqs[i].n_tokens;
    row_i += n_i; /* rows of seqs[0..i] */
    if (s->cur->seqs[i].kind != RKV_SCHED_DECODE) continue;
    rotate_slot_row(s, row_fp, row_i - 1);
    const rkv_sched_seq q = s->cur->seqs[i];
    req *r = s->cur->seq_req[i];
    const uint8_t ch = s->cur->rows_changed[i];
    for (uint32_t j = i; j > first_prefill; j--) {
      s->cur->seqs[j] = s->cur->seqs[j - 1];
      s->cur->seq_req[j] = s->cur->seq_req[j - 1];
      s->cur->rows_changed[j] = s->cur->rows_changed[j - 1];
    }
    s->cur->seqs[first_prefill] = q;
    s->cur->seq_req[first_prefill] = r;
    s->cur->rows_changed[first_prefill] = ch;
    first_prefill++;
    row_fp++;
  }
  for (uint32_t i = 0; i < p->n_seqs; i++) s->cur->seq_req[i]->idx[s->step_no & 1] = i;
}

/* What admitting r this step takes: its first chunk after the cached groups its prompt starts
 * with (shared, not computed), the blocks that chunk and a compression right after it need,
 * and its reservation. n = 0 when r does not fit: no tokens for a chunk, too few free blocks,
 * or (RESERVE) too little capacity left for its bound. */
typedef struct admission {
  uint32_t hit, hit_cost, n, shared;
  uint64_t cfresh, own;
} admission;

static rkv_status admit_fit(rkv_sched *s, req *r, uint64_t bound, uint32_t tokens_left,
                            uint32_t used_watermark, admission *a) {
  memset(a, 0, sizeof *a);
  uint32_t hit = 0, hit_cost = 0;
  RKV_TRY(prefix_hit(s, r, &hit, &hit_cost));
  r->computed = (int64_t)hit * s->block_size;
  const uint32_t n = chunk_for(s, r, tokens_left);
  r->computed = 0;
  if (!n) return RKV_OK;
  /* copy rule: a compression right after this chunk copies the shared groups it keeps,
   * those of its hit and those a later admission's hit shares */
  const int32_t cached = (int32_t)(hit * s->block_size);
  const uint64_t cfresh = start_need(s, r, cached, cached, n);
  const uint64_t first = rkv_blockmgr_blocks_for_tokens(s->bm, n) + hit_cost + cfresh;
  if (first + used_watermark > bm_free(s)) return RKV_OK;
  /* shared groups leave its own bound and are reserved once (groups_counted) */
  const uint32_t shared = groups_counted(s) ? hit : 0;
  const uint64_t own = bound - (uint64_t)s->streams * shared;
  const uint64_t fresh_groups = (uint64_t)s->streams * grp_new(s, r, shared);
  if (s->cfg.admission == RKV_SCHED_RESERVE &&
      s->reserved + own + fresh_groups > reserve_capacity(s))
    return RKV_OK;
  *a = (admission){hit, hit_cost, n, shared, cfresh, own};
  return RKV_OK;
}

static rkv_status plan_step(rkv_sched *s) {
  req *r;
  rkv_sched_plan *p = &s->cur->plan;
  uint32_t tokens_left = s->cfg.max_batched_tokens;
  bool preempted_any = false;
  uint32_t used_watermark = usable_watermark(s);
  s->step_used = bm_used(s);
  /* the plan in flight (overlap) has not run its compressions yet: their promise stands */
  s->step_promised = s->n_out ? buf_of(s, s->step_no - 1)->promised : 0;
  s->cur->promised = 0;
  s->cur->n_started = 0;

  /* 1. running sequences in priority order: decodes first (pass 0), then prefill chunks
   * (pass 1), so a long prompt never starves the decodes of the token budget. Victims are
   * the lowest-priority, most recent running sequences not yet scheduled in this step. */
  for (int pass = 0; pass < 2; pass++) {
    r = s->running.head;
    while (r && p->n_seqs < s->cfg.max_seqs && tokens_left) {
      bool decode = r->computed >= r->target;
      /* with a plan in flight: a sequence that ends in it (its length limit, or an eos
       * reported since) has no next token */
      const rkv_sched_seq *fl = in_flight(s, r);
      if (in_plan(r, s->step_no) || decode != (pass == 0) || r->draining ||
          (fl && fl->samples && r->generated + 1 >= r->max_new)) {
        r = r->next;
        continue;
      }
      uint32_t n = chunk_for(s, r, tokens_left);
      if (!n) break;
      if (fl && fl->compress) {
        bool done = false;
        RKV_TRY(schedule_deferred(s, r, fl, &done));
        tokens_left -= done;
        r = r->next;
        continue;
      }
      uint32_t need = 0, fresh = 0;
      RKV_TRY(rkv_blockmgr_blocks_needed(s->bm, r->id, n, &need));
      RKV_TRY(compress_need(s, r, n, &fresh));
      bool self_preempted = false, no_victim = false;
      req *next = NULL;
      while ((uint64_t)need + fresh > bm_free(s)) {
        req *victim = victim_of(s);
        /* everything else runs in the plan in flight: r waits for the next step */
        no_victim = !victim;
        if (no_victim) break;
        self_preempted = victim == r;
        if (self_preempted) next = r->next; /* all after it are in this plan or in flight */
        RKV_TRY(preempt(s, victim));
        preempted_any = true;
        if (self_preempted) break;
        /* a victim that shared r's blocks takes r's copy-on-write need with it */
        RKV_TRY(rkv_blockmgr_blocks_needed(s->bm, r->id, n, &need));
        RKV_TRY(compress_need(s, r, n, &fresh));
      }
      if (self_preempted || no_victim) {
        r = self_preempted ? next : r->next;
        continue;
      }
      RKV_TRY(schedule(s, r, n, need)); /* need is current: recomputed after each preemption */
      s->step_promised += fresh;
      s->cur->promised += fresh;
      tokens_left -= n;
      r = r->next;
    }
  }

  /* 2. swapped sequences come back before anything new is admitted */
  while (!preempted_any && s->swapped.head && p->n_seqs < s->cfg.max_seqs && tokens_left &&
         s->running.n < s->cfg.max_seqs && rkv_blockmgr_num_seqs(s->bm) < s->bm_max_seqs) {
    r = s->swapped.head;
    uint32_t n = chunk_for(s, r, tokens_left);
    if (!n) break;
    /* exactly the restored blocks plus what the chunk adds to each stream: an allowance on
     * top could exceed a pool that the sequence's own bound fits, and it would never return */
    uint64_t blocks = 0;
    for (uint32_t k = 0; k < s->streams; k++)
      blocks += ceil_div((uint64_t)r->lens[k] + n, s->block_size);
    const uint32_t fresh = start_need(s, r, r->computed, r->kv_len, n);
    uint32_t f = bm_free(s);
    if (blocks + fresh + used_watermark > f) break;
    uint64_t bound = req_bound(s, r);
    if (s->cfg.admission == RKV_SCHED_RESERVE && s->reserved + bound > reserve_capacity(s)) break;
    RKV_TRY(rkv_blockmgr_seq_restore(s->bm, r->id, r->lens));
    if (r->protect) RKV_TRY(rkv_blockmgr_seq_protect(s->bm, r->id, protected_now(r)));
    s->step_used += r->host_n; /* restore allocates exactly the blocks swapped out */
    const rkv_blockmgr_config *bc = rkv_blockmgr_get_config(s->bm);
    int32_t hb = r->host_head;
    for (uint32_t l = 0; l < bc->num_layers; l++)
      for (uint32_t h = 0; h < bc->num_kv_heads; h++) {
        const int32_t *ids;
        int32_t nb = 0;
        RKV_TRY(rkv_blockmgr_stream_blocks(s->bm, r->id, l, h, &ids, &nb));
        for (int32_t b = 0; b < nb; b++) {
          RKV_ASSERT(hb >= 0);
          s->cur->swap_in[p->n_swap_in].device = ids[b];
          s->cur->swap_in[p->n_swap_in].host = hb;
          p->n_swap_in++;
          int32_t nx = s->host_next[hb];
          s->host_free[s->host_n_free++] = hb;
          hb = nx;
        }
      }
    s->m.swapped_in_blocks += r->host_n;
    r->host_head = -1;
    r->host_n = 0;
    q_remove(s, r);
    q_insert(s, Q_RUNNING, r);
    r->bound = bound;
    r->reserved = true;
    s->reserved += bound;
    s->cur->swapped_in[p->n_swapped_in++] = r->id;
    RKV_TRY(schedule(s, r, n, UINT32_MAX));
    s->cur->rows_changed[p->n_seqs - 1] = 1; /* restored into fresh blocks */
    s->step_promised += fresh;
    s->cur->promised += fresh;
    tokens_left -= n;
  }

  /* 3. admission of waiting requests, in order (or the cache-aware pick, admit_pick),
   * stopping at the first that does not fit; a cache-aware pick that does not fit hands its
   * admission back to the head (fifo), so it never holds up a request that fits */
  bool fifo = false;
  while (!preempted_any && !s->swapped.head && s->waiting.head && p->n_seqs < s->cfg.max_seqs &&
         tokens_left && s->running.n < s->cfg.max_seqs &&
         rkv_blockmgr_num_seqs(s->bm) < s->bm_max_seqs) {
    RKV_TRY(admit_pick(s, fifo, &r));
    uint64_t bound = req_bound(s, r);
    if (bound > reserve_capacity(s)) {
      /* A recompute grew past anything the usable pool can hold: it can never run again.
       * Under an external limit the pool may be larger at the next limit call, so give up
       * only once nothing runs (the running count is the same on every rank). */
      if (s->usable_cap != UINT64_MAX && s->running.n) {
        if (retry_fifo(s, r, &fifo)) continue;
        break;
      }
      rkvi_log(s->log, RKV_LOG_WARN, "request %lld aborted: recompute needs %llu blocks",
               (long long)r->id, (unsigned long long)bound);
      push_finished(s, r->id);
      drop_request(s, r);
      s->m.num_aborted++;
      continue;
    }
    admission a;
    RKV_TRY(admit_fit(s, r, bound, tokens_left, used_watermark, &a));
    if (!a.n) {
      if (retry_fifo(s, r, &fifo)) continue;
      break;
    }
    RKV_TRY(rkv_blockmgr_seq_create_cached(s->bm, r->id, r->hashes, a.hit));
    s->step_used += a.hit_cost;
    admit_passed(s, r);
    fifo = false;
    q_remove(s, r);
    q_insert(s, Q_RUNNING, r);
    r->bound = a.own;
    r->reserved = true;
    s->reserved += a.own;
    grp_take(s, r, a.shared);
    r->kv_len = (int32_t)a.hit * (int32_t)s->block_size;
    r->computed = r->kv_len;
    r->starting = true;
    if (r->n_hashes) {
      s->prefix.admissions++;
      s->prefix.admissions_hit += a.hit > 0;
      s->prefix.hashed_tokens += (uint64_t)r->n_hashes * s->block_size;
      s->prefix.hit_tokens += (uint64_t)r->kv_len;
    }
    RKV_TRY(schedule(s, r, a.n, UINT32_MAX));
    s->step_promised += (uint32_t)a.cfresh;
    s->cur->promised += (uint32_t)a.cfresh;
    tokens_left -= a.n;
  }
  RKV_ASSERT_LEVEL(3, s->step_used == bm_used(s));
  order_decodes_first(s);
  return RKV_OK;
}

/* Row capacity a sequence restored from r->lens needs to take an n-token chunk. */
static int32_t restore_blocks(const rkv_sched *s, const req *r, uint32_t n) {
  int64_t longest = 0;
  for (uint32_t k = 0; k < s->streams; k++)
    if (r->lens[k] > longest) longest = r->lens[k];
  const uint64_t b = ceil_div((uint64_t)longest + n, s->block_size);
  return b > INT32_MAX ? INT32_MAX : (int32_t)b;
}

/* Row capacity an admission of r may need: a prefix hit (known only at admission: earlier
 * admissions register groups) puts the first chunk after up to all its hashed blocks. */
static uint32_t admit_rows(const rkv_sched *s, const req *r, uint32_t budget) {
  uint64_t span = chunk_for(s, r, budget);
  if (s->cfg.prefix_cache && r->n_hashes) {
    span += (uint64_t)r->n_hashes * s->block_size;
    if (span > (uint64_t)r->target) span = (uint64_t)r->target;
  }
  return (uint32_t)ceil_div(span, s->block_size);
}

/* Takes every allocation plan_step's block-manager calls could make before the first of them
 * changes anything, so a failed step changes nothing (issue 17, finding 1: an admission that
 * failed half-way left earlier admissions counted as computed, their prefill never planned).
 * Row capacity for the largest chunk each running sequence may append; the sequence slots the
 * swap-ins and admissions may create, in the order plan_step considers them. Those slots are
 * the top of the block manager's free-slot stack as it stands now because a step creates
 * sequences only when it preempted (freed) none. Capacity only; a sequence the step then
 * leaves out keeps capacity it would have needed at its next step. */
static rkv_status reserve_step(rkv_sched *s) {
  const uint32_t budget = s->cfg.max_batched_tokens;
  for (req *r = s->running.head; r; r = r->next) {
    const uint32_t n = chunk_for(s, r, budget);
    /* a decode token inside a partly filled block takes no block in any stream (the streams
     * grow in lockstep): no row capacity to check */
    if (n == 1 && r->computed >= r->target && r->kv_len % (int32_t)s->block_size) continue;
    if (n) RKV_TRY(rkv_blockmgr_reserve_append(s->bm, r->id, n));
  }
  /* each new sequence takes a place among the running, a token of the budget and a block of
   * every stream */
  const uint32_t used = bm_used(s), total = usable_total(s);
  uint64_t room = total > used ? (total - used) / s->streams : 0;
  if (room > budget) room = budget;
  if (room > s->cfg.max_seqs - s->running.n) room = s->cfg.max_seqs - s->running.n;
  const uint32_t bm_live = rkv_blockmgr_num_seqs(s->bm);
  if (room > s->bm_max_seqs - bm_live) room = s->bm_max_seqs - bm_live;
  uint32_t i = 0;
  for (req *r = s->swapped.head; r && i < room; r = r->next, i++)
    RKV_TRY(rkv_blockmgr_reserve_seq(s->bm, i, restore_blocks(s, r, chunk_for(s, r, budget))));
  /* The k-th admission (k from 0) takes the k-th request in queue order; with a lookahead
   * window of w, one of the first k + w (each admission removes one request, and the pick
   * lies among the first w left; requests the loop aborts create no slot and are skipped
   * here): its slot gets the largest row of those. */
  const uint32_t w = lookahead(s) > 1 ? lookahead(s) : 1, i0 = i;
  uint32_t seen = 0, most = 0;
  req *r = s->waiting.head;
  for (; i < room; i++) {
    for (; r && seen < i - i0 + w; r = r->next) {
      if (req_bound(s, r) > reserve_capacity(s)) continue; /* aborted, or the loop stops */
      const uint32_t b = admit_rows(s, r, budget);
      most = w == 1 || b > most ? b : most;
      seen++;
    }
    if (seen <= i - i0) break; /* no request left for this slot */
    RKV_TRY(rkv_blockmgr_reserve_seq(s->bm, i, (int32_t)most));
  }
  return RKV_OK;
}

/* The walker run by check_every_step: a walk that cannot get its scratch memory is skipped,
 * since failing the call after it succeeded would break all-or-nothing. */
static rkv_status after_call_check(rkv_sched *s) {
  if (!s->cfg.check_every_step) return RKV_OK;
  const rkv_status st = rkv_sched_check(s);
  if (st == RKV_ERR_NO_MEMORY) {
    rkvi_log(s->log, RKV_LOG_WARN, "scheduler: invariant walk skipped: no memory");
    return RKV_OK;
  }
  return st;
}

/* dropped = finished since the last plan, then this step's recompute preemptions (a swapped-out
 * id keeps its engine state: its KV comes back). */
static void fill_dropped(plan_buf *b) {
  rkv_sched_plan *p = &b->plan;
  uint32_t n = 0;
  for (uint32_t i = 0; i < p->n_finished; i++) b->dropped[n++] = p->finished[i];
  for (uint32_t i = 0; i < p->n_preempted; i++) {
    bool swapped = false;
    for (uint32_t j = 0; j < p->n_swapped_out && !swapped; j++)
      swapped = p->swapped_out[j] == p->preempted[i];
    if (!swapped) b->dropped[n++] = p->preempted[i];
  }
  p->dropped = b->dropped;
  p->n_dropped = n;
}

rkv_status rkv_sched_step(rkv_sched *s, const rkv_sched_plan **plan) {
  if (!s) return RKV_ERR_INVALID_ARG;
  if (!plan) return rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "step: plan is NULL");
  *plan = NULL;
  if (s->n_out >= (s->cfg.overlap ? 2u : 1u))
    return rkvi_fail(s->err, RKV_ERR_STATE, "step %llu was not reported%s",
                     (unsigned long long)(s->step_no - s->n_out),
                     s->cfg.overlap ? " (overlap: one plan in flight at most)" : "");
  plan_buf *b = buf_of(s, s->step_no);
  /* This buffer's previous plan is reported, so its arrays may move now, before anything
   * changes: this step hands out at most every id finished so far plus every live one. */
  GROW(s, b->fin, b->fin_cap, (uint64_t)s->n_fin + s->live);
  GROW(s, b->dropped, b->dropped_cap, (uint64_t)s->n_fin + s->live);
  GROW(s, b->forks, b->forks_cap, s->n_forks);
  rkv_status ret = reserve_step(s);
  if (ret != RKV_OK)
    return rkvi_fail(s->err, ret, "step %llu: %s", (unsigned long long)s->step_no,
                     rkv_blockmgr_last_error(s->bm));
  s->cur = b;
  rkv_sched_plan *p = &b->plan;
  memset(p, 0, sizeof *p);
  p->step = s->step_no;
  ret = plan_step(s);
  if (ret != RKV_OK) {
    /* Only block-manager failures that its own accounting excluded get here (a bug, or a
     * manager shared with someone else); the queues are consistent but the step is lost. */
    if (!s->err[0] || ret != RKV_ERR_INTERNAL)
      rkvi_fail(s->err, ret, "step %llu: block manager: %s", (unsigned long long)s->step_no,
                rkv_blockmgr_last_error(s->bm));
    return ret;
  }
  if (s->n_forks) memcpy(b->forks, s->forks, sizeof(*s->forks) * s->n_forks);
  p->forks = b->forks;
  p->n_forks = s->n_forks;
  s->n_forks = 0;
  memcpy(b->fin, s->finished, sizeof(int64_t) * s->n_fin);
  p->finished = b->fin;
  p->n_finished = s->n_fin;
  s->n_fin = 0;
  p->slots = b->slots;
  p->slot_layer_stride = b->slots ? (uint64_t)s->cfg.max_batched_tokens * s->kv_heads : 0;
  p->rows_changed = b->rows_changed;
  p->started = b->started;
  p->n_started = b->n_started;
  p->seqs = b->seqs;
  p->copies = b->copies;
  p->swap_out = b->swap_out;
  p->swap_in = b->swap_in;
  p->preempted = b->preempted;
  p->swapped_out = b->swapped_out;
  p->swapped_in = b->swapped_in;
  fill_dropped(b);
  s->step_no++;
  s->n_out++;
  s->m.steps++;
  if (s->running.n > s->m.max_running) s->m.max_running = s->running.n;
  *plan = p;
  return after_call_check(s);
}

/* The appends the report of plan `step` owes the next plan (overlap): each deferred sequence
 * takes its token after its compression (or after its uncut stream when the engine did not
 * compress it), and the next plan's length and flag are corrected in that case. Blocks were
 * promised and row capacity reserved when the next plan was made, so this cannot fail. */
static rkv_status append_deferred(rkv_sched *s, uint64_t step) {
  plan_buf *nb = buf_of(s, step + 1);
  for (uint32_t i = 0; i < nb->plan.n_seqs; i++) {
    req *r = nb->seq_req[i];
    if (!r->deferred) continue;
    rkv_sched_seq *q = &nb->seqs[i];
    int32_t len = 0;
    uint32_t nc = 0;
    RKV_TRY(rkv_blockmgr_stream_len(s->bm, r->id, 0, 0, &len));
    RKV_TRY(rkv_blockmgr_append_batch(s->bm, r->id, 1, NULL, 0, NULL, &nc));
    if (nc)
      return rkvi_fail(s->err, RKV_ERR_INTERNAL, "deferred append of %lld copied blocks",
                       (long long)r->id);
    r->deferred = false;
    if (len + 1 != q->kv_len) { /* the compression did not run */
      r->kv_len = len + 1;
      q->kv_len = r->kv_len;
      q->compress = !r->draining && compress_due(r, r->kv_len, false);
    }
  }
  return RKV_OK;
}

rkv_status rkv_sched_report(rkv_sched *s, const rkv_sched_output *outs, uint32_t n) {
  if (!s) return RKV_ERR_INVALID_ARG;
  if (!s->n_out) return rkvi_fail(s->err, RKV_ERR_STATE, "report: no plan outstanding");
  const uint64_t step = s->step_no - s->n_out; /* the oldest outstanding plan */
  plan_buf *b = buf_of(s, step);
  const rkv_sched_plan *p = &b->plan;
  if (n != p->n_seqs || (n && !outs))
    return rkvi_fail(s->err, RKV_ERR_INVALID_ARG,
                     "report: %u outputs for %u scheduled in step %llu", n, p->n_seqs,
                     (unsigned long long)step);
  rkv_status ret = RKV_OK;
  uint32_t i = 0;
  for (; i < n; i++) {
    req *r = map_find(s, outs[i].id);
    if (!r || !in_plan(r, step) || r->reported) {
      ret = rkvi_fail(s->err, RKV_ERR_INVALID_ARG, "report: id %lld is %s in step %llu",
                      (long long)outs[i].id,
                      !r            ? "unknown"
                      : r->reported ? "reported twice"
                                    : "not scheduled",
                      (unsigned long long)step);
      break;
    }
    r->reported = true;
  }
  if (ret != RKV_OK) {
    for (uint32_t j = 0; j < i; j++) map_find(s, outs[j].id)->reported = false;
    return ret;
  }
  const bool next_out = s->n_out > 1; /* the plan made while this one ran */
  for (i = 0; i < n; i++) {
    req *r = map_find(s, outs[i].id);
    const rkv_sched_seq *q = &b->seqs[r->idx[step & 1]];
    r->sched[step & 1] = 0;
    r->reported = false;
    if (r->draining) { /* the token after its end: discarded */
      finish_request(s, r);
      continue;
    }
    if (outs[i].compressed) {
      int32_t len = r->kv_len;
      if (!r->deferred && rkv_blockmgr_stream_len(s->bm, r->id, 0, 0, &len) == RKV_OK)
        r->kv_len = len;
      r->compressions++;
      s->m.compressions++;
      s->m.evicted_tokens += outs[i].tokens_evicted;
      s->m.compaction_freed_blocks += outs[i].blocks_freed;
    }
    if (q->samples) {
      r->generated++;
      s->m.generation_tokens++;
      if (outs[i].eos || r->generated >= r->max_new) {
        if (next_out && in_plan(r, step + 1))
          r->draining = true; /* the next plan already runs it: freed at its report */
        else
          finish_request(s, r);
      }
    }
  }
  if (next_out) RKV_TRY(append_deferred(s, step));
  s->n_out--;
  return after_call_check(s);
}

/* ---- queries ---------------------------------------------------------------------------- */

rkv_status rkv_sched_get_request(const rkv_sched *s, int64_t id, rkv_sched_request_info *out) {
  if (!s || !out) return RKV_ERR_INVALID_ARG;
  const req *r = map_find(s, id);
  if (!r) return RKV_ERR_NOT_FOUND;
  out->state = r->q == Q_RUNNING   ? RKV_SCHED_RUNNING
               : r->q == Q_SWAPPED ? RKV_SCHED_SWAPPED
                                   : RKV_SCHED_WAITING;
  out->prompt_len = r->prompt_len;
  out->generated = r->generated;
  out->computed = r->computed;
  out->kv_len = r->kv_len;
  out->preemptions = r->preemptions;
  out->compressions = r->compressions;
  out->bound_blocks = r->reserved ? r->bound : req_bound(s, r);
  return RKV_OK;
}

void rkv_sched_get_metrics(const rkv_sched *s, rkv_sched_metrics *out) {
  if (!s || !out) return;
  *out = s->m;
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(s->bm, &st);
  out->total_blocks = st.total_blocks;
  out->used_blocks = st.used_blocks;
  out->free_blocks = st.free_blocks;
  out->kv_cache_usage = st.total_blocks ? (double)st.used_blocks / st.total_blocks : 0.0;
  out->fragmentation =
      st.allocated_slots ? (double)st.fragmentation_slots / (double)st.allocated_slots : 0.0;
  out->num_running = s->running.n;
  out->num_waiting = s->waiting.n;
  out->num_swapped = s->swapped.n;
  out->host_total_blocks = s->cfg.host_blocks;
  out->host_used_blocks = s->cfg.host_blocks - s->host_n_free;
  out->reserved_blocks = s->reserved;
}

uint64_t rkv_sched_plan_hash(const rkv_sched_plan *p) {
  if (!p) return 0;
  uint64_t h = 0x6A09E667F3BCC908ull;
#define H(v) (h = mix64(h ^ (uint64_t)(v)) + 0x9E3779B97F4A7C15ull)
  H(p->step);
  H(p->n_seqs);
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    H(q->id);
    H(q->kind);
    H(q->n_tokens);
    H(q->pos);
    H(q->kv_len);
    H((q->samples ? 1u : 0u) | (q->compress ? 2u : 0u));
  }
  H(p->n_copies);
  for (uint32_t i = 0; i < p->n_copies; i++)
    H(((uint64_t)(uint32_t)p->copies[i].src << 32) | (uint32_t)p->copies[i].dst);
  H(p->n_swap_out);
  for (uint32_t i = 0; i < p->n_swap_out; i++)
    H(((uint64_t)(uint32_t)p->swap_out[i].device << 32) | (uint32_t)p->swap_out[i].host);
  H(p->n_swap_in);
  for (uint32_t i = 0; i < p->n_swap_in; i++)
    H(((uint64_t)(uint32_t)p->swap_in[i].device << 32) | (uint32_t)p->swap_in[i].host);
  H(p->n_preempted);
  for (uint32_t i = 0; i < p->n_preempted; i++) H(p->preempted[i]);
  H(p->n_swapped_out);
  for (uint32_t i = 0; i < p->n_swapped_out; i++) H(p->swapped_out[i]);
  H(p->n_finished);
  for (uint32_t i = 0; i < p->n_finished; i++) H(p->finished[i]);
  H(p->n_forks);
  for (uint32_t i = 0; i < p->n_forks; i++) {
    H(p->forks[i].parent);
    H(p->forks[i].child);
  }
#undef H
  return h;
}

/* ---- invariants ------------------------------------------------------------------------- */

static rkv_status check_queue(const rkv_sched *s, const queue *q, queue_id qid, uint32_t *count,
                              char *err) {
  uint32_t n = 0;
  const req *prev = NULL;
  for (const req *r = q->head; r; prev = r, r = r->next) {
    if (r->q != qid)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld in the wrong queue", (long long)r->id);
    if (r->prev != prev)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "queue links broken at %lld", (long long)r->id);
    if (prev && before(r, prev))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "queue order broken at %lld", (long long)r->id);
    if (map_find(s, r->id) != r)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld not in the id map", (long long)r->id);
    if (++n > s->live) return rkvi_fail(err, RKV_ERR_CORRUPT, "queue cycle");
  }
  if (q->tail != prev || q->n != n)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "queue tail/count wrong (%u vs %u)", q->n, n);
  *count += n;
  return RKV_OK;
}

rkv_status rkv_sched_check(const rkv_sched *s_const) {
  if (!s_const) return RKV_ERR_INVALID_ARG;
  rkv_sched *s = (rkv_sched *)s_const; /* only the error buffer is written */
  char *err = s->err;
  uint32_t n = 0;
  RKV_TRY(check_queue(s, &s->waiting, Q_WAITING, &n, err));
  RKV_TRY(check_queue(s, &s->running, Q_RUNNING, &n, err));
  RKV_TRY(check_queue(s, &s->swapped, Q_SWAPPED, &n, err));
  if (n != s->live) return rkvi_fail(err, RKV_ERR_CORRUPT, "%u queued but %u live", n, s->live);
  if (s->n_out > (s->cfg.overlap ? 2u : 1u) || s->n_out > s->step_no)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "%u plans outstanding", s->n_out);
  if ((uint64_t)s->n_fin + s->live > s->fin_cap)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "finished list: %u ids + %u live > capacity %u",
                     s->n_fin, s->live, s->fin_cap);
  uint64_t reserved = 0, host_used = 0, map_n = 0, hit_total = 0;
  for (uint32_t i = 0; i < s->map_cap; i++) {
    const req *r = s->map[i];
    if (!r) continue;
    map_n++;
    if (r->reserved) reserved += r->bound;
    hit_total += r->hit_groups;
    if (r->hit_groups && (!r->reserved || r->hit_groups > r->n_hashes))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: %u shared groups counted, %s",
                       (long long)r->id, r->hit_groups,
                       r->reserved ? "more than its hashes" : "not running");
    for (uint32_t g = 0; g < r->hit_groups; g++)
      if (!grp_count(s, r->hashes[g]))
        return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: shared group %u not counted",
                         (long long)r->id, g);
    if (r->reserved != (r->q == Q_RUNNING))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: reservation vs state",
                       (long long)r->id);
    /* passed over at most cache_lookahead times, and only while waiting */
    if (r->passed > (r->q == Q_WAITING ? s->cfg.cache_lookahead : 0u))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: passed over %u times (%s)",
                       (long long)r->id, r->passed,
                       r->q == Q_WAITING ? "more than cache_lookahead" : "not waiting");
    bool exists = rkv_blockmgr_seq_exists(s->bm, r->id);
    if (exists != (r->q == Q_RUNNING))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: block-manager sequence %s",
                       (long long)r->id, exists ? "exists while not running" : "missing");
    /* a request counted in a plan nobody holds: its tokens were appended and counted as
     * computed, but no engine will ever run them (issue 17, finding 1) */
    for (uint32_t k = 0; k < 2; k++) {
      if (!r->sched[k]) continue;
      const uint64_t st = r->sched[k] - 1;
      const bool held = (st & 1) == k && st < s->step_no && st >= s->step_no - s->n_out;
      if (!held)
        return rkvi_fail(err, RKV_ERR_CORRUPT,
                         "request %lld: scheduled in step %llu, a plan that was never handed out "
                         "(next step %llu, %u outstanding)",
                         (long long)r->id, (unsigned long long)st, (unsigned long long)s->step_no,
                         s->n_out);
      const plan_buf *b = buf_of(s, st);
      if (r->idx[k] >= b->plan.n_seqs || b->seq_req[r->idx[k]] != r ||
          b->seqs[r->idx[k]].id != r->id)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: not at its place in plan %llu",
                         (long long)r->id, (unsigned long long)st);
    }
    /* overlap: an ended sequence waits for the one plan made before its end was reported,
     * and is in no later one; a deferred append waits only for the plan in flight's
     * compression of it */
    const uint64_t newest = s->step_no - 1;
    if (r->draining && (!outstanding(s, r) || (s->n_out == 2 && in_plan(r, newest))))
      return rkvi_fail(err, RKV_ERR_CORRUPT,
                       "request %lld: ended, but not in exactly the plan after its end",
                       (long long)r->id);
    int32_t expect_len = r->kv_len;
    if (r->deferred) {
      const plan_buf *nb = s->n_out == 2 ? buf_of(s, newest) : NULL;
      const plan_buf *fb = s->n_out == 2 ? buf_of(s, newest - 1) : NULL;
      if (!nb || !in_plan(r, newest) || !in_plan(r, newest - 1) ||
          !fb->seqs[r->idx[(newest - 1) & 1]].compress)
        return rkvi_fail(err, RKV_ERR_CORRUPT,
                         "request %lld: a deferred append without a compression in flight",
                         (long long)r->id);
      expect_len = fb->seqs[r->idx[(newest - 1) & 1]].kv_len;
    }
    /* a token sampled in the plan in flight counts as computed by the newer plan already */
    int64_t pending = 0;
    if (s->n_out == 2 && in_plan(r, s->step_no - 2))
      pending = buf_of(s, s->step_no - 2)->seqs[r->idx[(s->step_no - 2) & 1]].samples;
    if (r->computed > r->target + r->generated + pending || r->generated > r->max_new)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: progress counters", (long long)r->id);
    if (exists) {
      int32_t len = -1;
      (void)rkv_blockmgr_stream_len(s->bm, r->id, 0, 0, &len);
      if (len != expect_len)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: kv_len %d but stream holds %d",
                         (long long)r->id, expect_len, len);
      if (!evicts(&r->evict) && (int64_t)len != r->computed)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: full policy lost tokens",
                         (long long)r->id);
      const int32_t prot = rkv_blockmgr_seq_protected(s->bm, r->id);
      if (prot != protected_now(r))
        return rkvi_fail(err, RKV_ERR_CORRUPT,
                         "request %lld: %d tokens protected in the block manager, %d expected",
                         (long long)r->id, prot, protected_now(r));
    }
    uint32_t chain = 0;
    for (int32_t h = r->host_head; h >= 0; h = s->host_next[h]) {
      if ((uint32_t)h >= s->cfg.host_blocks || ++chain > s->cfg.host_blocks)
        return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: host chain broken", (long long)r->id);
    }
    if (chain != r->host_n || (r->q == Q_SWAPPED) != (r->host_head >= 0 || r->host_n > 0))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "request %lld: host chain of %u, recorded %u",
                       (long long)r->id, chain, r->host_n);
    host_used += chain;
  }
  if (map_n != s->live)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "map holds %llu, live %u", (unsigned long long)map_n,
                     s->live);
  /* every counted group once, its count the requests that hit it */
  uint64_t counts = 0, keys = 0;
  for (uint32_t i = 0; i < s->grp_cap; i++) {
    counts += s->grp_cnt[i];
    keys += s->grp_cnt[i] > 0;
  }
  if (counts != hit_total || keys != s->grp_n || keys > s->hashes_live)
    return rkvi_fail(err, RKV_ERR_CORRUPT,
                     "shared groups: %llu counted in %llu keys (recorded %u), requests hold %llu",
                     (unsigned long long)counts, (unsigned long long)keys, s->grp_n,
                     (unsigned long long)hit_total);
  reserved += (uint64_t)s->streams * s->grp_n;
  if (reserved != s->reserved)
    return rkvi_fail(err, RKV_ERR_CORRUPT,
                     "reserved %llu but requests and shared groups sum to %llu",
                     (unsigned long long)s->reserved, (unsigned long long)reserved);
  if (host_used + s->host_n_free != s->cfg.host_blocks)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "host pool: %llu used + %u free != %u",
                     (unsigned long long)host_used, s->host_n_free, s->cfg.host_blocks);
  if (rkv_blockmgr_num_seqs(s->bm) != s->running.n)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "block manager holds %u sequences, %u running",
                     rkv_blockmgr_num_seqs(s->bm), s->running.n);
  const rkv_status bst = rkv_blockmgr_check(s->bm);
  if (bst != RKV_OK)
    return rkvi_fail(err, bst == RKV_ERR_NO_MEMORY ? bst : RKV_ERR_CORRUPT, "block manager: %s",
                     rkv_blockmgr_last_error(s->bm));
  return RKV_OK;
}
