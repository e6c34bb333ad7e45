// Plain HNSW (hnswlib, Debian's libhnswlib-dev, inner-product space) over one head's keys: the
// off-the-shelf baseline RetrievalAttention compares its attention-aware graph with. HNSW links
// keys by key-to-key proximity only, so on OOD queries it scans far more keys for the same
// recall (the paper's "about 30%").
//
// Built only where CMake found hnswlib (HEADWISE_HAVE_HNSWLIB). hnswlib inserts points from
// several threads in a scheduling-dependent order, so with num_threads > 1 the graph (not its
// quality) changes from run to run; build with one thread where a test needs the same graph.
// hnswlib copies the keys into its own storage.
//
// `scanned` counts the inner products a search computed, as RoarGraph's does, through a counting
// distance space. (hnswlib's own metric_distance_computations adds the whole neighbour list of
// every expanded node on the bottom layer, visited neighbours included: on Qwen2.5-Coder-0.5B's
// keys at 4K tokens it read 2.5x to 9.9x the distances computed.)
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "core/status.h"
#include "kvcache/ann/exact_search.h"
#include "kvcache/ann/roar_graph.h"

namespace headwise::kvcache::ann {

struct HnswParams {
  size_t max_degree = 16;        // hnswlib M (2*M on the bottom layer)
  size_t ef_construction = 200;  // build queue
  size_t seed = 100;             // level generator
  int num_threads = 1;
};

class HnswIndex {
 public:
  // Errors: dim 0, max_degree 0, ef_construction 0. N == 0 gives an empty index.
  static StatusOr<HnswIndex> Build(const MatrixView& keys, const HnswParams& params);

  HnswIndex(HnswIndex&&) noexcept;
  HnswIndex& operator=(HnswIndex&&) noexcept;
  ~HnswIndex();

  // The search queue of later searches (hnswlib's ef; a search raises it to its k). hnswlib keeps
  // it in the index: not while searches run. Default 10.
  void SetEf(size_t ef);
  // Top-k (min(k, N)) by inner product, and the inner products computed for this query. Safe to
  // call from several threads at once (not with SetEf).
  StatusOr<AnnSearchResult> Search(std::span<const float> query, size_t k) const;

  size_t size() const;

 private:
  struct Impl;
  explicit HnswIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace headwise::kvcache::ann
