// Runtime::execute: binds a rank's issue plan (plan.hpp) to streams, events, communicators and buffers, issues
// it step by step under the watchdog, and gathers the per-op medians of every rank into one trace.
//
// Clock alignment. Each step starts with a barrier over all ranks; each rank then records an origin event on an
// internal stream, makes every stream wait on it, and polls it: the first host instant at which the origin is seen
// complete is the host origin. Device times are event times relative to the origin event
// (cudaEventElapsedTime, about 0.5 us resolution); host times are steady_clock relative to the host origin. The
// two axes are therefore offset by at most the polling latency (a few us, device times slightly late), and ranks
// by the barrier's exit skew (a few us on one host).
#include <algorithm>
#include <atomic>
#include <ctime>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "backend/attention.hpp"
#include "backend/error.hpp"
#include "backend/gemm.hpp"
#include "backend/gemm_fp8.hpp"
#include "backend/grouped_gemm.hpp"
#include "backend/kernels.hpp"
#include "backend/peer_link.hpp"
#include "backend/peer_memory.hpp"
#include "backend/runtime.hpp"
#include "backend/sdpa.hpp"
#include "common/assert.hpp"
#include "common/error.hpp"
#include "common/stats.hpp"
#include "schedule/json.hpp"

#ifndef TWINSTEP_GIT_REVISION
#define TWINSTEP_GIT_REVISION "unknown"
#endif

namespace twinstep::backend {

namespace sch = twinstep::schedule;

namespace {

constexpr int kBandwidthKernelSms = 132;  // grid of the elementwise and Adam kernels (an H100 SXM's SMs)

ncclDataType_t nccl_dtype(sch::DType t) {
  switch (t) {
    case sch::DType::kBF16:
      return ncclBfloat16;
    case sch::DType::kFP16:
      return ncclFloat16;
    case sch::DType::kFP32:
      return ncclFloat32;
    case sch::DType::kFP8:
      return ncclUint8;
    case sch::DType::kInt64:
      return ncclInt64;
    case sch::DType::kInt32:
      return ncclInt32;
  }
  return ncclUint8;
}

std::string iso_date_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

/// A planned op bound to this run's handles.
struct BoundOp {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  CudaEvent start, end;  // GPU ops only
  ncclComm_t comm = nullptr;
  std::vector<GemmCall> gemms;     // GEMM and grouped-GEMM ops
  std::vector<int> call_of_group;  // grouped-GEMM ops: per group, its call in `gemms` or `fp8` (-1: an empty group)
  struct Fp8Call {                 // fp8 ones: the matmul and its operands
    Fp8Gemm gemm;
    const void* a;
    const void* b;
    void* c;
  };
  std::vector<Fp8Call> fp8;
  void* workspace = nullptr;              // the stream's cuBLAS workspace (FP8 GEMMs on the same stream share it)
  AttentionCalls attention;               // attention ops on the GEMM + softmax path
  const sch::Attention* fused = nullptr;  // attention ops on cuDNN's fused path, with its buffers
  SdpaBuffers sdpa;
};

/// Host time relative to a step's host origin.
struct HostClock {
  Clock::time_point origin;
  [[nodiscard]] Nanos now() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - origin).count();
  }
};

/// Host-side times of one step, relative to its host origin.
struct StepTimes {
  std::vector<Nanos> issue, start, end;  // start and end: host ops only (GPU ops are timed by events)
};

/// How a run's send/recv move their bytes: the schedule as asked, with its peer-mapped pairs between ranks that
/// cannot map each other turned into NCCL ones (`ran`, what every plan is made from), those pairs, and this rank's
/// ends of the peer-mapped links (null when there are none).
struct Transports {
  const sch::Schedule& asked;
  const sch::Schedule& ran;
  std::vector<Fallback> fallbacks;
  PeerLinks* links = nullptr;
};

/// One execute() call: the run's streams and events (freed on every way out), the issue loop and the gathering of
/// the trace. Constructed after the channels, buffers, cuBLAS handles and peer-mapped links exist.
class Execution {
 public:
  Execution(Runtime::Impl& im, const Transports& transports, const Options& options, const ChannelPlan& channels,
            RankPlan plan);
  ~Execution();  // the watchdog stops describing this run before it goes
  Execution(const Execution&) = delete;
  Execution& operator=(const Execution&) = delete;
  [[nodiscard]] sch::Trace run();

 private:
  void bind_compute(const sch::Compute& c, BoundOp& b);
  [[nodiscard]] std::string describe_unfinished() const;
  [[nodiscard]] std::string describe_blocked() const;
  void poll();
  void wait_event(cudaEvent_t ev);
  void wait_streams();
  void run_step(int step, bool measured);
  void issue(std::size_t i, StepTimes& times, const HostClock& host);
  void issue_compute(const sch::Compute& c, const BoundOp& b);
  void issue_collective(const sch::Collective& c, const PlannedOp& p, const BoundOp& b);
  void issue_p2p(const sch::Op& op, const PlannedOp& p, const BoundOp& b);
  void record_step(const StepTimes& times);
  [[nodiscard]] sch::Trace gather();
  void write_context(sch::Trace& trace, const std::vector<std::string>& hosts,
                     const std::vector<std::string>& monitor_reports) const;

