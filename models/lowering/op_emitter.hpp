// Op emission and names: OpEmitter appends one rank's ops to the schedule (ids, streams, deps, the compute stream's
// pending waits, tags) and names them from the current layer, micro-batch and phase prefix ("L3.mb2.fwd.qkv").
// RankLowering (rank_lowering.hpp) builds on it; nothing here knows what a layer is.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "common/assert.hpp"
#include "models/lowering/context.hpp"
#include "schedule/schedule.hpp"

namespace twinstep::models::lowering {

using schedule::Attention;
using schedule::CollectiveKind;
using schedule::Compute;
using schedule::DepList;
using schedule::Elementwise;
using schedule::Gemm;
using schedule::OpId;
using schedule::Phase;

/// A name assembled only where it is used: head, tail, then num (if >= 0), then after; {"qkv", "_ub_send", 3} is
/// "qkv_ub_send3". Op names are built only with LowerOptions::op_names and parameter names only when a grad hook or
/// a held wgrad needs them, so a lowering without names (sweeps) builds no strings. The views must outlive the call
/// that takes the Name: literals, members, or temporaries of the caller's full expression.
struct Name {
  std::string_view head, tail;
  std::int64_t num = -1;
  std::string_view after;
  // Implicit on purpose: a literal, view or string is a Name of one part.
  Name(const char* s) : head(s) {}
  Name(std::string_view s) : head(s) {}
  Name(const std::string& s) : head(s) {}
  Name(std::string_view h, std::string_view t, std::int64_t n = -1, std::string_view a = {})
      : head(h), tail(t), num(n), after(a) {}
  void append_to(std::string& out) const {
    out += head;
    out += tail;
    if (num >= 0) out += std::to_string(num);
    out += after;
  }
  [[nodiscard]] std::string str() const {
    std::string s;
    append_to(s);
    return s;
  }
};

/// Emits one rank's ops. The rank's first op is ops_[first_op_]; ids are global (the op's index in the schedule).
class OpEmitter {
 protected:
  /// Appends the rank's ops to `out` (the schedule's ops: ids are global, the rank's first op is out.size()).
  OpEmitter(const Ctx& ctx, RankId rank, std::vector<schedule::Op>& out)
      : x_(ctx),
        k_(ctx.k),
        rank_(rank),
        co_(coords_of(ctx.k, rank)),
        ops_(out),
        first_op_(static_cast<OpId>(out.size())) {}

  /// The op context (layer, micro-batch, chunk and name prefix of the ops emitted, the tags and names label() gives
  /// them) set for a scope; the one in place before comes back at the scope's end, also when the scope throws.
  class ContextScope {
   public:
    ContextScope(OpEmitter& e, std::int32_t layer, std::int32_t mb, std::int32_t chunk, std::string prefix)
        : e_(e), layer_(e.cur_layer_), mb_(e.cur_mb_), chunk_(e.cur_chunk_), prefix_(std::move(e.prefix_)) {
      e.cur_layer_ = layer;
      e.cur_mb_ = mb;
      e.cur_chunk_ = chunk;
      e.prefix_ = std::move(prefix);
    }
    /// Only the name prefix; layer, micro-batch and chunk stay as they are.
    ContextScope(OpEmitter& e, std::string prefix)
        : ContextScope(e, e.cur_layer_, e.cur_mb_, e.cur_chunk_, std::move(prefix)) {}
    ~ContextScope() {
      e_.cur_layer_ = layer_;
      e_.cur_mb_ = mb_;
      e_.cur_chunk_ = chunk_;
      e_.prefix_ = std::move(prefix_);
    }
    ContextScope(const ContextScope&) = delete;
    ContextScope& operator=(const ContextScope&) = delete;
    ContextScope(ContextScope&&) = delete;
    ContextScope& operator=(ContextScope&&) = delete;

   private:
    OpEmitter& e_;
    std::int32_t layer_, mb_, chunk_;
    std::string prefix_;
  };

