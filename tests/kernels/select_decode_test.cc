// Decode-time selection on the CPU backend (TidalDecode, Recycled Attention, Quest;
// kernels::KvSelect, kernels::SelectDecodeBatch, kernels/cpu/select_decode.h). Each method must
// equal attention over its selection exactly: dense PagedAttention bit for bit where the
// selection is every key (and on the heads that choose), SparseDecodeAttention bit for bit over
// the list this test computes on its own (from the kernel's logits, or from its own page bounds),
// and a double-precision masked reference within float rounding. Batches mix a prefill chunk with
// selecting and non-selecting decode sequences of several layouts, over GQA groups of 1, 4 and 8.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/backend_util.h"
#include "tests/kernels/abort_message.h"
#include "tests/kernels/block_tables.h"
#include "tests/kernels/select_rules.h"

namespace headwise::kernels {
namespace {

using testing::HostBlockTable;
using testing::HostTokens;
using testing::LayoutSpec;
using testing::Upload;
using testing::UploadI32;
// Rules (kernels::KvSelect) as tests write them.
using testing::Consume;
using testing::Dense;
using testing::Pages;
using testing::Recycle;
using testing::Rule;
using testing::Select;

std::vector<float> Random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// An output buffer filled with one NaN pattern, so an unwritten element cannot pass and a
// skipped one is recognised bit for bit.
Buffer Poisoned(Backend& be, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kF32, shape);
  std::fill(b.view().ptr<float>(), b.view().ptr<float>() + b.view().numel(), NAN);
  return b;
}
Buffer FilledI32(Backend& be, std::initializer_list<int64_t> shape, int32_t value) {
  Buffer b = be.Allocate(DType::kI32, shape);
  std::fill(b.view().ptr<int32_t>(), b.view().ptr<int32_t>() + b.view().numel(), value);
  return b;
}
bool SameBits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

// --- rules --------------------------------------------------------------------------------
// (KvSelect builders: tests/kernels/select_rules.h)

using Rules = std::vector<std::vector<KvSelect>>;  // [layout][KV head]

// The ways a set per KV head is reduced over its group, and a set per query head.
struct Mode {
  bool per_q_head;
  KvReduce reduce;
  const char* name;
};
const Mode kModes[] = {{true, kReduceSumSoftmax, "per query head"},
                       {false, kReduceSumSoftmax, "sum_softmax"},
                       {false, kReduceSumLogits, "sum_logits"},
                       {false, kReduceMax, "max"}};

// GQA groups of 1, 4 and 8.
struct Heads {
  int hq, hkv;
};
const Heads kGroups[] = {{4, 4}, {8, 2}, {16, 2}};

// --- the world: sequences, pages, pools, selection state ----------------------------------

// One sequence of a step: its layout, its keys after the step, how many of them are this step's
// queries (1: decode) and its selection slot (-1: attends densely).
struct SeqSpec {
  int layout, len, queries, slot;
};

struct World {
  std::unique_ptr<Backend> be = CreateCpuBackend(2);
  std::mt19937 rng{std::random_device{}()};
  int hq, hkv, d = 16, page_size = 8;
  float scale = 0.25f;
  HostBlockTable geometry;  // pages of every sequence at its longest
  World(Heads heads, int num_layouts, const std::vector<int>& seq_layout,
        const std::vector<int>& max_len, int page)
      : hq(heads.hq), hkv(heads.hkv), page_size(page) {
    geometry = testing::MakeBlockTable(
        std::vector<LayoutSpec>(static_cast<size_t>(num_layouts),
                                LayoutSpec(static_cast<size_t>(hkv), testing::FullHead())),
        seq_layout, max_len, page_size, rng);
  }
  int group() const { return hq / hkv; }
};

// One layer: its rules, its keys and values (random in every slot: what a slot holds past a
// sequence's length is garbage no operation may read), and Quest's page bounds.
struct Layer {
  Rules rules;
  HostBlockTable table;
  Buffer k, v, kmin, kmax;
  int page_size = 0, d = 0;
  KvPoolView pool() const {
    KvPoolView p{k.view(), v.view(), page_size};
    if (!kmin.empty()) {
      p.kmin = kmin.view();
      p.kmax = kmax.view();
    }
    return p;
  }
  const float* K(int seq, int h, int pos) const {
    return k.view().ptr<float>() + table.Slot(seq, h, pos) * d;
  }
  const float* V(int seq, int h, int pos) const {
    return v.view().ptr<float>() + table.Slot(seq, h, pos) * d;
  }
};
Layer MakeLayer(World& w, const Rules& rules, bool bounds) {
  Layer l;
  l.rules = rules;
  l.table = w.geometry;
  l.table.SetSelects(rules);
  l.page_size = w.page_size;
  l.d = w.d;
  const int pages = l.table.num_pages;
  l.k = Upload(*w.be, Random(static_cast<size_t>(pages * w.page_size * w.d), w.rng),
               {pages, w.page_size, w.d});
  l.v = Upload(*w.be, Random(static_cast<size_t>(pages * w.page_size * w.d), w.rng),
               {pages, w.page_size, w.d});
  if (bounds) {
    l.kmin = Poisoned(*w.be, {pages, w.d});
    l.kmax = Poisoned(*w.be, {pages, w.d});
  }
  return l;
}

struct State {
  Buffer positions, counts, chosen_len, steps, refresh, q_ref;
  SelectState view;
  int slots = 0, sets = 0, hq = 0, budget = 0, width = 0;
  int SetAt(int slot, int set) const { return slot * sets + set; }
  int RowAt(int slot, int set, int row) const { return SetAt(slot, set) * hq + row; }
  int32_t I(const Buffer& b, int at) const { return b.view().ptr<int32_t>()[at]; }
};
State MakeState(World& w, int slots, int sets, int budget) {
  State s;
  s.slots = slots;
  s.sets = sets;
  s.hq = w.hq;
  s.budget = budget;
  s.width = w.hq * w.d;
  s.positions = FilledI32(*w.be, {slots, sets, w.hq, budget}, -7);
  s.counts = FilledI32(*w.be, {slots, sets, w.hq}, -7);
  s.chosen_len = FilledI32(*w.be, {slots, sets}, -1);  // a slot given to a sequence
  s.steps = FilledI32(*w.be, {slots, sets}, 0);
  s.refresh = FilledI32(*w.be, {slots, sets}, -7);
  s.q_ref = Poisoned(*w.be, {slots, sets, w.hq * w.d});
  s.view = {s.positions.view(), s.counts.view(),  s.chosen_len.view(),
            s.steps.view(),     s.refresh.view(), s.q_ref.view()};
  return s;
}

// --- one layer of one step -----------------------------------------------------------------

struct StepRun {
  HostTokens tokens;
  std::vector<int32_t> seq_token, seq_len, slot;
  int max_len = 0;
  std::vector<float> q;       // [T, hq, d]
  std::vector<float> paged;   // out after PagedAttention alone
  std::vector<float> out;     // after the selection operations too
  std::vector<float> plain;   // PagedAttention with no sequence selecting: every head dense
  std::vector<float> scores;  // [S, hq, max_len]
};

HostTokens TokensOf(const std::vector<SeqSpec>& seqs) {
  std::vector<int> begin, end;
  for (const SeqSpec& s : seqs) {
    begin.push_back(s.len - s.queries);
    end.push_back(s.len);
  }
  return testing::MakeTokens(begin, end);
}

// Runs the step's layer as the model does: UpdatePageSummaries (after the keys are written: here
// they are in the pool already), PagedAttention, then SelectionGate, ScoreAttention, SelectTopK
// and SelectedAttention. q: the step's queries [T, hq, d], random when empty.
StepRun RunLayer(World& w, Layer& layer, const std::vector<SeqSpec>& seqs, State& state,
                 std::vector<float> q = {}) {
  Backend& be = *w.be;
  StepRun r;
  r.tokens = TokensOf(seqs);
  const int64_t t = r.tokens.size();
  const auto num_seqs = static_cast<int64_t>(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    REQUIRE((seqs[s].slot < 0 || seqs[s].queries == 1));
    r.seq_token.push_back(r.tokens.query_start[s] + seqs[s].queries - 1);
    r.seq_len.push_back(seqs[s].len);
    r.slot.push_back(seqs[s].slot);
    r.max_len = std::max(r.max_len, seqs[s].len);
  }
  r.q = q.empty() ? Random(static_cast<size_t>(t * w.hq * w.d), w.rng) : std::move(q);
  REQUIRE(r.q.size() == static_cast<size_t>(t * w.hq * w.d));
  HostBlockTable host = layer.table;
  host.seq_slot = r.slot;
  const testing::BackendBlockTable selecting = testing::UploadTable(be, host, {});
  HostBlockTable dense_host = host;
  dense_host.any_select = false;  // no seq_slot: every head of every sequence dense
  const testing::BackendBlockTable dense = testing::UploadTable(be, dense_host, {});

  Buffer qb = Upload(be, r.q, {t, w.hq, w.d});
  Buffer seq_b = UploadI32(be, r.tokens.seq, {t}), pos_b = UploadI32(be, r.tokens.pos, {t});
  Buffer qs_b = UploadI32(be, r.tokens.query_start, {num_seqs + 1});
  const PagedAttentionBatch batch{seq_b.view(), pos_b.view(), selecting.view, qs_b.view(),
                                  r.tokens.max_query_len};
  const KvPoolView pool = layer.pool();
  be.UpdatePageSummaries(pool, batch);
  Buffer out = Poisoned(be, {t, w.hq, w.d});
  be.PagedAttention(qb.view(), pool, batch, w.scale, out.view());
  r.paged = testing::Download(be, out);

  Buffer token_b = UploadI32(be, r.seq_token, {num_seqs});
  Buffer len_b = UploadI32(be, r.seq_len, {num_seqs});
  Buffer scores = Poisoned(be, {num_seqs, w.hq, r.max_len});
  const SelectDecodeBatch sb{token_b.view(), len_b.view(), selecting.view,
                             state.view,     r.max_len,    w.page_size};
  be.SelectionGate(qb.view(), sb);
  be.ScoreAttention(qb.view(), pool, sb, w.scale, out.view(), scores.view());
  be.SelectTopK(qb.view(), scores.view(), sb);
  be.SelectedAttention(qb.view(), pool, sb, w.scale, out.view());
  r.out = testing::Download(be, out);
  r.scores = testing::Download(be, scores);

  Buffer plain = Poisoned(be, {t, w.hq, w.d});
  be.PagedAttention(qb.view(), pool,
                    PagedAttentionBatch{seq_b.view(), pos_b.view(), dense.view, qs_b.view(),
                                        r.tokens.max_query_len},
                    w.scale, plain.view());
  r.plain = testing::Download(be, plain);
  return r;
}

// Brings every page bound of the sequences up to date for their keys before this step's queries
// (the model summarises each chunk as it is written).
void SummarizeHistory(World& w, Layer& layer, const std::vector<SeqSpec>& seqs) {
  std::vector<int> begin(seqs.size(), 0), end;
  for (const SeqSpec& s : seqs) end.push_back(s.len - s.queries);
  const HostTokens tokens = testing::MakeTokens(begin, end);
  if (tokens.size() == 0) return;
  const testing::BackendBlockTable table = testing::UploadTable(*w.be, layer.table, {});
  Buffer seq_b = UploadI32(*w.be, tokens.seq, {tokens.size()});
  Buffer pos_b = UploadI32(*w.be, tokens.pos, {tokens.size()});
  w.be->UpdatePageSummaries(
      layer.pool(),
      PagedAttentionBatch{seq_b.view(), pos_b.view(), table.view, Tensor(), tokens.max_query_len});
}

// --- the test's own model of the selection ------------------------------------------------

// What the test expects of a set: chosen at chosen_len keys, steps since, the query then.
struct SetModel {
  int chosen_len = -1, steps = 0;
  std::vector<float> q_ref;
};
struct Model {
  std::map<std::pair<int, int>, SetModel> sets;                    // (slot, set)
  std::map<std::tuple<int, int, int>, std::vector<int32_t>> rows;  // (slot, set, row): positions
  int wrong_lists = 0;  // lists checked to give another result than the kernel's
  int refreshes = 0, reuses = 0;
  int boundary_ties = 0;  // sets whose last key (page) kept ties with the first left out
};

// Scores of candidates [first, last) of a set row from per-query-head scores s[g][j] (j <
// scored), as KvSelect says: the row's own (per query head), or reduced over the group.
std::vector<double> CandidateScores(const std::vector<std::vector<float>>& s, const KvSelect& sel,
                                    int row_g, int first, int last) {
  const size_t group = s.size();
  std::vector<double> lse(group, 0.0);
  for (size_t g = 0; g < group; ++g) {
    double max = -INFINITY, sum = 0.0;
    for (float x : s[g]) max = std::max(max, double{x});
    for (float x : s[g]) sum += std::exp(double{x} - max);
    lse[g] = max + std::log(sum);
  }
  std::vector<double> out;
  for (int j = first; j < last; ++j) {
    const auto ju = static_cast<size_t>(j);
    if (sel.per_q_head) {
      out.push_back(s[static_cast<size_t>(row_g)][ju]);
      continue;
    }
    double v = sel.reduce == kReduceMax ? -INFINITY : 0.0;
    for (size_t g = 0; g < group; ++g) {
      if (sel.reduce == kReduceSumSoftmax) v += std::exp(double{s[g][ju]} - lse[g]);
      if (sel.reduce == kReduceSumLogits) v += s[g][ju];
      if (sel.reduce == kReduceMax) v = std::max(v, double{s[g][ju]});
    }
    out.push_back(v);
  }
  return out;
}

// The `keep` best candidates (first + index), higher score first: a stable sort of the
// candidates in increasing position keeps ties in that order, so ties go to the lower position.
std::vector<int32_t> TopK(const std::vector<double>& score, int first, int keep) {
  std::vector<int32_t> order(score.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)];
  });
  order.resize(std::min(order.size(), static_cast<size_t>(std::max(keep, 0))));
  std::sort(order.begin(), order.end());
  for (auto& o : order) o += first;
  return order;
}

