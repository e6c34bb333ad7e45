#include "kernels/cpu/cpu_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cpu/sampling.h"
#include "kernels/cpu/thread_pool.h"

namespace headwise::kernels {
namespace {

void CheckF32(const Tensor& t, const char* what) {
  HW_CHECK(t.dtype == DType::kF32 && t.device == Device::kCpu, "{} must be f32 on the CPU", what);
}
void CheckI32(const Tensor& t, const char* what) {
  HW_CHECK(t.dtype == DType::kI32 && t.device == Device::kCpu, "{} must be i32 on the CPU", what);
}

float RmsScale(const float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(n)) + eps);
}

// The KvHead of (layout, KV head): heads is an i32 tensor, so the struct is copied out.
KvHead LayoutHead(const BlockTable& table, int layout, int kv_head) {
  static_assert(std::is_trivially_copyable_v<KvHead>);
  KvHead head;
  const int32_t* src =
      table.heads.ptr<int32_t>() + (int64_t{layout} * table.num_kv_heads() + kv_head) * kKvHeadInts;
  std::memcpy(static_cast<void*>(&head), src, sizeof head);
  return head;
}

// Checks what every operation reads of a block table once per call, so that the per-key lookups
// below need only index: a bad table is a bug upstream (the KV cache that built it).
void CheckTable(const BlockTable& table) {
  CheckI32(table.heads, "BlockTable::heads");
  CheckI32(table.seq_layout, "BlockTable::seq_layout");
  CheckI32(table.blocks, "BlockTable::blocks");
  HW_CHECK(table.heads.rank == 3 && table.heads.dim(2) == kKvHeadInts && table.num_layouts() > 0,
           "BlockTable::heads {} must be [layouts, Hkv, {}]", table.heads.ShapeString(),
           kKvHeadInts);
  HW_CHECK(table.blocks.rank == 2 && table.seq_layout.numel() == table.num_seqs(),
           "BlockTable::blocks {} and seq_layout {} must be [S, max_blocks] and [S]",
           table.blocks.ShapeString(), table.seq_layout.ShapeString());
  for (const auto& [kind, t] : {std::pair{"ring_blocks", &table.ring_blocks},
                                std::pair{"comp_blocks", &table.comp_blocks}}) {
    if (t->data == nullptr) continue;
    CheckI32(*t, kind);
    HW_CHECK(t->rank == 2 && t->dim(0) == table.blocks.dim(0) && t->dim(1) == table.blocks.dim(1),
             "BlockTable::{} {} must have the shape of blocks {}", kind, t->ShapeString(),
             table.blocks.ShapeString());
  }
  if (table.has_compressed_heads()) {
    CheckI32(table.comp_from, "BlockTable::comp_from");
    HW_CHECK_EQ(table.comp_from.numel(), table.num_seqs());
  }
  for (int s = 0; s < table.num_seqs(); ++s) {
    const int32_t layout = table.seq_layout.ptr<int32_t>()[s];
    HW_CHECK(layout >= 0 && layout < table.num_layouts(), "sequence {} runs layout {} of {}", s,
             layout, table.num_layouts());
  }
  for (int l = 0; l < table.num_layouts(); ++l) {
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const KvHead head = LayoutHead(table, l, h);
      const KvRetention& r = head.retention;
      HW_CHECK(r.storage == kStorageFull || r.storage == kStorageRing ||
                   r.storage == kStorageCompressOnce,
               "layout {} KV head {}: storage {}", l, h, r.storage);
      HW_CHECK(r.sink >= 0 && r.window >= 0 && head.page >= 0,
               "layout {} KV head {}: sink {}, window {}, page {}", l, h, r.sink, r.window,
               head.page);
      HW_CHECK(!r.ring() || table.has_ring_heads(),
               "layout {} KV head {} is a ring head but the table has no ring_blocks", l, h);
      HW_CHECK(!r.compress_once() || table.has_compressed_heads(),
               "layout {} KV head {} compresses once but the table has no comp_blocks", l, h);
      HW_CHECK(!r.reindex() || r.ring(),
               "layout {} KV head {} re-indexes positions but is no ring head", l, h);
    }
  }
}

// BlockTable's host-known summaries bound every layout's heads (the CUDA backend sizes its work by
// them and cannot read the heads): a forgotten or stale summary fails here.
void CheckWorkSummaries(const BlockTable& table) {
  for (int l = 0; l < table.num_layouts(); ++l) {
    int full_heads = 0;
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const KvHead head = LayoutHead(table, l, h);
      if (head.retention.ring()) {
        HW_CHECK(head.retention.sink + head.retention.window <= table.max_ring_span,
                 "layout {} KV head {}: ring sink {} + window {} over max_ring_span {}", l, h,
                 head.retention.sink, head.retention.window, table.max_ring_span);
      } else {
        ++full_heads;
      }
    }
    HW_CHECK(full_heads <= table.max_full_heads,
             "layout {} has {} full and compress-once KV heads, max_full_heads is {}", l,
             full_heads, table.max_full_heads);
  }
}

