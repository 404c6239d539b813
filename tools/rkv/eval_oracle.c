/* The structural oracle of `rkv eval` (eval_oracle.h). */
#include "eval_oracle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rt_oracle {
  uint32_t n_req, layers, kv_heads, streams;
  int32_t max_len;
  int32_t *need; /* [n_req][max_len]: the position is read by queries at positions < need */
  int32_t *pos;  /* [n_req][streams][max_len]: logical position held at each cache index */
  int32_t *cnt;  /* [n_req][streams] */
  struct cand {
    float v;
    int32_t i;
  } * cand; /* workspace [max_len] */
  unsigned char *keep;
};

rt_oracle *rt_oracle_create(uint32_t n_req, uint32_t layers, uint32_t kv_heads, int32_t max_len) {
  rt_oracle *o = calloc(1, sizeof *o);
  if (!o || !n_req || !layers || !kv_heads || max_len <= 0) {
    free(o);
    return NULL;
  }
  o->n_req = n_req;
  o->layers = layers;
  o->kv_heads = kv_heads;
  o->streams = layers * kv_heads;
  o->max_len = max_len;
  const size_t L = (size_t)max_len;
  o->need = calloc((size_t)n_req * L, sizeof *o->need);
  o->pos = malloc((size_t)n_req * o->streams * L * sizeof *o->pos);
  o->cnt = calloc((size_t)n_req * o->streams, sizeof *o->cnt);
  o->cand = malloc(L * sizeof *o->cand);
  o->keep = malloc(L);
  if (!o->need || !o->pos || !o->cnt || !o->cand || !o->keep) {
    rt_oracle_destroy(o);
    return NULL;
  }
  return o;
}

void rt_oracle_destroy(rt_oracle *o) {
  if (!o) return;
  free(o->need);
  free(o->pos);
  free(o->cnt);
  free(o->cand);
  free(o->keep);
  free(o);
}

static void need_range(int32_t *need, int32_t cap, int32_t from, int32_t to, int32_t until) {
  for (int32_t j = from; j < to && j < cap; j++)
    if (j >= 0 && until > need[j]) need[j] = until;
}

rkv_status rt_oracle_set_problem(rt_oracle *o, uint32_t req, const rt_task_problem *p,
                                 int32_t prompt_len) {
  if (!o || !p || req >= o->n_req) return RKV_ERR_INVALID_ARG;
  if (p->version != 2) return RKV_ERR_UNSUPPORTED;
  int32_t *need = o->need + (size_t)req * (size_t)o->max_len;
  memset(need, 0, (size_t)o->max_len * sizeof *need);
  const int32_t n = p->digits, P = prompt_len, cap = o->max_len;
  for (int32_t i = 0; i < n; i++) {
    const int32_t line = P + p->line_at[i];
    const int32_t talk = P + p->talk_at[i];                      /* right after the line's ';' */
    const int32_t answered = P + p->answer_at + 2 * (n - i) + 2; /* after label i's digit */
    /* version 2's prompt: 'Q:' a as 'C9' pairs, '+', b as 'C:3' triples */
    const int32_t a_at = 2 + 2 * (n - 1 - i), b_at = 2 * n + 3 + 3 * (n - 1 - i);
    /* the talk runs to the next line (or the closing words), which reads its carry */
    const int32_t talk_end = i + 1 < n ? P + p->line_at[i + 1] : P + p->answer_at;
    need_range(need, cap, a_at, a_at + 2, talk); /* label + operand digit: until the line */
    need_range(need, cap, b_at, b_at + 3, talk);
    need_range(need, cap, line, talk, answered);          /* the line */
    need_range(need, cap, talk, talk_end, talk_end + 10); /* its talk: until the next line */
  }
  return RKV_OK;
}

static int32_t *stream_pos(rt_oracle *o, uint32_t req, uint32_t s) {
  return o->pos + ((size_t)req * o->streams + s) * (size_t)o->max_len;
}

rkv_status rt_oracle_append(rt_oracle *o, uint32_t req, const rkv_sched_seq *ss) {
  if (!o || !ss || req >= o->n_req) return RKV_ERR_INVALID_ARG;
  const int32_t n = (int32_t)ss->n_tokens, before = ss->kv_len - n;
  for (uint32_t s = 0; s < o->streams; s++) {
    int32_t *cnt = &o->cnt[(size_t)req * o->streams + s];
    if (ss->pos == 0) *cnt = 0; /* a start, or a restart after a recompute preemption */
    if (*cnt != before || ss->kv_len > o->max_len) return RKV_ERR_INTERNAL;
    int32_t *pos = stream_pos(o, req, s);
    for (int32_t t = 0; t < n; t++) pos[(*cnt)++] = (int32_t)ss->pos + t;
  }
  return RKV_OK;
}

