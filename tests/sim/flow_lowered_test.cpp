// Property test for the flow model on lowered schedules (issue 6): for small Megatron steps of several layouts
// (TP, PP with VPP, DP overlap, CP p2p, MoE EP) both fidelities complete, and on one node, where the analytic and
// the flow model time communication the same way unless two transfers share an NVLink port, the step times agree.
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "models/lower.hpp"
#include "schedule/analysis.hpp"
#include "schedule/matching.hpp"
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/support/run_configs.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using schedule::Trace;

namespace {

struct LoweredCase {
  std::string name;
  std::string model;
  std::uint32_t layers;
  models::RunConfig config;
};

models::RunConfig base_config() {
  models::RunConfig c;
  c.world_size = 8;
  c.micro_batch_size = 1;
  c.seq_length = 2048;
  c.cuda_device_max_connections = 1;
  c.use_distributed_optimizer = true;
  return c;
}

std::vector<LoweredCase> lowered_cases() {
  std::vector<LoweredCase> cases;
  {
    auto c = base_config();
    c.tensor_model_parallel_size = 8;
    c.sequence_parallel = true;
    c.global_batch_size = 2;
    cases.push_back({"tp8 sp", "llama3-8b", 2, c});
  }
  {
    auto c = base_config();
    c.tensor_model_parallel_size = 2;
    c.pipeline_model_parallel_size = 4;
    c.virtual_pipeline_model_parallel_size = 2;
    c.sequence_parallel = true;
    c.global_batch_size = 8;
    cases.push_back({"tp2 pp4 vpp2", "llama3-8b", 8, c});
  }
  {
    auto c = base_config();
    c.tensor_model_parallel_size = 2;
    c.sequence_parallel = true;
    c.global_batch_size = 8;
    cases.push_back({"tp2 dp4 no overlap", "llama3-8b", 2, c});  // the control for the next case
    c = twinstep::testing::with_overlap(c, "dp");
    cases.push_back({"tp2 dp4 dp-overlap", "llama3-8b", 2, c});
  }
  {
    auto c = base_config();
    c.tensor_model_parallel_size = 2;
    c.context_parallel_size = 2;
    c.cp_comm_type = models::CpCommType::kP2p;
    c.sequence_parallel = true;
    c.seq_length = 4096;
    c.global_batch_size = 4;
    cases.push_back({"tp2 cp2 dp2 cp p2p", "llama3-8b", 2, c});
  }
  {
    auto c = base_config();
    c.expert_model_parallel_size = 8;
    c.global_batch_size = 8;
    cases.push_back({"ep8 alltoall", "qwen3-30b-a3b", 2, c});
  }
  return cases;
}

/// The longest time, over ranks, during which two or more communication activities of one rank run at once in
/// `t` (an activity runs from its last member's arrival to its end). Only then can two transfers share a GPU's
/// NVLink port, which the flow model shares max-min and the analytic model does not (its model_limits note).
double overlapped_comm_s(const Trace& t) {
  const auto& s = t.schedule;
  const schedule::Matching m = schedule::match(s);
  std::vector<Nanos> begin(s.ops.size(), 0);
  for (const auto& inst : m.collectives) {
    Nanos b = 0;
    for (schedule::OpId o : inst.ops) {
      if (o != schedule::kNoOp) b = std::max(b, t.records[o].start_ns);
    }
    for (schedule::OpId o : inst.ops) {
      if (o != schedule::kNoOp) begin[o] = b;
    }
  }
  for (schedule::OpId o = 0; o < s.ops.size(); ++o) {
    const schedule::OpId p = m.partner.empty() ? schedule::kNoOp : m.partner[o];
    if (p != schedule::kNoOp) begin[o] = std::max(t.records[o].start_ns, t.records[p].start_ns);
  }
  std::map<schedule::RankId, std::vector<std::pair<Nanos, int>>> events;
  for (schedule::OpId o = 0; o < s.ops.size(); ++o) {
    const auto k = s.ops[o].body.index();
    if (k < 1 || k > 3 || t.records[o].end_ns <= begin[o]) continue;  // collective, send or recv
    if (k == 3) continue;                                             // a transfer once (its send)
    events[s.ops[o].rank].push_back({begin[o], +1});
    events[s.ops[o].rank].push_back({t.records[o].end_ns, -1});
    if (k == 2) {
      events[s.ops[m.partner[o]].rank].push_back({begin[o], +1});
      events[s.ops[m.partner[o]].rank].push_back({t.records[o].end_ns, -1});
    }
  }
  Nanos worst = 0;
  for (auto& [rank, ev] : events) {
    std::sort(ev.begin(), ev.end());
    Nanos sum = 0, prev = 0;
    int running = 0;
    for (const auto& [time, delta] : ev) {
      if (running >= 2) sum += time - prev;
      running += delta;
      prev = time;
    }
    worst = std::max(worst, sum);
  }
  return to_seconds(worst);
}

}  // namespace

TEST_CASE(
    "sim::flow: lowered steps (tp, pp+vpp, dp overlap, cp p2p, ep) complete under both fidelities and agree "
    "on one node",
    "[sim][flow]") {
  if (!flow_model_available()) return;
  const auto cluster = topologies::load_cluster("dgx-h100");
  const CostModel costs(cluster, Profile::datasheet_defaults());
  for (const auto& lc : lowered_cases()) {
    CAPTURE(lc.name);
    models::ModelSpec model = models::load_model(lc.model);
    model.num_layers = lc.layers;
    const models::Lowered lowered = models::lower(model, lc.config);
    Options oa, of;
    of.fidelity = sim::Fidelity::kFlow;
    const Trace a = simulate(lowered.schedule, cluster, costs, oa);
    const Trace f = simulate(lowered.schedule, cluster, costs, of);  // throws on a lost completion (deadlock)
    const double ta = to_seconds(a.step_times_ns.at(0)), tf = to_seconds(f.step_times_ns.at(0));
    const double overlap_s = overlapped_comm_s(f);
    INFO("analytic " << ta << " s, flow " << tf << " s, overlapped communication " << overlap_s << " s");
    REQUIRE(ta > 0);
    // Sharing a port only slows a transfer, and by no more than the time the sharers overlap (up to 1 ns per
    // activity apart: flows start off the ns grid, after their weight-carrying SimGrid latency).
    CHECK(tf >= ta * (1 - 1e-5));
    CHECK(tf - ta <= overlap_s + 1e-5 * ta);
    if (lc.name == "tp2 dp4 dp-overlap") {
      // The one legitimate difference (~1%): the DP reduce-scatters/all-gathers overlap the TP collectives of the
      // backward/forward on the same GPUs, and the two rings share each GPU's NVLink port (max-min in flow, not
      // modelled in analytic). The same layout without DP overlap (the case before) agrees within 0.5%.
      CHECK(overlap_s > 0);
      CHECK(tf > ta * 1.001);
    } else {
      CHECK(tf == Approx(ta).epsilon(0.005));
    }
  }
}
