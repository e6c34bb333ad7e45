// HostVector: blocks of a huge page or more start on a huge-page boundary (so whole 2 MB pages can
// back them), smaller ones come from operator new, and the vector behaves as a std::vector.
#include <catch2/catch.hpp>
#include <cstdint>

#include "core/huge_pages.h"

namespace headwise {
namespace {

TEST_CASE("HostVector: large blocks on huge-page boundaries, small ones from new", "[core]") {
  HostVector<uint16_t> large(kHugePageBytes / sizeof(uint16_t) + 5, 7);
  CHECK(reinterpret_cast<uintptr_t>(large.data()) % kHugePageBytes == 0);
  CHECK(large.back() == 7);
  // Growth moves the contents into a new aligned block.
  large.resize(3 * kHugePageBytes / sizeof(uint16_t), 9);
  CHECK(reinterpret_cast<uintptr_t>(large.data()) % kHugePageBytes == 0);
  CHECK(large[kHugePageBytes / sizeof(uint16_t)] == 7);
  CHECK(large.back() == 9);
  HostVector<uint32_t> small = {1, 2, 3};
  small.insert(small.end(), large.begin(), large.begin() + 2);
  CHECK(small == HostVector<uint32_t>{1, 2, 3, 7, 7});
  HostVector<uint64_t> moved = HostVector<uint64_t>(kHugePageBytes / 8, 1);
  CHECK(moved.size() == kHugePageBytes / 8);
  moved.clear();
  moved.shrink_to_fit();
  CHECK(moved.capacity() == 0);
}

TEST_CASE("HostVector: an impossible size throws instead of wrapping", "[core]") {
  HugePageAllocator<uint64_t> alloc;
  CHECK_THROWS_AS(alloc.allocate(static_cast<size_t>(-1) / 4), std::bad_array_new_length);
}

}  // namespace
}  // namespace headwise
