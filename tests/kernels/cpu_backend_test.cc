// The CPU backend against naive double-precision references on random non-zero inputs.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "tests/backend_util.h"
#include "tests/kernels/abort_message.h"
#include "tests/kernels/block_tables.h"

namespace headwise::kernels {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

using testing::Upload;
using testing::UploadI32;

// A fresh output buffer filled with NaN, so an unwritten element cannot pass.
Buffer Poisoned(Backend& be, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kF32, shape);
  std::fill(b.view().ptr<float>(), b.view().ptr<float>() + b.view().numel(), NAN);
  return b;
}
double MaxAbsDiff(const float* a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

TEST_CASE("ThreadPool covers every index exactly once", "[kernels]") {
  cpu::ThreadPool pool(3);
  for (int64_t n : {1, 2, 7, 1000}) {
    std::vector<int> hits(static_cast<size_t>(n), 0);
    pool.ParallelFor(n, int64_t{1} << 30, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
    });
    CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  }
}

TEST_CASE("Matmul with and without bias", "[kernels]") {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  for (auto [m, n, k] : {std::tuple{1, 7, 5}, std::tuple{13, 33, 64}, std::tuple{4, 1, 3}}) {
    auto x = Random(static_cast<size_t>(m * k), rng), w = Random(static_cast<size_t>(n * k), rng),
         bias = Random(static_cast<size_t>(n), rng);
    Buffer xb = Upload(*be, x, {m, k}), wb = Upload(*be, w, {n, k}), bb = Upload(*be, bias, {n});
    for (bool with_bias : {false, true}) {
      Buffer out = Poisoned(*be, {m, n});
      be->Matmul(xb.view(), wb.view(), with_bias ? bb.view() : Tensor(), out.view());
      std::vector<double> ref(static_cast<size_t>(m * n));
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < n; ++j) {
          double s = with_bias ? bias[static_cast<size_t>(j)] : 0.0;
          for (int p = 0; p < k; ++p)
            s += double{x[static_cast<size_t>(i * k + p)]} * w[static_cast<size_t>(j * k + p)];
          ref[static_cast<size_t>(i * n + j)] = s;
        }
      CHECK(MaxAbsDiff(out.view().ptr<float>(), ref) < 1e-4);
    }
  }
}

