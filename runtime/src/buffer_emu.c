/* The emulated device (rkv/buffer_emu.h): a CPU backend whose DEVICE buffers sit behind
 * inaccessible addresses and whose transfers wait in a queue until the stream would have run
 * them, checking on the way that the host kept its hands off the bytes in flight. Test
 * machinery: simple and slow on purpose (every queued host range is saved and compared). */
#if !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE 1 /* MAP_ANONYMOUS: the build asks for POSIX.1-2008 only */
#endif

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <rkv/buffer_emu.h>

#include "buffer_impl.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define EMU_HAVE_MMAP 1
#endif

typedef struct emu_op {
  const char *what;
  uint64_t id; /* 1-based count of operations queued on the backend, for messages */
  uint8_t *dst;
  const uint8_t *src; /* NULL for a fill */
  size_t bytes;
  int fill;
  /* Host bytes as they were when the operation was queued (NULL: device side). */
  uint8_t *saved_src, *saved_dst;
  bool src_released, dst_released; /* rkv_emu_host_release: the host memory may be gone */
} emu_op;

struct rkvi_emu {
  emu_op *q;
  size_t n, cap;
  uint64_t queued;
  rkv_buffer *live;
  uint64_t hazards;
  bool unreported;
  char text[RKV_ERRBUF];
};

static const rkv_allocator *alloc_of(const rkv_backend *b) {
  return rkvi_backend_allocator(b);
}

static void hazard(rkv_backend *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hazard(rkv_backend *b, const char *fmt, ...) {
  struct rkvi_emu *e = b->emu;
  char msg[RKV_ERRBUF];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  e->hazards++;
  /* The first one is kept: later ones are often its consequences. */
  if (!e->unreported) {
    memcpy(e->text, msg, sizeof msg);
    e->unreported = true;
  }
  rkvi_log(b->has_logger ? &b->logger : NULL, RKV_LOG_ERROR, "emulated device hazard: %s", msg);
}

static bool overlaps(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
  return an && bn && a < b + bn && b < a + an;
}

/* ---- backend --------------------------------------------------------------------------- */

rkv_status rkv_backend_create_emulated(const rkv_backend_config *cfg, rkv_backend **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rkv_backend_config c;
  RKV_TRY(rkvi_backend_config_load(cfg, &c));
  if (c.kind != RKV_BACKEND_AUTO && c.kind != RKV_BACKEND_CPU) return RKV_ERR_INVALID_ARG;
  c.kind = RKV_BACKEND_CPU;
  rkv_backend *b = NULL;
  RKV_TRY(rkv_backend_create(&c, &b));
  b->emu = rkvi_calloc(alloc_of(b), sizeof *b->emu, 0);
  if (!b->emu) {
    rkv_backend_destroy(b);
    return RKV_ERR_NO_MEMORY;
  }
  *out = b;
  return RKV_OK;
}

bool rkv_backend_is_emulated(const rkv_backend *backend) {
  return backend && backend->emu;
}

static void free_saved(rkv_backend *b, emu_op *op) {
  rkvi_free(alloc_of(b), op->saved_src, op->bytes);
  rkvi_free(alloc_of(b), op->saved_dst, op->bytes);
}

void rkvi_emu_run(rkv_backend *b) {
  struct rkvi_emu *e = b->emu;
  /* Every check before any operation runs: between queueing and now only the host can have
   * touched host memory, while a later operation may legitimately read what an earlier one
   * writes (a download into a pinned buffer, then a copy from it). */
  for (size_t i = 0; i < e->n; i++) {
    const emu_op *op = &e->q[i];
    if (op->saved_src && !op->src_released && memcmp(op->src, op->saved_src, op->bytes) != 0)
      hazard(b, "%s #%llu: the host changed its source [%p, +%zu) before the stream ran it",
             op->what, (unsigned long long)op->id, (const void *)op->src, op->bytes);
    if (op->saved_dst && !op->dst_released && memcmp(op->dst, op->saved_dst, op->bytes) != 0)
      hazard(b, "%s #%llu: the host wrote its destination [%p, +%zu) before the stream ran it",
             op->what, (unsigned long long)op->id, (void *)op->dst, op->bytes);
  }
  for (size_t i = 0; i < e->n; i++) {
    emu_op *op = &e->q[i];
    if (op->fill >= 0)
      memset(op->dst, op->fill, op->bytes);
    else if (!op->dst_released)
      memmove(op->dst, op->src_released ? op->saved_src : op->src, op->bytes);
    free_saved(b, op);
  }
  e->n = 0;
}

rkv_status rkvi_emu_sync(rkv_backend *b) {
  struct rkvi_emu *e = b->emu;
  rkvi_emu_run(b);
  if (!e->unreported) return RKV_OK;
  e->unreported = false;
  return rkvi_fail(b->err, RKV_ERR_STATE, "emulated device hazard: %s", e->text);
}

void rkvi_emu_fini(rkv_backend *b) {
  struct rkvi_emu *e = b->emu;
  rkvi_emu_run(b);
  size_t live = 0;
  for (const rkv_buffer *p = e->live; p; p = p->emu_next) live++;
  if (live)
    rkvi_log(b->has_logger ? &b->logger : NULL, RKV_LOG_ERROR,
             "emulated device destroyed with %zu live buffers", live);
  rkvi_free(alloc_of(b), e->q, e->cap * sizeof *e->q);
  rkvi_free(alloc_of(b), e, sizeof *e);
  b->emu = NULL;
}

/* ---- memory ---------------------------------------------------------------------------- */

#ifdef EMU_HAVE_MMAP
static size_t reserved_len(size_t bytes) {
  const long pg = sysconf(_SC_PAGESIZE);
  const size_t page = pg > 0 ? (size_t)pg : 4096;
  return bytes > SIZE_MAX - page ? 0 : (bytes + page - 1) / page * page;
}
#endif

rkv_status rkvi_emu_alloc(rkv_backend *b, size_t bytes, void **addr, void **store) {
  *addr = *store = NULL;
#ifdef EMU_HAVE_MMAP
  /* Address space only: PROT_NONE pages are never backed, and any host access faults. */
  const size_t len = reserved_len(bytes);
  int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_NORESERVE
  flags |= MAP_NORESERVE;
#endif
  void *a = len ? mmap(NULL, len, PROT_NONE, flags, -1, 0) : MAP_FAILED;
  if (a == MAP_FAILED)
    return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated device: no address range of %zu bytes",
                     bytes);
#else
  /* Without mmap the address is a second host allocation: unique, but not fault-protected. */
  void *a = rkvi_alloc(alloc_of(b), bytes, RKV_BUFFER_ALIGN);
  if (!a) return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated device: %zu bytes", bytes);
#endif
  void *s = rkvi_alloc(alloc_of(b), bytes, RKV_BUFFER_ALIGN);
  if (!s) {
#ifdef EMU_HAVE_MMAP
    munmap(a, len);
#else
    rkvi_free(alloc_of(b), a, bytes);
#endif
    return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated DEVICE buffer of %zu bytes", bytes);
  }
  memset(s, 0xFF, bytes);
  *addr = a;
  *store = s;
  return RKV_OK;
}

