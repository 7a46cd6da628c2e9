// Validation: every problem at once, each naming the op, the field and the fix. Checks run in passes:
// declarations, per-op references, cross-rank matching, then (only when references are sound) deadlock
// detection on a wait-for graph of issue/start/end events. Near-linear in the number of ops.
#include "schedule/validate.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/error.hpp"
#include "schedule/json.hpp"
#include "schedule/kernel_math.hpp"
#include "schedule/matching.hpp"

namespace twinstep::schedule {

namespace {

bool on_host(const Op& op) {
  return std::holds_alternative<Host>(op.body) || std::holds_alternative<HostSync>(op.body);
}

std::string q(const std::string& s) { return "\"" + s + "\""; }

std::string op_ref(const Schedule& s, OpId id) {
  if (id >= s.ops.size()) return "op " + std::to_string(id);
  const Op& op = s.ops[id];
  return "op " + std::to_string(id) + " " + q(op.name) + " (rank " + std::to_string(op.rank) + ")";
}

class Checker {
 public:
  explicit Checker(const Schedule& s) : s_(s) {}

  std::vector<Diagnostic> run() {
    check_declarations();
    check_ops();
    const Matching m = match(s_);
    check_collectives(m);
    check_p2p(m);
    if (references_sound_) check_deadlock(m);
    return std::move(out_);
  }

 private:
  void add(OpId op, std::string field, std::string message) {
    out_.push_back({op, std::move(field), std::move(message)});
  }

  // ---- schedule-level declarations ----
  void check_declarations() {
    if (s_.world_size == 0) add(kNoOp, "world_size", "world_size is 0: set it to the number of ranks in the job");
    for (std::size_t i = 0; i < s_.ranks.size(); ++i) {
      const RankId r = s_.ranks[i];
      if (r >= s_.world_size) {
        add(kNoOp, "ranks[" + std::to_string(i) + "]",
            "rank " + std::to_string(r) + " is not below world_size " + std::to_string(s_.world_size) +
                " (ranks are 0-based global ranks)");
      }
      if (i > 0 && r <= s_.ranks[i - 1]) {
        add(kNoOp, "ranks[" + std::to_string(i) + "]",
            "ranks must be ascending and unique (sort them, drop duplicates)");
      }
      present_.insert(r);
    }
    if (s_.ranks.empty()) add(kNoOp, "ranks", "no ranks: list the ranks present in this schedule");
    if (s_.streams.empty()) add(kNoOp, "streams", "no streams declared: declare at least one, e.g. \"compute\"");
    std::set<std::string> names;
    for (std::size_t i = 0; i < s_.streams.size(); ++i) {
      if (!names.insert(s_.streams[i].name).second) {
        add(kNoOp, "streams[" + std::to_string(i) + "].name", "duplicate stream name " + q(s_.streams[i].name));
      }
    }
    names.clear();
    comm_pos_.resize(s_.communicators.size());
    for (std::size_t c = 0; c < s_.communicators.size(); ++c) {
      const Communicator& cm = s_.communicators[c];
      const std::string f = "communicators[" + std::to_string(c) + "]";
      if (!names.insert(cm.name).second) add(kNoOp, f + ".name", "duplicate communicator name " + q(cm.name));
      if (cm.members.empty()) add(kNoOp, f + ".members", "communicator " + q(cm.name) + " has no members");
      for (std::size_t i = 0; i < cm.members.size(); ++i) {
        const RankId r = cm.members[i];
        if (r >= s_.world_size) {
          add(kNoOp, f + ".members[" + std::to_string(i) + "]",
              "member " + std::to_string(r) + " of " + q(cm.name) + " is not below world_size " +
                  std::to_string(s_.world_size));
        }
        if (!comm_pos_[c].emplace(r, static_cast<std::uint32_t>(i)).second) {
          add(kNoOp, f + ".members[" + std::to_string(i) + "]",
              "rank " + std::to_string(r) + " is listed twice in " + q(cm.name));
        }
      }
    }
  }

  bool is_member(CommId c, RankId r) const { return c < comm_pos_.size() && comm_pos_[c].count(r) != 0; }

