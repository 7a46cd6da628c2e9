// Atomic writes: the temporaries of killed writers are removed on the next write of the same path, and only those.
#include "common/io.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/catch.hpp"

namespace fs = std::filesystem;

namespace {

/// The pid of a child that has exited and been reaped: no process has it (until the kernel hands it out again).
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  REQUIRE(pid > 0);
  REQUIRE(::waitpid(pid, nullptr, 0) == pid);
  return pid;
}

}  // namespace

TEST_CASE("common::write_file_atomic: removes the temporaries of dead writers of the same path", "[common]") {
  const fs::path dir = fs::temp_directory_path() / ("twinstep_io_test." + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string out = (dir / "out.jsonl").string();
  const std::string dead = out + ".tmp." + std::to_string(dead_pid());
  const std::string live = out + ".tmp." + std::to_string(::getppid());  // the test runner's parent: alive
  const std::string other = (dir / "other.jsonl").string() + ".tmp." + std::to_string(dead_pid());
  const std::string not_a_pid = out + ".tmp.12ab";
  for (const auto& f : {dead, live, other, not_a_pid}) twinstep::write_file_atomic(f, "partial");
  REQUIRE(fs::exists(dead));

  twinstep::write_file_atomic(out, "complete\n");
  CHECK(twinstep::read_file(out) == "complete\n");
  CHECK_FALSE(fs::exists(dead));                                        // its writer is gone: removed
  CHECK(fs::exists(live));                                              // its writer may still rename it: kept
  CHECK(fs::exists(other));                                             // another path's: kept
  CHECK(fs::exists(not_a_pid));                                         // not a temporary of ours: kept
  CHECK_FALSE(fs::exists(out + ".tmp." + std::to_string(::getpid())));  // this write's own is renamed away
  CHECK(twinstep::remove_stale_temporaries(out) == 0);
  fs::remove_all(dir);
}
