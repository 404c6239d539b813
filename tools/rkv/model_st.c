/* safetensors reader for the test model: validates the 8-byte header length, parses the JSON
 * header with a small strict recursive-descent parser (depth-limited, every byte bounds
 * checked) and checks that each tensor's data_offsets lie inside the data section and match
 * dtype x shape. Bad input gives RKV_ERR_FORMAT with a message, never a crash. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"

#define ST_MAX_DEPTH 32

struct rt_st_file {
  uint8_t *buf; /* the whole file */
  size_t size;
  size_t body; /* offset of the data section */
  char *arena; /* decoded strings (each no longer than its JSON spelling) */
  size_t arena_used, arena_cap;
  rt_st_tensor *t;
  uint32_t n_tensors, cap_tensors;
  const char **meta_k;
  const char **meta_v;
  uint32_t n_meta, cap_meta;
};

typedef struct st_parser {
  const uint8_t *s;
  size_t n, i;
  rt_st_file *f;
  char *err;
  size_t err_len;
  rkv_status st;
} st_parser;

static const char *const st_dtype_names[RT_ST_DTYPE_COUNT_] = {"F32", "F16", "BF16",
                                                               "I32", "I64", "U8"};

size_t rt_st_dtype_size(rt_st_dtype dt) {
  static const size_t sz[RT_ST_DTYPE_COUNT_] = {4, 2, 2, 4, 8, 1};
  return (unsigned)dt < RT_ST_DTYPE_COUNT_ ? sz[dt] : 0;
}

