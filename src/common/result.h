// Errors as values at module boundaries (STYLE.md 3).
//
// `Status` is success or an error message a user can act on; `Result<T>` is a value or such an
// error. Both are cheap to move. Exceptions are kept for programming errors and main().
#pragma once

#include <cassert>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

namespace baton {

// Concatenates anything that has an ostream operator: concat("layer ", i, ": bad shape").
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

// An error message. Implicitly converts to any Result<T> and to Status.
struct Error {
  std::string message;
};

template <class... Args>
Error make_error(const Args&... args) {
  return Error{concat(args...)};
}

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error e) : message_(std::move(e.message)), ok_(false) {}  // NOLINT: implicit by design
  static Status ok_status() { return Status(); }

  bool ok() const { return ok_; }
  const std::string& message() const { return message_; }
  // Prefixes the message with where it happened: "model.safetensors: " + message.
  Status with_context(const std::string& context) const {
    return ok_ ? *this : Status(Error{context + ": " + message_});
  }

 private:
  std::string message_;
  bool ok_ = true;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error e) : v_(std::move(e)) {}      // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  const std::string& error() const {
    assert(!ok());
    return std::get<Error>(v_).message;
  }
  Status status() const { return ok() ? Status() : Status(std::get<Error>(v_)); }

  T& value() & {
    assert(ok());
    return std::get<T>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> v_;
};

namespace detail {
inline const std::string& error_of(const Status& s) { return s.message(); }
template <class T>
const std::string& error_of(const Result<T>& r) {
  return r.error();
}
}  // namespace detail

}  // namespace baton

#define BATON_CONCAT_INNER(a, b) a##b
#define BATON_CONCAT(a, b) BATON_CONCAT_INNER(a, b)

// Returns the error of a Status or Result expression from the enclosing function.
#define BATON_RETURN_IF_ERROR(expr)                                    \
  do {                                                                 \
    auto&& baton_status_ = (expr);                                     \
    if (!baton_status_.ok())                                           \
      return ::baton::Error{::baton::detail::error_of(baton_status_)}; \
  } while (0)

// `BATON_ASSIGN_OR_RETURN(auto x, load())`: binds the value or returns the error.
#define BATON_ASSIGN_OR_RETURN(lhs, expr) \
  BATON_ASSIGN_OR_RETURN_IMPL(BATON_CONCAT(baton_result_, __LINE__), lhs, expr)
#define BATON_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return ::baton::Error{tmp.error()}; \
  lhs = std::move(tmp).value()
