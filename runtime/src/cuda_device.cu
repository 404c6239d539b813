// The caller's device around one library call: cuda_device.h.
#include <cuda.h>
#include <cuda_runtime.h>
#include <pthread.h>

#include "cuda_device.h"

namespace {

typedef CUresult (*DeviceGetFn)(CUdevice *, int);
typedef CUresult (*PrimaryStateFn)(CUdevice, unsigned int *, int *);

// Driver entry points, looked up once per process and only read afterwards (the library never
// links libcuda: the runtime hands them over). Null when the lookup failed: then the caller's
// device is always restored, as before.
struct DriverFns {
  DeviceGetFn device_get;
  PrimaryStateFn primary_state;
};
DriverFns g_fns;
pthread_once_t g_fns_once = PTHREAD_ONCE_INIT;

void *entry_point(const char *name) {
  void *fn = nullptr;
  cudaDriverEntryPointQueryResult res;
#if CUDART_VERSION >= 12050
  cudaError_t e = cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &res);
#else
  cudaError_t e = cudaGetDriverEntryPoint(name, &fn, cudaEnableDefault, &res);
#endif
  if (e != cudaSuccess || res != cudaDriverEntryPointSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return fn;
}

void load_fns() {
  DriverFns f;
  f.device_get = reinterpret_cast<DeviceGetFn>(entry_point("cuDeviceGet"));
  f.primary_state = reinterpret_cast<PrimaryStateFn>(entry_point("cuDevicePrimaryCtxGetState"));
  if (!f.device_get || !f.primary_state) f = DriverFns{nullptr, nullptr};
  g_fns = f;
}

// Whether switching back to `ordinal` is worth it: its primary context is active (someone in
// this process uses it), or that cannot be told.
bool worth_restoring(int ordinal) {
  pthread_once(&g_fns_once, load_fns);
  if (!g_fns.primary_state) return true;
  CUdevice dev;
  unsigned int flags = 0;
  int active = 0;
  if (g_fns.device_get(&dev, ordinal) != CUDA_SUCCESS) return true;
  if (g_fns.primary_state(dev, &flags, &active) != CUDA_SUCCESS) return true;
  return active != 0;
}

}  // namespace

extern "C" int rkvi_cuda_device_enter(int device, int *prev) {
  *prev = -1;
  int cur = -1;
  cudaError_t e = cudaGetDevice(&cur);
  if (e == cudaSuccess && cur == device) return 0;
  // Decided before the switch: nothing here changes the state of `cur`'s context.
  const bool restore = e == cudaSuccess && worth_restoring(cur);
  if (e == cudaSuccess) e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return (int)e;
  }
  if (restore) *prev = cur;
  return 0;
}

extern "C" void rkvi_cuda_device_leave(int prev) {
  if (prev >= 0) (void)cudaSetDevice(prev);
}
