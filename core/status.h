// Status and StatusOr: how every fallible operation in headwise reports failure.
//
// Errors that come from outside (files, requests, configs) travel as Status values with a
// message that names the problem and its context; invariants of our own code use HW_CHECK,
// which aborts, because a broken invariant means a bug, not bad input.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace headwise {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad input: malformed file, config or request
  kNotFound,         // a path or a named thing does not exist
  kUnimplemented,    // a well-formed input we do not support (architecture, tensor type)
  kOutOfRange,
  kResourceExhausted,
  kInternal,
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // The input field at fault, in the producer's own name ("temperature", "max_num_seqs"); empty
  // when no one field is. Set where the value is checked, so a front end names the field in its
  // own vocabulary (the OpenAI error's `param`, a CLI flag) without reading the message.
  const std::string& field() const { return field_; }

  // Prefixes the message with context, e.g. the file being read: "model.safetensors: ...".
  Status WithContext(std::string_view context) const {
    if (ok()) return *this;
    Status s(code_, fmt::format("{}: {}", context, message_));
    s.field_ = field_;
    return s;
  }
  // Names the field at fault: InvalidArgument("...").WithField("max_tokens").
  Status WithField(std::string field) const {
    Status s = *this;
    if (!ok()) s.field_ = std::move(field);
    return s;
  }
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  std::string field_;
};

template <typename... Args>
Status InvalidArgument(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInvalidArgument, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status NotFound(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kNotFound, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status Unimplemented(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kUnimplemented, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status OutOfRange(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kOutOfRange, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status ResourceExhausted(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kResourceExhausted, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
Status Internal(fmt::format_string<Args...> f, Args&&... args) {
  return Status(StatusCode::kInternal, fmt::format(f, std::forward<Args>(args)...));
}

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : value_(status) {  // NOLINT: implicit by design
    if (status.ok()) value_ = Status(StatusCode::kInternal, "StatusOr built from an OK status");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(value_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(value_); }
  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> value_;
};

[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const std::string& msg);

}  // namespace headwise

#define HW_CONCAT_INNER(a, b) a##b
#define HW_CONCAT(a, b) HW_CONCAT_INNER(a, b)

#define HW_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::headwise::Status hw_status_ = (expr);  \
    if (!hw_status_.ok()) return hw_status_; \
  } while (0)

#define HW_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

#define HW_ASSIGN_OR_RETURN(lhs, expr) \
  HW_ASSIGN_OR_RETURN_IMPL(HW_CONCAT(hw_statusor_, __LINE__), lhs, expr)

// Invariant checks: a failure is a bug in headwise, so it aborts with the values involved.
#define HW_CHECK(cond, ...)                                                                       \
  do {                                                                                            \
    if (!(cond)) ::headwise::CheckFailed(__FILE__, __LINE__, #cond, fmt::format("" __VA_ARGS__)); \
  } while (0)

#define HW_CHECK_OP(a, op, b)                                            \
  do {                                                                   \
    const auto& hw_a_ = (a);                                             \
    const auto& hw_b_ = (b);                                             \
    if (!(hw_a_ op hw_b_))                                               \
      ::headwise::CheckFailed(__FILE__, __LINE__, #a " " #op " " #b,     \
                              fmt::format("({} vs. {})", hw_a_, hw_b_)); \
  } while (0)
#define HW_CHECK_EQ(a, b) HW_CHECK_OP(a, ==, b)
#define HW_CHECK_LE(a, b) HW_CHECK_OP(a, <=, b)
#define HW_CHECK_LT(a, b) HW_CHECK_OP(a, <, b)
#define HW_CHECK_GE(a, b) HW_CHECK_OP(a, >=, b)
