/* The .npy reader and writer declared in npy.h. The header is a Python dict literal; this
 * parser accepts exactly the keys numpy writes ('descr', 'fortran_order', 'shape', each once,
 * any order, either quote style), and checks every size before touching the data. */
#include "npy.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static rkv_status npy_fail(char *err, size_t err_len, rkv_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static rkv_status npy_fail(char *err, size_t err_len, rkv_status s, const char *fmt, ...) {
  if (err && err_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
  }
  return s;
}

#define BAD(...) npy_fail(err, err_len, RKV_ERR_FORMAT, __VA_ARGS__)

typedef struct cursor {
  const char *p, *end;
} cursor;

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool eat(cursor *c, char ch) {
  skip_ws(c);
  if (c->p < c->end && *c->p == ch) {
    c->p++;
    return true;
  }
  return false;
}

/* A quoted string without escapes into out (NUL-terminated); false if malformed / long. */
static bool read_str(cursor *c, char *out, size_t cap) {
  skip_ws(c);
  if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return false;
  char q = *c->p++;
  size_t n = 0;
  while (c->p < c->end && *c->p != q) {
    if (*c->p == '\\' || n + 1 >= cap) return false;
    out[n++] = *c->p++;
  }
  if (c->p >= c->end) return false;
  c->p++;
  out[n] = '\0';
  return true;
}

static bool read_word(cursor *c, const char *w) {
  skip_ws(c);
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return false;
  c->p += n;
  return true;
}

/* Non-negative decimal integer (numpy may write 3L in old files: accept a trailing L). */
static bool read_int(cursor *c, int64_t *v) {
  skip_ws(c);
  if (c->p >= c->end || *c->p < '0' || *c->p > '9') return false;
  int64_t x = 0;
  while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
    if (x > (INT64_MAX - 9) / 10) return false;
    x = x * 10 + (*c->p++ - '0');
  }
  if (c->p < c->end && *c->p == 'L') c->p++;
  *v = x;
  return true;
}

/* The magic, version and header dict at the start of buf (len bytes, which need not include
 * the data): fills out's type, shape and count and *data_off, the offset of the data. */
static rkv_status parse_header(const uint8_t *buf, size_t len, rt_npy *out, size_t *data_off,
                               char *err, size_t err_len) {
  memset(out, 0, sizeof *out);
  if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) return BAD("not a .npy file (bad magic)");
  unsigned major = buf[6], minor = buf[7];
  if (major < 1 || major > 3 || minor != 0)
    return BAD("unsupported .npy format version %u.%u", major, minor);
  size_t hl, start;
  if (major == 1) {
    hl = (size_t)buf[8] | (size_t)buf[9] << 8;
    start = 10;
  } else {
    if (len < 12) return BAD("truncated .npy header");
    hl = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
    start = 12;
  }
  if (hl > len - start) return BAD("header length %zu exceeds the file (%zu bytes)", hl, len);
  cursor c = {(const char *)buf + start, (const char *)buf + start + hl};
  char descr[32] = "";
  int have_descr = 0, have_fo = 0, have_shape = 0, fortran = 0;
  if (!eat(&c, '{')) return BAD("header is not a dict");
  for (;;) {
    if (eat(&c, '}')) break;
    char key[32];
    if (!read_str(&c, key, sizeof key)) return BAD("malformed header key");
    if (!eat(&c, ':')) return BAD("missing ':' after '%s'", key);
    if (strcmp(key, "descr") == 0) {
      if (have_descr++) return BAD("duplicate 'descr'");
      if (!read_str(&c, descr, sizeof descr))
        return BAD("malformed 'descr' (structured types are unsupported)");
    } else if (strcmp(key, "fortran_order") == 0) {
      if (have_fo++) return BAD("duplicate 'fortran_order'");
      if (read_word(&c, "True"))
        fortran = 1;
      else if (!read_word(&c, "False"))
        return BAD("malformed 'fortran_order'");
    } else if (strcmp(key, "shape") == 0) {
      if (have_shape++) return BAD("duplicate 'shape'");
      if (!eat(&c, '(')) return BAD("malformed 'shape'");
      out->ndim = 0;
      while (!eat(&c, ')')) {
        if (out->ndim >= RT_NPY_MAX_DIMS) return BAD("more than %d dimensions", RT_NPY_MAX_DIMS);
        int64_t v;
        if (!read_int(&c, &v)) return BAD("malformed 'shape' entry");
        out->shape[out->ndim++] = v;
        if (!eat(&c, ',')) {
          if (!eat(&c, ')')) return BAD("malformed 'shape'");
          break;
        }
      }
    } else {
      return BAD("unexpected header key '%s'", key);
    }
    if (!eat(&c, ',')) {
      if (!eat(&c, '}')) return BAD("malformed header dict");
      break;
    }
  }
  skip_ws(&c);
  while (c.p < c.end && *c.p == '\0') c.p++; /* some writers pad with NUL */
  if (c.p != c.end) return BAD("junk after the header dict");
  if (!have_descr || !have_fo || !have_shape)
    return BAD("header lacks %s", !have_descr ? "'descr'"
                                  : !have_fo  ? "'fortran_order'"
                                              : "'shape'");
  if (fortran) return BAD("Fortran-order arrays are unsupported (use C order)");
  static const struct {
    const char *d;
    rt_npy_type t;
    size_t size;
  } kTypes[] = {{"<f4", RT_NPY_F4, 4},
                {"<f8", RT_NPY_F8, 8},
                {"<f2", RT_NPY_F2, 2},
                {"<i8", RT_NPY_I8, 8},
                {"<i4", RT_NPY_I4, 4}};
  int found = 0;
  for (size_t i = 0; i < sizeof kTypes / sizeof kTypes[0]; i++) {
    if (strcmp(descr, kTypes[i].d) == 0) {
      out->type = kTypes[i].t, out->elem_size = kTypes[i].size, found = 1;
      break;
    }
  }
  if (!found) {
    if (descr[0] == '>') return BAD("big-endian data ('%s') is unsupported", descr);
    return BAD("unsupported dtype '%s' (want <f4, <f8, <f2, <i8 or <i4)", descr);
  }
  size_t count = 1;
  for (int i = 0; i < out->ndim; i++) {
    if (out->shape[i] < 0 || (uint64_t)out->shape[i] > ((uint64_t)1 << 40))
      return BAD("absurd dimension %lld", (long long)out->shape[i]);
    if (out->shape[i] && count > SIZE_MAX / 16 / (size_t)out->shape[i])
      return BAD("shape overflows");
    count *= (size_t)out->shape[i];
  }
  out->count = count;
  *data_off = start + hl;
  return RKV_OK;
}