  Runtime::Impl& im_;
  const Transports& transports_;
  const sch::Schedule& s_;  // transports_.ran
  const Options& options_;
  RankPlan plan_;
  std::vector<CudaStream> streams_;  // one per declared stream
  CudaEvent origin_;
  std::vector<BoundOp> bound_;  // per planned op
  std::vector<ncclComm_t> comms_;
  std::atomic<std::size_t> issued_{0};  // ops of the step issued so far (read by the watchdog thread)
  std::vector<std::pair<const sch::Op*, OpBuffers>> deferred_after_;  // hook->after() calls at the step's end
  std::vector<std::vector<Nanos>> issue_ns_, start_ns_, end_ns_;      // per op, per measured step
  std::vector<std::int64_t> step_bounds_;  // per measured step: min issue, max end (this rank)
};

Execution::Execution(Runtime::Impl& im, const Transports& transports, const Options& options,
                     const ChannelPlan& channels, RankPlan plan)
    : im_(im),
      transports_(transports),
      s_(transports.ran),
      options_(options),
      plan_(std::move(plan)),
      bound_(plan_.ops.size()),
      issue_ns_(plan_.ops.size()),
      start_ns_(plan_.ops.size()),
      end_ns_(plan_.ops.size()) {
  int least = 0, greatest = 0;
  TWINSTEP_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  const sch::Schedule& s = s_;
  for (std::size_t i = 0; i < s.streams.size(); ++i) {
    // IR priority: lower is more urgent, 0 default (the CUDA convention); clamp to the device range [greatest, least].
    streams_.push_back(make_stream(std::clamp(s.streams[i].priority, greatest, least)));
    TWINSTEP_CUBLAS_CHECK(cublasSetStream(im.dev->blas[i].handle.get(), streams_[i].get()));
  }
  origin_ = make_event();
  for (std::size_t i = 0; i < plan_.ops.size(); ++i) {
    const PlannedOp& p = plan_.ops[i];
    const sch::Op& op = s.ops[p.op];
    BoundOp& b = bound_[i];
    if (p.gpu) {
      b.stream = streams_[op.stream].get();
      b.blas = im.dev->blas[op.stream].handle.get();
      b.workspace = im.dev->blas[op.stream].workspace.get();
      b.start = make_event();
      b.end = make_event();
    }
    if (p.channel != kNoChannel) b.comm = im.dev->channels.at(channels.channels[p.channel].key).get();
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) bind_compute(*c, b);
  }
  comms_ = im.all_comms();
}

Execution::~Execution() {
  im_.watchdog->disarm();
  im_.watchdog->set_blocked_description(nullptr);
}

