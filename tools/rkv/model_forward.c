/* The test model's forward pass in C, served through librkv: weights from safetensors, then
 * per step embedding (+ previous-token embedding), and per layer RMSNorm, Q/K/V projections,
 * RoPE at each token's logical position, K/V scattered into the slots the block manager hands
 * out (rkv_attn_write_kv), paged attention over the per-head block tables
 * (rkv_attn_prefill / rkv_attn_decode, which also fill the query window and, for H2O, the
 * per-slot attention mass), the output projection and the SwiGLU MLP; finally the logits.
 * Mirrors tools/model/model.py exactly (same RoPE convention, f32 throughout).
 * Matrices are stored transposed ([in][out]) so the plain loops vectorise; with a BLAS the
 * products are cblas_sgemm calls. When the pool lives on a device (CUDA, or the emulated device
 * of <rkv/buffer_emu.h>), the library's executor does the KV write, attention, the query window
 * and eviction on the device; this file pads each layer's Q/K/V into pinned staging, copies them
 * into DEVICE buffers and the attention output back (<rkv/buffer.h>: no CUDA call here). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef RKV_HAVE_BLAS
#include <cblas.h>
#endif

#include <rkv/buffer.h>

#include "model.h"

rkv_status rt_model_cuda_head_dim(uint32_t head_dim, uint32_t *padded, float *qscale) {
  static const uint32_t sizes[] = {64, 128, 256};
  const size_t n = sizeof sizes / sizeof sizes[0];
  if (!padded || !qscale || head_dim == 0) return RKV_ERR_INVALID_ARG;
  uint32_t pick = 0;
  /* First choice: padded = head_dim * 4^k, so that qscale = 2^k is exact. */
  for (size_t i = 0; i < n && !pick; i++) {
    const uint32_t sz = sizes[i];
    if (sz < head_dim || sz % head_dim) continue;
    const uint32_t ratio = sz / head_dim;
    if ((ratio & (ratio - 1)) == 0 && (ratio & 0x55555555u)) pick = sz;
  }
  for (size_t i = 0; i < n && !pick; i++)
    if (sizes[i] >= head_dim) pick = sizes[i];
  if (!pick) return RKV_ERR_UNSUPPORTED;
  *padded = pick;
  *qscale = (float)sqrt((double)pick / (double)head_dim);
  return RKV_OK;
}

typedef struct model_layer {
  float *attn_norm; /* [d] */
  float *wq;        /* [d][nh*hd] (transposed) */
  float *wk;        /* [d][nkv*hd] */
  float *wv;        /* [d][nkv*hd] */
  float *wo;        /* [nh*hd][d] */
  float *mlp_norm;  /* [d] */
  float *w1;        /* [d][ff] */
  float *w3;        /* [d][ff] */
  float *w2;        /* [ff][d] */
} model_layer;

struct rt_model {
  rt_model_config cfg;
  float *tok_emb;  /* [V][d] */
  float *prev_emb; /* [V][d] or NULL */
  float *final_norm;
  float *lm_head; /* [d][V] (transposed) */
  model_layer *layers;
  float **owned;
  size_t n_owned;
  size_t n_params;
  int32_t char_to_id[256];
};

static void msg(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void msg(char *err, size_t err_len, const char *fmt, ...) {
  if (!err || !err_len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

/* ---- loading --------------------------------------------------------------------------- */

static rkv_status meta_int(const rt_st_file *f, const char *key, int32_t lo, int32_t hi,
                           int32_t *out, char *err, size_t err_len) {
  const char *v = rt_st_meta(f, key);
  if (!v) {
    msg(err, err_len, "model metadata lacks '%s'", key);
    return RKV_ERR_FORMAT;
  }
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    msg(err, err_len, "model metadata '%s' = '%s' is not an integer in [%d, %d]", key, v, lo, hi);
    return RKV_ERR_FORMAT;
  }
  *out = (int32_t)x;
  return RKV_OK;
}

static rkv_status meta_float(const rt_st_file *f, const char *key, double lo, double hi, float *out,
                             char *err, size_t err_len) {
  const char *v = rt_st_meta(f, key);
  if (!v) {
    msg(err, err_len, "model metadata lacks '%s'", key);
    return RKV_ERR_FORMAT;
  }
  char *end;
  double x = strtod(v, &end);
  if (end == v || *end || !(x >= lo && x <= hi)) {
    msg(err, err_len, "model metadata '%s' = '%s' is not a number in [%g, %g]", key, v, lo, hi);
    return RKV_ERR_FORMAT;
  }
  *out = (float)x;
  return RKV_OK;
}

static float *model_own(rt_model *m, size_t n) {
  float **no = realloc(m->owned, (m->n_owned + 1) * sizeof *no);
  if (!no) return NULL;
  m->owned = no;
  float *p = malloc((n ? n : 1) * sizeof(float));
  if (!p) return NULL;
  m->owned[m->n_owned++] = p;
  return p;
}

/* Copies tensor `name` of shape [rows][cols] (cols = 0: a vector of rows) into fresh memory,
 * transposed to [cols][rows] when transpose. */
static rkv_status load_tensor(rt_model *m, const rt_st_file *f, const char *name, int64_t rows,
                              int64_t cols, bool transpose, float **out, char *err,
                              size_t err_len) {
  const rt_st_tensor *t = rt_st_find(f, name);
  if (!t) {
    msg(err, err_len, "model file lacks tensor '%s'", name);
    return RKV_ERR_FORMAT;
  }
  bool shape_ok =
      t->dtype == RT_ST_F32 && (cols ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                                     : (t->ndim == 1 && t->shape[0] == rows));
  if (!shape_ok) {
    char want[48], got[96];
    if (cols)
      snprintf(want, sizeof want, "[%lld, %lld]", (long long)rows, (long long)cols);
    else
      snprintf(want, sizeof want, "[%lld]", (long long)rows);
    size_t k = (size_t)snprintf(got, sizeof got, "[");
    for (uint32_t i = 0; i < t->ndim && k < sizeof got - 24; i++)
      k += (size_t)snprintf(got + k, sizeof got - k, "%s%lld", i ? ", " : "",
                            (long long)t->shape[i]);
    snprintf(got + k, sizeof got - k, "]");
    msg(err, err_len, "tensor '%s': expected F32 %s, found %s %s", name, want,
        t->dtype == RT_ST_F32 ? "F32" : "non-F32", got);
    return RKV_ERR_FORMAT;
  }
  size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
  float *p = model_own(m, n);
  if (!p) {
    msg(err, err_len, "out of memory");
    return RKV_ERR_NO_MEMORY;
  }
  const unsigned char *src = rt_st_data(f, t);
  if (transpose && cols) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++)
        memcpy(&p[(size_t)c * (size_t)rows + (size_t)r],
               src + ((size_t)r * (size_t)cols + (size_t)c) * 4, 4);
  } else {
    memcpy(p, src, n * sizeof(float));
  }
  m->n_params += n;
  *out = p;
  return RKV_OK;
}

