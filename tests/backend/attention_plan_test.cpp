// The causal attention plan without a GPU: the blocks cover each causal (query, key) pair exactly once and nothing
// outside the leaf diagonal tiles, their FLOPs match kernel_math's count within 2%, and every block stays inside
// the score buffer. Which attention kernel runs (cuDNN's fused one or this fallback) and the buffers each needs.
#include <string>
#include <vector>

#include "backend/attention.hpp"
#include "backend/plan.hpp"
#include "backend/sdpa.hpp"
#include "schedule/builder.hpp"
#include "schedule/kernel_math.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::schedule::ScheduleBuilder;

namespace {

sch::Attention attn(std::uint64_t hq, std::uint64_t hkv, std::uint64_t sq, std::uint64_t skv, bool causal,
                    bool bwd = false) {
  return sch::Attention{2, hq, hkv, sq, skv, 128, causal, bwd, sch::DType::kBF16};
}

}  // namespace

TEST_CASE("backend::plan_attention: causal blocks cover every causal pair once and stay in the leaf tiles",
          "[backend]") {
  for (std::uint64_t seq : {64, 256, 1024}) {
    const be::AttentionPlan p = be::plan_attention(attn(4, 2, seq, seq, true));
    REQUIRE(p.causal);
    REQUIRE(p.leaf < seq);
    std::vector<int> hits(seq * seq, 0);
    for (const auto& b : p.blocks) {
      REQUIRE(seq % b.tile == 0);
      for (std::uint64_t t = 0; t < seq / b.tile; ++t) {
        for (std::uint64_t i = 0; i < b.rows; ++i) {
          for (std::uint64_t j = 0; j < b.keys; ++j) ++hits[(t * b.tile + b.row0 + i) * seq + t * b.tile + b.key0 + j];
        }
      }
    }
    std::uint64_t extra = 0, missed = 0, twice = 0, stray = 0;
    for (std::uint64_t i = 0; i < seq; ++i) {
      for (std::uint64_t j = 0; j < seq; ++j) {
        const int h = hits[i * seq + j];
        if (h > 1) ++twice;
        if (j <= i && h == 0) ++missed;
        if (j > i && h == 1) {
          ++extra;
          if (i / p.leaf != j / p.leaf) ++stray;  // only the upper half of a leaf diagonal tile may be computed
        }
      }
    }
    INFO("seq " << seq << ", leaf " << p.leaf);
    CHECK(missed == 0);
    CHECK(twice == 0);
    CHECK(stray == 0);
    CHECK(extra == (seq / p.leaf) * p.leaf * (p.leaf - 1) / 2);
  }
}

TEST_CASE("backend::plan_attention: planned FLOPs match kernel_math within 2% (causal) and exactly (full)",
          "[backend]") {
  for (std::uint64_t seq : {1024, 2048, 4096, 8192, 16384}) {
    for (bool bwd : {false, true}) {
      for (auto [hq, hkv] : {std::pair<std::uint64_t, std::uint64_t>{32, 8}, {16, 16}, {64, 8}}) {
        const auto a = attn(hq, hkv, seq, seq, true, bwd);
        const double ir = sch::kernel_flops(sch::Kernel{a});
        const double planned = be::planned_attention_flops(be::plan_attention(a), bwd);
        INFO("seq " << seq << " bwd " << bwd << " hq " << hq << " hkv " << hkv);
        CHECK(planned >= ir);
        CHECK(planned <= ir * 1.02);
        const auto full = attn(hq, hkv, seq, seq, false, bwd);
        CHECK(be::planned_attention_flops(be::plan_attention(full), bwd) == sch::kernel_flops(sch::Kernel{full}));
      }
    }
  }
  // A CP step's non-causal rectangle (seq_q != seq_kv) is one full block.
  const auto rect = attn(32, 8, 2048, 1024, false);
  CHECK(be::planned_attention_flops(be::plan_attention(rect), false) == sch::kernel_flops(sch::Kernel{rect}));
  // A length that does not split (not a multiple of 4) falls back to the full square: twice the causal count.
  const auto odd = attn(8, 8, 1023, 1023, true);
  CHECK(be::plan_attention(odd).blocks.size() == 1);
  CHECK(be::planned_attention_flops(be::plan_attention(odd), false) == Approx(2 * sch::kernel_flops(sch::Kernel{odd})));
}

