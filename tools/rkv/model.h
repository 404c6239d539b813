/* The librkv test model on the C side (tool-private, used by `rkv eval` and the model tests):
 *  - a safetensors reader (8-byte header length, JSON header, raw little-endian tensors) that
 *    validates everything and never crashes on bad input;
 *  - the model (tools/model/model.py: RMSNorm, GQA + RoPE at logical positions, SwiGLU,
 *    previous-token embedding) loaded from such a file;
 *  - a runner that decodes batches of sequences through librkv: KV in a blockmgr-managed pool,
 *    attention by rkv_attn_prefill / rkv_attn_decode, the query window filled by attention;
 *    the pool may live on a device (dense math on the host, per layer the rows copied to the
 *    device and handed to the library's executor);
 *  - the task generator and answer checker (tools/model/task.py, byte-identical problems).
 * Errors: functions return rkv_status and write a message into err / the runner's last error. */
#ifndef RT_MODEL_H
#define RT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rkv/attention.h>
#include <rkv/blockmgr.h>
#include <rkv/evict.h>
#include <rkv/executor.h>
#include <rkv/qwindow.h>
#include <rkv/runtime.h>

/* ---- safetensors ----------------------------------------------------------------------- */

#define RT_ST_MAX_DIMS 8
/* rt_st_read's limits (docs/MODEL.md, "Input limits"): the safetensors format itself caps
 * the JSON header at 100 MB; the test model's weights are a few MB, so 1 GiB is generous. */
#define RT_ST_MAX_HEADER (UINT64_C(100) << 20)
#define RT_ST_MAX_FILE (UINT64_C(1) << 30)

typedef enum rt_st_dtype {
  RT_ST_F32 = 0,
  RT_ST_F16 = 1,
  RT_ST_BF16 = 2,
  RT_ST_I32 = 3,
  RT_ST_I64 = 4,
  RT_ST_U8 = 5,
  RT_ST_DTYPE_COUNT_
} rt_st_dtype;

typedef struct rt_st_tensor {
  const char *name;
  rt_st_dtype dtype;
  uint32_t ndim;
  int64_t shape[RT_ST_MAX_DIMS];
  uint64_t begin; /* byte offsets relative to the start of the data section */
  uint64_t end;
} rt_st_tensor;

typedef struct rt_st_file rt_st_file;

/* Parses a whole file held in memory (copied; the caller keeps `data`). RKV_ERR_FORMAT with
 * a message naming the problem (truncation, JSON syntax, unknown dtype, offsets outside the
 * data or not matching the shape, overlapping tensors, duplicate names, a NaN or Inf in an
 * F32 / F16 / BF16 tensor), RKV_ERR_NO_MEMORY. *out = NULL on failure. */
rkv_status rt_st_parse(const void *data, size_t size, rt_st_file **out, char *err, size_t err_len);
/* Reads and parses a file: RKV_ERR_IO when it cannot be read, RKV_ERR_FORMAT when it is
 * longer than RT_ST_MAX_FILE or its header length is outside [2, RT_ST_MAX_HEADER] (checked
 * before anything that large is allocated), else as rt_st_parse. */
rkv_status rt_st_read(const char *path, rt_st_file **out, char *err, size_t err_len);
void rt_st_free(rt_st_file *f);
uint32_t rt_st_num_tensors(const rt_st_file *f);
const rt_st_tensor *rt_st_tensor_at(const rt_st_file *f, uint32_t i);
/* NULL when absent. */
const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name);
/* Bytes of a tensor (not necessarily aligned: copy out with memcpy). */
const void *rt_st_data(const rt_st_file *f, const rt_st_tensor *t);
/* Value of a "__metadata__" key, NULL when absent. */
const char *rt_st_meta(const rt_st_file *f, const char *key);
size_t rt_st_dtype_size(rt_st_dtype dt);

/* ---- the model ------------------------------------------------------------------------- */

#define RT_MODEL_MAX_VOCAB 256

typedef struct rt_model_config {
  int32_t vocab_size;
  int32_t d_model;
  int32_t n_layers;
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t d_ff;
  int32_t prev_embed; /* 1: the previous token's embedding is added to each position */
  float rope_theta;
  float norm_eps;
  int32_t generator_version;      /* task format the weights were trained on (0 = unknown) */
  char vocab[RT_MODEL_MAX_VOCAB]; /* id -> character; id 0 is padding */
} rt_model_config;

typedef struct rt_model rt_model;

/* Loads weights + config from a safetensors file written by tools/model/train.py. Every
 * expected tensor must be present with the exact F32 shape. RKV_ERR_IO, RKV_ERR_FORMAT,
 * RKV_ERR_UNSUPPORTED (odd head_dim, n_heads not a multiple of n_kv_heads), RKV_ERR_NO_MEMORY. */
