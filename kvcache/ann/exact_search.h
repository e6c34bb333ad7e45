// Exact maximum-inner-product search: the reference every approximate index in kvcache/ann is
// measured against (recall@k is "how many of ExactTopK's ids an index returned").
//
// Keys and queries are row-major f32 matrices [rows, dim] (MatrixView, non-owning). The score of a
// key for a query is their inner product, which is what attention ranks keys by (the softmax
// scale does not change the order). Results are ordered best first; equal scores order by the
// lower id, so the answer is a pure function of the input, never of threads or of sort internals.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"

namespace headwise::kvcache::ann {

// A row-major [rows, dim] f32 matrix that someone else owns.
struct MatrixView {
  const float* data = nullptr;
  size_t rows = 0;
  size_t dim = 0;

  const float* Row(size_t i) const { return data + i * dim; }
};

struct ScoredId {
  uint32_t id = 0;
  float score = 0.0f;

  friend bool operator==(const ScoredId&, const ScoredId&) = default;
};

// The order of every result list here: higher score first, ties to the lower id.
inline bool BetterThan(const ScoredId& a, const ScoredId& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

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

inline float InnerProduct(const float* a, const float* b, size_t dim) {
  return FixedOrderSum(dim, [&](size_t i) { return a[i] * b[i]; });
}

// Checks that a matrix view is usable as keys or queries of dimension `dim` (`what` names it in
// the error).
Status CheckMatrix(const MatrixView& m, size_t dim, const char* what);

// The min(k, keys.rows) best keys for one query, best first. keys.rows == 0 or k == 0 gives an
// empty list. Errors: query.size() != keys.dim, dim == 0, null data with rows > 0.
StatusOr<std::vector<ScoredId>> ExactTopK(const MatrixView& keys, std::span<const float> query,
                                          size_t k);

// ExactTopK for every row of `queries` (result[i] for queries row i), spread over num_threads
// std::threads (<= 1: the calling thread only). Each query's result depends on that query only,
// so the answer is the same for every thread count.
StatusOr<std::vector<std::vector<ScoredId>>> ExactTopKBatch(const MatrixView& keys,
                                                            const MatrixView& queries, size_t k,
                                                            int num_threads);

// Fraction of `truth`'s ids that `found` contains (1 when truth is empty): recall@k with
// k = truth.size().
double Recall(std::span<const ScoredId> found, std::span<const ScoredId> truth);

}  // namespace headwise::kvcache::ann
