#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <chrono>

namespace headwise::kernels::cpu {
namespace {

// How long a thread spins for the next event before it sleeps: a few decode-sized loops.
constexpr auto kSpin = std::chrono::microseconds(100);
// Loops with less arithmetic than this run on the calling thread alone.
constexpr int64_t kMinParallelWork = 32 * 1024;

// Chunk `index` of `parts` equal chunks of [0, n).
void ChunkBounds(int64_t n, int parts, int index, int64_t& begin, int64_t& end) {
  begin = n * index / parts;
  end = n * (index + 1) / parts;
}

template <typename Pred>
bool SpinUntil(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (pred()) return true;
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return false;
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < std::max(1, num_threads); ++i) {
    workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, int64_t work,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1 || work < kMinParallelWork) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    task_ = &fn;
    task_n_ = n;
    pending_.store(static_cast<int>(workers_.size()));
    generation_.fetch_add(1);
  }
  work_cv_.notify_all();
  int64_t begin, end;
  ChunkBounds(n, num_threads(), 0, begin, end);
  if (begin < end) fn(begin, end);
  if (!SpinUntil([&] { return pending_.load() == 0; })) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return pending_.load() == 0; });
  }
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    if (!SpinUntil([&] { return generation_.load() != seen; })) {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return generation_.load() != seen; });
    }
    const std::function<void(int64_t, int64_t)>* task;
    int64_t n;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      seen = generation_.load();
      task = task_;
      n = task_n_;
    }
    int64_t begin, end;
    ChunkBounds(n, num_threads(), index, begin, end);
    if (begin < end) (*task)(begin, end);
    if (pending_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mu_);
      done_cv_.notify_one();
    }
  }
}

}  // namespace headwise::kernels::cpu
