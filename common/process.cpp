// die_with_parent(): PR_SET_PDEATHSIG plus the check for a parent that died before it took effect; process_age_s().
#include "common/process.hpp"

#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

namespace twinstep {

void die_with_parent(pid_t parent) {
  // PR_SET_PDEATHSIG fires when the thread that forked exits; every fork in twinstep is on the main thread.
  (void)::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(kParentGoneExitStatus);
}

double process_age_s() {
  std::ifstream f("/proc/self/stat");
  std::string stat;
  if (!std::getline(f, stat)) return -1;
  // Fields after the command name (which may hold spaces; it ends at the last ')'): state is field 3, starttime 22.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 1));
  std::string field;
  for (int k = 3; k < 22 && rest >> field; ++k) {
  }
  unsigned long long start_ticks = 0;
  if (!(rest >> start_ticks)) return -1;
  const long ticks_per_s = ::sysconf(_SC_CLK_TCK);
  timespec now{};
  if (ticks_per_s <= 0 || ::clock_gettime(CLOCK_BOOTTIME, &now) != 0) return -1;
  const double now_s = static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
  return now_s - static_cast<double>(start_ticks) / static_cast<double>(ticks_per_s);
}

}  // namespace twinstep
