// RankLowering: one rank's training step as ops, a function of the rank's coordinates alone (so that a
// symmetry-reduced schedule can emit only representative ranks). The class holds the rank's lowering state; its
// members are defined by concern: TP linear layers (tp_linear.cpp), attention and CP (attention.cpp), MoE and
// dispatchers (moe.cpp), layers and chunks (layers.cpp), the EP-overlap schedule (ep_overlap.cpp), data
// parallelism and the optimizer step (data_parallel.cpp), pipeline P2P and schedules (pipeline_schedule.cpp).
#pragma once

#include <cstdint>
#include <deque>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "models/lower.hpp"
#include "models/lowering/context.hpp"
#include "models/lowering/moe_eager.hpp"
#include "models/lowering/moe_routing.hpp"
#include "models/lowering/op_emitter.hpp"
#include "models/lowering/pipeline_schedule.hpp"

namespace twinstep::models::lowering {

class RankLowering : private OpEmitter {
 public:
  /// Appends the rank's ops to `out` (the schedule's ops: ids are global, the rank's first op is out.size()).
  RankLowering(const Ctx& ctx, RankId rank, std::vector<schedule::Op>& out)
      : OpEmitter(ctx, rank, out),
        eco_(expert_coords_of(ctx.k, rank)),
        routing_(route(ctx.k, eco_.ep, ctx.k.tokens_sp)) {
    fwd_recv_.resize(k_.vpp);
    bwd_recv_.resize(k_.vpp);
    aq_ = k_.heads;
    akv_ = k_.kv_groups;
    adh_ = k_.head_dim;
  }

  /// Lowers the whole step: the pipeline schedule, then finalize and the optimizer.
  void run();

 private:
  /// One side of a combined EP-overlap step: the forward or backward of a (micro-batch, chunk), with its CUDA event
  /// (the last op(s) of its previous node; each node waits for it and records it again at its end).
  struct Side {
    bool fwd = true;
    std::uint32_t mb = 0, chunk = 0;
    DepList ev;
  };

