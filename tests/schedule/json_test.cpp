// JSON round trips (IR -> JSON -> IR and JSON -> IR -> JSON are identities) and reader errors that name the
// JSON pointer and the fix.
#include "schedule/json.hpp"

#include <string>

#include "common/error.hpp"
#include "tests/catch.hpp"
#include "tests/schedule/samples.hpp"

namespace ts = twinstep::schedule;
using ts::testing::every_kind;

namespace {

/// The ParseError's pointer and message for `text`, or FAILs if it parses.
std::pair<std::string, std::string> parse_error_of(const std::string& text) {
  try {
    (void)ts::schedule_from_json(text, "x.json");
  } catch (const twinstep::ParseError& e) {
    return {e.pointer(), e.what()};
  }
  FAIL("expected a ParseError for: " << text);
  return {};
}

std::string minimal_with_op(const std::string& op) {
  return R"({"schema_version":1,"name":"m","world_size":1,"ranks":[0],"streams":[{"name":"compute","priority":0}],)"
         R"("communicators":[{"name":"world","kind":"dp","members":[0]}],"ops":[)" +
         op + "]}";
}

}  // namespace

TEST_CASE("schedule::json: IR -> JSON -> IR is the identity for every op kind and kernel class", "[schedule]") {
  const ts::Schedule s = every_kind();
  const std::string text = ts::schedule_to_json(s);
  const ts::Schedule back = ts::schedule_from_json(text, "mem");
  CHECK(back == s);
  CHECK(ts::schedule_to_json(back) == text);
}

TEST_CASE("schedule::json: JSON -> IR -> JSON is the identity on canonical text", "[schedule]") {
  const std::string text = ts::schedule_to_json(every_kind());
  CHECK(ts::schedule_to_json(ts::schedule_from_json(text, "mem")) == text);
  // One op per line: the ops array is line-oriented, easy to diff and grep.
  CHECK(text.find("\n{\"id\":2,\"rank\":0,\"name\":\"grouped\",\"kind\":\"compute\"") != std::string::npos);
}

TEST_CASE("schedule::json: default fields may be omitted and key order does not matter", "[schedule]") {
  // ops before streams/communicators (deferred path), tags/deps/priority/dtype/batch omitted.
  const std::string text =
      R"({"ops":[{"kind":"compute","id":0,"rank":0,"name":"g","stream":"c","kernel":{"class":"gemm","m":2,"n":3,"k":4}},)"
      R"({"id":1,"rank":0,"name":"ar","kind":"collective","stream":"c","collective":"all_reduce","comm":"w","bytes":8}],)"
      R"("streams":[{"name":"c"}],"communicators":[{"name":"w","kind":"dp","members":[0]}],)"
      R"("world_size":1,"ranks":[0],"schema_version":1})";
  const ts::Schedule s = ts::schedule_from_json(text, "mem");
  REQUIRE(s.ops.size() == 2);
  const auto& g = std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel);
  CHECK(g.m == 2);
  CHECK(g.batch == 1);
  CHECK(g.dtype == ts::DType::kBF16);
  CHECK(s.ops[0].tags.layer == -1);
  CHECK(std::get<ts::Collective>(s.ops[1].body).bytes == 8);
  CHECK(s.name.empty());
}

TEST_CASE("schedule::json: trace round trip", "[schedule]") {
  ts::Trace t;
  t.producer = "sim";
  t.context = {{"gpu", "H100"}, {"topology", "dgx-h100"}};
  t.step_times_ns = {1000, 1010};
  t.schedule = every_kind();
  for (const auto& op : t.schedule.ops) {
    t.records.push_back({op.id, op.rank, static_cast<twinstep::Nanos>(op.id) * 10, op.id * 10 + 5, op.id * 10 + 9});
  }
  const std::string text = ts::trace_to_json(t);
  const ts::Trace back = ts::trace_from_json(text, "mem");
  CHECK(back == t);
  CHECK(ts::trace_to_json(back) == text);
}

TEST_CASE("schedule::json: unknown schema_version says which version this build reads", "[schedule]") {
  const auto [ptr, msg] = parse_error_of(R"({"schema_version":2,"world_size":1})");
  CHECK(ptr == "/schema_version");
  CHECK(msg.find("reads schema_version 1") != std::string::npos);
}

