/* Prometheus text exposition of the scheduler metrics (rkv_sched_metrics_prometheus,
 * rkv_sched_prometheus): the names follow vLLM's where a counterpart exists
 * (vllm:kv_cache_usage_perc -> rkv_kv_cache_usage_perc, vllm:prefix_cache_hits ->
 * rkv_prefix_cache_hits_total), plus the eviction counters R-KV adds. Writes into a caller
 * buffer, never allocates. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sched_metrics.h"

typedef struct out_buf {
  char *buf;
  size_t cap;
  size_t len; /* bytes that a large enough buffer would hold */
} out_buf;

static void emit(out_buf *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out_buf *o, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *dst = o->len < o->cap ? o->buf + o->len : NULL;
  size_t room = o->len < o->cap ? o->cap - o->len : 0;
  int n = vsnprintf(dst, room, fmt, ap);
  va_end(ap);
  if (n > 0) o->len += (size_t)n;
}

static void metric(out_buf *o, const char *name, const char *type, const char *help, double v) {
  emit(o, "# HELP rkv_%s %s\n# TYPE rkv_%s %s\nrkv_%s %.17g\n", name, help, name, type, name, v);
}

static void sched_metrics(out_buf *o, const rkv_sched_metrics *m) {
  metric(o, "kv_cache_usage_perc", "gauge", "Fraction of KV blocks in use (0..1).",
         m->kv_cache_usage);
  metric(o, "kv_cache_fragmentation", "gauge",
         "Unused token slots in allocated blocks over allocated slots.", m->fragmentation);
  metric(o, "num_requests_running", "gauge", "Requests running.", m->num_running);
  metric(o, "num_requests_waiting", "gauge", "Requests waiting.", m->num_waiting);
  metric(o, "num_requests_swapped", "gauge", "Requests swapped to the host pool.", m->num_swapped);
  metric(o, "kv_blocks_used", "gauge", "Device KV blocks in use.", m->used_blocks);
  metric(o, "kv_blocks_total", "gauge", "Device KV blocks.", m->total_blocks);
  metric(o, "kv_blocks_reserved", "gauge", "Blocks reserved by admitted requests' bounds.",
         (double)m->reserved_blocks);
  metric(o, "host_blocks_used", "gauge", "Host swap blocks in use.", m->host_used_blocks);
  metric(o, "host_blocks_total", "gauge", "Host swap blocks.", m->host_total_blocks);
  metric(o, "max_running", "gauge", "Most requests running at once.", m->max_running);
  metric(o, "steps_total", "counter", "Scheduler steps.", (double)m->steps);
  metric(o, "num_preemptions_total", "counter", "Preemptions (recompute + swap).",
         (double)m->num_preemptions);
  metric(o, "num_preemptions_recompute_total", "counter", "Preemptions by recompute.",
         (double)m->num_preempt_recompute);
  metric(o, "num_preemptions_swap_total", "counter", "Preemptions by swap.",
         (double)m->num_preempt_swap);
  metric(o, "swapped_out_blocks_total", "counter", "Blocks copied to the host pool.",
         (double)m->swapped_out_blocks);
  metric(o, "swapped_in_blocks_total", "counter", "Blocks copied back from the host pool.",
         (double)m->swapped_in_blocks);
  metric(o, "prompt_tokens_total", "counter", "Prefill tokens computed (recompute included).",
         (double)m->prompt_tokens);
  metric(o, "generation_tokens_total", "counter", "Tokens sampled.", (double)m->generation_tokens);
  metric(o, "request_success_total", "counter", "Requests finished.", (double)m->num_finished);
  metric(o, "request_aborted_total", "counter", "Requests aborted.", (double)m->num_aborted);
  metric(o, "request_rejected_total", "counter", "Requests rejected at submission.",
         (double)m->num_rejected);
  metric(o, "compressions_total", "counter", "Sequence compressions (all layers).",
         (double)m->compressions);
  metric(o, "evicted_tokens_total", "counter", "Tokens evicted, summed over streams.",
         (double)m->evicted_tokens);
  metric(o, "compaction_freed_blocks_total", "counter", "Blocks freed by compaction.",
         (double)m->compaction_freed_blocks);
}

static void prefix_metrics(out_buf *o, const rkv_sched_prefix_stats *p, const rkv_prefix_stats *c) {
  metric(o, "prefix_cache_queries_total", "counter",
         "Prompt tokens covered by block hashes at admissions (recompute included).",
         (double)p->hashed_tokens);
  metric(o, "prefix_cache_hits_total", "counter",
         "Of those, tokens taken from the prefix cache instead of computed.",
         (double)p->hit_tokens);
  metric(o, "prefix_cache_admissions_total", "counter", "Admissions of requests with hashes.",
         (double)p->admissions);
  metric(o, "prefix_cache_admissions_hit_total", "counter",
         "Of those, admissions that shared at least one cached group.", (double)p->admissions_hit);
  metric(o, "prefix_cache_admissions_ahead_total", "counter",
         "Admissions made ahead of an earlier waiting request (cache-aware admission).",
         (double)p->admissions_ahead);
  metric(o, "prefix_cache_groups", "gauge", "Cached block groups.", c->entries);
  metric(o, "prefix_cache_blocks", "gauge", "Blocks in cached groups.", c->cached_blocks);
  metric(o, "prefix_cache_reclaimable_blocks", "gauge",
         "Of those, blocks no sequence holds (reclaimed least recently used first).",
         c->reclaimable_blocks);
  metric(o, "prefix_cache_groups_inserted_total", "counter", "Groups registered.",
         (double)c->inserted);
  metric(o, "prefix_cache_groups_reclaimed_total", "counter",
         "Groups dropped to reuse their memory.", (double)c->reclaimed);
  metric(o, "prefix_cache_groups_invalidated_total", "counter",
         "Groups dropped because their content changed.", (double)c->invalidated);
}

static rkv_status finish(out_buf *o, size_t *written) {
  *written = o->len;
  if (o->len >= o->cap) {
    if (o->cap) o->buf[o->cap - 1] = '\0';
    return RKV_ERR_CAPACITY;
  }
  return RKV_OK;
}

rkv_status rkv_sched_metrics_prometheus(const rkv_sched_metrics *m, char *buf, size_t cap,
                                        size_t *written) {
  if (!m || !written || (cap && !buf)) return RKV_ERR_INVALID_ARG;
  out_buf o = {buf, cap, 0};
  sched_metrics(&o, m);
  return finish(&o, written);
}

rkv_status rkvi_sched_prometheus_render(const rkv_sched_metrics *m, const rkv_sched_prefix_stats *p,
                                        const rkv_prefix_stats *c, char *buf, size_t cap,
                                        size_t *written) {
  if (cap && !buf) return RKV_ERR_INVALID_ARG;
  out_buf o = {buf, cap, 0};
  sched_metrics(&o, m);
  if (p && c) prefix_metrics(&o, p, c);
  return finish(&o, written);
}
