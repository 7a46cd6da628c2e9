// `twinstep validate`, `twinstep analyze` and `twinstep export-trace`: the schedule/ commands. Bad input
// throws twinstep::Error (cli/main.cpp prints it and exits 2); results go to stdout.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/units.hpp"
#include "schedule/analysis.hpp"
#include "schedule/json.hpp"
#include "schedule/perfetto.hpp"
#include "schedule/validate.hpp"

namespace twinstep::cli {

namespace {

void print(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

std::string json_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string rank_json(const schedule::RankBreakdown& r, bool with_rank) {
  std::string out = "{";
  if (with_rank) out += "\"rank\":" + std::to_string(r.rank) + ",";
  out += "\"compute_s\":" + json_number(r.compute_s) + ",\"exposed_comm_s\":{";
  bool first = true;
  for (const auto& [kind, s] : r.exposed_comm_s) {
    out += (first ? "" : ",") + json_string(kind) + ":" + json_number(s);
    first = false;
  }
  out += "},\"host_bound_s\":" + json_number(r.host_bound_s) + ",\"bubble_s\":" + json_number(r.bubble_s) +
         ",\"busy_comm_s\":" + json_number(r.busy_comm_s) + "}";
  return out;
}

std::string breakdown_json(const schedule::Breakdown& b) {
  std::string out = "{\"step_time_s\":" + json_number(b.step_time_s) + ",\"flops\":" + json_number(b.flops) +
                    ",\n\"mean\":" + rank_json(b.mean, false) + ",\n\"ranks\":[";
  for (std::size_t i = 0; i < b.ranks.size(); ++i) out += (i == 0 ? "\n" : ",\n") + rank_json(b.ranks[i], true);
  return out + "]}\n";
}

void run_validate(const std::string& path) {
  const schedule::Schedule s = schedule::read_schedule(path);
  const auto diags = schedule::validate(s);
  if (!diags.empty()) {
    std::vector<std::string> lines;
    lines.push_back(path + ": " + std::to_string(diags.size()) + " problem" + (diags.size() == 1 ? "" : "s") + ":");
    for (const auto& d : diags) lines.push_back("  " + schedule::format_diagnostic(d, s));
    throw ValidationError(std::move(lines));
  }
  std::size_t collectives = 0, p2p = 0, compute = 0, host = 0;
  for (const auto& op : s.ops) {
    if (std::holds_alternative<schedule::Collective>(op.body)) {
      ++collectives;
    } else if (std::holds_alternative<schedule::Send>(op.body) || std::holds_alternative<schedule::Recv>(op.body)) {
      ++p2p;
    } else if (std::holds_alternative<schedule::Compute>(op.body)) {
      ++compute;
    } else {
      ++host;
    }
  }
  print("valid: " + std::to_string(s.ranks.size()) + " ranks (world " + std::to_string(s.world_size) + "), " +
        std::to_string(s.ops.size()) + " ops (" + std::to_string(compute) + " compute, " + std::to_string(collectives) +
        " collective, " + std::to_string(p2p) + " send/recv, " + std::to_string(host) + " host), " +
        std::to_string(s.streams.size()) + " streams, " + std::to_string(s.communicators.size()) + " communicators\n");
  for (const auto& w : s.warnings) print("warning: " + w + "\n");
}

}  // namespace

void register_schedule_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("validate", "Check a schedule: every problem at once, naming op, field and fix");
    auto path = std::make_shared<std::string>();
    cmd->add_option("SCHEDULE", *path, "Schedule JSON (docs/ir.md)")->required();
    cmd->footer("Exit status: 0 valid, 2 problems found (one per line on stderr).");
    cmd->callback([path] { run_validate(*path); });
  }
  {
    auto* cmd = app.add_subcommand("analyze", "Step time and per-rank breakdown of a trace");
    auto path = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto rows = std::make_shared<std::size_t>(16);
    cmd->add_option("TRACE", *path, "Trace JSON written by simulate or run")->required();
    cmd->add_flag("--json", *json, "Print the breakdown as JSON (seconds) instead of a table");
    cmd->add_option("--max-rows", *rows, "Rank rows in the table (the ranks with the most compute first)");
    cmd->callback([path, json, rows] {
      const schedule::Trace t = schedule::read_trace(*path);
      const schedule::Breakdown b = schedule::analyze(t);
      print(*json ? breakdown_json(b) : schedule::format_breakdown(b, *rows));
    });
  }
  {
    auto* cmd = app.add_subcommand("export-trace", "Convert a trace to Chrome/Perfetto JSON (ui.perfetto.dev)");
    auto path = std::make_shared<std::string>();
    auto out = std::make_shared<std::string>();
    cmd->add_option("TRACE", *path, "Trace JSON written by simulate or run")->required();
    cmd->add_option("-o,--output", *out, "Output file (\"-\" for stdout)")->required();
    cmd->callback([path, out] {
      const schedule::Trace t = schedule::read_trace(*path);
      write_file_atomic(*out, schedule::to_perfetto_json(t));
      if (*out != "-") {
        print("wrote " + *out + ": " + std::to_string(t.records.size()) + " ops on " +
              std::to_string(t.schedule.ranks.size()) + " ranks\n");
      }
    });
  }
}

}  // namespace twinstep::cli
