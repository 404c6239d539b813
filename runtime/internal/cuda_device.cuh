// The backend's device for the length of one library call, then the caller's again: a thread
// that drives backends on several devices, or keeps its own current device, gets every call on
// the right one (streams, allocations and launches belong to the device that is current).
// Costs one cudaGetDevice when the backend's device is already current, and is safe inside a
// stream capture. The caller's device is restored only where it has a context (cuda_device.h).
// CUDA sources only.
#ifndef RKV_CUDA_DEVICE_CUH
#define RKV_CUDA_DEVICE_CUH

#include <cuda_runtime.h>

#include "backend_impl.h"
#include "cuda_device.h"

namespace rkvi_cuda {

class DeviceScope {
 public:
  explicit DeviceScope(const rkv_backend *b)
      : ok_(rkvi_cuda_device_enter(b->device, &prev_) == 0) {}
  // Whether the backend's device is current (false: the calls that follow may fail).
  bool ok() const { return ok_; }
  ~DeviceScope() { rkvi_cuda_device_leave(prev_); }
  DeviceScope(const DeviceScope &) = delete;
  DeviceScope &operator=(const DeviceScope &) = delete;

 private:
  int prev_ = -1;
  bool ok_ = false;
};

}  // namespace rkvi_cuda

#endif  // RKV_CUDA_DEVICE_CUH
