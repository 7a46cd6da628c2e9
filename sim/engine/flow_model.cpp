// The flow resource model: SimGrid (3.32 and newer) as the max-min bandwidth-sharing engine behind
// sim::ResourceModel. The topology becomes a SimGrid platform (a host per GPU, split-duplex NVLink and NIC ports,
// and on a multi-group fat-tree one split-duplex uplink per rail leaf, shared by every flow leaving or entering its
// group on that rail); collectives become coarse steady-state flows on the links they use (one flow per ring edge,
// all-to-all per peer, send/recv one flow), weighted by their NCCL connections and followed by an analytic latency
// term; GPU kernels keep the analytic model's SM/HBM sharing. In a reduced schedule the all-to-all flows between a
// present member and absent ones merge per port of the present member (merge_flows). The only file that includes
// SimGrid (reference/simgrid.md has the traps avoided here).
//
// Routing: one flat zone (FabricZone below) whose routes are computed on demand by route(), the same function that
// sizes the flows. SimGrid's hierarchical zones cannot express a rail-optimized fabric: a node zone has one parent
// and one gateway, so the leaf (rail) a route leaves through cannot depend on the source GPU; a full zone needs a
// routing table of hosts^2 entries (2 GiB at 16,384 GPUs). Routes, by the GPUs' node, group (nodes_per_group) and
// rail (local index):
//   same node:                   [nvl(a) up, nvl(b) down]
//   same group, another node:    [nic(a) up, nic(b) down]              (one leaf hop; PXN keeps traffic on a rail)
//   another group:               [nic(a) up, leaf(group a, rail a) up, leaf(group b, rail b) down, nic(b) down]
// The spine layer is one aggregated uplink per leaf: ECMP is approximated by splitting every flow evenly over the
// spines (adaptive routing / packet spraying), not by hashing (src,dst) to one spine. Its capacity is the leaf's
// downlink capacity (nodes_per_group NICs at NCCL's achievable rate) / oversubscription, so with oversubscription
// 1 no uplink is ever the bottleneck (its load is bounded by the NICs below it). Above the spines (a core tier) the
// fabric is non-blocking. Links carry no latency: the fabric's hop latency is in the cost model's latency term, and a
// route's latency only sets the flow's weight in CM02's sharing (flow_latency_s).
// Communication is sized with a cost model whose fabric has oversubscription 1: the shared uplinks, not a per-flow
// factor, slow cross-group traffic down (so a lone flow is not slowed by an oversubscribed but idle uplink).
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <queue>
#include <set>
#include <string>

// SimGrid: the s4u headers first, they define the macros version.h and xbt/log.h use. Only the headers this file
// needs (not simgrid/s4u.hpp): fewer headers whose API moves between releases (tools/check-simgrid-build.sh).
#include <simgrid/s4u/Activity.hpp>
#include <simgrid/s4u/Comm.hpp>
#include <simgrid/s4u/Engine.hpp>
#include <simgrid/s4u/Exec.hpp>
#include <simgrid/s4u/Host.hpp>
#include <simgrid/s4u/Link.hpp>
#include <simgrid/s4u/NetZone.hpp>
// (kept apart so that include sorting cannot move version.h above them)
#include <simgrid/version.h>
#include <xbt/log.h>
// (the kernel routing API, for FabricZone)
#include <simgrid/kernel/routing/NetPoint.hpp>
#include <simgrid/kernel/routing/NetZoneImpl.hpp>
// (the latency factor callback, for merged flows)
#include <simgrid/kernel/resource/NetworkModelIntf.hpp>

#include "common/assert.hpp"
#include "common/error.hpp"
#include "schedule/matching.hpp"
#include "sim/connections.hpp"
#include "sim/resource_model.hpp"
#include "sim/simulate.hpp"

