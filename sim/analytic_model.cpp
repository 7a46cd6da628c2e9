// The analytic resource model: each activity's solo time comes from the cost model; sharing is mechanistic.
// - SMs: a running comm kernel holds one SM per NCCL channel (CTA) on every member GPU, a fused kernel holds its
//   sm_count; a comm op that reached its stream head and waits for its peers (rendezvous) already holds
//   waiting_sms_per_channel x its channels on its own GPU: its NCCL kernel is resident and spins (measured: a recv
//   posted early on its own stream slows the GEMMs and attention that run meanwhile,
//   calibration/validation/h200x2/REPORT.md); each further kernel waiting on the same GPU holds
//   waiting_sms_per_channel_more x its channels (Interference::waiting_sms; measured with 1-4 waiting recvs,
//   calibration/measured/h200x2/recv_wait_n); regular compute kernels split the remaining SMs evenly, and a tiled
//   kernel's compute time scales with its wave count ceil(tiles / SMs) (hardware.md 5: 132-CTA GEMM + 24-CTA
//   all-gather = 2 waves).
// - HBM: a comm kernel uses comm_hbm_bytes_per_bus_byte x its bus bandwidth; compute kernels share the rest.
// - NICs: concurrent inter-node transfers of one GPU share its NIC in proportion to their NCCL connections
//   (sim/connections.hpp): bandwidth term x (connections of all users / its own), per direction (a NIC is full
//   duplex: a send/recv loads its sender's transmit side and its receiver's receive side; collectives both).
// Whenever one of these changes, the remaining work of the affected activities is re-timed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <queue>
#include <type_traits>
#include <unordered_map>
#include <variant>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/hash.hpp"
#include "schedule/json.hpp"
#include "sim/connections.hpp"
#include "sim/resource_model.hpp"
#include "sim/simulate.hpp"

