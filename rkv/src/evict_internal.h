/* Private interface of the eviction module: the per-head scoring core shared by the dense
 * entry (tools, tests) and the paged entry (rkv_evict_layer), the similarity kernels (BLAS and
 * the blocked fallback), the selection step and the workspace carving.
 *
 * Everything here works on one kv head at a time on f32 rows already gathered into the
 * caller's workspace; nothing allocates. */
#ifndef RKV_EVICT_INTERNAL_H
#define RKV_EVICT_INTERNAL_H

#include <rkv/evict.h>

#include "rkv_internal.h"

/* Rows of the similarity matrix computed per tile: bounds the workspace to
 * RKVI_SIM_TILE * n floats instead of n * n while keeping the product GEMM-shaped. */
#define RKVI_SIM_TILE 256

/* Query rows per logits product: the f64 output [rows][n] fits the similarity tile. */
#define RKVI_LOGIT_ROWS (RKVI_SIM_TILE / 2)

/* Alignment of every workspace region (cache line, and what AVX-512 loads like). */
#define RKVI_WS_ALIGN 64

static inline size_t rkvi_ws_align_up(size_t x) {
  return (x + RKVI_WS_ALIGN - 1) & ~(size_t)(RKVI_WS_ALIGN - 1);
}

/* Sizes (bytes) of the scratch regions the scorer needs for one head of up to max_len
 * tokens; every region is rounded up to RKVI_WS_ALIGN. */
typedef struct rkvi_head_ws {
  float *k;      /* [n][d] keys (raw, then normalised in place) */
  float *kt;     /* [d][64] transposed panel for the blocked kernel (fallback only) */
  float *sim;    /* [tile][n] similarity tile (first the window logits, <= tile rows) */
  double *logit; /* [window][n] GQA-max logits, then probabilities */
  double *imp;   /* [n] importance (pooled) */
  double *imp0;  /* [n] importance before pooling */
  double *red;   /* [n] redundancy r then R */
  double *z;     /* [n] joint score */
  int32_t *heap; /* [n] selection heap */
  uint8_t *mark; /* [n] kept flags */
  int32_t *js;   /* [n] redundancy: j*(i) found right of the diagonal, or -1 */
  int32_t *la;   /* [n] redundancy: last row j < i with S[j][i] > T, or -1 */
  double *jv;    /* [n] S[i][js[i]] */
  double *lv;    /* [n] S[la[i]][i] */
  double *s0;    /* [n] S[0][i] (the no-neighbour entry) */
  double *kd;    /* [n][d] keys as f64 (logits through dgemm) */
  double *qd;    /* [RKVI_LOGIT_ROWS][d] query rows as f64 */
} rkvi_head_ws;

/* Bytes of one head's scratch for up to max_len tokens (0 on overflow). */
size_t rkvi_head_ws_bytes(int32_t max_len, uint32_t head_dim, int32_t window);
/* Carves `base` (RKVI_WS_ALIGN aligned, rkvi_head_ws_bytes long) into the regions. */
void rkvi_head_ws_carve(void *base, int32_t max_len, uint32_t head_dim, int32_t window,
                        rkvi_head_ws *ws);

/* Optional score dumps of one head, each [n - window] (NULL = not wanted). */
typedef struct rkvi_head_dump {
  float *importance;
  float *redundancy;
  float *joint;
} rkvi_head_dump;

/* The selection key of one kv head: the joint score Z of its n - window candidates into
 * ws->z (R-KV: lambda I - (1 - lambda) R; SnapKV: I; H2O: the accumulated mass), plus the
 * optional dumps. Split from rkvi_evict_head so that coarser selection granularities rank by
 * sums of exactly the numbers a per-stream step ranks by. Same inputs as rkvi_evict_head;
 * requires n > window and a scored policy (R-KV, SnapKV, H2O). */
void rkvi_evict_head_score(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                           const float *q, const float *acc, rkvi_head_ws *ws,
                           const rkvi_head_dump *dump);

