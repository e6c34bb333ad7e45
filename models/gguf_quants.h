// Conversion of ggml tensor data (plain and block-quantized) to f32, with the block layouts of
// ggml-common.h and the arithmetic of ggml's dequantize_row_* reference functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"

namespace headwise::models {

// Whether DequantizeGgml handles this ggml type id: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
bool CanDequantizeGgml(uint32_t type);

// Writes `num_elements` f32 values decoded from `data` (`num_bytes` long, ggml `type`) to `out`.
// Unimplemented (naming the type) for a type CanDequantizeGgml rejects; InvalidArgument when
// num_elements is not a whole number of blocks or num_bytes does not match it. Large tensors are
// split over up to `max_threads` threads (0: the hardware's count).
Status DequantizeGgml(uint32_t type, const uint8_t* data, size_t num_bytes, int64_t num_elements,
                      float* out, int max_threads = 0);

}  // namespace headwise::models