namespace twinstep::sim {
namespace {

using schedule::kNoOp;
using schedule::OpId;

struct Act {
  ActivityId id = kNoOp;
  ActivityKind kind = ActivityKind::kCompute;
  bool active = false;
  bool fused = false;               ///< Compute with reserved SMs.
  std::uint32_t gpu = 0;            ///< Compute: its GPU.
  std::vector<std::uint32_t> gpus;  ///< Comm: member GPUs (capacity kept across reuse).
  KernelCost kernel;
  CommCost comm;
  double hbm_bytes_per_s = 0;  ///< Comm: HBM it uses on each member.
  double nic_connections = 0;  ///< Comm using NICs: its connections on each member's NIC.
  bool one_way = false;        ///< Send/recv: gpus[0] only transmits, gpus[1] only receives.
  double remaining = 1.0;      ///< Fraction of the work left.
  double ns_per_unit = 0;      ///< Current duration of the whole work at the current rates, ns.
  Nanos last_ns = 0;
  Nanos done_ns = 0;
  std::uint32_t version = 0;
  bool queued = false;  ///< Its current (done_ns, id) is in the heap under `version`.
  std::uint32_t mark = 0;
};

struct Gpu {
  std::vector<std::uint32_t> compute;  ///< Slots of running compute activities.
  std::vector<std::uint32_t> comm;     ///< Slots of running comm activities.
  std::uint32_t held_sms = 0;
  std::uint32_t waiting_held = 0;      ///< Of held_sms: the SMs of the comm kernels waiting for their peers.
  std::vector<std::uint32_t> waiting;  ///< NCCL channels of each waiting comm op (Interference::waiting_sms).
  std::uint32_t regular = 0;           ///< Running compute kernels without reserved SMs.
  double comm_hbm_bytes_per_s = 0;
  /// Per NIC direction (0 transmit, 1 receive): users and the sum of their connections.
  std::uint32_t nic_users[2] = {0, 0};
  double nic_connections[2] = {0, 0};
};

/// Whether member `k` of a comm activity loads its NIC's direction `dir` (0 transmit, 1 receive).
bool loads(const Act& a, std::size_t k, int dir) { return !a.one_way || static_cast<int>(k) == dir; }

struct HeapEntry {
  Nanos time;
  ActivityId id;
  std::uint32_t slot;
  std::uint32_t version;
  bool operator>(const HeapEntry& o) const { return time != o.time ? time > o.time : id > o.id; }
};

/// A collective's cost inputs besides its communicator's span (which is fixed per communicator).
struct CollectiveKey {
  schedule::CommId comm = 0;
  schedule::CollectiveKind kind = schedule::CollectiveKind::kAllReduce;
  std::uint64_t bytes = 0;
  bool operator==(const CollectiveKey&) const = default;
};

struct CollectiveKeyHash {
  std::size_t operator()(const CollectiveKey& k) const {
    std::uint64_t h = kFnvOffsetBasis;
    fnv_mix(h, k.comm), fnv_mix(h, static_cast<std::uint64_t>(k.kind)), fnv_mix(h, k.bytes);
    return h;
  }
};

/// A transfer's cost inputs (CostModel::p2p_cost).
struct P2PKey {
  std::uint64_t bytes = 0;
  schedule::RankId from = 0, to = 0;
  bool operator==(const P2PKey&) const = default;
};

struct P2PKeyHash {
  std::size_t operator()(const P2PKey& k) const {
    std::uint64_t h = kFnvOffsetBasis;
    fnv_mix(h, k.bytes), fnv_mix(h, k.from), fnv_mix(h, k.to);
    return h;
  }
};

/// What the analytic model keeps of each op, together (the run visits ops rank by rank, interleaved).
struct OpInfo {
  std::uint32_t gpu = 0;               ///< Its rank.
  std::uint32_t info = UINT32_MAX;     ///< Compute: its index in kernels_; communication: in comms_.
  std::uint32_t waiting_channels = 0;  ///< NCCL channels of its kernel while it waits for its peers (0: not waiting).
};

/// What the analytic model reads of a communication op (collective, send, recv).
struct CommInfo {
  enum class Op : std::uint8_t { kCollective, kSend, kRecv } op = Op::kCollective;
  schedule::CollectiveKind kind = schedule::CollectiveKind::kAllReduce;  ///< Collectives only.
  schedule::CommId comm = 0;
  std::uint64_t bytes = 0;
  std::uint32_t sm_count = 0;                                  ///< Collectives and sm_kernel sends/recvs.
  schedule::RankId peer = 0;                                   ///< Sends and recvs only.
  schedule::Transport transport = schedule::Transport::kNccl;  ///< Sends and recvs only.
  bool operator==(const CommInfo&) const = default;
};

struct CommInfoHash {
  std::size_t operator()(const CommInfo& c) const {
    std::uint64_t h = kFnvOffsetBasis;
    fnv_mix(h, static_cast<std::uint64_t>(c.op) | static_cast<std::uint64_t>(c.kind) << 8 |
                   static_cast<std::uint64_t>(c.transport) << 16 | std::uint64_t{c.comm} << 32);
    fnv_mix(h, c.bytes), fnv_mix(h, std::uint64_t{c.sm_count} | std::uint64_t{c.peer} << 32);
    return h;
  }
};

/// The ops repeat their shapes in the same order (every layer and micro-batch): per table of distinct entries, the
/// entry looked up after the previous op's entry last time, compared first so that the table is hashed only when it is
/// not this op's.
struct SuccessorGuess {
  std::vector<std::uint32_t> next;      ///< By table index: the index looked up right after it, last time.
  std::uint32_t previous = UINT32_MAX;  ///< The index of the last lookup.
  /// The index to compare first (UINT32_MAX: none).
  [[nodiscard]] std::uint32_t guess() const { return previous == UINT32_MAX ? UINT32_MAX : next[previous]; }
  /// The table grew by one entry.
  void added() { next.push_back(UINT32_MAX); }
  /// This op's lookup gave `k`.
  void found(std::uint32_t k) {
    if (previous != UINT32_MAX) next[previous] = k;
    previous = k;
  }
};

/// std::ceil(x) as Nanos for |x| < 2^63, without a libm call (hot: every re-timing).
Nanos ceil_ns(double x) {
  const auto t = static_cast<Nanos>(x);  // toward zero: the ceiling for x <= 0, the floor for x > 0
  return static_cast<double>(t) < x ? t + 1 : t;
}

/// The latest end time an activity may have: the simulator's clock is int64 nanoseconds (292 years); past ~126 years
/// a step is a bad input (a kernel shape or a sequence length off by orders of magnitude), not a prediction.
constexpr double kMaxEndNs = 4e18;

[[noreturn]] void throw_time_overflow(std::uint64_t activity, double left_ns) {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "activity %llu would run %.3g s more, past the simulator's clock (int64 nanoseconds, ~126 years): a "
                "kernel shape, sequence length or message size in the input is orders of magnitude too large; check "
                "the schedule's m, n, k, seq and bytes fields (or --seq, --gbs)",
                static_cast<unsigned long long>(activity), left_ns * 1e-9);
  throw Error(buf);
}

void erase_value(std::vector<std::uint32_t>& v, std::uint32_t x) {
  auto it = std::find(v.begin(), v.end(), x);
  TWINSTEP_ASSERT(it != v.end(), "slot %u not registered", x);
  *it = v.back();
  v.pop_back();
}

class AnalyticModel final : public GpuSharingModel {
 public:
  /// `external_comms`: communication activities are timed by the caller (GpuSharingModel); see resource_model.hpp.
  AnalyticModel(const SimContext& ctx, bool external_comms) : ctx_(ctx), external_(external_comms) {
    if (external_) slot_of_.assign(ctx.schedule.ops.size(), UINT32_MAX);
    // What the run needs of each op, read in one pass over the ops in order (the run visits them rank by rank, where
    // each first read of an op would be a cache miss): its GPU, a compute op's kernel cost (looked up once per
    // distinct kernel), a communication op's sizes.
    const auto& ops = ctx.schedule.ops;
    op_.assign(ops.size(), OpInfo{});
    for (std::size_t i = 0; i < ops.size(); ++i) {
      op_[i].gpu = ops[i].rank;
      const auto& body = ops[i].body;
      if (const auto* c = std::get_if<schedule::Compute>(&body)) {
        op_[i].info = kernel_index(*c, ops[i].name);
        compute_kernels_.push_back(op_[i].info);
      } else if (const auto* coll = std::get_if<schedule::Collective>(&body)) {
        op_[i].info =
            add_comm_info({CommInfo::Op::kCollective, coll->kind, coll->comm, coll->bytes, coll->sm_count, 0});
      } else if (const auto* send = std::get_if<schedule::Send>(&body)) {
        check_peer_mapped(ops[i], send->peer, send->transport);
        op_[i].info = add_comm_info(
            {CommInfo::Op::kSend, {}, send->comm, send->bytes, send->sm_count, send->peer, send->transport});
      } else if (const auto* recv = std::get_if<schedule::Recv>(&body)) {
        check_peer_mapped(ops[i], recv->peer, recv->transport);
        op_[i].info = add_comm_info(
            {CommInfo::Op::kRecv, {}, recv->comm, recv->bytes, recv->sm_count, recv->peer, recv->transport});
      }
    }
    gpus_.resize(ctx.cluster.num_gpus());
    span_cache_.resize(ctx.schedule.communicators.size());
    span_known_.assign(ctx.schedule.communicators.size(), 0);
    std::vector<HeapEntry> storage;
    storage.reserve(1024);
    heap_ = decltype(heap_)(std::greater<HeapEntry>(), std::move(storage));
  }