/* Scores and selects one kv head.
 *  ws->k holds the head's keys [n][d] as f32 (overwritten: normalised in place);
 *  q    [group][window][d] the window queries of the head's query group (R-KV, SnapKV);
 *  acc  [n] accumulated attention mass (H2O), else NULL;
 *  keep [min(n, budget)] receives the kept positions, ascending.
 * Requires n > budget (callers handle n <= budget). Never fails on valid parameters. */
void rkvi_evict_head(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                     const float *q, const float *acc, rkvi_head_ws *ws, int32_t *keep,
                     const rkvi_head_dump *dump);

/* out[i][j] = a[i] . b[j] for i < m, j < nb; a [m][d], b [nb][d], out [m][nb], all
 * row-major and dense. cblas_sgemm when built with a BLAS and use_blas; otherwise the blocked
 * kernel, which needs kt [d][64]. */
void rkvi_gemm_abt(const float *a, int32_t m, const float *b, int32_t nb, uint32_t d, float *out,
                   float *kt, bool use_blas);
/* out[i][j] = a[i] . b[j] in f64 (products of f32 values are exact, sums in f64) for
 * i < m <= RKVI_LOGIT_ROWS, j < nb: cblas_dgemm on f64 copies (ad [m][d], bd [nb][d]) when
 * built with a BLAS and use_blas, else eight-way f64 dot products. */
void rkvi_gemm_abt_f64(const float *a, int32_t m, const float *b, int32_t nb, uint32_t d,
                       double *out, double *ad, double *bd, bool use_blas);
/* Vector loops of the redundancy row pass (in the -O3 file): the f64 sum of m floats; r[t] +=
 * u[t]; and for every t with u[t] > thr: last_row[t] = row, last_val[t] = u[t]. */
double rkvi_sum_f32(const float *u, int32_t m);
/* f64 dot product of f32 vectors (exact products, eight partial sums). */
double rkvi_dot_f32(const float *a, const float *b, uint32_t d);
void rkvi_add_f32(double *r, const float *u, int32_t m);
void rkvi_mark_above(const float *u, int32_t m, float thr, int32_t row, int32_t *last_row,
                     double *last_val);
/* True when this build links a BLAS. */
bool rkvi_have_blas(void);

/* ---- the policy table (policies.c) ---- */

/* Host scorer of one kv head: the joint scores of the n - window candidates into ws->z; a
 * scorer that computes importance (redundancy) leaves it in ws->imp (ws->red) for the dumps.
 * Same inputs as rkvi_evict_head; n > window. */
typedef void (*rkvi_score_fn)(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                              const float *q, const float *acc, rkvi_head_ws *ws);
/* Positional selection: the budget kept positions of a stream of n > budget tokens,
 * ascending, with no scores. */
typedef void (*rkvi_keep_fn)(const rkv_evict_params *p, int32_t n, int32_t *keep);

/* One policy. Adding a policy is its file (a scorer or a positional keep) and one row. */
typedef struct rkvi_policy {
  const char *name;
  const char *aliases[2]; /* other spellings rkv_evict_policy_parse accepts */
  bool evicts;
  bool needs_queries;  /* the scorer reads the window queries */
  bool needs_mass;     /* the scorer reads accumulated attention mass */
  bool redundancy;     /* the scorer leaves redundancy in ws->red (dumps) */
  bool device;         /* the CUDA kernels implement it (evict_cuda.cu) */
  rkvi_score_fn score; /* NULL for positional and non-evicting policies */
  rkvi_keep_fn keep;   /* positional policies */
} rkvi_policy;

/* The row of a valid policy id (callers validated it). */
const rkvi_policy *rkvi_policy_of(rkv_evict_policy p);

/* Scorers and keeps of the built-in policies (score_rkv.c, policy_h2o.c, policy_streaming.c). */
void rkvi_score_rkv(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                    const float *q, const float *acc, rkvi_head_ws *ws);
void rkvi_score_snapkv(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                       const float *q, const float *acc, rkvi_head_ws *ws);
void rkvi_score_h2o(const rkv_evict_params *p, int32_t n, uint32_t d, uint32_t group,
                    const float *q, const float *acc, rkvi_head_ws *ws);
void rkvi_keep_streaming(const rkv_evict_params *p, int32_t n, int32_t *keep);

