#include "kvcache/ann/hnsw_baseline.h"

#include <hnswlib/hnswlib.h>

#include <algorithm>

#include "kvcache/ann/parallel.h"

namespace headwise::kvcache::ann {
namespace {

// hnswlib's inner-product space with every distance computation counted, per thread.
class CountingIpSpace : public hnswlib::SpaceInterface<float> {
 public:
  explicit CountingIpSpace(size_t dim) : inner_(dim) {
    param_.inner = inner_.get_dist_func();
    param_.inner_param = inner_.get_dist_func_param();
  }
  size_t get_data_size() override { return inner_.get_data_size(); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return &Counted; }
  void* get_dist_func_param() override { return &param_; }
  // Distances computed on the calling thread so far.
  static size_t count() { return count_; }

 private:
  struct Param {
    hnswlib::DISTFUNC<float> inner;
    void* inner_param;
  };
  static float Counted(const void* a, const void* b, const void* p) {
    ++count_;
    const auto* param = static_cast<const Param*>(p);
    return param->inner(a, b, param->inner_param);
  }
  static thread_local size_t count_;
  hnswlib::InnerProductSpace inner_;
  Param param_;
};
thread_local size_t CountingIpSpace::count_ = 0;

}  // namespace

struct HnswIndex::Impl {
  size_t dim = 0;
  size_t rows = 0;
  std::unique_ptr<CountingIpSpace> space;
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
  impl->space = std::make_unique<CountingIpSpace>(keys.dim);
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

void HnswIndex::SetEf(size_t ef) {
  if (impl_->hnsw) impl_->hnsw->setEf(ef);
}

StatusOr<AnnSearchResult> HnswIndex::Search(std::span<const float> query, size_t k) const {
  if (query.size() != impl_->dim) {
    return InvalidArgument("HnswIndex::Search: query has {} values, keys have dim {}", query.size(),
                           impl_->dim);
  }
  AnnSearchResult result;
  if (impl_->rows == 0 || k == 0) return result;
  k = std::min(k, impl_->rows);
  const size_t before = CountingIpSpace::count();
  auto heap = impl_->hnsw->searchKnn(query.data(), k);
  result.scanned = CountingIpSpace::count() - before;
  // hnswlib's inner-product distance is 1 - ip; the heap pops the worst first.
  while (!heap.empty()) {
    result.top.push_back({static_cast<uint32_t>(heap.top().second), 1.0f - heap.top().first});
    heap.pop();
  }
  std::sort(result.top.begin(), result.top.end(), BetterThan);
  return result;
}

}  // namespace headwise::kvcache::ann
