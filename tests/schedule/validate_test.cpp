// Validation: one failing example per error class, a valid schedule passing, deadlock true positives and a
// tricky true negative, and the wording of diagnostics (op id, name, rank, field, fix).
#include "schedule/validate.hpp"

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "schedule/matching.hpp"
#include "tests/catch.hpp"
#include "tests/schedule/samples.hpp"

namespace ts = twinstep::schedule;
using ts::testing::Builder;
using ts::testing::skeleton;

namespace {

/// The single diagnostic of `s`, checked to name `field` and contain `needle`.
void expect_one(const ts::Schedule& s, const std::string& field, const std::string& needle) {
  const auto d = ts::validate(s);
  INFO([&] {
    std::string all;
    for (const auto& x : d) all += ts::format_diagnostic(x, s) + "\n";
    return all;
  }());
  REQUIRE(d.size() == 1);
  CHECK(d[0].field == field);
  CHECK(d[0].message.find(needle) != std::string::npos);
}

/// Two ranks, each: gemm on compute, all_reduce on comm depending on it.
ts::Schedule two_rank_ar() {
  Builder b(skeleton(2));
  for (ts::RankId r = 0; r < 2; ++r) {
    const auto g = b.gemm(r, "g", 0, 64, 64, 64);
    b.all_reduce(r, "ar", 1, 0, 1024, {g});
  }
  return b.take();
}

}  // namespace

TEST_CASE("schedule::validate: hand-written valid schedules pass", "[schedule]") {
  CHECK(ts::validate(ts::testing::every_kind()).empty());
  CHECK(ts::validate(two_rank_ar()).empty());
  CHECK_NOTHROW(ts::check(two_rank_ar()));
}

// One failing example per error class, by the part of the schedule it concerns: together, the list of what
// validate() rejects.
TEST_CASE("schedule::validate: one failing example per error class: ids and ranks", "[schedule]") {
  SECTION("ids not dense") {
    auto s = two_rank_ar();
    s.ops[2].id = 7;
    expect_one(s, "id", "dense");
  }
  SECTION("rank not listed") {
    auto s = two_rank_ar();
    s.ranks = {0};
    s.world_size = 2;
    const auto d = ts::validate(s);
    REQUIRE(!d.empty());
    CHECK(d[0].field == "rank");
  }
}

TEST_CASE("schedule::validate: one failing example per error class: GEMM fields", "[schedule]") {
  SECTION("an integer GEMM accumulating into fp32") {
    auto s = two_rank_ar();
    auto& g = std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel);
    g.accumulate_fp32 = true;
    CHECK(ts::validate(s).empty());  // bf16: fine
    g.dtype = ts::DType::kInt32;
    expect_one(s, "accumulate_fp32", "integer GEMM");
  }
  SECTION("a GEMM accumulating into its output: not integer, not beside accumulate_fp32") {
    auto s = two_rank_ar();
    auto& g = std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel);
    g.accumulate = true;
    CHECK(ts::validate(s).empty());  // bf16: fine
    g.accumulate_fp32 = true;
    expect_one(s, "accumulate", "two C dtypes");
    g.accumulate_fp32 = false;
    g.dtype = ts::DType::kInt64;
    expect_one(s, "accumulate", "integer GEMM");
  }
}

TEST_CASE("schedule::validate: one failing example per error class: streams and communicators", "[schedule]") {
  SECTION("undeclared stream") {
    auto s = two_rank_ar();
    s.ops[0].stream = 5;
    expect_one(s, "stream", "not declared");
  }
  SECTION("undeclared communicator") {
    auto s = two_rank_ar();
    std::get<ts::Collective>(s.ops[1].body).comm = 9;
    const auto d = ts::validate(s);
    REQUIRE(!d.empty());
    CHECK(d[0].op == 1);
    CHECK(d[0].field == "comm");
  }
  SECTION("rank not a member of its communicator") {
    auto s = two_rank_ar();
    s.communicators.push_back({"solo", "tp", {1}});
    std::get<ts::Collective>(s.ops[1].body).comm = 1;
    std::get<ts::Collective>(s.ops[3].body).comm = 1;
    expect_one(s, "comm", "not a member");
  }
}