void rt_model_destroy(rt_model *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
  free(m->owned);
  free(m->layers);
  free(m);
}

static rkv_status model_vocab(rt_model *m, const rt_st_file *f, char *err, size_t err_len) {
  rt_model_config *c = &m->cfg;
  const char *v = rt_st_meta(f, "vocab_codes");
  if (!v) {
    msg(err, err_len, "model metadata lacks 'vocab_codes'");
    return RKV_ERR_FORMAT;
  }
  for (int i = 0; i < 256; i++) m->char_to_id[i] = -1;
  int32_t n = 0;
  const char *s = v;
  while (*s) {
    char *end;
    long code = strtol(s, &end, 10);
    if (end == s || code < 0 || code > 127 || n >= RT_MODEL_MAX_VOCAB) {
      msg(err, err_len, "model metadata 'vocab_codes' is malformed near '%.16s'", s);
      return RKV_ERR_FORMAT;
    }
    c->vocab[n] = (char)code;
    if (n > 0) {
      if (m->char_to_id[code] >= 0 || code == 0) {
        msg(err, err_len, "model vocabulary repeats character %ld", code);
        return RKV_ERR_FORMAT;
      }
      m->char_to_id[code] = n;
    }
    n++;
    s = end;
    if (*s == ',') s++;
  }
  if (n != c->vocab_size) {
    msg(err, err_len, "model vocabulary has %d characters, vocab_size says %d", n, c->vocab_size);
    return RKV_ERR_FORMAT;
  }
  return RKV_OK;
}

