// Block tables for kernel tests (kernels::BlockTable): sequences of several KV layouts in one
// batch, their pages handed out as the KV cache does — a block per (sequence, logical page,
// storage kind), blocks of different sizes in shuffled order (so first pages are no multiple of
// anything), each head's page inside its block permuted, and other (absent) layers' pages in
// every block. Built on the host, uploaded to any backend.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "tests/backend_util.h"

namespace headwise::testing {

using kernels::KvRetention;

// A KV layout as tests write it: the retention of each KV head (one layer).
using LayoutSpec = std::vector<KvRetention>;

inline KvRetention FullHead() {
  return {};
}
inline KvRetention RingHead(int sink, int window, bool reindex = false) {
  KvRetention r;
  r.storage = kernels::kStorageRing;
  r.sink = sink;
  r.window = window;
  r.positions = reindex ? kernels::kPositionsReindex : kernels::kPositionsOriginal;
  return r;
}
inline KvRetention CompressOnceHead(int sink, int window, bool compensation = true,
                                    bool by_count = true) {
  KvRetention r;
  r.storage = kernels::kStorageCompressOnce;
  r.sink = sink;
  r.window = window;
  r.compensation = compensation ? 1 : 0;
  r.compensation_by_count = by_count ? 1 : 0;
  return r;
}

inline KvRetention OffloadHead(int sink, int window) {
  return KvRetention::Offload(sink, window);
}
// The kind of block a head keeps its keys in: 0 full, 1 ring, 2 comp (compress_once, offload).
inline int BlockKindOf(const KvRetention& r) {
  return r.ring() ? 1 : r.compacts() ? 2 : 0;
}

// The host image of one layer's BlockTable.
struct HostBlockTable {
  int hkv = 0, page_size = 0, max_blocks = 0, num_pages = 0;
  std::vector<int32_t> heads;                             // [layouts, hkv, kKvHeadInts]
  std::vector<int32_t> seq_layout;                        // [S]
  std::vector<int32_t> blocks, ring_blocks, comp_blocks;  // [S, max_blocks]
  std::vector<int32_t> comp_from;                         // [S]
  // Decode-time selection (SetSelects): each (layout, KV head)'s KvSelect and each sequence's
  // selection slot this step (-1: dense).
  std::vector<int32_t> selects;   // [layouts, hkv, kKvSelectInts]
  std::vector<int32_t> seq_slot;  // [S]
  bool any_ring = false, any_comp = false, any_reindex = false, any_select = false;
  int max_full_heads = 0, max_ring_span = 0;

  int num_seqs() const { return static_cast<int>(seq_layout.size()); }
  int num_layouts() const { return static_cast<int>(heads.size()) / (hkv * kernels::kKvHeadInts); }
  kernels::KvHead LayoutHead(int layout, int h) const {
    kernels::KvHead head;
    std::copy_n(heads.begin() + (layout * hkv + h) * kernels::kKvHeadInts, kernels::kKvHeadInts,
                reinterpret_cast<int32_t*>(&head));
    return head;
  }
  kernels::KvHead Head(int seq, int h) const {
    return LayoutHead(seq_layout[static_cast<size_t>(seq)], h);
  }
  const std::vector<int32_t>& KindBlocks(const KvRetention& r) const {
    return r.ring() ? ring_blocks : r.compacts() ? comp_blocks : blocks;
  }
  // Pool slot (page * page_size + offset) of key `pos` of (seq, KV head h).
  int64_t Slot(int seq, int h, int pos) const {
    const kernels::KvHead head = Head(seq, h);
    const int32_t first =
        KindBlocks(head.retention)[static_cast<size_t>(seq * max_blocks + pos / page_size)];
    return (int64_t{first} + head.page) * page_size + pos % page_size;
  }

  // Compacts sequence seq at `from` (BlockTable::comp_from), freeing (-1) the comp blocks of the
  // logical pages whose positions its compacting (compress-once, offload) heads all dropped. Its
  // layout's compacting heads share one sink and compensation here, as one policy gives them.
  void Compact(int seq, int from) {
    int keep_below = 0;  // positions below this are kept: the sinks and the compensation token
    for (int h = 0; h < hkv; ++h) {
      const KvRetention r = Head(seq, h).retention;
      if (r.compacts()) keep_below = std::max(keep_below, r.sink + r.compensation);
    }
    comp_from[static_cast<size_t>(seq)] = from;
    for (int b = 0; b < max_blocks; ++b) {
      if (b * page_size >= keep_below && (b + 1) * page_size <= from) {
        comp_blocks[static_cast<size_t>(seq * max_blocks + b)] = -1;
      }
    }
  }

