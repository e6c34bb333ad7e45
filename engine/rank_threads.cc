#include "engine/rank_threads.h"

namespace headwise::engine {

RankThreads::RankThreads(std::vector<kernels::Backend*> backends) : backends_(std::move(backends)) {
  HW_CHECK(!backends_.empty(), "no ranks");
  for (int r = 1; r < size(); ++r) threads_.emplace_back([this, r] { Work(r); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::Work(int rank) {
  backends_[static_cast<size_t>(rank)]->BindThread();
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int)>* job = nullptr;
    {
      std::unique_lock lock(mu_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
    }
    std::exception_ptr error;
    try {
      (*job)(rank);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard lock(mu_);
    if (error && !error_) error_ = error;
    if (--pending_ == 0) done_.notify_one();
  }
}

void RankThreads::Run(const std::function<void(int)>& fn) {
  if (size() == 1) {
    fn(0);
    return;
  }
  {
    std::lock_guard lock(mu_);
    job_ = &fn;
    pending_ = size() - 1;
    error_ = nullptr;
    ++generation_;
  }
  start_.notify_all();
  // Rank 0's work goes to its own device from this thread too.
  backends_.front()->BindThread();
  std::exception_ptr error;
  try {
    fn(0);
  } catch (...) {
    error = std::current_exception();
  }
  std::unique_lock lock(mu_);
  done_.wait(lock, [&] { return pending_ == 0; });
  if (!error) error = error_;
  if (error) std::rethrow_exception(error);
}

}  // namespace headwise::engine
