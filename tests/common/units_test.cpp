// Unit parsing: SI factors, binary prefixes, bits, and errors that name the field.
#include "common/units.hpp"

#include <string>

#include "common/error.hpp"
#include "tests/catch.hpp"

using twinstep::Dimension;
using twinstep::parse_quantity;

TEST_CASE("common::parse_quantity: SI and binary prefixes", "[common]") {
  CHECK(parse_quantity("1.5 us", Dimension::kTime, "x") == Approx(1.5e-6));
  CHECK(parse_quantity("80 GiB", Dimension::kBytes, "x") == Approx(80.0 * 1024 * 1024 * 1024));
  CHECK(parse_quantity("450 GB/s", Dimension::kBandwidth, "x") == Approx(450e9));
  CHECK(parse_quantity("400 Gb/s", Dimension::kBandwidth, "x") == Approx(50e9));
  CHECK(parse_quantity("989 TFLOP/s", Dimension::kFlopRate, "x") == Approx(989e12));
  CHECK(parse_quantity("2e-6", Dimension::kTime, "x") == Approx(2e-6));
}

TEST_CASE("common::parse_quantity: wrong dimension or unknown unit names the field", "[common]") {
  try {
    (void)parse_quantity("5 GB", Dimension::kTime, "gpu.latency");
    FAIL("expected an error");
  } catch (const twinstep::Error& e) {
    CHECK(std::string(e.what()).find("gpu.latency") != std::string::npos);
    CHECK(std::string(e.what()).find("wrong dimension") != std::string::npos);
  }
  CHECK_THROWS_AS(parse_quantity("5 furlongs", Dimension::kTime, "x"), twinstep::Error);
  CHECK_THROWS_AS(parse_quantity("fast", Dimension::kTime, "x"), twinstep::Error);
}

TEST_CASE("common::to_nanos rounds to the nearest nanosecond", "[common]") {
  CHECK(twinstep::to_nanos(1.4e-9) == 1);
  CHECK(twinstep::to_nanos(1.6e-9) == 2);
  CHECK(twinstep::to_nanos(2.0) == 2000000000);
}
