// Host-only planning of a backend run (plan.hpp): feasibility, buffer sizes and each rank's issue plan.
#include "backend/plan.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "backend/attention.hpp"
#include "backend/gemm.hpp"
#include "backend/peer_memory.hpp"
#include "backend/sdpa.hpp"
#include "common/assert.hpp"
#include "common/units.hpp"
#include "schedule/json.hpp"

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

void need(RoleSizes& s, Role r, std::uint64_t bytes) {
  auto& v = s[static_cast<std::size_t>(r)];
  v = std::max(v, bytes);
}

std::uint64_t esz(sch::DType t) { return sch::dtype_bytes(t); }
std::uint64_t out_esz(sch::DType t) { return sch::gemm_output_bytes(t); }

/// Attention buffers of the kernel that runs `a` (attention_kernel()): the fused one's (sdpa.hpp: Q, O, dO, dQ;
/// K, V, dK, dV; the row statistics) or the fallback's (attention.hpp: Q, O, dO; K, V; the scores S).
void attention_sizes(const sch::Attention& a, RoleSizes& s) {
  if (attention_kernel(a) == AttentionKernel::kCudnnSdpa) {
    const SdpaBufferBytes b = sdpa_buffer_bytes(a);
    for (Role r : {Role::kAttnQ, Role::kAttnO}) need(s, r, b.q);
    for (Role r : {Role::kAttnK, Role::kAttnV}) need(s, r, b.kv);
    need(s, Role::kAttnStats, b.stats);
    if (a.backward) {
      for (Role r : {Role::kAttnDO, Role::kAttnDQ}) need(s, r, b.q);
      for (Role r : {Role::kAttnDK, Role::kAttnDV}) need(s, r, b.kv);
    }
    return;
  }
  const AttentionBufferBytes b = attention_buffer_bytes(a);
  need(s, Role::kAttnQ, b.q);
  need(s, Role::kAttnO, b.q);
  need(s, Role::kAttnK, b.k);
  need(s, Role::kAttnV, b.k);
  need(s, Role::kAttnS, b.s);
  if (a.backward) need(s, Role::kAttnDO, b.q);
}

void kernel_sizes(const sch::Kernel& kernel, RoleSizes& sizes) {
  std::visit(
      [&](const auto& k) {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, sch::Gemm>) {
          need(sizes, Role::kGemmA, k.batch * k.m * k.k * esz(k.dtype));
          need(sizes, Role::kGemmB, k.batch * k.k * k.n * esz(k.dtype));
          need(sizes, Role::kGemmC, k.batch * k.m * k.n * out_esz(k.dtype));
        } else if constexpr (std::is_same_v<K, sch::GroupedGemm>) {
          std::uint64_t rows = 0;
          for (auto m : k.m) rows += m;
          need(sizes, Role::kGemmA, rows * k.k * esz(k.dtype));
          need(sizes, Role::kGemmB, k.m.size() * k.k * k.n * esz(k.dtype));
          need(sizes, Role::kGemmC, rows * k.n * out_esz(k.dtype));
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
      kernel);
}

bool is_comm(const sch::Op& op) {
  return std::holds_alternative<sch::Collective>(op.body) || std::holds_alternative<sch::Send>(op.body) ||
         std::holds_alternative<sch::Recv>(op.body);
}

bool is_gpu_op(const sch::Op& op) {
  return !std::holds_alternative<sch::Host>(op.body) && !std::holds_alternative<sch::HostSync>(op.body);
}

/// A send/recv over peer-mapped memory (copy_engine, sm_kernel): no NCCL channel; a recv lands in a peer slot.
bool is_peer_mapped(const sch::Op& op) {
  if (const auto* snd = std::get_if<sch::Send>(&op.body)) return snd->transport != sch::Transport::kNccl;
  if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) return rcv->transport != sch::Transport::kNccl;
  return false;
}

