// GPU tests of cuDNN's fused attention (backend/sdpa.hpp): forward output, row statistics and the backward's three
// gradients against a host reference in double over the same bf16 inputs (grouped-query heads, causal and full,
// head dims 64 and 128), and a run through the executor that names the kernel in the trace. Skipped in a build
// without cuDNN.
#include "backend/sdpa.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backend/executor.hpp"
#include "backend/handles.hpp"
#include "schedule/builder.hpp"
#include "tests/backend/bf16.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::from_bf16;
using twinstep::backend::test::to_bf16;
using twinstep::schedule::ScheduleBuilder;

namespace {

using Vec = std::vector<double>;

/// Host reference of one attention in BHSD layout (query head h reads kv head h / group): O, the row log-sum-exp
/// and, given dO, the gradients dQ, dK, dV.
struct Reference {
  Vec o, lse, dq, dk, dv;
};

Reference reference(const sch::Attention& a, const Vec& q, const Vec& k, const Vec& v, const Vec& dout) {
  const std::uint64_t hq = a.heads_q, hk = a.heads_kv, s = a.seq_q, d = a.head_dim, g = hq / hk;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  Reference r;
  r.o.assign(q.size(), 0);
  r.dq.assign(q.size(), 0);
  r.dk.assign(k.size(), 0);
  r.dv.assign(k.size(), 0);
  r.lse.assign(a.batch * hq * s, 0);
  for (std::uint64_t b = 0; b < a.batch; ++b) {
    for (std::uint64_t h = 0; h < hq; ++h) {
      const std::uint64_t qh = (b * hq + h) * s * d, kh = (b * hk + h / g) * s * d;
      for (std::uint64_t i = 0; i < s; ++i) {
        const std::uint64_t keys = a.causal ? i + 1 : s;
        Vec p(keys);
        double mx = -1e300;
        for (std::uint64_t j = 0; j < keys; ++j) {
          double dot = 0;
          for (std::uint64_t x = 0; x < d; ++x) dot += q[qh + i * d + x] * k[kh + j * d + x];
          p[j] = dot * scale;
          mx = std::max(mx, p[j]);
        }
        double sum = 0;
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (auto& x : p) x /= sum;
        r.lse[(b * hq + h) * s + i] = mx + std::log(sum);
        for (std::uint64_t j = 0; j < keys; ++j) {
          for (std::uint64_t x = 0; x < d; ++x) r.o[qh + i * d + x] += p[j] * v[kh + j * d + x];
        }
        if (dout.empty()) continue;
        // dP_ij = dO_i . V_j; dS = P (dP - rowsum(dO * O)); dQ = dS K scale; dK += dS^T Q scale; dV += P^T dO.
        double row = 0;
        for (std::uint64_t x = 0; x < d; ++x) row += dout[qh + i * d + x] * r.o[qh + i * d + x];
        for (std::uint64_t j = 0; j < keys; ++j) {
          double dp = 0;
          for (std::uint64_t x = 0; x < d; ++x) dp += dout[qh + i * d + x] * v[kh + j * d + x];
          const double ds = p[j] * (dp - row) * scale;
          for (std::uint64_t x = 0; x < d; ++x) {
            r.dq[qh + i * d + x] += ds * k[kh + j * d + x];
            r.dk[kh + j * d + x] += ds * q[qh + i * d + x];
            r.dv[kh + j * d + x] += p[j] * dout[qh + i * d + x];
          }
        }
      }
    }
  }
  return r;
}

/// Relative L2 error of `got` (bf16 on the device) against `ref`; NaNs counted apart.
struct Error {
  double rel = 0;
  std::size_t nan = 0;
};

Error compare(const std::vector<std::uint16_t>& got, const Vec& ref) {
  double e2 = 0, r2 = 0;
  Error e;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double x = from_bf16(got[i]);
    if (std::isnan(x)) ++e.nan;
    e2 += (x - ref[i]) * (x - ref[i]);
    r2 += ref[i] * ref[i];
  }
  e.rel = std::sqrt(e2 / r2);
  return e;
}

