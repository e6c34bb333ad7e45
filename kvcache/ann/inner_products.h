// The inner products of one key with several queries at once, for a search that scores every key
// it reaches for a whole GQA group (RoarGraph::SearchGroup). Each out[g] is bit for bit
// kernels::cpu::InnerProduct(key, queries[g]): the same eight partial sums, each summed in the same
// order, with separate multiplies and adds (no fused multiply-add).
//
// Why its own function: one query's sum is a chain of dependent additions, which bounds
// InnerProduct at about 20 ns for dim 128 however wide the machine; the queries' chains are
// independent, so with AVX2 a key of dim 128 is scored for four queries in about the time of one,
// its row read and converted once. Without AVX2 (or another architecture) it is InnerProduct per
// query.
#pragma once

#include <cstddef>

#include "kernels/cpu/top_keys.h"

namespace headwise::kvcache::ann {

// out[g] = InnerProduct(key, queries + g * dim, dim) for g < count.
void InnerProducts(const float* key, const float* queries, size_t count, size_t dim, float* out);
void InnerProducts(const kernels::cpu::Bf16* key, const float* queries, size_t count, size_t dim,
                   float* out);

}  // namespace headwise::kvcache::ann
