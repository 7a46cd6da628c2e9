// The real executor: runs a schedule on GPUs (one process per GPU, MPI only to bootstrap NCCL and number the
// ranks) with CUDA streams, events, cuBLAS GEMMs, our own bandwidth-bound kernels and NCCL collectives, and
// measures every op. Not a simulator: nothing here models time; every duration is read from the hardware.
// The public entry of backend/: planning (plan.hpp, channels.hpp) is pure host code; the Runtime (runtime.cpp,
// execute.cpp) holds the CUDA and NCCL state.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/channels.hpp"
#include "backend/monitor_series.hpp"
#include "backend/plan.hpp"
#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::backend {

/// Device buffers an op reads and writes, for the test hook. Null when the op has none.
struct OpBuffers {
  void* send = nullptr;  ///< Collective/send input (device).
  void* recv = nullptr;  ///< Collective/recv output (device).
  std::uint64_t send_bytes = 0;
  std::uint64_t recv_bytes = 0;
  /// A peer-mapped recv (copy_engine, sm_kernel): `recv` is its slot, which the sender writes whenever its send runs,
  /// maybe before this recv is issued: a hook must not write it in before().
  bool peer_slot = false;
};

/// Test hook: lets a test fill a communication op's inputs and read its outputs. When set and serialize() is true,
/// the executor waits for the op's stream to drain before `before` and for the op to complete before `after` (so ops
/// run one at a time). When serialize() is false, `before` is called just before the op is issued and `after` once
/// every stream of the step has drained (ops stay concurrent; buffers of one role are shared by its ops, so a test
/// then gives each rank at most one op of each direction per step).
class DataHook {
 public:
  virtual ~DataHook() = default;
  [[nodiscard]] virtual bool serialize() const { return true; }
  virtual void before(const schedule::Op& op, const OpBuffers& buffers) = 0;
  virtual void after(const schedule::Op& op, const OpBuffers& buffers) = 0;
};

struct Options {
  int warmup_steps = 2;      ///< Steps run and discarded (module load, NCCL connection setup, cuBLAS heuristics).
  int steps = 5;             ///< Measured steps; the trace holds the per-op median over them.
  double timeout_s = 120.0;  ///< Watchdog limit for one step, from the step barrier to its last op's end.
  DataHook* hook = nullptr;  ///< Tests only.
  /// When set: filled, on every rank, with every rank's GPU monitor series of the measured steps (rank order).
  /// Collective: set it on every rank or on none.
  std::vector<GpuSeries>* monitor_series = nullptr;
};

/// Which processes form the runtime: all of MPI_COMM_WORLD, or this process alone (tests of one-GPU schedules).
enum class ProcessGroup : std::uint8_t { kWorld, kSelf };

/// One process's share of a run: its GPU, the NCCL world communicator, cached communicator splits, cuBLAS
/// handles and the buffer pool. Constructing and executing are collective over the group. Initializes MPI when
/// the process was started by a launcher (mpirun/srun); a process started alone runs as a group of one.
class Runtime {
 public:
  explicit Runtime(ProcessGroup group = ProcessGroup::kWorld);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  [[nodiscard]] int rank() const;
  [[nodiscard]] int size() const;
  /// Collective: runs `check` on rank 0 only (e.g. that an output path rank 0 writes is writable) and throws its
  /// Error on every rank, so no rank goes on into a collective that rank 0 has left.
  void check_on_rank0(const std::function<void()>& check);
  /// Collective: free memory is the least over the group.
  [[nodiscard]] DeviceInfo device_info();
  /// Collective: runs warm-up and measured steps and returns the whole trace on every process. Throws
  /// NotFeasibleError if can_execute() objects, BackendError on device errors or a watchdog timeout (after which
  /// the communicators are aborted and this Runtime refuses further work).
  [[nodiscard]] schedule::Trace execute(const schedule::Schedule& schedule, const Options& options);
  /// Collective: times a bare cudaMemcpyPeerAsync from rank 0's GPU to rank 1's for every send of rank 0 to rank 1
  /// in `schedule` (calibrate's copy-engine group, whose meta "measure" asks for it; backend/peer_copy.cpp) and
  /// returns its trace on every process: each send and the recv with its tag last the mean copy time. Throws
  /// NotFeasibleError with fewer than two ranks, ranks 0 and 1 on different hosts, or GPUs that cannot be peers.
  [[nodiscard]] schedule::Trace measure_peer_copies(const schedule::Schedule& schedule);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// Initializes MPI if a launcher started this process and MPI is not initialized yet; finalizes at exit.
/// Returns whether MPI is in use.
bool init_mpi();

}  // namespace twinstep::backend
