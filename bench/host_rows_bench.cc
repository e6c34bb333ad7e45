// What huge pages (core/huge_pages.h) buy the offload tier's searches: random rows read from a
// large host array, as a graph search reads keys, from a std::vector (4 KB pages) and from a
// HostVector (2 MB pages where the kernel gives them), in one run. Rows are read eight at a time,
// prefetched first (a search prefetches a node's unvisited neighbours, kvcache/ann/roar_graph.cc).
// One JSON line per array: ns per row, and the kB of the process's memory in huge pages after
// filling it (AnonHugePages; 0 where the system gives none).
//
// usage: hw_bench_host_rows [--gib 2] [--row-bytes 256] [--reads 4194304]
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/huge_pages.h"
#include "tools/flags.h"

namespace {

long AnonHugeKb() {
  std::ifstream in("/proc/self/smaps_rollup");
  std::string key;
  long kb = 0;
  while (in >> key) {
    if (key == "AnonHugePages:") {
      in >> kb;
      return kb;
    }
  }
  return 0;
}

template <typename Vector>
void Measure(const char* pages, size_t bytes, size_t row_bytes, size_t reads) {
  Vector rows(bytes, 1);  // filled: every page faulted in before the clock starts
  const long huge_kb = AnonHugeKb();
  const size_t n = bytes / row_bytes;
  std::mt19937_64 rng(1);
  std::vector<size_t> order(reads);
  for (size_t& x : order) x = rng() % n;
  const double t0 = headwise::bench::Now();
  size_t sum = 0;
  for (size_t i = 0; i + 8 <= reads; i += 8) {
    for (size_t j = 0; j < 8; ++j) __builtin_prefetch(rows.data() + order[i + j] * row_bytes);
    for (size_t j = 0; j < 8; ++j) {
      const char* row = rows.data() + order[i + j] * row_bytes;
      for (size_t b = 0; b < row_bytes; b += 64) sum += static_cast<size_t>(row[b]);
    }
  }
  const double ns = (headwise::bench::Now() - t0) * 1e9 / static_cast<double>(reads);
  std::printf(
      "%s\n",
      fmt::format(
          R"({{"pages": "{}", "gib": {:.2f}, "row_bytes": {}, "ns_per_row": {:.1f}, "anon_huge_kb": {}, "checksum": {}}})",
          pages, static_cast<double>(bytes) / (1 << 30), row_bytes, ns, huge_kb, sum)
          .c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  headwise::tools::FlagParser flags(argc, argv);
  float gib = 2;
  int row_bytes = 256, reads = 1 << 22;
  flags.Float("gib", gib);
  flags.Int("row-bytes", row_bytes);
  flags.Int("reads", reads);
  if (auto st = flags.Finish(); !st.ok() || gib <= 0 || row_bytes < 64 || reads < 8) {
    std::fprintf(stderr, "usage: hw_bench_host_rows [--gib 2] [--row-bytes 256] [--reads N]\n");
    return 2;
  }
  const auto bytes = static_cast<size_t>(static_cast<double>(gib) * (1 << 30));
  Measure<std::vector<char>>("4k", bytes, static_cast<size_t>(row_bytes),
                             static_cast<size_t>(reads));
  Measure<headwise::HostVector<char>>("huge", bytes, static_cast<size_t>(row_bytes),
                                      static_cast<size_t>(reads));
  return 0;
}
