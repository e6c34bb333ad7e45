// The paged KV cache: one pool of pages for every layer, KV head and KV layout, per-sequence
// block tables, and prefix caching of full pages by content.
//
// A page stores page_size tokens of one KV head of one layer, so heads of one request can hold
// different tokens (DESIGN.md §4), and requests of different attention policies can share the
// pool: each sequence runs one KV layout (kvcache/kv_layout.h: a KvRetention per (layer, KV
// head)), and a batch mixes layouts (kernels::BlockTable).
//
// Pages are handed out in blocks: a block is logical page p of a sequence for every head of one
// storage kind of its layout at once, contiguous, so a kernel finds any head's page from one
// table per sequence and kind: page = (the block's first page) + KvHead::page. Three kinds:
//  - full blocks: one page per full-storage (layer, head);
//  - comp blocks: one page per compress-once (layer, head) (RazorAttention). Each logical page
//    takes a full block and a comp block together; once the sequence is compacted, the comp
//    blocks of pages wholly inside the dropped span go back to the pool (SequenceKv::
//    MarkCompacted), which is what makes the policy save memory and not only reads;
//  - ring blocks: one page per ring (layer, head) (a sink and a moving window); a sequence takes
//    a fixed number of them at its first reservation and logical pages past the sinks cycle
//    through its window blocks.
// Every kind of every layout draws from the one pool. Blocks of one size and direction form a
// grid over the pool (block b = pages [base + b * size, base + (b + 1) * size)); full blocks are
// handed out lowest first, comp and ring blocks highest first, so growing kinds grow towards each
// other and any kind may take pages another gave back: a block is free to take when no held
// block of another grid overlaps it.
//
// Full blocks of layouts whose every head is full storage are the unit of prefix caching (such
// layouts share one grid and one page order, so one's cached prompt serves another's): a block is
// keyed by a hash chain over the tokens of all pages up to it, reference counted while sequences
// use it, and kept, evictable in LRU order, once none does. A hit is verified against the stored
// tokens, so a hash collision cannot serve another prompt's KV.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "kvcache/kv_layout.h"
#include "kvcache/offload_tier.h"

namespace headwise::kvcache {

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  int num_pages = 0;
  // The most tokens one step writes to a sequence beyond what it attends (a prefill chunk):
  // a ring holds its window plus these.
  int chunk_tokens = 0;
  // The model's rotary inverse frequencies (head_dim / 2), which re-indexed heads rotate by; only
  // needed when some layout re-indexes positions.
  std::vector<float> rope_inv_freq;
  // Decode-time selection (layouts with KvLayout::selects): query heads (the state keeps a set
  // per query head), and how many sequences may hold selection state at once (the engine's
  // max_num_seqs; each takes a slot at its first reservation, SequenceKv::select_slot).
  int num_q_heads = 0;
  int select_slots = 0;
  // Offload heads (KvLayout::offload): the model's attention scale, which the host tier's
  // attention must use too (models::AttentionScale), and the host tier's CPU threads.
  float attention_scale = 1.0f;
  int offload_threads = 1;
  int64_t offload_host_bytes = 0;  // the host tier's budget (OffloadTierConfig); 0: no limit
  // Tensor parallelism (models::ModelShard): rank r holds KV heads [r * Hkv / N, (r + 1) * Hkv /
  // N) in a pool of its own, on its backend. Every rank's pool has num_pages pages, numbered
  // alike: a block is the same page ids on every rank, each holding its own heads' pages there,
  // so a block holds on each rank as many pages as the rank with the most heads of its kind
  // needs. Decode-time selection and offload heads run on one rank only.
  int num_ranks = 1;
};

struct PrefixCacheStats {
  uint64_t queried_blocks = 0;
  uint64_t hit_blocks = 0;
};

class SequenceKv;

