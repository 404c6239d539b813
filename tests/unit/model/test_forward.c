/* The C forward pass of the test model (tools/rkv/model_forward.c, served through librkv's
 * block manager, KV pool and paged attention) against the PyTorch model: logits of fixed
 * prompts within 1e-4 (f32 KV) whether fed as one prefill, in mixed prefill/decode chunks or
 * batched with other sequences, and identical greedy generations with the full cache. The
 * references (tests/unit/model/data/smoke_ref.safetensors, adder_ref.safetensors) come from
 * tools/model/make_reference.py over the committed smoke and trained weights. Also: the C task
 * generator reproduces the Python one byte for byte, the answer checker, and the safetensors reader
 * on malformed input (clear status, no crash; overlapping tensors and non-finite floats are
 * malformed too). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/evict.h>

#include "model.h"
#include "rkv_test.h"

#define DATA_DIR RKV_SOURCE_DIR "/tests/unit/model/data/"
#define N_REF 3
#define TOL 1e-4

typedef struct ref_seq {
  const int32_t *tokens;
  int32_t len;
  int32_t prompt;
  const float *logits; /* [len][V] */
  const int32_t *greedy;
  int32_t greedy_len;
  const int32_t *stream; /* greedy under StreamingLLM eviction */
  int32_t stream_len;
} ref_seq;

/* Copies of the reference tensors (the file's data need not be aligned). */
static void *copy_tensor(const rt_st_file *f, const char *name, rt_st_dtype dt, int64_t *n0,
                         int64_t *n1) {
  const rt_st_tensor *t = rt_st_find(f, name);
  if (!t || t->dtype != dt) return NULL;
  size_t bytes = (size_t)(t->end - t->begin);
  void *p = malloc(bytes ? bytes : 1);
  if (!p) return NULL;
  memcpy(p, rt_st_data(f, t), bytes);
  *n0 = t->ndim > 0 ? t->shape[0] : 1;
  if (n1) *n1 = t->ndim > 1 ? t->shape[1] : 1;
  return p;
}

static rt_model_runner *make_runner(const rt_model *m, rkv_backend *be, uint32_t seqs,
                                    uint32_t rows) {
  rt_model_runner_config rc = {0};
  rc.max_seqs = seqs;
  rc.max_rows = rows;
  rc.num_blocks = 2048;
  rc.block_size = 16;
  rc.kv_dtype = RKV_DTYPE_F32;
  rc.max_stream_len = 1024;
  rc.qwindow = 8;
  rc.accumulate_scores = true;
  rc.check_every_op = true;
  rt_model_runner *r = NULL;
  char err[256] = "";
  rkv_status s = rt_model_runner_create(m, be, &rc, &r, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "runner: %s\n", err);
  EXPECT_OK(s);
  return r;
}

static double max_diff(const float *a, const float *b, size_t n) {
  double d = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - (double)b[i]);
    if (!(e <= d)) d = e; /* NaN propagates as a failure */
  }
  return d;
}

/* Feeds reference sequence `ref` to a fresh sequence in chunks of the given sizes (cycled),
 * collecting every row's logits, and compares with the reference. */
static void check_chunked(const rt_model *m, rkv_backend *be, const ref_seq *ref, int V,
                          const int32_t *chunks, int n_chunks, const char *label) {
  rt_model_runner *r = make_runner(m, be, 1, 1024);
  if (!r) return;
  float *got = malloc((size_t)ref->len * V * sizeof(float));
  EXPECT_OK(rt_model_runner_seq_add(r, 7));
  int32_t done = 0, k = 0;
  bool ok = true;
  while (done < ref->len && ok) {
    int32_t n = chunks[k++ % n_chunks];
    if (n > ref->len - done) n = ref->len - done;
    int64_t id = 7;
    int32_t qi[2] = {0, n};
    int32_t prev = done ? ref->tokens[done - 1] : 0;
    rkv_status s = rt_model_runner_step(r, 1, &id, qi, ref->tokens + done, &prev, &done,
                                        got + (size_t)done * V, true);
    if (s != RKV_OK) {
      fprintf(stderr, "%s: step at %d: %s\n", label, done, rt_model_runner_last_error(r));
      ok = false;
    }
    done += n;
  }
  EXPECT(ok);
  if (ok) {
    double d = max_diff(got, ref->logits, (size_t)ref->len * V);
    printf("%s: %d tokens, max |logit diff| = %.3g\n", label, ref->len, d);
    EXPECT_NEAR(d, 0.0, TOL);
  }
  EXPECT_OK(rkv_blockmgr_check(rt_model_runner_blockmgr(r)));
  EXPECT_OK(rt_model_runner_seq_remove(r, 7));
  free(got);
  rt_model_runner_destroy(r);
}

