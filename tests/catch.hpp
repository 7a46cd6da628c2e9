// Catch2 v2 (Debian 12) / v3 (Ubuntu 24.04) compatibility: tests include this header only.
// Substring matching is spelled twinstep_contains("...") so that it works with both versions.
#pragma once

#if defined(TWINSTEP_CATCH3)
#include <catch2/catch_all.hpp>
using Catch::Approx;
#define twinstep_contains(text) Catch::Matchers::ContainsSubstring(text)
#else
#include <catch2/catch.hpp>
#define twinstep_contains(text) Catch::Contains(text)
#endif
