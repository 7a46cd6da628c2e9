// The watchdog thread (watchdog.hpp).
#include "backend/watchdog.hpp"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <utility>

namespace twinstep::backend {

bool abort_concurrently(const std::vector<ncclComm_t>& comms, double wait_s) {
  auto left = std::make_shared<std::atomic<int>>(0);
  for (auto c : comms) {
    if (c == nullptr) continue;
    left->fetch_add(1);
    std::thread([c, left] {
      ncclCommAbort(c);
      left->fetch_sub(1);
    }).detach();
  }
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait_s));
  while (left->load() > 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return left->load() == 0;
}

Watchdog::Watchdog(int device, int rank) : device_(device), rank_(rank), thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::arm(double timeout_s, std::string what, std::vector<ncclComm_t> comms) {
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  std::lock_guard<std::mutex> lock(mu_);
  deadline_ = deadline;
  what_ = std::move(what);
  comms_ = std::move(comms);
  armed_ = true;
  fired_.store(false);
  acknowledged_.store(false);
}

void Watchdog::disarm() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = false;
}

std::string Watchdog::reason() {
  std::lock_guard<std::mutex> lock(mu_);
  return reason_;
}

void Watchdog::set_blocked_description(std::function<std::string()> f) {
  std::lock_guard<std::mutex> lock(mu_);
  blocked_description_ = std::move(f);
}

void Watchdog::loop() {
  cudaSetDevice(device_);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(5));
    if (stop_ || !armed_) continue;
    const auto now = Clock::now();
    if (!fired_.load()) {
      for (auto c : comms_) {
        ncclResult_t async = ncclSuccess;
        if (c != nullptr && ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess &&
            async != ncclInProgress) {
          reason_ = std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async);
          fired_at_ = now;
          fired_.store(true);
          break;
        }
      }
      if (!fired_.load() && now > deadline_) {
        reason_ = what_ + " exceeded its time limit";
        fired_at_ = now;
        fired_.store(true);
      }
    } else if (!acknowledged_.load() && std::chrono::duration<double>(now - fired_at_).count() > kStuckGrace_s) {
      // The host thread is stuck inside a call: report, abort (bounded: an abort can itself wait on the blocked
      // call) and leave.
      const std::string where = blocked_description_ ? blocked_description_() : std::string("in a call");
      std::fprintf(stderr,
                   "twinstep: error: rank %d: %s; the issuing thread is blocked %s and did not react within "
                   "%.0f s; aborting the communicators and exiting\n",
                   rank_, reason_.c_str(), where.c_str(), kStuckGrace_s);
      std::fflush(stderr);
      (void)abort_concurrently(comms_, 1.0);
      std::_Exit(1);
    }
  }
}

}  // namespace twinstep::backend
