// Host memory that the kernel may back with 2 MB pages (transparent huge pages, asked for with
// madvise where the system's policy is "madvise"), for large arrays read at random: the offload
// tier's keys and values and its graphs' edges, which a search reads a row at a time all over
// gigabytes. With 4 KB pages nearly every such read also misses the TLB (random 256-byte rows of
// 2 GiB took 25-35% less time with huge pages on the development machine:
// bench/results/host-rows-huge-pages-2026-12-08-cpu.md).
//
// HostVector<T> is a std::vector whose blocks of at least one huge page start on a huge-page
// boundary and are marked MADV_HUGEPAGE before anything touches them (so the page faults that
// first fill them take huge pages); smaller blocks come from operator new. Where the system never
// gives huge pages, it is an ordinary vector.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace headwise {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

template <typename T>
struct HugePageAllocator {
  using value_type = T;

  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}

  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    const size_t bytes = n * sizeof(T);
    if (bytes < kHugePageBytes) return static_cast<T*>(::operator new(bytes));
    void* p = nullptr;
    if (posix_memalign(&p, kHugePageBytes, bytes) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Whole huge pages only; a failure (no THP in this kernel) leaves ordinary pages.
    (void)madvise(p, bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(p);
  }

  void deallocate(T* p, size_t n) noexcept {
    if (n * sizeof(T) < kHugePageBytes) {
      ::operator delete(p);
    } else {
      std::free(p);
    }
  }

  friend bool operator==(const HugePageAllocator&, const HugePageAllocator&) {
    return true;
  }
};

template <typename T>
using HostVector = std::vector<T, HugePageAllocator<T>>;

}  // namespace headwise
