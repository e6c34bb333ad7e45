// Decode-time selection on the GPU (kernels::SelectDecodeBatch; kernels::KvSelect states the rules)
// against the CPU reference on identical inputs: each operation alone — page summaries, the refresh
// gate, score-emitting attention, top-k over scores the test writes, attention over sink + set +
// tail —, paged attention leaving selecting heads alone, and steps of three layers replayed from a
// CUDA graph. GQA groups of 1, 4 and 8, batches mixing layouts, selecting and dense sequences,
// budgets above the context, and contexts up to 128K.
//
// Sets are compared exactly where the reduction is exact on both sides (one query head's scores,
// their maximum, sums of small integers); otherwise an entry may differ only where its reduced
// score lies within a relative 1e-5 of the k-th best's (fp32 sums and exponentials in another
// order). The rules are also applied on the host (page bounds, gate decisions, top-k, the attended
// lists through SparseDecodeAttention), so that a disagreement says which side departs from them.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/backend_util.h"
#include "tests/gpu_under_test.h"
#include "tests/kernels/block_tables.h"
#include "tests/kernels/offload_scenario.h"
#include "tests/kernels/select_rules.h"

namespace headwise::kernels {
namespace {

using testing::HostBlockTable;
using testing::LayoutSpec;
using testing::RelError;
// Rules (kernels::KvSelect) as tests write them.
using testing::Consume;
using testing::Dense;
using testing::Pages;
using testing::Recycle;
using testing::Rule;
using testing::Select;

constexpr int kPageSize = 16;
constexpr double kBf16Tol = 1e-2;
constexpr double kNearTie = 1e-5;  // relative: reduced scores this close may rank either way

struct Pair {
  std::unique_ptr<Backend> cpu = CreateCpuBackend(2);
  std::unique_ptr<Backend> gpu = testing::CreateGpuUnderTest();  // tests/gpu_under_test.h
  unsigned seed = std::random_device{}();
  std::mt19937 rng{seed};
  Backend& at(int side) { return side == 0 ? *cpu : *gpu; }
};

std::vector<float> RandomBf16(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = BF16ToF32(F32ToBF16(dist(rng)));
  return v;
}

// v into t, f32 or bf16 (v holds bf16 values where t is bf16: exact).
void Put(Backend& be, const Tensor& t, const std::vector<float>& v) {
  REQUIRE(static_cast<int64_t>(v.size()) == t.numel());
  if (t.dtype == DType::kF32) {
    be.CopyFromHost(t, v.data(), v.size() * sizeof(float));
    return;
  }
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = F32ToBF16(v[i]);
  be.CopyFromHost(t, h.data(), h.size() * sizeof(uint16_t));
}
void PutI32(Backend& be, const Tensor& t, const std::vector<int32_t>& v) {
  REQUIRE(static_cast<int64_t>(v.size()) == t.numel());
  be.CopyFromHost(t, v.data(), v.size() * sizeof(int32_t));
}
// A buffer of the backend's KV / activation type (f32 on the CPU, bf16 on the GPU).
Buffer Stored(Backend& be, const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(be.kv_dtype(), shape);
  Put(be, b.view(), v);
  return b;
}
Buffer F32(Backend& be, const std::vector<float>& v, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kF32, shape);
  Put(be, b.view(), v);
  return b;
}
Buffer I32(Backend& be, const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  Buffer b = be.Allocate(DType::kI32, shape);
  PutI32(be, b.view(), v);
  return b;
}
std::vector<float> Read(Backend& be, const Tensor& t) {
  const auto n = static_cast<size_t>(t.numel());
  std::vector<float> out(n);
  if (t.dtype == DType::kF32) {
    be.CopyToHost(out.data(), t, n * sizeof(float));
    return out;
  }
  std::vector<uint16_t> raw(n);
  be.CopyToHost(raw.data(), t, n * sizeof(uint16_t));
  for (size_t i = 0; i < n; ++i) out[i] = BF16ToF32(raw[i]);
  return out;
}
std::vector<int32_t> ReadI32(Backend& be, const Tensor& t) {
  std::vector<int32_t> out(static_cast<size_t>(t.numel()));
  be.CopyToHost(out.data(), t, out.size() * sizeof(int32_t));
  return out;
}

// --- rules as tests write them (tests/kernels/select_rules.h) ---

using Rules = std::vector<KvSelect>;  // one layout's rule per KV head

// Layer l's rules for a batch of sequences of several layouts; every layer shares the sequences'
// pages (its keys), the query rows and the selection state.
struct Scenario {
  int hq = 8, hkv = 2, d = 64;
  std::vector<std::vector<Rules>> layers;  // [layer][layout]: rules per KV head
  std::vector<int> layout, len, slot;      // per sequence; slot -1: not selecting this step
  int extra_rows = 2;  // query rows of no selecting sequence: padding (position -1)
  int room = 0;        // keys each sequence's pages hold past len (later steps)
};

// The selection state on the host.
struct HostState {
  std::vector<int32_t> positions, counts, chosen_len, steps, refresh;
  std::vector<float> q_ref;
};

// One step's inputs on both backends (side 0 the CPU, 1 the GPU), built from a Scenario: a block
// table with shuffled pages, random keys and values, query rows in shuffled order with padding
// rows among them, and the state; outputs and scores poisoned with NaN.
class Selection {
 public:
  struct Layer {
    Buffer heads, selects, out, scores;
    BlockTable table;
  };
  struct Side {
    Buffer k, v, kmin, kmax, q, seq_layout, blocks, seq_slot, seq_token, seq_len, token_seq,
        token_pos;
    Buffer positions, counts, chosen_len, steps, refresh, q_ref;
    std::vector<Layer> layers;
    KvPoolView pool;
    SelectState state;
  };

  Selection(Pair& pair, Scenario scenario) : p(pair), sc(std::move(scenario)) {
    num_seqs = static_cast<int>(sc.len.size());
    group = sc.hq / sc.hkv;
    rows = num_seqs + sc.extra_rows;
    sets = 1;
    width = 1;
    bool cosine = false;
    for (const auto& layer : sc.layers) {
      for (const Rules& rules : layer) {
        REQUIRE(static_cast<int>(rules.size()) == sc.hkv);
        for (const KvSelect& r : rules) {
          sets = std::max(sets, r.set + 1);
          width = std::max(width, r.budget);
          cosine = cosine || r.refresh_below_cos;
        }
      }
    }
    slots = 1;
    for (int s : sc.slot) slots = std::max(slots, s + 2);  // a slot no sequence has, too
    max_len = 1;
    std::vector<int> capacity;
    for (int n : sc.len) {
      max_len = std::max(max_len, n + sc.room);
      capacity.push_back(n + sc.room);
    }
    const std::vector<LayoutSpec> specs(
        sc.layers.at(0).size(), LayoutSpec(static_cast<size_t>(sc.hkv), testing::FullHead()));
    table = testing::MakeBlockTable(specs, sc.layout, capacity, kPageSize, p.rng);
    const int pages = table.num_pages, d = sc.d, hq = sc.hq;
    k = RandomBf16(p.rng, static_cast<size_t>(pages) * kPageSize * d);
    v = RandomBf16(p.rng, static_cast<size_t>(pages) * kPageSize * d);
    q = RandomBf16(p.rng, static_cast<size_t>(rows) * hq * d);
    // Query rows: the sequences' in shuffled places, padding rows among them.
    std::vector<int> order(static_cast<size_t>(rows));
    for (int i = 0; i < rows; ++i) order[static_cast<size_t>(i)] = i;
    std::shuffle(order.begin(), order.end(), p.rng);
    seq_token.assign(order.begin(), order.begin() + num_seqs);
    token_seq.assign(static_cast<size_t>(rows), 0);
    token_pos.assign(static_cast<size_t>(rows), -1);
    seq_len.assign(sc.len.begin(), sc.len.end());
    SetLengths(seq_len);

    for (int side_index = 0; side_index < 2; ++side_index) {
      Backend& be = p.at(side_index);
      Side& s = side[side_index];
      s.k = Stored(be, k, {pages, kPageSize, d});
      s.v = Stored(be, v, {pages, kPageSize, d});
      const std::vector<float> nan_bounds(static_cast<size_t>(pages) * d, NAN);
      s.kmin = Stored(be, nan_bounds, {pages, d});
      s.kmax = Stored(be, nan_bounds, {pages, d});
      s.pool = KvPoolView{s.k.view(), s.v.view(), kPageSize, s.kmin.view(), s.kmax.view()};
      s.q = Stored(be, q, {rows, hq, d});
      s.seq_layout = I32(be, table.seq_layout, {num_seqs});
      s.blocks = I32(be, table.blocks, {num_seqs, table.max_blocks});
      s.seq_slot = I32(be, std::vector<int32_t>(sc.slot.begin(), sc.slot.end()), {num_seqs});
      s.seq_token = I32(be, seq_token, {num_seqs});
      s.seq_len = I32(be, seq_len, {num_seqs});
      s.token_seq = I32(be, token_seq, {rows});
      s.token_pos = I32(be, token_pos, {rows});
      s.positions = be.Allocate(DType::kI32, {slots, sets, hq, width});
      s.counts = be.Allocate(DType::kI32, {slots, sets, hq});
      s.chosen_len = be.Allocate(DType::kI32, {slots, sets});
      s.steps = be.Allocate(DType::kI32, {slots, sets});
      s.refresh = be.Allocate(DType::kI32, {slots, sets});
      if (cosine) s.q_ref = be.Allocate(DType::kF32, {slots, sets, int64_t{hq} * d});
      s.state =
          SelectState{s.positions.view(), s.counts.view(),  s.chosen_len.view(),
                      s.steps.view(),     s.refresh.view(), cosine ? s.q_ref.view() : Tensor()};
      for (size_t l = 0; l < sc.layers.size(); ++l) {
        Layer layer;
        std::vector<int32_t> heads = table.heads, selects;
        for (size_t lay = 0; lay < sc.layers[l].size(); ++lay) {
          for (int h = 0; h < sc.hkv; ++h) {
            const KvSelect& r = sc.layers[l][lay][static_cast<size_t>(h)];
            // KvHead: retention (6 ints), page, decode.
            heads[(lay * sc.hkv + h) * kKvHeadInts + 7] = r.decode;
            const auto* ints = reinterpret_cast<const int32_t*>(&r);
            selects.insert(selects.end(), ints, ints + kKvSelectInts);
          }
        }
        const auto layouts = static_cast<int64_t>(sc.layers[l].size());
        layer.heads = I32(be, heads, {layouts, sc.hkv, kKvHeadInts});
        layer.selects = I32(be, selects, {layouts, sc.hkv, kKvSelectInts});
        layer.out =
            Stored(be, std::vector<float>(static_cast<size_t>(rows) * hq * d, NAN), {rows, hq, d});
        layer.scores =
            F32(be, std::vector<float>(static_cast<size_t>(num_seqs) * hq * max_len, NAN),
                {num_seqs, hq, max_len});
        BlockTable& t = layer.table;
        t.heads = layer.heads.view();
        t.seq_layout = s.seq_layout.view();
        t.blocks = s.blocks.view();
        t.seq_slot = s.seq_slot.view();
        t.selects = layer.selects.view();
        t.max_full_heads = table.max_full_heads;
        t.max_ring_span = table.max_ring_span;
        s.layers.push_back(std::move(layer));
      }
    }
    SetState(InitialState());
  }

