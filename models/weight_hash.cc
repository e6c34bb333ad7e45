#include "models/weight_hash.h"

#include <fmt/format.h>

#include <cstring>
#include <vector>

namespace headwise::models {
namespace {

constexpr uint64_t kMul1 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kMul2 = 0xC2B2AE3D27D4EB4FULL;

uint64_t Rotl(uint64_t x, int r) {
  return (x << r) | (x >> (64 - r));
}

// splitmix64's finalizer: every input bit reaches every output bit.
uint64_t Avalanche(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t Load64(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof(w));  // little-endian hosts (x86-64, AArch64)
  return w;
}

}  // namespace

uint64_t HashBytes(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed + kMul1, seed + kMul2, seed ^ kMul1, seed - kMul2};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int k = 0; k < 4; ++k) {
      lane[k] = Rotl(lane[k] ^ (Load64(p + i + 8 * k) * kMul2), 31) * kMul1;
    }
  }
  // The tail (< 32 bytes), zero-padded to whole words, goes to the lanes in turn.
  unsigned char tail[32] = {};
  std::memcpy(tail, p + i, n - i);
  for (size_t k = 0; 8 * k < n - i; ++k) {
    lane[k] = Rotl(lane[k] ^ (Load64(tail + 8 * k) * kMul2), 31) * kMul1;
  }
  uint64_t h = static_cast<uint64_t>(n) * kMul1;
  for (uint64_t l : lane) h = Avalanche(h ^ l) + kMul2;
  return h;
}

void WeightsHasher::Add(std::string_view name, const int64_t* dims, int rank, const float* values,
                        size_t n) {
  std::vector<int64_t> header{static_cast<int64_t>(name.size()), rank};
  header.insert(header.end(), dims, dims + rank);
  uint64_t h = HashBytes(name.data(), name.size(), count_);
  h = HashBytes(header.data(), header.size() * sizeof(int64_t), h);
  h = HashBytes(values, n * sizeof(float), h);
  state_ = Avalanche(state_ ^ h) + kMul1;
  ++count_;
}

void WeightsHasher::Add(std::string_view name, const kernels::HostTensor& tensor) {
  const Tensor& s = tensor.shape;
  Add(name, s.dims.data(), s.rank, tensor.data, static_cast<size_t>(s.numel()));
}

uint64_t WeightsHasher::Digest() const {
  return Avalanche(state_ ^ count_);
}

std::string HashHex(uint64_t hash) {
  return fmt::format("{:016x}", hash);
}

}  // namespace headwise::models
