// Device-side dtype loads shared by the library's kernels (attention, eviction): KV rows are
// f32, f16 or bf16 in the pool and every kernel computes in f32 or wider. CUDA sources only.
#ifndef RKV_CUDA_DTYPE_CUH
#define RKV_CUDA_DTYPE_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace rkvi_cuda {

__device__ __forceinline__ float to_f32(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// 8 consecutive elements as f32, from a 16-byte aligned shared or global address (one uint4
// for 16-bit types, two float4 for f32).
template <typename T>
__device__ __forceinline__ void load8(const T *p, float out[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = *reinterpret_cast<const float4 *>(p);
    const float4 b = *reinterpret_cast<const float4 *>(p + 4);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  } else {
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const T *h = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = to_f32(h[i]);
  }
}

}  // namespace rkvi_cuda

#endif  // RKV_CUDA_DTYPE_CUH
