#include "kernels/cpu/select_decode.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "kernels/cpu/kv_lookup.h"
#include "kernels/cpu/list_attention.h"

namespace headwise::kernels::cpu {
namespace {

// The sizes of one layer's selection call, checked once against every tensor it reads.
struct Shapes {
  int64_t tokens = 0, q_heads = 0, head_dim = 0, kv_heads = 0, group = 0;
  int64_t slots = 0, sets = 0, budget = 0;
};

// A sequence that selects this step: its slot, its query row and its keys [0, len).
struct SelectingSeq {
  int32_t seq = 0, slot = 0, token = 0, len = 0, layout = 0;
};

void CheckStateTensor(const Tensor& t, const char* what, std::initializer_list<int64_t> dims) {
  CheckI32(t, what);
  bool same = t.rank == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) same = same && t.dim(i++) == d;
  HW_CHECK(same, "SelectState::{} {} does not match positions (slots, sets, Hq) = {}", what,
           t.ShapeString(), fmt::join(dims, ", "));
}

Shapes CheckBatch(const Tensor& q, const SelectDecodeBatch& batch) {
  const BlockTable& table = batch.table;
  CheckF32(q, "q");
  HW_CHECK(q.rank == 3, "q {} must be [T, Hq, D]", q.ShapeString());
  Shapes sh;
  sh.tokens = q.dim(0);
  sh.q_heads = q.dim(1);
  sh.head_dim = q.dim(2);
  sh.kv_heads = table.num_kv_heads();
  HW_CHECK(sh.kv_heads > 0 && sh.q_heads % sh.kv_heads == 0, "{} query heads, {} KV heads",
           sh.q_heads, sh.kv_heads);
  sh.group = sh.q_heads / sh.kv_heads;
  const int64_t seqs = table.num_seqs();
  CheckI32(batch.seq_token, "SelectDecodeBatch::seq_token");
  CheckI32(batch.seq_len, "SelectDecodeBatch::seq_len");
  HW_CHECK(batch.seq_token.numel() == seqs && batch.seq_len.numel() == seqs,
           "SelectDecodeBatch::seq_token {} and seq_len {} must be [S] with S = {}",
           batch.seq_token.ShapeString(), batch.seq_len.ShapeString(), seqs);
  const SelectState& st = batch.state;
  CheckI32(st.positions, "SelectState::positions");
  HW_CHECK(st.positions.rank == 4 && st.positions.dim(2) == sh.q_heads,
           "SelectState::positions {} must be [slots, sets, Hq = {}, budget]",
           st.positions.ShapeString(), sh.q_heads);
  sh.slots = st.positions.dim(0);
  sh.sets = st.positions.dim(1);
  sh.budget = st.positions.dim(3);
  CheckStateTensor(st.counts, "counts", {sh.slots, sh.sets, sh.q_heads});
  CheckStateTensor(st.chosen_len, "chosen_len", {sh.slots, sh.sets});
  CheckStateTensor(st.steps, "steps", {sh.slots, sh.sets});
  CheckStateTensor(st.refresh, "refresh", {sh.slots, sh.sets});
  if (st.q_ref.data != nullptr) {
    CheckF32(st.q_ref, "SelectState::q_ref");
    HW_CHECK(st.q_ref.numel() == sh.slots * sh.sets * sh.q_heads * sh.head_dim,
             "SelectState::q_ref {} must be [slots {}, sets {}, Hq * D = {}]",
             st.q_ref.ShapeString(), sh.slots, sh.sets, sh.q_heads * sh.head_dim);
  }
  for (int32_t s = 0; s < seqs; ++s) {
    const int32_t slot = table.seq_slot.ptr<int32_t>()[s];
    if (slot < 0) continue;
    const int32_t token = batch.seq_token.ptr<int32_t>()[s];
    const int32_t len = batch.seq_len.ptr<int32_t>()[s];
    HW_CHECK(slot < sh.slots, "sequence {}: selection slot {} of {}", s, slot, sh.slots);
    HW_CHECK(token >= 0 && token < sh.tokens, "sequence {}: query row {} of {}", s, token,
             sh.tokens);
    HW_CHECK(len >= 1, "sequence {} selects with {} keys", s, len);
    const int layout = table.seq_layout.ptr<int32_t>()[s];
    for (int h = 0; h < sh.kv_heads; ++h) {
      const KvSelect sel = LayoutSelect(table, layout, h);
      HW_CHECK(sel.decode == kDecodeDense || sel.set < sh.sets,
               "layout {} KV head {}: set {} outside SelectState's {} sets", layout, h, sel.set,
               sh.sets);
    }
  }
  return sh;
}

std::vector<SelectingSeq> SelectingSeqs(const SelectDecodeBatch& batch) {
  std::vector<SelectingSeq> seqs;
  for (int32_t s = 0; s < batch.table.num_seqs(); ++s) {
    const int32_t slot = batch.table.seq_slot.ptr<int32_t>()[s];
    if (slot < 0) continue;
    seqs.push_back({s, slot, batch.seq_token.ptr<int32_t>()[s], batch.seq_len.ptr<int32_t>()[s],
                    batch.table.seq_layout.ptr<int32_t>()[s]});
  }
  return seqs;
}

// Index of (slot, set) in the [slots, sets] state tensors; of its row in the [.., Hq] ones.
int64_t SetIndex(const Shapes& sh, int32_t slot, int32_t set) {
  return int64_t{slot} * sh.sets + set;
}
int64_t RowIndex(const Shapes& sh, int32_t slot, int32_t set, int64_t row) {
  return SetIndex(sh, slot, set) * sh.q_heads + row;
}

bool Refreshing(const SelectDecodeBatch& batch, const Shapes& sh, int32_t slot,
                const KvSelect& sel) {
  return batch.state.refresh.ptr<int32_t>()[SetIndex(sh, slot, sel.set)] == 1;
}
// Heads that choose their set this step (ScoreAttention, SelectTopK): select and pages heads
// every step, recycle heads when refreshing.
bool Chooses(const SelectDecodeBatch& batch, const Shapes& sh, int32_t slot, const KvSelect& sel) {
  return sel.decode == kDecodeSelect || sel.decode == kDecodePages ||
         (sel.decode == kDecodeRecycle && Refreshing(batch, sh, slot, sel));
}
// Heads that attend a set (SelectedAttention): consume and pages heads, recycle heads reusing.
bool AttendsSet(const SelectDecodeBatch& batch, const Shapes& sh, int32_t slot,
                const KvSelect& sel) {
  return sel.decode == kDecodeConsume || sel.decode == kDecodePages ||
         (sel.decode == kDecodeRecycle && !Refreshing(batch, sh, slot, sel));
}

// One (selecting sequence, KV head) an operation works on.
struct HeadWork {
  SelectingSeq seq;
  int kv_head = 0;
  KvSelect sel;
};
template <typename Pred>
std::vector<HeadWork> HeadsWhere(const BlockTable& table, const std::vector<SelectingSeq>& seqs,
                                 int64_t kv_heads, Pred&& pred) {
  std::vector<HeadWork> work;
  for (const SelectingSeq& s : seqs) {
    for (int h = 0; h < kv_heads; ++h) {
      const KvSelect sel = LayoutSelect(table, s.layout, h);
      if (sel.decode != kDecodeDense && pred(s, sel)) work.push_back({s, h, sel});
    }
  }
  return work;
}

int32_t CeilDiv(int32_t a, int32_t b) {
  return (a + b - 1) / b;
}

// Where the pages of sequence seq's tail page begins: the page holding key len - 1.
int32_t TailPageStart(int32_t len, int page_size) {
  return (len - 1) / page_size * page_size;
}

// The pool a call reads has the page size SelectTopK chooses pages by.
void CheckPageSize(const KvPoolView& pool, const SelectDecodeBatch& batch) {
  HW_CHECK(pool.page_size > 0 && (batch.page_size == 0 || batch.page_size == pool.page_size),
           "SelectDecodeBatch::page_size {} but the pool's pages hold {}", batch.page_size,
           pool.page_size);
}

// The k best of candidates [0, count) by score (higher first, ties to the lower index), in
// increasing index; all of them when count <= k.
std::vector<int32_t> Best(const std::vector<double>& score, int32_t k) {
  const auto count = static_cast<int32_t>(score.size());
  std::vector<int32_t> idx(static_cast<size_t>(count));
  std::iota(idx.begin(), idx.end(), 0);
  if (k < count) {
    const auto better = [&](int32_t a, int32_t b) {
      const double sa = score[static_cast<size_t>(a)], sb = score[static_cast<size_t>(b)];
      return sa > sb || (sa == sb && a < b);
    };
    std::partial_sort(idx.begin(), idx.begin() + std::max(k, 0), idx.end(), better);
    idx.resize(static_cast<size_t>(std::max(k, 0)));
    std::sort(idx.begin(), idx.end());
  }
  return idx;
}

}  // namespace

