// Planning of a backend run without a GPU: can_execute's refusals (each naming the op and the field), the device
// memory a rank needs, and a rank's issue plan (program order, deps, host_sync targets, channels, NCCL peers,
// communication sizes from the cross-rank matching).
#include "backend/plan.hpp"

#include <string>
#include <utility>
#include <vector>

#include "schedule/builder.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::schedule::elementwise_kernel;
using twinstep::schedule::gemm_kernel;
using twinstep::schedule::ScheduleBuilder;

namespace {

be::DeviceInfo two_gpus() {
  be::DeviceInfo info;
  info.processes = 2;
  info.device_count = 2;
  info.local_processes = 2;
  info.free_bytes = 100ull << 30;
  return info;
}

sch::Collective collective(sch::CollectiveKind kind, sch::CommId comm, std::uint64_t bytes,
                           std::vector<std::uint64_t> send_bytes = {}, sch::RankId root = 0) {
  return sch::Collective{kind, comm, bytes, sch::DType::kBF16, std::move(send_bytes), root, 0};
}

}  // namespace

TEST_CASE("backend::can_execute: refuses what it cannot run, each reason named", "[backend]") {
  const be::DeviceInfo info = two_gpus();
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "g", 0, gemm_kernel(1024, 1024, 1024));
  sb.add(1, "g", 0, gemm_kernel(1024, 1024, 1024));
  CHECK(be::can_execute(s, info).empty());

  auto join = [](const std::vector<sch::Diagnostic>& d) {
    std::string out;
    for (const auto& x : d) out += x.field + ": " + x.message + "\n";
    return out;
  };
  be::DeviceInfo one = info;
  one.processes = 1;
  CHECK(join(be::can_execute(s, one)).find("mpirun -np 2") != std::string::npos);

  auto reduced = s;
  reduced.world_size = 4;
  CHECK(join(be::can_execute(reduced, info)).find("reduced") != std::string::npos);

  auto fp8 = s;
  fp8.ops[0].body = gemm_kernel(64, 64, 64, sch::DType::kFP8);  // cuBLASLt runs fp8 GEMMs
  CHECK(be::can_execute(fp8, info).empty());
  auto e5m2 = fp8;
  std::get<sch::Gemm>(std::get<sch::Compute>(e5m2.ops[0].body).kernel).a_format = sch::Fp8Format::kE5M2;
  CHECK(be::can_execute(e5m2, info).empty());  // a gradient against e4m3 weights
  std::get<sch::Gemm>(std::get<sch::Compute>(e5m2.ops[0].body).kernel).b_format = sch::Fp8Format::kE5M2;
  const auto two = be::can_execute(e5m2, info);
  REQUIRE(two.size() == 1);
  CHECK(two[0].field == "body.kernel.b_format");
  fp8.ops[0].body = sch::Compute{sch::Attention{1, 4, 4, 128, 128, 64, true, false, sch::DType::kFP8}, 0};
  const auto d = be::can_execute(fp8, info);
  REQUIRE(d.size() == 1);
  CHECK(d[0].op == 0);
  CHECK(d[0].message.find("fp8") != std::string::npos);

  auto big = s;
  big.ops[0].body = gemm_kernel(1ull << 18, 1ull << 18, 1024);  // C alone is 128 GiB
  CHECK(join(be::can_execute(big, info)).find("GPU memory") != std::string::npos);
  CHECK(be::required_device_bytes(big, 0) > (128ull << 30));
  CHECK(be::required_device_bytes(big, 1) < (1ull << 30));

  auto gqa = s;
  gqa.ops[0].body = sch::Compute{sch::Attention{1, 6, 4, 128, 128, 64, true, false, sch::DType::kBF16}, 0};
  CHECK(join(be::can_execute(gqa, info)).find("multiple of heads_kv") != std::string::npos);
}

