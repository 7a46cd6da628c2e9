// FLOPs and bytes per kernel class. Sources: GEMM 2mnk; attention per Megatron's FLOP accounting
// (QK^T and PV are 2*s_q*s_kv*d each per head; causal halves them; backward is 2.5x forward).
#include "schedule/kernel_math.hpp"

#include <type_traits>

namespace twinstep::schedule {

double kernel_flops(const Kernel& kernel) {
  return std::visit(
      [](const auto& k) -> double {
        using T = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<T, Gemm>) {
          return 2.0 * static_cast<double>(k.m) * static_cast<double>(k.n) * static_cast<double>(k.k) *
                 static_cast<double>(k.batch);
        } else if constexpr (std::is_same_v<T, GroupedGemm>) {
          double rows = 0;
          for (auto m : k.m) rows += static_cast<double>(m);
          return 2.0 * rows * static_cast<double>(k.n) * static_cast<double>(k.k);
        } else if constexpr (std::is_same_v<T, Attention>) {
          double f = 4.0 * static_cast<double>(k.batch) * static_cast<double>(k.heads_q) *
                     static_cast<double>(k.seq_q) * static_cast<double>(k.seq_kv) * static_cast<double>(k.head_dim);
          if (k.causal) f *= 0.5;
          if (k.backward) f *= 2.5;
          return f;
        } else if constexpr (std::is_same_v<T, Elementwise>) {
          return static_cast<double>(k.flops);
        } else if constexpr (std::is_same_v<T, Optimizer>) {
          return 12.0 * static_cast<double>(k.params);  // Adam: ~12 FLOPs per parameter
        } else {
          return 0.0;
        }
      },
      kernel);
}

double kernel_bytes(const Kernel& kernel) {
  return std::visit(
      [](const auto& k) -> double {
        using T = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<T, Gemm>) {
          const double e = dtype_bytes(k.dtype), ec = gemm_epilogue_bytes(k.dtype, k.accumulate_fp32, k.accumulate);
          const double m = static_cast<double>(k.m), n = static_cast<double>(k.n), kk = static_cast<double>(k.k);
          return (e * (m * kk + kk * n) + ec * m * n) * static_cast<double>(k.batch);
        } else if constexpr (std::is_same_v<T, GroupedGemm>) {
          const double e = dtype_bytes(k.dtype), ec = gemm_epilogue_bytes(k.dtype, k.accumulate_fp32, k.accumulate);
          const double n = static_cast<double>(k.n), kk = static_cast<double>(k.k);
          double total = 0;
          for (auto m : k.m) total += e * (static_cast<double>(m) * kk + kk * n) + ec * static_cast<double>(m) * n;
          return total;
        } else if constexpr (std::is_same_v<T, Attention>) {
          const double e = dtype_bytes(k.dtype);
          const double q = static_cast<double>(k.batch * k.heads_q * k.seq_q * k.head_dim);
          const double kv = static_cast<double>(k.batch * k.heads_kv * k.seq_kv * k.head_dim);
          const double fwd = e * (2.0 * q + 2.0 * kv);  // read Q, K, V; write O
          return k.backward ? 2.0 * fwd + e * q : fwd;  // read Q,K,V,O,dO; write dQ,dK,dV
        } else if constexpr (std::is_same_v<T, Elementwise>) {
          return static_cast<double>(k.bytes);
        } else if constexpr (std::is_same_v<T, Optimizer>) {
          // fp32 master, two fp32 moments read+written, grad read, working param written.
          const double p = static_cast<double>(k.params);
          return p * (3 * 4 * 2 + 4 + dtype_bytes(k.param_dtype));
        } else {
          return static_cast<double>(k.bytes);
        }
      },
      kernel);
}

double op_flops(const Op& op) {
  if (const auto* c = std::get_if<Compute>(&op.body)) return kernel_flops(c->kernel);
  return 0.0;
}

const char* kernel_class(const Kernel& kernel) {
  return std::visit(
      [](const auto& k) -> const char* {
        using T = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<T, Gemm>) return "gemm";
        if constexpr (std::is_same_v<T, GroupedGemm>) return "grouped_gemm";
        if constexpr (std::is_same_v<T, Attention>) return k.backward ? "attention_bwd" : "attention_fwd";
        if constexpr (std::is_same_v<T, Elementwise>) return "elementwise";
        if constexpr (std::is_same_v<T, Optimizer>) return "optimizer";
        if constexpr (std::is_same_v<T, Memcpy>) return "memcpy";
      },
      kernel);
}

}  // namespace twinstep::schedule
