// cuDNN fused attention (sdpa.hpp) through cuDNN's backend C API: the operation graphs cuDNN's documentation gives
// for flash fused attention, built tensor by tensor, handed to the heuristics, and the first execution plan that
// finalizes kept per shape. Compiled only where CMake found cuDNN 9 (TWINSTEP_HAVE_CUDNN).
//
// Forward: S = Q K^T (fp32), S *= scale, causal: S = row >= col ? S : lowest, softmax as max, sub, exp, sum,
// div, with stats = max + log(sum) written out, O = P V (P in the io dtype).
// Backward: softmax_sum = rowsum(dO * O) (fp32, workspace), S = Q K^T * scale - stats, mask, P = exp(S),
// dV = P^T dO, dP = dO V^T, dS = P (dP - softmax_sum) scale, dK = dS^T Q, dQ = dS K accumulated in fp32 (workspace)
// then cast. Grouped-query attention: K and V carry heads_kv heads and broadcast over the groups; dK and dV are
// computed per query head and summed over each group by a reduction.
#include <cudnn_graph.h>

#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "backend/error.hpp"
#include "backend/handles.hpp"
#include "backend/sdpa.hpp"

namespace twinstep::backend {

namespace {

void check_cudnn(cudnnStatus_t status, const char* call, const char* file, int line) {
  if (status == CUDNN_STATUS_SUCCESS) return;
  std::array<char, 1024> last{};
  cudnnGetLastErrorString(last.data(), last.size());
  std::string what = cudnnGetErrorString(status);
  if (last[0] != '\0') what += std::string(": ") + last.data();
  throw_call_error("cudnn", static_cast<int>(status), what, call, file, line);
}

#define TWINSTEP_CUDNN_CHECK(expr) check_cudnn((expr), #expr, __FILE__, __LINE__)

/// Owns one backend descriptor.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) { TWINSTEP_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_)); }
  ~Desc() {
    if (d_ != nullptr) (void)cudnnBackendDestroyDescriptor(d_);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  Desc(Desc&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Desc& operator=(Desc&& o) noexcept {
    std::swap(d_, o.d_);
    return *this;
  }
  [[nodiscard]] cudnnBackendDescriptor_t get() const { return d_; }
  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, std::int64_t count, const void* value) {
    TWINSTEP_CUDNN_CHECK(cudnnBackendSetAttribute(d_, name, type, count, value));
    return *this;
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t other) {
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &other);
  }
  Desc& set_type(cudnnBackendAttributeName_t name, cudnnDataType_t t) { return set(name, CUDNN_TYPE_DATA_TYPE, 1, &t); }
  Desc& finalize() {
    TWINSTEP_CUDNN_CHECK(cudnnBackendFinalize(d_));
    return *this;
  }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

using Dims = std::array<std::int64_t, 4>;

Dims packed(const Dims& d) { return {d[1] * d[2] * d[3], d[2] * d[3], d[3], 1}; }

/// Unique ids of the tensors the caller binds (the variant pack); virtual tensors get ids from kFirstVirtual on.
enum Uid : std::int64_t {
  kQ = 1,
  kK,
  kV,
  kO,
  kStats,
  kScale,
  kLowest,
  kDO,
  kDQ,
  kDK,
  kDV,
  kSoftmaxSum,
  kDQAccum,
  kOne,
  kFirstVirtual = 100
};

struct Tensor {
  cudnnBackendDescriptor_t desc = nullptr;
  Dims dims{};
};

/// Builds one operation graph; keeps every descriptor alive as long as the plan built from it.
class GraphBuilder {
 public:
  explicit GraphBuilder(cudnnHandle_t h) : h_(h) {}

