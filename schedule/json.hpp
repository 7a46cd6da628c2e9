// JSON spelling of the schedule IR and of traces, versioned by "schema_version". Read in json_read.cpp (the only
// file here that includes nlohmann/json), written in json_write.cpp. Readers report the file and the JSON pointer
// of the offending field (ParseError).
#pragma once

#include <string>
#include <string_view>

#include "schedule/schedule.hpp"
#include "schedule/trace.hpp"

namespace twinstep::schedule {

/// Parses a schedule; `source` names the input in errors (a path, or "<stdin>"). Structural checks only
/// (types, required fields, enum spellings, references by name that do not resolve); semantic checks are
/// validate(). Throws twinstep::ParseError.
[[nodiscard]] Schedule schedule_from_json(std::string_view text, const std::string& source);
/// Deterministic JSON (fixed key order, streams/communicators referenced by name). Round trip is the identity.
[[nodiscard]] std::string schedule_to_json(const Schedule& schedule);

[[nodiscard]] Trace trace_from_json(std::string_view text, const std::string& source);
[[nodiscard]] std::string trace_to_json(const Trace& trace);

/// File helpers: read_file + *_from_json; *_to_json + write_file_atomic.
[[nodiscard]] Schedule read_schedule(const std::string& path);
void write_schedule(const Schedule& schedule, const std::string& path);
[[nodiscard]] Trace read_trace(const std::string& path);
void write_trace(const Trace& trace, const std::string& path);

/// Spellings shared with other writers ("bf16", "all_reduce", "fwd", ...). Throw twinstep::Error if unknown.
[[nodiscard]] const char* dtype_name(DType t);
[[nodiscard]] DType parse_dtype(std::string_view name);
[[nodiscard]] const char* collective_name(CollectiveKind k);
[[nodiscard]] const char* phase_name(Phase p);
[[nodiscard]] const char* transport_name(Transport t);
/// The transport spelled `text` ("nccl", "copy_engine", "sm_kernel"); UnknownNameError naming `field` otherwise.
[[nodiscard]] Transport parse_transport(std::string_view text, std::string_view field);
/// The same spelling as a string (run configs write their modes with to_string).
[[nodiscard]] inline std::string to_string(Transport t) { return transport_name(t); }

}  // namespace twinstep::schedule
