// RetrievalAttention's offload heads at the level of one layer of backend ops, on the CPU
// reference, with exact search in place of the index: a chunked dense prefill, the compaction that
// copies the dropped span to the host tier (engine/kv_compaction.h), then decode steps of paged
// attention (which leaves the offload heads to OffloadAttention), the host tier's retrieval and
// the merge. Each step must equal index-list attention over a full cache restricted to the static
// set and the exact top-k of the dropped span, whose keys this test ranks on its own from the
// full cache (within float rounding: the merge sums in another order); with top_k beyond the span
// it must equal dense attention. As the decode goes on, the window slides: the oldest pages of
// decoded tokens move to the host (searched with the span) and their device pages are freed.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "engine/kv_compaction.h"
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
using kvcache::OffloadRule;
using kvcache::SequenceKv;
using testing::Download;
using testing::IndexListAttention;
using testing::IndexRow;
using testing::MaxAbsDiff;
using testing::Upload;
using testing::UploadI32;

// A layer's tables for one sequence, with its selection slot for a decode query.
struct Tables {
  kvcache::StepTables host;
  Buffer buffer;
  BlockTable layer;
  Tables(const KvCache& cache, const SequenceKv& seq, int width, int32_t slot,
         kernels::Backend& be) {
    const SequenceKv* seqs[] = {&seq};
    host = cache.BuildStepTables(seqs, 1, width);
    if (host.select) host.seq_slot[0] = slot;
    std::vector<int32_t> data;
    host.AppendTo(data);
    buffer = UploadI32(be, data, {static_cast<int64_t>(data.size())});
    layer = cache.LayerTable(0, host.Views(buffer.view(), 0));
  }
};

struct Case {
  int hq, top_k;
  bool per_q_head;
};