  std::string comm_name(CommId c) const {
    return c < s_.communicators.size() ? q(s_.communicators[c].name) : "#" + std::to_string(c);
  }

  /// Checks comm/peer references of a collective, send or recv.
  bool check_comm(OpId id, const Op& op, CommId comm) {
    if (comm >= s_.communicators.size()) {
      add(id, "comm",
          "communicator index " + std::to_string(comm) + " is not declared (there are " +
              std::to_string(s_.communicators.size()) + "): declare it or fix the reference");
      return false;
    }
    if (!is_member(comm, op.rank)) {
      add(id, "comm",
          "rank " + std::to_string(op.rank) + " is not a member of communicator " + comm_name(comm) +
              ": add it to the members or move the op to a communicator it belongs to");
      return false;
    }
    return true;
  }

  // ---- per-op checks ----
  /// A kernel's FLOPs and bytes must stay where its time fits the simulator's int64-nanosecond clock on any GPU:
  /// 1e21 FLOPs is ~17 minutes at 1 EFLOP/s and ~12 days at 1 PFLOP/s; 1e18 bytes is 1 EB.
  /// accumulate_fp32 adds a floating-point product into an fp32 buffer, accumulate into a C of the output dtype:
  /// not for integer GEMMs, and one C dtype at a time.
  void check_accumulate(OpId id, const Kernel& kernel) {
    std::visit(
        [&](const auto& k) {
          if constexpr (requires { k.accumulate_fp32; }) {
            if (k.accumulate_fp32 && (k.dtype == DType::kInt64 || k.dtype == DType::kInt32)) {
              add(id, "accumulate_fp32",
                  "an integer GEMM cannot accumulate into fp32: drop accumulate_fp32 or use a "
                  "floating-point dtype");
            }
            if (k.accumulate && (k.dtype == DType::kInt64 || k.dtype == DType::kInt32)) {
              add(id, "accumulate",
                  "an integer GEMM cannot accumulate into its output: drop accumulate or use a floating-point dtype");
            }
            if (k.accumulate && k.accumulate_fp32) {
              add(id, "accumulate",
                  "accumulate (C in the output dtype) and accumulate_fp32 (C in fp32) name two C dtypes: keep one");
            }
          }
        },
        kernel);
  }
  void check_kernel_size(OpId id, const Kernel& kernel) {
    constexpr double kMaxFlops = 1e21, kMaxBytes = 1e18;
    const double flops = kernel_flops(kernel), bytes = kernel_bytes(kernel);
    char buf[256];
    if (!(flops <= kMaxFlops)) {
      std::snprintf(buf, sizeof buf,
                    "%s kernel of %.3g FLOPs, above the %.0e one op may have: a shape field (m, n, k, batch, seq) is "
                    "orders of magnitude too large; fix it",
                    kernel_class(kernel), flops, kMaxFlops);
      add(id, "kernel", buf);
    } else if (!(bytes <= kMaxBytes)) {
      std::snprintf(buf, sizeof buf,
                    "%s kernel moving %.3g bytes, above the %.0e one op may move: a size field is orders of magnitude "
                    "too large; fix it",
                    kernel_class(kernel), bytes, kMaxBytes);
      add(id, "kernel", buf);
    }
  }