TEST_CASE("Matmul rows are bitwise independent of the batch around them", "[kernels]") {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  for (auto [n, k] : {std::pair{96, 576}, std::pair{37, 61}, std::pair{5, 16}}) {
    auto w = Random(static_cast<size_t>(n * k), rng);
    auto row = Random(static_cast<size_t>(k), rng);
    Buffer wb = Upload(*be, w, {n, k}), rb = Upload(*be, row, {1, k});
    Buffer alone = Poisoned(*be, {1, n});
    be->Matmul(rb.view(), wb.view(), Tensor(), alone.view());
    for (int m : {2, 3, 4, 5, 8, 13, 33}) {
      for (int pos : {0, m / 2, m - 1}) {
        auto x = Random(static_cast<size_t>(m * k), rng);
        std::copy(row.begin(), row.end(), x.begin() + static_cast<long>(pos) * k);
        Buffer xb = Upload(*be, x, {m, k});
        Buffer out = Poisoned(*be, {m, n});
        be->Matmul(xb.view(), wb.view(), Tensor(), out.view());
        INFO("n " << n << " k " << k << " m " << m << " row " << pos);
        CHECK(std::memcmp(out.view().ptr<float>() + static_cast<long>(pos) * n,
                          alone.view().ptr<float>(), static_cast<size_t>(n) * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("RmsNorm, AddRmsNorm and SiluMul", "[kernels]") {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  const int rows = 5, n = 48;
  auto x = Random(rows * n, rng), r = Random(rows * n, rng), w = Random(n, rng);
  const float eps = 1e-5f;
  Buffer xb = Upload(*be, x, {rows, n}), rb = Upload(*be, r, {rows, n}), wb = Upload(*be, w, {n});
  Buffer out = Poisoned(*be, {rows, n});
  be->AddRmsNorm(rb.view(), xb.view(), wb.view(), eps, out.view());
  std::vector<double> ref(rows * n), sum(rows * n);
  for (int i = 0; i < rows; ++i) {
    double ss = 0;
    for (int j = 0; j < n; ++j) {
      sum[i * n + j] = double{x[i * n + j]} + r[i * n + j];
      ss += sum[i * n + j] * sum[i * n + j];
    }
    const double inv = 1.0 / std::sqrt(ss / n + eps);
    for (int j = 0; j < n; ++j) ref[i * n + j] = w[j] * sum[i * n + j] * inv;
  }
  CHECK(MaxAbsDiff(rb.view().ptr<float>(), sum) < 1e-5);
  CHECK(MaxAbsDiff(out.view().ptr<float>(), ref) < 1e-4);

  Buffer act = Poisoned(*be, {rows, n / 2});
  be->SiluMul(xb.view(), act.view());
  std::vector<double> silu(rows * n / 2);
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < n / 2; ++j) {
      const double g = x[i * n + j], u = x[i * n + n / 2 + j];
      silu[i * n / 2 + j] = g / (1.0 + std::exp(-g)) * u;
    }
  CHECK(MaxAbsDiff(act.view().ptr<float>(), silu) < 1e-5);
}

// Dense causal attention over contiguous K/V, in double: the reference for PagedAttention.
std::vector<double> DenseAttention(const std::vector<float>& q, const std::vector<float>& k,
                                   const std::vector<float>& v, int pos, int hq, int hkv, int d,
                                   int qrow) {
  std::vector<double> out(static_cast<size_t>(hq * d), 0.0);
  const int group = hq / hkv;
  for (int h = 0; h < hq; ++h) {
    const int kh = h / group;
    std::vector<double> s(static_cast<size_t>(pos + 1));
    double mx = -INFINITY;
    for (int j = 0; j <= pos; ++j) {
      double dot = 0;
      for (int c = 0; c < d; ++c)
        dot += double{q[static_cast<size_t>((qrow * hq + h) * d + c)]} *
               k[static_cast<size_t>((j * hkv + kh) * d + c)];
      s[static_cast<size_t>(j)] = dot / std::sqrt(double(d));
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    double z = 0;
    for (auto& e : s) z += (e = std::exp(e - mx));
    for (int j = 0; j <= pos; ++j)
      for (int c = 0; c < d; ++c)
        out[static_cast<size_t>(h * d + c)] +=
            s[static_cast<size_t>(j)] / z * v[static_cast<size_t>((j * hkv + kh) * d + c)];
  }
  return out;
}

TEST_CASE("RopeWriteKv and PagedAttention match dense attention over scattered pages",
          "[kernels]") {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  const int page_size = 16, d = 32;
  for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{8, 1}}) {
    for (int len : {1, 15, 16, 17, 40}) {
      // Blocks handed out in a shuffled order so that logical and physical order differ; each
      // block holds pages of other (absent) layers too, and the heads' pages are permuted.
      const testing::HostBlockTable host_table =
          testing::MakeDenseTable(hkv, {len}, page_size, rng);
      const int num_pages = host_table.num_pages;

      auto qkv = Random(static_cast<size_t>(len * (hq + 2 * hkv) * d), rng);
      std::vector<int32_t> pos(static_cast<size_t>(len)), seq(static_cast<size_t>(len), 0);
      std::iota(pos.begin(), pos.end(), 0);
      std::vector<float> inv_freq(d / 2);
      for (int i = 0; i < d / 2; ++i)
        inv_freq[static_cast<size_t>(i)] = std::pow(10000.0f, -2.0f * i / d);

      Buffer k_pool = Poisoned(*be, {num_pages, page_size, d}),
             v_pool = Poisoned(*be, {num_pages, page_size, d});
      KvPoolView pool{k_pool.view(), v_pool.view(), page_size};
      Buffer qkv_b = Upload(*be, qkv, {len, (hq + 2 * hkv) * d});
      Buffer pos_b = UploadI32(*be, pos, {len}), seq_b = UploadI32(*be, seq, {len});
      const testing::BackendBlockTable table = testing::UploadTable(*be, host_table, {});
      Buffer freq_b = Upload(*be, inv_freq, {d / 2});
      Buffer q = Poisoned(*be, {len, hq, d}), out = Poisoned(*be, {len, hq, d});
      Buffer query_start_b = UploadI32(*be, {0, len}, {2});
      const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), table.view, query_start_b.view(),
                                      len};
      be->RopeWriteKv(qkv_b.view(), batch, freq_b.view(), pool, q.view());
      be->PagedAttention(q.view(), pool, batch, 1.0f / std::sqrt(float(d)), out.view());

      // Reference: rotate with double math into contiguous q/k, copy v.
      std::vector<float> rq(static_cast<size_t>(len * hq * d)),
          rk(static_cast<size_t>(len * hkv * d)), rv(static_cast<size_t>(len * hkv * d));
      const int w = (hq + 2 * hkv) * d;
      auto rot = [&](const float* x, float* y, int p) {
        for (int i = 0; i < d / 2; ++i) {
          const double a = double(p) * inv_freq[static_cast<size_t>(i)];
          y[i] = float(x[i] * std::cos(a) - x[i + d / 2] * std::sin(a));
          y[i + d / 2] = float(x[i + d / 2] * std::cos(a) + x[i] * std::sin(a));
        }
      };
      for (int t = 0; t < len; ++t) {
        const float* row = qkv.data() + t * w;
        for (int h = 0; h < hq; ++h) rot(row + h * d, rq.data() + (t * hq + h) * d, t);
        for (int h = 0; h < hkv; ++h) {
          rot(row + (hq + h) * d, rk.data() + (t * hkv + h) * d, t);
          std::copy_n(row + (hq + hkv + h) * d, d, rv.data() + (t * hkv + h) * d);
        }
      }
      std::vector<double> q_ref(rq.begin(), rq.end());
      CHECK(MaxAbsDiff(q.view().ptr<float>(), q_ref) < 1e-4);
      for (int t = 0; t < len; ++t) {
        const auto ref = DenseAttention(rq, rk, rv, t, hq, hkv, d, t);
        INFO("hq " << hq << " hkv " << hkv << " len " << len << " token " << t);
        CHECK(MaxAbsDiff(out.view().ptr<float>() + t * hq * d, ref) < 1e-4);
      }
    }
  }
}

TEST_CASE("Embedding and GatherRows copy the right rows", "[kernels]") {
  auto be = CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  auto table = Random(10 * 6, rng);
  Buffer tb = Upload(*be, table, {10, 6});
  std::vector<int32_t> ids = {3, 0, 9, 3};
  Buffer ib = UploadI32(*be, ids, {4});
  Buffer out = Poisoned(*be, {4, 6});
  be->Embedding(tb.view(), ib.view(), 0, out.view());
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 6; ++j)
      CHECK(out.view().ptr<float>()[t * 6 + j] ==
            table[static_cast<size_t>(ids[static_cast<size_t>(t)] * 6 + j)]);
  // A tensor-parallel rank's rows 3 .. 6 of the vocabulary: other ids give zeros.
  const Tensor shard = tb.view().Rows(3, 4);
  Buffer sharded = Poisoned(*be, {4, 6});
  be->Embedding(shard, ib.view(), 3, sharded.view());
  for (int t = 0; t < 4; ++t) {
    const int32_t id = ids[static_cast<size_t>(t)];
    for (int j = 0; j < 6; ++j) {
      CHECK(sharded.view().ptr<float>()[t * 6 + j] ==
            (id >= 3 && id < 7 ? table[static_cast<size_t>(id * 6 + j)] : 0.0f));
    }
  }
  std::vector<int32_t> rows = {2, 1};
  Buffer rb = UploadI32(*be, rows, {2});
  Buffer g = Poisoned(*be, {2, 6});
  be->GatherRows(out.view(), rb.view(), g.view());
  for (int j = 0; j < 6; ++j) {
    CHECK(g.view().ptr<float>()[j] == table[static_cast<size_t>(9 * 6 + j)]);
    CHECK(g.view().ptr<float>()[6 + j] == table[static_cast<size_t>(0 * 6 + j)]);
  }
}

}  // namespace
}  // namespace headwise::kernels

