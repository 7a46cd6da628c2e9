# Sourced by the scripts that run on the GPU machines: NVLink multicast off (NCCL, torch symmetric memory, NVSHMEM),
# Open MPI as root, the same NCCL and cuBLAS builds as torch (torch's wheels first on the library path, so the
# backend and torch.distributed / torch.matmul compare like for like), and $MPI: mpirun forwarding all of it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONUNBUFFERED=1
TORCH_NCCL=$(dirname "$(find /opt /usr/local/lib /usr/lib/python3* -name 'libnccl.so.2' -path '*nvidia*' 2>/dev/null | head -1)")
TORCH_CUBLAS=$(dirname "$TORCH_NCCL")/../cublas/lib
export LD_LIBRARY_PATH=$TORCH_NCCL:$TORCH_CUBLAS:${LD_LIBRARY_PATH:-}
MPI="mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
     -x NVSHMEM_DISABLE_NVLS -x LD_LIBRARY_PATH -x PYTHONUNBUFFERED"
