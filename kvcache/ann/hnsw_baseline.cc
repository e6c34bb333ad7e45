#include "kvcache/ann/hnsw_baseline.h"

#include <hnswlib/hnswlib.h>

#include <algorithm>

#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {

struct HnswIndex::Impl {
  size_t dim = 0;
  size_t rows = 0;
  std::unique_ptr<hnswlib::InnerProductSpace> space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;  // null when rows == 0
};

HnswIndex::HnswIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HnswIndex::HnswIndex(HnswIndex&&) noexcept = default;
HnswIndex& HnswIndex::operator=(HnswIndex&&) noexcept = default;
HnswIndex::~HnswIndex() = default;

size_t HnswIndex::size() const {
  return impl_->rows;
}

StatusOr<HnswIndex> HnswIndex::Build(const MatrixView& keys, const HnswParams& params) {
  HW_RETURN_IF_ERROR(CheckMatrix(keys, keys.dim, "HnswIndex keys"));
  if (params.max_degree == 0 || params.ef_construction == 0) {
    return InvalidArgument("HnswIndex: max_degree ({}) and ef_construction ({}) must be > 0",
                           params.max_degree, params.ef_construction);
  }
  auto impl = std::make_unique<Impl>();
  impl->dim = keys.dim;
  impl->rows = keys.rows;
  impl->space = std::make_unique<hnswlib::InnerProductSpace>(keys.dim);
  if (keys.rows > 0) {
    impl->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        impl->space.get(), keys.rows, params.max_degree, params.ef_construction, params.seed);
    // The first point alone, so that parallel inserts always find an entry point.
    impl->hnsw->addPoint(keys.Row(0), 0);
    ParallelFor(keys.rows - 1, params.num_threads, [&](size_t i) {
      impl->hnsw->addPoint(keys.Row(i + 1), static_cast<hnswlib::labeltype>(i + 1));
    });
  }
  return HnswIndex(std::move(impl));
}

StatusOr<AnnSearchResult> HnswIndex::Search(std::span<const float> query, size_t k, size_t ef) {
  if (query.size() != impl_->dim) {
    return InvalidArgument("HnswIndex::Search: query has {} values, keys have dim {}", query.size(),
                           impl_->dim);
  }
  AnnSearchResult result;
  if (impl_->rows == 0 || k == 0) return result;
  k = std::min(k, impl_->rows);
  impl_->hnsw->setEf(std::max(ef, k));
  const long before = impl_->hnsw->metric_distance_computations;
  auto heap = impl_->hnsw->searchKnn(query.data(), k);
  result.scanned = static_cast<size_t>(impl_->hnsw->metric_distance_computations - before);
  // hnswlib's inner-product distance is 1 - ip; the heap pops the worst first.
  while (!heap.empty()) {
    result.top.push_back({static_cast<uint32_t>(heap.top().second), 1.0f - heap.top().first});
    heap.pop();
  }
  std::sort(result.top.begin(), result.top.end(), BetterThan);
  return result;
}

}  // namespace headwise::kvcache::ann
