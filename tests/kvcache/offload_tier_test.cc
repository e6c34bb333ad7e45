// The host tier of offload heads (kvcache/offload_tier.h): with exact search, each query head's
// result is list attention over its exact top-k keys, bit for bit (the same arithmetic as the CPU
// backend's); with top_k beyond the span it is attention over every offloaded key; a search with
// the group's mean query gives the group one set; RoarGraph searched with a queue over the whole
// span finds the exact top-k; rows appended after the span are searched exactly beside the index;
// rows of other heads, idle slots and unstored heads come back empty
// (lse -inf); training queries follow the stride; and the admission estimate covers what a
// built slot holds.
#include "kvcache/offload_tier.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/list_attention.h"
#include "kvcache/ann/exact_search.h"

namespace headwise::kvcache {
namespace {

constexpr int kLayers = 2, kKvHeads = 2, kQHeads = 8, kDim = 16;
constexpr float kScale = 0.25f;

// Layer 1's KV head 0 offloads; everything else is full.
KvLayout OffloadLayout(OffloadRule rule) {
  KvLayout layout = KvLayout::Dense(kLayers, kKvHeads, "ra");
  layout.At(1, 0) = kernels::KvRetention::Offload(4, 8);
  layout.offload = rule;
  return layout;
}

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// How a Tier keeps its span: f32 values, f32 copies of bf16-representable values, or those
// values as bf16 rows (OffloadTierConfig::bf16_rows).
enum class Rows { kF32, kF32OfBf16, kBf16 };

OffloadTierConfig TierConfig(Rows rows) {
  OffloadTierConfig config{kLayers, kKvHeads, kQHeads, kDim, kScale, /*slots=*/3, /*threads=*/2};
  config.bf16_rows = rows == Rows::kBf16;
  return config;
}

HostVector<kernels::cpu::Bf16> ToBf16(const std::vector<float>& v) {
  HostVector<kernels::cpu::Bf16> out;
  for (float x : v) out.push_back({F32ToBF16(x)});
  return out;
}

struct Tier {
  OffloadTierConfig config;
  OffloadTier tier;
  std::vector<float> keys, values;  // the span [begin, begin + n) of layer 1, KV head 0
  int begin = 4;
  int n = 0;  // rows held: the span, then appended ones
  Rows rows;

  // Slot 1 holds a prompt whose span has n keys, trained by `train` prompt positions.
  Tier(OffloadRule rule, int span, std::mt19937& rng, int train = 64, Rows rows = Rows::kF32)
      : config(TierConfig(rows)), tier(config), n(span), rows(rows) {
    const KvLayout layout = OffloadLayout(rule);
    tier.Begin(1, layout);
    for (int pos = 0; pos < train; ++pos) {
      const std::vector<float> q = Random(static_cast<size_t>(kQHeads) * kDim, rng);
      for (int l = 0; l < kLayers; ++l) tier.AddTrainingQueries(1, l, pos, q.data());
    }
    keys = Random(static_cast<size_t>(n) * kDim, rng);
    values = Random(static_cast<size_t>(n) * kDim, rng);
    if (rows != Rows::kF32) {
      for (auto* v : {&keys, &values}) {
        for (float& x : *v) x = BF16ToF32(F32ToBF16(x));
      }
    }
    if (rows == Rows::kBf16) {
      tier.Store(1, 1, 0, begin, ToBf16(keys), ToBf16(values));
    } else {
      tier.Store(1, 1, 0, begin, keys, values);
    }
    tier.Build(1);
    tier.WaitForBuilds();
    REQUIRE(tier.ready(1));
  }

  // `count` rows after what the host holds, as decoded tokens leaving the window are appended
  // (OffloadTier::Append); their keys `scale` times as long as the span's, so that they rank.
  // `keys` and `values` then hold span and tail, as one run of positions from `begin`.
  void Append(int count, float scale, std::mt19937& rng) {
    std::vector<float> k = Random(static_cast<size_t>(count) * kDim, rng);
    std::vector<float> v = Random(static_cast<size_t>(count) * kDim, rng);
    for (float& x : k) x *= scale;
    if (rows != Rows::kF32) {
      for (auto* m : {&k, &v}) {
        for (float& x : *m) x = BF16ToF32(F32ToBF16(x));
      }
    }
    if (rows == Rows::kBf16) {
      tier.Append(1, 1, 0, begin + n, ToBf16(k), ToBf16(v));
    } else {
      tier.Append(1, 1, 0, begin + n, k, v);
    }
    keys.insert(keys.end(), k.begin(), k.end());
    values.insert(values.end(), v.begin(), v.end());
    n += count;
  }

