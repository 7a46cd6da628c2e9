// Pipeline layout (megatron-overlap.md section 4a): virtual stage k = chunk * pp + pp_rank holds a contiguous run of
// layers; the counts come from an even split, decoder_first/last_pipeline_num_layers, or
// account_for_embedding/loss_in_pipeline_split (the embedding and the loss take a layer's slot).
#include "models/lowering/pipeline_layout.hpp"

#include <algorithm>

#include "common/assert.hpp"
#include "models/lower.hpp"
#include "models/lowering/dims.hpp"

namespace twinstep::models {
namespace lowering {

std::vector<std::vector<std::uint32_t>> virtual_stage_layers(const ModelSpec& model, const RunConfig& cfg) {
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  const std::uint32_t v = std::max<std::uint32_t>(1, cfg.virtual_pipeline_model_parallel_size);
  const std::uint32_t stages = p * v;
  const std::uint32_t L = model.num_layers;
  std::vector<std::uint32_t> count(stages, 0);
  const bool acc_emb = cfg.account_for_embedding_in_pipeline_split;
  const bool acc_loss = cfg.account_for_loss_in_pipeline_split;
  const bool uneven = cfg.decoder_first_pipeline_num_layers >= 0 || cfg.decoder_last_pipeline_num_layers >= 0;
  if ((acc_emb || acc_loss) && uneven) {
    fail("account_for_embedding/loss_in_pipeline_split cannot be combined with decoder_first/last_pipeline_num_layers",
         "use one way of making the pipeline uneven");
  }
  if (acc_emb || acc_loss) {
    const std::uint32_t slots = L + (acc_emb ? 1 : 0) + (acc_loss ? 1 : 0);
    if (slots % stages != 0) {
      fail("num_layers " + str(L) + " plus embedding/loss slots (" + str(slots) +
               ") must be divisible by pp x vpp = " + str(stages) + " (account_for_*_in_pipeline_split)",
           "change pp/vpp or the account_for_* flags");
    }
    std::fill(count.begin(), count.end(), slots / stages);
    if (acc_emb) count[0] -= 1;
    if (acc_loss) count[stages - 1] -= 1;
  } else if (uneven) {
    std::vector<std::int64_t> per_rank(p, -1);
    std::uint32_t fixed = 0, fixed_ranks = 0;
    if (cfg.decoder_first_pipeline_num_layers >= 0) {
      per_rank[0] = cfg.decoder_first_pipeline_num_layers;
      fixed += static_cast<std::uint32_t>(cfg.decoder_first_pipeline_num_layers);
      ++fixed_ranks;
    }
    if (cfg.decoder_last_pipeline_num_layers >= 0) {
      if (p == 1 && per_rank[0] >= 0) fail("pp=1 cannot have both first and last stage sizes", "drop one");
      per_rank[p - 1] = cfg.decoder_last_pipeline_num_layers;
      fixed += static_cast<std::uint32_t>(cfg.decoder_last_pipeline_num_layers);
      ++fixed_ranks;
    }
    if (fixed > L) fail("decoder_first/last_pipeline_num_layers exceed num_layers", "lower them");
    const std::uint32_t middle = p - fixed_ranks;
    const std::uint32_t rest = L - fixed;
    if ((middle == 0 && rest != 0) || (middle > 0 && rest % middle != 0)) {
      fail("the " + str(rest) + " layers left after decoder_first/last_pipeline_num_layers must split evenly over " +
               str(middle) + " middle pipeline stages",
           "adjust decoder_first/last_pipeline_num_layers");
    }
    for (std::uint32_t r = 0; r < p; ++r) {
      if (per_rank[r] < 0) per_rank[r] = middle ? rest / middle : 0;
      if (per_rank[r] % v != 0) {
        fail("pipeline stage " + str(r) + " has " + str(per_rank[r]) + " layers, not divisible by vpp " + str(v),
             "choose stage sizes divisible by virtual_pipeline_model_parallel_size");
      }
      for (std::uint32_t j = 0; j < v; ++j) count[j * p + r] = static_cast<std::uint32_t>(per_rank[r] / v);
    }
  } else {
    if (L % stages != 0) {
      fail("num_layers " + str(L) + " is not divisible by pp x vpp = " + str(stages),
           "use decoder_first/last_pipeline_num_layers or account_for_embedding/loss_in_pipeline_split (e.g. "
           "126 layers on pp=16: --account-for-embedding --account-for-loss)");
    }
    std::fill(count.begin(), count.end(), L / stages);
  }
  std::vector<std::vector<std::uint32_t>> out(stages);
  std::uint32_t next = 0;
  for (std::uint32_t vs = 0; vs < stages; ++vs) {
    for (std::uint32_t i = 0; i < count[vs]; ++i) out[vs].push_back(next++);
  }
  TWINSTEP_ASSERT(next == L, "layout assigned %u of %u layers", next, L);
  return out;
}

}  // namespace lowering

std::vector<std::uint32_t> chunk_layers(const ModelSpec& model, const RunConfig& cfg, std::uint32_t pp_rank,
                                        std::uint32_t chunk) {
  const auto all = lowering::virtual_stage_layers(model, cfg);
  const std::uint32_t p = std::max<std::uint32_t>(1, cfg.pipeline_model_parallel_size);
  return all.at(chunk * p + pp_rank);
}

}  // namespace twinstep::models
