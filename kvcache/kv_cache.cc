#include "kvcache/kv_cache.h"

#include <utility>

namespace headwise::kvcache {

HeadClassLayout HeadClassLayout::Dense(int num_layers, int num_kv_heads) {
  HeadClassLayout layout;
  std::vector<int> heads(static_cast<size_t>(num_kv_heads));
  for (int h = 0; h < num_kv_heads; ++h) heads[static_cast<size_t>(h)] = h;
  layout.classes.assign(static_cast<size_t>(num_layers), {heads});
  return layout;
}

Status HeadClassLayout::Validate(int num_layers, int num_kv_heads) const {
  if (static_cast<int>(classes.size()) != num_layers) {
    return InvalidArgument("head classes cover {} layers, the model has {}", classes.size(),
                           num_layers);
  }
  for (int l = 0; l < num_layers; ++l) {
    std::vector<int> seen(static_cast<size_t>(num_kv_heads), 0);
    for (const auto& cls : classes[static_cast<size_t>(l)]) {
      if (cls.empty()) return InvalidArgument("layer {}: empty KV-head class", l);
      for (int h : cls) {
        if (h < 0 || h >= num_kv_heads) {
          return InvalidArgument("layer {}: KV head {} out of range [0, {})", l, h, num_kv_heads);
        }
        if (seen[static_cast<size_t>(h)]++) {
          return InvalidArgument("layer {}: KV head {} in two classes", l, h);
        }
      }
    }
    for (int h = 0; h < num_kv_heads; ++h) {
      if (!seen[static_cast<size_t>(h)])
        return InvalidArgument("layer {}: KV head {} in no class", l, h);
    }
  }
  return Status::Ok();
}

KvCache::KvCache(const KvCacheConfig& config, HeadClassLayout layout, kernels::Backend& backend)
    : config_(config), layout_(std::move(layout)), pages_(config.num_pages) {
  Status valid = layout_.Validate(config.num_layers, config.num_kv_heads);
  HW_CHECK(valid.ok(), "{}", valid.message());
  HW_CHECK(config.page_size > 0 && config.head_dim > 0, "page_size {} head_dim {}",
           config.page_size, config.head_dim);
  head_class_.assign(static_cast<size_t>(config.num_layers),
                     std::vector<int>(static_cast<size_t>(config.num_kv_heads)));
  head_index_ = head_class_;
  for (size_t l = 0; l < layout_.classes.size(); ++l) {
    for (size_t c = 0; c < layout_.classes[l].size(); ++c) {
      const auto& heads = layout_.classes[l][c];
      for (size_t i = 0; i < heads.size(); ++i) {
        head_class_[l][static_cast<size_t>(heads[i])] = static_cast<int>(c);
        head_index_[l][static_cast<size_t>(heads[i])] = static_cast<int>(i);
      }
    }
  }
  // Storage type is the backend's choice (f32 on the CPU, bf16 on CUDA).
  const DType dtype = backend.device() == Device::kCpu ? DType::kF32 : DType::kBF16;
  k_pool_ = backend.Allocate(dtype, {config.num_pages, config.page_size, config.head_dim});
  v_pool_ = backend.Allocate(dtype, {config.num_pages, config.page_size, config.head_dim});
}

kernels::KvPoolView KvCache::pool_view() const {
  return kernels::KvPoolView{k_pool_.view(), v_pool_.view(), config_.page_size};
}

int KvCache::PagesToGrow(int from_tokens, int to_tokens) const {
  const int ps = config_.page_size;
  const int from_pages = (from_tokens + ps - 1) / ps;
  const int to_pages = (to_tokens + ps - 1) / ps;
  if (to_pages <= from_pages) return 0;
  // Dense classes: every KV head of every layer grows by the same number of pages.
  return (to_pages - from_pages) * config_.num_layers * config_.num_kv_heads;
}

size_t KvCache::PageBytes(const KvCacheConfig& config, DType dtype) {
  return 2 * static_cast<size_t>(config.page_size) * static_cast<size_t>(config.head_dim) *
         DTypeSize(dtype);
}

SequenceKv::SequenceKv(KvCache& cache) : cache_(&cache) {
  const auto& classes = cache.layout().classes;
  tables_.resize(classes.size());
  for (size_t l = 0; l < classes.size(); ++l) tables_[l].resize(classes[l].size());
}

SequenceKv::~SequenceKv() {
  Release();
}

SequenceKv::SequenceKv(SequenceKv&& o) noexcept
    : cache_(o.cache_), capacity_tokens_(o.capacity_tokens_), tables_(std::move(o.tables_)) {
  o.capacity_tokens_ = 0;
  o.tables_.clear();
}

Status SequenceKv::Reserve(int num_tokens) {
  if (num_tokens <= capacity_tokens_) return Status::Ok();
  const int needed = cache_->PagesToGrow(capacity_tokens_, num_tokens);
  std::vector<int32_t> fresh;
  if (!cache_->pages().Allocate(needed, fresh)) {
    return ResourceExhausted("KV cache: {} pages needed, {} free of {}", needed,
                             cache_->pages().num_free(), cache_->pages().num_pages());
  }
  const int ps = cache_->config().page_size;
  const int to_pages = (num_tokens + ps - 1) / ps;
  size_t next = 0;
  for (size_t l = 0; l < tables_.size(); ++l) {
    for (size_t c = 0; c < tables_[l].size(); ++c) {
      const size_t heads = cache_->layout().classes[l][c].size();
      auto& table = tables_[l][c];
      while (table.size() < static_cast<size_t>(to_pages) * heads) table.push_back(fresh[next++]);
    }
  }
  HW_CHECK_EQ(next, fresh.size());
  capacity_tokens_ = num_tokens;
  return Status::Ok();
}

void SequenceKv::Release() {
  for (auto& layer : tables_) {
    for (auto& table : layer) {
      cache_->pages().Free(table);
      table.clear();
    }
  }
  capacity_tokens_ = 0;
}

int SequenceKv::num_pages_held() const {
  size_t n = 0;
  for (const auto& layer : tables_)
    for (const auto& table : layer) n += table.size();
  return static_cast<int>(n);
}

int32_t SequenceKv::Page(int layer, int kv_head, int logical_page) const {
  const int cls = cache_->ClassOf(layer, kv_head);
  const size_t heads =
      cache_->layout().classes[static_cast<size_t>(layer)][static_cast<size_t>(cls)].size();
  const auto& table = tables_[static_cast<size_t>(layer)][static_cast<size_t>(cls)];
  const size_t i = static_cast<size_t>(logical_page) * heads +
                   static_cast<size_t>(cache_->IndexInClass(layer, kv_head));
  HW_CHECK_LT(i, table.size());
  return table[i];
}

int32_t SequenceKv::Slot(int layer, int kv_head, int position) const {
  const int ps = cache_->config().page_size;
  return Page(layer, kv_head, position / ps) * ps + position % ps;
}

}  // namespace headwise::kvcache
