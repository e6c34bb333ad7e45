// Moving test data in and out of a backend's buffers (f32 and i32), shared by the tests that
// drive backend operations directly.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "kernels/backend.h"

namespace headwise::testing {

inline kernels::Buffer Upload(kernels::Backend& be, const std::vector<float>& v,
                              std::initializer_list<int64_t> shape) {
  kernels::Buffer b = be.Allocate(DType::kF32, shape);
  be.CopyFromHost(b.view(), v.data(), v.size() * sizeof(float));
  return b;
}
inline kernels::Buffer UploadI32(kernels::Backend& be, const std::vector<int32_t>& v,
                                 std::initializer_list<int64_t> shape) {
  kernels::Buffer b = be.Allocate(DType::kI32, shape);
  be.CopyFromHost(b.view(), v.data(), v.size() * sizeof(int32_t));
  return b;
}
// An f32 buffer's contents.
inline std::vector<float> Download(kernels::Backend& be, const kernels::Buffer& b) {
  std::vector<float> v(static_cast<size_t>(b.view().numel()));
  be.CopyToHost(v.data(), b.view(), v.size() * sizeof(float));
  return v;
}

// Relative L2 error ||got - want|| / ||want|| (infinite where either holds a NaN): how the GPU
// tests compare a bf16 result with the CPU's f32 one.
inline double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) return INFINITY;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// The largest |a[i] - b[i]| (a and b of one size).
inline double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    m = std::max(m, static_cast<double>(std::fabs(a[i] - b[i])));
  }
  return m;
}

// One row of IndexListAttention: the query heads of KV head `kv_head` of q row `seq` attend
// `positions` of sequence `seq`, each logit shifted by bias[j] (bias empty: none).
struct IndexRow {
  int seq = 0;
  int kv_head = 0;
  std::vector<int32_t> positions;
  std::vector<float> bias;
};

// Index-list attention (SparseDecodeAttention) through `table`: the reference the sparse-policy
// tests compare paged attention with. out [rows, group, d] and lse [rows, group]; rows listed per
// (token, KV head) in that order come back in PagedAttention's [tokens, hq, d] layout.
struct IndexListResult {
  std::vector<float> out, lse;
};
inline IndexListResult IndexListAttention(kernels::Backend& be, const Tensor& q,
                                          const kernels::KvPoolView& pool,
                                          const kernels::BlockTable& table, float scale,
                                          const std::vector<IndexRow>& rows) {
  std::vector<int32_t> indices, row_seq, row_head, indptr = {0};
  std::vector<float> bias;
  bool biased = false;
  for (const IndexRow& r : rows) {
    indices.insert(indices.end(), r.positions.begin(), r.positions.end());
    biased = biased || !r.bias.empty();
    if (r.bias.empty()) {
      bias.resize(bias.size() + r.positions.size(), 0.0f);
    } else {
      bias.insert(bias.end(), r.bias.begin(), r.bias.end());
    }
    row_seq.push_back(r.seq);
    row_head.push_back(r.kv_head);
    indptr.push_back(static_cast<int32_t>(indices.size()));
  }
  const auto n = static_cast<int64_t>(rows.size()), nnz = static_cast<int64_t>(indices.size());
  const int64_t group = q.dim(1) / table.num_kv_heads(), d = q.dim(2);
  kernels::Buffer ix = UploadI32(be, indices, {nnz}), ip = UploadI32(be, indptr, {n + 1});
  kernels::Buffer rs = UploadI32(be, row_seq, {n}), rh = UploadI32(be, row_head, {n});
  kernels::Buffer lb = biased ? Upload(be, bias, {nnz}) : kernels::Buffer();
  kernels::Buffer out = be.Allocate(DType::kF32, {n, group, d});
  kernels::Buffer lse = be.Allocate(DType::kF32, {n, group});
  be.SparseDecodeAttention(
      q, pool,
      kernels::SparseDecodeBatch{rs.view(), rh.view(), ip.view(), ix.view(), lb.view(), table},
      scale, out.view(), lse.view());
  return {Download(be, out), Download(be, lse)};
}

// Rotary inverse frequencies 10000^(-2i/d), i < d/2, as the models' default.
inline std::vector<float> InvFreq(int d) {
  std::vector<float> f(static_cast<size_t>(d / 2));
  for (int i = 0; i < d / 2; ++i) f[static_cast<size_t>(i)] = std::pow(1e4f, -2.0f * i / d);
  return f;
}

// x rotated by `pos` (rotate-half; f32 angle as backend.h states, the rest in double): the
// reference rotary embedding of the attention tests.
inline std::vector<double> RotateRef(const float* x, int d, int pos,
                                     const std::vector<float>& inv_freq) {
  const auto half = static_cast<size_t>(d / 2);
  std::vector<double> y(2 * half);
  for (size_t i = 0; i < half; ++i) {
    const float angle = static_cast<float>(pos) * inv_freq[i];
    const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
    const double a = x[i], b = x[i + half];
    y[i] = a * c - b * s;
    y[i + half] = b * c + a * s;
  }
  return y;
}

}  // namespace headwise::testing
