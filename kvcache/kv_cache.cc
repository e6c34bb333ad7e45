#include "kvcache/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <utility>

namespace headwise::kvcache {

const Retention& HeadClassLayout::RetentionOf(int layer, int cls) const {
  static const Retention kFull;
  if (retention.empty()) return kFull;
  return retention[static_cast<size_t>(layer)][static_cast<size_t>(cls)];
}

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
  if (retention.empty()) return Status::Ok();
  if (retention.size() != classes.size()) {
    return InvalidArgument("retention covers {} layers, the classes {}", retention.size(),
                           classes.size());
  }
  const Retention* ring = nullptr;
  const Retention* compress = nullptr;
  for (int l = 0; l < num_layers; ++l) {
    const auto& r = retention[static_cast<size_t>(l)];
    if (r.size() != classes[static_cast<size_t>(l)].size()) {
      return InvalidArgument("layer {}: retention for {} classes, {} classes", l, r.size(),
                             classes[static_cast<size_t>(l)].size());
    }
    for (const Retention& c : r) {
      if (c.reindex && !c.ring) {
        return InvalidArgument("layer {}: only ring classes may re-index positions", l);
      }
      if (c.compress_once) {
        if (c.ring || c.sink < 0 || c.window < 1) {
          return InvalidArgument(
              "layer {}: compress-once sink {} window {}: need sink >= 0, "
              "window >= 1, no ring",
              l, c.sink, c.window);
        }
        if (compress != nullptr && (compress->sink != c.sink || compress->window != c.window ||
                                    compress->compensation != c.compensation ||
                                    compress->compensation_by_count != c.compensation_by_count)) {
          return InvalidArgument("compress-once classes of different rules are not supported");
        }
        compress = &c;
      }
      if (!c.ring) continue;
      if (c.sink < 0 || c.window < 1) {
        return InvalidArgument("layer {}: ring sink {} window {}: need sink >= 0, window >= 1", l,
                               c.sink, c.window);
      }
      if (ring != nullptr && (ring->sink != c.sink || ring->window != c.window)) {
        return InvalidArgument(
            "ring classes of different sizes (sink {} window {} and sink {} "
            "window {}) are not supported",
            ring->sink, ring->window, c.sink, c.window);
      }
      ring = &c;
    }
  }
  return Status::Ok();
}

