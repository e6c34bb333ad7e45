// The bytes one decode step of one sequence must move: the bound hw_bench_policy measures a
// step's time against. Per (layer, KV head), the keys and values its attention reads, by the
// rules the kernels follow:
//  - a head that decodes densely (every head when the step does not select: a sequence not
//    longer than the layout's select_min_len): every key of a full or compress-once head (the
//    benchmark does not compact), sink + window + 1 of a ring head;
//  - a selecting head (kernels::KvSelect): the keys engine::SelectedKeys counts for it (the
//    serving metrics' count: select heads and refreshing recycle heads all n keys, consume
//    heads sink + set + tail, recycle heads between refreshes the set and the keys added since,
//    Quest's heads sink + pages + the last page). A set per query head (granularity q_head) is
//    attended by each query head of the group on its own (the decode kernel runs one block per
//    query head there), and the sets of a group's query heads differ: the keys count once per
//    query head of the group (disjoint sets), but never more than the n keys there are (the
//    union of the sets is what must come from memory; hw_bench_policy reports how distinct the
//    sets it measured were, "q_head_sets_distinct");
// and the selection's own traffic worth counting:
//  - the f32 logits a head that chooses from logits writes (select heads, recycle heads on a
//    refresh step: one per query head of its group and key), and the page scores a Quest head
//    writes (one per query head and page). Top-k reads them back; that read is not counted
//    (the logits of a step's layer fit in L2 at batch 1, and counting it would flatter the
//    bound);
//  - Quest's page bounds, read for every page: kmin and kmax, head_dim values each.
// Not counted: the set indices (4 bytes per selected key against 2 * head_dim * 2 bytes of K and
// V: under 1% at head_dim 128), the state SelectionGate reads, the query.
//
// Recycled Attention's steps differ: a refresh step reads every key, the steps after it the set.
// PeriodAverage averages the steps of one refresh period (the lcm of the layout's refresh_every),
// starting with a refresh step, positions advancing by one per step as a decode does; the
// benchmark times a whole number of such periods and reports their mean, so time and bytes are
// averages over the same steps. A refresh by query similarity (refresh_below_cos) cannot be
// predicted; such layouts are counted on their stride alone (has_similarity_refresh()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "core/status.h"
#include "engine/selection_stats.h"
#include "kvcache/kv_layout.h"

namespace headwise::bench {

struct StepShape {
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  int kv_dtype_bytes = 2;
  // K and V of one token of one KV head.
  double HeadTokenBytes() const { return 2.0 * head_dim * kv_dtype_bytes; }
  int group() const { return num_q_heads / num_kv_heads; }
};

struct SequenceStepBytes {
  double kv = 0;         // K and V the attention of every (layer, KV head) reads
  double selection = 0;  // logits and page scores written, Quest's page bounds read
  bool selects = false;  // the step selects (the sequence is longer than select_min_len)
  double total() const { return kv + selection; }
};

class StepBytes {
 public:
  StepBytes(const kvcache::KvLayout& layout, const StepShape& shape)
      : layout_(layout), shape_(shape) {
    HW_CHECK(shape.num_kv_heads == layout.num_kv_heads && shape.num_q_heads > 0 &&
                 shape.num_q_heads % shape.num_kv_heads == 0 && shape.page_size > 0,
             "step shape {} query heads / {} KV heads / page {} for layout \"{}\" of {} KV heads",
             shape.num_q_heads, shape.num_kv_heads, shape.page_size, layout.name,
             layout.num_kv_heads);
    const int sets = layout.num_select_sets();
    set_every_.assign(static_cast<size_t>(sets), 1);
    for (size_t i = 0; i < layout.selects.size(); ++i) {
      const kernels::KvSelect& sel = layout.selects[i];
      if (sel.decode == kernels::kDecodeDense) continue;
      // engine::SelectedKeys counts one head at a time through a layout holding only it.
      kvcache::KvLayout one;
      one.name = layout.name;
      one.num_layers = layout.num_layers;
      one.num_kv_heads = layout.num_kv_heads;
      one.selects.assign(layout.selects.size(), kernels::KvSelect{});
      one.selects[i] = sel;
      one_head_.push_back({static_cast<int>(i), std::move(one)});
      if (sel.decode == kernels::kDecodeRecycle) {
        set_every_[static_cast<size_t>(sel.set)] = std::max(1, sel.refresh_every);
        similarity_ = similarity_ || sel.refresh_below_cos != 0;
      }
    }
    period_ = 1;
    for (int every : set_every_) {
      period_ = std::lcm(period_, every);
      HW_CHECK(period_ <= 100000, "layout \"{}\": refresh period {} too long to average",
               layout.name, period_);
    }
  }

