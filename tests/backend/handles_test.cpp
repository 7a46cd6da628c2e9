// The owning handle of handles.hpp without a GPU, over a fake destroy function: released exactly once on scope
// exit, by a move's target only, never after release(), and on the way out of a throw.
#include "backend/handles.hpp"

#include <stdexcept>
#include <utility>
#include <vector>

#include "tests/catch.hpp"

namespace be = twinstep::backend;

namespace {

std::vector<int*> destroyed;

int fake_destroy(int* p) {
  destroyed.push_back(p);
  return 0;
}

using FakeHandle = be::Handle<int*, &fake_destroy>;

}  // namespace

TEST_CASE("backend::Handle: destroys its handle once, the move target only, never after release", "[backend]") {
  int a = 0, b = 0, c = 0;
  destroyed.clear();
  {
    FakeHandle h(&a);
    CHECK(static_cast<bool>(h));
    FakeHandle moved(std::move(h));
    CHECK_FALSE(static_cast<bool>(h));  // NOLINT(bugprone-use-after-move): the moved-from state is the point
    CHECK(moved.get() == &a);
    FakeHandle other(&b);
    other = std::move(moved);  // b goes now, a moves over
    CHECK(destroyed == std::vector<int*>{&b});
    FakeHandle given_up(&c);
    CHECK(given_up.release() == &c);
    FakeHandle empty;
    empty.reset();
  }
  CHECK(destroyed == std::vector<int*>{&b, &a});  // c was released, the empty one held nothing
}

TEST_CASE("backend::Handle: what was created before a throw is destroyed on the way out", "[backend]") {
  int a = 0, b = 0;
  destroyed.clear();
  auto build = [&] {
    FakeHandle first(&a);
    FakeHandle second(&b);
    throw std::runtime_error("a later call failed");
  };
  CHECK_THROWS_AS(build(), std::runtime_error);
  CHECK(destroyed == std::vector<int*>{&b, &a});
}
