// The KV pool's size: an explicit page count wins, then a budget of bytes, then on a GPU what
// --gpu-memory-utilization grants, in whole blocks and never overcommitted; what does not fit is
// a startup error that names the numbers, and a bad setting one that names its field.
#include "engine/memory_budget.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/cpu/cpu_backend.h"
#include "kvcache/kv_cache.h"
#include "tests/test_util.h"

namespace headwise::engine {
namespace {

models::ModelConfig Llama3_8B() {
  std::ifstream in(testing::SourcePath("configs/models/llama-3-8b/config.json"));
  auto config = models::ParseHfConfig(nlohmann::json::parse(in));
  REQUIRE(config.ok());
  return *config;
}

constexpr size_t kGiB = size_t{1} << 30;

TEST_CASE("KV pages fill what utilization leaves after weights and activations", "[engine]") {
  const models::ModelConfig m = Llama3_8B();
  EngineConfig c;
  c.max_model_len = 32768;
  kvcache::KvCacheConfig kv;
  kv.num_layers = m.num_layers;
  kv.num_kv_heads = m.num_kv_heads;
  kv.head_dim = m.head_dim;
  kv.page_size = c.page_size;
  const size_t page_bytes = kvcache::KvCache::PageBytes(kv, DType::kBF16);
  const kernels::Backend::MemoryInfo h100{80 * kGiB - 16 * kGiB, 80 * kGiB};  // weights loaded
  for (double util : {0.5, 0.9, 1.0}) {
    c.gpu_memory_utilization = util;
    auto pages = KvPagesForMemory(m, c, h100, page_bytes);
    REQUIRE(pages.ok());
    CHECK(*pages % (m.num_layers * m.num_kv_heads) == 0);
    const double used = 16.0 * kGiB + static_cast<double>(ActivationBytes(m, c)) +
                        static_cast<double>(*pages) * static_cast<double>(page_bytes);
    CHECK(used <= util * 80 * kGiB);
    // Within one block of the grant: nothing left on the table.
    CHECK(used + static_cast<double>(m.num_layers * m.num_kv_heads) * page_bytes >
          util * 80 * kGiB);
  }
}

TEST_CASE("Memory the engine holds besides pages (selection state) comes off the KV pages",
          "[engine]") {
  const models::ModelConfig m = Llama3_8B();
  EngineConfig c;
  c.max_model_len = 32768;
  c.gpu_memory_utilization = 0.9;
  const size_t page_bytes = 2 * 16 * 128 * 2;
  const kernels::Backend::MemoryInfo h100{80 * kGiB - 16 * kGiB, 80 * kGiB};
  auto all = KvPagesForMemory(m, c, h100, page_bytes);
  auto less = KvPagesForMemory(m, c, h100, page_bytes, 4 * static_cast<size_t>(kGiB));
  REQUIRE(all.ok());
  REQUIRE(less.ok());
  const double freed = static_cast<double>(*all - *less) * static_cast<double>(page_bytes);
  CHECK(freed >= 4 * kGiB);
  CHECK(freed < 4 * kGiB + static_cast<double>(m.num_layers * m.num_kv_heads) * page_bytes);
}

TEST_CASE("Too little memory for one request is refused with the numbers", "[engine]") {
  const models::ModelConfig m = Llama3_8B();
  EngineConfig c;
  c.max_model_len = 131072;  // 16 GiB of KV for one request
  const size_t page_bytes = 2 * 16 * 128 * 2;
  c.gpu_memory_utilization = 0.3;
  auto pages = KvPagesForMemory(m, c, {80 * kGiB - 16 * kGiB, 80 * kGiB}, page_bytes);
  REQUIRE_FALSE(pages.ok());
  CHECK(pages.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(pages.status().message(), Catch::Contains("raise --gpu-memory-utilization") &&
                                           Catch::Contains("max_model_len 131072"));
}

TEST_CASE("The pool's size comes from pages, then bytes; bad settings name their field",
          "[engine]") {
  const models::ModelConfig m = Llama3_8B();
  auto cpu = kernels::CreateCpuBackend(1);
  const size_t page_bytes = 4096;
  EngineConfig c;
  c.max_model_len = 8192;
  // Nothing set on the CPU: 0, the engine's default.
  auto pages = KvPagesForConfig(m, c, *cpu, page_bytes);
  REQUIRE(pages.ok());
  CHECK(*pages == 0);
  c.kv_cache_bytes = int64_t{10} * page_bytes + 100;
  pages = KvPagesForConfig(m, c, *cpu, page_bytes);
  REQUIRE(pages.ok());
  CHECK(*pages == 10);
  c.num_kv_pages = 7;  // wins over the budget
  pages = KvPagesForConfig(m, c, *cpu, page_bytes);
  REQUIRE(pages.ok());
  CHECK(*pages == 7);
  CHECK(*KvPagesForBytes(int64_t{1} << 50, 1) == 1 << 30);  // page ids stay inside int32

  auto refusal = [&](auto mutate) {
    EngineConfig bad = c;
    mutate(bad);
    auto refused = KvPagesForConfig(m, bad, *cpu, page_bytes);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.status().code() == StatusCode::kInvalidArgument);
    return refused.status().field();
  };
  // Checked on every device, whichever setting applies.
  for (double util : {0.0, -0.5, 1.5}) {
    CHECK(refusal([&](EngineConfig& b) { b.gpu_memory_utilization = util; }) ==
          "gpu_memory_utilization");
  }
  CHECK(refusal([](EngineConfig& b) { b.num_kv_pages = -1; }) == "num_kv_pages");
  CHECK(refusal([](EngineConfig& b) { b.kv_cache_bytes = -1; }) == "kv_cache_bytes");
  CHECK(refusal([&](EngineConfig& b) {
          b.num_kv_pages = 0;
          b.kv_cache_bytes = page_bytes - 1;  // not one page
        }) == "kv_cache_bytes");
}

}  // namespace
}  // namespace headwise::engine
