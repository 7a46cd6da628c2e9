// Always-on invariant checks for bugs (never for bad input: that is twinstep::Error).
// Like SimGrid's xbt_assert, TWINSTEP_ASSERT is not disabled by NDEBUG.
#pragma once

#include <cstdio>
#include <cstdlib>

/// Aborts with file:line and a printf-style message when `cond` is false.
#define TWINSTEP_ASSERT(cond, ...)                                                                                   \
  do {                                                                                                               \
    if (!(cond)) {                                                                                                   \
      std::fprintf(stderr, "twinstep: internal error at %s:%d: assertion '%s' failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                                             \
      std::fprintf(stderr, "\n");                                                                                    \
      std::abort();                                                                                                  \
    }                                                                                                                \
  } while (0)