  // ---- TP linear layers (tp_linear.cpp) ----
  /// Column-parallel linear with SP all-gather of its input (qkv_fprop / fc1_fprop): blocking AG then GEMM, or
  /// with tp_comm_overlap the userbuffer ring exchange (t GEMM chunks, chunk i+1 waits the recv of step i).
  OpId ag_gemm(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph);
  /// Op names of a userbuffer ring: site + send / recv / chunk + step.
  struct RingNames {
    std::string_view send, recv, chunk;
  };
  struct Ring {
    OpId last_gemm = schedule::kNoOp, last_recv = schedule::kNoOp;
  };
  /// TE's userbuffer ring exchange of the SP shards around a GEMM [tokens_sp x kk] x [kk x n]: tp GEMM chunks, step
  /// i sends its shard to the next TP rank and receives from the previous one; chunk i+1 waits for the recv of step
  /// i, each send for the previous recv (the first for the input's producer).
  Ring ub_ring_gemm(std::string_view site, const RingNames& names, std::uint64_t n, std::uint64_t kk, Phase ph);
  /// Row-parallel linear whose output is reduce-scattered (SP) or all-reduced (no SP) over TP (proj_fprop /
  /// fc2_fprop): blocking collective after the GEMM, or with tp_comm_overlap the pipelined GEMM+RS (4 chunks, the
  /// last chunk's RS exposed).
  void gemm_rs(std::string_view site, std::uint64_t n, std::uint64_t kk, Phase ph);
  /// Backward of a row-parallel linear (proj / fc2): AG of the output grad over TP (SP), dgrad and wgrad GEMMs.
  /// `L` is the layer's parameter prefix ("L3."): the weight is L + site.
  void rowparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L);
  /// Backward of a column-parallel linear (qkv / fc1) and its layernorm: dgrad GEMM with the async AG of ln_out
  /// (SP) launched before it, async RS (SP) or AR (no SP) of dgrad launched before the wgrad GEMM; the layernorm
  /// backward waits for the RS/AR (TE B4/B5; bulk userbuffer overlap with tp_comm_overlap).
  /// `L` is the layer's parameter prefix ("L3."): the weight is L + site, the layernorm L + ln ("ln1").
  void colparallel_bwd(std::string_view site, std::uint64_t out, std::uint64_t in, std::string_view L,
                       std::string_view ln);
  /// Bytes of TE's fused norm backward over `rows` x `width` (docs/megatron-kernels.md, section 3): x and dy read,
  /// dx written (activation dtype), rstd read (and the mean, LayerNorm: fp32 per row), gamma read and dgamma written
  /// (LayerNorm: dbeta too) in the weights' dtype.
  [[nodiscard]] std::uint64_t norm_bwd_bytes(std::uint64_t rows, std::uint64_t width) const;
  /// The backward of a layer's input norm `ln` ("ln1" / "ln2") after `deps`: TE's fused norm backward (its gradient
  /// ready for DDP as L + ln), then autograd's add of the skip connection's gradient into the norm input's gradient
  /// (`<ln>_residual_grad_add`, docs/megatron-kernels.md section 2).
  void input_norm_bwd(std::string_view ln, std::string_view L, DepList deps = {});
  bool ub() const { return k_.tp_overlap && !no_ub_; }
  /// What computes a weight gradient: a linear layer's wgrad GEMM (gradient_accumulation_fusion decides whether it
  /// updates the main grad itself or a main_grad_add() follows it), or a plain torch op (the router's linear:
  /// Megatron's TopKRouter.gating, a torch linear or RouterGatingLinearFunction, returns the weight gradient), whose
  /// gradient reaches the main grad through DDP's hook's main_grad_add() in both modes.
  enum class WgradOf : std::uint8_t { kLinear, kTorchOp };
  /// A weight-gradient kernel (and, for a linear layer without the fusion, its main_grad_add()): emitted now, or held
  /// for the W node of the combined schedule (delay_wgrad_compute).
  template <typename K>
  void wgrad_op(const Name& what, K&& kern, DepList deps, const Name& param, std::string_view overlap = {},
                WgradOf of = WgradOf::kLinear) {
    const bool add = of == WgradOf::kTorchOp || k_.linear_main_grad_add;
    if (defer_wgrad_) {
      deferred_.push_back(Deferred{nm(what), schedule::Kernel(std::forward<K>(kern)), std::move(deps), param.str(),
                                   tags(Phase::kWgrad, "ep"), add});
      return;
    }
    const OpId w = kernel(what, kern, Phase::kWgrad, std::move(deps), overlap);
    const OpId a =
        add ? main_grad_add(what, wgrad_weight_elements(schedule::Kernel(std::forward<K>(kern))), Phase::kWgrad)
            : schedule::kNoOp;
    grad_ready(param, a != schedule::kNoOp ? a : w);
  }

