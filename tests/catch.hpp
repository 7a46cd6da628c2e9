// Catch2 v2 (Debian 12) / v3 (Ubuntu 24.04) compatibility: tests include this header only.
#pragma once

#if defined(TWINSTEP_CATCH3)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