TEST_CASE("schedule::json: structural errors name the JSON pointer and the fix", "[schedule]") {
  const std::string good_kernel = R"("kernel":{"class":"gemm","m":1,"n":2,"k":3})";
  struct Case {
    std::string op;
    std::string pointer;
    std::string needle;
  };
  const Case cases[] = {
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"gemm","m":-1,"n":2,"k":3}})",
       "/ops/0/kernel/m", "non-negative integer"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"nope",)" + good_kernel + "}", "/ops/0/stream",
       "declare it in /streams"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute",)" + good_kernel + "}", "/ops/0/stream", "missing required"},
      {R"({"id":0,"rank":0,"name":"a","kind":"launch"})", "/ops/0/kind", "use one of"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"conv"}})",
       "/ops/0/kernel/class", "grouped_gemm"},
      // Kernel fields, each class's listed once (json_kernels.hpp): required ones, allowed keys, value types.
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"attention","heads_kv":1,"seq_q":1,"seq_kv":1,"head_dim":8}})",
       "/ops/0/kernel/heads_q", "missing required field \"heads_q\" (query heads)"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"memcpy","bytes":1,"flops":2}})",
       "/ops/0/kernel/flops", "in a memcpy kernel (accepted here: class, bytes, copy); remove it or fix its spelling"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"memcpy","bytes":1,"copy":"p2p"}})",
       "/ops/0/kernel/copy", "unknown copy direction \"p2p\" (use one of: \"d2h\", \"h2d\", \"d2d\")"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"grouped_gemm","m":4,"n":2,"k":3}})",
       "/ops/0/kernel/m", "expected an array (rows per group: a list, one entry per local expert)"},
      {R"({"id":0,"rank":0,"name":"a","kind":"compute","stream":"compute","kernel":{"class":"attention","heads_q":1,"heads_kv":1,"seq_q":1,"seq_kv":1,"head_dim":8,"causal":1}})",
       "/ops/0/kernel/causal", "expected true or false"},
      {R"({"id":0,"rank":0,"name":"a","kind":"collective","stream":"compute","collective":"all_reduce","comm":"tp","bytes":1})",
       "/ops/0/comm", "declare it in /communicators"},
      {R"({"id":0,"rank":0,"name":"a","kind":"collective","stream":"compute","collective":"all_to_all","comm":"world","bytes":1})",
       "/ops/0/send_bytes", "one byte count per communicator member"},
      {R"({"id":0,"rank":0,"name":"a","kind":"host","stream":"compute","duration_ns":5})", "/ops/0/stream",
       "host thread"},
      {R"({"id":0,"rank":0,"name":"a","kind":"host","duration_ns":5,"tags":{"micro_batch":1}})",
       "/ops/0/tags/micro_batch", "microbatch"},
      {R"({"id":0,"rank":0,"name":"a","kind":"host","duration_ns":5,"tags":{"phase":"forward"}})", "/ops/0/tags/phase",
       "\"fwd\""},
      {R"({"id":0,"rank":0,"name":"a","kind":"host","duration_ns":"5 us"})", "/ops/0/duration_ns", "integer"},
      {R"({"id":0,"rank":0,"name":"a","kind":"host_sync"})", "/ops/0/target", "missing required"},
      {R"(7)", "/ops/0", "expected an op object"},
  };
  for (const auto& c : cases) {
    INFO(c.op);
    const auto [ptr, msg] = parse_error_of(minimal_with_op(c.op));
    CHECK(ptr == c.pointer);
    CHECK(msg.find(c.needle) != std::string::npos);
    CHECK(msg.find("x.json") == 0);
  }
}

TEST_CASE("schedule::json: syntax errors and wrong top-level types are ParseErrors", "[schedule]") {
  CHECK_THROWS_AS(ts::schedule_from_json("", "x"), twinstep::ParseError);
  CHECK_THROWS_AS(ts::schedule_from_json("{\"schema_version\":1,", "x"), twinstep::ParseError);
  CHECK_THROWS_AS(ts::schedule_from_json("[1,2,3]", "x"), twinstep::ParseError);
  CHECK_THROWS_AS(ts::schedule_from_json("\xff\xfe garbage", "x"), twinstep::ParseError);
  CHECK_THROWS_AS(ts::trace_from_json(R"({"schema_version":1,"producer":"sim","records":[3]})", "x"),
                  twinstep::ParseError);
  const auto [ptr, msg] = parse_error_of(R"({"schema_version":1,"world_size":1,"ranks":[0],"streams":[]})");
  CHECK(ptr == "/communicators");
}

TEST_CASE("schedule::json: spellings", "[schedule]") {
  CHECK(std::string(ts::dtype_name(ts::DType::kFP8)) == "fp8");
  CHECK(ts::parse_dtype("int32") == ts::DType::kInt32);
  CHECK_THROWS_AS(ts::parse_dtype("bfloat16"), twinstep::Error);
  CHECK(std::string(ts::collective_name(ts::CollectiveKind::kReduceScatter)) == "reduce_scatter");
  CHECK(std::string(ts::phase_name(ts::Phase::kWgrad)) == "wgrad");
}

