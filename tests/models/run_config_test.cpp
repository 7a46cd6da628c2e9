#include "tests/catch.hpp"
#include "models/run_config.hpp"
