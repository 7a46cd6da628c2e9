// Cost-model tests: efficiency interpolation, roofline, NCCL algorithm/protocol choice and step structure against
// hardware.md's worked examples, and the calibration profile loader (overrides and errors).
#include "sim/cost_model.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "sim/connections.hpp"
#include "tests/catch.hpp"
#include "tests/sim/builder.hpp"

using namespace twinstep;
using namespace twinstep::sim;
using namespace twinstep::sim::testing;

namespace {
Communicator group(std::vector<RankId> m) { return Communicator{"g", "dp", std::move(m)}; }
std::vector<RankId> iota(RankId first, std::uint32_t n, std::uint32_t stride = 1) {
  std::vector<RankId> v;
  for (std::uint32_t i = 0; i < n; ++i) v.push_back(first + i * stride);
  return v;
}
}  // namespace

TEST_CASE("sim::EfficiencyTable: log-linear interpolation, clamped at the ends", "[sim]") {
  const EfficiencyTable t{{{1e9, 0.2}, {1e11, 0.8}}};
  CHECK(t.at(1e8) == Approx(0.2));
  CHECK(t.at(1e10) == Approx(0.5));
  CHECK(t.at(1e13) == Approx(0.8));
}

TEST_CASE("sim::CostModel: roofline compute time for GEMM and streaming kernels", "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  const CostModel costs(cluster, Profile::datasheet_defaults());
  const auto g = costs.kernel_cost(Compute{Gemm{8192, 8192, 8192, 1, DType::kBF16}, 0});
  // 8192^3 reaches 798 TFLOP/s (hardware.md 1.2): 2*8192^3 / 798e12.
  CHECK(g.solo_time_s() == Approx(2.0 * 8192.0 * 8192.0 * 8192.0 / 798e12).epsilon(1e-9));
  CHECK(g.tiles == 64u * 32u);
  const auto e = costs.kernel_cost(Compute{Elementwise{1ull << 30, 0}, 0});
  CHECK(e.solo_time_s() == Approx((1ull << 30) / (3.35e12 * 0.9)).epsilon(1e-9));
  const auto fp8 = costs.kernel_cost(Compute{Gemm{8192, 8192, 8192, 1, DType::kFP8}, 0});
  CHECK(fp8.flop_time_s == Approx(g.flop_time_s / 2).epsilon(1e-3));
  const auto d2h = costs.kernel_cost(Compute{Memcpy{64 << 20, CopyKind::kD2H}, 0});
  CHECK_FALSE(d2h.uses_hbm);
  CHECK(d2h.solo_time_s() == Approx((64 << 20) / 64e9));
}

