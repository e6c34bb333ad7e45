#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <random>
#include <unordered_map>

#include "kernels/cpu/sampling.h"

namespace headwise::engine {
namespace {

using kernels::Backend;
using kernels::SampleOutputs;
using kernels::SamplingBatch;

bool HasPenalties(const SamplingParams& p) {
  return p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
}

// Every field of a SamplingBatch in one i32 array (f32 fields bit-cast), so a step uploads
// its sampling inputs with one copy.
class PackedBatch {
 public:
  explicit PackedBatch(std::span<const BatchSampler::Row> rows) : rows_(rows.size()) {
    const size_t r = rows_;
    logits_row_.reserve(r);
    for (const auto& row : rows) {
      const SamplingParams& p = row.sampler->params();
      logits_row_.push_back(row.logits_row);
      temperature_.push_back(p.temperature);
      top_k_.push_back(p.top_k);
      top_p_.push_back(p.top_p);
      min_p_.push_back(p.min_p);
      repetition_.push_back(p.repetition_penalty);
      presence_.push_back(p.presence_penalty);
      frequency_.push_back(p.frequency_penalty);
      const uint64_t seed = row.sampler->seed();
      seed_.push_back(static_cast<int32_t>(static_cast<uint32_t>(seed)));
      seed_.push_back(static_cast<int32_t>(static_cast<uint32_t>(seed >> 32)));
      draw_.push_back(static_cast<int32_t>(row.output.size()));
      num_logprobs_.push_back(p.logprobs);
      max_logprobs_ = std::max(max_logprobs_, p.logprobs);

      bias_indptr_.push_back(static_cast<int32_t>(bias_ids_.size()));
      for (const auto& [id, bias] : p.logit_bias) {
        bias_ids_.push_back(id);
        bias_values_.push_back(bias);
      }
      penalty_indptr_.push_back(static_cast<int32_t>(penalty_ids_.size()));
      if (HasPenalties(p)) AddPenalties(row.prompt, row.output);
    }
    bias_indptr_.push_back(static_cast<int32_t>(bias_ids_.size()));
    penalty_indptr_.push_back(static_cast<int32_t>(penalty_ids_.size()));

    for (auto* v :
         {&logits_row_, &top_k_, &bias_indptr_, &penalty_indptr_, &seed_, &draw_, &num_logprobs_,
          &bias_ids_, &penalty_ids_, &penalty_counts_, &penalty_in_prompt_}) {
      offsets_.push_back(data_.size());
      data_.insert(data_.end(), v->begin(), v->end());
    }
    for (auto* v :
         {&temperature_, &top_p_, &min_p_, &repetition_, &presence_, &frequency_, &bias_values_}) {
      offsets_.push_back(data_.size());
      for (float f : *v) data_.push_back(std::bit_cast<int32_t>(f));
    }
  }

  const std::vector<int32_t>& data() const { return data_; }
  int max_logprobs() const { return std::max(0, max_logprobs_); }

  // Views of the packed fields, once `data()` sits at `base` on `device`.
  SamplingBatch Views(void* base, Device device) const {
    size_t next = 0;
    auto view = [&](DType dtype, size_t n) {
      return Tensor(static_cast<int32_t*>(base) + offsets_[next++], dtype, device,
                    {static_cast<int64_t>(n)});
    };
    const size_t r = rows_, nb = bias_ids_.size(), np = penalty_ids_.size();
    SamplingBatch b;
    b.logits_row = view(DType::kI32, r);
    b.top_k = view(DType::kI32, r);
    b.bias_indptr = view(DType::kI32, r + 1);
    b.penalty_indptr = view(DType::kI32, r + 1);
    b.seed = view(DType::kI32, 2 * r).Reshape({static_cast<int64_t>(r), 2});
    b.draw = view(DType::kI32, r);
    b.num_logprobs = view(DType::kI32, r);
    b.bias_ids = view(DType::kI32, nb);
    b.penalty_ids = view(DType::kI32, np);
    b.penalty_counts = view(DType::kI32, np);
    b.penalty_in_prompt = view(DType::kI32, np);
    b.temperature = view(DType::kF32, r);
    b.top_p = view(DType::kF32, r);
    b.min_p = view(DType::kF32, r);
    b.repetition_penalty = view(DType::kF32, r);
    b.presence_penalty = view(DType::kF32, r);
    b.frequency_penalty = view(DType::kF32, r);
    b.bias_values = view(DType::kF32, nb);
    return b;
  }

 private:
  // The row's distinct tokens, each with its count in the output and whether the prompt has it.
  void AddPenalties(std::span<const int32_t> prompt, std::span<const int32_t> output) {
    std::unordered_map<int32_t, size_t> index;
    auto entry = [&](int32_t t) -> size_t {
      auto [it, fresh] = index.try_emplace(t, penalty_ids_.size());
      if (fresh) {
        penalty_ids_.push_back(t);
        penalty_counts_.push_back(0);
        penalty_in_prompt_.push_back(0);
      }
      return it->second;
    };
    for (int32_t t : prompt) penalty_in_prompt_[entry(t)] = 1;
    for (int32_t t : output) ++penalty_counts_[entry(t)];
  }