/* All reference sequences in one batch: prompts prefilled together, then the targets
 * teacher-forced one token per step (sequences that ran out simply leave the batch). */
static void check_batched(const rt_model *m, rkv_backend *be, const ref_seq *refs, int V) {
  rt_model_runner *r = make_runner(m, be, N_REF, 1024);
  if (!r) return;
  float *got[N_REF];
  for (int i = 0; i < N_REF; i++) {
    got[i] = malloc((size_t)refs[i].len * V * sizeof(float));
    EXPECT_OK(rt_model_runner_seq_add(r, 100 + i));
  }
  float *rows = malloc((size_t)1024 * V * sizeof(float));
  int32_t fed[N_REF] = {0};
  bool ok = true;
  for (int step = 0; ok; step++) {
    int64_t ids[N_REF];
    int32_t qi[N_REF + 1] = {0}, toks[1024], prev[N_REF], pos[N_REF], which[N_REF];
    uint32_t nb = 0;
    for (int i = 0; i < N_REF; i++) {
      if (fed[i] >= refs[i].len) continue;
      int32_t n = step == 0 ? refs[i].prompt : 1;
      memcpy(toks + qi[nb], refs[i].tokens + fed[i], (size_t)n * sizeof(int32_t));
      ids[nb] = 100 + i;
      prev[nb] = fed[i] ? refs[i].tokens[fed[i] - 1] : 0;
      pos[nb] = fed[i];
      which[nb] = i;
      qi[nb + 1] = qi[nb] + n;
      nb++;
    }
    if (!nb) break;
    rkv_status s = rt_model_runner_step(r, nb, ids, qi, toks, prev, pos, rows, true);
    if (s != RKV_OK) {
      fprintf(stderr, "batched step %d: %s\n", step, rt_model_runner_last_error(r));
      ok = false;
      break;
    }
    for (uint32_t b = 0; b < nb; b++) {
      int i = which[b];
      int32_t n = qi[b + 1] - qi[b];
      memcpy(got[i] + (size_t)fed[i] * V, rows + (size_t)qi[b] * V, (size_t)n * V * sizeof(float));
      fed[i] += n;
    }
  }
  EXPECT(ok);
  for (int i = 0; i < N_REF && ok; i++) {
    double d = max_diff(got[i], refs[i].logits, (size_t)refs[i].len * V);
    printf("batched seq %d: max |logit diff| = %.3g\n", i, d);
    EXPECT_NEAR(d, 0.0, TOL);
  }
  for (int i = 0; i < N_REF; i++) free(got[i]);
  free(rows);
  rt_model_runner_destroy(r);
}

/* Greedy decoding of all prompts at once, with the full cache (ep NULL) or compressing after
 * every step as rkv_evict_should_compress says (the eviction moves K/V inside the pool; the
 * survivors keep their post-RoPE keys, new tokens their logical positions); must equal the
 * Python generation (TinyLM.generate, with streaming_evictor for StreamingLLM). */
