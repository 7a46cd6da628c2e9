#include "tests/catch.hpp"
#include "models/lower.hpp"