KvCache::KvCache(const KvCacheConfig& config, HeadClassLayout layout, kernels::Backend& backend)
    : config_(config), layout_(std::move(layout)) {
  static std::atomic<uint64_t> next_instance{1};
  instance_id_ = next_instance++;
  Status valid = layout_.Validate(config.num_layers, config.num_kv_heads);
  HW_CHECK(valid.ok(), "{}", valid.message());
  HW_CHECK(config.page_size > 0 && config.head_dim > 0, "page_size {} head_dim {}",
           config.page_size, config.head_dim);
  const auto layers = static_cast<size_t>(config.num_layers);
  const auto heads = static_cast<size_t>(config.num_kv_heads);
  head_class_.assign(layers, std::vector<int>(heads));
  head_index_ = head_class_;
  page_index_ = head_class_;
  is_ring_.assign(layers, std::vector<char>(heads, 0));
  is_compressed_ = is_ring_;
  is_reindexed_ = is_ring_;
  for (size_t l = 0; l < layers; ++l) {
    for (size_t c = 0; c < layout_.classes[l].size(); ++c) {
      const auto& cls = layout_.classes[l][c];
      const Retention& r = layout_.RetentionOf(static_cast<int>(l), static_cast<int>(c));
      if (r.ring) ring_retention_ = r;
      if (r.compress_once) compress_retention_ = r;
      for (size_t i = 0; i < cls.size(); ++i) {
        const auto h = static_cast<size_t>(cls[i]);
        head_class_[l][h] = static_cast<int>(c);
        head_index_[l][h] = static_cast<int>(i);
        is_ring_[l][h] = r.ring ? 1 : 0;
        is_compressed_[l][h] = r.compress_once ? 1 : 0;
        is_reindexed_[l][h] = r.reindex ? 1 : 0;
        num_reindexed_heads_ += r.reindex ? 1 : 0;
        // Class by class, heads in class order, within their kind of block.
        page_index_[l][h] = r.ring            ? ring_pages_per_block_++
                            : r.compress_once ? comp_.pages++
                                              : full_.pages++;
      }
    }
  }
  HW_CHECK(config.num_pages >= 0, "num_pages {}", config.num_pages);
  int ring_region = 0;
  if (ring_pages_per_block_ > 0) {
    const int ps = config.page_size;
    HW_CHECK(config.max_ring_sequences > 0 && config.ring_chunk_tokens >= 0,
             "ring classes need max_ring_sequences ({}) and ring_chunk_tokens ({})",
             config.max_ring_sequences, config.ring_chunk_tokens);
    sink_blocks_ = (ring_retention_.sink + ps - 1) / ps;
    // Past the sinks, position p lands on (p - sink pages' tokens) mod (window_blocks * ps) of
    // the window's pages: tokens that are live together (the window plus a step's new ones) must
    // span at most that many positions.
    window_blocks_ = (ring_retention_.window + config.ring_chunk_tokens + ps - 1) / ps;
    num_ring_blocks_ = config.max_ring_sequences * (sink_blocks_ + window_blocks_);
    ring_region = num_ring_blocks_ * ring_pages_per_block_;
    HW_CHECK_EQ(ring_region, RingRegionPages(config, layout_));
    HW_CHECK(ring_region <= config.num_pages, "ring region of {} pages > pool of {}", ring_region,
             config.num_pages);
  }
  // Full blocks from the first page up, comp blocks from the last shared page down (kv_cache.h).
  shared_pages_ = config.num_pages - ring_region;
  full_.Init(full_.pages > 0 ? shared_pages_ / full_.pages : 0, /*lowest=*/true);
  comp_.Init(comp_.pages > 0 ? shared_pages_ / comp_.pages : 0, /*lowest=*/false);
  comp_.base = shared_pages_ - comp_.count * comp_.pages;
  // With both kinds every shared page is some block's (the leftover of one kind's tiling is
  // shorter than a block of the other); with one, its whole blocks.
  if (full_.count == 0 || comp_.count == 0) {
    shared_pages_ = full_.count * full_.pages + comp_.count * comp_.pages;
  }
  blocks_.resize(static_cast<size_t>(full_.count));
  const int ring_base = config.num_pages - ring_region;
  for (size_t l = 0; l < layers; ++l) {
    for (size_t h = 0; h < heads; ++h) {
      if (is_ring_[l][h]) page_index_[l][h] += ring_base;
      if (is_compressed_[l][h]) page_index_[l][h] += comp_.base;
    }
  }
  for (int32_t b = num_ring_blocks_ - 1; b >= 0; --b) free_ring_ids_.push_back(b);
  // Storage type is the backend's choice (f32 on the CPU, bf16 on CUDA).
  const DType dtype = backend.kv_dtype();
  k_pool_ = backend.Allocate(dtype, {config.num_pages, config.page_size, config.head_dim});
  v_pool_ = backend.Allocate(dtype, {config.num_pages, config.page_size, config.head_dim});
}

kernels::KvPoolView KvCache::pool_view() const {
  return kernels::KvPoolView{k_pool_.view(), v_pool_.view(), config_.page_size};
}

