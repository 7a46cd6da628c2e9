// Executes a schedule on this process's GPU and measures it. Per rank: one CUDA stream per declared stream (with
// its priority), NCCL communicators split from the world communicator, two timing events per GPU op (which also
// carry deps), one host thread issuing in program order, and a watchdog thread that aborts a hung step.
//
// Channels (NCCL communicators). The IR lets ops on different streams of one communicator proceed independently;
// NCCL serializes the operations of one communicator in issue order on each rank, and an ungrouped send waits for
// its recv, so sharing one NCCL communicator would add orders the IR does not have (the ring exchange of
// tp_comm_overlap: each rank's recv queued behind its own send -> deadlock). So (plan_channels()): a collective runs
// on a communicator per (IR communicator, streams of the instance's members); a send/recv on one per (IR
// communicator, sender -> receiver, sender's stream, receiver's stream), plus the tag where tags reorder a direction
// (NCCL matches by order only). Within a channel each rank's ops lie on one stream, so NCCL's order is the stream's
// FIFO order, which the IR has anyway. All channels are split from the world communicator up front, in the same
// order on every rank, with NCCL_RUNTIME_CONNECT=0 and a warm-up exchange per channel, because a lazy connection
// blocks the issuing thread until the peer arrives. Not covered: the IR's eager send (a send completing before its
// recv starts) holds in NCCL only for messages that fit its buffers; a schedule that needs it for larger messages on
// one stream hangs and is caught by the watchdog.
//
// Clock alignment. Each step starts with a barrier over all ranks; each rank then records an origin event on an
// internal stream, makes every stream wait on it, and polls it: the first host instant at which the origin is seen
// complete is the host origin. Device times are event times relative to the origin event
// (cudaEventElapsedTime, about 0.5 us resolution); host times are steady_clock relative to the host origin. The
// two axes are therefore offset by at most the polling latency (a few us, device times slightly late), and ranks
// by the barrier's exit skew (a few us on one host).
#include "backend/executor.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>
#include <utility>

#include "backend/attention.hpp"
#include "backend/error.hpp"
#include "backend/gemm.hpp"
#include "backend/gpu_monitor.hpp"
#include "backend/kernels.hpp"
#include "backend/mpi_group.hpp"
#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/units.hpp"
#include "schedule/json.hpp"
#include "schedule/matching.hpp"

#ifndef TWINSTEP_GIT_REVISION
#define TWINSTEP_GIT_REVISION "unknown"
#endif

namespace twinstep::backend {

namespace sch = twinstep::schedule;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint64_t kCublasWorkspaceBytes = 32ull << 20;  // PyTorch's default on Hopper (4096 KiB x 8)
constexpr std::uint64_t kNcclReserveBytes = 2ull << 30;       // NCCL's own buffers and CUDA context headroom
constexpr std::uint64_t kWarmChunk = 4096;                    // bytes per peer of a connection warm-up exchange
constexpr std::uint64_t kWarmPeers = 64;                      // warm-up slots (peers beyond reuse them)
constexpr std::uint64_t kWarmBytes = 2 * kWarmPeers * kWarmChunk;
constexpr double kStuckGrace_s = 2.0;
constexpr double kAbortWait_s = 3.0;  // how long the host thread waits for the communicators' aborts  // after the
                                      // deadline, how long a host thread blocked in a call is given

// ---------------------------------------------------------------------------------------------------------------
// Buffer sizing: one buffer per role, sized by the largest op that uses it on this rank.

enum class Role : std::uint8_t {
  kGemmA,
  kGemmB,
  kGemmC,
  kAttnQ,
  kAttnK,
  kAttnV,
  kAttnS,
  kAttnO,
  kAttnDO,
  kElemIn,
  kElemOut,
  kOptParam,
  kOptGrad,
  kOptMaster,
  kOptM,
  kOptV,
  kCopyDev,
  kCopyDev2,
  kCopyHost,
  kCommSend,
  kCommRecv,
  kCount
};
constexpr std::size_t kRoles = static_cast<std::size_t>(Role::kCount);
using RoleSizes = std::array<std::uint64_t, kRoles>;

void need(RoleSizes& s, Role r, std::uint64_t bytes) {
  auto& v = s[static_cast<std::size_t>(r)];
  v = std::max(v, bytes);
}

/// Position of a global rank in a communicator's member list, or -1.
int position(const sch::Communicator& c, sch::RankId r) {
  for (std::size_t i = 0; i < c.members.size(); ++i) {
    if (c.members[i] == r) return static_cast<int>(i);
  }
  return -1;
}

/// Bytes this rank receives in an all_to_all: what each member sends to it (from their matching op).
/// `instances[c][k]` lists the k-th collective op of every member of communicator c (by position).
using Instances = std::vector<std::vector<std::vector<sch::OpId>>>;

Instances match_collectives(const sch::Schedule& s) {
  Instances inst(s.communicators.size());
  std::vector<std::vector<std::vector<sch::OpId>>> per_member(s.communicators.size());
  for (std::size_t c = 0; c < s.communicators.size(); ++c) per_member[c].resize(s.communicators[c].members.size());
  for (const auto& op : s.ops) {
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      if (col->comm >= s.communicators.size()) continue;
      const int p = position(s.communicators[col->comm], op.rank);
      if (p >= 0) per_member[col->comm][static_cast<std::size_t>(p)].push_back(op.id);
    }
  }
  for (std::size_t c = 0; c < per_member.size(); ++c) {
    std::size_t n = 0;
    for (const auto& l : per_member[c]) n = std::max(n, l.size());
    inst[c].resize(n);
    for (std::size_t k = 0; k < n; ++k) {
      for (const auto& l : per_member[c]) inst[c][k].push_back(k < l.size() ? l[k] : sch::kNoOp);
    }
  }
  return inst;
}

struct CommSizes {
  std::uint64_t send = 0, recv = 0;
  std::vector<std::uint64_t> a2a_recv;  // per member position
};

CommSizes comm_sizes(const sch::Schedule& s, const sch::Op& op, const Instances& inst,
                     const std::vector<std::uint32_t>& seq_of_op) {
  CommSizes out;
  if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
    const auto& comm = s.communicators[col->comm];
    const std::uint64_t n = std::max<std::size_t>(1, comm.members.size());
    switch (col->kind) {
      case sch::CollectiveKind::kAllReduce:
      case sch::CollectiveKind::kBroadcast:
        out.send = out.recv = col->bytes;
        break;
      case sch::CollectiveKind::kAllGather:
        out.send = col->bytes / n;
        out.recv = col->bytes;
        break;
      case sch::CollectiveKind::kReduceScatter:
        out.send = col->bytes;
        out.recv = col->bytes / n;
        break;
      case sch::CollectiveKind::kAllToAll: {
        for (auto b : col->send_bytes) out.send += b;
        const int me = position(comm, op.rank);
        out.a2a_recv.assign(comm.members.size(), 0);
        const auto seq = seq_of_op[op.id];
        if (me >= 0 && seq < inst[col->comm].size()) {
          const auto& peers = inst[col->comm][seq];
          for (std::size_t j = 0; j < peers.size(); ++j) {
            if (peers[j] == sch::kNoOp) continue;
            const auto& pc = std::get<sch::Collective>(s.ops[peers[j]].body);
            if (static_cast<std::size_t>(me) < pc.send_bytes.size()) out.a2a_recv[j] = pc.send_bytes[me];
          }
        }
        for (auto b : out.a2a_recv) out.recv += b;
        break;
      }
    }
  } else if (const auto* snd = std::get_if<sch::Send>(&op.body)) {
    out.send = snd->bytes;
  } else if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) {
    out.recv = rcv->bytes;
  }
  return out;
}

std::vector<std::uint32_t> collective_seq(const sch::Schedule& s) {
  std::vector<std::uint32_t> seq(s.ops.size(), 0);
  std::map<std::pair<sch::RankId, sch::CommId>, std::uint32_t> next;
  for (const auto& op : s.ops) {
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) seq[op.id] = next[{op.rank, col->comm}]++;
  }
  return seq;
}

