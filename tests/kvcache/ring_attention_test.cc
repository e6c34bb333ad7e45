// The ring storage end to end at the level of backend ops, on the CPU reference: tokens decoded
// one at a time are written through a ring cache's block rule (RopeWriteKv over a table of ring
// blocks, window pages overwritten as the window moves) and read back with the index-list decode
// over the sink and window positions. The output must equal, exactly, the same attention over a
// full cache holding every token: dense attention under the sink + window mask.
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
using kernels::SparseDecodeBatch;

using testing::Download;
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
      std::vector<int32_t> indices, row_seq, row_head, indptr = {0};
      for (int h = 0; h < hkv; ++h) {
        for (int p = 0; p <= pos; ++p) {
          if (p < sink || p > pos - window) indices.push_back(p);
        }
        row_seq.push_back(0);
        row_head.push_back(h);
        indptr.push_back(static_cast<int32_t>(indices.size()));
      }
      Buffer ix = UploadI32(*be, indices, {static_cast<int64_t>(indices.size())});
      Buffer ip = UploadI32(*be, indptr, {hkv + 1});
      Buffer rs = UploadI32(*be, row_seq, {hkv}), rh = UploadI32(*be, row_head, {hkv});
      Buffer out = be->Allocate(DType::kF32, {hkv, hq / hkv, d});
      Buffer lse = be->Allocate(DType::kF32, {hkv, hq / hkv});
      be->SparseDecodeAttention(
          q.view(), c.cache.pool_view(),
          SparseDecodeBatch{rs.view(), rh.view(), ip.view(), ix.view(), {}, table}, 0.25f,
          out.view(), lse.view());
      outs[which] = Download(*be, out);
      const std::vector<float> l = Download(*be, lse);
      outs[which].insert(outs[which].end(), l.begin(), l.end());
    }
    INFO("position " << pos);
    REQUIRE(outs[0] == outs[1]);
  }
}

}  // namespace
}  // namespace headwise::kvcache
