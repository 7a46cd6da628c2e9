// Data parallelism (megatron-overlap.md section 2): DP buckets; per rank, the grad hooks that dispatch a bucket's
// reduce-scatter / all-reduce when its last gradient is ready (overlap_grad_reduce), the param all-gathers and
// their forward pre-hook waits (overlap_param_gather), and finalize: finish_grad_sync, the SP norm and tied
// embedding all-reduces, grad norm, clipping, Adam and the param all-gathers of the distributed optimizer.
#include "models/lowering/data_parallel.hpp"

#include <algorithm>
#include <numeric>
#include <set>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "models/lowering/context.hpp"
#include "models/lowering/rank_lowering.hpp"

namespace twinstep::models {
namespace lowering {
namespace {

constexpr std::uint64_t kMcoreMinBucket = 40000000;  // MCore: max(40M, 1M * dp) when bucket_size is None

std::uint64_t round_up(std::uint64_t x, std::uint64_t m) { return (x + m - 1) / m * m; }

}  // namespace

std::vector<DpBucket> make_buckets(const std::vector<Param>& all, const RunConfig& cfg, std::uint64_t dpc,
                                   std::uint32_t pp_rank, std::uint32_t chunk, bool expert) {
  std::vector<Param> params;
  for (const auto& p : all) {
    if (p.expert == expert) params.push_back(p);
  }
  // bucket_size: None without overlap_grad_reduce, or on PP rank > 0, or for chunk > 0 (disable_bucketing).
  std::uint64_t bucket_size = 0;  // 0 = unbounded (one bucket)
  if (cfg.overlap_grad_reduce && pp_rank == 0 && chunk == 0) {
    bucket_size = cfg.bucket_size != 0 ? cfg.bucket_size : std::max<std::uint64_t>(kMcoreMinBucket, 1000000ull * dpc);
  }
  const bool distopt = cfg.use_distributed_optimizer;
  const std::uint64_t end_pad = std::lcm(dpc, std::uint64_t{128});
  std::vector<DpBucket> buckets;
  DpBucket cur;
  cur.expert = expert;
  std::uint64_t bucket_start = 0, pos = 0;
  auto close = [&](std::uint64_t end) {
    const std::uint64_t padded_end = distopt ? round_up(end, end_pad) : end;
    cur.numel = padded_end - bucket_start;
    buckets.push_back(cur);
    cur = DpBucket{};
    cur.expert = expert;
    bucket_start = padded_end;
    pos = padded_end;
  };
  for (auto it = params.rbegin(); it != params.rend(); ++it) {
    if (distopt) pos = round_up(pos, 64);
    if (it->shared_embedding && !cur.params.empty()) close(pos);  // shared embedding gets its own bucket
    if (cur.params.empty()) bucket_start = pos;
    const std::uint64_t end = pos + it->numel;
    cur.params.push_back(it->name);
    cur.param_numel += it->numel;
    cur.fp8_numel += it->fp8_numel;
    if ((bucket_size != 0 && end - bucket_start >= bucket_size) || it->shared_embedding) {
      close(end);
    } else {
      pos = end;
    }
  }
  if (!cur.params.empty()) close(pos);
  return buckets;
}

void RankLowering::grad_ready(const Name& param_name, OpId producer) {
  if (!hooks_on_) return;
  const std::string param = param_name.str();
  const auto& bs = buckets(hook_chunk_);
  for (std::size_t b = 0; b < bs.size(); ++b) {
    const auto& ps = bs[b].params;
    if (std::find(ps.begin(), ps.end(), param) == ps.end()) continue;
    auto& st = bucket_state_[hook_chunk_][b];
    st.ready += 1;
    st.last_producer = producer;
    if (st.ready == ps.size()) dispatch_grad_bucket(hook_chunk_, b, false);
  }
}

void RankLowering::dispatch_grad_bucket(std::uint32_t chunk, std::size_t b, bool blocking) {
  auto& st = bucket_state_[chunk][b];
  if (st.dispatched) return;
  st.dispatched = true;
  if (bucket_group(buckets(chunk)[b]) == 1) return;  // nothing to reduce (expert-DP of 1)
  const ContextScope dp(*this, -1, -1, static_cast<std::int32_t>(chunk), "dp.");
  const auto& bucket = buckets(chunk)[b];
  const std::string what = bucket_name(chunk, b);
  const std::string_view ov = blocking ? "" : "dp";
  const Phase ph = Phase::kBwd;
  elementwise(Name{what, ".scale"}, 2 * bucket.numel * k_.grad_bytes, ph);
  const bool distopt = x_.cfg->use_distributed_optimizer;
  st.op = collective(x_.st.dp, Name{what, distopt ? ".grad_rs" : ".grad_ar"},
                     distopt ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, bucket_comm(bucket),
                     bucket.numel * k_.grad_bytes, ph, blocking, {}, ov,
                     k_.grad_bytes == 4 ? schedule::DType::kFP32 : k_.dtype);
}

void RankLowering::dispatch_chunk(std::uint32_t chunk, bool blocking) {
  for (std::size_t b = 0; b < buckets(chunk).size(); ++b) dispatch_grad_bucket(chunk, b, blocking);
}

// Param all-gather overlap (overlap_param_gather): issued at the start of the step (steady state: the params were
// updated by the previous step's optimizer) and waited by the forward pre-hooks of the first micro-batch.
OpId RankLowering::issue_param_ag(std::uint32_t chunk, std::size_t b) {
  auto& st = bucket_state_[chunk][b];
  if (st.ag != schedule::kNoOp) return st.ag;
  if (bucket_group(buckets(chunk)[b]) == 1) return schedule::kNoOp;  // nothing to gather (expert-DP of 1)
  const ContextScope dp(*this, -1, -1, static_cast<std::int32_t>(chunk), "dp.");
  st.ag = collective(x_.st.dp, Name{bucket_name(chunk, b), ".param_ag"}, CollectiveKind::kAllGather,
                     bucket_comm(buckets(chunk)[b]), param_ag_bytes(buckets(chunk)[b]), Phase::kFwd, false, {}, "dp");
  return st.ag;
}

void RankLowering::param_gather_wait(std::uint32_t chunk, std::string_view param, std::uint32_t mb) {
  if (!k_.param_overlap || mb != first_fwd_mb_[chunk]) return;
  const auto& bs = buckets(chunk);
  for (std::size_t b = bs.size(); b-- > 0;) {
    const auto& ps = bs[b].params;
    if (std::find(ps.begin(), ps.end(), param) == ps.end()) continue;
    auto& st = bucket_state_[chunk][b];
    if (st.ag_waited) return;
    if (k_.aligned_param_gather) {
      // Chunk-level: every bucket of the chunk was issued earlier; the first pre-hook waits for all of them.
      for (std::size_t i = 0; i < bs.size(); ++i) {
        const OpId ag = issue_param_ag(chunk, i);
        if (ag != schedule::kNoOp) pending_.push_back(ag);
        bucket_state_[chunk][i].ag_waited = true;
      }
      for (std::size_t i = 0; i < bs.size(); ++i) fp8_param_transpose(chunk, i, Phase::kFwd);
      return;
    }
    // Prefetch depth 1 (reverse bucket order): wait this one (issuing it if nobody did), then issue the next.
    const OpId ag = issue_param_ag(chunk, b);
    if (ag != schedule::kNoOp) pending_.push_back(ag);
    st.ag_waited = true;
    fp8_param_transpose(chunk, b, Phase::kFwd);
    if (b > 0) issue_param_ag(chunk, b - 1);
    return;
  }
}

// MCore's DistributedDataParallel.zero_grad_buffer() resets every buffer of the chunk (_ParamAndGradBuffer.reset:
// grad_data.zero_(), one fill kernel per buffer over its padded numel), before the step's first forward. The fill
// writes the whole (unsharded) buffer in the grad dtype, also with the distributed optimizer.
void RankLowering::zero_grad_buffers() {
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    std::uint64_t numel = 0;
    for (const auto& b : buckets(c)) numel += b.numel;
    if (numel == 0) continue;
    const ContextScope dp(*this, -1, -1, static_cast<std::int32_t>(c), "dp.");
    elementwise(Name{"chunk", "", c, ".zero_grad_buffer"}, numel * k_.grad_bytes, Phase::kNone);
  }
}

void RankLowering::finalize_and_optimize() {
  cur_mb_ = cur_layer_ = cur_chunk_ = -1;
  prefix_ = "optim.";
  const bool distopt = x_.cfg->use_distributed_optimizer;
  // finish_grad_sync per chunk: dispatch what is left (blocking), wait for what was dispatched.
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    for (std::size_t b = 0; b < buckets(c).size(); ++b) {
      auto& st = bucket_state_[c][b];
      if (bucket_group(buckets(c)[b]) > 1) {
        if (!st.dispatched)
          dispatch_grad_bucket(c, b, true);
        else if (st.op != schedule::kNoOp)
          pending_.push_back(st.op);
      }
    }
  }
  prefix_ = "optim.";
  std::uint64_t norms = 0;
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    for (const auto& p : x_.params[co_.pp][c]) {
      if (p.sp_reduce) norms += p.numel;
    }
  }
  // (2) TP all-reduce of the sequence-parallel layernorm grads.
  if (k_.sp) {
    collective(x_.st.tp, "sp_norm_grad_ar", CollectiveKind::kAllReduce, x_.tp_of[rank_], norms * k_.grad_bytes,
               Phase::kOptim, true);
  }
  // (3) tied embedding grads between the first and last stage.
  if (x_.embd_of[rank_] != kNone) {
    collective(x_.st.dp, "embedding_grad_ar", CollectiveKind::kAllReduce, x_.embd_of[rank_],
               k_.vocab_padded / k_.tp * k_.hidden * k_.grad_bytes, Phase::kOptim, true);
  }
  std::uint64_t shard = 0;
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    for (const auto& b : buckets(c)) shard += distopt ? b.numel / bucket_group(b) : b.numel;
  }
  host("host_optimizer", optimizer_host_ns(), Phase::kOptim);
  // MCore's MixedPrecisionOptimizer.step(): prepare_grads() casts the main grads into the fp32 main params' grads
  // (`main_grad.float()`: a kernel per tensor unless the main grads are fp32 already), the grad norm and the
  // clipping then run on those fp32 grads, Adam steps the fp32 main params, and step_with_ready_grads() copies the
  // main params into the model's working params (`_copy_main_params_to_model_params`). The `adam` op is the fused
  // Adam pass alone. With lower-precision optimizer states (MCore's use_precision_aware_optimizer: Transformer
  // Engine's FusedAdam keeps the master weights and writes the working params itself) the cast and the copy are
  // not separate passes.
  const bool default_path = x_.cfg->main_params_dtype == schedule::DType::kFP32 &&
                            x_.cfg->exp_avg_dtype == schedule::DType::kFP32 &&
                            x_.cfg->exp_avg_sq_dtype == schedule::DType::kFP32 && k_.act_bytes < 4;
  const std::uint64_t main_grad_bytes = default_path ? 4 : k_.grad_bytes;
  if (default_path && k_.grad_bytes < 4) {
    elementwise("main_grad_cast", shard * (k_.grad_bytes + 4), Phase::kOptim);
  }
  elementwise("grad_norm", shard * main_grad_bytes, Phase::kOptim);
  if (x_.norm_of[rank_] != kNone) {
    const OpId ar = collective(x_.st.dp, "grad_norm_ar", CollectiveKind::kAllReduce, x_.norm_of[rank_], 4,
                               Phase::kOptim, true, {}, "", schedule::DType::kFP32);
    host_sync("grad_norm_item", ar, Phase::kOptim);  // clip_grad_norm: total_norm.item()
  }
  elementwise("clip_grads", 2 * shard * main_grad_bytes, Phase::kOptim);
  kernel("adam", schedule::Optimizer{shard, k_.dtype}, Phase::kOptim);
  if (default_path) {
    std::uint64_t working = 0;  // the working params this rank's main params are copied into, in their dtypes
    for (std::uint32_t c = 0; c < k_.vpp; ++c) {
      for (const auto& b : buckets(c)) working += param_ag_bytes(b) / (distopt ? bucket_group(b) : 1);
    }
    elementwise("main_param_copy", shard * 4 + working, Phase::kOptim);
  }
  quantize_fp8_param_shards();
  if (distopt && !k_.param_overlap) {
    for (std::uint32_t c = 0; c < k_.vpp; ++c) {
      for (std::size_t b = 0; b < buckets(c).size(); ++b) {
        if (bucket_group(buckets(c)[b]) > 1) {
          collective(x_.st.dp, Name{bucket_name(c, b), ".param_ag"}, CollectiveKind::kAllGather,
                     bucket_comm(buckets(c)[b]), param_ag_bytes(buckets(c)[b]), Phase::kOptim, true);
        }
        fp8_param_transpose(c, b, Phase::kOptim);
      }
    }
  }
  // The step ends when every stream has drained (the next step's forward waits for the param all-gathers).
  if (!pending_.empty()) elementwise("step_end", 0, Phase::kOptim);
}

