// The little MPI the backend needs (bootstrap only): rank numbering, broadcast of the NCCL unique id, a barrier
// that can be abandoned at a deadline, and gathers of results. A process started without a launcher is a group
// of one and makes no MPI call at all.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace twinstep::backend {

/// The shared object that provides the MPI_Init_thread this process would call (dlsym in the global scope), e.g.
/// ".../libmpi.so.40"; empty when no MPI is loaded. SimGrid's SMPI also defines the MPI symbols, so a binary that
/// links SimGrid before MPI would call SMPI's (`twinstep info` prints this; `run` refuses to start then).
[[nodiscard]] std::string mpi_init_provider();

class MpiGroup {
 public:
  /// `self`: this process alone even when MPI is in use.
  explicit MpiGroup(bool self);
  ~MpiGroup();
  MpiGroup(const MpiGroup&) = delete;
  MpiGroup& operator=(const MpiGroup&) = delete;

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] int local_rank() const { return local_rank_; }
  [[nodiscard]] int local_size() const { return local_size_; }

  void broadcast(void* data, std::size_t bytes, int root);
  /// Each process contributes `mine`; returns the concatenation in rank order.
  [[nodiscard]] std::vector<std::int64_t> all_gather(const std::vector<std::int64_t>& mine);
  [[nodiscard]] std::vector<std::string> all_gather(const std::string& mine);
  [[nodiscard]] std::uint64_t all_min(std::uint64_t v);
  [[nodiscard]] std::uint64_t all_max(std::uint64_t v);
  /// Barrier polled until done; `poll` is called between tests and may throw (the watchdog) to abandon it.
  /// An abandoned barrier leaves the group unusable (leaked on destruction).
  void barrier(const std::function<void()>& poll);

 private:
  bool active_ = false;
  bool broken_ = false;
  void* comm_ = nullptr;  // MPI_Comm, kept opaque so this header does not include mpi.h
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace twinstep::backend
