// Placeholder: the models owner replaces this file.
#include "cli/run_flags.hpp"
