// What decode-time selection saved, for the serving metrics (issue 16): per selecting decode
// step, the keys its selecting heads' attention read against what they read densely. Computed
// on the host from the layout's rules (kernels::KvSelect) and, for Recycled Attention's sets,
// the step's refresh decision and when each set was chosen (read back from the device).
#pragma once

#include <cstdint>
#include <span>

#include "kvcache/kv_layout.h"

namespace headwise::engine {

struct SelectionRead {
  int64_t keys = 0;        // keys attended by the selecting heads, per query head, summed over
                           // (layer, KV head)
  int64_t dense_keys = 0;  // what the same heads attend densely: num_keys each
};

// A selecting decode step of a sequence of `layout` at `num_keys` keys (its query included).
// refresh / chosen_len: the sequence's row of kernels::SelectState (one entry per set index)
// after the step, read only for recycle heads; empty when the layout has none. compacted_from:
// the sequence's (kvcache::SequenceKv), for offload heads, which read the device's static set and
// the keys the host retrieved (up to top_k of the offloaded span).
SelectionRead SelectedKeys(const kvcache::KvLayout& layout, int num_keys, int page_size,
                           std::span<const int32_t> refresh, std::span<const int32_t> chosen_len,
                           int compacted_from = 0);

}  // namespace headwise::engine
