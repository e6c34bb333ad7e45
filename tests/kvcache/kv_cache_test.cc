#include "kvcache/kv_cache.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "kernels/cpu/cpu_backend.h"

namespace headwise::kvcache {
namespace {

KvCacheConfig SmallConfig(int num_pages, int chunk_tokens = 0) {
  KvCacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 3;
  c.head_dim = 8;
  c.page_size = 4;
  c.num_pages = num_pages;
  c.chunk_tokens = chunk_tokens;
  return c;
}

// Per layer: heads 0 and 1 full, head 2 a ring (DuoAttention's split); or every head a ring
// (StreamingLLM).
KvLayout RingLayout(bool all_ring, int sink, int window) {
  KvLayout layout = KvLayout::Dense(2, 3, all_ring ? "streaming" : "duo");
  for (int l = 0; l < 2; ++l) {
    for (int h = all_ring ? 0 : 2; h < 3; ++h) layout.At(l, h) = KvRetention::Ring(sink, window);
  }
  return layout;
}

// Per layer: head 0 full, heads 1 and 2 compress-once (RazorAttention's split), or with
// `ring_head` head 2 of layer 0 a ring instead.
KvLayout RazorLayout(int sink, int window, bool ring_head = false) {
  KvLayout layout = KvLayout::Dense(2, 3, "razor");
  for (int l = 0; l < 2; ++l) {
    for (int h = 1; h < 3; ++h) layout.At(l, h) = KvRetention::CompressOnce(sink, window);
  }
  if (ring_head) layout.At(0, 2) = KvRetention::Ring(3, 5);
  return layout;
}

// The first page of the block holding (layer, head)'s logical page p: what the kernels' tables
// hold for its kind.
int32_t BlockPage(const SequenceKv& seq, const KvRetention& r, int p) {
  return r.ring()            ? seq.RingBlockPage(p)
         : r.compress_once() ? seq.CompBlockPage(p)
                             : seq.FullBlockPage(p);
}

TEST_CASE("SequenceKv reserves pages per layer and head, all or nothing", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  // 2 layers x 3 heads: 6 pages per 4 tokens; 18 pages make 3 whole blocks.
  KvCache cache(SmallConfig(18), KvLayout::Dense(2, 3), *be);
  CHECK(cache.num_pages() == 18);
  SequenceKv seq(cache);
  REQUIRE(seq.Reserve(5).ok());  // 2 pages per head -> 12 pages
  CHECK(seq.num_pages_held() == 12);
  CHECK(cache.num_pages_free() == 6);
  Status grow = seq.Reserve(13);  // needs 12 more
  CHECK(grow.code() == StatusCode::kResourceExhausted);
  CHECK(seq.capacity_tokens() == 8);
  CHECK(cache.num_pages_free() == 6);

  // Every (layer, head, logical page) owns a distinct physical page; slots follow positions.
  std::set<int32_t> pages;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h)
      for (int p = 0; p < 2; ++p) pages.insert(seq.Page(l, h, p));
  CHECK(pages.size() == 12);
  CHECK(seq.Slot(1, 2, 6) == seq.Page(1, 2, 1) * 4 + 2);
  // A block is a contiguous run of pages, one per (layer, head): kernels need only the blocks'
  // first pages and each head's page inside a block.
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h)
      CHECK(seq.Page(l, h, 1) == seq.FullBlockPage(1) + cache.HeadPage(0, l, h));
  CHECK(cache.HeadPage(0, 1, 2) == 5);

  seq.Release();
  CHECK(cache.num_pages_free() == 18);
}