namespace twinstep::sim {
namespace {

namespace sg4 = simgrid::s4u;
using schedule::kNoOp;
using schedule::OpId;
using schedule::RankId;

// ---- SimGrid release differences (all of them are here; docs/performance.md "SimGrid releases") -----------------
// Built and tested against 3.32 (Debian 12). The newer branches follow the public headers of the later releases
// (checked at the compile level only: tools/check-simgrid-build.sh). The old names stay where they still exist,
// since the build treats their deprecation warnings as errors.
//   3.34: per-class completion signals (Comm::on_completion_cb); the Activity-wide one is gone by 4.0. Every
//         start() is vetoable; vetoable_start() is deprecated, then removed.
//   4.0:  the engine creates the root zone itself (a zone created by hand is no longer the root); NetZone's
//         create_host / create_split_duplex_link become add_host / add_split_duplex_link (old names deprecated).
#if SIMGRID_VERSION >= 33400
#define TWINSTEP_SG_PER_CLASS_SIGNALS 1
#endif
#if SIMGRID_VERSION >= 40000
#define TWINSTEP_SG_ENGINE_OWNS_ROOT 1
#endif

/// Calls `cb` at the completion of every Comm (the flow model's only activities that complete).
void on_any_comm_completion(void (*cb)(const sg4::Activity&)) {
#ifdef TWINSTEP_SG_PER_CLASS_SIGNALS
  sg4::Comm::on_completion_cb([cb](const sg4::Comm& c) { cb(c); });
#else
  sg4::Activity::on_completion_cb([cb](const sg4::Activity& a) { cb(a); });
#endif
}

/// Starts `exec`, or vetoes it (it is recorded in the engine's vetoed set) when it has no host.
void start_or_veto(sg4::Exec& exec) {
#ifdef TWINSTEP_SG_PER_CLASS_SIGNALS
  exec.start();
#else
  exec.vetoable_start();
#endif
}

/// A host of `speed_flops` in `zone`.
sg4::Host* add_host(sg4::NetZone* zone, const std::string& name, double speed_flops) {
#ifdef TWINSTEP_SG_ENGINE_OWNS_ROOT
  return zone->add_host(name, speed_flops);
#else
  return zone->create_host(name, speed_flops);
#endif
}

/// A split-duplex link of `bytes_per_s` in each direction in `zone`.
sg4::SplitDuplexLink* add_split_duplex_link(sg4::NetZone* zone, const std::string& name, double bytes_per_s) {
#ifdef TWINSTEP_SG_ENGINE_OWNS_ROOT
  return zone->add_split_duplex_link(name, bytes_per_s);
#else
  return zone->create_split_duplex_link(name, bytes_per_s);
#endif
}

/// CM02 shares a link between flows in inverse proportion to their route latency (reference/simgrid.md 5.5). Links
/// have no latency; FabricZone gives a flow's route the latency flow_latency_s(weight) (weight: the flow's NCCL
/// connections, see Flow::weight), which makes the sharing weighted max-min by connection count. The latency
/// (64 ns for 1 connection, 2 ns for 32, at least 1 ns: SimGrid's surf/precision) is taken off the collective's
/// analytic latency term; the flows then start off the ns grid, so an activity may end up to 1 ns later than its
/// analytic twin.
constexpr double kWeightRef = 32;
double flow_latency_s(double weight) { return std::max(1e-9, 2e-9 * kWeightRef / weight); }
/// run_until() target when no host event bounds the run (1e9 simulated seconds).
constexpr double kFarS = 1e9;

double to_s(Nanos t) { return static_cast<double>(t) * 1e-9; }
Nanos to_ns(double s) { return static_cast<Nanos>(std::llround(s * 1e9)); }

/// Link ids of our own route model (the SimGrid platform routes through the same ids): per GPU four port
/// directions, then per rail leaf (group x rails + rail) its aggregated spine uplink in both directions.
struct LinkIds {
  std::uint32_t gpus = 0;
  std::uint32_t leaves = 0;
  [[nodiscard]] std::uint32_t nvl_up(RankId g) const { return 4 * g; }
  [[nodiscard]] std::uint32_t nvl_down(RankId g) const { return 4 * g + 1; }
  [[nodiscard]] std::uint32_t nic_up(RankId g) const { return 4 * g + 2; }
  [[nodiscard]] std::uint32_t nic_down(RankId g) const { return 4 * g + 3; }
  [[nodiscard]] std::uint32_t uplink_up(std::uint32_t leaf) const { return 4 * gpus + 2 * leaf; }
  [[nodiscard]] std::uint32_t uplink_down(std::uint32_t leaf) const { return 4 * gpus + 2 * leaf + 1; }
};

namespace routing = simgrid::kernel::routing;

/// The platform's only zone: GPU hosts and links, routes computed on demand (see the file comment). `route_links`
/// maps a (src GPU, dst GPU) pair to our link ids; `links` maps a link id to its SimGrid link (one direction).
class FabricZone final : public routing::NetZoneImpl {
 public:
  using RouteFn = std::function<void(RankId, RankId, std::vector<std::uint32_t>&)>;
  FabricZone(const std::string& name, RouteFn route_links) : NetZoneImpl(name), route_links_(std::move(route_links)) {}

  /// Registers a GPU host (after add_host) so that routes can find its GPU index.
  void add_gpu(const sg4::Host* host, RankId gpu) {
    const auto v = host->get_netpoint()->id();
    if (gpu_of_vertex_.size() <= v) gpu_of_vertex_.resize(v + 1, UINT32_MAX);
    gpu_of_vertex_[v] = gpu;
  }
  /// Registers one direction of a link under our link id.
  void set_link(std::uint32_t id, sg4::Link* link) {
    if (links_.size() <= id) links_.resize(id + 1, nullptr);
    links_[id] = link;
  }

  /// The route latency (CM02's sharing penalty, see flow_latency_s) of the flow whose route SimGrid asks for next
  /// (Comm::start() computes the route at once), and the links of its route when they are not route()'s (a merged
  /// flow, see Flow::link); nullptr: route().
  void set_next_flow(double penalty_s, const std::vector<std::uint32_t>* links) {
    penalty_s_ = penalty_s;
    links_override_ = links;
  }

