// The layout's communicators (Megatron's process groups) with full member lists: TP, CP (or a2a+p2p's two levels),
// DP x CP, PP, the expert groups (EP, expert-TP, TP x EP, expert-DP), the grad-norm group and the tied-embedding
// group. Ids are assigned in this order; every rank records the id of each group it belongs to.
#include <numeric>

#include "models/lowering/context.hpp"

namespace twinstep::models::lowering {
namespace {

/// Appends communicators to a schedule and records the new id for every member rank.
class CommAdder {
 public:
  explicit CommAdder(schedule::Schedule& s) : s_(s) {}
  void add_named(const std::string& name, const std::string& kind, std::vector<RankId> members,
                 std::vector<CommId>& of) {
    const auto id = static_cast<CommId>(s_.communicators.size());
    for (auto m : members) of[m] = id;
    s_.communicators.push_back({name, kind, std::move(members)});
  }
  /// Named kind.index ("tp.3").
  void add(const std::string& kind, std::uint32_t index, std::vector<RankId> members, std::vector<CommId>& of) {
    add_named(kind + "." + str(index), kind, std::move(members), of);
  }

 private:
  schedule::Schedule& s_;
};

/// TP groups (consecutive ranks), then CP groups, or with a2a+p2p Megatron's hierarchical groups.
void add_tp_cp(Ctx& x, CommAdder& comms, std::uint32_t world) {
  const Dims& k = x.k;
  if (k.tp > 1) {
    for (std::uint32_t i = 0; i < world / k.tp; ++i) {
      std::vector<RankId> m;
      for (std::uint32_t j = 0; j < k.tp; ++j) m.push_back(i * k.tp + j);
      comms.add("tp", i, m, x.tp_of);
    }
  }
  if (k.cp > 1) {
    std::uint32_t idx = 0, a2a_idx = 0, p2p_idx = 0;
    for (std::uint32_t pp = 0; pp < k.pp; ++pp) {
      for (std::uint32_t dp = 0; dp < k.dp; ++dp) {
        for (std::uint32_t tp = 0; tp < k.tp; ++tp) {
          if (k.cp_type != CpCommType::kA2aP2p) {
            std::vector<RankId> m;
            for (std::uint32_t cp = 0; cp < k.cp; ++cp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
            comms.add("cp", idx++, m, x.cp_of);
            continue;
          }
          // Megatron's hierarchical groups: level 0 = runs of ca consecutive CP ranks, level 1 = stride ca.
          for (std::uint32_t o = 0; o < k.cp_p2p_size && k.cp_a2a_size > 1; ++o) {
            std::vector<RankId> m;
            for (std::uint32_t i = 0; i < k.cp_a2a_size; ++i)
              m.push_back(rank_of(k, {tp, o * k.cp_a2a_size + i, dp, pp}));
            comms.add_named("cp_a2a." + str(a2a_idx++), "cp", m, x.cpa_of);
          }
          for (std::uint32_t i = 0; i < k.cp_a2a_size && k.cp_p2p_size > 1; ++i) {
            std::vector<RankId> m;
            for (std::uint32_t o = 0; o < k.cp_p2p_size; ++o)
              m.push_back(rank_of(k, {tp, o * k.cp_a2a_size + i, dp, pp}));
            comms.add_named("cp_p2p." + str(p2p_idx++), "cp", m, x.cpp_of);
          }
        }
      }
    }
  }
}

/// DP x CP groups (dense grads reduce over intra_dp_cp), then PP groups (stride tp * cp * dp).
void add_dp_pp(Ctx& x, CommAdder& comms) {
  const Dims& k = x.k;
  if (static_cast<std::uint64_t>(k.dp) * k.cp > 1) {  // dense grads reduce over DP x CP (intra_dp_cp)
    std::uint32_t idx = 0;
    for (std::uint32_t pp = 0; pp < k.pp; ++pp) {
      for (std::uint32_t tp = 0; tp < k.tp; ++tp) {
        std::vector<RankId> m;
        for (std::uint32_t dp = 0; dp < k.dp; ++dp) {
          for (std::uint32_t cp = 0; cp < k.cp; ++cp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
        }
        comms.add("dp", idx++, m, x.dp_of);
      }
    }
  }
  if (k.pp > 1) {
    const std::uint32_t stride = k.tp * k.cp * k.dp;
    for (std::uint32_t i = 0; i < stride; ++i) {
      std::vector<RankId> m;
      for (std::uint32_t pp = 0; pp < k.pp; ++pp) m.push_back(i + stride * pp);
      comms.add("pp", i, m, x.pp_of);
    }
  }
}

/// MoE expert layout (etp fastest, then ep, then expert-DP, per pipeline stage).
void add_expert(Ctx& x, CommAdder& comms) {
  const Dims& k = x.k;
  if (k.moe) {
    std::uint32_t ie = 0, it = 0, itpe = 0, id = 0;
    for (std::uint32_t pp = 0; pp < k.pp; ++pp) {
      for (std::uint32_t edp = 0; edp < k.expert_dp; ++edp) {
        for (std::uint32_t etp = 0; etp < k.etp && k.ep > 1; ++etp) {
          std::vector<RankId> m;
          for (std::uint32_t ep = 0; ep < k.ep; ++ep) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          comms.add("ep", ie++, m, x.ep_of);
        }
        for (std::uint32_t ep = 0; ep < k.ep && k.etp > 1; ++ep) {
          std::vector<RankId> m;
          for (std::uint32_t etp = 0; etp < k.etp; ++etp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          comms.add("etp", it++, m, x.etp_of);
        }
        if (k.etp * k.ep > 1) {
          std::vector<RankId> m;
          for (std::uint32_t ep = 0; ep < k.ep; ++ep) {
            for (std::uint32_t etp = 0; etp < k.etp; ++etp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          }
          comms.add("tp_ep", itpe++, m, x.tpep_of);
        }
      }
      for (std::uint32_t ep = 0; ep < k.ep && k.expert_dp > 1; ++ep) {
        for (std::uint32_t etp = 0; etp < k.etp; ++etp) {
          std::vector<RankId> m;
          for (std::uint32_t edp = 0; edp < k.expert_dp; ++edp) m.push_back(expert_rank_of(k, {etp, ep, edp, pp}));
          comms.add("expt_dp", id++, m, x.edp_of);
        }
      }
    }
  }
}

/// Grad-norm reduction group: the whole world with the distributed optimizer, else the model-parallel group;
/// then the tied-embedding groups between the first and last pipeline stage.
void add_norm_and_embedding(Ctx& x, CommAdder& comms, std::uint32_t world) {
  const Dims& k = x.k;
  const RunConfig& cfg = *x.cfg;
  const bool tied_pp = x.model->share_embeddings_and_output_weights && k.pp > 1;
  if (cfg.use_distributed_optimizer) {
    if (world > 1) {
      std::vector<RankId> m(world);
      std::iota(m.begin(), m.end(), 0);
      comms.add("world", 0, m, x.norm_of);
    }
  } else if (k.tp * k.pp > 1) {
    std::uint32_t idx = 0;
    for (std::uint32_t dp = 0; dp < k.dp; ++dp) {
      for (std::uint32_t cp = 0; cp < k.cp; ++cp) {
        std::vector<RankId> m;
        for (std::uint32_t pp = 0; pp < k.pp; ++pp) {
          for (std::uint32_t tp = 0; tp < k.tp; ++tp) m.push_back(rank_of(k, {tp, cp, dp, pp}));
        }
        comms.add("mp", idx++, m, x.norm_of);
      }
    }
  }
  if (tied_pp) {
    std::uint32_t idx = 0;
    for (std::uint32_t dp = 0; dp < k.dp; ++dp) {
      for (std::uint32_t cp = 0; cp < k.cp; ++cp) {
        for (std::uint32_t tp = 0; tp < k.tp; ++tp) {
          comms.add("embd", idx++, {rank_of(k, {tp, cp, dp, 0}), rank_of(k, {tp, cp, dp, k.pp - 1})}, x.embd_of);
        }
      }
    }
  }
}

}  // namespace

void add_communicators(Ctx& x, schedule::Schedule& s) {
  const std::uint32_t world = x.cfg->world_size;
  x.tp_of.assign(world, kNone);
  x.cp_of.assign(world, kNone);
  x.dp_of.assign(world, kNone);
  x.pp_of.assign(world, kNone);
  x.norm_of.assign(world, kNone);
  x.embd_of.assign(world, kNone);
  x.cpa_of.assign(world, kNone);
  x.cpp_of.assign(world, kNone);
  x.ep_of.assign(world, kNone);
  x.etp_of.assign(world, kNone);
  x.tpep_of.assign(world, kNone);
  x.edp_of.assign(world, kNone);
  CommAdder comms(s);
  add_tp_cp(x, comms, world);
  add_dp_pp(x, comms);
  add_expert(x, comms);
  add_norm_and_embedding(x, comms, world);
  for (const auto& comm : s.communicators) x.comm_size.push_back(static_cast<std::uint32_t>(comm.members.size()));
}

}  // namespace twinstep::models::lowering
