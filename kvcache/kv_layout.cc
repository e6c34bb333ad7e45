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

int KvLayout::CountCompacting() const {
  return static_cast<int>(
      std::count_if(heads.begin(), heads.end(), [](const KvRetention& r) { return r.compacts(); }));
}

KvRetention KvLayout::compress() const {
  for (const KvRetention& r : heads) {
    if (r.compacts()) return r;
  }
  return {};
}

int KvLayout::num_select_sets() const {
  int sets = 0;
  for (const kernels::KvSelect& sel : selects) sets = std::max(sets, sel.set + 1);
  return sets;
}

bool KvLayout::selects_pages() const {
  return std::any_of(selects.begin(), selects.end(), [](const kernels::KvSelect& sel) {
    return sel.decode == kernels::kDecodePages;
  });
}

int KvLayout::max_select_budget() const {
  int budget = 0;
  for (const kernels::KvSelect& sel : selects) budget = std::max(budget, sel.budget);
  return budget;
}

// The selection rules the kernels rely on (kernels::KvSelect): a set has one writer role and
// one granularity (per query head or per KV head) per layer, a consume head reads a set its own
// KV head chose at an earlier layer under the same budget, sink and recent, recycle sets refresh
// by one rule.
Status KvLayout::ValidateSelects() const {
  if (selects.empty()) return Status::Ok();
  if (selects.size() != heads.size()) {
    return InvalidArgument("KV layout \"{}\": {} selection entries for {} heads", name,
                           selects.size(), heads.size());
  }
  std::vector<int> set_layer(static_cast<size_t>(num_select_sets()), -1);
  std::vector<int> set_role(set_layer.size(), kernels::kDecodeDense);
  std::vector<const kernels::KvSelect*> set_rule(set_layer.size(), nullptr);
  for (int l = 0; l < num_layers; ++l) {
    for (int h = 0; h < num_kv_heads; ++h) {
      const kernels::KvSelect& sel = SelectAt(l, h);
      const KvRetention& r = At(l, h);
      const auto where = [&] {
        return fmt::format("KV layout \"{}\", layer {} KV head {}", name, l, h);
      };
      if (sel.decode < kernels::kDecodeDense || sel.decode > kernels::kDecodeRetrieve) {
        return InvalidArgument("{}: unknown decode role {}", where(), sel.decode);
      }
      if ((sel.decode == kernels::kDecodeRetrieve) != r.offload()) {
        return InvalidArgument("{}: offload heads, and only they, retrieve at decode", where());
      }
      if (sel.decode == kernels::kDecodeDense || sel.decode == kernels::kDecodeRetrieve) {
        if (sel.set != -1) {
          return InvalidArgument("{}: a head without a set on the device has set {}", where(),
                                 sel.set);
        }
        if (sel.decode == kernels::kDecodeRetrieve && sel.budget < 1) {
          return InvalidArgument("{}: retrieves {} keys", where(), sel.budget);
        }
        continue;
      }
      if (r.storage != kernels::kStorageFull || r.reindex()) {
        return InvalidArgument(
            "{}: decode-time selection needs full storage with original positions", where());
      }
      if (sel.set < 0) return InvalidArgument("{}: a selecting head without a set", where());
      if (sel.budget < 1 || sel.sink < 0 || sel.recent < 1 ||
          (sel.decode != kernels::kDecodePages && sel.sink + sel.recent >= sel.budget)) {
        return InvalidArgument(
            "{}: budget {} sink {} recent {}: need recent >= 1 and sink + "
            "recent < budget",
            where(), sel.budget, sel.sink, sel.recent);
      }
      const size_t set = static_cast<size_t>(sel.set);
      if (sel.decode == kernels::kDecodeConsume) {
        if (set_layer[set] < 0 || set_layer[set] >= l || set_role[set] != kernels::kDecodeSelect) {
          return InvalidArgument(
              "{}: consumes set {}, which no select head of an earlier layer chooses", where(),
              sel.set);
        }
        const kernels::KvSelect& writer = SelectAt(set_layer[set], h);
        if (writer.decode != kernels::kDecodeSelect || writer.set != sel.set ||
            writer.per_q_head != sel.per_q_head) {
          return InvalidArgument(
              "{}: consumes set {}, which KV head {} of layer {} does not choose (or per query "
              "head where this reads per KV head)",
              where(), sel.set, h, set_layer[set]);
        }
        // The set holds the candidates of [sink, n - recent) the writer chose: the reader
        // attends the same sink and tail, or keys would be attended twice or not at all.
        if (writer.budget != sel.budget || writer.sink != sel.sink || writer.recent != sel.recent) {
          return InvalidArgument(
              "{}: consumes set {} with budget {} sink {} recent {}, chosen under budget {} sink "
              "{} recent {} (layer {})",
              where(), sel.set, sel.budget, sel.sink, sel.recent, writer.budget, writer.sink,
              writer.recent, set_layer[set]);
        }
        continue;
      }
      if (set_layer[set] == -1) {
        set_layer[set] = l;
        set_role[set] = sel.decode;
        set_rule[set] = &sel;
      } else if (set_layer[set] != l || set_role[set] != sel.decode) {
        return InvalidArgument("{}: set {} is chosen in layer {} already, or by another method",
                               where(), sel.set, set_layer[set]);
      }
      const kernels::KvSelect& first = *set_rule[set];
      // A set per KV head lives in row kv_head of the state, one per query head in the rows of
      // its group: the two would overwrite each other in one set.
      if (sel.per_q_head != first.per_q_head) {
        return InvalidArgument("{}: set {} holds sets per query head and per KV head", where(),
                               sel.set);
      }
      if (sel.decode == kernels::kDecodeRecycle &&
          (sel.refresh_every != first.refresh_every ||
           sel.refresh_below_cos != first.refresh_below_cos ||
           sel.refresh_cos != first.refresh_cos)) {
        return InvalidArgument("{}: recycle heads of one layer refresh by different rules",
                               where());
      }
      if (sel.refresh_every < 1) {
        return InvalidArgument("{}: refresh every {} steps", where(), sel.refresh_every);
      }
    }
  }
  return Status::Ok();
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
      if (r.storage < kernels::kStorageFull || r.storage > kernels::kStorageOffload) {
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
      if (r.compacts() && r != compress_rule) {
        return InvalidArgument(
            "{}: compacting (compress-once or offload) heads of different rules in one layout "
            "are not supported",
            where());
      }
      if (r.offload() && (r.compensation != 0 || r.reindex())) {
        return InvalidArgument(
            "{}: an offload head keeps original positions and no compensation token", where());
      }
    }
  }
  const bool offloads = CountStorage(kernels::kStorageOffload) > 0;
  if (offloads != offload.has_value()) {
    return InvalidArgument("KV layout \"{}\": {}", name,
                           offloads ? "offload heads without the host's rule (KvLayout::offload)"
                                    : "an offload rule but no offload head");
  }
  if (offload && (offload->top_k < 1 || offload->knn_per_query < 1 ||
                  offload->knn_per_query > kernels::kMaxTopKeys || offload->max_degree < 2 ||
                  offload->build_list < offload->max_degree || offload->search_list < 1 ||
                  offload->train_stride < 1)) {
    return InvalidArgument(
        "KV layout \"{}\": offload rule top_k {} knn_per_query {} max_degree {} build_list {} "
        "search_list {} train_stride {}",
        name, offload->top_k, offload->knn_per_query, offload->max_degree, offload->build_list,
        offload->search_list, offload->train_stride);
  }
  return ValidateSelects();
}

}  // namespace headwise::kvcache
