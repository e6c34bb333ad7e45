// Prometheus metrics: counters, gauges and histograms, optionally labelled, rendered in the
// Prometheus text exposition format. One registry per process, created by the program (headwise
// serve) and shared by the modules that report: the engine thread and the HTTP threads update
// the same registry, so it is thread-safe.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace headwise {

using Labels = std::vector<std::pair<std::string, std::string>>;

class MetricsRegistry {
 public:
  // Declares a metric once; later declarations of the same name are ignored.
  void DeclareCounter(const std::string& name, const std::string& help);
  void DeclareGauge(const std::string& name, const std::string& help);
  void DeclareHistogram(const std::string& name, const std::string& help,
                        std::vector<double> bucket_bounds);

  void Increment(const std::string& name, double by = 1.0, const Labels& labels = {});
  void Set(const std::string& name, double value, const Labels& labels = {});
  void Observe(const std::string& name, double value, const Labels& labels = {});

  // Current value of a counter or gauge series (0 if it was never touched): for tests and
  // for the engine's own bookkeeping.
  double Value(const std::string& name, const Labels& labels = {}) const;

  std::string RenderPrometheus() const;

 private:
  enum class Kind { kCounter, kGauge, kHistogram };
  struct Series {
    double value = 0.0;             // counter / gauge
    std::vector<uint64_t> buckets;  // histogram: cumulative at render time
    double sum = 0.0;
    uint64_t count = 0;
  };
  struct Metric {
    Kind kind;
    std::string help;
    std::vector<double> bounds;
    std::map<Labels, Series> series;
  };
  Series& SeriesFor(Metric& m, const Labels& labels);

  mutable std::mutex mu_;
  std::map<std::string, Metric> metrics_;
};

}  // namespace headwise
