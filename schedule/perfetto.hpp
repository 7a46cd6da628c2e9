// Chrome trace-event / Perfetto JSON export: a process per rank, a thread (track) per stream plus one for the
// host thread, complete ("X") events in microseconds with op id, kind, tags and bytes/FLOPs as args.
#pragma once

#include <string>

#include "schedule/trace.hpp"

namespace twinstep::schedule {

[[nodiscard]] std::string to_perfetto_json(const Trace& trace);

}  // namespace twinstep::schedule
