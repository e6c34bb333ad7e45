// Tensor views: a pointer, an element type, a device and up to four dimensions, row-major and
// contiguous. Views never own memory; kernels::Buffer (kernels/backend.h) does.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"
#include "core/status.h"

namespace headwise {

enum class Device : uint8_t { kCpu, kCuda };

struct Tensor {
  static constexpr int kMaxRank = 4;

  void* data = nullptr;
  DType dtype = DType::kF32;
  Device device = Device::kCpu;
  int rank = 0;
  std::array<int64_t, kMaxRank> dims{};

  Tensor() = default;
  Tensor(void* data, DType dtype, Device device, std::initializer_list<int64_t> shape)
      : data(data), dtype(dtype), device(device) {
    HW_CHECK(shape.size() <= kMaxRank, "rank {} > {}", shape.size(), kMaxRank);
    for (int64_t d : shape) dims[rank++] = d;
  }

  int64_t dim(int i) const { return dims[i < 0 ? rank + i : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= dims[i];
    return n;
  }
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }

  // The first `rows` rows of dimension 0, as a view.
  Tensor Rows(int64_t first, int64_t count) const {
    HW_CHECK(rank >= 1 && first >= 0 && first + count <= dims[0], "rows [{}, {}) of {}", first,
             first + count, dims[0]);
    Tensor t = *this;
    t.dims[0] = count;
    t.data =
        static_cast<char*>(data) + first * (nbytes() / static_cast<size_t>(dims[0] ? dims[0] : 1));
    return t;
  }
  // Same memory, new shape with the same element count.
  Tensor Reshape(std::initializer_list<int64_t> shape) const {
    Tensor t(data, dtype, device, shape);
    HW_CHECK_EQ(t.numel(), numel());
    return t;
  }
  std::string ShapeString() const;
};

}  // namespace headwise