void Execution::bind_compute(const sch::Compute& c, BoundOp& b) {
  // FP8 GEMMs (gemm_fp8.hpp): A [rows,k] and B [n,k] of one byte per element, C bf16 (fp32 when accumulating);
  // fast accumulation for the forward ones (both operands e4m3), as Transformer Engine.
  auto fp8 = [&](std::uint64_t m, std::uint64_t n, std::uint64_t k, sch::Fp8Format fa, sch::Fp8Format fb, bool acc,
                 bool acc_c, std::uint64_t a_off, std::uint64_t b_off, std::uint64_t c_off) {
    const Fp8GemmShape shape{m, n, k, fa, fb, fa == sch::Fp8Format::kE4M3 && fb == sch::Fp8Format::kE4M3, acc, acc_c};
    b.fp8.push_back({Fp8Gemm(im_.lt(), shape, kCublasWorkspaceBytes),
                     static_cast<const char*>(im_.buffer(Role::kGemmA)) + a_off,
                     static_cast<const char*>(im_.buffer(Role::kGemmB)) + b_off,
                     static_cast<char*>(im_.buffer(Role::kGemmC)) + c_off});
  };
  if (const auto* g = std::get_if<sch::Gemm>(&c.kernel)) {
    if (g->dtype == sch::DType::kFP8) {
      for (std::uint64_t i = 0; i < g->batch; ++i) {
        fp8(g->m, g->n, g->k, g->a_format, g->b_format, g->accumulate_fp32, g->accumulate, i * g->m * g->k,
            i * g->n * g->k, i * g->m * g->n * sch::gemm_c_bytes(g->dtype, g->accumulate_fp32));
      }
      return;
    }
    GemmCall call = plain_gemm(g->m, g->n, g->k, false, false, im_.buffer(Role::kGemmA), im_.buffer(Role::kGemmB),
                               im_.buffer(Role::kGemmC), g->batch, cuda_dtype(g->dtype));
    if (g->accumulate_fp32) accumulate_into_fp32(call);
    if (g->accumulate) accumulate_into_c(call);
    b.gemms.push_back(call);
  } else if (const auto* gg = std::get_if<sch::GroupedGemm>(&c.kernel)) {
    // One GEMM per group, each on its own slice of A, B and C, run over the side streams (grouped_gemm.hpp).
    (void)im_.grouped();  // the side streams are made here, before any step
    const std::uint64_t e = sch::dtype_bytes(gg->dtype);
    const std::uint64_t ce = sch::gemm_c_bytes(gg->dtype, gg->accumulate_fp32);
    std::uint64_t row = 0;
    for (std::size_t i = 0; i < gg->m.size(); ++i) {
      const bool fp8_group = gg->dtype == sch::DType::kFP8;
      b.call_of_group.push_back(gg->m[i] == 0 ? -1 : static_cast<int>(fp8_group ? b.fp8.size() : b.gemms.size()));
      if (gg->m[i] > 0 && fp8_group) {
        fp8(gg->m[i], gg->n, gg->k, gg->a_format, gg->b_format, gg->accumulate_fp32, gg->accumulate, row * gg->k,
            i * gg->k * gg->n, row * gg->n * ce);
      } else if (gg->m[i] > 0) {
        const auto* a = static_cast<const char*>(im_.buffer(Role::kGemmA)) + row * gg->k * e;
        const auto* bb = static_cast<const char*>(im_.buffer(Role::kGemmB)) + i * gg->k * gg->n * e;
        auto* cc = static_cast<char*>(im_.buffer(Role::kGemmC)) + row * gg->n * ce;
        GemmCall call = plain_gemm(gg->m[i], gg->n, gg->k, false, false, a, bb, cc, 1, cuda_dtype(gg->dtype));
        if (gg->accumulate_fp32) accumulate_into_fp32(call);
        if (gg->accumulate) accumulate_into_c(call);
        b.gemms.push_back(call);
      }
      row += gg->m[i];
    }
  } else if (const auto* at = std::get_if<sch::Attention>(&c.kernel)) {
    if (attention_kernel(*at) == AttentionKernel::kCudnnSdpa) {
      b.fused = at;
      b.sdpa = SdpaBuffers{im_.buffer(Role::kAttnQ),  im_.buffer(Role::kAttnK),     im_.buffer(Role::kAttnV),
                           im_.buffer(Role::kAttnO),  im_.buffer(Role::kAttnStats), im_.buffer(Role::kAttnDO),
                           im_.buffer(Role::kAttnDQ), im_.buffer(Role::kAttnDK),    im_.buffer(Role::kAttnDV)};
      im_.sdpa().prepare(*at);  // plans are built here, before any step
      return;
    }
    AttentionBuffers ab;
    ab.q = im_.buffer(Role::kAttnQ);
    ab.k = im_.buffer(Role::kAttnK);
    ab.v = im_.buffer(Role::kAttnV);
    ab.s = im_.buffer(Role::kAttnS);
    ab.o = im_.buffer(Role::kAttnO);
    ab.dout = im_.buffer(Role::kAttnDO);
    b.attention = attention_calls(*at, ab);
  }
}

// ---- watchdog bookkeeping ----

std::string Execution::describe_unfinished() const {
  const std::size_t n_issued = issued_.load();
  for (std::size_t i = 0; i < plan_.ops.size(); ++i) {
    const sch::Op& op = s_.ops[plan_.ops[i].op];
    const bool gpu = plan_.ops[i].gpu;
    bool done = i < n_issued;
    if (done && gpu) done = cudaEventQuery(bound_[i].end.get()) == cudaSuccess;
    if (done) continue;
    std::string where = gpu ? "stream \"" + s_.streams[op.stream].name + "\"" : std::string("host thread");
    std::string state = i < n_issued ? "issued, not complete" : "not issued yet";
    if (i == n_issued && std::holds_alternative<sch::HostSync>(op.body)) state = "host thread blocked in it";
    if (i < n_issued && plan_.ops[i].channel == kNoChannel &&
        (std::holds_alternative<sch::Send>(op.body) || std::holds_alternative<sch::Recv>(op.body))) {
      // Peer-mapped (peer_memory.hpp): its stream waits on a flag the peer's stream writes.
      state += std::holds_alternative<sch::Recv>(op.body)
                   ? "; its stream waits for rank " + std::to_string(plan_.ops[i].peer) + "'s send to raise its flag"
                   : "; its stream waits for rank " + std::to_string(plan_.ops[i].peer) +
                         " to receive the earlier message in its slot (the slot's credit)";
    }
    return "first unfinished op: " + quote_op(op) + " (" + kind_word(op) + ", " + where + ", " + state + ")";
  }
  return "all its ops of the step finished; it was waiting for the other ranks at the step barrier";
}

std::string Execution::describe_blocked() const {
  const std::size_t i = issued_.load();
  if (i >= plan_.ops.size()) return "between steps (MPI barrier or stream wait)";
  const sch::Op& op = s_.ops[plan_.ops[i].op];
  std::string where = plan_.ops[i].gpu ? "stream \"" + s_.streams[op.stream].name + "\"" : std::string("host thread");
  return "while issuing " + quote_op(op) + " (" + kind_word(op) + ", " + where + ")";
}

void Execution::poll() {
  if (!im_.watchdog->fired()) return;
  im_.watchdog->acknowledge();
  const int rank = im_.mpi.rank();
  const std::string msg = "rank " + std::to_string(rank) + " (" + im_.host + "): " + im_.watchdog->reason() + "; " +
                          describe_unfinished() + "; communicators aborted";
  im_.abort_all();
  throw BackendError("watchdog", 0, rank, msg);
}