namespace headwise::kernels {
namespace {

// A pool of `len` random tokens per (sequence, KV head), on shuffled pages.
struct SparseFixture {
  std::unique_ptr<Backend> be = CreateCpuBackend(2);
  std::mt19937 rng{std::random_device{}()};
  int seqs = 3, hq = 8, hkv = 2, d = 32, page_size = 16, len = 70;
  Buffer k, v, q;
  testing::BackendBlockTable blocks;
  SparseFixture() {
    const testing::HostBlockTable host = testing::MakeDenseTable(
        hkv, std::vector<int>(static_cast<size_t>(seqs), len), page_size, rng);
    const int num_pages = host.num_pages;
    k = Upload(*be, Random(static_cast<size_t>(num_pages * page_size * d), rng),
               {num_pages, page_size, d});
    v = Upload(*be, Random(static_cast<size_t>(num_pages * page_size * d), rng),
               {num_pages, page_size, d});
    blocks = testing::UploadTable(*be, host, {});
    q = Upload(*be, Random(static_cast<size_t>(seqs * hq * d), rng), {seqs, hq, d});
  }
  KvPoolView pool() const { return {k.view(), v.view(), page_size}; }
  const BlockTable& table() const { return blocks.view; }
  // Runs the primitive over lists[r] (r = seq * hkv + kv head) with optional biases.
  std::pair<std::vector<float>, std::vector<float>> Run(
      const std::vector<std::vector<int32_t>>& lists,
      const std::vector<std::vector<float>>* bias = nullptr) {
    std::vector<int32_t> row_seq, row_head, indptr = {0}, indices;
    std::vector<float> biases;
    for (int s = 0; s < seqs; ++s)
      for (int h = 0; h < hkv; ++h) {
        const size_t r = static_cast<size_t>(s * hkv + h);
        row_seq.push_back(s);
        row_head.push_back(h);
        indices.insert(indices.end(), lists[r].begin(), lists[r].end());
        if (bias) biases.insert(biases.end(), (*bias)[r].begin(), (*bias)[r].end());
        indptr.push_back(static_cast<int32_t>(indices.size()));
      }
    const int64_t rows = static_cast<int64_t>(row_seq.size());
    Buffer rs = UploadI32(*be, row_seq, {rows}), rh = UploadI32(*be, row_head, {rows});
    Buffer ip = UploadI32(*be, indptr, {rows + 1});
    Buffer ix =
        UploadI32(*be, indices, {std::max<int64_t>(1, static_cast<int64_t>(indices.size()))});
    Buffer bb = Upload(*be, biases.empty() ? std::vector<float>{0} : biases,
                       {std::max<int64_t>(1, static_cast<int64_t>(biases.size()))});
    Buffer out = Poisoned(*be, {rows, hq / hkv, d}), lse = Poisoned(*be, {rows, hq / hkv});
    SparseDecodeBatch batch{rs.view(), rh.view(), ip.view(), ix.view(), bias ? bb.view() : Tensor(),
                            table()};
    be->SparseDecodeAttention(q.view(), pool(), batch, 0.3f, out.view(), lse.view());
    std::vector<float> o(out.view().ptr<float>(), out.view().ptr<float>() + out.view().numel());
    std::vector<float> l(lse.view().ptr<float>(), lse.view().ptr<float>() + lse.view().numel());
    return {o, l};
  }
};

TEST_CASE("Sparse decode over the full list equals paged decode attention", "[kernels]") {
  SparseFixture f;
  std::vector<std::vector<int32_t>> lists(static_cast<size_t>(f.seqs * f.hkv));
  for (auto& l : lists) {
    for (int t = 0; t < f.len; ++t) l.push_back(t);
    std::shuffle(l.begin(), l.end(), f.rng);  // order must not matter
  }
  const auto [o, lse] = f.Run(lists);
  std::vector<int32_t> seq(static_cast<size_t>(f.seqs)),
      pos(static_cast<size_t>(f.seqs), f.len - 1);
  std::iota(seq.begin(), seq.end(), 0);
  Buffer sb = UploadI32(*f.be, seq, {f.seqs}), pb = UploadI32(*f.be, pos, {f.seqs});
  Buffer dense = Poisoned(*f.be, {f.seqs, f.hq, f.d});
  f.be->PagedAttention(f.q.view(), f.pool(),
                       PagedAttentionBatch{sb.view(), pb.view(), f.table(), Tensor(), 1}, 0.3f,
                       dense.view());
  std::vector<double> ref(dense.view().ptr<float>(),
                          dense.view().ptr<float>() + dense.view().numel());
  CHECK(MaxAbsDiff(o.data(), ref) < 1e-5);
  for (float l : lse) CHECK(std::isfinite(l));
}

TEST_CASE("Sparse decode partials over disjoint lists merge by LSE; bias shifts LSE", "[kernels]") {
  SparseFixture f;
  const size_t rows = static_cast<size_t>(f.seqs * f.hkv),
               group = static_cast<size_t>(f.hq / f.hkv);
  std::vector<std::vector<int32_t>> all(rows), a(rows), b(rows);
  for (size_t r = 0; r < rows; ++r)
    for (int t = 0; t < f.len; ++t) {
      all[r].push_back(t);
      (f.rng() % 3 == 0 ? a[r] : b[r]).push_back(t);
    }
  a[0].clear();  // an empty list: lse -inf, contributes nothing
  b[0] = all[0];
  const auto [o, lse] = f.Run(all);
  const auto [oa, la] = f.Run(a);
  const auto [ob, lb] = f.Run(b);
  CHECK(std::isinf(la[0]));
  for (size_t i = 0; i < rows * group; ++i) {
    const double m = std::max(la[i], lb[i]);
    const double wa = std::exp(la[i] - m), wb = std::exp(lb[i] - m);
    CHECK(m + std::log(wa + wb) == Approx(lse[i]).epsilon(1e-5));
    for (int c = 0; c < f.d; ++c) {
      const size_t at = i * static_cast<size_t>(f.d) + static_cast<size_t>(c);
      CHECK((wa * oa[at] + wb * ob[at]) / (wa + wb) == Approx(o[at]).margin(1e-5));
    }
  }
  // A bias of log(2) on every index leaves the output alone and adds log(2) to the LSE.
  std::vector<std::vector<float>> bias(rows);
  for (size_t r = 0; r < rows; ++r) bias[r].assign(all[r].size(), std::log(2.0f));
  const auto [ob2, lb2] = f.Run(all, &bias);
  for (size_t i = 0; i < o.size(); ++i) CHECK(ob2[i] == Approx(o[i]).margin(1e-5));
  for (size_t i = 0; i < lse.size(); ++i)
    CHECK(lb2[i] == Approx(lse[i] + std::log(2.0)).epsilon(1e-5));
}

}  // namespace
}  // namespace headwise::kernels