TEST_CASE("sim::CostModel: an accumulating GEMM costs its GEMM time plus the fp32 epilogue's extra HBM bytes",
          "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  const CostModel costs(cluster, Profile::datasheet_defaults());
  const double bw = 3.35e12 * 0.9;  // HBM x the datasheet profile's memory efficiency
  Gemm g{4096, 1024, 8192, 1, DType::kBF16};
  const double plain = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate_fp32 = true;
  // Per output element: fp32 read + write (8 B) instead of a bf16 write (2 B).
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(plain + 6.0 * 4096 * 1024 / bw).epsilon(1e-9));
  g.dtype = DType::kFP8;  // fp8 GEMMs write bf16: the same 6 B extra
  g.accumulate_fp32 = false;
  const double plain8 = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(plain8 + 6.0 * 4096 * 1024 / bw).epsilon(1e-9));
  GroupedGemm gg{{128, 0, 64}, 2048, 1024, DType::kBF16};
  const double plain_g = costs.kernel_cost(Compute{gg, 0}).flop_time_s;
  gg.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{gg, 0}).flop_time_s == Approx(plain_g + 6.0 * 192 * 2048 / bw).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: a GEMM accumulating into its bf16 output pays one bf16 read of C more, not the fp32 table",
          "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  // A measured gemm_accumulate table (fp32 C) must not price a bf16-C accumulation: the class table plus the C read.
  const Profile p = profile_from_json(
      R"({"schema_version":1,"compute":{"gemm":[[1e6,0.5],[1e15,0.5]],"gemm_accumulate":[[1e6,0.25],[1e15,0.25]]}})",
      "p.json");
  const CostModel costs(cluster, p);
  const double bw = 3.35e12 * p.memory_efficiency;
  Gemm g{4096, 1024, 8192, 1, DType::kBF16};
  const double plain = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate = true;
  // Per output element: a bf16 read + write (4 B) instead of a bf16 write (2 B).
  CHECK(sim::accumulate_epilogue_extra_bytes(g) == 2.0 * 4096 * 1024);
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(plain + 2.0 * 4096 * 1024 / bw).epsilon(1e-9));
  CHECK_FALSE(sim::reads_accumulate_table(g));
  // The fp32 accumulation of the same GEMM costs more: the measured table's time (twice the plain one here).
  g.accumulate = false;
  g.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(2 * plain).epsilon(1e-12));
  // fp8 GEMMs write bf16: the same 2 B; a grouped GEMM per routed row.
  Gemm g8{4096, 1024, 8192, 1, DType::kFP8};
  const double plain8 = costs.kernel_cost(Compute{g8, 0}).flop_time_s;
  g8.accumulate = true;
  CHECK(costs.kernel_cost(Compute{g8, 0}).flop_time_s == Approx(plain8 + 2.0 * 4096 * 1024 / bw).epsilon(1e-9));
  GroupedGemm gg{{128, 0, 64}, 2048, 1024, DType::kBF16};
  const double plain_g = costs.kernel_cost(Compute{gg, 0}).flop_time_s;
  gg.accumulate = true;
  CHECK(costs.kernel_cost(Compute{gg, 0}).flop_time_s == Approx(plain_g + 2.0 * 192 * 2048 / bw).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: a measured gemm_accumulate table prices bf16 accumulating GEMMs, read from the profile",
          "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  // A flat gemm table at 0.5 and a flat gemm_accumulate table at 0.25: an accumulating bf16 GEMM takes exactly twice
  // the plain one (the measured table includes the epilogue: no bytes added), as read back from the profile's JSON.
  const sim::Profile p = sim::profile_from_json(
      R"({"schema_version":1,"compute":{"gemm":[[1e6,0.5],[1e15,0.5]],"gemm_accumulate":[[1e6,0.25],[1e15,0.25]]}})",
      "p.json");
  REQUIRE(p.compute.count("gemm_accumulate") == 1);
  CHECK(sim::profile_to_json(p).find("\"gemm_accumulate\"") != std::string::npos);
  const CostModel costs(cluster, p);
  Gemm g{4096, 1024, 8192, 1, DType::kBF16};
  const double plain = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(2 * plain).epsilon(1e-12));
  // fp8 accumulating GEMMs keep the fp8 GEMM time plus the epilogue's bytes (the table is at the bf16 peak).
  g.dtype = DType::kFP8;
  g.accumulate_fp32 = false;
  const double plain8 = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s ==
        Approx(plain8 + 6.0 * 4096 * 1024 / (3.35e12 * p.memory_efficiency)).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: a measured gemm_accumulate_bf16 table prices GEMMs accumulating into a bf16 C", "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  // Flat tables: gemm 0.5, gemm_accumulate (fp32 C) 0.25, gemm_accumulate_bf16 0.4: a bf16-C accumulation takes
  // 0.5 / 0.4 of the plain GEMM (the table holds the C read: no bytes added), read back from the profile's JSON.
  const sim::Profile p = sim::profile_from_json(
      R"({"schema_version":1,"compute":{"gemm":[[1e6,0.5],[1e15,0.5]],"gemm_accumulate":[[1e6,0.25],[1e15,0.25]],
          "gemm_accumulate_bf16":[[1e6,0.4],[1e15,0.4]]}})",
      "p.json");
  REQUIRE(p.compute.count("gemm_accumulate_bf16") == 1);
  CHECK(sim::profile_to_json(p).find("\"gemm_accumulate_bf16\"") != std::string::npos);
  const CostModel costs(cluster, p);
  Gemm g{4096, 1024, 8192, 1, DType::kBF16};
  const double plain = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate = true;
  CHECK(sim::reads_accumulate_bf16_table(g));
  CHECK_FALSE(sim::reads_accumulate_table(g));
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(plain * 0.5 / 0.4).epsilon(1e-12));
  g.accumulate = false;
  g.accumulate_fp32 = true;
  CHECK_FALSE(sim::reads_accumulate_bf16_table(g));
  CHECK(costs.kernel_cost(Compute{g, 0}).flop_time_s == Approx(2 * plain).epsilon(1e-12));
  // fp8 GEMMs accumulating into bf16 keep the fp8 GEMM time plus the C read (the table is at the bf16 peak).
  Gemm g8{4096, 1024, 8192, 1, DType::kFP8};
  const double plain8 = costs.kernel_cost(Compute{g8, 0}).flop_time_s;
  g8.accumulate = true;
  CHECK_FALSE(sim::reads_accumulate_bf16_table(g8));
  CHECK(costs.kernel_cost(Compute{g8, 0}).flop_time_s ==
        Approx(plain8 + 2.0 * 4096 * 1024 / (3.35e12 * p.memory_efficiency)).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: an accumulating GEMM with its op stem's table takes that table's time, no bytes added",
          "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  // The op table was fitted from a trace that timed the op as the framework ran it, fp32 epilogue included.
  const Profile p = profile_from_json(R"({"schema_version":1,"compute":{"gemm":[[1e6,0.5],[1e15,0.5]]},
      "op_compute":{"bwd.fc1_wgrad":[[1e6,0.25],[1e15,0.25]]}})",
                                      "ops.json");
  const CostModel costs(cluster, p);
  Gemm g{4096, 1024, 8192, 1, DType::kBF16};
  const double plain = costs.kernel_cost(Compute{g, 0}).flop_time_s;
  g.accumulate_fp32 = true;
  CHECK(costs.kernel_cost(Compute{g, 0}, "L3.mb1.bwd.fc1_wgrad").flop_time_s == Approx(2 * plain).epsilon(1e-12));
  // Another op of the same shape: the class table plus the epilogue's bytes.
  CHECK(costs.kernel_cost(Compute{g, 0}, "L3.mb1.bwd.fc2_wgrad").flop_time_s ==
        Approx(plain + 6.0 * 4096 * 1024 / (3.35e12 * p.memory_efficiency)).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: NCCL latency terms match hardware.md's 8-GPU worked example", "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  Profile p = Profile::datasheet_defaults();
  const auto span = CostModel(cluster, p).span(group(iota(0, 8)));
  CHECK(span.nodes == 1);
  CHECK(span.per_node == 8);
  // Ring LL all-reduce latency, 8 GPUs: 6.6 + 14 x 0.6 = 15.0 us; Ring Simple 8.4 + 14 x 3.4 = 56.0 us.
  p.nccl.algorithms = {NcclAlgo::kRing};
  p.nccl.protocols = {NcclProto::kLL};
  CHECK(CostModel(cluster, p).collective_cost(CollectiveKind::kAllReduce, 8, span).latency_s == Approx(15.0e-6));
  p.nccl.protocols = {NcclProto::kSimple};
  CHECK(CostModel(cluster, p).collective_cost(CollectiveKind::kAllReduce, 8, span).latency_s == Approx(56.0e-6));
  // Tree LL, 2 nodes x 8 GPUs: 6.8 + 2 x (7 x 0.6 + 1 x (5.0 + hop)) (hardware.md 4.4 gives 25.2 us without hops).
  const auto two = topologies::load_cluster("dgx-h100", {2, 0});
  p.nccl.algorithms = {NcclAlgo::kTree};
  p.nccl.protocols = {NcclProto::kLL};
  const CostModel c2(two, p);
  const auto span2 = c2.span(group(iota(0, 16)));
  CHECK(span2.nodes == 2);
  CHECK(c2.collective_cost(CollectiveKind::kAllReduce, 8, span2).latency_s ==
        Approx(25.2e-6 + 2 * two.fabric.hop_latency_s));
  // Ring LL, same cluster: 6.6 + 28 x max(0.6, 1.0 net overhead) + 2 x (2.7 + hop) = 40.0 us plus hops.
  p.nccl.algorithms = {NcclAlgo::kRing};
  CHECK(CostModel(two, p).collective_cost(CollectiveKind::kAllReduce, 8, span2).latency_s ==
        Approx(40.0e-6 + 2 * two.fabric.hop_latency_s));
}