rkv_status rt_model_load(const char *path, rt_model **out, char *err, size_t err_len);
void rt_model_destroy(rt_model *m);
const rt_model_config *rt_model_get_config(const rt_model *m);
size_t rt_model_num_params(const rt_model *m);
/* Token id of a character, -1 when it is not in the vocabulary. */
int32_t rt_model_token(const rt_model *m, char c);
/* Encodes text; RKV_ERR_INVALID_ARG on an unknown character, RKV_ERR_CAPACITY when cap is too
 * small (*n = needed). */
rkv_status rt_model_encode(const rt_model *m, const char *text, int32_t *ids, size_t cap,
                           size_t *n);

/* ---- the runner: batched forward through librkv ---------------------------------------- */

typedef struct rt_model_runner_config {
  uint32_t max_seqs;      /* sequences alive at once */
  uint32_t max_rows;      /* tokens fed in one step, all sequences together */
  uint32_t num_blocks;    /* KV pool blocks */
  uint32_t block_size;    /* tokens per block (16) */
  rkv_dtype kv_dtype;     /* pool dtype (f32 for exact cross-checks) */
  int32_t max_stream_len; /* longest stream ever attended (sizes the workspace) */
  uint32_t qwindow;       /* query-window rows kept (alpha); 0 = no query window */
  bool accumulate_scores; /* decode attention adds attention mass per slot (H2O) */
  bool check_every_op;    /* blockmgr invariant walk after each mutation (tests) */
  /* The block manager's sequences and appends belong to someone else (a scheduler): seq_add /
   * seq_remove only touch the query window, and a step's new tokens are taken to be already
   * appended, i.e. the last n positions of every stream of the sequence. */
  bool external_append;
  bool prefix_cache; /* the block manager keeps a prefix cache (the scheduler's prefix_cache) */
} rt_model_runner_config;

typedef struct rt_model_runner rt_model_runner;

/* The pool lives on `backend`. Borrowed: model and backend outlive the runner.
 * CPU backend: host pool, host query window, attention and eviction on the host.
 * Device backend (CUDA, or the emulated device): the runner only steps through the library's
 * executor (rt_model_runner_use_executor), which keeps the pool, the table mirror and the
 * query-window ring on the device and runs the kernels; the dense math (embeddings,
 * projections, RoPE, MLP, logits) stays on the host. Per layer the runner pads Q/K/V into
 * pinned staging, copies them into DEVICE buffers (<rkv/buffer.h>), calls rkv_exec_layer and
 * copies the attention output back (one stream sync per layer: the next projection needs it).
 * The CUDA kernels take head_dim 64/128/256 only: a smaller model head_dim is zero-padded
 * (rt_model_cuda_head_dim), which changes no dot product; the block manager is created with
 * the padded head_dim and the executor with rt_model_runner_attn_scale. */
rkv_status rt_model_runner_create(const rt_model *model, rkv_backend *backend,
                                  const rt_model_runner_config *cfg, rt_model_runner **out,
                                  char *err, size_t err_len);
void rt_model_runner_destroy(rt_model_runner *r);
/* Hands K/V writes and attention to the library's executor (CPU pools): rt_model_runner_step
 * then runs between rkv_exec_begin and rkv_exec_finish of a plan, with its rows in plan
 * order, and calls rkv_exec_layer for each layer. NULL detaches. */
void rt_model_runner_use_executor(rt_model_runner *r, rkv_exec *x);
const char *rt_model_runner_last_error(const rt_model_runner *r);
rkv_blockmgr *rt_model_runner_blockmgr(rt_model_runner *r);
rkv_kv_pool *rt_model_runner_pool(rt_model_runner *r);
/* NULL when cfg.qwindow == 0 or on a device (the executor keeps the window there). */
rkv_qwindow *rt_model_runner_qwindow(rt_model_runner *r);
/* True when the pool lives on a device (CUDA or the emulated device). */
bool rt_model_runner_on_cuda(const rt_model_runner *r);

/* Compresses the streams of (seq, layer) longer than ep->budget to exactly ep->budget tokens
 * with rkv_evict_layer, the host query window and `workspace` (rkv_evict_workspace_size
 * bytes). Host pools only (RKV_ERR_UNSUPPORTED on a device: there the executor compresses). */
rkv_status rt_model_runner_evict(rt_model_runner *r, const rkv_evict_params *ep, int64_t seq,
                                 uint32_t layer, void *workspace, size_t ws_bytes,
                                 rkv_evict_result *res);

/* Registers / drops a sequence (block manager + query window; query window only with
 * external_append). */
rkv_status rt_model_runner_seq_add(rt_model_runner *r, int64_t seq);
rkv_status rt_model_runner_seq_remove(rt_model_runner *r, int64_t seq);