std::uint64_t required_bytes(const sch::Schedule& s, const sch::Matching& m, const PeerLayout& peers,
                             sch::RankId rank) {
  const auto sizes = role_sizes(s, m, rank);
  std::uint64_t total = 0;
  for (std::size_t r = 0; r < kRoles; ++r) {
    if (static_cast<Role>(r) != Role::kCopyHost) total += sizes[r];
  }
  const std::uint64_t peer_bytes = rank < peers.rank_bytes.size() ? peers.rank_bytes[rank] : 0;
  return total + peer_bytes + kCublasWorkspaceBytes * std::max<std::size_t>(1, s.streams.size());
}

using Diagnostics = std::vector<sch::Diagnostic>;

void add(Diagnostics& out, sch::OpId op, std::string field, std::string message) {
  out.push_back(sch::Diagnostic{op, std::move(field), std::move(message)});
}

/// Processes and GPUs against the schedule's ranks and communicators.
void check_processes(const sch::Schedule& s, const DeviceInfo& info, Diagnostics& out) {
  if (info.device_count < 1)
    add(out, sch::kNoOp, "", "no CUDA GPU is visible to this process (check CUDA_VISIBLE_DEVICES)");
  // NCCL refuses two ranks of a communicator on one GPU; peer-mapped send/recv (CUDA IPC) do not mind.
  if (info.local_processes > info.device_count && info.device_count > 0 && uses_nccl(s)) {
    add(out, sch::kNoOp, "",
        std::to_string(info.local_processes) + " processes on one host share " + std::to_string(info.device_count) +
            " GPUs: start one process per GPU (ranks may share a GPU only when the schedule has no NCCL op: no "
            "collective, every send/recv copy_engine or sm_kernel)");
  }
  if (s.ranks.size() != s.world_size) {
    add(out, sch::kNoOp, "ranks",
        "the schedule is reduced (" + std::to_string(s.ranks.size()) + " of " + std::to_string(s.world_size) +
            " ranks present): the backend runs every rank; lower it without rank reduction");
  }
  if (s.world_size > static_cast<std::uint32_t>(info.processes)) {
    add(out, sch::kNoOp, "world_size",
        "the schedule has " + std::to_string(s.world_size) + " ranks but only " + std::to_string(info.processes) +
            " processes were started: run it under `mpirun -np " + std::to_string(s.world_size) + "`");
  } else if (s.world_size < static_cast<std::uint32_t>(info.processes)) {
    add(out, sch::kNoOp, "world_size",
        "the schedule has " + std::to_string(s.world_size) + " ranks but " + std::to_string(info.processes) +
            " processes were started: run it under `mpirun -np " + std::to_string(s.world_size) + "`");
  }
  for (std::size_t c = 0; c < s.communicators.size(); ++c) {
    for (auto m : s.communicators[c].members) {
      if (m >= s.world_size) {
        add(out, sch::kNoOp, "communicators[" + std::to_string(c) + "].members",
            "member " + std::to_string(m) + " is not a rank of the schedule");
      }
    }
  }
}

/// Kernels and dtypes the backend implements.
void check_compute(const sch::Op& op, const sch::Compute& c, Diagnostics& out) {
  auto refuse_dtype = [&](sch::DType t, const char* what) {
    if (!kernel_dtype(t)) {
      add(out, op.id, "body.kernel.dtype",
          std::string(what) + " in " + sch::dtype_name(t) +
              " is not supported by the backend (bf16, fp16 and fp32 are): lower with --dtype bf16");
    }
  };
  std::visit(
      [&](const auto& k) {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, sch::Gemm> || std::is_same_v<K, sch::GroupedGemm>) {
          if (k.dtype != sch::DType::kFP8) refuse_dtype(k.dtype, "a GEMM");  // fp8: cuBLASLt (gemm_fp8.hpp)
          if (k.dtype == sch::DType::kFP8 && k.a_format == sch::Fp8Format::kE5M2 &&
              k.b_format == sch::Fp8Format::kE5M2) {
            add(out, op.id, "body.kernel.b_format", "an fp8 GEMM of two e5m2 operands has no kernel: make one e4m3");
          }
        } else if constexpr (std::is_same_v<K, sch::Attention>) {
          refuse_dtype(k.dtype, "attention");
          if (k.heads_kv == 0 || k.heads_q % k.heads_kv != 0) {
            add(out, op.id, "body.kernel.heads_kv", "heads_q must be a multiple of heads_kv (grouped-query attention)");
          }
        } else if constexpr (std::is_same_v<K, sch::Optimizer>) {
          refuse_dtype(k.param_dtype, "an optimizer step");
        }
      },
      c.kernel);
}