bool SelectionAttends(const BlockTable& table, int32_t seq, const KvHead& head) {
  return head.decode != kDecodeDense && SelectSlot(table, seq) >= 0;
}

void UpdatePageSummaries(const KvPoolView& pool, const PagedAttentionBatch& batch) {
  if (pool.kmin.data == nullptr) return;
  const BlockTable& table = batch.table;
  CheckTable(table);
  CheckF32(pool.kmin, "KvPoolView::kmin");
  CheckF32(pool.kmax, "KvPoolView::kmax");
  CheckI32(batch.token_seq, "token_seq");
  CheckI32(batch.token_pos, "token_pos");
  const int64_t pages = pool.k.dim(0), head_dim = pool.k.dim(2);
  HW_CHECK(pool.kmin.rank == 2 && pool.kmin.dim(0) == pages && pool.kmin.dim(1) == head_dim &&
               pool.kmax.rank == 2 && pool.kmax.dim(0) == pages && pool.kmax.dim(1) == head_dim,
           "KvPoolView::kmin {} and kmax {} must be [pages {}, D {}]", pool.kmin.ShapeString(),
           pool.kmax.ShapeString(), pages, head_dim);
  HW_CHECK_EQ(batch.token_seq.numel(), batch.token_pos.numel());
  const int page_size = pool.page_size;
  // In token order: a chunk's tokens of one page recompute its bounds in turn, the last (the
  // highest position) over all of them.
  for (int64_t t = 0; t < batch.token_pos.numel(); ++t) {
    const int32_t pos = batch.token_pos.ptr<int32_t>()[t];
    if (pos < 0) continue;  // padding
    const int32_t seq = batch.token_seq.ptr<int32_t>()[t];
    for (int h = 0; h < table.num_kv_heads(); ++h) {
      const SeqHead sh = HeadOf(table, seq, h);
      if (sh.head.decode != kDecodePages) continue;
      const int64_t first = SlotOf(sh, table, pool, pos - pos % page_size);
      const int64_t page = first / page_size;
      float* lo = pool.kmin.ptr<float>() + page * head_dim;
      float* hi = pool.kmax.ptr<float>() + page * head_dim;
      const float* k = pool.k.ptr<float>() + first * head_dim;
      std::copy_n(k, head_dim, lo);
      std::copy_n(k, head_dim, hi);
      for (int32_t i = 1; i <= pos % page_size; ++i) {
        const float* key = k + int64_t{i} * head_dim;
        for (int64_t c = 0; c < head_dim; ++c) {
          lo[c] = std::min(lo[c], key[c]);
          hi[c] = std::max(hi[c], key[c]);
        }
      }
    }
  }
}