TEST_CASE("backend::can_execute: an op outside its communicator or stream is named with the field to fix",
          "[backend]") {
  ScheduleBuilder sb(3);
  sb.world();
  auto& s = sb.schedule();
  sb.comm("pair", "tp", {0, 1});
  using CK = sch::CollectiveKind;
  const auto absent = sb.add(2, "ar.rank2", 1, collective(CK::kAllReduce, 1, 4096));  // rank 2 is not in "pair"
  const auto root = sb.add(0, "bc.root3", 1, collective(CK::kBroadcast, 1, 4096, {}, 2));
  const auto a2a = sb.add(1, "a2a.short", 1, collective(CK::kAllToAll, 1, 4096, {4096}));
  const auto send = sb.add(0, "send.to2", 1, sch::Send{1, 2, 64, 0});
  const auto recv = sb.add(0, "recv.from2", 1, sch::Recv{1, 2, 64, 0});
  const auto nocomm = sb.add(0, "ar.nocomm", 1, collective(CK::kAllReduce, 9, 4096));
  const auto nostream = sb.add(1, "g.nostream", 7, gemm_kernel(64, 64, 64));
  sb.comm("too_big", "dp", {0, 5});
  be::DeviceInfo info = two_gpus();
  info.processes = 3;
  info.device_count = 3;
  const auto diags = be::can_execute(s, info);

  auto find = [&](sch::OpId op, const std::string& field) -> std::string {
    for (const auto& d : diags) {
      if (d.op == op && d.field == field) return d.message;
    }
    return "(none)";
  };
  CHECK(find(absent, "body.comm") == "the op's rank is not a member of pair");
  CHECK(find(root, "body.root") == "the broadcast root is not a member of pair");
  CHECK(find(a2a, "body.send_bytes") == "all_to_all needs one size per member of pair");
  CHECK(find(send, "body.peer") == "the peer is not a member of the send's communicator");
  CHECK(find(recv, "body.peer") == "the peer is not a member of the recv's communicator");
  CHECK(find(nocomm, "body.comm") == "communicator 9 does not exist");
  CHECK(find(nostream, "stream") == "stream 7 is not declared");
  CHECK(find(sch::kNoOp, "communicators[2].members") == "member 5 is not a rank of the schedule");
  // Exactly these: the memory check runs only on a schedule that passes everything else.
  CHECK(diags.size() == 8);
}

TEST_CASE("backend::required_device_bytes: every role's largest op on the rank, pinned host memory excluded",
          "[backend]") {
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "g.small", 0, gemm_kernel(64, 64, 64));
  sb.add(0, "g.big", 0, gemm_kernel(1024, 512, 256));  // A 1024x256, B 256x512, C 1024x512 in bf16
  sb.add(0, "elem", 0, elementwise_kernel(1000));      // 500 bytes in, 500 out
  sb.add(0, "d2h", 0, sch::Compute{sch::Memcpy{300, sch::CopyKind::kD2H}, 0});  // device side only counted
  sb.add(0, "ar", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 2000, sch::DType::kBF16, {}, 0, 0});
  sb.add(1, "ar", 1, sch::Collective{sch::CollectiveKind::kAllReduce, 0, 2000, sch::DType::kBF16, {}, 0, 0});
  const std::uint64_t gemms = (1024 * 256 + 256 * 512 + 1024 * 512) * 2;
  const std::uint64_t workspaces = 2 * be::kCublasWorkspaceBytes;  // one per declared stream
  CHECK(be::required_device_bytes(s, 0) == gemms + 500 + 500 + 300 + 2000 + 2000 + workspaces);
  CHECK(be::required_device_bytes(s, 1) == 2000 + 2000 + workspaces);
}

