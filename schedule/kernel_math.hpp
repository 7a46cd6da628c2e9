// FLOPs and HBM bytes of each kernel class, from its shape. One place, used by the simulator's cost models,
// lowering summaries, MFU and the backend's buffer sizing.
#pragma once

#include <cstdint>

#include "schedule/schedule.hpp"

namespace twinstep::schedule {

/// Floating-point operations of a kernel (a multiply-add counts 2). Attention counts QK^T and PV (halved when
/// causal); its backward counts 2.5x the forward (dQ, dK, dV and the recomputed scores).
[[nodiscard]] double kernel_flops(const Kernel& kernel);

/// Bytes a kernel reads and writes in HBM at minimum (each operand once), for the roofline's memory side.
[[nodiscard]] double kernel_bytes(const Kernel& kernel);

/// FLOPs of a compute op; 0 for every other op kind.
[[nodiscard]] double op_flops(const Op& op);

/// Short class name for efficiency tables and breakdowns: "gemm", "grouped_gemm", "attention_fwd",
/// "attention_bwd", "elementwise", "optimizer", "memcpy".
[[nodiscard]] const char* kernel_class(const Kernel& kernel);

}  // namespace twinstep::schedule