rkv_status rt_model_load(const char *path, rt_model **out, char *err, size_t err_len) {
  if (!out || !path) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rt_st_file *f = NULL;
  rkv_status ret = rt_st_read(path, &f, err, err_len);
  if (ret != RKV_OK) return ret;
  rt_model *m = calloc(1, sizeof *m);
  if (!m) {
    rt_st_free(f);
    return RKV_ERR_NO_MEMORY;
  }
  rt_model_config *c = &m->cfg;
  if ((ret = meta_int(f, "vocab_size", 2, RT_MODEL_MAX_VOCAB, &c->vocab_size, err, err_len)) ||
      (ret = meta_int(f, "d_model", 1, 8192, &c->d_model, err, err_len)) ||
      (ret = meta_int(f, "n_layers", 1, 256, &c->n_layers, err, err_len)) ||
      (ret = meta_int(f, "n_heads", 1, 256, &c->n_heads, err, err_len)) ||
      (ret = meta_int(f, "n_kv_heads", 1, 256, &c->n_kv_heads, err, err_len)) ||
      (ret = meta_int(f, "head_dim", 2, 1024, &c->head_dim, err, err_len)) ||
      (ret = meta_int(f, "d_ff", 1, 65536, &c->d_ff, err, err_len)) ||
      (ret = meta_int(f, "prev_embed", 0, 1, &c->prev_embed, err, err_len)) ||
      (ret = meta_float(f, "rope_theta", 1.0, 1e9, &c->rope_theta, err, err_len)) ||
      (ret = meta_float(f, "norm_eps", 0.0, 1.0, &c->norm_eps, err, err_len)))
    goto fail;
  if (rt_st_meta(f, "generator_version") &&
      (ret = meta_int(f, "generator_version", 0, 1000000, &c->generator_version, err, err_len)))
    goto fail;
  if (c->head_dim % 2 || c->n_heads % c->n_kv_heads) {
    msg(err, err_len, "unsupported shape: head_dim %d (must be even), %d query heads over %d kv",
        c->head_dim, c->n_heads, c->n_kv_heads);
    ret = RKV_ERR_UNSUPPORTED;
    goto fail;
  }
  if ((ret = model_vocab(m, f, err, err_len))) goto fail;
  m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
  if (!m->layers) {
    ret = RKV_ERR_NO_MEMORY;
    goto fail;
  }
  const int64_t V = c->vocab_size, d = c->d_model, ff = c->d_ff;
  const int64_t qd = (int64_t)c->n_heads * c->head_dim, kd = (int64_t)c->n_kv_heads * c->head_dim;
  if ((ret = load_tensor(m, f, "tok_emb", V, d, false, &m->tok_emb, err, err_len)) ||
      (c->prev_embed &&
       (ret = load_tensor(m, f, "prev_emb", V, d, false, &m->prev_emb, err, err_len))) ||
      (ret = load_tensor(m, f, "final_norm", d, 0, false, &m->final_norm, err, err_len)) ||
      (ret = load_tensor(m, f, "lm_head", V, d, true, &m->lm_head, err, err_len)))
    goto fail;
  for (int32_t l = 0; l < c->n_layers; l++) {
    model_layer *L = &m->layers[l];
    char name[64];
#define LOAD(field, rows, cols, tr)                                                          \
  do {                                                                                       \
    snprintf(name, sizeof name, "layers.%d.%s", l, #field);                                  \
    if ((ret = load_tensor(m, f, name, rows, cols, tr, &L->field, err, err_len))) goto fail; \
  } while (0)
    LOAD(attn_norm, d, 0, false);
    LOAD(wq, qd, d, true);
    LOAD(wk, kd, d, true);
    LOAD(wv, kd, d, true);
    LOAD(wo, d, qd, true);
    LOAD(mlp_norm, d, 0, false);
    LOAD(w1, ff, d, true);
    LOAD(w3, ff, d, true);
    LOAD(w2, d, ff, true);
#undef LOAD
  }
  rt_st_free(f);
  *out = m;
  return RKV_OK;
fail:
  rt_st_free(f);
  rt_model_destroy(m);
  return ret;
}

const rt_model_config *rt_model_get_config(const rt_model *m) {
  return m ? &m->cfg : NULL;
}
size_t rt_model_num_params(const rt_model *m) {
  return m ? m->n_params : 0;
}

int32_t rt_model_token(const rt_model *m, char c) {
  return m ? m->char_to_id[(unsigned char)c] : -1;
}

rkv_status rt_model_encode(const rt_model *m, const char *text, int32_t *ids, size_t cap,
                           size_t *n) {
  if (!m || !text || !n) return RKV_ERR_INVALID_ARG;
  size_t len = strlen(text);
  *n = len;
  if (len > cap) return RKV_ERR_CAPACITY;
  for (size_t i = 0; i < len; i++) {
    int32_t id = rt_model_token(m, text[i]);
    if (id < 0) return RKV_ERR_INVALID_ARG;
    ids[i] = id;
  }
  return RKV_OK;
}

/* ---- math ------------------------------------------------------------------------------ */

/* y[rows][out] = x[rows][in] . wt[in][out] */
static void matmul(float *y, const float *x, const float *wt, int rows, int in, int out) {
#ifdef RKV_HAVE_BLAS
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, out, in, 1.0f, x, in, wt, out, 0.0f,
              y, out);
#else
  for (int r = 0; r < rows; r++) {
    float *yr = y + (size_t)r * out;
    const float *xr = x + (size_t)r * in;
    for (int o = 0; o < out; o++) yr[o] = 0.0f;
    for (int i = 0; i < in; i++) {
      const float xi = xr[i];
      const float *w = wt + (size_t)i * out;
      for (int o = 0; o < out; o++) yr[o] += xi * w[o];
    }
  }
#endif
}

static void rmsnorm(float *y, const float *x, const float *w, int rows, int d, float eps) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (size_t)r * d;
    float ss = 0.0f;
    for (int i = 0; i < d; i++) ss += xr[i] * xr[i];
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = 0; i < d; i++) y[(size_t)r * d + i] = xr[i] * inv * w[i];
  }
}

/* Rotates rows [n][heads][hd] in place; row r is at logical position pos[r]. Angles in double
 * then rounded to f32, exactly as tools/model/model.py rope_tables. */
static void rope(float *x, const int32_t *pos, int n, int heads, int hd, double theta) {
  const int h2 = hd / 2;
  for (int r = 0; r < n; r++) {
    for (int j = 0; j < h2; j++) {
      const double inv = 1.0 / pow(theta, (double)(2 * j) / (double)hd);
      const double ang = (double)pos[r] * inv;
      const float c = (float)cos(ang), s = (float)sin(ang);
      for (int h = 0; h < heads; h++) {
        float *v = x + ((size_t)r * heads + h) * hd;
        const float a = v[j], b = v[j + h2];
        v[j] = a * c - b * s;
        v[j + h2] = a * s + b * c;
      }
    }
  }
}

/* ---- the runner ------------------------------------------------------------------------ */

