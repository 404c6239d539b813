/* The Prometheus renderer behind rkv_sched_prometheus (sched.c gathers, sched_metrics.c
 * writes). Private to the scheduler module. */
#ifndef RKV_SCHED_METRICS_H
#define RKV_SCHED_METRICS_H

#include <rkv/scheduler.h>

/* The scheduler metrics, then the prefix cache's when p and c are given; the buffer rules of
 * rkv_sched_metrics_prometheus. */
rkv_status rkvi_sched_prometheus_render(const rkv_sched_metrics *m, const rkv_sched_prefix_stats *p,
                                        const rkv_prefix_stats *c, char *buf, size_t cap,
                                        size_t *written);

#endif