  void get_local_route(const routing::NetPoint* src, const routing::NetPoint* dst, routing::Route* into,
                       double* latency) override {
    TWINSTEP_ASSERT(src->id() < gpu_of_vertex_.size() && dst->id() < gpu_of_vertex_.size(),
                    "route between netpoints that are not GPU hosts");
    if (links_override_ != nullptr) {
      scratch_ = *links_override_;
    } else {
      route_links_(gpu_of_vertex_[src->id()], gpu_of_vertex_[dst->id()], scratch_);
    }
    for (std::uint32_t l : scratch_) {
      TWINSTEP_ASSERT(l < links_.size() && links_[l] != nullptr, "route uses link %u, which was not built", l);
      into->link_list_.push_back(links_[l]->get_impl());
    }
    if (latency != nullptr && !scratch_.empty()) *latency += penalty_s_;
  }

 private:
  RouteFn route_links_;
  std::vector<RankId> gpu_of_vertex_;
  std::vector<sg4::Link*> links_;
  std::vector<std::uint32_t> scratch_;
  double penalty_s_ = flow_latency_s(1.0);
  const std::vector<std::uint32_t>* links_override_ = nullptr;
};

/// Flow::link of a flow on route()'s links.
constexpr std::uint32_t kRouted = UINT32_MAX;

struct Flow {
  RankId src = 0;
  RankId dst = 0;
  double raw = 0;  ///< Relative volume; scaled to bytes so that the flows alone take the cost model's time.
  /// NCCL connections the flow stands for (sim/connections.hpp): concurrent flows share a link in proportion.
  double weight = 1.0;
  /// kRouted, or an all-to-all flow between a present and an absent member whose route is the two members' ports:
  /// `link` is the present member's. With `count` > 1, a merged flow: `count` such flows of equal payload and weight,
  /// on `link` alone (merge_flows).
  std::uint32_t link = kRouted;
  std::uint32_t count = 1;
};

struct FlowActivity {
  ActivityId id = kNoOp;
  std::vector<Flow> flows;
  std::vector<double> bytes;
  std::vector<sg4::CommPtr> comms;
  std::uint32_t pending = 0;
  Nanos tail_ns = 0;  ///< Latency term paid after the flows.
  bool active = false;
  bool in_engine = false;  ///< Has flows in SimGrid.
  bool in_tail = false;    ///< Flows done, paying tail_ns.
};

/// A timed event of an activity, ordered by (time, activity id): its flows start (at its start), or its latency term
/// ends (after its flows, or alone for an activity without flows), which ends the activity.
struct LatencyEnd {
  Nanos time;
  ActivityId id;
  std::uint32_t slot;
  bool operator>(const LatencyEnd& o) const { return time != o.time ? time > o.time : id > o.id; }
};

/// `costs` with the fabric's oversubscription set to 1: the flow model sizes communication for a non-blocking
/// fabric and lets the shared leaf uplinks slow down cross-group traffic.
CostModel without_oversubscription(const CostModel& costs) {
  topologies::Cluster cluster = costs.cluster();
  cluster.fabric.oversubscription = 1.0;
  return CostModel(cluster, costs.profile());
}

class FlowModel;
FlowModel* g_model = nullptr;  // SimGrid's completion signal is static; one engine (and model) per process.

class FlowModel final : public ResourceModel {
 public:
  explicit FlowModel(const SimContext& ctx)
      : ctx_(ctx),
        sizing_costs_(without_oversubscription(ctx.costs)),
        sizing_ctx_{ctx.schedule, ctx.matching, ctx.cluster, sizing_costs_},
        gpu_(make_gpu_sharing_model(sizing_ctx_)) {
    if (g_model != nullptr || engine_created_) {
      throw Error(
          "the flow model (SimGrid) runs one simulation per process; this process already ran one "
          "(sim::simulate forks a child per flow simulation; call it instead of make_flow_model)");
    }
    engine_created_ = true;
    g_model = this;
    static int argc = 1;
    static char arg0[] = "twinstep";
    static char* argv[] = {arg0, nullptr};
    engine_ = std::make_unique<sg4::Engine>(&argc, argv);
    xbt_log_control_set("root.thresh:critical");
    // reference/simgrid.md 2.1 and 5.4: no LV08 factors, no reverse "ack" traffic, no TCP window cap.
    sg4::Engine::set_config("network/model:CM02");
    sg4::Engine::set_config("network/crosstraffic:0");
    sg4::Engine::set_config("network/TCP-gamma:0");
    ids_.gpus = ctx.cluster.num_gpus();
    build_platform();
    engine_->track_vetoed_activities(&vetoed_);
    stopper_ = sg4::Exec::init();  // never gets a host: vetoing it makes run_until() return (see advance)
    stopper_->set_flops_amount(1);
    on_any_comm_completion([](const sg4::Activity& a) {
      if (g_model != nullptr) g_model->on_complete(a);
    });
    // A flow's latency apart from its sharing penalty (CM02 takes both from the route latency): merged flows. The
    // callback's arguments after the size differ between releases (3.32: src, dst, links, zones): none is read.
    engine_->get_netzone_root()->get_network_model()->set_lat_factor_cb(
        [](double, const auto&...) { return g_model != nullptr ? g_model->latency_factor_ : 1.0; });
  }

  ~FlowModel() override { g_model = nullptr; }

