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

namespace headwise::kernels {
namespace {

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

Buffer Upload(Backend& be, const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kF32, shape);
  be.CopyFromHost(b.view(), v.data(), v.size() * sizeof(float));
  return b;
}
Buffer UploadI32(Backend& be, const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kI32, shape);
  be.CopyFromHost(b.view(), v.data(), v.size() * sizeof(int32_t));
  return b;
}
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
      const int num_pages = 2 * ((len + page_size - 1) / page_size) * hkv + 3;
      // Pages handed out in a shuffled order so that logical and physical order differ.
      std::vector<int32_t> free_pages(static_cast<size_t>(num_pages));
      std::iota(free_pages.begin(), free_pages.end(), 0);
      std::shuffle(free_pages.begin(), free_pages.end(), rng);
      const int max_pages = (len + page_size - 1) / page_size;
      std::vector<int32_t> table(static_cast<size_t>(hkv * max_pages));
      for (size_t i = 0; i < table.size(); ++i) table[i] = free_pages[i];

      auto qkv = Random(static_cast<size_t>(len * (hq + 2 * hkv) * d), rng);
      std::vector<int32_t> pos(static_cast<size_t>(len)), seq(static_cast<size_t>(len), 0),
          slots(static_cast<size_t>(len * hkv));
      for (int t = 0; t < len; ++t) {
        pos[static_cast<size_t>(t)] = t;
        for (int h = 0; h < hkv; ++h)
          slots[static_cast<size_t>(t * hkv + h)] =
              table[static_cast<size_t>(h * max_pages + t / page_size)] * page_size + t % page_size;
      }
      std::vector<float> inv_freq(d / 2);
      for (int i = 0; i < d / 2; ++i)
        inv_freq[static_cast<size_t>(i)] = std::pow(10000.0f, -2.0f * i / d);

      Buffer k_pool = Poisoned(*be, {num_pages, page_size, d}),
             v_pool = Poisoned(*be, {num_pages, page_size, d});
      KvPoolView pool{k_pool.view(), v_pool.view(), page_size};
      Buffer qkv_b = Upload(*be, qkv, {len, (hq + 2 * hkv) * d});
      Buffer pos_b = UploadI32(*be, pos, {len}), seq_b = UploadI32(*be, seq, {len});
      Buffer slot_b = UploadI32(*be, slots, {len, hkv}),
             table_b = UploadI32(*be, table, {hkv, max_pages});
      Buffer freq_b = Upload(*be, inv_freq, {d / 2});
      Buffer q = Poisoned(*be, {len, hq, d}), out = Poisoned(*be, {len, hq, d});
      be->RopeWriteKv(qkv_b.view(), pos_b.view(), freq_b.view(), slot_b.view(), pool, q.view());
      be->PagedAttention(q.view(), pool,
                         PagedAttentionBatch{seq_b.view(), pos_b.view(), table_b.view(), 1},
                         1.0f / std::sqrt(float(d)), out.view());

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