TEST_CASE("schedule::json: trace record errors name the record's pointer", "[schedule]") {
  try {
    (void)ts::trace_from_json(R"({"schema_version":1,"producer":"sim","records":[{"op":0,"rank":0,"issue":0,"start":0,)"
                              R"("end":1},{"op":1,"rank":0,"issue":0,"start":0,"end":1,"dur":3}]})",
                              "t.json");
    FAIL("expected a ParseError");
  } catch (const twinstep::ParseError& e) {
    CHECK(e.pointer() == "/records/1/dur");
  }
}

TEST_CASE("schedule::json: fp8 GEMM operand formats round-trip, written for fp8 only, refused on other dtypes",
          "[schedule]") {
  const std::string fp8 =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","deps":[],"kernel":{"class":"gemm",)"
      R"("m":64,"n":32,"k":16,"batch":1,"dtype":"fp8","a_format":"e5m2","b_format":"e4m3"}})";
  const ts::Schedule s = ts::schedule_from_json(minimal_with_op(fp8), "mem");
  const auto& g = std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel);
  CHECK(g.a_format == ts::Fp8Format::kE5M2);
  CHECK(g.b_format == ts::Fp8Format::kE4M3);
  const std::string text = ts::schedule_to_json(s);
  CHECK(text.find(R"("dtype":"fp8","a_format":"e5m2","b_format":"e4m3")") != std::string::npos);
  CHECK(ts::schedule_from_json(text, "mem") == s);
  // Grouped GEMMs carry them too; an fp8 kernel without them reads e4m3.
  const std::string grouped =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","kernel":{"class":"grouped_gemm",)"
      R"("m":[4,0,2],"n":32,"k":16,"dtype":"fp8","b_format":"e5m2"}})";
  const ts::Schedule grouped_schedule = ts::schedule_from_json(minimal_with_op(grouped), "mem");
  const auto& gg = std::get<ts::GroupedGemm>(std::get<ts::Compute>(grouped_schedule.ops[0].body).kernel);
  CHECK(gg.a_format == ts::Fp8Format::kE4M3);
  CHECK(gg.b_format == ts::Fp8Format::kE5M2);
  // Not written for bf16 (canonical text unchanged), refused there, and an unknown format is named.
  CHECK(ts::schedule_to_json(every_kind()).find(R"("dtype":"bf16","a_format")") == std::string::npos);
  const std::string bf16 =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","kernel":{"class":"gemm",)"
      R"("m":64,"n":32,"k":16,"a_format":"e5m2"}})";
  const auto [ptr, msg] = parse_error_of(minimal_with_op(bf16));
  CHECK(ptr == "/ops/0/kernel/a_format");
  CHECK_THAT(msg, twinstep_contains("dtype fp8 only"));
  std::string bad = fp8;
  bad.replace(bad.find("e5m2"), 4, "e3m4");
  const auto [ptr2, msg2] = parse_error_of(minimal_with_op(bad));
  CHECK(ptr2 == "/ops/0/kernel/a_format");
  CHECK_THAT(msg2, twinstep_contains(R"("e4m3", "e5m2")"));
}

TEST_CASE("schedule::json: accumulate_fp32 round-trips on gemm and grouped_gemm, written only when true",
          "[schedule]") {
  const std::string acc =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","deps":[],"kernel":{"class":"gemm",)"
      R"("m":64,"n":32,"k":16,"batch":1,"dtype":"bf16","accumulate_fp32":true}})";
  const ts::Schedule s = ts::schedule_from_json(minimal_with_op(acc), "mem");
  CHECK(std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel).accumulate_fp32);
  const std::string text = ts::schedule_to_json(s);
  CHECK(text.find(R"("dtype":"bf16","accumulate_fp32":true)") != std::string::npos);
  CHECK(ts::schedule_from_json(text, "mem") == s);
  const std::string grouped =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","kernel":{"class":"grouped_gemm",)"
      R"("m":[4,0,2],"n":32,"k":16,"dtype":"fp8","accumulate_fp32":true}})";
  const ts::Schedule gs = ts::schedule_from_json(minimal_with_op(grouped), "mem");
  CHECK(std::get<ts::GroupedGemm>(std::get<ts::Compute>(gs.ops[0].body).kernel).accumulate_fp32);
  CHECK(ts::schedule_from_json(ts::schedule_to_json(gs), "mem") == gs);
  // false (the default) is not written, so schedules without it keep their text; a non-bool is refused.
  CHECK(ts::schedule_to_json(every_kind()).find("accumulate_fp32") == std::string::npos);
  std::string bad = acc;
  bad.replace(bad.find("true"), 4, "1");
  const auto [ptr, msg] = parse_error_of(minimal_with_op(bad));
  CHECK(ptr == "/ops/0/kernel/accumulate_fp32");
}

