#include "eval/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

namespace headwise::eval {
namespace {

using ojson = nlohmann::ordered_json;

// Depths are grouped by their value as given (0.25 and 0.250 are one).
std::string DepthKey(double d) {
  return fmt::format("{:.6f}", d);
}

double Rate(double n, double s) {
  return s > 0 ? n / s : 0.0;
}

// + 0.0 turns -0.0 into 0.0.
std::string Pct(double x) {
  return fmt::format("{:.1f}", 100.0 * x + 0.0);
}

int64_t At(const std::vector<std::pair<int, int64_t>>& v, int key) {
  for (const auto& [k, x] : v)
    if (k == key) return x;
  return 0;
}

std::string MiB(int64_t bytes) {
  return fmt::format("{:.1f}", static_cast<double>(bytes) / (1 << 20));
}

// Markdown table cells must not break the table.
std::string MdEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n')
      out += ' ';
    else
      out += c;
  }
  return out;
}

}  // namespace

std::vector<Cell> Cells(const EvalResults& r, bool by_depth) {
  // Sample indices of each (task, length[, depth]) group, in the header's order.
  std::vector<std::tuple<std::string, int, std::optional<double>, std::vector<size_t>>> groups;
  std::map<std::tuple<std::string, int, std::string>, size_t> where;
  for (const std::string& task : r.header.tasks) {
    for (int length : r.header.lengths) {
      if (!by_depth) {
        where[{task, length, ""}] = groups.size();
        groups.emplace_back(task, length, std::nullopt, std::vector<size_t>{});
        continue;
      }
      for (double d : r.header.depths) {
        if (where.count({task, length, DepthKey(d)})) continue;
        where[{task, length, DepthKey(d)}] = groups.size();
        groups.emplace_back(task, length, d, std::vector<size_t>{});
      }
    }
  }
  for (size_t i = 0; i < r.samples.size(); ++i) {
    const SampleRecord& s = r.samples[i];
    const auto it = where.find({s.task, s.length, by_depth ? DepthKey(s.depth) : ""});
    if (it != where.end()) std::get<3>(groups[it->second]).push_back(i);
  }
  std::vector<Cell> cells;
  for (const auto& [task, length, depth, idx] : groups) {
    if (idx.empty()) continue;
    for (size_t p = 0; p < r.policies.size(); ++p) {
      Cell c;
      c.policy = p;
      c.task = task;
      c.length = length;
      c.depth = depth;
      PairedCounts paired;
      double partial = 0, tokens = 0;
      int first_correct = 0;
      for (size_t i : idx) {
        const Outcome& o = r.outcomes[p][i];
        const bool mine = o.correct(), first = r.outcomes[0][i].correct();
        c.correct += mine;
        first_correct += first;
        partial += o.expected > 0 ? static_cast<double>(o.found) / o.expected : 0.0;
        tokens += r.samples[i].prompt_tokens;
        (first ? (mine ? paired.both : paired.first_only)
               : (mine ? paired.second_only : paired.neither))++;
      }
      c.n = static_cast<int>(idx.size());
      c.partial = partial / c.n;
      c.mean_prompt_tokens = tokens / c.n;
      c.ci = WilsonInterval(c.correct, c.n);
      c.diff = static_cast<double>(c.correct - first_correct) / c.n;
      c.diff_ci = PairedDifferenceInterval(paired);
      c.first_below_half = 2 * first_correct < c.n;
      cells.push_back(std::move(c));
    }
  }
  return cells;
}

