// Checked creation of the handles of handles.hpp.
#include "backend/handles.hpp"

#include "backend/error.hpp"

namespace twinstep::backend {

CudaStream make_stream(int priority) {
  cudaStream_t s = nullptr;
  TWINSTEP_CUDA_CHECK(cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, priority));
  return CudaStream(s);
}

CudaEvent make_event() {
  cudaEvent_t e = nullptr;
  TWINSTEP_CUDA_CHECK(cudaEventCreate(&e));
  return CudaEvent(e);
}

CublasLtHandle make_cublaslt() {
  cublasLtHandle_t h = nullptr;
  TWINSTEP_CUBLAS_CHECK(cublasLtCreate(&h));
  return CublasLtHandle(h);
}

CublasHandle make_cublas() {
  cublasHandle_t h = nullptr;
  TWINSTEP_CUBLAS_CHECK(cublasCreate(&h));
  return CublasHandle(h);
}

BlasSlot make_blas_slot(std::uint64_t workspace_bytes) {
  BlasSlot slot;
  slot.handle = make_cublas();
  slot.workspace = device_alloc(workspace_bytes);
  TWINSTEP_CUBLAS_CHECK(cublasSetWorkspace(slot.handle.get(), slot.workspace.get(), workspace_bytes));
  return slot;
}

DeviceMemory device_alloc(std::uint64_t bytes) {
  void* p = nullptr;
  TWINSTEP_CUDA_CHECK(cudaMalloc(&p, bytes));
  return DeviceMemory(p);
}

PinnedMemory pinned_alloc(std::uint64_t bytes) {
  void* p = nullptr;
  TWINSTEP_CUDA_CHECK(cudaMallocHost(&p, bytes));
  return PinnedMemory(p);
}

NcclComm nccl_init_rank(int size, const ncclUniqueId& id, int rank) {
  ncclComm_t c = nullptr;
  TWINSTEP_NCCL_CHECK(ncclCommInitRank(&c, size, id, rank));
  return NcclComm(c);
}

NcclComm nccl_split(ncclComm_t parent, int color, int key) {
  ncclComm_t c = nullptr;
  TWINSTEP_NCCL_CHECK(ncclCommSplit(parent, color, key, &c, nullptr));
  return NcclComm(c);
}

}  // namespace twinstep::backend
