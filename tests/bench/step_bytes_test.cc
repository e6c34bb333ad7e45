// bench/step_bytes.h: the bytes a decode step must read, per sequence, on hand-built layouts
// whose counts are worked out below, and on the shipped Llama-3-8B TidalDecode file (the issue's
// "the bytes allow about 1.7x" at 128K, batch 1, budget 4096).
#include "bench/step_bytes.h"

#include <catch2/catch.hpp>

#include "engine/attention/policy.h"
#include "engine/attention_setup.h"
#include "tests/test_util.h"

namespace headwise::bench {
namespace {

using kernels::KvSelect;

constexpr int kLayers = 4, kKvHeads = 2, kQHeads = 8, kHeadDim = 16, kPage = 16;
const StepShape kShape{kQHeads, kKvHeads, kHeadDim, kPage, 2};
const double kHeadToken = 2.0 * kHeadDim * 2;  // K and V of one token, bf16
constexpr int kGroup = kQHeads / kKvHeads;

// Layers 0-1 dense, 2 selects (set 0), 3 consumes it: TidalDecode's shape in 4 layers.
kvcache::KvLayout Tidal(int budget, bool per_q_head, int select_min_len) {
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(kLayers, kKvHeads, "tidal");
  layout.selects.assign(kLayers * kKvHeads, KvSelect{});
  for (int h = 0; h < kKvHeads; ++h) {
    for (int l : {2, 3}) {
      KvSelect& k = layout.selects[static_cast<size_t>(l * kKvHeads + h)];
      k.decode = l == 2 ? kernels::kDecodeSelect : kernels::kDecodeConsume;
      k.set = 0;
      k.budget = budget;
      k.recent = 1;
      k.per_q_head = per_q_head ? 1 : 0;
    }
  }
  layout.select_min_len = select_min_len;
  return layout;
}

// Every head of every layer recycles (set = layer).
kvcache::KvLayout Recycled(int budget, int every) {
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(kLayers, kKvHeads, "recycled");
  for (int l = 0; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      KvSelect k;
      k.decode = kernels::kDecodeRecycle;
      k.set = l;
      k.budget = budget;
      k.recent = 1;
      k.since_refresh = 1;
      k.refresh_every = every;
      layout.selects.push_back(k);
    }
  }
  layout.select_min_len = budget;
  return layout;
}

// Every head of layers 1-3 selects pages (set = layer - 1).
kvcache::KvLayout Quest(int budget) {
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(kLayers, kKvHeads, "quest");
  layout.selects.assign(kLayers * kKvHeads, KvSelect{});
  for (int l = 1; l < kLayers; ++l) {
    for (int h = 0; h < kKvHeads; ++h) {
      KvSelect& k = layout.selects[static_cast<size_t>(l * kKvHeads + h)];
      k.decode = kernels::kDecodePages;
      k.set = l - 1;
      k.budget = budget;
      k.recent = 1;
      k.reduce = kernels::kReduceSumLogits;
    }
  }
  layout.select_min_len = budget;
  return layout;
}

double DenseKv(int n) {
  return double{kLayers} * kKvHeads * n * kHeadToken;
}

TEST_CASE("StepBytes: dense reads every key of every head, nothing else", "[bench]") {
  const StepBytes dense(kvcache::KvLayout::Dense(kLayers, kKvHeads), kShape);
  const SequenceStepBytes b = dense.At(1000);
  CHECK_FALSE(b.selects);
  CHECK(b.kv == DenseKv(1000));
  CHECK(b.selection == 0);
  CHECK(dense.refresh_period() == 1);
  // A ring head reads its sink + window + 1 at most.
  kvcache::KvLayout ring = kvcache::KvLayout::Dense(kLayers, kKvHeads);
  ring.At(0, 1) = kernels::KvRetention::Ring(4, 60);
  CHECK(StepBytes(ring, kShape).At(1000).kv == DenseKv(1000) - (1000 - 65) * kHeadToken);
  CHECK(StepBytes(ring, kShape).At(50).kv == DenseKv(50));
}

TEST_CASE("StepBytes: a selecting layout reads dense's K and V when its budget covers the context",
          "[bench]") {
  const int n = 300;
  // Selects (select_min_len below n), with a budget over the context: every set holds every
  // candidate, so every head reads every key.
  const SequenceStepBytes b = StepBytes(Tidal(4096, false, 16), kShape).At(n);
  CHECK(b.selects);
  CHECK(b.kv == DenseKv(n));
  // The select layer's logits: one f32 per query head and key.
  CHECK(b.selection == double{kQHeads} * n * 4);
  // Sets per query head: each query head of the consuming layer reads its own set, but the
  // group's sets hold at most the n keys there are.
  const SequenceStepBytes q = StepBytes(Tidal(4096, true, 16), kShape).At(n);
  CHECK(q.kv == DenseKv(n));
  CHECK(q.selection == b.selection);
  const StepBytes recycled(Recycled(4096, 10), kShape);
  kvcache::KvLayout wide = Recycled(4096, 10);
  wide.select_min_len = 16;
  const StepBytes recycled_wide(wide, kShape);
  for (int j = 0; j < 10; ++j) {
    INFO("step " << j << " of the period");
    std::vector<int32_t> refresh(kLayers, j == 0 ? 1 : 0), chosen(kLayers, n - j);
    CHECK(recycled_wide.At(n, refresh, chosen).kv == DenseKv(n));
  }
  CHECK(recycled_wide.PeriodAverage(n).kv ==
        Approx(DenseKv(n) + 4.5 * kLayers * kKvHeads * kHeadToken));  // n + j keys
  kvcache::KvLayout quest = Quest(4096);
  quest.select_min_len = 16;
  CHECK(StepBytes(quest, kShape).At(n).kv == DenseKv(n));
  // Not longer than select_min_len: the step does not select, and reads what dense reads.
  const SequenceStepBytes short_seq = recycled.At(n);
  CHECK_FALSE(short_seq.selects);
  CHECK(short_seq.kv == DenseKv(n));
  CHECK(short_seq.selection == 0);
  CHECK(recycled.PeriodAverage(n).kv == Approx(DenseKv(n) + 4.5 * DenseKv(1)));
}

TEST_CASE("StepBytes: what TidalDecode, Quest and Recycled read below the context", "[bench]") {
  const int n = 1000;
  // TidalDecode, budget 64: layers 0-2 read n keys, layer 3 the 63 best candidates + the
  // current token; sets per query head are read once per query head.
  const SequenceStepBytes kv_sets = StepBytes(Tidal(64, false, 64), kShape).At(n);
  CHECK(kv_sets.kv == (3.0 * n + 64) * kKvHeads * kHeadToken);
  CHECK(kv_sets.selection == double{kQHeads} * n * 4);
  const SequenceStepBytes q_sets = StepBytes(Tidal(64, true, 64), kShape).At(n);
  CHECK(q_sets.kv == (3.0 * n + 64 * kGroup) * kKvHeads * kHeadToken);
  // A group's sets of 300 keys each cover at most the 1000 keys, not 4 x 300.
  CHECK(StepBytes(Tidal(300, true, 64), kShape).At(n).kv == 4.0 * n * kKvHeads * kHeadToken);
  CHECK(StepBytes(Tidal(200, true, 64), kShape).At(n).kv ==
        (3.0 * n + 200 * kGroup) * kKvHeads * kHeadToken);

  // Quest, budget 64 (3 pages + the last): the tail page holds 992..999, 62 candidate pages.
  const SequenceStepBytes q = StepBytes(Quest(64), kShape).At(n);
  const double pages = 63;  // ceil(1000 / 16): every page's bounds are read and scored
  CHECK(q.kv == (1.0 * n + 3 * (3 * 16 + 8)) * kKvHeads * kHeadToken);
  CHECK(q.selection == 3 * kKvHeads * (pages * 2 * kHeadDim * 2 + kGroup * pages * 4));

  // Recycled, budget 64, stride 4: a refresh step reads n keys per head and writes the logits;
  // step j after it reads the 63 chosen + the keys since (j + 1 of them: the tail when chosen).
  const StepBytes rec(Recycled(64, 4), kShape);
  CHECK(rec.refresh_period() == 4);
  const SequenceStepBytes avg = rec.PeriodAverage(n);
  const double heads = kLayers * kKvHeads;
  CHECK(avg.kv == Approx((n + (63 + 2) + (63 + 3) + (63 + 4)) / 4.0 * heads * kHeadToken));
  CHECK(avg.selection == Approx(heads * kGroup * n * 4 / 4.0));
  std::vector<int32_t> refresh(kLayers, 0), chosen(kLayers, n - 2);
  CHECK(rec.At(n, refresh, chosen).kv == (63 + 3) * heads * kHeadToken);
  CHECK(rec.At(n, refresh, chosen).selection == 0);
}

TEST_CASE("StepBytes: TidalDecode 4096 at 128K on Llama-3-8B, batch 1: the bytes allow ~1.7x",
          "[bench]") {
  const engine::attention::ModelShape llama{32, 32, 8};
  auto set = engine::attention::LoadPolicyFile(
      testing::SourcePath("configs/policies/llama-3-8b/tidal-4096.json"), llama);
  REQUIRE(set.ok());
  auto layout = engine::KvLayoutFor(*set);
  REQUIRE(layout.ok());
  const StepShape shape{32, 8, 128, 16, 2};
  const double weights = 16.06e9;  // bf16 Llama-3-8B (hw_bench_policy's weight_bytes)
  const int n = 131072;
  const double dense = weights + StepBytes(kvcache::KvLayout::Dense(32, 8), shape).At(n).total();
  const SequenceStepBytes tidal = StepBytes(*layout, shape).At(n);
  CHECK(tidal.selects);
  // Layers 0, 1, 2 and 13 read all 128K keys, the 28 others 4096, the two select layers write
  // 32 x 128K f32 logits.
  CHECK(tidal.kv == (4.0 * n + 28.0 * 4096) * 8 * 512);
  CHECK(tidal.selection == 2.0 * 32 * n * 4);
  const double allow = dense / (weights + tidal.total());
  CHECK(allow > 1.7);
  CHECK(allow < 1.85);
}

}  // namespace
}  // namespace headwise::bench