ojson ToJson(const EvalResults& r) {
  const RunHeader& h = r.header;
  ojson out;
  out["schema"] = "headwise-eval/v1";
  out["header"] = {{"model", h.model},
                   {"weights_hash", h.weights_hash},
                   {"model_bytes", h.model_bytes},
                   {"device", h.device},
                   {"commit", h.commit},
                   {"command", h.command},
                   {"date", h.date},
                   {"seed", h.seed},
                   {"haystack", h.haystack},
                   {"prompt_form", h.prompt_form},
                   {"prompts_hash", h.prompts_hash},
                   {"max_model_len", h.max_model_len},
                   {"max_num_seqs", h.max_num_seqs},
                   {"max_num_batched_tokens", h.max_num_batched_tokens},
                   {"lengths", h.lengths},
                   {"depths", h.depths},
                   {"tasks", h.tasks},
                   {"samples", h.samples},
                   {"warmup", h.warmup}};
  out["scoring"] =
      "correct: every expected value occurs in the answer (case-insensitive substring, RULER's "
      "string_match_all); partial: RULER's score, the mean fraction found; ci: Wilson 95%; "
      "diff: accuracy minus the first policy's on the same samples, diff_ci: Newcombe's paired "
      "95% interval (method 10)";
  ojson policies = ojson::array();
  for (const PolicyRecord& p : r.policies) {
    ojson kv = ojson::array(), ll = ojson::array();
    for (size_t k = 0; k < p.kv_bytes.size(); ++k) {
      const auto [len, bytes] = p.kv_bytes[k];
      const int64_t retained = k < p.kv_retained.size() ? p.kv_retained[k].second : 0;
      const int64_t first = At(r.policies.front().kv_retained, len);
      kv.push_back(
          {{"prompt_tokens", len},
           {"bytes_held", bytes},
           {"bytes_retained", retained},
           {"retained_vs_first",
            first > 0 ? static_cast<double>(retained) / static_cast<double>(first) : 0.0}});
    }
    for (const LogLikelihoodBucket& b : p.loglik) {
      ll.push_back({{"begin", b.begin},
                    {"end", b.end},
                    {"tokens", b.tokens},
                    {"sum_logprob", b.sum_logprob},
                    {"mean_logprob", b.mean()}});
    }
    policies.push_back(
        {{"name", p.name},
         {"file", p.file},
         {"engine_policy", p.engine_policy},
         {"hash", p.hash},
         {"kv_bytes", kv},
         {"wall_s", p.wall_s},
         {"prompt_tokens", p.prompt_tokens},
         {"generated_tokens", p.generated_tokens},
         {"decode_s", p.decode_s},
         {"decode_tokens", p.decode_tokens},
         {"compaction_s", p.compaction_s},
         {"prompt_tokens_per_s", Rate(static_cast<double>(p.prompt_tokens), p.wall_s)},
         {"generated_tokens_per_s", Rate(static_cast<double>(p.generated_tokens), p.wall_s)},
         {"decode_tokens_per_s_per_seq", Rate(static_cast<double>(p.decode_tokens), p.decode_s)},
         {"loglik_chunk", p.loglik_chunk},
         {"loglik", ll}});
  }
  out["policies"] = policies;
  for (const bool by_depth : {false, true}) {
    ojson cells = ojson::array();
    for (const Cell& c : Cells(r, by_depth)) {
      ojson j = {{"policy", r.policies[c.policy].name}, {"task", c.task}, {"length", c.length}};
      if (c.depth) j["depth"] = *c.depth;
      j["n"] = c.n;
      j["correct"] = c.correct;
      j["accuracy"] = c.accuracy();
      j["ci"] = {c.ci.low, c.ci.high};
      j["partial"] = c.partial;
      j["mean_prompt_tokens"] = c.mean_prompt_tokens;
      j["diff"] = c.diff;
      j["diff_ci"] = {c.diff_ci.low, c.diff_ci.high};
      j["first_below_50pct"] = c.first_below_half;
      cells.push_back(std::move(j));
    }
    out[by_depth ? "depth_cells" : "cells"] = std::move(cells);
  }
  ojson samples = ojson::array();
  for (size_t i = 0; i < r.samples.size(); ++i) {
    const SampleRecord& s = r.samples[i];
    ojson outcomes = ojson::array();
    for (size_t p = 0; p < r.policies.size(); ++p) {
      const Outcome& o = r.outcomes[p][i];
      outcomes.push_back({{"answer", o.answer},
                          {"found", o.found},
                          {"expected", o.expected},
                          {"completion_tokens", o.completion_tokens},
                          {"finish_reason", o.finish_reason}});
    }
    samples.push_back({{"task", s.task},
                       {"length", s.length},
                       {"index", s.index},
                       {"depth", s.depth},
                       {"needle_depth", s.needle_depth},
                       {"prompt_tokens", s.prompt_tokens},
                       {"query", s.query},
                       {"expected", s.expected},
                       {"outcomes", outcomes}});
  }
  out["samples"] = samples;
  return out;
}

