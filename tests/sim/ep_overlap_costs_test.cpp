// Costs of the EP-overlap path as the simulator sees them (issue 4): the host cost of the per-node CUDA events
// comes from a profile's framework section ("event_record", optional), and the lowering turns it into explicit
// host ops (megatron-overlap.md 6c item 2).
#include <string>

#include "common/error.hpp"
#include "models/lower.hpp"
#include "sim/cost_model.hpp"
#include "tests/catch.hpp"

using namespace twinstep;
using namespace twinstep::sim;

namespace {

std::string framework_profile(const std::string& framework) {
  return R"({"schema_version": 1, "name": "fw", "framework": )" + framework + "}";
}

}  // namespace

TEST_CASE("sim::profile: the framework section's event_record is read; absent means not measured", "[sim][profile]") {
  const Profile p = profile_from_json(
      framework_profile(R"({"per_kernel_launch": "9 us", "per_module_call": "30 us", "event_record": "2.5 us"})"),
      "p.json");
  CHECK(p.framework.event_record_s == Approx(2.5e-6));
  CHECK(p.framework.per_module_call_s == Approx(30e-6));
  CHECK(profile_from_json(framework_profile(R"({"event_record": 4e-6})"), "p.json").framework.event_record_s ==
        Approx(4e-6));
  // Absent (every committed profile: torch_host_overhead.py does not time events yet): not measured.
  CHECK(profile_from_json(framework_profile(R"({"per_module_call": "30 us"})"), "p.json").framework.event_record_s < 0);
  CHECK(read_profile(std::string(TWINSTEP_SOURCE_DIR) + "/calibration/profiles/h200x2.json").framework.event_record_s <
        0);
  CHECK(Profile::datasheet_defaults().framework.event_record_s < 0);
  // Bad values name the file and the field.
  CHECK_THROWS_AS(profile_from_json(framework_profile(R"({"event_record": "-1 us"})"), "p.json"), ParseError);
  CHECK_THROWS_WITH(profile_from_json(framework_profile(R"({"event_record": "2 s"})"), "p.json"),
                    twinstep_contains("/framework/event_record") && twinstep_contains("p.json"));
  CHECK_THROWS_WITH(profile_from_json(framework_profile(R"({"event_record": "fast"})"), "p.json"),
                    twinstep_contains("/framework/event_record"));
}

TEST_CASE("sim::profile: event_record_ns becomes two event calls per EP-overlap schedule node", "[sim][profile]") {
  models::ModelSpec m = models::load_model("qwen3-30b-a3b");
  m.num_layers = 2;
  models::RunConfig c;
  c.world_size = 2;
  c.expert_model_parallel_size = 2;
  c.seq_length = 256;
  c.global_batch_size = 4;
  c.cuda_device_max_connections = 32;
  c.overlap_moe_expert_parallel_comm = true;
  const Profile p = profile_from_json(framework_profile(R"({"event_record": "2.5 us"})"), "p.json");
  c.host.event_record_ns = to_nanos(p.framework.event_record_s);
  const auto low = models::lower(m, c);
  std::size_t nodes = 0;
  for (const auto& op : low.schedule.ops) {
    if (op.name.find(".node_") == std::string::npos) continue;
    ++nodes;
    CHECK(std::get<schedule::Host>(op.body).duration_ns == 2 * 2500);  // stream wait_event + event record
  }
  // 2 ranks x 2 micro-batches x 2 layers x (4 forward + 4 backward nodes) + embedding/output nodes.
  CHECK(nodes > 2 * 2 * 2 * 8);
  c.host.event_record_ns = 0;
  std::size_t none = 0;
  for (const auto& op : models::lower(m, c).schedule.ops) none += op.name.find(".node_") != std::string::npos ? 1 : 0;
  CHECK(none == 0);
}