TEST_CASE("backend::plan_attention: every block of every tile lies inside the score buffer", "[backend]") {
  for (auto a : {attn(32, 8, 4096, 4096, true), attn(4, 4, 256, 256, true), attn(8, 2, 2048, 512, false)}) {
    const be::AttentionPlan p = be::plan_attention(a);
    const std::uint64_t total = be::attention_score_elements(p);
    for (const auto& b : p.blocks) {
      const bool whole = b.tile == p.seq_q;
      const std::uint64_t stride = whole ? p.score_stride : b.tile * p.group * p.seq_kv + b.tile;
      const std::uint64_t tiles = p.bh * (p.seq_q / b.tile);
      const std::uint64_t last_tile = (tiles - 1) * stride;
      const std::uint64_t first = b.row0 * p.group * p.seq_kv + b.key0;
      const std::uint64_t last = first + (b.rows * p.group - 1) * p.seq_kv + b.keys;  // one past the last element
      CHECK(last_tile + last <= total);
      CHECK(b.key0 + b.keys <= p.seq_kv);
    }
  }
}

TEST_CASE("backend::attention_kernel: cuDNN's fused attention takes the shapes it supports, the fallback the rest",
          "[backend]") {
  const sch::Attention llama{1, 32, 8, 8192, 8192, 128, true, true, sch::DType::kBF16};
  CHECK(be::cudnn_sdpa_refusal(llama).empty());
  auto with = [&](auto change) {
    sch::Attention a = llama;
    change(a);
    return be::cudnn_sdpa_refusal(a);
  };
  CHECK(with([](sch::Attention& a) { a.head_dim = 256; }).empty());
  CHECK(with([](sch::Attention& a) { a.heads_kv = 1; }).empty());                      // MQA
  CHECK(with([](sch::Attention& a) { a.causal = false, a.seq_kv = 16384; }).empty());  // a CP chunk of full keys
  CHECK_THAT(with([](sch::Attention& a) { a.dtype = sch::DType::kFP8; }), twinstep_contains("fp8"));
  CHECK_THAT(with([](sch::Attention& a) { a.head_dim = 320; }), twinstep_contains("head_dim 320"));
  CHECK_THAT(with([](sch::Attention& a) { a.head_dim = 100; }), twinstep_contains("head_dim 100"));
  CHECK_THAT(with([](sch::Attention& a) { a.heads_kv = 5; }), twinstep_contains("heads_kv"));
  CHECK_THAT(with([](sch::Attention& a) { a.seq_q = a.seq_kv = 1000; }), twinstep_contains("1000/1000"));
  CHECK_THAT(with([](sch::Attention& a) { a.seq_kv = 16384; }), twinstep_contains("causal"));
  // The build decides the rest; the names are the trace context's.
  CHECK(be::attention_kernel(llama) ==
        (be::cudnn_sdpa_built() ? be::AttentionKernel::kCudnnSdpa : be::AttentionKernel::kGemmSoftmax));
  sch::Attention fp8 = llama;
  fp8.dtype = sch::DType::kFP8;
  CHECK(be::attention_kernel(fp8) == be::AttentionKernel::kGemmSoftmax);
  CHECK(std::string(be::attention_kernel_name(be::AttentionKernel::kCudnnSdpa)) == "cudnn_sdpa");
  CHECK(std::string(be::attention_kernel_name(be::AttentionKernel::kGemmSoftmax)) == "gemm_softmax");
}

TEST_CASE("backend::required_device_bytes: the fused attention's buffers replace the score matrix", "[backend]") {
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  const sch::Attention a{1, 32, 8, 8192, 8192, 128, true, true, sch::DType::kBF16};
  sb.add(0, "attn", 0, sch::Compute{a, 0});
  const std::uint64_t q = 32ull * 8192 * 128 * 2, kv = 8ull * 8192 * 128 * 2, stats = 32ull * 8192 * 4;
  const std::uint64_t fused = 4 * q + 4 * kv + stats + be::kCublasWorkspaceBytes;  // Q O dO dQ, K V dK dV
  const be::AttentionBufferBytes fb = be::attention_buffer_bytes(a);
  const std::uint64_t fallback = 3 * fb.q + 2 * fb.k + fb.s + be::kCublasWorkspaceBytes;
  CHECK(be::required_device_bytes(s, 0) == (be::cudnn_sdpa_built() ? fused : fallback));
  CHECK(fused < fallback / 4);  // no seq x seq scores in memory
}
