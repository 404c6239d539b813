/* Switching to a backend's device for one library call and back, callable from C and CUDA
 * sources (cuda_device.cuh wraps it for C++). Restoring the caller's device is skipped when
 * that device has no active primary context: CUDA reports device 0 as current on a thread
 * that never chose one, and switching back to it would create a context (hundreds of MB) on
 * GPU 0 for every rank of a multi-GPU run that never touches GPU 0. */
#ifndef RKV_CUDA_DEVICE_H
#define RKV_CUDA_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Makes `device` current. *prev is the device to make current again on leave, or -1 when
 * nothing needs restoring. Returns 0 (cudaSuccess), or the cudaError_t that kept `device`
 * from being made current (cleared from the thread's last error). */
int rkvi_cuda_device_enter(int device, int *prev);
/* Makes `prev` current again when it is >= 0. */
void rkvi_cuda_device_leave(int prev);

#ifdef __cplusplus
}
#endif

#endif /* RKV_CUDA_DEVICE_H */