void Execution::wait_event(cudaEvent_t ev) {
  while (true) {
    const cudaError_t st = cudaEventQuery(ev);
    if (st == cudaSuccess) return;
    if (st != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(st);
    poll();
  }
}

void Execution::wait_streams() {
  for (const auto& st : streams_) {
    while (true) {
      const cudaError_t q = cudaStreamQuery(st.get());
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(q);
      poll();
      std::this_thread::yield();
    }
  }
}

// ---- the issue loop ----

sch::Trace Execution::run() {
  const int total_steps = std::max(0, options_.warmup_steps) + std::max(1, options_.steps);
  im_.watchdog->set_blocked_description([this] { return describe_blocked(); });
  // The GPU monitor samples during the measured steps' GPU work only (from the origin to the streams' drain).
  struct StopMonitor {
    GpuMonitor& m;
    ~StopMonitor() { (void)m.stop(); }
  } stop_monitor_on_exit{*im_.monitor};
  im_.monitor->start();
  for (int step = 0; step < total_steps; ++step) run_step(step, step >= options_.warmup_steps);
  // A final barrier under the watchdog: a rank whose peers hang in the last step is caught here, not in MPI.
  im_.watchdog->arm(options_.timeout_s, "the barrier after the last step", comms_);
  issued_.store(plan_.ops.size());
  im_.mpi.barrier([this] { poll(); });
  im_.watchdog->disarm();
  return gather();
}

void Execution::run_step(int step, bool measured) {
  const std::string step_word = "step " + std::to_string(step) + (measured ? "" : " (warm-up)");
  // The deadline covers the barrier too, so a rank whose peers hang in the previous step is caught here.
  im_.watchdog->arm(options_.timeout_s, step_word, comms_);
  issued_.store(plan_.ops.size());  // during the barrier every op of the previous step is done
  im_.mpi.barrier([this] { poll(); });
  issued_.store(0);
  TWINSTEP_CUDA_CHECK(cudaEventRecord(origin_.get(), im_.dev->aux.get()));
  for (const auto& st : streams_) TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(st.get(), origin_.get(), 0));
  wait_event(origin_.get());
  const HostClock host{Clock::now()};
  if (measured) im_.monitor->begin_step(host.origin);
  im_.monitor->record(measured);
  const std::size_t n = plan_.ops.size();
  StepTimes times{std::vector<Nanos>(n, 0), std::vector<Nanos>(n, 0), std::vector<Nanos>(n, 0)};
  for (std::size_t i = 0; i < n; ++i) issue(i, times, host);
  wait_streams();
  im_.monitor->record(false);
  im_.watchdog->disarm();
  for (const auto& [hop, hbufs] : deferred_after_) options_.hook->after(*hop, hbufs);
  deferred_after_.clear();
  if (measured) record_step(times);
}

void Execution::issue(std::size_t i, StepTimes& times, const HostClock& host) {
  const PlannedOp& p = plan_.ops[i];
  const BoundOp& b = bound_[i];
  const sch::Op& op = s_.ops[p.op];
  if (im_.watchdog->fired()) poll();
  times.issue[i] = host.now();
  OpBuffers bufs{im_.buffer(Role::kCommSend), im_.buffer(Role::kCommRecv), p.bytes.send, p.bytes.recv};
  const bool peer_mapped = p.channel == kNoChannel && transports_.links != nullptr;
  if (peer_mapped && std::holds_alternative<sch::Recv>(op.body)) {
    bufs.recv = transports_.links->next_recv_slot(transports_.links->layout().link_of_op[op.id]);
    bufs.peer_slot = true;
  }
  const bool hooked = options_.hook != nullptr && p.gpu && !std::holds_alternative<sch::Compute>(op.body);
  const bool serial = hooked && options_.hook->serialize();
  if (serial) TWINSTEP_CUDA_CHECK(cudaStreamSynchronize(b.stream));
  if (hooked) options_.hook->before(op, bufs);
  if (hooked && !serial) deferred_after_.emplace_back(&op, bufs);
  if (p.gpu) {
    for (auto d : p.deps) TWINSTEP_CUDA_CHECK(cudaStreamWaitEvent(b.stream, bound_[d].end.get(), 0));
    TWINSTEP_CUDA_CHECK(cudaEventRecord(b.start.get(), b.stream));
  }
  if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
    issue_compute(*c, b);
  } else if (const auto* col = std::get_if<sch::Collective>(&op.body)) {
    issue_collective(*col, p, b);
  } else if (std::holds_alternative<sch::Send>(op.body) || std::holds_alternative<sch::Recv>(op.body)) {
    issue_p2p(op, p, b);
  } else if (const auto* h = std::get_if<sch::Host>(&op.body)) {
    times.start[i] = host.now();
    const auto until = Clock::now() + std::chrono::nanoseconds(h->duration_ns);
    while (Clock::now() < until) {
    }
    times.end[i] = host.now();
  } else if (std::holds_alternative<sch::HostSync>(op.body)) {
    times.start[i] = host.now();
    wait_event(bound_[p.host_sync].end.get());
    times.end[i] = host.now();
  }
  if (p.gpu) TWINSTEP_CUDA_CHECK(cudaEventRecord(b.end.get(), b.stream));
  if (serial) {
    wait_event(b.end.get());
    options_.hook->after(op, bufs);
  }
  issued_.store(i + 1, std::memory_order_relaxed);
}