  FlowModel(const FlowModel&) = delete;
  FlowModel& operator=(const FlowModel&) = delete;

  void start(ActivityId id, const Activity& a, Nanos now) override {
    gpu_->start(id, a, now);
    if (a.kind == ActivityKind::kCompute) return;
    const CommCost cost = gpu_->last_comm_cost();
    const std::uint32_t slot = alloc(id);
    FlowActivity& fa = acts_[slot];
    build_flows(a, cost, fa.flows);
    size_flows(fa, cost.bandwidth_time_s);
    merge_flows(fa);
    if (fa.flows.empty() && cost.latency_s <= 0) {
      instant_.push_back(slot);
      return;
    }
    // The flows start at once and the latency term (our own queue, integer ns) follows them: the bytes of a
    // pipelined ring or all-to-all leave from its first step on, so a transfer that starts with a large collective
    // shares the links with it from the start (latency first would give it the links free for the whole latency
    // term). The flows' SimGrid latency (the longest of them) is part of the term.
    double flow_lat_s = 0;
    for (const auto& fl : fa.flows) flow_lat_s = std::max(flow_lat_s, flow_latency_s(fl.weight));
    const double lat_s = std::max(0.0, cost.latency_s - flow_lat_s);
    const auto lat_ns = static_cast<Nanos>(std::ceil(lat_s * 1e9 - 1e-6));
    if (fa.flows.empty()) {
      latency_.push(LatencyEnd{now + lat_ns, id, slot});
    } else {
      fa.tail_ns = lat_ns;
      latency_.push(LatencyEnd{now, id, slot});  // launched by advance() once SimGrid's clock is at `now`
    }
  }

  /// A waiting comm kernel holds SMs on its GPU (compute is shared as in the analytic model).
  void comm_waiting(OpId op, Nanos now) override { gpu_->comm_waiting(op, now); }

  Nanos advance(Nanos horizon, std::vector<ActivityId>& done) override {
    graveyard_.clear();
    TWINSTEP_ASSERT(batch_.empty(), "flow completions left unreported from an earlier advance()");
    if (!instant_.empty()) {
      for (std::uint32_t slot : instant_) finish(slot, last_, done);
      instant_.clear();
      std::sort(done.begin(), done.end());
      return last_;
    }
    while (true) {
      const Nanos tc = gpu_->next_completion();
      const Nanos tl = latency_.empty() ? kNever : latency_.top().time;
      const Nanos h = std::min({horizon, tc, tl});
      if (in_flight_ > 0) {
        // Stops at the first flow completion at or before h; otherwise SimGrid's clock ends exactly at h.
        run_engine_to(h);
        if (!batch_.empty()) {
          Nanos t = std::max(last_, to_ns(sg4::Engine::get_clock()));
          if (h != kNever) t = std::min(t, h);
          last_ = t;
          for (std::uint32_t slot : batch_) {
            FlowActivity& fa = acts_[slot];
            if (fa.tail_ns > 0) {  // flows done: the latency term follows
              leave_engine(fa);
              fa.in_tail = true;
              latency_.push(LatencyEnd{t + fa.tail_ns, fa.id, slot});
            } else {
              finish(slot, t, done);
            }
          }
          batch_.clear();
          if (done.empty()) continue;
          if (tc == t) gpu_->advance(t, done);
          std::sort(done.begin(), done.end());
          return t;
        }
      }
      if (tl != kNever && tl <= horizon && tl <= tc) {
        // Flows start, or latency terms end (ending their activities).
        last_ = tl;
        run_engine_to(tl);  // no flow runs (in_flight_ == 0) or the clock is at tl already: no completion here
        TWINSTEP_ASSERT(batch_.empty(), "flow completed while moving SimGrid's clock to a latency end");
        while (!latency_.empty() && latency_.top().time == tl) {
          const std::uint32_t slot = latency_.top().slot;
          latency_.pop();
          if (acts_[slot].flows.empty() || acts_[slot].in_tail) {
            finish(slot, tl, done);
          } else {
            launch(slot);
          }
        }
        if (!done.empty()) {
          if (tc == tl) gpu_->advance(tl, done);
          std::sort(done.begin(), done.end());
          return tl;
        }
        continue;
      }
      if (tc != kNever && tc <= horizon) {
        last_ = tc;
        return gpu_->advance(tc, done);
      }
      if (horizon != kNever) last_ = std::max(last_, horizon);
      return horizon;
    }
  }

  [[nodiscard]] std::size_t running() const override { return gpu_->running(); }

  void on_complete(sg4::Activity const& a) {
    void* data = a.get_data<void>();
    if (data == nullptr) return;
    const auto slot = static_cast<std::uint32_t>(reinterpret_cast<std::uintptr_t>(data) - 1);
    FlowActivity& fa = acts_[slot];
    TWINSTEP_ASSERT(fa.active && fa.pending > 0, "flow of slot %u completed twice", slot);
    if (--fa.pending == 0) {
      batch_.push_back(slot);
      start_or_veto(*stopper_);  // run_until() returns after this instant (reference/simgrid.md 2.3, vetoes)
    }
  }

 private:
  // ---- platform -------------------------------------------------------------------------------------------------