// One step's block tables, host side, in the order they are uploaded (one i32 array): each
// sequence's layout, then its full / ring / comp block rows (first pages) and compaction point.
// Padding sequences (a captured graph's fixed batch) and columns hold 0. KvCache::StepTables
// builds it; AppendTo and Views keep the order in one place.
struct StepTables {
  int num_seqs = 0;
  int max_blocks = 0;
  bool ring = false, comp = false;  // the cache has ring / compress-once heads
  bool select = false;              // the cache has decode-selecting heads
  std::vector<int32_t> seq_layout, blocks, ring_blocks, comp_blocks, comp_from;
  // With select: each sequence's selection slot when its query this step is a decode query that
  // selects, else -1 (kernels::BlockTable::seq_slot). BuildStepTables leaves every entry -1; the
  // model runner, which knows the step's queries, sets them (SelectSlotFor).
  std::vector<int32_t> seq_slot;

  // Appends the tables to `data`; returns where they start.
  size_t AppendTo(std::vector<int32_t>& data) const;
  // The tables' device views, given where AppendTo put them in an uploaded copy of `data`.
  struct DeviceViews {
    Tensor seq_layout, blocks, ring_blocks, comp_blocks, comp_from, seq_slot;
  };
  DeviceViews Views(const Tensor& uploaded, size_t offset) const;
};

class KvCache {
 public:
  // Serves every layout in `layouts` (sequences name theirs by index) from one pool of
  // config.num_pages pages, allocated on `backend` in its kv_dtype(); uploads the per-layer head
  // tables the kernels read once. Layouts must be valid for the config's shape.
  KvCache(const KvCacheConfig& config, std::vector<KvLayout> layouts, kernels::Backend& backend);
  // One layout (index 0).
  KvCache(const KvCacheConfig& config, KvLayout layout, kernels::Backend& backend)
      : KvCache(config, std::vector<KvLayout>{std::move(layout)}, backend) {}
  // Tensor parallelism: rank r's pool and head tables on rank_backends[r] (config.num_ranks of
  // them). The KV heads must split evenly over the ranks.
  KvCache(const KvCacheConfig& config, std::vector<KvLayout> layouts,
          std::span<kernels::Backend* const> rank_backends);

  const KvCacheConfig& config() const { return config_; }
  int num_layouts() const { return static_cast<int>(layouts_.size()); }
  const KvLayout& layout(int id) const { return layouts_[static_cast<size_t>(id)].layout; }
  int num_ranks() const { return config_.num_ranks; }
  // Rank `rank`'s KV heads (KvCacheConfig::num_ranks): its pool and head tables cover them only,
  // numbered from 0 there.
  int rank_kv_heads() const { return config_.num_kv_heads / config_.num_ranks; }
  // The backend rank `rank`'s pool lives on.
  kernels::Backend& backend(int rank = 0) const {
    return *ranks_.at(static_cast<size_t>(rank)).backend;
  }
  kernels::KvPoolView pool_view(int rank = 0) const;
  // Some layout has ring / compress-once / re-indexed heads.
  bool has_ring_heads() const { return has_ring_; }
  bool has_compressed_heads() const { return has_comp_; }
  bool has_reindexed_heads() const { return has_reindex_; }
  // Some layout selects or retrieves at decode (KvLayout::selects: the tables carry seq_slot) /
  // selects pages (Quest's key bounds).
  bool has_select_heads() const { return !select_ops_.empty(); }
  bool has_page_bounds() const { return !kmin_.empty(); }
  // Per layer, over the layouts: the selection operations its heads take part in (kernels::
  // SelectOp bits; 0: none; kSelectOpScorePages: it keeps page bounds). The model launches only
  // those.
  int layer_select_ops(int layer) const;
  // Per layer, over the layouts: some head is an offload head (KvDecode retrieve). The model
  // asks the host tier for the retrieved keys' result and runs OffloadAttention on such layers.
  bool layer_offloads(int layer) const;
  // The host half of the offload heads (kvcache/offload_tier.h), keyed by selection slot: a
  // sequence's slot is begun there when it takes the slot and ended when it gives it back. Null
  // when no layout offloads.
  OffloadTier* offload_tier() const { return offload_tier_.get(); }
  // The selection state of every slot (kernels::SelectState); empty without selecting heads.
  kernels::SelectState select_state() const;
  // Some layout has Recycled Attention heads, whose sets outlive a step.
  bool has_recycle_heads() const { return has_recycle_; }
  // SelectState::refresh and chosen_len of every slot, [slots * sets] each, copied to the host
  // (after a step: what it decided). The sets per slot: select_sets().
  void CopyRefreshToHost(std::vector<int32_t>& refresh, std::vector<int32_t>& chosen_len) const;
  int select_sets() const;
  // The slot sequence `kv` selects in when its step at `num_keys` keys (the query included) is a
  // decode query, or -1 when it decodes densely (its layout does not select, or the sequence is
  // not longer than the layout's select_min_len).
  int32_t SelectSlotFor(const SequenceKv& kv, int num_keys) const;

