#include "kvcache/kv_layout.h"

#include <algorithm>

namespace headwise::kvcache {

KvLayout KvLayout::Dense(int num_layers, int num_kv_heads, std::string name) {
  KvLayout layout;
  layout.name = std::move(name);
  layout.num_layers = num_layers;
  layout.num_kv_heads = num_kv_heads;
  layout.heads.assign(static_cast<size_t>(num_layers * num_kv_heads), KvRetention{});
  return layout;
}

int KvLayout::CountStorage(kernels::KvStorage storage) const {
  return static_cast<int>(std::count_if(
      heads.begin(), heads.end(), [&](const KvRetention& r) { return r.storage == storage; }));
}

bool KvLayout::all_reindexed_rings() const {
  return !heads.empty() && std::all_of(heads.begin(), heads.end(), [](const KvRetention& r) {
    return r.ring() && r.reindex();
  });
}

KvRetention KvLayout::ring() const {
  for (const KvRetention& r : heads) {
    if (r.ring()) return r;
  }
  return {};
}

KvRetention KvLayout::compress() const {
  for (const KvRetention& r : heads) {
    if (r.compress_once()) return r;
  }
  return {};
}

Status KvLayout::Validate(int layers, int kv_heads) const {
  if (num_layers != layers || num_kv_heads != kv_heads ||
      heads.size() != static_cast<size_t>(layers * kv_heads)) {
    return InvalidArgument(
        "KV layout \"{}\" covers {} layers x {} KV heads ({} entries); the model "
        "has {} x {}",
        name, num_layers, num_kv_heads, heads.size(), layers, kv_heads);
  }
  const KvRetention ring_rule = ring(), compress_rule = compress();
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < kv_heads; ++h) {
      const KvRetention& r = At(l, h);
      const auto where = [&] {
        return fmt::format("KV layout \"{}\", layer {} KV head {}", name, l, h);
      };
      if (r.storage < kernels::kStorageFull || r.storage > kernels::kStorageCompressOnce) {
        return InvalidArgument("{}: unknown storage {}", where(), r.storage);
      }
      if (r.reindex() && !r.ring()) {
        return InvalidArgument("{}: only ring heads may re-index positions", where());
      }
      if (r.storage == kernels::kStorageFull) continue;
      if (r.sink < 0 || r.window < 1) {
        return InvalidArgument("{}: sink {} window {}: need sink >= 0, window >= 1", where(),
                               r.sink, r.window);
      }
      // A ring's pages are shared by all its heads, and a sequence compacts once: one rule each.
      if (r.ring() && (r.sink != ring_rule.sink || r.window != ring_rule.window)) {
        return InvalidArgument(
            "{}: ring heads of different sizes (sink {} window {} and sink {} window {}) in one "
            "layout are not supported",
            where(), ring_rule.sink, ring_rule.window, r.sink, r.window);
      }
      if (r.compress_once() && r != compress_rule) {
        return InvalidArgument(
            "{}: compress-once heads of different rules in one layout are not supported", where());
      }
    }
  }
  return Status::Ok();
}

}  // namespace headwise::kvcache
