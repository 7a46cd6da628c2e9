// Helpers for the processes twinstep forks (the flow simulation's child, the sweep's workers): a forked child must
// not outlive its parent, whether the parent exits, crashes or is killed (a timeout, Ctrl-C from a wrapper).
// Linux only (prctl, /proc). Not a process pool or a fork wrapper: each caller keeps its own pipes and protocol.
#pragma once

#include <sys/types.h>

namespace twinstep {

/// Call in a child right after fork(), with `parent` = the parent's getpid() taken before the fork. Asks the kernel
/// to SIGKILL this process when the parent dies (prctl PR_SET_PDEATHSIG), then _exit()s at once (status
/// kParentGoneExitStatus) if the parent already died between the fork and the prctl (getppid() is no longer `parent`).
void die_with_parent(pid_t parent);

/// Seconds since this process was created (the kernel's start time in /proc/self/stat against CLOCK_BOOTTIME, to
/// the clock tick, 10 ms): what a command's own timers miss before main() (loading its shared libraries, static
/// initialisation). -1 where /proc cannot be read.
[[nodiscard]] double process_age_s();

/// The status a child exits with when die_with_parent() finds its parent gone.
inline constexpr int kParentGoneExitStatus = 9;

}  // namespace twinstep