TEST_CASE("backend::plan_rank: program order, GPU deps, host_sync targets, NCCL peers and sizes from the matching",
          "[backend]") {
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  // "rev" lists rank 1 first: NCCL ranks are positions in the member list, not global ranks.
  sb.comm("rev", "tp", {1, 0});
  using CK = sch::CollectiveKind;
  const auto g0 = sb.add(0, "g", 0, gemm_kernel(64, 64, 64));
  const auto g1 = sb.add(1, "g", 0, gemm_kernel(64, 64, 64));
  const auto h0 = sb.add(0, "host", 0, sch::Host{1000});
  // rank 0 sends 100 bytes to position 0 (rank 1) and 300 to itself; rank 1 sends 7 to rank 1 and 11 to rank 0.
  const auto a0 = sb.add(0, "a2a", 1, collective(CK::kAllToAll, 1, 400, {100, 300}), {g0, h0});
  const auto a1 = sb.add(1, "a2a", 1, collective(CK::kAllToAll, 1, 18, {7, 11}), {g1});
  const auto sync0 = sb.add(0, "sync", 0, sch::HostSync{a0});
  const auto bc0 = sb.add(0, "bc", 1, collective(CK::kBroadcast, 1, 512, {}, 1));
  sb.add(1, "bc", 1, collective(CK::kBroadcast, 1, 512, {}, 1));
  const auto ag0 = sb.add(0, "ag", 1, collective(CK::kAllGather, 0, 1000));
  sb.add(1, "ag", 1, collective(CK::kAllGather, 0, 1000));
  const auto snd0 = sb.add(0, "send", 1, sch::Send{0, 1, 64, 0});
  sb.add(1, "recv", 1, sch::Recv{0, 0, 64, 0});
  REQUIRE(be::can_execute(s, two_gpus()).empty());

  const sch::Matching m = sch::match(s);
  const be::ChannelPlan channels = be::plan_channels(s, m);
  const be::RankPlan plan = be::plan_rank(s, m, channels, 0);
  std::vector<sch::OpId> order;
  for (const auto& p : plan.ops) order.push_back(p.op);
  CHECK(order == std::vector<sch::OpId>{g0, h0, a0, sync0, bc0, ag0, snd0});
  const auto& a2a = plan.ops[2];
  CHECK(a2a.gpu);
  CHECK(a2a.deps == std::vector<std::uint32_t>{0});  // the gemm; the host op is the host thread's, not an event
  CHECK(a2a.channel == channels.channel_of_op[a0]);
  CHECK(a2a.channel_size == 2);
  CHECK(a2a.bytes.send == 400);
  CHECK(a2a.bytes.a2a_recv == std::vector<std::uint64_t>{11, 300});  // from rank 1 (position 0), from itself
  CHECK(a2a.bytes.recv == 311);
  CHECK_FALSE(plan.ops[1].gpu);
  CHECK_FALSE(plan.ops[3].gpu);
  CHECK(plan.ops[3].host_sync == 2);
  CHECK(plan.ops[4].peer == 0);  // the root, rank 1, is position 0 of "rev"
  CHECK(plan.ops[5].bytes.send == 500);
  CHECK(plan.ops[5].bytes.recv == 1000);
  CHECK(plan.ops[6].peer == 1);  // rank 1 in the pair channel {0, 1}
  CHECK(channels.channels[plan.ops[6].channel].point_to_point);
  CHECK(plan.ops[0].channel == be::kNoChannel);
  CHECK(plan.buffers[static_cast<std::size_t>(be::Role::kCommSend)] == 512);  // the broadcast's buffer
  CHECK(plan.buffers[static_cast<std::size_t>(be::Role::kCommRecv)] == 1000);

  const be::RankPlan plan1 = be::plan_rank(s, m, channels, 1);
  REQUIRE(plan1.ops.size() == 5);
  CHECK(plan1.ops[1].op == a1);
  CHECK(plan1.ops[1].bytes.a2a_recv == std::vector<std::uint64_t>{7, 100});
}