std::uint64_t RankLowering::param_ag_bytes(const DpBucket& bucket) const {
  if (!k_.fp8_param_gather) return bucket.numel * k_.act_bytes;
  // Megatron keeps fp8 parameters in their own uint8 buffer (DistributedDataParallel groups the buffers by
  // (param dtype, grad dtype)); this bucket gathers its linear weights at 1 B and the rest (norms, embedding, router,
  // output layer, padding) in the parameters' dtype.
  return bucket.fp8_numel * schedule::dtype_bytes(schedule::DType::kFP8) +
         (bucket.numel - bucket.fp8_numel) * k_.act_bytes;
}

void RankLowering::quantize_fp8_param_shards() {
  if (!k_.fp8_param_gather) return;
  // The fp8 weight elements of this rank's shards (the distributed optimizer's: a bucket's 1/group), and the fp8
  // weights per optimizer (dense and expert: Megatron's ChainedOptimizer steps one per DP group), whose amaxes are
  // packed into one fp32 tensor each (a grouped expert linear holds one weight per local expert: TE's num_gemms).
  std::uint64_t shard = 0;
  std::uint64_t weights[2] = {0, 0};  // dense, expert
  for (std::uint32_t c = 0; c < k_.vpp; ++c) {
    for (const auto& b : buckets(c)) {
      shard += b.fp8_numel / bucket_group(b);
      const std::unordered_set<std::string_view> in_bucket(b.params.begin(), b.params.end());
      for (const auto& p : x_.params[co_.pp][c]) {
        if (p.fp8_numel > 0 && in_bucket.count(p.name) != 0) weights[b.expert ? 1 : 0] += p.fp8_gemms;
      }
    }
  }
  // main_param_copy reads the fp32 shard and writes the fp8 one; TE goes through a bf16 copy
  // (master_weight.to(bf16)) that the cast reads back, and with current scaling reads it once more for the amax
  // (tex.compute_amax); delayed scaling takes the amax in the cast.
  elementwise("fp8_param_bf16_copy", shard * 2 * k_.act_bytes, Phase::kOptim);
  if (k_.fp8_current) elementwise("fp8_param_amax", shard * k_.act_bytes, Phase::kOptim);
  const std::uint64_t groups[2] = {static_cast<std::uint64_t>(k_.dp) * k_.cp, k_.expert_dp};
  const char* names[2] = {"fp8_param_amax_ar", "expert_fp8_param_amax_ar"};
  for (int i = 0; i < 2; ++i) {
    if (weights[i] == 0 || groups[i] == 1) continue;
    collective(x_.st.dp, names[i], CollectiveKind::kAllReduce, i == 0 ? x_.dp_of[rank_] : x_.edp_of[rank_],
               4 * weights[i], Phase::kOptim, true, {}, "", schedule::DType::kFP32);
  }
}