/// Communicators, members and peers of a communication op.
void check_comm(const sch::Schedule& s, const sch::Op& op, Diagnostics& out) {
  if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
    if (col->comm >= s.communicators.size()) {
      add(out, op.id, "body.comm", "communicator " + std::to_string(col->comm) + " does not exist");
      return;
    }
    const bool reduces =
        col->kind == sch::CollectiveKind::kAllReduce || col->kind == sch::CollectiveKind::kReduceScatter;
    if (reduces && col->dtype == sch::DType::kFP8) {
      add(out, op.id, "body.dtype", "fp8 reductions are not supported by the backend: reduce in bf16");
    }
    const auto& comm = s.communicators[col->comm];
    if (sch::rank_in(comm, op.rank) < 0) add(out, op.id, "body.comm", "the op's rank is not a member of " + comm.name);
    if (col->kind == sch::CollectiveKind::kAllToAll && col->send_bytes.size() != comm.members.size()) {
      add(out, op.id, "body.send_bytes", "all_to_all needs one size per member of " + comm.name);
    }
    if (col->kind == sch::CollectiveKind::kBroadcast && sch::rank_in(comm, col->root) < 0) {
      add(out, op.id, "body.root", "the broadcast root is not a member of " + comm.name);
    }
  } else if (const auto* snd = std::get_if<sch::Send>(&op.body)) {
    if (snd->comm >= s.communicators.size() || sch::rank_in(s.communicators[snd->comm], snd->peer) < 0) {
      add(out, op.id, "body.peer", "the peer is not a member of the send's communicator");
    }
  } else if (const auto* rcv = std::get_if<sch::Recv>(&op.body)) {
    if (rcv->comm >= s.communicators.size() || sch::rank_in(s.communicators[rcv->comm], rcv->peer) < 0) {
      add(out, op.id, "body.peer", "the peer is not a member of the recv's communicator");
    }
  }
}

}  // namespace

CommBytes comm_bytes(const sch::Schedule& s, const sch::Matching& m, const sch::Op& op) {
  CommBytes out;
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
        const int me = sch::rank_in(comm, op.rank);
        out.a2a_recv.assign(comm.members.size(), 0);
        const auto inst = m.instance_of[op.id];
        if (me >= 0 && inst < m.collectives.size()) {
          const auto peers = m.collectives[inst].ops;
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

RoleSizes role_sizes(const sch::Schedule& s, const sch::Matching& m, sch::RankId rank) {
  RoleSizes sizes{};
  for (const auto& op : s.ops) {
    if (op.rank != rank) continue;
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      kernel_sizes(c->kernel, sizes);
    } else if (is_comm(op)) {
      const auto cs = comm_bytes(s, m, op);
      need(sizes, Role::kCommSend, cs.send);
      if (!is_peer_mapped(op)) need(sizes, Role::kCommRecv, cs.recv);  // a peer-mapped recv lands in its slot
    }
  }
  return sizes;
}

std::uint64_t required_device_bytes(const sch::Schedule& s, sch::RankId rank) {
  return required_bytes(s, sch::match(s), plan_peer_layout(s), rank);
}

std::vector<sch::Diagnostic> can_execute(const sch::Schedule& s, const DeviceInfo& info) {
  Diagnostics out;
  check_processes(s, info, out);
  for (const auto& op : s.ops) {
    if (is_gpu_op(op) && op.stream >= s.streams.size()) {
      add(out, op.id, "stream", "stream " + std::to_string(op.stream) + " is not declared");
    }
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      check_compute(op, *c, out);
    } else {
      check_comm(s, op, out);
    }
  }
  if (!out.empty()) return out;
  const sch::Matching m = sch::match(s);
  const PeerLayout peers = plan_peer_layout(s);
  // Ranks sharing a GPU (peer-mapped schedules only) share its free memory.
  const std::uint64_t per_gpu =
      info.device_count > 0 && info.local_processes > info.device_count
          ? static_cast<std::uint64_t>((info.local_processes + info.device_count - 1) / info.device_count)
          : 1;
  for (auto r : s.ranks) {
    const std::uint64_t need_bytes = (required_bytes(s, m, peers, r) + kNcclReserveBytes) * per_gpu;
    if (need_bytes > info.free_bytes) {
      add(out, sch::kNoOp, "",
          "rank " + std::to_string(r) + " needs " + format_bytes(static_cast<double>(need_bytes)) +
              " of GPU memory for its buffers (sized by its largest op of each kind, plus peer-mapped receive slots, "
              "NCCL and cuBLAS" +
              (per_gpu > 1 ? ", times the " + std::to_string(per_gpu) + " ranks sharing its GPU" : std::string()) +
              ") but " + format_bytes(static_cast<double>(info.free_bytes)) +
              " is free: use a smaller micro-batch or more GPUs");
    }
  }
  return out;
}