  // ---- attention and CP (attention.cpp) ----
  /// One attention kernel on the compute stream.
  OpId attn_kernel(const Name& what, std::uint64_t heads_q, std::uint64_t heads_kv, std::uint64_t sq, std::uint64_t skv,
                   bool causal, bool bwd, Phase ph, DepList deps, std::string_view ov);
  /// The KV ring of TE's P2P context parallelism (megatron-overlap.md section 5) over a ring of `n` ranks at
  /// position `pos`: `hq`/`hkv` heads and `s_loc` tokens per rank (two load-balanced chunks). Forward: step i
  /// computes local Q against the KV block of position pos - i while the next block travels (n - 1 transfers);
  /// step 0 "diagonal", i <= pos "lower-triangle", i > pos "upper-triangle"; per-step correction kernels.
  /// `first` are the ops that produce the local KV block (the first send waits for them).
  void cp_ring_fwd(Phase ph, CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev,
                   std::uint64_t hq, std::uint64_t hkv, std::uint64_t s_loc, const DepList& first);
  /// Backward of the KV ring: n steps; sends KV at step 0, KV + dKV at steps 1..n-2, dKV at step n-1, i.e.
  /// 2(n-1) KV-sized transfers. Returns the recv of the final dKV (kNoOp when n == 1).
  OpId cp_ring_bwd(CommId comm, std::uint32_t n, std::uint32_t pos, RankId next, RankId prev, std::uint64_t hq,
                   std::uint64_t hkv, std::uint64_t s_loc);
  /// a2a+p2p ring neighbours: the same a2a position, the next/previous p2p position (CP index = outer * ca + inner).
  RankId cp_outer_peer(int delta) const;
  /// Attention of the CP all_gather variant after the KV all-gather: the rank's two load-balanced chunks (cp rank
  /// and 2 cp - 1 - cp rank), each causal on itself and full on the chunks before it. Names "<stem><h>_prefix/_diag".
  void cp_gathered_attention(std::string_view stem, bool bwd, Phase ph, std::uint64_t hq, std::uint64_t hkv);
  /// The group of the a2a (Ulysses) exchange: the whole CP group, or the inner group of a2a+p2p.
  struct A2aGroup {
    std::uint32_t size;
    CommId comm;
    StreamId stream;
  };
  A2aGroup cp_a2a_group() const;
  /// Core attention forward (with its CP exchanges); `recompute` re-runs it in backward.
  void attention_fwd(Phase ph);
  void attention_bwd();
  /// Selective recompute: core attention's forward again right before its backward (ops named "recompute.").
  void selective_recompute();
  void set_attention_dims(std::uint32_t layer);
  // ---- attention blocks (standard / gated GQA, MLA, Gated DeltaNet) ----
  void attn_block_fwd(std::uint32_t layer, Phase ph);
  void attn_block_bwd(std::uint32_t layer);
  /// Multi-latent attention (DeepSeek-V3): down projections (replicated over TP, on the SP shard), all-gather of
  /// the latents over TP, latent norms, column-parallel up projections, attention over n_q/t heads with head dims
  /// qk + rope, row-parallel output projection.
  void mla_fwd(Phase ph);
  void mla_bwd(std::string_view L);
  /// Gated DeltaNet (Qwen3-Next linear attention): in_proj (q, k, v, z, beta, alpha), causal conv1d, the chunked
  /// gated delta-rule scan, gated RMSNorm, out_proj. STAND-IN: no measured kernel exists for the scan (a Triton
  /// kernel in FLA); it is lowered as the chunked algorithm's batched GEMMs over 64-token chunks per value head
  /// (intra-chunk scores [C,dk]x[dk,C], state update [dk,C]x[C,dv], state output [C,dk]x[dk,dv]); lower() warns.
  void gdn_fwd(Phase ph);
  void gdn_scan(std::string_view what, Phase ph, std::uint64_t factor);
  void gdn_bwd(std::string_view L);

