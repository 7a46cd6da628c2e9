// Registration of the `twinstep` subcommands. Each module's commands live in their own cmd_*.cpp; a command's
// callback throws twinstep::Error (or a subclass) for bad input, which cli/main.cpp turns into a message and
// an exit code. Nothing else in a command prints to stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace twinstep::cli {

/// An option or positional naming an input file, which CLI11 checks exists before the command's callback runs
/// (its message names the option and the path). The caller chains ->required() where the file must be given.
inline CLI::Option* add_input_file(CLI::App* cmd, const std::string& name, std::string& path,
                                   const std::string& description) {
  return cmd->add_option(name, path, description)->check(CLI::ExistingFile);
}

/// validate, analyze, export-trace (schedule/).
void register_schedule_commands(CLI::App& app);
/// lower (models/).
void register_model_commands(CLI::App& app);
/// predict, simulate (sim/, topologies/).
void register_sim_commands(CLI::App& app);
/// compare (calibration/).
void register_calibration_commands(CLI::App& app);
/// import-trace (calibration/trace_import/).
void register_import_trace_command(CLI::App& app);
/// calibrate (calibration/ + backend/).
void register_calibrate_command(CLI::App& app);
/// sweep, merge (what-if sweeps over layouts, overlap variants and cluster sizes).
void register_sweep_commands(CLI::App& app);
/// run (backend/); when the backend is not built, `run` explains how to get it.
void register_backend_commands(CLI::App& app);

}  // namespace twinstep::cli