  // Gives layout l's KV head h the rule rules[l][h] (its KvHead::decode too) and the table
  // seq_slot (every sequence -1, dense, until a test sets its slot).
  void SetSelects(const std::vector<std::vector<kernels::KvSelect>>& rules) {
    selects.clear();
    for (int l = 0; l < num_layouts(); ++l) {
      for (int h = 0; h < hkv; ++h) {
        const kernels::KvSelect& sel = rules.at(static_cast<size_t>(l)).at(static_cast<size_t>(h));
        const auto* ints = reinterpret_cast<const int32_t*>(&sel);
        selects.insert(selects.end(), ints, ints + kernels::kKvSelectInts);
        kernels::KvHead head = LayoutHead(l, h);
        head.decode = sel.decode;
        std::copy_n(reinterpret_cast<const int32_t*>(&head), kernels::kKvHeadInts,
                    heads.begin() + (l * hkv + h) * kernels::kKvHeadInts);
      }
    }
    seq_slot.assign(seq_layout.size(), -1);
    any_select = true;
  }

  // Sequence seq alone in a table of its own layout (the same pages: a pool of num_pages fits).
  HostBlockTable Alone(int seq) const {
    HostBlockTable t = *this;
    const int layout = seq_layout[static_cast<size_t>(seq)];
    t.heads.assign(heads.begin() + layout * hkv * kernels::kKvHeadInts,
                   heads.begin() + (layout + 1) * hkv * kernels::kKvHeadInts);
    t.seq_layout = {0};
    for (auto* rows : {&t.blocks, &t.ring_blocks, &t.comp_blocks}) {
      if (rows->empty()) continue;
      rows->assign(rows->begin() + seq * max_blocks, rows->begin() + (seq + 1) * max_blocks);
    }
    t.comp_from = {comp_from[static_cast<size_t>(seq)]};
    if (any_select) {
      t.selects.assign(selects.begin() + layout * hkv * kernels::kKvSelectInts,
                       selects.begin() + (layout + 1) * hkv * kernels::kKvSelectInts);
      t.seq_slot = {seq_slot[static_cast<size_t>(seq)]};
    }
    t.Summarize();
    return t;
  }

