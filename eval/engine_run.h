// Runs task samples (eval/tasks.h) through one arm of a running Engine, batched: up to
// `max_in_flight` requests submitted at once, continuous batching running them, each scored as it
// finishes. Greedy decoding, the sample's max_new_tokens, the model's stop tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/status.h"
#include "engine/engine.h"
#include "eval/report.h"
#include "eval/tasks.h"

namespace headwise::eval {

struct ArmRun {
  std::vector<Outcome> outcomes;  // one per sample, in order
  double wall_s = 0;              // first submission to last finish
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double decode_s = 0;        // summed over requests: first token to finish
  int64_t decode_tokens = 0;  // tokens after each request's first
  // The engine thread's compaction time meanwhile (headwise_kv_compaction_seconds_total): the
  // steps it held up, every running sequence's decode included.
  double compaction_s = 0;
};

// `progress(done, total)` is called after each finished request (may be empty).
StatusOr<ArmRun> RunSamples(engine::Engine& engine, int arm, const std::vector<Sample>& samples,
                            int max_in_flight,
                            const std::function<void(size_t, size_t)>& progress = {});

}  // namespace headwise::eval
