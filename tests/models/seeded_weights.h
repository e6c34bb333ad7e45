// Random weights for forward-pass tests, held in memory: each tensor's values depend only on
// (seed, name), so every load of the model (tensor-parallel ranks included) sees the same model;
// shapes are whatever the model asks for.
#pragma once

#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "models/weight_source.h"

namespace headwise::testing {

class SeededWeights : public models::WeightSource {
 public:
  explicit SeededWeights(uint32_t seed) : seed_(seed) {}
  bool Has(const std::string&) const override { return true; }
  StatusOr<kernels::HostTensor> Load(const std::string& name,
                                     const std::vector<int64_t>& shape) override {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto v = std::make_shared<std::vector<float>>(static_cast<size_t>(n));
    std::mt19937 rng(seed_ ^ static_cast<uint32_t>(std::hash<std::string>{}(name)));
    const bool norm = name.find("norm") != std::string::npos;
    std::normal_distribution<float> dist(norm ? 1.0f : 0.0f, norm ? 0.1f : 0.08f);
    for (auto& x : *v) x = dist(rng);
    kernels::HostTensor t;
    t.data = v->data();
    t.keepalive = v;
    t.shape = shape.size() == 1 ? Tensor(nullptr, DType::kF32, Device::kCpu, {shape[0]})
                                : Tensor(nullptr, DType::kF32, Device::kCpu, {shape[0], shape[1]});
    return t;
  }

 private:
  uint32_t seed_;
};

}  // namespace headwise::testing