  void start(ActivityId id, const Activity& a, Nanos now) override {
    const std::uint32_t slot = alloc();
    Act& act = slots_[slot];
    act.id = id;
    act.kind = a.kind;
    act.active = true;
    act.queued = false;
    act.remaining = 1.0;
    act.last_ns = now;
    act.gpus.clear();
    act.fused = false;
    act.hbm_bytes_per_s = 0;
    ++running_;
    ++epoch_;
    affected_.clear();
    if (a.kind == ActivityKind::kCompute) {
      act.kernel = kernels_[op_[a.op].info];
      act.gpu = op_[a.op].gpu;
      Gpu& g = gpus_[act.gpu];
      act.fused = act.kernel.reserved_sms > 0;
      if (act.fused) {
        g.held_sms += act.kernel.reserved_sms;
      } else {
        ++g.regular;
      }
      g.compute.push_back(slot);
      touch_compute(act.gpu);
    } else {
      // Members that waited for this rendezvous stop holding their waiting SMs: the activity holds them now.
      if (a.kind == ActivityKind::kPointToPoint) {
        stop_waiting(a.op);
        stop_waiting(a.partner);
      } else if (a.members != 1) {  // a sole member started as it arrived: it never waited
        for (OpId o : ctx_.matching.collectives[a.instance].ops) {
          if (o != kNoOp) stop_waiting(o);
        }
      }
      act.comm = comm_cost(a, act.gpus, act.nic_connections);
      if (a.kind == ActivityKind::kCollective) {
        // A fused communication kernel holds its own SM budget instead of one CTA per NCCL channel.
        const CommInfo& coll = comm_info(a.op);
        if (coll.sm_count > 0) act.comm.channels = coll.sm_count;
      }
      act.one_way = a.kind == ActivityKind::kPointToPoint && act.gpus.size() == 2;
      last_comm_ = act.comm;
      if (external_) slot_of_[id] = slot;
      const double factor = act.comm.hbm_bytes_per_bus_byte > 0
                                ? act.comm.hbm_bytes_per_bus_byte
                                : ctx_.costs.profile().interference.comm_hbm_bytes_per_bus_byte;
      act.hbm_bytes_per_s = act.comm.bandwidth_time_s > 0 ? act.comm.bus_bytes_per_s * factor : 0.0;
      for (std::size_t k = 0; k < act.gpus.size(); ++k) {
        const std::uint32_t gi = act.gpus[k];
        Gpu& g = gpus_[gi];
        g.held_sms += held_sms(act.comm);
        g.comm_hbm_bytes_per_s += act.hbm_bytes_per_s;
        g.comm.push_back(slot);
        touch_compute(gi);
        if (act.comm.uses_nic) {
          for (int dir = 0; dir < 2; ++dir) {
            if (!loads(act, k, dir)) continue;
            ++g.nic_users[dir];
            g.nic_connections[dir] += act.nic_connections;
          }
          touch_nic(gi);
        }
      }
    }
    touch(slot);
    for (std::uint32_t s : affected_) retime(s, now);
  }

