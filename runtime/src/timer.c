/* Stream timers (rkv/buffer.h, rkv_backend_timer): CUDA events on a CUDA backend
 * (backend_cuda.cu); elsewhere a synchronisation and a monotonic host clock per mark, since
 * the CPU backend's work is done on return and the emulated device's at the sync. */
#include <time.h>

#include "backend_impl.h"

#include <rkv/buffer.h>

struct rkv_backend_timer {
  rkv_backend *backend;
  void *ev_start, *ev_stop; /* cudaEvent_t on CUDA */
  double t_start, t_stop;   /* host clock, seconds, elsewhere */
  bool started, stopped;
};

static bool on_cuda(const rkv_backend_timer *t) {
  return t->backend->kind == RKV_BACKEND_CUDA;
}

static double host_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* One mark: on CUDA an event on the stream, elsewhere the host clock once the stream is idle. */
static rkv_status mark(rkv_backend_timer *t, void *event, double *at) {
  if (on_cuda(t)) return rkvi_cuda_event_record(t->backend, event);
  RKV_TRY(rkv_backend_sync(t->backend));
  *at = host_now();
  return RKV_OK;
}

rkv_status rkv_backend_timer_create(rkv_backend *backend, rkv_backend_timer **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!backend) return RKV_ERR_INVALID_ARG;
  const rkv_allocator *a = rkvi_backend_allocator(backend);
  rkv_backend_timer *t = rkvi_calloc(a, sizeof *t, 0);
  if (!t) return rkvi_fail(backend->err, RKV_ERR_NO_MEMORY, "timer handle");
  t->backend = backend;
  if (on_cuda(t)) {
    rkv_status s = rkvi_cuda_event_pair_create(backend, &t->ev_start, &t->ev_stop);
    if (s != RKV_OK) {
      rkvi_free(a, t, sizeof *t);
      return s;
    }
  }
  *out = t;
  return RKV_OK;
}

void rkv_backend_timer_destroy(rkv_backend_timer *t) {
  if (!t) return;
  rkvi_cuda_event_pair_destroy(t->ev_start, t->ev_stop);
  rkvi_free(rkvi_backend_allocator(t->backend), t, sizeof *t);
}

rkv_status rkv_backend_timer_start(rkv_backend_timer *t) {
  if (!t) return RKV_ERR_INVALID_ARG;
  t->started = t->stopped = false;
  RKV_TRY(mark(t, t->ev_start, &t->t_start));
  t->started = true;
  return RKV_OK;
}

rkv_status rkv_backend_timer_stop(rkv_backend_timer *t) {
  if (!t) return RKV_ERR_INVALID_ARG;
  if (!t->started)
    return rkvi_fail(t->backend->err, RKV_ERR_STATE, "timer stop: the timer was not started");
  RKV_TRY(mark(t, t->ev_stop, &t->t_stop));
  t->stopped = true;
  return RKV_OK;
}

rkv_status rkv_backend_timer_elapsed_ms(rkv_backend_timer *t, float *ms) {
  if (!t || !ms) return RKV_ERR_INVALID_ARG;
  if (!t->started || !t->stopped)
    return rkvi_fail(t->backend->err, RKV_ERR_STATE,
                     "timer elapsed: needs a start and a stop mark (%s)",
                     t->started ? "not stopped" : "not started");
  if (on_cuda(t)) return rkvi_cuda_event_elapsed(t->backend, t->ev_start, t->ev_stop, ms);
  *ms = (float)((t->t_stop - t->t_start) * 1e3);
  return RKV_OK;
}
