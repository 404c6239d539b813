/* Implementation of the shared tool helpers declared in rkv_tool.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rkv_tool.h"

double rt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void bad_value(const char *cmd, const char *opt, const char *s, const char *why) {
  fprintf(stderr, "rkv %s: bad value for %s: '%s' (%s)\n", cmd, opt, s ? s : "", why);
}

bool rt_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                  uint64_t *out) {
  /* Decimal digits only: base 0 would read "010" as 8 and accept "0x10"; strtoull alone
   * would also take leading blanks, '+' and '-' (negated modulo 2^64). */
  if (!s || *s < '0' || *s > '9') {
    bad_value(cmd, opt, s, "expected a non-negative decimal integer");
    return false;
  }
  errno = 0;
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end) {
    bad_value(cmd, opt, s, "expected a non-negative decimal integer");
    return false;
  }
  if (v < lo || v > hi) {
    char why[96];
    snprintf(why, sizeof why, "must be in [%llu, %llu]", (unsigned long long)lo,
             (unsigned long long)hi);
    bad_value(cmd, opt, s, why);
    return false;
  }
  *out = v;
  return true;
}

bool rt_parse_i64(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi,
                  int64_t *out) {
  const char *digits = s && *s == '-' ? s + 1 : s;
  if (!digits || *digits < '0' || *digits > '9') {
    bad_value(cmd, opt, s, "expected a decimal integer");
    return false;
  }
  errno = 0;
  char *end = NULL;
  long long v = strtoll(s, &end, 10);
  if (errno || *end) {
    bad_value(cmd, opt, s, "expected a decimal integer");
    return false;
  }
  if (v < lo || v > hi) {
    char why[96];
    snprintf(why, sizeof why, "must be in [%lld, %lld]", (long long)lo, (long long)hi);
    bad_value(cmd, opt, s, why);
    return false;
  }
  *out = v;
  return true;
}

bool rt_parse_f64(const char *cmd, const char *opt, const char *s, double lo, double hi,
                  double *out) {
  if (!s || !*s) {
    bad_value(cmd, opt, s, "expected a number");
    return false;
  }
  /* strtod also reads hexadecimal ("0x1p4"), "inf" and "nan": none is a decimal number. */
  if (strpbrk(s, "xXnN")) {
    bad_value(cmd, opt, s, "expected a finite decimal number");
    return false;
  }
  errno = 0;
  char *end = NULL;
  double v = strtod(s, &end);
  if (errno || *end || end == s || !isfinite(v)) {
    bad_value(cmd, opt, s, "expected a finite decimal number");
    return false;
  }
  if (v < lo || v > hi) {
    char why[96];
    snprintf(why, sizeof why, "must be in [%g, %g]", lo, hi);
    bad_value(cmd, opt, s, why);
    return false;
  }
  *out = v;
  return true;
}

bool rt_check_list(const char *cmd, const char *opt, const char *s, size_t max_items,
                   size_t max_len) {
  /* strtok would skip empty items silently ("32,,64", ",", a trailing comma): a typo must not
   * quietly drop a value or leave the default list in place. */
  const char *why = NULL;
  char buf[96];
  size_t len = s ? strlen(s) : 0;
  if (len == 0) {
    why = "empty list";
  } else if (len > max_len) {
    snprintf(buf, sizeof buf, "list longer than %zu characters", max_len);
    why = buf;
  } else {
    size_t items = 1;
    for (size_t i = 0; i < len && !why; i++) {
      if (s[i] != ',') continue;
      items++;
      if (i == 0 || i + 1 == len || s[i + 1] == ',') why = "empty item in the comma list";
    }
    if (!why && items > max_items) {
      snprintf(buf, sizeof buf, "more than %zu items", max_items);
      why = buf;
    }
  }
  if (!why) return true;
  bad_value(cmd, opt, s, why);
  return false;
}

bool rt_parse_u64_list(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                       uint64_t *out, int max_items, int *n) {
  char buf[256];
  if (!rt_check_list(cmd, opt, s, (size_t)max_items, sizeof buf - 1)) return false;
  snprintf(buf, sizeof buf, "%s", s);
  *n = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
    if (!rt_parse_u64(cmd, opt, t, lo, hi, &out[(*n)++])) return false;
  return true;
}

const char *rt_optval(const char *cmd, int argc, char **argv, int *i) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "rkv %s: option %s needs a value\n", cmd, argv[*i]);
    return NULL;
  }
  *i += 1;
  return argv[*i];
}

int rt_parse_u64_opt(const char *cmd, int argc, char **argv, int *i, const rt_u64_opt *opts,
                     size_t n_opts) {
  const char *a = argv[*i];
  for (size_t k = 0; k < n_opts; k++) {
    if (strcmp(a, opts[k].name) != 0) continue;
    const char *v = rt_optval(cmd, argc, argv, i);
    return v && rt_parse_u64(cmd, a, v, opts[k].lo, opts[k].hi, opts[k].dst) ? 1 : -1;
  }
  return 0;
}

void rt_progress_init(rt_progress *p, double interval) {
  p->start = p->last = rt_now();
  p->interval = interval;
}

void rt_progress_update(rt_progress *p, const char *label, uint64_t done, uint64_t total,
                        bool final) {
  double now = rt_now();
  if (!final && now - p->last < p->interval) return;
  p->last = now;
  double el = now - p->start;
  double rate = el > 0 ? (double)done / el : 0;
  double eta = rate > 0 && total > done ? (double)(total - done) / rate : 0;
  fprintf(stderr, "\r%s %llu/%llu (%.1f%%) %.3g/s eta %.0fs   ", label, (unsigned long long)done,
          (unsigned long long)total, total ? 100.0 * (double)done / (double)total : 100.0, rate,
          eta);
  if (final) fprintf(stderr, "\n");
  fflush(stderr);
}

static void stderr_log(void *ctx, rkv_log_level level, const char *msg) {
  (void)ctx;
  static const char *const kNames[] = {"error", "warn", "info", "debug"};
  fprintf(stderr, "[librkv %s] %s\n", kNames[level <= RKV_LOG_DEBUG ? level : 0], msg);
}

rkv_logger rt_stderr_logger(rkv_log_level level) {
  rkv_logger lg = {stderr_log, NULL, level};
  return lg;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

double rt_median(double *v, size_t n) {
  qsort(v, n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