  void check_ops() {
    const std::size_t n = s_.ops.size();
    for (std::size_t i = 0; i < n; ++i) {
      const Op& op = s_.ops[i];
      const auto id = static_cast<OpId>(i);
      if (op.id != id) {
        add(id, "id",
            "id " + std::to_string(op.id) + " at position " + std::to_string(i) +
                ": ids must be dense and equal the op's index in ops (renumber the ops)");
        references_sound_ = false;
      }
      if (present_.count(op.rank) == 0) {
        add(id, "rank",
            "rank " + std::to_string(op.rank) + " is not listed in ranks (add it to ranks, or fix the op's rank)");
        references_sound_ = false;
      }
      if (!on_host(op) && op.stream >= s_.streams.size()) {
        add(id, "stream",
            "stream " + std::to_string(op.stream) + " is not declared (there are " + std::to_string(s_.streams.size()) +
                " streams): declare it or use an existing stream");
        references_sound_ = false;
      }
      for (std::size_t k = 0; k < op.deps.size(); ++k) {
        const OpId d = op.deps[k];
        const std::string f = "deps[" + std::to_string(k) + "]";
        if (d >= id) {
          add(id, f,
              "dep " + std::to_string(d) +
                  " is not an earlier op (an op may only wait for ops issued before it "
                  "on the same rank: reorder the ops or drop the dep)");
          references_sound_ = false;
        } else if (s_.ops[d].rank != op.rank) {
          add(id, f,
              "dep " + std::to_string(d) + " is on rank " + std::to_string(s_.ops[d].rank) + ", not rank " +
                  std::to_string(op.rank) + " (deps are same-rank events; use send/recv or a collective across ranks)");
          references_sound_ = false;
        }
      }
      std::visit(
          [&](const auto& b) {
            using T = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<T, Collective>) {
              check_collective_op(id, op, b);
            } else if constexpr (std::is_same_v<T, Send> || std::is_same_v<T, Recv>) {
              if (check_comm(id, op, b.comm)) {
                if (!is_member(b.comm, b.peer)) {
                  add(id, "peer",
                      "peer " + std::to_string(b.peer) + " is not a member of communicator " + comm_name(b.comm) +
                          ": use a member rank or another communicator");
                } else if (b.peer == op.rank) {
                  add(id, "peer", "peer is the op's own rank: a rank cannot send to or receive from itself");
                }
              } else {
                references_sound_ = false;
              }
            } else if constexpr (std::is_same_v<T, Compute>) {
              check_kernel_size(id, b.kernel);
              check_accumulate(id, b.kernel);
            } else if constexpr (std::is_same_v<T, Host>) {
              if (b.duration_ns < 0) add(id, "duration_ns", "negative host duration: use a duration >= 0 ns");
            } else if constexpr (std::is_same_v<T, HostSync>) {
              if (b.target >= id) {
                add(id, "target",
                    "host_sync target " +
                        (b.target == kNoOp ? std::string("is unset")
                                           : std::to_string(b.target) + " is not an earlier op") +
                        ": the host can only wait for an op it already issued");
                references_sound_ = false;
              } else if (s_.ops[b.target].rank != op.rank) {
                add(id, "target",
                    "host_sync target " + op_ref(s_, b.target) + " is on another rank: a host waits for its own GPU");
                references_sound_ = false;
              } else if (on_host(s_.ops[b.target])) {
                add(id, "target",
                    "host_sync target " + op_ref(s_, b.target) +
                        " is a host op: a host_sync waits for GPU work (target a compute or communication op)");
              }
            }
          },
          op.body);
    }
  }

  void check_collective_op(OpId id, const Op& op, const Collective& c) {
    if (!check_comm(id, op, c.comm)) {
      references_sound_ = false;
      return;
    }
    const std::size_t size = s_.communicators[c.comm].members.size();
    if (c.kind == CollectiveKind::kAllToAll) {
      if (c.send_bytes.size() != size) {
        add(id, "send_bytes",
            "all_to_all on " + comm_name(c.comm) + " has " + std::to_string(c.send_bytes.size()) +
                " send_bytes entries but the communicator has " + std::to_string(size) +
                " members: give one byte count per member, in member order");
      } else {
        std::uint64_t sum = 0;
        for (auto b : c.send_bytes) sum += b;
        if (sum != c.bytes) {
          add(id, "bytes",
              "all_to_all bytes " + std::to_string(c.bytes) + " is not the sum of send_bytes (" + std::to_string(sum) +
                  "): set bytes to the sum");
        }
      }
    } else if (!c.send_bytes.empty()) {
      add(id, "send_bytes", "send_bytes is only for all_to_all: clear it");
    }
    if (c.kind == CollectiveKind::kBroadcast && !is_member(c.comm, c.root)) {
      add(id, "root",
          "broadcast root " + std::to_string(c.root) + " is not a member of " + comm_name(c.comm) +
              ": use a member's global rank");
    }
  }

