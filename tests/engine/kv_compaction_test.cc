// RazorAttention's compress-once heads at the level of backend ops, on the CPU reference: a
// layer of full and compress-once heads through a chunked prefill (dense), the one-shot
// compaction, then decode steps. Paged attention must equal attention over a full cache
// restricted to what the policy keeps, with the compensation token built independently here
// (mean K and V of the dropped span, logit + log(number dropped)).
#include "engine/kv_compaction.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <optional>
#include <random>
#include <set>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/backend_util.h"

namespace headwise::engine {
namespace {

using kernels::BlockTable;
using kernels::Buffer;
using kernels::PagedAttentionBatch;
using kvcache::KvCache;
using kvcache::KvCacheConfig;
using kvcache::KvLayout;
using kvcache::KvRetention;
using kvcache::SequenceKv;
using kvcache::UploadedTables;
using testing::Download;
using testing::IndexListAttention;
using testing::IndexRow;
using testing::MaxAbsDiff;
using testing::Upload;
using testing::UploadI32;

// One layer: heads 0 and 2 full, heads 1 and 3 compress-once.
KvLayout RazorLayer(int sink, int window) {
  KvLayout layout = KvLayout::Dense(1, 4, "razor");
  layout.At(0, 1) = layout.At(0, 3) = KvRetention::CompressOnce(sink, window);
  return layout;
}

// The first pages of a sequence's comp blocks, kFreedBlock where compaction gave one back.
std::vector<int32_t> CompPages(const KvCache& cache, const SequenceKv& kv) {
  std::vector<int32_t> pages;
  for (int p = 0; p < cache.BlocksFor(kv.capacity_tokens()); ++p)
    pages.push_back(kv.CompBlockPage(p));
  return pages;
}

TEST_CASE("Compress-once heads: attention after compaction equals sinks + mean token + recent",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 8, hkv = 4, d = 16, page_size = 4, sink = 3, window = 10, chunk = 7;
  const int prompt = 45, total = 70;
  const int first_kept = prompt - window, dropped = first_kept - sink;
  // Position `total` of the reference cache holds the compensation token built here.
  const int comp_pos = total;

  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = hkv;
  config.head_dim = d;
  config.page_size = page_size;
  config.num_pages = 256;
  const KvLayout layout = RazorLayer(sink, window);
  KvCache mixed(config, layout, *be);
  KvCache full(config, KvLayout::Dense(1, hkv), *be);
  SequenceKv mixed_seq(mixed), full_seq(full);
  REQUIRE(mixed_seq.Reserve(total).ok());
  REQUIRE(full_seq.Reserve(total + 1).ok());
  CHECK(!mixed.prefix_caching(0));

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});
  const int width = mixed.BlocksFor(total);
  const int full_width = full.BlocksFor(total + 1);