void rkvi_emu_free(rkv_backend *b, size_t bytes, void *addr, void *store) {
#ifdef EMU_HAVE_MMAP
  munmap(addr, reserved_len(bytes));
#else
  rkvi_free(alloc_of(b), addr, bytes);
#endif
  rkvi_free(alloc_of(b), store, bytes);
}

void rkvi_emu_link(rkv_buffer *buf) {
  struct rkvi_emu *e = buf->backend->emu;
  buf->emu_prev = NULL;
  buf->emu_next = e->live;
  if (e->live) e->live->emu_prev = buf;
  e->live = buf;
}

void rkvi_emu_unlink(rkv_buffer *buf) {
  struct rkvi_emu *e = buf->backend->emu;
  if (buf->emu_prev)
    buf->emu_prev->emu_next = buf->emu_next;
  else
    e->live = buf->emu_next;
  if (buf->emu_next) buf->emu_next->emu_prev = buf->emu_prev;
  buf->emu_prev = buf->emu_next = NULL;
}

rkv_status rkvi_emu_check_host(rkv_backend *b, const void *p, size_t bytes, const char *what) {
  for (const rkv_buffer *buf = b->emu->live; buf; buf = buf->emu_next)
    if (buf->kind == RKV_BUFFER_DEVICE &&
        overlaps((uintptr_t)p, bytes, (uintptr_t)buf->ptr, buf->size))
      return rkvi_fail(b->err, RKV_ERR_INVALID_ARG,
                       "%s %p is a device address (of an emulated DEVICE buffer), not host memory",
                       what, p);
  return RKV_OK;
}