TEST_CASE("Prefix cache: full pages are shared by content, kept while free, evicted LRU",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCache cache(SmallConfig(6 * 4), KvLayout::Dense(2, 3), *be);            // room for 4 blocks
  const std::vector<int32_t> prompt = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};  // 2 full pages + 2
  {
    SequenceKv a(cache);
    CHECK(a.AttachCachedPrefix(prompt) == 0);
    REQUIRE(a.Reserve(10).ok());
    a.CommitComputed(prompt, 10);
    SequenceKv b(cache);
    CHECK(b.AttachCachedPrefix(prompt) == 8);  // both full pages, shared
    CHECK(b.Page(1, 2, 1) == a.Page(1, 2, 1));
    REQUIRE(b.Reserve(10).ok());  // only the partial page is new
    CHECK(b.Page(0, 0, 2) != a.Page(0, 0, 2));
    CHECK(cache.num_pages_used() == 4 * 6);
  }
  // Nobody holds them now: free, yet still found.
  CHECK(cache.num_pages_used() == 0);
  SequenceKv c(cache);
  std::vector<int32_t> other = prompt;
  other[5] = 99;  // second page differs
  CHECK(c.AttachCachedPrefix(other) == 4);
  c.Release();
  // Filling the pool evicts the cached blocks; a later lookup misses.
  SequenceKv d(cache);
  REQUIRE(d.Reserve(16).ok());
  d.Release();
  SequenceKv e(cache);
  CHECK(e.AttachCachedPrefix(prompt) == 0);
  CHECK(cache.prefix_stats().hit_blocks == 3);
}

TEST_CASE("Prefix cache off: nothing is shared", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCache cache(SmallConfig(6 * 4), KvLayout::Dense(2, 3), *be);
  cache.set_prefix_caching(false);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  SequenceKv a(cache);
  REQUIRE(a.Reserve(8).ok());
  a.CommitComputed(prompt, 8);
  SequenceKv b(cache);
  CHECK(b.AttachCachedPrefix(prompt) == 0);
}

TEST_CASE("Ring heads: sinks and a recycled window in fixed pages per sequence", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  // page 4: sink 5 -> 2 sink blocks; window 9 + chunk 3 -> 3 window blocks; 6 pages a block.
  const KvCacheConfig c = SmallConfig(2 * 5 * 6, /*chunk_tokens=*/3);
  KvCache cache(c, RingLayout(/*all_ring=*/true, 5, 9), *be);
  CHECK(cache.full_pages(0) == 0);
  CHECK(cache.ring_pages(0) == 6);
  CHECK(cache.sink_blocks(0) + cache.window_blocks(0) == 5);
  CHECK(KvCache::PagesForSequence(c, cache.layout(0), 1000) == 30);
  CHECK_FALSE(cache.prefix_caching(0));
  CHECK(cache.max_tokens_per_sequence(0) == std::numeric_limits<int>::max());

  SequenceKv a(cache), b(cache), third(cache);
  REQUIRE(a.Reserve(1000).ok());  // any length: the ring pages are fixed
  REQUIRE(b.Reserve(7).ok());
  CHECK(a.num_pages_held() == 30);
  CHECK(a.capacity_tokens() >= 1000);
  CHECK(third.Reserve(1).code() == StatusCode::kResourceExhausted);
  CHECK(third.num_pages_held() == 0);

  // At every length n, the live tokens (sinks, and the window plus a chunk of new tokens) of
  // every (layer, head) of both sequences sit in distinct slots.
  for (int n = 1; n <= 300; ++n) {
    std::set<int32_t> slots;
    size_t live = 0;
    for (const SequenceKv* seq : {&a, &b}) {
      for (int l = 0; l < 2; ++l) {
        for (int h = 0; h < 3; ++h) {
          for (int p = 0; p < n; ++p) {
            if (p >= 5 && p < n - 9 - 3) continue;
            slots.insert(seq->Slot(l, h, p));
            ++live;
          }
        }
      }
    }
    INFO("n " << n);
    REQUIRE(slots.size() == live);
  }
  // Past the sinks, logical pages cycle through the window blocks.
  CHECK(a.RingBlockPage(2) == a.RingBlockPage(5));
  CHECK(a.RingBlockPage(1) != a.RingBlockPage(4));
  CHECK(a.Slot(1, 2, 8) == a.Slot(1, 2, 20));
  // The step tables cycle the same way, far past the window.
  const SequenceKv* seqs[] = {&a};
  const StepTables t = cache.BuildStepTables(seqs, 1, 250);
  for (int j = 0; j < 250; ++j) {
    INFO("logical page " << j);
    REQUIRE(t.ring_blocks[static_cast<size_t>(j)] == a.RingBlockPage(j));
  }
  for (int32_t slot : {a.Slot(0, 0, 0), a.Slot(1, 2, 299)}) {
    CHECK(slot >= 0);
    CHECK(slot < c.num_pages * c.page_size);
  }
  a.Release();
  CHECK(third.Reserve(1).ok());
}

