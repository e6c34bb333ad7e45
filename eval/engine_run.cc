#include "eval/engine_run.h"

#include <chrono>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>

#include "eval/scoring.h"

namespace headwise::eval {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Wakes the collecting thread when any request has news. Shared with the engine's callbacks,
// which may outlive this call when it returns early (a dropped stream's abort event).
struct Notifier {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t events = 0;
};

struct InFlight {
  size_t sample = 0;
  std::unique_ptr<engine::RequestStream> stream;
  std::string text;
  bool started = false;
  Clock::time_point first_token;
};

}  // namespace

StatusOr<ArmRun> RunSamples(engine::Engine& engine, int arm, const std::vector<Sample>& samples,
                            int max_in_flight,
                            const std::function<void(size_t, size_t)>& progress) {
  ArmRun run;
  run.outcomes.resize(samples.size());
  auto notifier = std::make_shared<Notifier>();
  std::list<InFlight> in_flight;
  size_t next = 0, done = 0;
  const Clock::time_point t0 = Clock::now();
  Clock::time_point last_finish = t0;
  const double compaction0 = engine.metrics().Value("headwise_kv_compaction_seconds_total");
  max_in_flight = std::max(max_in_flight, 1);
  while (done < samples.size()) {
    // Keep the engine's queue full.
    while (next < samples.size() && static_cast<int>(in_flight.size()) < max_in_flight) {
      const Sample& s = samples[next];
      engine::EngineRequest req;
      req.arm = arm;
      req.prompt_ids = s.prompt_ids;
      req.params.temperature = 0.0f;
      req.params.max_tokens = s.max_new_tokens;
      req.on_output = [notifier] {
        std::lock_guard<std::mutex> lock(notifier->mu);
        ++notifier->events;
        notifier->cv.notify_one();
      };
      auto stream = engine.Submit(std::move(req));
      if (!stream.ok()) {
        if (stream.status().code() == StatusCode::kResourceExhausted && !in_flight.empty()) break;
        return stream.status().WithContext(
            fmt::format("sample {} at {} tokens #{}", s.task, s.length, s.index));
      }
      in_flight.push_back(InFlight{next, std::move(stream).value(), {}, false, {}});
      ++next;
    }
    uint64_t seen;
    {
      std::lock_guard<std::mutex> lock(notifier->mu);
      seen = notifier->events;
    }
    bool progressed = false;
    for (auto it = in_flight.begin(); it != in_flight.end();) {
      bool finished = false;
      while (auto out = it->stream->Next(std::chrono::milliseconds(0))) {
        progressed = true;
        const Clock::time_point now = Clock::now();
        if (!out->token_ids.empty() && !it->started) {
          it->started = true;
          it->first_token = now;
        }
        it->text += out->text;
        if (!out->finished) continue;
        const Sample& s = samples[it->sample];
        if (out->finish_reason == engine::FinishReason::kError ||
            out->finish_reason == engine::FinishReason::kAbort) {
          return Internal("sample {} at {} tokens #{}: the engine ended it ({}{})", s.task,
                          s.length, s.index, engine::FinishReasonName(out->finish_reason),
                          out->error.empty() ? "" : ": " + out->error);
        }
        Outcome& o = run.outcomes[it->sample];
        o.answer = CleanAnswer(it->text);
        const Match m = MatchExpected(o.answer, s.expected);
        o.found = m.found;
        o.expected = m.expected;
        o.completion_tokens = out->completion_tokens;
        o.finish_reason = std::string(engine::FinishReasonName(out->finish_reason));
        run.prompt_tokens += out->prompt_tokens;
        run.generated_tokens += out->completion_tokens;
        if (it->started && out->completion_tokens > 1) {
          run.decode_s += Seconds(it->first_token, now);
          run.decode_tokens += out->completion_tokens - 1;
        }
        last_finish = now;
        finished = true;
        break;
      }
      if (finished) {
        it = in_flight.erase(it);
        ++done;
        if (progress) progress(done, samples.size());
      } else {
        ++it;
      }
    }
    if (!progressed && done < samples.size()) {
      std::unique_lock<std::mutex> lock(notifier->mu);
      notifier->cv.wait_for(lock, std::chrono::milliseconds(100),
                            [&] { return notifier->events != seen; });
    }
  }
  run.wall_s = Seconds(t0, last_finish);
  run.compaction_s = engine.metrics().Value("headwise_kv_compaction_seconds_total") - compaction0;
  return run;
}

}  // namespace headwise::eval
