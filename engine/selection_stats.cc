#include "engine/selection_stats.h"

#include <algorithm>

#include "core/status.h"

namespace headwise::engine {
namespace {

// Keys of a set chosen at `chosen_len` keys: the best budget - sink - recent candidates of
// [sink, chosen_len - recent), all of them when fewer (kernels::KvSelect).
int64_t SetSize(const kernels::KvSelect& sel, int64_t chosen_len) {
  const int64_t candidates = std::max<int64_t>(0, chosen_len - sel.recent - sel.sink);
  return std::min<int64_t>(sel.budget - sel.sink - sel.recent, candidates);
}

}  // namespace

SelectionRead SelectedKeys(const kvcache::KvLayout& layout, int num_keys, int page_size,
                           std::span<const int32_t> refresh, std::span<const int32_t> chosen_len,
                           int compacted_from) {
  SelectionRead read;
  if (!layout.selects_any()) return read;
  const int64_t n = num_keys;
  for (const kernels::KvSelect& sel : layout.selects) {
    if (sel.decode == kernels::kDecodeDense) continue;
    read.dense_keys += n;
    const int64_t sink = std::min<int64_t>(sel.sink, n);
    switch (sel.decode) {
      case kernels::kDecodeSelect:
        read.keys += n;
        break;
      case kernels::kDecodeConsume:
        read.keys += sink + SetSize(sel, n) + std::min<int64_t>(sel.recent, n - sink);
        break;
      case kernels::kDecodeRecycle: {
        const auto set = static_cast<size_t>(sel.set);
        HW_CHECK(set < refresh.size() && set < chosen_len.size(),
                 "recycle set {} without its refresh state", sel.set);
        if (refresh[set] != 0) {
          read.keys += n;
          break;
        }
        const int64_t chosen = chosen_len[set];
        int64_t tail = n - sel.recent;
        if (sel.since_refresh) tail = std::min(tail, chosen - sel.recent);
        tail = std::clamp(tail, sink, n);
        read.keys += sink + SetSize(sel, chosen) + (n - tail);
        break;
      }
      case kernels::kDecodePages: {
        const int64_t ps = page_size;
        const int64_t tail = (n - 1) / ps * ps;
        const int64_t candidates = std::max<int64_t>(0, tail / ps - (sel.sink + ps - 1) / ps);
        const int64_t pages = std::min<int64_t>((sel.budget - sel.sink) / ps - 1, candidates);
        read.keys += sink + pages * ps + (n - tail);
        break;
      }
      case kernels::kDecodeRetrieve: {
        const int64_t from = compacted_from;
        read.keys += from > 0 ? sink + (n - from) + std::min<int64_t>(sel.budget, from - sink) : n;
        break;
      }
      default:
        HW_CHECK(false, "unknown decode role {}", sel.decode);
    }
  }
  return read;
}

}  // namespace headwise::engine
