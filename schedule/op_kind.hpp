// An op's kind as an enumerator (OpKind), one per alternative of schedule::Body, and kind_of(body). Code that treats
// op kinds differently switches on kind_of() (or visits the body) rather than on Body::index(), so that adding an
// alternative cannot silently mis-map: kind_of() stops compiling until the new alternative has a kind, and a switch
// that names every kind without a default gets -Wswitch.
#pragma once

#include <cstdint>
#include <variant>

#include "schedule/schedule.hpp"

namespace twinstep::schedule {

enum class OpKind : std::uint8_t { kCompute, kCollective, kSend, kRecv, kHost, kHostSync };

namespace detail {
/// One overload per Body alternative and no catch-all.
struct KindOf {
  OpKind operator()(const Compute& /*unused*/) const { return OpKind::kCompute; }
  OpKind operator()(const Collective& /*unused*/) const { return OpKind::kCollective; }
  OpKind operator()(const Send& /*unused*/) const { return OpKind::kSend; }
  OpKind operator()(const Recv& /*unused*/) const { return OpKind::kRecv; }
  OpKind operator()(const Host& /*unused*/) const { return OpKind::kHost; }
  OpKind operator()(const HostSync& /*unused*/) const { return OpKind::kHostSync; }
};
}  // namespace detail

[[nodiscard]] inline OpKind kind_of(const Body& body) { return std::visit(detail::KindOf{}, body); }

}  // namespace twinstep::schedule
