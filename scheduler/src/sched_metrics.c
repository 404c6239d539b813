/* Prometheus text exposition of the scheduler metrics (rkv_sched_metrics_prometheus): the
 * names follow vLLM's where a counterpart exists (vllm:kv_cache_usage_perc ->
 * rkv_kv_cache_usage_perc), plus the eviction counters R-KV adds. Writes into a caller
 * buffer, never allocates. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <rkv/scheduler.h>

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

rkv_status rkv_sched_metrics_prometheus(const rkv_sched_metrics *m, char *buf, size_t cap,
                                        size_t *written) {
  if (!m || !written || (cap && !buf)) return RKV_ERR_INVALID_ARG;
  out_buf o = {buf, cap, 0};
  metric(&o, "kv_cache_usage_perc", "gauge", "Fraction of KV blocks in use (0..1).",
         m->kv_cache_usage);
  metric(&o, "kv_cache_fragmentation", "gauge",
         "Unused token slots in allocated blocks over allocated slots.", m->fragmentation);
  metric(&o, "num_requests_running", "gauge", "Requests running.", m->num_running);
  metric(&o, "num_requests_waiting", "gauge", "Requests waiting.", m->num_waiting);
  metric(&o, "num_requests_swapped", "gauge", "Requests swapped to the host pool.", m->num_swapped);
  metric(&o, "kv_blocks_used", "gauge", "Device KV blocks in use.", m->used_blocks);
  metric(&o, "kv_blocks_total", "gauge", "Device KV blocks.", m->total_blocks);
  metric(&o, "kv_blocks_reserved", "gauge", "Blocks reserved by admitted requests' bounds.",
         (double)m->reserved_blocks);
  metric(&o, "host_blocks_used", "gauge", "Host swap blocks in use.", m->host_used_blocks);
  metric(&o, "host_blocks_total", "gauge", "Host swap blocks.", m->host_total_blocks);
  metric(&o, "max_running", "gauge", "Most requests running at once.", m->max_running);
  metric(&o, "steps_total", "counter", "Scheduler steps.", (double)m->steps);
  metric(&o, "num_preemptions_total", "counter", "Preemptions (recompute + swap).",
         (double)m->num_preemptions);
  metric(&o, "num_preemptions_recompute_total", "counter", "Preemptions by recompute.",
         (double)m->num_preempt_recompute);
  metric(&o, "num_preemptions_swap_total", "counter", "Preemptions by swap.",
         (double)m->num_preempt_swap);
  metric(&o, "swapped_out_blocks_total", "counter", "Blocks copied to the host pool.",
         (double)m->swapped_out_blocks);
  metric(&o, "swapped_in_blocks_total", "counter", "Blocks copied back from the host pool.",
         (double)m->swapped_in_blocks);
  metric(&o, "prompt_tokens_total", "counter", "Prefill tokens computed (recompute included).",
         (double)m->prompt_tokens);
  metric(&o, "generation_tokens_total", "counter", "Tokens sampled.", (double)m->generation_tokens);
  metric(&o, "request_success_total", "counter", "Requests finished.", (double)m->num_finished);
  metric(&o, "request_aborted_total", "counter", "Requests aborted.", (double)m->num_aborted);
  metric(&o, "request_rejected_total", "counter", "Requests rejected at submission.",
         (double)m->num_rejected);
  metric(&o, "compressions_total", "counter", "Sequence compressions (all layers).",
         (double)m->compressions);
  metric(&o, "evicted_tokens_total", "counter", "Tokens evicted, summed over streams.",
         (double)m->evicted_tokens);
  metric(&o, "compaction_freed_blocks_total", "counter", "Blocks freed by compaction.",
         (double)m->compaction_freed_blocks);
  *written = o.len;
  if (o.len >= cap) {
    if (cap) buf[cap - 1] = '\0';
    return RKV_ERR_CAPACITY;
  }
  return RKV_OK;
}
