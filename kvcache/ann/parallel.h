// ParallelFor for the ANN build: the work items write disjoint outputs, so which thread runs an
// item never changes the result; only the wall time depends on num_threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace headwise::kvcache::ann {

// Calls fn(i) for every i in [0, n), on up to num_threads threads (the caller's included).
// Items are handed out in chunks of `chunk` from a shared counter, which balances uneven items
// (small chunks for few large items, larger ones to keep many small items off the counter).
template <typename Fn>
void ParallelFor(size_t n, int num_threads, Fn&& fn, size_t chunk = 16) {
  const size_t threads = std::min<size_t>(std::max(num_threads, 1), std::max<size_t>(n, 1));
  if (threads <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  chunk = std::max<size_t>(chunk, 1);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (;;) {
      const size_t begin = next.fetch_add(chunk);
      if (begin >= n) return;
      const size_t end = std::min(n, begin + chunk);
      for (size_t i = begin; i < end; ++i) fn(i);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace headwise::kvcache::ann