  int compacted_steps = 0;
  double max_policy_effect = 0.0;  // how far the policy moves the output from dense attention
  for (int start = 0; start < total;) {
    const int n = start < prompt ? std::min(chunk, prompt - start) : 1;
    const int end = start + n;
    std::vector<float> qkv(static_cast<size_t>(n * (hq + 2 * hkv) * d));
    for (float& x : qkv) x = dist(rng);
    Buffer qkv_b = Upload(*be, qkv, {n, (hq + 2 * hkv) * d});
    std::vector<int32_t> pos(static_cast<size_t>(n)), seq(static_cast<size_t>(n), 0);
    for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = start + i;
    Buffer pos_b = UploadI32(*be, pos, {n}), seq_b = UploadI32(*be, seq, {n});
    Buffer qs_b = UploadI32(*be, {0, n}, {2});
    // The cache's tables: compress-once heads' own blocks, -1 where compaction freed a page.
    const SequenceKv* mixed_seqs[] = {&mixed_seq};
    const UploadedTables mixed_tables(mixed, mixed_seqs, width, *be);
    const BlockTable table = mixed_tables.Layer(0);
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table, qs_b.view(), n};
    Buffer q = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(), batch, freq.view(), mixed.pool_view(), q.view());
    Buffer out = be->Allocate(DType::kF32, {n, hq, d});
    be->PagedAttention(q.view(), mixed.pool_view(), batch, 0.25f, out.view());
    const std::vector<float> got = Download(*be, out);

    // The reference: the same tokens in a full cache, one index-list row per (token, KV head),
    // each token reading its own copy of the sequence's table row.
    const SequenceKv* one[] = {&full_seq};
    const std::vector<const SequenceKv*> copies(static_cast<size_t>(n), &full_seq);
    const UploadedTables full_one(full, one, full_width, *be),
        full_copies(full, copies, full_width, *be);
    const BlockTable full_table = full_copies.Layer(0);
    Buffer q_full = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(
        qkv_b.view(),
        PagedAttentionBatch{seq_b.view(), pos_b.view(), full_one.Layer(0), qs_b.view(), n},
        freq.view(), full.pool_view(), q_full.view());
    const bool compacted = mixed_seq.compacted_from() > 0;
    for (int policy = 0; policy < 2; ++policy) {  // 1: as the policy keeps; 0: dense
      std::vector<IndexRow> rows;
      for (int i = 0; i < n; ++i) {
        const int p = start + i;
        for (int h = 0; h < hkv; ++h) {
          const bool keep_all = policy == 0 || !compacted || !layout.At(0, h).compress_once();
          IndexRow& r = rows.emplace_back(IndexRow{i, h, {}, {}});
          for (int k = 0; k <= p; ++k) {
            if (keep_all || k < sink || k >= first_kept) {
              r.positions.push_back(k);
              r.bias.push_back(0.0f);
            }
            if (!keep_all && k == sink) {
              r.positions.push_back(comp_pos);
              r.bias.push_back(std::log(static_cast<float>(dropped)));
            }
          }
        }
      }
      const std::vector<float> want =
          IndexListAttention(*be, q_full.view(), full.pool_view(), full_table, 0.25f, rows).out;
      REQUIRE(got.size() == want.size());
      const double max_diff = MaxAbsDiff(got, want);
      INFO("tokens " << start << ".." << end - 1 << (policy ? " policy" : " dense"));
      if (policy == 1) {
        CHECK(max_diff < 1e-5);  // float against double sums
      } else {
        max_policy_effect = std::max(max_policy_effect, max_diff);
      }
    }
    if (compacted) ++compacted_steps;
    start = end;
    if (start == prompt) {
      // 18 logical pages of a full block (heads 0, 2) and a comp block (heads 1, 3), 2 pages each.
      REQUIRE(mixed_seq.num_pages_held() == 18 * 4);
      CompactAfterPrompt(*be, mixed, mixed_seq, prompt);
      REQUIRE(mixed_seq.compacted_from() == first_kept);
      // Kept: [0, 4) (3 sinks, the compensation token) and [35, ...): logical pages 1..7 ([4, 32))
      // hold only dropped positions, so their comp blocks are free again.
      for (int page = 0; page < 18; ++page) {
        CHECK((mixed_seq.CompBlockPage(page) == SequenceKv::kFreedBlock) ==
              (page >= 1 && page <= 7));
      }
      CHECK(mixed_seq.num_pages_held() == 18 * 4 - 7 * 2);
      CHECK(mixed.num_pages_used() == 18 * 4 - 7 * 2);
      // The compensation token of the reference: per compress-once head, the mean K and V of
      // the dropped positions, computed from the reference cache's own copy of them.
      const kernels::KvPoolView pool = full.pool_view();
      for (int h = 0; h < hkv; ++h) {
        if (!layout.At(0, h).compress_once()) continue;
        for (const Tensor* part : {&pool.k, &pool.v}) {
          float* dst = part->ptr<float>() + int64_t{full_seq.Slot(0, h, comp_pos)} * d;
          for (int c = 0; c < d; ++c) {
            double sum = 0.0;
            for (int k = sink; k < first_kept; ++k)
              sum += part->ptr<float>()[int64_t{full_seq.Slot(0, h, k)} * d + c];
            dst[c] = static_cast<float>(sum / dropped);
          }
        }
      }
      CompactAfterPrompt(*be, mixed, mixed_seq, prompt + 5);  // once only
      CHECK(mixed_seq.compacted_from() == first_kept);
    }
  }
  CHECK(compacted_steps == total - prompt);
  CHECK(max_policy_effect > 1e-3);  // the compaction changed what the heads attend
}

// One sequence of random q/k/v rows (a fixed seed per sequence) through a cache of full heads
// {0, 2} and compress-once heads {1, 3}, reserved step by step as the engine does, compacted when
// its prompt is in.
struct CompressRun {
  static constexpr int kHq = 8, kHkv = 4, kD = 16, kSink = 3, kWindow = 10;
  static KvCache Cache(kernels::Backend& be, int num_pages) {
    KvCacheConfig config;
    config.num_layers = 1;
    config.num_kv_heads = kHkv;
    config.head_dim = kD;
    config.page_size = 4;
    config.num_pages = num_pages;
    return KvCache(config, RazorLayer(kSink, kWindow), be);
  }

  CompressRun(KvCache& c, uint32_t seed, int prompt_len, int total)
      : cache(c), kv(c), prompt(prompt_len), qkv(static_cast<size_t>(total * kRow)) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist;
    for (float& x : qkv) x = dist(rng);
  }

  // Runs positions [start, start + n): returns the attention output [n, Hq, D], or nothing if
  // the pool cannot hold them.
  std::optional<std::vector<float>> Step(kernels::Backend& be, int start, int n) {
    if (!kv.Reserve(start + n).ok()) return std::nullopt;
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = start + i;
    const SequenceKv* seqs[] = {&kv};
    const UploadedTables tables(cache, seqs, cache.BlocksFor(start + n), be);
    const BlockTable table = tables.Layer(0);
    Buffer pos_b = UploadI32(be, pos, {n}), seq_b = UploadI32(be, std::vector<int32_t>(n, 0), {n});
    Buffer qs_b = UploadI32(be, {0, n}, {2});
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table, qs_b.view(), n};
    std::vector<float> inv_freq(kD / 2);
    for (int i = 0; i < kD / 2; ++i)
      inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / kD);
    Buffer freq = Upload(be, inv_freq, {kD / 2});
    Buffer qkv_b =
        Upload(be, std::vector<float>(qkv.begin() + start * kRow, qkv.begin() + (start + n) * kRow),
               {n, kRow});
    Buffer q = be.Allocate(DType::kF32, {n, kHq, kD});
    be.RopeWriteKv(qkv_b.view(), batch, freq.view(), cache.pool_view(), q.view());
    Buffer out = be.Allocate(DType::kF32, {n, kHq, kD});
    be.PagedAttention(q.view(), cache.pool_view(), batch, 0.25f, out.view());
    if (start + n == prompt) CompactAfterPrompt(be, cache, kv, prompt);
    return Download(be, out);
  }

  static constexpr int kRow = (kHq + 2 * kHkv) * kD;
  KvCache& cache;
  SequenceKv kv;
  int prompt;
  std::vector<float> qkv;
};