  // --- the step's metadata ---
  // Query row seq_token[s] of each sequence at position len[s] - 1; the other rows padding.
  void SetLengths(const std::vector<int32_t>& lens) {
    seq_len = lens;
    for (int s = 0; s < num_seqs; ++s) {
      token_seq[static_cast<size_t>(seq_token[s])] = s;
      token_pos[static_cast<size_t>(seq_token[s])] = lens[static_cast<size_t>(s)] - 1;
    }
  }
  void UploadLengths() {
    for (int i = 0; i < 2; ++i) {
      PutI32(p.at(i), side[i].seq_len.view(), seq_len);
      PutI32(p.at(i), side[i].token_seq.view(), token_seq);
      PutI32(p.at(i), side[i].token_pos.view(), token_pos);
    }
  }
  void SetQueries(const std::vector<float>& values) {
    q = values;
    for (int i = 0; i < 2; ++i) Put(p.at(i), side[i].q.view(), q);
  }

  SelectDecodeBatch Batch(int i, int l = 0) {
    Side& s = side[i];
    SelectDecodeBatch b{s.seq_token.view(), s.seq_len.view(),
                        s.layers[static_cast<size_t>(l)].table, s.state, max_len};
    b.page_size = kPageSize;
    // The layer's kinds, as the engine passes them (KvCache::layer_select_ops): the GPU skips
    // the passes no head of the layer needs.
    b.ops = 0;
    for (const Rules& rules : sc.layers[static_cast<size_t>(l)]) {
      for (const KvSelect& r : rules) b.ops |= SelectOpsOf(r);
    }
    return b;
  }
  PagedAttentionBatch Step(int i, int l = 0) {
    Side& s = side[i];
    return PagedAttentionBatch{s.token_seq.view(), s.token_pos.view(),
                               s.layers[static_cast<size_t>(l)].table, Tensor(), 1};
  }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(sc.d)); }
  Layer& layer(int i, int l = 0) { return side[i].layers[static_cast<size_t>(l)]; }

  // --- the operations ---
  void Summaries(int i, int l = 0) { p.at(i).UpdatePageSummaries(side[i].pool, Step(i, l)); }
  void Gate(int i, int l = 0) { p.at(i).SelectionGate(side[i].q.view(), Batch(i, l)); }
  void Score(int i, int l = 0) {
    p.at(i).ScoreAttention(side[i].q.view(), side[i].pool, Batch(i, l), scale(),
                           layer(i, l).out.view(), layer(i, l).scores.view());
  }
  void TopK(int i, int l = 0) {
    p.at(i).SelectTopK(side[i].q.view(), layer(i, l).scores.view(), Batch(i, l));
  }
  void Selected(int i, int l = 0) {
    p.at(i).SelectedAttention(side[i].q.view(), side[i].pool, Batch(i, l), scale(),
                              layer(i, l).out.view());
  }
  void Paged(int i, int l = 0) {
    p.at(i).PagedAttention(side[i].q.view(), side[i].pool, Step(i, l), scale(),
                           layer(i, l).out.view());
  }
  // Every position of every sequence written (as a prefill would), then the summaries.
  void SummarizeAllPages(int l = 0) {
    std::vector<int32_t> all_seq, all_pos;
    for (int s = 0; s < num_seqs; ++s) {
      for (int t = 0; t < sc.len[static_cast<size_t>(s)] + sc.room; ++t) {
        all_seq.push_back(s);
        all_pos.push_back(t);
      }
    }
    const auto n = static_cast<int64_t>(all_pos.size());
    for (int i = 0; i < 2; ++i) {
      Buffer ts = I32(p.at(i), all_seq, {n}), tp = I32(p.at(i), all_pos, {n});
      p.at(i).UpdatePageSummaries(
          side[i].pool, PagedAttentionBatch{ts.view(), tp.view(), layer(i, l).table, Tensor(), 1});
    }
  }

  // --- the state ---
  HostState InitialState() const {
    HostState st;
    const auto n = static_cast<size_t>(slots) * sets;
    st.positions.assign(n * sc.hq * width, -7);  // untouched entries stay recognizable
    st.counts.assign(n * sc.hq, 0);
    st.chosen_len.assign(n, -1);
    st.steps.assign(n, 0);
    st.refresh.assign(n, 0);
    if (side[0].q_ref.view().data != nullptr || side[1].q_ref.view().data != nullptr) {
      st.q_ref.assign(n * sc.hq * sc.d, 0.0f);
    }
    return st;
  }
  void SetState(const HostState& st, int only_side = -1) {
    for (int i = 0; i < 2; ++i) {
      if (only_side >= 0 && i != only_side) continue;
      Backend& be = p.at(i);
      PutI32(be, side[i].positions.view(), st.positions);
      PutI32(be, side[i].counts.view(), st.counts);
      PutI32(be, side[i].chosen_len.view(), st.chosen_len);
      PutI32(be, side[i].steps.view(), st.steps);
      PutI32(be, side[i].refresh.view(), st.refresh);
      if (!st.q_ref.empty()) Put(be, side[i].q_ref.view(), st.q_ref);
    }
  }
  HostState GetState(int i) {
    Backend& be = p.at(i);
    HostState st;
    st.positions = ReadI32(be, side[i].positions.view());
    st.counts = ReadI32(be, side[i].counts.view());
    st.chosen_len = ReadI32(be, side[i].chosen_len.view());
    st.steps = ReadI32(be, side[i].steps.view());
    st.refresh = ReadI32(be, side[i].refresh.view());
    if (side[i].q_ref.view().data != nullptr) st.q_ref = Read(be, side[i].q_ref.view());
    return st;
  }
  size_t SetIndex(int slot, int set) const { return static_cast<size_t>(slot) * sets + set; }
  size_t RowIndex(int slot, int set, int row) const {
    return SetIndex(slot, set) * sc.hq + static_cast<size_t>(row);
  }

  // --- the rules on the host ---
  const KvSelect& RuleOf(int l, int s, int h) const {
    return sc.layers[static_cast<size_t>(l)][static_cast<size_t>(sc.layout[static_cast<size_t>(s)])]
                    [static_cast<size_t>(h)];
  }
  int slot_of(int s) const { return sc.slot[static_cast<size_t>(s)]; }
  bool Chooses(const KvSelect& r, const HostState& st, int slot) const {
    return r.decode == kDecodeSelect || r.decode == kDecodePages ||
           (r.decode == kDecodeRecycle && st.refresh[SetIndex(slot, r.set)] != 0);
  }
  bool AttendsSet(const KvSelect& r, const HostState& st, int slot) const {
    return r.decode == kDecodeConsume || r.decode == kDecodePages ||
           (r.decode == kDecodeRecycle && st.refresh[SetIndex(slot, r.set)] == 0);
  }
  // The set rows a head's set occupies: its KV head, or each query head of its group.
  std::vector<std::pair<int, int>> SetRows(const KvSelect& r, int h) const {  // (row, g; -1: all)
    std::vector<std::pair<int, int>> out;
    if (r.per_q_head) {
      for (int g = 0; g < group; ++g) out.push_back({h * group + g, g});
    } else {
      out.push_back({h, -1});
    }
    return out;
  }
  // The d values of output row (query row of sequence s, query head qh).
  std::vector<float> OutRow(const std::vector<float>& out, int s, int qh) const {
    const auto base = (static_cast<size_t>(seq_token[static_cast<size_t>(s)]) * sc.hq + qh) * sc.d;
    return std::vector<float>(out.begin() + static_cast<long>(base),
                              out.begin() + static_cast<long>(base + sc.d));
  }

  Pair& p;
  Scenario sc;
  int num_seqs = 0, rows = 0, group = 1, sets = 1, width = 1, slots = 1, max_len = 1;
  HostBlockTable table;
  std::vector<float> k, v, q;
  std::vector<int32_t> seq_token, seq_len, token_seq, token_pos;
  Side side[2];
};