  Tensor tensor(const Dims& dims, const Dims& strides, cudnnDataType_t type, std::int64_t uid, bool by_value = false) {
    return make(dims, strides, type, uid, false, by_value);
  }
  Tensor virt(const Dims& dims, cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return make(dims, packed(dims), type, next_uid_++, true, false);
  }
  Tensor virt_strided(const Dims& dims, const Dims& strides, cudnnDataType_t type) {
    return make(dims, strides, type, next_uid_++, true, false);
  }
  void matmul(const Tensor& a, const Tensor& b, const Tensor& c) {
    Desc m(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    m.set_type(CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_DATA_FLOAT).finalize();
    Desc op(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_MATMUL_ADESC, a.desc)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_BDESC, b.desc)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_CDESC, c.desc)
        .set_desc(CUDNN_ATTR_OPERATION_MATMUL_DESC, m.get())
        .finalize();
    add(std::move(m), std::move(op));
  }
  /// y = mode(x[, b[, t]]); `prec` the math precision, `axis` for GEN_INDEX.
  void pointwise(cudnnPointwiseMode_t mode, const Tensor& x, const Tensor* b, const Tensor* t, const Tensor& y,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, std::int64_t axis = -1) {
    Desc pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set_type(CUDNN_ATTR_POINTWISE_MATH_PREC, prec);
    if (axis >= 0) pw.set(CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    pw.finalize();
    Desc op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw.get())
        .set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x.desc);
    if (b != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b->desc);
    if (t != nullptr) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t->desc);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y.desc).finalize();
    add(std::move(pw), std::move(op));
  }
  /// y = x op z (a pointwise binary op on a fresh fp32 virtual tensor of x's shape).
  Tensor binary(cudnnPointwiseMode_t mode, const Tensor& x, const Tensor& z) {
    Tensor y = virt(x.dims);
    pointwise(mode, x, &z, nullptr, y);
    return y;
  }
  void reduction(cudnnReduceTensorOp_t reduce, const Tensor& x, const Tensor& y) {
    Desc r(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    r.set(CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &reduce)
        .set_type(CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_DATA_FLOAT)
        .finalize();
    Desc op(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_REDUCTION_DESC, r.get())
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x.desc)
        .set_desc(CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y.desc)
        .finalize();
    add(std::move(r), std::move(op));
  }
  void reshape(const Tensor& x, const Tensor& y) {
    Desc op(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    op.set_desc(CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x.desc).set_desc(CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y.desc);
    op.finalize();
    add(std::move(op));
  }
  /// Causal mask on scores `s` (top-left diagonal): row >= col keeps the score, else the lowest float.
  Tensor causal_mask(const Tensor& s, const Tensor& lowest) {
    const Tensor row = virt(s.dims, CUDNN_DATA_INT32), col = virt(s.dims, CUDNN_DATA_INT32);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
    const Tensor keep = virt(s.dims, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_GE, row, &col, nullptr, keep, CUDNN_DATA_BOOLEAN);
    const Tensor out = virt(s.dims);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, &lowest, &keep, out);
    return out;
  }
  /// The finalized operation graph of every op added.
  Desc graph() {
    Desc g(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    g.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<std::int64_t>(ops_.size()),
          ops_.data())
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h_)
        .finalize();
    return g;
  }
  /// The descriptors the graph refers to (kept by the plan).
  std::vector<Desc> take() { return std::move(keep_); }

 private:
  Tensor make(const Dims& dims, const Dims& strides, cudnnDataType_t type, std::int64_t uid, bool is_virtual,
              bool by_value) {
    Desc t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const std::int64_t align = 16;
    t.set_type(CUDNN_ATTR_TENSOR_DATA_TYPE, type)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align)
        .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) t.set(CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    t.finalize();
    Tensor out{t.get(), dims};
    keep_.push_back(std::move(t));
    return out;
  }
  void add(Desc op) {
    ops_.push_back(op.get());
    keep_.push_back(std::move(op));
  }
  void add(Desc inner, Desc op) {
    keep_.push_back(std::move(inner));
    add(std::move(op));
  }

  cudnnHandle_t h_;
  std::vector<Desc> keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  std::int64_t next_uid_ = kFirstVirtual;
};

/// The shape of a plan: batch, heads_q, heads_kv, seq_q, seq_kv, head_dim, causal, backward, dtype.
using Key = std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t, std::uint64_t, bool,
                       bool, schedule::DType>;

Key key_of(const schedule::Attention& a) {
  return {a.batch, a.heads_q, a.heads_kv, a.seq_q, a.seq_kv, a.head_dim, a.causal, a.backward, a.dtype};
}

