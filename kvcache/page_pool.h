// The free list of KV pages. Pages are interchangeable across layers and heads: one page holds
// `page_size` tokens of one KV head of one layer, so any class of any layer can take any page.
#pragma once

#include <cstdint>
#include <vector>

namespace headwise::kvcache {

class PagePool {
 public:
  explicit PagePool(int num_pages);

  int num_pages() const { return num_pages_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_used() const { return num_pages_ - num_free(); }

  // Appends `count` page ids to `out`, or returns false and takes nothing.
  bool Allocate(int count, std::vector<int32_t>& out);
  void Free(const std::vector<int32_t>& pages);

 private:
  int num_pages_;
  std::vector<int32_t> free_;  // LIFO: recently freed pages are reused first (warm in cache)
};

}  // namespace headwise::kvcache