struct rt_model_runner {
  const rt_model *model;
  rt_model_runner_config cfg;
  rkv_blockmgr *bm;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
  uint32_t streams; /* per sequence */
  /* scratch, sized at create for max_rows / max_seqs */
  float *x, *h, *q, *k, *v, *att, *ff1, *ff3, *kbuf, *vbuf;
  int32_t *pos;
  int32_t *prev;
  int64_t *slots; /* [rows][streams] grouped per sequence: seq b at q_indptr[b] * streams */
  int32_t *indptr, *indices, *last_len;
  uint32_t indices_cap;
  void *ws;
  size_t ws_bytes;
  rkv_exec *exec; /* when set, the library's executor writes K/V and attends */
  /* device pools: rows padded to dpad (pads stay zero) in pinned staging [q][k][v] and the
   * attention output, and their DEVICE twins */
  bool on_device;
  uint32_t dpad;
  float qscale;
  rkv_buffer *stage, *hout, *dq, *dk, *dv, *dout;
  char err[256];
};

static rkv_status rfail(rt_model_runner *r, rkv_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static rkv_status rfail(rt_model_runner *r, rkv_status s, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->err, sizeof r->err, fmt, ap);
  va_end(ap);
  return s;
}

void rt_model_runner_destroy(rt_model_runner *r) {
  if (!r) return;
  rkv_buffer *bufs[] = {r->stage, r->hout, r->dq, r->dk, r->dv, r->dout};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) rkv_buffer_destroy(bufs[i]);
  rkv_qwindow_destroy(r->qw);
  rkv_kv_pool_destroy(r->pool);
  rkv_blockmgr_destroy(r->bm);
  float *fl[] = {r->x, r->h, r->q, r->k, r->v, r->att, r->ff1, r->ff3, r->kbuf, r->vbuf};
  for (size_t i = 0; i < sizeof fl / sizeof fl[0]; i++) free(fl[i]);
  free(r->pos);
  free(r->prev);
  free(r->slots);
  free(r->indptr);
  free(r->indices);
  free(r->last_len);
  free(r->ws);
  free(r);
}

/* Staging and DEVICE rows for max_rows tokens, padded; fresh pinned memory is zeroed once so
 * the pads stay zero (only the first head_dim columns are ever written). */
static rkv_status make_device_rows(rt_model_runner *r, rkv_backend *be) {
  const rt_model_config *c = &r->model->cfg;
  const size_t R = r->cfg.max_rows, D = r->dpad;
  const size_t qb = R * (size_t)c->n_heads * D * 4, kb = R * (size_t)c->n_kv_heads * D * 4;
  rkv_status st = rkv_buffer_create(be, RKV_BUFFER_HOST_PINNED, qb + 2 * kb, &r->stage);
  if (st == RKV_OK) st = rkv_buffer_create(be, RKV_BUFFER_HOST_PINNED, qb, &r->hout);
  if (st == RKV_OK) st = rkv_buffer_create(be, RKV_BUFFER_DEVICE, qb, &r->dq);
  if (st == RKV_OK) st = rkv_buffer_create(be, RKV_BUFFER_DEVICE, kb, &r->dk);
  if (st == RKV_OK) st = rkv_buffer_create(be, RKV_BUFFER_DEVICE, kb, &r->dv);
  if (st == RKV_OK) st = rkv_buffer_create(be, RKV_BUFFER_DEVICE, qb, &r->dout);
  if (st == RKV_OK) memset(rkv_buffer_ptr(r->stage), 0, qb + 2 * kb);
  return st;
}

