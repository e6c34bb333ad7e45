// kernels::Communicator over NCCL: one communicator per GPU of one process (ncclCommInitAll),
// each issuing its collectives on its backend's stream, so they order with the rank's kernels and
// are captured into its CUDA graphs like them.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "kernels/communicator.h"

namespace headwise::kernels {

// backends[r] must be CUDA backends (CreateCudaBackend) on distinct GPUs.
StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateNcclCommunicators(
    std::span<Backend* const> backends);

}  // namespace headwise::kernels
