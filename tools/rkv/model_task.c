/* The labelled-addition task of tools/model/task.py in C: the same splitmix64 streams give
 * byte-identical prompts and targets (tests/unit/model checks it against the Python output), so
 * `rkv eval` draws its held-out problems without Python. Also the answer checker. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

#define TASK_VERIFY "wait, let me verify:"
#define TASK_ANSWER "so the answer is "
/* Version 2's self-talk (task.V2_*); no '.' inside: '.' ends the sequence. */
#define TASK_V2_INTRO "ok, let me add these column by column, from the right\n"
#define TASK_V2_SO " so %d plus %d is %d"
#define TASK_V2_FORGOT ", hmm, i forgot the carry, %d plus 1 is %d"
#define TASK_V2_OVER ", that is ten or more, so i write %d and carry 1\n"
#define TASK_V2_UNDER ", that is under ten, so i write %d and carry 0\n"
#define TASK_V2_OUTRO "all columns done, the last carry is %d, "

static uint64_t task_mix(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Appends printf-style text at *k of buf (size cap); false when it would not fit. */
static bool task_put(char *buf, size_t cap, size_t *k, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const int w = vsnprintf(buf + *k, cap - *k, fmt, ap);
  va_end(ap);
  if (w < 0 || (size_t)w >= cap - *k) return false;
  *k += (size_t)w;
  return true;
}

/* Version 2's trace before the answer (task.column_talk): per column its line, which names
 * operand b's label and writes b's digit after ':' and the sum digit right after '=' (each a
 * key no other digit has), then the self-talk restating it. */
static bool task_talk(rt_task_problem *p, char *out, size_t cap, size_t *k) {
  const int n = p->digits;
  int carry = 0;
  if (!task_put(out, cap, k, "%s", TASK_V2_INTRO)) return false;
  for (int i = 0; i < n; i++) {
    const int x = p->a[n - 1 - i] - '0', y = p->b[n - 1 - i] - '0';
    const int t = x + y, s = t + carry;
    p->line_at[i] = (int32_t)*k;
    if (!task_put(out, cap, k, "%c%d+%c:%d+%d=%d,%d;", 'A' + i, x, 'A' + i, y, carry, s % 10,
                  s / 10))
      return false;
    p->talk_at[i] = (int32_t)*k;
    if (!task_put(out, cap, k, TASK_V2_SO, x, y, t)) return false;
    if (carry && !task_put(out, cap, k, TASK_V2_FORGOT, t, s)) return false;
    if (!task_put(out, cap, k, s >= 10 ? TASK_V2_OVER : TASK_V2_UNDER, s % 10)) return false;
    carry = s / 10;
  }
  return task_put(out, cap, k, TASK_V2_OUTRO, carry);
}

rkv_status rt_task_problem_make(uint64_t seed, uint64_t index, int32_t lo, int32_t hi,
                                int32_t version, rt_task_problem *p) {
  if (!p || lo < RT_TASK_MIN_DIGITS || hi > RT_TASK_MAX_DIGITS || lo > hi ||
      (version != 1 && version != 2))
    return RKV_ERR_INVALID_ARG;
  memset(p, 0, sizeof *p);
  p->version = version;
  uint64_t s0 = seed * 0x100000001B3ull + index;
  uint64_t rng = task_mix(&s0);
  const int n = lo + (int)(task_mix(&rng) % (uint64_t)(hi - lo + 1));
  p->digits = n;
  char *ops[2] = {p->a, p->b};
  for (int o = 0; o < 2; o++) {
    ops[o][0] = (char)('1' + task_mix(&rng) % 9);
    for (int k = 1; k < n; k++) ops[o][k] = (char)('0' + task_mix(&rng) % 10);
    ops[o][n] = '\0';
  }
  /* Column sums, least significant first; sum[] is most significant first. */
  int carry = 0;
  char lines[RT_TASK_MAX_DIGITS * 10 + 1];
  for (int i = 0; i < n; i++) {
    const int da = p->a[n - 1 - i] - '0', db = p->b[n - 1 - i] - '0';
    const int s = da + db + carry;
    char *ln = lines + 10 * i;
    ln[0] = (char)('A' + i);
    ln[1] = (char)('0' + da);
    ln[2] = '+';
    ln[3] = (char)('0' + db);
    ln[4] = '+';
    ln[5] = (char)('0' + carry);
    ln[6] = '=';
    ln[7] = (char)('0' + s / 10);
    ln[8] = (char)('0' + s % 10);
    ln[9] = ';';
    p->sum[n - i] = (char)('0' + s % 10);
    carry = s / 10;
  }
  lines[10 * n] = '\0';
  p->sum[0] = (char)('0' + carry);
  p->sum[n + 1] = '\0';

  size_t k = 0;
  char *q = p->prompt;
  q[k++] = 'Q';
  q[k++] = ':';
  for (int j = 0; j < n; j++) {
    q[k++] = (char)('A' + n - 1 - j);
    q[k++] = p->a[j];
  }
  q[k++] = '+';
  for (int j = 0; j < n; j++) { /* version 2: 'C:3', version 1: 'c3' (task.prompt_text) */
    q[k++] = (char)((version == 2 ? 'A' : 'a') + n - 1 - j);
    if (version == 2) q[k++] = ':';
    q[k++] = p->b[j];
  }
  q[k++] = '\n';
  q[k] = '\0';

  char ans[2 * (RT_TASK_MAX_DIGITS + 1) + 1];
  for (int j = 0; j <= n; j++) {
    ans[2 * j] = (char)('A' + n - j);
    ans[2 * j + 1] = p->sum[j];
  }
  ans[2 * (n + 1)] = '\0';
  size_t t = 0;
  const size_t cap = sizeof p->target;
  bool fits;
  if (version == 2) {
    fits = task_talk(p, p->target, cap, &t) && task_put(p->target, cap, &t, "%s", TASK_ANSWER);
    p->answer_at = (int32_t)t;
    fits = fits && task_put(p->target, cap, &t, "%s.", ans);
  } else {
    for (int i = 0; i < n; i++) p->line_at[i] = 10 * i;
    p->answer_at = (int32_t)(2 * (10 * n + 1) + strlen(TASK_VERIFY) + strlen(TASK_ANSWER));
    fits = task_put(p->target, cap, &t, "%s\n%s%s\n%s%s.", lines, TASK_VERIFY, lines, TASK_ANSWER,
                    ans);
  }
  return fits ? RKV_OK : RKV_ERR_INTERNAL; /* RT_TASK_MAX_TEXT holds 25 digits of either */
}

/* Digits of a decimal string without leading zeros ("" for zero). */
static const char *strip_zeros(const char *s, size_t *len) {
  while (*len > 0 && *s == '0') {
    s++;
    (*len)--;
  }
  return s;
}

bool rt_task_check(const rt_task_problem *p, const char *generated) {
  if (!p || !generated) return false;
  /* The last occurrence of the answer phrase, as task.parse_answer's rfind. */
  const char *at = NULL;
  for (const char *s = strstr(generated, TASK_ANSWER); s; s = strstr(s + 1, TASK_ANSWER)) at = s;
  if (!at) return false;
  at += strlen(TASK_ANSWER);
  const char *end = strchr(at, '.');
  if (!end) return false;
  size_t len = (size_t)(end - at);
  if (len < 2 || len % 2 || len / 2 > sizeof p->sum) return false;
  char digits[sizeof p->sum + 1];
  size_t nd = 0;
  for (size_t j = 0; j < len; j += 2) {
    if (at[j] < 'A' || at[j] > 'Z' || at[j + 1] < '0' || at[j + 1] > '9') return false;
    digits[nd++] = at[j + 1];
  }
  size_t la = nd, lb = strlen(p->sum);
  const char *x = strip_zeros(digits, &la);
  const char *y = strip_zeros(p->sum, &lb);
  return la == lb && memcmp(x, y, la) == 0;
}
