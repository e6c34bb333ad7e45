#include "kernels/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels/cpu/kv_lookup.h"
#include "kernels/cpu/list_attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/offload_attention.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/select_decode.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/top_keys.h"

namespace headwise::kernels {
namespace {

using cpu::CheckF32;
using cpu::CheckI32;
using cpu::CheckTable;
using cpu::CheckWorkSummaries;
using cpu::HeadOf;
using cpu::SeqHead;
using cpu::SlotOf;

float RmsScale(const float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(n)) + eps);
}

// The keys query token t attends on its sequence's KV head: [0, pos] causally, or on a ring head
// the sinks and the window as its chunk began (backend.h): [0, sink_end) then [window_begin, end).
struct KeyRanges {
  int32_t sink_end = 0;
  int32_t window_begin = 0;
  int32_t end = 0;          // one past the query's position
  int32_t bias_index = -1;  // the compensation token's key index, if any
  float bias = 0.0f;        // added to its logit
  int32_t count() const { return sink_end + (end - window_begin); }
  int32_t key(int32_t i) const { return i < sink_end ? i : window_begin + (i - sink_end); }
};
KeyRanges AttendedKeys(const PagedAttentionBatch& batch, int64_t t, const KvRetention& r) {
  const int32_t pos = batch.token_pos.ptr<int32_t>()[t];
  const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
  if (r.compacts()) {
    const int32_t from = batch.table.comp_from.ptr<int32_t>()[seq];
    if (from <= 0) return {pos + 1, pos + 1, pos + 1};  // not compacted: everything
    KeyRanges keys{std::min(r.sink + (r.compensation ? 1 : 0), pos + 1), from, pos + 1};
    if (r.compensation && r.sink <= pos) {
      keys.bias_index = r.sink;
      keys.bias = r.compensation_by_count ? std::log(static_cast<float>(from - r.sink)) : 0.0f;
    }
    return keys;
  }
  if (!r.ring()) return {pos + 1, pos + 1, pos + 1};
  int32_t chunk_start = pos;
  if (batch.query_start.data != nullptr) {
    chunk_start = batch.token_pos.ptr<int32_t>()[batch.query_start.ptr<int32_t>()[seq]];
  }
  const int32_t sink_end = std::min(r.sink, pos + 1);
  const int32_t window_begin = std::max(sink_end, chunk_start - r.window);
  return {sink_end, window_begin, pos + 1};
}

// cos and sin of rank * inv_freq[i] for ranks 0 .. ranks() - 1, computed as RopeWriteKv computes
// a position's (f32 angle, f32 cos/sin), so rank r rotates exactly as position r does.
class RankRotation {
 public:
  // Makes ranks [0, count) available for these frequencies.
  void Ensure(const Tensor& inv_freq, int32_t count) {
    const float* f = inv_freq.ptr<float>();
    const auto half = static_cast<size_t>(inv_freq.numel());
    if (inv_freq_.size() != half || !std::equal(inv_freq_.begin(), inv_freq_.end(), f)) {
      inv_freq_.assign(f, f + half);
      cos_.clear();
      sin_.clear();
      ranks_ = 0;
    }
    if (count <= ranks_) return;
    const int32_t want = (count + 255) / 256 * 256;
    cos_.resize(static_cast<size_t>(want) * half);
    sin_.resize(static_cast<size_t>(want) * half);
    for (int32_t r = ranks_; r < want; ++r) {
      const float rank = static_cast<float>(r);
      for (size_t i = 0; i < half; ++i) {
        const float angle = rank * inv_freq_[i];
        cos_[static_cast<size_t>(r) * half + i] = std::cos(angle);
        sin_[static_cast<size_t>(r) * half + i] = std::sin(angle);
      }
    }
    ranks_ = want;
  }
  int32_t ranks() const { return ranks_; }
  // y = x rotated by `rank` (rotate-half): y and x hold D = 2 * half floats and do not overlap.
  void Rotate(const float* x, int32_t rank, float* y) const {
    const size_t half = inv_freq_.size();
    const float* c = cos_.data() + static_cast<size_t>(rank) * half;
    const float* s = sin_.data() + static_cast<size_t>(rank) * half;
    for (size_t i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      y[i] = a * c[i] - b * s[i];
      y[i + half] = b * c[i] + a * s[i];
    }
  }

