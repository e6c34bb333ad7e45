// Copies a backend's tensors to and from host f32 buffers, whatever the tensor's float type (the
// CUDA backend keeps activations and KV in bf16, the CPU backend in f32): for host-side work on
// device data (head profiling, the offload tier, benchmarks).
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kernels {

// `count` values of `dtype` (f32, bf16 or f16) in host memory as f32 into out (resized to count).
// Other types: Unimplemented.
Status HostToF32(const void* src, DType dtype, size_t count, std::vector<float>& out);
// t (f32, bf16 or f16, any device) as host f32 into out (resized to t.numel()); `raw` is scratch
// for 16-bit types. Other types: Unimplemented.
Status CopyToHostF32(Backend& backend, const Tensor& t, std::vector<float>& out,
                     std::vector<uint16_t>& raw);
// The reverse: t.numel() floats of `src` into t (f32 or bf16, rounded to nearest even); `raw` is
// scratch for bf16. Other types: Unimplemented.
Status CopyFromHostF32(Backend& backend, const Tensor& t, const float* src,
                       std::vector<uint16_t>& raw);

}  // namespace headwise::kernels