  Nanos advance(Nanos horizon, std::vector<ActivityId>& done) override {
    const Nanos t = next_completion();
    if (t == kNever || t > horizon) return horizon;
    complete(t, done);
    return t;
  }

  [[nodiscard]] const CommCost& last_comm_cost() const override { return last_comm_; }

  void comm_waiting(OpId op, Nanos now) override {
    const double per_channel = ctx_.costs.profile().interference.waiting_sms_per_channel;
    if (per_channel <= 0) return;
    const std::uint32_t gpu = op_[op].gpu;
    const CommInfo& c = comm_info(op);
    std::uint32_t channels = 0;
    switch (c.op) {
      case CommInfo::Op::kCollective:
        channels = c.sm_count > 0                                  ? c.sm_count
                   : c.kind == schedule::CollectiveKind::kAllToAll ? ctx_.costs.profile().nccl.p2p_channels_nvlink
                                                                   : collective_cost_of(op_[op].info).channels;
        break;
      case CommInfo::Op::kSend:
      case CommInfo::Op::kRecv:
        // A copy engine holds no SMs while it waits (nothing is launched on the SMs); a sm_kernel its SMs.
        switch (c.transport) {
          case schedule::Transport::kNccl:
            channels = c.op == CommInfo::Op::kSend ? p2p_cost(c.bytes, gpu, c.peer).channels
                                                   : p2p_cost(c.bytes, c.peer, gpu).channels;
            break;
          case schedule::Transport::kCopyEngine:
            channels = 0;
            break;
          case schedule::Transport::kSmKernel:
            channels = c.sm_count;
            break;
        }
        break;
    }
    if (channels == 0 || op_[op].waiting_channels != 0) return;
    ++epoch_;
    affected_.clear();
    op_[op].waiting_channels = channels;
    gpus_[gpu].waiting.push_back(channels);
    update_waiting(gpu);
    for (std::uint32_t s : affected_) retime(s, now);
  }

  void finish_external(ActivityId id, Nanos now) override {
    TWINSTEP_ASSERT(external_ && id < slot_of_.size() && slot_of_[id] != UINT32_MAX, "activity %u not external", id);
    const std::uint32_t slot = slot_of_[id];
    slot_of_[id] = UINT32_MAX;
    ++epoch_;
    affected_.clear();
    release(slot);
    for (std::uint32_t s : affected_) {
      if (slots_[s].active) retime(s, now);
    }
    free_.push_back(slot);
  }

  [[nodiscard]] std::size_t running() const override { return running_; }

  [[nodiscard]] std::optional<double> solo_compute_s() const override {
    double solo = 0;  // in op order, as the caller's own sum over the ops would add them
    for (const std::uint32_t k : compute_kernels_) solo += kernels_[k].solo_time_s();
    return solo;
  }

  [[nodiscard]] Nanos next_completion() const override {
    drop_stale();
    return heap_.empty() ? kNever : heap_.top().time;
  }

 private:
  /// Completes the activities that end at `now`, the heap's top (advance: next_completion dropped the stale entries).
  void complete(Nanos now, std::vector<ActivityId>& done) {
    ++epoch_;
    affected_.clear();
    finished_.clear();
    while (!heap_.empty() && heap_.top().time == now) {
      const HeapEntry e = heap_.top();
      heap_.pop();
      if (!valid(e)) continue;
      finished_.push_back(e.slot);
      done.push_back(e.id);
    }
    for (std::uint32_t slot : finished_) release(slot);
    for (std::uint32_t s : affected_) {
      if (slots_[s].active) retime(s, now);
    }
    for (std::uint32_t slot : finished_) free_.push_back(slot);
  }

  std::uint32_t alloc() {
    if (!free_.empty()) {
      const std::uint32_t s = free_.back();
      free_.pop_back();
      return s;
    }
    slots_.emplace_back();
    return static_cast<std::uint32_t>(slots_.size() - 1);
  }

