/* Shared helpers for the `rkv` subcommands: the generated command prototypes, option
 * parsing with clear errors, a monotonic clock, and progress lines on stderr. Every
 * tools/rkv/cmd_<name>.c includes this first. */
#ifndef RT_H
#define RT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <rkv/runtime.h>

#include "rt_commands.h"

/* Seconds on a monotonic clock. */
double rt_now(void);

/* Option value parsers: print "rkv <cmd>: bad value for --opt: '...'" and return false on a
 * malformed or out-of-range value. Integers are decimal digits only (a leading '-' for i64);
 * f64 takes finite decimal numbers, never hexadecimal, inf or nan. */
bool rt_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                  uint64_t *out);
bool rt_parse_i64(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi,
                  int64_t *out);
bool rt_parse_f64(const char *cmd, const char *opt, const char *s, double lo, double hi,
                  double *out);

/* Checks the shape of a comma list before it is split: not empty, no empty item, at most
 * max_items items and max_len characters. Prints "rkv <cmd>: bad value for --opt: '...'
 * (why)" and returns false otherwise. */
bool rt_check_list(const char *cmd, const char *opt, const char *s, size_t max_items,
                   size_t max_len);

/* A comma list of integers in [lo, hi] (rt_check_list's shape rules, at most max_items and
 * 255 characters) into out[0..*n); false after printing why. */
bool rt_parse_u64_list(const char *cmd, const char *opt, const char *s, uint64_t lo, uint64_t hi,
                       uint64_t *out, int max_items, int *n);

/* Median of v[0..n) (n >= 1); sorts v in place (v[0] is then the minimum). */
double rt_median(double *v, size_t n);

/* A numeric option: name, destination, inclusive range. */
typedef struct rt_u64_opt {
  const char *name;
  uint64_t *dst;
  uint64_t lo, hi;
} rt_u64_opt;
/* Parses argv[*i] against a table of numeric options, consuming its value: 1 = parsed,
 * 0 = not in the table (argv[*i] untouched), -1 = bad or missing value (message printed). */
int rt_parse_u64_opt(const char *cmd, int argc, char **argv, int *i, const rt_u64_opt *opts,
                     size_t n_opts);

/* Fetches the value of option argv[*i] (advancing *i); prints an error and returns NULL when
 * it is missing. */
const char *rt_optval(const char *cmd, int argc, char **argv, int *i);

/* Progress on stderr at most every `interval` seconds (pass the state struct zeroed). */
typedef struct rt_progress {
  double start;
  double last;
  double interval;
} rt_progress;
void rt_progress_init(rt_progress *p, double interval);
/* Prints "\r<label> done/total (pct) rate/s eta" when due; final=true prints a newline. */
void rt_progress_update(rt_progress *p, const char *label, uint64_t done, uint64_t total,
                        bool final);

/* A logger that prints library messages on stderr at the given level. */
rkv_logger rt_stderr_logger(rkv_log_level level);

#endif /* RT_H */
