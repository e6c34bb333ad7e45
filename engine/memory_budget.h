// How many KV pages the engine's pool gets, decided once at startup in one place: an explicit
// page count, a budget of bytes (--kv-cache-memory), or on a GPU the share of its memory that
// --gpu-memory-utilization grants, less what is already in use (weights, the CUDA context, other
// processes) and what the forward pass will need for activations at the engine's largest step.
// Running out of memory is therefore a startup error, never a failure in the middle of a request.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"
#include "engine/engine_config.h"
#include "kernels/backend.h"
#include "models/model_config.h"

namespace headwise::engine {

// KV pages (of config.page_size tokens per layer and KV head) for `config`, from the first of
// num_kv_pages, kv_cache_bytes and (on a GPU) gpu_memory_utilization that applies; 0 when none
// does (the CPU without a size: the engine picks its default). `page_bytes` is one page's size
// (kvcache::KvCache::PageBytes). The three fields are checked whichever applies, with the field
// at fault named (Status::field). `extra_bytes`: device memory the engine holds besides weights,
// pages and activations (decode-time selection's state and scores, engine.cc).
StatusOr<int> KvPagesForConfig(const models::ModelConfig& model, const EngineConfig& config,
                               const kernels::Backend& backend, size_t page_bytes,
                               size_t extra_bytes = 0);

// The pages a budget of `bytes` holds (at most 2^30); an error when not even one.
StatusOr<int> KvPagesForBytes(int64_t bytes, size_t page_bytes);

// Bytes the forward pass may take beyond weights and KV at the largest step of `config`.
size_t ActivationBytes(const models::ModelConfig& model, const EngineConfig& config);

// KV pages that fit, given the device's memory after the weights are loaded; an error naming
// the shortfall when not even one request of max_model_len tokens fits.
// config.gpu_memory_utilization must be in (0, 1] (KvPagesForConfig checks it).
StatusOr<int> KvPagesForMemory(const models::ModelConfig& model, const EngineConfig& config,
                               const kernels::Backend::MemoryInfo& memory, size_t page_bytes,
                               size_t extra_bytes = 0);

}  // namespace headwise::engine