  // Page of (layer, kv_head) of `layout` inside a block of its kind (kernels::KvHead::page), in
  // the pool of the rank holding the head.
  int HeadPage(int layout, int layer, int kv_head) const;
  // Pages of a block of each kind for `layout`: one per head of that storage.
  int full_pages(int layout) const { return Info(layout).kind_pages[kFull]; }
  int comp_pages(int layout) const { return Info(layout).kind_pages[kComp]; }
  int ring_pages(int layout) const { return Info(layout).kind_pages[kRing]; }
  // Ring blocks a sequence of `layout` holds: sink blocks first, then the window's, in turn.
  int sink_blocks(int layout) const { return Info(layout).sink_blocks; }
  int window_blocks(int layout) const { return Info(layout).window_blocks; }

  // Usable pages: the whole pool.
  int num_pages() const { return config_.num_pages; }
  // Pages held by sequences, every kind; cached pages that nobody uses count as free (evictable).
  int num_pages_used() const;
  // Free pages. Blocks need whole aligned runs of them, so after much reuse a reservation may
  // fail while this counts enough; the engine then preempts (SequenceKv::Reserve decides, never
  // this count).
  int num_pages_free() const { return num_pages() - num_pages_used(); }
  // Logical pages a sequence of `tokens` tokens spans.
  int BlocksFor(int tokens) const { return (tokens + config_.page_size - 1) / config_.page_size; }
  // The most tokens one sequence of `layout` can hold, alone in the pool; INT_MAX when no head
  // grows (rings only). Compaction does not raise it: a compress-once head holds the whole prompt
  // until the prompt is in, and a preempted sequence recomputes everything it had before
  // compacting again.
  int max_tokens_per_sequence(int layout) const;

  void set_prefix_caching(bool on) { prefix_caching_ = on; }
  // Prefix caching serves sequences whose every head is full storage (KvLayout::all_full; they
  // share one kind of block whatever their layout): ring pages are overwritten as the window
  // moves, and compaction writes over a prompt position and frees pages.
  // Layouts that select pages are left out too: a cached page another layout wrote has no key
  // bounds.
  bool prefix_caching(int layout) const {
    const KvLayout& l = layouts_[static_cast<size_t>(layout)].layout;
    return prefix_caching_ && l.all_full() && !l.selects_pages();
  }
  const PrefixCacheStats& prefix_stats() const { return prefix_stats_; }

  // The block tables of a batch: `seqs` in order, then padding up to num_seqs sequences, in
  // max_blocks columns (the logical pages the step reads; a sequence's reserved pages beyond
  // them are left out).
  StepTables BuildStepTables(std::span<const SequenceKv* const> seqs, int num_seqs,
                             int max_blocks) const;
  // What the kernels read for `layer`: the step's tables (StepTables::Views), uploaded to the
  // rank's backend, and the cache's constant ones there (the layer's head table over the rank's
  // KV heads; the rotary frequencies when some head re-indexes).
  kernels::BlockTable LayerTable(int layer, const StepTables::DeviceViews& step,
                                 int rank = 0) const;

