#include "engine/attention/head_profile.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <thread>

#include "engine/attention/profile_file.h"
#include "engine/attention_setup.h"
#include "engine/model_runner.h"
#include "kernels/host_copy.h"
#include "kvcache/kv_cache.h"

namespace headwise::engine::attention {
namespace {

using kernels::PagedAttentionBatch;

float Dot(const float* a, const float* b, int64_t n) {
  // Eight partial sums in a fixed order: vectorizable, and the same result on every run.
  float s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  }
  for (; i < n; ++i) s[i % 8] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

bool OnHost(const Tensor& t, DType dtype) {
  return t.data != nullptr && t.device == Device::kCpu && t.dtype == dtype;
}

// Runs fn(begin, end) over [0, n) split into `threads` contiguous ranges.
void ParallelFor(int n, int threads, const std::function<void(int, int)>& fn) {
  threads = std::clamp(threads, 1, std::max(n, 1));
  if (threads == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    const int begin = n * t / threads, end = n * (t + 1) / threads;
    pool.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  for (auto& th : pool) th.join();
}

int ResolveThreads(int threads) {
  return threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

// What an observer gets, as host f32 / i32 tensors that ForEachAttentionRow reads. Each call
// copies q, the batch's small index tensors and the key pages the batch's sequences use (this
// layer's pages of their blocks up to the last query position) into host mirrors, converting
// bf16 / f16 to f32; the pool's mirror keeps the device's page numbering, so the block table
// reads unchanged. Copying only what one layer's query rows read keeps it cheap next to the CPU's
// own recomputation of the rows. Tables with ring or compress-once heads are read in place on
// the CPU backend and refused on a device.
class HostView {
 public:
  explicit HostView(kernels::Backend& backend) : backend_(backend) {}

  Status Update(const Tensor& q, const kernels::KvPoolView& pool,
                const PagedAttentionBatch& batch) {
    const kernels::BlockTable& table = batch.table;
    const bool sparse = table.has_ring_heads() || table.has_compressed_heads();
    // The CPU backend's dense tables go through the same copies as a device's, so that the CPU
    // tests check them (they once copied only layer 0's pages, unseen until a GPU compared).
    if (backend_.device() == Device::kCpu && sparse) {
      q_ = q;
      pool_ = pool;
      batch_ = batch;
      return Status::Ok();
    }
    if (sparse) {
      return Unimplemented(
          "attention rows of ring and compress-once heads are not recomputed; profile densely");
    }
    HW_ASSIGN_OR_RETURN(q_, ToF32(q, q_store_));
    batch_ = batch;
    batch_.token_seq = CopyI32(batch.token_seq, token_seq_);
    batch_.token_pos = CopyI32(batch.token_pos, token_pos_);
    batch_.query_start = Tensor{};
    batch_.table.blocks = CopyI32(table.blocks, blocks_);
    batch_.table.heads = CopyI32(table.heads, heads_);
    batch_.table.seq_layout = CopyI32(table.seq_layout, seq_layout_);
    batch_.table.rope_inv_freq = Tensor{};

    // A block holds one page per (layer, KV head) of its kind (kvcache/kv_cache.h): this layer's
    // heads sit at KvHead::page from its first page, which the head table gives. Only those
    // pages are copied.
    const int64_t page_elems = pool.k.dim(1) * pool.k.dim(2);
    int32_t page_lo = std::numeric_limits<int32_t>::max(), page_hi = 0;
    for (size_t i = 0; i < heads_.size(); i += kernels::kKvHeadInts) {
      const auto* head = reinterpret_cast<const kernels::KvHead*>(heads_.data() + i);
      page_lo = std::min(page_lo, head->page);
      page_hi = std::max(page_hi, head->page + 1);
    }
    if (page_hi <= page_lo) return Internal("a head table without heads");
    if (k_store_.size() != static_cast<size_t>(pool.k.numel())) {
      k_store_.assign(static_cast<size_t>(pool.k.numel()), 0.0f);
    }
    std::vector<int32_t> blocks_needed(static_cast<size_t>(table.num_seqs()), 0);
    for (size_t t = 0; t < token_pos_.size(); ++t) {
      if (token_pos_[t] < 0) continue;
      int32_t& need = blocks_needed[static_cast<size_t>(token_seq_[t])];
      need = std::max(need, token_pos_[t] / pool.page_size + 1);
    }
    std::vector<float> block_f32;
    for (int s = 0; s < table.num_seqs(); ++s) {
      for (int b = 0; b < blocks_needed[static_cast<size_t>(s)]; ++b) {
        const int32_t first = blocks_[static_cast<size_t>(s) * table.max_blocks() + b];
        if (first < 0 || first + page_hi > pool.k.dim(0)) {
          return Internal("KV block at page {} outside the pool of {} pages", first, pool.k.dim(0));
        }
        HW_RETURN_IF_ERROR(
            ToF32(pool.k.Rows(first + page_lo, page_hi - page_lo), block_f32).status());
        std::copy(block_f32.begin(), block_f32.end(),
                  k_store_.begin() + (first + page_lo) * page_elems);
      }
    }
    pool_ = pool;
    pool_.k = Tensor(k_store_.data(), DType::kF32, Device::kCpu,
                     {pool.k.dim(0), pool.k.dim(1), pool.k.dim(2)});
    pool_.v = Tensor{};
    return Status::Ok();
  }

  const Tensor& q() const { return q_; }
  const kernels::KvPoolView& pool() const { return pool_; }
  const PagedAttentionBatch& batch() const { return batch_; }

 private:
  StatusOr<Tensor> ToF32(const Tensor& t, std::vector<float>& store) {
    HW_RETURN_IF_ERROR(kernels::CopyToHostF32(backend_, t, store, raw_));
    Tensor h = t;
    h.data = store.data();
    h.dtype = DType::kF32;
    h.device = Device::kCpu;
    return h;
  }
  Tensor CopyI32(const Tensor& t, std::vector<int32_t>& store) {
    store.resize(static_cast<size_t>(t.numel()));
    if (!store.empty()) backend_.CopyToHost(store.data(), t, t.nbytes());
    Tensor h = t;
    h.data = store.data();
    h.device = Device::kCpu;
    return h;
  }

  kernels::Backend& backend_;
  Tensor q_;
  kernels::KvPoolView pool_;
  PagedAttentionBatch batch_;
  std::vector<float> q_store_, k_store_;
  std::vector<uint16_t> raw_;
  std::vector<int32_t> token_seq_, token_pos_, blocks_, heads_, seq_layout_;
};

// A dense KV cache with one sequence's room for `tokens` tokens.
std::unique_ptr<kvcache::KvCache> DenseCache(const models::LlamaModel& model, int tokens) {
  const models::ModelConfig& c = model.config();
  kvcache::KvLayout layout = kvcache::KvLayout::Dense(c.num_layers, c.num_kv_heads);
  kvcache::KvCacheConfig kv = KvConfigFor(c, 0);
  kv.num_pages = kvcache::KvCache::PagesForSequence(kv, layout, tokens);
  std::vector<kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout));
  return std::make_unique<kvcache::KvCache>(kv, std::move(layouts), model.backend());
}

// Runs tokens [begin, end) of one sequence through the model in chunks; the logits of the last.
std::vector<float> Prefill(models::LlamaModel& model, kvcache::KvCache& cache,
                           const kvcache::SequenceKv& kv, std::span<const int32_t> tokens,
                           int chunk) {
  std::vector<float> logits;
  chunk = std::max(chunk, 1);
  for (size_t start = 0; start < tokens.size(); start += static_cast<size_t>(chunk)) {
    const size_t n = std::min(tokens.size() - start, static_cast<size_t>(chunk));
    const BatchEntry e{&kv, tokens.subspan(start, n), static_cast<int>(start), false};
    logits = ModelRunner(model, cache).ForwardToHost(std::span<const BatchEntry>(&e, 1));
  }
  return logits;
}

int32_t Argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<std::string> Words(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) && c < 128) {
      cur.push_back(static_cast<char>(std::tolower(c)));
    } else if (!cur.empty()) {
      words.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

HeadMatrix Zeros(int rows, int cols) {
  return HeadMatrix(static_cast<size_t>(rows), std::vector<double>(static_cast<size_t>(cols), 0.0));
}

}  // namespace

Status ForEachAttentionRow(const Tensor& q, const kernels::KvPoolView& pool,
                           const PagedAttentionBatch& batch, float scale, int threads,
                           const AttentionRowFn& fn) {
  const kernels::BlockTable& table = batch.table;
  if (!OnHost(q, DType::kF32) || !OnHost(pool.k, DType::kF32) ||
      !OnHost(batch.token_pos, DType::kI32) || !OnHost(batch.token_seq, DType::kI32) ||
      !OnHost(table.blocks, DType::kI32) || !OnHost(table.heads, DType::kI32) ||
      !OnHost(table.seq_layout, DType::kI32)) {
    return Unimplemented("attention rows are recomputed from host f32 tensors (CPU backend)");
  }
  if (table.has_ring_heads() || table.has_compressed_heads()) {
    return Unimplemented(
        "attention rows of ring and compress-once heads are not recomputed; profile densely");
  }
  const int64_t num_tokens = q.dim(0), head_dim = q.dim(2);
  const int num_heads = static_cast<int>(q.dim(1));
  const int group = num_heads / table.num_kv_heads();
  const int32_t* pos_of = batch.token_pos.ptr<int32_t>();
  const int32_t* seq_of = batch.token_seq.ptr<int32_t>();
  const int32_t* blocks = table.blocks.ptr<int32_t>();
  const auto* heads = reinterpret_cast<const kernels::KvHead*>(table.heads.ptr<int32_t>());
  const int32_t* seq_layout = table.seq_layout.ptr<int32_t>();
  const int num_kv_heads = table.num_kv_heads();
  const float* k = pool.k.ptr<float>();
  const float* qd = q.ptr<float>();
  const int page_size = pool.page_size;
  const int64_t num_pages = pool.k.dim(0);

  ParallelFor(num_heads, threads, [&](int head_begin, int head_end) {
    std::vector<float> probs;
    for (int h = head_begin; h < head_end; ++h) {
      const int kv_head = h / group;
      for (int64_t t = 0; t < num_tokens; ++t) {
        const int32_t pos = pos_of[t];
        if (pos < 0) continue;  // padding
        const int32_t seq = seq_of[t];
        const float* qv = qd + (t * num_heads + h) * head_dim;
        probs.resize(static_cast<size_t>(pos) + 1);
        float max_logit = -INFINITY;
        for (int32_t j = 0; j <= pos; ++j) {
          // backend.h: page = blocks[s][j / page_size] + heads[seq_layout[s], h].page.
          const int64_t page = int64_t{blocks[int64_t{seq} * table.max_blocks() + j / page_size]} +
                               heads[seq_layout[seq] * num_kv_heads + kv_head].page;
          HW_CHECK(page >= 0 && page < num_pages, "KV page {} outside the pool", page);
          const float* kv = k + (page * page_size + j % page_size) * head_dim;
          const float logit = scale * Dot(qv, kv, head_dim);
          probs[static_cast<size_t>(j)] = logit;
          max_logit = std::max(max_logit, logit);
        }
        double sum = 0.0;
        for (float& p : probs) {
          p = std::exp(p - max_logit);
          sum += p;
        }
        const auto inv = static_cast<float>(1.0 / sum);
        for (float& p : probs) p *= inv;
        fn(t, h, pos, probs);
      }
    }
  });
  return Status::Ok();
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::pair<int32_t, int32_t> DefaultRazorRange(int vocab_size) {
  if (vocab_size >= 12500) return {10000, 12500};
  return {static_cast<int32_t>(vocab_size * 4 / 5), static_cast<int32_t>(vocab_size)};
}

std::vector<int32_t> RazorTokens(std::optional<int32_t> bos, int length, int repetitions,
                                 int32_t lo, int32_t hi, uint64_t seed) {
  std::vector<int32_t> r;
  uint64_t state = seed;
  const auto span = static_cast<uint64_t>(hi - lo);
  r.reserve(static_cast<size_t>(std::max(length, 0)));
  for (int i = 0; i < length; ++i) {
    r.push_back(lo + static_cast<int32_t>(SplitMix64(state) % span));
  }
  std::vector<int32_t> tokens;
  if (bos) tokens.push_back(*bos);
  for (int k = 0; k < repetitions; ++k) tokens.insert(tokens.end(), r.begin(), r.end());
  return tokens;
}

RazorScorer::RazorScorer(std::span<const int32_t> tokens, int32_t first_scored, int num_layers,
                         int num_heads)
    : echo_positions_(tokens.size()),
      first_scored_(first_scored),
      num_cells_(static_cast<double>(tokens.size()) * static_cast<double>(tokens.size())),
      echo_(Zeros(num_layers, num_heads)),
      induction_(Zeros(num_layers, num_heads)) {
  std::map<int32_t, std::vector<int32_t>> seen;  // token -> earlier positions
  for (size_t i = 0; i < tokens.size(); ++i) {
    std::vector<int32_t>& earlier = seen[tokens[i]];
    if (static_cast<int32_t>(i) >= first_scored) echo_positions_[i] = earlier;
    earlier.push_back(static_cast<int32_t>(i));
  }
}

void RazorScorer::AddRow(int layer, int head, int32_t pos, std::span<const float> probs) {
  if (pos < first_scored_ || static_cast<size_t>(pos) >= echo_positions_.size()) return;
  double echo = 0.0, induction = 0.0;
  for (int32_t j : echo_positions_[static_cast<size_t>(pos)]) {
    echo += probs[static_cast<size_t>(j)];
    induction += probs[static_cast<size_t>(j) + 1];  // j < pos, so j + 1 <= pos
  }
  echo_[static_cast<size_t>(layer)][static_cast<size_t>(head)] += echo;
  induction_[static_cast<size_t>(layer)][static_cast<size_t>(head)] += induction;
}

HeadMatrix RazorScorer::Normalized(const HeadMatrix& sums) const {
  HeadMatrix out = sums;
  for (auto& row : out) {
    for (double& v : row) v /= num_cells_;
  }
  return out;
}

HeadMatrix MaxOverGroups(const HeadMatrix& query_scores, int group) {
  HeadMatrix out;
  for (const auto& row : query_scores) {
    auto& kv = out.emplace_back(row.size() / static_cast<size_t>(group), -INFINITY);
    for (size_t h = 0; h < row.size(); ++h) {
      kv[h / static_cast<size_t>(group)] = std::max(kv[h / static_cast<size_t>(group)], row[h]);
    }
  }
  return out;
}

std::vector<std::vector<int>> SelectRazorHeads(const HeadMatrix& kv_induction,
                                               const HeadMatrix& kv_echo, double induction_ratio,
                                               double echo_ratio) {
  std::vector<std::vector<int>> heads(kv_induction.size());
  std::set<std::pair<int, int>> chosen;
  auto take_top = [&](const HeadMatrix& scores, double ratio) {
    std::vector<std::pair<double, std::pair<int, int>>> order;
    for (size_t l = 0; l < scores.size(); ++l) {
      for (size_t h = 0; h < scores[l].size(); ++h) {
        order.push_back({scores[l][h], {static_cast<int>(l), static_cast<int>(h)}});
      }
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    const double want = std::ceil(ratio * static_cast<double>(order.size()) - 1e-9);
    const size_t n = std::min(order.size(), static_cast<size_t>(std::max(0.0, want)));
    for (size_t i = 0; i < n; ++i) chosen.insert(order[i].second);
  };
  take_top(kv_induction, induction_ratio);
  take_top(kv_echo, echo_ratio);
  for (const auto& [l, h] : chosen) heads[static_cast<size_t>(l)].push_back(h);
  return heads;
}

int32_t TopKey(std::span<const float> probs) {
  return static_cast<int32_t>(std::max_element(probs.begin(), probs.end()) - probs.begin());
}

void CountCopyPaste(const std::vector<std::vector<int32_t>>& top_key,
                    std::span<const int32_t> prompt, int32_t needle_begin, int32_t needle_end,
                    int32_t generated, HeadMatrix& score) {
  if (needle_begin < 0 || needle_end <= needle_begin) return;
  const double weight = 1.0 / static_cast<double>(needle_end - needle_begin);
  for (size_t l = 0; l < top_key.size(); ++l) {
    for (size_t h = 0; h < top_key[l].size(); ++h) {
      const int32_t j = top_key[l][h];
      if (j >= needle_begin && j < needle_end && static_cast<size_t>(j) < prompt.size() &&
          prompt[static_cast<size_t>(j)] == generated) {
        score[l][h] += weight;
      }
    }
  }
}

std::pair<int32_t, int32_t> FindNeedleSpan(std::span<const int32_t> prompt,
                                           std::span<const int32_t> needle) {
  const std::set<int32_t> needle_set(needle.begin(), needle.end());
  if (needle_set.empty()) return {-1, -1};
  size_t best = 0, best_at = 0;
  for (size_t i = 0; i < prompt.size(); ++i) {
    const size_t end = std::min(prompt.size(), i + needle.size());
    const std::set<int32_t> window(prompt.begin() + static_cast<std::ptrdiff_t>(i),
                                   prompt.begin() + static_cast<std::ptrdiff_t>(end));
    size_t overlap = 0;
    for (int32_t t : window) overlap += needle_set.count(t);
    if (static_cast<double>(overlap) / static_cast<double>(needle_set.size()) > 0.9) {
      return {static_cast<int32_t>(i), static_cast<int32_t>(i + needle.size())};
    }
    if (overlap > best) std::tie(best, best_at) = std::pair(overlap, i);
  }
  if (2 * best < needle_set.size()) return {-1, -1};
  // The best window's run from its first to its last needle token.
  size_t begin = best_at, end = std::min(prompt.size(), best_at + needle.size());
  while (begin < end && !needle_set.count(prompt[begin])) ++begin;
  while (end > begin && !needle_set.count(prompt[end - 1])) --end;
  return {static_cast<int32_t>(begin), static_cast<int32_t>(end)};
}

double UnigramRecall(std::string_view reference, std::string_view response) {
  const std::vector<std::string> ref = Words(reference);
  if (ref.empty()) return 0.0;
  std::map<std::string, int> have;
  for (const std::string& w : Words(response)) ++have[w];
  int matched = 0;
  for (const std::string& w : ref) {
    auto it = have.find(w);
    if (it != have.end() && it->second > 0) {
      --it->second;
      ++matched;
    }
  }
  return static_cast<double>(matched) / static_cast<double>(ref.size());
}

StatusOr<RazorProfile> ProfileRazor(models::LlamaModel& model, std::optional<int32_t> bos,
                                    const RazorOptions& options) {
  const models::ModelConfig& c = model.config();
  RazorProfile out;
  out.options = options;
  RazorOptions& o = out.options;
  if (o.token_lo < 0 && o.token_hi < 0)
    std::tie(o.token_lo, o.token_hi) = DefaultRazorRange(c.vocab_size);
  if (o.token_lo < 0 || o.token_hi <= o.token_lo || o.token_hi > c.vocab_size) {
    return InvalidArgument("token range [{}, {}) is not a non-empty range of the {} token ids",
                           o.token_lo, o.token_hi, c.vocab_size);
  }
  if (o.length < 1 || o.repetitions < 2) {
    return InvalidArgument("razor input needs length >= 1 and at least 2 repetitions (got {}, {})",
                           o.length, o.repetitions);
  }
  out.bos = bos;
  out.tokens = RazorTokens(bos, o.length, o.repetitions, o.token_lo, o.token_hi, o.seed);
  const int total = static_cast<int>(out.tokens.size());
  if (total > c.max_position_embeddings) {
    return InvalidArgument("razor input of {} tokens exceeds the model's context of {} tokens",
                           total, c.max_position_embeddings);
  }
  const int32_t first_scored = (bos ? 1 : 0) + o.length;  // repetitions 2..
  RazorScorer scorer(out.tokens, first_scored, c.num_layers, c.num_heads);
  const float scale = models::AttentionScale(c);
  const int threads = ResolveThreads(o.threads);
  Status observed = Status::Ok();
  auto cache = DenseCache(model, total);
  kvcache::SequenceKv kv(*cache);
  HW_RETURN_IF_ERROR(kv.Reserve(total));
  HostView host(model.backend());
  {
    models::ScopedAttentionObserver scope(model, [&](int layer, const Tensor& q,
                                                     const kernels::KvPoolView& pool,
                                                     const PagedAttentionBatch& batch) {
      if (!observed.ok()) return;
      observed = host.Update(q, pool, batch);
      if (!observed.ok()) return;
      observed =
          ForEachAttentionRow(host.q(), host.pool(), host.batch(), scale, threads,
                              [&](int64_t, int head, int32_t pos, std::span<const float> probs) {
                                scorer.AddRow(layer, head, pos, probs);
                              });
    });
    Prefill(model, *cache, kv, out.tokens, o.prefill_chunk);
  }
  if (!observed.ok()) return observed;
  out.echo = scorer.Echo();
  out.induction = scorer.Induction();
  const int group = c.num_heads / c.num_kv_heads;
  out.kv_echo = MaxOverGroups(out.echo, group);
  out.kv_induction = MaxOverGroups(out.induction, group);
  out.heads = SelectRazorHeads(out.kv_induction, out.kv_echo, o.induction_ratio, o.echo_ratio);
  return out;
}

namespace {

constexpr std::string_view kIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n";
constexpr std::string_view kFiller[] = {"The grass is green. ", "The sky is blue. ",
                                        "The sun is yellow. ", "Here we go. ",
                                        "There and back again. "};
constexpr std::string_view kQuestion =
    "\nWhat is the special magic number? The special magic number is";

std::string NeedleText(const std::string& answer) {
  return fmt::format("The special magic number is {}. ", answer);
}

// The prompt for about `context_length` tokens with the needle after sentence
// round(depth% of the haystack's sentences).
std::string PasskeyPrompt(const tokenizer::Tokenizer& tok, int context_length, double depth,
                          const std::string& answer) {
  std::string block;
  for (std::string_view s : kFiller) block += s;
  const double block_tokens = static_cast<double>(tok.Encode(block, false).size());
  const std::string fixed = std::string(kIntro) + NeedleText(answer) + std::string(kQuestion);
  const int fixed_tokens = static_cast<int>(tok.Encode(fixed, true).size());
  const int sentences = std::max(
      0, static_cast<int>(std::lround((context_length - fixed_tokens) * 5.0 / block_tokens)));
  const int needle_at = static_cast<int>(std::lround(depth / 100.0 * sentences));
  std::string text(kIntro);
  for (int i = 0; i <= sentences; ++i) {
    if (i == needle_at) text += NeedleText(answer);
    if (i < sentences) text += kFiller[i % 5];
  }
  text += kQuestion;
  return text;
}

struct DecodeResult {
  std::vector<int32_t> output;
  HeadMatrix score;
};

// Prefill prompt[:-1], then greedy steps from the last prompt token, each step's attention
// rows reduced to their top key and the generated token checked for copy-paste events.
StatusOr<DecodeResult> DecodeWithEvents(models::LlamaModel& model, const tokenizer::Tokenizer& tok,
                                        std::span<const int32_t> eos_ids,
                                        std::span<const int32_t> prompt, int32_t needle_begin,
                                        int32_t needle_end, const RetrievalOptions& o) {
  const models::ModelConfig& c = model.config();
  const int total = static_cast<int>(prompt.size()) + o.max_new_tokens;
  auto cache = DenseCache(model, total);
  kvcache::SequenceKv kv(*cache);
  HW_RETURN_IF_ERROR(kv.Reserve(total));
  Prefill(model, *cache, kv, prompt.first(prompt.size() - 1), o.prefill_chunk);
  ModelRunner runner(model, *cache);

  DecodeResult out;
  out.score = Zeros(c.num_layers, c.num_heads);
  std::vector<std::vector<int32_t>> top_key(static_cast<size_t>(c.num_layers),
                                            std::vector<int32_t>(static_cast<size_t>(c.num_heads)));
  const float scale = models::AttentionScale(c);
  const int threads = ResolveThreads(o.threads);
  Status observed = Status::Ok();
  HostView host(model.backend());
  models::ScopedAttentionObserver scope(
      model, [&](int layer, const Tensor& q, const kernels::KvPoolView& pool,
                 const PagedAttentionBatch& batch) {
        if (!observed.ok()) return;
        observed = host.Update(q, pool, batch);
        if (!observed.ok()) return;
        observed = ForEachAttentionRow(
            host.q(), host.pool(), host.batch(), scale, threads,
            [&](int64_t, int head, int32_t, std::span<const float> probs) {
              top_key[static_cast<size_t>(layer)][static_cast<size_t>(head)] = TopKey(probs);
            });
      });
  int32_t input = prompt.back();
  for (int step = 0; step < o.max_new_tokens; ++step) {
    const int pos = static_cast<int>(prompt.size()) - 1 + step;
    const BatchEntry e{&kv, std::span<const int32_t>(&input, 1), pos, false};
    const int32_t next = Argmax(runner.ForwardToHost(std::span<const BatchEntry>(&e, 1)));
    if (!observed.ok()) return observed;
    CountCopyPaste(top_key, prompt, needle_begin, needle_end, next, out.score);
    out.output.push_back(next);
    const bool eos = std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end();
    if (eos ||
        tok.Decode(std::span<const int32_t>(&next, 1), false).find('\n') != std::string::npos) {
      break;
    }
    input = next;
  }
  return out;
}

}  // namespace

StatusOr<RetrievalProfile> ProfileRetrieval(models::LlamaModel& model,
                                            const tokenizer::Tokenizer& tok,
                                            std::span<const int32_t> eos_ids,
                                            const RetrievalOptions& options) {
  const models::ModelConfig& c = model.config();
  if (options.context_lengths.empty() || options.num_depths < 1 || options.max_new_tokens < 1) {
    return InvalidArgument(
        "retrieval profiling needs context lengths, at least one depth and one new token");
  }
  RetrievalProfile out;
  out.options = options;
  out.scores.assign(static_cast<size_t>(c.num_layers),
                    std::vector<std::vector<double>>(static_cast<size_t>(c.num_heads)));
  uint64_t state = options.seed;
  for (int length : options.context_lengths) {
    for (int d = 0; d < options.num_depths; ++d) {
      RetrievalSample s;
      s.context_length = length;
      s.depth = options.num_depths == 1 ? 0.0 : 100.0 * d / (options.num_depths - 1);
      s.answer = std::to_string(10000 + SplitMix64(state) % 90000);
      const std::vector<int32_t> prompt =
          tok.Encode(PasskeyPrompt(tok, length, s.depth, s.answer), true);
      s.prompt_tokens = static_cast<int>(prompt.size());
      if (s.prompt_tokens + options.max_new_tokens > c.max_position_embeddings) {
        return InvalidArgument(
            "a {}-token prompt plus {} new tokens exceeds the model's context of {} tokens; "
            "lower --context-lengths",
            s.prompt_tokens, options.max_new_tokens, c.max_position_embeddings);
      }
      const std::vector<int32_t> needle =
          tok.Encode(fmt::format("The special magic number is {}.", s.answer), false);
      std::tie(s.needle_begin, s.needle_end) = FindNeedleSpan(prompt, needle);
      HW_ASSIGN_OR_RETURN(DecodeResult r, DecodeWithEvents(model, tok, eos_ids, prompt,
                                                           s.needle_begin, s.needle_end, options));
      s.response = tok.Decode(r.output, true);
      s.recall = UnigramRecall(s.answer, s.response);
      s.accepted = s.needle_begin >= 0 && s.recall > options.min_recall;
      if (s.accepted) {
        for (int l = 0; l < c.num_layers; ++l) {
          for (int h = 0; h < c.num_heads; ++h) {
            out.scores[static_cast<size_t>(l)][static_cast<size_t>(h)].push_back(
                r.score[static_cast<size_t>(l)][static_cast<size_t>(h)]);
          }
        }
      }
      out.samples.push_back(std::move(s));
    }
  }
  return out;
}

nlohmann::ordered_json RazorProfileJson(const RazorProfile& p, const ModelShape& identity) {
  const RazorOptions& o = p.options;
  nlohmann::ordered_json j;
  j["schema"] = kProfileSchema;
  j["identity"] = IdentityJson(identity);
  j["method"] = "razor";
  j["settings"] = {{"repeat_length", o.length},
                   {"repetitions", o.repetitions},
                   {"seed", o.seed},
                   {"token_range", {o.token_lo, o.token_hi}},
                   {"bos", p.bos ? nlohmann::ordered_json(*p.bos) : nlohmann::ordered_json()},
                   {"input_tokens", p.tokens.size()},
                   {"induction_ratio", o.induction_ratio},
                   {"echo_ratio", o.echo_ratio}};
  nlohmann::ordered_json heads = nlohmann::ordered_json::object();
  for (size_t l = 0; l < p.heads.size(); ++l) heads[std::to_string(l)] = p.heads[l];
  j["heads"] = heads;
  j["kv_head_scores"] = {{"induction", p.kv_induction}, {"echo", p.kv_echo}};
  j["query_head_scores"] = {{"induction", p.induction}, {"echo", p.echo}};
  return j;
}

nlohmann::ordered_json RetrievalProfileJson(const RetrievalProfile& p, const ModelShape& identity) {
  const RetrievalOptions& o = p.options;
  nlohmann::ordered_json j;
  j["schema"] = kProfileSchema;
  j["identity"] = IdentityJson(identity);
  j["method"] = "retrieval";
  std::vector<double> depths;
  depths.reserve(static_cast<size_t>(std::max(o.num_depths, 0)));
  for (int d = 0; d < o.num_depths; ++d) {
    depths.push_back(o.num_depths == 1 ? 0.0 : 100.0 * d / (o.num_depths - 1));
  }
  j["settings"] = {{"context_lengths", o.context_lengths}, {"depths", depths},
                   {"max_new_tokens", o.max_new_tokens},   {"seed", o.seed},
                   {"min_recall", o.min_recall},           {"needle", NeedleText("NNNNN")}};
  nlohmann::ordered_json scores = nlohmann::ordered_json::object();
  for (size_t l = 0; l < p.scores.size(); ++l) {
    for (size_t h = 0; h < p.scores[l].size(); ++h) {
      scores[fmt::format("{}-{}", l, h)] = p.scores[l][h];
    }
  }
  j["scores"] = scores;
  size_t accepted = 0;
  nlohmann::ordered_json samples = nlohmann::ordered_json::array();
  for (const RetrievalSample& s : p.samples) {
    accepted += s.accepted ? 1 : 0;
    samples.push_back({{"context_length", s.context_length},
                       {"depth", s.depth},
                       {"prompt_tokens", s.prompt_tokens},
                       {"needle_span", {s.needle_begin, s.needle_end}},
                       {"answer", s.answer},
                       {"response", s.response},
                       {"recall", s.recall},
                       {"accepted", s.accepted}});
  }
  j["accepted_samples"] = accepted;
  j["samples"] = samples;
  return j;
}

}  // namespace headwise::engine::attention
