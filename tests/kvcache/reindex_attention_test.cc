// StreamingLLM's re-indexed ring heads on the CPU reference (backend.h, PagedAttentionBatch):
// keys stored unrotated, q and each attended key rotated by its rank in the attended list. A
// layer of full heads and re-indexed ring heads runs through chunked prefill and decode and is
// compared with attention computed here, in double, from the raw (unrotated) projections; then a
// window wider than the sequence, where ranks are positions, must equal ordinary RoPE attention
// over a full cache bit for bit (and so must the first chunk under a narrow window).
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
using testing::Upload;
using testing::UploadI32;

constexpr float kScale = 0.25f;

// One layer's cache and sequence, and one step through RopeWriteKv + PagedAttention on it.
struct Layer {
  KvCache cache;
  SequenceKv seq;
  Layer(Backend& be, const KvCacheConfig& config, KvLayout layout)
      : cache(config, std::move(layout), be), seq(cache) {}

  // Output [n, hq, d] of the tokens at positions start .. start + n - 1 (one chunk), whose raw
  // projections are qkv [n, (hq + 2 hkv) d].
  std::vector<float> Step(Backend& be, const std::vector<float>& qkv, int start, int n, int hq,
                          const Buffer& inv_freq) {
    const int hkv = cache.config().num_kv_heads, d = cache.config().head_dim;
    std::vector<int32_t> pos(static_cast<size_t>(n)), seq_of(static_cast<size_t>(n), 0);
    for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = start + i;
    Buffer qkv_b = Upload(be, qkv, {n, (hq + 2 * hkv) * d});
    Buffer pos_b = UploadI32(be, pos, {n}), seq_b = UploadI32(be, seq_of, {n});
    Buffer qs_b = UploadI32(be, {0, n}, {2});
    const SequenceKv* seqs[] = {&seq};
    const UploadedTables tables(cache, seqs, cache.BlocksFor(start + n), be);
    const BlockTable table = tables.Layer(0);
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table, qs_b.view(), n};
    Buffer q = be.Allocate(DType::kF32, {n, hq, d});
    be.RopeWriteKv(qkv_b.view(), batch, inv_freq.view(), cache.pool_view(), q.view());
    Buffer out = be.Allocate(DType::kF32, {n, hq, d});
    be.PagedAttention(q.view(), cache.pool_view(), batch, kScale, out.view());
    return Download(be, out);
  }
};

KvCacheConfig Config(int hkv, int d, int page_size, int chunk) {
  KvCacheConfig c;
  c.num_layers = 1;
  c.num_kv_heads = hkv;
  c.head_dim = d;
  c.page_size = page_size;
  c.num_pages = 512;
  c.chunk_tokens = chunk;
  c.rope_inv_freq = testing::InvFreq(d);
  return c;
}

enum class HeadKind { kFull, kReindexRing };

// What query token p of a chunk starting at c must produce, from every token's raw projections
// rows [T, (hq + 2 hkv) d]: full heads attend 0..p with RoPE by position; re-indexed ring heads
// attend [0, min(sink, p + 1)) and [max(sink_end, c - window), p], each key rotated by its index
// in that list and the query by the last index. [hq, d].
std::vector<double> Reference(const std::vector<float>& rows, int p, int c, int hq, int hkv, int d,
                              const std::vector<HeadKind>& kinds, int sink, int window,
                              const std::vector<float>& inv_freq) {
  const int width = (hq + 2 * hkv) * d, group = hq / hkv;
  std::vector<double> out(static_cast<size_t>(hq * d), 0.0);
  for (int qh = 0; qh < hq; ++qh) {
    const int h = qh / group;
    std::vector<int> keys;
    if (kinds[static_cast<size_t>(h)] == HeadKind::kFull) {
      for (int j = 0; j <= p; ++j) keys.push_back(j);
    } else {
      const int sink_end = std::min(sink, p + 1), lo = std::max(sink_end, c - window);
      for (int j = 0; j < sink_end; ++j) keys.push_back(j);
      for (int j = lo; j <= p; ++j) keys.push_back(j);
    }
    const bool by_rank = kinds[static_cast<size_t>(h)] == HeadKind::kReindexRing;
    const int count = static_cast<int>(keys.size());
    const std::vector<double> q =
        testing::RotateRef(rows.data() + static_cast<size_t>(p) * width + qh * d, d,
                           by_rank ? count - 1 : p, inv_freq);
    std::vector<double> scores;
    double max_score = -INFINITY;
    for (int i = 0; i < count; ++i) {
      const int j = keys[static_cast<size_t>(i)];
      const std::vector<double> k =
          testing::RotateRef(rows.data() + static_cast<size_t>(j) * width + (hq + h) * d, d,
                             by_rank ? i : j, inv_freq);
      double dot = 0.0;
      for (int e = 0; e < d; ++e) dot += q[static_cast<size_t>(e)] * k[static_cast<size_t>(e)];
      scores.push_back(dot * kScale);
      max_score = std::max(max_score, scores.back());
    }
    double denom = 0.0;
    for (double& s : scores) denom += (s = std::exp(s - max_score));
    for (int i = 0; i < count; ++i) {
      const float* v = rows.data() + static_cast<size_t>(keys[static_cast<size_t>(i)]) * width +
                       (hq + hkv + h) * d;
      double* o = out.data() + static_cast<ptrdiff_t>(qh) * d;
      for (int e = 0; e < d; ++e) o[e] += scores[static_cast<size_t>(i)] / denom * v[e];
    }
  }
  return out;
}