// --- top-k by the rules, on the host ---

// A set row's candidates (units: tokens, or pages) with their reduced scores in double, in
// position order from `first`, and how many to choose (KvSelect).
struct HostChoice {
  int unit = 1, first = 0, k = 0;
  std::vector<double> value;
};

HostChoice ChoiceOf(const Selection& c, const std::vector<float>& scores, int s, const KvSelect& r,
                    int h, int g) {
  HostChoice out;
  const int n = c.seq_len[static_cast<size_t>(s)];
  const bool pages = r.decode == kDecodePages;
  out.unit = pages ? kPageSize : 1;
  int units, end;
  if (pages) {
    units = (n + kPageSize - 1) / kPageSize;
    out.first = (r.sink + kPageSize - 1) / kPageSize;
    end = (n - 1) / kPageSize;
    out.k = (r.budget - r.sink) / kPageSize - 1;
  } else {
    units = n;
    out.first = r.sink;
    end = n - r.recent;
    out.k = r.budget - r.sink - r.recent;
  }
  end = std::max(end, out.first);
  out.k = std::max(0, std::min(out.k, end - out.first));
  const auto row = [&](int qh) {
    return scores.data() + (static_cast<size_t>(s) * c.sc.hq + qh) * c.max_len;
  };
  std::vector<double> lse(static_cast<size_t>(c.group), 0.0);
  if (g < 0 && r.reduce == kReduceSumSoftmax) {
    for (int gg = 0; gg < c.group; ++gg) {
      const float* x = row(h * c.group + gg);
      double m = -INFINITY, sum = 0.0;
      for (int j = 0; j < units; ++j) m = std::max(m, double(x[j]));
      for (int j = 0; j < units; ++j) sum += std::exp(double(x[j]) - m);
      lse[static_cast<size_t>(gg)] = m + std::log(sum);
    }
  }
  for (int j = out.first; j < end; ++j) {
    double v;
    if (g >= 0) {
      v = row(h * c.group + g)[j];
    } else if (r.reduce == kReduceSumSoftmax) {
      v = 0.0;
      for (int gg = 0; gg < c.group; ++gg)
        v += std::exp(double(row(h * c.group + gg)[j]) - lse[static_cast<size_t>(gg)]);
    } else if (r.reduce == kReduceSumLogits) {
      v = 0.0;
      for (int gg = 0; gg < c.group; ++gg) v += row(h * c.group + gg)[j];
    } else {
      v = -INFINITY;
      for (int gg = 0; gg < c.group; ++gg) v = std::max(v, double(row(h * c.group + gg)[j]));
    }
    out.value.push_back(v);
  }
  return out;
}

// The k best candidates (ties to the lower position), in increasing position, as units.
std::vector<int> Best(const HostChoice& c) {
  std::vector<int> idx(c.value.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int>(i);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) {
    return c.value[static_cast<size_t>(a)] > c.value[static_cast<size_t>(b)];
  });
  idx.resize(static_cast<size_t>(c.k));
  std::sort(idx.begin(), idx.end());
  for (int& i : idx) i += c.first;
  return idx;
}

// A stored set as units: its positions must be whole units in increasing order.
std::vector<int> Units(const std::vector<int32_t>& positions, size_t at, int count, int unit) {
  std::vector<int> out;
  if (count % unit != 0) {
    FAIL_CHECK("set of " << count << " positions is no whole number of " << unit << "-key pages");
    return out;
  }
  for (int i = 0; i < count; i += unit) {
    const int first = positions[at + static_cast<size_t>(i)];
    for (int u = 0; u < unit; ++u) {
      if (positions[at + static_cast<size_t>(i + u)] != first + u || first % unit != 0) {
        FAIL_CHECK("set entry " << i + u << " is " << positions[at + static_cast<size_t>(i + u)]
                                << ": not the page of " << first);
        return out;
      }
    }
    out.push_back(first / unit);
  }
  return out;
}

// got against want (both sets of units of choice c): equal, or (tol > 0) differing only in
// entries whose reduced score is within tol * max(|k-th best score|, floor) of the k-th best's:
// floor 0 for softmax sums (relative to the threshold however small), 1 for logits (their
// rounding scales with the logits, not with a threshold that may lie near 0). Returns the
// entries that differ.
int CompareSets(const std::vector<int>& got, const std::vector<int>& want, const HostChoice& c,
                double tol, double floor) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i] >= c.first);
    CHECK(got[i] < c.first + static_cast<int>(c.value.size()));
    if (i > 0) CHECK(got[i] > got[i - 1]);
  }
  std::vector<int> diff;
  std::set_symmetric_difference(got.begin(), got.end(), want.begin(), want.end(),
                                std::back_inserter(diff));
  if (diff.empty()) return 0;
  if (tol == 0.0) {
    FAIL_CHECK(diff.size() << " entries differ where the choice is exact");
    return static_cast<int>(diff.size());
  }
  std::vector<double> sorted = c.value;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  const double threshold = sorted[static_cast<size_t>(c.k - 1)];
  for (int u : diff) {
    if (u < c.first || u >= c.first + static_cast<int>(c.value.size())) continue;  // checked above
    const double v = c.value[static_cast<size_t>(u - c.first)];
    INFO("unit " << u << " score " << v << " k-th best " << threshold);
    CHECK(std::abs(v - threshold) <= tol * std::max(std::abs(threshold), floor));
  }
  return static_cast<int>(diff.size());
}

// ------------------------------------------------------------------------------------------------

TEST_CASE("CUDA page summaries match the CPU and the pages' key bounds", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {64, 128}) {
      Rules alternate, all_pages, dense;
      for (int h = 0; h < hkv; ++h) {
        alternate.push_back(h % 2 == 0 ? Pages(0, 64, 0) : Dense());
        all_pages.push_back(Pages(0, 64, 0));
        dense.push_back(Dense());
      }
      Scenario sc;
      sc.hq = hq;
      sc.hkv = hkv;
      sc.d = d;
      sc.layers = {{alternate, all_pages, dense}};
      sc.len = {1, 15, 16, 17, 100, 333};
      sc.layout = {0, 1, 2, 0, 1, 1};
      sc.slot = {-1, -1, -1, -1, -1, -1};
      Selection c(p, sc);
      // Written in three steps, as a prefill chunk, a chunk ending mid-page and a decode token
      // (the last with a padding row): positions [0, a), [a, n - 1), [n - 1, n).
      const auto step = [&](const std::vector<int>& from, const std::vector<int>& to) {
        std::vector<int32_t> ts, tp;
        for (int s = 0; s < c.num_seqs; ++s) {
          for (int t = from[static_cast<size_t>(s)]; t < to[static_cast<size_t>(s)]; ++t) {
            ts.push_back(s);
            tp.push_back(t);
          }
        }
        ts.push_back(0);
        tp.push_back(-1);
        const auto n = static_cast<int64_t>(tp.size());
        for (int i = 0; i < 2; ++i) {
          Buffer bs = I32(p.at(i), ts, {n}), bp = I32(p.at(i), tp, {n});
          p.at(i).UpdatePageSummaries(
              c.side[i].pool,
              PagedAttentionBatch{bs.view(), bp.view(), c.layer(i).table, Tensor(), 1});
        }
      };
      std::vector<int> zero(6, 0), a, last, end;
      for (int n : sc.len) {
        a.push_back(std::max(0, n * 2 / 3 - 1));
        last.push_back(n - 1);
        end.push_back(n);
      }
      step(zero, a);
      step(a, last);
      step(last, end);
      const auto kmin_c = Read(*p.cpu, c.side[0].kmin.view()),
                 kmax_c = Read(*p.cpu, c.side[0].kmax.view());
      const auto kmin_g = Read(*p.gpu, c.side[1].kmin.view()),
                 kmax_g = Read(*p.gpu, c.side[1].kmax.view());
      int pages_checked = 0;
      std::vector<bool> summarized(static_cast<size_t>(c.table.num_pages), false);
      for (int s = 0; s < c.num_seqs; ++s) {
        const int n = sc.len[static_cast<size_t>(s)];
        for (int h = 0; h < hkv; ++h) {
          if (c.RuleOf(0, s, h).decode != kDecodePages) continue;
          for (int pg = 0; pg * kPageSize < n; ++pg) {
            const int64_t page = c.table.Slot(s, h, pg * kPageSize) / kPageSize;
            summarized[static_cast<size_t>(page)] = true;
            for (int col = 0; col < d; ++col) {
              float lo = INFINITY, hi = -INFINITY;
              for (int t = pg * kPageSize; t < std::min(n, (pg + 1) * kPageSize); ++t) {
                const float x = c.k[static_cast<size_t>(c.table.Slot(s, h, t)) * d + col];
                lo = std::min(lo, x);
                hi = std::max(hi, x);
              }
              const size_t at = static_cast<size_t>(page) * d + col;
              INFO("sequence " << s << " head " << h << " page " << pg << " column " << col);
              REQUIRE(kmin_g[at] == lo);
              REQUIRE(kmax_g[at] == hi);
              REQUIRE(kmin_c[at] == lo);
              REQUIRE(kmax_c[at] == hi);
            }
            ++pages_checked;
          }
        }
      }
      CHECK(pages_checked > 0);
      // Pages of dense heads (and of no head) are never written.
      for (int pg = 0; pg < c.table.num_pages; ++pg) {
        if (!summarized[static_cast<size_t>(pg)]) {
          CHECK(std::isnan(kmin_g[static_cast<size_t>(pg) * d]));
          CHECK(std::isnan(kmax_g[static_cast<size_t>(pg) * d]));
        }
      }
    }
  }
}