  bool valid(const HeapEntry& e) const {
    const Act& a = slots_[e.slot];
    return a.active && a.version == e.version && a.id == e.id;
  }

  void drop_stale() const {
    while (!heap_.empty() && !valid(heap_.top())) heap_.pop();
  }

  const CommSpan& span_of(schedule::CommId comm) {
    if (span_known_[comm] == 0) {
      span_cache_[comm] = ctx_.costs.span(ctx_.schedule.communicators[comm]);
      span_known_[comm] = 1;
    }
    return span_cache_[comm];
  }

  // The cost model's functions are pure: ops of one shape (every micro-batch and layer repeats them) look their
  // costs up once per simulation.
  // An op whose stem has its own efficiency table (Profile::op_compute) is looked up per stem and shape.
  // The shape that followed the previous op's last time is compared first (SuccessorGuess).
  std::uint32_t kernel_index(const schedule::Compute& c, const std::string& name) {
    std::uint32_t k = UINT32_MAX;
    if (ctx_.costs.op_table(name) != nullptr) {
      k = table_index(op_kernel_index_[std::string(op_stem(name))], c, name, nullptr);
    } else {
      const std::uint32_t guess = kernel_guess_.guess();
      k = guess != UINT32_MAX && kernel_shapes_[guess] != nullptr && *kernel_shapes_[guess] == c
              ? guess
              : table_index(kernel_index_, c, name, &kernel_shapes_);
    }
    kernel_guess_.found(k);
    return k;
  }
  /// `c`'s index in kernels_ by `index` (a new entry priced now); `shapes`: where the by-shape table's keys are kept.
  std::uint32_t table_index(std::unordered_map<schedule::Compute, std::uint32_t, ComputeHash>& index,
                            const schedule::Compute& c, const std::string& name,
                            std::vector<const schedule::Compute*>* shapes) {
    auto it = index.find(c);
    if (it == index.end()) {
      it = index.emplace(c, static_cast<std::uint32_t>(kernels_.size())).first;
      kernels_.push_back(ctx_.costs.kernel_cost(c, name));
      kernel_shapes_.push_back(shapes != nullptr ? &it->first : nullptr);  // map keys stay put (node-based map)
      kernel_guess_.added();
    }
    return it->second;
  }
  const CommCost& collective_cost(schedule::CollectiveKind kind, std::uint64_t bytes, schedule::CommId comm) {
    const CollectiveKey key{comm, kind, bytes};
    auto it = collective_costs_.find(key);
    if (it == collective_costs_.end()) {
      it = collective_costs_.emplace(key, ctx_.costs.collective_cost(kind, static_cast<double>(bytes), span_of(comm)))
               .first;
    }
    return it->second;
  }

  /// `c`'s index in comms_, its distinct communication ops (few: every layer and micro-batch repeats them, and the run
  /// then reads a small table instead of a record per op). The one after the previous op's last time is compared
  /// first, as for kernels.
  std::uint32_t add_comm_info(const CommInfo& c) {
    const std::uint32_t guess = comm_guess_.guess();
    std::uint32_t k = guess;
    if (guess == UINT32_MAX || !(comms_[guess] == c)) {
      auto it = comm_index_.find(c);
      if (it == comm_index_.end()) {
        it = comm_index_.emplace(c, static_cast<std::uint32_t>(comms_.size())).first;
        comms_.push_back(c);
        comm_guess_.added();
        comm_costs_.push_back(nullptr);
      }
      k = it->second;
    }
    comm_guess_.found(k);
    return k;
  }
  /// The cost of collective comms_[info] (cached per distinct collective).
  const CommCost& collective_cost_of(std::uint32_t info) {
    if (comm_costs_[info] == nullptr) {
      const CommInfo& c = comms_[info];
      comm_costs_[info] = &collective_cost(c.kind, c.bytes, c.comm);
    }
    return *comm_costs_[info];
  }
  const CommInfo& comm_info(OpId op) const { return comms_[op_[op].info]; }
  static std::uint32_t held_sms(const CommCost& c) { return c.holds_sms ? c.channels : 0; }

