// Pieces the benchmark programs share: wall clock, list flags, medians, JSON-line output, the
// device copy bandwidth (the decode roofline's bound) and timed decode steps.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model_runner.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "models/llama_model.h"

namespace headwise::bench {

inline double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The non-empty items of `s` between separators.
inline std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

inline std::vector<int> ParseIntList(const std::string& s) {
  std::vector<int> out;
  for (const std::string& item : Split(s, ',')) out.push_back(std::stoi(item));
  return out;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// One JSON line to stdout, flushed (a killed run keeps what it printed).
inline void Emit(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Seconds per call of fn: one untimed call, then the median of `reps` timed batches of `inner`.
template <typename Fn>
double TimeIt(kernels::Backend& be, int reps, int inner, Fn fn) {
  fn();
  be.Synchronize();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const double t0 = Now();
    for (int i = 0; i < inner; ++i) fn();
    be.Synchronize();
    t.push_back((Now() - t0) / inner);
  }
  return Median(t);
}

// Bytes per second a device-to-device copy of 1 GiB moves (read + written).
inline double CopyBandwidth(kernels::Backend& be, int reps) {
  const int64_t n = int64_t{1} << 28;  // 1 GiB of f32
  kernels::Buffer a = be.Allocate(DType::kF32, {n}), b = be.Allocate(DType::kF32, {n});
  const double s = TimeIt(be, reps, 4, [&] { be.CopyOnDevice(b.view(), a.view(), n * 4); });
  return 2.0 * static_cast<double>(n) * 4 / s;
}

// Median seconds of `tokens` decode steps of every sequence in `seqs` (each reserved for
// context + tokens), after 3 untimed steps that capture the graphs.
inline double MedianDecodeStep(engine::ModelRunner& runner, std::vector<kvcache::SequenceKv>& seqs,
                               int context, int tokens) {
  const size_t batch = seqs.size();
  std::vector<int32_t> next(batch, 1);
  std::vector<engine::BatchEntry> entries(batch);
  std::vector<double> step_s;
  for (int i = -3; i < tokens; ++i) {
    const int pos = context + std::max(i, 0);
    for (size_t s = 0; s < batch; ++s) {
      entries[s] = {&seqs[s], std::span<const int32_t>(&next[s], 1), pos, false};
    }
    const double t0 = Now();
    runner.Forward(entries);
    runner.model().backend().Synchronize();
    if (i >= 0) step_s.push_back(Now() - t0);
  }
  return Median(step_s);
}

}  // namespace headwise::bench