void SelectionGate(const Tensor& q, const SelectDecodeBatch& batch) {
  if (!batch.table.has_select_heads()) return;
  CheckTable(batch.table);
  const Shapes sh = CheckBatch(q, batch);
  const SelectState& st = batch.state;
  const int64_t width = sh.q_heads * sh.head_dim;
  for (const SelectingSeq& s : SelectingSeqs(batch)) {
    std::vector<int32_t> gated;  // set indices decided for this sequence
    for (int h = 0; h < sh.kv_heads; ++h) {
      const KvSelect sel = LayoutSelect(batch.table, s.layout, h);
      if (sel.decode != kDecodeRecycle ||
          std::find(gated.begin(), gated.end(), sel.set) != gated.end()) {
        continue;
      }
      gated.push_back(sel.set);
      const int64_t at = SetIndex(sh, s.slot, sel.set);
      int32_t& refresh = st.refresh.ptr<int32_t>()[at];
      int32_t& steps = st.steps.ptr<int32_t>()[at];
      bool choose = st.chosen_len.ptr<int32_t>()[at] < 0 || steps + 1 >= sel.refresh_every;
      if (!choose && sel.refresh_below_cos) {
        HW_CHECK(st.q_ref.data != nullptr,
                 "layout {} KV head {}: a cosine refresh rule without SelectState::q_ref", s.layout,
                 h);
        const float* qv = q.ptr<float>() + int64_t{s.token} * width;
        const float* ref = st.q_ref.ptr<float>() + at * width;
        double dot = 0.0, qq = 0.0, rr = 0.0;
        for (int64_t i = 0; i < width; ++i) {
          dot += double{qv[i]} * ref[i];
          qq += double{qv[i]} * qv[i];
          rr += double{ref[i]} * ref[i];
        }
        const double cos = qq > 0.0 && rr > 0.0 ? dot / std::sqrt(qq * rr) : 0.0;
        choose = cos < double{sel.refresh_cos};
      }
      if (choose) {
        refresh = 1;
      } else {
        refresh = 0;
        ++steps;
      }
    }
  }
}

void ScoreAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                    float scale, const Tensor& out, const Tensor& scores, ThreadPool& threads) {
  if (!batch.table.has_select_heads()) return;
  CheckTable(batch.table);
  const Shapes sh = CheckBatch(q, batch);
  CheckPageSize(pool, batch);
  const BlockTable& table = batch.table;
  CheckF32(out, "out");
  CheckF32(scores, "scores");
  HW_CHECK(out.numel() == q.numel(), "out {} must be shaped as q {}", out.ShapeString(),
           q.ShapeString());
  HW_CHECK(scores.rank == 3 && scores.dim(0) == table.num_seqs() && scores.dim(1) == sh.q_heads &&
               scores.dim(2) >= batch.max_len,
           "scores {} must be [S {}, Hq {}, max_len {}]", scores.ShapeString(), table.num_seqs(),
           sh.q_heads, batch.max_len);
  const std::vector<HeadWork> heads =
      HeadsWhere(table, SelectingSeqs(batch), sh.kv_heads,
                 [&](const SelectingSeq& s, auto& sel) { return Chooses(batch, sh, s.slot, sel); });
  const int page_size = pool.page_size;
  int64_t keys = 0;
  for (const HeadWork& w : heads) {
    const int32_t width = w.sel.decode == kDecodePages ? CeilDiv(w.seq.len, page_size) : w.seq.len;
    HW_CHECK(width <= batch.max_len,
             "sequence {} KV head {}: {} scores over SelectDecodeBatch::max_len {}", w.seq.seq,
             w.kv_head, width, batch.max_len);
    if (w.sel.decode == kDecodePages) {
      HW_CHECK(pool.kmin.data != nullptr && pool.kmax.data != nullptr,
               "layout {} KV head {} selects pages but the pool has no page bounds (kmin, kmax)",
               w.seq.layout, w.kv_head);
      HW_CHECK(pool.kmin.dim(0) == pool.k.dim(0) && pool.kmin.dim(1) == sh.head_dim &&
                   pool.kmax.dim(0) == pool.k.dim(0) && pool.kmax.dim(1) == sh.head_dim,
               "KvPoolView::kmin {} and kmax {} must be [pages {}, D {}]", pool.kmin.ShapeString(),
               pool.kmax.ShapeString(), pool.k.dim(0), sh.head_dim);
    }
    keys += width;
  }
  const int64_t stride = scores.dim(2);
  const int64_t group = sh.group, head_dim = sh.head_dim;
  threads.ParallelFor(
      static_cast<int64_t>(heads.size()) * group, keys * group * head_dim * 4,
      [&](int64_t begin, int64_t end) {
        KeyList list;
        ListScratch scratch;
        for (int64_t u = begin; u < end; ++u) {
          const HeadWork& w = heads[static_cast<size_t>(u / group)];
          const int64_t qh = int64_t{w.kv_head} * group + u % group;
          const SeqHead kv = HeadOf(table, w.seq.seq, w.kv_head);
          const float* qv = q.ptr<float>() + (w.seq.token * sh.q_heads + qh) * head_dim;
          float* row = scores.ptr<float>() + (w.seq.seq * sh.q_heads + qh) * stride;
          if (w.sel.decode == kDecodePages) {
            // Quest's bound of each page: no key of it has a larger logit.
            for (int32_t p = 0; p < CeilDiv(w.seq.len, page_size); ++p) {
              const int64_t page = SlotOf(kv, table, pool, p * page_size) / page_size;
              const float* lo = pool.kmin.ptr<float>() + page * head_dim;
              const float* hi = pool.kmax.ptr<float>() + page * head_dim;
              double bound = 0.0;
              for (int64_t c = 0; c < head_dim; ++c) {
                bound += std::max(double{qv[c]} * hi[c], double{qv[c]} * lo[c]);
              }
              row[p] = static_cast<float>(bound * scale);
            }
            continue;
          }
          list.Clear();
          for (int32_t j = 0; j < w.seq.len; ++j) {
            const int64_t slot = SlotOf(kv, table, pool, j);
            list.k.push_back(pool.k.ptr<float>() + slot * head_dim);
            list.v.push_back(pool.v.ptr<float>() + slot * head_dim);
          }
          float* o = out.ptr<float>() + (w.seq.token * sh.q_heads + qh) * head_dim;
          AttendList(qv, 1, head_dim, list, scale, {o, nullptr, row, stride}, scratch);
        }
      });
}