std::uint64_t esz(sch::DType t) { return sch::dtype_bytes(t); }

/// Attention buffers (layouts in attention.hpp): Q, O, dO; K, V; the scores S.
void attention_sizes(const sch::Attention& a, RoleSizes& s) {
  const AttentionBufferBytes b = attention_buffer_bytes(a);
  need(s, Role::kAttnQ, b.q);
  need(s, Role::kAttnO, b.q);
  need(s, Role::kAttnK, b.k);
  need(s, Role::kAttnV, b.k);
  need(s, Role::kAttnS, b.s);
  if (a.backward) need(s, Role::kAttnDO, b.q);
}

RoleSizes role_sizes(const sch::Schedule& s, sch::RankId rank) {
  RoleSizes sizes{};
  const auto inst = match_collectives(s);
  const auto seq = collective_seq(s);
  for (const auto& op : s.ops) {
    if (op.rank != rank) continue;
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      std::visit(
          [&](const auto& k) {
            using K = std::decay_t<decltype(k)>;
            if constexpr (std::is_same_v<K, sch::Gemm>) {
              need(sizes, Role::kGemmA, k.batch * k.m * k.k * esz(k.dtype));
              need(sizes, Role::kGemmB, k.batch * k.k * k.n * esz(k.dtype));
              need(sizes, Role::kGemmC, k.batch * k.m * k.n * esz(k.dtype));
            } else if constexpr (std::is_same_v<K, sch::GroupedGemm>) {
              std::uint64_t rows = 0;
              for (auto m : k.m) rows += m;
              need(sizes, Role::kGemmA, rows * k.k * esz(k.dtype));
              need(sizes, Role::kGemmB, k.m.size() * k.k * k.n * esz(k.dtype));
              need(sizes, Role::kGemmC, rows * k.n * esz(k.dtype));
            } else if constexpr (std::is_same_v<K, sch::Attention>) {
              attention_sizes(k, sizes);
            } else if constexpr (std::is_same_v<K, sch::Elementwise>) {
              need(sizes, Role::kElemIn, k.bytes / 2);
              need(sizes, Role::kElemOut, k.bytes / 2);
            } else if constexpr (std::is_same_v<K, sch::Optimizer>) {
              need(sizes, Role::kOptParam, k.params * esz(k.param_dtype));
              need(sizes, Role::kOptGrad, k.params * esz(k.param_dtype));
              need(sizes, Role::kOptMaster, k.params * 4);
              need(sizes, Role::kOptM, k.params * 4);
              need(sizes, Role::kOptV, k.params * 4);
            } else if constexpr (std::is_same_v<K, sch::Memcpy>) {
              need(sizes, Role::kCopyDev, k.bytes);
              if (k.kind == sch::CopyKind::kD2D) need(sizes, Role::kCopyDev2, k.bytes);
              if (k.kind != sch::CopyKind::kD2D) need(sizes, Role::kCopyHost, k.bytes);
            }
          },
          c->kernel);
    } else if (std::holds_alternative<sch::Collective>(op.body) || std::holds_alternative<sch::Send>(op.body) ||
               std::holds_alternative<sch::Recv>(op.body)) {
      const auto cs = comm_sizes(s, op, inst, seq);
      need(sizes, Role::kCommSend, cs.send);
      need(sizes, Role::kCommRecv, cs.recv);
    }
  }
  return sizes;
}

std::string quote_op(const sch::Op& op) { return "op " + std::to_string(op.id) + " \"" + op.name + "\""; }

ncclDataType_t nccl_dtype(sch::DType t) {
  switch (t) {
    case sch::DType::kBF16:
      return ncclBfloat16;
    case sch::DType::kFP16:
      return ncclFloat16;
    case sch::DType::kFP32:
      return ncclFloat32;
    case sch::DType::kFP8:
      return ncclUint8;
    case sch::DType::kInt64:
      return ncclInt64;
    case sch::DType::kInt32:
      return ncclInt32;
  }
  return ncclUint8;
}

std::string kind_word(const sch::Op& op) {
  if (const auto* c = std::get_if<sch::Collective>(&op.body))
    return std::string("collective ") + sch::collective_name(c->kind);
  if (std::holds_alternative<sch::Compute>(op.body)) return "compute";
  if (std::holds_alternative<sch::Send>(op.body)) return "send";
  if (std::holds_alternative<sch::Recv>(op.body)) return "recv";
  if (std::holds_alternative<sch::Host>(op.body)) return "host";
  return "host_sync";
}

bool is_gpu_op(const sch::Op& op) {
  return !std::holds_alternative<sch::Host>(op.body) && !std::holds_alternative<sch::HostSync>(op.body);
}

std::string iso_date_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