static void st_msg(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void st_msg(char *err, size_t err_len, const char *fmt, ...) {
  if (!err || err_len == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

static bool st_fail(st_parser *p, const char *what) {
  if (p->st == RKV_OK) {
    p->st = RKV_ERR_FORMAT;
    st_msg(p->err, p->err_len, "safetensors header: %s at byte %zu", what, p->i + 8);
  }
  return false;
}

static void st_ws(st_parser *p) {
  while (p->i < p->n &&
         (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
    p->i++;
}

static bool st_expect(st_parser *p, char c) {
  st_ws(p);
  if (p->i >= p->n || p->s[p->i] != (uint8_t)c) {
    char what[32];
    snprintf(what, sizeof what, "expected '%c'", c);
    return st_fail(p, what);
  }
  p->i++;
  return true;
}

static bool st_peek(st_parser *p, char c) {
  st_ws(p);
  return p->i < p->n && p->s[p->i] == (uint8_t)c;
}

static int st_hex(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes a JSON string into the arena (NUL-terminated); *out points at it. Escapes are
 * decoded; \u escapes become UTF-8 (surrogate pairs are rejected: names here are ASCII). */
static bool st_string(st_parser *p, const char **out) {
  if (!st_expect(p, '"')) return false;
  char *dst = p->f->arena + p->f->arena_used;
  size_t k = 0;
  for (;;) {
    if (p->i >= p->n) return st_fail(p, "unterminated string");
    uint8_t c = p->s[p->i++];
    if (c == '"') break;
    if (c < 0x20) return st_fail(p, "control character in string");
    if (c == '\\') {
      if (p->i >= p->n) return st_fail(p, "unterminated escape");
      uint8_t e = p->s[p->i++];
      switch (e) {
        case '"':
          c = '"';
          break;
        case '\\':
          c = '\\';
          break;
        case '/':
          c = '/';
          break;
        case 'b':
          c = '\b';
          break;
        case 'f':
          c = '\f';
          break;
        case 'n':
          c = '\n';
          break;
        case 'r':
          c = '\r';
          break;
        case 't':
          c = '\t';
          break;
        case 'u': {
          if (p->n - p->i < 4) return st_fail(p, "short \\u escape");
          unsigned u = 0;
          for (int j = 0; j < 4; j++) {
            int h = st_hex(p->s[p->i++]);
            if (h < 0) return st_fail(p, "bad \\u escape");
            u = u * 16 + (unsigned)h;
          }
          if (u >= 0xD800 && u <= 0xDFFF) return st_fail(p, "surrogate \\u escape");
          /* 6 JSON bytes always cover up to 3 UTF-8 bytes, so the arena cannot overflow. */
          if (u < 0x80) {
            dst[k++] = (char)u;
          } else if (u < 0x800) {
            dst[k++] = (char)(0xC0 | (u >> 6));
            dst[k++] = (char)(0x80 | (u & 0x3F));
          } else {
            dst[k++] = (char)(0xE0 | (u >> 12));
            dst[k++] = (char)(0x80 | ((u >> 6) & 0x3F));
            dst[k++] = (char)(0x80 | (u & 0x3F));
          }
          if (u == 0) return st_fail(p, "NUL in string");
          continue;
        }
        default:
          return st_fail(p, "unknown escape");
      }
    }
    dst[k++] = (char)c;
  }
  dst[k++] = '\0';
  p->f->arena_used += k;
  *out = dst;
  return true;
}

/* A non-negative integer that fits in int64 (JSON number without fraction or exponent). */
static bool st_uint(st_parser *p, uint64_t *out) {
  st_ws(p);
  if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9')
    return st_fail(p, "expected a non-negative integer");
  uint64_t v = 0;
  while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
    unsigned d = (unsigned)(p->s[p->i++] - '0');
    if (v > ((uint64_t)INT64_MAX - d) / 10) return st_fail(p, "integer too large");
    v = v * 10 + d;
  }
  if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E'))
    return st_fail(p, "expected an integer");
  *out = v;
  return true;
}

/* Skips any JSON value (for unknown keys), depth-limited. */
static bool st_skip(st_parser *p, int depth) {
  if (depth > ST_MAX_DEPTH) return st_fail(p, "nesting too deep");
  st_ws(p);
  if (p->i >= p->n) return st_fail(p, "unexpected end");
  uint8_t c = p->s[p->i];
  if (c == '"') {
    const char *tmp;
    size_t used = p->f->arena_used;
    bool ok = st_string(p, &tmp);
    p->f->arena_used = used;
    return ok;
  }
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    p->i++;
    if (st_peek(p, close)) {
      p->i++;
      return true;
    }
    for (;;) {
      if (c == '{') {
        const char *tmp;
        size_t used = p->f->arena_used;
        if (!st_string(p, &tmp)) return false;
        p->f->arena_used = used;
        if (!st_expect(p, ':')) return false;
      }
      if (!st_skip(p, depth + 1)) return false;
      if (st_peek(p, ',')) {
        p->i++;
        continue;
      }
      return st_expect(p, close);
    }
  }
  static const char *const lits[] = {"true", "false", "null"};
  for (int j = 0; j < 3; j++) {
    size_t L = strlen(lits[j]);
    if (p->n - p->i >= L && memcmp(p->s + p->i, lits[j], L) == 0) {
      p->i += L;
      return true;
    }
  }
  if (c == '-' || (c >= '0' && c <= '9')) {
    size_t start = p->i;
    while (p->i < p->n && strchr("+-0123456789.eE", p->s[p->i]) && p->s[p->i] != '\0') p->i++;
    if (p->i == start) return st_fail(p, "bad number");
    return true;
  }
  return st_fail(p, "unexpected character");
}

static bool st_int_array(st_parser *p, int64_t *vals, uint32_t cap, uint32_t *count) {
  if (!st_expect(p, '[')) return false;
  *count = 0;
  if (st_peek(p, ']')) {
    p->i++;
    return true;
  }
  for (;;) {
    uint64_t v;
    if (!st_uint(p, &v)) return false;
    if (*count >= cap) return st_fail(p, "array too long");
    vals[(*count)++] = (int64_t)v;
    if (st_peek(p, ',')) {
      p->i++;
      continue;
    }
    return st_expect(p, ']');
  }
}

static bool st_tensor(st_parser *p, const char *name) {
  rt_st_file *f = p->f;
  if (f->n_tensors == f->cap_tensors) {
    uint32_t cap = f->cap_tensors ? f->cap_tensors * 2 : 16;
    rt_st_tensor *t = realloc(f->t, cap * sizeof *t);
    if (!t) {
      p->st = RKV_ERR_NO_MEMORY;
      st_msg(p->err, p->err_len, "out of memory");
      return false;
    }
    f->t = t;
    f->cap_tensors = cap;
  }
  rt_st_tensor *t = &f->t[f->n_tensors];
  memset(t, 0, sizeof *t);
  t->name = name;
  bool have_dtype = false, have_shape = false, have_off = false;
  if (!st_expect(p, '{')) return false;
  if (!st_peek(p, '}')) {
    for (;;) {
      const char *key;
      if (!st_string(p, &key)) return false;
      if (!st_expect(p, ':')) return false;
      if (strcmp(key, "dtype") == 0) {
        const char *dt;
        if (!st_string(p, &dt)) return false;
        int found = -1;
        for (int j = 0; j < RT_ST_DTYPE_COUNT_; j++)
          if (strcmp(dt, st_dtype_names[j]) == 0) found = j;
        if (found < 0) {
          p->st = RKV_ERR_FORMAT;
          st_msg(p->err, p->err_len, "safetensors: tensor '%s' has unsupported dtype '%s'", name,
                 dt);
          return false;
        }
        t->dtype = (rt_st_dtype)found;
        have_dtype = true;
      } else if (strcmp(key, "shape") == 0) {
        if (!st_int_array(p, t->shape, RT_ST_MAX_DIMS, &t->ndim)) return false;
        have_shape = true;
      } else if (strcmp(key, "data_offsets") == 0) {
        int64_t off[2];
        uint32_t cnt;
        if (!st_int_array(p, off, 2, &cnt)) return false;
        if (cnt != 2) return st_fail(p, "data_offsets needs two integers");
        t->begin = (uint64_t)off[0];
        t->end = (uint64_t)off[1];
        have_off = true;
      } else if (!st_skip(p, 1)) {
        return false;
      }
      if (st_peek(p, ',')) {
        p->i++;
        continue;
      }
      if (!st_expect(p, '}')) return false;
      break;
    }
  } else {
    p->i++;
  }
  if (!have_dtype || !have_shape || !have_off) {
    p->st = RKV_ERR_FORMAT;
    st_msg(p->err, p->err_len, "safetensors: tensor '%s' lacks %s", name,
           !have_dtype   ? "dtype"
           : !have_shape ? "shape"
                         : "data_offsets");
    return false;
  }
  f->n_tensors++;
  return true;
}

static bool st_metadata(st_parser *p) {
  rt_st_file *f = p->f;
  if (!st_expect(p, '{')) return false;
  if (st_peek(p, '}')) {
    p->i++;
    return true;
  }
  for (;;) {
    const char *k, *v;
    if (!st_string(p, &k) || !st_expect(p, ':')) return false;
    if (!st_peek(p, '"')) return st_fail(p, "__metadata__ values must be strings");
    if (!st_string(p, &v)) return false;
    if (f->n_meta == f->cap_meta) {
      uint32_t cap = f->cap_meta ? f->cap_meta * 2 : 16;
      const char **nk = realloc(f->meta_k, cap * sizeof *nk);
      if (nk) f->meta_k = nk;
      const char **nv = nk ? realloc(f->meta_v, cap * sizeof *nv) : NULL;
      if (nv) f->meta_v = nv;
      if (!nk || !nv) {
        p->st = RKV_ERR_NO_MEMORY;
        st_msg(p->err, p->err_len, "out of memory");
        return false;
      }
      f->cap_meta = cap;
    }
    f->meta_k[f->n_meta] = k;
    f->meta_v[f->n_meta] = v;
    f->n_meta++;
    if (st_peek(p, ',')) {
      p->i++;
      continue;
    }
    return st_expect(p, '}');
  }
}

typedef struct st_span {
  uint64_t begin, end;
  uint32_t idx;
} st_span;

static int st_span_cmp(const void *a, const void *b) {
  const st_span *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : x->end > y->end;
}

/* Two tensors sharing bytes would alias: writing one (or a crafted file) silently changes the
 * other. Empty tensors occupy nothing and cannot overlap. */
static rkv_status st_check_overlap(const rt_st_file *f, char *err, size_t err_len) {
  st_span *v = malloc(((size_t)f->n_tensors + 1) * sizeof *v);
  if (!v) {
    st_msg(err, err_len, "out of memory");
    return RKV_ERR_NO_MEMORY;
  }
  uint32_t n = 0;
  for (uint32_t i = 0; i < f->n_tensors; i++)
    if (f->t[i].end > f->t[i].begin) v[n++] = (st_span){f->t[i].begin, f->t[i].end, i};
  qsort(v, n, sizeof *v, st_span_cmp);
  rkv_status s = RKV_OK;
  for (uint32_t k = 1; k < n && s == RKV_OK; k++) {
    if (v[k].begin >= v[k - 1].end) continue;
    const rt_st_tensor *a = &f->t[v[k - 1].idx], *b = &f->t[v[k].idx];
    st_msg(err, err_len,
           "safetensors: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data "
           "section",
           a->name, (unsigned long long)a->begin, (unsigned long long)a->end, b->name,
           (unsigned long long)b->begin, (unsigned long long)b->end);
    s = RKV_ERR_FORMAT;
  }
  free(v);
  return s;
}

/* Floating-point tensors must hold finite numbers: a NaN weight turns every logit into NaN
 * and the evaluation into noise that still exits 0. Checked on the exponent bits, so F16
 * and BF16 need no conversion. */
static rkv_status st_check_finite(const rt_st_file *f, const rt_st_tensor *t, char *err,
                                  size_t err_len) {
  const uint8_t *p = f->buf + f->body + t->begin;
  uint64_t n = (t->end - t->begin) / (t->dtype == RT_ST_F32 ? 4 : 2);
  for (uint64_t i = 0; i < n; i++) {
    bool bad, nan;
    if (t->dtype == RT_ST_F32) {
      uint32_t u;
      memcpy(&u, p + 4 * i, 4);
      bad = (u & 0x7f800000u) == 0x7f800000u;
      nan = bad && (u & 0x007fffffu);
    } else {
      uint16_t h;
      memcpy(&h, p + 2 * i, 2);
      uint16_t exp = t->dtype == RT_ST_F16 ? 0x7c00u : 0x7f80u;
      bad = (h & exp) == exp;
      nan = bad && (h & (uint16_t) ~(exp | 0x8000u));
    }
    if (bad) {
      st_msg(err, err_len, "safetensors: tensor '%s' element %llu is %s; weights must be finite",
             t->name, (unsigned long long)i, nan ? "NaN" : "Inf");
      return RKV_ERR_FORMAT;
    }
  }
  return RKV_OK;
}

static rkv_status st_validate(rt_st_file *f, char *err, size_t err_len) {
  uint64_t data = f->size - f->body;
  for (uint32_t i = 0; i < f->n_tensors; i++) {
    const rt_st_tensor *t = &f->t[i];
    uint64_t count = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
      uint64_t s = (uint64_t)t->shape[d];
      if (s && count > UINT64_MAX / 16 / s) {
        st_msg(err, err_len, "safetensors: tensor '%s' shape overflows", t->name);
        return RKV_ERR_FORMAT;
      }
      count *= s;
    }
    uint64_t bytes = count * rt_st_dtype_size(t->dtype);
    if (t->begin > t->end || t->end > data || t->end - t->begin != bytes) {
      st_msg(err, err_len,
             "safetensors: tensor '%s' data_offsets [%llu, %llu] do not hold %llu bytes inside "
             "the %llu-byte data section",
             t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
             (unsigned long long)bytes, (unsigned long long)data);
      return RKV_ERR_FORMAT;
    }
    for (uint32_t j = 0; j < i; j++)
      if (strcmp(f->t[j].name, t->name) == 0) {
        st_msg(err, err_len, "safetensors: tensor '%s' appears twice", t->name);
        return RKV_ERR_FORMAT;
      }
  }
  rkv_status s = st_check_overlap(f, err, err_len);
  for (uint32_t i = 0; i < f->n_tensors && s == RKV_OK; i++) {
    rt_st_dtype dt = f->t[i].dtype;
    if (dt == RT_ST_F32 || dt == RT_ST_F16 || dt == RT_ST_BF16)
      s = st_check_finite(f, &f->t[i], err, err_len);
  }
  return s;
}

void rt_st_free(rt_st_file *f) {
  if (!f) return;
  free(f->buf);
  free(f->arena);
  free(f->t);
  free(f->meta_k);
  free(f->meta_v);
  free(f);
}

rkv_status rt_st_parse(const void *data, size_t size, rt_st_file **out, char *err, size_t err_len) {
  if (!out || (!data && size)) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (size < 8) {
    st_msg(err, err_len, "safetensors: %zu bytes, shorter than the 8-byte header length", size);
    return RKV_ERR_FORMAT;
  }
  const uint8_t *b = data;
  uint64_t hlen = 0;
  for (int j = 7; j >= 0; j--) hlen = hlen << 8 | b[j];
  if (hlen < 2 || hlen > size - 8) {
    st_msg(err, err_len, "safetensors: header length %llu does not fit the %zu-byte file",
           (unsigned long long)hlen, size);
    return RKV_ERR_FORMAT;
  }
  rt_st_file *f = calloc(1, sizeof *f);
  if (!f) return RKV_ERR_NO_MEMORY;
  f->buf = malloc(size);
  f->arena = malloc((size_t)hlen + 1);
  if (!f->buf || !f->arena) {
    rt_st_free(f);
    st_msg(err, err_len, "out of memory");
    return RKV_ERR_NO_MEMORY;
  }
  memcpy(f->buf, data, size);
  f->size = size;
  f->body = 8 + (size_t)hlen;
  f->arena_cap = (size_t)hlen + 1;

  st_parser p = {f->buf + 8, (size_t)hlen, 0, f, err, err_len, RKV_OK};
  bool ok = st_expect(&p, '{');
  if (ok && st_peek(&p, '}')) {
    p.i++;
  } else {
    while (ok) {
      const char *name;
      ok = st_string(&p, &name) && st_expect(&p, ':');
      if (!ok) break;
      if (strcmp(name, "__metadata__") == 0)
        ok = st_metadata(&p);
      else
        ok = st_tensor(&p, name);
      if (!ok) break;
      if (st_peek(&p, ',')) {
        p.i++;
        continue;
      }
      ok = st_expect(&p, '}');
      break;
    }
  }
  if (ok) {
    st_ws(&p);
    if (p.i != p.n) ok = st_fail(&p, "trailing bytes after the header object");
  }
  rkv_status s = ok ? st_validate(f, err, err_len) : p.st;
  if (s != RKV_OK) {
    rt_st_free(f);
    return s;
  }
  *out = f;
  return RKV_OK;
}

rkv_status rt_st_read(const char *path, rt_st_file **out, char *err, size_t err_len) {
  if (!out || !path) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    st_msg(err, err_len, "cannot open '%s': %s", path, strerror(errno));
    return RKV_ERR_IO;
  }
  /* Sizes are checked before they are allocated: a regular file by its length, anything else
   * (a pipe, /dev/zero) by the header length in its first 8 bytes and then by the cap. */
  struct stat sb;
  bool regular = fstat(fileno(fp), &sb) == 0 && S_ISREG(sb.st_mode);
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  rkv_status s = RKV_OK;
  if (regular && (uint64_t)sb.st_size > RT_ST_MAX_FILE) {
    s = RKV_ERR_FORMAT;
    st_msg(err, err_len, "'%s' is %llu bytes, over the %llu-byte limit", path,
           (unsigned long long)sb.st_size, (unsigned long long)RT_ST_MAX_FILE);
  }
  while (s == RKV_OK) {
    if (len == 8) {
      uint64_t hlen = 0;
      for (int j = 7; j >= 0; j--) hlen = hlen << 8 | buf[j];
      if (hlen < 2 || hlen > RT_ST_MAX_HEADER || (regular && hlen > (uint64_t)sb.st_size - 8)) {
        s = RKV_ERR_FORMAT;
        st_msg(err, err_len,
               "'%s': header length %llu is outside [2, %llu] or does not fit the file", path,
               (unsigned long long)hlen, (unsigned long long)RT_ST_MAX_HEADER);
        break;
      }
    }
    if (len == cap) {
      if (cap >= RT_ST_MAX_FILE) {
        s = RKV_ERR_FORMAT;
        st_msg(err, err_len, "'%s' is longer than the %llu-byte limit", path,
               (unsigned long long)RT_ST_MAX_FILE);
        break;
      }
      /* 8 bytes first (the header length), then the whole file when its size is known */
      size_t ncap = cap == 0                                  ? 8
                    : regular && cap < (size_t)sb.st_size + 1 ? (size_t)sb.st_size + 1
                    : cap < (1 << 16)                         ? 1 << 16
                                                              : cap * 2;
      if (ncap > RT_ST_MAX_FILE + 1) ncap = (size_t)RT_ST_MAX_FILE + 1;
      uint8_t *nb = realloc(buf, ncap);
      if (!nb) {
        s = RKV_ERR_NO_MEMORY;
        st_msg(err, err_len, "out of memory reading '%s'", path);
        break;
      }
      buf = nb;
      cap = ncap;
    }
    size_t want = len < 8 ? 8 - len : cap - len;
    size_t got = fread(buf + len, 1, want, fp);
    len += got;
    if (got == 0) {
      if (ferror(fp)) {
        s = RKV_ERR_IO;
        st_msg(err, err_len, "read error on '%s'", path);
      }
      break;
    }
  }
  fclose(fp);
  if (s == RKV_OK) {
    s = rt_st_parse(buf, len, out, err, err_len);
    if (s == RKV_ERR_FORMAT && err && err_len) {
      char tmp[512];
      snprintf(tmp, sizeof tmp, "%s: %s", path, err);
      snprintf(err, err_len, "%s", tmp);
    }
  }
  free(buf);
  return s;
}

uint32_t rt_st_num_tensors(const rt_st_file *f) {
  return f ? f->n_tensors : 0;
}

const rt_st_tensor *rt_st_tensor_at(const rt_st_file *f, uint32_t i) {
  return f && i < f->n_tensors ? &f->t[i] : NULL;
}

const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name) {
  if (!f || !name) return NULL;
  for (uint32_t i = 0; i < f->n_tensors; i++)
    if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
  return NULL;
}

const void *rt_st_data(const rt_st_file *f, const rt_st_tensor *t) {
  return f && t ? f->buf + f->body + t->begin : NULL;
}

const char *rt_st_meta(const rt_st_file *f, const char *key) {
  if (!f || !key) return NULL;
  for (uint32_t i = 0; i < f->n_meta; i++)
    if (strcmp(f->meta_k[i], key) == 0) return f->meta_v[i];
  return NULL;
}