  // ---- MoE and dispatchers (moe.cpp) ----
  /// A kernel on the EP comm stream inside a comm node (combined schedule), else on the compute stream.
  OpId ep_elementwise(const Name& what, std::uint64_t bytes, Phase ph, DepList deps = {});
  /// A fused flex (DeepEP/HybridEP) kernel holding moe_flex_num_sms SMs, on the EP stream (its internal comm
  /// stream); outside a comm node it waits for the compute stream at launch.
  /// Representation of the fused dispatch/combine: this kernel (its local pack/unpack work, holding the dedicated
  /// SMs) followed on the same stream by the all_to_all that carries the bytes over NVLink/IB, which holds the
  /// same moe_flex_num_sms SMs while it runs (Collective::sm_count; an NCCL all_to_all would hold one CTA per
  /// channel).
  template <typename K>
  OpId flex_kernel(const Name& what, K&& kern, Phase ph);
  /// An EP all-to-all with per-peer splits (token copies x bytes per copy). Outside a comm node it is a blocking
  /// NCCL call (the compute stream waits for it); inside, it runs on the comm stream after the node's event.
  /// `sm_count` > 0: the fused flex kernel's transfer, holding its dedicated SMs instead of NCCL channels.
  OpId ep_a2a(const Name& what, const std::vector<std::uint64_t>& copies, std::uint64_t bytes_per_copy,
              schedule::DType dtype, Phase ph, std::uint32_t sm_count = 0);
  /// A fused flex dispatch or combine: the kernel packing `copies` token copies (flex_kernel), then with EP > 1 its
  /// all-to-all holding moe_flex_num_sms SMs; with EP 1 a blocking kernel outside a comm node.
  void flex_transfer(const Name& kernel_name, const Name& a2a_name, const std::vector<std::uint64_t>& copies, Phase ph);
  /// Shared expert forward on the compute stream (TP-parallel MLP with SP all-gather / reduce-scatter; expert
  /// linears never use userbuffers).
  void shared_expert_fwd(Phase ph);
  /// Pre-dispatch part of an MoE layer (node A of the combined schedule, after attention): pre-MLP norm, shared
  /// expert (before the router unless moe_shared_expert_overlap), router, dispatch preprocess.
  void moe_pre_fwd(Phase ph);
  /// Dispatch (node D): host sync on the split sizes, token and probs all-to-alls (flex: notify, count sync, fused
  /// dispatch kernel holding moe_flex_num_sms SMs and its transfer).
  void moe_dispatch_fwd(Phase ph);
  /// Shared expert on its own stream (moe_shared_expert_overlap): fc1 right after the token all-to-all.
  void shared_overlap_fc1(Phase ph);
  /// ... and fc2 right after the combine all-to-all; the unpermute-add waits for it.
  OpId shared_overlap_fc2(Phase ph);
  /// Experts (node M): expert-TP all-gather, sort by local expert, grouped GEMMs sized by the tokens this rank
  /// received, unsort, expert-TP reduce-scatter.
  void moe_experts_fwd(Phase ph);
  /// Combine (node C): combine all-to-all, unpermute (weighted sum), shared-expert add, residual.
  void moe_combine_fwd(Phase ph);
  // Backward pieces, in backward order: C_b, M_b, D_b, A_b.
  void moe_combine_bwd();
  void moe_experts_bwd(std::string_view L);
  void moe_dispatch_bwd();
  void moe_pre_bwd(std::string_view L);
  /// The router's and the permutation's kernels (moe_eager.hpp) at this rank's shapes, emitted in order: elementwise
  /// ops (on the EP stream inside a comm node when `ep`), nonzero's count copied to the host with the host's sync on
  /// it, autograd nodes without a kernel; a forward records the nodes the entries name.
  void routing_ops(RoutingSegment segment, bool fused, bool backward, Phase ph, bool ep = false);
  RoutingShape routing_shape() const;
  // ---- MoE token counts (routing model) ----
  // The routing model is a function of the layout and the rank's EP position alone: computed once per rank
  // (route(), moe_routing.hpp) and read by every MoE layer and micro-batch.
  std::uint64_t moe_tokens() const { return k_.tokens_sp; }  // T_m: tokens entering the router on this rank
  const std::vector<std::uint64_t>& dispatch_copies() const { return routing_.dispatch_copies; }
  /// Token copies this rank received from each EP peer (= what it sends back in the combine).
  const std::vector<std::uint64_t>& combine_copies() const { return routing_.combine_copies; }
  /// Rows the grouped GEMMs process on this rank (after the expert-TP all-gather): e x split[position] x t_e.
  std::uint64_t expert_rows() const { return routing_.expert_rows; }
  const std::vector<std::uint64_t>& expert_groups() const { return routing_.expert_groups; }
  const std::vector<std::uint64_t>& flex_copies() const { return routing_.flex_copies; }
  const std::vector<std::uint64_t>& flex_combine_copies() const { return routing_.flex_combine_copies; }
  std::uint64_t shared_fc1_width() const {
    return (x_.model->gated_linear_unit ? 2 * k_.shared_ffn : k_.shared_ffn) / k_.tp;
  }