 private:
  std::vector<float> inv_freq_, cos_, sin_;
  int32_t ranks_ = 0;
};

// Per-worker buffers of PagedAttention.
struct AttentionScratch {
  std::vector<float> q, keys;  // a re-indexed head's rotated query heads and keys
  cpu::KeyList list;
  cpu::ListScratch list_scratch;
};

// Attention of query heads [qh0, qh0 + n) of token t, which share one KV head: list attention
// (cpu/list_attention.h) over the attended keys in increasing position. On a re-indexed head the
// query and every key are first rotated by their rank (`rotation` holds enough ranks), each key
// once for all n heads. Heads that select for a selecting sequence are left to the selection
// operations (their outputs untouched).
void AttendHeads(const Tensor& q, const KvPoolView& pool, const PagedAttentionBatch& batch,
                 float scale, const Tensor& out, int64_t t, int64_t qh0, int64_t n, int64_t group,
                 const RankRotation& rotation, AttentionScratch& s) {
  const int64_t num_q_heads = q.dim(1), head_dim = q.dim(2);
  const auto d_size = static_cast<size_t>(head_dim);
  const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
  const int32_t pos = batch.token_pos.ptr<int32_t>()[t];
  float* o = out.ptr<float>() + (t * num_q_heads + qh0) * head_dim;
  if (pos < 0) {  // padding
    std::fill(o, o + n * head_dim, 0.0f);
    return;
  }
  const SeqHead sh = HeadOf(batch.table, seq, static_cast<int>(qh0 / group));
  if (cpu::SelectionAttends(batch.table, seq, sh.head)) return;
  const KeyRanges attended = AttendedKeys(batch, t, sh.head.retention);
  const int32_t count = attended.count();
  const bool by_rank = sh.head.retention.reindex();
  const float* qv = q.ptr<float>() + (t * num_q_heads + qh0) * head_dim;
  if (by_rank) {
    s.q.resize(static_cast<size_t>(n) * d_size);
    for (int64_t h = 0; h < n; ++h) {
      rotation.Rotate(qv + h * head_dim, count - 1, s.q.data() + static_cast<size_t>(h) * d_size);
    }
    qv = s.q.data();
    s.keys.resize(static_cast<size_t>(count) * d_size);
  }
  s.list.Clear();
  for (int32_t j = 0; j < count; ++j) {
    const int64_t slot = SlotOf(sh, batch.table, pool, attended.key(j));
    const float* kv = pool.k.ptr<float>() + slot * head_dim;
    if (by_rank) {
      float* rotated = s.keys.data() + static_cast<size_t>(j) * d_size;
      rotation.Rotate(kv, j, rotated);
      kv = rotated;
    }
    s.list.k.push_back(kv);
    s.list.v.push_back(pool.v.ptr<float>() + slot * head_dim);
  }
  if (attended.bias_index >= 0) {
    s.list.bias.assign(static_cast<size_t>(count), 0.0f);
    s.list.bias[static_cast<size_t>(attended.bias_index)] = attended.bias;
  }
  cpu::AttendList(qv, n, head_dim, s.list, scale, {o, nullptr, nullptr, 0}, s.list_scratch);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(num_threads) {}

  std::string_view name() const override { return "cpu"; }
  Device device() const override { return Device::kCpu; }
  DType kv_dtype() const override { return DType::kF32; }
  DType activation_dtype() const override { return DType::kF32; }

  Buffer Allocate(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor view(nullptr, dtype, Device::kCpu, shape);
    const size_t bytes = std::max<size_t>(view.nbytes(), 1);
    // 64-byte alignment keeps rows friendly to vector loads.
    view.data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    HW_CHECK(view.data != nullptr, "out of host memory allocating {} bytes", bytes);
    return Buffer(view, [](void* p) { std::free(p); });
  }

  void CopyFromHost(const Tensor& dst, const void* src, size_t bytes) override {
    HW_CHECK_LE(bytes, dst.nbytes());
    std::memcpy(dst.data, src, bytes);
  }
  void CopyToHost(void* dst, const Tensor& src, size_t bytes) override {
    HW_CHECK_LE(bytes, src.nbytes());
    std::memcpy(dst, src.data, bytes);
  }
  void CopyToHostStart(const Tensor& src, size_t bytes) override {
    host_copy_.resize(bytes);
    CopyToHost(host_copy_.data(), src, bytes);
  }
  const void* CopyToHostWait() override { return host_copy_.data(); }

  Buffer LoadWeight(const HostTensor& weight) override {
    Tensor view = weight.shape;
    view.data = const_cast<float*>(weight.data);
    view.dtype = DType::kF32;
    view.device = Device::kCpu;
    std::shared_ptr<const void> keep = weight.keepalive;
    return Buffer(view, [keep](void*) mutable { keep.reset(); });
  }

  MemoryInfo DeviceMemory() const override {
    MemoryInfo info;
    const long page = sysconf(_SC_PAGESIZE);
    info.total_bytes = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(page);
    info.free_bytes = static_cast<size_t>(sysconf(_SC_AVPHYS_PAGES)) * static_cast<size_t>(page);
    return info;
  }
  void CopyOnDevice(const Tensor& dst, const Tensor& src, size_t bytes) override {
    HW_CHECK(bytes <= dst.nbytes() && bytes <= src.nbytes(), "copy of {} bytes", bytes);
    std::memcpy(dst.data, src.data, bytes);
  }
  void Synchronize() override {}

  void Embedding(const Tensor& table, const Tensor& ids, int32_t first_id,
                 const Tensor& out) override {
    CheckF32(table, "table");
    CheckI32(ids, "ids");
    CheckF32(out, "out");
    const int64_t rows = table.dim(0), hidden = table.dim(1);
    HW_CHECK_EQ(out.dim(1), hidden);
    HW_CHECK(first_id >= 0, "first_id {}", first_id);
    for (int64_t t = 0; t < ids.numel(); ++t) {
      const int32_t id = ids.ptr<int32_t>()[t];
      HW_CHECK(id >= 0, "token id {}", id);
      float* dst = out.ptr<float>() + t * hidden;
      const int64_t row = int64_t{id} - first_id;
      if (row < 0 || row >= rows) {  // another rank's share of the vocabulary
        std::fill(dst, dst + hidden, 0.0f);
        continue;
      }
      std::memcpy(dst, table.ptr<float>() + row * hidden,
                  static_cast<size_t>(hidden) * sizeof(float));
    }
  }

  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    CheckF32(x, "x");
    const int64_t rows = x.dim(0), n = x.dim(1);
    const float* w = weight.ptr<float>();
    pool_.ParallelFor(rows, rows * n * 3, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* xr = x.ptr<float>() + r * n;
        float* yr = out.ptr<float>() + r * n;
        const float scale = RmsScale(xr, n, eps);
        for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * scale);
      }
    });
  }

  void AddRmsNorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out) override {
    CheckF32(residual, "residual");
    HW_CHECK_EQ(residual.numel(), x.numel());
    float* res = residual.ptr<float>();
    const float* xs = x.ptr<float>();
    for (int64_t i = 0; i < residual.numel(); ++i) res[i] += xs[i];
    RmsNorm(residual, weight, eps, out);
  }

  void Matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) override {
    CheckF32(x, "x");
    CheckF32(w, "w");
    CheckF32(out, "out");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    HW_CHECK_EQ(w.dim(1), k);
    HW_CHECK_EQ(out.dim(0), m);
    HW_CHECK_EQ(out.dim(1), n);
    cpu::MatmulBatchInvariant(x.ptr<float>(), m, w.ptr<float>(), n, k, out.ptr<float>(), pool_);
    if (bias.data != nullptr) {
      HW_CHECK_EQ(bias.numel(), n);
      for (int64_t r = 0; r < m; ++r) {
        float* row = out.ptr<float>() + r * n;
        for (int64_t c = 0; c < n; ++c) row[c] += bias.ptr<float>()[c];
      }
    }
  }

  void SiluMul(const Tensor& gate_up, const Tensor& out) override {
    const int64_t rows = gate_up.dim(0), inter = out.dim(1);
    HW_CHECK_EQ(gate_up.dim(1), 2 * inter);
    pool_.ParallelFor(rows, rows * inter * 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* g = gate_up.ptr<float>() + r * 2 * inter;
        const float* u = g + inter;
        float* y = out.ptr<float>() + r * inter;
        for (int64_t i = 0; i < inter; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
      }
    });
  }

  void RopeWriteKv(const Tensor& qkv, const PagedAttentionBatch& batch, const Tensor& inv_freq,
                   const KvPoolView& pool, const Tensor& q_out) override {
    CheckF32(qkv, "qkv");
    CheckI32(batch.token_pos, "positions");
    const int64_t tokens = qkv.dim(0);
    const int64_t num_q_heads = q_out.dim(1), head_dim = q_out.dim(2);
    const int64_t num_kv_heads = batch.table.num_kv_heads();
    const int64_t half = head_dim / 2;
    HW_CHECK_EQ(qkv.dim(1), (num_q_heads + 2 * num_kv_heads) * head_dim);
    HW_CHECK_EQ(inv_freq.numel(), half);
    HW_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "{} query heads, {} KV heads",
             num_q_heads, num_kv_heads);
    const int64_t group = num_q_heads / num_kv_heads;
    CheckTable(batch.table);
    const int64_t rope_work = tokens * (num_q_heads + 2 * num_kv_heads) * head_dim * 4;
    pool_.ParallelFor(tokens, rope_work, [&](int64_t begin, int64_t end) {
      std::vector<float> cos_v(static_cast<size_t>(half)), sin_v(static_cast<size_t>(half));
      for (int64_t t = begin; t < end; ++t) {
        const int32_t position = batch.token_pos.ptr<int32_t>()[t];
        if (position < 0) continue;  // padding
        const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
        const float pos = static_cast<float>(position);
        for (int64_t i = 0; i < half; ++i) {
          const float angle = pos * inv_freq.ptr<float>()[i];
          cos_v[static_cast<size_t>(i)] = std::cos(angle);
          sin_v[static_cast<size_t>(i)] = std::sin(angle);
        }
        const float* row = qkv.ptr<float>() + t * qkv.dim(1);
        auto rotate = [&](const float* x, float* y) {
          for (int64_t i = 0; i < half; ++i) {
            const float a = x[i], b = x[i + half];
            y[i] = a * cos_v[static_cast<size_t>(i)] - b * sin_v[static_cast<size_t>(i)];
            y[i + half] = b * cos_v[static_cast<size_t>(i)] + a * sin_v[static_cast<size_t>(i)];
          }
        };
        // Re-indexed heads (of this sequence's layout): q and k unrotated, attention rotates them
        // by rank.
        auto write = [&](const SeqHead& sh, const float* x, float* y) {
          if (sh.head.retention.reindex()) {
            std::memcpy(y, x, static_cast<size_t>(head_dim) * sizeof(float));
          } else {
            rotate(x, y);
          }
        };
        const float* k = row + num_q_heads * head_dim;
        const float* v = k + num_kv_heads * head_dim;
        for (int64_t h = 0; h < num_kv_heads; ++h) {
          const SeqHead sh = HeadOf(batch.table, seq, static_cast<int>(h));
          for (int64_t qh = h * group; qh < (h + 1) * group; ++qh) {
            write(sh, row + qh * head_dim, q_out.ptr<float>() + (t * num_q_heads + qh) * head_dim);
          }
          const int64_t slot = SlotOf(sh, batch.table, pool, position);
          write(sh, k + h * head_dim, pool.k.ptr<float>() + slot * head_dim);
          std::memcpy(pool.v.ptr<float>() + slot * head_dim, v + h * head_dim,
                      static_cast<size_t>(head_dim) * sizeof(float));
        }
      }
    });
  }

  void PagedAttention(const Tensor& q, const KvPoolView& pool, const PagedAttentionBatch& batch,
                      float scale, const Tensor& out) override {
    CheckF32(q, "q");
    const int64_t tokens = q.dim(0), num_q_heads = q.dim(1), head_dim = q.dim(2);
    const int64_t num_kv_heads = batch.table.num_kv_heads();
    HW_CHECK(num_kv_heads > 0 && num_q_heads % num_kv_heads == 0, "{} query heads, {} KV heads",
             num_q_heads, num_kv_heads);
    const int64_t group = num_q_heads / num_kv_heads;
    int64_t keys = 0;  // keys attended over the batch, per query head
    for (int64_t t = 0; t < tokens; ++t) keys += std::max(0, batch.token_pos.ptr<int32_t>()[t] + 1);
    const BlockTable& table = batch.table;
    CheckTable(table);
    CheckWorkSummaries(table);
    if (table.has_select_heads()) {
      // A selecting sequence's query this step is one decode token (SelectDecodeBatch).
      std::vector<int> queries(static_cast<size_t>(table.num_seqs()), 0);
      for (int64_t t = 0; t < tokens; ++t) {
        if (batch.token_pos.ptr<int32_t>()[t] < 0) continue;
        const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
        HW_CHECK(seq >= 0 && seq < table.num_seqs(), "token {} of sequence {} of {}", t, seq,
                 table.num_seqs());
        ++queries[static_cast<size_t>(seq)];
      }
      for (int s = 0; s < table.num_seqs(); ++s) {
        HW_CHECK(cpu::SelectSlot(table, s) < 0 || queries[static_cast<size_t>(s)] == 1,
                 "sequence {} selects (slot {}) with {} query tokens, not one decode query", s,
                 cpu::SelectSlot(table, s), queries[static_cast<size_t>(s)]);
      }
    }
    bool reindex = false;  // some token attends on a re-indexed head
    int32_t ranks = 0;     // the longest attended list on a re-indexed head
    for (int64_t t = 0; t < tokens; ++t) {
      if (batch.token_pos.ptr<int32_t>()[t] < 0) continue;
      for (int h = 0; h < num_kv_heads; ++h) {
        const SeqHead sh = HeadOf(table, batch.token_seq.ptr<int32_t>()[t], h);
        if (!sh.head.retention.reindex()) continue;
        reindex = true;
        ranks = std::max(ranks, AttendedKeys(batch, t, sh.head.retention).count());
      }
    }
    if (reindex) {
      CheckF32(table.rope_inv_freq, "rope_inv_freq");
      HW_CHECK(table.has_reindex_heads() && table.rope_inv_freq.numel() == head_dim / 2,
               "re-indexed heads need {} rotary frequencies (BlockTable::rope_inv_freq), the table "
               "has {}",
               head_dim / 2, table.has_reindex_heads() ? table.rope_inv_freq.numel() : 0);
      rank_rotation_.Ensure(table.rope_inv_freq, ranks);
    }
    // One work unit per (token, query head); with re-indexed heads one per (token, KV head), so
    // each key is rotated once for its GQA group.
    const int64_t heads_per_unit = reindex ? group : 1;
    const int64_t units_per_token = num_q_heads / heads_per_unit;
    pool_.ParallelFor(tokens * units_per_token, keys * num_q_heads * head_dim * 4,
                      [&](int64_t begin, int64_t end) {
                        AttentionScratch scratch;
                        for (int64_t u = begin; u < end; ++u) {
                          AttendHeads(q, pool, batch, scale, out, u / units_per_token,
                                      (u % units_per_token) * heads_per_unit, heads_per_unit, group,
                                      rank_rotation_, scratch);
                        }
                      });
  }

  void SparseDecodeAttention(const Tensor& q, const KvPoolView& pool,
                             const SparseDecodeBatch& batch, float scale, const Tensor& out,
                             const Tensor& lse) override {
    CheckF32(q, "q");
    const int64_t num_q_heads = q.dim(1), head_dim = q.dim(2);
    const int64_t rows = batch.row_seq.numel();
    const int64_t group = num_q_heads / batch.table.num_kv_heads();
    CheckTable(batch.table);
    const int32_t* indptr = batch.indptr.ptr<int32_t>();
    const float* bias = batch.logit_bias.data ? batch.logit_bias.ptr<float>() : nullptr;
    pool_.ParallelFor(
        rows * group, (indptr[rows] + rows) * group * head_dim * 4,
        [&](int64_t begin, int64_t end) {
          cpu::KeyList list;
          cpu::ListScratch scratch;
          for (int64_t i = begin; i < end; ++i) {
            const int64_t r = i / group, g = i % group;
            const int32_t seq = batch.row_seq.ptr<int32_t>()[r];
            const int32_t kv_head = batch.row_kv_head.ptr<int32_t>()[r];
            const SeqHead sh = HeadOf(batch.table, seq, kv_head);
            HW_CHECK(!sh.head.retention.reindex(),
                     "index-list decode is not defined for re-indexed KV head {} "
                     "(sequence {})",
                     kv_head, seq);
            list.Clear();
            for (int32_t j = indptr[r]; j < indptr[r + 1]; ++j) {
              const int64_t slot = SlotOf(sh, batch.table, pool, batch.indices.ptr<int32_t>()[j]);
              list.k.push_back(pool.k.ptr<float>() + slot * head_dim);
              list.v.push_back(pool.v.ptr<float>() + slot * head_dim);
              if (bias != nullptr) list.bias.push_back(bias[j]);
            }
            const float* qv = q.ptr<float>() + (seq * num_q_heads + kv_head * group + g) * head_dim;
            cpu::AttendList(qv, 1, head_dim, list, scale,
                            {out.ptr<float>() + i * head_dim, lse.ptr<float>() + i, nullptr, 0},
                            scratch);
          }
        });
  }

  void UpdatePageSummaries(const KvPoolView& pool, const PagedAttentionBatch& batch) override {
    cpu::UpdatePageSummaries(pool, batch);
  }
  void SelectionGate(const Tensor& q, const SelectDecodeBatch& batch) override {
    cpu::SelectionGate(q, batch);
  }
  void ScoreAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                      float scale, const Tensor& out, const Tensor& scores) override {
    cpu::ScoreAttention(q, pool, batch, scale, out, scores, pool_);
  }
  void SelectTopK(const Tensor& q, const Tensor& scores, const SelectDecodeBatch& batch) override {
    cpu::SelectTopK(q, scores, batch);
  }
  void SelectedAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                         float scale, const Tensor& out) override {
    cpu::SelectedAttention(q, pool, batch, scale, out, pool_);
  }

  void OffloadAttention(const Tensor& q, const KvPoolView& pool, const OffloadDecodeBatch& batch,
                        float scale, const Tensor& out) override {
    cpu::OffloadAttention(q, pool, batch, scale, out, pool_);
  }

  void TopKeys(const Tensor& queries, const Tensor& keys, const Tensor& ids) override {
    const int64_t m = queries.dim(0), n = keys.dim(0), d = keys.dim(1), k = ids.dim(1);
    HW_CHECK(
        queries.dim(1) == d && ids.dim(0) == m && k >= 1 && k <= std::min<int64_t>(n, kMaxTopKeys),
        "TopKeys: queries [{}, {}], keys [{}, {}], ids [{}, {}]", m, queries.dim(1), n, d,
        ids.dim(0), k);
    pool_.ParallelFor(m, m * n * d, [&](int64_t begin, int64_t end) {
      // Blocks of queries share each tile of keys while it is in cache.
      constexpr int64_t kBlock = 16;
      std::vector<cpu::ScoredId> top[kBlock];
      for (int64_t first = begin; first < end; first += kBlock) {
        const int64_t count = std::min(kBlock, end - first);
        cpu::TopKeysOfBatch(keys.ptr<float>(), static_cast<size_t>(n), static_cast<size_t>(d),
                            queries.ptr<float>() + first * d, static_cast<size_t>(count),
                            static_cast<size_t>(k), top);
        for (int64_t i = 0; i < count; ++i) {
          for (int64_t j = 0; j < k; ++j) {
            ids.ptr<int32_t>()[(first + i) * k + j] =
                static_cast<int32_t>(top[i][static_cast<size_t>(j)].id);
          }
        }
      }
    });
  }

  void MeanKv(const KvPoolView& pool, const KvMeanBatch& batch) override {
    const int64_t rows = batch.row_seq.numel(), d = pool.k.dim(2);
    CheckTable(batch.table);
    for (int64_t r = 0; r < rows; ++r) {
      const SeqHead sh =
          HeadOf(batch.table, batch.row_seq.ptr<int32_t>()[r], batch.row_kv_head.ptr<int32_t>()[r]);
      const int32_t begin = batch.begin.ptr<int32_t>()[r], end = batch.end.ptr<int32_t>()[r];
      HW_CHECK(begin < end, "mean over the empty range [{}, {})", begin, end);
      for (const Tensor* part : {&pool.k, &pool.v}) {
        std::vector<double> sum(static_cast<size_t>(d), 0.0);
        for (int32_t p = begin; p < end; ++p) {
          const float* x = part->ptr<float>() + SlotOf(sh, batch.table, pool, p) * d;
          for (int64_t c = 0; c < d; ++c) sum[static_cast<size_t>(c)] += x[c];
        }
        float* dst =
            part->ptr<float>() + SlotOf(sh, batch.table, pool, batch.dest.ptr<int32_t>()[r]) * d;
        for (int64_t c = 0; c < d; ++c) {
          dst[c] = static_cast<float>(sum[static_cast<size_t>(c)] / (end - begin));
        }
      }
    }
  }

  void GatherRows(const Tensor& x, const Tensor& rows, const Tensor& out) override {
    const int64_t width = x.dim(1);
    for (int64_t r = 0; r < rows.numel(); ++r) {
      const int32_t src = rows.ptr<int32_t>()[r];
      HW_CHECK(src >= 0 && src < x.dim(0), "row {} of {}", src, x.dim(0));
      std::memcpy(out.ptr<float>() + r * width, x.ptr<float>() + src * width,
                  static_cast<size_t>(width) * sizeof(float));
    }
  }

  void Sample(const Tensor& logits, const SamplingBatch& batch, const SampleOutputs& out) override {
    SampleCpu(logits, batch, out);
  }

 private:
  cpu::ThreadPool pool_;
  std::vector<uint8_t> host_copy_;  // CopyToHostStart's bytes
  RankRotation rank_rotation_;      // PagedAttention's rank table, kept between calls
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int num_threads) {
  if (num_threads <= 0)
    num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace headwise::kernels
