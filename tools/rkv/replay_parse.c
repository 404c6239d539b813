/* Line parser for `rkv replay` scripts (format in docs/REPLAY.md): splits a line into words,
 * strips `#` comments, and turns the words into a replay_op with strict number parsing, so a
 * malformed line is reported with a precise message instead of being half-executed. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "replay.h"

enum { MAX_WORDS = 16 };

__attribute__((format(printf, 3, 4))) static int fail(char *msg, size_t size, const char *fmt,
                                                      ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, size, fmt, ap);
  va_end(ap);
  return -1;
}

static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
  if (!s || !*s) return -1;
  errno = 0;
  char *end = NULL;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

/* "i,j,k-l,..." (ranges inclusive, ascending) or "-" / nothing for an empty list. */
static int parse_positions(const char *s, const char *cmd, replay_op *op, char *msg, size_t size) {
  op->pos = NULL;
  op->npos = 0;
  if (!s || strcmp(s, "-") == 0) return 0;
  size_t cap = 0;
  const char *p = s;
  while (*p) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    char item[64];
    if (len == 0 || len >= sizeof item)
      return fail(msg, size, "%s: bad position item near '%.20s'", cmd, p);
    memcpy(item, p, len);
    item[len] = '\0';
    int64_t lo, hi;
    char *dash = strchr(item + 1, '-'); /* item + 1: a leading '-' is a sign, not a range */
    if (dash) {
      *dash = '\0';
      if (parse_i64(item, INT32_MIN, INT32_MAX, &lo) ||
          parse_i64(dash + 1, INT32_MIN, INT32_MAX, &hi))
        return fail(msg, size, "%s: bad range '%.*s'", cmd, (int)len, p);
      if (hi < lo) return fail(msg, size, "%s: descending range '%.*s'", cmd, (int)len, p);
    } else {
      if (parse_i64(item, INT32_MIN, INT32_MAX, &lo))
        return fail(msg, size, "%s: bad position '%s'", cmd, item);
      hi = lo;
    }
    if ((uint64_t)(hi - lo) + op->npos >= REPLAY_MAX_TOKENS)
      return fail(msg, size, "%s: more than %u positions (the replay limit)", cmd,
                  REPLAY_MAX_TOKENS - 1);
    size_t need = op->npos + (size_t)(hi - lo) + 1;
    if (need > cap) {
      size_t ncap = cap ? cap : 64;
      while (ncap < need) ncap *= 2;
      int32_t *q = realloc(op->pos, ncap * sizeof *q);
      if (!q) return fail(msg, size, "%s: out of memory", cmd);
      op->pos = q;
      cap = ncap;
    }
    for (int64_t v = lo; v <= hi; v++) op->pos[op->npos++] = (int32_t)v;
    p += len;
    if (*p == ',') {
      p++;
      if (!*p) return fail(msg, size, "%s: trailing comma", cmd);
    }
  }
  return 0;
}

static int want_words(int n, int lo, int hi, const char *cmd, char *msg, size_t size) {
  if (n - 1 < lo || n - 1 > hi) {
    if (lo == hi)
      return fail(msg, size, "%s takes %d argument%s, got %d", cmd, lo, lo == 1 ? "" : "s", n - 1);
    return fail(msg, size, "%s takes %d to %d arguments, got %d", cmd, lo, hi, n - 1);
  }
  return 0;
}

