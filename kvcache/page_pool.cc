#include "kvcache/page_pool.h"

#include "core/status.h"

namespace headwise::kvcache {

PagePool::PagePool(int num_pages) : num_pages_(num_pages) {
  HW_CHECK(num_pages >= 0, "num_pages {}", num_pages);
  free_.reserve(static_cast<size_t>(num_pages));
  for (int32_t p = num_pages - 1; p >= 0; --p) free_.push_back(p);
}

bool PagePool::Allocate(int count, std::vector<int32_t>& out) {
  if (count > num_free()) return false;
  for (int i = 0; i < count; ++i) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void PagePool::Free(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) {
    HW_CHECK(p >= 0 && p < num_pages_, "page {} of {}", p, num_pages_);
    free_.push_back(p);
  }
  HW_CHECK_LE(free_.size(), static_cast<size_t>(num_pages_));
}

}  // namespace headwise::kvcache