Nanos median(std::vector<Nanos> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

std::uint64_t required_device_bytes(const sch::Schedule& schedule, sch::RankId rank) {
  const auto sizes = role_sizes(schedule, rank);
  std::uint64_t total = 0;
  for (std::size_t r = 0; r < kRoles; ++r) {
    if (static_cast<Role>(r) != Role::kCopyHost) total += sizes[r];
  }
  return total + kCublasWorkspaceBytes * std::max<std::size_t>(1, schedule.streams.size());
}

std::vector<sch::Diagnostic> can_execute(const sch::Schedule& s, const DeviceInfo& info) {
  std::vector<sch::Diagnostic> out;
  auto add = [&](sch::OpId op, std::string field, std::string msg) {
    out.push_back(sch::Diagnostic{op, std::move(field), std::move(msg)});
  };
  if (info.device_count < 1) add(sch::kNoOp, "", "no CUDA GPU is visible to this process (check CUDA_VISIBLE_DEVICES)");
  if (info.local_processes > info.device_count && info.device_count > 0) {
    add(sch::kNoOp, "",
        std::to_string(info.local_processes) + " processes on one host share " + std::to_string(info.device_count) +
            " GPUs: start one process per GPU");
  }
  if (s.ranks.size() != s.world_size) {
    add(sch::kNoOp, "ranks",
        "the schedule is reduced (" + std::to_string(s.ranks.size()) + " of " + std::to_string(s.world_size) +
            " ranks present): the backend runs every rank; lower it without rank reduction");
  }
  if (s.world_size > static_cast<std::uint32_t>(info.processes)) {
    add(sch::kNoOp, "world_size",
        "the schedule has " + std::to_string(s.world_size) + " ranks but only " + std::to_string(info.processes) +
            " processes were started: run it under `mpirun -np " + std::to_string(s.world_size) + "`");
  } else if (s.world_size < static_cast<std::uint32_t>(info.processes)) {
    add(sch::kNoOp, "world_size",
        "the schedule has " + std::to_string(s.world_size) + " ranks but " + std::to_string(info.processes) +
            " processes were started: run it under `mpirun -np " + std::to_string(s.world_size) + "`");
  }
  for (std::size_t c = 0; c < s.communicators.size(); ++c) {
    for (auto m : s.communicators[c].members) {
      if (m >= s.world_size) {
        add(sch::kNoOp, "communicators[" + std::to_string(c) + "].members",
            "member " + std::to_string(m) + " is not a rank of the schedule");
      }
    }
  }
  for (const auto& op : s.ops) {
    if (is_gpu_op(op) && op.stream >= s.streams.size()) {
      add(op.id, "stream", "stream " + std::to_string(op.stream) + " is not declared");
    }
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      auto refuse_dtype = [&](sch::DType t, const char* what) {
        if (!kernel_dtype(t)) {
          add(op.id, "body.kernel.dtype",
              std::string(what) + " in " + sch::dtype_name(t) +
                  " is not supported by the backend (bf16, fp16 and fp32 are): lower with --dtype bf16");
        }
      };
      std::visit(
          [&](const auto& k) {
            using K = std::decay_t<decltype(k)>;
            if constexpr (std::is_same_v<K, sch::Gemm> || std::is_same_v<K, sch::GroupedGemm>) {
              refuse_dtype(k.dtype, "a GEMM");
            } else if constexpr (std::is_same_v<K, sch::Attention>) {
              refuse_dtype(k.dtype, "attention");
              if (k.heads_kv == 0 || k.heads_q % k.heads_kv != 0) {
                add(op.id, "body.kernel.heads_kv", "heads_q must be a multiple of heads_kv (grouped-query attention)");
              }
            } else if constexpr (std::is_same_v<K, sch::Optimizer>) {
              refuse_dtype(k.param_dtype, "an optimizer step");
            }
          },
          c->kernel);
    } else if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      if (col->comm >= s.communicators.size()) {
        add(op.id, "body.comm", "communicator " + std::to_string(col->comm) + " does not exist");
        continue;
      }
      const bool reduces =
          col->kind == sch::CollectiveKind::kAllReduce || col->kind == sch::CollectiveKind::kReduceScatter;
      if (reduces && col->dtype == sch::DType::kFP8) {
        add(op.id, "body.dtype", "fp8 reductions are not supported by the backend: reduce in bf16");
      }
      const auto& comm = s.communicators[col->comm];
      if (position(comm, op.rank) < 0) add(op.id, "body.comm", "the op's rank is not a member of " + comm.name);
      if (col->kind == sch::CollectiveKind::kAllToAll && col->send_bytes.size() != comm.members.size()) {
        add(op.id, "body.send_bytes", "all_to_all needs one size per member of " + comm.name);
      }
      if (col->kind == sch::CollectiveKind::kBroadcast && position(comm, col->root) < 0) {
        add(op.id, "body.root", "the broadcast root is not a member of " + comm.name);
      }
    } else if (const auto* snd = std::get_if<sch::Send>(&op.body)) {
      if (snd->comm >= s.communicators.size() || position(s.communicators[snd->comm], snd->peer) < 0) {
        add(op.id, "body.peer", "the peer is not a member of the send's communicator");
      }
    } else if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) {
      if (rcv->comm >= s.communicators.size() || position(s.communicators[rcv->comm], rcv->peer) < 0) {
        add(op.id, "body.peer", "the peer is not a member of the recv's communicator");
      }
    }
  }
  if (out.empty()) {
    for (auto r : s.ranks) {
      const std::uint64_t need_bytes = required_device_bytes(s, r) + kNcclReserveBytes;
      if (need_bytes > info.free_bytes) {
        add(sch::kNoOp, "",
            "rank " + std::to_string(r) + " needs " + format_bytes(static_cast<double>(need_bytes)) +
                " of GPU memory for its buffers (sized by its largest op of each kind, plus NCCL and cuBLAS) but " +
                format_bytes(static_cast<double>(info.free_bytes)) +
                " is free: use a smaller micro-batch or more GPUs");
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Channels: which NCCL communicator each communication op runs on.

namespace {

std::string stream_word(const sch::Schedule& s, sch::OpId id) {
  if (id == sch::kNoOp || id >= s.ops.size() || s.ops[id].stream >= s.streams.size()) return "?";
  return s.streams[s.ops[id].stream].name;
}

std::string members_word(const std::vector<sch::RankId>& members) {
  std::string out = "[";
  for (std::size_t i = 0; i < members.size(); ++i) out += (i == 0 ? "" : ",") + std::to_string(members[i]);
  return out + "]";
}

/// Builds the plan with p2p keys with or without the tag.
ChannelPlan build_channels(const sch::Schedule& s, const sch::Matching& m, const std::vector<bool>& p2p_tagged) {
  ChannelPlan out;
  out.channel_of_op.assign(s.ops.size(), kNoChannel);
  std::map<std::string, std::uint32_t> index;
  auto use = [&](const sch::Op& op, std::string key, std::vector<sch::RankId> members, bool p2p, bool a2a,
                 sch::RankId src = 0, sch::RankId dst = 0) {
    key += " " + members_word(members);
    auto [it, fresh] = index.emplace(key, static_cast<std::uint32_t>(out.channels.size()));
    if (fresh) out.channels.push_back(CommChannel{key, std::move(members), p2p, false, src, dst});
    out.channels[it->second].all_to_all = out.channels[it->second].all_to_all || a2a;
    out.channel_of_op[op.id] = it->second;
  };
  for (const auto& op : s.ops) {
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      if (col->comm >= s.communicators.size()) continue;
      // Keyed by the streams of every member's op of the instance: each rank's ops of one channel lie on one of
      // its streams, so NCCL's issue order on the channel is that stream's FIFO order, which the IR has anyway.
      std::string streams;
      const auto inst = m.instance_of[op.id];
      if (inst < m.collectives.size()) {
        for (auto other : m.collectives[inst].ops) streams += (streams.empty() ? "" : ",") + stream_word(s, other);
      } else {
        streams = stream_word(s, op.id);
      }
      const auto& comm = s.communicators[col->comm];
      use(op, "coll \"" + comm.name + "\" streams " + streams, comm.members, false,
          col->kind == sch::CollectiveKind::kAllToAll);
      continue;
    }
    const auto* snd = std::get_if<sch::Send>(&op.body);
    const auto* rcv = std::get_if<sch::Recv>(&op.body);
    if (snd == nullptr && rcv == nullptr) continue;
    const sch::CommId c = snd != nullptr ? snd->comm : rcv->comm;
    if (c >= s.communicators.size()) continue;
    // Keyed by (communicator, sender, receiver, sender's stream, receiver's stream): a send and its recv share the
    // channel whatever streams they run on; the two directions of an exchange never serialize against each other.
    const sch::OpId partner = m.partner[op.id];
    const sch::RankId src = snd != nullptr ? op.rank : rcv->peer;
    const sch::RankId dst = snd != nullptr ? snd->peer : op.rank;
    const std::string send_stream = snd != nullptr ? stream_word(s, op.id) : stream_word(s, partner);
    const std::string recv_stream = snd != nullptr ? stream_word(s, partner) : stream_word(s, op.id);
    std::string key = "p2p \"" + s.communicators[c].name + "\" " + std::to_string(src) + ">" + std::to_string(dst) +
                      " streams " + send_stream + ">" + recv_stream;
    const std::uint32_t tag = snd != nullptr ? snd->tag : rcv->tag;
    std::vector<sch::RankId> members{std::min(src, dst), std::max(src, dst)};
    if (src == dst) members.pop_back();
    if (p2p_tagged[op.id]) key += " tag " + std::to_string(tag);
    use(op, key, members, true, false, src, dst);
  }
  return out;
}

/// Channels whose sends and recvs, each in program order, are not pairwise partners (NCCL matches by order).
std::vector<bool> misordered_channels(const sch::Schedule& s, const sch::Matching& m, const ChannelPlan& plan) {
  std::vector<std::vector<sch::OpId>> sends(plan.channels.size()), recvs(plan.channels.size());
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    if (ch == kNoChannel || !plan.channels[ch].point_to_point) continue;
    (std::holds_alternative<sch::Send>(op.body) ? sends : recvs)[ch].push_back(op.id);
  }
  std::vector<bool> bad(plan.channels.size(), false);
  for (std::size_t c = 0; c < plan.channels.size(); ++c) {
    bad[c] = sends[c].size() != recvs[c].size();
    for (std::size_t k = 0; k < sends[c].size(); ++k) {
      bad[c] = bad[c] || k >= recvs[c].size() || m.partner[sends[c][k]] != recvs[c][k];
    }
  }
  return bad;
}

}  // namespace

ChannelPlan plan_channels(const sch::Schedule& s) {
  const sch::Matching m = sch::match(s);
  std::vector<bool> tagged(s.ops.size(), false);
  ChannelPlan plan = build_channels(s, m, tagged);
  // The IR matches a recv to a send by (communicator, sender, receiver, tag, order), NCCL by order alone: where
  // tags reorder a channel, its ops get a channel per tag (within one tag the IR's order is NCCL's).
  const auto bad = misordered_channels(s, m, plan);
  bool any = false;
  for (const auto& op : s.ops) {
    const auto ch = plan.channel_of_op[op.id];
    if (ch != kNoChannel && bad[ch]) tagged[op.id] = any = true;
  }
  if (any) plan = build_channels(s, m, tagged);
  return plan;
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

/// Aborts `comms` all at once, one thread each, and waits at most `wait_s` for them. Sequential aborts can hang: an
/// abort frees the communicator's device memory, and a free waits for every kernel of the device, including the
/// hung kernel of a communicator whose abort flag is not set yet. Concurrent aborts set every flag first. Returns
/// whether all finished (those that did not are left running, detached).
bool abort_concurrently(const std::vector<ncclComm_t>& comms, double wait_s) {
  auto left = std::make_shared<std::atomic<int>>(0);
  for (auto c : comms) {
    if (c == nullptr) continue;
    left->fetch_add(1);
    std::thread([c, left] {
      ncclCommAbort(c);
      left->fetch_sub(1);
    }).detach();
  }
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(wait_s));
  while (left->load() > 0 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return left->load() == 0;
}

/// Watchdog: a thread that watches the step deadline and every communicator's asynchronous error. It raises a flag
/// at the deadline; the host thread, which polls it wherever it waits (events, streams, the MPI barrier, host_sync),
/// then names the first unfinished op, aborts the communicators and throws. If the host thread is blocked inside a
/// call (an NCCL call waiting for a peer, a driver call) and has not reacted kStuckGrace_s after the deadline, the
/// watchdog itself prints the rank and the op being issued, aborts the communicators (for at most a second) and
/// ends the process with exit code 1, so that the launcher ends the other ranks. Before, the grace period was the
/// step limit again, so a step limit of 60 s ended a blocked process only after 120 s.
class Watchdog {
 public:
  Watchdog(int device, int rank) : device_(device), rank_(rank), thread_([this] { loop(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(Clock::time_point deadline, std::string what, std::vector<ncclComm_t> comms, double grace_s) {
    std::lock_guard<std::mutex> lock(mu_);
    deadline_ = deadline;
    what_ = std::move(what);
    comms_ = std::move(comms);
    grace_s_ = grace_s;
    armed_ = true;
    fired_.store(false);
    acknowledged_.store(false);
  }
  void set_what(std::string what) {
    std::lock_guard<std::mutex> lock(mu_);
    what_ = std::move(what);
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
  }
  [[nodiscard]] bool fired() const { return fired_.load(std::memory_order_relaxed); }
  [[nodiscard]] std::string reason() {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }
  void acknowledge() { acknowledged_.store(true); }
  /// What the host thread is doing, for the message when it is blocked in a call. Called on the watchdog thread
  /// while the host thread is blocked: it must read only atomics and immutable data, and make no CUDA call.
  void set_blocked_description(std::function<std::string()> f) {
    std::lock_guard<std::mutex> lock(mu_);
    blocked_description_ = std::move(f);
  }

 private:
  void loop() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(5));
      if (stop_ || !armed_) continue;
      const auto now = Clock::now();
      if (!fired_.load()) {
        for (auto c : comms_) {
          ncclResult_t async = ncclSuccess;
          if (c != nullptr && ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess &&
              async != ncclInProgress) {
            reason_ = std::string("NCCL reported an asynchronous error: ") + ncclGetErrorString(async);
            fired_at_ = now;
            fired_.store(true);
            break;
          }
        }
        if (!fired_.load() && now > deadline_) {
          reason_ = what_ + " exceeded its time limit";
          fired_at_ = now;
          fired_.store(true);
        }
      } else if (!acknowledged_.load() && std::chrono::duration<double>(now - fired_at_).count() > grace_s_) {
        // The host thread is stuck inside a call: report, abort (bounded: an abort can itself wait on the blocked
        // call) and leave.
        const std::string where = blocked_description_ ? blocked_description_() : std::string("in a call");
        std::fprintf(stderr,
                     "twinstep: error: rank %d: %s; the issuing thread is blocked %s and did not react within "
                     "%.0f s; aborting the communicators and exiting\n",
                     rank_, reason_.c_str(), where.c_str(), grace_s_);
        std::fflush(stderr);
        (void)abort_concurrently(comms_, 1.0);
        std::_Exit(1);
      }
    }
  }

  int device_;
  int rank_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool armed_ = false;
  Clock::time_point deadline_{};
  Clock::time_point fired_at_{};
  double grace_s_ = 10.0;
  std::string what_;
  std::string reason_;
  std::vector<ncclComm_t> comms_;
  std::function<std::string()> blocked_description_;
  std::atomic<bool> fired_{false};
  std::atomic<bool> acknowledged_{false};
  std::thread thread_;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  std::uint64_t bytes = 0;
  bool host = false;
};

}  // namespace

struct Runtime::Impl {
  MpiGroup mpi;
  int device = 0;
  std::string host;
  ncclComm_t world = nullptr;
  bool broken = false;
  std::map<std::string, ncclComm_t> channels;  // by CommChannel::key; null where this rank is not a member
  void* warm = nullptr;                        // kWarmBytes of device memory for connection warm-up exchanges
  std::vector<cublasHandle_t> blas;            // one per stream, each with its own workspace
  std::vector<void*> blas_ws;
  std::array<DeviceBuffer, kRoles> pool{};
  cudaStream_t aux = nullptr;
  std::unique_ptr<Watchdog> watchdog;
  std::unique_ptr<GpuMonitor> monitor;  // SM clock and power over the measured steps (gpu_monitor.hpp)

  explicit Impl(bool self) : mpi(self) {
    set_error_context_rank(mpi.rank());
    host = host_name();
    int count = 0;
    TWINSTEP_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (count < 1) throw NotFeasibleError("rank " + std::to_string(mpi.rank()) + ": no CUDA GPU is visible");
    device = mpi.local_rank() % count;
    TWINSTEP_CUDA_CHECK(cudaSetDevice(device));
    TWINSTEP_CUDA_CHECK(cudaStreamCreateWithFlags(&aux, cudaStreamNonBlocking));
    ncclUniqueId id{};
    if (mpi.rank() == 0) TWINSTEP_NCCL_CHECK(ncclGetUniqueId(&id));
    mpi.broadcast(&id, sizeof id, 0);
    // Connect every algorithm's transport when a communicator is created, not lazily inside the first collective:
    // a lazy connection blocks the issuing thread until every member reaches the same collective, which would
    // order ops of different channels (see the header). The user's own setting wins.
    setenv("NCCL_RUNTIME_CONNECT", "0", 0);
    TWINSTEP_NCCL_CHECK(ncclCommInitRank(&world, mpi.size(), id, mpi.rank()));
    TWINSTEP_CUDA_CHECK(cudaMalloc(&warm, kWarmBytes));
    watchdog = std::make_unique<Watchdog>(device, mpi.rank());
    monitor = std::make_unique<GpuMonitor>(device);
  }

  ~Impl() {
    watchdog.reset();
    if (broken) return;  // kernels of aborted communicators may never finish: leak rather than hang
    cudaDeviceSynchronize();
    {
      for (auto& [key, c] : channels) {
        if (c != nullptr) ncclCommDestroy(c);
      }
      if (world != nullptr) ncclCommDestroy(world);
    }
    for (std::size_t i = 0; i < blas.size(); ++i) {
      cublasDestroy(blas[i]);
      cudaFree(blas_ws[i]);
    }
    for (auto& b : pool) release(b);
    if (warm != nullptr) cudaFree(warm);
    if (aux != nullptr) cudaStreamDestroy(aux);
  }

  static void release(DeviceBuffer& b) {
    if (b.ptr == nullptr) return;
    if (b.host) {
      cudaFreeHost(b.ptr);
    } else {
      cudaFree(b.ptr);
    }
    b = DeviceBuffer{};
  }

  void* buffer(Role r) { return pool[static_cast<std::size_t>(r)].ptr; }

  void ensure_buffers(const RoleSizes& sizes) {
    for (std::size_t r = 0; r < kRoles; ++r) {
      auto& b = pool[r];
      if (sizes[r] <= b.bytes) continue;
      release(b);
      // Round up to 2 MiB so that sweeps over growing sizes reallocate rarely.
      const std::uint64_t bytes = (sizes[r] + (2ull << 20) - 1) & ~((2ull << 20) - 1);
      b.host = static_cast<Role>(r) == Role::kCopyHost;
      if (b.host) {
        TWINSTEP_CUDA_CHECK(cudaMallocHost(&b.ptr, bytes));
      } else {
        TWINSTEP_CUDA_CHECK(cudaMalloc(&b.ptr, bytes));
        launch_fill_pattern(b.ptr, bytes, static_cast<std::uint32_t>(r * 7919 + 17), aux);
      }
      b.bytes = bytes;
    }
    TWINSTEP_CUDA_CHECK(cudaStreamSynchronize(aux));
  }

  void ensure_blas(std::size_t n) {
    while (blas.size() < n) {
      cublasHandle_t h = nullptr;
      TWINSTEP_CUBLAS_CHECK(cublasCreate(&h));
      void* ws = nullptr;
      TWINSTEP_CUDA_CHECK(cudaMalloc(&ws, kCublasWorkspaceBytes));
      TWINSTEP_CUBLAS_CHECK(cublasSetWorkspace(h, ws, kCublasWorkspaceBytes));
      blas.push_back(h);
      blas_ws.push_back(ws);
    }
  }

  /// Creates the NCCL communicator of every channel of `plan` not created yet, then connects the new ones. Collective
  /// over the group: every rank walks the same list in the same order. Member-disjoint channels share one
  /// ncclCommSplit call (color = index within the round, key = position in the member list, so NCCL rank =
  /// position).
  void ensure_channels(const ChannelPlan& plan) {
    std::vector<std::size_t> todo;  // indices into plan.channels
    for (std::size_t i = 0; i < plan.channels.size(); ++i) {
      if (channels.count(plan.channels[i].key) == 0) todo.push_back(i);
    }
    std::vector<std::vector<std::size_t>> rounds;  // indices into plan.channels
    std::vector<std::vector<bool>> used;
    for (auto i : todo) {
      std::size_t r = 0;
      for (; r < rounds.size(); ++r) {
        bool clash = false;
        for (auto m : plan.channels[i].members) clash = clash || (m < used[r].size() && used[r][m]);
        if (!clash) break;
      }
      if (r == rounds.size()) {
        rounds.emplace_back();
        used.emplace_back(static_cast<std::size_t>(mpi.size()), false);
      }
      rounds[r].push_back(i);
      for (auto m : plan.channels[i].members) {
        if (m < used[r].size()) used[r][m] = true;
      }
    }
    const auto me = static_cast<sch::RankId>(mpi.rank());
    for (const auto& round : rounds) {
      int color = NCCL_SPLIT_NOCOLOR;
      int key = 0;
      std::size_t mine = plan.channels.size();
      for (std::size_t j = 0; j < round.size(); ++j) {
        const auto& members = plan.channels[round[j]].members;
        const auto it = std::find(members.begin(), members.end(), me);
        if (it != members.end()) {
          color = static_cast<int>(j);
          key = static_cast<int>(it - members.begin());
          mine = round[j];
        }
      }
      ncclComm_t out = nullptr;
      TWINSTEP_NCCL_CHECK(ncclCommSplit(world, color, key, &out, nullptr));
      for (auto idx : round) channels[plan.channels[idx].key] = idx == mine ? out : nullptr;
    }
    // Point-to-point connections are always made lazily by NCCL, inside the first send/recv between two ranks, and
    // that call blocks the issuing thread until the peer makes the matching one. Make them here, channel by channel
    // in list order on every rank (the first channel not done yet has all its members at it: no cycle), on one
    // stream, with a small exchange of the same kind as the channel's ops.
    for (auto i : todo) {
      const CommChannel& ch = plan.channels[i];
      ncclComm_t c = channels.at(ch.key);
      if (c == nullptr) continue;
      const auto pos = static_cast<int>(std::find(ch.members.begin(), ch.members.end(), me) - ch.members.begin());
      const int n = static_cast<int>(ch.members.size());
      char* sb = static_cast<char*>(warm);
      char* rb = sb + kWarmBytes / 2;
      if (ch.point_to_point) {
        const bool i_send = ch.src == me;
        const bool i_recv = ch.dst == me;
        const int peer = n == 1 ? 0 : 1 - pos;
        TWINSTEP_NCCL_CHECK(ncclGroupStart());
        if (i_send) TWINSTEP_NCCL_CHECK(ncclSend(sb, kWarmChunk, ncclUint8, peer, c, aux));
        if (i_recv) TWINSTEP_NCCL_CHECK(ncclRecv(rb, kWarmChunk, ncclUint8, peer, c, aux));
        TWINSTEP_NCCL_CHECK(ncclGroupEnd());
        continue;
      }
      TWINSTEP_NCCL_CHECK(ncclAllReduce(sb, rb, kWarmChunk / 4, ncclFloat32, ncclSum, c, aux));
      if (ch.all_to_all) {
        TWINSTEP_NCCL_CHECK(ncclGroupStart());
        for (int j = 0; j < n; ++j) {
          const std::uint64_t off = static_cast<std::uint64_t>(j % kWarmPeers) * kWarmChunk;
          TWINSTEP_NCCL_CHECK(ncclSend(sb + off, kWarmChunk, ncclUint8, j, c, aux));
          TWINSTEP_NCCL_CHECK(ncclRecv(rb + off, kWarmChunk, ncclUint8, j, c, aux));
        }
        TWINSTEP_NCCL_CHECK(ncclGroupEnd());
      }
    }
  }

  std::vector<ncclComm_t> all_comms() const {
    std::vector<ncclComm_t> out{world};
    for (const auto& [k, c] : channels) {
      if (c != nullptr) out.push_back(c);
    }
    return out;
  }

  void abort_all() {
    if (broken) return;
    broken = true;
    (void)abort_concurrently(all_comms(), kAbortWait_s);
  }
};

Runtime::Runtime(ProcessGroup group) : impl_(std::make_unique<Impl>(group == ProcessGroup::kSelf)) {}
Runtime::~Runtime() = default;
int Runtime::rank() const { return impl_->mpi.rank(); }
int Runtime::size() const { return impl_->mpi.size(); }

DeviceInfo Runtime::device_info() {
  DeviceInfo info;
  info.processes = impl_->mpi.size();
  info.local_processes = static_cast<int>(impl_->mpi.all_max(static_cast<std::uint64_t>(impl_->mpi.local_size())));
  TWINSTEP_CUDA_CHECK(cudaGetDeviceCount(&info.device_count));
  std::size_t free_b = 0, total_b = 0;
  TWINSTEP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  std::uint64_t held = 0;
  for (const auto& b : impl_->pool) {
    if (!b.host) held += b.bytes;
  }
  info.free_bytes = impl_->mpi.all_min(free_b + held);
  cudaDeviceProp prop{};
  TWINSTEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, impl_->device));
  info.gpu_name = prop.name;
  return info;
}

