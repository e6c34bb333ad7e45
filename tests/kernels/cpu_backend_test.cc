// The CPU backend against naive double-precision references on random non-zero inputs.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "tests/backend_util.h"

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
      const int max_blocks = (len + page_size - 1) / page_size;
      const int num_blocks = 2 * max_blocks + 3, pages_per_block = 2 * hkv;
      const int num_pages = num_blocks * pages_per_block;
      std::vector<int32_t> blocks(static_cast<size_t>(num_blocks));
      std::iota(blocks.begin(), blocks.end(), 0);
      std::shuffle(blocks.begin(), blocks.end(), rng);
      blocks.resize(static_cast<size_t>(max_blocks));
      std::vector<int32_t> head_page(static_cast<size_t>(hkv));
      for (int h = 0; h < hkv; ++h) head_page[static_cast<size_t>(h)] = 2 * (hkv - 1 - h) + 1;

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
      Buffer blocks_b = UploadI32(*be, blocks, {1, max_blocks}),
             head_page_b = UploadI32(*be, head_page, {hkv});
      Buffer freq_b = Upload(*be, inv_freq, {d / 2});
      Buffer q = Poisoned(*be, {len, hq, d}), out = Poisoned(*be, {len, hq, d});
      Buffer query_start_b = UploadI32(*be, {0, len}, {2});
      const PagedAttentionBatch batch{
          seq_b.view(), pos_b.view(),
          BlockTable{blocks_b.view(), head_page_b.view(), pages_per_block}, query_start_b.view(),
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
  be->Embedding(tb.view(), ib.view(), out.view());
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 6; ++j)
      CHECK(out.view().ptr<float>()[t * 6 + j] ==
            table[static_cast<size_t>(ids[static_cast<size_t>(t)] * 6 + j)]);
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
  int seqs = 3, hq = 8, hkv = 2, d = 32, page_size = 16, len = 70, max_blocks = 5;
  Buffer k, v, blocks, head_page, q;
  SparseFixture() {
    const int num_pages = seqs * hkv * max_blocks;
    k = Upload(*be, Random(static_cast<size_t>(num_pages * page_size * d), rng),
               {num_pages, page_size, d});
    v = Upload(*be, Random(static_cast<size_t>(num_pages * page_size * d), rng),
               {num_pages, page_size, d});
    std::vector<int32_t> block_ids(static_cast<size_t>(seqs * max_blocks));
    std::iota(block_ids.begin(), block_ids.end(), 0);
    std::shuffle(block_ids.begin(), block_ids.end(), rng);
    blocks = UploadI32(*be, block_ids, {seqs, max_blocks});
    std::vector<int32_t> pages_of_heads(static_cast<size_t>(hkv));
    std::iota(pages_of_heads.rbegin(), pages_of_heads.rend(), 0);
    head_page = UploadI32(*be, pages_of_heads, {hkv});
    q = Upload(*be, Random(static_cast<size_t>(seqs * hq * d), rng), {seqs, hq, d});
  }
  KvPoolView pool() const { return {k.view(), v.view(), page_size}; }
  BlockTable table() const { return {blocks.view(), head_page.view(), hkv}; }
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
