// GPU tests of the FP8 GEMMs (backend/gemm_fp8.hpp): e4m3 x e4m3 (forward) and e5m2 x e4m3 (gradient) products of
// values exact in their formats against a host reference in double, per-tensor scales applied, and the executor
// running an fp8 GEMM op at more than the bf16 rate.
#include "backend/gemm_fp8.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/executor.hpp"
#include "backend/handles.hpp"
#include "backend/plan.hpp"
#include "schedule/builder.hpp"
#include "tests/backend/bf16.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::from_bf16;
using twinstep::schedule::gemm_kernel;
using twinstep::schedule::ScheduleBuilder;

namespace {

/// A random value exact in `f` (exponents -3..2, every mantissa, either sign) and its bit pattern.
std::uint8_t random_fp8(sch::Fp8Format f, std::mt19937& rng, double& value) {
  const bool e5 = f == sch::Fp8Format::kE5M2;
  const int mant_bits = e5 ? 2 : 3, bias = e5 ? 15 : 7;
  const int e = static_cast<int>(rng() % 6) - 3;
  const int m = static_cast<int>(rng() % (1u << mant_bits));
  const bool neg = rng() % 2 == 1;
  value = (neg ? -1.0 : 1.0) * std::ldexp(1.0 + m / static_cast<double>(1 << mant_bits), e);
  return static_cast<std::uint8_t>((neg ? 0x80 : 0) | ((e + bias) << mant_bits) | m);
}

}  // namespace

TEST_CASE("backend::Fp8Gemm: e4m3 and e5m2 x e4m3 products match a host reference, scales applied", "[backend][gpu]") {
  const std::uint64_t m = 96, n = 256, k = 512;  // C[m,n] = A[m,k] B[n,k]^T
  const be::CublasLtHandle lt = be::make_cublaslt();
  const be::DeviceMemory ws = be::device_alloc(be::kCublasWorkspaceBytes);
  const be::CudaStream stream = be::make_stream(0);
  for (const auto a_format : {sch::Fp8Format::kE4M3, sch::Fp8Format::kE5M2}) {
    std::mt19937 rng(a_format == sch::Fp8Format::kE4M3 ? 3 : 5);
    std::vector<std::uint8_t> ha(m * k), hb(n * k);
    std::vector<double> va(m * k), vb(n * k);
    for (std::size_t i = 0; i < ha.size(); ++i) ha[i] = random_fp8(a_format, rng, va[i]);
    for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = random_fp8(sch::Fp8Format::kE4M3, rng, vb[i]);
    // A's and B's dequantization scales (the product doubles), as the runtime lays them out.
    float scales[2 * be::kFp8ScaleStride] = {};
    scales[0] = 0.5f;
    scales[be::kFp8ScaleStride] = 4.0f;
    const be::DeviceMemory da = be::device_alloc(ha.size()), db = be::device_alloc(hb.size()),
                           dc = be::device_alloc(m * n * 2), ds = be::device_alloc(sizeof scales);
    REQUIRE(cudaMemcpy(da.get(), ha.data(), ha.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(db.get(), hb.data(), hb.size(), cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemcpy(ds.get(), scales, sizeof scales, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemset(dc.get(), 0xFF, m * n * 2) == cudaSuccess);
    for (const bool fast : {false, true}) {
      const be::Fp8Gemm g(lt.get(), be::Fp8GemmShape{m, n, k, a_format, sch::Fp8Format::kE4M3, fast},
                          be::kCublasWorkspaceBytes);
      const auto* s = static_cast<const float*>(ds.get());
      g.run(da.get(), db.get(), dc.get(), s, s + be::kFp8ScaleStride, ws.get(), stream.get());
      REQUIRE(cudaStreamSynchronize(stream.get()) == cudaSuccess);
      std::vector<std::uint16_t> hc(m * n);
      REQUIRE(cudaMemcpy(hc.data(), dc.get(), m * n * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
      double e2 = 0, r2 = 0;
      for (std::uint64_t i = 0; i < m; ++i) {
        for (std::uint64_t j = 0; j < n; ++j) {
          double ref = 0;
          for (std::uint64_t x = 0; x < k; ++x) ref += va[i * k + x] * vb[j * k + x];
          ref *= 2.0;
          const double got = from_bf16(hc[i * n + j]);
          e2 += (got - ref) * (got - ref);
          r2 += ref * ref;
        }
      }
      INFO((a_format == sch::Fp8Format::kE4M3 ? "e4m3" : "e5m2")
           << " x e4m3, fast accumulation " << fast << ": relative error " << std::sqrt(e2 / r2));
      CHECK(std::sqrt(e2 / r2) < 5e-3);  // exact products, fp32 (or fast) accumulation, bf16 output rounding
    }
  }
}

TEST_CASE("backend::execute: an fp8 GEMM runs faster than the same bf16 GEMM", "[backend][gpu]") {
  be::Runtime rt(be::ProcessGroup::kSelf);
  ScheduleBuilder sb(1, {{"compute", 0}});
  sb.world();
  auto& s = sb.schedule();
  std::vector<sch::OpId> bf16, fp8;
  for (int i = 0; i < 5; ++i) {
    bf16.push_back(sb.add(0, "bf16." + std::to_string(i), 0, gemm_kernel(8192, 8192, 8192)));
    fp8.push_back(sb.add(0, "fp8." + std::to_string(i), 0, gemm_kernel(8192, 8192, 8192, sch::DType::kFP8)));
  }
  be::Options o;
  o.warmup_steps = 2;
  o.steps = 3;
  const auto t = rt.execute(s, o);
  auto med = [&](const std::vector<sch::OpId>& ids) {
    std::vector<double> d;
    for (auto id : ids) d.push_back(static_cast<double>(t.records[id].end_ns - t.records[id].start_ns) * 1e-9);
    std::sort(d.begin(), d.end());
    return d[d.size() / 2];
  };
  const double flops = 2.0 * 8192.0 * 8192.0 * 8192.0;
  WARN("8192^3: bf16 " << flops / med(bf16) / 1e12 << " TFLOP/s, fp8 " << flops / med(fp8) / 1e12 << " TFLOP/s");
  CHECK(med(fp8) < 0.75 * med(bf16));  // H100/H200: fp8 peak is twice bf16's
}
