// Status and StatusOr<T>: the error model of the public API.
//
// Every fallible function of the library returns a Status (or a StatusOr<T>
// holding either a value or a non-OK Status); no exception crosses the public
// API. The code tells the caller what to do about the error; the message names
// the thing that is wrong ("layer 3, device 5: expert 17 appears twice").
//
// Thread-compatible value types: distinct objects may be used from distinct
// threads; one object must not be mutated concurrently.
#ifndef EPLB_STATUS_H_
#define EPLB_STATUS_H_

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace eplb {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // Fix the input (file, flag, config key).
  kNotFound,            // A named file or entity does not exist.
  kFailedPrecondition,  // Wrong mode or phase for this call.
  kUnavailable,         // A peer is down: retry later.
  kAborted,             // Superseded (e.g. a newer plan): re-plan.
  kDeadlineExceeded,    // A transfer or plan ran past its deadline.
  kDataLoss,            // Checksum mismatch or truncated data.
  kInternal,            // A bug: an invariant of the library broke.
};

// Returns the canonical name of `code`, e.g. "INVALID_ARGUMENT".
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK.
  Status(StatusCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "INVALID_ARGUMENT: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>".
  Status WithPrefix(std::string_view prefix) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status FailedPreconditionError(std::string message);
Status UnavailableError(std::string message);
Status AbortedError(std::string message);
Status DeadlineExceededError(std::string message);
Status DataLossError(std::string message);
Status InternalError(std::string message);

// Holds a T or a non-OK Status. Accessing the value of an error aborts.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit by design.
  StatusOr(Status status) : status_(std::move(status)) {
    if (status_.ok()) {
      status_ = InternalError("StatusOr constructed from an OK Status");
    }
  }
  // NOLINTNEXTLINE(google-explicit-constructor): implicit by design.
  StatusOr(T value) : value_(std::move(value)) {}

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  const T& value() const& {
    EnsureOk();
    return *value_;
  }
  T& value() & {
    EnsureOk();
    return *value_;
  }
  T&& value() && {
    EnsureOk();
    return std::move(*value_);
  }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  void EnsureOk() const {
    if (!status_.ok()) {
      std::fprintf(stderr, "StatusOr::value() on an error: %s\n",
                   status_.ToString().c_str());
      std::abort();
    }
  }

  Status status_;
  std::optional<T> value_;
};

namespace internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr,
                              const char* message);
}  // namespace internal

}  // namespace eplb

// Aborts with file:line when `cond` is false, in every build type. For
// programmer bugs only; bad input gets a Status.
#define EPLB_CHECK(cond)                                                       \
  do {                                                                         \
    if (!(cond)) ::eplb::internal::CheckFailed(__FILE__, __LINE__, #cond, ""); \
  } while (0)
#define EPLB_CHECK_MSG(cond, msg)                                    \
  do {                                                               \
    if (!(cond))                                                     \
      ::eplb::internal::CheckFailed(__FILE__, __LINE__, #cond, msg); \
  } while (0)

#define EPLB_STATUS_CONCAT_INNER(a, b) a##b
#define EPLB_STATUS_CONCAT(a, b) EPLB_STATUS_CONCAT_INNER(a, b)

// Returns from the current function when `expr` yields a non-OK Status.
#define EPLB_RETURN_IF_ERROR(expr)                       \
  do {                                                   \
    ::eplb::Status eplb_status_tmp_ = (expr);            \
    if (!eplb_status_tmp_.ok()) return eplb_status_tmp_; \
  } while (0)

// `EPLB_ASSIGN_OR_RETURN(auto x, F());` declares x from F()'s value, or
// returns F()'s error.
#define EPLB_ASSIGN_OR_RETURN(lhs, expr)                                   \
  EPLB_ASSIGN_OR_RETURN_IMPL(EPLB_STATUS_CONCAT(eplb_statusor_, __LINE__), \
                             lhs, expr)
// NOLINTBEGIN(bugprone-macro-parentheses): `lhs` is a declaration.
#define EPLB_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

#endif  // EPLB_STATUS_H_