void Execution::issue_compute(const sch::Compute& c, const BoundOp& b) {
  std::visit(
      [&](const auto& k) {
        using K = std::decay_t<decltype(k)>;
        if constexpr (std::is_same_v<K, sch::Gemm>) {
          for (const auto& g : b.gemms) run_gemm(b.blas, g);
          const float* scales = im_.fp8_scales();
          for (const auto& f : b.fp8)
            f.gemm.run(f.a, f.b, f.c, scales, scales + kFp8ScaleStride, b.workspace, b.stream);
        } else if constexpr (std::is_same_v<K, sch::GroupedGemm>) {
          const float* scales = im_.fp8_scales();
          im_.grouped().run(b.stream, b.call_of_group.size(), [&](std::size_t g, const GroupedSideStream& side) {
            const int call = b.call_of_group[g];
            if (call < 0) return;
            if (k.dtype == sch::DType::kFP8) {
              const auto& f = b.fp8[static_cast<std::size_t>(call)];
              f.gemm.run(f.a, f.b, f.c, scales, scales + kFp8ScaleStride, side.blas.workspace.get(), side.stream.get());
            } else {
              run_gemm(side.blas.handle.get(), b.gemms[static_cast<std::size_t>(call)]);
            }
          });
        } else if constexpr (std::is_same_v<K, sch::Attention>) {
          if (b.fused != nullptr) {
            im_.sdpa().run(*b.fused, b.sdpa, b.stream);
          } else {
            run_attention(b.blas, b.stream, b.attention);
          }
        } else if constexpr (std::is_same_v<K, sch::Elementwise>) {
          launch_elementwise(im_.buffer(Role::kElemIn), im_.buffer(Role::kElemOut), k.bytes / 2, kBandwidthKernelSms,
                             b.stream);
        } else if constexpr (std::is_same_v<K, sch::Optimizer>) {
          launch_adam(im_.buffer(Role::kOptParam), static_cast<float*>(im_.buffer(Role::kOptMaster)),
                      im_.buffer(Role::kOptGrad), static_cast<float*>(im_.buffer(Role::kOptM)),
                      static_cast<float*>(im_.buffer(Role::kOptV)), k.params, *kernel_dtype(k.param_dtype),
                      kBandwidthKernelSms, b.stream);
        } else if constexpr (std::is_same_v<K, sch::Memcpy>) {
          if (k.bytes == 0) return;
          switch (k.kind) {
            case sch::CopyKind::kD2H:
              TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im_.buffer(Role::kCopyHost), im_.buffer(Role::kCopyDev), k.bytes,
                                                  cudaMemcpyDeviceToHost, b.stream));
              break;
            case sch::CopyKind::kH2D:
              TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im_.buffer(Role::kCopyDev), im_.buffer(Role::kCopyHost), k.bytes,
                                                  cudaMemcpyHostToDevice, b.stream));
              break;
            case sch::CopyKind::kD2D:
              TWINSTEP_CUDA_CHECK(cudaMemcpyAsync(im_.buffer(Role::kCopyDev2), im_.buffer(Role::kCopyDev), k.bytes,
                                                  cudaMemcpyDeviceToDevice, b.stream));
              break;
          }
        }
      },
      c.kernel);
}

void Execution::issue_collective(const sch::Collective& c, const PlannedOp& p, const BoundOp& b) {
  void* sb = im_.buffer(Role::kCommSend);
  void* rb = im_.buffer(Role::kCommRecv);
  const ncclDataType_t dt = nccl_dtype(c.dtype);
  const std::uint64_t e = sch::dtype_bytes(c.dtype);
  switch (c.kind) {
    case sch::CollectiveKind::kAllReduce:
      TWINSTEP_NCCL_CHECK(ncclAllReduce(sb, rb, p.bytes.send / e, dt, ncclSum, b.comm, b.stream));
      break;
    case sch::CollectiveKind::kAllGather:
      TWINSTEP_NCCL_CHECK(ncclAllGather(sb, rb, p.bytes.send / e, dt, b.comm, b.stream));
      break;
    case sch::CollectiveKind::kReduceScatter:
      TWINSTEP_NCCL_CHECK(ncclReduceScatter(sb, rb, p.bytes.recv / e, dt, ncclSum, b.comm, b.stream));
      break;
    case sch::CollectiveKind::kBroadcast:
      TWINSTEP_NCCL_CHECK(ncclBroadcast(sb, rb, p.bytes.send / e, dt, p.peer, b.comm, b.stream));
      break;
    case sch::CollectiveKind::kAllToAll: {
      // Per-peer sizes in bytes: sends packed by member position, receives likewise.
      std::uint64_t so = 0, ro = 0;
      TWINSTEP_NCCL_CHECK(ncclGroupStart());
      for (int j = 0; j < p.channel_size; ++j) {
        const std::uint64_t sn = c.send_bytes[static_cast<std::size_t>(j)];
        const std::uint64_t rn = p.bytes.a2a_recv[static_cast<std::size_t>(j)];
        if (sn > 0) TWINSTEP_NCCL_CHECK(ncclSend(static_cast<char*>(sb) + so, sn, ncclUint8, j, b.comm, b.stream));
        if (rn > 0) TWINSTEP_NCCL_CHECK(ncclRecv(static_cast<char*>(rb) + ro, rn, ncclUint8, j, b.comm, b.stream));
        so += sn;
        ro += rn;
      }
      TWINSTEP_NCCL_CHECK(ncclGroupEnd());
      break;
    }
  }
}