  // ---- layers and chunks (layers.cpp) ----
  void dense_mlp_fwd(Phase ph);
  void dense_mlp_bwd(std::string_view L);
  void layer_fwd(std::uint32_t layer, Phase ph);
  void layer_bwd(std::uint32_t layer);
  void embedding_fwd();
  void embedding_bwd();
  void output_fwd();
  void output_bwd();
  /// Layers of `chunk` whose forward is fully recomputed, grouped: each group is recomputed together before the
  /// backward of its last layer (uniform: consecutive groups of N; block: the first N layers, one group each).
  std::vector<std::vector<std::uint32_t>> recompute_groups(std::uint32_t chunk) const;
  void chunk_fwd(std::uint32_t mb, std::uint32_t chunk);
  void chunk_bwd(std::uint32_t mb, std::uint32_t chunk);
  // ---- framework host time (HostCosts), counted from the ops emitted (op_emitter.hpp's module calls) ----
  /// The optimizer step's host time: fixed + per parameter tensor + per parameter group of this rank.
  Nanos optimizer_host_ns() const;
  /// How a forward call's ops record autograd nodes: each its own (torch ops, module containers) or all one
  /// (a torch.autograd.Function: Transformer Engine's linear modules, the vocab-parallel cross entropy).
  enum class Nodes : std::uint8_t { kPerOp, kOne };
  /// A forward nn.Module call: per module call + per kernel launched inside it (not inside a nested call).
  template <typename Body>
  void fwd_module(const Name& what, Phase ph, Body&& body, Nodes nodes = Nodes::kPerOp) {
    module_call(what, ph, x_.cfg->host.per_module_call_ns, x_.cfg->host.per_kernel_launch_ns, [&] {
      if (nodes == Nodes::kOne)
        autograd_function(body);
      else
        body();
    });
  }
  /// Ops launched by Python code outside a module call (the token dispatcher's methods): per kernel only.
  template <typename Body>
  void fwd_ops(const Name& what, Phase ph, Body&& body, Nodes nodes = Nodes::kPerOp) {
    module_call(what, ph, 0, x_.cfg->host.per_kernel_launch_ns, [&] {
      if (nodes == Nodes::kOne)
        autograd_function(body);
      else
        body();
    });
  }
  /// A measured host piece (HostCosts::moe_*): its whole framework host time, whatever the lowering emits in it.
  template <typename Body>
  void host_piece(const Name& what, Phase ph, Nanos ns, Body&& body) {
    module_call(what, ph, ns, 0, std::forward<Body>(body));
  }
  /// The forward pieces whose autograd nodes a backward region runs (the granularity of the combined 1F1B
  /// schedule's nodes; a plain layer backward runs all of its layer's).
  enum class Piece : std::uint8_t { kAttn, kMoePre, kDispatch, kExperts, kCombine, kMlp, kEmbedding, kOutput };
  static constexpr std::size_t kPieces = 8;
  /// Runs a forward piece of the current layer (-1: embedding, output) and keeps the autograd nodes its ops
  /// recorded (every micro-batch's forward of a layer records the same ones).
  template <typename Body>
  void fwd_piece(Piece piece, Body&& body) {
    const std::uint64_t before = nodes_;
    body();
    const auto slot = static_cast<std::size_t>(cur_layer_ + 1) * kPieces + static_cast<std::size_t>(piece);
    if (piece_nodes_.size() <= slot) piece_nodes_.resize(slot + 1, -1);
    piece_nodes_[slot] = static_cast<std::int64_t>(nodes_ - before);
  }
  /// The autograd nodes the current layer's forward `pieces` recorded (pieces the layer lacks count 0; the
  /// forward of the layer has run before any backward of it).
  std::uint64_t nodes_of(std::initializer_list<Piece> pieces) const {
    std::uint64_t n = 0;
    bool seen = false;
    for (const Piece p : pieces) {
      const auto slot = static_cast<std::size_t>(cur_layer_ + 1) * kPieces + static_cast<std::size_t>(p);
      if (slot < piece_nodes_.size() && piece_nodes_[slot] >= 0) {
        n += static_cast<std::uint64_t>(piece_nodes_[slot]);
        seen = true;
      }
    }
    TWINSTEP_ASSERT(seen || pieces.size() == 0, "rank %u: backward of layer %d before its forward", rank_, cur_layer_);
    return n;
  }
  /// A backward region the autograd engine runs: per autograd node of the forward pieces it differentiates
  /// (`nodes`, from nodes_of) + per kernel launched (beyond the raw launch; HostCosts).
  template <typename Body>
  void bwd_ops(const Name& what, std::uint64_t nodes, Body&& body) {
    const HostCosts& h = x_.cfg->host;
    module_call(what, Phase::kBwd, h.per_autograd_node_ns * static_cast<Nanos>(nodes), h.per_kernel_backward_ns,
                std::forward<Body>(body));
  }
  const std::vector<std::uint32_t>& layers_of(std::uint32_t chunk) const {
    return x_.vs_layers[chunk * k_.pp + co_.pp];
  }
  bool first_vs(std::uint32_t chunk) const { return co_.pp == 0 && chunk == 0; }
  bool last_vs(std::uint32_t chunk) const { return co_.pp == k_.pp - 1 && chunk == k_.vpp - 1; }