  [[nodiscard]] std::uint32_t group_of(std::uint32_t node) const {
    return multi_group_ ? node / ctx_.cluster.fabric.nodes_per_group : 0;
  }
  /// The rail leaf of a GPU: its group's leaf for the GPU's local index (rail-optimized: NIC i on leaf i).
  [[nodiscard]] std::uint32_t leaf_of(RankId g) const {
    const auto& cl = ctx_.cluster;
    return group_of(cl.node_of(g)) * cl.node.gpus_per_node + cl.local_of(g);
  }

  /// GPUs that any flow may touch: present ranks, their ring neighbours and all-to-all peers.
  std::vector<std::uint8_t> touched_gpus() {
    const auto& s = ctx_.schedule;
    std::vector<std::uint8_t> touched(ids_.gpus, 0);
    for (RankId r : s.ranks) touched[r] = 1;
    for (const auto& op : s.ops) touched[op.rank] = 1;
    std::vector<std::uint8_t> seen(s.communicators.size(), 0);
    for (const auto& inst : ctx_.matching.collectives) {
      const OpId first = schedule::first_present_op(inst);
      if (first == kNoOp) continue;
      const auto& c = std::get<schedule::Collective>(s.ops[first].body);
      const std::uint8_t mark = c.kind == schedule::CollectiveKind::kAllToAll ? 2 : 1;
      if ((seen[c.comm] & mark) != 0) continue;
      seen[c.comm] |= mark;
      const auto& members = s.communicators[c.comm].members;
      if (mark == 2) {
        for (RankId m : members) touched[m] = 1;
        continue;
      }
      std::vector<std::uint8_t> present(members.size(), 0);
      for (std::size_t i = 0; i < members.size(); ++i) present[i] = inst.ops[i] != kNoOp;
      for (const auto& ring : rings_of(c.comm, 0)) {
        const std::size_t n = ring.size();
        for (std::size_t k = 0; k < n; ++k) {
          const std::uint32_t a = ring[k], b = ring[(k + 1) % n];
          if (present[a] != 0 || present[b] != 0) touched[members[a]] = touched[members[b]] = 1;
        }
      }
    }
    return touched;
  }

  void build_platform() {
    const auto& cl = ctx_.cluster;
    const auto& node = cl.node;
    const auto& f = cl.fabric;
    const bool has_nic = cl.num_nodes > 1 && node.nics_per_gpu > 0 && node.nic_achievable_bytes_per_s > 0;
    nvl_bytes_per_s_ = node.nvlink_nccl_bytes_per_s;
    nic_bytes_per_s_ = has_nic ? node.nics_per_gpu * node.nic_achievable_bytes_per_s : 0.0;
    // Shared uplinks exist only where traffic can leave a group: a fat-tree of more than one group.
    multi_group_ = has_nic && f.kind == topologies::FabricKind::kFatTree && f.nodes_per_group > 0 &&
                   cl.num_nodes > f.nodes_per_group;
    const std::uint32_t groups = multi_group_ ? (cl.num_nodes + f.nodes_per_group - 1) / f.nodes_per_group : 0;
    ids_.leaves = groups * node.gpus_per_node;
    // A leaf's downlinks: one NIC port per node of the group; its uplinks carry 1/oversubscription of that.
    uplink_bytes_per_s_ = multi_group_ ? f.nodes_per_group * nic_bytes_per_s_ / f.oversubscription : 0.0;
    const std::vector<std::uint8_t> touched = touched_gpus();
    hosts_.assign(ids_.gpus, nullptr);
    // SimGrid's engine owns and deletes the zone. Before 4.0 the first zone created is the root (and its creation
    // builds the models); from 4.0 on the engine has a root already, and the zone becomes its only child, which
    // takes the root's models (NetZoneImpl::set_parent). Routes between two GPUs stay inside the zone either way.
    zone_ =
        new FabricZone("fabric", [this](RankId a, RankId b, std::vector<std::uint32_t>& links) { route(a, b, links); });
    sg4::NetZone* z = zone_->get_iface();
#ifdef TWINSTEP_SG_ENGINE_OWNS_ROOT
    if (engine_->get_netzone_root() == nullptr) {
      throw Error("--fidelity flow: " + flow_engine_version() +
                  " has no root zone after the engine's creation (4.0's headers say the engine creates it): use "
                  "--fidelity analytic");
    }
    zone_->set_parent(engine_->get_netzone_root()->get_impl());
#else
    if (engine_->get_netzone_root() != z) {
      throw Error("--fidelity flow: " + flow_engine_version() +
                  " did not make the first zone created the platform's root (3.32 does): use --fidelity analytic");
    }
#endif
    auto port = [&](const std::string& name, double bytes_per_s, std::uint32_t up_id) {
      sg4::SplitDuplexLink* l = add_split_duplex_link(z, name, bytes_per_s);
      l->seal();
      zone_->set_link(up_id, l->get_link_up());
      zone_->set_link(up_id + 1, l->get_link_down());
    };
    std::vector<std::uint8_t> leaf_used(ids_.leaves, 0);
    for (RankId g = 0; g < ids_.gpus; ++g) {
      if (touched[g] == 0) continue;
      const std::string gn = "gpu" + std::to_string(g);
      hosts_[g] = add_host(z, gn, 1e12)->seal();
      zone_->add_gpu(hosts_[g], g);
      port(gn + "_nvl", nvl_bytes_per_s_, ids_.nvl_up(g));
      if (has_nic) port(gn + "_nic", nic_bytes_per_s_, ids_.nic_up(g));
      if (multi_group_) leaf_used[leaf_of(g)] = 1;
    }
    for (std::uint32_t leaf = 0; leaf < ids_.leaves; ++leaf) {
      if (leaf_used[leaf] != 0) {
        port("leaf" + std::to_string(leaf) + "_uplink", uplink_bytes_per_s_, ids_.uplink_up(leaf));
      }
    }
    z->seal();
  }