void Execution::issue_p2p(const sch::Op& op, const PlannedOp& p, const BoundOp& b) {
  const auto* snd = std::get_if<sch::Send>(&op.body);
  const auto* rcv = std::get_if<sch::Recv>(&op.body);
  if (p.channel == kNoChannel) {  // copy_engine / sm_kernel over peer-mapped memory (peer_link.hpp)
    TWINSTEP_ASSERT(transports_.links != nullptr, "peer-mapped send/recv without links");
    if (snd != nullptr) {
      transports_.links->send(op, im_.buffer(Role::kCommSend), snd->bytes, b.stream);
    } else {
      transports_.links->recv(op, b.stream);
    }
    return;
  }
  if (snd != nullptr) {
    TWINSTEP_NCCL_CHECK(ncclSend(im_.buffer(Role::kCommSend), snd->bytes, ncclUint8, p.peer, b.comm, b.stream));
  } else {
    TWINSTEP_NCCL_CHECK(ncclRecv(im_.buffer(Role::kCommRecv), rcv->bytes, ncclUint8, p.peer, b.comm, b.stream));
  }
}

void Execution::record_step(const StepTimes& times) {
  Nanos lo = INT64_MAX, hi = 0;
  for (std::size_t i = 0; i < plan_.ops.size(); ++i) {
    Nanos st = times.start[i], en = times.end[i];
    if (plan_.ops[i].gpu) {
      float ms_start = 0, ms_end = 0;
      TWINSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms_start, origin_.get(), bound_[i].start.get()));
      TWINSTEP_CUDA_CHECK(cudaEventElapsedTime(&ms_end, origin_.get(), bound_[i].end.get()));
      st = static_cast<Nanos>(static_cast<double>(ms_start) * 1e6);
      en = static_cast<Nanos>(static_cast<double>(ms_end) * 1e6);
    }
    issue_ns_[i].push_back(times.issue[i]);
    start_ns_[i].push_back(st);
    end_ns_[i].push_back(en);
    lo = std::min(lo, times.issue[i]);
    hi = std::max(hi, en);
  }
  if (plan_.ops.empty()) lo = 0;
  step_bounds_.push_back(lo);
  step_bounds_.push_back(hi);
}

// ---- the trace ----

sch::Trace Execution::gather() {
  std::vector<std::int64_t> mine;
  mine.reserve(plan_.ops.size() * 4);
  for (std::size_t i = 0; i < plan_.ops.size(); ++i) {
    // Separate medians of issue, start and end: an order that holds in every step (a dep, stream FIFO, end after
    // start) holds between the medians too, which a median duration added to a median start would not guarantee.
    mine.push_back(plan_.ops[i].op);
    mine.push_back(median(issue_ns_[i]));
    mine.push_back(median(start_ns_[i]));
    mine.push_back(median(end_ns_[i]));
  }
  const auto all = im_.mpi.all_gather(mine);
  const auto bounds = im_.mpi.all_gather(step_bounds_);
  const auto hosts = im_.mpi.all_gather(im_.host);
  const auto monitor_reports = im_.mpi.all_gather(encode_report(im_.monitor->stop()));
  if (options_.monitor_series != nullptr) *options_.monitor_series = im_.gather_monitor_series();

  sch::Trace trace;
  trace.producer = "backend";
  trace.schedule = transports_.asked;
  trace.records.resize(s_.ops.size());
  for (std::size_t i = 0; i + 3 < all.size(); i += 4) {
    const auto id = static_cast<std::size_t>(all[i]);
    auto& r = trace.records[id];
    r.op = static_cast<sch::OpId>(id);
    r.rank = s_.ops[id].rank;
    r.issue_ns = all[i + 1];
    r.start_ns = all[i + 2];
    r.end_ns = all[i + 3];
  }
  const std::size_t nsteps = step_bounds_.size() / 2;
  for (std::size_t k = 0; k < nsteps; ++k) {
    Nanos lo = INT64_MAX, hi = 0;
    for (std::size_t r = 0; r + 1 < bounds.size(); r += 2 * nsteps) {
      lo = std::min(lo, bounds[r + 2 * k]);
      hi = std::max(hi, bounds[r + 2 * k + 1]);
    }
    trace.step_times_ns.push_back(hi - lo);
  }
  write_context(trace, hosts, monitor_reports);
  return trace;
}

