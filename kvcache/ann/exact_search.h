// Exact maximum-inner-product search: the reference every approximate index in kvcache/ann is
// measured against (recall@k is "how many of ExactTopK's ids an index returned"). The arithmetic
// and the order of results (best first, ties to the lower id) are kernels/cpu/top_keys.h's.
//
// Keys and queries are row-major f32 matrices [rows, dim] (MatrixView, non-owning).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/top_keys.h"

namespace headwise::kvcache::ann {

// A row-major [rows, dim] f32 matrix that someone else owns.
struct MatrixView {
  const float* data = nullptr;
  size_t rows = 0;
  size_t dim = 0;

  const float* Row(size_t i) const { return data + i * dim; }
};

using kernels::cpu::BetterThan;
using kernels::cpu::FixedOrderSum;
using kernels::cpu::InnerProduct;
using kernels::cpu::ScoredId;

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