rkv_status rt_model_runner_create(const rt_model *model, rkv_backend *backend,
                                  const rt_model_runner_config *cfg, rt_model_runner **out,
                                  char *err, size_t err_len) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!model || !backend || !cfg || !cfg->max_seqs || !cfg->max_rows || !cfg->num_blocks ||
      !cfg->block_size || cfg->max_stream_len <= 0) {
    msg(err, err_len, "model runner: missing model/backend or a zero size in the config");
    return RKV_ERR_INVALID_ARG;
  }
  const rt_model_config *c = &model->cfg;
  rt_model_runner *r = calloc(1, sizeof *r);
  if (!r) return RKV_ERR_NO_MEMORY;
  r->model = model;
  r->cfg = *cfg;
  rkv_status ret;
  /* Device: the pool's head size is padded to one the CUDA kernels take (model.h). */
  const bool on_cuda = !rkv_backend_device_is_host(backend);
  r->on_device = on_cuda;
  uint32_t pool_head_dim = (uint32_t)c->head_dim;
  float qscale = 1.0f;
  if (on_cuda && rt_model_cuda_head_dim(pool_head_dim, &pool_head_dim, &qscale) != RKV_OK) {
    msg(err, err_len, "model runner: head_dim %d is too large for the CUDA kernels (<= 256)",
        c->head_dim);
    ret = RKV_ERR_UNSUPPORTED;
    goto fail;
  }
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = cfg->num_blocks;
  bc.block_size = cfg->block_size;
  bc.num_layers = (uint32_t)c->n_layers;
  bc.num_kv_heads = (uint32_t)c->n_kv_heads;
  bc.head_dim = pool_head_dim;
  bc.dtype = cfg->kv_dtype;
  bc.max_seqs = cfg->max_seqs;
  bc.watermark = 0.0f;
  bc.check_every_op = cfg->check_every_op;
  bc.prefix_cache = cfg->prefix_cache;
  ret = rkv_blockmgr_create(&bc, &r->bm);
  if (ret) {
    msg(err, err_len, "blockmgr: %s", rkv_status_str(ret));
    goto fail;
  }
  r->streams = rkv_blockmgr_streams_per_seq(r->bm);
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(r->bm);
  ret = rkv_kv_pool_create(backend, &lay, cfg->num_blocks, &r->pool);
  if (ret) {
    msg(err, err_len, "kv pool: %s (%s)", rkv_status_str(ret), rkv_backend_last_error(backend));
    goto fail;
  }
  if (cfg->qwindow && !on_cuda) {
    rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
    qc.num_layers = (uint32_t)c->n_layers;
    qc.num_q_heads = (uint32_t)c->n_heads;
    qc.head_dim = (uint32_t)c->head_dim;
    qc.window = cfg->qwindow;
    qc.max_seqs = cfg->max_seqs;
    ret = rkv_qwindow_create(&qc, &r->qw);
    if (ret) {
      msg(err, err_len, "query window: %s", rkv_status_str(ret));
      goto fail;
    }
  }
  const size_t R = cfg->max_rows, d = (size_t)c->d_model;
  const size_t qd = (size_t)c->n_heads * (size_t)c->head_dim;
  const size_t kd = (size_t)c->n_kv_heads * (size_t)c->head_dim;
  const size_t V = (size_t)c->vocab_size;
  r->x = malloc(R * d * sizeof(float));
  r->h = malloc(R * (d > V ? d : V) * sizeof(float));
  r->q = malloc(R * qd * sizeof(float));
  r->k = malloc(R * kd * sizeof(float));
  r->v = malloc(R * kd * sizeof(float));
  r->att = malloc(R * qd * sizeof(float));
  r->ff1 = malloc(R * (size_t)c->d_ff * sizeof(float));
  r->ff3 = malloc(R * (size_t)c->d_ff * sizeof(float));
  r->kbuf = malloc(R * (size_t)c->head_dim * sizeof(float));
  r->vbuf = malloc(R * (size_t)c->head_dim * sizeof(float));
  r->pos = malloc(R * sizeof(int32_t));
  r->prev = malloc(R * sizeof(int32_t));
  r->slots = malloc(R * r->streams * sizeof(int64_t));
  const size_t S = (size_t)cfg->max_seqs * (size_t)c->n_kv_heads;
  r->indptr = malloc((S + 1) * sizeof(int32_t));
  r->last_len = malloc(S * sizeof(int32_t));
  r->indices_cap = cfg->num_blocks;
  r->indices = malloc((size_t)r->indices_cap * sizeof(int32_t));
  if (!r->x || !r->h || !r->q || !r->k || !r->v || !r->att || !r->ff1 || !r->ff3 || !r->kbuf ||
      !r->vbuf || !r->pos || !r->prev || !r->slots || !r->indptr || !r->last_len || !r->indices) {
    msg(err, err_len, "model runner: out of memory");
    ret = RKV_ERR_NO_MEMORY;
    goto fail;
  }
  if (on_cuda) {
    r->dpad = pool_head_dim;
    r->qscale = qscale;
    if ((ret = make_device_rows(r, backend)) != RKV_OK) {
      msg(err, err_len, "device buffers: %s (%s)", rkv_status_str(ret),
          rkv_backend_last_error(backend));
      goto fail;
    }
    *out = r;
    return RKV_OK;
  }
  /* Attention workspace sized once for the largest batch and stream (no growth later). */
  ret = rkv_attn_workspace_bound(
      r->pool, cfg->max_seqs > cfg->max_rows ? cfg->max_seqs : cfg->max_rows, (uint32_t)c->n_heads,
      (uint32_t)c->head_dim, cfg->max_stream_len, &r->ws_bytes);
  if (ret) {
    msg(err, err_len, "attention workspace bound: %s", rkv_status_str(ret));
    goto fail;
  }
  r->ws = malloc(r->ws_bytes ? r->ws_bytes : 1);
  if (!r->ws) {
    ret = RKV_ERR_NO_MEMORY;
    goto fail;
  }
  *out = r;
  return RKV_OK;
fail:
  rt_model_runner_destroy(r);
  return ret;
}

void rt_model_runner_use_executor(rt_model_runner *r, rkv_exec *x) {
  if (r) r->exec = x;
}

const char *rt_model_runner_last_error(const rt_model_runner *r) {
  return r ? r->err : "";
}
rkv_blockmgr *rt_model_runner_blockmgr(rt_model_runner *r) {
  return r ? r->bm : NULL;
}
rkv_kv_pool *rt_model_runner_pool(rt_model_runner *r) {
  return r ? r->pool : NULL;
}
rkv_qwindow *rt_model_runner_qwindow(rt_model_runner *r) {
  return r ? r->qw : NULL;
}
bool rt_model_runner_on_cuda(const rt_model_runner *r) {
  return r && r->on_device;
}

float rt_model_runner_attn_scale(const rt_model_runner *r) {
  if (!r || !r->on_device) return 0.0f;
  return 1.0f / sqrtf((float)r->model->cfg.head_dim) / r->qscale;
}