  // ---- cross-rank matching ----
  void check_collectives(const Matching& m) {
    std::vector<int> reported(s_.communicators.size(), 0);
    for (const CollectiveInstance& inst : m.collectives) {
      const Communicator& cm = s_.communicators[inst.comm];
      const OpId ref = first_present_op(inst);
      if (ref == kNoOp) continue;
      const auto& rc = std::get<Collective>(s_.ops[ref].body);
      for (std::size_t pos = 0; pos < inst.ops.size(); ++pos) {
        const OpId o = inst.ops[pos];
        const RankId member = cm.members[pos];
        if (o == kNoOp) {
          if (present_.count(member) == 0) continue;  // absent member of a reduced schedule: mirrors others
          if (reported[inst.comm]++ >= kMaxPerComm) continue;
          add(ref, "comm",
              "collective #" + std::to_string(inst.seq) + " on " + q(cm.name) + " (" + collective_name(rc.kind) +
                  ") has no counterpart on member rank " + std::to_string(member) + ", which issues only " +
                  std::to_string(inst.seq) + " collectives on " + q(cm.name) +
                  ": every present member must issue the same collectives in the same order");
          continue;
        }
        if (o == ref) continue;
        const auto& oc = std::get<Collective>(s_.ops[o].body);
        std::string what;
        if (oc.kind != rc.kind) {
          what = std::string("kind ") + collective_name(oc.kind) + " vs " + collective_name(rc.kind);
        } else if (oc.dtype != rc.dtype) {
          what = std::string("dtype ") + dtype_name(oc.dtype) + " vs " + dtype_name(rc.dtype);
        } else if (oc.kind != CollectiveKind::kAllToAll && oc.bytes != rc.bytes) {
          what = "bytes " + std::to_string(oc.bytes) + " vs " + std::to_string(rc.bytes);
        } else if (oc.kind == CollectiveKind::kBroadcast && oc.root != rc.root) {
          what = "root " + std::to_string(oc.root) + " vs " + std::to_string(rc.root);
        }
        if (!what.empty() && reported[inst.comm]++ < kMaxPerComm) {
          add(o, "collective",
              "collective #" + std::to_string(inst.seq) + " on " + q(cm.name) + " does not match " + op_ref(s_, ref) +
                  ": " + what +
                  " (members must issue the same collectives, with the same kind, size and dtype, in the same "
                  "order)");
        }
      }
    }
    for (std::size_t c = 0; c < reported.size(); ++c) {
      if (reported[c] > kMaxPerComm) {
        add(kNoOp, "communicators[" + std::to_string(c) + "]",
            std::to_string(reported[c] - kMaxPerComm) + " more collective mismatches on " +
                q(s_.communicators[c].name) + " not shown (fix the first ones; later ones often follow from them)");
      }
    }
  }