  // Attention of q_row's query heads [qh, qh + heads) over span rows `rows`, by list attention.
  void Reference(const float* q_row, int qh, int heads, const std::vector<uint32_t>& rows,
                 float* out, float* lse) const {
    kernels::cpu::KeyList list;
    for (uint32_t r : rows) {
      list.k.push_back(keys.data() + static_cast<size_t>(r) * kDim);
      list.v.push_back(values.data() + static_cast<size_t>(r) * kDim);
    }
    kernels::cpu::ListScratch scratch;
    kernels::cpu::AttendList(q_row + static_cast<size_t>(qh) * kDim, heads, kDim, list, kScale,
                             {out, lse, nullptr, 0}, scratch);
  }
  std::vector<uint32_t> ExactRows(std::span<const float> query, size_t k) const {
    auto top = ann::ExactTopK(ann::MatrixView{keys.data(), static_cast<size_t>(n), kDim}, query, k);
    REQUIRE(top.ok());
    std::vector<uint32_t> rows;
    for (const auto& e : *top) rows.push_back(e.id);
    std::sort(rows.begin(), rows.end());
    return rows;
  }
};

struct Step {
  std::vector<int32_t> slots;
  std::vector<float> q, out, lse;
  explicit Step(std::vector<int32_t> s, std::mt19937& rng)
      : slots(std::move(s)),
        q(Random(slots.size() * kQHeads * kDim, rng)),
        out(slots.size() * kQHeads * kDim, NAN),
        lse(slots.size() * kQHeads, NAN) {}
  void Run(OffloadTier& tier, int layer) {
    tier.Retrieve(layer, slots, q.data(), out.data(), lse.data());
  }
  const float* QRow(size_t s) const { return q.data() + s * kQHeads * kDim; }
  const float* Out(size_t s, int qh) const {
    return out.data() + (s * kQHeads + static_cast<size_t>(qh)) * kDim;
  }
  float Lse(size_t s, int qh) const { return lse[s * kQHeads + static_cast<size_t>(qh)]; }
};

// Sequence 0 of `step` (slot 1) retrieved, for query head qh of layer 1, its exact top-k rows of
// t.keys: the output and lse are list attention over them, bit for bit, and Search reports them
// as positions. Returns the rows.
std::vector<uint32_t> CheckExactTopK(Tier& t, const Step& step, int qh, size_t k) {
  const auto rows = t.ExactRows({step.QRow(0) + qh * kDim, kDim}, k);
  std::vector<float> want(kDim);
  float want_lse = 0;
  t.Reference(step.QRow(0), qh, 1, rows, want.data(), &want_lse);
  CHECK(std::memcmp(step.Out(0, qh), want.data(), kDim * sizeof(float)) == 0);
  CHECK(step.Lse(0, qh) == want_lse);
  auto found = t.tier.Search(1, 1, qh, step.QRow(0));
  REQUIRE(found.ok());
  std::vector<int32_t> positions;
  for (uint32_t r : rows) positions.push_back(t.begin + static_cast<int32_t>(r));
  CHECK(found->positions == positions);
  return rows;
}

bool Empty(const Step& step, size_t s, int qh) {
  const float* o = step.Out(s, qh);
  return step.Lse(s, qh) == -std::numeric_limits<float>::infinity() &&
         std::all_of(o, o + kDim, [](float x) { return x == 0.0f; });
}

TEST_CASE("Offload tier: exact search attends each query head's exact top-k", "[kvcache]") {
  std::mt19937 rng(std::random_device{}());
  OffloadRule rule;
  rule.index = OffloadRule::Index::kExact;
  rule.top_k = 12;
  Tier t(rule, 200, rng);
  // Sequence 0 in slot 1; sequence 1 without a slot; sequence 2 in an idle slot.
  Step step({1, -1, 2}, rng);
  step.Run(t.tier, 1);
  for (int qh = 0; qh < kQHeads; ++qh) {
    INFO("query head " << qh);
    if (qh >= kQHeads / kKvHeads) {  // KV head 1 is full storage
      CHECK(Empty(step, 0, qh));
      continue;
    }
    REQUIRE(CheckExactTopK(t, step, qh, 12).size() == 12);
  }
  for (int qh = 0; qh < kQHeads; ++qh) {
    CHECK(Empty(step, 1, qh));
    CHECK(Empty(step, 2, qh));
  }
  // The step's statistics: one call, a search per query head of the offload KV head, each
  // scanning all 200 keys (exact).
  const OffloadTier::RetrieveStats stats = t.tier.TakeRetrieveStats();
  CHECK(stats.calls == 1);
  CHECK(stats.seconds > 0);
  CHECK(stats.searches == kQHeads / kKvHeads);
  CHECK(stats.keys_scanned == 200 * kQHeads / kKvHeads);
  CHECK(stats.keys_over == stats.keys_scanned);
  CHECK(t.tier.TakeRetrieveStats().calls == 0);
  // Layer 0 has no offload head.
  Step other({1}, rng);
  other.Run(t.tier, 0);
  for (int qh = 0; qh < kQHeads; ++qh) CHECK(Empty(other, 0, qh));
  CHECK(t.tier.TakeRetrieveStats().searches == 0);
  // Ended: nothing retrieved.
  t.tier.End(1);
  CHECK_FALSE(t.tier.active(1));
  Step ended({1}, rng);
  ended.Run(t.tier, 1);
  for (int qh = 0; qh < kQHeads; ++qh) CHECK(Empty(ended, 0, qh));
  CHECK(t.tier.bytes_held() == 0);
}

TEST_CASE("Offload tier: top_k beyond the span attends every offloaded key", "[kvcache]") {
  std::mt19937 rng(std::random_device{}());
  for (auto index : {OffloadRule::Index::kExact, OffloadRule::Index::kRoarGraph}) {
    OffloadRule rule;
    rule.index = index;
    rule.top_k = 500;
    Tier t(rule, 37, rng);
    Step step({1}, rng);
    step.Run(t.tier, 1);
    std::vector<uint32_t> all(37);
    for (uint32_t i = 0; i < 37; ++i) all[i] = i;
    for (int qh = 0; qh < kQHeads / kKvHeads; ++qh) {
      std::vector<float> want(kDim);
      float want_lse = 0;
      t.Reference(step.QRow(0), qh, 1, all, want.data(), &want_lse);
      CHECK(std::memcmp(step.Out(0, qh), want.data(), kDim * sizeof(float)) == 0);
      CHECK(step.Lse(0, qh) == want_lse);
    }
  }
}

TEST_CASE("Offload tier: the group's mean query gives the group one set", "[kvcache]") {
  std::mt19937 rng(std::random_device{}());
  OffloadRule rule;
  rule.index = OffloadRule::Index::kExact;
  rule.top_k = 9;
  rule.per_q_head = false;
  Tier t(rule, 150, rng);
  Step step({1}, rng);
  step.Run(t.tier, 1);
  const int group = kQHeads / kKvHeads;
  std::vector<float> mean(kDim, 0.0f);
  for (int g = 0; g < group; ++g) {
    for (int c = 0; c < kDim; ++c) mean[static_cast<size_t>(c)] += step.QRow(0)[g * kDim + c];
  }
  for (float& x : mean) x /= static_cast<float>(group);
  const auto rows = t.ExactRows(mean, 9);
  std::vector<float> want(static_cast<size_t>(group) * kDim);
  std::vector<float> want_lse(static_cast<size_t>(group));
  t.Reference(step.QRow(0), 0, group, rows, want.data(), want_lse.data());
  CHECK(std::memcmp(step.Out(0, 0), want.data(), want.size() * sizeof(float)) == 0);
  for (int g = 0; g < group; ++g) CHECK(step.Lse(0, g) == want_lse[static_cast<size_t>(g)]);
}

TEST_CASE("Offload tier: RoarGraph with a queue over the span finds the exact top-k", "[kvcache]") {
  std::mt19937 rng(std::random_device{}());
  OffloadRule rule;
  rule.index = OffloadRule::Index::kRoarGraph;
  rule.top_k = 10;
  rule.search_list = 1000;  // at least every key of the span
  rule.train_stride = 2;
  Tier t(rule, 300, rng);
  Step step({1}, rng);
  for (int qh = 0; qh < kQHeads / kKvHeads; ++qh) {
    auto found = t.tier.Search(1, 1, qh, step.QRow(0));
    REQUIRE(found.ok());
    std::vector<int32_t> want;
    for (uint32_t r : t.ExactRows({step.QRow(0) + qh * kDim, kDim}, 10)) {
      want.push_back(t.begin + static_cast<int32_t>(r));
    }
    CHECK(found->positions == want);
  }
}

// Decoded tokens that leave the device's window join the host's rows after the span: not indexed,
// searched exactly beside the index and merged by score, so retrieval over span + appended rows
// is the exact top-k of both (the graph searched with a queue over every key), attended as one
// set; f32 and bf16 rows.
TEST_CASE("Offload tier: appended rows are searched exactly beside the index", "[kvcache]") {
  std::mt19937 rng(std::random_device{}());
  // RoarGraph also with one traversal for each group's queries (group_search).
  for (int mode : {0, 1, 2}) {
    const auto index = mode == 0 ? OffloadRule::Index::kExact : OffloadRule::Index::kRoarGraph;
    for (Rows rows : {Rows::kF32, Rows::kBf16}) {
      INFO((mode == 0   ? "exact"
            : mode == 1 ? "RoarGraph"
                        : "RoarGraph, group search")
           << (rows == Rows::kBf16 ? ", bf16 rows" : ", f32 rows"));
      OffloadRule rule;
      rule.index = index;
      rule.group_search = mode == 2;
      rule.top_k = 10;
      rule.search_list = 1000;  // at least every key of the span
      rule.train_stride = 2;
      Tier t(rule, 120, rng, 64, rows);
      const size_t span_bytes = t.tier.bytes_held();
      t.Append(20, 3.0f, rng);
      t.Append(13, 3.0f, rng);
      CHECK(t.tier.bytes_held() >= span_bytes + 2 * 33 * kDim * sizeof(uint16_t));
      Step step({1}, rng);
      step.Run(t.tier, 1);
      int from_tail = 0;
      for (int qh = 0; qh < kQHeads / kKvHeads; ++qh) {
        INFO("query head " << qh);
        for (uint32_t r : CheckExactTopK(t, step, qh, 10)) from_tail += r >= 120;
      }
      CHECK(from_tail > 0);  // the appended keys rank: a search that missed them would fail
      // A traversal per query head, or one for the group; each reads all 153 keys here.
      const OffloadTier::RetrieveStats stats = t.tier.TakeRetrieveStats();
      const int searches = mode == 2 ? 1 : kQHeads / kKvHeads;
      CHECK(stats.searches == searches);
      CHECK(stats.keys_over == searches * 153);
      CHECK(stats.keys_scanned == searches * 153);
    }
  }
}

TEST_CASE("Offload tier: group search is refused where it has no meaning", "[kvcache]") {
  OffloadRule rule;
  rule.group_search = true;
  CHECK(OffloadTier::Supports(rule).ok());
  rule.per_q_head = false;  // one search with the mean query already
  CHECK(OffloadTier::Supports(rule).code() == StatusCode::kInvalidArgument);
  rule.per_q_head = true;
  rule.index = OffloadRule::Index::kExact;
  CHECK(OffloadTier::Supports(rule).code() == StatusCode::kInvalidArgument);
}

// The CUDA backend's KV arrives as bf16 and stays bf16 on the host (half the memory): searches and
// attention read the rows converted exactly, so a tier of bf16 rows retrieves the same keys and
// writes the same bits as one holding the same values in f32; with exact search and with RoarGraph
// (approximate: a queue below the span), per query head and with the group's mean.
TEST_CASE("Offload tier: bf16 rows retrieve and attend as the same values in f32", "[kvcache]") {
  const unsigned seed = std::random_device{}();
  INFO("seed " << seed);
  for (auto index : {OffloadRule::Index::kExact, OffloadRule::Index::kRoarGraph}) {
    for (int search : {0, 1, 2}) {  // per query head, the group's mean, a group traversal
      if (search == 2 && index != OffloadRule::Index::kRoarGraph) continue;
      INFO("index " << static_cast<int>(index) << " search " << search);
      OffloadRule rule;
      rule.index = index;
      rule.top_k = 12;
      rule.search_list = 24;
      rule.per_q_head = search != 1;
      rule.group_search = search == 2;
      std::mt19937 rng_f32(seed), rng_bf16(seed);
      Tier f32(rule, 400, rng_f32, 64, Rows::kF32OfBf16);
      Tier bf16(rule, 400, rng_bf16, 64, Rows::kBf16);
      REQUIRE(bf16.keys == f32.keys);
      Step a({1, 0}, rng_f32), b({1, 0}, rng_bf16);
      a.Run(f32.tier, 1);
      b.Run(bf16.tier, 1);
      CHECK_FALSE(Empty(a, 0, 0));
      CHECK(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) == 0);
    }
  }
  // Half the bytes of f32.
  std::mt19937 rng(seed);
  OffloadRule rule;
  rule.index = OffloadRule::Index::kExact;  // no graph: the rows alone
  Tier t(rule, 50, rng, 0, Rows::kBf16);
  CHECK(t.tier.bytes_held() >= 2 * 50 * kDim * sizeof(uint16_t));
  CHECK(t.tier.bytes_held() < 2 * 50 * kDim * sizeof(float));
}

TEST_CASE("Offload tier: training queries follow the stride; the estimate covers a slot",
          "[kvcache]") {
  std::mt19937 rng(7);
  OffloadRule rule;
  rule.train_stride = 4;
  const KvLayout layout = OffloadLayout(rule);
  OffloadTierConfig config{kLayers, kKvHeads, kQHeads, kDim, kScale, 2, 1};
  OffloadTier tier(config);
  tier.Begin(0, layout);
  const std::vector<float> q = Random(static_cast<size_t>(kQHeads) * kDim, rng);
  for (int pos = 0; pos < 400; ++pos) tier.AddTrainingQueries(0, 1, pos, q.data());
  // 100 positions of 4 query heads (the offload head's group) of kDim floats.
  CHECK(tier.bytes_held() >= 100 * 4 * kDim * sizeof(float));
  CHECK(tier.bytes_held() <= 2 * 100 * 4 * kDim * sizeof(float));  // vector growth, not 400
  const int span = 388;  // 400 tokens less sink 4 and window 8
  tier.Store(0, 1, 0, 4, Random(span * kDim, rng), Random(span * kDim, rng));
  tier.Build(0);
  tier.WaitForBuilds();
  CHECK(tier.bytes_held() <= OffloadTier::BytesFor(config, layout, 400));
  CHECK(OffloadTier::BytesFor(config, KvLayout::Dense(kLayers, kKvHeads), 400) == 0);
  // Exact search keeps no training queries.
  OffloadRule exact;
  exact.index = OffloadRule::Index::kExact;
  tier.Begin(1, OffloadLayout(exact));
  tier.AddTrainingQueries(1, 1, 0, q.data());
  tier.End(0);
  CHECK(tier.bytes_held() == 0);
}

}  // namespace
}  // namespace headwise::kvcache