void Execution::write_context(sch::Trace& trace, const std::vector<std::string>& hosts,
                              const std::vector<std::string>& monitor_reports) const {
  cudaDeviceProp prop{};
  TWINSTEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, im_.device));
  int driver = 0, runtime = 0, nccl = 0;
  TWINSTEP_CUDA_CHECK(cudaDriverGetVersion(&driver));
  TWINSTEP_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  TWINSTEP_NCCL_CHECK(ncclGetVersion(&nccl));
  std::string host_list;
  for (const auto& h : hosts) host_list += (host_list.empty() ? "" : ",") + h;
  auto& ctx = trace.context;
  ctx["producer"] = "backend";
  ctx["gpu"] = prop.name;
  ctx["gpu_count"] = std::to_string(im_.mpi.size());
  ctx["cuda_driver"] = std::to_string(driver / 1000) + "." + std::to_string((driver % 1000) / 10);
  ctx["cuda_runtime"] = std::to_string(runtime / 1000) + "." + std::to_string((runtime % 1000) / 10);
  ctx["nccl"] =
      std::to_string(nccl / 10000) + "." + std::to_string((nccl % 10000) / 100) + "." + std::to_string(nccl % 100);
  int cublas_major = 0, cublas_minor = 0, cublas_patch = 0;
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &cublas_major));
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &cublas_minor));
  TWINSTEP_CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &cublas_patch));
  ctx["cublas"] =
      std::to_string(cublas_major) + "." + std::to_string(cublas_minor) + "." + std::to_string(cublas_patch);
  // Which attention kernels ran (sdpa.hpp: cuDNN's fused attention where built and taken, else GEMM + softmax).
  bool fused = false, fallback = false;
  for (const auto& op : s_.ops) {
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      if (const auto* at = std::get_if<sch::Attention>(&c->kernel)) {
        (attention_kernel(*at) == AttentionKernel::kCudnnSdpa ? fused : fallback) = true;
      }
    }
  }
  const std::string fused_name = attention_kernel_name(AttentionKernel::kCudnnSdpa);
  const std::string fallback_name = attention_kernel_name(AttentionKernel::kGemmSoftmax);
  ctx["attention_kernel"] = fused && fallback ? fused_name + "," + fallback_name
                            : fused           ? fused_name
                            : fallback        ? fallback_name
                                              : "none";
  if (im_.dev->sdpa) ctx["cudnn"] = im_.dev->sdpa->version();
  // How the grouped-GEMM ops ran (grouped_gemm.hpp: Transformer Engine's multi-stream cuBLAS grouped GEMM).
  std::size_t grouped_ops = 0, max_groups = 0;
  for (const auto& op : s_.ops) {
    if (const auto* c = std::get_if<sch::Compute>(&op.body)) {
      if (const auto* gg = std::get_if<sch::GroupedGemm>(&c->kernel)) {
        ++grouped_ops;
        max_groups = std::max(max_groups, gg->m.size());
      }
    }
  }
  if (grouped_ops > 0) ctx["grouped_gemm"] = grouped_gemm_note(grouped_ops, max_groups);
  // What ran the send/recv transports other than nccl (peer_memory.hpp): as asked over peer-mapped memory, or
  // NCCL send/recv where two ranks cannot map each other; never hidden.
  const std::string ran = transport_ran_text(transports_ran(transports_.asked, s_));
  if (!ran.empty()) {
    ctx["transport_ran"] = ran;
    const std::string fell = fallback_text(transports_.fallbacks);
    ctx["transport_note"] =
        fell.empty() ? std::string(
                           "copy_engine: cudaMemcpyAsync into the receiver's CUDA IPC-mapped slot; sm_kernel: "
                           "a copy kernel of sm_count blocks into it; flags raised and awaited by one-thread kernels "
                           "(as userbuffers), double-buffered slots")
                     : fell;
  }
  ctx["hosts"] = host_list;
  ctx["git_revision"] = TWINSTEP_GIT_REVISION;
  ctx["date"] = iso_date_utc();
  ctx["warmup_steps"] = std::to_string(options_.warmup_steps);
  ctx["steps"] = std::to_string(std::max(1, options_.steps));
  ctx["timing"] =
      "per op: medians over measured steps of issue, start and end separately; GPU ops timed by "
      "cudaEvents recorded on the op's stream around it; host ops by steady_clock";
  std::vector<GpuMonitorReport> per_rank;
  for (const auto& text : monitor_reports) per_rank.push_back(decode_report(text));
  write_monitor_context(per_rank, ctx);
  ctx["clock_alignment"] =
      "per step: barrier, origin event on every stream; device times relative to the origin event, host times "
      "relative to the first host instant the origin was seen complete (offset <= polling latency, few us)";
}

/// Refuses, with every reason, a schedule that can_execute() objects to.
void require_executable(const sch::Schedule& s, const DeviceInfo& info) {
  const auto diags = can_execute(s, info);
  if (diags.empty()) return;
  std::string msg = "the backend cannot execute schedule \"" + s.name + "\":";
  for (const auto& d : diags) {
    msg += "\n  ";
    if (d.op != sch::kNoOp) msg += quote_op(s.ops[d.op]) + " ";
    if (!d.field.empty()) msg += d.field + ": ";
    msg += d.message;
  }
  throw NotFeasibleError(msg);
}