  // ---- EP overlap: the combined 1F1B schedule (ep_overlap.cpp) ----
  /// Emits the weight-gradient kernels wgrad_op() held (delay_wgrad_compute), in order, and fires their grad hooks.
  void flush_wgrads();
  /// Makes `sd`'s (micro-batch, chunk) and `layer` the current ones for names, tags and grad hooks.
  void enter(const Side& sd, std::int32_t layer);
  /// The host cost of one schedule node: event wait + record, the node's own overhead, and for backward nodes a
  /// separate autograd-engine call (section 6c item 2). Emitted as an explicit host op when the costs are set.
  void node_host(std::string_view node, bool backward);
  /// A node's body: as it is in a forward node, in an autograd-engine region (bwd_ops) in a backward node, which
  /// runs the autograd nodes of the forward `pieces` of its layer.
  template <typename Body>
  void node_body(const Side& sd, std::string_view node, std::initializer_list<Piece> pieces, Body&& body);
  /// A node on the compute stream (A, M, and the embedding/output pieces).
  template <typename Body>
  void comp_node(Side& sd, std::int32_t layer, std::string_view node, std::initializer_list<Piece> pieces, Body&& body);
  /// A node on the EP comm stream (D, C).
  template <typename Body>
  void comm_node(Side& sd, std::int32_t layer, std::string_view node, std::initializer_list<Piece> pieces, Body&& body);
  /// W node (delay_wgrad_compute): the held weight-gradient GEMMs, on the compute stream after the dgrad node.
  void wgrad_node(Side& sd, std::int32_t layer, std::string_view node);
  void f_attn(Side& f, std::uint32_t l);
  void f_dispatch(Side& f, std::uint32_t l);
  void f_mlp(Side& f, std::uint32_t l);
  void f_combine(Side& f, std::uint32_t l);
  void b_combine(Side& b, std::uint32_t l);
  void b_mlp(Side& b, std::uint32_t l);
  void b_dispatch(Side& b, std::uint32_t l);
  void b_attn(Side& b, std::uint32_t l);
  /// One combined step: the chunk-level order of TransformerModelChunkSchedulePlan.run (megatron-overlap.md 6b,
  /// "Chunk level"): pre_forward (wait for the received activation) -> F embedding -> pre_backward (wait for the
  /// received gradient) -> B loss/output-layer backward -> paired layers -> remaining B layers -> remaining F
  /// layers -> post_forward (send/recv forward, issued on the EP comm stream) -> post_backward (send/recv
  /// backward, on the compute stream) -> the last B layer's W_A (overlaps the P2P) -> F output layer + loss -> B
  /// embedding backward. Per (F layer i, B layer n-1-i) pair the host issue order is C_b A_f M_b D_f W_M D_b M_f
  /// C_f A_b W_A. `post_f` / `post_b` are the P2P exchanges of the post_forward / post_backward hooks (interleaved
  /// schedule with overlap_p2p_comm: MCore's pp_post_forward / pp_post_backward); null: none inside the step.
  void combined_step(const PipelineStep* F, const PipelineStep* B, const Exchange* post_f = nullptr,
                     const Exchange* post_b = nullptr);
  DepList take_node_deps() {
    DepList d = std::move(node_deps_);
    node_deps_.clear();
    return d;
  }
  bool gpu_op_on(OpId id, StreamId stream) const {
    const auto& op = ops_[id];
    return op.stream == stream && !std::holds_alternative<schedule::Host>(op.body) &&
           !std::holds_alternative<schedule::HostSync>(op.body);
  }
  void combined_fwd(std::uint32_t mb, std::uint32_t chunk) {
    const PipelineStep s{true, mb, chunk};
    combined_step(&s, nullptr);
  }
  void combined_bwd(std::uint32_t mb, std::uint32_t chunk) {
    const PipelineStep s{false, mb, chunk};
    combined_step(nullptr, &s);
  }
  void combined_pair(std::uint32_t fmb, std::uint32_t fc, std::uint32_t bmb, std::uint32_t bc,
                     const Exchange* post_f = nullptr, const Exchange* post_b = nullptr) {
    const PipelineStep f{true, fmb, fc}, b{false, bmb, bc};
    combined_step(&f, &b, post_f, post_b);
  }

