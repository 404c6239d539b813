/* `rkv sim` model shapes and the roofline cost model of a decode/prefill step on a named GPU:
 * weights and KV read once per step over memory bandwidth, matmul and attention flops over
 * tensor throughput, eviction flops (R-KV redundancy n^2 d, importance) at their own
 * efficiency, plus a fixed per-layer overhead. Numbers and rules: docs/SIMULATOR.md. */
#include <string.h>

#include "sim.h"

bool sim_model_preset(const char *name, sim_model *out) {
  memset(out, 0, sizeof *out);
  if (strcmp(name, "tiny") == 0) {
    *out = (sim_model){"tiny", 2, 4, 2, 64, 0.0};
    out->params = sim_model_params_estimate(out);
  } else if (strcmp(name, "llama-8b") == 0) {
    *out = (sim_model){"llama-8b", 32, 32, 8, 128, 8.03e9};
  } else if (strcmp(name, "qwen-14b") == 0) {
    *out = (sim_model){"qwen-14b", 48, 40, 8, 128, 14.8e9};
  } else {
    return false;
  }
  return true;
}

double sim_model_params_estimate(const sim_model *m) {
  double h = (double)m->q_heads * m->head_dim;
  double kv = (double)m->kv_heads * m->head_dim;
  double ffn = 3.5 * h;
  return m->layers * (2.0 * h * h + 2.0 * h * kv + 3.0 * h * ffn) + 2.0 * 32000.0 * h;
}

/* Peak numbers from the vendors' data sheets (SXM parts, dense bf16). */
static const sim_gpu kGpus[] = {
    {"a100", 2.039e12, 312e12, 0.80, 0.60, 0.40, 8e-6},
    {"h100", 3.35e12, 989e12, 0.80, 0.60, 0.40, 8e-6},
    {"h200", 4.8e12, 989e12, 0.80, 0.60, 0.40, 8e-6},
};

const sim_gpu *sim_gpu_find(const char *name) {
  for (size_t i = 0; i < sizeof kGpus / sizeof kGpus[0]; i++)
    if (strcmp(kGpus[i].name, name) == 0) return &kGpus[i];
  return NULL;
}

void sim_cost_step(const sim_model *m, const sim_gpu *g, size_t kv_elem_bytes,
                   const rkv_sched_plan *p, sim_cost *out) {
  memset(out, 0, sizeof *out);
  if (!p->n_seqs) return;
  const double d = m->head_dim, L = m->layers, Hq = m->q_heads, Hkv = m->kv_heads;
  const double tok_bytes = L * Hkv * d * 2.0 * (double)kv_elem_bytes; /* K+V of one token */
  double bytes = m->params * 2.0; /* bf16 weights, read once per step */
  double flops = 2.0 * m->params * p->n_batched_tokens;
  double attn_flops = 0.0, evict_flops = 0.0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    double n = q->n_tokens, len = q->kv_len;
    bytes += len * tok_bytes + n * tok_bytes; /* read the cache once, write the new rows */
    /* QK^T and PV: 4 flops per (query head, key, dim); causal prefill sees ~len - n/2 */
    double ctx = q->kind == RKV_SCHED_DECODE ? len : len - n / 2.0;
    attn_flops += 4.0 * L * Hq * d * n * ctx;
    if (q->compress && q->evict) {
      const rkv_evict_params *e = q->evict;
      double a = e->window, G = Hq / Hkv;
      double per_head = 0.0;
      if (e->policy == RKV_EVICT_RKV) per_head = 2.0 * len * len * d + 2.0 * a * len * d * G;
      if (e->policy == RKV_EVICT_SNAPKV) per_head = 2.0 * a * len * d * G;
      evict_flops += per_head * L * Hkv;
      bytes += len * tok_bytes / 2.0 + (double)e->budget * tok_bytes; /* read K, move kept */
    }
  }
  flops += attn_flops;
  out->bytes = bytes;
  out->attn_flops = attn_flops;
  out->evict_flops = evict_flops;
  out->mem = bytes / (g->mem_bw * g->mem_eff);
  out->compute = flops / (g->flops * g->flop_eff);
  out->evict = evict_flops / (g->flops * g->evict_eff);
  out->overhead = L * g->launch_s;
  out->total = (out->mem > out->compute ? out->mem : out->compute) + out->evict + out->overhead;
}