TEST_CASE("sim::CostModel: default choice is LL for tiny and Simple ring at NVLink busbw for large", "[sim]") {
  const auto cluster = topologies::load_cluster("dgx-h100");
  const CostModel costs(cluster, Profile::datasheet_defaults());
  const auto span = costs.span(group(iota(0, 8)));
  const auto tiny = costs.collective_cost(CollectiveKind::kAllReduce, 1024, span);
  CHECK(tiny.proto == NcclProto::kLL);
  CHECK(tiny.time_s() < 20e-6);
  const double big = 8.0 * (1ull << 30);
  const auto large = costs.collective_cost(CollectiveKind::kAllReduce, big, span);
  CHECK(large.algo == NcclAlgo::kRing);
  CHECK(large.proto == NcclProto::kSimple);
  CHECK(large.channels == 24u);
  const double busbw = big / large.time_s() * 2 * 7 / 8;
  CHECK(busbw == Approx(370.8e9).epsilon(0.01));  // nccl-tests 365-370 GB/s with NCCL_ALGO=Ring (hardware.md 6.2)
  // A DP group with one GPU per node over 4 nodes is limited by one NIC.
  const auto four = topologies::load_cluster("dgx-h100", {4, 0});
  const CostModel c4(four, Profile::datasheet_defaults());
  const auto dp = c4.span(group(iota(0, 4, 8)));
  CHECK(dp.per_node == 1);
  const auto ar = c4.collective_cost(CollectiveKind::kAllReduce, big, dp);
  CHECK(ar.uses_nic);
  CHECK(big / ar.time_s() * 2 * 3 / 4 < 48e9);
  // Small messages use fewer channels, so fewer SMs.
  const auto mid = costs.collective_cost(CollectiveKind::kAllGather, 256 * 1024, span);
  CHECK(mid.channels < 24u);
}

TEST_CASE("sim::CostModel: all-to-all and send/recv use NVLink within a node and one NIC across", "[sim]") {
  const auto two = topologies::load_cluster("dgx-h100", {2, 0});
  const CostModel costs(two, Profile::datasheet_defaults());
  const auto intra = costs.p2p_cost(1e9, 0, 1);
  const auto inter = costs.p2p_cost(1e9, 0, 8);
  CHECK_FALSE(intra.uses_nic);
  CHECK(inter.uses_nic);
  CHECK(intra.bandwidth_time_s == Approx(1e9 / 370.8e9));
  CHECK(inter.bandwidth_time_s == Approx(1e9 / 48e9));
  const auto span = costs.span(group(iota(0, 16)));
  const auto a2a = costs.all_to_all_cost(7e8, 8e8, 15, 1e8, span);
  CHECK(a2a.bandwidth_time_s == Approx(8e8 / 48e9));
  CHECK(a2a.uses_nic);
}