  // ---- DP (data_parallel.cpp) ----
  void grad_ready(const Name& param_name, OpId producer);
  void dispatch_grad_bucket(std::uint32_t chunk, std::size_t b, bool blocking);
  void dispatch_chunk(std::uint32_t chunk, bool blocking);
  // Param all-gather overlap (overlap_param_gather): issued at the start of the step (steady state: the params were
  // updated by the previous step's optimizer) and waited by the forward pre-hooks of the first micro-batch.
  OpId issue_param_ag(std::uint32_t chunk, std::size_t b);
  void param_gather_wait(std::uint32_t chunk, std::string_view param, std::uint32_t mb);
  /// Bytes one rank's distributed-optimizer param all-gather of `bucket` moves: its padded elements in the parameters'
  /// dtype, its fp8 parameters (fp8_param_gather) at 1 B.
  std::uint64_t param_ag_bytes(const DpBucket& bucket) const;
  /// fp8_param_gather: the distributed optimizer's quantization of its updated shard into the fp8 parameters
  /// (Megatron's quantize_param_shard -> TE's cast_master_weights_to_fp8) beyond the main-param copy's fp32 read and
  /// fp8 write: the shard's bf16 copy written and read back, with current scaling an amax pass over it, the
  /// all-reduce (MAX) of the packed per-weight amaxes over each optimizer's DP group.
  void quantize_fp8_param_shards();
  /// fp8_param_gather on Hopper: the transpose TE's post_all_gather_processing builds for the fp8 weights of bucket
  /// `b` of `chunk` once their all-gather is done (no non-TN fp8 GEMM: Float8Tensor._create_transpose), 2 B per
  /// weight element; nothing otherwise. Named "dp.<bucket>.fp8_transpose".
  void fp8_param_transpose(std::uint32_t chunk, std::size_t b, Phase ph);
  bool grad_hooks_enabled(std::uint32_t mb) const {
    if (!k_.grad_overlap) return false;
    if (k_.vpp > 1 && x_.cfg->align_grad_reduce) return false;  // dispatched whole-chunk by grad_sync_func
    return mb == k_.microbatches - 1;
  }
  const std::vector<DpBucket>& buckets(std::uint32_t chunk) const { return x_.buckets[co_.pp][chunk]; }
  /// The reduction group of a bucket: DP x CP for the dense buffer, expert-DP for the expert buffer.
  CommId bucket_comm(const DpBucket& bucket) const { return bucket.expert ? x_.edp_of[rank_] : x_.dp_of[rank_]; }
  std::uint64_t bucket_group(const DpBucket& bucket) const {
    return bucket.expert ? k_.expert_dp : static_cast<std::uint64_t>(k_.dp) * k_.cp;
  }
  /// "chunk1.bucket2", the name stem of a bucket's ops (empty with op names off).
  std::string bucket_name(std::uint32_t chunk, std::size_t b) const {
    return x_.op_names ? "chunk" + str(chunk) + ".bucket" + str(b) : std::string();
  }
  /// Megatron's train_step starts with model_chunk.zero_grad_buffer() per chunk: a fill over the chunk's grad
  /// buffers (dense and expert), one memory-bound op per chunk on the compute stream.
  void zero_grad_buffers();
  void finalize_and_optimize();