StatusOr<EvalResults> FromJson(const nlohmann::json& j) {
  EvalResults r;
  if (!j.is_object() || j.value("schema", "") != "headwise-eval/v1") {
    return InvalidArgument("not a headwise-eval/v1 results file");
  }
  try {
    const auto& h = j.at("header");
    RunHeader& o = r.header;
    o.model = h.at("model").get<std::string>();
    o.weights_hash = h.at("weights_hash").get<std::string>();
    o.model_bytes = h.at("model_bytes").get<int64_t>();
    o.device = h.at("device").get<std::string>();
    o.commit = h.at("commit").get<std::string>();
    o.command = h.at("command").get<std::string>();
    o.date = h.at("date").get<std::string>();
    o.seed = h.at("seed").get<uint64_t>();
    o.haystack = h.at("haystack").get<std::string>();
    o.prompt_form = h.at("prompt_form").get<std::string>();
    o.prompts_hash = h.at("prompts_hash").get<std::string>();
    o.max_model_len = h.at("max_model_len").get<int>();
    o.max_num_seqs = h.at("max_num_seqs").get<int>();
    o.max_num_batched_tokens = h.at("max_num_batched_tokens").get<int>();
    o.lengths = h.at("lengths").get<std::vector<int>>();
    o.depths = h.at("depths").get<std::vector<double>>();
    o.tasks = h.at("tasks").get<std::vector<std::string>>();
    o.samples = h.at("samples").get<int>();
    o.warmup = h.value("warmup", 0);  // absent in files written before the field
    for (const auto& p : j.at("policies")) {
      PolicyRecord q;
      q.name = p.at("name").get<std::string>();
      q.file = p.at("file").get<std::string>();
      q.engine_policy = p.at("engine_policy").get<std::string>();
      q.hash = p.at("hash").get<std::string>();
      for (const auto& kv : p.at("kv_bytes")) {
        q.kv_bytes.emplace_back(kv.at("prompt_tokens").get<int>(),
                                kv.at("bytes_held").get<int64_t>());
        q.kv_retained.emplace_back(kv.at("prompt_tokens").get<int>(),
                                   kv.at("bytes_retained").get<int64_t>());
      }
      q.wall_s = p.at("wall_s").get<double>();
      q.prompt_tokens = p.at("prompt_tokens").get<int64_t>();
      q.generated_tokens = p.at("generated_tokens").get<int64_t>();
      q.decode_s = p.at("decode_s").get<double>();
      q.decode_tokens = p.at("decode_tokens").get<int64_t>();
      q.compaction_s = p.value("compaction_s", 0.0);  // absent from results before 2026-12-07
      q.loglik_chunk = p.at("loglik_chunk").get<int>();
      for (const auto& b : p.at("loglik")) {
        q.loglik.push_back({b.at("begin").get<int>(), b.at("end").get<int>(),
                            b.at("tokens").get<int64_t>(), b.at("sum_logprob").get<double>()});
      }
      r.policies.push_back(std::move(q));
    }
    r.outcomes.assign(r.policies.size(), {});
    for (const auto& s : j.at("samples")) {
      SampleRecord q;
      q.task = s.at("task").get<std::string>();
      q.length = s.at("length").get<int>();
      q.index = s.at("index").get<int>();
      q.depth = s.at("depth").get<double>();
      q.needle_depth = s.at("needle_depth").get<double>();
      q.prompt_tokens = s.at("prompt_tokens").get<int>();
      q.query = s.at("query").get<std::string>();
      q.expected = s.at("expected").get<std::vector<std::string>>();
      const auto& outs = s.at("outcomes");
      if (outs.size() != r.policies.size()) {
        return InvalidArgument("eval results: sample {} {} #{} has {} outcomes for {} policies",
                               q.task, q.length, q.index, outs.size(), r.policies.size());
      }
      for (size_t p = 0; p < outs.size(); ++p) {
        const auto& x = outs[p];
        r.outcomes[p].push_back({x.at("answer").get<std::string>(), x.at("found").get<int>(),
                                 x.at("expected").get<int>(), x.at("completion_tokens").get<int>(),
                                 x.at("finish_reason").get<std::string>()});
      }
      r.samples.push_back(std::move(q));
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument("eval results: {}", e.what());
  }
  if (r.policies.empty()) return InvalidArgument("eval results: no policies");
  return r;
}

std::string ToMarkdown(const EvalResults& r) {
  const RunHeader& h = r.header;
  std::string md = fmt::format("# headwise eval: {}\n\n", h.model);
  md += fmt::format(
      "- model: `{}` (weights hash {}, {} bytes)\n- device: {}\n- commit: {}\n- date: {}\n"
      "- command: `{}`\n- seed: {}; prompts hash: {}\n- haystack: {}\n- prompt form: {}\n"
      "- engine: max_model_len {}, max_num_seqs {}, max_num_batched_tokens {}\n"
      "- samples per (task, length): {}; depths:",
      h.model, h.weights_hash, h.model_bytes, h.device, h.commit, h.date, h.command, h.seed,
      h.prompts_hash, h.haystack, h.prompt_form, h.max_model_len, h.max_num_seqs,
      h.max_num_batched_tokens, h.samples);
  for (double d : h.depths) md += fmt::format(" {:g}", d);
  md += "\n\n";

  const std::string& first = r.policies.front().name;
  md += fmt::format(
      "## Accuracy\n\nPercent correct (every expected value in the answer), Wilson 95% interval "
      "in brackets. Δ: percentage points against `{}` on the same samples, with Newcombe's paired "
      "95% interval. † `{}` is below 50% in that cell: the policies are not judged there.\n\n",
      first, first);
  md += "| task | length | n |";
  for (const PolicyRecord& p : r.policies) md += fmt::format(" {} |", MdEscape(p.name));
  md += "\n|---|---:|---:|";
  for (size_t i = 0; i < r.policies.size(); ++i) md += "---|";
  md += "\n";
  const std::vector<Cell> cells = Cells(r, false);
  for (size_t i = 0; i < cells.size(); i += r.policies.size()) {
    const Cell& c0 = cells[i];
    md += fmt::format("| {} | {} | {} |", c0.task, c0.length, c0.n);
    for (size_t p = 0; p < r.policies.size(); ++p) {
      const Cell& c = cells[i + p];
      md += fmt::format(" {} [{}, {}]", Pct(c.accuracy()), Pct(c.ci.low), Pct(c.ci.high));
      if (p > 0) {
        md += fmt::format(" Δ {:+.1f} [{:+.1f}, {:+.1f}]", 100 * c.diff + 0.0,
                          100 * c.diff_ci.low + 0.0, 100 * c.diff_ci.high + 0.0);
      }
      if (c.first_below_half) md += " †";
      md += " |";
    }
    md += "\n";
  }
  // RULER's own score where it differs from all-found: the tasks with several values.
  bool partial_header = false;
  for (size_t i = 0; i < cells.size(); i += r.policies.size()) {
    if (cells[i].task != "niah_multivalue" && cells[i].task != "vt") continue;
    if (!partial_header) {
      md +=
          "\nRULER's score for the tasks with several expected values (mean percent of the "
          "values found):\n\n| task | length |";
      for (const PolicyRecord& p : r.policies) md += fmt::format(" {} |", MdEscape(p.name));
      md += "\n|---|---:|";
      for (size_t p = 0; p < r.policies.size(); ++p) md += "---:|";
      md += "\n";
      partial_header = true;
    }
    md += fmt::format("| {} | {} |", cells[i].task, cells[i].length);
    for (size_t p = 0; p < r.policies.size(); ++p)
      md += fmt::format(" {} |", Pct(cells[i + p].partial));
    md += "\n";
  }

  md +=
      "\n## Accuracy by depth\n\nPercent correct (correct / n) by the requested depth of the "
      "asked needle in the filler.\n\n| task | length | depth |";
  for (const PolicyRecord& p : r.policies) md += fmt::format(" {} |", MdEscape(p.name));
  md += "\n|---|---:|---:|";
  for (size_t p = 0; p < r.policies.size(); ++p) md += "---:|";
  md += "\n";
  const std::vector<Cell> depth_cells = Cells(r, true);
  for (size_t i = 0; i < depth_cells.size(); i += r.policies.size()) {
    const Cell& c0 = depth_cells[i];
    md += fmt::format("| {} | {} | {:g} |", c0.task, c0.length, *c0.depth);
    for (size_t p = 0; p < r.policies.size(); ++p) {
      const Cell& c = depth_cells[i + p];
      md += fmt::format(" {} ({}/{}) |", Pct(c.accuracy()), c.correct, c.n);
    }
    md += "\n";
  }

  md +=
      "\n## Policies\n\nKV @N: MiB of keys and values one sequence keeps once its prompt of N "
      "tokens is in (after RazorAttention's compaction), the share of the first policy's, and "
      "in brackets the MiB it holds in the engine's pool, whose rings also have room for one "
      "step's new tokens (--max-num-batched-tokens). Speeds over this policy's requests, run by "
      "themselves in one engine (batched): prompt and generated tokens per second of wall time, "
      "and decode tokens per second of one sequence (from its first token to its last, so "
      "other requests' prefill chunks and the engine's compactions of finished prompts, which "
      "hold up every running sequence, count in it; compaction s: that engine time)";
  md += h.warmup > 0 ? fmt::format(", after {} untimed warm-up requests.", h.warmup)
                     : " (no warm-up: the first policy's include the engine's one-time costs).";
  md +=
      "\n\n| policy | file | hash | wall s | prompt tok/s | gen tok/s | decode tok/s/seq | "
      "compaction s |";
  std::vector<int> kv_lengths;
  for (const auto& [len, bytes] : r.policies.front().kv_bytes) kv_lengths.push_back(len);
  for (int len : kv_lengths) md += fmt::format(" KV @{} |", len);
  md += "\n|---|---|---|---:|---:|---:|---:|---:|";
  for (size_t i = 0; i < kv_lengths.size(); ++i) md += "---:|";
  md += "\n";
  for (const PolicyRecord& p : r.policies) {
    md += fmt::format("| {} | {} | {} | {:.1f} | {:.0f} | {:.1f} | {:.1f} |", MdEscape(p.name),
                      p.file.empty() ? "(none: dense)" : MdEscape(p.file), p.hash, p.wall_s,
                      Rate(static_cast<double>(p.prompt_tokens), p.wall_s),
                      Rate(static_cast<double>(p.generated_tokens), p.wall_s),
                      Rate(static_cast<double>(p.decode_tokens), p.decode_s));
    md += fmt::format(" {:.1f} |", p.compaction_s);
    for (int len : kv_lengths) {
      const int64_t kept = At(p.kv_retained, len), ref = At(r.policies.front().kv_retained, len);
      md +=
          fmt::format(" {} ({:.0f}%) [{}] |", MiB(kept),
                      ref > 0 ? 100.0 * static_cast<double>(kept) / static_cast<double>(ref) : 0.0,
                      MiB(At(p.kv_bytes, len)));
    }
    md += "\n";
  }

  if (!r.policies.front().loglik.empty()) {
    md += fmt::format(
        "\n## Log-likelihood of a natural document\n\nTeacher forcing over the haystack's "
        "opening, in prefill chunks of {} tokens: the mean log-probability of the text's own next "
        "token, by the position it is predicted at (Δ against `{}`; higher is better).\n\n"
        "| positions |",
        r.policies.front().loglik_chunk, first);
    for (const PolicyRecord& p : r.policies) md += fmt::format(" {} |", MdEscape(p.name));
    md += "\n|---|";
    for (size_t p = 0; p < r.policies.size(); ++p) md += "---:|";
    md += "\n";
    const auto& ref = r.policies.front().loglik;
    for (size_t b = 0; b < ref.size(); ++b) {
      md += fmt::format("| {}-{} |", ref[b].begin, ref[b].end);
      for (size_t p = 0; p < r.policies.size(); ++p) {
        const auto& ll = r.policies[p].loglik;
        if (b >= ll.size()) {
          md += " - |";
        } else if (p == 0) {
          md += fmt::format(" {:.4f} |", ll[b].mean());
        } else {
          md += fmt::format(" {:.4f} (Δ {:+.4f}) |", ll[b].mean(), ll[b].mean() - ref[b].mean());
        }
      }
      md += "\n";
    }
  }
  return md;
}

Status WriteReport(const EvalResults& r, const std::string& prefix) {
  for (const auto& [ext, text] :
       {std::pair<std::string, std::string>{".json", ToJson(r).dump(1) + "\n"},
        {".md", ToMarkdown(r)}}) {
    const std::string path = prefix + ext;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return InvalidArgument("cannot write {}", path);
    out << text;
    out.close();
    if (!out) return InvalidArgument("error writing {}", path);
  }
  return Status::Ok();
}

StatusOr<EvalResults> Merge(std::vector<EvalResults> runs) {
  if (runs.empty()) return InvalidArgument("nothing to merge");
  EvalResults out = std::move(runs.front());
  std::set<std::tuple<std::string, int, int>> seen;
  for (const SampleRecord& s : out.samples) seen.insert({s.task, s.length, s.index});
  for (size_t k = 1; k < runs.size(); ++k) {
    EvalResults& r = runs[k];
    const auto differ = [&](const char* what) {
      return InvalidArgument("merge: run {} has another {} than the first", k + 1, what);
    };
    if (r.header.weights_hash != out.header.weights_hash) return differ("model");
    if (r.header.seed != out.header.seed) return differ("seed");
    if (r.header.prompt_form != out.header.prompt_form) return differ("prompt form");
    if (r.policies.size() != out.policies.size()) return differ("list of policies");
    for (size_t p = 0; p < r.policies.size(); ++p) {
      if (r.policies[p].name != out.policies[p].name || r.policies[p].hash != out.policies[p].hash)
        return differ("list of policies (names and file hashes)");
    }
    for (const SampleRecord& s : r.samples) {
      if (!seen.insert({s.task, s.length, s.index}).second) {
        return InvalidArgument("merge: sample {} at {} tokens #{} is in two runs", s.task, s.length,
                               s.index);
      }
    }
    for (size_t p = 0; p < r.policies.size(); ++p) {
      PolicyRecord& a = out.policies[p];
      const PolicyRecord& b = r.policies[p];
      a.wall_s += b.wall_s;
      a.prompt_tokens += b.prompt_tokens;
      a.generated_tokens += b.generated_tokens;
      a.decode_s += b.decode_s;
      a.decode_tokens += b.decode_tokens;
      a.compaction_s += b.compaction_s;
      for (auto [into, from] :
           {std::pair{&a.kv_bytes, &b.kv_bytes}, std::pair{&a.kv_retained, &b.kv_retained}}) {
        for (const auto& kv : *from) {
          if (std::none_of(into->begin(), into->end(),
                           [&](const auto& x) { return x.first == kv.first; }))
            into->push_back(kv);
        }
        std::sort(into->begin(), into->end());
      }
      // Each run measured its own document (as long as its longest prompt): keep the longest.
      if (!b.loglik.empty() && (a.loglik.empty() || b.loglik.back().end > a.loglik.back().end)) {
        a.loglik = b.loglik;
        a.loglik_chunk = b.loglik_chunk;
      }
      out.outcomes[p].insert(out.outcomes[p].end(), r.outcomes[p].begin(), r.outcomes[p].end());
    }
    out.samples.insert(out.samples.end(), r.samples.begin(), r.samples.end());
    RunHeader& h = out.header;
    const auto unite = [](auto& into, const auto& from) {
      for (const auto& x : from)
        if (std::find(into.begin(), into.end(), x) == into.end()) into.push_back(x);
    };
    unite(h.lengths, r.header.lengths);
    std::sort(h.lengths.begin(), h.lengths.end());
    unite(h.depths, r.header.depths);
    unite(h.tasks, r.header.tasks);
    h.samples = std::max(h.samples, r.header.samples);
    h.warmup = std::min(h.warmup, r.header.warmup);
    h.prompts_hash += " + " + r.header.prompts_hash;
    h.command += " ; " + r.header.command;
    if (r.header.device != h.device) h.device += " ; " + r.header.device;
    if (r.header.commit != h.commit) h.commit += " ; " + r.header.commit;
    if (r.header.date != h.date) h.date += " ; " + r.header.date;
  }
  return out;
}

}  // namespace headwise::eval
