// The scheduler: which sequences compute which tokens in a step, and what a step's sampled
// tokens do to them. vLLM v1's contract (vllm/v1/core/sched/interface.py): Schedule() plans a
// step, the caller runs it (EngineCore: forward, compaction, sampling), and Update() takes the
// plan and the sampled tokens back. The scheduler owns the waiting queue and the running batch
// and each sequence's KV pages (reserve, attach, commit, release); it runs no model, no sampler
// and no backend, so it is tested with a fake model (tests/engine/scheduler_test.cc).
//
// A step's plan, in order:
//  1. Abort sweep: sequences whose consumer asked to stop leave, their pages back in the pool.
//  2. Running sequences, decode steps first, then the continuations of chunked prefills, each
//     within the token budget (max_num_batched_tokens). One that cannot get the pages for its
//     chunk preempts the latest-admitted running sequences not in this step (recompute: their
//     K/V go, their tokens stay, they rejoin the waiting queue's head); if that is not enough it
//     preempts itself.
//  3. Admission, first come first served while the budget and max_num_seqs allow: the queue
//     head attaches its cached prefix, then needs the pages for its first chunk, or it and all
//     behind it wait.
// A chunk stops at the prompt's end when the cache has compress-once heads: the caller compacts
// the sequence there (ScheduledChunk::completes_prompt), and a preempted sequence recomputing
// prompt and generated tokens compacts where it did the first time, so it goes on as it would
// have.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "engine/request_output.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "kvcache/kv_cache.h"

namespace headwise::engine {

struct SchedulerConfig {
  int max_num_seqs = 64;              // sequences running at once
  int max_num_batched_tokens = 2048;  // tokens per step (decode tokens + prefill chunks)
  // Look up cached prefix pages at admission (the cache must have prefix caching on too).
  bool enable_prefix_caching = true;
};

// One sequence's share of a step: tokens [start, start + count) of seq->tokens.
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int start = 0;  // seq->num_computed when planned
  int count = 0;
  // The chunk ends at the sequence's last token: its logits row is sampled this step.
  bool samples = false;
  // The chunk computes the prompt's last token (compress-once heads compact after it).
  bool completes_prompt = false;
};

struct SchedulerOutput {
  // The step's batch: decode steps first, then prefill continuations, then admissions. Rows of
  // the forward pass's logits follow this order.
  std::vector<ScheduledChunk> chunks;
  // Scheduled for the first time this step (their queue time ends; cached_tokens is set).
  std::vector<Sequence*> first_scheduled;
  // Preempted this step, in order: back at the waiting queue's head, no K/V held.
  std::vector<Sequence*> preempted;
  // Their consumer asked to stop: out of the scheduler, no K/V held; the caller tells them.
  std::vector<std::unique_ptr<Sequence>> aborted;
};

// What one sequence produced in a step: the token it sampled, the text that token makes safe
// to stream, and the reason it finished, when the token ended it.
struct SequenceOutput {
  Sequence* seq = nullptr;
  SampledToken token;
  std::string text;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kStop;  // when finished
};

struct SchedulerUpdate {
  // One per sequence that sampled, in running-batch order.
  std::vector<SequenceOutput> outputs;
  // Those that finished: out of the scheduler, no K/V held. outputs[i].seq points into these.
  std::vector<std::unique_ptr<Sequence>> finished;
};

class Scheduler {
 public:
  Scheduler(kvcache::KvCache& cache, const SchedulerConfig& config);

  // Joins the waiting queue's tail.
  void Add(std::unique_ptr<Sequence> seq);
  // Plans the next step (see the header comment). An empty plan (no chunks) when nothing can
  // run: no sequences, or the queue head waits for pages.
  SchedulerOutput Schedule();
  // After the step ran: the chunks' tokens are computed (registered with the prefix cache), and
  // `sampled` holds one token per chunk that samples, in chunk order. Appends them, runs the stop
  // conditions, and takes finished sequences out.
  SchedulerUpdate Update(const SchedulerOutput& plan, std::vector<SampledToken> sampled);
  // Every unfinished sequence, running ones first then the waiting queue in order, their K/V
  // released: for shutdown or a failed step.
  std::vector<std::unique_ptr<Sequence>> TakeAll();

  // Tokens of `seq` to compute next, within `budget`: its remaining tokens, up to the prompt's
  // end with compress-once heads.
  int ChunkOf(const Sequence& seq, int budget) const;

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool has_unfinished() const { return !running_.empty() || !waiting_.empty(); }
  // Admission order (oldest first), and the queue in the order it will be admitted.
  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::deque<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  const SchedulerConfig& config() const { return config_; }

 private:
  // Makes room for `seq` to hold `tokens` tokens, preempting the latest-admitted running
  // sequences that are not in `out`'s batch; false if even that is not enough.
  bool Reserve(Sequence& seq, int tokens, SchedulerOutput& out);
  void Preempt(std::unique_ptr<Sequence> seq, SchedulerOutput& out);

  kvcache::KvCache& cache_;
  SchedulerConfig config_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
};

}  // namespace headwise::engine