constexpr std::uint64_t kAlign = 256;
std::uint64_t align_up(std::uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

/// One built plan: the descriptors it refers to, the plan, and where its fp32 intermediates sit in the workspace.
struct Plan {
  std::vector<Desc> keep;
  Desc graph{CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR};
  std::vector<Desc> configs;
  Desc plan{CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR};
  std::uint64_t plan_workspace = 0;  ///< The plan's own (at offset 0).
  std::uint64_t sum_offset = 0, accum_offset = 0, workspace = 0;
  float scale = 1.0f, lowest = std::numeric_limits<float>::lowest(), one = 1.0f;
};

cudnnDataType_t io_type(schedule::DType t) {
  return t == schedule::DType::kFP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}

struct Shape {
  std::int64_t b, hq, hk, sq, skv, d;
};

void build_forward(GraphBuilder& g, const Shape& x, bool causal, cudnnDataType_t io) {
  const Tensor q = g.tensor({x.b, x.hq, x.sq, x.d}, packed({x.b, x.hq, x.sq, x.d}), io, kQ);
  const Tensor kt = g.tensor({x.b, x.hk, x.d, x.skv}, {x.hk * x.skv * x.d, x.skv * x.d, 1, x.d}, io, kK);
  const Tensor v = g.tensor({x.b, x.hk, x.skv, x.d}, packed({x.b, x.hk, x.skv, x.d}), io, kV);
  const Tensor o = g.tensor({x.b, x.hq, x.sq, x.d}, packed({x.b, x.hq, x.sq, x.d}), io, kO);
  const Tensor stats = g.tensor({x.b, x.hq, x.sq, 1}, {x.hq * x.sq, x.sq, 1, 1}, CUDNN_DATA_FLOAT, kStats);
  const Tensor scale = g.tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, kScale, true);
  const Dims sd{x.b, x.hq, x.sq, x.skv}, rd{x.b, x.hq, x.sq, 1};
  const Tensor s = g.virt(sd);
  g.matmul(q, kt, s);
  Tensor last = g.binary(CUDNN_POINTWISE_MUL, s, scale);
  if (causal) last = g.causal_mask(last, g.tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, kLowest, true));
  const Tensor mx = g.virt(rd);
  g.reduction(CUDNN_REDUCE_TENSOR_MAX, last, mx);
  const Tensor e = g.virt(sd);
  g.pointwise(CUDNN_POINTWISE_EXP, g.binary(CUDNN_POINTWISE_SUB, last, mx), nullptr, nullptr, e);
  const Tensor sum = g.virt(rd);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, sum);
  const Tensor lg = g.virt(rd);
  g.pointwise(CUDNN_POINTWISE_LOG, sum, nullptr, nullptr, lg);
  g.pointwise(CUDNN_POINTWISE_ADD, mx, &lg, nullptr, stats);
  const Tensor p = g.virt(sd, io);  // the second GEMM takes the probabilities in the io dtype
  g.pointwise(CUDNN_POINTWISE_DIV, e, &sum, nullptr, p);
  g.matmul(p, v, o);
}

