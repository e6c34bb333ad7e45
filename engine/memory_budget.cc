#include "engine/memory_budget.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace headwise::engine {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// cuBLAS workspace, attention split partials, sampling scratch, captured graphs: small buffers
// whose sizes depend on kernels' choices, covered by one allowance.
constexpr size_t kFixedReserve = size_t{768} << 20;
// Page ids stay well inside int32.
constexpr int64_t kMaxPages = int64_t{1} << 30;

}  // namespace

StatusOr<int> KvPagesForConfig(const models::ModelConfig& m, const EngineConfig& c,
                               const kernels::Backend& backend, size_t page_bytes,
                               size_t extra_bytes) {
  if (c.num_kv_pages < 0) {
    return InvalidArgument("num_kv_pages must be >= 0, got {}", c.num_kv_pages)
        .WithField("num_kv_pages");
  }
  if (c.kv_cache_bytes < 0) {
    return InvalidArgument("kv_cache_bytes must be >= 0, got {}", c.kv_cache_bytes)
        .WithField("kv_cache_bytes");
  }
  if (!(c.gpu_memory_utilization > 0.0 && c.gpu_memory_utilization <= 1.0)) {
    return InvalidArgument("gpu_memory_utilization must be in (0, 1], got {}",
                           c.gpu_memory_utilization)
        .WithField("gpu_memory_utilization");
  }
  if (c.num_kv_pages > 0) return c.num_kv_pages;
  if (c.kv_cache_bytes > 0) {
    HW_ASSIGN_OR_RETURN(const int pages, KvPagesForBytes(c.kv_cache_bytes, page_bytes));
    spdlog::info("KV cache budget {} bytes: {} pages of {} bytes", c.kv_cache_bytes, pages,
                 page_bytes);
    return pages;
  }
  if (backend.device() == Device::kCpu) return 0;
  HW_ASSIGN_OR_RETURN(const int pages,
                      KvPagesForMemory(m, c, backend.DeviceMemory(), page_bytes, extra_bytes));
  spdlog::info("KV cache: {} pages of {} bytes ({:.2f} GiB) under --gpu-memory-utilization {}",
               pages, page_bytes,
               static_cast<double>(pages) * static_cast<double>(page_bytes) / kGiB,
               c.gpu_memory_utilization);
  return pages;
}

StatusOr<int> KvPagesForBytes(int64_t bytes, size_t page_bytes) {
  const int64_t pages = std::min<int64_t>(bytes / static_cast<int64_t>(page_bytes), kMaxPages);
  if (pages < 1) {
    return InvalidArgument("kv_cache_bytes {} holds no KV page ({} bytes each)", bytes, page_bytes)
        .WithField("kv_cache_bytes");
  }
  return static_cast<int>(pages);
}

size_t ActivationBytes(const models::ModelConfig& m, const EngineConfig& c) {
  const size_t hidden = static_cast<size_t>(m.hidden_size);
  const size_t q_dim = static_cast<size_t>(m.num_heads) * static_cast<size_t>(m.head_dim);
  const size_t kv_dim = static_cast<size_t>(m.num_kv_heads) * static_cast<size_t>(m.head_dim);
  const size_t inter = static_cast<size_t>(m.intermediate_size);
  // Per token: residual, normed, projection and gathered rows (4 H), q|k|v, q, attention out,
  // gate|up and the MLP activation, in bf16.
  const size_t per_token = (4 * hidden + q_dim + 2 * kv_dim + 2 * q_dim + 3 * inter) * 2;
  const size_t tokens = static_cast<size_t>(std::max(c.max_num_batched_tokens, c.max_num_seqs));
  const size_t logits = static_cast<size_t>(c.max_num_seqs) * static_cast<size_t>(m.vocab_size) * 4;
  // Buffers grow by doubling, so a grown buffer may hold up to twice what a step needs.
  return 2 * (tokens * per_token + logits) + kFixedReserve;
}

StatusOr<int> KvPagesForMemory(const models::ModelConfig& m, const EngineConfig& c,
                               const kernels::Backend::MemoryInfo& memory, size_t page_bytes,
                               size_t extra_bytes) {
  const double util = c.gpu_memory_utilization;
  HW_CHECK(util > 0.0 && util <= 1.0, "gpu_memory_utilization {}", util);
  const double total = static_cast<double>(memory.total_bytes);
  const double in_use = total - static_cast<double>(memory.free_bytes);
  const double activations = static_cast<double>(ActivationBytes(m, c) + extra_bytes);
  const double budget = std::floor(total * util) - in_use - activations;
  const int pages_per_block = m.num_layers * m.num_kv_heads;
  const int64_t blocks_per_request = (int64_t{c.max_model_len} + c.page_size - 1) / c.page_size;
  const double request_bytes =
      static_cast<double>(blocks_per_request) * pages_per_block * static_cast<double>(page_bytes);
  if (budget < request_bytes) {
    return ResourceExhausted(
        "--gpu-memory-utilization {} grants {:.2f} GiB of {:.2f} GiB; {:.2f} GiB are in use "
        "(weights, CUDA context, other processes) and the forward pass needs {:.2f} GiB, which "
        "leaves {:.2f} GiB for the KV cache, less than one request of max_model_len {} tokens "
        "needs ({:.2f} GiB): raise --gpu-memory-utilization or lower --max-model-len",
        util, total * util / kGiB, total / kGiB, in_use / kGiB, activations / kGiB,
        std::max(0.0, budget) / kGiB, c.max_model_len, request_bytes / kGiB);
  }
  const double pages = std::floor(budget / static_cast<double>(page_bytes));
  // Whole blocks only, and within the range of page ids.
  const int64_t blocks =
      std::min<int64_t>(static_cast<int64_t>(pages) / pages_per_block, kMaxPages / pages_per_block);
  return static_cast<int>(blocks * pages_per_block);
}

}  // namespace headwise::engine