  /// Appends an op with body type B on `stream`: id, rank, stream and `deps` (plus the pending waits when it is GPU
  /// work on the compute stream), sorted and deduplicated. The caller sets the body (the op holds a default
  /// Compute{Gemm{}} until then), and name and tags with label().
  /// `node`: in a forward, the op records an autograd node (counted in nodes_ unless an autograd_function() is
  /// open); false for a D2H copy of counts or a collective of integers.
  template <typename B>
  schedule::Op& open(StreamId stream, DepList deps, bool node = true) {
    constexpr bool on_gpu = !std::is_same_v<B, schedule::Host> && !std::is_same_v<B, schedule::HostSync>;
    const auto id = static_cast<OpId>(ops_.size());
    if (on_gpu && stream == x_.st.compute && !pending_.empty()) {
      deps.insert(deps.end(), pending_.begin(), pending_.end());
      pending_.clear();
    }
    sort_unique(deps);
    if (std::is_same_v<B, Compute> && stream == x_.st.compute) last_compute_ = id;
    if (on_gpu && !modules_.empty()) ++modules_.back().kernels;
    if (on_gpu && node && fused_ == 0) ++nodes_;
    schedule::Op& op = ops_.emplace_back();
    op.id = id;
    op.rank = rank_;
    op.stream = stream;
    op.deps = std::move(deps);
    return op;
  }
  static void sort_unique(DepList& deps) {
    if (deps.size() == 2) {  // the common case: no call into sort and unique
      if (deps[0] > deps[1]) std::swap(deps[0], deps[1]);
      if (deps[0] == deps[1]) deps.pop_back();
    } else if (deps.size() > 2) {
      std::sort(deps.begin(), deps.end());
      deps.erase(std::unique(deps.begin(), deps.end()), deps.end());
    }
  }
  /// Name (only with op names on) and tags of the op being emitted, from the current layer, micro-batch, chunk.
  void label(schedule::Op& op, const Name& what, Phase ph, std::string_view overlap) const {
    if (x_.op_names) op.name = nm(what);
    op.tags.layer = cur_layer_;
    op.tags.microbatch = cur_mb_;
    op.tags.chunk = cur_chunk_;
    op.tags.phase = ph;
    if (!overlap.empty()) op.tags.overlap = overlap;
  }
  template <typename B>
  OpId emit(StreamId stream, const Name& what, B&& body, DepList deps, Phase ph, std::string_view overlap = {}) {
    using T = std::decay_t<B>;
    schedule::Op& op = open<T>(stream, std::move(deps));
    label(op, what, ph, overlap);
    op.body.template emplace<T>(std::forward<B>(body));
    return op.id;
  }
  schedule::Tags tags(Phase ph, std::string_view overlap = {}) const {
    schedule::Tags t;
    t.layer = cur_layer_;
    t.microbatch = cur_mb_;
    t.chunk = cur_chunk_;
    t.phase = ph;
    t.overlap = overlap;
    return t;
  }
  std::string nm(const Name& what) const {
    if (!x_.op_names) return {};
    std::string s;
    if (cur_layer_ >= 0) {
      s += 'L';
      s += str(static_cast<std::uint64_t>(cur_layer_));
      s += '.';
    }
    if (cur_mb_ >= 0) {
      s += "mb";
      s += str(static_cast<std::uint64_t>(cur_mb_));
      s += '.';
    }
    s += prefix_;
    what.append_to(s);
    return s;
  }
  /// A compute kernel on `stream` holding `sm_count` SMs (0: what the GPU gives it), built in place in the op.
  template <typename K>
  OpId kernel_on(StreamId stream, const Name& what, K&& kern, Phase ph, DepList deps = {},
                 std::string_view overlap = {}, std::uint32_t sm_count = 0) {
    constexpr bool copy = std::is_same_v<std::decay_t<K>, schedule::Memcpy>;  // token counts: no gradient
    schedule::Op& op = open<Compute>(stream, std::move(deps), !copy);
    label(op, what, ph, overlap);
    auto& c = std::get<Compute>(op.body);
    c.kernel.template emplace<std::decay_t<K>>(std::forward<K>(kern));
    c.sm_count = sm_count;
    return op.id;
  }
  template <typename K>
  OpId kernel(const Name& what, K&& kern, Phase ph, DepList deps = {}, std::string_view overlap = {}) {
    return kernel_on(x_.st.compute, what, std::forward<K>(kern), ph, std::move(deps), overlap);
  }
  /// The GEMM of a linear layer in role `role` (forward; dgrad: A is the output gradient; wgrad: A the transposed
  /// output gradient): in the run's dtype, or with --dtype fp8 as Transformer Engine's HYBRID recipe runs it: fp8
  /// operands, e4m3 forward, an e5m2 gradient against e4m3 in both backward GEMMs, bf16 output. A wgrad GEMM
  /// accumulates into the main grad under gradient_accumulation_fusion: an fp32 one (Dims::wgrad_accumulate_fp32) or
  /// one in the output dtype, bf16 (Dims::wgrad_accumulate_output).
  enum class GemmRole : std::uint8_t { kFprop, kDgrad, kWgrad };
  [[nodiscard]] Gemm linear_gemm(std::uint64_t m, std::uint64_t n, std::uint64_t kk, GemmRole role) const {
    Gemm g{m, n, kk, 1, k_.dtype};
    if (k_.fp8) {
      g.dtype = schedule::DType::kFP8;
      if (role != GemmRole::kFprop) g.a_format = schedule::Fp8Format::kE5M2;
    }
    g.accumulate_fp32 = role == GemmRole::kWgrad && k_.wgrad_accumulate_fp32;
    g.accumulate = role == GemmRole::kWgrad && k_.wgrad_accumulate_output;
    return g;
  }
  [[nodiscard]] schedule::GroupedGemm grouped_linear(std::vector<std::uint64_t> groups, std::uint64_t n,
                                                     std::uint64_t kk, GemmRole role) const {
    const Gemm g = linear_gemm(0, n, kk, role);
    schedule::GroupedGemm gg{std::move(groups), n, kk, g.dtype, g.a_format, g.b_format, g.accumulate_fp32};
    gg.accumulate = g.accumulate;
    return gg;
  }
  /// Weight elements a linear layer's wgrad GEMM produces: C[out, in] of a Gemm (m x n x batch), one [n, k] weight per
  /// group of a GroupedGemm (the local experts).
  static std::uint64_t wgrad_weight_elements(const schedule::Kernel& wgrad) {
    if (const auto* g = std::get_if<Gemm>(&wgrad)) return g->m * g->n * g->batch;
    const auto& gg = std::get<schedule::GroupedGemm>(wgrad);
    return gg.m.size() * gg.n * gg.k;
  }
  /// DDP's backward post-hook `main_grad.add_(grad)` (DistributedDataParallel._make_backward_post_hook) for a
  /// parameter of `weight_elements` whose gradient autograd handed over in the parameters' dtype (named after the op
  /// that produced it, `grad_name`): an elementwise kernel of Dims::main_grad_add_bytes_per_element per element, on
  /// the compute stream right after that op. Named "<grad_name>_main_grad_add".
  OpId main_grad_add(const Name& grad_name, std::uint64_t weight_elements, Phase ph) {
    TWINSTEP_ASSERT(grad_name.after.empty(), "gradient op %s: a name with a suffix", grad_name.str().c_str());
    Name add = grad_name;
    add.after = "_main_grad_add";
    return elementwise(add, weight_elements * k_.main_grad_add_bytes_per_element, ph);
  }
  /// gradient_accumulation_fusion off: main_grad_add() after a linear layer's wgrad GEMM (named `wgrad_name`, kernel
  /// `wgrad`), which then writes its gradient in the parameters' dtype (Megatron's
  /// LinearWithGradAccumulationAndAsyncCommunication.backward returns `grad_output.t().matmul(total_input)` without
  /// the fusion). Returns the add, or kNoOp with the fusion on (the GEMM updated the main grad).
  OpId linear_main_grad_add(const Name& wgrad_name, const schedule::Kernel& wgrad, Phase ph) {
    if (!k_.linear_main_grad_add) return schedule::kNoOp;
    return main_grad_add(wgrad_name, wgrad_weight_elements(wgrad), ph);
  }
  /// --dtype fp8: the cast kernel before a linear GEMM of `elements` input elements (bf16 -> fp8 and the transposed
  /// copy the wgrad GEMM reads, with the amax; tensorwise scaling reads the input once more for the amax first).
  /// Nothing otherwise.
  void fp8_cast(const Name& what, std::uint64_t elements, Phase ph, DepList deps = {}) {
    if (!k_.fp8) return;
    const std::uint64_t per = k_.act_bytes + 2 + (k_.fp8_current ? k_.act_bytes : 0);
    Name cast = what;  // "<gemm>_fp8_cast"
    cast.after = what.after.empty() ? std::string_view("_fp8_cast") : std::string_view("_fp8_cast_");
    elementwise(cast, elements * per, ph, std::move(deps));
  }
  /// The weight elements a forward fp8 cast also quantizes: Transformer Engine casts a linear layer's bf16 weight
  /// (with its transposed copy and, with current scaling, its amax) on the first micro-batch of each step
  /// (Megatron's is_first_microbatch) and reuses the fp8 copy for the step's later micro-batches and for
  /// recomputation; none with fp8_param_gather (fp8 primary weights, cast by the optimizer's main-param copy).
  [[nodiscard]] std::uint64_t fp8_weight_cast_elements(std::uint64_t weight_elements, Phase ph) const {
    const bool first_forward = ph == Phase::kFwd && cur_mb_ == 0 && prefix_ != "recompute.";
    return k_.fp8 && first_forward && !k_.fp8_param_gather ? weight_elements : 0;
  }
  /// A linear layer's GEMM on the compute stream (role from the phase: forward, dgrad, wgrad), preceded by its
  /// fp8 cast where the run is fp8 (the wgrad GEMM reads the transposed copies the other casts made).
  OpId gemm(const Name& what, std::uint64_t m, std::uint64_t n, std::uint64_t kk, Phase ph, DepList deps = {},
            std::string_view overlap = {}) {
    const GemmRole role = ph == Phase::kWgrad ? GemmRole::kWgrad
                          : ph == Phase::kBwd ? GemmRole::kDgrad
                                              : GemmRole::kFprop;
    OpId id = schedule::kNoOp;
    autograd_function([&] {  // a linear layer: one autograd node with its cast
      if (k_.fp8 && role != GemmRole::kWgrad) {
        const std::uint64_t weights = role == GemmRole::kFprop ? fp8_weight_cast_elements(n * kk, ph) : 0;
        fp8_cast(what, m * kk + weights, ph, std::exchange(deps, {}));  // the GEMM follows it in stream order
      }
      id = kernel(what, linear_gemm(m, n, kk, role), ph, std::move(deps), overlap);
    });
    return id;
  }
  OpId elementwise(const Name& what, std::uint64_t bytes, Phase ph, DepList deps = {}) {
    return kernel(what, Elementwise{bytes, 0}, ph, std::move(deps));
  }
  /// A collective on `stream`: waits for the compute stream at launch (PyTorch syncs the NCCL stream with the
  /// current stream), plus `deps`. Blocking ones make the next compute op wait for it.
  OpId collective(StreamId stream, const Name& what, CollectiveKind kind, CommId comm, std::uint64_t bytes, Phase ph,
                  bool blocking, DepList deps = {}, std::string_view overlap = {},
                  schedule::DType dtype = schedule::DType::kBF16) {
    TWINSTEP_ASSERT(comm != kNone, "collective %s on an unused communicator", what.str().c_str());
    // Often deps is {the last compute op} already (sort_unique would drop the copy): no reallocation for it then.
    if (last_compute_ != schedule::kNoOp && std::find(deps.begin(), deps.end(), last_compute_) == deps.end()) {
      deps.push_back(last_compute_);
    }
    schedule::Op& op = open<schedule::Collective>(stream, std::move(deps), records_node(dtype));
    label(op, what, ph, overlap);
    auto& c = op.body.emplace<schedule::Collective>();
    c.kind = kind;
    c.comm = comm;
    c.bytes = bytes;
    c.dtype = dtype;
    if (kind == CollectiveKind::kAllToAll) {
      const std::uint32_t n = x_.comm_size[comm];  // only CP uses this all_to_all in dense lowering
      c.send_bytes.assign(n, bytes / n);
    }
    if (blocking) pending_.push_back(op.id);
    return op.id;
  }
  /// A send/recv; `transport` other than NCCL only for the TP-overlap ring exchange (`sms`: a sm_kernel's SMs).
  OpId send(StreamId stream, const Name& what, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            Phase ph, DepList deps, std::string_view overlap = {},
            schedule::Transport transport = schedule::Transport::kNccl, std::uint32_t sms = 0) {
    return emit(stream, what, schedule::Send{comm, peer, bytes, tag, transport, sms}, std::move(deps), ph, overlap);
  }
  OpId recv(StreamId stream, const Name& what, CommId comm, RankId peer, std::uint64_t bytes, std::uint32_t tag,
            Phase ph, std::string_view overlap = {}, schedule::Transport transport = schedule::Transport::kNccl,
            std::uint32_t sms = 0) {
    return emit(stream, what, schedule::Recv{comm, peer, bytes, tag, transport, sms}, {}, ph, overlap);
  }
  void host(const Name& what, Nanos ns, Phase ph) {
    if (ns > 0) emit(x_.st.compute, what, schedule::Host{ns}, {}, ph);
  }
  /// The host blocks on `target`; then the framework's share of the sync (HostCosts::host_sync_ns: .item(),
  /// .tolist(), synchronize() beyond the wake-up) as a host op named after it.
  void host_sync(const Name& what, OpId target, Phase ph) {
    emit(x_.st.compute, what, schedule::HostSync{target}, {}, ph);
    host(Name{what.head, what.tail, what.num, "_host"}, x_.cfg->host.host_sync_ns, ph);
  }
  /// A collective of `dtype` records an autograd node in a forward (Megatron's comm functions are
  /// autograd.Functions) unless it moves integers (token counts).
  static bool records_node(schedule::DType dtype) {
    return dtype != schedule::DType::kInt64 && dtype != schedule::DType::kInt32;
  }
  /// The ops `body` emits form one autograd node (a torch.autograd.Function: a Transformer Engine module, fused
  /// attention, a fused kernel with its own backward): nodes_ grows by one for all of them. Nests.
  template <typename Body>
  void autograd_function(Body&& body) {
    if (fused_ == 0) ++nodes_;
    ++fused_;
    body();
    --fused_;
  }
  /// A module call's framework host time (or the autograd engine's for a backward region): a host op before the
  /// call's ops whose duration, set by module_end(), is fixed + per_kernel x the GPU ops emitted until then (nested
  /// calls count their own). Nothing is emitted when both costs are 0.
  void module_begin(const Name& what, Phase ph, Nanos fixed, Nanos per_kernel) {
    ModuleCall m{schedule::kNoOp, fixed, per_kernel, 0};
    if (fixed > 0 || per_kernel > 0) m.host = emit(x_.st.compute, what, schedule::Host{0}, {}, ph);
    modules_.push_back(m);
  }
  void module_end() {
    TWINSTEP_ASSERT(!modules_.empty(), "module_end without module_begin");
    const ModuleCall m = modules_.back();
    modules_.pop_back();
    if (m.host != schedule::kNoOp) {
      std::get<schedule::Host>(ops_[m.host].body).duration_ns = m.fixed + m.per_kernel * static_cast<Nanos>(m.kernels);
    }
  }
  template <typename Body>
  void module_call(const Name& what, Phase ph, Nanos fixed, Nanos per_kernel, Body&& body) {
    module_begin(what, ph, fixed, per_kernel);
    body();
    module_end();
  }
  // ---- building blocks ----
  std::uint64_t act(std::uint64_t tokens, std::uint64_t width) const { return tokens * width * k_.act_bytes; }
  RankId tp_peer(int delta) const {
    Coords c = co_;
    c.tp = static_cast<std::uint32_t>((static_cast<int>(co_.tp) + delta + static_cast<int>(k_.tp)) %
                                      static_cast<int>(k_.tp));
    return rank_of(k_, c);
  }
  RankId cp_peer(int delta) const {
    Coords c = co_;
    c.cp = static_cast<std::uint32_t>((static_cast<int>(co_.cp) + delta + static_cast<int>(k_.cp)) %
                                      static_cast<int>(k_.cp));
    return rank_of(k_, c);
  }
  RankId pp_peer(int delta) const {
    Coords c = co_;
    c.pp = static_cast<std::uint32_t>((static_cast<int>(co_.pp) + delta + static_cast<int>(k_.pp)) %
                                      static_cast<int>(k_.pp));
    return rank_of(k_, c);
  }

  const Ctx& x_;
  const Dims& k_;
  RankId rank_;
  Coords co_;
  std::vector<schedule::Op>& ops_;  // the schedule's ops, this rank's from first_op_ on
  OpId first_op_;
  DepList pending_;  // deps the next compute-stream op takes (stream wait_event)
  struct ModuleCall {
    OpId host;  // its host op (kNoOp: none emitted)
    Nanos fixed, per_kernel;
    std::uint32_t kernels;  // GPU ops emitted inside it (not inside a nested call)
  };
  std::vector<ModuleCall> modules_;  // the module calls open now, innermost last
  // Autograd nodes the ops emitted so far record (a forward op outside an autograd_function() is a node of its own;
  // read as a difference around a forward piece, rank_lowering.hpp's fwd_piece) and the autograd_function() depth.
  std::uint64_t nodes_ = 0;
  std::uint32_t fused_ = 0;
  OpId last_compute_ = schedule::kNoOp;
  std::int32_t cur_layer_ = -1, cur_mb_ = -1, cur_chunk_ = -1;
  std::string prefix_;
};

}  // namespace twinstep::models::lowering
