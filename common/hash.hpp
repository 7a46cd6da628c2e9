// 64-bit FNV-1a (Fowler/Noll/Vo, the parameters of http://www.isthe.com/chongo/tech/comp/fnv/): the one definition
// behind the schedule fingerprint and the simulator's hash tables. Not a cryptographic hash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

namespace twinstep {

inline constexpr std::uint64_t kFnvOffsetBasis = 1469598103934665603ull;
inline constexpr std::uint64_t kFnvPrime = 1099511628211ull;

/// One FNV-1a step over a whole word (xor, then multiply by the prime): hash-table keys made of a few integers,
/// folded word by word from kFnvOffsetBasis.
constexpr void fnv_mix(std::uint64_t& hash, std::uint64_t word) {
  hash ^= word;
  hash *= kFnvPrime;
}

/// FNV-1a over the bytes of values, strings and lists fed in order; digest() is the hash so far.
class Fnv1a {
 public:
  void bytes(const void* data, std::size_t n) {
    const auto* c = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) fnv_mix(hash_, c[i]);
  }
  /// The object representation of an arithmetic or enum value (this machine's byte order).
  template <typename T>
  void value(const T& v) {
    static_assert(std::is_arithmetic_v<T> || std::is_enum_v<T>);
    bytes(&v, sizeof v);
  }
  /// The length, then the characters: "ab","c" and "a","bc" differ.
  void text(const std::string& s) {
    value(s.size());
    bytes(s.data(), s.size());
  }
  /// The length, then each element's value(); `v` a std::vector or a schedule::DepList.
  template <typename List>
  void list(const List& v) {
    value(v.size());
    for (const auto& x : v) value(x);
  }
  [[nodiscard]] std::uint64_t digest() const { return hash_; }

 private:
  std::uint64_t hash_ = kFnvOffsetBasis;
};

}  // namespace twinstep
