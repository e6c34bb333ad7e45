#include "kvcache/kv_cache.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <set>

#include "kernels/cpu/cpu_backend.h"

namespace headwise::kvcache {
namespace {

KvCacheConfig SmallConfig(int num_pages) {
  KvCacheConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 3;
  c.head_dim = 8;
  c.page_size = 4;
  c.num_pages = num_pages;
  return c;
}

TEST_CASE("SequenceKv reserves pages per layer and head, all or nothing", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  // 2 layers x 3 heads: 6 pages per 4 tokens; 20 pages make 3 whole blocks.
  KvCache cache(SmallConfig(20), HeadClassLayout::Dense(2, 3), *be);
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
  // A block is a contiguous run of pages, one per (layer, head): kernels need only the blocks.
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h)
      CHECK(seq.Page(l, h, 1) == seq.blocks()[1] * 6 + cache.PageIndex(l, h));

  seq.Release();
  CHECK(cache.num_pages_free() == 18);
}

TEST_CASE("Head classes: several classes per layer keep separate pages", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  HeadClassLayout layout;
  layout.classes = {{{0, 2}, {1}}, {{2}, {0}, {1}}};
  KvCache cache(SmallConfig(32), layout, *be);
  CHECK(cache.ClassOf(0, 1) == 1);
  CHECK(cache.IndexInClass(0, 2) == 1);
  SequenceKv seq(cache);
  REQUIRE(seq.Reserve(8).ok());
  std::set<int32_t> pages;
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 3; ++h)
      for (int p = 0; p < 2; ++p) pages.insert(seq.Page(l, h, p));
  CHECK(pages.size() == 12);
}

TEST_CASE("Prefix cache: full pages are shared by content, kept while free, evicted LRU",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCache cache(SmallConfig(6 * 4), HeadClassLayout::Dense(2, 3), *be);     // room for 4 blocks
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
  KvCache cache(SmallConfig(6 * 4), HeadClassLayout::Dense(2, 3), *be);
  cache.set_prefix_caching(false);
  const std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  SequenceKv a(cache);
  REQUIRE(a.Reserve(8).ok());
  a.CommitComputed(prompt, 8);
  SequenceKv b(cache);
  CHECK(b.AttachCachedPrefix(prompt) == 0);
}

// Layer l of 3 heads: class 0 = heads {0, 1} full, class 1 = head {2} a ring (DuoAttention's
// split); or every head a ring (StreamingLLM).
HeadClassLayout RingLayout(bool all_ring, int sink, int window) {
  HeadClassLayout layout;
  const Retention ring{true, sink, window};
  for (int l = 0; l < 2; ++l) {
    if (all_ring) {
      layout.classes.push_back({{0, 1, 2}});
      layout.retention.push_back({ring});
    } else {
      layout.classes.push_back({{0, 1}, {2}});
      layout.retention.push_back({Retention{}, ring});
    }
  }
  return layout;
}

TEST_CASE("Ring classes: sinks and a recycled window in fixed pages per sequence", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCacheConfig c = SmallConfig(200);
  c.max_ring_sequences = 2;
  c.ring_chunk_tokens = 3;
  // page 4: sink 5 -> 2 sink blocks; window 9 + chunk 3 -> 3 window blocks.
  KvCache cache(c, RingLayout(/*all_ring=*/true, 5, 9), *be);
  CHECK(cache.pages_per_block() == 0);
  CHECK(cache.ring_pages_per_block() == 6);
  CHECK(cache.ring_blocks_per_sequence() == 5);
  CHECK(cache.num_pages() == 2 * 5 * 6);
  CHECK_FALSE(cache.prefix_caching());

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
  CHECK(a.RingBlock(2) == a.RingBlock(5));
  CHECK(a.RingBlock(1) != a.RingBlock(4));
  CHECK(a.Slot(1, 2, 8) == a.Slot(1, 2, 20));
  for (int32_t slot : {a.Slot(0, 0, 0), a.Slot(1, 2, 299)}) {
    CHECK(slot >= 0);
    CHECK(slot < c.num_pages * c.page_size);
  }
  a.Release();
  CHECK(third.Reserve(1).ok());
}