namespace headwise::kernels {
namespace {

using testing::CompressOnceHead;
using testing::FullHead;
using testing::HostBlockTable;
using testing::HostTokens;
using testing::LayoutSpec;
using testing::RingHead;

// Sequences of several KV layouts in one batch (backend.h, BlockTable). Sequence s runs
// layouts[layout[s]], holds len[s] tokens whose last `queries[s]` are this step's queries (a
// chunk, or 1: decode), and is compacted at from[s] > 0 once the earlier tokens are written.
struct MixedCase {
  int hq = 8, hkv = 4, d = 16, page_size = 4;
  std::vector<LayoutSpec> layouts;
  std::vector<int> layout, len, queries, from;
  float scale = 0.3f;
};

// What query position p of a sequence must produce, [hq, d], in double from the sequence's raw
// projections rows [len, (hq + 2 hkv) d], each head by its retention (backend.h):
//  - full, or compress-once not compacted: keys 0..p, RoPE by position;
//  - ring: keys [0, min(sink, p + 1)) and [max(sink_end, c - window), p], c the chunk's start;
//    re-indexed: q and keys rotated by their rank in that list instead;
//  - compress-once compacted at from: keys [0, sink), then with compensation the mean of the
//    rotated K and of V over [sink, from) with logit + log(from - sink) (by count), then
//    [from, p].
std::vector<double> MixedReference(const MixedCase& mc, const std::vector<float>& rows,
                                   const LayoutSpec& layout, int p, int chunk_start, int from,
                                   const std::vector<float>& inv_freq) {
  const int hq = mc.hq, hkv = mc.hkv, d = mc.d, width = (hq + 2 * hkv) * d, group = hq / hkv;
  auto k_raw = [&](int j, int h) {
    return rows.data() + static_cast<size_t>(j) * width + (hq + h) * d;
  };
  auto v_raw = [&](int j, int h) {
    return rows.data() + static_cast<size_t>(j) * width + (hq + hkv + h) * d;
  };
  std::vector<double> out(static_cast<size_t>(hq * d), 0.0);
  for (int qh = 0; qh < hq; ++qh) {
    const int h = qh / group;
    const KvRetention& r = layout[static_cast<size_t>(h)];
    struct Key {
      std::vector<double> k, v;
      double bias = 0.0;
    };
    std::vector<Key> keys;
    auto add = [&](int j, int rotation) {
      const float* v = v_raw(j, h);
      keys.push_back({testing::RotateRef(k_raw(j, h), d, rotation, inv_freq), {v, v + d}, 0.0});
    };
    int q_rotation = p;
    if (r.ring()) {
      const int sink_end = std::min(r.sink, p + 1), lo = std::max(sink_end, chunk_start - r.window);
      std::vector<int> list;
      for (int j = 0; j < sink_end; ++j) list.push_back(j);
      for (int j = lo; j <= p; ++j) list.push_back(j);
      for (size_t i = 0; i < list.size(); ++i)
        add(list[i], r.reindex() ? static_cast<int>(i) : list[i]);
      if (r.reindex()) q_rotation = static_cast<int>(list.size()) - 1;
    } else if (r.compress_once() && from > 0) {
      for (int j = 0; j < r.sink; ++j) add(j, j);
      if (r.compensation) {
        Key mean{std::vector<double>(static_cast<size_t>(d), 0.0),
                 std::vector<double>(static_cast<size_t>(d), 0.0),
                 r.compensation_by_count ? std::log(static_cast<double>(from - r.sink)) : 0.0};
        for (int j = r.sink; j < from; ++j) {
          const std::vector<double> k = testing::RotateRef(k_raw(j, h), d, j, inv_freq);
          for (int e = 0; e < d; ++e) {
            mean.k[static_cast<size_t>(e)] += k[static_cast<size_t>(e)] / (from - r.sink);
            mean.v[static_cast<size_t>(e)] += double{v_raw(j, h)[e]} / (from - r.sink);
          }
        }
        keys.push_back(mean);
      }
      for (int j = from; j <= p; ++j) add(j, j);
    } else {
      for (int j = 0; j <= p; ++j) add(j, j);
    }
    const std::vector<double> q = testing::RotateRef(
        rows.data() + static_cast<size_t>(p) * width + qh * d, d, q_rotation, inv_freq);
    std::vector<double> scores;
    double max_score = -INFINITY;
    for (const Key& key : keys) {
      double dot = 0.0;
      for (int e = 0; e < d; ++e) dot += q[static_cast<size_t>(e)] * key.k[static_cast<size_t>(e)];
      scores.push_back(dot * mc.scale + key.bias);
      max_score = std::max(max_score, scores.back());
    }
    double denom = 0.0;
    for (double& sc : scores) denom += (sc = std::exp(sc - max_score));
    for (size_t i = 0; i < keys.size(); ++i) {
      for (int e = 0; e < d; ++e) {
        out[static_cast<size_t>(qh * d + e)] +=
            scores[i] / denom * keys[i].v[static_cast<size_t>(e)];
      }
    }
  }
  return out;
}

// One step of the sequences `seqs` of `table` (their rows of it, in that order): writes every
// sequence's earlier tokens (RopeWriteKv), compacts those with from > 0 (MeanKv over the
// compress-once heads' dropped span, then the freed pages), then runs RopeWriteKv and
// PagedAttention over the query tokens. rows[s]: sequence s's raw projections. Returns the
// output [queries, hq, d].
std::vector<float> RunMixedStep(Backend& be, const MixedCase& mc, HostBlockTable table,
                                const std::vector<int>& seqs,
                                const std::vector<std::vector<float>>& rows,
                                const std::vector<float>& inv_freq) {
  const int hq = mc.hq, hkv = mc.hkv, d = mc.d, width = (hq + 2 * hkv) * d;
  const int n = static_cast<int>(seqs.size());
  std::vector<int> zero(static_cast<size_t>(n), 0), first_query(static_cast<size_t>(n)),
      len(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto s = static_cast<size_t>(seqs[static_cast<size_t>(i)]);
    len[static_cast<size_t>(i)] = mc.len[s];
    first_query[static_cast<size_t>(i)] = mc.len[s] - mc.queries[s];
  }
  Buffer k = Poisoned(be, {table.num_pages, mc.page_size, d}),
         v = Poisoned(be, {table.num_pages, mc.page_size, d});
  const KvPoolView pool{k.view(), v.view(), mc.page_size};
  Buffer freq = Upload(be, inv_freq, {d / 2});
  // Runs RopeWriteKv over `tokens`; returns q [T, hq, d].
  auto write = [&](const testing::BackendBlockTable& t, const HostTokens& tokens) {
    std::vector<float> qkv;
    for (int64_t i = 0; i < tokens.size(); ++i) {
      const auto& src =
          rows[static_cast<size_t>(seqs[static_cast<size_t>(tokens.seq[static_cast<size_t>(i)])])];
      const auto at = src.begin() + static_cast<long>(tokens.pos[static_cast<size_t>(i)]) * width;
      qkv.insert(qkv.end(), at, at + width);
    }
    Buffer qkv_b = Upload(be, qkv, {tokens.size(), width});
    Buffer seq_b = UploadI32(be, tokens.seq, {tokens.size()});
    Buffer pos_b = UploadI32(be, tokens.pos, {tokens.size()});
    Buffer qs_b = UploadI32(be, tokens.query_start, {n + 1});
    Buffer q = Poisoned(be, {tokens.size(), hq, d});
    be.RopeWriteKv(
        qkv_b.view(),
        PagedAttentionBatch{seq_b.view(), pos_b.view(), t.view, qs_b.view(), tokens.max_query_len},
        freq.view(), pool, q.view());
    return q;
  };
  {
    const testing::BackendBlockTable t = testing::UploadTable(be, table, inv_freq);
    const HostTokens history = testing::MakeTokens(zero, first_query);
    if (history.size() > 0) write(t, history);
    // Compaction: the compensation token of each compress-once head, then the freed pages.
    std::vector<int32_t> row_seq, row_head, begin, end;
    for (int i = 0; i < n; ++i) {
      const int from = mc.from[static_cast<size_t>(seqs[static_cast<size_t>(i)])];
      if (from <= 0) continue;
      for (int h = 0; h < hkv; ++h) {
        const KvRetention r = table.Head(i, h).retention;
        if (!r.compress_once() || !r.compensation) continue;
        row_seq.push_back(i);
        row_head.push_back(h);
        begin.push_back(r.sink);
        end.push_back(from);
      }
    }
    if (!row_seq.empty()) {
      const auto rows_n = static_cast<int64_t>(row_seq.size());
      Buffer rs = UploadI32(be, row_seq, {rows_n}), rh = UploadI32(be, row_head, {rows_n});
      Buffer b = UploadI32(be, begin, {rows_n}), e = UploadI32(be, end, {rows_n});
      be.MeanKv(pool, KvMeanBatch{rs.view(), rh.view(), b.view(), e.view(), b.view(), t.view});
    }
    for (int i = 0; i < n; ++i) {
      const int from = mc.from[static_cast<size_t>(seqs[static_cast<size_t>(i)])];
      if (from > 0) table.Compact(i, from);
    }
  }
  const testing::BackendBlockTable t = testing::UploadTable(be, table, inv_freq);
  const HostTokens step = testing::MakeTokens(first_query, len);
  Buffer q = write(t, step);
  Buffer seq_b = UploadI32(be, step.seq, {step.size()});
  Buffer pos_b = UploadI32(be, step.pos, {step.size()});
  Buffer qs_b = UploadI32(be, step.query_start, {n + 1});
  Buffer out = Poisoned(be, {step.size(), hq, d});
  be.PagedAttention(
      q.view(), pool,
      PagedAttentionBatch{seq_b.view(), pos_b.view(), t.view, qs_b.view(), step.max_query_len},
      mc.scale, out.view());
  return testing::Download(be, out);
}

// Every sequence of the batch against itself alone in a batch of its own layout (bit for bit:
// a sequence's attention does not depend on its neighbours) and against MixedReference.
void CheckMixed(const MixedCase& mc) {
  auto be = CreateCpuBackend(2);
  std::mt19937 rng(std::random_device{}());
  const int width = (mc.hq + 2 * mc.hkv) * mc.d, num_seqs = static_cast<int>(mc.len.size());
  const HostBlockTable table =
      testing::MakeBlockTable(mc.layouts, mc.layout, mc.len, mc.page_size, rng);
  const std::vector<float> inv_freq = testing::InvFreq(mc.d);
  std::vector<std::vector<float>> rows;
  for (int len : mc.len) rows.push_back(Random(static_cast<size_t>(len * width), rng));
  std::vector<int> all(static_cast<size_t>(num_seqs));
  std::iota(all.begin(), all.end(), 0);
  const std::vector<float> batch = RunMixedStep(*be, mc, table, all, rows, inv_freq);
  const size_t row_floats = static_cast<size_t>(mc.hq * mc.d);
  size_t at = 0;  // the sequence's first output row in the batch
  for (int s = 0; s < num_seqs; ++s) {
    const auto su = static_cast<size_t>(s);
    INFO("sequence " << s << " layout " << mc.layout[su] << " length " << mc.len[su] << " queries "
                     << mc.queries[su] << " compacted at " << mc.from[su]);
    // Alone: the same pages and raw rows, in a table of its own layout.
    const std::vector<float> alone = RunMixedStep(*be, mc, table.Alone(s), {s}, rows, inv_freq);
    const size_t n = static_cast<size_t>(mc.queries[su]) * row_floats;
    REQUIRE(alone.size() == n);
    CHECK(std::memcmp(alone.data(), batch.data() + at * row_floats, n * sizeof(float)) == 0);
    const int chunk_start = mc.len[su] - mc.queries[su];
    for (int i = 0; i < mc.queries[su]; ++i) {
      const std::vector<double> want =
          MixedReference(mc, rows[su], mc.layouts[static_cast<size_t>(mc.layout[su])],
                         chunk_start + i, chunk_start, mc.from[su], inv_freq);
      INFO("query position " << chunk_start + i);
      CHECK(MaxAbsDiff(batch.data() + (at + static_cast<size_t>(i)) * row_floats, want) < 1e-4);
    }
    at += static_cast<size_t>(mc.queries[su]);
  }
}

// Dense, ring, re-indexed ring and compress-once layouts (compacted or not, with and without the
// compensation token and its count), and layouts mixing them, each with its own sinks and
// windows, in one batch.
const std::vector<LayoutSpec> kLayouts = {
    {FullHead(), FullHead(), FullHead(), FullHead()},
    {FullHead(), RingHead(3, 10), FullHead(), RingHead(3, 10)},
    {RingHead(2, 6, true), RingHead(2, 6, true), FullHead(), FullHead()},
    {FullHead(), CompressOnceHead(4, 12), CompressOnceHead(4, 12), FullHead()},
    {RingHead(1, 5, true), CompressOnceHead(2, 8, true, false), RingHead(4, 12), FullHead()},
    {CompressOnceHead(3, 9, false), FullHead(), FullHead(), CompressOnceHead(3, 9, false)},
};

TEST_CASE("A batch of sequences of different KV layouts: each as alone, and as the reference",
          "[kernels]") {
  SECTION("prefill chunks after prefixes, first chunks and decode") {
    MixedCase mc;
    mc.layouts = kLayouts;
    //           dense ring reidx comp  mixed nocomp comp(new) ring  mixed  reidx
    mc.layout = {0, 1, 2, 3, 4, 5, 3, 1, 4, 2};
    mc.len = {40, 50, 45, 60, 33, 70, 20, 1, 61, 23};
    mc.queries = {7, 9, 5, 6, 33, 1, 20, 1, 4, 23};
    mc.from = {0, 0, 0, 40, 0, 50, 0, 0, 37, 0};
    CheckMixed(mc);
  }
  SECTION("decode") {
    MixedCase mc;
    mc.hq = 8;
    mc.hkv = 4;
    mc.d = 32;
    mc.page_size = 16;
    mc.layouts = kLayouts;
    mc.layout = {5, 4, 3, 2, 1, 0, 3, 4, 2};
    mc.len = {90, 77, 150, 64, 33, 129, 17, 40, 1};
    mc.queries = std::vector<int>(mc.len.size(), 1);
    mc.from = {40, 60, 100, 0, 0, 0, 0, 0, 0};
    CheckMixed(mc);
  }
}

using testing::AbortMessage;

// A bad table is a bug upstream: the CPU backend stops with the context rather than read a freed
// page, a layout that does not exist, or a kind of block the table lacks.
TEST_CASE("Attention through a bad block table stops the process", "[kernels]") {
  auto be = CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  const int hq = 4, d = 8, page_size = 4, len = 40, from = 30;
  HostBlockTable table =
      testing::MakeBlockTable({{FullHead(), CompressOnceHead(2, 10)}, {RingHead(2, 8), FullHead()}},
                              {0}, {len}, page_size, rng);
  const std::vector<float> inv_freq = testing::InvFreq(d);
  Buffer k = Upload(*be, Random(static_cast<size_t>(table.num_pages * page_size * d), rng),
                    {table.num_pages, page_size, d});
  Buffer v = Upload(*be, Random(static_cast<size_t>(table.num_pages * page_size * d), rng),
                    {table.num_pages, page_size, d});
  const KvPoolView pool{k.view(), v.view(), page_size};
  Buffer q = Upload(*be, Random(static_cast<size_t>(hq * d), rng), {1, hq, d});
  Buffer seq = UploadI32(*be, {0}, {1}), pos = UploadI32(*be, {len - 1}, {1});
  Buffer out = Poisoned(*be, {1, hq, d});
  auto attend = [&](const HostBlockTable& t, auto&& edit) {
    testing::BackendBlockTable b = testing::UploadTable(*be, t, inv_freq);
    edit(b.view);
    be->PagedAttention(q.view(), pool,
                       PagedAttentionBatch{seq.view(), pos.view(), b.view, Tensor(), 1}, 0.3f,
                       out.view());
  };
  const auto as_is = [](BlockTable&) {};
  table.Compact(0, from);
  REQUIRE(table.comp_blocks[1] == -1);  // positions 4 .. 7 were dropped
  attend(table, as_is);                 // compacted: the freed pages are not attended
  CHECK(std::isfinite(out.view().ptr<float>()[0]));
  using Catch::Matchers::Contains;
  HostBlockTable not_compacted = table;
  not_compacted.comp_from = {0};  // attends every key, freed pages too
  CHECK_THAT(AbortMessage([&] { attend(not_compacted, as_is); }),
             Contains("key 4 of sequence 0 on KV head 1: its page was freed"));
  HostBlockTable bad_layout = table;
  bad_layout.seq_layout = {2};
  CHECK_THAT(AbortMessage([&] { attend(bad_layout, as_is); }),
             Contains("sequence 0 runs layout 2 of 2"));
  CHECK_THAT(AbortMessage([&] { attend(table, [](BlockTable& b) { b.ring_blocks = Tensor(); }); }),
             Contains("layout 1 KV head 0 is a ring head but the table has no ring_blocks"));
  CHECK_THAT(AbortMessage([&] { attend(table, [](BlockTable& b) { b.max_full_heads = 0; }); }),
             Contains("max_full_heads is 0"));
  CHECK_THAT(AbortMessage([&] { attend(table, [](BlockTable& b) { b.max_ring_span = 9; }); }),
             Contains("over max_ring_span 9"));
  HostBlockTable outside = table;
  outside.blocks[0] = table.num_pages;  // page past the pool
  CHECK_THAT(AbortMessage([&] { attend(outside, as_is); }), Contains("outside pool of"));
}

// Index-list decode is not defined on re-indexed heads: a row on one stops the process, while a
// table whose other layouts re-index serves rows on other heads (here: equal to paged decode).
TEST_CASE("Sparse decode refuses rows on re-indexed heads, not tables that have them",
          "[kernels]") {
  auto be = CreateCpuBackend(1);
  std::mt19937 rng(std::random_device{}());
  const int hq = 4, hkv = 2, d = 8, page_size = 4, len = 30;
  const HostBlockTable table =
      testing::MakeBlockTable({{FullHead(), FullHead()}, {RingHead(2, 8, true), FullHead()}},
                              {0, 1}, {len, len}, page_size, rng);
  const testing::BackendBlockTable blocks = testing::UploadTable(*be, table, testing::InvFreq(d));
  Buffer k = Upload(*be, Random(static_cast<size_t>(table.num_pages * page_size * d), rng),
                    {table.num_pages, page_size, d});
  Buffer v = Upload(*be, Random(static_cast<size_t>(table.num_pages * page_size * d), rng),
                    {table.num_pages, page_size, d});
  const KvPoolView pool{k.view(), v.view(), page_size};
  Buffer q = Upload(*be, Random(static_cast<size_t>(2 * hq * d), rng), {2, hq, d});
  std::vector<int32_t> all(len);
  std::iota(all.begin(), all.end(), 0);
  const std::vector<testing::IndexRow> rows = {{0, 0, all, {}}, {0, 1, all, {}}, {1, 1, all, {}}};
  const testing::IndexListResult sparse =
      testing::IndexListAttention(*be, q.view(), pool, blocks.view, 0.3f, rows);
  Buffer seq = UploadI32(*be, {0, 1}, {2}), pos = UploadI32(*be, {len - 1, len - 1}, {2});
  Buffer paged = Poisoned(*be, {2, hq, d});
  be->PagedAttention(q.view(), pool,
                     PagedAttentionBatch{seq.view(), pos.view(), blocks.view, Tensor(), 1}, 0.3f,
                     paged.view());
  // Row r's group of query heads is paged's (sequence, KV head) group.
  const float* want = paged.view().ptr<float>();
  const size_t group_floats = static_cast<size_t>(hq / hkv * d);
  for (size_t r = 0; r < rows.size(); ++r) {
    const size_t at = static_cast<size_t>(rows[r].seq * hq * d) +
                      static_cast<size_t>(rows[r].kv_head) * group_floats;
    const std::vector<double> ref(want + at, want + at + group_floats);
    INFO("row " << r);
    CHECK(MaxAbsDiff(sparse.out.data() + r * group_floats, ref) < 1e-5);
  }
  using Catch::Matchers::Contains;
  CHECK_THAT(
      AbortMessage([&] {
        testing::IndexListAttention(*be, q.view(), pool, blocks.view, 0.3f, {{1, 0, all, {}}});
      }),
      Contains("index-list decode is not defined for re-indexed KV head 0 (sequence 1)"));
}

TEST_CASE("CopyToHostStart and CopyToHostWait bring the tensor's bytes", "[kernels]") {
  auto be = CreateCpuBackend(1);
  Buffer t = be->Allocate(DType::kF32, {5});
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
  be->CopyFromHost(t.view(), values.data(), values.size() * sizeof(float));
  be->CopyToHostStart(t.view(), t.view().nbytes());
  const auto* got = static_cast<const float*>(be->CopyToHostWait());
  CHECK(std::vector<float>(got, got + 5) == values);
}

}  // namespace
}  // namespace headwise::kernels
