// Exact maximum-inner-product search: the reference every approximate index in kvcache/ann is
// measured against (recall@k is "how many of ExactTopK's ids an index returned"). The arithmetic
// and the order of results (best first, ties to the lower id) are kernels/cpu/top_keys.h's.
//
// Keys and queries are row-major matrices [rows, dim] (RowsOf, non-owning): queries f32, keys f32
// or bf16.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/cpu/top_keys.h"
#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {

// A row-major [rows, dim] matrix that someone else owns: f32 (MatrixView), or bf16 keys as they
// came from a bf16 device (Bf16MatrixView), which score exactly as their f32 conversions do.
template <typename T>
struct RowsOf {
  const T* data = nullptr;
  size_t rows = 0;
  size_t dim = 0;

  const T* Row(size_t i) const { return data + i * dim; }
};
using MatrixView = RowsOf<float>;
using Bf16MatrixView = RowsOf<kernels::cpu::Bf16>;

using kernels::cpu::BetterThan;
using kernels::cpu::FixedOrderSum;
using kernels::cpu::InnerProduct;
using kernels::cpu::ScoredId;
using kernels::cpu::ToF32;

// Checks that a matrix view is usable as keys or queries of dimension `dim` (`what` names it in
// the error).
template <typename T>
Status CheckMatrix(const RowsOf<T>& m, size_t dim, const char* what) {
  if (m.dim != dim) return InvalidArgument("{}: dim {} != expected {}", what, m.dim, dim);
  if (dim == 0) return InvalidArgument("{}: dim is 0", what);
  if (m.rows > 0 && m.data == nullptr) {
    return InvalidArgument("{}: {} rows but no data", what, m.rows);
  }
  if (m.rows > UINT32_MAX) {
    return InvalidArgument("{}: {} rows do not fit 32-bit ids", what, m.rows);
  }
  return Status::Ok();
}

// The min(k, keys.rows) best keys for one query, best first. keys.rows == 0 or k == 0 gives an
// empty list. Errors: query.size() != keys.dim, dim == 0, null data with rows > 0.
template <typename T>
StatusOr<std::vector<ScoredId>> ExactTopK(const RowsOf<T>& keys, std::span<const float> query,
                                          size_t k) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopK keys"));
  if (query.size() != keys.dim) {
    return InvalidArgument("ExactTopK: query has {} values, keys have dim {}", query.size(),
                           keys.dim);
  }
  return kernels::cpu::TopKeysOf(keys.data, keys.rows, keys.dim, query.data(), k);
}

// ExactTopK for every row of `queries` (result[i] for queries row i), spread over num_threads
// std::threads (<= 1: the calling thread only). Each query's result depends on that query only,
// so the answer is the same for every thread count.
template <typename T>
StatusOr<std::vector<std::vector<ScoredId>>> ExactTopKBatch(const RowsOf<T>& keys,
                                                            const MatrixView& queries, size_t k,
                                                            int num_threads) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopKBatch keys"));
  HW_RETURN_IF_ERROR(CheckMatrix(queries, keys.dim, "ExactTopKBatch queries"));
  std::vector<std::vector<ScoredId>> result(queries.rows);
  // Blocks of queries share each tile of keys while it is in cache (kernels::cpu::TopKeysOfBatch).
  constexpr size_t kBlock = 16;
  ParallelFor((queries.rows + kBlock - 1) / kBlock, num_threads, [&](size_t b) {
    const size_t first = b * kBlock, n = std::min(kBlock, queries.rows - first);
    kernels::cpu::TopKeysOfBatch(keys.data, keys.rows, keys.dim, queries.Row(first), n, k,
                                 result.data() + first);
  });
  return result;
}

// Fraction of `truth`'s ids that `found` contains (1 when truth is empty): recall@k with
// k = truth.size().
double Recall(std::span<const ScoredId> found, std::span<const ScoredId> truth);

}  // namespace headwise::kvcache::ann
