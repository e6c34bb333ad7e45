// The paged KV cache: one pool of pages for all layers and KV heads, per-sequence page tables
// per (layer, KV-head class), and prefix caching of full pages by content.
//
// A KV-head class is a set of KV heads of one layer that keep the same tokens. With dense
// attention every layer has one class holding all its KV heads; sparse policies (DESIGN.md §4)
// split a layer into several classes, e.g. DuoAttention's retrieval and streaming heads. A
// page stores one KV head of one layer, so heads of one request can hold different tokens.
//
// Pages of full-storage classes are handed out in blocks: a block is logical page p of a
// sequence for every (layer, class, head) at once, L x Hkv physical pages, and block b owns the
// contiguous pages [b * L * Hkv, (b + 1) * L * Hkv). So a kernel finds any head's page from one
// block table per sequence: page = block * pages_per_block + PageIndex(layer, kv_head). Blocks are the unit
// of prefix caching: a full block is keyed by a hash chain over the tokens of all pages up to
// it, reference counted while sequences use it, and kept, evictable in LRU order, once none
// does. A hit is verified against the stored tokens, so a hash collision cannot serve another
// prompt's KV.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kvcache {

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  int num_pages = 0;
};

// Which KV heads of each layer share a retention rule: classes[layer][class] = KV heads.
struct HeadClassLayout {
  std::vector<std::vector<std::vector<int>>> classes;

  // One class per layer with every KV head: dense attention.
  static HeadClassLayout Dense(int num_layers, int num_kv_heads);
  Status Validate(int num_layers, int num_kv_heads) const;
};

struct PrefixCacheStats {
  uint64_t queried_blocks = 0;
  uint64_t hit_blocks = 0;
};

class KvCache {
 public:
  // Allocates the K and V pools on `backend`: 2 * num_pages * page_size * head_dim elements.
  KvCache(const KvCacheConfig& config, HeadClassLayout layout, kernels::Backend& backend);

  const KvCacheConfig& config() const { return config_; }
  const HeadClassLayout& layout() const { return layout_; }
  kernels::KvPoolView pool_view() const;

  int ClassOf(int layer, int kv_head) const { return head_class_[layer][kv_head]; }
  int IndexInClass(int layer, int kv_head) const { return head_index_[layer][kv_head]; }

  int pages_per_block() const { return pages_per_block_; }
  // Position of (layer, kv_head)'s page inside every block.
  int PageIndex(int layer, int kv_head) const { return page_index_[layer][kv_head]; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  // Usable pages: whole blocks only.
  int num_pages() const { return num_blocks() * pages_per_block_; }
  // Pages held by sequences; cached pages that nobody uses count as free (evictable).
  int num_pages_used() const {
    return (num_blocks() - static_cast<int>(free_block_ids_.size())) * pages_per_block_ -
           num_evictable_pages();
  }
  int num_pages_free() const { return num_pages() - num_pages_used(); }
  // Blocks a sequence of `tokens` tokens needs.
  int BlocksFor(int tokens) const { return (tokens + config_.page_size - 1) / config_.page_size; }
  // Pages a sequence needs to grow from `from_tokens` to `to_tokens` tokens.
  int PagesToGrow(int from_tokens, int to_tokens) const {
    return std::max(0, BlocksFor(to_tokens) - BlocksFor(from_tokens)) * pages_per_block_;
  }

  void set_prefix_caching(bool on) { prefix_caching_ = on; }
  bool prefix_caching() const { return prefix_caching_; }
  const PrefixCacheStats& prefix_stats() const { return prefix_stats_; }

  // Bytes of K+V per page, for turning a memory budget into a page count.
  static size_t PageBytes(const KvCacheConfig& config, DType dtype);

 private:
  friend class SequenceKv;
  struct Block {
    int refs = 0;
    bool cached = false;  // registered under `hash`
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the page's tokens, to verify hits
    uint64_t parent_hash = 0;
    std::list<int32_t>::iterator lru;
  };

  std::optional<int32_t> AllocateBlock();
  void ReleaseBlock(int32_t block);
  std::optional<int32_t> FindCached(uint64_t hash, uint64_t parent_hash,
                                    std::span<const int32_t> tokens);
  void CommitBlock(int32_t block, uint64_t hash, uint64_t parent_hash,
                   std::span<const int32_t> tokens);
  int num_evictable_pages() const { return static_cast<int>(lru_.size()) * pages_per_block_; }

  KvCacheConfig config_;
  HeadClassLayout layout_;
  std::vector<std::vector<int>> head_class_;
  std::vector<std::vector<int>> head_index_;
  std::vector<std::vector<int>> page_index_;
  int pages_per_block_ = 0;
  kernels::Buffer k_pool_;
  kernels::Buffer v_pool_;

  bool prefix_caching_ = true;
  std::vector<Block> blocks_;              // one per block of pages, allocated or not
  std::vector<int32_t> free_block_ids_;  // LIFO: recently freed blocks are reused first
  std::unordered_map<uint64_t, int32_t> cached_;
  std::list<int32_t> lru_;  // cached blocks nobody uses, oldest first
  PrefixCacheStats prefix_stats_;
};

// The page tables of one sequence. Owns references to its blocks until Release().
class SequenceKv {
 public:
  explicit SequenceKv(KvCache& cache);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;
  SequenceKv(SequenceKv&&) noexcept;
  SequenceKv& operator=(SequenceKv&&) = delete;

  // Takes the longest run of cached full pages that starts `tokens`, before anything else is
  // reserved. Returns how many tokens they hold.
  int AttachCachedPrefix(std::span<const int32_t> tokens);
  // Makes room for `num_tokens` tokens, all or nothing: ResourceExhausted leaves the sequence
  // as it was.
  Status Reserve(int num_tokens);
  // Registers the full pages among the first `num_computed` tokens in the prefix cache.
  void CommitComputed(std::span<const int32_t> tokens, int num_computed);
  // Drops every block reference.
  void Release();

  int capacity_tokens() const {
    return static_cast<int>(blocks_.size()) * cache_->config().page_size;
  }
  int num_pages_held() const {
    return static_cast<int>(blocks_.size()) * cache_->pages_per_block();
  }
  // Block of each logical page, in order.
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Physical page of logical page `logical_page` for (layer, kv_head).
  int32_t Page(int layer, int kv_head, int logical_page) const;
  // Physical slot (page * page_size + offset) of token `position` for (layer, kv_head).
  int32_t Slot(int layer, int kv_head, int position) const;

 private:
  uint64_t HashOf(size_t page, std::span<const int32_t> tokens) const;

  KvCache* cache_;
  std::vector<int32_t> blocks_;   // per logical page
  std::vector<uint64_t> hashes_;  // hash chain of the committed/attached full pages
};

}  // namespace headwise::kvcache