  // Bytes of K+V per page, for turning a memory budget into a page count; with page_bounds, also
  // the page's key bounds (Quest: 2 * head_dim values).
  static size_t PageBytes(const KvCacheConfig& config, DType dtype, bool page_bounds = false);
  // Bytes of selection state the cache allocates besides its pages for `layouts`.
  static size_t SelectStateBytes(const KvCacheConfig& config, std::span<const KvLayout> layouts);
  // Pages a pool needs beside what other sequences hold so that one sequence of `layout` can
  // hold `tokens` tokens (its rings, a full and a comp block per logical page, alignment).
  static int PagesForSequence(const KvCacheConfig& config, const KvLayout& layout, int tokens);

 private:
  friend class SequenceKv;
  // The kinds of block a layout uses. Blocks of one kind hold one page per head of that storage.
  enum KindRole { kFull = 0, kComp = 1, kRing = 2 };

  struct LayoutInfo {
    KvLayout layout;
    int kind[3] = {-1, -1, -1};      // index into kinds_, by KindRole; -1: no such heads
    int kind_pages[3] = {0, 0, 0};   // pages of its blocks
    std::vector<int32_t> head_page;  // [layer * Hkv + head]
    int sink_blocks = 0, window_blocks = 0;
  };

  struct Block {  // prefix-cache state of a block of the prefix kind
    int refs = 0;
    bool cached = false;  // registered under `hash`
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the page's tokens, to verify hits
    uint64_t parent_hash = 0;
    std::list<int32_t>::iterator lru;
  };

  // One kind of block, a grid over the pool: block `id` is pages [base + id * pages,
  // base + (id + 1) * pages). Kinds of different sizes overlap; a block is free to take when no
  // held block of another kind overlaps it.
  struct BlockKind {
    int pages = 0;
    int base = 0;
    int count = 0;
    bool lowest_first = true;
    std::vector<char> held;
    std::vector<int32_t> overlapped;  // held blocks of other kinds overlapping this one
    // Candidates to take, best first (a heap; lowest or highest id), each id at most once. An id
    // is queued when it becomes ready and dropped if no longer ready when it comes up, so the
    // heap stays within `count` entries without removals from its middle.
    std::vector<int32_t> heap;
    std::vector<char> queued;
    int num_held = 0;

    void Init(int num_pages, int block_pages, bool lowest);
    bool Ready(int32_t id) const {
      return !held[static_cast<size_t>(id)] && overlapped[static_cast<size_t>(id)] == 0;
    }
    int32_t FirstPage(int32_t id) const { return base + id * pages; }
    void Queue(int32_t id);
    std::optional<int32_t> PopReady();
  };

  const LayoutInfo& Info(int layout) const { return layouts_[static_cast<size_t>(layout)]; }
  static KindRole RoleOf(const KvRetention& r) {
    return r.ring() ? kRing : r.compacts() ? kComp : kFull;
  }
  // Pages of a block of each kind (KindRole) for `layout`: its heads of that kind on one rank,
  // the most of any rank (KvCacheConfig::num_ranks); with their page inside the block, by
  // (layer * Hkv + head), when head_page is given.
  static std::array<int, 3> KindPages(const KvCacheConfig& config, const KvLayout& layout,
                                      std::vector<int32_t>* head_page = nullptr);
  void AllocateSelectState(kernels::Backend& backend);
  // A selection slot reset to "no set yet", or none when every slot is held.
  // With offload heads in `layout`, the slot's host tier state starts anew (and ends on Give).
  std::optional<int32_t> TakeSelectSlot(int layout);
  void GiveSelectSlot(int32_t slot);
  int KindFor(int pages, bool lowest_first);
  void MarkOverlaps(int kind, int32_t id, int delta);
  // Takes a block of `kind`; evicts prefix-cached blocks nobody uses when nothing is ready.
  std::optional<int32_t> Take(int kind);
  // A block of `kind` back from a sequence: blocks of the prefix kind are reference counted and
  // may stay cached (evictable) once nobody uses them; others are free at once.
  void Return(int kind, int32_t id);
  void Give(int kind, int32_t id);
  // Drops the least recently used cached block from the prefix cache; it stays held by the
  // prefix kind (to be taken over or given back). Needs a non-empty LRU list.
  int32_t EvictOldest();
  std::optional<int32_t> FindCached(uint64_t hash, uint64_t parent_hash,
                                    std::span<const int32_t> tokens);
  void CommitBlock(int32_t block, uint64_t hash, uint64_t parent_hash,
                   std::span<const int32_t> tokens);
  int num_evictable_pages() const;