void RunOffloadLayer(const Case& c) {
  INFO("hq " << c.hq << " top_k " << c.top_k << (c.per_q_head ? " per query head" : " mean"));
  auto be = kernels::CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  std::normal_distribution<float> dist;
  const int hkv = 4, d = 16, page_size = 4, sink = 3, window = 10, chunk = 7;
  // 35 decode steps: the window slides (whole pages past window + one page go to the host).
  const int prompt = 45, total = 80;
  int first_kept = prompt - window;
  const int hq = c.hq, group = hq / hkv;
  const float scale = 0.25f;
  // With a set per query head the reference needs one index list per query head: groups of 1.
  REQUIRE((c.per_q_head ? group == 1 : true));

  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = hkv;
  config.head_dim = d;
  config.page_size = page_size;
  config.num_pages = 256;
  config.num_q_heads = hq;
  config.select_slots = 2;
  config.attention_scale = scale;
  config.offload_threads = 2;
  KvLayout layout = KvLayout::Dense(1, hkv, "ra");
  layout.At(0, 1) = layout.At(0, 3) = KvRetention::Offload(sink, window);
  layout.selects.assign(layout.heads.size(), kernels::KvSelect{});
  for (int h : {1, 3}) {
    kernels::KvSelect& sel = layout.selects[static_cast<size_t>(h)];
    sel.decode = kernels::kDecodeRetrieve;
    sel.budget = c.top_k;
    sel.per_q_head = c.per_q_head ? 1 : 0;
  }
  OffloadRule rule;
  rule.index = OffloadRule::Index::kExact;
  rule.top_k = c.top_k;
  rule.per_q_head = c.per_q_head;
  layout.offload = rule;
  REQUIRE(layout.Validate(1, hkv).ok());
  KvCache cache(config, layout, *be);
  KvCacheConfig full_config = config;
  full_config.select_slots = 0;
  KvCache full(full_config, KvLayout::Dense(1, hkv), *be);
  SequenceKv seq(cache), full_seq(full);
  REQUIRE(seq.Reserve(total).ok());
  REQUIRE(full_seq.Reserve(total).ok());
  REQUIRE(seq.select_slot() >= 0);
  REQUIRE(cache.offload_tier() != nullptr);

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});
  const int width = cache.BlocksFor(total);
  double max_policy_effect = 0.0;
  int decode_steps = 0;
  for (int start = 0; start < total;) {
    const int n = start < prompt ? std::min(chunk, prompt - start) : 1;
    const bool decode = start >= prompt;
    std::vector<float> qkv(static_cast<size_t>(n * (hq + 2 * hkv) * d));
    for (float& x : qkv) x = dist(rng);
    Buffer qkv_b = Upload(*be, qkv, {n, (hq + 2 * hkv) * d});
    std::vector<int32_t> pos(static_cast<size_t>(n)), seq_ids(static_cast<size_t>(n), 0);
    std::iota(pos.begin(), pos.end(), start);
    Buffer pos_b = UploadI32(*be, pos, {n}), seq_b = UploadI32(*be, seq_ids, {n});
    Buffer qs_b = UploadI32(*be, {0, n}, {2});
    const int keys = start + n;
    if (decode) first_kept = seq.compacted_from();  // the host holds [sink, first_kept)
    const Tables tables(cache, seq, width, decode ? cache.SelectSlotFor(seq, keys) : -1, *be);
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), tables.layer, qs_b.view(), n};
    Buffer q = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(), batch, freq.view(), cache.pool_view(), q.view());
    Buffer out = Upload(*be, std::vector<float>(static_cast<size_t>(n * hq * d), NAN), {n, hq, d});
    be->PagedAttention(q.view(), cache.pool_view(), batch, scale, out.view());
    if (decode) {
      // The host tier's part, then the merge (what ModelRunner::OffloadLayer and LlamaModel do).
      std::vector<float> host_out(static_cast<size_t>(hq * d)), host_lse(static_cast<size_t>(hq));
      const std::vector<int32_t> slots = {tables.host.seq_slot[0]};
      cache.offload_tier()->Retrieve(0, slots, q.view().ptr<float>(), host_out.data(),
                                     host_lse.data());
      Buffer host_out_b = Upload(*be, host_out, {1, hq, d});
      Buffer host_lse_b = Upload(*be, host_lse, {1, hq});
      Buffer token_b = UploadI32(*be, {0}, {1}), len_b = UploadI32(*be, {keys}, {1});
      be->OffloadAttention(
          q.view(), cache.pool_view(),
          {token_b.view(), len_b.view(), tables.layer, host_out_b.view(), host_lse_b.view()}, scale,
          out.view());
      ++decode_steps;
      SlideOffloadWindow(*be, cache, seq, keys);  // as the engine does after each step
    } else {
      for (int i = 0; i < n; ++i) {
        cache.offload_tier()->AddTrainingQueries(seq.select_slot(), 0, start + i,
                                                 q.view().ptr<float>() + i * hq * d);
      }
    }
    const std::vector<float> got = Download(*be, out);

    // The reference: the same tokens in a full cache, index-list rows per (token, KV head),
    // each token reading its own copy of the sequence's table row.
    const SequenceKv* one[] = {&full_seq};
    const std::vector<const SequenceKv*> copies(static_cast<size_t>(n), &full_seq);
    const kvcache::UploadedTables full_tables(full, one, full.BlocksFor(total), *be),
        full_copies(full, copies, full.BlocksFor(total), *be);
    Buffer q_full = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(
        qkv_b.view(),
        PagedAttentionBatch{seq_b.view(), pos_b.view(), full_tables.Layer(0), qs_b.view(), n},
        freq.view(), full.pool_view(), q_full.view());
    const kernels::KvPoolView pool = full.pool_view();
    for (int policy = 0; policy < 2; ++policy) {  // 1: as the policy attends; 0: dense
      std::vector<IndexRow> rows;
      for (int i = 0; i < n; ++i) {
        const int p = start + i;
        for (int h = 0; h < hkv; ++h) {
          IndexRow& r = rows.emplace_back(IndexRow{i, h, {}, {}});
          const bool all = policy == 0 || !decode || !layout.At(0, h).offload();
          for (int k = 0; k <= p; ++k) {
            if (all || k < sink || k >= first_kept) r.positions.push_back(k);
          }
          if (all) continue;
          // The exact top-k of the dropped span for this KV head's query (or its group's mean).
          std::vector<float> query(static_cast<size_t>(d), 0.0f);
          for (int g = 0; g < group; ++g) {
            const float* qv = q_full.view().ptr<float>() + (i * hq + h * group + g) * d;
            for (int x = 0; x < d; ++x) query[static_cast<size_t>(x)] += qv[x] / group;
          }
          std::vector<std::pair<float, int>> scored;
          for (int k = sink; k < first_kept; ++k) {
            const float* kv = pool.k.ptr<float>() + int64_t{full_seq.Slot(0, h, k)} * d;
            float dot = 0.0f;
            for (int x = 0; x < d; ++x) dot += query[static_cast<size_t>(x)] * kv[x];
            scored.emplace_back(-dot, k);
          }
          std::sort(scored.begin(), scored.end());
          for (int j = 0; j < std::min<int>(c.top_k, static_cast<int>(scored.size())); ++j) {
            r.positions.push_back(scored[static_cast<size_t>(j)].second);
          }
          std::sort(r.positions.begin(), r.positions.end());
        }
      }
      const std::vector<float> want =
          IndexListAttention(*be, q_full.view(), pool, full_copies.Layer(0), scale, rows).out;
      INFO("tokens " << start << ".." << start + n - 1 << (policy ? " policy" : " dense"));
      if (policy == 1) {
        CHECK(MaxAbsDiff(got, want) < 1e-5);
      } else {
        max_policy_effect = std::max(max_policy_effect, MaxAbsDiff(got, want));
      }
    }
    start += n;
    if (start == prompt) {
      CompactAfterPrompt(*be, cache, seq, prompt);
      REQUIRE(seq.compacted_from() == prompt - window);
      CHECK(cache.offload_tier()->bytes_held() >=
            size_t{2} * 2 * (first_kept - sink) * d * sizeof(float));  // 2 heads, K and V
    }
  }
  CHECK(decode_steps == total - prompt);
  // The window slid: the device keeps the sinks' page and the pages of [first_kept, total); every
  // page in between went back to the pool.
  CHECK(seq.compacted_from() >= total - window - page_size);
  const int sink_pages = (sink + page_size - 1) / page_size;
  for (int page = 0; page < cache.BlocksFor(total); ++page) {
    const bool kept = page < sink_pages || (page + 1) * page_size > seq.compacted_from();
    INFO("logical page " << page);
    CHECK((seq.CompBlockPage(page) != SequenceKv::kFreedBlock) == kept);
  }
  if (c.top_k >= first_kept - sink) {
    CHECK(max_policy_effect < 1e-5);  // everything retrieved: dense attention
  } else {
    CHECK(max_policy_effect > 1e-3);  // a few keys retrieved: the policy changes the output
  }
}

TEST_CASE("Offload heads: static set + exact top-k of the host's span, merged", "[kvcache]") {
  RunOffloadLayer({4, 5, true});
  RunOffloadLayer({8, 5, false});
  RunOffloadLayer({4, 1000, true});
}

}  // namespace
}  // namespace headwise::engine