  void check_p2p(const Matching& m) {
    for (std::size_t i = 0; i < s_.ops.size(); ++i) {
      const Op& op = s_.ops[i];
      const auto id = static_cast<OpId>(i);
      const bool is_send = std::holds_alternative<Send>(op.body);
      if (!is_send && !std::holds_alternative<Recv>(op.body)) continue;
      const CommId comm = is_send ? std::get<Send>(op.body).comm : std::get<Recv>(op.body).comm;
      const RankId peer = is_send ? std::get<Send>(op.body).peer : std::get<Recv>(op.body).peer;
      const std::uint64_t bytes = is_send ? std::get<Send>(op.body).bytes : std::get<Recv>(op.body).bytes;
      const std::uint32_t tag = is_send ? std::get<Send>(op.body).tag : std::get<Recv>(op.body).tag;
      const OpId p = m.partner[i];
      if (p == kNoOp && present_.count(peer) == 0) {
        // Peer absent from a reduced schedule: the op mirrors, paired with its counterpart on its own rank.
        add(id, "peer",
            std::string(is_send ? "send to" : "recv from") + " absent rank " + std::to_string(peer) + " on " +
                comm_name(comm) + " with tag " + std::to_string(tag) + " has no mirrored " +
                (is_send ? "recv from" : "send to") + " an absent rank on rank " + std::to_string(op.rank) +
                " (reduced schedules pair them on the rank itself, k-th with k-th: add it or list the peer in ranks)");
      } else if (p == kNoOp) {
        add(id, is_send ? "peer" : "peer",
            std::string(is_send ? "send to" : "recv from") + " rank " + std::to_string(peer) + " on " +
                comm_name(comm) + " with tag " + std::to_string(tag) + " has no matching " +
                (is_send ? "recv" : "send") + " on rank " + std::to_string(peer) +
                " (pairs match by communicator, peer, tag and order: add the " + (is_send ? "recv" : "send") +
                " or fix peer/tag)");
      } else if (is_send) {
        const Send& snd = std::get<Send>(op.body);
        const Recv& rcv = std::get<Recv>(s_.ops[p].body);
        if (rcv.bytes != bytes) {
          add(id, "bytes",
              "send of " + std::to_string(bytes) + " bytes is matched by " + op_ref(s_, p) + " receiving " +
                  std::to_string(rcv.bytes) + " bytes: make the sizes equal");
        }
        if (rcv.transport != snd.transport || rcv.sm_count != snd.sm_count) {
          add(id, "transport",
              std::string("send over transport ") + transport_name(snd.transport) + " (sm_count " +
                  std::to_string(snd.sm_count) + ") is matched by " + op_ref(s_, p) + " over " +
                  transport_name(rcv.transport) + " (sm_count " + std::to_string(rcv.sm_count) +
                  "): both sides of a pair move the same bytes the same way; make them equal");
        }
      }
      const Transport transport = is_send ? std::get<Send>(op.body).transport : std::get<Recv>(op.body).transport;
      const std::uint32_t sms = is_send ? std::get<Send>(op.body).sm_count : std::get<Recv>(op.body).sm_count;
      if (transport == Transport::kSmKernel && sms == 0) {
        add(id, "sm_count", "a sm_kernel transfer holds at least 1 SM: set sm_count >= 1");
      } else if (transport != Transport::kSmKernel && sms != 0) {
        add(id, "sm_count", "sm_count is only for transport sm_kernel: set it to 0");
      }
    }
  }