// The keys a set-attending head attends (KvSelect): sink, set and tail, each once, increasing.
std::vector<int32_t> Attended(const KvSelect& sel, int n, const std::vector<int32_t>& set,
                              int chosen_len, int page_size) {
  std::set<int32_t> keys(set.begin(), set.end());
  for (int j = 0; j < std::min(sel.sink, n); ++j) keys.insert(j);
  int tail = n - sel.recent;
  if (sel.decode == kDecodePages) tail = (n - 1) / page_size * page_size;
  if (sel.decode == kDecodeRecycle && sel.since_refresh) {
    tail = std::min(tail, chosen_len - sel.recent);
  }
  for (int j = std::max(tail, 0); j < n; ++j) keys.insert(j);
  return {keys.begin(), keys.end()};
}

// softmax(q . k * scale) . v over `list` of (seq, KV head h), in double.
std::vector<double> MaskedReference(const Layer& layer, const float* q, int seq, int h,
                                    const std::vector<int32_t>& list, float scale) {
  const int d = layer.d;
  std::vector<double> logits;
  double max = -INFINITY;
  for (int32_t j : list) {
    double dot = 0.0;
    for (int c = 0; c < d; ++c) dot += double{q[c]} * layer.K(seq, h, j)[c];
    logits.push_back(dot * scale);
    max = std::max(max, logits.back());
  }
  double z = 0.0;
  for (double& l : logits) z += (l = std::exp(l - max));
  std::vector<double> out(static_cast<size_t>(d), 0.0);
  for (size_t i = 0; i < list.size(); ++i) {
    for (int c = 0; c < d; ++c)
      out[static_cast<size_t>(c)] += logits[i] / z * layer.V(seq, h, list[i])[c];
  }
  return out;
}