/* Unique per position: still needed after `now` first, then the newest. */
static float oracle_value(const rt_oracle *o, uint32_t req, int32_t j, int32_t now) {
  const int32_t *need = o->need + (size_t)req * (size_t)o->max_len;
  const float recency = (float)(j + 1) / (float)(o->max_len + 1);
  return (j < o->max_len && need[j] > now ? 2.0f : 0.0f) + recency;
}

rkv_status rt_oracle_score(rt_oracle *o, uint32_t req, int64_t seq, const rkv_blockmgr *m,
                           float *scores, int32_t now) {
  if (!o || !m || !scores || req >= o->n_req) return RKV_ERR_INVALID_ARG;
  for (uint32_t l = 0; l < o->layers; l++)
    for (uint32_t h = 0; h < o->kv_heads; h++) {
      const uint32_t s = l * o->kv_heads + h;
      const int32_t *pos = stream_pos(o, req, s);
      const int32_t cnt = o->cnt[(size_t)req * o->streams + s];
      for (int32_t i = 0; i < cnt; i++) {
        int64_t slot;
        rkv_status st = rkv_blockmgr_stream_slot(m, seq, l, h, i, &slot);
        if (st != RKV_OK) return st;
        scores[slot] = oracle_value(o, req, pos[i], now);
      }
    }
  return RKV_OK;
}

static int cand_desc(const void *a, const void *b) {
  const float x = ((const struct cand *)a)->v, y = ((const struct cand *)b)->v;
  return x < y ? 1 : x > y ? -1 : 0; /* values are unique per position */
}

/* H2O's rule on the mirror: the `window` newest, plus the best budget - window of the rest. */
static int32_t mirror_select(rt_oracle *o, uint32_t req, int32_t *pos, int32_t cnt,
                             const rkv_evict_params *ep, int32_t now) {
  const int32_t B = ep->budget, W = ep->window;
  if (cnt <= B) return cnt;
  memset(o->keep, 0, (size_t)cnt);
  for (int32_t i = cnt - W; i < cnt; i++) o->keep[i] = 1;
  for (int32_t i = 0; i < cnt - W; i++)
    o->cand[i] = (struct cand){oracle_value(o, req, pos[i], now), i};
  qsort(o->cand, (size_t)(cnt - W), sizeof *o->cand, cand_desc);
  for (int32_t k = 0; k < B - W; k++) o->keep[o->cand[k].i] = 1;
  int32_t w = 0;
  for (int32_t i = 0; i < cnt; i++)
    if (o->keep[i]) pos[w++] = pos[i];
  return w;
}

rkv_status rt_oracle_after(rt_oracle *o, uint32_t req, int64_t seq, const rkv_blockmgr *m,
                           const float *scores, const rkv_evict_params *ep, int32_t now, char *err,
                           size_t err_len) {
  if (!o || !m || !scores || !ep || req >= o->n_req) return RKV_ERR_INVALID_ARG;
  for (uint32_t l = 0; l < o->layers; l++)
    for (uint32_t h = 0; h < o->kv_heads; h++) {
      const uint32_t s = l * o->kv_heads + h;
      int32_t *pos = stream_pos(o, req, s);
      int32_t *cnt = &o->cnt[(size_t)req * o->streams + s];
      *cnt = mirror_select(o, req, pos, *cnt, ep, now);
      int32_t len = 0;
      rkv_status st = rkv_blockmgr_stream_len(m, seq, l, h, &len);
      if (st != RKV_OK) return st;
      if (len != *cnt) {
        snprintf(err, err_len, "oracle: seq %lld layer %u head %u holds %d tokens, mirror %d",
                 (long long)seq, l, h, len, *cnt);
        return RKV_ERR_INTERNAL;
      }
      for (int32_t i = 0; i < len; i++) {
        int64_t slot;
        if ((st = rkv_blockmgr_stream_slot(m, seq, l, h, i, &slot)) != RKV_OK) return st;
        if (scores[slot] != oracle_value(o, req, pos[i], now)) {
          snprintf(err, err_len,
                   "oracle: seq %lld layer %u head %u index %d: the pool's score %g is not "
                   "position %d's value %g (the mirror diverged from the library's selection)",
                   (long long)seq, l, h, i, (double)scores[slot], pos[i],
                   (double)oracle_value(o, req, pos[i], now));
          return RKV_ERR_INTERNAL;
        }
      }
    }
  return RKV_OK;
}