  /// copy_engine and sm_kernel transfers need peer-mapped memory: both GPUs in one NVLink domain (one node).
  void check_peer_mapped(const schedule::Op& op, schedule::RankId peer, schedule::Transport transport) const {
    if (transport == schedule::Transport::kNccl) return;
    if (ctx_.cluster.node_of(op.rank) == ctx_.cluster.node_of(peer)) return;
    throw ValidationError({"op " + std::to_string(op.id) + " \"" + op.name + "\" (rank " + std::to_string(op.rank) +
                           "): transport " + schedule::transport_name(transport) + " to rank " + std::to_string(peer) +
                           " crosses nodes, but peer-mapped buffers need both GPUs in one NVLink domain: use transport "
                           "nccl, or place the TP group inside a node"});
  }
  const CommCost& p2p_cost(std::uint64_t bytes, schedule::RankId from, schedule::RankId to) {
    const P2PKey key{bytes, from, to};
    auto it = p2p_costs_.find(key);
    if (it == p2p_costs_.end())
      it = p2p_costs_.emplace(key, ctx_.costs.p2p_cost(static_cast<double>(bytes), from, to)).first;
    return it->second;
  }

  CommCost comm_cost(const Activity& a, std::vector<std::uint32_t>& gpus, double& nic_connections) {
    const auto& ops = ctx_.schedule.ops;
    const auto& cluster = ctx_.cluster;
    if (a.kind == ActivityKind::kPointToPoint) {
      const CommInfo& send = comm_info(a.op);
      const auto ra = op_[a.op].gpu, rb = op_[a.partner].gpu;
      gpus.push_back(ra);
      // A mirrored pair (reduced schedule: send and recv on one rank, peers absent) takes the send's path and
      // occupies the rank twice, as its outgoing and its incoming transfer do in the full schedule (its NIC's
      // transmit and receive sides).
      gpus.push_back(rb);
      const schedule::RankId to = rb == ra ? send.peer : rb;
      CommCost c;
      switch (send.transport) {
        case schedule::Transport::kNccl:
          c = p2p_cost(send.bytes, ra, to);
          break;
        case schedule::Transport::kCopyEngine:
          c = ctx_.costs.copy_engine_cost(static_cast<double>(send.bytes), ra, to);
          break;
        case schedule::Transport::kSmKernel:
          // A copy kernel over peer-mapped buffers: NCCL's p2p timing over the same NVLink, on its own SMs.
          c = p2p_cost(send.bytes, ra, to);
          c.channels = send.sm_count;
          break;
      }
      nic_connections = p2p_connections(c);
      return c;
    }
    // A sole member (a reduced schedule's TP, CP, DP and EP collectives, nearly all of a sweep's) is `a.op`: its GPU
    // is its own, and the instance's member list is not read (a cache miss per collective).
    if (a.members == 1) {
      gpus.push_back(op_[a.op].gpu);
    } else {
      for (OpId o : ctx_.matching.collectives[a.instance].ops) {
        if (o != kNoOp) gpus.push_back(op_[o].gpu);
      }
    }
    const CommInfo& coll = comm_info(a.op);
    const CommSpan& span = span_of(coll.comm);
    if (coll.kind != schedule::CollectiveKind::kAllToAll) {
      const CommCost c = collective_cost_of(op_[a.op].info);
      nic_connections = ring_edge_connections(c, span.per_node);  // one ring per NIC rail: one edge per NIC
      return c;
    }
    // All-to-all: per member, bytes out and in within its node and across nodes; the slowest member decides.
    // Absent members (reduced schedules) mirror present ones: their traffic equals what they receive.
    const auto& inst = ctx_.matching.collectives[a.instance];
    const auto& members = ctx_.schedule.communicators[coll.comm].members;
    const std::size_t n = members.size();
    std::vector<double>& in_intra = scratch_a_;
    std::vector<double>& in_inter = scratch_b_;
    in_intra.assign(n, 0);
    in_inter.assign(n, 0);
    double max_intra = 0, max_inter = 0, max_peer = 0;
    std::uint32_t max_remote = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const OpId o = inst.ops[i];
      if (o == kNoOp) continue;
      const auto& c = std::get<schedule::Collective>(ops[o].body);
      double out_intra = 0, out_inter = 0;
      std::uint32_t remote = 0;
      const std::uint32_t ni = cluster.node_of(members[i]);
      for (std::size_t j = 0; j < n && j < c.send_bytes.size(); ++j) {
        if (j == i) continue;
        const double b = static_cast<double>(c.send_bytes[j]);
        max_peer = std::max(max_peer, b);
        if (cluster.node_of(members[j]) == ni) {
          out_intra += b;
          in_intra[j] += b;
        } else {
          out_inter += b;
          in_inter[j] += b;
          if (b > 0) ++remote;
        }
      }
      max_intra = std::max(max_intra, out_intra);
      max_inter = std::max(max_inter, out_inter);
      max_remote = std::max(max_remote, remote);
    }
    nic_connections = std::max<std::uint32_t>(1, max_remote) *
                      all_to_all_peer_connections(ctx_.costs.profile().nccl, static_cast<std::uint32_t>(n - 1), true);
    for (std::size_t j = 0; j < n; ++j) {
      if (inst.ops[j] == kNoOp) continue;
      max_intra = std::max(max_intra, in_intra[j]);
      max_inter = std::max(max_inter, in_inter[j]);
    }
    return ctx_.costs.all_to_all_cost(max_intra, max_inter, static_cast<std::uint32_t>(n - 1), max_peer, span);
  }