  size_t rows_;
  int max_logprobs_ = -1;
  std::vector<int32_t> logits_row_, top_k_, bias_indptr_, penalty_indptr_, seed_, draw_,
      num_logprobs_, bias_ids_, penalty_ids_, penalty_counts_, penalty_in_prompt_;
  std::vector<float> temperature_, top_p_, min_p_, repetition_, presence_, frequency_, bias_values_;
  std::vector<int32_t> data_;
  std::vector<size_t> offsets_;
};

// token [R] i32, logprob [R] f32, top ids [R, K] i32, top logprobs [R, K] f32, back to back.
size_t OutputWords(size_t rows, int k) {
  return 2 * rows + 2 * rows * static_cast<size_t>(k);
}

SampleOutputs OutputViews(void* base, Device device, int64_t rows, int k) {
  int32_t* p = static_cast<int32_t*>(base);
  SampleOutputs o;
  o.token = Tensor(p, DType::kI32, device, {rows});
  o.logprob = Tensor(p + rows, DType::kF32, device, {rows});
  o.top_ids = Tensor(p + 2 * rows, DType::kI32, device, {rows, k});
  o.top_logprobs = Tensor(p + 2 * rows + rows * k, DType::kF32, device, {rows, k});
  return o;
}

std::vector<SampledToken> Unpack(const std::vector<int32_t>& words,
                                 std::span<const BatchSampler::Row> rows, int k) {
  const size_t r = rows.size();
  std::vector<SampledToken> out(r);
  for (size_t i = 0; i < r; ++i) {
    SampledToken& tok = out[i];
    tok.id = words[i];
    const int want = rows[i].sampler->params().logprobs;
    if (want < 0) continue;
    tok.logprob = std::bit_cast<float>(words[r + i]);
    for (int j = 0; j < std::min(want, k); ++j) {
      const size_t at = i * static_cast<size_t>(k) + static_cast<size_t>(j);
      const int32_t id = words[2 * r + at];
      if (id < 0) break;
      tok.top_logprobs.emplace_back(id, std::bit_cast<float>(words[2 * r + r * k + at]));
    }
  }
  return out;
}

// Grows `buf` to hold `words` i32 values.
void Reserve(Backend& backend, kernels::Buffer& buf, size_t words) {
  if (!buf.empty() && static_cast<size_t>(buf.view().numel()) >= words) return;
  const size_t grown = buf.empty() ? 0 : 2 * static_cast<size_t>(buf.view().numel());
  buf = backend.Allocate(DType::kI32, {static_cast<int64_t>(std::max({words, grown, size_t{64}}))});
}

}  // namespace

Sampler::Sampler(const SamplingParams& params)
    : params_(params),
      seed_(params.seed ? *params.seed
                        : (uint64_t{std::random_device{}()} << 32) | std::random_device{}()) {}

SampledToken Sampler::Sample(std::span<const float> logits, std::span<const int32_t> prompt_tokens,
                             std::span<const int32_t> output_tokens) const {
  const BatchSampler::Row row{this, 0, prompt_tokens, output_tokens};
  const PackedBatch packed(std::span<const BatchSampler::Row>(&row, 1));
  std::vector<int32_t> in = packed.data();
  const int k = packed.max_logprobs();
  std::vector<int32_t> words(OutputWords(1, k));
  const Tensor host_logits(const_cast<float*>(logits.data()), DType::kF32, Device::kCpu,
                           {1, static_cast<int64_t>(logits.size())});
  kernels::SampleCpu(host_logits, packed.Views(in.data(), Device::kCpu),
                     OutputViews(words.data(), Device::kCpu, 1, k));
  return Unpack(words, std::span<const BatchSampler::Row>(&row, 1), k).front();
}

std::vector<SampledToken> BatchSampler::Sample(const Tensor& logits, std::span<const Row> rows) {
  if (rows.empty()) return {};
  const PackedBatch packed(rows);
  const int k = packed.max_logprobs();
  const size_t r = rows.size();
  Reserve(backend_, in_, packed.data().size());
  Reserve(backend_, out_, OutputWords(r, k));
  backend_.CopyFromHost(in_.view(), packed.data().data(), packed.data().size() * sizeof(int32_t));
  const Device device = backend_.device();
  backend_.Sample(logits, packed.Views(in_.view().data, device),
                  OutputViews(out_.view().data, device, static_cast<int64_t>(r), k));
  std::vector<int32_t> words(OutputWords(r, k));
  backend_.CopyToHost(words.data(), out_.view(), words.size() * sizeof(int32_t));
  return Unpack(words, rows, k);
}

}  // namespace headwise::engine
