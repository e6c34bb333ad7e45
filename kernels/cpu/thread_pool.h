// A fixed pool of worker threads for data-parallel loops of the CPU backend.
//
// A decode step issues hundreds of small loops, so waking sleeping threads through the kernel
// each time would cost more than the loops themselves: workers and the caller spin briefly
// on an atomic before they fall back to sleeping on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace headwise::kernels::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(begin, end) over contiguous chunks of [0, n), on the workers and the caller;
  // returns when all chunks are done. One caller at a time. `work` estimates the loop's total
  // arithmetic: below a few tens of thousands of operations the hand-off costs more than it
  // saves (tiny models, single-token steps), so the caller runs the loop alone.
  void ParallelFor(int64_t n, int64_t work, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int64_t, int64_t)>* task_ = nullptr;
  int64_t task_n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
};

}  // namespace headwise::kernels::cpu
