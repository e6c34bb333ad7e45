// The paged KV cache: one pool of pages for all layers and KV heads, per-sequence page tables
// per (layer, KV-head class), and prefix caching of full pages by content.
//
// A KV-head class is a set of KV heads of one layer that keep the same tokens. With dense
// attention every layer has one class holding all its KV heads; sparse policies (DESIGN.md §4)
// split a layer into several classes, e.g. DuoAttention's retrieval and streaming heads. A
// page stores one KV head of one layer, so heads of one request can hold different tokens.
//
// Pages are handed out in blocks: a block is logical page p of a sequence for every head of one
// kind at once, and block b of a kind owns the contiguous pages [base + b * pages, base + (b + 1)
// * pages). So a kernel finds any head's page from one block table per sequence and kind: page =
// block * (pages per block of the kind) + PageIndex(layer, kv_head), the kind's base folded into
// PageIndex. Three kinds:
//  - full blocks: one page per full-storage (layer, head);
//  - comp blocks: one page per compress-once (layer, head) (RazorAttention). Each logical page
//    takes a full block and a comp block together; once the sequence is compacted, the comp
//    blocks of pages wholly inside the dropped span go back to the pool (SequenceKv::
//    MarkCompacted), which is what makes the policy save memory and not only reads;
//  - ring blocks: one page per ring (layer, head) (a sink and a moving window, Retention), in a
//    region of their own at the end of the pool; a sequence holds a fixed number of them and
//    logical pages past the sinks cycle through its window blocks (RingBlock()).
// Full and comp blocks share the rest of the pool: full blocks are numbered from its first page
// and handed out lowest first, comp blocks from its last page and handed out highest first, so
// the two kinds grow towards each other and either may take pages the other gave back; a block is
// free to take when no block of the other kind in use overlaps it.
//
// Full blocks are the unit of prefix caching: a full block is keyed by a hash chain over the tokens
// of all pages up to it, reference counted while sequences use it, and kept, evictable in LRU
// order, once none does. A hit is verified against the stored tokens, so a hash collision cannot
// serve another prompt's KV.
#pragma once

#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kvcache {

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  int num_pages = 0;
  // With ring classes: sequences that may hold ring pages at once (the ring region is sized for
  // them; the rest of num_pages serves full classes), and the tokens a step may write beyond the
  // window before attention reads them (a prefill chunk), which the ring must also hold.
  int max_ring_sequences = 0;
  int ring_chunk_tokens = 0;
};

// How a class keeps its tokens. Full: all of them. Ring: the first `sink` tokens and the most
// recent `window`, in a fixed set of pages per sequence whose window pages are reused as the
// window moves on (StreamingLLM, DuoAttention's streaming heads). A ring may re-index positions
// (StreamingLLM): its keys are stored pre-RoPE and attention rotates them by their rank in the
// ring (kernels::PagedAttentionBatch). Compress once (RazorAttention): every token, in comp
// blocks, until the prompt is in; then the sequence is compacted (SequenceKv::MarkCompacted) and
// from then on attends only the first `sink` tokens, a compensation token (with `compensation`:
// the mean K and V of the dropped span, written over position `sink`) and the tokens from the
// last `window` of the prompt on; the pages of the dropped span that hold none of those are freed.
struct Retention {
  bool ring = false;
  int sink = 0;
  int window = 0;
  bool reindex = false;  // ring only
  bool compress_once = false;
  bool compensation = false;
  bool compensation_by_count = true;  // the compensation token's logit carries log(dropped)
};

// Which KV heads of each layer share a retention rule: classes[layer][class] = KV heads, kept
// as retention[layer][class] says (empty: every class full). Ring classes share one (sink,
// window) geometry.
struct HeadClassLayout {
  std::vector<std::vector<std::vector<int>>> classes;
  std::vector<std::vector<Retention>> retention;

  // One class per layer with every KV head: dense attention.
  static HeadClassLayout Dense(int num_layers, int num_kv_heads);
  Status Validate(int num_layers, int num_kv_heads) const;
  const Retention& RetentionOf(int layer, int cls) const;
};