TEST_CASE("schedule::validate: one failing example per error class: collectives", "[schedule]") {
  SECTION("collective size mismatch") {
    auto s = two_rank_ar();
    std::get<ts::Collective>(s.ops[3].body).bytes = 2048;
    expect_one(s, "collective", "bytes 2048 vs 1024");
  }
  SECTION("collective kind mismatch") {
    auto s = two_rank_ar();
    std::get<ts::Collective>(s.ops[3].body).kind = ts::CollectiveKind::kAllGather;
    expect_one(s, "collective", "kind all_gather vs all_reduce");
  }
  SECTION("collective sequence mismatch: a member issues fewer") {
    auto s = two_rank_ar();
    s.ops[3].body = ts::Host{10};
    expect_one(s, "comm", "no counterpart on member rank 1");
  }
  SECTION("all_to_all split list of the wrong size") {
    Builder b(skeleton(2));
    for (ts::RankId r = 0; r < 2; ++r) {
      b.add(r, "a2a", 1, ts::Collective{ts::CollectiveKind::kAllToAll, 0, 30, ts::DType::kBF16, {10, 10, 10}, 0});
    }
    const auto d = ts::validate(b.schedule());
    REQUIRE(d.size() == 2);
    CHECK(d[0].field == "send_bytes");
  }
  SECTION("broadcast root outside the communicator") {
    Builder b(skeleton(2));
    for (ts::RankId r = 0; r < 2; ++r) {
      b.add(r, "bc", 1, ts::Collective{ts::CollectiveKind::kBroadcast, 0, 8, ts::DType::kBF16, {}, 5});
    }
    const auto d = ts::validate(b.schedule());
    REQUIRE(d.size() == 2);
    CHECK(d[0].field == "root");
  }
}

TEST_CASE("schedule::validate: one failing example per error class: send and recv", "[schedule]") {
  SECTION("unmatched send") {
    Builder b(skeleton(2));
    b.add(0, "send", 1, ts::Send{0, 1, 64, 3});
    b.add(1, "recv", 1, ts::Recv{0, 0, 64, 4});  // wrong tag
    const auto d = ts::validate(b.schedule());
    REQUIRE(d.size() == 2);
    CHECK(d[0].message.find("no matching recv") != std::string::npos);
    CHECK(d[1].message.find("no matching send") != std::string::npos);
  }
  SECTION("send/recv size mismatch") {
    Builder b(skeleton(2));
    b.add(0, "send", 1, ts::Send{0, 1, 64, 0});
    b.add(1, "recv", 1, ts::Recv{0, 0, 32, 0});
    expect_one(b.schedule(), "bytes", "make the sizes equal");
  }
  SECTION("send/recv transport mismatch, and sm_count without a sm_kernel") {
    Builder b(skeleton(2));
    b.add(0, "send", 1, ts::Send{0, 1, 64, 0, ts::Transport::kCopyEngine});
    b.add(1, "recv", 1, ts::Recv{0, 0, 64, 0});
    expect_one(b.schedule(), "transport", "over nccl");
    Builder c(skeleton(2));
    c.add(0, "send", 1, ts::Send{0, 1, 64, 0, ts::Transport::kSmKernel, 0});
    c.add(1, "recv", 1, ts::Recv{0, 0, 64, 0, ts::Transport::kSmKernel, 0});
    const auto d = ts::validate(c.schedule());
    REQUIRE(d.size() == 2);
    CHECK(d[0].field == "sm_count");
    CHECK(d[1].field == "sm_count");
    Builder ok(skeleton(2));
    ok.add(0, "send", 1, ts::Send{0, 1, 64, 0, ts::Transport::kSmKernel, 2});
    ok.add(1, "recv", 1, ts::Recv{0, 0, 64, 0, ts::Transport::kSmKernel, 2});
    CHECK(ts::validate(ok.schedule()).empty());
  }
}

TEST_CASE("schedule::validate: one failing example per error class: deps and host_sync targets", "[schedule]") {
  SECTION("dep on a later op (a dep cycle)") {
    auto s = two_rank_ar();
    s.ops[0].deps = {1};
    expect_one(s, "deps[0]", "not an earlier op");
  }
  SECTION("dep on another rank") {
    auto s = two_rank_ar();
    s.ops[2].deps = {0};
    expect_one(s, "deps[0]", "on rank 0");
  }
  SECTION("host_sync target on a later op") {
    Builder b(skeleton(1));
    b.add(0, "sync", 0, ts::HostSync{1});
    b.gemm(0, "g", 0, 1, 1, 1);
    expect_one(b.schedule(), "target", "not an earlier op");
  }
}

TEST_CASE("schedule::validate: reports every problem at once and formats them", "[schedule]") {
  auto s = two_rank_ar();
  s.ops[0].stream = 9;                                // 1
  std::get<ts::Collective>(s.ops[3].body).bytes = 4;  // 2
  s.ops[2].deps = {3};                                // 3
  s.world_size = 0;                                   // 4 (and ranks/members above world_size)
  const auto d = ts::validate(s);
  CHECK(d.size() >= 4);
  const std::string line = ts::format_diagnostic(d.back(), s);
  bool found = false;
  for (const auto& x : d) {
    if (ts::format_diagnostic(x, s).rfind("op 0 \"g\" (rank 0) stream: ", 0) == 0) found = true;
  }
  CHECK(found);
  try {
    ts::check(s);
    FAIL("check() must throw");
  } catch (const twinstep::ValidationError& e) {
    CHECK(e.problems().size() == d.size());
  }
}

