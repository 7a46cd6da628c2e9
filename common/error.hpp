// The one hierarchy of user-facing errors (bad input, unexecutable schedules, device failures).
// Thrown while loading or checking, caught in cli/main.cpp (exit codes) and in tests. Bugs use TWINSTEP_ASSERT.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace twinstep {

/// Process exit codes (the CLI contract in docs/DESIGN.md).
enum class ExitCode : int {
  kSuccess = 0,
  kInternal = 1,    ///< A bug: an assertion or an unexpected exception.
  kBadInput = 2,    ///< A file, field or flag is wrong; the message says which and how to fix it.
  kNotFeasible = 3  ///< Valid input that does not fit in memory or cannot be executed here.
};

/// Base of every user-facing error. what() is one or more complete lines, ready to print.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, ExitCode code = ExitCode::kBadInput)
      : std::runtime_error(message), code_(code) {}
  [[nodiscard]] ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

/// A file could not be read or parsed. `pointer` is a JSON pointer ("/ops/12/deps") when known.
class ParseError : public Error {
 public:
  ParseError(std::string file, std::string pointer, const std::string& message)
      : Error(format(file, pointer, message)), file_(std::move(file)), pointer_(std::move(pointer)) {}
  [[nodiscard]] const std::string& file() const { return file_; }
  [[nodiscard]] const std::string& pointer() const { return pointer_; }

 private:
  static std::string format(const std::string& file, const std::string& pointer, const std::string& message) {
    std::string out = file.empty() ? std::string("<input>") : file;
    if (!pointer.empty()) out += ": " + pointer;
    return out + ": " + message;
  }
  std::string file_;
  std::string pointer_;
};

/// Input that parsed but is inconsistent; holds every problem found, one per line in what().
class ValidationError : public Error {
 public:
  explicit ValidationError(std::vector<std::string> problems, ExitCode code = ExitCode::kBadInput)
      : Error(join(problems), code), problems_(std::move(problems)) {}
  [[nodiscard]] const std::vector<std::string>& problems() const { return problems_; }

 private:
  static std::string join(const std::vector<std::string>& problems) {
    std::string out;
    for (const auto& p : problems) {
      if (!out.empty()) out += '\n';
      out += p;
    }
    return out;
  }
  std::vector<std::string> problems_;
};

/// Valid input that cannot run here: does not fit in memory, more ranks than GPUs, ...
class NotFeasibleError : public Error {
 public:
  explicit NotFeasibleError(const std::string& message) : Error(message, ExitCode::kNotFeasible) {}
};

}  // namespace twinstep