static int parse_pool(char **w, int n, replay_op *op, char *msg, size_t size) {
  op->blocks = op->block_size = op->layers = op->kv_heads = 0;
  op->head_dim = 128;
  for (int i = 1; i < n; i++) {
    char *eq = strchr(w[i], '=');
    if (!eq) return fail(msg, size, "pool: expected key=value, got '%s'", w[i]);
    *eq = '\0';
    int64_t v;
    if (parse_i64(eq + 1, strcmp(w[i], "prefix_cache") == 0 ? 0 : 1, INT32_MAX, &v))
      return fail(msg, size, "pool: bad value for %s: '%s'", w[i], eq + 1);
    if (strcmp(w[i], "blocks") == 0)
      op->blocks = (uint32_t)v;
    else if (strcmp(w[i], "block_size") == 0)
      op->block_size = (uint32_t)v;
    else if (strcmp(w[i], "layers") == 0)
      op->layers = (uint32_t)v;
    else if (strcmp(w[i], "kv_heads") == 0)
      op->kv_heads = (uint32_t)v;
    else if (strcmp(w[i], "head_dim") == 0)
      op->head_dim = (uint32_t)v;
    else if (strcmp(w[i], "prefix_cache") == 0 && v <= 1)
      op->prefix_cache = v == 1;
    else
      return fail(msg, size, "pool: unknown key '%s'", w[i]);
  }
  if (!op->blocks || !op->block_size || !op->layers || !op->kv_heads)
    return fail(msg, size, "pool: blocks, block_size, layers and kv_heads are required");
  if (op->blocks > REPLAY_MAX_BLOCKS)
    return fail(msg, size, "pool: blocks=%u exceeds the replay limit of %u", op->blocks,
                REPLAY_MAX_BLOCKS);
  if ((uint64_t)op->blocks * op->block_size > REPLAY_MAX_TOKENS)
    return fail(msg, size, "pool: blocks x block_size = %llu exceeds the replay limit of %u tokens",
                (unsigned long long)op->blocks * op->block_size, REPLAY_MAX_TOKENS);
  if ((uint64_t)op->layers * op->kv_heads > REPLAY_MAX_STREAMS)
    return fail(msg, size, "pool: layers x kv_heads = %llu exceeds the replay limit of %u streams",
                (unsigned long long)op->layers * op->kv_heads, REPLAY_MAX_STREAMS);
  return 0;
}

/* Hash names are identifiers so that they cannot be mistaken for numbers. */
static int parse_name(const char *w, const char *cmd, replay_op *op, char *msg, size_t size) {
  bool ok = (*w >= 'a' && *w <= 'z') || (*w >= 'A' && *w <= 'Z') || *w == '_';
  for (const char *p = w; ok && *p; p++)
    ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
         *p == '_';
  if (!ok || strlen(w) > 63)
    return fail(msg, size, "%s: bad hash name '%.64s' (a letter or _, then letters, digits, _)",
                cmd, w);
  op->name = w;
  return 0;
}

/* hash NAME TOKENS | match NAME | create_cached SEQ NAME [HIT] | insert SEQ NAME */
static int parse_prefix(char **w, int n, replay_op *op, char *msg, size_t size) {
  const char *cmd = w[0];
  op->arg = -1;
  if (strcmp(cmd, "hash") == 0) {
    op->kind = REPLAY_HASH;
    if (want_words(n, 1, 2, cmd, msg, size) || parse_name(w[1], cmd, op, msg, size)) return -1;
    return parse_positions(n > 2 ? w[2] : NULL, cmd, op, msg, size);
  }
  if (strcmp(cmd, "match") == 0) {
    op->kind = REPLAY_MATCH;
    if (want_words(n, 1, 1, cmd, msg, size)) return -1;
    return parse_name(w[1], cmd, op, msg, size);
  }
  bool cached = strcmp(cmd, "create_cached") == 0;
  op->kind = cached ? REPLAY_CREATE_CACHED : REPLAY_INSERT;
  if (want_words(n, 2, cached ? 3 : 2, cmd, msg, size)) return -1;
  if (parse_i64(w[1], INT64_MIN, INT64_MAX, &op->seq))
    return fail(msg, size, "%s: SEQ is not an integer: '%s'", cmd, w[1]);
  if (n > 3 && parse_i64(w[3], 0, UINT32_MAX, &op->arg))
    return fail(msg, size, "%s: HIT is not a group count: '%s'", cmd, w[3]);
  return parse_name(w[2], cmd, op, msg, size);
}

