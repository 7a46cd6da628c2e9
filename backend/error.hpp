// Errors of the CUDA/NCCL backend: every failing CUDA, cuBLAS or NCCL call becomes one BackendError naming the
// call, the source line and the rank, thrown at the call site. Never relayed by hand.
#pragma once

#include <string>

#include "common/error.hpp"

namespace twinstep::backend {

/// A device-side failure (CUDA, cuBLAS, NCCL) or a hung step caught by the watchdog.
/// what() is one complete line: "rank 1: ncclAllReduce(...) failed: unhandled cuda error [file:line]".
class BackendError : public Error {
 public:
  BackendError(std::string api, int code, int rank, const std::string& message)
      : Error(message, ExitCode::kInternal), api_(std::move(api)), code_(code), rank_(rank) {}
  [[nodiscard]] const std::string& api() const { return api_; }
  [[nodiscard]] int api_code() const { return code_; }
  [[nodiscard]] int rank() const { return rank_; }

 private:
  std::string api_;
  int code_;
  int rank_;
};

/// The process rank, named in every device error of the calling thread (thread-local).
void set_error_context_rank(int rank);

/// Throw BackendError if `status` is not success. `call` is the source text of the call.
void check_cuda(int status, const char* call, const char* file, int line);
void check_nccl(int status, const char* call, const char* file, int line);
void check_cublas(int status, const char* call, const char* file, int line);
/// Throws BackendError for a failed call of library `api` (status `code`, described by `what`): for libraries
/// checked outside this file (cuDNN, backend/sdpa_cudnn.cpp).
[[noreturn]] void throw_call_error(const std::string& api, int code, const std::string& what, const char* call,
                                   const char* file, int line);

}  // namespace twinstep::backend

/// Checks a cudaError_t / ncclResult_t / cublasStatus_t and throws BackendError naming the call and rank.
#define TWINSTEP_CUDA_CHECK(expr) ::twinstep::backend::check_cuda(static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define TWINSTEP_NCCL_CHECK(expr) ::twinstep::backend::check_nccl(static_cast<int>(expr), #expr, __FILE__, __LINE__)
#define TWINSTEP_CUBLAS_CHECK(expr) ::twinstep::backend::check_cublas(static_cast<int>(expr), #expr, __FILE__, __LINE__)
