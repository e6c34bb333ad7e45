// The paged KV cache: one pool of pages for all layers and KV heads, and per-sequence page
// tables kept per (layer, KV-head class).
//
// A KV-head class is a set of KV heads of one layer that keep the same tokens. With dense
// attention every layer has one class holding all its KV heads; sparse policies (DESIGN.md §4)
// split a layer into several classes, e.g. DuoAttention's retrieval and streaming heads, each
// with its own page table and retention. A class's page table holds, for each logical page,
// one physical page per head of the class, because a page stores a single KV head.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "kvcache/page_pool.h"

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

class KvCache {
 public:
  // Allocates the K and V pools on `backend`: 2 * num_pages * page_size * head_dim elements.
  KvCache(const KvCacheConfig& config, HeadClassLayout layout, kernels::Backend& backend);

  const KvCacheConfig& config() const { return config_; }
  const HeadClassLayout& layout() const { return layout_; }
  kernels::KvPoolView pool_view() const;
  PagePool& pages() { return pages_; }
  const PagePool& pages() const { return pages_; }

  // Where head `kv_head` of `layer` sits: its class and its index inside the class.
  int ClassOf(int layer, int kv_head) const { return head_class_[layer][kv_head]; }
  int IndexInClass(int layer, int kv_head) const { return head_index_[layer][kv_head]; }

  // Pages a sequence needs to grow from `from_tokens` to `to_tokens` tokens, over all classes.
  int PagesToGrow(int from_tokens, int to_tokens) const;

  // Bytes of K+V per page, for turning a memory budget into a page count.
  static size_t PageBytes(const KvCacheConfig& config, DType dtype);

 private:
  KvCacheConfig config_;
  HeadClassLayout layout_;
  std::vector<std::vector<int>> head_class_;
  std::vector<std::vector<int>> head_index_;
  PagePool pages_;
  kernels::Buffer k_pool_;
  kernels::Buffer v_pool_;
};

// The page tables of one sequence. Owns its pages until Release().
class SequenceKv {
 public:
  explicit SequenceKv(KvCache& cache);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;
  SequenceKv(SequenceKv&&) noexcept;
  SequenceKv& operator=(SequenceKv&&) = delete;

  // Makes room for `num_tokens` tokens in every class, all or nothing: ResourceExhausted leaves
  // the sequence as it was.
  Status Reserve(int num_tokens);
  // Returns every page to the pool.
  void Release();

  int capacity_tokens() const { return capacity_tokens_; }
  int num_pages_held() const;
  // Physical page of logical page `logical_page` for (layer, kv_head).
  int32_t Page(int layer, int kv_head, int logical_page) const;
  // Physical slot (page * page_size + offset) of token `position` for (layer, kv_head).
  int32_t Slot(int layer, int kv_head, int position) const;

 private:
  KvCache* cache_;
  int capacity_tokens_ = 0;
  // tables_[layer][class]: logical-page-major, heads of the class contiguous.
  std::vector<std::vector<std::vector<int32_t>>> tables_;
};

}  // namespace headwise::kvcache
