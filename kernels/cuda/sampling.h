// Backend::Sample on the GPU: one block per row, no sort. The kept set of top-k / top-p is a
// threshold on the (value, id) order found by a 16-way search over the float's ordered bits
// with deterministic block reductions; the draw is a Gumbel-max race with the noise of
// kernels/cpu/sampling.h, so tokens match the CPU reference except where two candidates'
// scores are within float rounding of each other.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace headwise::kernels {

// Device scratch Sample needs: one processed copy of each row's logits.
size_t SampleScratchBytes(int64_t rows, int64_t vocab);

// Checks shapes on the host and queues the kernel on `stream`; `scratch` holds
// SampleScratchBytes(rows, vocab) and is not touched after the kernel completes.
void LaunchSample(const Tensor& logits, const SamplingBatch& batch, const SampleOutputs& out,
                  void* scratch, cudaStream_t stream);

}  // namespace headwise::kernels