static void check_greedy(const rt_model *m, rkv_backend *be, const ref_seq *refs, int V,
                         const rkv_evict_params *ep) {
  rt_model_runner *r = make_runner(m, be, N_REF, 1024);
  if (!r) return;
  int32_t *gen[N_REF];
  int32_t glen[N_REF] = {0}, last[N_REF] = {0}, prevt[N_REF] = {0}, fedn[N_REF] = {0};
  bool fin[N_REF] = {false};
  for (int i = 0; i < N_REF; i++) {
    gen[i] = calloc(1024, sizeof(int32_t));
    EXPECT_OK(rt_model_runner_seq_add(r, 200 + i));
  }
  const int32_t eos = rt_model_token(m, '.');
  float *logits = malloc((size_t)N_REF * V * sizeof(float));
  bool ok = true;
  const rt_model_config *mc = rt_model_get_config(m);
  size_t ews = 0;
  void *ework = NULL;
  uint64_t compressions = 0;
  if (ep) {
    EXPECT_OK(rkv_evict_workspace_size(ep, (uint32_t)mc->n_kv_heads, (uint32_t)mc->n_heads,
                                       (uint32_t)mc->head_dim, 1024, &ews));
    ework = malloc(ews ? ews : 1);
  }
  for (int step = 0; ok; step++) {
    int64_t ids[N_REF];
    int32_t qi[N_REF + 1] = {0}, toks[1024], prev[N_REF], pos[N_REF], which[N_REF];
    uint32_t nb = 0;
    for (int i = 0; i < N_REF; i++) {
      if (fin[i]) continue;
      if (step == 0) {
        memcpy(toks + qi[nb], refs[i].tokens, (size_t)refs[i].prompt * sizeof(int32_t));
        qi[nb + 1] = qi[nb] + refs[i].prompt;
        prev[nb] = 0;
        pos[nb] = 0;
      } else {
        toks[qi[nb]] = last[i];
        qi[nb + 1] = qi[nb] + 1;
        prev[nb] = prevt[i];
        pos[nb] = fedn[i];
      }
      ids[nb] = 200 + i;
      which[nb] = i;
      nb++;
    }
    if (!nb) break;
    rkv_status s = rt_model_runner_step(r, nb, ids, qi, toks, prev, pos, logits, false);
    if (s != RKV_OK) {
      fprintf(stderr, "greedy step %d: %s\n", step, rt_model_runner_last_error(r));
      ok = false;
      break;
    }
    for (uint32_t b = 0; b < nb; b++) {
      int i = which[b];
      const float *lg = logits + (size_t)b * V;
      int32_t best = 0;
      for (int v = 1; v < V; v++)
        if (lg[v] > lg[best]) best = v;
      fedn[i] += qi[b + 1] - qi[b];
      prevt[i] = toks[qi[b + 1] - 1];
      last[i] = best;
      gen[i][glen[i]++] = best;
      const int32_t want_len = ep ? refs[i].stream_len : refs[i].greedy_len;
      if (best == eos || glen[i] >= want_len) fin[i] = true;
      if (!ep || fin[i]) continue;
      rkv_blockmgr *bm = rt_model_runner_blockmgr(r);
      for (uint32_t l = 0; l < (uint32_t)mc->n_layers && ok; l++) {
        int32_t len = 0;
        EXPECT_OK(rkv_blockmgr_stream_len(bm, ids[b], l, 0, &len));
        if (!rkv_evict_should_compress(ep, len, step == 0)) continue;
        rkv_evict_result er = {0};
        rkv_status es = rkv_evict_layer(ep, bm, rt_model_runner_pool(r), rt_model_runner_qwindow(r),
                                        (uint32_t)mc->n_heads, ids[b], l, ework, ews, &er);
        EXPECT_OK(es);
        if (es != RKV_OK) ok = false;
        for (uint32_t h = 0; h < (uint32_t)mc->n_kv_heads; h++) {
          EXPECT_OK(rkv_blockmgr_stream_len(bm, ids[b], l, h, &len));
          EXPECT_EQ_INT(len, ep->budget);
        }
        compressions++;
      }
    }
  }
  EXPECT(ok);
  const char *what = ep ? "streaming" : "greedy";
  if (ep) {
    printf("streaming: %llu layer compressions\n", (unsigned long long)compressions);
    EXPECT(compressions > 0);
  }
  for (int i = 0; i < N_REF && ok; i++) {
    const int32_t *want = ep ? refs[i].stream : refs[i].greedy;
    const int32_t want_len = ep ? refs[i].stream_len : refs[i].greedy_len;
    int same = glen[i] == want_len && memcmp(gen[i], want, (size_t)glen[i] * sizeof(int32_t)) == 0;
    printf("%s seq %d: %d tokens, %s\n", what, i, glen[i], same ? "identical" : "DIFFERENT");
    EXPECT(same);
  }
  EXPECT_OK(rkv_blockmgr_check(rt_model_runner_blockmgr(r)));
  for (int i = 0; i < N_REF; i++) free(gen[i]);
  free(ework);
  free(logits);
  rt_model_runner_destroy(r);
}

