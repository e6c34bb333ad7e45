// RazorAttention's compress-once heads at the level of backend ops, on the CPU reference: a
// layer of full and compress-once heads through a chunked prefill (dense), the one-shot
// compaction, then decode steps. Paged attention must equal attention over a full cache
// restricted to what the policy keeps, with the compensation token built independently here
// (mean K and V of the dropped span, logit + log(number dropped)).
#include "engine/kv_compaction.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/backend_util.h"

namespace headwise::engine {
namespace {

using kernels::BlockTable;
using kernels::Buffer;
using kernels::PagedAttentionBatch;
using kernels::SparseDecodeBatch;
using kvcache::HeadClassLayout;
using kvcache::KvCache;
using kvcache::KvCacheConfig;
using kvcache::Retention;
using kvcache::SequenceKv;
using testing::Download;
using testing::Upload;
using testing::UploadI32;

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
  HeadClassLayout layout;
  layout.classes = {{{0, 2}, {1, 3}}};
  layout.retention = {{Retention{}, Retention{false, sink, window, false, true, true, true}}};
  KvCache mixed(config, layout, *be);
  KvCache full(config, HeadClassLayout::Dense(1, hkv), *be);
  SequenceKv mixed_seq(mixed), full_seq(full);
  REQUIRE(mixed_seq.Reserve(total).ok());
  REQUIRE(full_seq.Reserve(total + 1).ok());
  CHECK(!mixed.prefix_caching());

  std::vector<float> inv_freq(d / 2);
  for (int i = 0; i < d / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  Buffer freq = Upload(*be, inv_freq, {d / 2});
  std::vector<int32_t> head_page(hkv), head_comp(hkv), full_pages(hkv);
  for (int h = 0; h < hkv; ++h) {
    head_page[static_cast<size_t>(h)] = mixed.PageIndex(0, h);
    head_comp[static_cast<size_t>(h)] = mixed.IsCompressed(0, h) ? 1 : 0;
    full_pages[static_cast<size_t>(h)] = full.PageIndex(0, h);
  }
  REQUIRE(head_comp == std::vector<int32_t>{0, 1, 0, 1});
  Buffer head_page_b = UploadI32(*be, head_page, {hkv});
  Buffer head_comp_b = UploadI32(*be, head_comp, {hkv});
  Buffer full_pages_b = UploadI32(*be, full_pages, {hkv});
  const int width = mixed.BlocksFor(total);
  Buffer blocks_b = UploadI32(
      *be, std::vector<int32_t>(mixed_seq.blocks().begin(), mixed_seq.blocks().begin() + width),
      {1, width});
  const int full_width = full.BlocksFor(total + 1);
  const std::vector<int32_t> full_blocks(full_seq.blocks().begin(),
                                         full_seq.blocks().begin() + full_width);

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
    Buffer from_b = UploadI32(*be, {mixed_seq.compacted_from()}, {1});
    BlockTable table{blocks_b.view(), head_page_b.view(), mixed.pages_per_block()};
    table.head_comp = head_comp_b.view();
    table.comp_from = from_b.view();
    table.comp_sink = sink;
    table.comp_token = true;
    table.comp_log_count = true;
    const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table, qs_b.view(), n};
    Buffer q = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(), batch, freq.view(), mixed.pool_view(), q.view());
    Buffer out = be->Allocate(DType::kF32, {n, hq, d});
    be->PagedAttention(q.view(), mixed.pool_view(), batch, 0.25f, out.view());
    const std::vector<float> got = Download(*be, out);

    // The reference: the same tokens in a full cache, one index-list row per (token, KV head).
    std::vector<int32_t> full_rows;
    for (int i = 0; i < n; ++i)
      full_rows.insert(full_rows.end(), full_blocks.begin(), full_blocks.end());
    Buffer full_rows_b = UploadI32(*be, full_rows, {n, full_width});
    const BlockTable full_table{full_rows_b.view(), full_pages_b.view(), full.pages_per_block()};
    Buffer q_full = be->Allocate(DType::kF32, {n, hq, d});
    be->RopeWriteKv(qkv_b.view(),
                    PagedAttentionBatch{seq_b.view(), pos_b.view(),
                                        BlockTable{full_rows_b.view().Rows(0, 1),
                                                   full_pages_b.view(), full.pages_per_block()},
                                        qs_b.view(), n},
                    freq.view(), full.pool_view(), q_full.view());
    const bool compacted = mixed_seq.compacted_from() > 0;
    for (int policy = 0; policy < 2; ++policy) {  // 1: as the policy keeps; 0: dense
      std::vector<int32_t> indices, row_seq, row_head, indptr = {0};
      std::vector<float> bias;
      for (int i = 0; i < n; ++i) {
        const int p = start + i;
        for (int h = 0; h < hkv; ++h) {
          const bool keep_all = policy == 0 || !compacted || head_comp[static_cast<size_t>(h)] == 0;
          for (int k = 0; k <= p; ++k) {
            if (keep_all || k < sink || k >= first_kept) {
              indices.push_back(k);
              bias.push_back(0.0f);
            }
            if (!keep_all && k == sink) {
              indices.push_back(comp_pos);
              bias.push_back(std::log(static_cast<float>(dropped)));
            }
          }
          row_seq.push_back(i);
          row_head.push_back(h);
          indptr.push_back(static_cast<int32_t>(indices.size()));
        }
      }
      const int rows = n * hkv;
      const auto nnz = static_cast<int64_t>(indices.size());
      Buffer ix = UploadI32(*be, indices, {nnz}), lb = Upload(*be, bias, {nnz});
      Buffer ip = UploadI32(*be, indptr, {rows + 1});
      Buffer rs = UploadI32(*be, row_seq, {rows}), rh = UploadI32(*be, row_head, {rows});
      Buffer ref = be->Allocate(DType::kF32, {rows, hq / hkv, d});
      Buffer lse = be->Allocate(DType::kF32, {rows, hq / hkv});
      be->SparseDecodeAttention(
          q_full.view(), full.pool_view(),
          SparseDecodeBatch{rs.view(), rh.view(), ip.view(), ix.view(), lb.view(), full_table},
          0.25f, ref.view(), lse.view());
      const std::vector<float> want = Download(*be, ref);
      REQUIRE(got.size() == want.size());
      double max_diff = 0.0;
      for (size_t i = 0; i < got.size(); ++i) {
        max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
      }
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
      CompactAfterPrompt(*be, mixed, mixed_seq, prompt);
      REQUIRE(mixed_seq.compacted_from() == first_kept);
      // The compensation token of the reference: per compress-once head, the mean K and V of
      // the dropped positions, computed from the reference cache's own copy of them.
      const kernels::KvPoolView pool = full.pool_view();
      for (int h = 0; h < hkv; ++h) {
        if (head_comp[static_cast<size_t>(h)] == 0) continue;
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

// Too short a prompt keeps everything: no compaction, dense attention stays.
TEST_CASE("Compress-once heads leave prompts they would not shorten alone", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 2;
  config.head_dim = 8;
  config.page_size = 4;
  config.num_pages = 64;
  HeadClassLayout layout = HeadClassLayout::Dense(1, 2);
  layout.retention = {{Retention{false, 4, 20, false, true, true, true}}};
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
