// Picks a backend by device name for the command line and the server.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kernels {

// "cpu" (threads <= 0: all cores) or "cuda" (when built with the CUDA backend and a GPU is
// present; GPU `device_index`); anything else is InvalidArgument.
StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, int threads = 0,
                                                 int device_index = 0);

}  // namespace headwise::kernels
