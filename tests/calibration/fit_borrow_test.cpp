// calibration::borrow_comm_fields (`twinstep calibrate --fit ... --borrow DONOR.json`): a one-GPU fit takes the
// collectives, comm launches and co-run figures one GPU cannot measure from a multi-GPU donor profile, says so in the
// profile's context and fits, and keeps what its own raw file measured.
#include <string>
#include <vector>

#include "calibration/fit.hpp"
#include "sim/cost_model.hpp"
#include "tests/catch.hpp"

// A one-GPU fit borrows what one GPU cannot measure from a multi-GPU profile of the same NVLink generation, says so
// in its context and fits, and the rewritten JSON reads back to the same figures.
TEST_CASE("borrow_comm_fields takes collectives, comm launches and co-run figures a one-GPU fit lacks") {
  using twinstep::calibration::FitResult;
  FitResult r;
  r.profile = twinstep::sim::Profile::datasheet_defaults();
  r.profile.declared_name = r.profile.name = "one H100";
  r.profile.missing_fields = {"launch.collective", "launch.send", "launch.recv"};
  r.profile.fits.push_back({"compute.gemm", 10, 0.01, 0.02, "solo"});
  twinstep::sim::Profile donor = twinstep::sim::Profile::datasheet_defaults();
  donor.declared_name = "two H200";
  donor.context["gpu"] = "NVIDIA H200";
  twinstep::sim::CollectiveParams ar;
  ar.kind = twinstep::sim::CollectiveParamsKind::kAllReduce;
  ar.base_latency_s = 8.5e-6;
  ar.bus_bytes_per_s = 3.5e11;
  donor.collectives = {ar};
  donor.nccl.channels_intra = 16;
  donor.launch_s["collective"] = 7e-6;
  donor.launch_s["send"] = 5e-6;
  donor.launch_s.erase("recv");
  donor.missing_fields = {"launch.recv"};
  donor.interference.waiting_sms_per_channel = 0.625;
  donor.interference.waiting_sms_per_channel_more = 0.34;
  donor.interference.comm_hbm_bytes_per_bus_byte = 0.0;
  donor.interference.gemm_tile_n = 128;  // the coefficients were fitted under this tile: it travels with them
  donor.fits.push_back({"coll.all_reduce.span2", 21, 0, 0, "in-sample"});
  donor.fits.push_back({"compute.gemm", 62, 0.05, 0.6, "solo"});

  const auto taken = twinstep::calibration::borrow_comm_fields(r, donor);
  CHECK(taken == std::vector<std::string>{"collectives", "nccl", "launch.collective", "launch.send",
                                          "interference.comm_hbm_bytes_per_bus_byte",
                                          "interference.waiting_sms_per_channel",
                                          "interference.waiting_sms_per_channel_more", "interference.gemm_tile"});
  CHECK(r.profile.missing_fields == std::vector<std::string>{"launch.recv"});  // the donor lacks it too
  CHECK(r.profile.context.at("borrowed_from") == "two H200 (measured on NVIDIA H200)");
  CHECK(r.profile.context.count("datasheet_fields") == 1);
  REQUIRE(r.profile.fits.size() == 2);  // its own GEMM fit and the donor's collective fit, not the donor's GEMM fit
  CHECK(r.profile.fits[1].note.rfind("borrowed from two H200", 0) == 0);

  const auto back = twinstep::sim::profile_from_json(r.json, "borrowed.json");
  REQUIRE(back.collectives.size() == 1);
  CHECK(back.collectives[0].bus_bytes_per_s == 3.5e11);
  CHECK(back.nccl.channels_intra == 16);
  CHECK(back.launch_s.at("collective") == 7e-6);
  CHECK(back.interference.waiting_sms_per_channel == 0.625);
  CHECK(back.interference.comm_hbm_bytes_per_bus_byte == 0.0);
  CHECK(back.interference.gemm_tile_m == 128);
  CHECK(back.interference.gemm_tile_n == 128);

  SECTION("a raw file with its own collectives keeps them") {
    FitResult own;
    own.profile = twinstep::sim::Profile::datasheet_defaults();
    twinstep::sim::CollectiveParams mine = ar;
    mine.bus_bytes_per_s = 1e11;
    own.profile.collectives = {mine};
    own.profile.fits.push_back({"corun.gemm", 4, 0.03, 0.05, "co-run"});
    CHECK(twinstep::calibration::borrow_comm_fields(own, donor).empty());
    CHECK(own.profile.collectives[0].bus_bytes_per_s == 1e11);
    CHECK(own.profile.context.count("borrowed_from") == 0);
  }
}