TEST_CASE("sim::read_profile: overrides apply, absent sections keep datasheet defaults", "[sim]") {
  const Profile p = read_profile(std::string(TWINSTEP_SOURCE_DIR) + "/tests/sim/data/profile_example.json");
  CHECK(p.name.find("example h200x2") == 0);
  CHECK(p.context.at("nccl") == "2.28.3");
  CHECK(p.compute.at("gemm").at(1e12) == Approx(0.81));
  CHECK(p.compute.count("attention_fwd") == 1);  // default kept
  CHECK(p.memory_efficiency == Approx(0.88));
  CHECK(p.launch_s.at("compute") == Approx(5e-6));
  CHECK(p.launch_s.at("send") == Approx(4.24e-6));
  CHECK(p.nccl.algorithms.size() == 1);
  CHECK(p.interference.comm_hbm_bytes_per_bus_byte == Approx(2.0));
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const CostModel costs(cluster, p);
  const auto c = costs.collective_cost(CollectiveKind::kAllReduce, 1e9, costs.span(group({0, 1})));
  CHECK(c.proto == NcclProto::kSimple);
  CHECK(c.time_s() == Approx(10e-6 + 2 * 3e-6 + 1e9 / 324e9));
}

TEST_CASE("sim::CostModel: attention_causal_work full costs a non-causal kernel as the causal one", "[sim]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const Attention causal{1, 32, 8, 2048, 6144, 128, true, false, DType::kBF16};
  Attention full = causal;
  full.causal = false;
  // Default (FlashAttention semantics): the non-causal kernel does twice the work at the same shape.
  const std::string table = R"("compute": {"attention_fwd": [[1e9, 0.05], [1e12, 0.07]]})";
  const Profile half = profile_from_json(R"({"schema_version": 1, )" + table + "}", "half.json");
  CHECK_FALSE(half.attention_full_scores);
  const CostModel ch(cluster, half);
  const double f_causal = 0.5 * 4.0 * 32 * 2048 * 6144 * 128;
  const double t_causal = f_causal / (989.4e12 * half.compute.at("attention_fwd").at(f_causal));
  CHECK(ch.kernel_cost(Compute{causal, 0}).flop_time_s == Approx(t_causal).epsilon(1e-9));
  CHECK(ch.kernel_cost(Compute{full, 0}).flop_time_s ==
        Approx(2 * f_causal / (989.4e12 * half.compute.at("attention_fwd").at(2 * f_causal))).epsilon(1e-9));
  // "full": the implementation computes every score, so both cost the causal figure (the table's own axis).
  const Profile fs =
      profile_from_json(R"({"schema_version": 1, "attention_causal_work": "full", )" + table + "}", "full.json");
  CHECK(fs.attention_full_scores);
  const CostModel cf(cluster, fs);
  CHECK(cf.kernel_cost(Compute{causal, 0}).flop_time_s == Approx(t_causal).epsilon(1e-9));
  CHECK(cf.kernel_cost(Compute{full, 0}).flop_time_s == Approx(t_causal).epsilon(1e-9));
}