// Quest's bound of each page of (seq, h) holding keys [0, n), for query q, times scale, from the
// keys themselves; rounded to f32 as the scores are stored.
std::vector<float> PageBounds(const Layer& layer, const float* q, int seq, int h, int n,
                              float scale) {
  const int ps = layer.page_size, d = layer.d;
  std::vector<float> bounds;
  for (int p = 0; p * ps < n; ++p) {
    double bound = 0.0;
    for (int c = 0; c < d; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (int j = p * ps; j < std::min(n, (p + 1) * ps); ++j) {
        lo = std::min(lo, layer.K(seq, h, j)[c]);
        hi = std::max(hi, layer.K(seq, h, j)[c]);
      }
      bound += std::max(double{q[c]} * hi, double{q[c]} * lo);
    }
    bounds.push_back(static_cast<float>(bound * scale));
  }
  return bounds;
}

// Checks one layer's step against the model and brings the model forward:
//  - PagedAttention alone left the rows of selecting heads untouched (the poison) and produced
//    every other row bit for bit as with no sequence selecting;
//  - the gate's decisions and counters (recycle);
//  - heads that choose: their dense output bit for bit, their logits (or page bounds), their
//    sets (the test's own top-k), chosen_len, steps and q_ref;
//  - heads that attend a set: bit for bit SparseDecodeAttention over the test's list, and the
//    double reference; a list with one key changed gives another result.
void CheckLayer(World& w, Layer& layer, const std::vector<SeqSpec>& seqs, const StepRun& r,
                const State& st, Model& model) {
  const int hq = w.hq, d = w.d, group = w.group();
  const auto row_floats = static_cast<size_t>(hq * d),
             group_floats = static_cast<size_t>(group * d);
  const float poison = NAN;
  std::vector<float> poisoned(group_floats, poison);
  // Rows of non-selecting sequences: untouched by selection, equal to dense.
  for (size_t s = 0; s < seqs.size(); ++s) {
    const size_t first = static_cast<size_t>(r.tokens.query_start[s]);
    const size_t n = static_cast<size_t>(seqs[s].queries) * row_floats;
    if (seqs[s].slot >= 0) continue;
    INFO("sequence " << s << " (not selecting)");
    CHECK(SameBits(r.paged.data() + first * row_floats, r.plain.data() + first * row_floats, n));
    CHECK(SameBits(r.out.data() + first * row_floats, r.plain.data() + first * row_floats, n));
  }
  // A q [S, hq, d] of the selecting sequences' query rows, for index-list attention.
  std::vector<float> q_seq(seqs.size() * row_floats, 0.0f);
  for (size_t s = 0; s < seqs.size(); ++s) {
    std::copy_n(r.q.data() + static_cast<size_t>(r.seq_token[s]) * row_floats, row_floats,
                q_seq.data() + s * row_floats);
  }
  Buffer q_seq_b = Upload(*w.be, q_seq, {static_cast<int64_t>(seqs.size()), hq, d});
  HostBlockTable dense_host = layer.table;
  dense_host.any_select = false;
  const testing::BackendBlockTable dense = testing::UploadTable(*w.be, dense_host, {});

  for (size_t s = 0; s < seqs.size(); ++s) {
    const SeqSpec& spec = seqs[s];
    if (spec.slot < 0) continue;
    const int n = spec.len, slot = spec.slot;
    const std::vector<KvSelect>& rules = layer.rules[static_cast<size_t>(spec.layout)];
    const size_t token = static_cast<size_t>(r.seq_token[s]);
    const float* q_row = r.q.data() + token * row_floats;
    // The gate: decided once per recycle set, before anything else changes the model.
    std::map<int, bool> refresh;  // recycle set -> refreshing
    for (const KvSelect& sel : rules) {
      if (sel.decode != kDecodeRecycle || refresh.count(sel.set)) continue;
      SetModel& m = model.sets[{slot, sel.set}];
      bool choose = m.chosen_len < 0 || m.steps + 1 >= sel.refresh_every;
      if (!choose && sel.refresh_below_cos) {
        double dot = 0, qq = 0, rr = 0;
        for (size_t i = 0; i < row_floats; ++i) {
          dot += double{q_row[i]} * m.q_ref[i];
          qq += double{q_row[i]} * q_row[i];
          rr += double{m.q_ref[i]} * m.q_ref[i];
        }
        choose = dot / std::sqrt(qq * rr) < sel.refresh_cos;
      }
      refresh[sel.set] = choose;
      INFO("sequence " << s << " slot " << slot << " recycle set " << sel.set);
      CHECK(st.I(st.refresh, st.SetAt(slot, sel.set)) == (choose ? 1 : 0));
      if (choose) {
        ++model.refreshes;
      } else {
        ++m.steps;
        ++model.reuses;
        CHECK(st.I(st.steps, st.SetAt(slot, sel.set)) == m.steps);
      }
    }
    std::map<int, bool> chosen_sets;  // sets chosen at this step: set -> recycle with cos rule
    for (int h = 0; h < w.hkv; ++h) {
      const KvSelect& sel = rules[static_cast<size_t>(h)];
      const size_t at = token * row_floats + static_cast<size_t>(h) * group_floats;
      const bool recycling = sel.decode == kDecodeRecycle && refresh.at(sel.set);
      const bool chooses = sel.decode == kDecodeSelect || sel.decode == kDecodePages || recycling;
      INFO("sequence " << s << " (" << n << " keys, slot " << slot << ") KV head " << h
                       << " decode " << sel.decode << " set " << sel.set << " budget " << sel.budget
                       << " sink " << sel.sink << " recent " << sel.recent);
      if (sel.decode == kDecodeDense) {
        CHECK(SameBits(r.paged.data() + at, r.plain.data() + at, group_floats));
        CHECK(SameBits(r.out.data() + at, r.plain.data() + at, group_floats));
        continue;
      }
      // PagedAttention left the head to the selection operations.
      CHECK(SameBits(r.paged.data() + at, poisoned.data(), group_floats));
      if (chooses) {
        // Per query head: its scores (logits or page bounds), checked against the test's own.
        std::vector<std::vector<float>> scores;
        for (int g = 0; g < group; ++g) {
          const int qh = h * group + g;
          const float* kernel = r.scores.data() + (s * static_cast<size_t>(hq) + qh) * r.max_len;
          const float* qv = q_row + qh * d;
          if (sel.decode == kDecodePages) {
            std::vector<float> bounds = PageBounds(layer, qv, static_cast<int>(s), h, n, w.scale);
            for (size_t p = 0; p < bounds.size(); ++p) {
              CHECK(kernel[p] == Approx(bounds[p]).margin(1e-5));
            }
            scores.push_back(std::move(bounds));
          } else {
            for (int j = 0; j < n; ++j) {
              double dot = 0.0;
              for (int c = 0; c < d; ++c)
                dot += double{qv[c]} * layer.K(static_cast<int>(s), h, j)[c];
              CHECK(kernel[j] == Approx(dot * w.scale).margin(1e-4));
            }
            scores.emplace_back(kernel, kernel + n);
          }
        }
        if (sel.decode != kDecodePages) {
          // The dense result, bit for bit.
          CHECK(SameBits(r.out.data() + at, r.plain.data() + at, group_floats));
        }
        int first = sel.sink, last = n - sel.recent, keep = sel.budget - sel.sink - sel.recent;
        const int ps = w.page_size;
        if (sel.decode == kDecodePages) {
          first = (sel.sink + ps - 1) / ps;
          last = (n - 1) / ps;
          keep = (sel.budget - sel.sink) / ps - 1;
        }
        for (int row_g = 0; row_g < (sel.per_q_head ? group : 1); ++row_g) {
          const int row = sel.per_q_head ? h * group + row_g : h;
          const std::vector<double> candidates =
              CandidateScores(scores, sel, row_g, first, std::max(first, last));
          std::vector<int32_t> set = TopK(candidates, first, keep);
          if (keep > 0 && static_cast<int>(candidates.size()) > keep) {
            // Whether the last one kept ties with the first one left out (ties to the lower).
            std::vector<double> sorted = candidates;
            std::sort(sorted.begin(), sorted.end(), std::greater<>());
            if (sorted[static_cast<size_t>(keep) - 1] == sorted[static_cast<size_t>(keep)]) {
              ++model.boundary_ties;
            }
          }
          if (sel.decode == kDecodePages) {
            std::vector<int32_t> positions;
            for (int32_t p : set)
              for (int i = 0; i < ps; ++i) positions.push_back(p * ps + i);
            set = positions;
          }
          const int32_t* got = st.positions.view().ptr<int32_t>() +
                               static_cast<int64_t>(st.RowAt(slot, sel.set, row)) * st.budget;
          const int32_t count = st.I(st.counts, st.RowAt(slot, sel.set, row));
          INFO("set row " << row);
          REQUIRE(count == static_cast<int32_t>(set.size()));
          CHECK(std::vector<int32_t>(got, got + count) == set);
          model.rows[{slot, sel.set, row}] = set;
        }
        chosen_sets[sel.set] = sel.decode == kDecodeRecycle && sel.refresh_below_cos;
        CHECK(st.I(st.chosen_len, st.SetAt(slot, sel.set)) == n);
        CHECK(st.I(st.steps, st.SetAt(slot, sel.set)) == 0);
        if (sel.decode != kDecodePages) continue;
        model.sets[{slot, sel.set}].chosen_len = n;  // the pages attended below
      }
      // Attends a set: consume, pages, recycle reusing.
      const SetModel& m = model.sets[{slot, sel.set}];
      if (sel.decode == kDecodeConsume) REQUIRE(m.chosen_len == n);
      std::vector<std::vector<int32_t>> lists;
      for (int g = 0; g < group; ++g) {
        const int row = sel.per_q_head ? h * group + g : h;
        const auto found = model.rows.find({slot, sel.set, row});
        REQUIRE(found != model.rows.end());
        lists.push_back(Attended(sel, n, found->second, m.chosen_len, w.page_size));
      }
      for (int g = 0; g < group; ++g) {
        const auto& list = lists[static_cast<size_t>(g)];
        const auto result =
            testing::IndexListAttention(*w.be, q_seq_b.view(), layer.pool(), dense.view, w.scale,
                                        {{static_cast<int>(s), h, list, {}}});
        const size_t o = at + static_cast<size_t>(g * d);
        INFO("query head " << h * group + g << ", " << list.size() << " keys attended");
        CHECK(SameBits(r.out.data() + o, result.out.data() + static_cast<size_t>(g * d),
                       static_cast<size_t>(d)));
        const std::vector<double> ref = MaskedReference(layer, q_row + (h * group + g) * d,
                                                        static_cast<int>(s), h, list, w.scale);
        for (int c = 0; c < d; ++c)
          CHECK(r.out[o + static_cast<size_t>(c)] ==
                Approx(ref[static_cast<size_t>(c)]).margin(1e-4));
        // The check can fail: one attended key swapped for one not attended changes the result.
        if (static_cast<int>(list.size()) < n) {
          std::vector<int32_t> wrong = list;
          std::vector<int32_t> left_out;
          for (int j = 0; j < n; ++j) {
            if (!std::binary_search(list.begin(), list.end(), j)) left_out.push_back(j);
          }
          wrong[wrong.size() / 2] = left_out[left_out.size() / 2];
          const auto other =
              testing::IndexListAttention(*w.be, q_seq_b.view(), layer.pool(), dense.view, w.scale,
                                          {{static_cast<int>(s), h, wrong, {}}});
          CHECK_FALSE(SameBits(r.out.data() + o, other.out.data() + static_cast<size_t>(g * d),
                               static_cast<size_t>(d)));
          ++model.wrong_lists;
        }
      }
    }
    for (const auto& [set, cos_rule] : chosen_sets) {
      SetModel& m = model.sets[{slot, set}];
      m.chosen_len = n;
      m.steps = 0;
      if (cos_rule) {
        m.q_ref.assign(q_row, q_row + row_floats);
        CHECK(SameBits(
            st.q_ref.view().ptr<float>() + static_cast<size_t>(st.SetAt(slot, set)) * row_floats,
            q_row, row_floats));
      }
    }
  }
  // Every output row was written: by PagedAttention or by a selection operation.
  CHECK(std::none_of(r.out.begin(), r.out.end(), [](float x) { return std::isnan(x); }));
}