/* ---- queue ----------------------------------------------------------------------------- */

static uint8_t *save(rkv_backend *b, const void *p, size_t bytes) {
  uint8_t *s = rkvi_alloc(alloc_of(b), bytes, 1);
  if (s) memcpy(s, p, bytes);
  return s;
}

rkv_status rkvi_emu_enqueue(rkv_backend *b, const char *what, void *dst, const void *src,
                            size_t bytes, int fill, bool src_host, bool dst_host) {
  struct rkvi_emu *e = b->emu;
  if (e->n == e->cap) {
    const size_t nc = e->cap ? 2 * e->cap : 16;
    emu_op *q = rkvi_realloc(alloc_of(b), e->q, e->cap * sizeof *q, nc * sizeof *q, 0);
    if (!q) return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated device: queue of %zu", nc);
    e->q = q;
    e->cap = nc;
  }
  emu_op op = {what, e->queued + 1, dst, src, bytes, fill, NULL, NULL, false, false};
  if (src_host && !(op.saved_src = save(b, src, bytes)))
    return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated device: %s of %zu bytes", what, bytes);
  if (dst_host && !(op.saved_dst = save(b, dst, bytes))) {
    free_saved(b, &op);
    return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "emulated device: %s of %zu bytes", what, bytes);
  }
  e->q[e->n++] = op;
  e->queued++;
  return RKV_OK;
}

/* ---- test API -------------------------------------------------------------------------- */

rkv_status rkv_emu_view(rkv_backend *backend, const void *dev, size_t bytes, void **host) {
  if (!backend || !host) return RKV_ERR_INVALID_ARG;
  if (!backend->emu) {
    if (backend->kind == RKV_BACKEND_CUDA)
      return rkvi_fail(backend->err, RKV_ERR_UNSUPPORTED, "rkv_emu_view on a CUDA backend");
    *host = (void *)(uintptr_t)dev; /* CPU: device memory is host memory */
    return RKV_OK;
  }
  rkvi_emu_run(backend);
  const uintptr_t d = (uintptr_t)dev;
  for (const rkv_buffer *buf = backend->emu->live; buf; buf = buf->emu_next) {
    const uintptr_t base = (uintptr_t)buf->ptr;
    if (buf->size && d >= base && d - base <= buf->size && bytes <= buf->size - (d - base)) {
      *host = (uint8_t *)buf->store + (d - base);
      return RKV_OK;
    }
  }
  hazard(backend, "emulated kernel access [%p, +%zu) outside every live buffer", dev, bytes);
  return rkvi_fail(backend->err, RKV_ERR_INVALID_ARG,
                   "emulated kernel access [%p, +%zu) outside every live buffer", dev, bytes);
}

rkv_status rkv_emu_host_release(rkv_backend *backend, const void *host, size_t bytes) {
  if (!backend) return RKV_ERR_INVALID_ARG;
  if (!backend->emu) return RKV_OK;
  struct rkvi_emu *e = backend->emu;
  bool in_use = false;
  for (size_t i = 0; i < e->n; i++) {
    emu_op *op = &e->q[i];
    if (op->saved_src && !op->src_released &&
        overlaps((uintptr_t)op->src, op->bytes, (uintptr_t)host, bytes)) {
      hazard(backend, "%s #%llu: its host source [%p, +%zu) was released before the sync", op->what,
             (unsigned long long)op->id, (const void *)op->src, op->bytes);
      op->src_released = in_use = true;
    }
    if (op->saved_dst && !op->dst_released &&
        overlaps((uintptr_t)op->dst, op->bytes, (uintptr_t)host, bytes)) {
      hazard(backend, "%s #%llu: its host destination [%p, +%zu) was released before the sync",
             op->what, (unsigned long long)op->id, (void *)op->dst, op->bytes);
      op->dst_released = in_use = true;
    }
  }
  if (!in_use) return RKV_OK;
  return rkvi_fail(backend->err, RKV_ERR_STATE, "host memory [%p, +%zu) released while in use",
                   host, bytes);
}

uint64_t rkv_emu_hazards(const rkv_backend *backend) {
  return backend && backend->emu ? backend->emu->hazards : 0;
}

const char *rkv_emu_hazard_text(const rkv_backend *backend) {
  return backend && backend->emu ? backend->emu->text : "";
}

size_t rkv_emu_pending(const rkv_backend *backend) {
  return backend && backend->emu ? backend->emu->n : 0;
}
