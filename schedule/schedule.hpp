// The schedule IR: one training step (or a microbenchmark) as what each rank's host thread issues, in order.
// It is the one vocabulary: models/ produce it, sim/ and backend/ execute it, both emit schedule::Trace.
// It carries no durations for GPU work: those come from a cost model (sim) or the hardware (backend).
// docs/ir.md is the reference for every field and the execution semantics.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/units.hpp"
#include "schedule/dep_list.hpp"

namespace twinstep::schedule {

using RankId = std::uint32_t;    ///< Global rank (Megatron order: TP fastest, then CP, DP/EP, PP).
using OpId = std::uint32_t;      ///< Dense: equals the op's index in Schedule::ops.
using StreamId = std::uint16_t;  ///< Index into Schedule::streams; every rank has every declared stream.
using CommId = std::uint32_t;    ///< Index into Schedule::communicators.

inline constexpr OpId kNoOp = 0xFFFFFFFFu;

enum class DType : std::uint8_t { kBF16, kFP16, kFP32, kFP8, kInt64, kInt32 };

/// Bytes per element.
[[nodiscard]] constexpr std::uint32_t dtype_bytes(DType t) {
  switch (t) {
    case DType::kBF16:
      return 2;
    case DType::kFP16:
      return 2;
    case DType::kFP32:
      return 4;
    case DType::kFP8:
      return 1;
    case DType::kInt64:
      return 8;
    case DType::kInt32:
      return 4;
  }
  return 0;
}

// ---- compute kernels: class and shape; FLOPs and bytes follow (schedule/kernel_math.hpp) ----

/// Element format of an fp8 GEMM operand: e4m3 (weights and activations) or e5m2 (gradients, whose range needs
/// the wider exponent), as Transformer Engine's HYBRID recipe assigns them.
enum class Fp8Format : std::uint8_t { kE4M3, kE5M2 };

/// C[m,n] = A[m,k] x B[k,n], `batch` independent products of that shape. dtype fp8: A and B in fp8 (formats
/// `a_format`, `b_format`; per-tensor scales), C in bf16, fp32 accumulation, run at the fp8 tensor-core rate.
struct Gemm {
  std::uint64_t m = 0, n = 0, k = 0;
  std::uint64_t batch = 1;
  DType dtype = DType::kBF16;
  Fp8Format a_format = Fp8Format::kE4M3;  ///< dtype fp8 only.
  Fp8Format b_format = Fp8Format::kE4M3;  ///< dtype fp8 only.
  /// The product is added into an fp32 buffer (C += A x B, beta 1): Megatron's gradient_accumulation_fusion, the
  /// wgrad GEMM accumulating into the fp32 main grad; the epilogue reads and writes C in fp32 instead of writing
  /// the output dtype.
  bool accumulate_fp32 = false;
  /// The product is added into C in the output dtype (C += A x B, beta 1, bf16 C): gradient_accumulation_fusion with
  /// bf16 main grads (Apex `wgrad_gemm_accum_fp16`, TE's wgrad GEMM with `accumulate=True` into a bf16 main_grad);
  /// the epilogue reads C beside writing it. At most one of accumulate and accumulate_fp32 (validation).
  bool accumulate = false;