TEST_CASE("schedule::validate: crossed collective order on one stream deadlocks", "[schedule]") {
  ts::Schedule s = skeleton(2);
  s.communicators = {{"A", "tp", {0, 1}}, {"B", "dp", {0, 1}}};
  Builder b(std::move(s));
  b.all_reduce(0, "r0.arA", 1, 0, 64);
  b.all_reduce(0, "r0.arB", 1, 1, 64);
  b.all_reduce(1, "r1.arB", 1, 1, 64);
  b.all_reduce(1, "r1.arA", 1, 0, 64);
  const auto d = ts::validate(b.schedule());
  REQUIRE(d.size() == 1);
  CHECK(d[0].field == "deadlock");
  CHECK(d[0].message.find("rendezvous") != std::string::npos);
  CHECK(d[0].message.find("same stream \"comm\"") != std::string::npos);
  for (const char* name : {"r0.arA", "r0.arB", "r1.arB", "r1.arA"}) {
    CHECK(d[0].message.find(name) != std::string::npos);
  }
}

TEST_CASE("schedule::validate: crossed collective order on different streams is not a deadlock", "[schedule]") {
  ts::Schedule s = skeleton(2);
  s.communicators = {{"A", "tp", {0, 1}}, {"B", "dp", {0, 1}}};
  Builder b(std::move(s));
  b.all_reduce(0, "r0.arA", 0, 0, 64);
  b.all_reduce(0, "r0.arB", 1, 1, 64);
  b.all_reduce(1, "r1.arB", 1, 1, 64);
  b.all_reduce(1, "r1.arA", 0, 0, 64);
  CHECK(ts::validate(b.schedule()).empty());
  // A dep from B on A on rank 0 alone still leaves rank 1 free to start A...
  b.schedule().ops[1].deps = {0};
  CHECK(ts::validate(b.schedule()).empty());
  // ...but with rank 1 also ordering A after B, the cycle closes.
  b.schedule().ops[3].deps = {2};
  const auto d = ts::validate(b.schedule());
  REQUIRE(d.size() == 1);
  CHECK(d[0].message.find("[dep]") != std::string::npos);
}

TEST_CASE("schedule::validate: send-then-recv on both ranks is fine, recv-then-send is a deadlock", "[schedule]") {
  {
    Builder b(skeleton(2));
    b.add(0, "s01", 1, ts::Send{0, 1, 64, 0});
    b.add(0, "r10", 1, ts::Recv{0, 1, 64, 0});
    b.add(1, "s10", 1, ts::Send{0, 0, 64, 0});
    b.add(1, "r01", 1, ts::Recv{0, 0, 64, 0});
    CHECK(ts::validate(b.schedule()).empty());
  }
  {
    Builder b(skeleton(2));
    b.add(0, "r10", 1, ts::Recv{0, 1, 64, 0});
    b.add(0, "s01", 1, ts::Send{0, 1, 64, 0});
    b.add(1, "r01", 1, ts::Recv{0, 0, 64, 0});
    b.add(1, "s10", 1, ts::Send{0, 0, 64, 0});
    const auto d = ts::validate(b.schedule());
    REQUIRE(d.size() == 1);
    CHECK(d[0].field == "deadlock");
    CHECK(d[0].message.find("a recv completes only after its send started") != std::string::npos);
  }
}

TEST_CASE("schedule::validate: a host_sync on a collective a peer only reaches later deadlocks", "[schedule]") {
  // Rank 0: all_reduce A on comm stream, host_sync on it, then issues the gemm rank 1 waits for... via a
  // second collective B that rank 1 issues before A on the same stream.
  ts::Schedule s = skeleton(2);
  s.communicators = {{"A", "tp", {0, 1}}, {"B", "dp", {0, 1}}};
  Builder b(std::move(s));
  const auto a0 = b.all_reduce(0, "r0.A", 1, 0, 64);
  b.add(0, "r0.sync", 0, ts::HostSync{a0});
  b.all_reduce(0, "r0.B", 0, 1, 64);
  b.all_reduce(1, "r1.B", 1, 1, 64);
  b.all_reduce(1, "r1.A", 1, 0, 64);
  const auto d = ts::validate(b.schedule());
  REQUIRE(d.size() == 1);
  CHECK(d[0].message.find("host program order after a host_sync") != std::string::npos);
}