struct PrefixCacheStats {
  uint64_t queried_blocks = 0;
  uint64_t hit_blocks = 0;
};

class KvCache {
 public:
  // Allocates the K and V pools on `backend`: 2 * num_pages * page_size * head_dim elements.
  KvCache(const KvCacheConfig& config, HeadClassLayout layout, kernels::Backend& backend);

  const KvCacheConfig& config() const { return config_; }
  const HeadClassLayout& layout() const { return layout_; }
  kernels::KvPoolView pool_view() const;
  // Distinct for every cache this process creates, so that work recorded against one cache (a
  // captured decode graph holds its pool and layout) is never replayed against another that
  // happens to reuse its address.
  uint64_t instance_id() const { return instance_id_; }

  int ClassOf(int layer, int kv_head) const { return head_class_[layer][kv_head]; }
  int IndexInClass(int layer, int kv_head) const { return head_index_[layer][kv_head]; }

  // Pages of a full block: one per (layer, head) of the full classes (compress-once ones aside).
  int pages_per_block() const { return full_.pages; }
  // Pages of a comp block: one per compress-once (layer, head); 0 without such heads.
  int comp_pages_per_block() const { return comp_.pages; }
  // (layer, kv_head)'s page inside its block: page = block * (its kind's pages per block) +
  // PageIndex. Comp and ring heads' indices include their kind's first page, so one formula
  // serves every kind of block.
  int PageIndex(int layer, int kv_head) const { return page_index_[layer][kv_head]; }
  bool IsRing(int layer, int kv_head) const { return is_ring_[layer][kv_head] != 0; }
  bool IsCompressed(int layer, int kv_head) const { return is_compressed_[layer][kv_head] != 0; }
  bool has_compressed_heads() const { return compress_retention_.compress_once; }
  // The compress-once classes' rule (all share one).
  const Retention& compress_retention() const { return compress_retention_; }
  // A ring head with re-indexed positions (pre-RoPE keys).
  bool IsReindexed(int layer, int kv_head) const { return is_reindexed_[layer][kv_head] != 0; }
  bool has_reindexed_heads() const { return num_reindexed_heads_ > 0; }
  // Every (layer, KV head) is a re-indexed ring (StreamingLLM): a sequence keeps at most
  // sink + window + one step's tokens per head and attention sees rotary positions (ranks)
  // below that, however long it grows.
  bool all_heads_reindexed_rings() const {
    return num_reindexed_heads_ == config_.num_layers * config_.num_kv_heads;
  }
  // Ring geometry: pages of a ring block (one per ring (layer, head)), ring blocks a sequence
  // holds, of which the first sink_blocks() keep the sinks and the rest cycle for the window.
  int ring_pages_per_block() const { return ring_pages_per_block_; }
  int ring_blocks_per_sequence() const { return sink_blocks_ + window_blocks_; }
  int sink_blocks() const { return sink_blocks_; }
  int window_blocks() const { return window_blocks_; }
  const Retention& ring_retention() const { return ring_retention_; }
  // Usable pages: those some block can take, of every kind.
  int num_pages() const { return shared_pages_ + num_ring_blocks_ * ring_pages_per_block_; }
  // Pages held by sequences, every kind; cached pages that nobody uses count as free (evictable).
  int num_pages_used() const {
    return full_.num_held * full_.pages - num_evictable_pages() + comp_.num_held * comp_.pages +
           (num_ring_blocks_ - static_cast<int>(free_ring_ids_.size())) * ring_pages_per_block_;
  }
  // Free pages. Full and comp blocks need whole aligned runs of them, so after much reuse a
  // reservation may fail while this counts enough; the engine then preempts (SequenceKv::Reserve
  // decides, never this count).
  int num_pages_free() const { return num_pages() - num_pages_used(); }
  // Logical pages (blocks of each growing kind) a sequence of `tokens` tokens needs.
  int BlocksFor(int tokens) const { return (tokens + config_.page_size - 1) / config_.page_size; }
  // Pages a sequence needs to grow from `from_tokens` to `to_tokens` tokens: a full and a comp
  // block per new logical page, also after compaction (new tokens are kept).
  int PagesToGrow(int from_tokens, int to_tokens) const {
    return std::max(0, BlocksFor(to_tokens) - BlocksFor(from_tokens)) * (full_.pages + comp_.pages);
  }
  // The most tokens one sequence can hold, alone in the pool; INT_MAX when no head grows (rings
  // only). Compaction does not raise it: a compress-once head holds the whole prompt until the
  // prompt is in, and a preempted sequence recomputes everything it had before compacting again.
  int max_tokens_per_sequence() const;

