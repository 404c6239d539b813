/* KV dtypes: sizes, names, f16/bf16 <-> f32 conversions (round to nearest even), the KV block
 * layout arithmetic and block-table helpers. */
#include <math.h>
#include <string.h>

#include "rkv_internal.h"

size_t rkv_dtype_size(rkv_dtype dt) {
  switch (dt) {
    case RKV_DTYPE_F32:
      return 4;
    case RKV_DTYPE_F16:
      return 2;
    case RKV_DTYPE_BF16:
      return 2;
    default:
      return 0;
  }
}

const char *rkv_dtype_name(rkv_dtype dt) {
  switch (dt) {
    case RKV_DTYPE_F32:
      return "f32";
    case RKV_DTYPE_F16:
      return "f16";
    case RKV_DTYPE_BF16:
      return "bf16";
    default:
      return "invalid";
  }
}

rkv_status rkv_dtype_parse(const char *name, rkv_dtype *out) {
  if (!name || !out) return RKV_ERR_INVALID_ARG;
  static const struct {
    const char *name;
    rkv_dtype dt;
  } kNames[] = {{"f32", RKV_DTYPE_F32},   {"float32", RKV_DTYPE_F32},  {"fp32", RKV_DTYPE_F32},
                {"f16", RKV_DTYPE_F16},   {"fp16", RKV_DTYPE_F16},     {"float16", RKV_DTYPE_F16},
                {"bf16", RKV_DTYPE_BF16}, {"bfloat16", RKV_DTYPE_BF16}};
  for (size_t i = 0; i < sizeof kNames / sizeof kNames[0]; i++) {
    if (strcmp(name, kNames[i].name) == 0) {
      *out = kNames[i].dt;
      return RKV_OK;
    }
  }
  return RKV_ERR_INVALID_ARG;
}

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t rkv_f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

float rkv_bf16_to_f32(uint16_t h) {
  return bits_f32((uint32_t)h << 16);
}

uint16_t rkv_f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow (>= 65520) -> inf */
  if (a < 0x38800000u) {                                   /* subnormal or zero in f16 */
    /* value = a_float; f16 subnormal unit is 2^-24: round(value * 2^24) to nearest even. */
    float v = bits_f32(a) * 16777216.0f;
    float r = nearbyintf(v);
    return (uint16_t)(sign | (uint32_t)r);
  }
  uint32_t exp = ((a >> 23) - 112) << 10;
  uint32_t mant = (a >> 13) & 0x3ffu;
  uint32_t h = exp | mant;
  uint32_t rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

float rkv_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float v = (float)mant * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

float rkv_dtype_load(rkv_dtype dt, const void *base, size_t i) {
  switch (dt) {
    case RKV_DTYPE_F32:
      return ((const float *)base)[i];
    case RKV_DTYPE_F16:
      return rkv_f16_to_f32(((const uint16_t *)base)[i]);
    case RKV_DTYPE_BF16:
      return rkv_bf16_to_f32(((const uint16_t *)base)[i]);
    default:
      return 0.0f;
  }
}

void rkv_dtype_store(rkv_dtype dt, void *base, size_t i, float v) {
  switch (dt) {
    case RKV_DTYPE_F32:
      ((float *)base)[i] = v;
      break;
    case RKV_DTYPE_F16:
      ((uint16_t *)base)[i] = rkv_f32_to_f16(v);
      break;
    case RKV_DTYPE_BF16:
      ((uint16_t *)base)[i] = rkv_f32_to_bf16(v);
      break;
    default:
      break;
  }
}

size_t rkv_kv_block_bytes(const rkv_kv_layout *l) {
  if (!l) return 0;
  return 2u * (size_t)l->block_size * l->head_dim * rkv_dtype_size(l->dtype);
}

size_t rkv_kv_k_offset(const rkv_kv_layout *l, uint32_t offset) {
  return (size_t)offset * l->head_dim * rkv_dtype_size(l->dtype);
}

size_t rkv_kv_v_offset(const rkv_kv_layout *l, uint32_t offset) {
  return ((size_t)l->block_size + offset) * l->head_dim * rkv_dtype_size(l->dtype);
}

int64_t rkv_block_table_stream_len(const rkv_block_table *t, int32_t s) {
  if (!t || s < 0 || s >= t->num_streams) return -1;
  int32_t nb = t->indptr[s + 1] - t->indptr[s];
  if (nb == 0) return 0;
  return (int64_t)(nb - 1) * t->block_size + t->last_len[s];
}
