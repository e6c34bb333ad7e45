// Collective operations among the ranks of a tensor-parallel group (Megatron-style sharding:
// models/llama_model.h says what is split). Rank r's communicator works on tensors of rank r's
// backend and is called from the thread that issues that backend's work; every rank calls the
// same operations in the same order with tensors of the same shapes, as NCCL requires.
// Operations are issued in stream order with the rank's other work: on CUDA they are NCCL calls on
// the backend's stream (and may be captured into a graph), on the CPU they run at once.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace headwise::kernels {

class Backend;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x = the sum of every rank's x, in place on every rank. f32 on the CPU, bf16 or f32 on CUDA.
  // The CPU group adds in rank order on every rank, so all ranks hold the same bits.
  virtual void AllReduceSum(const Tensor& x) = 0;
  // Rank `root` receives every rank's `local` [R, C] (f32, one shape on every rank) side by side
  // and keeps the first W columns: out [R, W], W <= size() * C, rank r's columns from r * C on
  // (vocabulary-sharded logits, the last rank's share padded). `out` is used only on the root;
  // other ranks may pass an empty tensor.
  virtual void GatherColumns(const Tensor& local, const Tensor& out, int root) = 0;
};

// One communicator per rank, rank r working on backends[r]: an in-process group of threads and
// shared memory for CPU backends (kernels/cpu/thread_communicator.h), NCCL for CUDA backends (one
// GPU each). All backends must be of one device kind; InvalidArgument otherwise, Unimplemented
// for CUDA in a build without NCCL.
StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateCommunicators(
    std::span<Backend* const> backends);

}  // namespace headwise::kernels