  // max_full_heads and max_ring_span over the layouts.
  void Summarize() {
    max_full_heads = max_ring_span = 0;
    for (int l = 0; l < num_layouts(); ++l) {
      int full = 0;
      for (int h = 0; h < hkv; ++h) {
        const KvRetention r = LayoutHead(l, h).retention;
        if (r.ring()) {
          max_ring_span = std::max(max_ring_span, r.sink + r.window);
        } else {
          ++full;
        }
      }
      max_full_heads = std::max(max_full_heads, full);
    }
  }
};

// Sequence s of length lens[s] runs layouts[seq_layout[s]]; nothing compacted yet.
inline HostBlockTable MakeBlockTable(const std::vector<LayoutSpec>& layouts,
                                     const std::vector<int>& seq_layout,
                                     const std::vector<int>& lens, int page_size,
                                     std::mt19937& rng) {
  HostBlockTable t;
  t.hkv = static_cast<int>(layouts.at(0).size());
  t.page_size = page_size;
  const int num_seqs = static_cast<int>(lens.size());
  t.max_blocks = 1;
  for (int len : lens) t.max_blocks = std::max(t.max_blocks, (len + page_size - 1) / page_size);
  // Each kind's block of a layout holds its heads' pages and as many of other layers', the
  // heads' in shuffled places.
  constexpr int kKinds = 3;
  std::vector<std::vector<int>> block_pages(layouts.size(), std::vector<int>(kKinds, 0));
  for (size_t l = 0; l < layouts.size(); ++l) {
    const LayoutSpec& spec = layouts[l];
    std::vector<int32_t> page(spec.size(), 0);
    for (int kind = 0; kind < kKinds; ++kind) {
      std::vector<int> members;
      for (int h = 0; h < t.hkv; ++h) {
        if (BlockKindOf(spec[static_cast<size_t>(h)]) == kind) members.push_back(h);
      }
      const int size = 2 * static_cast<int>(members.size()) + 1;
      std::vector<int32_t> places(static_cast<size_t>(size));
      std::iota(places.begin(), places.end(), 0);
      std::shuffle(places.begin(), places.end(), rng);
      for (size_t i = 0; i < members.size(); ++i) page[static_cast<size_t>(members[i])] = places[i];
      block_pages[l][static_cast<size_t>(kind)] = members.empty() ? 0 : size;
    }
    for (int h = 0; h < t.hkv; ++h) {
      kernels::KvHead head;
      head.retention = spec[static_cast<size_t>(h)];
      head.page = page[static_cast<size_t>(h)];
      const auto* ints = reinterpret_cast<const int32_t*>(&head);
      t.heads.insert(t.heads.end(), ints, ints + kernels::kKvHeadInts);
      t.any_ring = t.any_ring || head.retention.ring();
      t.any_comp = t.any_comp || head.retention.compacts();
      t.any_reindex = t.any_reindex || head.retention.reindex();
    }
  }
  t.seq_layout.assign(seq_layout.begin(), seq_layout.end());
  // Blocks as the sequences need them, laid out in shuffled order with gaps.
  struct Request {
    int seq, logical, kind, size;
  };
  std::vector<Request> requests;
  for (int s = 0; s < num_seqs; ++s) {
    const auto& sizes = block_pages[static_cast<size_t>(seq_layout[static_cast<size_t>(s)])];
    for (int b = 0; b < (lens[static_cast<size_t>(s)] + page_size - 1) / page_size; ++b) {
      for (int kind = 0; kind < kKinds; ++kind) {
        if (sizes[static_cast<size_t>(kind)] > 0) {
          requests.push_back({s, b, kind, sizes[static_cast<size_t>(kind)]});
        }
      }
    }
  }
  std::shuffle(requests.begin(), requests.end(), rng);
  // Entries no head reads (kinds a layout lacks, pages past a sequence) point far away.
  const auto rows = static_cast<size_t>(num_seqs * t.max_blocks);
  std::vector<int32_t> tables[kKinds] = {std::vector<int32_t>(rows, 1 << 28),
                                         std::vector<int32_t>(rows, 1 << 28),
                                         std::vector<int32_t>(rows, 1 << 28)};
  int next = static_cast<int>(rng() % 3);
  for (const Request& r : requests) {
    tables[r.kind][static_cast<size_t>(r.seq * t.max_blocks + r.logical)] = next;
    next += r.size + static_cast<int>(rng() % 2);
  }
  t.num_pages = next + 1;
  t.blocks = tables[0];
  if (t.any_ring) t.ring_blocks = tables[1];
  if (t.any_comp) t.comp_blocks = tables[2];
  t.comp_from.assign(static_cast<size_t>(num_seqs), 0);
  t.Summarize();
  return t;
}

// A HostBlockTable on a backend; `view` points into the buffers.
struct BackendBlockTable {
  kernels::Buffer heads, seq_layout, blocks, ring_blocks, comp_blocks, comp_from, rope_inv_freq,
      seq_slot, selects;
  kernels::BlockTable view;
};
// rope_inv_freq ([d/2], f32) goes with the table when a layout re-indexes.
inline BackendBlockTable UploadTable(kernels::Backend& be, const HostBlockTable& t,
                                     const std::vector<float>& rope_inv_freq) {
  BackendBlockTable b;
  const int64_t s = t.num_seqs(), w = t.max_blocks;
  b.heads = UploadI32(be, t.heads, {t.num_layouts(), t.hkv, kernels::kKvHeadInts});
  b.seq_layout = UploadI32(be, t.seq_layout, {s});
  b.blocks = UploadI32(be, t.blocks, {s, w});
  b.view.heads = b.heads.view();
  b.view.seq_layout = b.seq_layout.view();
  b.view.blocks = b.blocks.view();
  if (t.any_ring) {
    b.ring_blocks = UploadI32(be, t.ring_blocks, {s, w});
    b.view.ring_blocks = b.ring_blocks.view();
  }
  if (t.any_comp) {
    b.comp_blocks = UploadI32(be, t.comp_blocks, {s, w});
    b.comp_from = UploadI32(be, t.comp_from, {s});
    b.view.comp_blocks = b.comp_blocks.view();
    b.view.comp_from = b.comp_from.view();
  }
  if (t.any_reindex) {
    b.rope_inv_freq = be.Allocate(DType::kF32, {static_cast<int64_t>(rope_inv_freq.size())});
    be.CopyFromHost(b.rope_inv_freq.view(), rope_inv_freq.data(),
                    rope_inv_freq.size() * sizeof(float));
    b.view.rope_inv_freq = b.rope_inv_freq.view();
  }
  if (t.any_select) {
    b.seq_slot = UploadI32(be, t.seq_slot, {s});
    b.selects = UploadI32(be, t.selects, {t.num_layouts(), t.hkv, kernels::kKvSelectInts});
    b.view.seq_slot = b.seq_slot.view();
    b.view.selects = b.selects.view();
  }
  b.view.max_full_heads = t.max_full_heads;
  b.view.max_ring_span = t.max_ring_span;
  return b;
}

// A dense table: every head full, one layout, for sequences of these lengths.
inline HostBlockTable MakeDenseTable(int hkv, const std::vector<int>& lens, int page_size,
                                     std::mt19937& rng) {
  return MakeBlockTable({LayoutSpec(static_cast<size_t>(hkv), FullHead())},
                        std::vector<int>(lens.size(), 0), lens, page_size, rng);
}

// Query tokens of positions [begin[s], end[s]) of every sequence s, in sequence order: one
// step's PagedAttentionBatch metadata.
struct HostTokens {
  std::vector<int32_t> seq, pos;
  std::vector<int32_t> query_start = {0};  // [S + 1]
  int max_query_len = 1;
  int64_t size() const { return static_cast<int64_t>(pos.size()); }
};
inline HostTokens MakeTokens(const std::vector<int>& begin, const std::vector<int>& end) {
  HostTokens t;
  for (size_t s = 0; s < begin.size(); ++s) {
    for (int p = begin[s]; p < end[s]; ++p) {
      t.seq.push_back(static_cast<int32_t>(s));
      t.pos.push_back(p);
    }
    t.query_start.push_back(static_cast<int32_t>(t.pos.size()));
    t.max_query_len = std::max(t.max_query_len, end[s] - begin[s]);
  }
  return t;
}

}  // namespace headwise::testing
