/* Runtime buffers (rkv/buffer.h): argument checks, the CPU backend (memcpy, done on return) and
 * the dispatch to CUDA (buffer_cuda.cu) and to the emulated device (buffer_emu.c). Every check
 * runs before anything is allocated or enqueued, which is what makes a failed call change
 * nothing on every backend. */
#include <string.h>

#include "buffer_impl.h"

#ifndef RKV_HAVE_CUDA
/* Stubs so the CPU-only build links; no CUDA backend can exist to reach them. */
rkv_status rkvi_cuda_buffer_alloc(rkv_backend *b, rkv_buffer_kind kind, size_t bytes, void **out) {
  (void)kind, (void)bytes, (void)out;
  return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "librkv was built without CUDA");
}
void rkvi_cuda_buffer_free(rkv_backend *b, rkv_buffer_kind kind, void *p) {
  (void)b, (void)kind, (void)p;
}
rkv_status rkvi_cuda_buffer_memcpy(rkv_backend *b, void *dst, const void *src, size_t bytes,
                                   rkvi_copy_dir dir) {
  (void)dst, (void)src, (void)bytes, (void)dir;
  return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "librkv was built without CUDA");
}
rkv_status rkvi_cuda_buffer_fill(rkv_backend *b, void *dst, uint8_t value, size_t bytes) {
  (void)dst, (void)value, (void)bytes;
  return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "librkv was built without CUDA");
}
#endif

typedef enum path { PATH_CPU, PATH_CUDA, PATH_EMU } path;

static path path_of(const rkv_backend *b) {
  if (b->kind == RKV_BACKEND_CUDA) return PATH_CUDA;
  return b->emu ? PATH_EMU : PATH_CPU;
}

static const char *kind_name(rkv_buffer_kind k) {
  return k == RKV_BUFFER_DEVICE ? "DEVICE" : "HOST_PINNED";
}

/* Written as two comparisons so offset + bytes cannot wrap. */
static rkv_status check_range(const rkv_buffer *buf, size_t off, size_t bytes, const char *what) {
  if (off > buf->size || bytes > buf->size - off)
    return rkvi_fail(buf->backend->err, RKV_ERR_INVALID_ARG,
                     "%s: bytes [%zu, %zu + %zu) outside a %s buffer of %zu bytes", what, off, off,
                     bytes, kind_name(buf->kind), buf->size);
  return RKV_OK;
}

static rkv_status check_device(const rkv_buffer *buf, const char *what) {
  if (buf->kind != RKV_BUFFER_DEVICE)
    return rkvi_fail(buf->backend->err, RKV_ERR_INVALID_ARG,
                     "%s: needs a DEVICE buffer (a HOST_PINNED buffer is host memory: the host "
                     "reads and writes it directly)",
                     what);
  return RKV_OK;
}

/* Memory for `bytes` of a buffer of buf's kind and backend (nothing for 0 bytes). */
static rkv_status mem_alloc(const rkv_buffer *buf, size_t bytes, void **ptr, void **store) {
  rkv_backend *b = buf->backend;
  *ptr = *store = NULL;
  if (bytes == 0) return RKV_OK;
  const path p = path_of(b);
  if (p == PATH_CUDA) {
    RKV_TRY(rkvi_cuda_buffer_alloc(b, buf->kind, bytes, ptr));
    *store = *ptr;
    return RKV_OK;
  }
  if (p == PATH_EMU && buf->kind == RKV_BUFFER_DEVICE) return rkvi_emu_alloc(b, bytes, ptr, store);
  *ptr = *store = rkvi_alloc(rkvi_backend_allocator(b), bytes, RKV_BUFFER_ALIGN);
  if (!*ptr)
    return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "%s buffer of %zu bytes", kind_name(buf->kind),
                     bytes);
  return RKV_OK;
}

static void mem_free(const rkv_buffer *buf, size_t bytes, void *ptr, void *store) {
  rkv_backend *b = buf->backend;
  if (bytes == 0) return;
  const path p = path_of(b);
  if (p == PATH_CUDA)
    rkvi_cuda_buffer_free(b, buf->kind, ptr);
  else if (p == PATH_EMU && buf->kind == RKV_BUFFER_DEVICE)
    rkvi_emu_free(b, bytes, ptr, store);
  else
    rkvi_free(rkvi_backend_allocator(b), store, bytes);
}

