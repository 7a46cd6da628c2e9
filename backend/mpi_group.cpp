// MPI bootstrap for the backend: MPI_Init only when a launcher started the process, a private duplicate of the
// communicator per Runtime (so an abandoned barrier never matches a later one), polled non-blocking barriers.
#include "backend/mpi_group.hpp"

#include <dlfcn.h>
#include <mpi.h>

#include <cstdlib>
#include <thread>

#include "backend/executor.hpp"
#include "common/error.hpp"

namespace twinstep::backend {
namespace {

bool launched_by_launcher() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID", "MPI_LOCALNRANKS"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

MPI_Comm& as_comm(void*& p) { return *reinterpret_cast<MPI_Comm*>(&p); }

void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw Error(std::string("MPI call failed: ") + what, ExitCode::kInternal);
}

}  // namespace

std::string mpi_init_provider() {
  // The definition the dynamic linker binds MPI calls to: the first in the global lookup scope.
  void* symbol = ::dlsym(RTLD_DEFAULT, "MPI_Init_thread");
  Dl_info info{};
  if (symbol == nullptr || ::dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

bool init_mpi() {
  if (!launched_by_launcher()) return false;
  const std::string provider = mpi_init_provider();
  if (provider.find("simgrid") != std::string::npos) {
    throw Error("MPI_Init_thread resolves to " + provider +
                    " (SimGrid's SMPI), not to the MPI library: this binary was linked with SimGrid before MPI. "
                    "Rebuild twinstep from this source tree (cli/CMakeLists.txt puts MPI first), or configure with "
                    "-DTWINSTEP_SIMGRID=OFF on GPU machines",
                ExitCode::kInternal);
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    std::atexit(finalize_at_exit);
  }
  return true;
}

static_assert(sizeof(MPI_Comm) <= sizeof(void*), "MPI_Comm must fit in a pointer");

MpiGroup::MpiGroup(bool self) {
  active_ = init_mpi();
  if (!active_) return;
  MPI_Comm& comm = as_comm(comm_);
  mpi_check(MPI_Comm_dup(self ? MPI_COMM_SELF : MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  MPI_Comm_rank(comm, &rank_);
  MPI_Comm_size(comm, &size_);
  // Local rank among the processes of this host of the whole job (picks the GPU even for a group of one).
  MPI_Comm local;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local), "split_type");
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_size(local, &local_size_);
  MPI_Comm_free(&local);
}

MpiGroup::~MpiGroup() {
  if (active_ && !broken_) MPI_Comm_free(&as_comm(comm_));
}

void MpiGroup::broadcast(void* data, std::size_t bytes, int root) {
  if (!active_) return;
  mpi_check(MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, as_comm(comm_)), "MPI_Bcast");
}

std::vector<std::int64_t> MpiGroup::all_gather(const std::vector<std::int64_t>& mine) {
  if (!active_) return mine;
  const int count = static_cast<int>(mine.size());
  std::vector<int> counts(static_cast<std::size_t>(size_));
  mpi_check(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, as_comm(comm_)), "MPI_Allgather");
  std::vector<int> displs(counts.size());
  int total = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    displs[i] = total;
    total += counts[i];
  }
  std::vector<std::int64_t> out(static_cast<std::size_t>(total));
  mpi_check(MPI_Allgatherv(mine.data(), count, MPI_INT64_T, out.data(), counts.data(), displs.data(), MPI_INT64_T,
                           as_comm(comm_)),
            "MPI_Allgatherv");
  return out;
}

std::vector<std::string> MpiGroup::all_gather(const std::string& mine) {
  if (!active_) return {mine};
  std::vector<std::int64_t> enc(mine.begin(), mine.end());
  enc.insert(enc.begin(), static_cast<std::int64_t>(mine.size()));
  const auto all = all_gather(enc);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < all.size();) {
    const auto n = static_cast<std::size_t>(all[i]);
    std::string s;
    for (std::size_t j = 0; j < n; ++j) s.push_back(static_cast<char>(all[i + 1 + j]));
    out.push_back(s);
    i += n + 1;
  }
  return out;
}

std::uint64_t MpiGroup::all_min(std::uint64_t v) {
  if (!active_) return v;
  std::uint64_t out = v;
  mpi_check(MPI_Allreduce(&v, &out, 1, MPI_UINT64_T, MPI_MIN, as_comm(comm_)), "MPI_Allreduce");
  return out;
}

std::uint64_t MpiGroup::all_max(std::uint64_t v) {
  if (!active_) return v;
  std::uint64_t out = v;
  mpi_check(MPI_Allreduce(&v, &out, 1, MPI_UINT64_T, MPI_MAX, as_comm(comm_)), "MPI_Allreduce");
  return out;
}

void MpiGroup::barrier(const std::function<void()>& poll) {
  if (!active_) {
    poll();
    return;
  }
  MPI_Request req;
  mpi_check(MPI_Ibarrier(as_comm(comm_), &req), "MPI_Ibarrier");
  int done = 0;
  while (true) {
    mpi_check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    try {
      poll();
    } catch (...) {
      broken_ = true;  // the request can never be freed: leak it and the communicator
      throw;
    }
  }
}

}  // namespace twinstep::backend
