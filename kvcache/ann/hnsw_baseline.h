// Plain HNSW (hnswlib, Debian's libhnswlib-dev, inner-product space) over one head's keys: the
// off-the-shelf baseline RetrievalAttention compares its attention-aware graph with. HNSW links
// keys by key-to-key proximity only, so on OOD queries it scans far more keys for the same
// recall (the paper's "about 30%").
//
// Built only where CMake found hnswlib (HEADWISE_HAVE_HNSWLIB). hnswlib inserts points from
// several threads in a scheduling-dependent order, so with num_threads > 1 the graph (not its
// quality) changes from run to run; build with one thread where a test needs the same graph.
// hnswlib copies the keys into its own storage.
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

  // Top-k (min(k, N)) by inner product with search queue `ef` (raised to k), and the number of
  // distance computations hnswlib counted for this query. Not thread-safe (hnswlib keeps the
  // queue size and counters in the index).
  StatusOr<AnnSearchResult> Search(std::span<const float> query, size_t k, size_t ef);

  size_t size() const;

 private:
  struct Impl;
  explicit HnswIndex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace headwise::kvcache::ann
