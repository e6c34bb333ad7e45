// Exact maximum-inner-product search over one head's keys: the CPU arithmetic of
// Backend::TopKeys (RoarGraph's build, ALGORITHMS.md §5.1) and of kvcache/ann's exact search, the
// reference every approximate index there is measured against. Header-only, so that kvcache/ann
// (which depends on core only) shares it without linking the backend.
//
// The score of a key for a query is their inner product, which is what attention ranks keys by
// (the softmax scale does not change the order). Results are ordered best first; equal scores
// order by the lower id, so the answer is a pure function of the input, never of threads or of
// sort internals.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace headwise::kernels::cpu {

struct ScoredId {
  uint32_t id = 0;
  float score = 0.0f;

  friend bool operator==(const ScoredId&, const ScoredId&) = default;
};

// The order of every result list: higher score first, ties to the lower id. A function object,
// not a function: the sorts and heaps it is given to inline it, where a function pointer costs a
// call per comparison (perf showed those calls in a graph search's profile).
inline constexpr struct {
  bool operator()(const ScoredId& a, const ScoredId& b) const {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
  }
} BetterThan;

// The sum of term(i) over i < dim in a fixed order (eight interleaved partial sums, then a fixed
// tree), so the same pair of rows gives the same float wherever it is computed; the eight
// independent sums let the compiler vectorize the loop.
template <typename Term>
float FixedOrderSum(size_t dim, const Term& term) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (size_t j = 0; j < 8; ++j) acc[j] += term(i + j);
  }
  for (size_t j = 0; i < dim; ++i, ++j) acc[j] += term(i);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// A bf16 value as its bits (host memory for keys that came from a bf16 device: half the bytes of
// f32, and converting one is exact).
struct Bf16 {
  uint16_t bits = 0;
};

inline float ToF32(float x) {
  return x;
}
inline float ToF32(Bf16 x) {
  return BF16ToF32(x.bits);
}

// Keys are f32 or Bf16; the product is summed in f32 either way, so a Bf16 key scores exactly as
// its f32 conversion does.
template <typename Key>
float InnerProduct(const Key* a, const float* b, size_t dim) {
  return FixedOrderSum(dim, [&](size_t i) { return ToF32(a[i]) * b[i]; });
}

// The min(k, rows) best of keys [rows, dim] (row-major) for each of queries [nq, dim], best
// first: out[i] for query i, the same list whatever nq. Keys are read in tiles, each tile once
// for every query of the batch while it is in cache (one query at a time re-reads all the keys
// from memory per query, which bounds a large batch: RoarGraph's step 1 scores every training
// query against every key); each query keeps its best k in a heap ordered by BetterThan, a total
// order, so its list does not depend on the tiles or on the other queries.
template <typename Key>
void TopKeysOfBatch(const Key* keys, size_t rows, size_t dim, const float* queries, size_t nq,
                    size_t k, std::vector<ScoredId>* out) {
  k = std::min(k, rows);
  // The heap's front is its worst entry, the first to go.
  for (size_t q = 0; q < nq; ++q) {
    out[q].clear();
    out[q].reserve(k);
  }
  if (k == 0) return;
  constexpr size_t kTileBytes = 64 * 1024;
  const size_t tile = std::max<size_t>(1, kTileBytes / (dim * sizeof(Key)));
  for (size_t t0 = 0; t0 < rows; t0 += tile) {
    const size_t t1 = std::min(rows, t0 + tile);
    for (size_t q = 0; q < nq; ++q) {
      std::vector<ScoredId>& heap = out[q];
      const float* query = queries + q * dim;
      for (size_t i = t0; i < t1; ++i) {
        const ScoredId c{static_cast<uint32_t>(i), InnerProduct(keys + i * dim, query, dim)};
        if (heap.size() < k) {
          heap.push_back(c);
          std::push_heap(heap.begin(), heap.end(), BetterThan);
        } else if (BetterThan(c, heap.front())) {
          std::pop_heap(heap.begin(), heap.end(), BetterThan);
          heap.back() = c;
          std::push_heap(heap.begin(), heap.end(), BetterThan);
        }
      }
    }
  }
  for (size_t q = 0; q < nq; ++q) std::sort_heap(out[q].begin(), out[q].end(), BetterThan);
}

// The min(k, rows) best of keys [rows, dim] (row-major) for `query` [dim], best first.
template <typename Key>
std::vector<ScoredId> TopKeysOf(const Key* keys, size_t rows, size_t dim, const float* query,
                                size_t k) {
  std::vector<ScoredId> out;
  TopKeysOfBatch(keys, rows, dim, query, 1, k, &out);
  return out;
}

}  // namespace headwise::kernels::cpu