TEST_CASE("Ring and full heads side by side: one pool, one addressing rule", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCache cache(SmallConfig(100), RingLayout(/*all_ring=*/false, 4, 8), *be);
  // Full blocks hold heads 0 and 1 of both layers; ring blocks head 2 of both.
  CHECK(cache.full_pages(0) == 4);
  CHECK(cache.ring_pages(0) == 2);
  CHECK(cache.sink_blocks(0) + cache.window_blocks(0) == 1 + 2);
  CHECK(cache.max_tokens_per_sequence(0) == (100 - 3 * 2) / 4 * 4);

  SequenceKv seq(cache);
  REQUIRE(seq.Reserve(10).ok());
  CHECK(seq.num_pages_held() == 3 * 4 + 3 * 2);
  REQUIRE(seq.Reserve(30).ok());  // full heads grow, ring heads do not
  CHECK(seq.num_pages_held() == 8 * 4 + 3 * 2);
  for (int p = 0; p < 30; ++p) {
    CHECK(seq.Page(1, 0, p / 4) == seq.FullBlockPage(p / 4) + cache.HeadPage(0, 1, 0));
    CHECK(seq.Page(1, 2, p / 4) == seq.RingBlockPage(p / 4) + cache.HeadPage(0, 1, 2));
  }
  std::set<int32_t> full_pages, ring_pages_seen;
  for (int l = 0; l < 2; ++l) {
    for (int p = 0; p < 8; ++p) {
      full_pages.insert(seq.Page(l, 0, p));
      full_pages.insert(seq.Page(l, 1, p));
      ring_pages_seen.insert(seq.Page(l, 2, p));
    }
  }
  for (int32_t page : ring_pages_seen) CHECK(full_pages.count(page) == 0);
  // A failed reservation leaves the pool as it was.
  const int free_before = cache.num_pages_free();
  CHECK(seq.Reserve(10000).code() == StatusCode::kResourceExhausted);
  CHECK(cache.num_pages_free() == free_before);
  seq.Release();
  CHECK(cache.num_pages_used() == 0);
  // Alone in the pool, the longest sequence fits; a page more does not.
  REQUIRE(seq.Reserve(cache.max_tokens_per_sequence(0)).ok());
  CHECK(seq.Reserve(cache.max_tokens_per_sequence(0) + 4).code() == StatusCode::kResourceExhausted);
}