rkv_status rt_model_runner_evict(rt_model_runner *r, const rkv_evict_params *ep, int64_t seq,
                                 uint32_t layer, void *workspace, size_t ws_bytes,
                                 rkv_evict_result *res) {
  if (!r) return RKV_ERR_INVALID_ARG;
  if (r->on_device)
    return rfail(r, RKV_ERR_UNSUPPORTED, "eviction on a device runs in the executor");
  rkv_status s = rkv_evict_layer(ep, r->bm, r->pool, r->qw, (uint32_t)r->model->cfg.n_heads, seq,
                                 layer, workspace, ws_bytes, res);
  return s ? rfail(r, s, "%s", rkv_blockmgr_last_error(r->bm)) : RKV_OK;
}

rkv_status rt_model_runner_seq_add(rt_model_runner *r, int64_t seq) {
  if (!r) return RKV_ERR_INVALID_ARG;
  rkv_status s = RKV_OK;
  if (!r->cfg.external_append && (s = rkv_blockmgr_seq_create(r->bm, seq)) != RKV_OK)
    return rfail(r, s, "seq_create(%lld): %s", (long long)seq, rkv_blockmgr_last_error(r->bm));
  if (r->qw && (s = rkv_qwindow_seq_add(r->qw, seq)) != RKV_OK) {
    if (!r->cfg.external_append) rkv_blockmgr_seq_free(r->bm, seq);
    return rfail(r, s, "qwindow_seq_add(%lld): %s", (long long)seq, rkv_qwindow_last_error(r->qw));
  }
  return RKV_OK;
}

rkv_status rt_model_runner_seq_remove(rt_model_runner *r, int64_t seq) {
  if (!r) return RKV_ERR_INVALID_ARG;
  rkv_status s = r->cfg.external_append ? RKV_OK : rkv_blockmgr_seq_free(r->bm, seq);
  if (r->qw) {
    rkv_status s2 = rkv_qwindow_seq_remove(r->qw, seq);
    if (s == RKV_OK) s = s2;
  }
  return s ? rfail(r, s, "seq_remove(%lld) failed", (long long)seq) : RKV_OK;
}

uint32_t rt_model_runner_blocks_needed(const rt_model_runner *r, int64_t seq, uint32_t n) {
  uint32_t need = 0;
  if (!r || rkv_blockmgr_blocks_needed(r->bm, seq, n, &need) != RKV_OK) return UINT32_MAX;
  return need;
}

/* The rest of a layer after attention: output projection and residual, then the SwiGLU MLP
 * and residual. */
static void mlp_block(rt_model_runner *r, const model_layer *L, int rows) {
  const rt_model_config *c = &r->model->cfg;
  const int d = c->d_model, qd = c->n_heads * c->head_dim, ff = c->d_ff;
  matmul(r->h, r->att, L->wo, rows, qd, d);
  for (size_t i = 0; i < (size_t)rows * d; i++) r->x[i] += r->h[i];
  rmsnorm(r->h, r->x, L->mlp_norm, rows, d, c->norm_eps);
  matmul(r->ff1, r->h, L->w1, rows, d, ff);
  matmul(r->ff3, r->h, L->w3, rows, d, ff);
  for (size_t i = 0; i < (size_t)rows * ff; i++) {
    const float a = r->ff1[i];
    r->ff1[i] = a / (1.0f + expf(-a)) * r->ff3[i];
  }
  matmul(r->h, r->ff1, L->w2, rows, ff, d);
  for (size_t i = 0; i < (size_t)rows * d; i++) r->x[i] += r->h[i];
}

/* The slots of seq's n new tokens, [streams][n]: appended here, or, when a scheduler appended
 * them already, read back as the last n positions of each stream. */
static rkv_status take_slots(rt_model_runner *r, int64_t seq, int32_t n, int64_t *sl) {
  if (!r->cfg.external_append) {
    rkv_status s = rkv_blockmgr_append(r->bm, seq, (uint32_t)n, sl, NULL, NULL);
    return s ? rfail(r, s, "append(%lld, %d): %s", (long long)seq, n,
                     rkv_blockmgr_last_error(r->bm))
             : RKV_OK;
  }
  const uint32_t nkv = (uint32_t)r->model->cfg.n_kv_heads;
  for (uint32_t sidx = 0; sidx < r->streams; sidx++) {
    const uint32_t l = sidx / nkv, h = sidx % nkv;
    int32_t len = 0;
    rkv_status s = rkv_blockmgr_stream_len(r->bm, seq, l, h, &len);
    if (s == RKV_OK && len < n) s = RKV_ERR_STATE;
    for (int32_t t = 0; s == RKV_OK && t < n; t++)
      s = rkv_blockmgr_stream_slot(r->bm, seq, l, h, len - n + t, &sl[(size_t)sidx * n + t]);
    if (s)
      return rfail(r, s, "sequence %lld stream %u: %d new tokens not appended", (long long)seq,
                   sidx, n);
  }
  return RKV_OK;
}

/* Copies n rows of w floats into rows of stride D (pads untouched), times scale. */
static void pad_rows(float *dst, const float *src, size_t n, size_t w, size_t D, float scale) {
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < w; j++) dst[i * D + j] = src[i * w + j] * scale;
}