/// When the watchdog has fired: acknowledges, aborts the communicators and throws, saying `during` what.
void throw_if_fired(Runtime::Impl& im, const std::string& during) {
  if (!im.watchdog->fired()) return;
  im.watchdog->acknowledge();
  const int rank = im.mpi.rank();
  const std::string msg = "rank " + std::to_string(rank) + " (" + im.host + "): " + im.watchdog->reason() + " (" +
                          during + "); communicators aborted";
  im.abort_all();
  throw BackendError("watchdog", 0, rank, msg);
}

/// Creates and connects the channels' communicators under the watchdog: a peer that never arrives is caught here.
void connect_channels(Runtime::Impl& im, const ChannelPlan& channels, double timeout_s) {
  im.watchdog->arm(timeout_s, "creating and connecting the NCCL communicators", im.all_comms());
  im.watchdog->set_blocked_description(
      [] { return std::string("in ncclCommSplit or a connection warm-up exchange (before the first step)"); });
  im.ensure_channels(channels);
  while (true) {
    const cudaError_t q = cudaStreamQuery(im.dev->aux.get());
    if (q == cudaSuccess) break;
    if (q != cudaErrorNotReady) TWINSTEP_CUDA_CHECK(q);
    throw_if_fired(im, "a connection warm-up exchange did not complete");
    std::this_thread::yield();
  }
  im.watchdog->disarm();
}

/// Runs `f` (blocking bootstrap calls: MPI gathers, barriers) under the watchdog: a rank whose peers never arrive is
/// ended by it (Watchdog: a host thread blocked in a call), naming `what`.
template <typename F>
auto under_watchdog(Runtime::Impl& im, double timeout_s, const std::string& what, F&& f) {
  im.watchdog->arm(timeout_s, what, im.all_comms());
  im.watchdog->set_blocked_description([what] { return "in " + what + " (an MPI call of the bootstrap)"; });
  struct Disarm {
    Watchdog& w;
    ~Disarm() { w.disarm(); }
  } disarm{*im.watchdog};
  return f();
}

/// Each rank's end of the peer-mapped links (peer_link.hpp), opened through the MPI bootstrap.
std::unique_ptr<PeerLinks> open_links(Runtime::Impl& im, const PeerLayout& layout, double timeout_s) {
  return under_watchdog(im, timeout_s, "the exchange of the peer-mapped buffers' CUDA IPC handles", [&] {
    MpiHandleExchange exchange(im.mpi);
    return std::make_unique<PeerLinks>(layout, static_cast<sch::RankId>(im.mpi.rank()), exchange);
  });
}

/// Closes the links once every rank's streams drained (after Execution::run's last barrier).
void close_links(Runtime::Impl& im, PeerLinks& links, double timeout_s) {
  under_watchdog(im, timeout_s, "closing the peer-mapped buffers", [&] {
    links.close([&] { im.mpi.barrier([&] { throw_if_fired(im, "a rank did not reach the peer buffers' close"); }); });
  });
}

}  // namespace

sch::Trace Runtime::execute(const sch::Schedule& s, const Options& options) {
  Impl& im = *impl_;
  if (im.broken) {
    throw BackendError("watchdog", 0, rank(),
                       "rank " + std::to_string(rank()) +
                           ": the communicators were aborted after an earlier failure; start a new run");
  }
  require_executable(s, device_info());
  TWINSTEP_CUDA_CHECK(cudaSetDevice(im.device));
  // Whatever way execute() is left, the watchdog stops watching and forgets this call's state.
  struct Disarm {
    Watchdog& w;
    ~Disarm() {
      w.disarm();
      w.set_blocked_description(nullptr);
    }
  } disarm_on_exit{*im.watchdog};

  // Peer-mapped send/recv (copy_engine, sm_kernel) between ranks that cannot map each other's memory run as NCCL
  // ones (peer_memory.hpp); every plan below is made from the schedule as it runs.
  std::vector<Fallback> fallbacks;
  std::optional<sch::Schedule> with;
  if (!plan_peer_layout(s).empty()) {
    const auto views = under_watchdog(im, options.timeout_s, "the exchange of the ranks' hosts and GPUs",
                                      [&] { return gather_rank_views(im.mpi, im.host, im.device); });
    with = with_fallbacks(s, reach_matrix(views), &fallbacks);
  }
  const sch::Schedule& ran = with ? *with : s;
  const sch::Matching matching = sch::match(ran);
  const ChannelPlan channels = plan_channels(ran, matching);
  connect_channels(im, channels, options.timeout_s);
  RankPlan plan = plan_rank(ran, matching, channels, static_cast<sch::RankId>(rank()));
  im.ensure_buffers(plan.buffers);
  im.ensure_blas(std::max<std::size_t>(1, ran.streams.size()));
  const PeerLayout layout = plan_peer_layout(ran);
  std::unique_ptr<PeerLinks> links;
  if (!layout.empty()) links = open_links(im, layout, options.timeout_s);
  const Transports transports{s, ran, std::move(fallbacks), links.get()};
  sch::Trace trace;
  {
    Execution run(im, transports, options, channels, std::move(plan));
    trace = run.run();
  }
  if (links) close_links(im, *links, options.timeout_s);
  return trace;
}

}  // namespace twinstep::backend