TEST_CASE("sim::CostModel: a non-causal attention kernel reads the attention_noncausal table where there is one",
          "[sim]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const double peak = 989.4e12;
  const Attention causal{1, 32, 8, 2048, 4096, 128, true, false, DType::kBF16};
  Attention full = causal;
  full.causal = false;
  Attention full_bwd = full;
  full_bwd.backward = true;
  const double f_full = 4.0 * 32 * 2048 * 4096 * 128;  // fwd: two GEMMs of 2 x s_q x s_kv x d per head
  // Constant tables: causal 0.05 (fwd) / 0.04 (bwd), non-causal 0.08 / 0.06.
  const std::string causal_tables =
      R"("attention_fwd": [[1e9, 0.05], [1e13, 0.05]], "attention_bwd": [[1e9, 0.04], [1e13, 0.04]])";
  const std::string noncausal_tables =
      R"(, "attention_noncausal_fwd": [[1e9, 0.08], [1e13, 0.08]], "attention_noncausal_bwd": [[1e9, 0.06], [1e13, 0.06]])";
  for (const char* work : {"half", "full"}) {
    INFO("attention_causal_work " << work);
    const std::string head = std::string(R"({"schema_version": 1, "attention_causal_work": ")") + work + R"(", )";
    const CostModel with(
        cluster, profile_from_json(head + R"("compute": {)" + causal_tables + noncausal_tables + "}}", "with.json"));
    // The non-causal kernels: their own FLOPs at the non-causal tables, whatever attention_causal_work says.
    CHECK(with.kernel_cost(Compute{full, 0}).flop_time_s == Approx(f_full / (peak * 0.08)).epsilon(1e-9));
    CHECK(with.kernel_cost(Compute{full_bwd, 0}).flop_time_s == Approx(2.5 * f_full / (peak * 0.06)).epsilon(1e-9));
    // The causal kernel keeps the causal table (half the FLOPs).
    CHECK(with.kernel_cost(Compute{causal, 0}).flop_time_s == Approx(0.5 * f_full / (peak * 0.05)).epsilon(1e-9));
    // Without the non-causal tables: the causal table, at the FLOPs attention_causal_work gives.
    const CostModel without(cluster,
                            profile_from_json(head + R"("compute": {)" + causal_tables + "}}", "without.json"));
    const double f = std::string(work) == "full" ? 0.5 * f_full : f_full;
    CHECK(without.kernel_cost(Compute{full, 0}).flop_time_s == Approx(f / (peak * 0.05)).epsilon(1e-9));
  }
}

TEST_CASE("sim::CostModel: grouped_gemm_table per_group reads the table at FLOPs per non-empty group", "[sim]") {
  const auto cluster = topologies::load_cluster("h200x2-nvlink");
  const double peak = 989.4e12;
  // Efficiency 0.1 at 1e9 FLOPs, 0.5 from 1e11 on (linear in log FLOPs between).
  const std::string table = R"("compute": {"grouped_gemm": [[1e9, 0.1], [1e11, 0.5]]})";
  // 64 experts of 8 rows (one empty), n = k = 2048: each non-empty group 2 * 8 * 2048 * 2048 = 67.1 MFLOP.
  GroupedGemm g{std::vector<std::uint64_t>(64, 8), 2048, 2048, DType::kBF16};
  g.m[5] = 0;
  const double per_group = 2.0 * 8 * 2048 * 2048;
  const double total = 63 * per_group;
  const Profile tot = profile_from_json(R"({"schema_version": 1, )" + table + "}", "total.json");
  CHECK_FALSE(tot.grouped_gemm_per_group);
  CHECK(CostModel(cluster, tot).kernel_cost(Compute{g, 0}).flop_time_s ==
        Approx(total / (peak * tot.compute.at("grouped_gemm").at(total))).epsilon(1e-9));
  const Profile pg =
      profile_from_json(R"({"schema_version": 1, "grouped_gemm_table": "per_group", )" + table + "}", "pg.json");
  CHECK(pg.grouped_gemm_per_group);
  // Below the table's first point: efficiency 0.1 (clamped), so 63 groups take 63 x (one group at 0.1).
  CHECK(CostModel(cluster, pg).kernel_cost(Compute{g, 0}).flop_time_s == Approx(63 * per_group / (peak * 0.1)));
  // Half the groups with twice the rows: per-group FLOPs double, time = 32 x one such group at its efficiency.
  const GroupedGemm h{std::vector<std::uint64_t>(32, 16), 2048, 2048, DType::kBF16};
  const double eff2 = pg.compute.at("grouped_gemm").at(2 * per_group);
  CHECK(eff2 == Approx(0.1));
  CHECK(CostModel(cluster, pg).kernel_cost(Compute{h, 0}).flop_time_s ==
        Approx(32 * 2 * per_group / (peak * eff2)).epsilon(1e-9));
  // Inside the table: 4 groups of 2 * 8192 * 2048 * 2048 = 68.7 GFLOP each.
  const GroupedGemm big{std::vector<std::uint64_t>(4, 8192), 2048, 2048, DType::kBF16};
  const double f_big = 2.0 * 8192 * 2048 * 2048;
  const double e_big = 0.1 + 0.4 * std::log(f_big / 1e9) / std::log(100.0);
  CHECK(CostModel(cluster, pg).kernel_cost(Compute{big, 0}).flop_time_s == Approx(4 * f_big / (peak * e_big)));
}

TEST_CASE("sim::Interference: the first waiting kernel holds its share, each further one the second share", "[sim]") {
  Interference itf;
  itf.waiting_sms_per_channel = 0.5;
  CHECK(itf.waiting_sms({}) == 0);
  // Unset second share: every waiting kernel holds the first share.
  CHECK(itf.waiting_sms({32, 32, 16}) == 40);
  itf.waiting_sms_per_channel_more = 0.25;
  // The kernel with the most channels counts as the first: 0.5 x 32 + 0.25 x (32 + 16) = 28.
  CHECK(itf.waiting_sms({16, 32, 32}) == 28);
  CHECK(itf.waiting_sms({24}) == 12);
  itf.waiting_sms_per_channel = 0;  // not modelled
  CHECK(itf.waiting_sms({32, 32}) == 0);
  const Profile p = profile_from_json(
      R"({"schema_version": 1, "interference": {"waiting_sms_per_channel": 0.6, "waiting_sms_per_channel_more": 0.4}})",
      "w.json");
  CHECK(p.interference.waiting_sms_per_channel_more == Approx(0.4));
  CHECK(Profile::datasheet_defaults().interference.waiting_sms_per_channel_more < 0);
}

TEST_CASE("sim::read_profile: errors name the file, the field and the fix", "[sim]") {
  auto err = [](const std::string& text) {
    try {
      (void)profile_from_json(text, "p.json");
    } catch (const ParseError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(err(R"({"schema_version": 2})").find("p.json: /schema_version") == 0);
  CHECK(err(R"({"schema_version": 1, "launch": {"kernel": "1 us"}})").find("p.json: /launch/kernel: unknown field") ==
        0);
  CHECK(err(R"({"schema_version": 1, "launch": {"computes": "1 us"}})") ==
        "p.json: /launch/computes: unknown field \"computes\" (accepted here: compute, memcpy, collective, send, recv, "
        "host_sync, grouped_gemm_group, event); did you mean \"compute\"?");
  CHECK(
      err(R"({"schema_version": 1, "compute": {"gemm": [[1e9, 1.5]]}})").find("/compute/gemm/0: efficiency must be") !=
      std::string::npos);
  CHECK(err(R"({"schema_version": 1, "launch": {"compute": "5 GB"}})").find("/launch/compute") != std::string::npos);
  CHECK(err(R"({"schema_version": 1, "nccl": {"algorithms": ["nvls"]}})").find("/nccl/algorithms/0") !=
        std::string::npos);
  CHECK(err("{not json").find("p.json: line 1, column 3: not valid JSON: syntax error") == 0);
  CHECK(err(R"({"schema_version": 1, "interference": {"waiting_sms_per_channel": 2}})")
            .find("/interference/waiting_sms_per_channel: must be in [0, 1]") != std::string::npos);
  CHECK(err(R"({"schema_version": 1, "attention_causal_work": "most"})").find("p.json: /attention_causal_work: use") ==
        0);
  CHECK(err(R"({"schema_version": 1, "interference": {"waiting_sms_per_channel_more": 1.5}})")
            .find("/interference/waiting_sms_per_channel_more: must be in [0, 1]") != std::string::npos);
  CHECK(err(R"({"schema_version": 1, "grouped_gemm_table": "per_expert"})")
            .find("p.json: /grouped_gemm_table: use \"per_group\"") == 0);
  CHECK(err(R"({"schema_version": 1, "op_compute": {"L0.mb0.fwd.rope": [[1e6, 0.1]]}})")
            .find("p.json: /op_compute/L0.mb0.fwd.rope: expected an op stem") == 0);
  CHECK(err(R"({"schema_version": 1, "op_compute": {"fwd.rope": [[1e6, 2]]}})").find("/op_compute/fwd.rope/0") !=
        std::string::npos);
}

TEST_CASE("sim::CostModel: an op stem's own table wins over its class table", "[sim]") {
  CHECK(op_stem("L3.mb2.bwd.fc1_wgrad") == "bwd.fc1_wgrad");
  CHECK(op_stem("mb0.fwd.output") == "fwd.output");
  CHECK(op_stem("optim.adam") == "optim.adam");
  CHECK(op_stem("dp.chunk0.zero_grad_buffer") == "dp.chunk0.zero_grad_buffer");
  CHECK(op_stem("Lx.mb0.fwd.a") == "Lx.mb0.fwd.a");  // not a layer number: kept
  CHECK(op_stem("L12.fwd.qkv") == "fwd.qkv");
  const auto cluster = topologies::load_cluster("dgx-h100");
  const Profile p = profile_from_json(R"({"schema_version": 1, "memory_tables": "bytes",
      "compute": {"elementwise": [[1e6, 0.9]]}, "op_compute": {"fwd.rope": [[1e6, 0.1]]}})",
                                      "ops.json");
  const Profile again = profile_from_json(profile_to_json(p), "again.json");
  REQUIRE(again.op_compute.size() == 1);
  CHECK(again.op_compute.at("fwd.rope").points == p.op_compute.at("fwd.rope").points);
  const CostModel costs(cluster, p);
  const Compute rope{Elementwise{1ull << 30, 0}, 0};
  const double hbm = cluster.node.gpu.hbm_bytes_per_s;
  // 1 GiB at 10 % of HBM for the rope op of any layer and micro-batch; every other op (or no name) at 90 %.
  CHECK(costs.kernel_cost(rope, "L7.mb1.fwd.rope").solo_time_s() == Approx(1073741824.0 / (hbm * 0.1)));
  CHECK(costs.kernel_cost(rope, "L7.mb1.fwd.swiglu").solo_time_s() == Approx(1073741824.0 / (hbm * 0.9)));
  CHECK(costs.kernel_cost(rope).solo_time_s() == Approx(1073741824.0 / (hbm * 0.9)));
  CHECK(costs.op_table("L0.mb0.fwd.rope") == &costs.profile().op_compute.at("fwd.rope"));
  CHECK(costs.op_table("fwd.swiglu") == nullptr);
}

TEST_CASE("sim::CostModel: inter-node all-to-all against published nccl-tests figures for DGX H100 (CX-7 NDR)",
          "[sim][a2a]") {
  // Oracle (docs/alltoall.md): NVIDIA/nccl-tests issue 267, maintainers: an alltoall
  // cannot aggregate several NICs, so a rank's inter-node traffic runs at one NIC's rate, and a CX-7 at NDR
  // (400 Gb/s) reaches 48-49 GB/s. For nccl-tests' alltoall_perf over n nodes of 8 GPUs with S bytes per rank,
  // (N - 8) / N of S leaves the node, so busbw = S / t x (N - 1) / N = [48, 49] GB/s x N / (N - 8) x (N - 1) / N.
  // Checked within 5 % at 1 GiB per rank (bandwidth-bound) on 2, 4 and 6 nodes.
  for (std::uint32_t nodes : {2u, 4u, 6u}) {
    const auto cluster = topologies::load_cluster("dgx-h100", {nodes, 0});
    const CostModel costs(cluster, Profile::datasheet_defaults());
    const std::uint32_t n = 8 * nodes;
    const double s = 1024.0 * 1024 * 1024, per_peer = s / n;
    const auto span = costs.span(group(iota(0, n)));
    const auto a2a = costs.all_to_all_cost(7 * per_peer, (n - 8) * per_peer, n - 1, per_peer, span);
    const double busbw = s / a2a.time_s() * (n - 1) / n;
    const double share = static_cast<double>(n) / (n - 8) * (n - 1) / n;
    CAPTURE(nodes, busbw / 1e9);
    CHECK(busbw > 0.95 * 48e9 * share);
    CHECK(busbw < 1.05 * 49e9 * share);
  }
}

TEST_CASE("sim::CostModel: a multi-node all-to-all picks LL by the network peers' channels", "[sim][a2a]") {
  // NCCL's LL threshold is p2pnChannelsPerPeer x 16 KiB, p2pnChannelsPerPeer the fewest channels of any peer: within
  // a node the NVLink peers' p2p_channels_nvlink (32 x 16 KiB = 512 KiB), across nodes NCCL_NCHANNELS_PER_NET_PEER
  // (p2p_channels_net, 4 x 16 KiB = 64 KiB) for every peer, NVLink ones included.
  const Profile prof = Profile::datasheet_defaults();
  const auto two = topologies::load_cluster("dgx-h100", {2, 0});
  const CostModel costs(two, prof);
  const double nic = 48e9;  // dgx-h100.json nic_achievable_bandwidth, one NIC per GPU
  const double threshold = prof.nccl.p2p_channels_net * 16384.0;
  CHECK(threshold == 65536.0);
  const auto span16 = costs.span(group(iota(0, 16)));
  // 16 ranks, even split: each rank sends 7 peers within its node and 8 across.
  const auto at = [&](double per_peer) {
    return costs.all_to_all_cost(7 * per_peer, 8 * per_peer, 15, per_peer, span16);
  };
  const auto ll = at(threshold);
  CHECK(ll.proto == NcclProto::kLL);
  CHECK(ll.bandwidth_time_s == Approx(8 * threshold / (nic * 0.5)));  // LL: half the wire carries flags
  const auto simple = at(threshold + 16);
  CHECK(simple.proto == NcclProto::kSimple);
  CHECK(simple.bandwidth_time_s == Approx(8 * (threshold + 16) / nic));
  // 128 KiB per peer: Simple across nodes (it was LL at the NVLink threshold before), LL within one node.
  CHECK(at(131072).proto == NcclProto::kSimple);
  const auto span8 = costs.span(group(iota(0, 8)));
  const auto intra = costs.all_to_all_cost(7 * 131072.0, 0, 7, 131072, span8);
  CHECK(intra.proto == NcclProto::kLL);
  CHECK(intra.bandwidth_time_s == Approx(7 * 131072.0 / (370.8e9 * 0.5)));
}

namespace {
/// An even all-to-all of `n` ranks (8 per node) on the SuperPOD fat tree against the closed form of NCCL's channels
/// per network peer: `channels` (worked out by hand from NCCL's rule, NcclConfig::net_channels_per_peer) sets the LL
/// threshold at channels x 16 KiB per peer, LL running the NIC at half its 48 GB/s (flags), and the connections a
/// network peer holds on the NIC (channels x 8 / (n - 1), a round's share). With `wider` (the channels before the
/// halving), a per-peer message between the two thresholds runs in Simple, where it ran in LL before.
void check_net_channels(std::uint32_t n, std::uint32_t channels, std::uint32_t wider) {
  const auto pod = topologies::load_cluster("h100-superpod", {32, 0});
  const CostModel costs(pod, Profile::datasheet_defaults());
  const auto& nc = costs.profile().nccl;
  const auto span = costs.span(group(iota(0, n)));
  const auto at = [&](double per_peer) {
    return costs.all_to_all_cost(7 * per_peer, (n - 8) * per_peer, n - 1, per_peer, span);
  };
  CAPTURE(n);
  CHECK(nc.net_channels_per_peer(n) == channels);
  const double threshold = channels * 16384.0;
  const auto ll = at(threshold);
  CHECK(ll.proto == NcclProto::kLL);
  CHECK(ll.bandwidth_time_s == Approx((n - 8) * threshold / (48e9 * 0.5)));
  const auto simple = at(threshold + 16);
  CHECK(simple.proto == NcclProto::kSimple);
  CHECK(simple.bandwidth_time_s == Approx((n - 8) * (threshold + 16) / 48e9));
  if (wider > channels) CHECK(at(wider * 16384.0).proto == NcclProto::kSimple);
  CHECK(all_to_all_peer_connections(nc, n - 1, true) == Approx(channels * 8.0 / (n - 1)));
}
}  // namespace

// NCCL halves the channels per network peer (4 for one 400G NIC) while channels x ceil(ranks / 8) exceeds the 32 p2p
// channels (src/graph/paths.cc, ncclTopoComputeP2pChannels), so every peer fits in one round: 4 x ceil(n / 8) <= 32
// up to 64 ranks, 2 x ceil(n / 8) <= 32 up to 128, 1 beyond. The three regimes at their edges:
TEST_CASE("sim::CostModel: a multi-node all-to-all of up to 64 ranks keeps 4 channels per network peer", "[sim][a2a]") {
  check_net_channels(16, 4, 4);
  check_net_channels(64, 4, 4);
}

TEST_CASE("sim::CostModel: a multi-node all-to-all of 65-128 ranks halves to 2 channels per network peer",
          "[sim][a2a]") {
  check_net_channels(72, 2, 4);
  check_net_channels(128, 2, 4);
}

TEST_CASE("sim::CostModel: a multi-node all-to-all of more than 128 ranks keeps 1 channel per network peer",
          "[sim][a2a]") {
  check_net_channels(136, 1, 2);
  check_net_channels(256, 1, 2);
  // The halving stops at 1 however many rounds there are.
  CHECK(Profile::datasheet_defaults().nccl.net_channels_per_peer(4096) == 1);
}

TEST_CASE("sim::CostModel: inter-node all-to-all beside published alltoall_perf figures (table printed)",
          "[sim][a2a]") {
  // docs/alltoall.md: nccl-tests' alltoall_perf with S bytes per rank on n ranks of
  // 8-GPU nodes (each peer S / n), busbw = S / t x (n - 1) / n, on the SuperPOD fat tree (h100-superpod, 32 nodes).
  const auto pod = topologies::load_cluster("h100-superpod", {32, 0});
  const CostModel costs(pod, Profile::datasheet_defaults());
  const auto a2a = [&](std::uint32_t n, double s) {
    const double per_peer = s / n;
    return costs.all_to_all_cost(7 * per_peer, (n - 8) * per_peer, n - 1, per_peer, costs.span(group(iota(0, n))));
  };
  std::printf("a2a: ranks, bytes per rank, model time (us), busbw (GB/s), protocol\n");
  for (std::uint32_t n : {16u, 32u, 64u, 128u, 256u}) {
    for (double s : {1048576.0, 8388608.0, 67108864.0, 1073741824.0}) {
      const auto c = a2a(n, s);
      std::printf("a2a: %u, %.0f, %.1f, %.1f, %s\n", n, s, c.time_s() * 1e6, s / c.time_s() * (n - 1) / n / 1e9,
                  c.proto == NcclProto::kLL ? "LL" : "Simple");
    }
  }
  // NVIDIA/nccl issue 1531 (8 nodes x 8 H800, 8 x 400G per node): 8 MiB per rank on 64 ranks took 337.8 us
  // out-of-place and 295.6 us in-place. The model has the bandwidth and NCCL's step latencies but no per-message
  // cost of the network proxy (128 KiB per peer, 56 remote peers), so it must come out faster than both.
  const double t64 = a2a(64, 8388608.0).time_s();
  CAPTURE(t64 * 1e6);
  CHECK(a2a(64, 8388608.0).proto == NcclProto::kSimple);
  CHECK(t64 < 295.6e-6);
  CHECK(t64 > 0.5 * 337.8e-6);
}

TEST_CASE("sim::CostModel: PXN's NVLink relay never binds a DGX H100 all-to-all", "[sim][a2a]") {
  // With PXN (NCCL >= 2.12, NCCL_PXN_DISABLE=0) a GPU's bytes for a remote GPU on another rail first cross NVLink to
  // the local GPU on that rail, which sends them on its NIC. Under an even split each GPU relays (g - 1) / g of a
  // GPU's inter-node bytes, so its NVLink carries intra + inter (g - 1) / g. The model leaves the relay out; this
  // holds it to the closed form that NVLink stays under the NIC: (7 + (n - 8) 7/8) / 370.8 < (n - 8) / 48.
  const auto pod = topologies::load_cluster("h100-superpod", {32, 0});
  const CostModel costs(pod, Profile::datasheet_defaults());
  for (std::uint32_t n : {16u, 32u, 64u, 128u, 256u}) {
    const double per_peer = 1048576.0;
    const double intra = 7 * per_peer, inter = (n - 8) * per_peer;
    const auto span = costs.span(group(iota(0, n)));
    const auto plain = costs.all_to_all_cost(intra, inter, n - 1, per_peer, span);
    const auto relayed = costs.all_to_all_cost(intra + inter * 7 / 8, inter, n - 1, per_peer, span);
    CAPTURE(n);
    CHECK(relayed.time_s() == Approx(plain.time_s()));
    CHECK(plain.bandwidth_time_s == Approx(inter / 48e9));
  }
}

TEST_CASE("sim::CostModel: one-node all-to-all beside a published H100 alltoall_perf figure", "[sim][a2a]") {
  // NVIDIA/nccl issue 2169: 4 H100 of one node, NCCL 2.30.4, 500 MiB per rank: 1174.14 us, busbw 334.90 GB/s.
  // Datasheet: NVLink at NCCL's 370.8 GB/s, about 10 % fast; the default H100 profile's measured all_to_all line
  // (two H200 over NVLink, borrowed: calibration/profiles/h100x1.json) within 3 %.
  const auto node = topologies::load_cluster("dgx-h100");
  const double s = 524288000.0, per_peer = s / 4;
  const auto busbw = [&](const Profile& prof) {
    const CostModel costs(node, prof);
    const auto c = costs.all_to_all_cost(3 * per_peer, 0, 3, per_peer, costs.span(group(iota(0, 4))));
    return s / c.time_s() * 3 / 4;
  };
  const double datasheet = busbw(Profile::datasheet_defaults());
  const double measured = busbw(read_profile(std::string(TWINSTEP_SOURCE_DIR) + "/calibration/profiles/h100x1.json"));
  std::printf("a2a: 4 x H100, 500 MiB per rank: busbw datasheet %.1f, h100x1 profile %.1f, published 334.9 GB/s\n",
              datasheet / 1e9, measured / 1e9);
  CHECK(datasheet / 334.9e9 == Approx(1.1).epsilon(0.02));
  CHECK(measured / 334.9e9 == Approx(1.0).epsilon(0.03));
}