rkv_status rkv_buffer_create(rkv_backend *backend, rkv_buffer_kind kind, size_t bytes,
                             rkv_buffer **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!backend) return RKV_ERR_INVALID_ARG;
  if (kind != RKV_BUFFER_DEVICE && kind != RKV_BUFFER_HOST_PINNED)
    return rkvi_fail(backend->err, RKV_ERR_INVALID_ARG, "unknown buffer kind %d", (int)kind);
  const rkv_allocator *a = rkvi_backend_allocator(backend);
  rkv_buffer *buf = rkvi_calloc(a, sizeof *buf, 0);
  if (!buf) return rkvi_fail(backend->err, RKV_ERR_NO_MEMORY, "buffer handle");
  buf->backend = backend;
  buf->kind = kind;
  rkv_status s = mem_alloc(buf, bytes, &buf->ptr, &buf->store);
  if (s != RKV_OK) {
    rkvi_free(a, buf, sizeof *buf);
    return s;
  }
  buf->size = bytes;
  if (backend->emu) rkvi_emu_link(buf);
  *out = buf;
  return RKV_OK;
}

rkv_status rkv_buffer_wrap(rkv_backend *backend, rkv_buffer_kind kind, void *ptr, size_t bytes,
                           rkv_buffer **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!backend) return RKV_ERR_INVALID_ARG;
  if (kind != RKV_BUFFER_DEVICE && kind != RKV_BUFFER_HOST_PINNED)
    return rkvi_fail(backend->err, RKV_ERR_INVALID_ARG, "unknown buffer kind %d", (int)kind);
  if (backend->emu)
    return rkvi_fail(backend->err, RKV_ERR_UNSUPPORTED,
                     "wrap: the emulated device only uses memory rkv_buffer_create made");
  if ((!ptr && bytes) || (uintptr_t)ptr % RKV_BUFFER_ALIGN)
    return rkvi_fail(backend->err, RKV_ERR_INVALID_ARG, "wrap: %p is NULL or not a multiple of %d",
                     ptr, RKV_BUFFER_ALIGN);
  rkv_buffer *buf = rkvi_calloc(rkvi_backend_allocator(backend), sizeof *buf, 0);
  if (!buf) return rkvi_fail(backend->err, RKV_ERR_NO_MEMORY, "buffer handle");
  buf->backend = backend;
  buf->kind = kind;
  buf->ptr = buf->store = bytes ? ptr : NULL;
  buf->size = bytes;
  buf->borrowed = true;
  *out = buf;
  return RKV_OK;
}

/* The stream may still read or write the memory about to go: let it finish. A failed sync
 * leaves its text in the backend; the memory is freed all the same (destroy cannot fail). */
static void drain(rkv_backend *b) {
  const path p = path_of(b);
  if (p == PATH_CUDA && !b->poisoned) (void)rkvi_cuda_sync(b);
  if (p == PATH_EMU) rkvi_emu_run(b);
}

void rkv_buffer_destroy(rkv_buffer *buf) {
  if (!buf) return;
  rkv_backend *b = buf->backend;
  drain(b);
  if (b->emu) rkvi_emu_unlink(buf);
  if (!buf->borrowed) mem_free(buf, buf->size, buf->ptr, buf->store);
  rkvi_free(rkvi_backend_allocator(b), buf, sizeof *buf);
}

void *rkv_buffer_ptr(const rkv_buffer *buf) {
  return buf ? buf->ptr : NULL;
}
size_t rkv_buffer_size(const rkv_buffer *buf) {
  return buf ? buf->size : 0;
}
rkv_buffer_kind rkv_buffer_get_kind(const rkv_buffer *buf) {
  return buf ? buf->kind : RKV_BUFFER_DEVICE;
}
rkv_backend *rkv_buffer_backend(const rkv_buffer *buf) {
  return buf ? buf->backend : NULL;
}

bool rkv_backend_device_is_host(const rkv_backend *backend) {
  return backend && path_of(backend) == PATH_CPU;
}

rkv_status rkv_buffer_upload(rkv_buffer *dst, size_t off, const void *src_host, size_t bytes) {
  if (!dst) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = dst->backend;
  RKV_TRY(check_device(dst, "upload"));
  RKV_TRY(check_range(dst, off, bytes, "upload"));
  if (bytes == 0) return RKV_OK;
  if (!src_host) return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "upload: NULL host source");
  uint8_t *d = (uint8_t *)dst->store + off;
  switch (path_of(b)) {
    case PATH_CUDA:
      return rkvi_cuda_buffer_memcpy(b, (uint8_t *)dst->ptr + off, src_host, bytes, RKVI_COPY_H2D);
    case PATH_EMU:
      RKV_TRY(rkvi_emu_check_host(b, src_host, bytes, "upload: host source"));
      return rkvi_emu_enqueue(b, "upload", d, src_host, bytes, -1, true, false);
    case PATH_CPU:
      break;
  }
  memmove(d, src_host, bytes); /* on the CPU the "host" source may be this very buffer */
  return RKV_OK;
}