  /// Links of the route a -> b in our route model (the platform above routes identically).
  void route(RankId a, RankId b, std::vector<std::uint32_t>& links) const {
    links.clear();
    const auto& cl = ctx_.cluster;
    const std::uint32_t na = cl.node_of(a), nb = cl.node_of(b);
    if (na == nb) {
      links.push_back(ids_.nvl_up(a));
      links.push_back(ids_.nvl_down(b));
      return;
    }
    links.push_back(ids_.nic_up(a));
    if (multi_group_ && group_of(na) != group_of(nb)) {
      links.push_back(ids_.uplink_up(leaf_of(a)));
      links.push_back(ids_.uplink_down(leaf_of(b)));
    }
    links.push_back(ids_.nic_down(b));
  }

  [[nodiscard]] double capacity(std::uint32_t link) const {
    if (link >= 4 * ids_.gpus) return uplink_bytes_per_s_;
    return (link % 4) < 2 ? nvl_bytes_per_s_ : nic_bytes_per_s_;
  }

  // ---- flows ----------------------------------------------------------------------------------------------------

  /// The rings of a communicator, as positions in its member list: within a node every ring visits the members in
  /// order, ring k starting after member k, so that each ring leaves the node through a different GPU's NIC (one
  /// ring per rail, up to the members per node and the channels). One ring when the communicator is within a node.
  const std::vector<std::vector<std::uint32_t>>& rings_of(schedule::CommId comm, std::uint32_t channels) {
    if (rings_.size() < ctx_.schedule.communicators.size()) rings_.resize(ctx_.schedule.communicators.size());
    auto& cached = rings_[comm];
    (void)channels;
    if (!cached.empty()) return cached;
    const auto& members = ctx_.schedule.communicators[comm].members;
    std::map<std::uint32_t, std::vector<std::uint32_t>> by_node;
    for (std::uint32_t i = 0; i < members.size(); ++i) by_node[ctx_.cluster.node_of(members[i])].push_back(i);
    std::uint32_t per_node = UINT32_MAX;
    for (const auto& [n, v] : by_node)
      per_node = std::min<std::uint32_t>(per_node, static_cast<std::uint32_t>(v.size()));
    const std::uint32_t nrings = by_node.size() > 1 && nic_bytes_per_s_ > 0 ? per_node : 1;
    for (std::uint32_t k = 0; k < nrings; ++k) {
      std::vector<std::uint32_t> ring;
      ring.reserve(members.size());
      for (const auto& [n, v] : by_node) {
        const std::size_t m = v.size();
        for (std::size_t j = 0; j < m; ++j) ring.push_back(v[(k + 1 + j) % m]);
      }
      cached.push_back(std::move(ring));
    }
    return cached;
  }

