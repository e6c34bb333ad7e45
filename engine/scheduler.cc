#include "engine/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <unordered_map>

#include "core/status.h"

namespace headwise::engine {

Scheduler::Scheduler(kvcache::KvCache& cache, const SchedulerConfig& config)
    : cache_(cache), config_(config) {}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  waiting_.push_back(std::move(seq));
}

int Scheduler::ChunkOf(const Sequence& seq, int budget) const {
  int count = std::min(seq.remaining(), budget);
  const int to_prompt_end = static_cast<int>(seq.prompt_len) - seq.num_computed;
  if (to_prompt_end > 0 && cache_.comp_pages(seq.kv->layout()) > 0) {
    count = std::min(count, to_prompt_end);
  }
  // After compaction, offload heads attend what their host index retrieves for each query, and
  // only a decode query (one token) retrieves: a preempted sequence recomputes its generated
  // tokens one per step, each as it was decoded, so its text goes on as before.
  if (seq.kv->compacted_from() > 0 && cache_.layout(seq.kv->layout()).offload) {
    count = std::min(count, 1);
  }
  return count;
}

void Scheduler::Preempt(std::unique_ptr<Sequence> seq, SchedulerOutput& out) {
  // Recompute later: the K/V goes, the tokens stay; prefix caching may bring pages back.
  seq->kv->Release();
  seq->num_computed = 0;
  spdlog::debug("preempted {} at {} tokens", seq->id, seq->tokens.size());
  out.preempted.push_back(seq.get());
  waiting_.push_front(std::move(seq));
}

bool Scheduler::Reserve(Sequence& seq, int tokens, SchedulerOutput& out) {
  for (;;) {
    if (seq.kv->Reserve(tokens).ok()) return true;
    auto victim = std::find_if(running_.rbegin(), running_.rend(), [&](const auto& s) {
      return s.get() != &seq &&
             std::none_of(out.chunks.begin(), out.chunks.end(),
                          [&](const ScheduledChunk& c) { return c.seq == s.get(); });
    });
    if (victim == running_.rend()) return false;
    auto it = std::next(victim).base();
    std::unique_ptr<Sequence> taken = std::move(*it);
    running_.erase(it);
    Preempt(std::move(taken), out);
  }
}