  // ---- deadlock detection ----
  // Nodes: per op I (issued), S (started), E (ended); per collective instance R (all members started).
  // An edge u -> v means v cannot happen before u.
  void check_deadlock(const Matching& m) {
    const std::size_t n = s_.ops.size();
    const std::size_t nodes = 3 * n + m.collectives.size();
    auto I = [](std::size_t o) { return 3 * o; };
    auto S = [](std::size_t o) { return 3 * o + 1; };
    auto E = [](std::size_t o) { return 3 * o + 2; };
    std::vector<std::pair<std::uint32_t, std::uint32_t>> edges;
    edges.reserve(5 * n);
    auto edge = [&edges](std::size_t u, std::size_t v) {
      edges.emplace_back(static_cast<std::uint32_t>(u), static_cast<std::uint32_t>(v));
    };
    std::unordered_map<RankId, std::size_t> last_host;  // rank -> node that gates the next issue
    std::unordered_map<std::uint64_t, OpId> last_on_stream;
    for (std::size_t o = 0; o < n; ++o) {
      const Op& op = s_.ops[o];
      auto lh = last_host.find(op.rank);
      if (lh != last_host.end()) edge(lh->second, I(o));
      edge(I(o), S(o));
      edge(S(o), E(o));
      for (OpId d : op.deps) edge(E(d), S(o));
      if (on_host(op)) {
        if (const auto* hs = std::get_if<HostSync>(&op.body)) edge(E(hs->target), E(o));
        last_host[op.rank] = E(o);
        continue;
      }
      last_host[op.rank] = I(o);
      const std::uint64_t key = (static_cast<std::uint64_t>(op.rank) << 16) | op.stream;
      auto ls = last_on_stream.find(key);
      if (ls != last_on_stream.end()) {
        edge(E(ls->second), S(o));
        ls->second = static_cast<OpId>(o);
      } else {
        last_on_stream.emplace(key, static_cast<OpId>(o));
      }
      if (m.instance_of[o] != UINT32_MAX) {
        const std::size_t r = 3 * n + m.instance_of[o];
        edge(S(o), r);
        edge(r, E(o));
      } else if (std::holds_alternative<Recv>(op.body) && m.partner[o] != kNoOp) {
        edge(S(m.partner[o]), E(o));
      }
    }
    // Kahn's algorithm over CSR successor lists.
    std::vector<std::uint32_t> indeg(nodes, 0), start(nodes + 1, 0), succ(edges.size());
    for (const auto& [u, v] : edges) {
      ++start[u + 1];
      ++indeg[v];
    }
    for (std::size_t i = 0; i < nodes; ++i) start[i + 1] += start[i];
    {
      std::vector<std::uint32_t> fill(start.begin(), start.end() - 1);
      for (const auto& [u, v] : edges) succ[fill[u]++] = v;
    }
    std::vector<std::uint32_t> queue;
    queue.reserve(nodes);
    for (std::size_t i = 0; i < nodes; ++i) {
      if (indeg[i] == 0) queue.push_back(static_cast<std::uint32_t>(i));
    }
    for (std::size_t h = 0; h < queue.size(); ++h) {
      const std::uint32_t u = queue[h];
      for (std::uint32_t k = start[u]; k < start[u + 1]; ++k) {
        if (--indeg[succ[k]] == 0) queue.push_back(succ[k]);
      }
    }
    if (queue.size() == nodes) return;

    // Every unresolved node has an unresolved predecessor: walk predecessors until a node repeats.
    std::unordered_map<std::uint32_t, std::uint32_t> pred;  // node -> one unresolved predecessor
    for (const auto& [u, v] : edges) {
      if (indeg[u] > 0 && indeg[v] > 0 && pred.count(v) == 0) pred.emplace(v, u);
    }
    std::uint32_t first = 0;
    while (indeg[first] == 0) ++first;
    std::unordered_map<std::uint32_t, std::size_t> seen;
    std::vector<std::uint32_t> walk;
    std::uint32_t v = first;
    while (seen.count(v) == 0) {
      seen.emplace(v, walk.size());
      walk.push_back(v);
      v = pred.at(v);
    }
    // walk[seen[v]..] is a cycle traversed backwards; reverse it to forward order (u before v).
    std::vector<std::uint32_t> cycle(walk.begin() + static_cast<std::ptrdiff_t>(seen[v]), walk.end());
    std::reverse(cycle.begin(), cycle.end());
    std::size_t blocked = 0;
    for (std::size_t o = 0; o < n; ++o) blocked += indeg[E(o)] > 0 ? 1 : 0;
    report_cycle(cycle, n, m, blocked);
  }

