// The flow simulation's forked child (sim::run_in_child): it dies with its parent, and a child killed by a signal
// (SIGKILL: the out-of-memory killer) comes back as an error naming the signal, its peak memory and the schedule's
// size, with the fix. The bodies here stand in for the SimGrid run, so these tests need no SimGrid.
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/units.hpp"
#include "sim/resource_model.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {

/// Two ranks, three ops: the counts the error message must name.
Schedule three_ops() {
  Builder b(2, {{"compute", 0}});
  b.gemm(0, "g0", 0, 256, 256, 256);
  b.gemm(1, "g1", 0, 256, 256, 256);
  b.gemm(1, "g2", 0, 256, 256, 256);
  Schedule s = b.schedule();
  s.name = "three_ops";
  return s;
}

}  // namespace

TEST_CASE("sim::run_in_child: a child killed by SIGKILL is a NotFeasibleError naming memory, size and the fix",
          "[sim]") {
  const Schedule s = three_ops();
  constexpr std::size_t kTouched = 256u << 20;
  try {
    (void)run_in_child(
        [] {
          // Grow well past the test process's own size, so the peak memory reported is the child's.
          std::vector<char> big(kTouched);
          for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = 1;
          ::raise(SIGKILL);
          return std::vector<OpRecord>{};
        },
        s);
    FAIL("expected an error");
  } catch (const NotFeasibleError& e) {
    const std::string msg = e.what();
    CHECK(e.code() == ExitCode::kNotFeasible);
    CHECK(msg.find("killed by signal 9") != std::string::npos);
    CHECK(msg.find("out-of-memory killer") != std::string::npos);
    CHECK(msg.find("\"three_ops\" (3 ops on 2 of 2 ranks)") != std::string::npos);
    CHECK(msg.find("use --fidelity analytic, or fewer ranks / symmetry reduction") != std::string::npos);
    // "peak memory (RSS) of 263.42 MiB, simulating": the child's high-water mark, at least what it touched.
    const std::string key = "peak memory (RSS) of ";
    const auto from = msg.find(key);
    REQUIRE(from != std::string::npos);
    const auto to = msg.find(',', from);
    const double rss = parse_quantity(msg.substr(from + key.size(), to - from - key.size()), Dimension::kBytes, "rss");
    CHECK(rss >= static_cast<double>(kTouched));
  }
}

TEST_CASE("sim::run_in_child: a child killed by another signal is an internal error (exit 1)", "[sim]") {
  try {
    (void)run_in_child(
        [] {
          ::signal(SIGTERM, SIG_DFL);  // the test framework's handler, inherited through fork, would catch it
          ::raise(SIGTERM);
          return std::vector<OpRecord>{};
        },
        three_ops());
    FAIL("expected an error");
  } catch (const NotFeasibleError&) {
    FAIL("SIGTERM is not the out-of-memory killer");
  } catch (const Error& e) {
    CHECK(e.code() == ExitCode::kInternal);
    CHECK(std::string(e.what()).find("killed by signal " + std::to_string(SIGTERM)) != std::string::npos);
  }
}

TEST_CASE("sim::run_in_child: the records and errors of the child come back", "[sim]") {
  const auto records = run_in_child(
      [] {
        std::vector<OpRecord> r(2);
        r[1].end_ns = 42;
        return r;
      },
      three_ops());
  REQUIRE(records.size() == 2);
  CHECK(records[1].end_ns == 42);
  CHECK_THROWS_AS(run_in_child([]() -> std::vector<OpRecord> { throw NotFeasibleError("too big"); }, three_ops()),
                  NotFeasibleError);
}

TEST_CASE("sim::run_in_child: the simulation child dies when its parent is killed", "[sim]") {
  // This test process adopts orphans (a subreaper), so it can wait for the grandchild and see how it ended.
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t parent = ::fork();
  REQUIRE(parent >= 0);
  if (parent == 0) {
    // The parent (predict's place): runs a simulation whose child reports its pid, then would run for a minute.
    ::close(fds[0]);
    try {
      (void)run_in_child(
          [&] {
            const pid_t me = ::getpid();
            (void)!::write(fds[1], &me, sizeof me);
            ::sleep(60);
            return std::vector<OpRecord>{};
          },
          three_ops());
    } catch (...) {
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  pid_t child = 0;
  REQUIRE(::read(fds[0], &child, sizeof child) == static_cast<ssize_t>(sizeof child));
  ::close(fds[0]);
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(::kill(parent, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(parent, &status, 0) == parent);
  REQUIRE(::waitpid(child, &status, 0) == child);  // reparented to this process
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  (void)::prctl(PR_SET_CHILD_SUBREAPER, 0);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK(waited_s < 30);  // not the 60 s of its sleep
}