TEST_CASE("CUDA selection gate matches the CPU and the refresh rule", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}}) {
    const int d = 64;
    Rules every3_cos, every1, select_only, two_sets;
    for (int h = 0; h < hkv; ++h) {
      every3_cos.push_back(Recycle(0, 64, 4, 4, 3, true, 0.9f));
      every1.push_back(h == 0 ? Dense() : Recycle(1, 64, 4, 4, 1, false));
      select_only.push_back(Select(0, 64, 4, 4));
      // Two recycle sets in one layout, one of them by the cosine rule.
      two_sets.push_back(h % 2 == 0 ? Recycle(1, 64, 0, 1, 2, false)
                                    : Recycle(0, 64, 4, 4, 3, true, 0.9f));
    }
    Scenario sc;
    sc.hq = hq;
    sc.hkv = hkv;
    sc.d = d;
    sc.layers = {{every3_cos, every1, select_only, two_sets}};
    // Per sequence: a fresh set; steps 0, 1, 2 of 3; cos ~1, ~0 and ~0.995; not selecting.
    sc.len = {100, 200, 300, 150, 120, 90, 80, 70, 60, 50};
    sc.layout = {0, 0, 0, 0, 0, 3, 1, 2, 3, 0};
    sc.slot = {0, 1, 2, 3, 4, 5, 6, 7, 8, -1};
    Selection c(p, sc);
    HostState st = c.InitialState();
    const int width = hq * d;
    const auto q_row = [&](int s) {
      const auto at = static_cast<long>(c.seq_token[static_cast<size_t>(s)]) * width;
      return std::vector<float>(c.q.begin() + at, c.q.begin() + at + width);
    };
    // chosen_len, steps and q_ref per (sequence, set 0) (and set 1 the same): q_ref = q (cos 1),
    // random (cos ~0), or q plus small noise (cos ~0.995).
    const int steps[] = {0, 0, 1, 2, 0, 1, 0, 0, 1, 0};
    for (int s = 0; s < c.num_seqs; ++s) {
      const int slot = s < 9 ? s : 9;
      for (int set = 0; set < c.sets; ++set) {
        const size_t i = c.SetIndex(slot, set);
        st.chosen_len[i] = s == 0 ? -1 : 50;
        st.steps[i] = steps[s];
        std::vector<float> ref = q_row(s);
        if (s == 4) ref = RandomBf16(p.rng, static_cast<size_t>(width));
        if (s == 5 || s == 1) {
          const auto noise = RandomBf16(p.rng, static_cast<size_t>(width), 0.1f);
          for (int j = 0; j < width; ++j)
            ref[static_cast<size_t>(j)] += noise[static_cast<size_t>(j)];
        }
        std::copy(ref.begin(), ref.end(), st.q_ref.begin() + static_cast<long>(i) * width);
      }
    }
    st.refresh.assign(st.refresh.size(), 7);  // every entry the gate writes changes
    c.SetState(st);
    for (int i = 0; i < 2; ++i) c.Gate(i);
    const HostState cpu = c.GetState(0), gpu = c.GetState(1);
    // The rule on the host.
    HostState want = st;
    for (int s = 0; s < c.num_seqs; ++s) {
      const int slot = c.slot_of(s);
      if (slot < 0) continue;
      for (int h = 0; h < hkv; ++h) {
        const KvSelect& r = c.RuleOf(0, s, h);
        if (r.decode != kDecodeRecycle) continue;
        const size_t i = c.SetIndex(slot, r.set);
        if (want.refresh[i] != 7) continue;  // this set is done
        bool refresh = st.chosen_len[i] < 0 || st.steps[i] + 1 >= r.refresh_every;
        if (!refresh && r.refresh_below_cos) {
          const auto qv = q_row(s);
          double dot = 0, qq = 0, rr = 0;
          for (int j = 0; j < width; ++j) {
            const double x = qv[static_cast<size_t>(j)],
                         y = st.q_ref[i * width + static_cast<size_t>(j)];
            dot += x * y;
            qq += x * x;
            rr += y * y;
          }
          const double cos = dot / std::sqrt(qq * rr);
          REQUIRE(std::abs(cos - r.refresh_cos) > 1e-3);  // the test's inputs stay clear of it
          refresh = cos < r.refresh_cos;
        }
        want.refresh[i] = refresh ? 1 : 0;
        if (!refresh) ++want.steps[i];
      }
    }
    INFO("hq " << hq << " hkv " << hkv);
    CHECK(gpu.refresh == want.refresh);
    CHECK(gpu.steps == want.steps);
    CHECK(gpu.chosen_len == st.chosen_len);
    CHECK(cpu.refresh == want.refresh);
    CHECK(cpu.steps == want.steps);
  }
}

// Rules of every role, over hkv heads: layout 0 cycles select (set 0), dense, recycle (set 2),
// pages (set 1), consume (set 3); layout 1 the same cycle shifted by two (recycle first), its
// select heads per query head (set 4); layout 2 dense.
std::vector<Rules> EveryRole(int hkv, int budget, bool since_refresh) {
  Rules a, b, dense;
  const auto role = [&](int i, bool per_q) {
    switch (i % 5) {
      case 0:
        return per_q ? Select(4, budget / 2, 0, 1, kReduceSumSoftmax, true)
                     : Select(0, budget, 4, 8, kReduceSumSoftmax);
      case 1:
        return Dense();
      case 2:
        return Recycle(2, budget, 2, 4, 3, since_refresh);
      case 3:
        return Pages(1, budget + kPageSize, kPageSize, kReduceMax);
      default:
        return Consume(3, budget, 4, 8);
    }
  };
  for (int h = 0; h < hkv; ++h) {
    a.push_back(role(h, false));
    b.push_back(role(h + 2, true));
    dense.push_back(Dense());
  }
  return {a, b, dense};
}

void CheckScoreAttention(Pair& p, int hq, int hkv, int d, const std::vector<int>& lens,
                         const std::vector<int>& layouts, const std::vector<int>& slots) {
  Scenario sc;
  sc.hq = hq;
  sc.hkv = hkv;
  sc.d = d;
  sc.layers = {EveryRole(hkv, 64, true)};
  sc.len = lens;
  sc.layout = layouts;
  sc.slot = slots;
  Selection c(p, sc);
  c.SummarizeAllPages();
  HostState st = c.InitialState();
  for (int slot = 0; slot < c.slots; ++slot) st.refresh[c.SetIndex(slot, 2)] = slot % 2;
  c.SetState(st);
  for (int i = 0; i < 2; ++i) c.Score(i);
  const auto out_c = Read(*p.cpu, c.layer(0).out.view()),
             out_g = Read(*p.gpu, c.layer(1).out.view());
  const auto sc_c = Read(*p.cpu, c.layer(0).scores.view()),
             sc_g = Read(*p.gpu, c.layer(1).scores.view());
  std::vector<float> rows_c, rows_g, logits_c, logits_g, bounds_c, bounds_g;
  std::vector<bool> written(out_g.size() / static_cast<size_t>(d), false);
  for (int s = 0; s < c.num_seqs; ++s) {
    const int slot = c.slot_of(s), n = lens[static_cast<size_t>(s)];
    if (slot < 0) continue;
    for (int h = 0; h < hkv; ++h) {
      const KvSelect& r = c.RuleOf(0, s, h);
      if (!c.Chooses(r, st, slot)) continue;
      const bool pages = r.decode == kDecodePages;
      const int units = pages ? (n + kPageSize - 1) / kPageSize : n;
      for (int g = 0; g < c.group; ++g) {
        const int qh = h * c.group + g;
        if (!pages) {
          const auto a = c.OutRow(out_c, s, qh), b = c.OutRow(out_g, s, qh);
          rows_c.insert(rows_c.end(), a.begin(), a.end());
          rows_g.insert(rows_g.end(), b.begin(), b.end());
          written[static_cast<size_t>(c.seq_token[static_cast<size_t>(s)]) * hq + qh] = true;
        }
        const size_t base = (static_cast<size_t>(s) * hq + qh) * c.max_len;
        auto& into_c = pages ? bounds_c : logits_c;
        auto& into_g = pages ? bounds_g : logits_g;
        into_c.insert(into_c.end(), sc_c.begin() + static_cast<long>(base),
                      sc_c.begin() + static_cast<long>(base) + units);
        into_g.insert(into_g.end(), sc_g.begin() + static_cast<long>(base),
                      sc_g.begin() + static_cast<long>(base) + units);
      }
    }
  }
  INFO("hq " << hq << " hkv " << hkv << " d " << d << " longest " << c.max_len);
  CHECK(!rows_c.empty());
  CHECK(RelError(rows_g, rows_c) < kBf16Tol);
  // Logits and bounds in fp32 from the same bf16 values: only the order of the sums differs.
  const auto close = [](const std::vector<float>& got, const std::vector<float>& want) {
    REQUIRE(got.size() == want.size());
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isnan(got[i])) return double{INFINITY};
      worst = std::max(worst, std::abs(double(got[i]) - want[i]) / (1.0 + std::abs(want[i])));
    }
    return worst;
  };
  CHECK(close(logits_g, logits_c) < 1e-4);
  CHECK(close(bounds_g, bounds_c) < 1e-4);
  // Every other output row is left as it was.
  for (size_t row = 0; row < written.size(); ++row) {
    if (!written[row]) {
      INFO("output row " << row);
      CHECK(std::isnan(out_g[row * static_cast<size_t>(d)]));
    }
  }
}