// Two sequences share a pool too small to hold both uncompacted: the second one's prefill and
// the first one's decode take the pages the first one's compaction freed. Each must still
// produce exactly what it produces alone in a pool of its own (whose attention the test above
// checks against the masked dense reference), so no page still read was given away and every
// reused page was written before being read.
TEST_CASE("Compress-once heads: freed pages serve other tokens, outputs unchanged", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  const int prompt = 45, total = 70, chunk = 7;
  // The steps of one sequence: prefill chunks, then decode tokens; (start, count) pairs.
  std::vector<std::pair<int, int>> steps;
  for (int start = 0; start < total;) {
    const int n = start < prompt ? std::min(chunk, prompt - start) : 1;
    steps.emplace_back(start, n);
    start += n;
  }
  std::vector<std::vector<std::vector<float>>> alone(2);
  for (int i = 0; i < 2; ++i) {
    KvCache own = CompressRun::Cache(*be, 512);
    CompressRun run(own, 100 + i, prompt, total);
    for (auto [start, n] : steps) alone[static_cast<size_t>(i)].push_back(*run.Step(*be, start, n));
  }

  // 4 pages a logical page (2 full + 2 comp). A sequence of 70 tokens holds 18 x 4 = 72 pages
  // uncompacted, 58 compacted (the comp blocks of logical pages 1..7 freed): 120 pages hold both
  // sequences only if compaction frees them (116 <= 120 < 144).
  KvCache shared = CompressRun::Cache(*be, 120);
  CompressRun a(shared, 100, prompt, total), b(shared, 101, prompt, total);
  size_t next_a = 0, next_b = 0;
  std::set<int32_t> freed_by_a;
  while (next_a < steps.size() || next_b < steps.size()) {
    // a runs until compacted and then steps with b in turn; b starts once a is compacted.
    if (next_a < steps.size()) {
      const std::vector<int32_t> before = CompPages(shared, a.kv);
      const auto [start, n] = steps[next_a];
      const auto got = a.Step(*be, start, n);
      REQUIRE(got.has_value());
      INFO("a: tokens " << start << ".." << start + n - 1);
      CHECK(*got == alone[0][next_a]);
      ++next_a;
      const std::vector<int32_t> after = CompPages(shared, a.kv);
      for (size_t p = 0; p < before.size(); ++p) {
        if (after[p] == SequenceKv::kFreedBlock && before[p] >= 0) freed_by_a.insert(before[p]);
      }
      if (a.kv.compacted_from() == 0) continue;
    }
    if (next_b < steps.size()) {
      const auto [start, n] = steps[next_b];
      const auto got = b.Step(*be, start, n);
      REQUIRE(got.has_value());
      INFO("b: tokens " << start << ".." << start + n - 1);
      CHECK(*got == alone[1][next_b]);
      ++next_b;
    }
  }
  CHECK(freed_by_a.size() == 7);
  // a's freed comp blocks were taken again, by b or by a's own later tokens.
  int reused = 0;
  for (const CompressRun* run : {&a, &b}) {
    for (int32_t page : CompPages(shared, run->kv)) reused += freed_by_a.count(page) ? 1 : 0;
  }
  CHECK(reused > 0);
  CHECK(a.kv.num_pages_held() == 58);
  CHECK(b.kv.num_pages_held() == 58);
  CHECK(shared.num_pages_used() == 116);
}

// Too short a prompt keeps everything: no compaction, dense attention stays.
TEST_CASE("Compress-once heads leave prompts they would not shorten alone", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 2;
  config.head_dim = 8;
  config.page_size = 4;
  config.num_pages = 64;
  KvLayout layout = KvLayout::Dense(1, 2);
  for (KvRetention& r : layout.heads) r = KvRetention::CompressOnce(4, 20);
  KvCache cache(config, layout, *be);
  SequenceKv seq(cache);
  REQUIRE(seq.Reserve(40).ok());
  CompactAfterPrompt(*be, cache, seq, 25);  // sink + window + the token: nothing to drop
  CHECK(seq.compacted_from() == 0);
  CompactAfterPrompt(*be, cache, seq, 26);
  CHECK(seq.compacted_from() == 6);
}

}  // namespace
}  // namespace headwise::engine