TEST_CASE("Compress-once heads: comp blocks beside full blocks, freed by compaction", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  // Page 4; full blocks of 2 pages (head 0 of each layer), comp blocks of 4 (heads 1, 2).
  KvCache cache(SmallConfig(60), RazorLayout(/*sink=*/2, /*window=*/6), *be);
  CHECK(cache.full_pages(0) == 2);
  CHECK(cache.comp_pages(0) == 4);
  CHECK(cache.num_pages() == 60);
  CHECK(cache.max_tokens_per_sequence(0) == 60 / 6 * 4);
  CHECK_FALSE(cache.prefix_caching(0));

  SequenceKv seq(cache), other(cache);
  REQUIRE(seq.Reserve(32).ok());  // 8 logical pages: 8 x (2 + 4)
  CHECK(seq.num_pages_held() == 48);
  CHECK(cache.num_pages_used() == 48);
  // Every (layer, head, logical page) owns a distinct page; each kind by its own table.
  std::set<int32_t> pages;
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 3; ++h) {
      for (int p = 0; p < 8; ++p) {
        const int32_t page = seq.Page(l, h, p);
        CHECK(page ==
              (h == 0 ? seq.FullBlockPage(p) : seq.CompBlockPage(p)) + cache.HeadPage(0, l, h));
        CHECK(page < 60);
        pages.insert(page);
      }
    }
  }
  CHECK(pages.size() == 48);
  // Three more logical pages (18 pages) do not fit the 12 free ones.
  CHECK(other.Reserve(12).code() == StatusCode::kResourceExhausted);
  CHECK(cache.num_pages_used() == 48);

  // Prompt of 32: kept [0, 3) (2 sinks + the compensation token) and [26, 32). Logical pages
  // 1..5 ([4, 24)) hold only dropped positions: their comp blocks go back, 5 x 4 pages.
  seq.MarkCompacted(26);
  CHECK(seq.compacted_from() == 26);
  for (int p = 0; p < 8; ++p) {
    CHECK((seq.CompBlockPage(p) == SequenceKv::kFreedBlock) == (p >= 1 && p <= 5));
  }
  CHECK(seq.num_pages_held() == 48 - 20);
  CHECK(cache.num_pages_used() == 28);
  CHECK(cache.num_pages_free() == 32);
  CHECK(seq.Slot(0, 1, 2) == seq.Page(0, 1, 0) * 4 + 2);  // the sinks' page stays
  CHECK(seq.Slot(1, 2, 26) == seq.Page(1, 2, 6) * 4 + 2);

  // The freed pages admit another sequence, and the compacted one still grows (new tokens
  // are kept: a full and a comp block per new logical page).
  REQUIRE(other.Reserve(12).ok());
  REQUIRE(seq.Reserve(40).ok());
  CHECK(seq.num_pages_held() == 28 + 2 * 6);
  CHECK(cache.num_pages_used() == 28 + 12 + 18);
  pages.clear();
  size_t live = 0;
  for (const SequenceKv* s : {&seq, &other}) {
    for (int l = 0; l < 2; ++l) {
      for (int h = 0; h < 3; ++h) {
        for (int p = 0; p < s->capacity_tokens() / 4; ++p) {
          if (s == &seq && h > 0 && p >= 1 && p <= 5) continue;
          pages.insert(s->Page(l, h, p));
          ++live;
        }
      }
    }
  }
  CHECK(pages.size() == live);
  CHECK(static_cast<int>(live) == cache.num_pages_used());
  CHECK(seq.Reserve(48).code() == StatusCode::kResourceExhausted);  // all or nothing
  CHECK(cache.num_pages_used() == 58);

  seq.Release();
  other.Release();
  CHECK(cache.num_pages_used() == 0);
  CHECK(seq.compacted_from() == 0);
  // Back to a clean pool: the longest sequence fits again, one page more does not.
  REQUIRE(seq.Reserve(cache.max_tokens_per_sequence(0)).ok());
  CHECK(other.Reserve(1).code() == StatusCode::kResourceExhausted);
}

