// Send/recv transports (schedule::Transport): a TP2 ring exchange beside a GEMM on each GPU. A copy-engine transfer
// holds no SMs (the GEMM takes its solo time) and runs at the copy engine's NVLink bandwidth; NCCL send/recv kernels
// hold their channels' SMs and slow the GEMM; a sm_kernel transfer holds its sm_count. Both fidelities.
#include "sim/simulate.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {

constexpr std::uint64_t kBytes = 256ull << 20;

struct Ends {
  Nanos gemm = 0;      ///< Rank 0's GEMM.
  Nanos transfer = 0;  ///< Rank 0's recv.
};

/// Each of two GPUs sends kBytes to the other (tp_send / tp_recv streams) while an 8192^3 GEMM runs; with
/// `exchange` false, the GEMM alone.
Ends ring_beside_gemm(Transport transport, std::uint32_t sms, bool exchange, Fidelity fidelity,
                      double copy_engine_efficiency = CopyEngine::kDefaultNvlinkEfficiency) {
  Builder b(2, {{"compute", 0}, {"tp_send", -1}, {"tp_recv", -1}});
  const CommId tp = b.comm("tp", "tp", {0, 1});
  OpId recv0 = kNoOp, gemm0 = kNoOp;
  for (RankId r = 0; r < 2; ++r) {
    if (exchange) {
      b.add(r, "send", 1, Send{tp, 1 - r, kBytes, 0, transport, sms});
      const OpId rv = b.add(r, "recv", 2, Recv{tp, 1 - r, kBytes, 0, transport, sms});
      if (r == 0) recv0 = rv;
    }
    const OpId g = b.gemm(r, "gemm", 0, 8192, 8192, 8192);
    if (r == 0) gemm0 = g;
  }
  const auto cluster = uniform_node(2, 370.8e9);
  Options opt;
  opt.fidelity = fidelity;
  Profile profile = closed_form_profile();
  profile.copy_engine.nvlink_efficiency = copy_engine_efficiency;
  const auto trace = simulate(b.schedule(), cluster, CostModel(cluster, profile), opt);
  Ends e;
  for (const auto& rec : trace.records) {
    if (rec.op == gemm0) e.gemm = rec.end_ns;
    if (rec.op == recv0) e.transfer = rec.end_ns;
  }
  return e;
}

void check_fidelity(Fidelity fidelity) {
  const Nanos solo = ring_beside_gemm(Transport::kNccl, 0, false, fidelity).gemm;
  // Copy engine: no SMs held, so the GEMM (compute-bound: the copy's HBM bytes leave it compute-bound) is unchanged;
  // the transfer takes bytes / (NVLink line rate x 376/450), the copy engine's measured peer-copy bandwidth.
  const Ends ce = ring_beside_gemm(Transport::kCopyEngine, 0, true, fidelity);
  CHECK(ce.gemm == solo);
  const double line = topologies::load_cluster("dgx-h100").node.nvlink_bytes_per_s;
  const double want_ns = static_cast<double>(kBytes) / (line * 376.0 / 450.0) * 1e9;
  CHECK(static_cast<double>(ce.transfer) == Approx(want_ns).epsilon(1e-3));
  // The rate is the profile's copy_engine.nvlink_efficiency (a measured profile's figure): 0.5 of the line rate.
  const Ends half = ring_beside_gemm(Transport::kCopyEngine, 0, true, fidelity, 0.5);
  CHECK(static_cast<double>(half.transfer) == Approx(static_cast<double>(kBytes) / (line * 0.5) * 1e9).epsilon(1e-3));
  CHECK(half.gemm == solo);
  // NCCL: each direction's kernel holds p2p_channels_nvlink (32) SMs on both GPUs, 64 of 132 while both run: the
  // GEMM's 2048 tiles need 31 waves instead of 16 meanwhile, so it ends later.
  const Ends nccl = ring_beside_gemm(Transport::kNccl, 0, true, fidelity);
  CHECK(static_cast<double>(nccl.gemm) > 1.2 * static_cast<double>(solo));
  // sm_kernel: 1 SM per direction leaves 130 SMs, still 16 waves (unchanged); 16 SMs per direction leave 100: 21.
  CHECK(ring_beside_gemm(Transport::kSmKernel, 1, true, fidelity).gemm == solo);
  const Nanos sk16 = ring_beside_gemm(Transport::kSmKernel, 16, true, fidelity).gemm;
  CHECK(sk16 > solo);
  CHECK(sk16 < nccl.gemm);
}

}  // namespace

TEST_CASE("sim: a copy-engine ring exchange leaves a GEMM's time unchanged, NCCL send/recv slows it", "[sim]") {
  check_fidelity(Fidelity::kAnalytic);
}

TEST_CASE("sim: transports in the flow model", "[sim][flow]") {
  if (!flow_model_available()) return;  // no SimGrid in this build
  check_fidelity(Fidelity::kFlow);
}

TEST_CASE("sim: a copy-engine transfer across nodes is refused, naming the op and the fix", "[sim]") {
  Builder b(2, {{"compute", 0}, {"tp_send", -1}, {"tp_recv", -1}});
  const CommId tp = b.comm("tp", "tp", {0, 1});
  b.add(0, "ring_send", 1, Send{tp, 1, 64, 0, Transport::kCopyEngine});
  b.add(1, "ring_recv", 2, Recv{tp, 0, 64, 0, Transport::kCopyEngine});
  topologies::Cluster cluster = uniform_node(1, 370.8e9);
  cluster.num_nodes = 2;
  CHECK_THROWS_WITH(simulate(b.schedule(), cluster, CostModel(cluster, closed_form_profile())),
                    twinstep_contains("\"ring_send\"") && twinstep_contains("one NVLink domain"));
}
