// The JSON fields of each kernel class, listed once: the class's spelling, and per field its key, its member and,
// when the reader requires it, what it holds. The reader (json_read.cpp) checks a kernel's keys against these and
// reads them; the writer (json_write.cpp) writes them in this order. Internal to schedule/, like json_spellings.hpp.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>

#include "schedule/schedule.hpp"

namespace twinstep::schedule::spelling {

/// Which kernels have a field.
enum class Presence : std::uint8_t {
  kRequired,  ///< The reader fails without it.
  kOptional,  ///< Absent: the member's default.
  kFp8Only,   ///< Only with dtype fp8 (written then, refused by the reader otherwise); absent: the default.
  kIfTrue,    ///< A switch, false by default: written only when true, so schedules without it are unchanged.
};

/// One field of kernel `K`. `what`: what it holds, for the error of a missing required field.
template <typename K, typename T>
struct KernelField {
  using Kernel = K;
  using Value = T;
  const char* key;
  T K::*member;
  Presence presence = Presence::kOptional;
  const char* what = "";
};

template <typename K, typename T>
constexpr KernelField<K, T> required_field(const char* key, T K::*member, const char* what) {
  return {key, member, Presence::kRequired, what};
}
template <typename K, typename T>
constexpr KernelField<K, T> optional_field(const char* key, T K::*member) {
  return {key, member, Presence::kOptional, ""};
}
template <typename K>
constexpr KernelField<K, bool> switch_field(const char* key, bool K::*member) {
  return {key, member, Presence::kIfTrue, ""};
}
template <typename K, typename T>
constexpr KernelField<K, T> fp8_field(const char* key, T K::*member) {
  return {key, member, Presence::kFp8Only, ""};
}

/// A kernel class: its "class" spelling, how messages name it ("a gemm kernel"), its fields in JSON order.
template <typename K, typename... F>
struct KernelClass {
  using Kernel = K;
  const char* name;
  const char* what;
  std::tuple<F...> fields;

  /// The keys a kernel of this class may have: "class", then the fields'.
  [[nodiscard]] constexpr std::array<const char*, 1 + sizeof...(F)> keys() const {
    return std::apply(
        [](const auto&... f) {
          return std::array<const char*, 1 + sizeof...(F)>{"class", f.key...};
        },
        fields);
  }
};

template <typename K, typename... F>
constexpr KernelClass<K, F...> kernel_class(const char* name, const char* what, F... fields) {
  return {name, what, std::tuple<F...>{fields...}};
}

/// Every kernel class, in the order of the Kernel variant.
inline constexpr auto kKernelClasses = std::make_tuple(
    kernel_class<Gemm>("gemm", "a gemm kernel", required_field("m", &Gemm::m, "rows of A and C"),
                       required_field("n", &Gemm::n, "columns of B and C"),
                       required_field("k", &Gemm::k, "the reduction dimension"), optional_field("batch", &Gemm::batch),
                       optional_field("dtype", &Gemm::dtype), fp8_field("a_format", &Gemm::a_format),
                       fp8_field("b_format", &Gemm::b_format), switch_field("accumulate_fp32", &Gemm::accumulate_fp32),
                       switch_field("accumulate", &Gemm::accumulate)),
    kernel_class<GroupedGemm>(
        "grouped_gemm", "a grouped_gemm kernel",
        required_field("m", &GroupedGemm::m, "rows per group: a list, one entry per local expert"),
        required_field("n", &GroupedGemm::n, "columns of B and C"),
        required_field("k", &GroupedGemm::k, "the reduction dimension"), optional_field("dtype", &GroupedGemm::dtype),
        fp8_field("a_format", &GroupedGemm::a_format), fp8_field("b_format", &GroupedGemm::b_format),
        switch_field("accumulate_fp32", &GroupedGemm::accumulate_fp32),
        switch_field("accumulate", &GroupedGemm::accumulate)),
    kernel_class<Attention>("attention", "an attention kernel", optional_field("batch", &Attention::batch),
                            required_field("heads_q", &Attention::heads_q, "query heads"),
                            required_field("heads_kv", &Attention::heads_kv, "key/value heads (GQA groups)"),
                            required_field("seq_q", &Attention::seq_q, "query sequence length"),
                            required_field("seq_kv", &Attention::seq_kv, "key/value sequence length"),
                            required_field("head_dim", &Attention::head_dim, "dimension per head"),
                            optional_field("causal", &Attention::causal),
                            optional_field("backward", &Attention::backward),
                            optional_field("dtype", &Attention::dtype)),
    kernel_class<Elementwise>("elementwise", "an elementwise kernel",
                              required_field("bytes", &Elementwise::bytes, "HBM bytes read plus written"),
                              optional_field("flops", &Elementwise::flops)),
    kernel_class<Optimizer>("optimizer", "an optimizer kernel",
                            required_field("params", &Optimizer::params, "parameters updated by this rank"),
                            optional_field("param_dtype", &Optimizer::param_dtype)),
    kernel_class<Memcpy>("memcpy", "a memcpy kernel", required_field("bytes", &Memcpy::bytes, "bytes copied"),
                         optional_field("copy", &Memcpy::kind)));

static_assert(std::tuple_size_v<decltype(kKernelClasses)> == std::variant_size_v<Kernel>,
              "a kernel class without its JSON fields");

/// The class description of kernel type `K`.
template <typename K, std::size_t I = 0>
[[nodiscard]] constexpr const auto& class_of() {
  using C = std::tuple_element_t<I, std::remove_const_t<decltype(kKernelClasses)>>;
  if constexpr (std::is_same_v<typename C::Kernel, K>) {
    static_assert(std::is_same_v<std::variant_alternative_t<I, Kernel>, K>, "kKernelClasses out of variant order");
    return std::get<I>(kKernelClasses);
  } else {
    return class_of<K, I + 1>();
  }
}

}  // namespace twinstep::schedule::spelling