namespace {

// Moves the sequences `pred` picks from `from` to the end of `to`, in order, releasing their
// K/V.
template <typename Container, typename Pred>
void MoveOutIf(Container& from, std::vector<std::unique_ptr<Sequence>>& to, Pred pred) {
  for (auto& s : from) {
    if (!pred(*s)) continue;
    s->kv->Release();
    to.push_back(std::move(s));
  }
  std::erase(from, nullptr);
}

ScheduledChunk MakeChunk(Sequence& seq, int count) {
  const int start = seq.num_computed;
  const int end = start + count;
  const int prompt_len = static_cast<int>(seq.prompt_len);
  return ScheduledChunk{&seq, start, count, end == static_cast<int>(seq.tokens.size()),
                        start < prompt_len && end >= prompt_len};
}

}  // namespace

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  // Aborts first: their pages return before anything is scheduled.
  auto aborted = [](const Sequence& s) { return s.abort_requested(); };
  MoveOutIf(running_, out.aborted, aborted);
  MoveOutIf(waiting_, out.aborted, aborted);
  if (running_.empty() && waiting_.empty()) return out;

  int budget = config_.max_num_batched_tokens;
  // Running sequences: decode steps first, then the continuation of chunked prefills.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      Sequence& seq = *running_[i];
      const bool decode = seq.remaining() == 1;
      if (decode != (pass == 0)) continue;
      // An offload sequence waits while the host builds its indexes (its prompt is in: what
      // follows decodes, or recomputes decoded tokens); the others go on.
      if (!seq.kv->offload_ready()) continue;
      const int count = ChunkOf(seq, budget);
      if (!Reserve(seq, seq.num_computed + count, out)) {
        // Not even alone: give its own pages back and wait.
        auto it = running_.begin() + static_cast<std::ptrdiff_t>(i);
        std::unique_ptr<Sequence> self = std::move(*it);
        running_.erase(it);
        Preempt(std::move(self), out);
        --i;
        continue;
      }
      out.chunks.push_back(MakeChunk(seq, count));
      budget -= count;
    }
  }

  // Admission, first come first served: the queue head blocks those behind it.
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence& seq = *waiting_.front();
    if (config_.enable_prefix_caching && seq.num_computed == 0 && seq.kv->capacity_tokens() == 0) {
      const int hit = seq.kv->AttachCachedPrefix(seq.tokens);
      // The last token is always computed: its logits are what we sample from.
      seq.num_computed = std::min(hit, static_cast<int>(seq.tokens.size()) - 1);
    }
    const int count = ChunkOf(seq, budget);
    // Offload layouts also reserve host memory for what the sequence will offload: its prompt,
    // then the tokens it decodes as they leave the window.
    const int64_t longest = static_cast<int64_t>(seq.prompt_len) + seq.params.max_tokens;
    if (!seq.kv->Reserve(seq.num_computed + count).ok() ||
        !seq.kv->ReserveHost(static_cast<int>(std::min<int64_t>(longest, INT32_MAX))).ok()) {
      seq.kv->Release();  // keep nothing while waiting
      seq.num_computed = 0;
      break;
    }
    if (!seq.scheduled_once) {
      seq.scheduled_once = true;
      seq.cached_tokens = seq.num_computed;
      out.first_scheduled.push_back(&seq);
    }
    out.chunks.push_back(MakeChunk(seq, count));
    budget -= count;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return out;
}

SchedulerUpdate Scheduler::Update(const SchedulerOutput& plan, std::vector<SampledToken> sampled) {
  SchedulerUpdate update;
  // The chunk that sampled each sequence's token: index into `sampled`.
  std::unordered_map<const Sequence*, size_t> token_of;
  size_t next = 0;
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence& seq = *c.seq;
    HW_CHECK(seq.num_computed == c.start, "sequence {}: chunk planned at {}, computed {}", seq.id,
             c.start, seq.num_computed);
    seq.num_computed += c.count;
    seq.kv->CommitComputed(seq.tokens, seq.num_computed);
    if (c.samples) token_of[&seq] = next++;
  }
  HW_CHECK(next == sampled.size(), "{} chunks sample, {} tokens given", next, sampled.size());

  // The sampled tokens join their sequences (in the running batch's order, which is what their
  // consumers hear), and the stop conditions run; finished sequences leave the batch and free
  // their pages.
  for (const auto& s : running_) {
    const auto it = token_of.find(s.get());
    if (it == token_of.end()) continue;
    Sequence& seq = *s;
    SequenceOutput o;
    o.seq = &seq;
    o.token = std::move(sampled[it->second]);
    seq.tokens.push_back(o.token.id);
    o.text = seq.output.Append(o.token.id);
    o.finished = seq.output.finished();
    if (o.finished) o.finish_reason = seq.output.finish_reason();
    update.outputs.push_back(std::move(o));
  }
  MoveOutIf(running_, update.finished, [](const Sequence& s) { return s.output.finished(); });
  HW_CHECK(update.outputs.size() == sampled.size(), "{} tokens for {} running sequences",
           sampled.size(), update.outputs.size());
  return update;
}

std::vector<std::unique_ptr<Sequence>> Scheduler::TakeAll() {
  std::vector<std::unique_ptr<Sequence>> all;
  for (auto& s : running_) all.push_back(std::move(s));
  for (auto& s : waiting_) all.push_back(std::move(s));
  running_.clear();
  waiting_.clear();
  for (auto& s : all) s->kv->Release();
  return all;
}

}  // namespace headwise::engine