TEST_CASE("schedule::match: instances by order on the communicator, p2p pairs by (comm, peer, tag, order)",
          "[schedule]") {
  const ts::Schedule s = ts::testing::every_kind();
  const ts::Matching m = ts::match(s);
  REQUIRE(m.collectives.size() == 5);
  for (const auto& inst : m.collectives) {
    REQUIRE(inst.ops.size() == 2);
    CHECK(s.ops[inst.ops[0]].rank == 0);
    CHECK(s.ops[inst.ops[1]].rank == 1);
    CHECK(s.ops[inst.ops[0]].name == s.ops[inst.ops[1]].name);
    CHECK(m.instance_of[inst.ops[0]] == m.instance_of[inst.ops[1]]);
  }
  const auto send = static_cast<ts::OpId>(s.ops.size() / 2 - 1);
  REQUIRE(std::holds_alternative<ts::Send>(s.ops[send].body));
  const ts::OpId recv = m.partner[send];
  REQUIRE(recv != ts::kNoOp);
  CHECK(std::holds_alternative<ts::Recv>(s.ops[recv].body));
  CHECK(m.partner[recv] == send);
}

TEST_CASE("schedule::Matching: a copy's instances view the copy's own ops, and a move keeps them valid", "[schedule]") {
  const ts::Schedule s = ts::testing::every_kind();
  std::vector<std::vector<ts::OpId>> expected;
  std::optional<ts::Matching> original(ts::match(s));
  for (const auto& inst : original->collectives) expected.emplace_back(inst.ops.begin(), inst.ops.end());
  ts::Matching copy(*original);
  ts::Matching assigned;
  assigned = *original;
  original.reset();  // the views must not point into the destroyed original
  const ts::Matching moved(std::move(assigned));
  for (const ts::Matching* m : std::initializer_list<const ts::Matching*>{&copy, &moved}) {
    REQUIRE(m->collectives.size() == expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const auto& ops = m->collectives[i].ops;
      CHECK(ops.data() >= m->instance_ops.data());
      CHECK(ops.data() + ops.size() <= m->instance_ops.data() + m->instance_ops.size());
      CHECK(std::vector<ts::OpId>(ops.begin(), ops.end()) == expected[i]);
    }
  }
}

TEST_CASE("schedule::validate: reduced schedules tolerate absent members", "[schedule]") {
  ts::Schedule s = skeleton(4);
  s.ranks = {0, 1};
  s.communicators[0].members = {0, 1, 2, 3};
  Builder b(std::move(s));
  b.all_reduce(0, "ar", 1, 0, 64);
  b.all_reduce(1, "ar", 1, 0, 64);
  b.add(0, "send", 1, ts::Send{0, 2, 64, 0});  // peer 2 absent: mirrored by the recv from absent 3 on rank 0
  b.add(0, "recv", 1, ts::Recv{0, 3, 64, 0});
  CHECK(ts::validate(b.schedule()).empty());
  const auto m = ts::match(b.schedule());
  CHECK(m.partner[2] == 3);
  CHECK(m.partner[3] == 2);

  // A send to an absent peer with no mirrored recv on its own rank would never start: an error naming the fix.
  b.add(1, "send", 1, ts::Send{0, 3, 64, 0});
  const auto d = ts::validate(b.schedule());
  REQUIRE(d.size() == 1);
  CHECK(d[0].field == "peer");
  CHECK(d[0].message.find("no mirrored recv from an absent rank on rank 1") != std::string::npos);
}

TEST_CASE("schedule::first_present_op: the op of the first member present, kNoOp when none is", "[schedule]") {
  ts::Schedule s = skeleton(4);
  s.ranks = {2, 3};  // members 0 and 1 absent
  s.communicators[0].members = {0, 1, 2, 3};
  Builder b(std::move(s));
  const ts::OpId on3 = b.all_reduce(3, "ar", 1, 0, 64);  // issued first, but rank 3 comes after rank 2 in the group
  const ts::OpId on2 = b.all_reduce(2, "ar", 1, 0, 64);
  REQUIRE(ts::validate(b.schedule()).empty());
  const auto m = ts::match(b.schedule());
  REQUIRE(m.collectives.size() == 1);
  CHECK(m.collectives[0].ops[0] == ts::kNoOp);
  CHECK(ts::first_present_op(m.collectives[0]) == on2);
  CHECK(on2 != on3);

  const std::vector<ts::OpId> none{ts::kNoOp, ts::kNoOp};
  ts::CollectiveInstance absent;
  absent.ops = none;
  CHECK(ts::first_present_op(absent) == ts::kNoOp);
  const std::vector<ts::OpId> last{ts::kNoOp, 7};
  absent.ops = last;
  CHECK(ts::first_present_op(absent) == 7);
}