/* Blocks a step feeding n tokens to seq would take from the pool. */
uint32_t rt_model_runner_blocks_needed(const rt_model_runner *r, int64_t seq, uint32_t n);

/* One forward step over a batch. Sequence b (seqs[b], distinct) feeds the tokens
 * tokens[q_indptr[b] .. q_indptr[b+1]) (at least one) at logical positions pos0[b], pos0[b]+1,
 * ...; prev_tok[b] is the token before the first one (0 at the start of a sequence). Their K/V
 * are appended to every stream of the sequence. logits: [n_seqs][vocab] for each sequence's
 * last token, or [rows][vocab] for every fed token when all_rows. Uses rkv_attn_decode when
 * every sequence feeds one token, else rkv_attn_prefill. RKV_ERR_NO_BLOCKS (nothing changed)
 * when the pool cannot hold the new tokens; RKV_ERR_CAPACITY beyond max_rows / max_seqs. */
rkv_status rt_model_runner_step(rt_model_runner *r, uint32_t n_seqs, const int64_t *seqs,
                                const int32_t *q_indptr, const int32_t *tokens,
                                const int32_t *prev_tok, const int32_t *pos0, float *logits,
                                bool all_rows);

/* ---- device pools ---------------------------------------------------------------------- */

/* Device head size for a model head_dim: head_dim itself when it is 64, 128 or 256; else the
 * smallest of those that is head_dim times a power of 4 (32 -> 128, 16 -> 64), else the
 * smallest above head_dim. *qscale = sqrt(padded / head_dim) (exactly 2 for 32 -> 128): the
 * query rows are uploaded times qscale and the attention scale divided by it (an exact no-op
 * when qscale is a power of two), so the device query window holds q * qscale and the GPU
 * eviction's 1/sqrt(padded) logit scale equals the model's 1/sqrt(head_dim).
 * RKV_ERR_UNSUPPORTED above 256. Plain arithmetic: every build. */
rkv_status rt_model_cuda_head_dim(uint32_t head_dim, uint32_t *padded, float *qscale);

/* The softmax scale the executor must use for this runner: 0 (its default) on a host pool;
 * on a device pool the model's 1/sqrt(head_dim) divided by qscale (see above). */
float rt_model_runner_attn_scale(const rt_model_runner *r);

/* ---- the task (tools/model/task.py) ---------------------------------------------------- */

#define RT_TASK_GENERATOR_VERSION 2 /* the newest format; weights say which one they know */
#define RT_TASK_MIN_DIGITS 1
#define RT_TASK_MAX_DIGITS 25
/* The longest prompt and reference target of n digits in a generator version: prompt 4n + 4
 * (version 1) or 5n + 4 (version 2); target 22n + 42 (version 1) or at most 121n + 164
 * (version 2: the longest column, line and talk, is 121 characters). */
#define RT_TASK_PROMPT_MAX(n, version) (((version) == 2 ? 5 : 4) * (n) + 4)
#define RT_TASK_TARGET_MAX(n, version) ((version) == 2 ? 121 * (n) + 164 : 22 * (n) + 42)
/* Text buffers: the longest of either, with the terminator. */
#define RT_TASK_MAX_TEXT (RT_TASK_TARGET_MAX(RT_TASK_MAX_DIGITS, 2) + 1)

typedef struct rt_task_problem {
  int32_t digits;
  int32_t version;                /* generator version: 1 or 2 (docs/MODEL.md) */
  char a[RT_TASK_MAX_DIGITS + 1]; /* decimal, most significant first */
  char b[RT_TASK_MAX_DIGITS + 1];
  char sum[RT_TASK_MAX_DIGITS + 2]; /* digits + 1 characters (leading carry kept) */
  char prompt[RT_TASK_MAX_TEXT];
  char target[RT_TASK_MAX_TEXT];
  /* Where the target's parts start (offsets into target): column i's line (10 characters, the
   * first pass, in version 1; 13 in version 2), the talk after it (version 2 only), the
   * answer's first label. */
  int32_t talk_at[RT_TASK_MAX_DIGITS];
  int32_t line_at[RT_TASK_MAX_DIGITS];
  int32_t answer_at;
} rt_task_problem;

/* Problem `index` of the set `seed` with a digit count in [lo, hi] in generator `version`
 * (task.problem). RKV_ERR_INVALID_ARG for a range outside 1..25 or a version other than 1, 2. */
rkv_status rt_task_problem_make(uint64_t seed, uint64_t index, int32_t lo, int32_t hi,
                                int32_t version, rt_task_problem *p);
/* True iff `generated` holds a well-formed labelled answer equal to the problem's sum
 * (task.is_correct). */
bool rt_task_check(const rt_task_problem *p, const char *generated);

#endif /* RT_MODEL_H */