rkv_status rt_npy_parse(const uint8_t *buf, size_t len, rt_npy *out, char *err, size_t err_len) {
  if (!buf || !out) return npy_fail(err, err_len, RKV_ERR_INVALID_ARG, "NULL argument");
  size_t off = 0;
  rkv_status s = parse_header(buf, len, out, &off, err, err_len);
  if (s != RKV_OK) return s;
  size_t count = out->count;
  out->count = 0;
  size_t have = len - off;
  if (count > have / out->elem_size)
    return BAD("truncated data: %zu elements of %zu bytes need %zu bytes, file has %zu", count,
               out->elem_size, count * out->elem_size, have);
  if (have != count * out->elem_size)
    return BAD("%zu trailing bytes after the data", have - count * out->elem_size);
  out->count = count;
  out->data = buf + off;
  return RKV_OK;
}

double rt_npy_get(const rt_npy *a, size_t i) {
  const uint8_t *p = a->data + i * a->elem_size;
  switch (a->type) {
    case RT_NPY_F4: {
      float f;
      memcpy(&f, p, 4);
      return f;
    }
    case RT_NPY_F8: {
      double d;
      memcpy(&d, p, 8);
      return d;
    }
    case RT_NPY_F2: {
      uint16_t h;
      memcpy(&h, p, 2);
      return rkv_f16_to_f32(h);
    }
    case RT_NPY_I8: {
      int64_t v;
      memcpy(&v, p, 8);
      return (double)v;
    }
    default: {
      int32_t v;
      memcpy(&v, p, 4);
      return v;
    }
  }
}

/* Up to n bytes from f (fewer only at end of file or on an error). */
static size_t read_upto(FILE *f, uint8_t *dst, size_t n) {
  size_t got = 0;
  while (got < n) {
    size_t k = fread(dst + got, 1, n - got, f);
    if (k == 0) break;
    got += k;
  }
  return got;
}

