// Placeholder: the owner of this command replaces this file.
#include "cli/commands.hpp"

namespace twinstep::cli {
void register_calibrate_command(CLI::App& /*app*/) {}
}  // namespace twinstep::cli