namespace headwise::kvcache {
namespace {

TEST_CASE("Offload tier: reservations stay within the host budget", "[kvcache]") {
  OffloadRule rule;
  const KvLayout layout = OffloadLayout(rule);
  OffloadTierConfig config{kLayers, kKvHeads, kQHeads, kDim, kScale, 3, 1};
  config.host_budget_bytes = 1000;
  OffloadTier tier(config);
  tier.Begin(0, layout);
  tier.Begin(1, layout);
  CHECK(tier.TryReserve(0, 600));
  CHECK_FALSE(tier.TryReserve(1, 500));  // 1100 > 1000
  CHECK(tier.reserved_bytes() == 600);
  CHECK(tier.TryReserve(1, 400));
  CHECK(tier.TryReserve(0, 550));  // a slot's own reservation is replaced, not added
  CHECK(tier.reserved_bytes() == 950);
  tier.End(0);
  CHECK(tier.reserved_bytes() == 400);
  tier.Begin(0, layout);
  CHECK(tier.TryReserve(0, 600));
  config.host_budget_bytes = 0;  // no limit
  OffloadTier unlimited(config);
  unlimited.Begin(2, layout);
  CHECK(unlimited.TryReserve(2, int64_t{1} << 50));
}

}  // namespace
}  // namespace headwise::kvcache