TEST_CASE("backend::plan: peer-mapped send/recv need no channel, may share a GPU, count their receive slots",
          "[backend]") {
  constexpr auto kCe = sch::Transport::kCopyEngine;
  ScheduleBuilder sb(2, {{"compute", 0}, {"tx", -1}, {"rx", -1}});
  sb.world();
  auto& s = sb.schedule();
  const auto snd0 = sb.add(0, "send", 1, sch::Send{0, 1, 10000, 0, kCe});
  const auto rcv0 = sb.add(0, "recv", 2, sch::Recv{0, 1, 10000, 0, kCe});
  const auto snd1 = sb.add(1, "send", 1, sch::Send{0, 0, 10000, 0, kCe});
  const auto rcv1 = sb.add(1, "recv", 2, sch::Recv{0, 0, 10000, 0, kCe});
  const sch::Matching m = sch::match(s);
  const be::ChannelPlan channels = be::plan_channels(s, m);
  CHECK(channels.channels.empty());
  for (auto id : {snd0, rcv0, snd1, rcv1}) CHECK(channels.channel_of_op[id] == be::kNoChannel);
  const be::RankPlan plan = be::plan_rank(s, m, channels, 0);
  REQUIRE(plan.ops.size() == 2);
  CHECK(plan.ops[0].channel == be::kNoChannel);
  CHECK(plan.ops[0].peer == 1);  // the global rank
  CHECK(plan.ops[0].bytes.send == 10000);
  CHECK(plan.ops[1].bytes.recv == 10000);
  // The message is read from the send buffer; it lands in a peer slot, not in the recv buffer.
  CHECK(plan.buffers[static_cast<std::size_t>(be::Role::kCommSend)] == 10000);
  CHECK(plan.buffers[static_cast<std::size_t>(be::Role::kCommRecv)] == 0);
  // One link per direction, one message each: one 12 KiB slot and one page of flags per rank.
  const std::uint64_t workspaces = 3 * be::kCublasWorkspaceBytes;
  CHECK(be::required_device_bytes(s, 0) == 10000 + 4096 + 12288 + workspaces);

  // Two ranks on one GPU: fine without NCCL, refused (saying why) with a collective.
  be::DeviceInfo shared = two_gpus();
  shared.device_count = 1;
  CHECK(be::can_execute(s, shared).empty());
  ScheduleBuilder with_nccl_b(s);
  auto& with_nccl = with_nccl_b.schedule();
  with_nccl_b.add(0, "ar", 0, collective(sch::CollectiveKind::kAllReduce, 0, 4096));
  with_nccl_b.add(1, "ar", 0, collective(sch::CollectiveKind::kAllReduce, 0, 4096));
  const auto d = be::can_execute(with_nccl, shared);
  REQUIRE(d.size() == 1);
  CHECK(d[0].message.find("share 1 GPUs") != std::string::npos);
  CHECK(d[0].message.find("no NCCL op") != std::string::npos);
  CHECK(be::can_execute(with_nccl, two_gpus()).empty());
  // Sharing ranks share the GPU's free memory: twice one rank's need must fit.
  shared.free_bytes = be::required_device_bytes(s, 0) + be::kNcclReserveBytes + 1;
  CHECK(be::can_execute(s, two_gpus()).empty());
  const auto mem = be::can_execute(s, shared);
  REQUIRE(mem.size() == 2);  // each rank
  CHECK(mem[0].message.find("times the 2 ranks sharing its GPU") != std::string::npos);
}

TEST_CASE("backend::quote_op and kind_word: how errors name an op", "[backend]") {
  ScheduleBuilder sb(2);
  sb.world();
  auto& s = sb.schedule();
  sb.add(0, "L0.ar", 1, sch::Collective{sch::CollectiveKind::kReduceScatter, 0, 64, sch::DType::kBF16, {}, 0, 0});
  sb.add(0, "L0.sync", 0, sch::HostSync{0});
  CHECK(be::quote_op(s.ops[1]) == "op 1 \"L0.sync\"");
  CHECK(be::kind_word(s.ops[0]) == "collective reduce_scatter");
  CHECK(be::kind_word(s.ops[1]) == "host_sync");
}