  void set_prefix_caching(bool on) { prefix_caching_ = on; }
  // Ring pages are overwritten as their window moves, and compaction writes its compensation
  // token over a prompt position and frees pages, so a cache with ring or compress-once classes
  // shares none.
  bool prefix_caching() const {
    return prefix_caching_ && ring_pages_per_block_ == 0 && !has_compressed_heads();
  }
  const PrefixCacheStats& prefix_stats() const { return prefix_stats_; }

  // Bytes of K+V per page, for turning a memory budget into a page count.
  static size_t PageBytes(const KvCacheConfig& config, DType dtype);
  // Pages of a valid layout's ring region under `config` (0 without ring classes), and the
  // pages one logical page takes outside the rings: one per full-storage or compress-once
  // (layer, head), a full and a comp block together. A pool of n times that beside the ring
  // region holds a sequence of n logical pages.
  static int RingRegionPages(const KvCacheConfig& config, const HeadClassLayout& layout);
  static int FullPagesPerBlock(const HeadClassLayout& layout);

 private:
  friend class SequenceKv;
  struct Block {
    int refs = 0;
    bool cached = false;  // registered under `hash`
    uint64_t hash = 0;
    std::vector<int32_t> tokens;  // the page's tokens, to verify hits
    uint64_t parent_hash = 0;
    std::list<int32_t>::iterator lru;
  };

  // One kind of block in the pages full and comp blocks share: block `id` is pages
  // [base + id * pages, base + (id + 1) * pages).
  struct BlockKind {
    int pages = 0;  // per block: one per head of the kind
    int base = 0;
    int count = 0;  // block ids
    bool lowest_first = true;
    std::vector<char> held;           // in use (full blocks: or cached, until evicted)
    std::vector<int32_t> overlapped;  // held blocks of the other kind overlapping this one
    // Candidates to take, best first (a heap; lowest or highest id), each id at most once. An
    // id is queued when it becomes ready and dropped if no longer ready when it comes up, so the
    // heap stays within `count` entries without removals from its middle.
    std::vector<int32_t> heap;
    std::vector<char> queued;
    int num_held = 0;

    void Init(int num_ids, bool lowest);
    bool Ready(int32_t id) const {
      return !held[static_cast<size_t>(id)] && overlapped[static_cast<size_t>(id)] == 0;
    }
    void Queue(int32_t id);
    std::optional<int32_t> PopReady();
  };
  // Takes a ready block of `kind` (none: nullopt), or gives one back; `other` is the other kind.
  static std::optional<int32_t> Take(BlockKind& kind, BlockKind& other);
  static void Give(BlockKind& kind, BlockKind& other, int32_t id);

  std::optional<int32_t> AllocateBlock();
  void ReleaseBlock(int32_t block);
  std::optional<int32_t> AllocateCompBlock() { return Take(comp_, full_); }
  void ReleaseCompBlock(int32_t block) { Give(comp_, full_, block); }
  std::optional<int32_t> AllocateRingBlock();
  void ReleaseRingBlock(int32_t block) { free_ring_ids_.push_back(block); }
  std::optional<int32_t> FindCached(uint64_t hash, uint64_t parent_hash,
                                    std::span<const int32_t> tokens);
  void CommitBlock(int32_t block, uint64_t hash, uint64_t parent_hash,
                   std::span<const int32_t> tokens);
  int num_evictable_pages() const { return static_cast<int>(lru_.size()) * full_.pages; }

