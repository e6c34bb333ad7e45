#include "core/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace headwise {
namespace {

std::string RenderLabels(const Labels& labels, const std::string& extra_key = "",
                         const std::string& extra_value = "") {
  std::string out;
  auto add = [&](const std::string& k, const std::string& v) {
    std::string escaped;
    for (char c : v) {
      if (c == '\\' || c == '"') escaped += '\\';
      if (c == '\n') {
        escaped += "\\n";
        continue;
      }
      escaped += c;
    }
    out += fmt::format("{}{}=\"{}\"", out.empty() ? "" : ",", k, escaped);
  };
  for (const auto& [k, v] : labels) add(k, v);
  if (!extra_key.empty()) add(extra_key, extra_value);
  return out.empty() ? "" : "{" + out + "}";
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

}  // namespace

void MetricsRegistry::DeclareCounter(const std::string& name, const std::string& help) {
  std::lock_guard<std::mutex> lock(mu_);
  metrics_.try_emplace(name, Metric{Kind::kCounter, help, {}, {}});
}

void MetricsRegistry::DeclareGauge(const std::string& name, const std::string& help) {
  std::lock_guard<std::mutex> lock(mu_);
  metrics_.try_emplace(name, Metric{Kind::kGauge, help, {}, {}});
}

void MetricsRegistry::DeclareHistogram(const std::string& name, const std::string& help,
                                       std::vector<double> bucket_bounds) {
  std::sort(bucket_bounds.begin(), bucket_bounds.end());
  std::lock_guard<std::mutex> lock(mu_);
  metrics_.try_emplace(name, Metric{Kind::kHistogram, help, std::move(bucket_bounds), {}});
}

MetricsRegistry::Series& MetricsRegistry::SeriesFor(Metric& m, const Labels& labels) {
  auto [it, inserted] = m.series.try_emplace(labels);
  if (inserted && m.kind == Kind::kHistogram) it->second.buckets.assign(m.bounds.size(), 0);
  return it->second;
}

void MetricsRegistry::Increment(const std::string& name, double by, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metrics_.find(name);
  if (it == metrics_.end() || it->second.kind != Kind::kCounter) return;
  SeriesFor(it->second, labels).value += by;
}

void MetricsRegistry::Set(const std::string& name, double value, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metrics_.find(name);
  if (it == metrics_.end() || it->second.kind != Kind::kGauge) return;
  SeriesFor(it->second, labels).value = value;
}

void MetricsRegistry::Observe(const std::string& name, double value, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metrics_.find(name);
  if (it == metrics_.end() || it->second.kind != Kind::kHistogram) return;
  Series& s = SeriesFor(it->second, labels);
  const auto& bounds = it->second.bounds;
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (value <= bounds[i]) ++s.buckets[i];
  }
  s.sum += value;
  ++s.count;
}

double MetricsRegistry::Value(const std::string& name, const Labels& labels) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metrics_.find(name);
  if (it == metrics_.end()) return 0.0;
  auto s = it->second.series.find(labels);
  if (s == it->second.series.end()) return 0.0;
  return it->second.kind == Kind::kHistogram ? static_cast<double>(s->second.count)
                                             : s->second.value;
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, m] : metrics_) {
    const char* type = m.kind == Kind::kCounter ? "counter"
                       : m.kind == Kind::kGauge ? "gauge"
                                                : "histogram";
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, m.help, name, type);
    if (m.series.empty() && m.kind != Kind::kHistogram) out += name + " 0\n";
    for (const auto& [labels, s] : m.series) {
      if (m.kind != Kind::kHistogram) {
        out += fmt::format("{}{} {}\n", name, RenderLabels(labels), Number(s.value));
        continue;
      }
      for (size_t i = 0; i < m.bounds.size(); ++i) {
        out += fmt::format("{}_bucket{} {}\n", name,
                           RenderLabels(labels, "le", Number(m.bounds[i])), s.buckets[i]);
      }
      out += fmt::format("{}_bucket{} {}\n", name, RenderLabels(labels, "le", "+Inf"), s.count);
      out += fmt::format("{}_sum{} {}\n", name, RenderLabels(labels), Number(s.sum));
      out += fmt::format("{}_count{} {}\n", name, RenderLabels(labels), s.count);
    }
  }
  return out;
}

}  // namespace headwise