// Rules of every head of a layout of hkv heads: `rule` on each, `dense_heads` left dense.
std::vector<KvSelect> LayoutRules(int hkv, const KvSelect& rule, std::set<int> dense_heads = {}) {
  std::vector<KvSelect> rules(static_cast<size_t>(hkv), rule);
  for (int h : dense_heads) rules[static_cast<size_t>(h)] = Dense();
  return rules;
}

// Rows [row * hq + h * group, + group) of an output, for (token row, KV head h).
bool HeadRowsEqual(const World& w, const std::vector<float>& a, const std::vector<float>& b,
                   int row, int h) {
  const size_t at = static_cast<size_t>((row * w.hq + h * w.group()) * w.d);
  return SameBits(a.data() + at, b.data() + at, static_cast<size_t>(w.group() * w.d));
}

TEST_CASE("PagedAttention leaves the selecting heads of selecting sequences alone", "[kernels]") {
  for (const Heads heads : kGroups) {
    INFO("hq " << heads.hq << " hkv " << heads.hkv);
    // Layout 0 every role and a dense head; layout 1 dense; sequences: a prefill chunk and a
    // non-selecting decode of layout 0, selecting decodes of both layouts.
    const std::vector<SeqSpec> seqs = {
        {0, 40, 6, -1}, {0, 33, 1, 0}, {0, 21, 1, -1}, {1, 50, 1, 1}, {0, 64, 1, 2}};
    World w(heads, 2, {0, 0, 0, 1, 0}, {40, 33, 21, 50, 64}, 8);
    std::vector<KvSelect> roles = {Select(0, 16, 2, 2), Dense(), Consume(0, 16, 2, 2),
                                   Recycle(1, 16, 2, 2, 3, true, std::nullopt, kReduceMax),
                                   Pages(2, 32, 8)};
    std::vector<KvSelect> layout0;
    for (int h = 0; h < w.hkv; ++h) layout0.push_back(roles[static_cast<size_t>(h) % roles.size()]);
    Layer layer = MakeLayer(w, {layout0, LayoutRules(w.hkv, Dense())}, true);
    SummarizeHistory(w, layer, seqs);
    const HostTokens tokens = TokensOf(seqs);
    const int64_t t = tokens.size();
    const std::vector<float> q = Random(static_cast<size_t>(t * w.hq * w.d), w.rng);
    Buffer qb = Upload(*w.be, q, {t, w.hq, w.d});
    Buffer seq_b = UploadI32(*w.be, tokens.seq, {t}), pos_b = UploadI32(*w.be, tokens.pos, {t});
    Buffer qs_b = UploadI32(*w.be, tokens.query_start, {static_cast<int64_t>(seqs.size()) + 1});
    // Runs PagedAttention with these slots (none: a table without selection) into a poisoned
    // output.
    auto paged = [&](const std::vector<int32_t>* slots) {
      HostBlockTable host = layer.table;
      if (slots) {
        host.seq_slot = *slots;
      } else {
        host.any_select = false;
      }
      const testing::BackendBlockTable table = testing::UploadTable(*w.be, host, {});
      Buffer out = Poisoned(*w.be, {t, w.hq, w.d});
      w.be->PagedAttention(qb.view(), layer.pool(),
                           PagedAttentionBatch{seq_b.view(), pos_b.view(), table.view, qs_b.view(),
                                               tokens.max_query_len},
                           w.scale, out.view());
      return testing::Download(*w.be, out);
    };
    const std::vector<float> plain = paged(nullptr);
    CHECK(std::none_of(plain.begin(), plain.end(), [](float x) { return std::isnan(x); }));
    std::vector<int32_t> slots;
    for (const SeqSpec& s : seqs) slots.push_back(s.slot);
    const std::vector<float> got = paged(&slots);
    const std::vector<int32_t> none(seqs.size(), -1);
    CHECK(SameBits(paged(&none).data(), plain.data(), plain.size()));  // no sequence selects
    int skipped = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int i = 0; i < seqs[s].queries; ++i) {
        const int row = tokens.query_start[s] + i;
        for (int h = 0; h < w.hkv; ++h) {
          const KvSelect& sel =
              layer.rules[static_cast<size_t>(seqs[s].layout)][static_cast<size_t>(h)];
          INFO("sequence " << s << " KV head " << h << " decode " << sel.decode);
          if (seqs[s].slot >= 0 && sel.decode != kDecodeDense) {
            const float* o = got.data() + (row * w.hq + h * w.group()) * w.d;
            CHECK(std::all_of(o, o + w.group() * w.d, [](float x) { return std::isnan(x); }));
            ++skipped;
          } else {
            CHECK(HeadRowsEqual(w, got, plain, row, h));
          }
        }
      }
    }
    CHECK(skipped >= 2 * (w.hkv - 1));
  }
}