TEST_CASE("Ring and full classes side by side: two regions, one addressing rule", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCacheConfig c = SmallConfig(100);
  c.max_ring_sequences = 3;
  c.ring_chunk_tokens = 0;
  KvCache cache(c, RingLayout(/*all_ring=*/false, 4, 8), *be);
  // Full blocks hold heads 0 and 1 of both layers; ring blocks head 2 of both.
  CHECK(cache.pages_per_block() == 4);
  CHECK(cache.ring_pages_per_block() == 2);
  CHECK(cache.ring_blocks_per_sequence() == 1 + 2);
  const int ring_pages = 3 * 3 * 2;
  CHECK(cache.num_pages() == ring_pages + (100 - ring_pages) / 4 * 4);
  CHECK(cache.IsRing(0, 2));
  CHECK_FALSE(cache.IsRing(1, 1));
  CHECK(cache.PageIndex(0, 2) >= (100 - ring_pages) / 4 * 4);

  SequenceKv seq(cache);
  REQUIRE(seq.Reserve(10).ok());
  CHECK(seq.num_pages_held() == 3 * 4 + 3 * 2);
  REQUIRE(seq.Reserve(30).ok());  // full heads grow, ring heads do not
  CHECK(seq.num_pages_held() == 8 * 4 + 3 * 2);
  for (int p = 0; p < 30; ++p) {
    CHECK(seq.Page(1, 0, p / 4) ==
          seq.blocks()[static_cast<size_t>(p / 4)] * 4 + cache.PageIndex(1, 0));
    CHECK(seq.Page(1, 2, p / 4) == seq.RingBlock(p / 4) * 2 + cache.PageIndex(1, 2));
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
  // A failed reservation leaves both regions as they were.
  const int free_before = cache.num_pages_free();
  CHECK(seq.Reserve(10000).code() == StatusCode::kResourceExhausted);
  CHECK(cache.num_pages_free() == free_before);
  seq.Release();
  CHECK(cache.num_pages_used() == 0);
}

// Per layer: head 0 full, heads 1 and 2 compress-once (RazorAttention's split), or with
// `ring_head` head 2 a ring instead.
HeadClassLayout RazorLayout(int sink, int window, bool ring_head = false) {
  HeadClassLayout layout;
  const Retention comp{false, sink, window, false, true, true, true};
  for (int l = 0; l < 2; ++l) {
    if (ring_head) {
      layout.classes.push_back({{0}, {1}, {2}});
      layout.retention.push_back({Retention{}, comp, Retention{true, 3, 5}});
    } else {
      layout.classes.push_back({{0}, {1, 2}});
      layout.retention.push_back({Retention{}, comp});
    }
  }
  return layout;
}

TEST_CASE("Compress-once classes: comp blocks beside full blocks, freed by compaction",
          "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  // Page 4; full blocks of 2 pages (head 0 of each layer), comp blocks of 4 (heads 1, 2).
  KvCache cache(SmallConfig(60), RazorLayout(/*sink=*/2, /*window=*/6), *be);
  CHECK(cache.pages_per_block() == 2);
  CHECK(cache.comp_pages_per_block() == 4);
  CHECK(cache.IsCompressed(1, 2));
  CHECK_FALSE(cache.IsCompressed(1, 0));
  CHECK(cache.num_pages() == 60);
  CHECK(cache.max_tokens_per_sequence() == 60 / 6 * 4);
  CHECK_FALSE(cache.prefix_caching());

  SequenceKv seq(cache), other(cache);
  REQUIRE(seq.Reserve(32).ok());  // 8 logical pages: 8 x (2 + 4)
  CHECK(seq.num_pages_held() == 48);
  CHECK(cache.num_pages_used() == 48);
  CHECK(seq.comp_blocks().size() == 8);
  // Every (layer, head, logical page) owns a distinct page; each kind by its own formula.
  std::set<int32_t> pages;
  for (int l = 0; l < 2; ++l) {
    for (int h = 0; h < 3; ++h) {
      for (int p = 0; p < 8; ++p) {
        const int32_t page = seq.Page(l, h, p);
        CHECK(page == (h == 0 ? seq.blocks()[static_cast<size_t>(p)] * 2
                              : seq.comp_blocks()[static_cast<size_t>(p)] * 4) +
                          cache.PageIndex(l, h));
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
  const std::vector<int32_t> freed = {1, 2, 3, 4, 5};
  for (int p = 0; p < 8; ++p) {
    const bool is_freed = std::count(freed.begin(), freed.end(), p) > 0;
    CHECK((seq.comp_blocks()[static_cast<size_t>(p)] == SequenceKv::kFreedBlock) == is_freed);
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
  REQUIRE(seq.Reserve(cache.max_tokens_per_sequence()).ok());
  CHECK(other.Reserve(1).code() == StatusCode::kResourceExhausted);
}

// Random reservations, compactions and releases of several sequences over full, comp and ring
// blocks: no page is ever held twice, each kind stays in its region, and the counts agree.
TEST_CASE("Full, comp and ring blocks never share a page under churn", "[kvcache]") {
  auto be = kernels::CreateCpuBackend(1);
  KvCacheConfig c = SmallConfig(157);  // not a multiple of any kind's block
  c.max_ring_sequences = 4;
  c.ring_chunk_tokens = 4;
  // Full blocks of 2 pages, comp blocks of 3, ring blocks of 1.
  const Retention comp{false, 1, 5, false, true, true, true};
  HeadClassLayout layout;
  layout.classes = {{{0}, {1}, {2}}, {{0}, {1, 2}}};
  layout.retention = {{Retention{}, comp, Retention{true, 3, 5}}, {Retention{}, comp}};
  KvCache cache(c, layout, *be);
  CHECK(cache.pages_per_block() == 2);
  CHECK(cache.comp_pages_per_block() == 3);
  CHECK(cache.ring_pages_per_block() == 1);
  const int ring_base = c.num_pages - KvCache::RingRegionPages(c, cache.layout());
  std::mt19937 rng(1234);
  std::vector<SequenceKv> seqs;
  for (int i = 0; i < 4; ++i) seqs.emplace_back(cache);
  int failures = 0, compactions = 0;
  for (int step = 0; step < 3000; ++step) {
    SequenceKv& s = seqs[rng() % seqs.size()];
    const int op = static_cast<int>(rng() % 10);
    if (op == 0) {
      s.Release();
    } else if (op == 1 && s.compacted_from() == 0 && s.capacity_tokens() > 8) {
      s.MarkCompacted(s.capacity_tokens() - 5);
      ++compactions;
    } else {
      const int used = cache.num_pages_used();
      if (!s.Reserve(s.capacity_tokens() + 1 + static_cast<int>(rng() % 12)).ok()) {
        ++failures;
        REQUIRE(cache.num_pages_used() == used);
      }
    }
    std::set<int32_t> pages;
    size_t live = 0;
    int held = 0;
    for (const SequenceKv& q : seqs) {
      held += q.num_pages_held();
      const int logical = q.capacity_tokens() / 4;
      for (int l = 0; l < 2; ++l) {
        for (int h = 0; h < 3; ++h) {
          const bool ring = cache.IsRing(l, h), compressed = cache.IsCompressed(l, h);
          // A ring head's logical pages cycle through its ring blocks: each once.
          const int n = ring ? (logical > 0 ? cache.ring_blocks_per_sequence() : 0) : logical;
          for (int p = 0; p < n; ++p) {
            if (compressed && q.comp_blocks()[static_cast<size_t>(p)] == SequenceKv::kFreedBlock) {
              continue;
            }
            const int32_t page = q.Page(l, h, p);
            REQUIRE(page >= 0);
            REQUIRE(page < c.num_pages);
            REQUIRE((page >= ring_base) == ring);
            pages.insert(page);
            ++live;
          }
        }
      }
    }
    INFO("step " << step);
    REQUIRE(pages.size() == live);
    REQUIRE(held == cache.num_pages_used());
  }
  CHECK(failures > 100);  // the pool did run dry
  CHECK(compactions > 50);
  for (SequenceKv& q : seqs) q.Release();
  CHECK(cache.num_pages_used() == 0);
}

TEST_CASE("HeadClassLayout validation names the problem", "[kvcache]") {
  HeadClassLayout layout;
  layout.classes = {{{0, 1}, {1}}};
  Status s = layout.Validate(1, 3);
  CHECK_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::Contains("two classes"));
  layout.classes = {{{0, 1}}};
  CHECK_THAT(layout.Validate(1, 3).message(), Catch::Contains("in no class"));
  layout.classes = {{{0, 5}}};
  CHECK_THAT(layout.Validate(1, 3).message(), Catch::Contains("out of range"));
  CHECK_THAT(layout.Validate(2, 2).message(), Catch::Contains("layers"));
  HeadClassLayout ring = RingLayout(false, 4, 8);
  CHECK(ring.Validate(2, 3).ok());
  ring.retention[1][1].window = 0;
  CHECK_THAT(ring.Validate(2, 3).message(), Catch::Contains("window"));
  ring = RingLayout(false, 4, 8);
  ring.retention[1][1].sink = 2;
  CHECK_THAT(ring.Validate(2, 3).message(), Catch::Contains("different sizes"));
  ring = RingLayout(false, 4, 8);
  ring.retention[0].pop_back();
  CHECK_THAT(ring.Validate(2, 3).message(), Catch::Contains("retention for 1 classes"));
}

}  // namespace
}  // namespace headwise::kvcache
