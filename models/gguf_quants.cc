#include "models/gguf_quants.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "models/gguf_file.h"

namespace headwise::models {
namespace {

// Blocks are packed byte arrays in the file with no alignment guarantee beyond the tensor's, so
// fields are read with memcpy rather than through struct casts.
inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

constexpr int kQK = 32;     // elements per block of the legacy quants (QK4_0, QK8_0, ...)
constexpr int kQK_K = 256;  // elements per super-block of the K-quants

// block_q4_0 { half d; uint8 qs[16]; }
void DequantQ4_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// block_q4_1 { half d; half m; uint8 qs[16]; }
void DequantQ4_1(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float m = Half(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// block_q5_0 { half d; uint8 qh[4]; uint8 qs[16]; }: the fifth bits of the 32 values in qh.
void DequantQ5_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
    const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>(((qs[j] & 0x0F) | xh0) - 16) * d;
    y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | xh1) - 16) * d;
  }
}

// block_q5_1 { half d; half m; uint8 qh[4]; uint8 qs[16]; }
void DequantQ5_1(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float m = Half(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const uint8_t xh0 = ((qh >> j) << 4) & 0x10;
    const uint8_t xh1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>((qs[j] & 0x0F) | xh0) * d + m;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | xh1) * d + m;
  }
}