  KvCacheConfig config_;
  HeadClassLayout layout_;
  uint64_t instance_id_;
  std::vector<std::vector<int>> head_class_;
  std::vector<std::vector<int>> head_index_;
  std::vector<std::vector<int>> page_index_;
  std::vector<std::vector<char>> is_ring_;
  std::vector<std::vector<char>> is_compressed_;
  Retention compress_retention_;
  std::vector<std::vector<char>> is_reindexed_;
  int num_reindexed_heads_ = 0;
  int shared_pages_ = 0;  // pages full or comp blocks can take
  BlockKind full_, comp_;
  int ring_pages_per_block_ = 0;
  Retention ring_retention_;
  int sink_blocks_ = 0, window_blocks_ = 0;
  int num_ring_blocks_ = 0;
  std::vector<int32_t> free_ring_ids_;
  kernels::Buffer k_pool_;
  kernels::Buffer v_pool_;

  bool prefix_caching_ = true;
  std::vector<Block> blocks_;  // one per full block id, allocated or not
  std::unordered_map<uint64_t, int32_t> cached_;
  std::list<int32_t> lru_;  // cached blocks nobody uses, oldest first
  PrefixCacheStats prefix_stats_;
};

// The page tables of one sequence. Owns references to its blocks until Release().
class SequenceKv {
 public:
  explicit SequenceKv(KvCache& cache);
  ~SequenceKv();
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;
  SequenceKv(SequenceKv&&) noexcept;
  SequenceKv& operator=(SequenceKv&&) = delete;

  // Takes the longest run of cached full pages that starts `tokens`, before anything else is
  // reserved. Returns how many tokens they hold.
  int AttachCachedPrefix(std::span<const int32_t> tokens);
  // Makes room for `num_tokens` tokens, all or nothing: ResourceExhausted leaves the sequence
  // as it was.
  Status Reserve(int num_tokens);
  // Registers the full pages among the first `num_computed` tokens in the prefix cache.
  void CommitComputed(std::span<const int32_t> tokens, int num_computed);
  // Drops every block reference.
  void Release();

  // Tokens reserved: ring heads keep only their sinks and window of them.
  int capacity_tokens() const { return capacity_tokens_; }
  // Pages held, every kind (a compacted sequence's freed comp blocks no longer count).
  int num_pages_held() const;
  // Full block of each logical page, in order.
  const std::vector<int32_t>& blocks() const { return blocks_; }
  // Comp block of each logical page, in order (empty without compress-once heads);
  // kFreedBlock where compaction gave it back. Attention never reads a freed page: the
  // positions it held are the dropped span's, which compacted heads do not attend.
  const std::vector<int32_t>& comp_blocks() const { return comp_blocks_; }
  static constexpr int32_t kFreedBlock = -1;
  // Ring block holding logical page `logical_page` of the ring heads (sink pages first, then
  // the window's pages in turn); needs a reservation.
  int32_t RingBlock(int logical_page) const;
  // Physical page of logical page `logical_page` for (layer, kv_head).
  int32_t Page(int layer, int kv_head, int logical_page) const;
  // Physical slot (page * page_size + offset) of token `position` for (layer, kv_head).
  int32_t Slot(int layer, int kv_head, int position) const;

  // Compress-once heads: the first position kept after the compacted span, 0 until the
  // sequence is compacted (engine/kv_compaction.h does it, once, after the prompt).
  int compacted_from() const { return compacted_from_; }
  // Compacts: from now on the compress-once heads keep only positions [0, sink), the
  // compensation token at `sink` (with compensation) and [first_kept, ...), so the comp blocks of
  // logical pages holding none of those go back to the pool. Once per reservation (Release
  // resets it); first_kept must be reserved already.
  void MarkCompacted(int first_kept);

 private:
  uint64_t HashOf(size_t page, std::span<const int32_t> tokens) const;

  KvCache* cache_;
  std::vector<int32_t> blocks_;       // full block per logical page
  std::vector<int32_t> comp_blocks_;  // comp block per logical page, or kFreedBlock
  std::vector<int32_t> ring_blocks_;  // the sequence's ring blocks, once reserved
  std::vector<uint64_t> hashes_;      // hash chain of the committed/attached full pages
  int capacity_tokens_ = 0;
  int compacted_from_ = 0;
};

}  // namespace headwise::kvcache
