#include "kvcache/ann/exact_search.h"

#include <unordered_set>

namespace headwise::kvcache::ann {

double Recall(std::span<const ScoredId> found, std::span<const ScoredId> truth) {
  if (truth.empty()) return 1.0;
  std::unordered_set<uint32_t> found_ids;
  for (const ScoredId& s : found) found_ids.insert(s.id);
  size_t hits = 0;
  for (const ScoredId& s : truth) hits += found_ids.count(s.id);
  return static_cast<double>(hits) / static_cast<double>(truth.size());
}

}  // namespace headwise::kvcache::ann