TEST_CASE("Re-indexed ring heads: paged attention equals attention by rank on unrotated q/k",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 8, hkv = 4, d = 16, page_size = 4, sink = 3, window = 10, chunk = 7;
  const int prompt = 45, total = 90, width = (hq + 2 * hkv) * d;
  KvLayout layout = KvLayout::Dense(1, hkv);
  layout.At(0, 1) = layout.At(0, 3) = KvRetention::Ring(sink, window, /*reindex=*/true);
  const std::vector<HeadKind> kinds = {HeadKind::kFull, HeadKind::kReindexRing, HeadKind::kFull,
                                       HeadKind::kReindexRing};
  Layer layer(*be, Config(hkv, d, page_size, chunk), layout);
  REQUIRE(layer.cache.has_reindexed_heads());
  REQUIRE_FALSE(layer.cache.layout(0).all_reindexed_rings());
  REQUIRE(layer.seq.Reserve(total).ok());
  const std::vector<float> inv_freq = testing::InvFreq(d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});

  std::vector<float> rows;  // every token's raw projections so far
  int moved = 0;
  for (int start = 0; start < total;) {
    const int n = start < prompt ? std::min(chunk, prompt - start) : 1;
    std::vector<float> qkv(static_cast<size_t>(n * width));
    for (float& x : qkv) x = dist(rng);
    rows.insert(rows.end(), qkv.begin(), qkv.end());
    const std::vector<float> got = layer.Step(*be, qkv, start, n, hq, freq);
    double max_diff = 0.0;
    for (int i = 0; i < n; ++i) {
      const std::vector<double> want =
          Reference(rows, start + i, start, hq, hkv, d, kinds, sink, window, inv_freq);
      for (size_t e = 0; e < want.size(); ++e) {
        max_diff =
            std::max(max_diff, std::fabs(got[static_cast<size_t>(i) * want.size() + e] - want[e]));
      }
    }
    INFO("tokens " << start << ".." << start + n - 1);
    CHECK(max_diff < 1e-5);
    if (start - window > sink) ++moved;
    start += n;
  }
  CHECK(moved > 20);  // ranks differed from positions for most steps
}

// Ranks equal positions while nothing is evicted, so the result is ordinary RoPE attention.
TEST_CASE("Re-indexed ring heads equal dense RoPE attention exactly while nothing is evicted",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hq = 6, hkv = 2, d = 16, page_size = 4, sink = 4, chunk = 8;
  const int prompt = 30, total = 60, width = (hq + 2 * hkv) * d;
  Buffer freq = Upload(*be, testing::InvFreq(d), {d / 2});
  auto ring_layout = [&](int window) {
    KvLayout layout = KvLayout::Dense(1, hkv);
    for (KvRetention& r : layout.heads) r = KvRetention::Ring(sink, window, /*reindex=*/true);
    return layout;
  };
  Layer wide(*be, Config(hkv, d, page_size, chunk), ring_layout(total));
  Layer narrow(*be, Config(hkv, d, page_size, chunk), ring_layout(5));
  Layer dense(*be, Config(hkv, d, page_size, chunk), KvLayout::Dense(1, hkv));
  REQUIRE(wide.cache.layout(0).all_reindexed_rings());
  for (Layer* l : {&wide, &narrow, &dense}) REQUIRE(l->seq.Reserve(total).ok());

  int narrow_differs = 0;
  for (int start = 0; start < total;) {
    const int n = start < prompt ? std::min(chunk, prompt - start) : 1;
    std::vector<float> qkv(static_cast<size_t>(n * width));
    for (float& x : qkv) x = dist(rng);
    const std::vector<float> want = dense.Step(*be, qkv, start, n, hq, freq);
    const std::vector<float> got = wide.Step(*be, qkv, start, n, hq, freq);
    const std::vector<float> cut = narrow.Step(*be, qkv, start, n, hq, freq);
    INFO("tokens " << start << ".." << start + n - 1);
    REQUIRE(got == want);
    if (start == 0) REQUIRE(cut == want);  // the first chunk attends everything at its positions
    if (cut != want) ++narrow_differs;
    start += n;
  }
  CHECK(narrow_differs > 30);  // and the narrow ring does drop (and re-rank) later
}

}  // namespace
}  // namespace headwise::kvcache