/* The C generator reproduces the Python one's text (tensor `name`, problems joined by '|')
 * byte for byte in generator `version`, and its checker accepts every target. */
static void check_task_text(const rt_st_file *ref, const char *name, int32_t version) {
  const rt_st_tensor *t = rt_st_find(ref, name);
  const char *seed_s = rt_st_meta(ref, "task_seed");
  const char *count_s = rt_st_meta(ref, "task_count");
  EXPECT(t && seed_s && count_s);
  if (!t || !seed_s || !count_s) return;
  const size_t n = (size_t)(t->end - t->begin);
  const char *py = rt_st_data(ref, t);
  const uint64_t seed = strtoull(seed_s, NULL, 10);
  const int count = atoi(count_s);
  size_t off = 0;
  int mismatches = 0;
  static rt_task_problem p;
  for (int i = 0; i < count; i++) {
    EXPECT_OK(rt_task_problem_make(seed, (uint64_t)i, RT_TASK_MIN_DIGITS, RT_TASK_MAX_DIGITS,
                                   version, &p));
    size_t lp = strlen(p.prompt), lt = strlen(p.target);
    if (off + lp + lt > n || memcmp(py + off, p.prompt, lp) != 0 ||
        memcmp(py + off + lp, p.target, lt) != 0) {
      if (!mismatches) fprintf(stderr, "%s: problem %d differs from Python\n", name, i);
      mismatches++;
      break;
    }
    off += lp + lt;
    if (i + 1 < count) {
      if (off >= n || py[off] != '|') mismatches++;
      off++;
    }
    EXPECT(rt_task_check(&p, p.target));
    /* the recorded parts: each column's line where the generator says, the answer after */
    const int line_len = version == 2 ? 13 : 10;
    for (int c = 0; c < p.digits; c++) {
      EXPECT(p.target[p.line_at[c]] == (char)('A' + c) &&
             p.target[p.line_at[c] + line_len - 1] == ';');
      if (version == 2)
        EXPECT(p.talk_at[c] == p.line_at[c] + line_len &&
               strncmp(p.target + p.talk_at[c], " so ", 4) == 0);
    }
    EXPECT(p.target[p.answer_at] == (char)('A' + p.digits) &&
           strncmp(p.target + p.answer_at - 17, "so the answer is ", 17) == 0);
  }
  EXPECT_EQ_INT(mismatches, 0);
  EXPECT_EQ_INT(off, n);
}

