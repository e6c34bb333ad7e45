// A long sampled generation under an attention policy, watched as it runs: every `--span`
// generated tokens one JSON line on stdout with the process's resident memory, the mean
// log-probability of the sampled tokens in the span (log-softmax of the raw logits), how many
// logits were NaN or infinite, the speed, and the span's last characters. Made for the
// StreamingLLM 20,000-token run (bench/streaming/run-20k.sh): memory must stay flat and the
// log-probabilities must not collapse once the ring's window starts moving.
//
// usage: hw_bench_streaming MODEL --prompt TEXT [--chat] [--attention-policy FILE]
//          [--max-tokens N] [--span N] [--temperature T] [--top-p P] [--seed N]
//          [--repetition-penalty R] [--min-p P] [--device cpu|cuda] [--text-out FILE]
//          [--threads N] [--prefill-chunk N]
// --text-out writes the whole generated text there at the end. Each JSON line also carries the
// backend's memory in use (device memory on the GPU) and the pages the sequence holds.
// The sequence may run past the model's context only under a policy whose every head is a
// re-indexed ring (engine::MaxSequenceTokens), as with `headwise generate`. EOS tokens are
// sampled like any other and fed back (ignore-eos).
//
// With --text FILE it scores a text instead (teacher forcing, StreamingLLM's perplexity
// setting): the file's first max-tokens + 1 tokens go through in prefill chunks of
// --prefill-chunk tokens, and each span reports the mean log-probability of the text's own next
// tokens.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "eval/log_likelihood.h"
#include "kernels/backend_factory.h"
#include "tokenizer/chat_renderer.h"
#include "tokenizer/tokenizer.h"
#include "tools/flags.h"

namespace hw = headwise;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// VmRSS of this process in MiB (Linux), -1 if unreadable.
double RssMiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
  }
  return -1;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out;
}

struct SpanPrinter {
  const hw::tokenizer::Tokenizer* tok = nullptr;
  hw::kernels::Backend* backend = nullptr;       // its memory in use: flat on the GPU too
  const hw::kvcache::SequenceKv* seq = nullptr;  // pages the sequence holds
  double start_s = Now(), logprob_sum = 0.0;
  int64_t nonfinite = 0, nonfinite_total = 0;

  void Print(int tokens, int position, std::span<const int32_t> span_ids) {
    const double now = Now();
    const auto n = static_cast<double>(span_ids.size());
    std::string piece = tok->Decode(span_ids, false);
    if (piece.size() > 240) piece = piece.substr(piece.size() - 240);
    // Keep whole UTF-8 characters: drop leading continuation bytes.
    while (!piece.empty() && (static_cast<unsigned char>(piece[0]) & 0xC0) == 0x80) {
      piece.erase(0, 1);
    }
    nonfinite_total += nonfinite;
    const hw::kernels::Backend::MemoryInfo mem = backend->DeviceMemory();
    std::printf("%s\n", fmt::format(R"({{"tokens": {}, "position": {}, "rss_mib": {:.1f}, )"
                                    R"("device_used_mib": {:.1f}, "kv_pages_held": {}, )"
                                    R"("mean_logprob": {:.4f}, "nonfinite_logits": {}, )"
                                    R"("tokens_per_s": {:.2f}, "excerpt": "{}"}})",
                                    tokens, position, RssMiB(),
                                    static_cast<double>(mem.total_bytes - mem.free_bytes) /
                                        (1024.0 * 1024.0),
                                    seq->num_pages_held(), logprob_sum / n, nonfinite,
                                    n / (now - start_s), JsonEscape(piece))
                            .c_str());
    std::fflush(stdout);
    logprob_sum = 0.0;
    nonfinite = 0;
    start_s = now;
  }
};