void SelectTopK(const Tensor& q, const Tensor& scores, const SelectDecodeBatch& batch) {
  if (!batch.table.has_select_heads()) return;
  CheckTable(batch.table);
  const Shapes sh = CheckBatch(q, batch);
  const BlockTable& table = batch.table;
  const SelectState& st = batch.state;
  CheckF32(scores, "scores");
  HW_CHECK(scores.rank == 3 && scores.dim(0) == table.num_seqs() && scores.dim(1) == sh.q_heads &&
               scores.dim(2) >= batch.max_len,
           "scores {} must be [S {}, Hq {}, max_len {}]", scores.ShapeString(), table.num_seqs(),
           sh.q_heads, batch.max_len);
  const int64_t stride = scores.dim(2), group = sh.group;
  const int page_size = batch.page_size;
  const std::vector<HeadWork> heads =
      HeadsWhere(table, SelectingSeqs(batch), sh.kv_heads,
                 [&](const SelectingSeq& s, auto& sel) { return Chooses(batch, sh, s.slot, sel); });
  std::vector<double> lse(static_cast<size_t>(group)), score;
  for (const HeadWork& w : heads) {
    const KvSelect& sel = w.sel;
    const int32_t n = w.seq.len;
    const bool pages = sel.decode == kDecodePages;
    HW_CHECK(!pages || page_size > 0,
             "layout {} KV head {} selects pages: SelectDecodeBatch::page_size is {}", w.seq.layout,
             w.kv_head, page_size);
    // Scored entries (keys or pages), the candidates among them and how many to keep.
    const int32_t scored = pages ? CeilDiv(n, page_size) : n;
    HW_CHECK(scored <= batch.max_len,
             "sequence {} KV head {}: {} scores over SelectDecodeBatch::max_len {}", w.seq.seq,
             w.kv_head, scored, batch.max_len);
    int32_t first = 0, last = 0, keep = 0;  // candidates [first, last)
    if (pages) {
      first = CeilDiv(sel.sink, page_size);
      last = TailPageStart(n, page_size) / page_size;
      keep = std::max(0, (sel.budget - sel.sink) / page_size - 1);
    } else {
      first = sel.sink;
      last = n - sel.recent;
      keep = std::max(0, sel.budget - sel.sink - sel.recent);
    }
    const int32_t candidates = std::max(0, last - first);
    const int64_t qh0 = int64_t{w.kv_head} * group;
    const float* logits = scores.ptr<float>() + (int64_t{w.seq.seq} * sh.q_heads + qh0) * stride;
    const auto logit = [&](int64_t g, int32_t j) { return double{logits[g * stride + j]}; };
    if (!sel.per_q_head && sel.reduce == kReduceSumSoftmax) {
      // Each query head's softmax over everything it scored.
      for (int64_t g = 0; g < group; ++g) {
        double max = -INFINITY, sum = 0.0;
        for (int32_t j = 0; j < scored; ++j) max = std::max(max, logit(g, j));
        for (int32_t j = 0; j < scored; ++j) sum += std::exp(logit(g, j) - max);
        lse[static_cast<size_t>(g)] = max + std::log(sum);
      }
    }
    const int64_t rows = sel.per_q_head ? group : 1;
    for (int64_t r = 0; r < rows; ++r) {
      score.resize(static_cast<size_t>(candidates));
      for (int32_t c = 0; c < candidates; ++c) {
        const int32_t j = first + c;
        double value = 0.0;
        if (sel.per_q_head) {
          value = logit(r, j);
        } else if (sel.reduce == kReduceSumSoftmax) {
          for (int64_t g = 0; g < group; ++g) {
            value += std::exp(logit(g, j) - lse[static_cast<size_t>(g)]);
          }
        } else if (sel.reduce == kReduceSumLogits) {
          for (int64_t g = 0; g < group; ++g) value += logit(g, j);
        } else {
          value = -INFINITY;
          for (int64_t g = 0; g < group; ++g) value = std::max(value, logit(g, j));
        }
        HW_CHECK(!std::isnan(value), "sequence {} KV head {}: score of {} {} is NaN", w.seq.seq,
                 w.kv_head, pages ? "page" : "key", j);
        score[static_cast<size_t>(c)] = value;
      }
      const std::vector<int32_t> best = Best(score, keep);
      const int64_t row = sel.per_q_head ? qh0 + r : w.kv_head;
      const int64_t at = RowIndex(sh, w.seq.slot, sel.set, row);
      const int64_t count = static_cast<int64_t>(best.size()) * (pages ? page_size : 1);
      HW_CHECK(count <= sh.budget,
               "sequence {} KV head {}: a set of {} positions over SelectState's budget {}",
               w.seq.seq, w.kv_head, count, sh.budget);
      int32_t* positions = st.positions.ptr<int32_t>() + at * sh.budget;
      for (int32_t c : best) {
        if (pages) {
          for (int32_t i = 0; i < page_size; ++i) *positions++ = (first + c) * page_size + i;
        } else {
          *positions++ = first + c;
        }
      }
      st.counts.ptr<int32_t>()[at] = static_cast<int32_t>(count);
    }
    const int64_t set_at = SetIndex(sh, w.seq.slot, sel.set);
    st.chosen_len.ptr<int32_t>()[set_at] = n;
    st.steps.ptr<int32_t>()[set_at] = 0;
    if (sel.decode == kDecodeRecycle && sel.refresh_below_cos) {
      HW_CHECK(st.q_ref.data != nullptr,
               "layout {} KV head {}: a cosine refresh rule without SelectState::q_ref",
               w.seq.layout, w.kv_head);
      const int64_t width = sh.q_heads * sh.head_dim;
      std::copy_n(q.ptr<float>() + int64_t{w.seq.token} * width, width,
                  st.q_ref.ptr<float>() + set_at * width);
    }
  }
}

void SelectedAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                       float scale, const Tensor& out, ThreadPool& threads) {
  if (!batch.table.has_select_heads()) return;
  CheckTable(batch.table);
  const Shapes sh = CheckBatch(q, batch);
  CheckPageSize(pool, batch);
  const BlockTable& table = batch.table;
  const SelectState& st = batch.state;
  CheckF32(out, "out");
  HW_CHECK(out.numel() == q.numel(), "out {} must be shaped as q {}", out.ShapeString(),
           q.ShapeString());
  const std::vector<HeadWork> heads = HeadsWhere(
      table, SelectingSeqs(batch), sh.kv_heads,
      [&](const SelectingSeq& s, auto& sel) { return AttendsSet(batch, sh, s.slot, sel); });
  const int page_size = pool.page_size;
  const int64_t group = sh.group, head_dim = sh.head_dim;
  int64_t keys = 0;
  for (const HeadWork& w : heads) {
    const int32_t chosen = st.chosen_len.ptr<int32_t>()[SetIndex(sh, w.seq.slot, w.sel.set)];
    if (w.sel.decode == kDecodeRecycle) {
      HW_CHECK(chosen >= 0 && chosen <= w.seq.len,
               "sequence {} KV head {}: recycles set {} chosen at {} keys, the sequence has {}",
               w.seq.seq, w.kv_head, w.sel.set, chosen, w.seq.len);
    } else {
      // Consume and pages heads read a set chosen this step (by the select head of an earlier
      // layer, or by ScoreAttention and SelectTopK of this one): never a stale one.
      HW_CHECK(chosen == w.seq.len,
               "sequence {} KV head {}: set {} was chosen at {} keys, this step has {}", w.seq.seq,
               w.kv_head, w.sel.set, chosen, w.seq.len);
    }
    keys += std::min<int64_t>(w.seq.len, sh.budget + w.sel.sink + w.sel.recent + page_size);
  }
  threads.ParallelFor(
      static_cast<int64_t>(heads.size()) * group, keys * group * head_dim * 4,
      [&](int64_t begin, int64_t end) {
        std::vector<int32_t> attended;
        KeyList list;
        ListScratch scratch;
        for (int64_t u = begin; u < end; ++u) {
          const HeadWork& w = heads[static_cast<size_t>(u / group)];
          const KvSelect& sel = w.sel;
          const int32_t n = w.seq.len;
          const int64_t qh = int64_t{w.kv_head} * group + u % group;
          const int64_t at = RowIndex(sh, w.seq.slot, sel.set, sel.per_q_head ? qh : w.kv_head);
          const int32_t count = st.counts.ptr<int32_t>()[at];
          HW_CHECK(count >= 0 && count <= sh.budget,
                   "sequence {} KV head {}: set {} row {} holds {} positions of {}", w.seq.seq,
                   w.kv_head, sel.set, at % sh.q_heads, count, sh.budget);
          int32_t tail = n - sel.recent;
          if (sel.decode == kDecodePages) {
            tail = TailPageStart(n, page_size);
          } else if (sel.decode == kDecodeRecycle && sel.since_refresh) {
            // The tail when the set was chosen, and everything after it.
            tail = std::min(
                tail, st.chosen_len.ptr<int32_t>()[SetIndex(sh, w.seq.slot, sel.set)] - sel.recent);
          }
          // Sink, set and tail, in increasing position, each key once.
          attended.clear();
          for (int32_t j = 0; j < std::min(sel.sink, n); ++j) attended.push_back(j);
          const int32_t* set = st.positions.ptr<int32_t>() + at * sh.budget;
          for (int32_t i = 0; i < count; ++i) {
            HW_CHECK(set[i] >= 0 && set[i] < n && (i == 0 || set[i - 1] < set[i]),
                     "sequence {} KV head {}: set {} entry {} is position {} (of {} keys, after "
                     "{})",
                     w.seq.seq, w.kv_head, sel.set, i, set[i], n, i > 0 ? set[i - 1] : -1);
            attended.push_back(set[i]);
          }
          for (int32_t j = std::max(tail, 0); j < n; ++j) attended.push_back(j);
          std::sort(attended.begin(), attended.end());
          attended.erase(std::unique(attended.begin(), attended.end()), attended.end());
          const SeqHead kv = HeadOf(table, w.seq.seq, w.kv_head);
          list.Clear();
          for (int32_t j : attended) {
            const int64_t slot = SlotOf(kv, table, pool, j);
            list.k.push_back(pool.k.ptr<float>() + slot * head_dim);
            list.v.push_back(pool.v.ptr<float>() + slot * head_dim);
          }
          const int64_t row = (int64_t{w.seq.token} * sh.q_heads + qh) * head_dim;
          AttendList(q.ptr<float>() + row, 1, head_dim, list, scale,
                     {out.ptr<float>() + row, nullptr, nullptr, 0}, scratch);
        }
      });
}

}  // namespace headwise::kernels::cpu
