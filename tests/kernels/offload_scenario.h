// One layer's decode step with offload heads (kernels::OffloadDecodeBatch), built on the host for
// the CPU test (offload_attention_test.cc) and the GPU comparison (cuda_select_test.cc): two
// layouts — offload heads beside full ones, and every head full — and sequences that retrieve
// after compaction, retrieve before it (a prompt shorter than sink + window), decode densely
// (slot -1), or run the full layout. The pools hold random bf16-representable keys and values in
// every slot (garbage where no key lives), and the host's (o, lse) per (sequence, query head) is
// random, with lse -inf (nothing retrieved) on some rows. ExpectedOffload gives, in double, what
// OffloadAttention must write: the rule of OffloadDecodeBatch applied to the same numbers. Also
// the inputs and the check of Backend::TopKeys (the exact search of the offload index's build).
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "tests/kernels/block_tables.h"
#include "tests/kernels/select_rules.h"

namespace headwise::testing {

struct OffloadScenario {
  int hq = 0, hkv = 0, d = 16, page_size = 8, sink = 4, window = 12;
  float scale = 0.3f;
  std::vector<int> lens, seq_layout, slots, compact_from;
  HostBlockTable table;
  std::vector<float> k, v;                  // [num_pages * page_size, d]
  std::vector<float> q;                     // [S, hq, d]: one decode query per sequence, row s
  std::vector<float> host_out, host_lse;    // [S, hq, d], [S, hq]
  std::vector<int32_t> seq_token, seq_len;  // [S]

  int group() const { return hq / hkv; }
};

inline float RoundBf16(float x) {
  return BF16ToF32(F32ToBF16(x));
}

// hq / hkv query and KV heads of dimension d; KV heads 0 and hkv - 1 offload in layout 0 (the
// others full).
inline OffloadScenario MakeOffloadScenario(int hq, int hkv, int d, std::mt19937& rng) {
  OffloadScenario s;
  s.hq = hq;
  s.hkv = hkv;
  s.d = d;
  LayoutSpec offload(static_cast<size_t>(hkv), FullHead());
  offload.front() = OffloadHead(s.sink, s.window);
  offload.back() = OffloadHead(s.sink, s.window);
  const LayoutSpec dense(static_cast<size_t>(hkv), FullHead());
  // Sequence: its layout, keys after this step, selection slot, compaction point (0: none).
  // 0: compacted, the dropped span [sink, 70) offloaded, two tokens generated since;
  // 1: compacted right at the prompt's end; 2: a short prompt, never compacted;
  // 3: offload layout but slot -1 (dense this step: its rows are PagedAttention's);
  // 4: the full layout, retrieving nothing.
  s.seq_layout = {0, 0, 0, 0, 1};
  s.lens = {84, 61, 9, 40, 33};
  s.slots = {3, 0, 1, -1, 2};
  s.compact_from = {70, 61 - s.window, 0, 40 - s.window, 0};
  s.table = MakeBlockTable({offload, dense}, s.seq_layout, s.lens, s.page_size, rng);
  for (size_t i = 0; i < s.lens.size(); ++i) {
    if (s.compact_from[i] > 0) s.table.Compact(static_cast<int>(i), s.compact_from[i]);
  }
  std::vector<std::vector<kernels::KvSelect>> rules(
      2, std::vector<kernels::KvSelect>(static_cast<size_t>(hkv), Dense()));
  rules[0].front() = Retrieve(100);
  rules[0].back() = Retrieve(100);
  s.table.SetSelects(rules);
  for (size_t i = 0; i < s.slots.size(); ++i) s.table.seq_slot[i] = s.slots[i];
  s.table.Summarize();
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& x, size_t n) {
    x.resize(n);
    for (float& e : x) e = RoundBf16(dist(rng));
  };
  const auto num_seqs = s.lens.size();
  fill(s.k, static_cast<size_t>(s.table.num_pages) * s.page_size * s.d);
  fill(s.v, s.k.size());
  fill(s.q, num_seqs * hq * s.d);
  fill(s.host_out, num_seqs * hq * s.d);
  s.host_lse.resize(num_seqs * hq);
  for (size_t i = 0; i < s.host_lse.size(); ++i) {
    s.host_lse[i] = i % 5 == 2 ? -std::numeric_limits<float>::infinity() : 2.0f * dist(rng);
  }
  // Query rows in reverse order of the sequences: seq_token is read, not assumed.
  for (size_t i = 0; i < num_seqs; ++i) {
    s.seq_token.push_back(static_cast<int32_t>(num_seqs - 1 - i));
    s.seq_len.push_back(s.lens[i]);
  }
  return s;
}