  bool operator==(const Gemm&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// Bytes of a GEMM's output element: bf16 for fp8 GEMMs, the input dtype's otherwise.
[[nodiscard]] constexpr std::uint32_t gemm_output_bytes(DType t) { return t == DType::kFP8 ? 2 : dtype_bytes(t); }
/// Bytes of a GEMM's C element: fp32 when it accumulates (accumulate_fp32), else the output's.
[[nodiscard]] constexpr std::uint32_t gemm_c_bytes(DType t, bool accumulate_fp32) {
  return accumulate_fp32 ? 4 : gemm_output_bytes(t);
}
/// HBM bytes per C element of a GEMM's epilogue: a read and a write when it accumulates (into fp32, accumulate_fp32,
/// or into its output dtype, accumulate), else one write.
[[nodiscard]] constexpr std::uint32_t gemm_epilogue_bytes(DType t, bool accumulate_fp32, bool accumulate) {
  return (accumulate_fp32 || accumulate ? 2 : 1) * gemm_c_bytes(t, accumulate_fp32);
}

/// Grouped GEMM (MoE experts): one [m_i, k] x [k, n] product per local expert, m_i tokens routed to it.
struct GroupedGemm {
  std::vector<std::uint64_t> m;  ///< Rows per group (tokens per local expert); size = number of groups.
  std::uint64_t n = 0, k = 0;
  DType dtype = DType::kBF16;
  Fp8Format a_format = Fp8Format::kE4M3;  ///< dtype fp8 only, as Gemm's.
  Fp8Format b_format = Fp8Format::kE4M3;
  bool accumulate_fp32 = false;  ///< As Gemm's: every group's C += A x B into fp32.
  bool accumulate = false;       ///< As Gemm's: every group's C += A x B in the output dtype.

  bool operator==(const GroupedGemm&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// Core attention (QK^T, softmax, PV) for `batch` sequences; backward when `backward` (about 2.5x the FLOPs).
struct Attention {
  std::uint64_t batch = 1;
  std::uint64_t heads_q = 0, heads_kv = 0;
  std::uint64_t seq_q = 0, seq_kv = 0;
  std::uint64_t head_dim = 0;
  bool causal = true;
  bool backward = false;
  DType dtype = DType::kBF16;

  bool operator==(const Attention&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// Bandwidth-bound kernel (norms, activations, residual adds, permute, casts): HBM bytes read plus written.
struct Elementwise {
  std::uint64_t bytes = 0;
  std::uint64_t flops = 0;  ///< Usually negligible; kept so FLOP counts are complete.

  bool operator==(const Elementwise&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// Optimizer step over `params` parameters held by this rank (Adam: reads/writes param, grad, two moments).
struct Optimizer {
  std::uint64_t params = 0;
  DType param_dtype = DType::kBF16;  ///< Working (model) parameter dtype; master weights and moments are fp32.

  bool operator==(const Optimizer&) const = default;  ///< Field-wise (round-trip tests, caches).
};

enum class CopyKind : std::uint8_t { kD2H, kH2D, kD2D };

/// A memory copy (e.g. the D2H copy of MoE split sizes that a host_sync then waits on).
struct Memcpy {
  std::uint64_t bytes = 0;
  CopyKind kind = CopyKind::kD2D;

  bool operator==(const Memcpy&) const = default;  ///< Field-wise (round-trip tests, caches).
};

using Kernel = std::variant<Gemm, GroupedGemm, Attention, Elementwise, Optimizer, Memcpy>;

/// A GPU kernel. `sm_count` > 0 reserves that many SMs for the kernel's whole duration (fused comm kernels such
/// as DeepEP/HybridEP, userbuffer comm); 0 means the kernel takes what the GPU gives it.
struct Compute {
  Kernel kernel;
  std::uint32_t sm_count = 0;

  bool operator==(const Compute&) const = default;  ///< Field-wise (round-trip tests, caches).
};

// ---- communication ----

enum class CollectiveKind : std::uint8_t { kAllReduce, kAllGather, kReduceScatter, kAllToAll, kBroadcast };

/// A collective on a communicator; one Op per participating rank, matched across members by order on the
/// communicator. `bytes` is the size of the larger buffer, as nccl-tests reports it: all_reduce and broadcast
/// the buffer, all_gather the gathered output, reduce_scatter the unreduced input, all_to_all the sum of
/// `send_bytes`. For all_to_all, `send_bytes[j]` is what this rank sends to the member at position j of the
/// communicator (uneven splits allowed); what it receives follows from the other members' lists.
struct Collective {
  CollectiveKind kind = CollectiveKind::kAllReduce;
  CommId comm = 0;
  std::uint64_t bytes = 0;
  DType dtype = DType::kBF16;
  std::vector<std::uint64_t> send_bytes;  ///< all_to_all only; size = communicator size.
  RankId root = 0;                        ///< broadcast only: global rank of the root.
  /// SMs the collective's kernel occupies while it runs; 0 = one CTA per NCCL channel (the cost model's channel
  /// count). Set for fused communication kernels with a fixed SM budget (DeepEP/HybridEP: moe_flex_num_sms).
  std::uint32_t sm_count = 0;

  bool operator==(const Collective&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// How a send/recv pair moves its bytes (docs/ir.md, "Transports"). `kNccl`: NCCL send/recv kernels, one CTA per
/// channel on both GPUs, spinning while they wait for the peer. `kCopyEngine`: a DMA copy between peer-mapped
/// buffers (Transformer Engine userbuffers' ring exchange with `use_ce`): no SMs, both GPUs in one NVLink domain.
/// `kSmKernel`: a copy kernel on `sm_count` SMs over peer-mapped buffers (userbuffers without `use_ce`). Both sides
/// of a pair name the same transport.
enum class Transport : std::uint8_t { kNccl, kCopyEngine, kSmKernel };

/// Point-to-point send to global rank `peer` over communicator `comm`. Matched with the peer's Recv with the
/// same (comm, tag), in order.
struct Send {
  CommId comm = 0;
  RankId peer = 0;
  std::uint64_t bytes = 0;
  std::uint32_t tag = 0;
  Transport transport = Transport::kNccl;
  std::uint32_t sm_count = 0;  ///< kSmKernel only: the SMs its copy kernel holds (>= 1).

  bool operator==(const Send&) const = default;  ///< Field-wise (round-trip tests, caches).
};

struct Recv {
  CommId comm = 0;
  RankId peer = 0;
  std::uint64_t bytes = 0;
  std::uint32_t tag = 0;
  Transport transport = Transport::kNccl;
  std::uint32_t sm_count = 0;  ///< kSmKernel only: the SMs its copy kernel holds (>= 1).

  bool operator==(const Recv&) const = default;  ///< Field-wise (round-trip tests, caches).
};

// ---- host-side ----

/// Host work of a given duration on the rank's host thread (framework overhead, CPU computation, event
/// records). Both executors honour the duration: the simulator advances the host clock, the backend spins.
struct Host {
  Nanos duration_ns = 0;

  bool operator==(const Host&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// The host thread blocks until op `target` (same rank, earlier) has completed on the GPU.
struct HostSync {
  OpId target = kNoOp;

  bool operator==(const HostSync&) const = default;  ///< Field-wise (round-trip tests, caches).
};

using Body = std::variant<Compute, Collective, Send, Recv, Host, HostSync>;

/// The op's kind as a word; the JSON "kind" field ("compute", "collective", "send", "recv", "host", "host_sync").
[[nodiscard]] const char* kind_name(const Body& body);

enum class Phase : std::uint8_t { kNone, kFwd, kBwd, kWgrad, kOptim };

/// What placed the op; for analysis, attribution and humans. Never changes execution.
struct Tags {
  std::int32_t layer = -1;       ///< Transformer layer (global index), -1 if none.
  std::int32_t microbatch = -1;  ///< Micro-batch index within the step, -1 if none.
  std::int32_t chunk = -1;       ///< Model chunk (virtual pipeline stage), -1 if none.
  Phase phase = Phase::kNone;
  std::string overlap;  ///< Overlap mode that placed or moved the op ("tp", "dp", "ep", ...), empty if none.

  bool operator==(const Tags&) const = default;  ///< Field-wise (round-trip tests, caches).
};

struct Op {
  OpId id = 0;
  RankId rank = 0;
  StreamId stream = 0;  ///< GPU stream; ignored for Host and HostSync, which run on the host thread.
  std::string name;     ///< Stable and human-readable ("L3.mb2.fwd.qkv"); appears in traces and diagnostics.
  DepList deps;         ///< Cross-stream dependencies (event record/wait): same rank, earlier ops.
  Body body;
  Tags tags;

  bool operator==(const Op&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// A GPU stream declared for every rank. Lower `priority` is more urgent (CUDA convention; 0 is default).
struct StreamDecl {
  std::string name;
  int priority = 0;

  bool operator==(const StreamDecl&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// A named group of ranks. Position in `members` is the rank-in-communicator. `kind` names the parallel
/// dimension ("tp", "dp", "ep", "pp", "cp", "expt_dp", "world", ...); several communicators share a kind.
struct Communicator {
  std::string name;  ///< Unique in the schedule, e.g. "tp.3".
  std::string kind;
  std::vector<RankId> members;

  bool operator==(const Communicator&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// One step of a training run (or a microbenchmark), all ranks. Ops of one rank appear in that rank's program
/// order (their relative order in `ops`); ops of different ranks may interleave.
struct Schedule {
  static constexpr int kSchemaVersion = 1;
  std::string name;
  std::uint32_t world_size = 0;  ///< Ranks in the whole job.
  std::vector<RankId> ranks;     ///< Ranks present in this schedule (all of them unless reduced), ascending.
  std::vector<StreamDecl> streams;
  std::vector<Communicator> communicators;
  std::vector<Op> ops;
  std::map<std::string, std::string> meta;  ///< Provenance: model, config, generator, input hashes.
  std::vector<std::string> warnings;        ///< Gating-rule warnings from lowering, shown to users.

  bool operator==(const Schedule&) const = default;  ///< Field-wise (round-trip tests, caches).
};

/// Looks a stream up by name; std::nullopt if absent.
[[nodiscard]] std::optional<StreamId> find_stream(const Schedule& s, const std::string& name);

/// Position of `rank` in `comm.members`, or -1.
[[nodiscard]] int rank_in(const Communicator& comm, RankId rank);

/// The meta key of the hardware queues a schedule was lowered for (CUDA_DEVICE_MAX_CONNECTIONS; models/lower.cpp
/// writes it). With one queue, a rank's GPU ops start in issue order across its streams (docs/ir.md).
inline constexpr const char* kHardwareQueuesKey = "cuda_device_max_connections";

/// The hardware queues the schedule was lowered for (meta `cuda_device_max_connections`), or std::nullopt when it
/// does not say (CUDA's default applies). A value that is not an integer in [1, 32] throws twinstep::Error naming the
/// field and the fix, prefixed with "`file`: " when `file` is given. The one reader of that meta key.
[[nodiscard]] std::optional<std::uint32_t> hardware_queues(const Schedule& s, const std::string& file = {});

}  // namespace twinstep::schedule
