#include "kvcache/offload_tier.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <variant>

#include "kernels/cpu/list_attention.h"
#include "kernels/cpu/thread_pool.h"
#include "kvcache/ann/exact_search.h"
#include "kvcache/ann/parallel.h"
#include "kvcache/ann/roar_graph.h"
#ifdef HEADWISE_HAVE_HNSWLIB
#include "kvcache/ann/hnsw_baseline.h"
#endif

namespace headwise::kvcache {

namespace {
#ifdef HEADWISE_HAVE_HNSWLIB
using HnswOrNone = ann::HnswIndex;
#else
struct HnswOrNone {};  // never built: Supports refuses the rule
#endif
}  // namespace

namespace {

// Rows [n, D] of keys and values: f32, or bf16 with bf16 rows (the other pair empty).
struct KvRows {
  std::vector<float> keys, values;
  HostVector<kernels::cpu::Bf16> keys16, values16;

  size_t count(size_t d) const { return (keys.size() + keys16.size()) / d; }
  bool bf16() const { return !keys16.empty(); }
  ann::MatrixView KeysF32(size_t d) const { return {keys.data(), keys.size() / d, d}; }
  ann::Bf16MatrixView KeysBf16(size_t d) const { return {keys16.data(), keys16.size() / d, d}; }
  size_t capacity_bytes() const {
    return (keys.capacity() + values.capacity()) * sizeof(float) +
           (keys16.capacity() + values16.capacity()) * sizeof(kernels::cpu::Bf16);
  }
  // Row `row` of keys and values as f32 rows: pointers into f32 storage, or bf16 rows converted
  // into `buffer` [2 * D] (which must stay put while they are used).
  std::pair<const float*, const float*> Row(size_t row, size_t d, float* buffer) const {
    if (!bf16()) return {keys.data() + row * d, values.data() + row * d};
    for (size_t c = 0; c < d; ++c) {
      buffer[c] = kernels::cpu::ToF32(keys16[row * d + c]);
      buffer[d + c] = kernels::cpu::ToF32(values16[row * d + c]);
    }
    return {buffer, buffer + d};
  }
};

template <typename Vector>
void AppendTo(Vector& to, const Vector& rows) {
  to.insert(to.end(), rows.begin(), rows.end());
}

}  // namespace

// One offload (layer, KV head) of a slot.
struct OffloadTier::Head {
  bool offload = false;
  bool stored = false;
  int begin = 0;  // position of the span's row 0
  KvRows span;    // the prompt's dropped span: what the index covers
  // Positions after the span that left the static window as the sequence decoded (Append), in
  // order: searched exactly, beside the index.
  KvRows tail;
  std::vector<float> train;         // [m, D]: the group's training queries, every query head
  std::vector<uint32_t> train_top;  // [m, min(knn_per_query, n)] given by Store, or empty
  // Exact search: monostate.
  std::variant<std::monostate, ann::RoarGraph, HnswOrNone> index;

