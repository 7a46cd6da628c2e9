// The watchdog of a backend run: a thread that watches the step deadline and every communicator's asynchronous
// error; and the concurrent abort of communicators that it and the host thread use. Backend-internal.
#pragma once

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace twinstep::backend {

using Clock = std::chrono::steady_clock;

/// After the deadline, how long a host thread blocked in a call is given before the watchdog ends the process.
inline constexpr double kStuckGrace_s = 2.0;
/// How long the host thread waits for the communicators' aborts.
inline constexpr double kAbortWait_s = 3.0;

/// Aborts `comms` all at once, one thread each, and waits at most `wait_s` for them. Sequential aborts can hang: an
/// abort frees the communicator's device memory, and a free waits for every kernel of the device, including the
/// hung kernel of a communicator whose abort flag is not set yet. Concurrent aborts set every flag first. Returns
/// whether all finished (those that did not are left running, detached). The owners must have given the handles up.
bool abort_concurrently(const std::vector<ncclComm_t>& comms, double wait_s);

/// A thread that watches the step deadline and every communicator's asynchronous error. It raises a flag at the
/// deadline; the host thread, which polls it wherever it waits (events, streams, the MPI barrier, host_sync), then
/// names the first unfinished op, aborts the communicators and throws. If the host thread is blocked inside a call
/// (an NCCL call waiting for a peer, a driver call) and has not reacted kStuckGrace_s after the deadline, the
/// watchdog itself prints the rank and the op being issued, aborts the communicators (for at most a second) and
/// ends the process with exit code 1, so that the launcher ends the other ranks.
class Watchdog {
 public:
  Watchdog(int device, int rank);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  /// Watches `comms` and a deadline `timeout_s` from now for `what` ("step 3", ...).
  void arm(double timeout_s, std::string what, std::vector<ncclComm_t> comms);
  void disarm();
  [[nodiscard]] bool fired() const { return fired_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::string reason();
  /// The host thread has seen the flag and handles it: the watchdog will not end the process.
  void acknowledge() { acknowledged_.store(true); }
  /// What the host thread is doing, for the message when it is blocked in a call. Called on the watchdog thread
  /// while the host thread is blocked: it must read only atomics and immutable data, and make no CUDA call.
  void set_blocked_description(std::function<std::string()> f);

 private:
  void loop();

  int device_;
  int rank_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool armed_ = false;
  Clock::time_point deadline_{};
  Clock::time_point fired_at_{};
  std::string what_;
  std::string reason_;
  std::vector<ncclComm_t> comms_;
  std::function<std::string()> blocked_description_;
  std::atomic<bool> fired_{false};
  std::atomic<bool> acknowledged_{false};
  std::thread thread_;
};

}  // namespace twinstep::backend