/// A device buffer of bf16 values uploaded from `host` (or of `bytes` NaN bytes to be overwritten).
be::DeviceMemory upload(const std::vector<std::uint16_t>& host) {
  be::DeviceMemory m = be::device_alloc(host.size() * 2);
  REQUIRE(cudaMemcpy(m.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  return m;
}
be::DeviceMemory nans(std::uint64_t bytes) {
  be::DeviceMemory m = be::device_alloc(bytes);
  REQUIRE(cudaMemset(m.get(), 0xFF, bytes) == cudaSuccess);
  return m;
}
std::vector<std::uint16_t> download(const be::DeviceMemory& m, std::uint64_t bytes) {
  std::vector<std::uint16_t> h(bytes / 2);
  REQUIRE(cudaMemcpy(h.data(), m.get(), bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}

}  // namespace

TEST_CASE("backend::sdpa: cuDNN fused attention forward and backward match a host reference (GQA, causal, d 64/128)",
          "[backend][gpu]") {
  if (!be::cudnn_sdpa_built()) {
    WARN("this build has no cuDNN: nothing to test");
    return;
  }
  be::CudnnSdpa sdpa;
  for (const std::uint64_t d : {64u, 128u}) {
    for (const bool causal : {true, false}) {
      // b=2, 4 query heads over 2 kv heads, 256 positions.
      const sch::Attention fwd{2, 4, 2, 256, 256, d, causal, false, sch::DType::kBF16};
      sch::Attention bwd = fwd;
      bwd.backward = true;
      REQUIRE(be::attention_kernel(fwd) == be::AttentionKernel::kCudnnSdpa);
      const auto bytes = be::sdpa_buffer_bytes(fwd);
      std::mt19937 rng(static_cast<unsigned>(d) + (causal ? 1 : 0));
      std::uniform_real_distribution<float> u(-1.0f, 1.0f);
      auto make = [&](std::uint64_t n, Vec& exact) {
        std::vector<std::uint16_t> h(n);
        exact.resize(n);
        for (std::size_t i = 0; i < n; ++i) exact[i] = from_bf16(h[i] = to_bf16(u(rng)));
        return h;
      };
      Vec q, k, v, dout;
      const auto hq = make(bytes.q / 2, q), hk = make(bytes.kv / 2, k), hv = make(bytes.kv / 2, v),
                 hdo = make(bytes.q / 2, dout);
      const Reference ref = reference(fwd, q, k, v, dout);
      const be::DeviceMemory dq_in = upload(hq), dk_in = upload(hk), dv_in = upload(hv), ddo = upload(hdo);
      const be::DeviceMemory o = nans(bytes.q), stats = nans(bytes.stats), gq = nans(bytes.q), gk = nans(bytes.kv),
                             gv = nans(bytes.kv);
      const be::CudaStream stream = be::make_stream(0);
      be::SdpaBuffers buf{dq_in.get(), dk_in.get(), dv_in.get(), o.get(), stats.get(),
                          ddo.get(),   gq.get(),    gk.get(),    gv.get()};
      sdpa.run(fwd, buf, stream.get());
      REQUIRE(cudaStreamSynchronize(stream.get()) == cudaSuccess);
      std::vector<float> lse(bytes.stats / 4);
      REQUIRE(cudaMemcpy(lse.data(), stats.get(), bytes.stats, cudaMemcpyDeviceToHost) == cudaSuccess);
      double lse_err = 0;
      for (std::size_t i = 0; i < lse.size(); ++i) lse_err = std::max(lse_err, std::abs(lse[i] - ref.lse[i]));
      // The backward reads the forward's O and stats, as in training.
      sdpa.run(bwd, buf, stream.get());
      REQUIRE(cudaStreamSynchronize(stream.get()) == cudaSuccess);
      const Error eo = compare(download(o, bytes.q), ref.o), eq = compare(download(gq, bytes.q), ref.dq),
                  ek = compare(download(gk, bytes.kv), ref.dk), ev = compare(download(gv, bytes.kv), ref.dv);
      INFO("d " << d << (causal ? " causal" : " full") << ": relative error O " << eo.rel << ", dQ " << eq.rel
                << ", dK " << ek.rel << ", dV " << ev.rel << "; stats max abs error " << lse_err);
      CHECK(eo.nan + eq.nan + ek.nan + ev.nan == 0);
      CHECK(eo.rel < 1e-2);  // bf16 output (2^-9 relative rounding), fp32 accumulation
      CHECK(ev.rel < 1e-2);
      CHECK(eq.rel < 2e-2);  // through the bf16 probabilities and dS
      CHECK(ek.rel < 2e-2);
      CHECK(lse_err < 1e-3);
    }
  }
  CHECK(sdpa.cached_plans() == 8);  // 2 head dims x causal/full x fwd/bwd, each built once
}

TEST_CASE("backend::execute: attention runs cuDNN's fused kernel where built and the trace names it",
          "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  const sch::Attention a{1, 32, 8, 4096, 4096, 128, true, false, sch::DType::kBF16};
  sch::Attention b = a;
  b.backward = true;
  const auto f = sb.add(0, "fwd", 0, sch::Compute{a, 0});
  const auto g = sb.add(0, "bwd", 0, sch::Compute{b, 0});
  be::Options o;
  o.warmup_steps = 1;
  o.steps = 3;
  const auto trace = rt.execute(s, o);
  const std::string want = be::cudnn_sdpa_built() ? "cudnn_sdpa" : "gemm_softmax";
  CHECK(trace.context.at("attention_kernel") == want);
  const double fwd_s = static_cast<double>(trace.records[f].end_ns - trace.records[f].start_ns) * 1e-9;
  const double bwd_s = static_cast<double>(trace.records[g].end_ns - trace.records[g].start_ns) * 1e-9;
  // One GEMM over the causal half of the scores; 2 of them forward, 5 backward (the scores recomputed).
  const double gemm_flops = 2.0 * 32 * 4096.0 * 4096.0 * 128 / 2;
  WARN("attention seq 4096 (" << want << "): forward " << fwd_s * 1e3 << " ms (" << 2 * gemm_flops / fwd_s / 1e12
                              << " TFLOP/s), backward " << bwd_s * 1e3 << " ms (" << 5 * gemm_flops / bwd_s / 1e12
                              << " TFLOP/s)");
  if (be::cudnn_sdpa_built())
    CHECK(2 * gemm_flops / fwd_s > 300e12);  // the fused kernel: well above the fallback's ~100
}