TEST_CASE("TidalDecode: a select layer, then a consume layer, in mixed batches", "[kernels]") {
  for (const Heads heads : kGroups) {
    for (const Mode& mode : kModes) {
      INFO("hq " << heads.hq << " hkv " << heads.hkv << ", sets " << mode.name);
      const std::vector<SeqSpec> seqs = {
          {1, 40, 7, -1},  // a prefill chunk
          {1, 77, 1, 0},   // selecting
          {2, 53, 1, 2},   // selecting, another layout and budget
          {1, 30, 1, -1},  // decode, not selecting
          {0, 25, 1, 1},   // selecting in a layout with no selecting heads
          {1, 18, 1, 3},   // a budget larger than the context
          {2, 9, 1, 4},    // shorter than sink + recent + ...: every key
      };
      World w(heads, 3, {1, 1, 2, 1, 0, 1, 2}, {40, 77, 53, 30, 25, 18, 9}, 8);
      const auto rule = [&](KvDecode decode, int budget, int sink, int recent) {
        return Rule(decode, 0, budget, sink, recent, mode.reduce, mode.per_q_head);
      };
      const Rules select_layer = {LayoutRules(w.hkv, Dense()),
                                  LayoutRules(w.hkv, rule(kDecodeSelect, 32, 4, 8)),
                                  LayoutRules(w.hkv, rule(kDecodeSelect, 24, 2, 3))};
      const Rules consume_layer = {LayoutRules(w.hkv, Dense()),
                                   LayoutRules(w.hkv, rule(kDecodeConsume, 32, 4, 8), {w.hkv - 1}),
                                   LayoutRules(w.hkv, rule(kDecodeConsume, 24, 2, 3), {0})};
      Layer a = MakeLayer(w, select_layer, false), b = MakeLayer(w, consume_layer, false);
      State st = MakeState(w, 5, 1, 32);
      Model model;
      const StepRun ra = RunLayer(w, a, seqs, st);
      CheckLayer(w, a, seqs, ra, st, model);
      const StepRun rb = RunLayer(w, b, seqs, st);
      CheckLayer(w, b, seqs, rb, st, model);
      // Budgets larger than the context: every key, dense attention bit for bit.
      for (int s : {5, 6}) {
        for (int h = 0; h < w.hkv; ++h) {
          INFO("sequence " << s << " KV head " << h);
          CHECK(HeadRowsEqual(w, rb.out, rb.plain, rb.seq_token[static_cast<size_t>(s)], h));
        }
      }
      CHECK(model.wrong_lists > 0);
    }
  }
}