  void touch(std::uint32_t slot) {
    Act& a = slots_[slot];
    if (a.mark == epoch_) return;
    a.mark = epoch_;
    affected_.push_back(slot);
  }
  void touch_compute(std::uint32_t gpu) {
    for (std::uint32_t s : gpus_[gpu].compute) touch(s);
  }
  void touch_nic(std::uint32_t gpu) {
    for (std::uint32_t s : gpus_[gpu].comm) {
      if (slots_[s].comm.uses_nic) touch(s);
    }
  }

  /// Ends the SM hold of a waiting comm op (its activity starts); call inside an epoch, before re-timing.
  void stop_waiting(OpId op) {
    if (op == kNoOp || op_[op].waiting_channels == 0) return;
    const std::uint32_t gpu = op_[op].gpu;
    auto& w = gpus_[gpu].waiting;
    w.erase(std::find(w.begin(), w.end(), op_[op].waiting_channels));
    op_[op].waiting_channels = 0;
    update_waiting(gpu);
  }

  /// Re-derives the SMs the waiting comm kernels of `gpu` hold (Interference::waiting_sms); call inside an epoch.
  void update_waiting(std::uint32_t gpu) {
    Gpu& g = gpus_[gpu];
    const std::uint32_t held = ctx_.costs.profile().interference.waiting_sms(g.waiting);
    if (held == g.waiting_held) return;
    g.held_sms = g.held_sms - g.waiting_held + held;
    g.waiting_held = held;
    touch_compute(gpu);
  }

  void release(std::uint32_t slot) {
    Act& act = slots_[slot];
    act.active = false;
    --running_;
    if (act.kind == ActivityKind::kCompute) {
      Gpu& g = gpus_[act.gpu];
      if (act.fused) {
        g.held_sms -= act.kernel.reserved_sms;
      } else {
        --g.regular;
      }
      erase_value(g.compute, slot);
      touch_compute(act.gpu);
      return;
    }
    for (std::size_t k = 0; k < act.gpus.size(); ++k) {
      const std::uint32_t gi = act.gpus[k];
      Gpu& g = gpus_[gi];
      g.held_sms -= held_sms(act.comm);
      g.comm_hbm_bytes_per_s -= act.hbm_bytes_per_s;
      if (g.comm.size() == 1) g.comm_hbm_bytes_per_s = 0;  // no drift once idle
      erase_value(g.comm, slot);
      touch_compute(gi);
      if (act.comm.uses_nic) {
        for (int dir = 0; dir < 2; ++dir) {
          if (!loads(act, k, dir)) continue;
          --g.nic_users[dir];
          g.nic_connections[dir] = g.nic_users[dir] == 0 ? 0.0 : g.nic_connections[dir] - act.nic_connections;
        }
        touch_nic(gi);
      }
    }
  }

  /// Duration of the whole work at the current sharing, in ns (double).
  double current_ns(const Act& a) const {
    if (a.kind != ActivityKind::kCompute) {
      double share = 1;  // its NIC bandwidth share, inverted: the busiest member NIC decides
      if (a.comm.uses_nic) {
        for (std::size_t k = 0; k < a.gpus.size(); ++k) {
          for (int dir = 0; dir < 2; ++dir) {
            if (loads(a, k, dir)) share = std::max(share, gpus_[a.gpus[k]].nic_connections[dir] / a.nic_connections);
          }
        }
      }
      return (a.comm.latency_s + a.comm.bandwidth_time_s * share) * 1e9;
    }
    const KernelCost& k = a.kernel;
    if (a.fused) return k.solo_time_s() * 1e9;
    const Gpu& g = gpus_[a.gpu];
    const std::uint64_t sms = std::max<std::uint64_t>(1, ctx_.cluster.node.gpu.sm_count);
    const std::uint64_t free_sms = g.held_sms + 1 < sms ? sms - g.held_sms : 1;  // at least one
    const std::uint32_t sharers = std::max<std::uint32_t>(1, g.regular);
    double sm_factor = 1.0;
    if (k.tiles > 0) {
      // Wave counts in integers (whole SMs and sharers; tiles far below 2^44): the values ceil(tiles / SMs) and
      // floor(free / sharers) take in doubles, without a libm call and three divisions per re-timing.
      const std::uint64_t per_kernel = std::max<std::uint64_t>(1, free_sms / sharers);
      const std::uint64_t full_waves = (k.tiles + sms - 1) / sms;
      const std::uint64_t waves = (k.tiles + per_kernel - 1) / per_kernel;
      sm_factor = static_cast<double>(waves) / static_cast<double>(full_waves);
    } else {
      sm_factor = static_cast<double>(sms) / (static_cast<double>(free_sms) / sharers);
    }
    double mem_s = 0;
    if (k.mem_bytes_per_s > 0) {
      double bw = k.mem_bytes_per_s;
      if (k.uses_hbm) bw = std::max(0.1 * k.mem_bytes_per_s, k.mem_bytes_per_s - g.comm_hbm_bytes_per_s) / sharers;
      mem_s = k.mem_bytes / bw;
    }
    return std::max(k.flop_time_s * sm_factor, mem_s) * 1e9;
  }

