// Moving test data in and out of a backend's buffers (f32 and i32), shared by the tests that
// drive backend operations directly.
#pragma once

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

}  // namespace headwise::testing