static void check_task(const rt_st_file *ref) {
  check_task_text(ref, "task_text", 1);
  check_task_text(ref, "task_text_v2", 2);
  static rt_task_problem p;

  /* The checker rejects a wrong digit, a missing EOS, a malformed label. */
  EXPECT_OK(rt_task_problem_make(5, 3, 8, 8, 1, &p));
  char buf[RT_TASK_MAX_TEXT];
  snprintf(buf, sizeof buf, "%s", p.target);
  EXPECT(rt_task_check(&p, buf));
  size_t L = strlen(buf);
  buf[L - 2] = buf[L - 2] == '9' ? '0' : (char)(buf[L - 2] + 1);
  EXPECT(!rt_task_check(&p, buf));
  snprintf(buf, sizeof buf, "%s", p.target);
  buf[L - 1] = '\0';
  EXPECT(!rt_task_check(&p, buf));
  snprintf(buf, sizeof buf, "%s", p.target);
  buf[L - 3] = '7';
  EXPECT(!rt_task_check(&p, buf));
  EXPECT(!rt_task_check(&p, "so the answer is ."));
  EXPECT_STATUS(rt_task_problem_make(1, 0, 0, 5, 1, &p), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rt_task_problem_make(1, 0, 5, 26, 1, &p), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rt_task_problem_make(1, 0, 5, 6, 3, &p), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rt_task_problem_make(1, 0, 5, 6, 0, &p), RKV_ERR_INVALID_ARG);
  /* version 2 at the longest: fits RT_TASK_MAX_TEXT, and its checker works the same */
  for (uint64_t i = 0; i < 200; i++) {
    EXPECT_OK(rt_task_problem_make(11, i, 25, 25, 2, &p));
    EXPECT(rt_task_check(&p, p.target));
  }
  /* the sizing bounds hold for every digit count of both versions */
  for (int32_t v = 1; v <= 2; v++)
    for (int32_t n = RT_TASK_MIN_DIGITS; n <= RT_TASK_MAX_DIGITS; n++)
      for (uint64_t i = 0; i < 40; i++) {
        EXPECT_OK(rt_task_problem_make(13, i, n, n, v, &p));
        EXPECT(strlen(p.prompt) <= (size_t)RT_TASK_PROMPT_MAX(n, v));
        EXPECT(strlen(p.target) <= (size_t)RT_TASK_TARGET_MAX(n, v));
      }
}

static rkv_status parse_text(const char *json, const void *data, size_t data_len) {
  size_t hl = strlen(json);
  size_t n = 8 + hl + data_len;
  unsigned char *buf = calloc(1, n);
  for (int j = 0; j < 8; j++) buf[j] = (unsigned char)((uint64_t)hl >> (8 * j));
  memcpy(buf + 8, json, hl);
  if (data_len) memcpy(buf + 8 + hl, data, data_len);
  rt_st_file *f = NULL;
  char err[256] = "";
  rkv_status s = rt_st_parse(buf, n, &f, err, sizeof err);
  EXPECT(s == RKV_OK ? f != NULL : (f == NULL && err[0] != '\0'));
  rt_st_free(f);
  free(buf);
  return s;
}

