// The KV budget under --gpu-memory-utilization: what fits is granted in whole blocks and never
// overcommits; what does not fit is a startup error that names the numbers.
#include "engine/memory_budget.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

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
  for (double bad : {0.0, -0.5, 1.5}) {
    c.gpu_memory_utilization = bad;
    auto refused = KvPagesForMemory(m, c, {80 * kGiB, 80 * kGiB}, page_bytes);
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace headwise::engine