rkv_status rt_npy_load_f32(const char *path, float **data, rt_npy *info, char *err,
                           size_t err_len) {
  if (!path || !data || !info) return npy_fail(err, err_len, RKV_ERR_INVALID_ARG, "NULL argument");
  *data = NULL;
  memset(info, 0, sizeof *info);
  FILE *f = fopen(path, "rb");
  if (!f) return npy_fail(err, err_len, RKV_ERR_IO, "%s: cannot open", path);
  /* The header says how many bytes follow, so the file is read in that many steps and never
   * past what it claims: /dev/zero, or a pipe that never ends, cannot exhaust memory. */
  uint8_t pre[12];
  size_t len = read_upto(f, pre, sizeof pre);
  size_t hl = 0, start = 0;
  if (len >= 10 && memcmp(pre, "\x93NUMPY", 6) == 0 && pre[6] >= 1 && pre[6] <= 3 && pre[7] == 0) {
    start = pre[6] == 1 ? 10 : 12;
    hl = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (pre[6] != 1 && len >= 12) hl |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
  }
  if (hl > RT_NPY_MAX_HEADER) {
    fclose(f);
    return npy_fail(err, err_len, RKV_ERR_FORMAT, "%s: header length %zu exceeds the %u-byte limit",
                    path, hl, RT_NPY_MAX_HEADER);
  }
  rkv_status s = RKV_OK;
  char why[200] = "";
  size_t head = start + hl < len ? len : start + hl, off = 0, bytes = 0;
  uint8_t *buf = malloc(head + 1);
  if (!buf) s = RKV_ERR_NO_MEMORY;
  if (s == RKV_OK) {
    memcpy(buf, pre, len);
    len += read_upto(f, buf + len, head - len);
    /* The magic, version and dict (a short file fails here with the parser's message). */
    s = parse_header(buf, len, info, &off, why, sizeof why);
  }
  if (s == RKV_OK) {
    bytes = info->count * info->elem_size; /* parse_header keeps count below SIZE_MAX / 16 */
    if (bytes > RT_NPY_MAX_DATA) {
      s = RKV_ERR_FORMAT;
      snprintf(why, sizeof why, "%zu data bytes exceed the %llu-byte limit", bytes,
               (unsigned long long)RT_NPY_MAX_DATA);
    }
  }
  if (s == RKV_OK) {
    /* One byte more than the header describes: its presence means trailing data. */
    uint8_t *nb = realloc(buf, off + bytes + 1);
    if (!nb) {
      s = RKV_ERR_NO_MEMORY;
    } else {
      buf = nb;
      if (len < off + bytes + 1) len += read_upto(f, buf + len, off + bytes + 1 - len);
    }
  }
  int ioerr = ferror(f);
  fclose(f);
  if (s == RKV_ERR_NO_MEMORY) {
    free(buf);
    return npy_fail(err, err_len, s, "%s: out of memory", path);
  }
  if (s == RKV_OK && ioerr) {
    free(buf);
    return npy_fail(err, err_len, RKV_ERR_IO, "%s: read error", path);
  }
  if (s == RKV_OK && len > off + bytes) {
    s = RKV_ERR_FORMAT;
    snprintf(why, sizeof why, "trailing bytes after the %zu data bytes the header describes",
             bytes);
  }
  if (s == RKV_OK) s = rt_npy_parse(buf, len, info, why, sizeof why);
  if (s != RKV_OK) {
    free(buf);
    return npy_fail(err, err_len, s, "%s: %s", path, why);
  }
  float *out = malloc(info->count ? info->count * sizeof(float) : 1);
  if (!out) {
    free(buf);
    return npy_fail(err, err_len, RKV_ERR_NO_MEMORY, "%s: out of memory", path);
  }
  for (size_t i = 0; i < info->count; i++) out[i] = (float)rt_npy_get(info, i);
  info->data = NULL; /* the buffer goes away */
  free(buf);
  *data = out;
  return RKV_OK;
}

size_t rt_npy_format_header(char *buf, size_t cap, const char *descr, int ndim,
                            const int64_t *shape) {
  char dict[512], dims[400] = "";
  size_t dl = 0;
  for (int i = 0; i < ndim && i < RT_NPY_MAX_DIMS; i++) {
    int w = snprintf(dims + dl, sizeof dims - dl, "%lld%s", (long long)shape[i],
                     ndim == 1      ? ","
                     : i + 1 < ndim ? ", "
                                    : "");
    if (w < 0 || (size_t)w >= sizeof dims - dl) return 0;
    dl += (size_t)w;
  }
  int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                   descr, dims);
  if (n < 0 || (size_t)n >= sizeof dict) return 0;
  size_t total = 10 + (size_t)n + 1;
  total = (total + 63) / 64 * 64;
  if (total > cap || total - 10 > 65535) return 0;
  memcpy(buf, "\x93NUMPY\x01\x00", 8);
  buf[8] = (char)((total - 10) & 255);
  buf[9] = (char)((total - 10) >> 8);
  memcpy(buf + 10, dict, (size_t)n);
  memset(buf + 10 + n, ' ', total - 10 - (size_t)n - 1);
  buf[total - 1] = '\n';
  return total;
}

rkv_status rt_npy_save(const char *path, const char *descr, int ndim, const int64_t *shape,
                       const void *data, char *err, size_t err_len) {
  size_t esz = strcmp(descr, "<i8") == 0 || strcmp(descr, "<f8") == 0 ? 8 : 4;
  char hdr[1024];
  size_t hl = rt_npy_format_header(hdr, sizeof hdr, descr, ndim, shape);
  if (hl == 0) return npy_fail(err, err_len, RKV_ERR_INVALID_ARG, "%s: shape too long", path);
  size_t count = 1;
  for (int i = 0; i < ndim; i++) count *= (size_t)shape[i];
  FILE *f = fopen(path, "wb");
  if (!f) return npy_fail(err, err_len, RKV_ERR_IO, "%s: cannot create", path);
  bool ok = fwrite(hdr, 1, hl, f) == hl && (count == 0 || fwrite(data, esz, count, f) == count);
  ok = (fclose(f) == 0) && ok;
  return ok ? RKV_OK : npy_fail(err, err_len, RKV_ERR_IO, "%s: write failed", path);
}