TEST_CASE("Quest: the pages of the best bounds, in mixed batches", "[kernels]") {
  for (const Heads heads : kGroups) {
    for (const Mode& mode : kModes) {
      INFO("hq " << heads.hq << " hkv " << heads.hkv << ", pages " << mode.name);
      const std::vector<SeqSpec> seqs = {
          {1, 60, 9, -1},  // a prefill chunk
          {1, 100, 1, 0},  // selecting
          {2, 83, 1, 1},   // selecting, a sink that is no whole page
          {0, 20, 1, 2},   // selecting in a layout with no selecting heads
          {1, 30, 1, 3},   // a budget larger than the context: every key
          {2, 12, 1, -1},  // decode, not selecting
          {2, 7, 1, 4},    // one page: the tail page alone
      };
      World w(heads, 3, {1, 1, 2, 0, 1, 2, 2}, {60, 100, 83, 20, 30, 12, 7}, 8);
      const Rules rules = {
          LayoutRules(w.hkv, Dense()),
          LayoutRules(w.hkv, Pages(0, 64, 8, mode.reduce, mode.per_q_head), {w.hkv - 1}),
          LayoutRules(w.hkv, Pages(0, 40, 5, mode.reduce, mode.per_q_head))};
      Layer layer = MakeLayer(w, rules, true);
      SummarizeHistory(w, layer, seqs);
      State st = MakeState(w, 5, 1, 64);
      Model model;
      const StepRun r = RunLayer(w, layer, seqs, st);
      CheckLayer(w, layer, seqs, r, st, model);
      for (int s : {4, 6}) {
        for (int h = 0; h < w.hkv; ++h) {
          INFO("sequence " << s << " KV head " << h);
          CHECK(HeadRowsEqual(w, r.out, r.plain, r.seq_token[static_cast<size_t>(s)], h));
        }
      }
      CHECK(model.wrong_lists > 0);
    }
  }
}