// ---------------------------------------------------------------------------------------------------------------
// The per-rank plan and the issue loop.

namespace {

struct PlannedOp {
  const sch::Op* op = nullptr;
  bool gpu = false;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cudaEvent_t start = nullptr, end = nullptr;
  std::vector<cudaEvent_t> dep_events;
  ncclComm_t comm = nullptr;
  int peer = 0;  // NCCL rank of send/recv peer, broadcast root
  int comm_size = 1;
  CommSizes sizes;
  std::vector<GemmCall> gemms;  // GEMM and grouped-GEMM ops
  AttentionCalls attention;     // attention ops
  std::size_t host_sync_index = 0;
};

}  // namespace

sch::Trace Runtime::execute(const sch::Schedule& s, const Options& options) {
  Impl& im = *impl_;
  if (im.broken) {
    throw BackendError("watchdog", 0, rank(),
                       "rank " + std::to_string(rank()) +
                           ": the communicators were aborted after an earlier failure; start a new run");
  }
  const DeviceInfo info = device_info();
  if (const auto diags = can_execute(s, info); !diags.empty()) {
    std::string msg = "the backend cannot execute schedule \"" + s.name + "\":";
    for (const auto& d : diags) {
      msg += "\n  ";
      if (d.op != sch::kNoOp) msg += quote_op(s.ops[d.op]) + " ";
      if (!d.field.empty()) msg += d.field + ": ";
      msg += d.message;
    }
    throw NotFeasibleError(msg);
  }
  TWINSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  const auto me = static_cast<sch::RankId>(rank());
  // Whatever way execute() is left, the watchdog stops watching and forgets this call's state.
  struct Disarm {
    Watchdog& w;
    ~Disarm() {
      w.disarm();
      w.set_blocked_description(nullptr);
    }
  } disarm_on_exit{*im.watchdog};

  // ---- resources ----
  // Communicators are created and connected under the watchdog: a peer that never arrives is caught here too.
  const ChannelPlan channel_plan = plan_channels(s);
  im.watchdog->arm(
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.timeout_s)),
      "creating and connecting the NCCL communicators", im.all_comms(), kStuckGrace_s);
  im.watchdog->set_blocked_description(
      [] { return std::string("in ncclCommSplit or a connection warm-up exchange (before the first step)"); });
  im.ensure_channels(channel_plan);
  while (true) {
    const cudaError_t q = cudaStreamQuery(im.aux);
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(q);
    if (im.watchdog->fired()) {
      im.watchdog->acknowledge();
      const std::string msg = "rank " + std::to_string(rank()) + " (" + im.host + "): " + im.watchdog->reason() +
                              " (a connection warm-up exchange did not complete); communicators aborted";
      im.abort_all();
      throw BackendError("watchdog", 0, rank(), msg);
    }
    std::this_thread::yield();
  }
  im.watchdog->disarm();
  im.ensure_buffers(role_sizes(s, me));
  im.ensure_blas(std::max<std::size_t>(1, s.streams.size()));
  int least = 0, greatest = 0;
  TWINSTEP_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  std::vector<cudaStream_t> streams(s.streams.size(), nullptr);
  for (std::size_t i = 0; i < s.streams.size(); ++i) {
    // IR priority: lower is more urgent, 0 default (the CUDA convention); clamp to the device range [greatest, least].
    const int prio = std::clamp(s.streams[i].priority, greatest, least);
    TWINSTEP_CUDA_CHECK(cudaStreamCreateWithPriority(&streams[i], cudaStreamNonBlocking, prio));
    TWINSTEP_CUBLAS_CHECK(cublasSetStream(im.blas[i], streams[i]));
  }
  cudaEvent_t origin = nullptr;
  TWINSTEP_CUDA_CHECK(cudaEventCreate(&origin));

  // ---- plan ----
  const auto inst = match_collectives(s);
  const auto seq = collective_seq(s);
  std::vector<PlannedOp> plan;
  std::vector<std::int64_t> index_of(s.ops.size(), -1);
  for (const auto& op : s.ops) {
    if (op.rank != me) continue;
    index_of[op.id] = static_cast<std::int64_t>(plan.size());
    PlannedOp p;
    p.op = &op;
    p.gpu = is_gpu_op(op);
    if (p.gpu) {
      p.stream = streams[op.stream];
      p.blas = im.blas[op.stream];
      TWINSTEP_CUDA_CHECK(cudaEventCreate(&p.start));
      TWINSTEP_CUDA_CHECK(cudaEventCreate(&p.end));
    }
    plan.push_back(std::move(p));
  }
  for (auto& p : plan) {
    const sch::Op& op = *p.op;
    if (p.gpu) {
      for (auto d : op.deps) {
        if (d < index_of.size() && index_of[d] >= 0 && plan[static_cast<std::size_t>(index_of[d])].gpu) {
          p.dep_events.push_back(plan[static_cast<std::size_t>(index_of[d])].end);
        }
      }
    }
    if (const auto* hs = std::get_if<sch::HostSync>(&op.body)) {
      TWINSTEP_ASSERT(hs->target < index_of.size() && index_of[hs->target] >= 0, "host_sync target of another rank");
      p.host_sync_index = static_cast<std::size_t>(index_of[hs->target]);
    }
    // The op's channel: a copy of its IR communicator (collectives; NCCL rank = position in the IR member list)
    // or the {sender, receiver} pair (send/recv; NCCL rank = position in the pair, ascending).
    const CommChannel* channel = nullptr;
    auto set_comm = [&](sch::CommId) {
      const auto ch = channel_plan.channel_of_op[op.id];
      TWINSTEP_ASSERT(ch != kNoChannel, "communication op without a channel");
      channel = &channel_plan.channels[ch];
      p.comm = im.channels.at(channel->key);
      p.comm_size = static_cast<int>(channel->members.size());
    };
    auto channel_rank = [&](sch::RankId r) {
      const auto it = std::find(channel->members.begin(), channel->members.end(), r);
      return static_cast<int>(it - channel->members.begin());
    };
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      set_comm(col->comm);
      p.sizes = comm_sizes(s, op, inst, seq);
      if (col->kind == sch::CollectiveKind::kBroadcast) p.peer = position(s.communicators[col->comm], col->root);
    } else if (const auto* snd = std::get_if<sch::Send>(&op.body)) {
      set_comm(snd->comm);
      p.sizes = comm_sizes(s, op, inst, seq);
      p.peer = channel_rank(snd->peer);
    } else if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) {
      set_comm(rcv->comm);
      p.sizes = comm_sizes(s, op, inst, seq);
      p.peer = channel_rank(rcv->peer);
    } else if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      if (const auto* g = std::get_if<sch::Gemm>(&c->kernel)) {
        p.gemms.push_back(plain_gemm(g->m, g->n, g->k, false, false, im.buffer(Role::kGemmA), im.buffer(Role::kGemmB),
                                     im.buffer(Role::kGemmC), g->batch, cuda_dtype(g->dtype)));
      } else if (const auto* gg = std::get_if<sch::GroupedGemm>(&c->kernel)) {
        // A loop of GEMMs over the groups, each on its own slice of A, B and C.
        const std::uint64_t e = esz(gg->dtype);
        std::uint64_t row = 0;
        for (std::size_t i = 0; i < gg->m.size(); ++i) {
          const auto* a = static_cast<const char*>(im.buffer(Role::kGemmA)) + row * gg->k * e;
          const auto* b = static_cast<const char*>(im.buffer(Role::kGemmB)) + i * gg->k * gg->n * e;
          auto* cc = static_cast<char*>(im.buffer(Role::kGemmC)) + row * gg->n * e;
          if (gg->m[i] > 0)
            p.gemms.push_back(plain_gemm(gg->m[i], gg->n, gg->k, false, false, a, b, cc, 1, cuda_dtype(gg->dtype)));
          row += gg->m[i];
        }
      } else if (const auto* at = std::get_if<sch::Attention>(&c->kernel)) {
        AttentionBuffers ab;
        ab.q = im.buffer(Role::kAttnQ);
        ab.k = im.buffer(Role::kAttnK);
        ab.v = im.buffer(Role::kAttnV);
        ab.s = im.buffer(Role::kAttnS);
        ab.o = im.buffer(Role::kAttnO);
        ab.dout = im.buffer(Role::kAttnDO);
        p.attention = attention_calls(*at, ab);
      }
    }
  }

  // ---- watchdog bookkeeping ----
  std::atomic<std::size_t> issued{0};
  int current_step = -1;
  auto describe_unfinished = [&]() -> std::string {
    const std::size_t n_issued = issued.load();
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const auto& p = plan[i];
      bool done = i < n_issued;
      if (done && p.gpu) done = cudaEventQuery(p.end) == cudaSuccess;
      if (done) continue;
      std::string where = p.gpu ? "stream \"" + s.streams[p.op->stream].name + "\"" : std::string("host thread");
      std::string state = i < n_issued ? "issued, not complete" : "not issued yet";
      if (i == n_issued && std::holds_alternative<sch::HostSync>(p.op->body)) state = "host thread blocked in it";
      return "first unfinished op: " + quote_op(*p.op) + " (" + kind_word(*p.op) + ", " + where + ", " + state + ")";
    }
    return "all its ops of the step finished; it was waiting for the other ranks at the step barrier";
  };
  auto poll = [&]() {
    if (!im.watchdog->fired()) return;
    im.watchdog->acknowledge();
    const std::string msg = "rank " + std::to_string(rank()) + " (" + im.host + "): " + im.watchdog->reason() + "; " +
                            describe_unfinished() + "; communicators aborted";
    im.abort_all();
    throw BackendError("watchdog", 0, rank(), msg);
  };
  auto wait_event = [&](cudaEvent_t ev) {
    while (true) {
      const cudaError_t st = cudaEventQuery(ev);
      if (st == cudaSuccess) return;
      if (st != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(st);
      poll();
    }
  };
  auto wait_streams = [&]() {
    for (auto st : streams) {
      while (true) {
        const cudaError_t q = cudaStreamQuery(st);
        if (q == cudaSuccess) break;
        if (q != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(q);
        poll();
        std::this_thread::yield();
      }
    }
  };

  const int total_steps = std::max(0, options.warmup_steps) + std::max(1, options.steps);
  const double grace_s = kStuckGrace_s;
  im.watchdog->set_blocked_description([&plan, &issued, &s]() -> std::string {
    const std::size_t i = issued.load();
    if (i >= plan.size()) return "between steps (MPI barrier or stream wait)";
    const sch::Op& op = *plan[i].op;
    std::string where = plan[i].gpu ? "stream \"" + s.streams[op.stream].name + "\"" : std::string("host thread");
    return "while issuing " + quote_op(op) + " (" + kind_word(op) + ", " + where + ")";
  });
  std::vector<std::vector<Nanos>> issue_ns(plan.size()), start_ns(plan.size()), end_ns(plan.size());
  std::vector<std::int64_t> step_bounds;  // per measured step: min issue, max end (this rank)
  const std::vector<ncclComm_t> comms = im.all_comms();
  std::vector<std::pair<const sch::Op*, OpBuffers>> deferred_after;  // hook->after() calls at the step's end

  // The GPU monitor samples during the measured steps' GPU work only (from the origin to the streams' drain).
  struct StopMonitor {
    GpuMonitor& m;
    ~StopMonitor() { (void)m.stop(); }
  } stop_monitor_on_exit{*im.monitor};
  im.monitor->start();
  for (int step = 0; step < total_steps; ++step) {
    current_step = step;
    const bool measured = step >= options.warmup_steps;
    const std::string step_word = "step " + std::to_string(step) + (measured ? "" : " (warm-up)");
    // The deadline covers the barrier too, so a rank whose peers hang in the previous step is caught here.
    im.watchdog->arm(
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.timeout_s)),
        step_word, comms, grace_s);
    issued.store(plan.size());  // during the barrier every op of the previous step is done
    im.mpi.barrier(poll);
    issued.store(0);
    TWINSTEP_CUDA_CHECK(cudaEventRecord(origin, im.aux));
    for (auto st : streams) TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(st, origin, 0));
    wait_event(origin);
    const auto t0 = Clock::now();
    im.monitor->record(measured);
    auto host_ns = [&t0]() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count(); };
    std::vector<Nanos> h_issue(plan.size(), 0), h_start(plan.size(), 0), h_end(plan.size(), 0);

    for (std::size_t i = 0; i < plan.size(); ++i) {
      PlannedOp& p = plan[i];
      const sch::Op& op = *p.op;
      if (im.watchdog->fired()) poll();
      h_issue[i] = host_ns();
      OpBuffers bufs{im.buffer(Role::kCommSend), im.buffer(Role::kCommRecv), p.sizes.send, p.sizes.recv};
      const bool hooked = options.hook != nullptr && p.gpu && !std::holds_alternative<sch::Compute>(op.body);
      const bool serial = hooked && options.hook->serialize();
      if (serial) TWINSTEP_CUDA_CHECK(cudaStreamSynchronize(p.stream));
      if (hooked) options.hook->before(op, bufs);
      if (hooked && !serial) deferred_after.emplace_back(&op, bufs);
      if (p.gpu) {
        for (auto ev : p.dep_events) TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(p.stream, ev, 0));
        TWINSTEP_CUDA_CHECK(cudaEventRecord(p.start, p.stream));
      }
      std::visit(
          [&](const auto& body) {
            using B = std::decay_t<decltype(body)>;
            if constexpr (std::is_same_v<B, sch::Compute>) {
              std::visit(
                  [&](const auto& k) {
                    using K = std::decay_t<decltype(k)>;
                    if constexpr (std::is_same_v<K, sch::Gemm> || std::is_same_v<K, sch::GroupedGemm>) {
                      for (const auto& g : p.gemms) run_gemm(p.blas, g);
                    } else if constexpr (std::is_same_v<K, sch::Attention>) {
                      run_attention(p.blas, p.stream, p.attention);
                    } else if constexpr (std::is_same_v<K, sch::Elementwise>) {
                      launch_elementwise(im.buffer(Role::kElemIn), im.buffer(Role::kElemOut), k.bytes / 2, 132,
                                         p.stream);
                    } else if constexpr (std::is_same_v<K, sch::Optimizer>) {
                      launch_adam(im.buffer(Role::kOptParam), static_cast<float*>(im.buffer(Role::kOptMaster)),
                                  im.buffer(Role::kOptGrad), static_cast<float*>(im.buffer(Role::kOptM)),
                                  static_cast<float*>(im.buffer(Role::kOptV)), k.params, *kernel_dtype(k.param_dtype),
                                  132, p.stream);
                    } else if constexpr (std::is_same_v<K, sch::Memcpy>) {
                      if (k.bytes == 0) return;
                      switch (k.kind) {
                        case sch::CopyKind::kD2H:
                          TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im.buffer(Role::kCopyHost), im.buffer(Role::kCopyDev),
                                                              k.bytes, cudaMemcpyDeviceToHost, p.stream));
                          break;
                        case sch::CopyKind::kH2D:
                          TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im.buffer(Role::kCopyDev), im.buffer(Role::kCopyHost),
                                                              k.bytes, cudaMemcpyHostToDevice, p.stream));
                          break;
                        case sch::CopyKind::kD2D:
                          TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im.buffer(Role::kCopyDev2), im.buffer(Role::kCopyDev),
                                                              k.bytes, cudaMemcpyDeviceToDevice, p.stream));
                          break;
                      }
                    }
                  },
                  body.kernel);
            } else if constexpr (std::is_same_v<B, sch::Collective>) {
              void* sb = im.buffer(Role::kCommSend);
              void* rb = im.buffer(Role::kCommRecv);
              const ncclDataType_t dt = nccl_dtype(body.dtype);
              const std::uint64_t e = esz(body.dtype);
              switch (body.kind) {
                case sch::CollectiveKind::kAllReduce:
                  TWINSTEP_NCCL_CHECK(ncclAllReduce(sb, rb, p.sizes.send / e, dt, ncclSum, p.comm, p.stream));
                  break;
                case sch::CollectiveKind::kAllGather:
                  TWINSTEP_NCCL_CHECK(ncclAllGather(sb, rb, p.sizes.send / e, dt, p.comm, p.stream));
                  break;
                case sch::CollectiveKind::kReduceScatter:
                  TWINSTEP_NCCL_CHECK(ncclReduceScatter(sb, rb, p.sizes.recv / e, dt, ncclSum, p.comm, p.stream));
                  break;
                case sch::CollectiveKind::kBroadcast:
                  TWINSTEP_NCCL_CHECK(ncclBroadcast(sb, rb, p.sizes.send / e, dt, p.peer, p.comm, p.stream));
                  break;
                case sch::CollectiveKind::kAllToAll: {
                  // Per-peer sizes in bytes: sends packed by member position, receives likewise.
                  std::uint64_t so = 0, ro = 0;
                  TWINSTEP_NCCL_CHECK(ncclGroupStart());
                  for (int j = 0; j < p.comm_size; ++j) {
                    const std::uint64_t sn = body.send_bytes[static_cast<std::size_t>(j)];
                    const std::uint64_t rn = p.sizes.a2a_recv[static_cast<std::size_t>(j)];
                    if (sn > 0)
                      TWINSTEP_NCCL_CHECK(ncclSend(static_cast<char*>(sb) + so, sn, ncclUint8, j, p.comm, p.stream));
                    if (rn > 0)
                      TWINSTEP_NCCL_CHECK(ncclRecv(static_cast<char*>(rb) + ro, rn, ncclUint8, j, p.comm, p.stream));
                    so += sn;
                    ro += rn;
                  }
                  TWINSTEP_NCCL_CHECK(ncclGroupEnd());
                  break;
                }
              }
            } else if constexpr (std::is_same_v<B, sch::Send>) {
              TWINSTEP_NCCL_CHECK(
                  ncclSend(im.buffer(Role::kCommSend), body.bytes, ncclUint8, p.peer, p.comm, p.stream));
            } else if constexpr (std::is_same_v<B, sch::Recv>) {
              TWINSTEP_NCCL_CHECK(
                  ncclRecv(im.buffer(Role::kCommRecv), body.bytes, ncclUint8, p.peer, p.comm, p.stream));
            } else if constexpr (std::is_same_v<B, sch::Host>) {
              h_start[i] = host_ns();
              const auto until = Clock::now() + std::chrono::nanoseconds(body.duration_ns);
              while (Clock::now() < until) {
              }
              h_end[i] = host_ns();
            } else if constexpr (std::is_same_v<B, sch::HostSync>) {
              h_start[i] = host_ns();
              wait_event(plan[p.host_sync_index].end);
              h_end[i] = host_ns();
            }
          },
          op.body);
      if (p.gpu) TWINSTEP_CUDA_CHECK(cudaEventRecord(p.end, p.stream));
      if (serial) {
        wait_event(p.end);
        options.hook->after(op, bufs);
      }
      issued.store(i + 1, std::memory_order_relaxed);
    }
    wait_streams();
    im.monitor->record(false);
    im.watchdog->disarm();
    for (const auto& [hop, hbufs] : deferred_after) options.hook->after(*hop, hbufs);
    deferred_after.clear();

    if (!measured) continue;
    Nanos lo = INT64_MAX, hi = 0;
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const auto& p = plan[i];
      Nanos st = h_start[i], en = h_end[i];
      if (p.gpu) {
        float ms_start = 0, ms_end = 0;
        TWINSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms_start, origin, p.start));
        TWINSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms_end, origin, p.end));
        st = static_cast<Nanos>(static_cast<double>(ms_start) * 1e6);
        en = static_cast<Nanos>(static_cast<double>(ms_end) * 1e6);
      }
      issue_ns[i].push_back(h_issue[i]);
      start_ns[i].push_back(st);
      end_ns[i].push_back(en);
      lo = std::min(lo, h_issue[i]);
      hi = std::max(hi, en);
    }
    if (plan.empty()) lo = 0;
    step_bounds.push_back(lo);
    step_bounds.push_back(hi);
  }
  (void)current_step;
  // A final barrier under the watchdog: a rank whose peers hang in the last step is caught here, not in MPI.
  im.watchdog->arm(
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.timeout_s)),
      "the barrier after the last step", comms, grace_s);
  issued.store(plan.size());
  im.mpi.barrier(poll);
  im.watchdog->disarm();

  // ---- cleanup of per-run resources ----
  for (auto& p : plan) {
    if (p.start != nullptr) cudaEventDestroy(p.start);
    if (p.end != nullptr) cudaEventDestroy(p.end);
  }
  cudaEventDestroy(origin);
  for (auto st : streams) cudaStreamDestroy(st);

  // ---- per-op medians, gathered on every rank ----
  std::vector<std::int64_t> mine;
  mine.reserve(plan.size() * 4);
  for (std::size_t i = 0; i < plan.size(); ++i) {
    // Separate medians of issue, start and end: an order that holds in every step (a dep, stream FIFO, end after
    // start) holds between the medians too, which a median duration added to a median start would not guarantee.
    mine.push_back(plan[i].op->id);
    mine.push_back(median(issue_ns[i]));
    mine.push_back(median(start_ns[i]));
    mine.push_back(median(end_ns[i]));
  }
  const auto all = im.mpi.all_gather(mine);
  const auto bounds = im.mpi.all_gather(step_bounds);
  const auto hosts = im.mpi.all_gather(im.host);
  const auto monitor_reports = im.mpi.all_gather(encode_report(im.monitor->stop()));

  sch::Trace trace;
  trace.producer = "backend";
  trace.schedule = s;
  trace.records.resize(s.ops.size());
  for (std::size_t i = 0; i + 3 < all.size(); i += 4) {
    const auto id = static_cast<std::size_t>(all[i]);
    auto& r = trace.records[id];
    r.op = static_cast<sch::OpId>(id);
    r.rank = s.ops[id].rank;
    r.issue_ns = all[i + 1];
    r.start_ns = all[i + 2];
    r.end_ns = all[i + 3];
  }
  const std::size_t nsteps = step_bounds.size() / 2;
  for (std::size_t k = 0; k < nsteps; ++k) {
    Nanos lo = INT64_MAX, hi = 0;
    for (std::size_t r = 0; r + 1 < bounds.size(); r += 2 * nsteps) {
      lo = std::min(lo, bounds[r + 2 * k]);
      hi = std::max(hi, bounds[r + 2 * k + 1]);
    }
    trace.step_times_ns.push_back(hi - lo);
  }

  // ---- context ----
  cudaDeviceProp prop{};
  TWINSTEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, im.device));
  int driver = 0, runtime = 0, nccl = 0;
  TWINSTEP_CUDA_CHECK(cudaDriverGetVersion(&driver));
  TWINSTEP_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  TWINSTEP_NCCL_CHECK(ncclGetVersion(&nccl));
  std::string host_list;
  for (const auto& h : hosts) host_list += (host_list.empty() ? "" : ",") + h;
  auto& ctx = trace.context;
  ctx["producer"] = "backend";
  ctx["gpu"] = prop.name;
  ctx["gpu_count"] = std::to_string(size());
  ctx["cuda_driver"] = std::to_string(driver / 1000) + "." + std::to_string((driver % 1000) / 10);
  ctx["cuda_runtime"] = std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
  ctx["nccl"] =
      std::to_string(nccl / 10000) + "." + std::to_string((nccl % 10000) / 100) + "." + std::to_string(nccl % 100);
  int cublas_major = 0, cublas_minor = 0, cublas_patch = 0;
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &cublas_major));
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &cublas_minor));
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &cublas_patch));
  ctx["cublas"] =
      std::to_string(cublas_major) + "." + std::to_string(cublas_minor) + "." + std::to_string(cublas_patch);
  ctx["hosts"] = host_list;
  ctx["git_revision"] = TWINSTEP_GIT_REVISION;
  ctx["date"] = iso_date_utc();
  ctx["warmup_steps"] = std::to_string(options.warmup_steps);
  ctx["steps"] = std::to_string(std::max(1, options.steps));
  ctx["timing"] =
      "per op: medians over measured steps of issue, start and end separately; GPU ops timed by "
      "cudaEvents recorded on the op's stream around it; host ops by steady_clock";
  std::vector<GpuMonitorReport> per_rank;
  for (const auto& text : monitor_reports) per_rank.push_back(decode_report(text));
  write_monitor_context(per_rank, ctx);
  ctx["clock_alignment"] =
      "per step: barrier, origin event on every stream; device times relative to the origin event, host times "
      "relative to the first host instant the origin was seen complete (offset <= polling latency, few us)";
  return trace;
}

}  // namespace twinstep::backend