TEST_CASE("CUDA score-emitting attention matches the CPU", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}, std::pair{40, 5}}) {
    for (int d : {64, 128}) {
      // Mixed layouts and lengths, one sequence not selecting; one split or many.
      CheckScoreAttention(p, hq, hkv, d, {1, 17, 300, 5000, 1000, 64, 2, 33},
                          {0, 1, 0, 1, 2, 0, 1, 0}, {0, 1, 2, 3, 4, -1, 5, 6});
      CheckScoreAttention(p, hq, hkv, d, {2049, 20000}, {0, 1}, {1, 0});
    }
  }
  // 128K keys, split across the whole GPU.
  CheckScoreAttention(p, 8, 2, 128, {131072 + 37, 3000, 5000}, {0, 1, 1}, {0, 1, 2});
}

// Scores written by the test: random, or small integers (many exact ties).
std::vector<float> SyntheticScores(std::mt19937& rng, size_t n, bool ties) {
  std::vector<float> v(n);
  if (ties) {
    std::uniform_int_distribution<int> dist(-4, 4);
    for (auto& x : v) x = static_cast<float>(dist(rng));
  } else {
    std::normal_distribution<float> dist(0.0f, 3.0f);
    for (auto& x : v) x = dist(rng);
  }
  return v;
}

// Every set chosen this step against the CPU and the rules, from the scores written into both.
void CheckTopK(Pair& p, Selection& c, const std::vector<float>& scores, bool ties,
               const HostState& before) {
  for (int i = 0; i < 2; ++i) Put(p.at(i), c.layer(i).scores.view(), scores);
  c.SetState(before);
  for (int i = 0; i < 2; ++i) c.TopK(i);
  const HostState cpu = c.GetState(0), gpu = c.GetState(1);
  HostState want = before;
  int near_ties = 0, rows_checked = 0;
  std::vector<bool> chosen_row(before.counts.size(), false);
  for (int s = 0; s < c.num_seqs; ++s) {
    const int slot = c.slot_of(s);
    if (slot < 0) continue;
    for (int h = 0; h < c.sc.hkv; ++h) {
      const KvSelect& r = c.RuleOf(0, s, h);
      if (!c.Chooses(r, before, slot)) continue;
      const size_t set = c.SetIndex(slot, r.set);
      want.chosen_len[set] = c.seq_len[static_cast<size_t>(s)];
      want.steps[set] = 0;
      if (r.decode == kDecodeRecycle && r.refresh_below_cos) {
        const size_t width = static_cast<size_t>(c.sc.hq) * c.sc.d;
        const auto at =
            static_cast<long>(c.seq_token[static_cast<size_t>(s)]) * static_cast<long>(width);
        std::copy(c.q.begin() + at, c.q.begin() + at + static_cast<long>(width),
                  want.q_ref.begin() + static_cast<long>(set * width));
      }
      for (auto [row, g] : c.SetRows(r, h)) {
        const HostChoice choice = ChoiceOf(c, scores, s, r, h, g);
        const std::vector<int> best = Best(choice);
        const size_t at = c.RowIndex(slot, r.set, row);
        chosen_row[at] = true;
        INFO("sequence " << s << " (" << c.seq_len[static_cast<size_t>(s)] << " keys) KV head " << h
                         << " set " << r.set << " row " << row << " decode " << r.decode
                         << " reduce " << (g >= 0 ? -1 : r.reduce) << " k " << choice.k << " of "
                         << choice.value.size());
        REQUIRE(gpu.counts[at] == choice.k * choice.unit);
        const bool cpu_count = cpu.counts[at] == choice.k * choice.unit;
        CHECK(cpu_count);
        const size_t first = at * static_cast<size_t>(c.width);
        const auto got = Units(gpu.positions, first, gpu.counts[at], choice.unit);
        // Exact: every candidate, one query head's scores, their maximum, integer sums.
        const bool exact = choice.k == static_cast<int>(choice.value.size()) || g >= 0 ||
                           r.reduce == kReduceMax || (ties && r.reduce == kReduceSumLogits);
        const double tol = exact ? 0.0 : kNearTie;
        const double floor = g < 0 && r.reduce == kReduceSumSoftmax ? 0.0 : 1.0;
        {
          INFO("GPU against the rules");
          near_ties += CompareSets(got, best, choice, tol, floor);
        }
        if (cpu_count) {
          const auto cpu_set = Units(cpu.positions, first, cpu.counts[at], choice.unit);
          {
            INFO("CPU against the rules");
            CompareSets(cpu_set, best, choice, tol, floor);
          }
          INFO("GPU against the CPU");
          CompareSets(got, cpu_set, choice, tol, floor);
        }
        ++rows_checked;
      }
    }
  }
  CHECK(rows_checked > 0);
  INFO("entries differing from the host's choice at near-ties: " << near_ties);
  CHECK(gpu.chosen_len == want.chosen_len);
  CHECK(gpu.steps == want.steps);
  CHECK(gpu.refresh == before.refresh);
  CHECK(gpu.q_ref == want.q_ref);
  CHECK(cpu.chosen_len == want.chosen_len);
  CHECK(cpu.steps == want.steps);
  // Rows of sets not chosen this step are untouched.
  for (size_t at = 0; at < before.counts.size(); ++at) {
    if (chosen_row[at]) continue;
    INFO("set row " << at);
    CHECK(gpu.counts[at] == before.counts[at]);
    const auto first = static_cast<long>(at) * c.width;
    CHECK(std::equal(gpu.positions.begin() + first, gpu.positions.begin() + first + c.width,
                     before.positions.begin() + first));
  }
}

// Set layouts for top-k: layout 0 cycles select per KV head by sum_softmax (set 0), select per
// query head (set 1), recycle by sum_logits with the cosine rule (set 2), Quest pages by max (set
// 3); layout 1 pages per query head (set 3), select by max and by sum_logits (set 0), dense;
// layout 2 select with a budget above the contexts it gets (set 0).
std::vector<Rules> TopKLayouts(int hkv, int budget) {
  Rules a, b, all;
  for (int h = 0; h < hkv; ++h) {
    switch (h % 4) {
      case 0:
        a.push_back(Select(0, budget, 4, 8, kReduceSumSoftmax));
        b.push_back(Pages(3, budget, 2 * kPageSize + 3, kReduceSumSoftmax, true));
        break;
      case 1:
        a.push_back(Select(1, budget / 2 + 1, 0, 1, kReduceSumSoftmax, true));
        b.push_back(Select(0, budget, 4, 8, kReduceMax));
        break;
      case 2:
        a.push_back(Recycle(2, budget, 2, 16, 3, true, 0.5f, kReduceSumLogits));
        b.push_back(Dense());
        break;
      default:
        a.push_back(Pages(3, budget + 3 * kPageSize, kPageSize, kReduceMax));
        b.push_back(Select(0, budget, 4, 8, kReduceSumLogits));
        break;
    }
    all.push_back(Select(0, 2 * budget + 1, 3, 5, kReduceSumSoftmax));
  }
  return {a, b, all};
}

TEST_CASE("CUDA top-k selection matches the CPU and the rules", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}, std::pair{16, 2}}) {
    for (int budget : {64, 1000}) {
      for (bool ties : {false, true}) {
        Scenario sc;
        sc.hq = hq;
        sc.hkv = hkv;
        sc.d = 16;
        sc.layers = {TopKLayouts(hkv, budget)};
        sc.len = {1, 3, 50, 200, 1000, 4097, 20000, 70000, 90, 5000, 33};  // layout 2: 90
        sc.layout = {0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 0};
        sc.slot = {9, 8, 7, 6, 5, 4, 3, 2, 1, -1, 0};
        Selection c(p, sc);
        HostState before = c.InitialState();
        for (int slot = 0; slot < c.slots; ++slot) {
          before.refresh[c.SetIndex(slot, 2)] = slot % 3 == 0 ? 0 : 1;
          before.chosen_len[c.SetIndex(slot, 2)] = 5;  // kept where the set is not chosen
        }
        const auto scores =
            SyntheticScores(p.rng, static_cast<size_t>(c.num_seqs) * hq * c.max_len, ties);
        INFO("hq " << hq << " hkv " << hkv << " budget " << budget << " ties " << ties);
        CheckTopK(p, c, scores, ties, before);
      }
    }
  }
}