TEST_CASE(
    "Recycled Attention: refresh first, reuse with the keys since, refresh by stride and "
    "by cosine",
    "[kernels]") {
  for (const Heads heads : kGroups) {
    INFO("hq " << heads.hq << " hkv " << heads.hkv);
    constexpr int kSteps = 7;
    // Sequence 0 refreshes every 5 steps and attends the keys since its set was chosen; sequence
    // 1 refreshes when its query turns (cosine below 0.8), per query head; sequence 2 is a
    // prefill chunk of a dense layout, sequence 3 a non-selecting decode.
    const auto seqs_at = [](int step) {
      return std::vector<SeqSpec>{
          {0, 50 + step, 1, 0}, {1, 45 + step, 1, 1}, {2, 30, 4, -1}, {0, 40 + step, 1, -1}};
    };
    World w(heads, 3, {0, 1, 2, 0}, {50 + kSteps, 45 + kSteps, 30, 40 + kSteps}, 8);
    const Rules rules = {
        LayoutRules(w.hkv, Recycle(0, 20, 2, 2, 5, true)),
        LayoutRules(w.hkv, Recycle(1, 16, 1, 3, 100, false, 0.8f, kReduceSumSoftmax, true),
                    {w.hkv - 1}),
        LayoutRules(w.hkv, Dense())};
    Layer layer = MakeLayer(w, rules, false);
    State st = MakeState(w, 2, 2, 20);
    Model model;
    const int row_floats = w.hq * w.d;
    std::vector<float> q1;  // sequence 1's query direction
    std::vector<int> refresh0, refresh1;
    for (int step = 0; step < kSteps; ++step) {
      INFO("step " << step);
      const std::vector<SeqSpec> seqs = seqs_at(step);
      const HostTokens tokens = TokensOf(seqs);
      std::vector<float> q = Random(static_cast<size_t>(tokens.size() * row_floats), w.rng);
      // Sequence 1: a new direction at steps 0 and 3, its opposite at 6, else a small turn.
      if (step == 0 || step == 3) q1 = Random(static_cast<size_t>(row_floats), w.rng);
      if (step == 6) {
        for (float& x : q1) x = -x;
      }
      const std::vector<float> turn = Random(static_cast<size_t>(row_floats), w.rng, 0.05f);
      for (int i = 0; i < row_floats; ++i) {
        q[static_cast<size_t>(tokens.query_start[1] * row_floats + i)] =
            q1[static_cast<size_t>(i)] + turn[static_cast<size_t>(i)];
      }
      const StepRun r = RunLayer(w, layer, seqs, st, q);
      CheckLayer(w, layer, seqs, r, st, model);
      refresh0.push_back(st.I(st.refresh, st.SetAt(0, 0)));
      refresh1.push_back(st.I(st.refresh, st.SetAt(1, 1)));
    }
    CHECK(refresh0 == std::vector<int>{1, 0, 0, 0, 0, 1, 0});
    CHECK(refresh1 == std::vector<int>{1, 0, 0, 1, 0, 0, 1});
    CHECK(model.refreshes == 5);
    CHECK(model.reuses == 9);
    CHECK(model.wrong_lists > 0);
  }
}

// Keys of (seq, KV head) repeating with period `period` (positions [0, period) copied on), so
// many keys, and pages when the period is a whole number of pages, score the same.
void RepeatKeys(Layer& layer, int seq, int h, int len, int period) {
  float* k = layer.k.view().ptr<float>();
  for (int j = period; j < len; ++j) {
    std::copy_n(layer.K(seq, h, j % period), layer.d, k + layer.table.Slot(seq, h, j) * layer.d);
  }
}

TEST_CASE("Ties between keys and between pages go to the lower position", "[kernels]") {
  for (const Mode& mode : kModes) {
    INFO("sets " << mode.name);
    World w({8, 2}, 3, {1, 2, 1, 2}, {77, 100, 53, 61}, 8);
    const std::vector<SeqSpec> seqs = {{1, 77, 1, 0}, {2, 100, 1, 1}, {1, 53, 1, 2}, {2, 61, 1, 3}};
    const Rules rules = {LayoutRules(w.hkv, Dense()),
                         LayoutRules(w.hkv, Select(0, 29, 3, 4, mode.reduce, mode.per_q_head)),
                         LayoutRules(w.hkv, Pages(0, 48, 8, mode.reduce, mode.per_q_head))};
    Layer layer = MakeLayer(w, rules, true);
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int h = 0; h < w.hkv; ++h) {
        RepeatKeys(layer, static_cast<int>(s), h, seqs[s].len, 2 * w.page_size);
      }
    }
    SummarizeHistory(w, layer, seqs);
    State st = MakeState(w, 4, 1, 48);
    Model model;
    const StepRun r = RunLayer(w, layer, seqs, st);
    CheckLayer(w, layer, seqs, r, st, model);
    CHECK(model.boundary_ties >= 4);
  }
}