void build_backward(GraphBuilder& g, const Shape& x, bool causal, cudnnDataType_t io) {
  const Dims qd{x.b, x.hq, x.sq, x.d}, kd{x.b, x.hk, x.skv, x.d}, sd{x.b, x.hq, x.sq, x.skv}, rd{x.b, x.hq, x.sq, 1};
  const Dims kt_strides{x.hk * x.skv * x.d, x.skv * x.d, 1, x.d};
  const Tensor q = g.tensor(qd, packed(qd), io, kQ);
  const Tensor kt = g.tensor({x.b, x.hk, x.d, x.skv}, kt_strides, io, kK);
  const Tensor vt = g.tensor({x.b, x.hk, x.d, x.skv}, kt_strides, io, kV);
  const Tensor o = g.tensor(qd, packed(qd), io, kO);
  const Tensor dout = g.tensor(qd, packed(qd), io, kDO);
  const Tensor stats = g.tensor(rd, packed(rd), CUDNN_DATA_FLOAT, kStats);
  const Tensor dq = g.tensor(qd, packed(qd), io, kDQ);
  const Tensor dk = g.tensor(kd, packed(kd), io, kDK);
  const Tensor dv = g.tensor(kd, packed(kd), io, kDV);
  const Tensor scale = g.tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, kScale, true);
  const Tensor one = g.tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, kOne, true);
  const Tensor softmax_sum = g.tensor(rd, packed(rd), CUDNN_DATA_FLOAT, kSoftmaxSum);
  const Tensor dq_accum = g.tensor(qd, packed(qd), CUDNN_DATA_FLOAT, kDQAccum);

  // softmax_sum = rowsum(dO * O)
  const Tensor dot = g.virt(rd);
  g.reduction(CUDNN_REDUCE_TENSOR_ADD, g.binary(CUDNN_POINTWISE_MUL, dout, o), dot);
  g.pointwise(CUDNN_POINTWISE_MUL, dot, &one, nullptr, softmax_sum);
  // P = exp(Q K^T scale - stats), masked
  const Tensor s = g.virt(sd);
  g.matmul(q, kt, s);
  Tensor last = g.binary(CUDNN_POINTWISE_SUB, g.binary(CUDNN_POINTWISE_MUL, s, scale), stats);
  if (causal) last = g.causal_mask(last, g.tensor({1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, kLowest, true));
  const Tensor p = g.virt(sd);
  g.pointwise(CUDNN_POINTWISE_EXP, last, nullptr, nullptr, p);
  // dV = P^T dO (per query head, then summed over each group)
  const Dims td{x.b, x.hq, x.skv, x.sq}, t_strides{x.hq * x.sq * x.skv, x.sq * x.skv, 1, x.skv};
  const Tensor pt = g.virt_strided(td, t_strides, io);
  g.reshape(p, pt);
  const bool grouped = x.hq != x.hk;
  const Dims full{x.b, x.hq, x.skv, x.d};
  auto per_kv_head = [&](const Tensor& a, const Tensor& b, const Tensor& out) {
    if (!grouped) {
      g.matmul(a, b, out);
      return;
    }
    const Tensor f = g.virt(full, io);
    g.matmul(a, b, f);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, f, out);
  };
  per_kv_head(pt, dout, dv);
  // dS = P (dO V^T - softmax_sum) scale
  const Tensor dp = g.virt(sd);
  g.matmul(dout, vt, dp);
  const Tensor ds = g.binary(CUDNN_POINTWISE_MUL,
                             g.binary(CUDNN_POINTWISE_MUL, g.binary(CUDNN_POINTWISE_SUB, dp, softmax_sum), p), scale);
  // dK = dS^T Q
  const Tensor dst = g.virt_strided(td, t_strides, io);
  g.reshape(ds, dst);
  per_kv_head(dst, q, dk);
  // dQ = dS K, accumulated in fp32, then cast
  const Tensor k = g.virt_strided(kd, packed(kd), io);
  g.reshape(kt, k);
  g.matmul(ds, k, dq_accum);
  g.pointwise(CUDNN_POINTWISE_IDENTITY, dq_accum, nullptr, nullptr, dq);
}

}  // namespace

struct CudnnSdpa::Impl {
  cudnnHandle_t handle = nullptr;
  std::map<Key, Plan> plans;
  DeviceMemory workspace;
  std::uint64_t workspace_bytes = 0;

  ~Impl() {
    plans.clear();
    if (handle != nullptr) (void)cudnnDestroy(handle);
  }

