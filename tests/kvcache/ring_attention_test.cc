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

// A cache of one layer with every KV head in `retention`, and the table rows its kernels read.
struct OneLayer {
  KvCache cache;
  SequenceKv seq;
  OneLayer(Backend& be, int hkv, int d, int page_size, const Retention& retention, int pages)
      : cache(Config(hkv, d, page_size, pages), Layout(hkv, retention), be), seq(cache) {}

  static KvCacheConfig Config(int hkv, int d, int page_size, int pages) {
    KvCacheConfig c;
    c.num_layers = 1;
    c.num_kv_heads = hkv;
    c.head_dim = d;
    c.page_size = page_size;
    c.num_pages = pages;
    c.max_ring_sequences = 1;
    c.ring_chunk_tokens = 1;  // decode: one new token per step
    return c;
  }
  static HeadClassLayout Layout(int hkv, const Retention& retention) {
    HeadClassLayout layout = HeadClassLayout::Dense(1, hkv);
    layout.retention = {{retention}};
    return layout;
  }
  bool ring() const { return cache.ring_pages_per_block() > 0; }
  // Block of every logical page up to `tokens`: the ring's cycle, or the full blocks.
  std::vector<int32_t> TableRow(int tokens) const {
    std::vector<int32_t> row;
    for (int j = 0; j < cache.BlocksFor(tokens); ++j) {
      row.push_back(ring() ? seq.RingBlock(j) : seq.blocks()[static_cast<size_t>(j)]);
    }
    return row;
  }
  int pages_per_block() const {
    return ring() ? cache.ring_pages_per_block() : cache.pages_per_block();
  }
  std::vector<int32_t> HeadPages(int hkv) const {
    std::vector<int32_t> pages;
    for (int h = 0; h < hkv; ++h) pages.push_back(cache.PageIndex(0, h));
    return pages;
  }
};

TEST_CASE("Ring storage: decode over sinks + window equals attention over a full cache",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 4, hkv = 2, d = 16, page_size = 4, sink = 3, window = 10, steps = 60;
  OneLayer ring(*be, hkv, d, page_size, Retention{true, sink, window}, 64);
  OneLayer full(*be, hkv, d, page_size, Retention{}, 64);
  REQUIRE(ring.ring());
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
      const std::vector<int32_t> row = c.TableRow(pos + 1);
      Buffer blocks = UploadI32(*be, row, {1, static_cast<int64_t>(row.size())});
      Buffer heads = UploadI32(*be, c.HeadPages(hkv), {hkv});
      const BlockTable table{blocks.view(), heads.view(), c.pages_per_block()};
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
  const Retention ring_rule{true, sink, window};

  KvCacheConfig config = OneLayer::Config(hkv, d, page_size, 256);
  config.ring_chunk_tokens = chunk;
  HeadClassLayout layout;
  layout.classes = {{{0, 2}, {1, 3}}};
  layout.retention = {{Retention{}, ring_rule}};
  KvCache mixed(config, layout, *be);
  KvCache full(config, HeadClassLayout::Dense(1, hkv), *be);
  SequenceKv mixed_seq(mixed), full_seq(full);
  REQUIRE(mixed_seq.Reserve(total).ok());
  REQUIRE(full_seq.Reserve(total).ok());
  CHECK(mixed_seq.num_pages_held() < full_seq.num_pages_held());

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});
  std::vector<int32_t> head_page(hkv), head_ring(hkv), full_pages(hkv);
  for (int h = 0; h < hkv; ++h) {
    head_page[static_cast<size_t>(h)] = mixed.PageIndex(0, h);
    head_ring[static_cast<size_t>(h)] = mixed.IsRing(0, h) ? 1 : 0;
    full_pages[static_cast<size_t>(h)] = full.PageIndex(0, h);
  }
  REQUIRE(head_ring == std::vector<int32_t>{0, 1, 0, 1});
  Buffer head_page_b = UploadI32(*be, head_page, {hkv});
  Buffer head_ring_b = UploadI32(*be, head_ring, {hkv});
  Buffer full_pages_b = UploadI32(*be, full_pages, {hkv});

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
    std::vector<int32_t> blocks, ring_blocks, full_blocks;
    for (int j = 0; j < width; ++j) {
      blocks.push_back(mixed_seq.blocks()[static_cast<size_t>(j)]);
      ring_blocks.push_back(mixed_seq.RingBlock(j));
      full_blocks.push_back(full_seq.blocks()[static_cast<size_t>(j)]);
    }
    Buffer blocks_b = UploadI32(*be, blocks, {1, width});
    Buffer ring_b = UploadI32(*be, ring_blocks, {1, width});
    BlockTable table{blocks_b.view(), head_page_b.view(), mixed.pages_per_block()};
    table.head_ring = head_ring_b.view();
    table.ring_blocks = ring_b.view();
    table.ring_pages_per_block = mixed.ring_pages_per_block();
    table.ring_sink = sink;
    table.ring_window = window;
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table, qs_b.view(), n};
    Buffer q = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(), batch, freq.view(), mixed.pool_view(), q.view());
    Buffer out = be->Allocate(DType::kF32, {n, hq, d});
    be->PagedAttention(q.view(), mixed.pool_view(), batch, 0.25f, out.view());
    const std::vector<float> got = Download(*be, out);

    // The reference: the same tokens in a full cache, one index-list row per (token, KV head),
    // each token reading its own copy of the table row.
    std::vector<int32_t> full_rows;
    for (int i = 0; i < n; ++i)
      full_rows.insert(full_rows.end(), full_blocks.begin(), full_blocks.end());
    Buffer full_rows_b = UploadI32(*be, full_rows, {n, width});
    const BlockTable full_table{full_rows_b.view(), full_pages_b.view(), full.pages_per_block()};
    Buffer q_full = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(),
                    PagedAttentionBatch{seq_b.view(), pos_b.view(),
                                        BlockTable{full_rows_b.view().Rows(0, 1),
                                                   full_pages_b.view(), full.pages_per_block()},
                                        qs_b.view(), n},
                    freq.view(), full.pool_view(), q_full.view());
    std::vector<IndexRow> rows;
    for (int i = 0; i < n; ++i) {
      const int p = start + i;
      for (int h = 0; h < hkv; ++h) {
        IndexRow& r = rows.emplace_back(IndexRow{i, h, {}, {}});
        for (int k = 0; k <= p; ++k) {
          const bool ring_head = head_ring[static_cast<size_t>(h)] != 0;
          if (!ring_head || k < sink || k >= std::max(sink, start - window)) {
            r.positions.push_back(k);
          }
        }
      }
    }
    // [n, hkv, group, d] is [n, hq, d]: the rows are in the same order.
    const std::vector<float> want =
        IndexListAttention(*be, q_full.view(), full.pool_view(), full_table, 0.25f, rows).out;
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