TEST_CASE("CUDA top-k selection over 128K keys matches the CPU and the rules", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 2}, std::pair{32, 4}}) {
    for (bool ties : {false, true}) {
      Scenario sc;
      sc.hq = hq;
      sc.hkv = hkv;
      sc.d = 16;
      sc.layers = {TopKLayouts(hkv, 4096)};
      sc.len = {131072 + 77, 131072, 65000};
      sc.layout = {0, 1, 0};
      sc.slot = {1, 0, 2};
      Selection c(p, sc);
      HostState before = c.InitialState();
      for (int slot = 0; slot < c.slots; ++slot) before.refresh[c.SetIndex(slot, 2)] = 1;
      const auto scores =
          SyntheticScores(p.rng, static_cast<size_t>(c.num_seqs) * hq * c.max_len, ties);
      INFO("hq " << hq << " hkv " << hkv << " ties " << ties);
      CheckTopK(p, c, scores, ties, before);
    }
  }
}

// --- SelectedAttention ---

// A random set for row (s, rule): positions as the rule's writer would choose them (a subset of
// the candidates, increasing), of at most `width` entries; `all` takes every candidate.
std::vector<int32_t> RandomSet(std::mt19937& rng, int first, int end, int k, int unit, bool all) {
  std::vector<int32_t> units;
  for (int u = first; u < end; ++u) units.push_back(u);
  std::shuffle(units.begin(), units.end(), rng);
  if (!all && static_cast<int>(units.size()) > k) units.resize(static_cast<size_t>(std::max(k, 0)));
  std::sort(units.begin(), units.end());
  std::vector<int32_t> positions;
  for (int32_t u : units)
    for (int i = 0; i < unit; ++i) positions.push_back(u * unit + i);
  return positions;
}

// The keys a selected head attends by the rules (KvSelect): sink, set, tail, each key once.
std::vector<int32_t> AttendedList(const KvSelect& r, int n, int chosen_len,
                                  const std::vector<int32_t>& set) {
  const int sink = std::min(r.sink, n);
  int tail;
  if (r.decode == kDecodePages) {
    tail = (n - 1) / kPageSize * kPageSize;
  } else {
    tail = n - r.recent;
    if (r.decode == kDecodeRecycle && r.since_refresh) tail = std::min(tail, chosen_len - r.recent);
  }
  tail = std::min(std::max(tail, sink), n);
  std::vector<int32_t> keys;
  for (int j = 0; j < sink; ++j) keys.push_back(j);
  for (int32_t j : set)
    if (j >= sink && j < tail) keys.push_back(j);
  for (int j = tail; j < n; ++j) keys.push_back(j);
  return keys;
}

// Sets written into the state directly; consume heads of layout 0 read sets per query head, those
// of layout 1 have a sink and tail of their own (set entries inside them are attended once); a
// recycle set refreshing in some slots (left alone).
void CheckSelectedAttention(Pair& p, int hq, int hkv, int d, const std::vector<int>& lens,
                            const std::vector<int>& layouts, const std::vector<int>& slots,
                            int budget) {
  Scenario sc;
  sc.hq = hq;
  sc.hkv = hkv;
  sc.d = d;
  std::vector<Rules> rules = EveryRole(hkv, budget, true);
  for (int h = 0; h < hkv; ++h) {
    KvSelect& r = rules[1][static_cast<size_t>(h)];
    if (r.decode == kDecodeConsume) r = Consume(r.set, budget, 0, 40, false);  // wider tail
    if (r.decode == kDecodeRecycle) r.since_refresh = 0;
    KvSelect& r0 = rules[0][static_cast<size_t>(h)];
    if (r0.decode == kDecodeConsume) r0.per_q_head = 1;  // a set per query head
  }
  sc.layers = {rules};
  sc.len = lens;
  sc.layout = layouts;
  sc.slot = slots;
  Selection c(p, sc);
  HostState st = c.InitialState();
  // The writers' rule for each set: consume sets (0, 3) and per-query-head selects (4) as a
  // select head with sink 4 and recent 8 would choose; recycle (2) as of chosen_len; pages (1).
  for (int s = 0; s < c.num_seqs; ++s) {
    const int slot = c.slot_of(s), n = lens[static_cast<size_t>(s)];
    if (slot < 0) continue;
    st.refresh[c.SetIndex(slot, 2)] = s % 4 == 3 ? 1 : 0;
    const int chosen_len = std::max(1, n - 1 - s % 3);
    // Consume and pages heads read sets chosen this step: their writers' chosen_len is n.
    for (int set = 0; set < c.sets; ++set) st.chosen_len[c.SetIndex(slot, set)] = n;
    st.chosen_len[c.SetIndex(slot, 2)] = chosen_len;
    for (int h = 0; h < hkv; ++h) {
      const KvSelect& r = c.RuleOf(0, s, h);
      if (r.decode == kDecodeDense || r.decode == kDecodeSelect) continue;
      for (auto [row, g] : c.SetRows(r, h)) {
        (void)g;
        std::vector<int32_t> set;
        const bool all = s % 5 == 1;  // a budget above the context: every candidate
        if (r.decode == kDecodePages) {
          set = RandomSet(p.rng, (r.sink + kPageSize - 1) / kPageSize, (n - 1) / kPageSize,
                          (r.budget - r.sink) / kPageSize - 1, kPageSize, false);
        } else if (r.decode == kDecodeRecycle) {
          set =
              RandomSet(p.rng, r.sink, chosen_len - r.recent, r.budget - r.sink - r.recent, 1, all);
        } else {
          set = RandomSet(p.rng, 4, n - 8, budget - 12, 1, all);
        }
        if (static_cast<int>(set.size()) > c.width) set.resize(static_cast<size_t>(c.width));
        const size_t at = c.RowIndex(slot, r.set, row);
        st.counts[at] = static_cast<int32_t>(set.size());
        std::copy(set.begin(), set.end(), st.positions.begin() + static_cast<long>(at) * c.width);
      }
    }
  }
  c.SetState(st);
  for (int i = 0; i < 2; ++i) c.Selected(i);
  const auto out_c = Read(*p.cpu, c.layer(0).out.view()),
             out_g = Read(*p.gpu, c.layer(1).out.view());
  // The rules' lists on the host, through index-list attention on the CPU (per KV head sets).
  std::vector<int32_t> row_seq, row_head, indptr = {0}, indices;
  std::vector<float> rows_c, rows_g, rows_ref, rows_ref_g;
  std::vector<bool> written(out_g.size() / static_cast<size_t>(d), false);
  for (int s = 0; s < c.num_seqs; ++s) {
    const int slot = c.slot_of(s), n = lens[static_cast<size_t>(s)];
    if (slot < 0) continue;
    for (int h = 0; h < hkv; ++h) {
      const KvSelect& r = c.RuleOf(0, s, h);
      if (!c.AttendsSet(r, st, slot)) continue;
      for (int g = 0; g < c.group; ++g) {
        const int qh = h * c.group + g;
        const auto a = c.OutRow(out_c, s, qh), b = c.OutRow(out_g, s, qh);
        rows_c.insert(rows_c.end(), a.begin(), a.end());
        rows_g.insert(rows_g.end(), b.begin(), b.end());
        written[static_cast<size_t>(c.seq_token[static_cast<size_t>(s)]) * hq + qh] = true;
      }
      if (r.per_q_head) continue;
      const size_t at = c.RowIndex(slot, r.set, h);
      const std::vector<int32_t> set(
          st.positions.begin() + static_cast<long>(at) * c.width,
          st.positions.begin() + static_cast<long>(at) * c.width + st.counts[at]);
      const auto keys = AttendedList(r, n, st.chosen_len[c.SetIndex(slot, 2)], set);
      row_seq.push_back(s);
      row_head.push_back(h);
      indices.insert(indices.end(), keys.begin(), keys.end());
      indptr.push_back(static_cast<int32_t>(indices.size()));
      for (int g = 0; g < c.group; ++g) {
        const auto b = c.OutRow(out_g, s, h * c.group + g);
        rows_ref_g.insert(rows_ref_g.end(), b.begin(), b.end());
      }
    }
  }
  INFO("hq " << hq << " hkv " << hkv << " d " << d << " budget " << budget);
  CHECK(!rows_c.empty());
  CHECK(RelError(rows_g, rows_c) < kBf16Tol);
  for (size_t row = 0; row < written.size(); ++row) {
    if (!written[row]) {
      INFO("output row " << row);
      CHECK(std::isnan(out_g[row * static_cast<size_t>(d)]));
    }
  }
  if (row_seq.empty()) return;
  // SparseDecodeAttention's q is [S, hq, d] by sequence.
  std::vector<float> q_by_seq;
  for (int s = 0; s < c.num_seqs; ++s) {
    const auto at = static_cast<long>(c.seq_token[static_cast<size_t>(s)]) * hq * d;
    q_by_seq.insert(q_by_seq.end(), c.q.begin() + at, c.q.begin() + at + hq * d);
  }
  const auto r = static_cast<int64_t>(row_seq.size());
  Buffer q = Stored(*p.cpu, q_by_seq, {c.num_seqs, hq, d});
  Buffer rs = I32(*p.cpu, row_seq, {r}), rh = I32(*p.cpu, row_head, {r});
  Buffer ip = I32(*p.cpu, indptr, {r + 1});
  Buffer ix = I32(*p.cpu, indices, {static_cast<int64_t>(indices.size())});
  Buffer out = p.cpu->Allocate(DType::kF32, {r, c.group, d});
  Buffer lse = p.cpu->Allocate(DType::kF32, {r, c.group});
  p.cpu->SparseDecodeAttention(
      q.view(), c.side[0].pool,
      SparseDecodeBatch{rs.view(), rh.view(), ip.view(), ix.view(), Tensor(), c.layer(0).table},
      c.scale(), out.view(), lse.view());
  INFO("GPU against index-list attention over the rules' lists");
  CHECK(RelError(rows_ref_g, Read(*p.cpu, out.view())) < kBf16Tol);
}

