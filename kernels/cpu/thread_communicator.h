// kernels::Communicator for CPU backends: N ranks as N threads of one process exchanging through
// shared memory (TurboMind's thread_comm). It lets the sharded forward pass run, and be tested,
// without GPUs. Each operation is a rendezvous: it returns once every rank has called it.
#pragma once

#include <memory>
#include <vector>

#include "kernels/communicator.h"

namespace headwise::kernels {

// `size` communicators of one group; rank r's must be used from one thread at a time.
std::vector<std::unique_ptr<Communicator>> CreateThreadCommunicators(int size);

}  // namespace headwise::kernels
