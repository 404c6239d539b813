/* Benchmarks reachable as `rkv bench <what>`: each reports ratios against a reference measured
 * in the same run (see docs/BENCHMARKS.md). */
#ifndef RT_BENCH_H
#define RT_BENCH_H

int rt_bench_blockmgr(int argc, char **argv);
int rt_bench_evict(int argc, char **argv);
int rt_bench_granularity(int argc, char **argv);
int rt_bench_attention(int argc, char **argv);
int rt_bench_step(int argc, char **argv);
int rt_bench_swap(int argc, char **argv);
int rkvi_bench_evict_cuda(int argc, char **argv); /* bench_evict_cuda.c: --backend cuda */

#endif /* RT_BENCH_H */