// Keys written into a page at several steps, a page reused after it held another sequence's
// keys: its bounds are those of the keys written so far, and only pages heads' pages are kept.
TEST_CASE("UpdatePageSummaries bounds each page by the keys written so far", "[kernels]") {
  World w({4, 2}, 1, {0, 0}, {24, 20}, 8);
  Layer layer = MakeLayer(w, {{Pages(0, 32, 0), Dense()}}, true);
  const testing::BackendBlockTable table = testing::UploadTable(*w.be, layer.table, {});
  float* k = layer.k.view().ptr<float>();
  // Writes keys of (seq, pos) for pages head 0 and dense head 1, then summarises the batch.
  auto write = [&](const std::vector<std::pair<int, int>>& tokens, float offset, float spread) {
    std::vector<int32_t> seq, pos;
    for (auto [s, p] : tokens) {
      seq.push_back(s);
      pos.push_back(p);
      if (p < 0) continue;  // padding
      for (int h = 0; h < 2; ++h) {
        const std::vector<float> key = Random(static_cast<size_t>(w.d), w.rng, spread);
        for (int c = 0; c < w.d; ++c)
          k[layer.table.Slot(s, h, p) * w.d + c] = offset + key[static_cast<size_t>(c)];
      }
    }
    const auto t = static_cast<int64_t>(seq.size());
    Buffer seq_b = UploadI32(*w.be, seq, {t}), pos_b = UploadI32(*w.be, pos, {t});
    w.be->UpdatePageSummaries(
        layer.pool(), PagedAttentionBatch{seq_b.view(), pos_b.view(), table.view, Tensor(), 1});
  };
  // Page p of seq on head 0 must be bounded by its keys [p * 8, last].
  auto check = [&](int seq, int page, int last) {
    const int64_t at = layer.table.Slot(seq, 0, page * 8) / 8;
    INFO("sequence " << seq << " page " << page << " keys to " << last);
    for (int c = 0; c < w.d; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (int j = page * 8; j <= last; ++j) {
        lo = std::min(lo, layer.K(seq, 0, j)[c]);
        hi = std::max(hi, layer.K(seq, 0, j)[c]);
      }
      CHECK(layer.kmin.view().ptr<float>()[at * w.d + c] == lo);
      CHECK(layer.kmax.view().ptr<float>()[at * w.d + c] == hi);
    }
  };
  // Another sequence's keys, large, fill sequence 0's pages: a prefill chunk.
  std::vector<std::pair<int, int>> chunk;
  for (int p = 0; p < 24; ++p) chunk.push_back({0, p});
  write(chunk, 20.0f, 5.0f);
  for (int page = 0; page < 3; ++page) check(0, page, page * 8 + 7);
  // The pages handed to a new sequence 0: keys written one step at a time.
  for (int p = 0; p < 3; ++p) {
    write({{0, p}}, 0.0f, 1.0f);
    check(0, 0, p);
  }
  // A chunk across pages, with another sequence's tokens and padding in the batch.
  chunk.clear();
  for (int p = 3; p < 11; ++p) chunk.push_back({0, p});
  for (int p = 0; p < 5; ++p) chunk.push_back({1, p});
  chunk.push_back({1, -1});
  write(chunk, 0.0f, 1.0f);
  check(0, 0, 7);
  check(0, 1, 10);
  check(1, 0, 4);
  // A decode step into the partial page.
  write({{1, 5}}, 0.0f, 1.0f);
  check(1, 0, 5);
  // The dense head's pages were never summarised.
  for (int s = 0; s < 2; ++s) {
    for (int page = 0; page < 2; ++page) {
      const int64_t at = layer.table.Slot(s, 1, page * 8) / 8;
      CHECK(std::isnan(layer.kmin.view().ptr<float>()[at * w.d]));
      CHECK(std::isnan(layer.kmax.view().ptr<float>()[at * w.d]));
    }
  }
  // Without bounds in the pool the operation does nothing.
  Layer bare = MakeLayer(w, {{Pages(0, 32, 0), Dense()}}, false);
  Buffer seq_b = UploadI32(*w.be, {0}, {1}), pos_b = UploadI32(*w.be, {3}, {1});
  w.be->UpdatePageSummaries(
      bare.pool(), PagedAttentionBatch{seq_b.view(), pos_b.view(), table.view, Tensor(), 1});
}

// Misuse is a bug upstream (the model runner): the CPU backend stops with the context.
TEST_CASE("Selection operations stop on a stale set or missing sizes", "[kernels]") {
  using Catch::Matchers::Contains;
  using testing::AbortMessage;
  World w({4, 2}, 1, {0}, {40}, 8);
  w.be = CreateCpuBackend(1);
  const std::vector<SeqSpec> seqs = {{0, 40, 1, 0}};
  Layer consume = MakeLayer(w, {LayoutRules(2, Consume(0, 16, 2, 2))}, false);
  State st = MakeState(w, 1, 1, 16);
  // No select layer chose set 0 this step.
  CHECK_THAT(AbortMessage([&] { RunLayer(w, consume, seqs, st); }),
             Contains("sequence 0 KV head 0: set 0 was chosen at -1 keys, this step has 40"));
  // A selecting sequence with a prefill chunk.
  CHECK_THAT(AbortMessage([&] {
               std::vector<SeqSpec> chunk = {{0, 40, 3, -1}};
               HostBlockTable host = consume.table;
               host.seq_slot = {0};
               const testing::BackendBlockTable table = testing::UploadTable(*w.be, host, {});
               const HostTokens tokens = TokensOf(chunk);
               Buffer q = Upload(*w.be, Random(3 * 4 * 16, w.rng), {3, 4, 16});
               Buffer out = Poisoned(*w.be, {3, 4, 16});
               Buffer seq_b = UploadI32(*w.be, tokens.seq, {3});
               Buffer pos_b = UploadI32(*w.be, tokens.pos, {3});
               w.be->PagedAttention(
                   q.view(), consume.pool(),
                   PagedAttentionBatch{seq_b.view(), pos_b.view(), table.view, Tensor(), 3}, 0.25f,
                   out.view());
             }),
             Contains("sequence 0 selects (slot 0) with 3 query tokens"));
  // Pages without the page size (SelectTopK has no pool), and without bounds.
  Layer pages = MakeLayer(w, {LayoutRules(2, Pages(0, 32, 8))}, true);
  CHECK_THAT(AbortMessage([&] {
               w.page_size = 0;  // the batch's; the pool keeps 8
               RunLayer(w, pages, seqs, st);
             }),
             Contains("SelectDecodeBatch::page_size is 0"));
  Layer no_bounds = MakeLayer(w, {LayoutRules(2, Pages(0, 32, 8))}, false);
  CHECK_THAT(AbortMessage([&] { RunLayer(w, no_bounds, seqs, st); }),
             Contains("layout 0 KV head 0 selects pages but the pool has no page bounds"));
  // A set larger than the state holds.
  Layer select = MakeLayer(w, {LayoutRules(2, Select(0, 32, 2, 2))}, false);
  CHECK_THAT(AbortMessage([&] { RunLayer(w, select, seqs, st); }),
             Contains("a set of 28 positions over SelectState's budget 16"));
}

}  // namespace
}  // namespace headwise::kernels