  KvCacheConfig config_;
  std::vector<LayoutInfo> layouts_;
  std::vector<BlockKind> kinds_;
  int prefix_kind_ = -1;  // the full kind of all-full layouts (prefix cached); -1: none
  bool has_ring_ = false, has_comp_ = false, has_reindex_ = false, has_recycle_ = false;
  // What each tensor-parallel rank holds on its backend (one rank without tensor parallelism).
  struct RankPool {
    kernels::Backend* backend = nullptr;
    kernels::Buffer k_pool, v_pool;
    // kernels::KvHead of every (layer, layout, KV head of the rank), i32 [L, layouts, Hkv / N,
    // kKvHeadInts]: constant for the cache's life, uploaded once.
    kernels::Buffer heads;
    kernels::Buffer rope_inv_freq;  // f32 [D/2], with re-indexed heads
  };
  std::vector<RankPool> ranks_;
  // kernels::KvSelect of every (layer, layout, KV head), i32 [L, layouts, Hkv, kKvSelectInts],
  // with selecting heads; uploaded once.
  kernels::Buffer selects_;
  // Per layer; empty without selecting (or offload) heads.
  std::vector<char> select_ops_;  // kernels::SelectOp bits per layer
  std::vector<char> offload_layers_;
  // Selection state (kernels::SelectState) and the page bounds (KvPoolView::kmin / kmax).
  kernels::Buffer sel_positions_, sel_counts_, sel_chosen_len_, sel_steps_, sel_refresh_,
      sel_q_ref_;
  kernels::Buffer kmin_, kmax_;
  std::vector<int32_t> free_slots_;  // selection slots nobody holds, the lowest last
  std::unique_ptr<OffloadTier> offload_tier_;
  kernels::Backend* backend_ = nullptr;
  // Over the layouts: per (rank, layer) the most full heads, per layer the longest ring.
  std::vector<int> max_full_heads_, max_ring_span_;

  bool prefix_caching_ = true;
  std::vector<Block> blocks_;  // one per block id of the prefix kind
  std::unordered_map<uint64_t, int32_t> cached_;
  std::list<int32_t> lru_;  // cached blocks nobody uses, oldest first
  PrefixCacheStats prefix_stats_;
};

// A batch's block tables uploaded on their own, owning their device buffer: for work outside the
// model runner's one upload per step (tests, benchmarks, one-off operations).
class UploadedTables {
 public:
  // `max_blocks` columns: the logical pages the work reads.
  UploadedTables(const KvCache& cache, std::span<const SequenceKv* const> seqs, int max_blocks,
                 kernels::Backend& backend);
  const StepTables& host() const { return tables_; }
  kernels::BlockTable Layer(int layer) const { return cache_.LayerTable(layer, views_); }

 private:
  const KvCache& cache_;
  StepTables tables_;
  kernels::Buffer buffer_;
  StepTables::DeviceViews views_;
};

// The page tables of one sequence, which runs one of the cache's layouts. Owns references to its
// blocks until Release().
class SequenceKv {
 public:
  explicit SequenceKv(KvCache& cache, int layout = 0);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;
  SequenceKv(SequenceKv&&) noexcept;
  SequenceKv& operator=(SequenceKv&&) = delete;