  // ---- pipeline P2P and schedules (pipeline_schedule.cpp) ----
  /// Posts the P2P ops of one exchange; blocking: the compute stream waits for all of them (and with
  /// batch_p2p_comm + batch_p2p_sync the host synchronizes the device). The sends wait for the last forward /
  /// backward output, or for `fwd_after` / `bwd_after` when given (the combined schedule's P2P hooks).
  void exchange(const Exchange& ex, bool blocking, DepList fwd_after = {}, DepList bwd_after = {});
  void run_no_pipelining();
  void run_1f1b();
  void run_interleaved();
  void interleaved_param_sync(const Interleaving& il, std::uint32_t vid);
  void interleaved_grad_sync(Interleaving& il, std::uint32_t vid);
  void interleaved_fwd(const Interleaving& il, std::uint32_t vid);
  void interleaved_bwd(Interleaving& il, std::uint32_t vid);
  /// Steady state step k: the forward of virtual id k + warmup and the backward of k, and their exchanges.
  void interleaved_steady(Interleaving& il, std::uint32_t k);

  OpId last_fwd_output_ = schedule::kNoOp;
  OpId last_bwd_output_ = schedule::kNoOp;
  std::uint32_t exchanges_ = 0;
  std::vector<std::deque<OpId>> fwd_recv_, bwd_recv_;
  bool hooks_on_ = false;
  std::uint32_t hook_chunk_ = 0;
  struct BucketState {
    std::size_t ready = 0;
    bool dispatched = false;
    OpId op = schedule::kNoOp;
    OpId last_producer = schedule::kNoOp;
    OpId ag = schedule::kNoOp;
    bool ag_waited = false;
  };
  std::vector<std::vector<BucketState>> bucket_state_;
  std::vector<std::uint32_t> first_fwd_mb_;
  // MoE / attention variants / EP overlap.
  ExpertCoords eco_;
  Routing routing_;                           // token copies per EP peer, rows per local expert (moe_routing.hpp)
  std::uint64_t aq_ = 0, akv_ = 0, adh_ = 0;  // attention heads (all TP ranks) and head dim of the current layer
  // Dispatcher and CP type as flags (compared once, not per layer).
  const bool dispatch_a2a_ = k_.dispatcher == TokenDispatcher::kAllToAll;
  const bool dispatch_flex_ = k_.dispatcher == TokenDispatcher::kFlex;
  const bool dispatch_ag_ = k_.dispatcher == TokenDispatcher::kAllGather;
  const bool cp_p2p_ = k_.cp_type == CpCommType::kP2p, cp_ag_ = k_.cp_type == CpCommType::kAllGather;
  const bool cp_hier_ = k_.cp_type == CpCommType::kA2aP2p;
  bool no_ub_ = false;        // the current linears are not TE userbuffer sites
  bool comm_node_ = false;    // emitting a D or C node of the combined schedule (EP comm stream)
  DepList node_deps_;         // the node's event: deps of its first op
  bool defer_wgrad_ = false;  // delay_wgrad_compute: hold weight-gradient GEMMs for the W node
  struct Deferred {
    std::string name;
    schedule::Kernel kernel;
    DepList deps;
    std::string param;
    schedule::Tags tags;
    bool main_grad_add = false;  ///< The add follows (WgradOf::kTorchOp, or kLinear without the fusion).
  };
  std::vector<Deferred> deferred_;
  OpId d2h_ = schedule::kNoOp;     // D2H copy of the split sizes the dispatch host-syncs on
  OpId ln2_op_ = schedule::kNoOp;  // pre-MLP norm output (the shared expert's input)
  // Autograd nodes per (layer + 1, Piece) of the forward (fwd_piece); -1 until that piece ran.
  std::vector<std::int64_t> piece_nodes_;
};

}  // namespace twinstep::models::lowering
