#include "engine/attention_setup.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <thread>

namespace headwise::engine {

std::string ModelPolicyFile(const std::string& model_path) {
  std::error_code ec;
  const std::filesystem::path file = std::filesystem::path(model_path) / "attention-policy.json";
  return std::filesystem::is_directory(model_path, ec) && std::filesystem::exists(file, ec)
             ? file.string()
             : std::string();
}

StatusOr<attention::PolicySet> LoadAttentionPolicy(const std::string& flag_path,
                                                   const models::ModelConfig& config,
                                                   const std::string& model_path,
                                                   uint64_t weights_hash) {
  const attention::ModelShape shape{config.num_layers, config.num_heads, config.num_kv_heads,
                                    weights_hash};
  const std::string path = flag_path.empty() ? ModelPolicyFile(model_path) : flag_path;
  if (path.empty()) return attention::DensePolicySet(shape);
  HW_ASSIGN_OR_RETURN(attention::PolicySet set, attention::LoadPolicyFile(path, shape));
  const std::vector<int> counts = set.HeadCounts();
  for (size_t i = 0; i < set.policies.size(); ++i) {
    const attention::Policy& p = set.policies[i];
    if (counts[i] == 0 || p.storage != attention::StorageKind::kRing) continue;
    if (p.prefill == attention::PrefillMode::kDense) {
      return InvalidArgument(
          "attention policy {}: policy \"{}\" keeps sink {} + window {} tokens but asks for a "
          "dense prefill, which needs the whole prompt kept; use prefill mode retained (the "
          "first chunk attends densely anyway)",
          path, p.name, p.sink, p.window);
    }
    // Up to sink + window + 1 tokens the ring attends everything anyway.
    if (p.dense_if_len_le > p.sink + p.window + 1) {
      return InvalidArgument(
          "attention policy {}: policy \"{}\": dense_if_len_le {} exceeds the {} tokens its ring "
          "keeps",
          path, p.name, p.dense_if_len_le, p.sink + p.window + 1);
    }
  }
  return set;
}

kvcache::KvCacheConfig KvConfigFor(const models::ModelConfig& model, int num_pages, int page_size,
                                   int chunk_tokens) {
  kvcache::KvCacheConfig kv;
  kv.num_layers = model.num_layers;
  kv.num_kv_heads = model.num_kv_heads;
  kv.head_dim = model.head_dim;
  kv.page_size = page_size;
  kv.num_pages = num_pages;
  kv.chunk_tokens = chunk_tokens;
  kv.rope_inv_freq = models::RopeInverseFrequencies(model);
  kv.num_q_heads = model.num_heads;
  kv.select_slots = 1;  // one sequence at a time; the engine gives max_num_seqs
  kv.attention_scale = models::AttentionScale(model);
  kv.offload_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return kv;
}

StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(std::vector<kvcache::KvLayout> layouts,
                                                          const kvcache::KvCacheConfig& config,
                                                          kernels::Backend& backend) {
  return CreateKvCache(std::move(layouts), config, std::array<kernels::Backend*, 1>{&backend});
}

StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(
    std::vector<kvcache::KvLayout> layouts, const kvcache::KvCacheConfig& config,
    std::span<kernels::Backend* const> rank_backends) {
  for (const kvcache::KvLayout& layout : layouts) {
    if (config.num_ranks > 1 && layout.selects_any()) {
      return Unimplemented(
                 "attention policy \"{}\": decode-time selection (TidalDecode, Recycled "
                 "Attention, Quest) and offload heads run on one GPU; tensor_parallel_size is {}",
                 layout.name, config.num_ranks)
          .WithField("tensor_parallel_size");
    }
    HW_RETURN_IF_ERROR(layout.Validate(config.num_layers, config.num_kv_heads));
    if (layout.offload) {
      HW_RETURN_IF_ERROR(kvcache::OffloadTier::Supports(*layout.offload)
                             .WithContext(fmt::format("attention policy \"{}\"", layout.name)));
    }
    const int one_token = kvcache::KvCache::PagesForSequence(config, layout, 1);
    if (one_token > config.num_pages) {
      return InvalidArgument(
          "the KV cache of {} pages cannot hold a single token of attention policy \"{}\": its "
          "rings and one page per growing (layer, KV head) need {}; raise the page count",
          config.num_pages, layout.name, one_token);
    }
  }
  return std::make_unique<kvcache::KvCache>(config, std::move(layouts), rank_backends);
}

namespace {

// The KvSelect of a head whose policy chooses a set (decode mode select), writing set `set`.
kernels::KvSelect SelectRule(const attention::Selection& s, int set) {
  kernels::KvSelect k;
  switch (s.method) {
    case attention::SelectionMethod::kExactLogits:
      k.decode = kernels::kDecodeSelect;
      break;
    case attention::SelectionMethod::kRecycle:
      k.decode = kernels::kDecodeRecycle;
      break;
    case attention::SelectionMethod::kPageMinmax:
      k.decode = kernels::kDecodePages;
      break;
    case attention::SelectionMethod::kAnn:
      // Offload heads: the host retrieves `budget` keys per search; no set on the device.
      k.decode = kernels::kDecodeRetrieve;
      k.budget = s.budget;
      k.per_q_head = s.granularity == attention::SelectionGranularity::kQHead ? 1 : 0;
      return k;
  }
  k.set = set;
  k.budget = s.budget;
  k.sink = s.sink;
  // The current token is always attended (the parser refuses current false): the tail holds at
  // least it. A pages head's tail is the page holding it, whatever recent says.
  k.recent = k.decode == kernels::kDecodePages ? 1 : std::max(s.recent, 1);
  k.per_q_head = s.granularity == attention::SelectionGranularity::kQHead ? 1 : 0;
  switch (s.group_reduce) {
    case attention::GroupReduce::kSumSoftmax:
    case attention::GroupReduce::kNone:  // per_q_head: not read
      k.reduce = kernels::kReduceSumSoftmax;
      break;
    case attention::GroupReduce::kSumLogits:
      k.reduce = kernels::kReduceSumLogits;
      break;
    case attention::GroupReduce::kMax:
      k.reduce = kernels::kReduceMax;
      break;
  }
  if (k.decode == kernels::kDecodeRecycle) {
    k.since_refresh = s.since_last_refresh ? 1 : 0;
    k.refresh_every = s.refresh_every_steps;
    k.refresh_below_cos = s.refresh_by_similarity ? 1 : 0;
    k.refresh_cos = s.refresh_by_similarity ? static_cast<float>(s.similarity_threshold) : 0.0f;
  }
  return k;
}

// KvLayout::selects and select_min_len of a policy set with selecting heads. Set indices: one per
// layer with heads that choose a set, from 0 in layer order; a consume head reads the set of the
// latest layer below it whose same KV head publishes its channel, under that head's rule.
Status FillSelects(const attention::PolicySet& set, kvcache::KvLayout& layout) {
  const int layers = layout.num_layers, kv_heads = layout.num_kv_heads;
  bool any = false;
  for (int l = 0; l < layers && !any; ++l) {
    for (int h = 0; h < kv_heads && !any; ++h) {
      const attention::DecodeMode d = set.At(l, h).decode;
      any = d == attention::DecodeMode::kSelect || d == attention::DecodeMode::kConsume;
    }
  }
  if (!any) return Status::Ok();
  layout.selects.assign(layout.heads.size(), kernels::KvSelect{});
  const attention::Policy* length_rule = nullptr;  // the policy select_min_len comes from
  int next_set = 0;
  for (int l = 0; l < layers; ++l) {
    int layer_set = -1;
    for (int h = 0; h < kv_heads; ++h) {
      const attention::Policy& p = set.At(l, h);
      kernels::KvSelect& sel = layout.selects[static_cast<size_t>(l * kv_heads + h)];
      if (p.decode == attention::DecodeMode::kSelect &&
          p.selection.method == attention::SelectionMethod::kAnn) {
        sel = SelectRule(p.selection, -1);
      } else if (p.decode == attention::DecodeMode::kSelect) {
        if (layer_set < 0) layer_set = next_set++;
        sel = SelectRule(p.selection, layer_set);
      } else if (p.decode == attention::DecodeMode::kConsume) {
        int from = -1;
        for (int below = l - 1; below >= 0 && from < 0; --below) {
          const attention::Policy& w = set.At(below, h);
          if (w.decode == attention::DecodeMode::kSelect &&
              w.selection.method == attention::SelectionMethod::kExactLogits &&
              w.selection.publish == p.consume) {
            from = below;
          }
        }
        if (from < 0) {
          return InvalidArgument(
              "layer {} KV head {} (policy \"{}\") consumes channel \"{}\", which no "
              "exact_logits policy publishes for KV head {} at an earlier layer",
              l, h, p.name, p.consume, h);
        }
        sel = layout.selects[static_cast<size_t>(from * kv_heads + h)];
        sel.decode = kernels::kDecodeConsume;
      } else {
        continue;
      }
      if (length_rule == nullptr) {
        length_rule = &p;
      } else if (p.dense_if_len_le != length_rule->dense_if_len_le) {
        return InvalidArgument(
            "policies \"{}\" (dense_if_len_le {}) and \"{}\" ({}) both select: a sequence "
            "selects on all its selecting heads or on none, so they need one dense_if_len_le",
            length_rule->name, length_rule->dense_if_len_le, p.name, p.dense_if_len_le);
      }
    }
  }
  layout.select_min_len = length_rule->dense_if_len_le;
  return Status::Ok();
}

}  // namespace

StatusOr<kvcache::KvLayout> KvLayoutFor(const attention::PolicySet& set) {
  const int layers = static_cast<int>(set.head_policy.size());
  const int kv_heads = layers > 0 ? static_cast<int>(set.head_policy.front().size()) : 0;
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(layers, kv_heads, set.name);
  for (int l = 0; l < layers; ++l) {
    for (int h = 0; h < kv_heads; ++h) {
      const attention::Policy& p = set.At(l, h);
      kernels::KvRetention& r = layout.At(l, h);
      switch (p.storage) {
        case attention::StorageKind::kFull:
          break;
        case attention::StorageKind::kRing:
          r = kernels::KvRetention::Ring(p.sink, p.window,
                                         p.positions == attention::Positions::kReindex);
          break;
        case attention::StorageKind::kCompressOnce:
          r = kernels::KvRetention::CompressOnce(p.sink, p.window, p.compensation,
                                                 p.compensation_by_count);
          break;
        case attention::StorageKind::kOffload: {
          r = kernels::KvRetention::Offload(p.sink, p.window);
          kvcache::OffloadRule rule;
          switch (p.offload.type) {
            case attention::AnnIndexType::kRoarGraph:
              rule.index = kvcache::OffloadRule::Index::kRoarGraph;
              break;
            case attention::AnnIndexType::kHnsw:
              rule.index = kvcache::OffloadRule::Index::kHnsw;
              break;
            case attention::AnnIndexType::kExact:
              rule.index = kvcache::OffloadRule::Index::kExact;
              break;
          }
          rule.top_k = p.selection.budget;
          rule.per_q_head = p.selection.granularity == attention::SelectionGranularity::kQHead;
          rule.knn_per_query = p.offload.knn_per_query;
          rule.max_degree = p.offload.max_degree;
          rule.build_list = p.offload.build_list;
          rule.search_list = p.offload.search_list;
          rule.train_stride = p.offload.train_stride;
          rule.group_search = p.offload.group_search;
          if (layout.offload && *layout.offload != rule) {
            return InvalidArgument(
                "attention policy \"{}\": offload policies with different index or retrieval "
                "rules in one file are not supported (policy \"{}\")",
                set.name, p.name);
          }
          layout.offload = rule;
          break;
        }
      }
    }
  }
  const std::string context = fmt::format("attention policy \"{}\"", set.name);
  HW_RETURN_IF_ERROR(FillSelects(set, layout).WithContext(context));
  HW_RETURN_IF_ERROR(layout.Validate(layers, kv_heads).WithContext(context));
  return layout;
}

LengthLimit MaxSequenceTokens(const kvcache::KvLayout& layout, int context, int chunk_tokens) {
  LengthLimit limit;
  limit.tokens = context;
  if (!layout.all_reindexed_rings()) return limit;
  const kernels::KvRetention ring = layout.ring();
  limit.max_rank_span = int64_t{ring.sink} + ring.window + std::max(chunk_tokens, 1);
  if (limit.max_rank_span > context) return limit;
  limit.bounded = true;
  limit.tokens = kMaxStreamTokens;
  return limit;
}

std::string LengthLimit::Explain() const {
  if (bounded) {
    return fmt::format(
        "every head is a re-indexed sink/window ring (rotary positions below {}), so a sequence "
        "may reach {} tokens",
        max_rank_span, tokens);
  }
  if (max_rank_span > 0) {
    return fmt::format(
        "every head is a re-indexed sink/window ring, but its rotary positions could reach "
        "sink + window + chunk = {}, beyond the context of {}: lower the prefill chunk "
        "(max_num_batched_tokens) or the window to run past it",
        max_rank_span, tokens);
  }
  return fmt::format("the context is {} tokens", tokens);
}

}  // namespace headwise::engine