namespace headwise::kvcache {
namespace {

// A slot ended (the sequence finished or was preempted) while its indexes are built: nothing
// waits for the builder, which finishes on its own copy; a new sequence in the slot starts afresh.
TEST_CASE("Offload tier: a slot ends while its build runs", "[kvcache]") {
  std::mt19937 rng(11);
  OffloadRule rule;  // RoarGraph: built on a thread
  const KvLayout layout = OffloadLayout(rule);
  OffloadTierConfig config{kLayers, kKvHeads, kQHeads, kDim, kScale, 2, 2};
  OffloadTier tier(config);
  tier.Begin(0, layout);
  for (int pos = 0; pos < 2000; ++pos) {
    const std::vector<float> q = Random(static_cast<size_t>(kQHeads) * kDim, rng);
    tier.AddTrainingQueries(0, 1, pos, q.data());
  }
  tier.Store(0, 1, 0, 4, Random(2000 * kDim, rng), Random(2000 * kDim, rng));
  tier.Build(0);
  tier.End(0);
  CHECK(tier.ready(0));  // an ended slot has nothing pending
  tier.Begin(0, layout);
  CHECK(tier.ready(0));
  CHECK(tier.bytes_held() == 0);
  tier.WaitForBuilds();
}

}  // namespace
}  // namespace headwise::kvcache
