// DepList (schedule/dep_list.hpp): an op's deps, in place up to DepList::kInline, on the heap past it. Checked against
// std::vector<OpId> doing the same operations, across the inline/heap boundary.
#include "schedule/dep_list.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "tests/catch.hpp"

using twinstep::schedule::DepList;
using Ids = std::vector<std::uint32_t>;

namespace {

Ids ids(const DepList& d) { return Ids(d.begin(), d.end()); }

}  // namespace

TEST_CASE("schedule::DepList: push_back, insert and erase give what std::vector gives, inline and on the heap",
          "[ir]") {
  static_assert(sizeof(DepList) == sizeof(Ids), "an Op must not grow");
  for (std::uint32_t n = 0; n <= 3 * DepList::kInline; ++n) {
    CAPTURE(n);
    DepList d;
    Ids v;
    for (std::uint32_t i = 0; i < n; ++i) {
      d.push_back(100 - i);
      v.push_back(100 - i);
    }
    REQUIRE(d.size() == n);
    REQUIRE(ids(d) == v);
    // The lowering's merge of pending waits, then its sort and deduplication.
    const Ids more{100, 7, 5, 7};
    d.insert(d.end(), more.begin(), more.end());
    v.insert(v.end(), more.begin(), more.end());
    REQUIRE(ids(d) == v);
    std::sort(d.begin(), d.end());
    std::sort(v.begin(), v.end());
    d.erase(std::unique(d.begin(), d.end()), d.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
    REQUIRE(ids(d) == v);
    CHECK(d == v);
    CHECK(d.front() == v.front());
    CHECK(d.back() == v.back());
    // Insert in the middle, erase a middle range.
    d.insert(d.begin() + 1, more.begin(), more.begin() + 2);
    v.insert(v.begin() + 1, more.begin(), more.begin() + 2);
    REQUIRE(ids(d) == v);
    d.erase(d.begin() + 1, d.begin() + 3);
    v.erase(v.begin() + 1, v.begin() + 3);
    REQUIRE(ids(d) == v);
  }
}

TEST_CASE("schedule::DepList: copies are independent and moves leave the source empty, inline and on the heap",
          "[ir]") {
  for (const Ids& v : {Ids{}, Ids{3}, Ids{1, 2, 3, 4}, Ids{1, 2, 3, 4, 5, 6, 7, 8, 9}}) {
    CAPTURE(v.size());
    const DepList a = v;  // from a vector
    REQUIRE(ids(a) == v);
    DepList copy = a;
    copy.push_back(42);
    CHECK(ids(a) == v);  // the copy owns its own storage
    CHECK(copy.size() == v.size() + 1);
    CHECK_FALSE(copy == a);
    DepList moved = std::move(copy);
    CHECK(moved.size() == v.size() + 1);
    CHECK(moved.back() == 42);
    CHECK(copy.empty());  // NOLINT(bugprone-use-after-move): a moved-from list is empty, and usable
    copy.push_back(9);    // NOLINT(bugprone-use-after-move): as above
    CHECK(ids(copy) == Ids{9});
    DepList assigned{5, 6, 7, 8, 9, 10};
    assigned = a;  // heap target, any source
    CHECK(assigned == a);
    assigned = std::move(moved);
    CHECK(assigned.size() == v.size() + 1);
    assigned.clear();
    CHECK(assigned.empty());
  }
}
