#include "kernels/cpu/offload_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/kv_lookup.h"
#include "kernels/cpu/list_attention.h"

namespace headwise::kernels::cpu {

void MergeAttention(float* o, float& lse, const float* other_o, float other_lse, int64_t head_dim) {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  if (other_lse == kNone) return;
  if (lse == kNone) {
    std::copy(other_o, other_o + head_dim, o);
    lse = other_lse;
    return;
  }
  const float top = std::max(lse, other_lse);
  const float a = std::exp(lse - top), b = std::exp(other_lse - top);
  const float sum = a + b;
  for (int64_t d = 0; d < head_dim; ++d) o[d] = (a * o[d] + b * other_o[d]) / sum;
  lse = top + std::log(sum);
}

void OffloadAttention(const Tensor& q, const KvPoolView& pool, const OffloadDecodeBatch& batch,
                      float scale, const Tensor& out, ThreadPool& threads) {
  const BlockTable& table = batch.table;
  CheckTable(table);
  if (!table.has_select_heads()) return;
  CheckF32(q, "q");
  CheckF32(out, "out");
  CheckI32(batch.seq_token, "seq_token");
  CheckI32(batch.seq_len, "seq_len");
  CheckF32(batch.host_out, "host_out");
  CheckF32(batch.host_lse, "host_lse");
  const int64_t num_q_heads = q.dim(1), head_dim = q.dim(2);
  const int num_seqs = table.num_seqs(), num_kv_heads = table.num_kv_heads();
  const int64_t group = num_q_heads / num_kv_heads;
  HW_CHECK(batch.seq_token.numel() == num_seqs && batch.seq_len.numel() == num_seqs,
           "seq_token {} and seq_len {} must be [S] with S = {}", batch.seq_token.ShapeString(),
           batch.seq_len.ShapeString(), num_seqs);
  HW_CHECK(batch.host_out.rank == 3 && batch.host_out.dim(0) == num_seqs &&
               batch.host_out.dim(1) == num_q_heads && batch.host_out.dim(2) == head_dim &&
               batch.host_lse.numel() == num_seqs * num_q_heads,
           "host_out {} and host_lse {} must be [S {}, Hq {}, D {}] and [S, Hq]",
           batch.host_out.ShapeString(), batch.host_lse.ShapeString(), num_seqs, num_q_heads,
           head_dim);
  HW_CHECK(table.has_compressed_heads(), "offload heads need comp_blocks and comp_from");
  int64_t keys = 0;
  for (int s = 0; s < num_seqs; ++s) {
    if (SelectSlot(table, s) >= 0) keys += std::max(0, batch.seq_len.ptr<int32_t>()[s]);
  }
  threads.ParallelFor(
      int64_t{num_seqs} * num_kv_heads, keys * num_q_heads * head_dim * 4,
      [&](int64_t begin, int64_t end) {
        KeyList list;
        ListScratch scratch;
        std::vector<float> o(static_cast<size_t>(group * head_dim));
        std::vector<float> lse(static_cast<size_t>(group));
        for (int64_t u = begin; u < end; ++u) {
          const auto seq = static_cast<int32_t>(u / num_kv_heads);
          const int kv_head = static_cast<int>(u % num_kv_heads);
          if (SelectSlot(table, seq) < 0) continue;
          const SeqHead sh = HeadOf(table, seq, kv_head);
          if (sh.head.decode != kDecodeRetrieve) continue;
          const int32_t n = batch.seq_len.ptr<int32_t>()[seq];
          const int32_t token = batch.seq_token.ptr<int32_t>()[seq];
          HW_CHECK(n >= 1 && token >= 0 && token < q.dim(0),
                   "sequence {}: seq_len {}, seq_token {} of {} query rows", seq, n, token,
                   q.dim(0));
          const int32_t from = table.comp_from.ptr<int32_t>()[seq];
          const int32_t sink_end = from > 0 ? std::min(sh.head.retention.sink, n) : n;
          list.Clear();
          auto add = [&](int32_t pos) {
            const int64_t slot = SlotOf(sh, table, pool, pos);
            list.k.push_back(pool.k.ptr<float>() + slot * head_dim);
            list.v.push_back(pool.v.ptr<float>() + slot * head_dim);
          };
          for (int32_t j = 0; j < sink_end; ++j) add(j);
          for (int32_t j = std::max(from, sink_end); j < n; ++j) add(j);
          const int64_t qh0 = int64_t{kv_head} * group;
          AttendList(q.ptr<float>() + (int64_t{token} * num_q_heads + qh0) * head_dim, group,
                     head_dim, list, scale, {o.data(), lse.data(), nullptr, 0}, scratch);
          for (int64_t g = 0; g < group; ++g) {
            const int64_t row = int64_t{seq} * num_q_heads + qh0 + g;
            MergeAttention(o.data() + g * head_dim, lse[static_cast<size_t>(g)],
                           batch.host_out.ptr<float>() + row * head_dim,
                           batch.host_lse.ptr<float>()[row], head_dim);
            std::copy(o.data() + g * head_dim, o.data() + (g + 1) * head_dim,
                      out.ptr<float>() + (int64_t{token} * num_q_heads + qh0 + g) * head_dim);
          }
        }
      });
}

}  // namespace headwise::kernels::cpu
