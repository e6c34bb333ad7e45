// The ring storage end to end at the level of backend ops, on the CPU reference: tokens decoded
// one at a time are written through a ring cache's block rule (RopeWriteKv over a table of ring
// blocks, window pages overwritten as the window moves) and read back with the index-list decode
// over the sink and window positions. The output must equal, exactly, the same attention over a
// full cache holding every token: dense attention under the sink + window mask. Then a layer of
// full and ring heads through paged attention, prefill chunks included.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "tests/backend_util.h"

namespace headwise::kvcache {
namespace {

using kernels::Backend;
using kernels::BlockTable;
using kernels::Buffer;
using kernels::PagedAttentionBatch;

using testing::Download;
using testing::IndexListAttention;
using testing::IndexListResult;
using testing::IndexRow;
using testing::MaxAbsDiff;
using testing::Upload;
using testing::UploadI32;

// A cache of one layer with every KV head kept as `retention`, and one sequence.
struct OneLayer {
  KvCache cache;
  SequenceKv seq;
  OneLayer(Backend& be, int hkv, int d, int page_size, const KvRetention& retention, int pages)
      : cache(Config(hkv, d, page_size, pages), Layout(hkv, retention), be), seq(cache) {}

  static KvCacheConfig Config(int hkv, int d, int page_size, int pages, int chunk_tokens = 1) {
    KvCacheConfig c;
    c.num_layers = 1;
    c.num_kv_heads = hkv;
    c.head_dim = d;
    c.page_size = page_size;
    c.num_pages = pages;
    c.chunk_tokens = chunk_tokens;  // decode: one new token per step
    return c;
  }
  static KvLayout Layout(int hkv, const KvRetention& retention) {
    KvLayout layout = KvLayout::Dense(1, hkv);
    for (KvRetention& r : layout.heads) r = retention;
    return layout;
  }
};

TEST_CASE("Ring storage: decode over sinks + window equals attention over a full cache",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 4, hkv = 2, d = 16, page_size = 4, sink = 3, window = 10, steps = 60;
  OneLayer ring(*be, hkv, d, page_size, KvRetention::Ring(sink, window), 64);
  OneLayer full(*be, hkv, d, page_size, KvRetention{}, 64);
  REQUIRE(ring.cache.has_ring_heads());
  REQUIRE(ring.seq.Reserve(steps).ok());
  REQUIRE(full.seq.Reserve(steps).ok());
  CHECK(ring.seq.num_pages_held() < full.seq.num_pages_held());

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});
  Buffer zero = UploadI32(*be, {0}, {1});
  for (int pos = 0; pos < steps; ++pos) {
    std::vector<float> qkv(static_cast<size_t>((hq + 2 * hkv) * d));
    for (float& x : qkv) x = dist(rng);
    Buffer qkv_b = Upload(*be, qkv, {1, (hq + 2 * hkv) * d});
    Buffer pos_b = UploadI32(*be, {pos}, {1});
    std::vector<float> outs[2];
    for (int which = 0; which < 2; ++which) {
      OneLayer& c = which == 0 ? ring : full;
      const SequenceKv* seqs[] = {&c.seq};
      const UploadedTables tables(c.cache, seqs, c.cache.BlocksFor(pos + 1), *be);
      const BlockTable table = tables.Layer(0);
      Buffer q = be->Allocate(DType::kF32, {1, hq, d});
      be->RopeWriteKv(qkv_b.view(), PagedAttentionBatch{zero.view(), pos_b.view(), table, {}, 1},
                      freq.view(), c.cache.pool_view(), q.view());
      // The retained positions: sinks, then the window (no overlap while short).
      std::vector<IndexRow> rows;
      for (int h = 0; h < hkv; ++h) {
        IndexRow& r = rows.emplace_back(IndexRow{0, h, {}, {}});
        for (int p = 0; p <= pos; ++p) {
          if (p < sink || p > pos - window) r.positions.push_back(p);
        }
      }
      const IndexListResult ref =
          IndexListAttention(*be, q.view(), c.cache.pool_view(), table, 0.25f, rows);
      outs[which] = ref.out;
      outs[which].insert(outs[which].end(), ref.lse.begin(), ref.lse.end());
    }
    INFO("position " << pos);
    REQUIRE(outs[0] == outs[1]);
  }
}

// A layer of full and ring heads at once, as DuoAttention runs it: a sequence prefilled in
// chunks, then decoded, through one BlockTable carrying both tables. Paged attention must equal
// attention over a full cache restricted to what the policy attends: everything on full heads,
// on ring heads the sinks and the window as the chunk began plus the chunk (backend.h).
TEST_CASE("Mixed full and ring heads: paged attention equals the masked dense attention",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 8, hkv = 4, d = 16, page_size = 4, sink = 3, window = 10, chunk = 7;
  const int prompt = 45, total = 90;
  const KvCacheConfig config = OneLayer::Config(hkv, d, page_size, 256, chunk);
  KvLayout layout = KvLayout::Dense(1, hkv);
  layout.At(0, 1) = layout.At(0, 3) = KvRetention::Ring(sink, window);
  KvCache mixed(config, layout, *be);
  KvCache full(config, KvLayout::Dense(1, hkv), *be);
  SequenceKv mixed_seq(mixed), full_seq(full);
  REQUIRE(mixed_seq.Reserve(total).ok());
  REQUIRE(full_seq.Reserve(total).ok());
  CHECK(mixed_seq.num_pages_held() < full_seq.num_pages_held());

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});

  int ring_checked = 0;
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
    const int width = mixed.BlocksFor(end);
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
    const UploadedTables full_one(full, one, width, *be), full_copies(full, copies, width, *be);
    Buffer q_full = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(
        qkv_b.view(),
        PagedAttentionBatch{seq_b.view(), pos_b.view(), full_one.Layer(0), qs_b.view(), n},
        freq.view(), full.pool_view(), q_full.view());
    std::vector<IndexRow> rows;
    for (int i = 0; i < n; ++i) {
      const int p = start + i;
      for (int h = 0; h < hkv; ++h) {
        IndexRow& r = rows.emplace_back(IndexRow{i, h, {}, {}});
        for (int k = 0; k <= p; ++k) {
          const bool ring_head = layout.At(0, h).ring();
          if (!ring_head || k < sink || k >= std::max(sink, start - window)) {
            r.positions.push_back(k);
          }
        }
      }
    }
    // [n, hkv, group, d] is [n, hq, d]: the rows are in the same order.
    const std::vector<float> want =
        IndexListAttention(*be, q_full.view(), full.pool_view(), full_copies.Layer(0), 0.25f, rows)
            .out;
    REQUIRE(got.size() == want.size());
    const double max_diff = MaxAbsDiff(got, want);
    INFO("tokens " << start << ".." << end - 1);
    CHECK(max_diff < 1e-5);  // float against double softmax sums
    if (start - window > sink) ++ring_checked;
    start = end;
  }
  CHECK(ring_checked > 20);  // the window moved on for most steps
}

}  // namespace
}  // namespace headwise::kvcache
