// File I/O used by every command: whole-file reads with clear errors, and atomic writes
// (temporary file in the same folder, then rename) so that no output is ever half-written.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace twinstep {

/// Reads a whole file; throws twinstep::Error naming the path if it cannot.
[[nodiscard]] std::string read_file(const std::string& path);

/// Writes `content` to `path` atomically (write "<path>.tmp.<pid>", then rename). "-" writes to stdout.
/// Throws twinstep::Error naming the path on failure, leaving no partial file behind. Removes the temporaries of
/// earlier writers of `path` that were killed first (remove_stale_temporaries).
void write_file_atomic(const std::string& path, std::string_view content);

/// Removes the "<path>.tmp.<pid>" siblings whose writer process no longer exists (kill(pid, 0) fails with ESRCH),
/// left by a writer killed (SIGKILL, OOM) between writing and renaming. Temporaries of live processes, of this
/// process and other files' are kept. Assumes the writers ran on this machine (pids of a shared network folder's
/// other hosts mean nothing here). Returns how many were removed; errors are ignored (a best-effort cleanup).
std::size_t remove_stale_temporaries(const std::string& path);

}  // namespace twinstep
