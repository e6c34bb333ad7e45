#include "kvcache/kv_cache.h"

#include <algorithm>
#include <catch2/catch.hpp>
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
}

}  // namespace
}  // namespace headwise::kvcache