int KvCache::RingRegionPages(const KvCacheConfig& config, const HeadClassLayout& layout) {
  int ring_heads = 0;
  const Retention* ring = nullptr;
  for (size_t l = 0; l < layout.classes.size(); ++l) {
    for (size_t c = 0; c < layout.classes[l].size(); ++c) {
      const Retention& r = layout.RetentionOf(static_cast<int>(l), static_cast<int>(c));
      if (!r.ring) continue;
      ring = &r;
      ring_heads += static_cast<int>(layout.classes[l][c].size());
    }
  }
  if (ring == nullptr) return 0;
  const int ps = config.page_size;
  const int blocks_per_sequence =
      (ring->sink + ps - 1) / ps + (ring->window + config.ring_chunk_tokens + ps - 1) / ps;
  return config.max_ring_sequences * blocks_per_sequence * ring_heads;
}

int KvCache::FullPagesPerBlock(const HeadClassLayout& layout) {
  int full = 0;
  for (size_t l = 0; l < layout.classes.size(); ++l) {
    for (size_t c = 0; c < layout.classes[l].size(); ++c) {
      if (!layout.RetentionOf(static_cast<int>(l), static_cast<int>(c)).ring) {
        full += static_cast<int>(layout.classes[l][c].size());
      }
    }
  }
  return full;
}

size_t KvCache::PageBytes(const KvCacheConfig& config, DType dtype) {
  return 2 * static_cast<size_t>(config.page_size) * static_cast<size_t>(config.head_dim) *
         DTypeSize(dtype);
}

int KvCache::max_tokens_per_sequence() const {
  const int per_page = full_.pages + comp_.pages;
  if (per_page == 0) return std::numeric_limits<int>::max();
  // n logical pages fit when n full blocks from the bottom and n comp blocks from the top do not
  // meet (kv_cache.h), i.e. n * per_page <= the shared pages.
  const int shared = config_.num_pages - num_ring_blocks_ * ring_pages_per_block_;
  return shared / per_page * config_.page_size;
}

namespace {

// The ids [first, last) of blocks of `pages` pages from `base` that overlap pages [lo, hi).
std::pair<int32_t, int32_t> OverlappingIds(int lo, int hi, int base, int pages, int count) {
  if (pages == 0 || count == 0) return {0, 0};
  const auto floor_div = [](int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  return {std::max(0, floor_div(lo - base, pages)),
          std::min(count, floor_div(hi - base + pages - 1, pages))};
}

}  // namespace

void KvCache::BlockKind::Init(int num_ids, bool lowest) {
  count = num_ids;
  lowest_first = lowest;
  held.assign(static_cast<size_t>(count), 0);
  overlapped.assign(static_cast<size_t>(count), 0);
  queued.assign(static_cast<size_t>(count), 1);
  heap.resize(static_cast<size_t>(count));
  for (int32_t id = 0; id < count; ++id) heap[static_cast<size_t>(id)] = lowest_first ? -id : id;
  std::make_heap(heap.begin(), heap.end());
}

// The heap is a max-heap of keys: -id when the lowest id comes first, id when the highest does.
void KvCache::BlockKind::Queue(int32_t id) {
  if (queued[static_cast<size_t>(id)]) return;
  queued[static_cast<size_t>(id)] = 1;
  heap.push_back(lowest_first ? -id : id);
  std::push_heap(heap.begin(), heap.end());
}

std::optional<int32_t> KvCache::BlockKind::PopReady() {
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    const int32_t id = lowest_first ? -heap.back() : heap.back();
    heap.pop_back();
    queued[static_cast<size_t>(id)] = 0;
    if (Ready(id)) return id;  // else queued again once it is ready
  }
  return std::nullopt;
}

std::optional<int32_t> KvCache::Take(BlockKind& kind, BlockKind& other) {
  const std::optional<int32_t> id = kind.PopReady();
  if (!id) return std::nullopt;
  kind.held[static_cast<size_t>(*id)] = 1;
  ++kind.num_held;
  const int lo = kind.base + *id * kind.pages;
  const auto [first, last] =
      OverlappingIds(lo, lo + kind.pages, other.base, other.pages, other.count);
  for (int32_t j = first; j < last; ++j) ++other.overlapped[static_cast<size_t>(j)];
  return id;
}