TEST_CASE("CUDA attention over selected sets matches the CPU and the rules", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}, std::pair{40, 5}}) {
    for (int d : {64, 128}) {
      for (int budget : {64, 700}) {
        CheckSelectedAttention(p, hq, hkv, d, {1, 17, 300, 5000, 1000, 64, 2, 33, 129, 2000},
                               {0, 1, 0, 1, 2, 0, 1, 0, 1, 0}, {0, 1, 2, 3, 4, -1, 5, 6, 7, 8},
                               budget);
      }
    }
  }
  CheckSelectedAttention(p, 16, 2, 128, {131072 + 11, 70000, 9000}, {0, 1, 1}, {1, 0, 2}, 4096);
}

// --- paged attention beside selection ---

void CheckPagedLeavesSelection(Pair& p, int hq, int hkv, int d, const std::vector<int>& lens,
                               const std::vector<int>& slots, int chunk) {
  Scenario sc;
  sc.hq = hq;
  sc.hkv = hkv;
  sc.d = d;
  Rules mixed, dense;
  for (int h = 0; h < hkv; ++h) {
    mixed.push_back(h % 3 == 0 ? Dense() : h % 3 == 1 ? Select(0, 64, 4, 8) : Consume(1, 64, 4, 8));
    dense.push_back(Dense());
  }
  sc.layers = {{mixed, dense}};
  sc.len = lens;
  sc.slot = slots;
  for (size_t s = 0; s < lens.size(); ++s) sc.layout.push_back(s % 3 == 2 ? 1 : 0);
  sc.extra_rows = 0;
  Selection c(p, sc);
  // Query rows: one per selecting sequence (decode), `chunk` for the others (a prefill chunk
  // ending at len), in sequence order, then a padding row.
  std::vector<int32_t> ts, tp, query_start = {0};
  std::vector<std::pair<int, int>> query_of;  // (sequence, position) per row
  int max_query_len = 1;
  for (int s = 0; s < c.num_seqs; ++s) {
    const int n = lens[static_cast<size_t>(s)];
    const int queries = slots[static_cast<size_t>(s)] >= 0 ? 1 : std::min(chunk, n);
    for (int t = n - queries; t < n; ++t) {
      ts.push_back(s);
      tp.push_back(t);
    }
    query_start.push_back(static_cast<int32_t>(tp.size()));
    max_query_len = std::max(max_query_len, queries);
  }
  ts.push_back(0);
  tp.push_back(-1);
  const auto rows = static_cast<int64_t>(tp.size());
  const auto q = RandomBf16(p.rng, static_cast<size_t>(rows) * hq * d);
  std::vector<float> outs[2];
  for (int i = 0; i < 2; ++i) {
    Backend& be = p.at(i);
    Buffer bs = I32(be, ts, {rows}), bp = I32(be, tp, {rows});
    Buffer qs = I32(be, query_start, {c.num_seqs + 1});
    Buffer qb = Stored(be, q, {rows, hq, d});
    Buffer out = Stored(be, std::vector<float>(q.size(), NAN), {rows, hq, d});
    be.PagedAttention(qb.view(), c.side[i].pool,
                      PagedAttentionBatch{bs.view(), bp.view(), c.layer(i).table,
                                          max_query_len > 1 ? qs.view() : Tensor(), max_query_len},
                      c.scale(), out.view());
    outs[i] = Read(be, out.view());
  }
  std::vector<float> kept_c, kept_g;
  int left = 0;
  for (int64_t t = 0; t + 1 < rows; ++t) {
    const int s = ts[static_cast<size_t>(t)];
    for (int qh = 0; qh < hq; ++qh) {
      const KvSelect& r = c.RuleOf(0, s, qh / c.group);
      const size_t at = (static_cast<size_t>(t) * hq + qh) * d;
      if (slots[static_cast<size_t>(s)] >= 0 && r.decode != kDecodeDense) {
        INFO("sequence " << s << " query head " << qh);
        CHECK(std::isnan(outs[1][at]));  // left to the selection operations
        CHECK(std::isnan(outs[0][at]));
        ++left;
        continue;
      }
      kept_c.insert(kept_c.end(), outs[0].begin() + static_cast<long>(at),
                    outs[0].begin() + static_cast<long>(at) + d);
      kept_g.insert(kept_g.end(), outs[1].begin() + static_cast<long>(at),
                    outs[1].begin() + static_cast<long>(at) + d);
    }
  }
  INFO("hq " << hq << " hkv " << hkv << " d " << d << " chunk " << chunk);
  CHECK(left > 0);
  CHECK(RelError(kept_g, kept_c) < kBf16Tol);
}

TEST_CASE("CUDA paged attention leaves selecting sequences' selection heads alone", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{8, 8}, std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {16, 64, 128}) {
      // Decode: splits merged by the last block, and by the merge kernel.
      CheckPagedLeavesSelection(p, hq, hkv, d, {1, 16, 33, 1000, 5000, 7}, {0, -1, 1, 2, 3, -1}, 1);
      CheckPagedLeavesSelection(p, hq, hkv, d, {9000, 300}, {0, 1}, 1);
      std::vector<int> lens, slots;
      for (int s = 0; s < 20; ++s) {
        lens.push_back(100 + 150 * s);
        slots.push_back(s % 4 == 3 ? -1 : s);
      }
      CheckPagedLeavesSelection(p, hq, hkv, d, lens, slots, 1);
      // Prefill chunks beside selecting decode queries (the prefill kernel at head dims 64, 128).
      CheckPagedLeavesSelection(p, hq, hkv, d, {300, 40, 129, 77, 2000}, {-1, 0, -1, 1, 2}, 33);
    }
  }
}

// --- offload heads (RetrievalAttention's device half and the merge) ---

// OffloadAttention on the backend under test against the rule in double
// (tests/kernels/offload_scenario.h): written rows within bf16 rounding, every other row left as
// poisoned.
TEST_CASE("CUDA offload attention matches the merge rule", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{8, 2}, std::pair{32, 4}}) {
    for (int d : {16, 64, 128}) {
      INFO("hq " << hq << " hkv " << hkv << " d " << d);
      const testing::OffloadScenario s = testing::MakeOffloadScenario(hq, hkv, d, p.rng);
      Backend& be = *p.gpu;
      const auto num_seqs = static_cast<int64_t>(s.lens.size());
      Buffer k = Stored(be, s.k, {s.table.num_pages, s.page_size, d});
      Buffer v = Stored(be, s.v, {s.table.num_pages, s.page_size, d});
      testing::BackendBlockTable table = testing::UploadTable(be, s.table, {});
      Buffer q = Stored(be, s.q, {num_seqs, hq, d});
      Buffer host_out = F32(be, s.host_out, {num_seqs, hq, d});
      Buffer host_lse = F32(be, s.host_lse, {num_seqs, hq});
      Buffer seq_token = I32(be, s.seq_token, {num_seqs});
      Buffer seq_len = I32(be, s.seq_len, {num_seqs});
      Buffer out = Stored(be, std::vector<float>(s.q.size(), NAN), {num_seqs, hq, d});
      be.OffloadAttention(
          q.view(), KvPoolView{k.view(), v.view(), s.page_size},
          {seq_token.view(), seq_len.view(), table.view, host_out.view(), host_lse.view()}, s.scale,
          out.view());
      const std::vector<float> got = Read(be, out.view());
      const std::vector<float> want = testing::ExpectedOffload(s);
      std::vector<float> got_written, want_written;
      for (size_t i = 0; i < got.size(); ++i) {
        INFO("element " << i);
        REQUIRE(std::isnan(got[i]) == std::isnan(want[i]));
        if (std::isnan(want[i])) continue;
        got_written.push_back(got[i]);
        want_written.push_back(want[i]);
      }
      REQUIRE_FALSE(want_written.empty());
      CHECK(testing::RelError(got_written, want_written) < kBf16Tol);
    }
  }
}

// TopKeys (the offload index build's exact search) on the backend under test against the double
// reference on the same bf16 numbers: only keys whose scores differ by f32 rounding may trade
// places; with exact integer scores and many ties at the k-th (the kernel's path that settles all
// 32 bits and takes equal keys by id), the ids equal the reference's. Rows from below one block's
// candidate capacity to 128K keys, k from 1 to 1024.
TEST_CASE("CUDA exact top keys match the reference", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  struct Shape {
    int64_t m, n, d, k;
    bool ties;
  };
  for (const Shape& sh : {Shape{7, 100, 64, 100, false}, Shape{33, 5000, 64, 100, false},
                          Shape{5, 3000, 128, 1024, false}, Shape{4, 20000, 64, 1, false},
                          Shape{3, 131072, 128, 100, false}, Shape{6, 50000, 16, 100, true},
                          Shape{2, 4096, 8, 1024, true}}) {
    INFO("m " << sh.m << " n " << sh.n << " d " << sh.d << " k " << sh.k << " ties " << sh.ties);
    const testing::TopKeysCase c = testing::MakeTopKeysCase(sh.m, sh.n, sh.d, sh.k, sh.ties, p.rng);
    Backend& be = *p.gpu;
    Buffer q = be.Allocate(be.activation_dtype(), {c.m, c.d});
    Put(be, q.view(), c.queries);
    Buffer keys = Stored(be, c.keys, {c.n, c.d});
    Buffer ids = be.Allocate(DType::kI32, {c.m, c.k});
    be.TopKeys(q.view(), keys.view(), ids.view());
    const int64_t differ = testing::CheckTopKeys(c, ReadI32(be, ids.view()), 1e-5);
    if (sh.ties) CHECK(differ == 0);
  }
}

