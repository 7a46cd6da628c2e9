// `twinstep`: the command-line entry point. Parses flags (CLI11), dispatches to the subcommands registered in
// cmd_*.cpp, and maps errors to the exit codes of the CLI contract: 0 ok, 2 bad input, 3 not feasible, 1 bug.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.hpp"
#include "common/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"twinstep: predict and measure the step time of distributed LLM training per overlap mode"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "twinstep 0.1.0");
  twinstep::cli::register_schedule_commands(app);
  twinstep::cli::register_model_commands(app);
  twinstep::cli::register_sim_commands(app);
  twinstep::cli::register_calibration_commands(app);
  twinstep::cli::register_import_trace_command(app);
  twinstep::cli::register_calibrate_command(app);
  twinstep::cli::register_sweep_commands(app);
  twinstep::cli::register_backend_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the message and usage hint
    return static_cast<int>(twinstep::ExitCode::kBadInput);
  } catch (const twinstep::Error& e) {
    std::fprintf(stderr, "twinstep: error: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "twinstep: internal error: %s\n", e.what());
    return static_cast<int>(twinstep::ExitCode::kInternal);
  }
  return 0;
}
