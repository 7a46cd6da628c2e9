// die_with_parent(): a forked child whose parent is already gone exits at once; one whose parent lives carries on.
// process_age_s(): the time since the process was created, moving with the clock.
#include "common/process.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "tests/catch.hpp"

TEST_CASE("common::die_with_parent: a child whose recorded parent is not its parent exits at once", "[common]") {
  const pid_t me = ::getpid();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    twinstep::die_with_parent(me + 1);  // as if the parent had died before the prctl took effect
    ::_exit(0);                         // not reached
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == twinstep::kParentGoneExitStatus);
}

TEST_CASE("common::die_with_parent: a child whose parent lives carries on", "[common]") {
  const pid_t me = ::getpid();
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    twinstep::die_with_parent(me);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("common::process_age_s: grows with the clock from the process's creation", "[common]") {
  const double before = twinstep::process_age_s();
  REQUIRE(before >= 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double after = twinstep::process_age_s();
  // The start time is fixed (to the tick); only the clock moves between the two reads.
  CHECK(after - before >= 0.05);
  CHECK(after - before < 5.0);
}