/* Top-k selection: keeps the `k` positions j < n_cand with the highest z (ties: lower
 * position), plus positions [n_cand, n); writes the kept positions ascending into keep.
 * heap [k] and mark [n] are scratch. */
void rkvi_select_top(const double *z, int32_t n_cand, int32_t k, int32_t n, int32_t *heap,
                     uint8_t *mark, int32_t *keep);

/* ---- selection granularity (select_multi.c), shared by the dense and paged entries ---- */

/* Loads the inputs of stream (layer, head) of one job and scores it into ws->z with
 * rkvi_evict_head_score; the dense and the paged entries differ only in where the keys,
 * queries and masses come from. */
typedef void (*rkvi_stream_scorer)(void *ctx, uint32_t layer, uint32_t head, rkvi_head_ws *ws);

/* One step of every stream of a sequence: layers x kv streams of n tokens each, n > budget. */
typedef struct rkvi_gran_job {
  const rkv_evict_params *p;
  uint32_t layers, kv;
  int32_t n;
  rkvi_stream_scorer score; /* unused by positional policies */
  void *ctx;
  int32_t *keep; /* stream (l, h) writes its budget positions at keep + (l * kv + h) * stride */
  size_t stride;
} rkvi_gran_job;

/* Bytes of the two f64 score vectors the coarser units need besides one head's scratch (0
 * for RKV_EVICT_GRAN_STREAM); aligned. */
size_t rkvi_gran_extra_bytes(rkv_evict_granularity g, int32_t n);

/* Selects every stream of the job at granularity g (docs/EVICTION.md, "Selection
 * granularity"): the one implementation of the aggregation. total and lay are the scratch of
 * rkvi_gran_extra_bytes (unused for streams and positional policies). Never fails. */
void rkvi_select_granular(const rkvi_gran_job *j, rkv_evict_granularity g, rkvi_head_ws *ws,
                          double *total, double *lay);

/* The common length of every stream of seq (L layers x kv heads) into *len; RKV_ERR_STATE
 * (text in err) unless they all hold the same number of tokens, which a selection shared
 * across streams needs (evict_seq.c; the evictor's device path checks it too). */
rkv_status rkvi_lockstep_len(const rkv_blockmgr *m, int64_t seq, uint32_t L, uint32_t kv,
                             int32_t *len, char *err, size_t err_len);

/* ---- paged-entry helpers shared by rkv_evict_layer and rkv_evict_seq (evict_layer.c) ---- */

/* CPU pool whose layout matches the manager; layer < num_layers; num_q_heads a multiple of
 * the manager's kv heads. */
rkv_status rkvi_check_pool(const rkv_blockmgr *m, const rkv_kv_pool *pool, uint32_t layer,
                           uint32_t num_q_heads, char *err, size_t err_len);

/* Gathers positions [P, len) of one stream (block ids ids[0..nb)) from the pool: keys as f32
 * into k (when non-NULL) and masses into acc (when non-NULL), position pos at index pos - P. */
void rkvi_gather_stream(const rkv_kv_pool *pool, const int32_t *ids, int32_t nb, int32_t len,
                        int32_t P, float *k, float *acc);

/* What follows rkv_blockmgr_compact of n_lists streams that all kept `kept` tokens: applies
 * the move plan to the pool, zeroes the masses of slots that hold no token any more (freed
 * blocks, the unused tail of each last block) and fills res (blocks freed net of fresh ones).
 * old_ids are the listed streams' block rows before compaction, back to back, old_nb[i] long.
 * RKV_ERR_INTERNAL (text in err) if the pool rejects the plan. */
rkv_status rkvi_after_compact(rkv_blockmgr *m, rkv_kv_pool *pool, int64_t seq,
                              const rkv_keep_list *lists, uint32_t n_lists, int32_t kept,
                              const int32_t *old_ids, const int32_t *old_nb,
                              const rkv_slot_move *moves, uint32_t n_moves, uint64_t evicted,
                              rkv_evict_result *res, char *err, size_t err_len);

#endif /* RKV_EVICT_INTERNAL_H */
