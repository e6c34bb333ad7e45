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

// How decode steps are timed: one helper for hw_bench_gpu and hw_bench_policy, so that the
// policy benchmark's dense baseline is the same measurement as the GPU benchmark's dense step
// (same runner, graphs as the runner decides, same warm-up, same clock). Every step, warm-up
// included, advances the position by one, so a sequence must hold
// context + TokensToReserve() tokens. The warm-up runs until both `warmup_steps` steps and
// `warmup_s` seconds have passed (at most `warmup_max` steps, which caps both): the first steps
// capture the graphs, and a GPU that sat idle (a benchmark's host-side setup, a freshly allocated
// cache) needs a moment to come back to its clocks; a cold first cell would flatter every ratio to
// it.
struct DecodeTiming {
  int steps = 16;  // timed
  int warmup_steps = 3;
  double warmup_s = 0.2;
  int warmup_max = 64;
  int TokensToReserve() const { return steps + warmup_max + 4; }
};

struct DecodeSteps {
  int warmup = 0;              // untimed steps run first
  std::vector<double> step_s;  // seconds of each timed step, in order
  double median() const { return Median(step_s); }
  double mean() const {
    double sum = 0;
    for (double s : step_s) sum += s;
    return step_s.empty() ? 0 : sum / static_cast<double>(step_s.size());
  }
};

// Decode steps of every sequence in `seqs` (each reserved for context + TokensToReserve()),
// the first at position `context`, each timed from the call to the device's completion.
inline DecodeSteps TimeDecodeSteps(engine::ModelRunner& runner,
                                   std::vector<kvcache::SequenceKv>& seqs, int context,
                                   const DecodeTiming& timing) {
  const size_t batch = seqs.size();
  std::vector<int32_t> next(batch, 1);
  std::vector<engine::BatchEntry> entries(batch);
  DecodeSteps out;
  int pos = context;
  const auto step = [&] {
    for (size_t s = 0; s < batch; ++s) {
      entries[s] = {&seqs[s], std::span<const int32_t>(&next[s], 1), pos, false};
    }
    ++pos;
    const double t0 = Now();
    runner.Forward(entries);
    runner.model().backend().Synchronize();
    return Now() - t0;
  };
  const double warm_from = Now();
  while (out.warmup < timing.warmup_max &&
         (out.warmup < timing.warmup_steps || Now() - warm_from < timing.warmup_s)) {
    step();
    ++out.warmup;
  }
  for (int i = 0; i < timing.steps; ++i) out.step_s.push_back(step());
  return out;
}

}  // namespace headwise::bench
