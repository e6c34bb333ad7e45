// How many KV pages a device can hold: the share of its memory that --gpu-memory-utilization
// grants, less what is already in use (weights, the CUDA context, other processes) and what the
// forward pass will need for activations at the engine's largest step. Decided once at startup,
// so running out of memory is a startup error, never a failure in the middle of a request.
#pragma once

#include <cstddef>

#include "core/status.h"
#include "engine/engine.h"
#include "kernels/backend.h"
#include "models/model_config.h"

namespace headwise::engine {

// Bytes the forward pass may take beyond weights and KV at the largest step of `config`.
size_t ActivationBytes(const models::ModelConfig& model, const EngineConfig& config);

// KV pages (of config.page_size tokens per layer and KV head) that fit, given the device's
// memory after the weights are loaded; an error naming the shortfall when not even one request
// of max_model_len tokens fits.
StatusOr<int> KvPagesForMemory(const models::ModelConfig& model, const EngineConfig& config,
                               const kernels::Backend::MemoryInfo& memory, size_t page_bytes);

}  // namespace headwise::engine