void KvCache::Give(BlockKind& kind, BlockKind& other, int32_t id) {
  HW_CHECK(id >= 0 && id < kind.count && kind.held[static_cast<size_t>(id)],
           "block {} of {} pages given back but not held", id, kind.pages);
  kind.held[static_cast<size_t>(id)] = 0;
  --kind.num_held;
  if (kind.Ready(id)) kind.Queue(id);
  const int lo = kind.base + id * kind.pages;
  const auto [first, last] =
      OverlappingIds(lo, lo + kind.pages, other.base, other.pages, other.count);
  for (int32_t j = first; j < last; ++j) {
    if (--other.overlapped[static_cast<size_t>(j)] == 0 && other.Ready(j)) other.Queue(j);
  }
}

std::optional<int32_t> KvCache::AllocateBlock() {
  int32_t id;
  if (auto free = Take(full_, comp_)) {
    id = *free;
  } else {
    if (lru_.empty()) return std::nullopt;
    // Evict the least recently used cached block and take it over.
    id = lru_.front();
    lru_.pop_front();
    cached_.erase(blocks_[static_cast<size_t>(id)].hash);
  }
  Block& b = blocks_[static_cast<size_t>(id)];
  b = Block();
  b.refs = 1;
  return id;
}

std::optional<int32_t> KvCache::AllocateRingBlock() {
  if (free_ring_ids_.empty()) return std::nullopt;
  const int32_t id = free_ring_ids_.back();
  free_ring_ids_.pop_back();
  return id;
}

void KvCache::ReleaseBlock(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  HW_CHECK(b.refs > 0, "block {} released more often than taken", id);
  if (--b.refs > 0) return;
  if (b.cached) {
    b.lru = lru_.insert(lru_.end(), id);  // stays findable until evicted
    return;
  }
  b = Block();
  Give(full_, comp_, id);
}

std::optional<int32_t> KvCache::FindCached(uint64_t hash, uint64_t parent_hash,
                                           std::span<const int32_t> tokens) {
  ++prefix_stats_.queried_blocks;
  auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  Block& b = blocks_[static_cast<size_t>(it->second)];
  if (b.parent_hash != parent_hash ||
      !std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end())) {
    return std::nullopt;  // a collision, not a hit
  }
  if (b.refs++ == 0) lru_.erase(b.lru);
  ++prefix_stats_.hit_blocks;
  return it->second;
}

void KvCache::CommitBlock(int32_t id, uint64_t hash, uint64_t parent_hash,
                          std::span<const int32_t> tokens) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.cached || cached_.count(hash)) return;  // already known, maybe from another sequence
  b.cached = true;
  b.hash = hash;
  b.parent_hash = parent_hash;
  b.tokens.assign(tokens.begin(), tokens.end());
  cached_.emplace(hash, id);
}

SequenceKv::SequenceKv(KvCache& cache) : cache_(&cache) {}

SequenceKv::~SequenceKv() {
  Release();
}

SequenceKv::SequenceKv(SequenceKv&& o) noexcept
    : cache_(o.cache_),
      blocks_(std::move(o.blocks_)),
      comp_blocks_(std::move(o.comp_blocks_)),
      ring_blocks_(std::move(o.ring_blocks_)),
      hashes_(std::move(o.hashes_)),
      capacity_tokens_(o.capacity_tokens_),
      compacted_from_(o.compacted_from_) {
  o.blocks_.clear();
  o.comp_blocks_.clear();
  o.ring_blocks_.clear();
  o.hashes_.clear();
  o.capacity_tokens_ = 0;
  o.compacted_from_ = 0;
}

uint64_t SequenceKv::HashOf(size_t page, std::span<const int32_t> tokens) const {
  // FNV-1a over the parent hash and the page's tokens; hits are verified against the tokens.
  uint64_t h = page == 0 ? 0xcbf29ce484222325ull : hashes_[page - 1];
  auto mix = [&h](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ull;
    }
  };
  for (int32_t t : tokens) mix(static_cast<uint32_t>(t));
  return h;
}