RankPlan plan_rank(const sch::Schedule& s, const sch::Matching& m, const ChannelPlan& channels, sch::RankId rank) {
  RankPlan plan;
  plan.rank = rank;
  plan.buffers = role_sizes(s, m, rank);
  std::vector<std::int64_t> index_of(s.ops.size(), -1);
  for (const auto& op : s.ops) {
    if (op.rank != rank) continue;
    index_of[op.id] = static_cast<std::int64_t>(plan.ops.size());
    PlannedOp p;
    p.op = op.id;
    p.gpu = is_gpu_op(op);
    plan.ops.push_back(std::move(p));
  }
  for (auto& p : plan.ops) {
    const sch::Op& op = s.ops[p.op];
    if (p.gpu) {
      for (auto d : op.deps) {
        if (d < index_of.size() && index_of[d] >= 0 && plan.ops[static_cast<std::size_t>(index_of[d])].gpu) {
          p.deps.push_back(static_cast<std::uint32_t>(index_of[d]));
        }
      }
    }
    if (const auto* hs = std::get_if<sch::HostSync>(&op.body)) {
      TWINSTEP_ASSERT(hs->target < index_of.size() && index_of[hs->target] >= 0, "host_sync target of another rank");
      p.host_sync = static_cast<std::uint32_t>(index_of[hs->target]);
    }
    if (!is_comm(op)) continue;
    p.bytes = comm_bytes(s, m, op);
    if (is_peer_mapped(op)) {
      // Over peer-mapped memory (peer_memory.hpp), no channel: its peer is the global rank.
      p.peer = static_cast<int>(std::holds_alternative<sch::Send>(op.body) ? std::get<sch::Send>(op.body).peer
                                                                           : std::get<sch::Recv>(op.body).peer);
      continue;
    }
    // The op's channel: a copy of its IR communicator (collectives; NCCL rank = position in the IR member list)
    // or the {sender, receiver} pair (send/recv; NCCL rank = position in the pair, ascending).
    p.channel = channels.channel_of_op[op.id];
    TWINSTEP_ASSERT(p.channel != kNoChannel, "communication op without a channel");
    const CommChannel& channel = channels.channels[p.channel];
    p.channel_size = static_cast<int>(channel.members.size());
    if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
      if (col->kind == sch::CollectiveKind::kBroadcast) p.peer = sch::rank_in(s.communicators[col->comm], col->root);
    } else {
      const sch::RankId peer = std::holds_alternative<sch::Send>(op.body) ? std::get<sch::Send>(op.body).peer
                                                                          : std::get<sch::Recv>(op.body).peer;
      p.peer = channel_rank(channel, peer);
      TWINSTEP_ASSERT(p.peer >= 0, "send/recv peer outside its channel");
    }
  }
  return plan;
}

std::string quote_op(const sch::Op& op) { return "op " + std::to_string(op.id) + " \"" + op.name + "\""; }

std::string kind_word(const sch::Op& op) {
  if (const auto* c = std::get_if<sch::Collective>(&op.body)) {
    return std::string("collective ") + sch::collective_name(c->kind);
  }
  return sch::kind_name(op.body);
}

}  // namespace twinstep::backend
