// Placeholder: the owner of this command replaces this file.
#include "cli/commands.hpp"

namespace twinstep::cli {
void register_sweep_commands(CLI::App& /*app*/) {}
}  // namespace twinstep::cli