int SequenceKv::AttachCachedPrefix(std::span<const int32_t> tokens) {
  HW_CHECK(blocks_.empty(), "prefix must be attached before anything is reserved");
  if (!cache_->prefix_caching()) return 0;
  const size_t ps = static_cast<size_t>(cache_->config().page_size);
  for (size_t p = 0; (p + 1) * ps <= tokens.size(); ++p) {
    const auto page_tokens = tokens.subspan(p * ps, ps);
    const uint64_t parent = p == 0 ? 0 : hashes_[p - 1];
    const uint64_t hash = HashOf(p, page_tokens);
    auto block = cache_->FindCached(hash, parent, page_tokens);
    if (!block) break;
    blocks_.push_back(*block);
    hashes_.push_back(hash);
  }
  capacity_tokens_ = static_cast<int>(blocks_.size() * ps);
  return capacity_tokens_;
}

Status SequenceKv::Reserve(int num_tokens) {
  if (num_tokens <= capacity_tokens_) return Status::Ok();
  const size_t have = blocks_.size(), have_comp = comp_blocks_.size(),
               have_ring = ring_blocks_.size();
  const auto undo = [&] {
    while (blocks_.size() > have) {
      cache_->ReleaseBlock(blocks_.back());
      blocks_.pop_back();
    }
    while (comp_blocks_.size() > have_comp) {
      cache_->ReleaseCompBlock(comp_blocks_.back());
      comp_blocks_.pop_back();
    }
    while (ring_blocks_.size() > have_ring) {
      cache_->ReleaseRingBlock(ring_blocks_.back());
      ring_blocks_.pop_back();
    }
  };
  // Ring heads: a fixed set of blocks, taken at the first reservation.
  if (cache_->ring_pages_per_block() > 0 && ring_blocks_.empty()) {
    while (static_cast<int>(ring_blocks_.size()) < cache_->ring_blocks_per_sequence()) {
      auto block = cache_->AllocateRingBlock();
      if (!block) {
        undo();
        return ResourceExhausted("KV cache: the ring pages of all {} sequences are in use",
                                 cache_->config().max_ring_sequences);
      }
      ring_blocks_.push_back(*block);
    }
  }
  // Full and comp heads: a block of each kind per new logical page.
  const int ps = cache_->config().page_size;
  const int want = cache_->BlocksFor(num_tokens);
  const bool full = cache_->pages_per_block() > 0, comp = cache_->comp_pages_per_block() > 0;
  bool ok = true;
  for (int page = capacity_tokens_ / ps; page < want && ok; ++page) {
    if (full) {
      const auto block = cache_->AllocateBlock();
      ok = block.has_value();
      if (ok) blocks_.push_back(*block);
    }
    if (comp && ok) {
      const auto block = cache_->AllocateCompBlock();
      ok = block.has_value();
      if (ok) comp_blocks_.push_back(*block);
    }
  }
  if (!ok) {
    undo();
    return ResourceExhausted("KV cache: {} pages needed, {} free of {}",
                             cache_->PagesToGrow(capacity_tokens_, num_tokens),
                             cache_->num_pages_free(), cache_->num_pages());
  }
  capacity_tokens_ = want * ps;
  return Status::Ok();
}

void SequenceKv::CommitComputed(std::span<const int32_t> tokens, int num_computed) {
  if (!cache_->prefix_caching()) return;
  const size_t ps = static_cast<size_t>(cache_->config().page_size);
  const size_t full = std::min(static_cast<size_t>(num_computed), tokens.size()) / ps;
  for (size_t p = hashes_.size(); p < full && p < blocks_.size(); ++p) {
    const auto page_tokens = tokens.subspan(p * ps, ps);
    const uint64_t parent = p == 0 ? 0 : hashes_[p - 1];
    const uint64_t hash = HashOf(p, page_tokens);
    cache_->CommitBlock(blocks_[p], hash, parent, page_tokens);
    hashes_.push_back(hash);
  }
}