TEST_CASE("Several layouts share one pool; prefix caching serves the all-full ones", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::vector<KvLayout> layouts;
  layouts.push_back(KvLayout::Dense(2, 3, "dense"));
  layouts.push_back(RingLayout(/*all_ring=*/false, 4, 8));
  layouts.push_back(RazorLayout(2, 6));
  layouts.push_back(KvLayout::Dense(2, 3, "dense-b"));  // another all-full policy
  KvCache cache(SmallConfig(120), std::move(layouts), *be);
  REQUIRE(cache.num_layouts() == 4);
  CHECK(cache.prefix_caching(0));
  CHECK_FALSE(cache.prefix_caching(1));
  CHECK_FALSE(cache.prefix_caching(2));
  CHECK(cache.prefix_caching(3));
  CHECK(cache.has_ring_heads());
  CHECK(cache.has_compressed_heads());
  CHECK_FALSE(cache.has_reindexed_heads());

  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6, 5};
  SequenceKv dense(cache, 0), duo(cache, 1), razor(cache, 2), dense_b(cache, 3);
  REQUIRE(dense.Reserve(9).ok());
  dense.CommitComputed(prompt, 9);
  CHECK(duo.AttachCachedPrefix(prompt) == 0);  // rings overwrite pages: never shared
  CHECK(dense_b.AttachCachedPrefix(prompt) == 8);
  CHECK(dense_b.Page(1, 1, 1) == dense.Page(1, 1, 1));
  REQUIRE(duo.Reserve(9).ok());
  REQUIRE(razor.Reserve(9).ok());
  REQUIRE(dense_b.Reserve(9).ok());

  // The step tables of a mixed batch: each sequence's layout and, per kind it has, its blocks'
  // first pages; a padding row and column of zeros.
  const SequenceKv* seqs[] = {&dense, &duo, &razor};
  const StepTables t = cache.BuildStepTables(seqs, 4, 4);
  REQUIRE(t.num_seqs == 4);
  REQUIRE(t.max_blocks == 4);
  CHECK(t.seq_layout == std::vector<int32_t>{0, 1, 2, 0});
  for (int s = 0; s < 3; ++s) {
    const SequenceKv& seq = *seqs[s];
    const KvLayout& layout = cache.layout(seq.layout());
    for (int j = 0; j < 3; ++j) {
      const size_t at = static_cast<size_t>(s * 4 + j);
      for (int l = 0; l < 2; ++l) {
        for (int h = 0; h < 3; ++h) {
          const KvRetention& r = layout.At(l, h);
          const std::vector<int32_t>& table = r.ring()            ? t.ring_blocks
                                              : r.compress_once() ? t.comp_blocks
                                                                  : t.blocks;
          CHECK(table[at] + cache.HeadPage(seq.layout(), l, h) == seq.Page(l, h, j));
        }
      }
    }
    CHECK(t.blocks[static_cast<size_t>(s * 4 + 3)] == 0);
  }
  CHECK(t.comp_from == std::vector<int32_t>{0, 0, 0, 0});

  // Uploaded once, the tables read back through the views the kernels get.
  std::vector<int32_t> data = {-7};
  const size_t offset = t.AppendTo(data);
  CHECK(offset == 1);
  kernels::Buffer uploaded = be->Allocate(DType::kI32, {static_cast<int64_t>(data.size())});
  be->CopyFromHost(uploaded.view(), data.data(), data.size() * sizeof(int32_t));
  const kernels::BlockTable layer1 = cache.LayerTable(1, t.Views(uploaded.view(), offset));
  CHECK(layer1.num_seqs() == 4);
  CHECK(layer1.num_layouts() == 4);
  CHECK(layer1.num_kv_heads() == 3);
  CHECK(layer1.max_blocks() == 4);
  CHECK(layer1.has_ring_heads());
  CHECK(layer1.has_compressed_heads());
  CHECK_FALSE(layer1.has_reindex_heads());
  CHECK(layer1.max_full_heads == 3);
  CHECK(layer1.max_ring_span == 12);
  CHECK(layer1.seq_layout.ptr<int32_t>()[2] == 2);
  CHECK(layer1.ring_blocks.ptr<int32_t>()[4 + 1] == t.ring_blocks[5]);
  const auto* heads = reinterpret_cast<const kernels::KvHead*>(layer1.heads.ptr<int32_t>());
  for (int u = 0; u < 4; ++u) {
    for (int h = 0; h < 3; ++h) {
      CHECK(heads[u * 3 + h].retention == cache.layout(u).At(1, h));
      CHECK(heads[u * 3 + h].page == cache.HeadPage(u, 1, h));
    }
  }
}

TEST_CASE("Blocks of other kinds evict prefix-cached blocks nobody uses", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  std::vector<KvLayout> layouts;
  layouts.push_back(KvLayout::Dense(2, 3));
  layouts.push_back(RazorLayout(2, 6));
  KvCache cache(SmallConfig(60), std::move(layouts), *be);
  std::vector<int32_t> prompt(40);
  for (int i = 0; i < 40; ++i) prompt[static_cast<size_t>(i)] = i;
  SequenceKv dense(cache, 0);
  REQUIRE(dense.Reserve(40).ok());  // the whole pool
  dense.CommitComputed(prompt, 40);
  dense.Release();
  CHECK(cache.num_pages_used() == 0);  // cached, evictable
  SequenceKv razor(cache, 1);
  REQUIRE(razor.Reserve(cache.max_tokens_per_sequence(1)).ok());
  razor.Release();
  SequenceKv again(cache, 0);
  CHECK(again.AttachCachedPrefix(prompt) == 0);  // evicted
}

