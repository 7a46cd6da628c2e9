// File I/O used by every command: whole-file reads with clear errors, and atomic writes
// (temporary file in the same folder, then rename) so that no output is ever half-written.
#pragma once

#include <string>
#include <string_view>

namespace twinstep {

/// Reads a whole file; throws twinstep::Error naming the path if it cannot.
[[nodiscard]] std::string read_file(const std::string& path);

/// Writes `content` to `path` atomically (write "<path>.tmp.<pid>", then rename). "-" writes to stdout.
/// Throws twinstep::Error naming the path on failure, leaving no partial file behind.
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace twinstep