  size_t rows(size_t d) const { return span.count(d) + tail.count(d); }
  // Row i of span, then tail (a position minus begin).
  std::pair<const float*, const float*> Row(size_t i, size_t d, float* buffer) const {
    const size_t in_span = span.count(d);
    return i < in_span ? span.Row(i, d, buffer) : tail.Row(i - in_span, d, buffer);
  }
};

struct OffloadTier::Slot {
  bool active = false;
  std::atomic<bool> building{false};  // a builder thread is making its indexes
  int64_t reserved = 0;               // host bytes reserved for its prompt (TryReserve)
  OffloadRule rule;
  std::vector<Head> heads;  // [layer * Hkv + kv_head]
};

OffloadTier::OffloadTier(const OffloadTierConfig& config)
    : config_(config), pool_(std::make_unique<kernels::cpu::ThreadPool>(config.threads)) {
  HW_CHECK(config.num_layers > 0 && config.num_kv_heads > 0 && config.head_dim > 0 &&
               config.num_q_heads % config.num_kv_heads == 0 && config.slots > 0,
           "offload tier: {} layers, {} query / {} KV heads, head dim {}, {} slots",
           config.num_layers, config.num_q_heads, config.num_kv_heads, config.head_dim,
           config.slots);
  for (int s = 0; s < config.slots; ++s) slots_.push_back(std::make_shared<Slot>());
}

OffloadTier::~OffloadTier() {
  WaitForBuilds();
}

Status OffloadTier::Supports(const OffloadRule& rule) {
#ifndef HEADWISE_HAVE_HNSWLIB
  if (rule.index == OffloadRule::Index::kHnsw) {
    return Unimplemented(
        "offload index hnsw: this build has no hnswlib (install libhnswlib-dev and rebuild)");
  }
#endif
  if (rule.group_search && (rule.index != OffloadRule::Index::kRoarGraph || !rule.per_q_head)) {
    return InvalidArgument(
        "offload group search: only a RoarGraph index with a set per query head traverses for a "
        "group");
  }
  return Status::Ok();
}

void OffloadTier::Begin(int32_t slot, const KvLayout& layout) {
  HW_CHECK(slot >= 0 && slot < config_.slots, "offload slot {} of {}", slot, config_.slots);
  HW_CHECK(layout.offload.has_value() && layout.num_layers == config_.num_layers &&
               layout.num_kv_heads == config_.num_kv_heads,
           "offload tier: layout \"{}\" does not offload, or has another shape", layout.name);
  slots_[static_cast<size_t>(slot)] = std::make_shared<Slot>();
  Slot& s = *slots_[static_cast<size_t>(slot)];
  s.active = true;
  s.rule = *layout.offload;
  s.heads.resize(layout.heads.size());
  for (size_t i = 0; i < layout.heads.size(); ++i) s.heads[i].offload = layout.heads[i].offload();
}

void OffloadTier::End(int32_t slot) {
  HW_CHECK(slot >= 0 && slot < config_.slots, "offload slot {} of {}", slot, config_.slots);
  slots_[static_cast<size_t>(slot)] = std::make_shared<Slot>();
}

bool OffloadTier::TryReserve(int32_t slot, int64_t bytes) {
  HW_CHECK(active(slot), "offload slot {} is not active", slot);
  Slot& s = *slots_[static_cast<size_t>(slot)];
  if (config_.host_budget_bytes > 0 &&
      reserved_bytes() - s.reserved + bytes > config_.host_budget_bytes) {
    return false;
  }
  s.reserved = bytes;
  return true;
}

int64_t OffloadTier::reserved_bytes() const {
  int64_t bytes = 0;
  for (const auto& s : slots_) bytes += s->reserved;
  return bytes;
}

bool OffloadTier::active(int32_t slot) const {
  return slot >= 0 && slot < config_.slots && slots_[static_cast<size_t>(slot)]->active;
}

OffloadTier::Head& OffloadTier::HeadAt(int32_t slot, int layer, int kv_head) {
  HW_CHECK(active(slot), "offload slot {} is not active", slot);
  HW_CHECK(
      layer >= 0 && layer < config_.num_layers && kv_head >= 0 && kv_head < config_.num_kv_heads,
      "layer {} KV head {} outside {} x {}", layer, kv_head, config_.num_layers,
      config_.num_kv_heads);
  return slots_[static_cast<size_t>(slot)]
      ->heads[static_cast<size_t>(layer * config_.num_kv_heads + kv_head)];
}

void OffloadTier::AddTrainingQueries(int32_t slot, int layer, int pos, const float* q) {
  HW_CHECK(active(slot), "offload slot {} is not active", slot);
  const Slot& s = *slots_[static_cast<size_t>(slot)];
  if (s.rule.index != OffloadRule::Index::kRoarGraph || pos % s.rule.train_stride != 0) return;
  const int group = config_.num_q_heads / config_.num_kv_heads, d = config_.head_dim;
  for (int h = 0; h < config_.num_kv_heads; ++h) {
    Head& head = HeadAt(slot, layer, h);
    if (!head.offload) continue;
    const float* rows = q + static_cast<size_t>(h) * group * d;
    head.train.insert(head.train.end(), rows, rows + static_cast<size_t>(group) * d);
  }
}

std::span<const float> OffloadTier::TrainingQueries(int32_t slot, int layer, int kv_head) {
  return HeadAt(slot, layer, kv_head).train;
}

OffloadTier::Head& OffloadTier::StoreHead(int32_t slot, int layer, int kv_head, int begin,
                                          size_t keys, size_t values, bool bf16,
                                          std::vector<uint32_t> train_top) {
  Head& head = HeadAt(slot, layer, kv_head);
  HW_CHECK(head.offload && !head.stored,
           "layer {} KV head {}: not an offload head, or stored already", layer, kv_head);
  HW_CHECK(bf16 == config_.bf16_rows, "offloaded rows are {}, the tier keeps {}",
           bf16 ? "bf16" : "f32", config_.bf16_rows ? "bf16" : "f32");
  HW_CHECK(keys == values && keys % static_cast<size_t>(config_.head_dim) == 0,
           "offloaded keys ({}) and values ({}) must both be rows of {}", keys, values,
           config_.head_dim);
  head.stored = true;
  head.begin = begin;
  head.train_top = std::move(train_top);
  return head;
}

void OffloadTier::Store(int32_t slot, int layer, int kv_head, int begin, std::vector<float> keys,
                        std::vector<float> values, std::vector<uint32_t> train_top) {
  Head& head = StoreHead(slot, layer, kv_head, begin, keys.size(), values.size(), false,
                         std::move(train_top));
  head.span.keys = std::move(keys);
  head.span.values = std::move(values);
}

void OffloadTier::Store(int32_t slot, int layer, int kv_head, int begin,
                        HostVector<kernels::cpu::Bf16> keys, HostVector<kernels::cpu::Bf16> values,
                        std::vector<uint32_t> train_top) {
  Head& head = StoreHead(slot, layer, kv_head, begin, keys.size(), values.size(), true,
                         std::move(train_top));
  head.span.keys16 = std::move(keys);
  head.span.values16 = std::move(values);
}

OffloadTier::Head& OffloadTier::AppendHead(int32_t slot, int layer, int kv_head, int begin,
                                           size_t keys, size_t values, bool bf16) {
  HW_CHECK(ready(slot), "offload slot {} appends while its indexes are being built", slot);
  Head& head = HeadAt(slot, layer, kv_head);
  const auto d = static_cast<size_t>(config_.head_dim);
  HW_CHECK(head.stored, "layer {} KV head {}: append before the span is stored", layer, kv_head);
  HW_CHECK(begin == head.begin + static_cast<int>(head.rows(d)),
           "layer {} KV head {}: rows appended at position {}, the host holds [{}, {})", layer,
           kv_head, begin, head.begin, head.begin + static_cast<int>(head.rows(d)));
  HW_CHECK(bf16 == config_.bf16_rows && keys == values && keys % d == 0,
           "appended rows: {} keys and {} values of {}, the tier keeps {} rows of {}", keys, values,
           bf16 ? "bf16" : "f32", config_.bf16_rows ? "bf16" : "f32", d);
  return head;
}

void OffloadTier::Append(int32_t slot, int layer, int kv_head, int begin,
                         const std::vector<float>& keys, const std::vector<float>& values) {
  Head& head = AppendHead(slot, layer, kv_head, begin, keys.size(), values.size(), false);
  AppendTo(head.tail.keys, keys);
  AppendTo(head.tail.values, values);
}

void OffloadTier::Append(int32_t slot, int layer, int kv_head, int begin,
                         const HostVector<kernels::cpu::Bf16>& keys,
                         const HostVector<kernels::cpu::Bf16>& values) {
  Head& head = AppendHead(slot, layer, kv_head, begin, keys.size(), values.size(), true);
  AppendTo(head.tail.keys16, keys);
  AppendTo(head.tail.values16, values);
}

// Runs on a builder thread; nothing else touches the heads' indexes until it is done (ready()).
// Whole heads go to the threads, each built on one thread where there are at least as many heads
// as threads (a model's layers x KV heads, usually): a build's own threads wait at its serial steps
// and start afresh at every step, whole heads keep every thread busy. Fewer heads split the threads
// between them. The index is the same for any thread count.
void OffloadTier::BuildIndexes(std::vector<Head>& heads, const OffloadRule& rule, size_t dim,
                               int threads) {
  std::vector<size_t> stored;
  for (size_t i = 0; i < heads.size(); ++i) {
    if (heads[i].stored) stored.push_back(i);
  }
  const int outer = std::max(1, std::min(threads, static_cast<int>(stored.size())));
  const int per_head = std::max(1, threads / outer);
  ann::ParallelFor(
      stored.size(), outer,
      [&](size_t j) { BuildIndex(heads[stored[j]], stored[j], rule, dim, per_head); }, /*chunk=*/1);
}

void OffloadTier::BuildIndex(Head& head, size_t i, const OffloadRule& rule, size_t dim,
                             int threads) {
  const bool bf16 = head.span.bf16();
  if (rule.index == OffloadRule::Index::kRoarGraph) {
    const ann::MatrixView train{head.train.data(), head.train.size() / dim, dim};
    ann::RoarGraphParams p;
    p.n_q = static_cast<size_t>(rule.knn_per_query);
    p.max_degree = static_cast<size_t>(rule.max_degree);
    p.candidate_list = static_cast<size_t>(rule.build_list);
    p.num_threads = threads;
    auto graph = bf16 ? ann::RoarGraph::Build(head.span.KeysBf16(dim), train, p, head.train_top)
                      : ann::RoarGraph::Build(head.span.KeysF32(dim), train, p, head.train_top);
    HW_CHECK(graph.ok(), "offload index of head {}: {}", i, graph.status().ToString());
    head.index = std::move(*graph);
  }
#ifdef HEADWISE_HAVE_HNSWLIB
  if (rule.index == OffloadRule::Index::kHnsw) {
    ann::HnswParams p;
    p.max_degree = static_cast<size_t>(rule.max_degree);
    p.ef_construction = static_cast<size_t>(rule.build_list);
    p.num_threads = threads;
    // hnswlib copies the vectors into its own storage, as f32: bf16 rows convert for the build.
    std::vector<float> converted;
    if (bf16) {
      converted.reserve(head.span.keys16.size());
      for (kernels::cpu::Bf16 x : head.span.keys16) converted.push_back(kernels::cpu::ToF32(x));
    }
    auto hnsw =
        ann::HnswIndex::Build(bf16 ? ann::MatrixView{converted.data(), converted.size() / dim, dim}
                                   : head.span.KeysF32(dim),
                              p);
    HW_CHECK(hnsw.ok(), "offload index of head {}: {}", i, hnsw.status().ToString());
    hnsw->SetEf(static_cast<size_t>(rule.search_list));
    head.index = std::move(*hnsw);
  }
#endif
  head.train = {};
  head.train_top = {};
}

void OffloadTier::Build(int32_t slot) {
  HW_CHECK(active(slot), "offload slot {} is not active", slot);
  const std::shared_ptr<Slot> s = slots_[static_cast<size_t>(slot)];
  if (s->rule.index == OffloadRule::Index::kExact) {
    for (Head& head : s->heads) head.train = {};
    return;
  }
  // Builders that finished are joined here; a slot ended meanwhile keeps its data alive in its
  // builder until then.
  std::erase_if(builders_, [](const std::future<void>& f) {
    return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  });
  s->building.store(true, std::memory_order_release);
  const auto dim = static_cast<size_t>(config_.head_dim);
  builders_.push_back(std::async(std::launch::async, [this, s, dim, threads = config_.threads] {
    const auto t0 = std::chrono::steady_clock::now();
    BuildIndexes(s->heads, s->rule, dim, threads);
    {
      std::lock_guard lock(finished_mu_);
      finished_builds_.push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    s->building.store(false, std::memory_order_release);
  }));
}

bool OffloadTier::ready(int32_t slot) const {
  return !active(slot) ||
         !slots_[static_cast<size_t>(slot)]->building.load(std::memory_order_acquire);
}

void OffloadTier::WaitForBuilds() {
  for (std::future<void>& f : builders_) f.wait();
  builders_.clear();
}

std::vector<double> OffloadTier::TakeFinishedBuilds() {
  std::lock_guard lock(finished_mu_);
  return std::exchange(finished_builds_, {});
}

OffloadTier::RetrieveStats OffloadTier::TakeRetrieveStats() {
  return std::exchange(retrieve_stats_, {});
}

namespace {

StatusOr<std::vector<ann::ScoredId>> ExactOf(const KvRows& rows, std::span<const float> query,
                                             size_t k, size_t d) {
  return rows.bf16() ? ann::ExactTopK(rows.KeysBf16(d), query, k)
                     : ann::ExactTopK(rows.KeysF32(d), query, k);
}

// `top` (the span's best keys for `query`, best first) merged with the exact top_k of the tail
// (row ids after the span's), best first; the tail's keys count as scanned.
Status MergeTail(const KvRows& tail, size_t in_span, std::span<const float> query, size_t k,
                 size_t dim, ann::AnnSearchResult& found) {
  const size_t in_tail = tail.count(dim);
  if (in_tail == 0) return Status::Ok();
  HW_ASSIGN_OR_RETURN(std::vector<ann::ScoredId> best, ExactOf(tail, query, k, dim));
  for (ann::ScoredId& e : best) e.id += static_cast<uint32_t>(in_span);
  found.top.insert(found.top.end(), best.begin(), best.end());
  std::sort(found.top.begin(), found.top.end(), ann::BetterThan);
  found.top.resize(std::min(found.top.size(), k));
  found.scanned += in_tail;
  return Status::Ok();
}

// The top_k keys of `head` for each of `group` queries [group, dim] as row ids (span, then tail),
// best first, and the keys scored for each: the span's by its index (one search per query, or
// with group_search one RoarGraph traversal that scores every key it reaches for all of them),
// the tail's exactly, merged by score.
template <typename Head>
StatusOr<std::vector<ann::AnnSearchResult>> SearchHead(Head& head, const OffloadRule& rule,
                                                       std::span<const float> queries, size_t group,
                                                       size_t dim) {
  const size_t k = static_cast<size_t>(rule.top_k);
  const size_t queue = std::max(k, static_cast<size_t>(rule.search_list));
  std::vector<ann::AnnSearchResult> found(group);
  auto query = [&](size_t g) { return queries.subspan(g * dim, dim); };
  if (auto* graph = std::get_if<ann::RoarGraph>(&head.index)) {
    if (rule.group_search) {
      HW_ASSIGN_OR_RETURN(ann::GroupSearchResult all, graph->SearchGroup(queries, group, k, queue));
      for (size_t g = 0; g < group; ++g) found[g] = {std::move(all.top[g]), all.scanned};
    } else {
      for (size_t g = 0; g < group; ++g) {
        HW_ASSIGN_OR_RETURN(found[g], graph->Search(query(g), k, queue));
      }
    }
#ifdef HEADWISE_HAVE_HNSWLIB
  } else if (auto* hnsw = std::get_if<ann::HnswIndex>(&head.index)) {
    for (size_t g = 0; g < group; ++g) {
      HW_ASSIGN_OR_RETURN(found[g], hnsw->Search(query(g), k));
    }
#endif
  } else {
    for (size_t g = 0; g < group; ++g) {
      HW_ASSIGN_OR_RETURN(found[g].top, ExactOf(head.span, query(g), k, dim));
      found[g].scanned = head.span.count(dim);
    }
  }
  for (size_t g = 0; g < group; ++g) {
    HW_RETURN_IF_ERROR(MergeTail(head.tail, head.span.count(dim), query(g), k, dim, found[g]));
  }
  return found;
}

}  // namespace

StatusOr<OffloadTier::UnitSets> OffloadTier::SearchUnit(int32_t slot, int layer, int q_head,
                                                        const float* q) {
  const int group = config_.num_q_heads / config_.num_kv_heads;
  const auto d = static_cast<size_t>(config_.head_dim);
  HW_CHECK(ready(slot), "offload slot {} searches while its indexes are being built", slot);
  const int kv_head = q_head / group;
  Head& head = HeadAt(slot, layer, kv_head);
  const OffloadRule& rule = slots_[static_cast<size_t>(slot)]->rule;
  UnitSets unit;
  if (!head.stored) return unit;
  const float* first = q + static_cast<size_t>(kv_head) * group * d;  // the group's queries
  std::vector<ann::AnnSearchResult> found;
  if (rule.per_q_head && rule.group_search) {
    unit.first_head = kv_head * group;
    HW_ASSIGN_OR_RETURN(found, SearchHead(head, rule, {first, group * d}, group, d));
  } else if (rule.per_q_head) {
    unit.first_head = q_head;
    HW_ASSIGN_OR_RETURN(found,
                        SearchHead(head, rule, {q + static_cast<size_t>(q_head) * d, d}, 1, d));
  } else {
    unit.first_head = kv_head * group;
    unit.heads_per_set = group;
    std::vector<float> mean(d, 0.0f);
    for (int g = 0; g < group; ++g) {
      for (size_t c = 0; c < d; ++c) mean[c] += first[static_cast<size_t>(g) * d + c];
    }
    for (float& x : mean) x /= static_cast<float>(group);
    HW_ASSIGN_OR_RETURN(found, SearchHead(head, rule, mean, 1, d));
  }
  for (const ann::AnnSearchResult& f : found) {
    RetrievedKeys keys;
    keys.scanned = f.scanned;
    for (const ann::ScoredId& e : f.top) {
      keys.positions.push_back(head.begin + static_cast<int32_t>(e.id));
    }
    std::sort(keys.positions.begin(), keys.positions.end());
    unit.sets.push_back(std::move(keys));
  }
  return unit;
}

StatusOr<RetrievedKeys> OffloadTier::Search(int32_t slot, int layer, int q_head, const float* q) {
  HW_ASSIGN_OR_RETURN(UnitSets unit, SearchUnit(slot, layer, q_head, q));
  if (unit.sets.empty()) return RetrievedKeys{};
  return std::move(
      unit.sets[unit.sets.size() == 1 ? 0 : static_cast<size_t>(q_head - unit.first_head)]);
}

void OffloadTier::Retrieve(int layer, std::span<const int32_t> slots, const float* q, float* out,
                           float* lse) {
  const int hq = config_.num_q_heads, hkv = config_.num_kv_heads;
  const int group = hq / hkv;
  const auto d = static_cast<size_t>(config_.head_dim);
  const auto num_seqs = static_cast<int64_t>(slots.size());
  std::fill(out, out + static_cast<size_t>(num_seqs) * hq * d, 0.0f);
  std::fill(lse, lse + static_cast<size_t>(num_seqs) * hq, -std::numeric_limits<float>::infinity());
  const auto start = std::chrono::steady_clock::now();
  std::atomic<int64_t> searches = 0, scanned = 0, over = 0;
  // One unit per (sequence, query head): a batch of one 8B sequence has 32 searches a layer for
  // 16 cores, against 8 units per (sequence, KV head). A group searching together (its mean query,
  // or one traversal for its queries) is one unit, its first query head's.
  pool_->ParallelFor(
      num_seqs * hq, std::numeric_limits<int64_t>::max(), [&](int64_t begin, int64_t end) {
        kernels::cpu::KeyList list;
        kernels::cpu::ListScratch scratch;
        std::vector<float> converted;
        int64_t my_searches = 0, my_scanned = 0, my_over = 0;
        for (int64_t u = begin; u < end; ++u) {
          const int64_t seq = u / hq;
          const int qh = static_cast<int>(u % hq), kv_head = qh / group;
          const int32_t slot = slots[static_cast<size_t>(seq)];
          if (!active(slot)) continue;
          HW_CHECK(ready(slot), "offload slot {} retrieves while its indexes are being built",
                   slot);
          const OffloadRule& rule = slots_[static_cast<size_t>(slot)]->rule;
          if ((!rule.per_q_head || rule.group_search) && qh % group != 0) continue;
          Head& head = HeadAt(slot, layer, kv_head);
          if (!head.stored || head.rows(d) == 0) continue;
          const float* q_row = q + static_cast<size_t>(seq) * hq * d;
          auto unit = SearchUnit(slot, layer, qh, q_row);
          HW_CHECK(unit.ok(), "offload search, layer {} KV head {}: {}", layer, kv_head,
                   unit.status().ToString());
          // A group's traversal reads each key it scores once for all its queries.
          const size_t traversals = rule.group_search ? 1 : unit->sets.size();
          for (size_t i = 0; i < traversals; ++i) {
            ++my_searches;
            my_scanned += static_cast<int64_t>(unit->sets[i].scanned);
            my_over += static_cast<int64_t>(head.rows(d));
          }
          for (size_t i = 0; i < unit->sets.size(); ++i) {
            const RetrievedKeys& found = unit->sets[i];
            list.Clear();
            // bf16 rows convert into `converted`, [keys | values] per row (sized first: it must
            // not move); f32 rows are read in place.
            converted.resize(2 * found.positions.size() * d);
            float* buffer = converted.data();
            for (int32_t pos : found.positions) {
              const auto [k, v] = head.Row(static_cast<size_t>(pos - head.begin), d, buffer);
              list.k.push_back(k);
              list.v.push_back(v);
              buffer += 2 * d;
            }
            const int first_head = unit->first_head + static_cast<int>(i);
            const size_t first = static_cast<size_t>(seq) * hq + static_cast<size_t>(first_head);
            kernels::cpu::AttendList(q_row + static_cast<size_t>(first_head) * d,
                                     unit->heads_per_set, static_cast<int64_t>(d), list,
                                     config_.scale, {out + first * d, lse + first, nullptr, 0},
                                     scratch);
          }
        }
        searches += my_searches;
        scanned += my_scanned;
        over += my_over;
      });
  ++retrieve_stats_.calls;
  retrieve_stats_.seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  retrieve_stats_.searches += searches;
  retrieve_stats_.keys_scanned += scanned;
  retrieve_stats_.keys_over += over;
}

size_t OffloadTier::bytes_held() const {
  size_t bytes = 0;
  for (const auto& s : slots_) {
    if (s->building.load(std::memory_order_acquire)) {  // its builder owns the heads for now
      bytes += static_cast<size_t>(s->reserved);
      continue;
    }
    for (const Head& h : s->heads) {
      bytes += h.span.capacity_bytes() + h.tail.capacity_bytes() +
               h.train.capacity() * sizeof(float) + h.train_top.capacity() * sizeof(uint32_t);
      if (const auto* graph = std::get_if<ann::RoarGraph>(&h.index)) {
        bytes += graph->num_edges() * sizeof(uint32_t) + (graph->size() + 1) * sizeof(size_t);
      }
    }
  }
  return bytes;
}

size_t OffloadTier::BytesFor(const OffloadTierConfig& config, const KvLayout& layout, int tokens) {
  if (!layout.offload) return 0;
  const auto heads = static_cast<size_t>(layout.CountStorage(kernels::kStorageOffload));
  const auto n = static_cast<size_t>(std::max(tokens, 0));
  const auto d = static_cast<size_t>(config.head_dim);
  const auto group = static_cast<size_t>(config.num_q_heads / config.num_kv_heads);
  const OffloadRule& rule = *layout.offload;
  // Keys and values (f32 or bf16); a graph's edges (reverse edges and reachability links can add
  // some beyond max_degree: counted twice) and offsets; the training queries and their neighbour
  // lists until the build.
  size_t per_head = 2 * n * d * (config.bf16_rows ? sizeof(kernels::cpu::Bf16) : sizeof(float));
  if (rule.index != OffloadRule::Index::kExact) {
    per_head += n * (2 * static_cast<size_t>(rule.max_degree) * sizeof(uint32_t) + sizeof(size_t));
  }
  if (rule.index == OffloadRule::Index::kRoarGraph) {
    per_head += (n / static_cast<size_t>(rule.train_stride) + 1) * group *
                (d * sizeof(float) + static_cast<size_t>(rule.knn_per_query) * sizeof(uint32_t));
  }
  return heads * per_head;
}

}  // namespace headwise::kvcache