  Plan& get(const schedule::Attention& a) {
    const Key key = key_of(a);
    if (auto it = plans.find(key); it != plans.end()) return it->second;
    const std::string refusal = cudnn_sdpa_refusal(a);
    if (!refusal.empty()) {
      throw_call_error("cudnn", 0, "fused attention does not take " + refusal, "CudnnSdpa::prepare", __FILE__,
                       __LINE__);
    }
    const Shape x{static_cast<std::int64_t>(a.batch),    static_cast<std::int64_t>(a.heads_q),
                  static_cast<std::int64_t>(a.heads_kv), static_cast<std::int64_t>(a.seq_q),
                  static_cast<std::int64_t>(a.seq_kv),   static_cast<std::int64_t>(a.head_dim)};
    GraphBuilder g(handle);
    if (a.backward) {
      build_backward(g, x, a.causal, io_type(a.dtype));
    } else {
      build_forward(g, x, a.causal, io_type(a.dtype));
    }
    Plan p;
    p.graph = g.graph();
    p.keep = g.take();
    p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.head_dim)));
    Desc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, p.graph.get())
        .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode)
        .finalize();
    std::int64_t count = 0;
    TWINSTEP_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                  CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr));
    std::vector<cudnnBackendDescriptor_t> raw;
    for (std::int64_t i = 0; i < count; ++i) {
      p.configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(p.configs.back().get());
    }
    std::int64_t got = 0;
    if (count > 0) {
      TWINSTEP_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data()));
    }
    std::string why = "no engine configuration";
    bool built = false;
    for (std::int64_t i = 0; i < got && !built; ++i) {
      Desc plan(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      plan.set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
          .set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, raw[static_cast<std::size_t>(i)]);
      const cudnnStatus_t st = cudnnBackendFinalize(plan.get());
      if (st != CUDNN_STATUS_SUCCESS) {
        std::array<char, 1024> last{};
        cudnnGetLastErrorString(last.data(), last.size());
        why = std::string(cudnnGetErrorString(st)) + ": " + last.data();
        continue;
      }
      std::int64_t ws = 0, n = 0;
      TWINSTEP_CUDNN_CHECK(
          cudnnBackendGetAttribute(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws));
      p.plan = std::move(plan);
      p.plan_workspace = static_cast<std::uint64_t>(ws);
      built = true;
    }
    if (!built) {
      throw_call_error("cudnn", 0,
                       "no execution plan for the " + std::string(a.backward ? "backward" : "forward") +
                           " fused attention of this shape (" + std::to_string(got) +
                           " configurations tried; last: " + why + ")",
                       "CudnnSdpa::prepare", __FILE__, __LINE__);
    }
    // fp32 intermediates of the backward after the plan's own workspace: softmax_sum and the dQ accumulator.
    p.workspace = align_up(p.plan_workspace);
    if (a.backward) {
      p.sum_offset = p.workspace;
      p.workspace += align_up(a.batch * a.heads_q * a.seq_q * 4);
      p.accum_offset = p.workspace;
      p.workspace += align_up(a.batch * a.heads_q * a.seq_q * a.head_dim * 4);
    }
    if (p.workspace > workspace_bytes) {
      TWINSTEP_CUDA_CHECK(cudaDeviceSynchronize());  // the old workspace may still be in use
      workspace.reset();
      workspace = device_alloc(p.workspace);
      workspace_bytes = p.workspace;
    }
    return plans.emplace(key, std::move(p)).first->second;
  }
};

CudnnSdpa::CudnnSdpa() : impl_(std::make_unique<Impl>()) { TWINSTEP_CUDNN_CHECK(cudnnCreate(&impl_->handle)); }

CudnnSdpa::~CudnnSdpa() = default;

void CudnnSdpa::prepare(const schedule::Attention& a) { (void)impl_->get(a); }

void CudnnSdpa::run(const schedule::Attention& a, const SdpaBuffers& b, cudaStream_t stream) {
  Plan& p = impl_->get(a);
  auto* ws = static_cast<char*>(impl_->workspace.get());
  std::vector<std::int64_t> uids{kQ, kK, kV, kO, kStats, kScale};
  std::vector<void*> ptrs{b.q, b.k, b.v, b.o, b.stats, &p.scale};
  if (a.causal) {
    uids.push_back(kLowest);
    ptrs.push_back(&p.lowest);
  }
  if (a.backward) {
    for (auto [uid, ptr] : {std::pair<std::int64_t, void*>{kDO, b.dout},
                            {kDQ, b.dq},
                            {kDK, b.dk},
                            {kDV, b.dv},
                            {kOne, &p.one},
                            {kSoftmaxSum, ws + p.sum_offset},
                            {kDQAccum, ws + p.accum_offset}}) {
      uids.push_back(uid);
      ptrs.push_back(ptr);
    }
  }
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  void* workspace = ws;
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<std::int64_t>(uids.size()), uids.data())
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<std::int64_t>(ptrs.size()),
           ptrs.data())
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace)
      .finalize();
  TWINSTEP_CUDNN_CHECK(cudnnSetStream(impl_->handle, stream));
  TWINSTEP_CUDNN_CHECK(cudnnBackendExecute(impl_->handle, p.plan.get(), pack.get()));
}

std::string CudnnSdpa::version() const {
  const std::size_t v = cudnnGetVersion();
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::size_t CudnnSdpa::cached_plans() const { return impl_->plans.size(); }

}  // namespace twinstep::backend
