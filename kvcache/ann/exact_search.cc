#include "kvcache/ann/exact_search.h"

#include <algorithm>
#include <unordered_set>

#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {

float InnerProduct(const float* a, const float* b, size_t dim) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= dim; i += 8) {
    for (size_t j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (size_t j = 0; i < dim; ++i, ++j) acc[j] += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

Status CheckMatrix(const MatrixView& m, size_t dim, const char* what) {
  if (m.dim != dim) return InvalidArgument("{}: dim {} != expected {}", what, m.dim, dim);
  if (dim == 0) return InvalidArgument("{}: dim is 0", what);
  if (m.rows > 0 && m.data == nullptr)
    return InvalidArgument("{}: {} rows but no data", what, m.rows);
  if (m.rows > UINT32_MAX)
    return InvalidArgument("{}: {} rows do not fit 32-bit ids", what, m.rows);
  return Status::Ok();
}

namespace {

// The checked inputs' top-k; `scores` is scratch of keys.rows entries.
std::vector<ScoredId> TopK(const MatrixView& keys, const float* query, size_t k,
                           std::vector<ScoredId>& scores) {
  k = std::min(k, keys.rows);
  scores.resize(keys.rows);
  for (size_t i = 0; i < keys.rows; ++i) {
    scores[i] = {static_cast<uint32_t>(i), InnerProduct(keys.Row(i), query, keys.dim)};
  }
  std::partial_sort(scores.begin(), scores.begin() + static_cast<ptrdiff_t>(k), scores.end(),
                    BetterThan);
  return std::vector<ScoredId>(scores.begin(), scores.begin() + static_cast<ptrdiff_t>(k));
}

}  // namespace

StatusOr<std::vector<ScoredId>> ExactTopK(const MatrixView& keys, std::span<const float> query,
                                          size_t k) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopK keys"));
  if (query.size() != keys.dim) {
    return InvalidArgument("ExactTopK: query has {} values, keys have dim {}", query.size(),
                           keys.dim);
  }
  std::vector<ScoredId> scratch;
  return TopK(keys, query.data(), k, scratch);
}

StatusOr<std::vector<std::vector<ScoredId>>> ExactTopKBatch(const MatrixView& keys,
                                                            const MatrixView& queries, size_t k,
                                                            int num_threads) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "ExactTopKBatch keys"));
  HW_RETURN_IF_ERROR(CheckMatrix(queries, keys.dim, "ExactTopKBatch queries"));
  std::vector<std::vector<ScoredId>> result(queries.rows);
  // One scratch per query keeps items independent; it is N floats, small next to the scan.
  ParallelFor(queries.rows, num_threads, [&](size_t q) {
    std::vector<ScoredId> scratch;
    result[q] = TopK(keys, queries.Row(q), k, scratch);
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