static void check_safetensors(const char *weights) {
  float d[4] = {1, 2, 3, 4};
  EXPECT_OK(
      parse_text("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", d, 16));
  EXPECT_OK(parse_text("{}", NULL, 0));
  EXPECT_OK(
      parse_text(" { \"__metadata__\" : {\"a\":\"b\\n\\u0041\"}, \"x\":{\"shape\":[],"
                 "\"dtype\":\"I32\",\"data_offsets\":[0,4],\"extra\":[1,{\"q\":null}]}}  ",
                 d, 4));
  static const char *const bad[] = {
      "",
      "{",
      "[]",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[4,20]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,0]}}",
      "{\"x\":{\"dtype\":\"F99\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[-2,2],\"data_offsets\":[0,16]}}",
      "{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
      "\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[99999999999,99999999999,99999999999],"
      "\"data_offsets\":[0,16]}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
      "{\"__metadata__\":{\"a\":1}}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}} x",
      "{\"x\\q\":{}}",
      "{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
      "}",
      "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16],\"y\":[1,{\"z\":tru}]}}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    rkv_status s = parse_text(bad[i], d, 16);
    if (s != RKV_ERR_FORMAT) fprintf(stderr, "bad header %zu accepted: %s\n", i, bad[i]);
    EXPECT_STATUS(s, RKV_ERR_FORMAT);
  }
  /* Tensors that share bytes (the reader used to accept them), and non-finite floats: each
   * is FORMAT with a message that says so. */
  static const char overlap[] =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
  EXPECT_STATUS(parse_text(overlap, d, 16), RKV_ERR_FORMAT);
  EXPECT_OK(
      parse_text("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                 d, 16));
  {
    static const char *const kinds[] = {"F32", "F16", "BF16"};
    /* NaN, +Inf, -Inf of each width, little endian, after a finite element */
    static const uint8_t f32[3][4] = {{0, 0, 0xc0, 0x7f}, {0, 0, 0x80, 0x7f}, {0, 0, 0x80, 0xff}};
    static const uint8_t f16[3][2] = {{0x00, 0x7e}, {0x00, 0x7c}, {0x00, 0xfc}};
    static const uint8_t bf16[3][2] = {{0xc0, 0x7f}, {0x80, 0x7f}, {0x80, 0xff}};
    for (int k = 0; k < 3; k++)
      for (int v = 0; v < 3; v++) {
        uint8_t data[8] = {0};
        size_t w = k == 0 ? 4 : 2;
        memcpy(data + w, k == 0 ? f32[v] : k == 1 ? f16[v] : bf16[v], w);
        char json[128];
        snprintf(json, sizeof json,
                 "{\"w\":{\"dtype\":\"%s\",\"shape\":[2],\"data_offsets\":[0,%zu]}}", kinds[k],
                 2 * w);
        rkv_status s = parse_text(json, data, 2 * w);
        if (s != RKV_ERR_FORMAT) fprintf(stderr, "non-finite %s value %d accepted\n", kinds[k], v);
        EXPECT_STATUS(s, RKV_ERR_FORMAT);
        memset(data, 0, sizeof data); /* and the same tensor with finite values is fine */
        EXPECT_OK(parse_text(json, data, 2 * w));
      }
  }
  rt_st_file *f = NULL;
  char err[256];
  {
    size_t hl = strlen(overlap);
    unsigned char buf[256] = {0};
    for (int j = 0; j < 8; j++) buf[j] = (unsigned char)((uint64_t)hl >> (8 * j));
    memcpy(buf + 8, overlap, hl);
    EXPECT_STATUS(rt_st_parse(buf, 8 + hl + 16, &f, err, sizeof err), RKV_ERR_FORMAT);
    EXPECT(strstr(err, "overlap") != NULL);
  }
  unsigned char tiny[7] = {0};
  EXPECT_STATUS(rt_st_parse(tiny, sizeof tiny, &f, err, sizeof err), RKV_ERR_FORMAT);
  unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  EXPECT_STATUS(rt_st_parse(huge, sizeof huge, &f, err, sizeof err), RKV_ERR_FORMAT);
  EXPECT_STATUS(rt_st_read(DATA_DIR "does-not-exist.safetensors", &f, err, sizeof err), RKV_ERR_IO);
  EXPECT(f == NULL);

  /* Mutations of the real weights' header: every outcome is OK or FORMAT, never a crash; the
   * model loader on a file with a mangled tensor fails cleanly. */
  EXPECT_OK(rt_st_read(weights, &f, err, sizeof err));
  if (!f) return;
  FILE *fp = fopen(weights, "rb");
  unsigned char *orig = NULL;
  size_t n = 0;
  if (fp) {
    fseek(fp, 0, SEEK_END);
    n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    orig = malloc(n);
    if (fread(orig, 1, n, fp) != n) n = 0;
    fclose(fp);
  }
  rt_st_free(f);
  EXPECT(n > 8);
  if (n <= 8) {
    free(orig);
    return;
  }
  uint64_t hl = 0;
  for (int j = 7; j >= 0; j--) hl = hl << 8 | orig[j];
  /* A valid file whose model lacks a tensor / has a wrong shape: the loader names it. */
  static const char *const renames[][2] = {{"\"lm_head\"", "\"lm_hexd\""},
                                           {"\"shape\":[72,", "\"shape\":[71,"}};
  for (int k = 0; k < 2; k++) {
    unsigned char *cp = malloc(n);
    memcpy(cp, orig, n);
    char *hdr = (char *)cp + 8;
    char *hit = NULL;
    for (size_t q = 0; q + strlen(renames[k][0]) <= hl && !hit; q++)
      if (memcmp(hdr + q, renames[k][0], strlen(renames[k][0])) == 0) hit = hdr + q;
    EXPECT(hit != NULL);
    if (hit) {
      memcpy(hit, renames[k][1], strlen(renames[k][1]));
      const char *path = RKV_BINARY_DIR "/model_test_bad.safetensors";
      FILE *w = fopen(path, "wb");
      EXPECT(w != NULL);
      if (w) {
        EXPECT_EQ_INT(fwrite(cp, 1, n, w), n);
        fclose(w);
        rt_model *badm = NULL;
        char e2[256] = "";
        rkv_status st = rt_model_load(path, &badm, e2, sizeof e2);
        printf("mangled model %d: %s (%s)\n", k, rkv_status_name(st), e2);
        /* the shape edit may also break data_offsets: FORMAT either way */
        EXPECT_STATUS(st, RKV_ERR_FORMAT);
        EXPECT(badm == NULL);
        EXPECT(strstr(e2, k == 0 ? "lm_head" : "") != NULL);
        remove(path);
      }
    }
    free(cp);
  }
  unsigned char *mut = malloc(n);
  uint64_t rng = 12345;
  int other = 0, okc = 0, fmt = 0;
  static const char pool[] = "{}[]\":,0123456789-eE. \\ntruefalsnl";
  for (int it = 0; it < 3000; it++) {
    memcpy(mut, orig, n);
    size_t len = n;
    int edits = 1 + (int)(rkv_test_rand(&rng) % 4);
    for (int e = 0; e < edits; e++) {
      size_t at = 8 + (size_t)(rkv_test_rand(&rng) % hl);
      if (rkv_test_rand(&rng) % 2)
        mut[at] = (unsigned char)pool[rkv_test_rand(&rng) % (sizeof pool - 1)];
      else
        mut[at] = (unsigned char)rkv_test_rand(&rng);
    }
    if (it % 10 == 0) len = (size_t)(rkv_test_rand(&rng) % n); /* truncation */
    if (it % 97 == 0) mut[(size_t)(rkv_test_rand(&rng) % 8)] ^= 0x10;
    rkv_status s = rt_st_parse(mut, len, &f, err, sizeof err);
    uint64_t mhl = 0;
    for (int j = 7; j >= 0; j--) mhl = mhl << 8 | mut[j];
    if (s == RKV_OK) {
      okc++;
      /* Every accepted tensor lies inside the data section. */
      for (uint32_t i = 0; i < rt_st_num_tensors(f); i++) {
        const rt_st_tensor *t = rt_st_tensor_at(f, i);
        if (t->end > len - 8 - mhl) other++;
      }
      rt_st_free(f);
    } else if (s == RKV_ERR_FORMAT) {
      fmt++;
    } else {
      other++;
    }
  }
  printf("safetensors mutations: %d accepted, %d rejected as FORMAT, %d other\n", okc, fmt, other);
  EXPECT_EQ_INT(other, 0);
  EXPECT(fmt > 0);
  free(mut);
  free(orig);
}

/* Every cross-check of one weights file against its reference (make_reference.py output). */
static void check_model(const char *weights, const char *ref_path) {
  printf("== %s vs %s\n", weights, ref_path);
  char err[512] = "";
  rt_model *m = NULL;
  rkv_status s = rt_model_load(weights, &m, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "load: %s\n", err);
  EXPECT_OK(s);
  rt_model *none = NULL;
  EXPECT_STATUS(rt_model_load(ref_path, &none, err, sizeof err), RKV_ERR_FORMAT);
  EXPECT(none == NULL);
  rt_st_file *ref = NULL;
  EXPECT_OK(rt_st_read(ref_path, &ref, err, sizeof err));
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  bc.num_threads = 1;
  rkv_backend *be = NULL;
  EXPECT_OK(rkv_backend_create(&bc, &be));
  if (!m || !ref || !be) {
    rkv_backend_destroy(be);
    rt_st_free(ref);
    rt_model_destroy(m);
    return;
  }
  const int V = rt_model_get_config(m)->vocab_size;
  ref_seq refs[N_REF];
  void *owned[5 * N_REF] = {0};
  bool have = true;
  for (int i = 0; i < N_REF; i++) {
    char name[32];
    int64_t a = 0, b = 0, c = 0, g = 0, pl = 0;
    snprintf(name, sizeof name, "tokens.%d", i);
    int64_t sl = 0;
    int32_t *tok = owned[5 * i] = copy_tensor(ref, name, RT_ST_I32, &a, NULL);
    snprintf(name, sizeof name, "logits.%d", i);
    float *lg = owned[5 * i + 1] = copy_tensor(ref, name, RT_ST_F32, &b, &c);
    snprintf(name, sizeof name, "greedy.%d", i);
    int32_t *gr = owned[5 * i + 2] = copy_tensor(ref, name, RT_ST_I32, &g, NULL);
    snprintf(name, sizeof name, "prompt.%d", i);
    int32_t *pr = owned[5 * i + 3] = copy_tensor(ref, name, RT_ST_I32, &pl, NULL);
    snprintf(name, sizeof name, "stream.%d", i);
    int32_t *sg = owned[5 * i + 4] = copy_tensor(ref, name, RT_ST_I32, &sl, NULL);
    if (!tok || !lg || !gr || !pr || !sg || a != b || c != V) {
      have = false;
      continue;
    }
    refs[i] = (ref_seq){tok, (int32_t)a, pr[0], lg, gr, (int32_t)g, sg, (int32_t)sl};
  }
  EXPECT(have);
  if (have) {
    static const int32_t whole[] = {1024};
    static const int32_t mixed[] = {5, 1, 1, 17, 1, 3, 40, 1};
    static const int32_t ones[] = {1};
    for (int i = 0; i < N_REF; i++) {
      char label[64];
      snprintf(label, sizeof label, "seq %d prefill", i);
      check_chunked(m, be, &refs[i], V, whole, 1, label);
      snprintf(label, sizeof label, "seq %d mixed chunks", i);
      check_chunked(m, be, &refs[i], V, mixed, 8, label);
    }
    check_chunked(m, be, &refs[0], V, ones, 1, "seq 0 token by token");
    check_batched(m, be, refs, V);
    check_greedy(m, be, refs, V, NULL);
    rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
    ep.policy = RKV_EVICT_STREAMING;
    const char *b_s = rt_st_meta(ref, "stream_budget"), *f_s = rt_st_meta(ref, "stream_buffer");
    EXPECT(b_s && f_s);
    ep.budget = b_s ? atoi(b_s) : 32;
    ep.buffer = f_s ? atoi(f_s) : 16;
    ep.sinks = 4;
    EXPECT_OK(rkv_evict_params_validate(&ep, NULL, 0));
    check_greedy(m, be, refs, V, &ep);
  }
  for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++) free(owned[i]);
  check_task(ref);
  rkv_backend_destroy(be);
  rt_st_free(ref);
  rt_model_destroy(m);
}

int main(void) {
  /* the smoke weights (fast, 2 layers) and the committed trained weights that `rkv eval`
   * serves (4 layers, 6-20 digits: 20-digit generations of ~480 tokens must match exactly) */
  check_model(DATA_DIR "smoke.safetensors", DATA_DIR "smoke_ref.safetensors");
  check_model(RKV_SOURCE_DIR "/tools/model/weights/adder.safetensors",
              DATA_DIR "adder_ref.safetensors");
  check_safetensors(DATA_DIR "smoke.safetensors");
  return rkv_test_finish();
}
