// die_with_parent(): PR_SET_PDEATHSIG plus the check for a parent that died before it took effect.
#include "common/process.hpp"

#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>

namespace twinstep {

void die_with_parent(pid_t parent) {
  // PR_SET_PDEATHSIG fires when the thread that forked exits; every fork in twinstep is on the main thread.
  (void)::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(kParentGoneExitStatus);
}

}  // namespace twinstep