// --- whole steps, captured ---

// Three layers over shared sets — TidalDecode (select, then consume), Recycled Attention (stride 3,
// the cosine rule, keys since the refresh) with a Quest head — each step through page summaries,
// paged attention, the gate, score attention, top-k and selected attention. Step 0 runs eagerly on
// the GPU, then steps 1..3 replay a CUDA graph of step 0 with new lengths and queries uploaded into
// the same buffers. The CPU follows step by step; where its top-k input or choice may differ at a
// near-tie, it is handed the GPU's scores and sets after the comparison, so that later operations
// compare on identical inputs.
TEST_CASE("CUDA selection steps replayed from a CUDA graph match the CPU", "[cuda]") {
  Pair p;
  INFO("seed " << p.seed);
  const int hq = 16, hkv = 4, d = 128, group = hq / hkv;
  const Rules a = {Dense(), Select(0, 64, 4, 8, kReduceSumSoftmax),
                   Select(0, 64, 4, 8, kReduceSumLogits), Select(0, 64, 4, 8, kReduceMax)};
  const Rules b = {Dense(), Consume(0, 64, 4, 8), Consume(0, 64, 4, 8), Consume(0, 64, 0, 32)};
  const Rules cc = {Recycle(1, 96, 2, 4, 3, true, 0.5f), Dense(),
                    Recycle(1, 96, 2, 4, 3, true, 0.5f),
                    Pages(2, 80, kPageSize, kReduceSumSoftmax)};
  Rules dense(static_cast<size_t>(hkv), Dense());
  Scenario sc;
  sc.hq = hq;
  sc.hkv = hkv;
  sc.d = d;
  sc.layers = {{a, dense}, {b, dense}, {cc, dense}};
  sc.len = {700, 1500, 260, 40, 3000, 90};
  sc.layout = {0, 0, 0, 0, 0, 1};
  sc.slot = {0, 1, 2, -1, 3, 4};
  sc.room = 4;
  sc.extra_rows = 1;
  Selection c(p, sc);
  c.SummarizeAllPages(2);
  const int layers = 3;
  const auto run_gpu_step = [&] {
    for (int l = 0; l < layers; ++l) {
      c.Summaries(1, l);
      c.Paged(1, l);
      c.Gate(1, l);
      c.Score(1, l);
      c.TopK(1, l);
      c.Selected(1, l);
    }
  };
  std::unique_ptr<CapturedOps> graph;
  const std::vector<float> q0 = c.q;
  std::vector<int32_t> lens(sc.len.begin(), sc.len.end());
  for (int step = 0; step < 4; ++step) {
    INFO("step " << step);
    if (step > 0) {
      // The next token: one key more; queries near the last ones (the cosine rule keeps the
      // recycle sets) but for sequence 2 at step 2 (it refreshes by the rule).
      for (auto& n : lens) ++n;
      c.SetLengths(lens);
      c.UploadLengths();
      std::vector<float> q = q0;
      const auto noise = RandomBf16(p.rng, q.size(), 0.05f);
      for (size_t i = 0; i < q.size(); ++i) q[i] = BF16ToF32(F32ToBF16(q[i] + noise[i]));
      if (step == 2) {
        const auto fresh = RandomBf16(p.rng, static_cast<size_t>(hq) * d);
        std::copy(fresh.begin(), fresh.end(),
                  q.begin() + static_cast<long>(c.seq_token[2]) * hq * d);
      }
      c.SetQueries(q);
    }
    if (step == 0) {
      run_gpu_step();
      if (testing::kGpuUnderTestCaptures) {
        p.gpu->BeginCapture();
        run_gpu_step();
        graph = p.gpu->EndCapture();
        REQUIRE(graph != nullptr);
        // The capture ran nothing: step 0 ran once.
      }
    } else if (graph != nullptr) {
      graph->Replay();
    } else {
      run_gpu_step();  // a pair build's CPU backend captures nothing: the steps run eagerly
    }
    p.gpu->Synchronize();
    const HostState gpu = c.GetState(1);
    for (int l = 0; l < layers; ++l) {
      INFO("layer " << l);
      c.Summaries(0, l);
      c.Paged(0, l);
      c.Gate(0, l);
      const HostState gated = c.GetState(0);
      c.Score(0, l);
      // The GPU's logits into the CPU's scores (compared first, for the heads that scored).
      const auto sc_g = Read(*p.gpu, c.layer(1, l).scores.view());
      const auto sc_c = Read(*p.cpu, c.layer(0, l).scores.view());
      double worst = 0.0;
      for (int s = 0; s < c.num_seqs; ++s) {
        const int slot = c.slot_of(s);
        if (slot < 0) continue;
        for (int h = 0; h < hkv; ++h) {
          const KvSelect& r = c.RuleOf(l, s, h);
          if (!c.Chooses(r, gated, slot)) continue;
          const int n = lens[static_cast<size_t>(s)];
          const int units = r.decode == kDecodePages ? (n + kPageSize - 1) / kPageSize : n;
          for (int g = 0; g < group; ++g) {
            const size_t base = (static_cast<size_t>(s) * hq + h * group + g) * c.max_len;
            for (int j = 0; j < units; ++j) {
              const double x = sc_g[base + j], y = sc_c[base + j];
              worst =
                  std::max(worst, std::isnan(x) ? INFINITY : std::abs(x - y) / (1.0 + std::abs(y)));
            }
          }
        }
      }
      CHECK(worst < 1e-4);
      Put(*p.cpu, c.layer(0, l).scores.view(), sc_g);
      c.TopK(0, l);
      HostState chosen = c.GetState(0);
      // The sets chosen here: the CPU's against the GPU's (near-ties aside), then the GPU's.
      for (int s = 0; s < c.num_seqs; ++s) {
        const int slot = c.slot_of(s);
        if (slot < 0) continue;
        for (int h = 0; h < hkv; ++h) {
          const KvSelect& r = c.RuleOf(l, s, h);
          if (!c.Chooses(r, gated, slot)) continue;
          for (auto [row, g] : c.SetRows(r, h)) {
            const size_t at = c.RowIndex(slot, r.set, row);
            const HostChoice choice = ChoiceOf(c, sc_g, s, r, h, g);
            INFO("sequence " << s << " KV head " << h << " set " << r.set);
            REQUIRE(gpu.counts[at] == chosen.counts[at]);
            const size_t first = at * static_cast<size_t>(c.width);
            const bool exact = g >= 0 || r.reduce == kReduceMax;
            CompareSets(Units(gpu.positions, first, gpu.counts[at], choice.unit),
                        Units(chosen.positions, first, chosen.counts[at], choice.unit), choice,
                        exact ? 0.0 : kNearTie, r.reduce == kReduceSumSoftmax ? 0.0 : 1.0);
            std::copy(gpu.positions.begin() + static_cast<long>(first),
                      gpu.positions.begin() + static_cast<long>(first) + c.width,
                      chosen.positions.begin() + static_cast<long>(first));
          }
        }
      }
      c.SetState(chosen, 0);
      c.Selected(0, l);
      // Every real output row: dense heads (paged attention), the selection heads (score or
      // selected attention).
      const auto out_c = Read(*p.cpu, c.layer(0, l).out.view());
      const auto out_g = Read(*p.gpu, c.layer(1, l).out.view());
      std::vector<float> rows_c, rows_g;
      for (int s = 0; s < c.num_seqs; ++s) {
        for (int qh = 0; qh < hq; ++qh) {
          const auto x = c.OutRow(out_c, s, qh), y = c.OutRow(out_g, s, qh);
          rows_c.insert(rows_c.end(), x.begin(), x.end());
          rows_g.insert(rows_g.end(), y.begin(), y.end());
        }
      }
      CHECK(RelError(rows_g, rows_c) < kBf16Tol);
    }
    // The state's bookkeeping after the step: exact.
    const HostState cpu = c.GetState(0);
    CHECK(gpu.refresh == cpu.refresh);
    CHECK(gpu.steps == cpu.steps);
    CHECK(gpu.chosen_len == cpu.chosen_len);
    CHECK(gpu.counts == cpu.counts);
    CHECK(gpu.q_ref == cpu.q_ref);
    // Recycle sets: chosen at step 0, kept at steps 1 and 2 (stride 3, queries alike) but for
    // sequence 2's at step 2 (its query turned: the cosine rule), chosen anew at step 3.
    for (int s : {0, 2}) {
      const int chosen_at = step == 3 || (s == 2 && step == 2) ? step : 0;
      INFO("sequence " << s);
      CHECK(gpu.chosen_len[c.SetIndex(c.slot_of(s), 1)] ==
            sc.len[static_cast<size_t>(s)] + chosen_at);
    }
  }
}

}  // namespace
}  // namespace headwise::kernels