  // Steps of one refresh period (1 without recycle heads: every step reads the same).
  int refresh_period() const { return period_; }
  bool has_similarity_refresh() const { return similarity_; }

  // One step at `num_keys` keys (its query included). refresh / chosen_len: one entry per set
  // index, as engine::SelectedKeys reads them (recycle sets only; empty without recycle heads).
  SequenceStepBytes At(int num_keys, std::span<const int32_t> refresh,
                       std::span<const int32_t> chosen_len) const {
    SequenceStepBytes b;
    const double n = num_keys;
    const double head_token = shape_.HeadTokenBytes();
    b.selects = layout_.selects_any() && num_keys > layout_.select_min_len;
    for (int l = 0; l < layout_.num_layers; ++l) {
      for (int h = 0; h < layout_.num_kv_heads; ++h) {
        const bool head_selects =
            b.selects && layout_.SelectAt(l, h).decode != kernels::kDecodeDense;
        if (head_selects) continue;  // below
        const kernels::KvRetention& r = layout_.At(l, h);
        const double keys = r.ring() ? std::min<double>(n, r.sink + r.window + 1) : n;
        b.kv += keys * head_token;
      }
    }
    if (!b.selects) return b;
    const double group = shape_.group();
    const double pages = (num_keys + shape_.page_size - 1) / shape_.page_size;  // Quest's bounds
    for (const auto& [index, one] : one_head_) {
      const kernels::KvSelect& sel = layout_.selects[static_cast<size_t>(index)];
      const engine::SelectionRead read =
          engine::SelectedKeys(one, num_keys, shape_.page_size, refresh, chosen_len);
      const bool refreshing =
          sel.decode == kernels::kDecodeRecycle && refresh[static_cast<size_t>(sel.set)] != 0;
      const bool from_logits = sel.decode == kernels::kDecodeSelect || refreshing;
      const bool attends_set = !from_logits;  // consume, pages, recycle between refreshes
      double keys = static_cast<double>(read.keys);
      if (sel.per_q_head != 0 && attends_set) keys = std::min(keys * group, n);
      b.kv += keys * head_token;
      if (from_logits) b.selection += group * n * sizeof(float);
      if (sel.decode == kernels::kDecodePages) {
        b.selection +=
            group * pages * sizeof(float) + pages * 2.0 * shape_.head_dim * shape_.kv_dtype_bytes;
      }
    }
    return b;
  }

  // A step at `num_keys` keys with no recycle state (a layout without recycle heads, or a
  // refresh step of every recycle set).
  SequenceStepBytes At(int num_keys) const {
    std::vector<int32_t> refresh(set_every_.size(), 1), chosen(set_every_.size(), num_keys);
    return At(num_keys, refresh, chosen);
  }

  // The average step of one refresh period whose first step is at `num_keys` keys and refreshes
  // every recycle set; step j is at num_keys + j keys, and a set of stride S refreshes on the
  // steps j with j % S == 0 (SelectionGate's stride rule: the set is chosen anew once
  // refresh_every steps have passed since it was chosen).
  SequenceStepBytes PeriodAverage(int num_keys) const {
    SequenceStepBytes sum;
    std::vector<int32_t> refresh(set_every_.size()), chosen(set_every_.size());
    for (int j = 0; j < period_; ++j) {
      const int n = num_keys + j;
      for (size_t s = 0; s < set_every_.size(); ++s) {
        const int since = j % set_every_[s];
        refresh[s] = since == 0 ? 1 : 0;
        chosen[s] = n - since;
      }
      const SequenceStepBytes b = At(n, refresh, chosen);
      sum.kv += b.kv;
      sum.selection += b.selection;
      sum.selects = sum.selects || b.selects;
    }
    sum.kv /= period_;
    sum.selection /= period_;
    return sum;
  }

 private:
  kvcache::KvLayout layout_;
  StepShape shape_;
  std::vector<std::pair<int, kvcache::KvLayout>> one_head_;  // (index into selects, its layout)
  std::vector<int> set_every_;                               // per set index; 1 unless recycle
  int period_ = 1;
  bool similarity_ = false;
};

}  // namespace headwise::bench
