// GPU tests of accumulating GEMMs (IR accumulate_fp32: Megatron's gradient_accumulation_fusion): a bf16 GEMM and an
// fp8 one add their product into an fp32 C that already holds values, checked against C0 + A B computed on the host
// from values exact in their formats; and (IR accumulate: the fusion with bf16 main grads) into a bf16 C.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/gemm.hpp"
#include "backend/gemm_fp8.hpp"
#include "backend/handles.hpp"
#include "backend/plan.hpp"
#include "tests/backend/bf16.hpp"
#include "tests/catch.hpp"

namespace be = twinstep::backend;
namespace sch = twinstep::schedule;
using twinstep::backend::test::from_bf16;
using twinstep::backend::test::to_bf16;

namespace {

/// Relative RMS error of `got` against `ref`.
double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double e2 = 0, r2 = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    e2 += (got[i] - ref[i]) * (got[i] - ref[i]);
    r2 += ref[i] * ref[i];
  }
  return std::sqrt(e2 / r2);
}

}  // namespace

TEST_CASE("backend::run_gemm: an accumulating bf16 GEMM adds A B into its fp32 C (beta 1)", "[backend][gpu]") {
  const std::uint64_t m = 64, n = 96, k = 128;  // row-major C[m,n] += A[m,k] B[k,n]
  std::mt19937 rng(11);
  // Small integers: exact in bf16, their products and sums exact in fp32.
  auto small = [&rng] { return static_cast<float>(static_cast<int>(rng() % 9) - 4); };
  std::vector<std::uint16_t> ha(m * k), hb(k * n);
  std::vector<float> fa(m * k), fb(k * n), c0(m * n);
  for (std::size_t i = 0; i < ha.size(); ++i) ha[i] = to_bf16(fa[i] = small());
  for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = to_bf16(fb[i] = small());
  for (auto& v : c0) v = 1000.0f + small();  // what the main grad already holds
  std::vector<double> ref(m * n);
  for (std::uint64_t i = 0; i < m; ++i) {
    for (std::uint64_t j = 0; j < n; ++j) {
      double s = c0[i * n + j];
      for (std::uint64_t x = 0; x < k; ++x) s += static_cast<double>(fa[i * k + x]) * fb[x * n + j];
      ref[i * n + j] = s;
    }
  }
  const be::CublasHandle h = be::make_cublas();
  const be::DeviceMemory da = be::device_alloc(ha.size() * 2), db = be::device_alloc(hb.size() * 2),
                         dc = be::device_alloc(c0.size() * 4);
  REQUIRE(cudaMemcpy(da.get(), ha.data(), ha.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db.get(), hb.data(), hb.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(dc.get(), c0.data(), c0.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  be::GemmCall g = be::plain_gemm(m, n, k, false, false, da.get(), db.get(), dc.get(), 1, CUDA_R_16BF);
  be::accumulate_into_fp32(g);
  CHECK(g.c_type == CUDA_R_32F);
  CHECK(g.beta == 1.0f);
  be::run_gemm(h.get(), g);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<float> got(m * n);
  REQUIRE(cudaMemcpy(got.data(), dc.get(), got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (std::size_t i = 0; i < ref.size(); ++i) {
    INFO("element " << i);
    REQUIRE(got[i] == static_cast<float>(ref[i]));  // exact: integers well inside fp32's mantissa
  }
  // Twice: the second call adds the product again (the next micro-batch's gradient).
  be::run_gemm(h.get(), g);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(got.data(), dc.get(), got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  std::vector<double> ref2(ref.size());
  for (std::size_t i = 0; i < ref.size(); ++i) ref2[i] = 2.0 * ref[i] - c0[i];
  CHECK(rel_error(got, ref2) == 0.0);
}

TEST_CASE("backend::Fp8Gemm: accumulate_fp32 adds the scaled fp8 product into an fp32 C", "[backend][gpu]") {
  const std::uint64_t m = 64, n = 128, k = 256;  // C[m,n] += A[m,k] B[n,k]^T, e5m2 x e4m3 (a wgrad GEMM)
  std::mt19937 rng(7);
  // Operands 0, +-1, +-2: exact in e5m2 and e4m3 (bit patterns below).
  auto pick = [&rng](bool e5, double& v) -> std::uint8_t {
    const int r = static_cast<int>(rng() % 5) - 2;
    v = r;
    if (r == 0) return 0;
    const int bias = e5 ? 15 : 7, mant = e5 ? 2 : 3;
    const int e = std::abs(r) == 1 ? 0 : 1;
    return static_cast<std::uint8_t>((r < 0 ? 0x80 : 0) | ((e + bias) << mant));
  };
  std::vector<std::uint8_t> ha(m * k), hb(n * k);
  std::vector<double> va(m * k), vb(n * k);
  for (std::size_t i = 0; i < ha.size(); ++i) ha[i] = pick(true, va[i]);
  for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = pick(false, vb[i]);
  std::vector<float> c0(m * n);
  for (std::size_t i = 0; i < c0.size(); ++i) c0[i] = 500.0f + static_cast<float>(i % 7);
  float scales[2 * be::kFp8ScaleStride] = {};
  scales[0] = 0.5f;
  scales[be::kFp8ScaleStride] = 2.0f;  // the product is scaled by 1
  std::vector<double> ref(m * n);
  for (std::uint64_t i = 0; i < m; ++i) {
    for (std::uint64_t j = 0; j < n; ++j) {
      double s = 0;
      for (std::uint64_t x = 0; x < k; ++x) s += va[i * k + x] * vb[j * k + x];
      ref[i * n + j] = c0[i * n + j] + s;
    }
  }
  const be::CublasLtHandle lt = be::make_cublaslt();
  const be::DeviceMemory ws = be::device_alloc(be::kCublasWorkspaceBytes);
  const be::CudaStream stream = be::make_stream(0);
  const be::DeviceMemory da = be::device_alloc(ha.size()), db = be::device_alloc(hb.size()),
                         dc = be::device_alloc(c0.size() * 4), ds = be::device_alloc(sizeof scales);
  REQUIRE(cudaMemcpy(da.get(), ha.data(), ha.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db.get(), hb.data(), hb.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(dc.get(), c0.data(), c0.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(ds.get(), scales, sizeof scales, cudaMemcpyHostToDevice) == cudaSuccess);
  be::Fp8GemmShape shape{m, n, k, sch::Fp8Format::kE5M2, sch::Fp8Format::kE4M3, false};
  shape.accumulate_fp32 = true;
  const be::Fp8Gemm g(lt.get(), shape, be::kCublasWorkspaceBytes);
  const auto* s = static_cast<const float*>(ds.get());
  g.run(da.get(), db.get(), dc.get(), s, s + be::kFp8ScaleStride, ws.get(), stream.get());
  REQUIRE(cudaStreamSynchronize(stream.get()) == cudaSuccess);
  std::vector<float> got(m * n);
  REQUIRE(cudaMemcpy(got.data(), dc.get(), got.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
  INFO("relative error " << rel_error(got, ref));
  CHECK(rel_error(got, ref) < 1e-6);  // integer products and sums: exact in fp32
}

TEST_CASE("backend::run_gemm: accumulate adds A B into a bf16 C (beta 1), as into a bf16 main grad", "[backend][gpu]") {
  const std::uint64_t m = 32, n = 48, k = 16;  // row-major C[m,n] += A[m,k] B[k,n]
  std::mt19937 rng(5);
  // A, B in {-1, 0, 1}, C0 in 8..15: every partial sum and the result are integers in [-8, 31], exact in bf16.
  auto unit = [&rng] { return static_cast<float>(static_cast<int>(rng() % 3) - 1); };
  std::vector<std::uint16_t> ha(m * k), hb(k * n), hc(m * n);
  std::vector<float> fa(m * k), fb(k * n), c0(m * n);
  for (std::size_t i = 0; i < ha.size(); ++i) ha[i] = to_bf16(fa[i] = unit());
  for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = to_bf16(fb[i] = unit());
  for (std::size_t i = 0; i < hc.size(); ++i) hc[i] = to_bf16(c0[i] = static_cast<float>(8 + rng() % 8));
  const be::CublasHandle h = be::make_cublas();
  const be::DeviceMemory da = be::device_alloc(ha.size() * 2), db = be::device_alloc(hb.size() * 2),
                         dc = be::device_alloc(hc.size() * 2);
  REQUIRE(cudaMemcpy(da.get(), ha.data(), ha.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(db.get(), hb.data(), hb.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(dc.get(), hc.data(), hc.size() * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  be::GemmCall g = be::plain_gemm(m, n, k, false, false, da.get(), db.get(), dc.get(), 1, CUDA_R_16BF);
  be::accumulate_into_c(g);
  CHECK(g.c_type == CUDA_R_16BF);  // C stays in the output dtype
  CHECK(g.beta == 1.0f);
  be::run_gemm(h.get(), g);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(hc.data(), dc.get(), hc.size() * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
  for (std::uint64_t i = 0; i < m; ++i) {
    for (std::uint64_t j = 0; j < n; ++j) {
      float s = c0[i * n + j];
      for (std::uint64_t x = 0; x < k; ++x) s += fa[i * k + x] * fb[x * n + j];
      INFO("element " << i << "," << j);
      REQUIRE(from_bf16(hc[i * n + j]) == s);
    }
  }
}
