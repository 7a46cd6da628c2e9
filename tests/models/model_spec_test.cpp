#include "tests/catch.hpp"
#include "models/model_spec.hpp"