/* One layer on a device: padded rows through pinned staging into DEVICE buffers, the
 * executor's kernels, the output back (the sync is also what frees the staging for the next
 * layer). Errors of the transfers read like the executor's. */
static rkv_status device_layer(rt_model_runner *r, uint32_t l, int rows) {
  const rt_model_config *c = &r->model->cfg;
  const size_t hd = (size_t)c->head_dim, D = r->dpad, R = r->cfg.max_rows;
  const size_t qn = (size_t)rows * (size_t)c->n_heads, kn = (size_t)rows * (size_t)c->n_kv_heads;
  const size_t qcap = R * (size_t)c->n_heads * D * 4, kcap = R * (size_t)c->n_kv_heads * D * 4;
  unsigned char *st = rkv_buffer_ptr(r->stage);
  pad_rows((float *)st, r->q, qn, hd, D, r->qscale);
  pad_rows((float *)(st + qcap), r->k, kn, hd, D, 1.0f);
  pad_rows((float *)(st + qcap + kcap), r->v, kn, hd, D, 1.0f);
  rkv_backend *be = rkv_buffer_backend(r->stage);
  rkv_status s = rkv_buffer_copy(r->dq, 0, r->stage, 0, qn * D * 4);
  if (!s) s = rkv_buffer_copy(r->dk, 0, r->stage, qcap, kn * D * 4);
  if (!s) s = rkv_buffer_copy(r->dv, 0, r->stage, qcap + kcap, kn * D * 4);
  if (s) return rfail(r, s, "layer %u: copy to device: %s", l, rkv_backend_last_error(be));
  s = rkv_exec_layer(r->exec, l, rkv_buffer_ptr(r->dq), rkv_buffer_ptr(r->dk),
                     rkv_buffer_ptr(r->dv), rkv_buffer_ptr(r->dout));
  if (s) return rfail(r, s, "executor layer %u: %s", l, rkv_exec_last_error(r->exec));
  s = rkv_buffer_copy(r->hout, 0, r->dout, 0, qn * D * 4);
  if (!s) s = rkv_backend_sync(be);
  if (s) return rfail(r, s, "layer %u: output to host: %s", l, rkv_backend_last_error(be));
  const float *o = rkv_buffer_ptr(r->hout);
  for (size_t i = 0; i < qn; i++) memcpy(r->att + i * hd, o + i * D, hd * sizeof(float));
  return RKV_OK;
}