rkv_status rkv_buffer_download(const rkv_buffer *src, size_t off, void *dst_host, size_t bytes) {
  if (!src) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = src->backend;
  RKV_TRY(check_device(src, "download"));
  RKV_TRY(check_range(src, off, bytes, "download"));
  if (bytes == 0) return RKV_OK;
  if (!dst_host) return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "download: NULL host destination");
  const uint8_t *s = (const uint8_t *)src->store + off;
  switch (path_of(b)) {
    case PATH_CUDA:
      return rkvi_cuda_buffer_memcpy(b, dst_host, (const uint8_t *)src->ptr + off, bytes,
                                     RKVI_COPY_D2H);
    case PATH_EMU:
      RKV_TRY(rkvi_emu_check_host(b, dst_host, bytes, "download: host destination"));
      return rkvi_emu_enqueue(b, "download", dst_host, s, bytes, -1, false, true);
    case PATH_CPU:
      break;
  }
  memmove(dst_host, s, bytes);
  return RKV_OK;
}

rkv_status rkv_buffer_copy(rkv_buffer *dst, size_t dst_off, const rkv_buffer *src, size_t src_off,
                           size_t bytes) {
  if (!dst || !src) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = dst->backend;
  if (src->backend != b)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "copy: the buffers belong to different backends");
  RKV_TRY(check_range(dst, dst_off, bytes, "copy (destination)"));
  RKV_TRY(check_range(src, src_off, bytes, "copy (source)"));
  if (bytes == 0) return RKV_OK;
  /* cudaMemcpyAsync is undefined on overlapping ranges: refused everywhere, so code tested on
   * the CPU cannot come to rely on memmove. */
  if (dst == src && dst_off < src_off + bytes && src_off < dst_off + bytes)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG,
                     "copy: ranges [%zu, +%zu) and [%zu, +%zu) of one buffer overlap", dst_off,
                     bytes, src_off, bytes);
  uint8_t *d = (uint8_t *)dst->store + dst_off;
  const uint8_t *s = (const uint8_t *)src->store + src_off;
  switch (path_of(b)) {
    case PATH_CUDA:
      return rkvi_cuda_buffer_memcpy(b, (uint8_t *)dst->ptr + dst_off,
                                     (const uint8_t *)src->ptr + src_off, bytes, RKVI_COPY_ANY);
    case PATH_EMU:
      return rkvi_emu_enqueue(b, "copy", d, s, bytes, -1, src->kind == RKV_BUFFER_HOST_PINNED,
                              dst->kind == RKV_BUFFER_HOST_PINNED);
    case PATH_CPU:
      break;
  }
  memcpy(d, s, bytes);
  return RKV_OK;
}

rkv_status rkv_buffer_fill(rkv_buffer *dst, size_t off, uint8_t value, size_t bytes) {
  if (!dst) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = dst->backend;
  RKV_TRY(check_device(dst, "fill"));
  RKV_TRY(check_range(dst, off, bytes, "fill"));
  if (bytes == 0) return RKV_OK;
  uint8_t *d = (uint8_t *)dst->store + off;
  switch (path_of(b)) {
    case PATH_CUDA:
      return rkvi_cuda_buffer_fill(b, (uint8_t *)dst->ptr + off, value, bytes);
    case PATH_EMU:
      return rkvi_emu_enqueue(b, "fill", d, NULL, bytes, value, false, false);
    case PATH_CPU:
      break;
  }
  memset(d, value, bytes);
  return RKV_OK;
}

rkv_status rkv_buffer_reserve(rkv_buffer *buf, size_t bytes) {
  if (!buf) return RKV_ERR_INVALID_ARG;
  if (bytes <= buf->size) return RKV_OK;
  rkv_backend *b = buf->backend;
  if (buf->borrowed)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG,
                     "reserve: a wrapped buffer of %zu bytes cannot grow to %zu (the caller owns "
                     "its memory)",
                     buf->size, bytes);
  const path p = path_of(b);
  /* Queued work may still read or write the old memory. */
  if (p == PATH_CUDA) RKV_TRY(rkvi_cuda_sync(b));
  if (p == PATH_EMU) rkvi_emu_run(b);
  void *ptr, *store;
  RKV_TRY(mem_alloc(buf, bytes, &ptr, &store));
  if (buf->size) {
    if (p == PATH_CUDA && buf->kind == RKV_BUFFER_DEVICE) {
      /* The host cannot read device memory: the old bytes move on the (now idle) stream. */
      rkv_status s = rkvi_cuda_buffer_memcpy(b, ptr, buf->ptr, buf->size, RKVI_COPY_ANY);
      if (s == RKV_OK) s = rkvi_cuda_sync(b);
      if (s != RKV_OK) {
        mem_free(buf, bytes, ptr, store);
        return s;
      }
    } else {
      memcpy(store, buf->store, buf->size); /* host bytes; nothing queued uses them now */
    }
  }
  mem_free(buf, buf->size, buf->ptr, buf->store);
  buf->ptr = ptr;
  buf->store = store;
  buf->size = bytes;
  return RKV_OK;
}