// Random reservations, compactions and releases of sequences of several layouts over full, comp
// and ring blocks: no page is ever held twice, and the counts agree.
TEST_CASE("Blocks of every kind and layout never share a page under churn", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  const KvCacheConfig c = SmallConfig(157, /*chunk_tokens=*/4);  // not a multiple of any block
  // Layout 0: full blocks of 2 pages, comp blocks of 3, ring blocks of 1. Layout 1: dense (6).
  // Layout 2: rings only (6). Layout 3: DuoAttention-like, full 4 and ring 2.
  std::vector<KvLayout> layouts;
  layouts.push_back(RazorLayout(1, 5, /*ring_head=*/true));
  layouts.push_back(KvLayout::Dense(2, 3));
  layouts.push_back(RingLayout(true, 3, 5));
  layouts.push_back(RingLayout(false, 2, 4));
  KvCache cache(c, std::move(layouts), *be);
  CHECK(cache.full_pages(0) == 2);
  CHECK(cache.comp_pages(0) == 3);
  CHECK(cache.ring_pages(0) == 1);
  std::mt19937 rng(1234);
  std::vector<SequenceKv> seqs;
  for (int i = 0; i < 8; ++i) seqs.emplace_back(cache, i % 4);
  std::vector<int32_t> tokens(400, 7);
  int failures = 0, compactions = 0;
  for (int step = 0; step < 3000; ++step) {
    SequenceKv& s = seqs[rng() % seqs.size()];
    const int op = static_cast<int>(rng() % 10);
    if (op == 0) {
      s.Release();
    } else if (op == 1 && s.layout() == 0 && s.compacted_from() == 0 && s.capacity_tokens() > 8) {
      s.MarkCompacted(s.capacity_tokens() - 5);
      ++compactions;
    } else {
      const int used = cache.num_pages_used();
      const int want = std::min(400, s.capacity_tokens() + 1 + static_cast<int>(rng() % 12));
      if (!s.Reserve(want).ok()) {
        ++failures;
        REQUIRE(cache.num_pages_used() == used);
      } else if (s.layout() == 1) {
        s.CommitComputed(tokens, want);  // dense pages enter the prefix cache
      }
    }
    std::set<int32_t> pages;
    size_t live = 0;
    int held = 0;
    for (const SequenceKv& q : seqs) {
      held += q.num_pages_held();
      const int logical = q.capacity_tokens() / 4;
      const KvLayout& layout = cache.layout(q.layout());
      const int ring_blocks = cache.sink_blocks(q.layout()) + cache.window_blocks(q.layout());
      for (int l = 0; l < 2; ++l) {
        for (int h = 0; h < 3; ++h) {
          const KvRetention& r = layout.At(l, h);
          // A ring head's logical pages cycle through its ring blocks: each once.
          const int n = r.ring() ? (logical > 0 ? ring_blocks : 0) : logical;
          for (int p = 0; p < n; ++p) {
            if (r.compress_once() && q.CompBlockPage(p) == SequenceKv::kFreedBlock) continue;
            const int32_t page = q.Page(l, h, p);
            REQUIRE(page >= 0);
            REQUIRE(page < c.num_pages);
            REQUIRE(page == BlockPage(q, r, p) + cache.HeadPage(q.layout(), l, h));
            pages.insert(page);
            ++live;
          }
        }
      }
    }
    INFO("step " << step);
    // Dense sequences may share prefix-cached pages (same tokens): count distinct pages held.
    REQUIRE(pages.size() <= live);
    REQUIRE(static_cast<int>(pages.size()) == cache.num_pages_used());
    REQUIRE(held >= cache.num_pages_used());
  }
  CHECK(failures > 100);  // the pool did run dry
  CHECK(compactions > 20);
  for (SequenceKv& q : seqs) q.Release();
  CHECK(cache.num_pages_used() == 0);
}

