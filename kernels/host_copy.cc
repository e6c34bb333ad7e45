#include "kernels/host_copy.h"

#include <cstring>

#include "core/dtype.h"

namespace headwise::kernels {

Status HostToF32(const void* src, DType dtype, size_t count, std::vector<float>& out) {
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16) {
    return Unimplemented("a {} tensor as f32: only f32, bf16 and f16 convert", DTypeName(dtype));
  }
  out.resize(count);
  if (dtype == DType::kF32) {
    if (count > 0) std::memcpy(out.data(), src, count * sizeof(float));
    return Status::Ok();
  }
  const auto* raw = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < count; ++i) {
    out[i] = dtype == DType::kBF16 ? BF16ToF32(raw[i]) : F16ToF32(raw[i]);
  }
  return Status::Ok();
}

Status CopyToHostF32(Backend& backend, const Tensor& t, std::vector<float>& out,
                     std::vector<uint16_t>& raw) {
  const auto n = static_cast<size_t>(t.numel());
  if (t.dtype == DType::kF32) {
    out.resize(n);
    if (n > 0) backend.CopyToHost(out.data(), t, t.nbytes());
    return Status::Ok();
  }
  raw.resize(n);
  if (n > 0 && (t.dtype == DType::kBF16 || t.dtype == DType::kF16)) {
    backend.CopyToHost(raw.data(), t, t.nbytes());
  }
  return HostToF32(raw.data(), t.dtype, n, out);
}

Status CopyFromHostF32(Backend& backend, const Tensor& t, const float* src,
                       std::vector<uint16_t>& raw) {
  const auto n = static_cast<size_t>(t.numel());
  if (t.dtype == DType::kF32) {
    if (n > 0) backend.CopyFromHost(t, src, t.nbytes());
    return Status::Ok();
  }
  if (t.dtype != DType::kBF16) {
    return Unimplemented("f32 as a {} tensor: only f32 and bf16 convert", DTypeName(t.dtype));
  }
  raw.resize(n);
  for (size_t i = 0; i < n; ++i) raw[i] = F32ToBF16(src[i]);
  if (n > 0) backend.CopyFromHost(t, raw.data(), t.nbytes());
  return Status::Ok();
}

}  // namespace headwise::kernels