rkv_status rt_model_runner_step(rt_model_runner *r, uint32_t n_seqs, const int64_t *seqs,
                                const int32_t *q_indptr, const int32_t *tokens,
                                const int32_t *prev_tok, const int32_t *pos0, float *logits,
                                bool all_rows) {
  if (!r) return RKV_ERR_INVALID_ARG;
  if (!n_seqs || !seqs || !q_indptr || !tokens || !prev_tok || !pos0 || !logits)
    return rfail(r, RKV_ERR_INVALID_ARG, "step: NULL argument or empty batch");
  if (n_seqs > r->cfg.max_seqs)
    return rfail(r, RKV_ERR_CAPACITY, "step: %u sequences > max_seqs %u", n_seqs, r->cfg.max_seqs);
  const rt_model *m = r->model;
  const rt_model_config *c = &m->cfg;
  const int d = c->d_model, nh = c->n_heads, nkv = c->n_kv_heads, hd = c->head_dim;
  const int qd = nh * hd, kd = nkv * hd, V = c->vocab_size;
  if (q_indptr[0] != 0) return rfail(r, RKV_ERR_INVALID_ARG, "step: q_indptr[0] != 0");
  bool decode = true;
  uint64_t need = 0;
  for (uint32_t b = 0; b < n_seqs; b++) {
    int32_t n = q_indptr[b + 1] - q_indptr[b];
    if (n <= 0) return rfail(r, RKV_ERR_INVALID_ARG, "step: sequence %u feeds %d tokens", b, n);
    if (n != 1) decode = false;
    if (r->cfg.external_append || r->exec) {
      if (!rkv_blockmgr_seq_exists(r->bm, seqs[b]))
        return rfail(r, RKV_ERR_NOT_FOUND, "step: sequence %lld unknown", (long long)seqs[b]);
      continue;
    }
    uint32_t nb = rt_model_runner_blocks_needed(r, seqs[b], (uint32_t)n);
    if (nb == UINT32_MAX)
      return rfail(r, RKV_ERR_NOT_FOUND, "step: sequence %lld unknown", (long long)seqs[b]);
    need += nb;
  }
  const int rows = q_indptr[n_seqs];
  if ((uint32_t)rows > r->cfg.max_rows)
    return rfail(r, RKV_ERR_CAPACITY, "step: %d rows > max_rows %u", rows, r->cfg.max_rows);
  for (int i = 0; i < rows; i++)
    if (tokens[i] < 0 || tokens[i] >= V)
      return rfail(r, RKV_ERR_INVALID_ARG, "step: token %d out of range", tokens[i]);
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(r->bm, &st);
  if (need > st.free_blocks)
    return rfail(r, RKV_ERR_NO_BLOCKS, "step: needs %llu blocks, %u free", (unsigned long long)need,
                 st.free_blocks);

  if (r->on_device && !r->exec)
    return rfail(r, RKV_ERR_STATE, "step: a runner on a device steps through an executor");

  /* Every sequence's slots for its new tokens (blocks checked above); with an executor, its
   * K/V write finds them itself. */
  for (uint32_t b = 0; b < n_seqs; b++) {
    const int32_t r0 = q_indptr[b], n = q_indptr[b + 1] - r0;
    if (!r->exec) {
      rkv_status s = take_slots(r, seqs[b], n, r->slots + (size_t)r0 * r->streams);
      if (s) return s;
    }
    for (int32_t t = 0; t < n; t++) {
      r->pos[r0 + t] = pos0[b] + t;
      r->prev[r0 + t] = t ? tokens[r0 + t - 1] : prev_tok[b];
    }
  }

  /* Embedding. */
  for (int i = 0; i < rows; i++) {
    float *x = r->x + (size_t)i * d;
    memcpy(x, m->tok_emb + (size_t)tokens[i] * d, (size_t)d * sizeof(float));
    if (m->prev_emb) {
      int32_t p = r->prev[i] >= 0 && r->prev[i] < V ? r->prev[i] : 0;
      const float *pe = m->prev_emb + (size_t)p * d;
      for (int j = 0; j < d; j++) x[j] += pe[j];
    }
  }

  for (int l = 0; l < c->n_layers; l++) {
    const model_layer *L = &m->layers[l];
    rmsnorm(r->h, r->x, L->attn_norm, rows, d, c->norm_eps);
    matmul(r->q, r->h, L->wq, rows, d, qd);
    matmul(r->k, r->h, L->wk, rows, d, kd);
    matmul(r->v, r->h, L->wv, rows, d, kd);
    rope(r->q, r->pos, rows, nh, hd, c->rope_theta);
    rope(r->k, r->pos, rows, nkv, hd, c->rope_theta);
    if (r->exec) {
      rkv_status s = r->on_device ? device_layer(r, (uint32_t)l, rows)
                                  : rkv_exec_layer(r->exec, (uint32_t)l, r->q, r->k, r->v, r->att);
      if (s && !r->on_device)
        return rfail(r, s, "executor layer %d: %s", l, rkv_exec_last_error(r->exec));
      if (s) return s;
      mlp_block(r, L, rows);
      continue;
    }
    /* Scatter each (sequence, kv head)'s new K/V rows into its stream's slots. */
    {
      for (uint32_t b = 0; b < n_seqs; b++) {
        const int32_t r0 = q_indptr[b], n = q_indptr[b + 1] - r0;
        for (int h = 0; h < nkv; h++) {
          for (int32_t t = 0; t < n; t++) {
            memcpy(r->kbuf + (size_t)t * hd, r->k + (size_t)(r0 + t) * kd + (size_t)h * hd,
                   (size_t)hd * sizeof(float));
            memcpy(r->vbuf + (size_t)t * hd, r->v + (size_t)(r0 + t) * kd + (size_t)h * hd,
                   (size_t)hd * sizeof(float));
          }
          const int64_t *sl = r->slots + (size_t)r0 * r->streams + (size_t)(l * nkv + h) * n;
          rkv_status s = rkv_attn_write_kv(r->pool, r->kbuf, r->vbuf, sl, (uint32_t)n);
          if (s) return rfail(r, s, "attn_write_kv layer %d: %s", l, rkv_status_str(s));
        }
      }
    }
    uint32_t nnz = 0;
    rkv_block_table table;
    rkv_status s = rkv_blockmgr_export_csr(r->bm, (uint32_t)l, seqs, n_seqs, r->indptr, r->indices,
                                           r->indices_cap, r->last_len, &nnz, &table);
    if (s) return rfail(r, s, "export_csr layer %d: %s", l, rkv_blockmgr_last_error(r->bm));
    rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
    p.num_seqs = n_seqs;
    p.num_q_heads = (uint32_t)nh;
    p.num_kv_heads = (uint32_t)nkv;
    p.head_dim = (uint32_t)hd;
    p.q = r->q;
    p.out = r->att;
    p.table = table;
    p.q_indptr = decode ? NULL : q_indptr;
    p.accumulate_scores = r->cfg.accumulate_scores;
    p.qwindow = r->qw;
    p.seq_ids = seqs;
    p.layer = (uint32_t)l;
    s = decode ? rkv_attn_decode(r->pool, &p, r->ws, r->ws_bytes)
               : rkv_attn_prefill(r->pool, &p, r->ws, r->ws_bytes);
    if (s) return rfail(r, s, "attention layer %d: %s", l, rkv_status_str(s));
    mlp_block(r, L, rows);
  }

  /* Logits for every row, or only for each sequence's last row. */
  if (all_rows) {
    rmsnorm(r->h, r->x, m->final_norm, rows, d, c->norm_eps);
    matmul(logits, r->h, m->lm_head, rows, d, V);
  } else {
    for (uint32_t b = 0; b < n_seqs; b++)
      memcpy(r->h + (size_t)b * d, r->x + (size_t)(q_indptr[b + 1] - 1) * d,
             (size_t)d * sizeof(float));
    rmsnorm(r->h, r->h, m->final_norm, (int)n_seqs, d, c->norm_eps);
    matmul(logits, r->h, m->lm_head, (int)n_seqs, d, V);
  }
  return RKV_OK;
}