  void retime(std::uint32_t slot, Nanos now) {
    Act& a = slots_[slot];
    if (external_ && a.kind != ActivityKind::kCompute) return;  // timed by the caller
    if (now > a.last_ns && a.ns_per_unit > 0) {
      a.remaining -= static_cast<double>(now - a.last_ns) / a.ns_per_unit;
      a.remaining = std::max(0.0, a.remaining);
    }
    a.last_ns = now;
    a.ns_per_unit = current_ns(a);
    const double left_ns = a.remaining * a.ns_per_unit;
    if (!(left_ns < kMaxEndNs - static_cast<double>(now))) throw_time_overflow(a.id, left_ns);
    Nanos done = now + ceil_ns(left_ns - 1e-6);
    if (done < now) done = now;
    // Its heap entry orders by (done_ns, id) only: an unchanged end keeps the entry it has.
    if (a.queued && done == a.done_ns) return;
    a.done_ns = done;
    ++a.version;
    a.queued = true;
    heap_.push(HeapEntry{a.done_ns, a.id, slot, a.version});
  }

  const SimContext& ctx_;
  const bool external_;
  std::vector<std::uint32_t> slot_of_;  ///< External mode: slot of each running comm activity, by op id.
  CommCost last_comm_;
  std::vector<Act> slots_;
  std::vector<std::uint32_t> free_;
  std::vector<Gpu> gpus_;
  std::vector<CommSpan> span_cache_;
  std::unordered_map<schedule::Compute, std::uint32_t, ComputeHash> kernel_index_;  // lookups only
  std::map<std::string, std::unordered_map<schedule::Compute, std::uint32_t, ComputeHash>> op_kernel_index_;
  std::vector<KernelCost> kernels_;                      ///< Distinct kernels' costs.
  std::vector<const schedule::Compute*> kernel_shapes_;  ///< By kernels_ index: its key in kernel_index_ (or null).
  SuccessorGuess kernel_guess_;                          ///< Over kernels_.
  std::vector<std::uint32_t> compute_kernels_;           ///< Each compute op's index in kernels_, in op order.
  std::vector<CommInfo> comms_;                          ///< Distinct communication ops' sizes.
  std::unordered_map<CommInfo, std::uint32_t, CommInfoHash> comm_index_;  // lookups only
  SuccessorGuess comm_guess_;                                             ///< Over comms_.
  std::vector<const CommCost*> comm_costs_;  ///< By comms_ index: a collective's cost once looked up.
  std::unordered_map<P2PKey, CommCost, P2PKeyHash> p2p_costs_;                       // lookups only
  std::vector<OpInfo> op_;                                                           ///< By op id.
  std::unordered_map<CollectiveKey, CommCost, CollectiveKeyHash> collective_costs_;  // lookups only
  std::vector<std::uint8_t> span_known_;
  std::vector<std::uint32_t> affected_, finished_;
  std::vector<double> scratch_a_, scratch_b_;
  mutable std::priority_queue<HeapEntry, std::vector<HeapEntry>, std::greater<HeapEntry>> heap_;
  std::uint32_t epoch_ = 0;
  std::size_t running_ = 0;
};

}  // namespace

std::unique_ptr<ResourceModel> make_analytic_model(const SimContext& ctx) {
  return std::make_unique<AnalyticModel>(ctx, false);
}

std::unique_ptr<GpuSharingModel> make_gpu_sharing_model(const SimContext& ctx) {
  return std::make_unique<AnalyticModel>(ctx, true);
}

}  // namespace twinstep::sim
