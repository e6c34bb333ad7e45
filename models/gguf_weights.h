// GGUF tensors seen as Hugging Face weights: name mapping, dimension order, and the undoing of
// llama.cpp's rotary row permutation of Q and K.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"
#include "models/gguf_file.h"
#include "models/weight_source.h"

namespace headwise::models {

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight", etc.; nullopt for a name
// with no GGUF counterpart.
std::optional<std::string> HfToGgufName(std::string_view hf_name);

// convert_hf_to_gguf.py stores Llama's Q and K projections with the rows of each head
// interleaved for llama.cpp's adjacent-pair rotary: HF row h*D + s*D/2 + j (s in {0, 1}) is
// GGUF row h*D + 2*j + s. These move `rows` x `cols` row-major data between the layouts
// (`num_heads` heads of D = rows / num_heads rows each; cols = 1 for a bias); `out` must not
// alias `in`.
void PermuteRotaryRows(const float* in, float* out, int64_t rows, int64_t cols, int num_heads);
void UnpermuteRotaryRows(const float* in, float* out, int64_t rows, int64_t cols, int num_heads);

// A WeightSource over `gguf` for `config` (from ParseGgufConfig of the same file).
std::unique_ptr<WeightSource> MakeGgufWeightSource(std::shared_ptr<const GgufFile> gguf,
                                                   const ModelConfig& config);

}  // namespace headwise::models
