// Stop conditions and streaming of the Generator on the real TinyStories model.
#include "engine/generator.h"

#include <catch2/catch.hpp>

#include "engine/attention_setup.h"
#include "engine/model_loader.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace headwise::engine {
namespace {

struct TinyStories {
  TinyStories() : backend(kernels::CreateCpuBackend(2)) {
    auto l = LoadModel(testing::SharedDir() + "/models/tinystories-656k", LoadOptions{}, *backend);
    INFO(l.status().ToString());
    REQUIRE(l.ok());
    loaded = std::move(l).value();
    const auto& c = loaded.model->config();
    cache = std::make_unique<kvcache::KvCache>(
        KvConfigFor(loaded.model->config(), 64 * c.num_layers * c.num_kv_heads),
        kvcache::KvLayout::Dense(c.num_layers, c.num_kv_heads), *backend);
  }
  GenerationResult Run(const SamplingParams& p, std::string* streamed = nullptr) {
    Generator g(*loaded.model, *cache, loaded.tokenizer.get(), loaded.eos_token_ids);
    const auto ids = loaded.tokenizer->Encode("Once upon a time, there was a little", true);
    auto r = g.Generate(ids, p, 5, [&](std::string_view d) {
      if (streamed) streamed->append(d);
    });
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    CHECK(cache->num_pages_used() == 0);  // every page back after the request
    return std::move(r).value();
  }
  std::unique_ptr<kernels::Backend> backend;
  LoadedModel loaded;
  std::unique_ptr<kvcache::KvCache> cache;
};

TEST_CASE("max_tokens, stop strings, stop token ids, streaming", "[generator]") {
  TinyStories t;
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = 40;
  p.ignore_eos = true;
  std::string streamed;
  const auto base = t.Run(p, &streamed);
  CHECK(base.finish_reason == FinishReason::kLength);
  CHECK(base.output_ids.size() == 40);
  CHECK(streamed == base.text);
  REQUIRE(base.text.size() > 30);

  // A stop string from the middle of the text: output ends right before its first occurrence.
  const std::string stop = base.text.substr(base.text.size() / 2, 6);
  SamplingParams ps = p;
  ps.stop = {stop};
  std::string streamed_stop;
  const auto stopped = t.Run(ps, &streamed_stop);
  CHECK(stopped.finish_reason == FinishReason::kStop);
  CHECK(stopped.text == base.text.substr(0, base.text.find(stop)));
  CHECK(streamed_stop == stopped.text);

  SamplingParams pt = p;
  pt.stop_token_ids = {base.output_ids[10]};
  const auto by_id = t.Run(pt);
  CHECK(by_id.finish_reason == FinishReason::kStop);
  const auto first = std::find(base.output_ids.begin(), base.output_ids.end(), base.output_ids[10]);
  CHECK(by_id.output_ids.size() == static_cast<size_t>(first - base.output_ids.begin()) + 1);
  // The stop token's own text is not in the output (vLLM drops it as it drops eos): the text is
  // that of the tokens before it.
  REQUIRE(first != base.output_ids.begin());
  SamplingParams before = p;
  before.max_tokens = static_cast<int>(first - base.output_ids.begin());
  CHECK(by_id.text == t.Run(before).text);
}

TEST_CASE("Seeded sampling is reproducible", "[generator]") {
  TinyStories t;
  SamplingParams p;
  p.temperature = 1.5f;  // hot enough that two seeds cannot plausibly agree on 24 tokens
  p.max_tokens = 24;
  p.seed = 1234;
  const auto a = t.Run(p), b = t.Run(p);
  CHECK(a.output_ids == b.output_ids);
  p.seed = 4321;
  const auto c = t.Run(p);
  CHECK(c.output_ids != a.output_ids);
}

}  // namespace
}  // namespace headwise::engine

namespace headwise::engine {
namespace {

// `headwise generate` with offload heads whose RoarGraph indexes build on the tier's thread: the
// one sequence waits for them, then decodes; retrieving every offloaded key, as dense does.
TEST_CASE("Generator waits for offload indexes, then decodes as dense", "[generator]") {
  TinyStories dense;
  const attention::ModelShape shape{2, 8, 4};
  auto set = attention::ParsePolicy(R"({
    "schema": "attn-policy/v1",
    "policies": {"ra": {"storage": {"kind": "offload",
                                    "offload": {"gpu_static": {"sink": 2, "recent": 4}}},
                        "decode": {"mode": "select",
                                   "selection": {"method": "ann", "budget": 4096}}}},
    "assignment": {"default": "ra"}})",
                                    shape, "", "ra");
  REQUIRE(set.ok());
  auto layout = KvLayoutFor(*set);
  REQUIRE(layout.ok());
  const auto& c = dense.loaded.model->config();
  auto cache =
      CreateKvCache({*layout}, KvConfigFor(c, 64 * c.num_layers * c.num_kv_heads), *dense.backend);
  REQUIRE(cache.ok());
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = 24;
  const GenerationResult want = dense.Run(p);
  Generator g(*dense.loaded.model, **cache, dense.loaded.tokenizer.get(),
              dense.loaded.eos_token_ids);
  const auto ids = dense.loaded.tokenizer->Encode("Once upon a time, there was a little", true);
  auto got = g.Generate(ids, p, 5, nullptr);
  INFO(got.status().ToString());
  REQUIRE(got.ok());
  CHECK(got->output_ids == want.output_ids);
}

}  // namespace
}  // namespace headwise::engine