  void build_flows(const Activity& a, const CommCost& cost, std::vector<Flow>& flows) {
    flows.clear();
    const auto& ops = ctx_.schedule.ops;
    if (a.kind == ActivityKind::kPointToPoint) {
      const RankId src = ops[a.op].rank, dst = ops[a.partner].rank;
      if (src != dst) flows.push_back(Flow{src, dst, 1.0, p2p_connections(cost)});
      return;
    }
    const auto& inst = ctx_.matching.collectives[a.instance];
    const auto& coll = std::get<schedule::Collective>(ops[a.op].body);
    const auto& members = ctx_.schedule.communicators[coll.comm].members;
    const std::size_t n = members.size();
    if (n <= 1) return;
    if (coll.kind == schedule::CollectiveKind::kAllToAll) {
      // Per peer. An absent member (reduced schedule) mirrors the present one: it sends what it receives.
      const auto& nc = ctx_.costs.profile().nccl;
      const auto peers = static_cast<std::uint32_t>(n - 1);
      const double w_net = all_to_all_peer_connections(nc, peers, true);
      const double w_nvl = all_to_all_peer_connections(nc, peers, false);
      auto weight = [&](RankId x, RankId y) {
        return ctx_.cluster.node_of(x) == ctx_.cluster.node_of(y) ? w_nvl : w_net;
      };
      for (std::size_t i = 0; i < n; ++i) {
        const OpId o = inst.ops[i];
        if (o == kNoOp) continue;
        const auto& c = std::get<schedule::Collective>(ops[o].body);
        for (std::size_t j = 0; j < n && j < c.send_bytes.size(); ++j) {
          if (j == i || c.send_bytes[j] == 0 || members[i] == members[j]) continue;
          const double b = static_cast<double>(c.send_bytes[j]);
          const double w = weight(members[i], members[j]);
          if (inst.ops[j] != kNoOp) {
            flows.push_back(Flow{members[i], members[j], b, w});
            continue;
          }
          // To and from an absent member: mergeable onto the present member's port where that and the absent
          // member's port are the whole route (merge_flows).
          route(members[i], members[j], scratch_links_);
          const bool two_ports = scratch_links_.size() == 2;
          flows.push_back(Flow{members[i], members[j], b, w, two_ports ? scratch_links_.front() : kRouted});
          flows.push_back(Flow{members[j], members[i], b, w, two_ports ? scratch_links_.back() : kRouted});
        }
      }
      return;
    }
    // Rings: every edge carries the same steady-state bytes; each ring 1/R of them. Only edges with a present
    // end are simulated: an absent member's links carry what the present member's carry (symmetry).
    const auto& rings = rings_of(coll.comm, 0);
    const double share = 1.0 / static_cast<double>(rings.size());
    const double w_ring = ring_edge_connections(cost, static_cast<std::uint32_t>(rings.size()));
    for (const auto& ring : rings) {
      for (std::size_t k = 0; k < n; ++k) {
        const std::uint32_t x = ring[k], y = ring[(k + 1) % n];
        if (inst.ops[x] == kNoOp && inst.ops[y] == kNoOp) continue;
        if (members[x] == members[y]) continue;
        flows.push_back(Flow{members[x], members[y], share, w_ring});
      }
    }
  }

  /// Scales the flows' relative volumes to bytes so that, alone on the platform, the most loaded GPU port finishes
  /// in `bandwidth_time_s` (the cost model's solo time on a non-blocking fabric): contention then stretches it by
  /// max-min sharing, and an oversubscribed leaf uplink (not part of the sizing) by its capacity.
  void size_flows(FlowActivity& fa, double bandwidth_time_s) {
    fa.bytes.assign(fa.flows.size(), 0.0);
    if (fa.flows.empty()) return;
    if (bandwidth_time_s <= 0) {
      fa.flows.clear();
      return;
    }
    load_.clear();
    for (const auto& fl : fa.flows) {
      route(fl.src, fl.dst, scratch_links_);
      for (std::uint32_t l : scratch_links_) {
        if (l < ids_.uplink_up(0)) load_[l] += fl.raw;  // GPU ports only
      }
    }
    double t_iso = 0;  // per unit of raw volume
    for (const auto& [l, v] : load_) t_iso = std::max(t_iso, v / capacity(l));
    TWINSTEP_ASSERT(t_iso > 0, "flows on links of zero capacity");
    const double scale = bandwidth_time_s / t_iso;
    for (std::size_t i = 0; i < fa.flows.size(); ++i) fa.bytes[i] = fa.flows[i].raw * scale;
  }

  /// Merges the all-to-all flows between a present member and absent ones that load the same port of the present
  /// member with the same payload and weight (balanced routing: all of them, per port) into one flow of their summed
  /// payload on that port alone, weighted as all of them (its CM02 penalty divided by their count; its latency kept
  /// by the latency factor). Exact where the absent members' ports bind none of them: each such port carries only the
  /// flows with a present end (the reduced schedule's), a subset of what its present mirror's port carries, and
  /// max-min gives equal flows on one bottleneck equal rates, so they end together, as the merged flow does. Fewer
  /// flows in SimGrid: its per-flow work (3.32 scans every flow in flight at each completion) was most of a reduced
  /// MoE simulation's time.
  void merge_flows(FlowActivity& fa) {
    std::size_t out = 0;
    merged_.clear();
    for (std::size_t i = 0; i < fa.flows.size(); ++i) {
      Flow fl = fa.flows[i];
      const double payload = std::max(1.0, std::round(fa.bytes[i]));
      if (fl.link != kRouted) {
        const auto same = [&](std::size_t k) {
          const Flow& g = fa.flows[k];
          return g.link == fl.link && g.weight == fl.weight && fa.bytes[k] == payload * g.count;
        };
        const auto it = std::find_if(merged_.begin(), merged_.end(), same);
        if (it != merged_.end()) {
          ++fa.flows[*it].count;
          fa.bytes[*it] += payload;
          continue;
        }
        merged_.push_back(out);
      }
      fa.flows[out] = fl;
      fa.bytes[out] = payload;
      ++out;
    }
    fa.flows.resize(out);
    fa.bytes.resize(out);
  }

  std::uint32_t alloc(ActivityId id) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(acts_.size());
      acts_.emplace_back();
    }
    FlowActivity& fa = acts_[slot];
    fa.id = id;
    fa.active = true;
    fa.pending = 0;
    fa.tail_ns = 0;
    fa.in_engine = false;
    fa.in_tail = false;
    fa.comms.clear();
    return slot;
  }