// A layout whose (layer, head) decode kinds are given; its one choosing layer's set is set 0.
KvLayout SelectLayout(const std::string& name, std::vector<int32_t> decode) {
  KvLayout layout = KvLayout::Dense(2, 3, name);
  for (size_t i = 0; i < decode.size(); ++i) {
    kernels::KvSelect k;
    k.decode = decode[i];
    if (k.decode != kernels::kDecodeDense) {
      k.set = 0;
      k.budget = 8;
    }
    layout.selects.push_back(k);
  }
  return layout;
}

TEST_CASE("A layer launches the selection operations of its heads' kinds, over the layouts",
          "[kvcache]") {
  using namespace kernels;
  auto be = CreateCpuBackend(1);
  {
    KvCache dense(SmallConfig(40), {KvLayout::Dense(2, 3)}, *be);
    CHECK(dense.layer_select_ops(0) == 0);
    CHECK(dense.layer_select_ops(1) == 0);
  }
  KvCacheConfig config = SmallConfig(40);
  config.num_q_heads = 6;
  config.select_slots = 2;
  std::vector<KvLayout> layouts;
  // TidalDecode's shape: head 0 selects on layer 0 and consumes on layer 1; the others dense.
  layouts.push_back(SelectLayout("tidal", {kDecodeSelect, kDecodeDense, kDecodeDense,
                                           kDecodeConsume, kDecodeDense, kDecodeDense}));
  KvCache tidal(config, layouts, *be);
  CHECK(tidal.layer_select_ops(0) == kSelectOpScoreKeys);
  CHECK(tidal.layer_select_ops(1) == kSelectOpAttend);
  // Another arm recycles on layer 1: its gate runs there too; layer 0 keeps the union.
  layouts.push_back(SelectLayout("recycled", {kDecodeDense, kDecodeDense, kDecodeDense,
                                              kDecodeDense, kDecodeRecycle, kDecodeDense}));
  KvCache both(config, std::move(layouts), *be);
  CHECK(both.layer_select_ops(0) == kSelectOpScoreKeys);
  CHECK(both.layer_select_ops(1) == (kSelectOpGate | kSelectOpScoreKeys | kSelectOpAttend));
  KvSelect rule;
  rule.decode = kDecodePages;
  CHECK(SelectOpsOf(rule) == (kSelectOpScorePages | kSelectOpAttend));
  rule.decode = kDecodeSelect;
  rule.per_q_head = 1;
  CHECK(SelectOpsOf(rule) == (kSelectOpScoreKeys | kSelectOpPerQHead));
  rule.decode = kDecodeConsume;  // consumers read the sets; they choose none
  CHECK(SelectOpsOf(rule) == kSelectOpAttend);
  rule.decode = kDecodeRetrieve;
  CHECK(SelectOpsOf(rule) == 0);
}

TEST_CASE("KvLayout validation names the problem", "[kvcache]") {
  KvLayout layout = RingLayout(false, 4, 8);
  CHECK(layout.Validate(2, 3).ok());
  CHECK_THAT(layout.Validate(3, 3).message(), Catch::Contains("layers"));
  layout.At(1, 2).window = 0;
  CHECK_THAT(layout.Validate(2, 3).message(), Catch::Contains("window"));
  layout = RingLayout(false, 4, 8);
  layout.At(1, 2).sink = 2;
  CHECK_THAT(layout.Validate(2, 3).message(), Catch::Contains("different sizes"));
  layout = RazorLayout(2, 6);
  layout.At(0, 1).window = 7;
  CHECK_THAT(layout.Validate(2, 3).message(), Catch::Contains("different rules"));
  layout = KvLayout::Dense(2, 3);
  layout.At(0, 0).positions = kernels::kPositionsReindex;
  CHECK_THAT(layout.Validate(2, 3).message(), Catch::Contains("only ring heads"));
  layout = KvLayout::Dense(2, 3);
  layout.At(1, 0).storage = 7;
  CHECK_THAT(layout.Validate(2, 3).message(), Catch::Contains("layer 1 KV head 0"));
}

}  // namespace
}  // namespace headwise::kvcache