// block_q8_0 { half d; int8 qs[32]; }
void DequantQ8_0(const uint8_t* b, float* y) {
  const float d = Half(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// block_q2_K { uint8 scales[16]; uint8 qs[64]; half d; half dmin; }: 16 sub-blocks of 16,
// each with a 4-bit scale and a 4-bit min.
void DequantQ2_K(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = Half(b + 80);
  const float min = Half(b + 82);
  int is = 0;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = scales[is++];
      float dl = d * static_cast<float>(sc & 0xF);
      float ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
      sc = scales[is++];
      dl = d * static_cast<float>(sc & 0xF);
      ml = min * static_cast<float>(sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}

// block_q3_K { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }: 16 sub-blocks of 16
// with 6-bit signed scales packed into 12 bytes.
void DequantQ3_K(const uint8_t* b, float* y) {
  constexpr uint32_t kMask1 = 0x03030303;
  constexpr uint32_t kMask2 = 0x0f0f0f0f;
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const float d_all = Half(b + 108);
  uint32_t aux[4];
  std::memcpy(aux, b + 96, 12);
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kMask2) | (((tmp >> 4) & kMask1) << 4);
  aux[3] = ((aux[1] >> 4) & kMask2) | (((tmp >> 6) & kMask1) << 4);
  aux[0] = (aux[0] & kMask2) | (((tmp >> 0) & kMask1) << 4);
  aux[1] = (aux[1] & kMask2) | (((tmp >> 2) & kMask1) << 4);
  int8_t scales[16];
  std::memcpy(scales, aux, 16);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kQK_K; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * static_cast<float>(scales[is++] - 32);
      for (int l = 0; l < 16; ++l) {
        *y++ = dl * static_cast<float>(((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      }
      dl = d_all * static_cast<float>(scales[is++] - 32);
      for (int l = 0; l < 16; ++l) {
        *y++ = dl * static_cast<float>(((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      }
      shift += 2;
      m <<= 1;
    }
    q += 32;
  }
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block: the first four
// sit in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); the last four take their low 4
// bits from bytes 8-11 and their top 2 bits from the spare high bits of bytes 0-7.
inline void GetScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

// block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }
void DequantQ4_K(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float min = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  int is = 0;
  uint8_t sc, m;
  for (int j = 0; j < kQK_K; j += 64) {
    GetScaleMinK4(is + 0, scales, &sc, &m);
    const float d1 = d * sc;
    const float m1 = min * m;
    GetScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc;
    const float m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    is += 2;
  }
}

// block_q5_K { half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]; }
void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = Half(b);
  const float min = Half(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  int is = 0;
  uint8_t sc, m;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQK_K; j += 64) {
    GetScaleMinK4(is + 0, scales, &sc, &m);
    const float d1 = d * sc;
    const float m1 = min * m;
    GetScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * sc;
    const float m2 = min * m;
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
    ql += 32;
    is += 2;
    u1 <<= 2;
    u2 <<= 2;
  }
}

// block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }
void DequantQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = Half(b + 208);
  for (int n = 0; n < kQK_K; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn FindBlockFn(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kQ4_0:
      return DequantQ4_0;
    case GgmlType::kQ4_1:
      return DequantQ4_1;
    case GgmlType::kQ5_0:
      return DequantQ5_0;
    case GgmlType::kQ5_1:
      return DequantQ5_1;
    case GgmlType::kQ8_0:
      return DequantQ8_0;
    case GgmlType::kQ2_K:
      return DequantQ2_K;
    case GgmlType::kQ3_K:
      return DequantQ3_K;
    case GgmlType::kQ4_K:
      return DequantQ4_K;
    case GgmlType::kQ5_K:
      return DequantQ5_K;
    case GgmlType::kQ6_K:
      return DequantQ6_K;
    default:
      return nullptr;
  }
}

// Decodes blocks [first, last) of `type`.
void DecodeBlocks(uint32_t type, const GgmlTypeTraits& traits, const uint8_t* data, int64_t first,
                  int64_t last, float* out) {
  const uint8_t* src = data + first * traits.type_size;
  float* dst = out + first * traits.block_size;
  const int64_t n = last - first;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = Half(src + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = BF16ToF32(h);
      }
      return;
    default:
      break;
  }
  const BlockFn fn = FindBlockFn(type);
  for (int64_t i = 0; i < n; ++i) fn(src + i * traits.type_size, dst + i * traits.block_size);
}

}  // namespace

bool CanDequantizeGgml(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return true;
    default:
      return FindBlockFn(type) != nullptr;
  }
}

Status DequantizeGgml(uint32_t type, const uint8_t* data, size_t num_bytes, int64_t num_elements,
                      float* out, int max_threads) {
  const GgmlTypeTraits* traits = FindGgmlType(type);
  if (traits == nullptr || !CanDequantizeGgml(type)) {
    return Unimplemented(
        "ggml type {} is not supported (supported: F32, F16, BF16, Q4_0, "
        "Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
        GgmlTypeName(type));
  }
  if (num_elements < 0 || num_elements % traits->block_size != 0) {
    return InvalidArgument("{} elements of type {} are not a whole number of {}-element blocks",
                           num_elements, traits->name, traits->block_size);
  }
  const int64_t blocks = num_elements / traits->block_size;
  if (static_cast<uint64_t>(blocks) * static_cast<uint64_t>(traits->type_size) != num_bytes) {
    return InvalidArgument("{} elements of type {} take {} bytes, got {}", num_elements,
                           traits->name, blocks * traits->type_size, num_bytes);
  }
  // An empty tensor has nothing to decode, and its buffers may be null (memcpy of null is UB
  // even for 0 bytes; found by the gguf fuzzer).
  if (blocks == 0) return Status::Ok();
  // Threads only pay off beyond a few hundred thousand elements.
  constexpr int64_t kElementsPerThread = 1 << 18;
  int threads = max_threads > 0
                    ? max_threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(
      std::min<int64_t>(threads, std::max<int64_t>(1, num_elements / kElementsPerThread)));
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, blocks)));
  if (threads <= 1) {
    DecodeBlocks(type, *traits, data, 0, blocks, out);
    return Status::Ok();
  }
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    const int64_t first = blocks * t / threads;
    const int64_t last = blocks * (t + 1) / threads;
    pool.emplace_back(DecodeBlocks, type, std::cref(*traits), data, first, last, out);
  }
  for (auto& th : pool) th.join();
  return Status::Ok();
}

}  // namespace headwise::models