void RankLowering::fp8_param_transpose(std::uint32_t chunk, std::size_t b, Phase ph) {
  const DpBucket& bucket = buckets(chunk)[b];
  if (!k_.fp8_param_gather || bucket.fp8_numel == 0) return;
  const ContextScope dp(*this, -1, -1, static_cast<std::int32_t>(chunk), "dp.");
  elementwise(Name{bucket_name(chunk, b), ".fp8_transpose"},
              2 * bucket.fp8_numel * schedule::dtype_bytes(schedule::DType::kFP8), ph);
}

Nanos RankLowering::optimizer_host_ns() const {
  const HostCosts& hc = x_.cfg->host;
  // Parameter tensors the optimizer steps on this rank (TE's grouped expert linears hold one weight per local expert)
  // and Megatron's parameter groups: weight decay or not (norms), dense or expert.
  std::uint64_t tensors = 0;
  std::set<std::pair<bool, bool>> groups;
  for (const auto& chunk : x_.params[co_.pp]) {
    for (const auto& p : chunk) {
      tensors += p.expert ? k_.local_experts : 1;
      const bool norm = p.name.ends_with("ln1") || p.name.ends_with("ln2") || p.name.ends_with("final_norm");
      groups.insert({norm, p.expert});
    }
  }
  return hc.optimizer_step_ns + hc.optimizer_per_param_ns * static_cast<Nanos>(tensors) +
         hc.optimizer_per_group_ns * static_cast<Nanos>(groups.size());
}

}  // namespace lowering

std::vector<DpBucket> dp_buckets(const ModelSpec& model, const RunConfig& cfg, std::uint32_t pp_rank,
                                 std::uint32_t chunk) {
  std::vector<std::string> warnings;
  const lowering::Ctx x = lowering::build_ctx(model, cfg, warnings);
  return x.buckets.at(pp_rank).at(chunk);
}

}  // namespace twinstep::models