// What OffloadAttention writes: for each retrieving sequence and offload head, per query head,
// softmax over the device's keys merged with the host's (o, lse), in double. Rows it leaves alone
// are NaN here (the tests poison their outputs with NaN).
inline std::vector<float> ExpectedOffload(const OffloadScenario& s) {
  const auto num_seqs = static_cast<int>(s.lens.size());
  std::vector<float> out(static_cast<size_t>(num_seqs) * s.hq * s.d,
                         std::numeric_limits<float>::quiet_NaN());
  for (int seq = 0; seq < num_seqs; ++seq) {
    if (s.slots[static_cast<size_t>(seq)] < 0) continue;
    const int n = s.lens[static_cast<size_t>(seq)], from = s.compact_from[static_cast<size_t>(seq)];
    for (int h = 0; h < s.hkv; ++h) {
      if (s.table.Head(seq, h).decode != kernels::kDecodeRetrieve) continue;
      std::vector<int> keys;
      for (int p = 0; p < n; ++p) {
        if (from == 0 || p < s.sink || p >= from) keys.push_back(p);
      }
      for (int g = 0; g < s.group(); ++g) {
        const int qh = h * s.group() + g;
        const int token = s.seq_token[static_cast<size_t>(seq)];
        const float* qv = s.q.data() + (static_cast<size_t>(token) * s.hq + qh) * s.d;
        std::vector<double> logits;
        double top = -INFINITY;
        for (int p : keys) {
          const float* kv = s.k.data() + s.table.Slot(seq, h, p) * s.d;
          double dot = 0;
          for (int c = 0; c < s.d; ++c) dot += double(qv[c]) * kv[c];
          logits.push_back(dot * s.scale);
          top = std::max(top, logits.back());
        }
        const size_t row = static_cast<size_t>(seq) * s.hq + qh;
        const double host_lse = s.host_lse[row];
        top = std::max(top, host_lse);
        std::vector<double> acc(static_cast<size_t>(s.d), 0.0);
        double denom = 0;
        for (size_t j = 0; j < keys.size(); ++j) {
          const double w = std::exp(logits[j] - top);
          denom += w;
          const float* vv = s.v.data() + s.table.Slot(seq, h, keys[j]) * s.d;
          for (int c = 0; c < s.d; ++c) acc[static_cast<size_t>(c)] += w * vv[c];
        }
        if (std::isfinite(host_lse)) {
          const double w = std::exp(host_lse - top);
          denom += w;
          for (int c = 0; c < s.d; ++c) {
            acc[static_cast<size_t>(c)] += w * s.host_out[row * s.d + static_cast<size_t>(c)];
          }
        }
        for (int c = 0; c < s.d; ++c) {
          out[(static_cast<size_t>(token) * s.hq + qh) * s.d + static_cast<size_t>(c)] =
              static_cast<float>(acc[static_cast<size_t>(c)] / denom);
        }
      }
    }
  }
  return out;
}

// Backend::TopKeys's inputs: queries [m, d] and keys [n, d], bf16-representable. With `ties`,
// small integers (-2..2), so that every score is exact in f32 and many keys share the k-th
// score: the rule "ties to the lower id" then decides, and both sides must agree exactly.
struct TopKeysCase {
  int64_t m = 0, n = 0, d = 0, k = 0;
  std::vector<float> queries, keys;
};

inline TopKeysCase MakeTopKeysCase(int64_t m, int64_t n, int64_t d, int64_t k, bool ties,
                                   std::mt19937& rng) {
  TopKeysCase c{m, n, d, k, {}, {}};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-2, 2);
  auto fill = [&](std::vector<float>& v, int64_t count) {
    v.resize(static_cast<size_t>(count));
    for (float& x : v)
      x = ties ? static_cast<float>(small(rng)) : BF16ToF32(F32ToBF16(normal(rng)));
  };
  fill(c.queries, m * d);
  fill(c.keys, n * d);
  return c;
}

// The k best ids of each query in double, best first, ties to the lower id: [m, k].
inline std::vector<int32_t> ExpectedTopKeys(const TopKeysCase& c, std::vector<double>& scores) {
  scores.assign(static_cast<size_t>(c.m * c.n), 0.0);
  std::vector<int32_t> want;
  for (int64_t i = 0; i < c.m; ++i) {
    double* row = scores.data() + i * c.n;
    for (int64_t j = 0; j < c.n; ++j) {
      for (int64_t t = 0; t < c.d; ++t) {
        row[j] += double{c.queries[static_cast<size_t>(i * c.d + t)]} *
                  c.keys[static_cast<size_t>(j * c.d + t)];
      }
    }
    std::vector<int32_t> ids(static_cast<size_t>(c.n));
    for (int64_t j = 0; j < c.n; ++j) ids[static_cast<size_t>(j)] = static_cast<int32_t>(j);
    std::partial_sort(ids.begin(), ids.begin() + c.k, ids.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    want.insert(want.end(), ids.begin(), ids.begin() + c.k);
  }
  return want;
}

// Checks TopKeys's answer `got` [m, k] against the double reference: distinct ids in range, and
// the j-th id's score within `tol` (relative to the row's largest |score|) of the j-th best
// score, so that only keys whose scores differ by rounding may trade places. Returns how many
// entries differ from the reference's ids (0 is required where every score is exact).
inline int64_t CheckTopKeys(const TopKeysCase& c, const std::vector<int32_t>& got, double tol) {
  std::vector<double> scores;
  const std::vector<int32_t> want = ExpectedTopKeys(c, scores);
  REQUIRE(got.size() == want.size());
  int64_t differ = 0;
  for (int64_t i = 0; i < c.m; ++i) {
    const double* row = scores.data() + i * c.n;
    double scale = 0.0;
    for (int64_t j = 0; j < c.n; ++j) scale = std::max(scale, std::fabs(row[j]));
    std::vector<int32_t> seen;
    for (int64_t j = 0; j < c.k; ++j) {
      const int32_t id = got[static_cast<size_t>(i * c.k + j)];
      const int32_t best = want[static_cast<size_t>(i * c.k + j)];
      INFO("query " << i << " rank " << j << " id " << id << " (reference " << best << ")");
      REQUIRE((id >= 0 && id < c.n));
      seen.push_back(id);
      REQUIRE(std::fabs(row[id] - row[best]) <= tol * scale);
      differ += id != best ? 1 : 0;
    }
    std::sort(seen.begin(), seen.end());
    REQUIRE(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  }
  return differ;
}

}  // namespace headwise::testing