  /// Runs SimGrid until its clock reaches `until` (kNever: kFarS), or until a flow completes on the way (the
  /// completion signal vetoes the stopper, which ends run_until() after that instant). SimGrid 3.32's run_until(t)
  /// also returns after any event (a flow's latency phase ending, a rate change) within 10 us of t
  /// (EngineImpl::run: double_equals(max_date, now, 1e-5)), with the clock short of t: hence the loop. Every
  /// run_until() call makes at least one solver step, which ends at the next event or at t.
  void run_engine_to(Nanos until) {
    const double target = until == kNever ? kFarS : to_s(until);
    const Nanos target_ns = to_ns(target);
    while (batch_.empty() && to_ns(sg4::Engine::get_clock()) < target_ns) {
      vetoed_.clear();
      engine_->run_until(target);
    }
  }

  /// Starts the flows of `slot` (after its latency term), outside the engine at its current clock.
  void launch(std::uint32_t slot) {
    FlowActivity& fa = acts_[slot];
    ++in_flight_;
    fa.in_engine = true;
    fa.pending = static_cast<std::uint32_t>(fa.flows.size());
    fa.comms.reserve(fa.flows.size());
    for (std::size_t i = 0; i < fa.flows.size(); ++i) {
      const Flow& fl = fa.flows[i];
      TWINSTEP_ASSERT(hosts_[fl.src] != nullptr && hosts_[fl.dst] != nullptr, "flow %u->%u to a GPU not built", fl.src,
                      fl.dst);
      sg4::CommPtr c = sg4::Comm::sendto_init(hosts_[fl.src], hosts_[fl.dst]);
      c->set_payload_size(static_cast<std::uint64_t>(std::max(1.0, std::round(fa.bytes[i]))));
      c->set_data(reinterpret_cast<void*>(static_cast<std::uintptr_t>(slot) + 1));
      // A merged flow: the penalty of `count` flows sharing as one, the latency of one of them.
      const auto count = static_cast<double>(fl.count);
      one_link_.assign(1, fl.link);
      zone_->set_next_flow(flow_latency_s(fl.weight) / count, fl.count > 1 ? &one_link_ : nullptr);
      latency_factor_ = count;
      c->start();
      latency_factor_ = 1.0;
      zone_->set_next_flow(flow_latency_s(1.0), nullptr);
      fa.comms.push_back(std::move(c));
    }
  }

  /// The activity's flows are done: released (outside the completion signal: never drop the last reference of an
  /// activity inside it) and no longer counted in flight.
  void leave_engine(FlowActivity& fa) {
    for (auto& c : fa.comms) graveyard_.push_back(std::move(c));
    fa.comms.clear();
    if (fa.in_engine) --in_flight_;
    fa.in_engine = false;
  }

  void finish(std::uint32_t slot, Nanos t, std::vector<ActivityId>& done) {
    FlowActivity& fa = acts_[slot];
    leave_engine(fa);
    fa.active = false;
    gpu_->finish_external(fa.id, t);
    done.push_back(fa.id);
    free_.push_back(slot);
  }

  static inline bool engine_created_ = false;
  const SimContext& ctx_;
  CostModel sizing_costs_;  ///< ctx_.costs on a fabric without oversubscription (the uplinks model it).
  SimContext sizing_ctx_;   ///< ctx_ with sizing_costs_.
  std::unique_ptr<GpuSharingModel> gpu_;
  FabricZone* zone_ = nullptr;  ///< Owned by SimGrid's engine.
  std::unique_ptr<sg4::Engine> engine_;
  LinkIds ids_;
  bool multi_group_ = false;
  double nvl_bytes_per_s_ = 0, nic_bytes_per_s_ = 0, uplink_bytes_per_s_ = 0;
  std::vector<sg4::Host*> hosts_;
  std::vector<std::vector<std::vector<std::uint32_t>>> rings_;
  std::vector<FlowActivity> acts_;
  std::vector<std::uint32_t> free_, instant_, batch_;
  std::vector<sg4::CommPtr> graveyard_;
  std::set<sg4::Activity*> vetoed_;
  sg4::ExecPtr stopper_;
  std::map<std::uint32_t, double> load_;
  std::vector<std::uint32_t> scratch_links_;
  std::vector<std::uint32_t> one_link_;
  std::vector<std::size_t> merged_;
  double latency_factor_ = 1.0;  ///< Multiplies the route latency of the flow started next (launch).
  std::priority_queue<LatencyEnd, std::vector<LatencyEnd>, std::greater<LatencyEnd>> latency_;
  std::uint32_t in_flight_ = 0;  ///< Activities with flows in SimGrid.
  Nanos last_ = 0;
};

}  // namespace

bool flow_model_available() { return true; }

std::string flow_engine_version() {
  return "SimGrid " + std::to_string(SIMGRID_VERSION_MAJOR) + "." + std::to_string(SIMGRID_VERSION_MINOR) +
         (SIMGRID_VERSION_PATCH > 0 ? "." + std::to_string(SIMGRID_VERSION_PATCH) : std::string());
}

std::unique_ptr<ResourceModel> make_flow_model(const SimContext& ctx) { return std::make_unique<FlowModel>(ctx); }

}  // namespace twinstep::sim