TEST_CASE(
    "schedule::json: accumulate (into the output dtype) round-trips on gemm and grouped_gemm, written only "
    "when true",
    "[schedule]") {
  const std::string acc =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","deps":[],"kernel":{"class":"gemm",)"
      R"("m":64,"n":32,"k":16,"batch":1,"dtype":"bf16","accumulate":true}})";
  const ts::Schedule s = ts::schedule_from_json(minimal_with_op(acc), "mem");
  const auto& g = std::get<ts::Gemm>(std::get<ts::Compute>(s.ops[0].body).kernel);
  CHECK(g.accumulate);
  CHECK_FALSE(g.accumulate_fp32);
  const std::string text = ts::schedule_to_json(s);
  CHECK(text.find(R"("accumulate":true)") != std::string::npos);
  CHECK(text.find("accumulate_fp32") == std::string::npos);
  CHECK(ts::schedule_from_json(text, "mem") == s);
  const std::string grouped =
      R"({"id":0,"rank":0,"name":"g","kind":"compute","stream":"compute","kernel":{"class":"grouped_gemm",)"
      R"("m":[4,0,2],"n":32,"k":16,"dtype":"fp8","accumulate":true}})";
  const ts::Schedule gs = ts::schedule_from_json(minimal_with_op(grouped), "mem");
  CHECK(std::get<ts::GroupedGemm>(std::get<ts::Compute>(gs.ops[0].body).kernel).accumulate);
  CHECK(ts::schedule_from_json(ts::schedule_to_json(gs), "mem") == gs);
  CHECK(ts::schedule_to_json(every_kind()).find(R"("accumulate")") == std::string::npos);
  std::string bad = acc;
  bad.replace(bad.find("true"), 4, "\"yes\"");
  const auto [ptr, msg] = parse_error_of(minimal_with_op(bad));
  CHECK(ptr == "/ops/0/kernel/accumulate");
}

TEST_CASE("schedule::json: a send/recv's transport round-trips, is written only when not nccl, and is checked",
          "[schedule]") {
  const std::string head = R"({"id":0,"rank":0,"name":"s","kind":"send","stream":"compute","comm":"world","peer":0,)"
                           R"("bytes":64,"tag":0)";
  // Default: no key, nccl.
  const ts::Schedule plain = ts::schedule_from_json(minimal_with_op(head + "}"), "mem");
  CHECK(std::get<ts::Send>(plain.ops[0].body).transport == ts::Transport::kNccl);
  CHECK(ts::schedule_to_json(plain).find("transport") == std::string::npos);
  // copy_engine and sm_kernel (with its SMs) round-trip, text and IR.
  const ts::Schedule ce = ts::schedule_from_json(minimal_with_op(head + R"(,"transport":"copy_engine"})"), "mem");
  CHECK(std::get<ts::Send>(ce.ops[0].body).transport == ts::Transport::kCopyEngine);
  const std::string ce_text = ts::schedule_to_json(ce);
  CHECK(ce_text.find(R"("tag":0,"transport":"copy_engine"})") != std::string::npos);
  CHECK(ts::schedule_from_json(ce_text, "mem") == ce);
  const std::string recv = R"({"id":0,"rank":0,"name":"r","kind":"recv","stream":"compute","comm":"world","peer":0,)"
                           R"("bytes":64,"transport":"sm_kernel","sm_count":2})";
  const ts::Schedule sk = ts::schedule_from_json(minimal_with_op(recv), "mem");
  const auto& r = std::get<ts::Recv>(sk.ops[0].body);
  CHECK(r.transport == ts::Transport::kSmKernel);
  CHECK(r.sm_count == 2);
  const std::string sk_text = ts::schedule_to_json(sk);
  CHECK(sk_text.find(R"("transport":"sm_kernel","sm_count":2)") != std::string::npos);
  CHECK(ts::schedule_from_json(sk_text, "mem") == sk);
  // Errors: an unknown transport lists the spellings; sm_count missing, zero, or on another transport.
  const auto [p1, m1] = parse_error_of(minimal_with_op(head + R"(,"transport":"dma"})"));
  CHECK(p1 == "/ops/0/transport");
  CHECK_THAT(m1, twinstep_contains(R"("nccl", "copy_engine", "sm_kernel")"));
  const auto [p2, m2] = parse_error_of(minimal_with_op(head + R"(,"transport":"sm_kernel"})"));
  CHECK(p2 == "/ops/0/sm_count");
  CHECK_THAT(m2, twinstep_contains("missing required field"));
  const auto [p3, m3] = parse_error_of(minimal_with_op(head + R"(,"transport":"sm_kernel","sm_count":0})"));
  CHECK(p3 == "/ops/0/sm_count");
  CHECK_THAT(m3, twinstep_contains("at least 1 SM"));
  const auto [p4, m4] = parse_error_of(minimal_with_op(head + R"(,"transport":"copy_engine","sm_count":4})"));
  CHECK(p4 == "/ops/0/sm_count");
  CHECK_THAT(m4, twinstep_contains("only for transport"));
}