int Fail(const std::string& what) {
  std::fprintf(stderr, "hw_bench_streaming: error: %s\n", what.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Fail("usage: hw_bench_streaming MODEL --prompt TEXT [options]");
  const std::string model_path = argv[1];
  hw::tools::FlagParser flags(argc - 1, argv + 1);
  std::string prompt, policy_path, text_path, device = "cpu", text_out;
  bool chat = false;
  int max_tokens = 20000, span = 1000, threads = 0, prefill_chunk = 512;
  int64_t seed = 1;
  hw::engine::SamplingParams params;
  params.temperature = 0.8f;
  params.top_p = 0.95f;
  flags.String("prompt", prompt);
  flags.String("text", text_path);
  flags.Bool("chat", chat);
  flags.String("attention-policy", policy_path);
  flags.Int("max-tokens", max_tokens);
  flags.Int("span", span);
  flags.Float("temperature", params.temperature);
  flags.Float("top-p", params.top_p);
  flags.Float("repetition-penalty", params.repetition_penalty);
  flags.Float("min-p", params.min_p);
  flags.String("device", device);
  flags.String("text-out", text_out);
  flags.Int64("seed", seed);
  flags.Int("threads", threads);
  flags.Int("prefill-chunk", prefill_chunk);
  if (auto s = flags.Finish(); !s.ok()) return Fail(s.message());
  if ((prompt.empty() && text_path.empty()) || span < 1 || prefill_chunk < 1) {
    return Fail("need --prompt or --text, span >= 1");
  }
  params.max_tokens = max_tokens;
  params.ignore_eos = true;
  params.seed = static_cast<uint64_t>(seed);

  auto created = hw::kernels::CreateBackend(device, threads);
  if (!created.ok()) return Fail(created.status().message());
  auto backend = std::move(created).value();
  auto loaded = hw::engine::LoadModel(model_path, {}, *backend);
  if (!loaded.ok()) return Fail(loaded.status().message());
  auto& model = *loaded->model;
  const auto& tok = *loaded->tokenizer;
  auto policy = hw::engine::LoadAttentionPolicy(policy_path, model.config(), model_path,
                                                model.weights_hash());
  if (!policy.ok()) return Fail(policy.status().message());

  std::string text = prompt;
  if (chat) {
    auto renderer = hw::tokenizer::ChatRenderer::ForTokenizer(loaded->chat_template, tok);
    if (!renderer.ok()) return Fail(renderer.status().message());
    auto rendered = (*renderer)->Render({{"user", prompt, ""}}, true, {});
    if (!rendered.ok()) return Fail(rendered.status().message());
    text = *rendered;
  }
  std::vector<int32_t> ids;
  if (text_path.empty()) {
    ids = tok.Encode(text, !chat);
  } else {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) return Fail("cannot open " + text_path);
    const std::string contents((std::istreambuf_iterator<char>(in)), {});
    ids = tok.Encode(contents, true);
    if (ids.size() > static_cast<size_t>(max_tokens) + 1)
      ids.resize(static_cast<size_t>(max_tokens) + 1);
  }
  const int chunk = std::min<int>(prefill_chunk, static_cast<int>(ids.size()));
  const int total = static_cast<int>(ids.size()) + (text_path.empty() ? max_tokens : 0);

  // The cache as `headwise generate` builds it: full heads sized for the request, rings for one
  // sequence writing up to `chunk` tokens a step.
  auto layout = hw::engine::KvLayoutFor(*policy);
  if (!layout.ok()) return Fail(layout.status().message());
  const int page_size = policy->page_size;
  hw::kvcache::KvCacheConfig kv = hw::engine::KvConfigFor(model.config(), 0, page_size, chunk);
  const int pages = hw::kvcache::KvCache::PagesForSequence(kv, *layout, total);
  kv.num_pages = pages;
  std::vector<hw::kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout).value());
  auto cache = hw::engine::CreateKvCache(std::move(layouts), kv, *backend);
  if (!cache.ok()) return Fail(cache.status().message());
  hw::engine::ModelRunner runner(model, **cache);
  const hw::engine::LengthLimit limit = hw::engine::MaxSequenceTokens(
      (*cache)->layout(0), model.config().max_position_embeddings, chunk);
  if (total > limit.tokens) {
    return Fail(fmt::format("{} tokens: {}", total, limit.Explain()));
  }
  hw::kvcache::SequenceKv seq(**cache);
  if (auto s = seq.Reserve(total); !s.ok()) return Fail(s.message());

  std::fprintf(
      stderr, "policy %s, prompt %zu tokens, %d to generate, %d KV pages (%.1f MiB), %s\n",
      policy->name.c_str(), ids.size(), max_tokens, pages,
      static_cast<double>(pages) * page_size * model.config().head_dim * 2 * 4 / (1024.0 * 1024.0),
      limit.Explain().c_str());

  if (!text_path.empty()) {
    // Teacher forcing (eval/log_likelihood.h): each row of a chunk's logits predicts the token
    // after it.
    SpanPrinter printer{&tok, backend.get(), &seq};
    int scored = 0;
    size_t span_begin = 1;
    hw::eval::TeacherForce(
        runner, seq, ids, chunk, /*threads=*/0, [&](size_t i, double logprob, int64_t bad) {
          printer.logprob_sum += logprob;
          printer.nonfinite += bad;
          ++scored;
          const size_t next = i + 1;  // one past the token just scored
          if (scored % span == 0 || next == ids.size()) {
            printer.Print(scored, static_cast<int>(i),
                          std::span<const int32_t>(ids).subspan(span_begin, next - span_begin));
            span_begin = next;
          }
        });
    std::fprintf(stderr, "done: %d tokens scored, %lld non-finite logits\n", scored,
                 static_cast<long long>(printer.nonfinite_total));
    return 0;
  }

  const hw::engine::Sampler sampler(params);
  const int vocab = model.config().vocab_size;
  std::vector<float> logits;
  double t0 = Now();
  for (size_t start = 0; start < ids.size(); start += static_cast<size_t>(chunk)) {
    const size_t n = std::min(static_cast<size_t>(chunk), ids.size() - start);
    hw::engine::BatchEntry e{&seq, std::span<const int32_t>(ids).subspan(start, n),
                             static_cast<int>(start), false};
    logits = runner.ForwardToHost(std::span<const hw::engine::BatchEntry>(&e, 1));
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(max_tokens));
  SpanPrinter printer{&tok, backend.get(), &seq};
  size_t span_begin = 0;
  for (int i = 0; i < max_tokens; ++i) {
    HW_CHECK_EQ(static_cast<int>(logits.size()), vocab);
    const hw::engine::SampledToken t = sampler.Sample(logits, ids, out);
    printer.logprob_sum += hw::eval::LogSoftmaxAt(logits, t.id, printer.nonfinite);
    out.push_back(t.id);
    const int generated = i + 1;
    if (generated % span == 0 || generated == max_tokens) {
      printer.Print(generated, static_cast<int>(ids.size()) + generated,
                    std::span<const int32_t>(out).subspan(span_begin));
      span_begin = out.size();
    }
    if (generated == max_tokens) break;
    const int32_t next = t.id;
    hw::engine::BatchEntry e{&seq, std::span<const int32_t>(&next, 1),
                             static_cast<int>(ids.size()) + i, false};
    logits = runner.ForwardToHost(std::span<const hw::engine::BatchEntry>(&e, 1));
  }
  if (!text_out.empty()) {
    std::ofstream(text_out, std::ios::binary) << tok.Decode(out, false);
  }
  std::fprintf(stderr, "done: %d tokens in %.0f s, %lld non-finite logits\n", max_tokens,
               Now() - t0, static_cast<long long>(printer.nonfinite_total));
  return 0;
}