// Key positions and pool pages of (sequence, KV head): its layout's KvHead and its row of the
// block table of the head's storage kind.
struct SeqHead {
  KvHead head;
  const int32_t* blocks = nullptr;  // [max_blocks]: first page of each logical page's block
  int32_t seq = 0;
  int kv_head = 0;
};
SeqHead HeadOf(const BlockTable& table, int32_t seq, int kv_head) {
  HW_CHECK(seq >= 0 && seq < table.num_seqs() && kv_head >= 0 && kv_head < table.num_kv_heads(),
           "KV head {} of sequence {} outside the block table [{}, {}]", kv_head, seq,
           table.num_seqs(), table.num_kv_heads());
  SeqHead sh;
  sh.seq = seq;
  sh.kv_head = kv_head;
  sh.head = LayoutHead(table, table.seq_layout.ptr<int32_t>()[seq], kv_head);
  const KvRetention& r = sh.head.retention;
  const Tensor& blocks = r.ring()            ? table.ring_blocks
                         : r.compress_once() ? table.comp_blocks
                                             : table.blocks;
  sh.blocks = blocks.ptr<int32_t>() + int64_t{seq} * table.max_blocks();
  return sh;
}

// Pool slot of key `pos` of a sequence's KV head, bounds-checked: a bad table is a bug upstream.
int64_t SlotOf(const SeqHead& sh, const BlockTable& table, const KvPoolView& pool, int32_t pos) {
  const int64_t logical = pos / pool.page_size;
  HW_CHECK(pos >= 0 && logical < table.max_blocks(),
           "key {} of sequence {} outside the block table's {} pages of {}", pos, sh.seq,
           table.max_blocks(), pool.page_size);
  const int32_t first_page = sh.blocks[logical];
  // A freed comp page: its positions were dropped by compaction, and nothing may read them.
  HW_CHECK(first_page >= 0, "key {} of sequence {} on KV head {}: its page was freed (block {})",
           pos, sh.seq, sh.kv_head, first_page);
  const int64_t page = int64_t{first_page} + sh.head.page;
  HW_CHECK(page < pool.k.dim(0), "KV page {} (block {} + head page {}) outside pool of {}", page,
           first_page, sh.head.page, pool.k.dim(0));
  return page * pool.page_size + pos % pool.page_size;
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
  if (r.compress_once()) {
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

// dots[h] = q_h . k for the n query rows q_h = q + h * head_dim: each a plain sequential sum
// over d (the same rounding as one head alone), the n sums interleaved so they run in parallel.
template <int N>
void DotRows(const float* q, int64_t head_dim, const float* k, float* dots) {
  float acc[N] = {};
  for (int64_t d = 0; d < head_dim; ++d) {
    for (int h = 0; h < N; ++h) acc[h] += q[h * head_dim + d] * k[d];
  }
  for (int h = 0; h < N; ++h) dots[h] = acc[h];
}
void DotRows(const float* q, int64_t n, int64_t head_dim, const float* k, float* dots) {
  switch (n) {
    case 1:
      return DotRows<1>(q, head_dim, k, dots);
    case 2:
      return DotRows<2>(q, head_dim, k, dots);
    case 3:
      return DotRows<3>(q, head_dim, k, dots);
    case 4:
      return DotRows<4>(q, head_dim, k, dots);
    case 8:
      return DotRows<8>(q, head_dim, k, dots);
    default:
      for (int64_t h = 0; h < n; ++h) DotRows<1>(q + h * head_dim, head_dim, k, dots + h);
  }
}

struct AttentionScratch {
  std::vector<float> q, key, scores, max, denom, dots;
};

// Attention of query heads [qh0, qh0 + n) of token t, which share one KV head: scores over the
// attended keys, softmax, weighted sum of the values into out. On a re-indexed head the query
// and every key are first rotated by their rank (`rotation` holds enough ranks), each key once
// for all n heads.
void AttendHeads(const Tensor& q, const KvPoolView& pool, const PagedAttentionBatch& batch,
                 float scale, const Tensor& out, int64_t t, int64_t qh0, int64_t n, int64_t group,
                 const RankRotation& rotation, AttentionScratch& s) {
  const int64_t num_q_heads = q.dim(1), head_dim = q.dim(2);
  const auto d_size = static_cast<size_t>(head_dim);
  const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
  const int32_t pos = batch.token_pos.ptr<int32_t>()[t];
  float* o = out.ptr<float>() + (t * num_q_heads + qh0) * head_dim;
  std::fill(o, o + n * head_dim, 0.0f);
  if (pos < 0) return;  // padding
  const SeqHead sh = HeadOf(batch.table, seq, static_cast<int>(qh0 / group));
  const KeyRanges attended = AttendedKeys(batch, t, sh.head.retention);
  const int32_t count = attended.count();
  const auto count_size = static_cast<size_t>(count);
  const bool by_rank = sh.head.retention.reindex();
  const float* qv = q.ptr<float>() + (t * num_q_heads + qh0) * head_dim;
  if (by_rank) {
    s.q.resize(static_cast<size_t>(n) * d_size);
    for (int64_t h = 0; h < n; ++h) {
      rotation.Rotate(qv + h * head_dim, count - 1, s.q.data() + static_cast<size_t>(h) * d_size);
    }
    qv = s.q.data();
    s.key.resize(d_size);
  }
  s.scores.resize(static_cast<size_t>(n) * count_size);
  s.max.assign(static_cast<size_t>(n), -INFINITY);
  s.dots.resize(static_cast<size_t>(n));
  for (int32_t j = 0; j < count; ++j) {
    const float* kv =
        pool.k.ptr<float>() + SlotOf(sh, batch.table, pool, attended.key(j)) * head_dim;
    if (by_rank) {
      rotation.Rotate(kv, j, s.key.data());
      kv = s.key.data();
    }
    DotRows(qv, n, head_dim, kv, s.dots.data());
    for (int64_t h = 0; h < n; ++h) {
      float& score = s.scores[static_cast<size_t>(h) * count_size + static_cast<size_t>(j)];
      score = s.dots[static_cast<size_t>(h)] * scale +
              (j == attended.bias_index ? attended.bias : 0.0f);
      s.max[static_cast<size_t>(h)] = std::max(s.max[static_cast<size_t>(h)], score);
    }
  }
  s.denom.assign(static_cast<size_t>(n), 0.0f);
  for (int64_t h = 0; h < n; ++h) {
    float* row = s.scores.data() + static_cast<size_t>(h) * count_size;
    for (size_t j = 0; j < count_size; ++j) {
      row[j] = std::exp(row[j] - s.max[static_cast<size_t>(h)]);
      s.denom[static_cast<size_t>(h)] += row[j];
    }
  }
  for (int32_t j = 0; j < count; ++j) {
    const float* vv =
        pool.v.ptr<float>() + SlotOf(sh, batch.table, pool, attended.key(j)) * head_dim;
    for (int64_t h = 0; h < n; ++h) {
      const float p = s.scores[static_cast<size_t>(h) * count_size + static_cast<size_t>(j)] /
                      s.denom[static_cast<size_t>(h)];
      float* oh = o + h * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) oh[d] += p * vv[d];
    }
  }
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

  void Embedding(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    CheckF32(table, "table");
    CheckI32(ids, "ids");
    CheckF32(out, "out");
    const int64_t vocab = table.dim(0), hidden = table.dim(1);
    HW_CHECK_EQ(out.dim(1), hidden);
    for (int64_t t = 0; t < ids.numel(); ++t) {
      const int32_t id = ids.ptr<int32_t>()[t];
      HW_CHECK(id >= 0 && id < vocab, "token id {} outside vocabulary of {}", id, vocab);
      std::memcpy(out.ptr<float>() + t * hidden, table.ptr<float>() + id * hidden,
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
          std::vector<float> scores;
          for (int64_t i = begin; i < end; ++i) {
            const int64_t r = i / group, g = i % group;
            const int32_t seq = batch.row_seq.ptr<int32_t>()[r];
            const int32_t kv_head = batch.row_kv_head.ptr<int32_t>()[r];
            const SeqHead sh = HeadOf(batch.table, seq, kv_head);
            HW_CHECK(!sh.head.retention.reindex(),
                     "index-list decode is not defined for re-indexed KV head {} (sequence {})",
                     kv_head, seq);
            const float* qv = q.ptr<float>() + (seq * num_q_heads + kv_head * group + g) * head_dim;
            float* o = out.ptr<float>() + i * head_dim;
            std::fill(o, o + head_dim, 0.0f);
            const int32_t first = indptr[r], count = indptr[r + 1] - indptr[r];
            if (count == 0) {
              lse.ptr<float>()[i] = -INFINITY;
              continue;
            }
            auto row_of = [&](const Tensor& pool_part, int32_t j) {
              const int32_t pos = batch.indices.ptr<int32_t>()[first + j];
              return pool_part.ptr<float>() + SlotOf(sh, batch.table, pool, pos) * head_dim;
            };
            scores.resize(static_cast<size_t>(count));
            float max_score = -INFINITY;
            for (int32_t j = 0; j < count; ++j) {
              const float* kv = row_of(pool.k, j);
              float dot = 0.0f;
              for (int64_t d = 0; d < head_dim; ++d) dot += qv[d] * kv[d];
              scores[static_cast<size_t>(j)] = dot * scale + (bias ? bias[first + j] : 0.0f);
              max_score = std::max(max_score, scores[static_cast<size_t>(j)]);
            }
            double denom = 0.0;
            for (auto& sc : scores) denom += (sc = std::exp(sc - max_score));
            for (int32_t j = 0; j < count; ++j) {
              const float* vv = row_of(pool.v, j);
              const float p = static_cast<float>(scores[static_cast<size_t>(j)] / denom);
              for (int64_t d = 0; d < head_dim; ++d) o[d] += p * vv[d];
            }
            lse.ptr<float>()[i] = max_score + static_cast<float>(std::log(denom));
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
  RankRotation rank_rotation_;  // PagedAttention's rank table, kept between calls
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(int num_threads) {
  if (num_threads <= 0)
    num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace headwise::kernels