  int layout() const { return layout_; }
  // Takes the longest run of cached full pages that starts `tokens`, before anything else is
  // reserved. Returns how many tokens they hold (0 unless the layout is prefix cached).
  int AttachCachedPrefix(std::span<const int32_t> tokens);
  // Makes room for `num_tokens` tokens, all or nothing: ResourceExhausted leaves the sequence
  // as it was.
  Status Reserve(int num_tokens);
  // Offload layouts: reserves the host tier's memory for a sequence of up to `tokens` tokens
  // (after the first Reserve, which takes the slot); ResourceExhausted when the tier's budget
  // cannot hold it beside the other sequences' reservations. Release gives it back. Other
  // layouts: Ok.
  Status ReserveHost(int tokens);
  // False while the host tier builds this sequence's indexes (offload layouts; true otherwise):
  // it may not decode until then.
  bool offload_ready() const;
  // The selection slot this sequence holds (taken by its first reservation when its layout
  // selects, reset to "no set yet", given back by Release), or -1.
  int32_t select_slot() const { return select_slot_; }
  // Registers the full pages among the first `num_computed` tokens in the prefix cache.
  void CommitComputed(std::span<const int32_t> tokens, int num_computed);
  // Drops every block reference.
  void Release();

  // Tokens reserved: ring heads keep only their sinks and window of them.
  int capacity_tokens() const { return capacity_tokens_; }
  // Pages held, every kind (a compacted sequence's freed comp blocks no longer count).
  int num_pages_held() const;
  static constexpr int32_t kFreedBlock = -1;
  // First page of logical page `logical_page`'s block of each kind (the block-table entries):
  // the full block, the comp block (kFreedBlock where compaction gave it back; attention never
  // reads it), and the ring block holding it now (sink pages first, then the window's pages in
  // turn). Each needs a reservation, and the layout to have heads of the kind.
  int32_t FullBlockPage(int logical_page) const;
  int32_t CompBlockPage(int logical_page) const;
  int32_t RingBlockPage(int logical_page) const;
  // Physical page of logical page `logical_page` for (layer, kv_head).
  int32_t Page(int layer, int kv_head, int logical_page) const;
  // Physical slot (page * page_size + offset) of token `position` for (layer, kv_head).
  int32_t Slot(int layer, int kv_head, int position) const;

  // Compress-once and offload heads: the first position kept after the compacted span, 0 until
  // the sequence is compacted (engine/kv_compaction.h does it after the prompt).
  int compacted_from() const { return compacted_from_; }
  // Compacts: from now on the compress-once heads keep only positions [0, sink), the
  // compensation token at `sink` (with compensation) and [first_kept, ...), so the comp blocks of
  // logical pages holding none of those go back to the pool. Once per reservation (Release
  // resets it), except for offload layouts, whose window slides: each call moves first_kept
  // forward. first_kept must be reserved already.
  void MarkCompacted(int first_kept);

 private:
  friend class KvCache;  // BuildStepTables reads the block ids directly
  uint64_t HashOf(size_t page, std::span<const int32_t> tokens) const;
  const KvCache::LayoutInfo& info() const { return cache_->Info(layout_); }

  KvCache* cache_;
  int layout_;
  std::vector<int32_t> blocks_;       // full block id per logical page
  std::vector<int32_t> comp_blocks_;  // comp block id per logical page, or kFreedBlock
  std::vector<int32_t> ring_blocks_;  // the sequence's ring block ids, once reserved
  std::vector<uint64_t> hashes_;      // hash chain of the committed/attached full pages
  int capacity_tokens_ = 0;
  int compacted_from_ = 0;
  int num_freed_comp_ = 0;  // kFreedBlock entries of comp_blocks_
  int32_t select_slot_ = -1;
};

}  // namespace headwise::kvcache
