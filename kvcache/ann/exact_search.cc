#include "kvcache/ann/exact_search.h"

#include <unordered_set>

#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {

Status CheckMatrix(const MatrixView& m, size_t dim, const char* what) {
  if (m.dim != dim) return InvalidArgument("{}: dim {} != expected {}", what, m.dim, dim);
  if (dim == 0) return InvalidArgument("{}: dim is 0", what);
  if (m.rows > 0 && m.data == nullptr)
    return InvalidArgument("{}: {} rows but no data", what, m.rows);
  if (m.rows > UINT32_MAX)
    return InvalidArgument("{}: {} rows do not fit 32-bit ids", what, m.rows);
  return Status::Ok();
}

StatusOr<std::vector<ScoredId>> ExactTopK(const MatrixView& keys, std::span<const float> query,
                                          size_t k) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopK keys"));
  if (query.size() != keys.dim) {
    return InvalidArgument("ExactTopK: query has {} values, keys have dim {}", query.size(),
                           keys.dim);
  }
  return kernels::cpu::TopKeysOf(keys.data, keys.rows, keys.dim, query.data(), k);
}

StatusOr<std::vector<std::vector<ScoredId>>> ExactTopKBatch(const MatrixView& keys,
                                                            const MatrixView& queries, size_t k,
                                                            int num_threads) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopKBatch keys"));
  HW_RETURN_IF_ERROR(CheckMatrix(queries, keys.dim, "ExactTopKBatch queries"));
  std::vector<std::vector<ScoredId>> result(queries.rows);
  ParallelFor(queries.rows, num_threads, [&](size_t q) {
    result[q] = kernels::cpu::TopKeysOf(keys.data, keys.rows, keys.dim, queries.Row(q), k);
  });
  return result;
}

double Recall(std::span<const ScoredId> found, std::span<const ScoredId> truth) {
  if (truth.empty()) return 1.0;
  std::unordered_set<uint32_t> found_ids;
  for (const ScoredId& s : found) found_ids.insert(s.id);
  size_t hits = 0;
  for (const ScoredId& s : truth) hits += found_ids.count(s.id);
  return static_cast<double>(hits) / static_cast<double>(truth.size());
}

}  // namespace headwise::kvcache::ann