int rt_replay_parse_line(char *line, replay_op *op, char *msg, size_t msg_size) {
  memset(op, 0, sizeof *op);
  char *hash = strchr(line, '#');
  if (hash) *hash = '\0';
  char *w[MAX_WORDS];
  int n = 0;
  for (char *save = NULL, *t = strtok_r(line, " \t\r\n", &save); t;
       t = strtok_r(NULL, " \t\r\n", &save)) {
    if (n == MAX_WORDS) return fail(msg, msg_size, "too many words");
    w[n++] = t;
  }
  if (n == 0) return 1;
  const char *cmd = w[0];
  int64_t v[3] = {0, 0, 0};
  static const struct {
    const char *name;
    replay_kind kind;
    int nargs;
  } simple[] = {
      {"create", REPLAY_CREATE, 1},
      {"append", REPLAY_APPEND, 2},
      {"fork", REPLAY_FORK, 2},
      {"compact", REPLAY_COMPACT, 1},
      {"free", REPLAY_FREE, 1},
      {"compact_uniform", REPLAY_UNIFORM, 3},
      {"compact_prepare", REPLAY_PREPARE, 3},
      {"check", REPLAY_CHECK, 0},
      {"show", REPLAY_SHOW, 0},
      {"protect", REPLAY_PROTECT, 2},
      {"prefix_clear", REPLAY_PREFIX_CLEAR, 0},
      {"prefix_stats", REPLAY_PREFIX_STATS, 0},
  };
  if (strcmp(cmd, "pool") == 0) {
    op->kind = REPLAY_POOL;
    return parse_pool(w, n, op, msg, msg_size);
  }
  if (strcmp(cmd, "keep") == 0) {
    op->kind = REPLAY_KEEP;
    if (want_words(n, 3, 4, cmd, msg, msg_size)) return -1;
    if (parse_i64(w[1], INT64_MIN, INT64_MAX, &v[0]) || parse_i64(w[2], 0, INT32_MAX, &v[1]) ||
        parse_i64(w[3], 0, INT32_MAX, &v[2]))
      return fail(msg, msg_size, "keep: expected SEQ LAYER HEAD [POSITIONS]");
    op->seq = v[0];
    op->arg = v[1];
    op->arg2 = v[2];
    return parse_positions(n > 4 ? w[4] : NULL, "keep", op, msg, msg_size);
  }
  if (strcmp(cmd, "hash") == 0 || strcmp(cmd, "match") == 0 || strcmp(cmd, "create_cached") == 0 ||
      strcmp(cmd, "insert") == 0)
    return parse_prefix(w, n, op, msg, msg_size);
  for (size_t k = 0; k < sizeof simple / sizeof simple[0]; k++) {
    if (strcmp(cmd, simple[k].name) != 0) continue;
    op->kind = simple[k].kind;
    if (want_words(n, simple[k].nargs, simple[k].nargs, cmd, msg, msg_size)) return -1;
    for (int i = 0; i < simple[k].nargs; i++)
      if (parse_i64(w[i + 1], INT64_MIN, INT64_MAX, &v[i]))
        return fail(msg, msg_size, "%s: argument %d is not an integer: '%s'", cmd, i + 1, w[i + 1]);
    op->seq = v[0];
    op->arg = v[1];
    op->arg2 = v[2];
    if (op->kind == REPLAY_APPEND && (op->arg < 0 || op->arg > UINT32_MAX))
      return fail(msg, msg_size, "append: token count %lld out of range", (long long)op->arg);
    if (op->kind == REPLAY_PROTECT && (op->arg < INT32_MIN || op->arg > INT32_MAX))
      return fail(msg, msg_size, "protect: N out of range");
    if ((op->kind == REPLAY_UNIFORM || op->kind == REPLAY_PREPARE) &&
        (op->arg < INT32_MIN || op->arg > INT32_MAX || op->arg2 < INT32_MIN ||
         op->arg2 > INT32_MAX))
      return fail(msg, msg_size, "%s: LAYER or KEEP out of range", cmd);
    return 0;
  }
  return fail(msg, msg_size, "unknown op '%s'", cmd);
}