  void report_cycle(const std::vector<std::uint32_t>& cycle, std::size_t n, const Matching& m, std::size_t blocked) {
    static const char* const kState[3] = {"be issued", "start", "finish"};
    struct Link {
      std::uint32_t from, to;  // op-level nodes (3*op + state)
      std::string why;
    };
    // Rotate so the cycle starts at an op node, then collapse rendezvous nodes into op -> op links.
    std::vector<std::uint32_t> c = cycle;
    auto is_op = [n](std::uint32_t x) { return x < 3 * n; };
    auto rot = std::find_if(c.begin(), c.end(), is_op);
    std::rotate(c.begin(), rot, c.end());
    c.push_back(c.front());
    std::vector<Link> links;
    for (std::size_t i = 0; i + 1 < c.size(); ++i) {
      const std::uint32_t u = c[i];
      std::uint32_t w = c[i + 1];
      std::string why;
      if (!is_op(w)) {
        const CollectiveInstance& inst = m.collectives[w - 3 * n];
        why = std::string("rendezvous: ") + collective_name(std::get<Collective>(s_.ops[u / 3].body).kind) + " #" +
              std::to_string(inst.seq) + " on " + q(s_.communicators[inst.comm].name) +
              " completes only after every member started";
        w = c[i + 2];
        ++i;
      }
      const std::uint32_t a = u / 3, b = w / 3;
      if (a == b) continue;  // an op's own issue -> start -> end
      if (why.empty()) {
        const Op& ob = s_.ops[b];
        if (u % 3 == 1 && w % 3 == 2) {
          why = "a recv completes only after its send started";
        } else if (w % 3 == 0) {
          why = on_host(s_.ops[a]) && std::holds_alternative<HostSync>(s_.ops[a].body)
                    ? "host program order after a host_sync"
                    : "host program order";
        } else if (w % 3 == 2) {
          why = "host_sync target";
        } else if (std::find(ob.deps.begin(), ob.deps.end(), a) != ob.deps.end()) {
          why = "dep";
        } else {
          why = "same stream " + q(s_.streams[ob.stream].name) + " (FIFO)";
        }
      }
      links.push_back({u, w, why});
    }
    // Collapse runs of program-order / stream-order links on one rank, starting the chain at a run boundary.
    auto mergeable = [this](const Link& a, const Link& b) {
      return a.why == b.why && a.why.find("rendezvous") == std::string::npos && a.to / 3 == b.from / 3 &&
             s_.ops[a.to / 3].rank == s_.ops[b.from / 3].rank;
    };
    const std::size_t nl = links.size();
    std::size_t begin = 0;
    while (begin < nl && nl > 1 && mergeable(links[(begin + nl - 1) % nl], links[begin])) ++begin;
    if (begin == nl) begin = 0;
    std::rotate(links.begin(), links.begin() + static_cast<std::ptrdiff_t>(begin), links.end());
    std::vector<Link> shortc;
    for (const Link& l : links) {
      if (!shortc.empty() && mergeable(shortc.back(), l)) {
        shortc.back().to = l.to;
        continue;
      }
      shortc.push_back(l);
    }
    std::string msg = "potential deadlock (" + std::to_string(blocked) + " ops can never finish): ";
    OpId lowest = kNoOp;
    for (std::size_t i = 0; i < shortc.size(); ++i) {
      const Link& l = shortc[i];
      if (i != 0) msg += "; ";
      msg += op_ref(s_, l.to / 3) + " cannot " + kState[l.to % 3] + " before " + op_ref(s_, l.from / 3) + " " +
             (l.from % 3 == 0   ? "is issued"
              : l.from % 3 == 1 ? "starts"
                                : "finishes") +
             " [" + l.why + "]";
      lowest = std::min(lowest, l.to / 3);
    }
    msg +=
        " (reorder the ops so all members reach their collectives and recvs in an order consistent with their "
        "streams, or put them on different streams)";
    add(lowest, "deadlock", msg);
  }

  static constexpr int kMaxPerComm = 20;
  const Schedule& s_;
  std::vector<Diagnostic> out_;
  std::unordered_set<RankId> present_;
  std::vector<std::unordered_map<RankId, std::uint32_t>> comm_pos_;
  bool references_sound_ = true;
};

}  // namespace

std::vector<Diagnostic> validate(const Schedule& schedule) { return Checker(schedule).run(); }

std::string format_diagnostic(const Diagnostic& d, const Schedule& schedule) {
  std::string out;
  if (d.op == kNoOp) {
    out = "schedule";
  } else if (d.op < schedule.ops.size()) {
    const Op& op = schedule.ops[d.op];
    out = "op " + std::to_string(d.op) + " " + q(op.name) + " (rank " + std::to_string(op.rank) + ")";
  } else {
    out = "op " + std::to_string(d.op);
  }
  if (!d.field.empty()) out += " " + d.field;
  return out + ": " + d.message;
}

void check(const Schedule& schedule) {
  const std::vector<Diagnostic> diags = validate(schedule);
  if (diags.empty()) return;
  std::vector<std::string> lines;
  lines.reserve(diags.size());
  for (const auto& d : diags) lines.push_back(format_diagnostic(d, schedule));
  throw ValidationError(std::move(lines));
}

}  // namespace twinstep::schedule