void SequenceKv::Release() {
  for (int32_t b : blocks_) cache_->ReleaseBlock(b);
  for (int32_t b : comp_blocks_) {
    if (b != kFreedBlock) cache_->ReleaseCompBlock(b);
  }
  for (int32_t b : ring_blocks_) cache_->ReleaseRingBlock(b);
  blocks_.clear();
  comp_blocks_.clear();
  ring_blocks_.clear();
  hashes_.clear();
  capacity_tokens_ = 0;
  compacted_from_ = 0;
}

int SequenceKv::num_pages_held() const {
  const auto comp = std::count_if(comp_blocks_.begin(), comp_blocks_.end(),
                                  [](int32_t b) { return b != kFreedBlock; });
  return static_cast<int>(blocks_.size()) * cache_->pages_per_block() +
         static_cast<int>(comp) * cache_->comp_pages_per_block() +
         static_cast<int>(ring_blocks_.size()) * cache_->ring_pages_per_block();
}

void SequenceKv::MarkCompacted(int first_kept) {
  HW_CHECK(compacted_from_ == 0 && first_kept > 0 && first_kept <= capacity_tokens_,
           "compaction from {}: compacted already from {}, or beyond the {} tokens reserved",
           first_kept, compacted_from_, capacity_tokens_);
  compacted_from_ = first_kept;
  // Kept: [0, kept_head) (sinks, then the compensation token) and [first_kept, ...). A logical
  // page wholly between them holds only dropped positions, which attention never reads again.
  const Retention& r = cache_->compress_retention();
  const int ps = cache_->config().page_size;
  const int kept_head = r.sink + (r.compensation ? 1 : 0);
  for (int page = (kept_head + ps - 1) / ps;
       (page + 1) * ps <= first_kept && page < static_cast<int>(comp_blocks_.size()); ++page) {
    int32_t& block = comp_blocks_[static_cast<size_t>(page)];
    if (block == kFreedBlock) continue;
    cache_->ReleaseCompBlock(block);
    block = kFreedBlock;
  }
}

int32_t SequenceKv::RingBlock(int logical_page) const {
  HW_CHECK(!ring_blocks_.empty() && logical_page >= 0, "no ring blocks for logical page {}",
           logical_page);
  const int sinks = cache_->sink_blocks();
  const int p = logical_page < sinks ? logical_page
                                     : sinks + (logical_page - sinks) % cache_->window_blocks();
  return ring_blocks_[static_cast<size_t>(p)];
}

int32_t SequenceKv::Page(int layer, int kv_head, int logical_page) const {
  if (cache_->IsRing(layer, kv_head)) {
    return RingBlock(logical_page) * cache_->ring_pages_per_block() +
           cache_->PageIndex(layer, kv_head);
  }
  if (cache_->IsCompressed(layer, kv_head)) {
    HW_CHECK_LT(static_cast<size_t>(logical_page), comp_blocks_.size());
    const int32_t block = comp_blocks_[static_cast<size_t>(logical_page)];
    HW_CHECK(block != kFreedBlock,
             "logical page {} of compress-once head ({}, {}) was freed by compaction from {}",
             logical_page, layer, kv_head, compacted_from_);
    return block * cache_->comp_pages_per_block() + cache_->PageIndex(layer, kv_head);
  }
  HW_CHECK_LT(static_cast<size_t>(logical_page), blocks_.size());
  return blocks_[static_cast<size_t>(logical_page)] * cache_->pages_per_block() +
         cache_->PageIndex(layer, kv_head);
}

int32_t SequenceKv::Slot(int layer, int kv_head, int position) const {
  const int ps = cache_->config().page_size;
  return Page(layer, kv_head, position / ps) * ps + position % ps;
}

}  // namespace headwise::kvcache
