// Turns CUDA, cuBLAS and NCCL status codes into BackendError with the call and the rank.
#include "backend/error.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>
#include <utility>

namespace twinstep::backend {
namespace {

thread_local int t_rank = -1;

[[noreturn]] void fail(const std::string& api, int code, const std::string& what, const char* call, const char* file,
                       int line) {
  std::string msg = "rank " + std::to_string(t_rank) + ": " + call + " failed: " + what;
  msg += " [" + std::string(file) + ":" + std::to_string(line) + "]";
  throw BackendError(api, code, t_rank, msg);
}

std::string api_name(const char* call) {
  std::string s(call);
  const auto paren = s.find('(');
  return paren == std::string::npos ? s : s.substr(0, paren);
}

}  // namespace

void set_error_context_rank(int rank) { t_rank = rank; }

void throw_call_error(const std::string& api, int code, const std::string& what, const char* call, const char* file,
                      int line) {
  fail(api, code, what, call, file, line);
}

void check_cuda(int status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  const auto err = static_cast<cudaError_t>(status);
  fail(api_name(call), status, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err), call, file, line);
}

void check_nccl(int status, const char* call, const char* file, int line) {
  if (status == ncclSuccess || status == ncclInProgress) return;
  std::string what = ncclGetErrorString(static_cast<ncclResult_t>(status));
  if (const char* last = ncclGetLastError(nullptr); last != nullptr && *last != '\0') what += std::string(": ") + last;
  fail(api_name(call), status, what, call, file, line);
}

void check_cublas(int status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const auto st = static_cast<cublasStatus_t>(status);
  fail(api_name(call), status, std::string(cublasGetStatusName(st)) + ": " + cublasGetStatusString(st), call, file,
       line);
}

}  // namespace twinstep::backend
