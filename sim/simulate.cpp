// simulate(): checks that the schedule fits the cluster, matches communication ops, runs the semantics core
// against the chosen resource model and assembles the trace with its context (cluster, profile, fidelity, hash).
#include "sim/simulate.hpp"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "common/assert.hpp"
#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/hash.hpp"
#include "common/process.hpp"
#include "common/units.hpp"
#include "schedule/matching.hpp"
#include "sim/resource_model.hpp"

namespace twinstep::sim {

namespace {

void hash_kernel(Fnv1a& f, const schedule::Kernel& k) {
  f.value(k.index());
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, schedule::Gemm>) {
          f.value(x.m), f.value(x.n), f.value(x.k), f.value(x.batch), f.value(x.dtype), f.value(x.accumulate_fp32),
              f.value(x.accumulate);
        } else if constexpr (std::is_same_v<T, schedule::GroupedGemm>) {
          f.list(x.m), f.value(x.n), f.value(x.k), f.value(x.dtype), f.value(x.accumulate_fp32), f.value(x.accumulate);
        } else if constexpr (std::is_same_v<T, schedule::Attention>) {
          f.value(x.batch), f.value(x.heads_q), f.value(x.heads_kv), f.value(x.seq_q), f.value(x.seq_kv);
          f.value(x.head_dim), f.value(x.causal), f.value(x.backward), f.value(x.dtype);
        } else if constexpr (std::is_same_v<T, schedule::Elementwise>) {
          f.value(x.bytes), f.value(x.flops);
        } else if constexpr (std::is_same_v<T, schedule::Optimizer>) {
          f.value(x.params), f.value(x.param_dtype);
        } else {
          f.value(x.bytes), f.value(x.kind);
        }
      },
      k);
}

schedule::Trace run(const schedule::Schedule& schedule, const topologies::Cluster& cluster, const CostModel& costs,
                    const Options& options);

}  // namespace

// Analytic for predict, simulate and sweep alike, so that a sweep row and `twinstep predict` with the same flags give
// the same number (issue 20); flow (link sharing on NVLink ports, NICs and fabric links) is asked for by name. The
// two agree within 0.4 % on the 8-GPU validation cases (docs/calibration.md); they part where links are shared.
Fidelity default_fidelity() { return Fidelity::kAnalytic; }

namespace {
constexpr NameTable<Fidelity, 2> kFidelities{{{"analytic", Fidelity::kAnalytic}, {"flow", Fidelity::kFlow}}};
}  // namespace

Fidelity parse_fidelity(std::string_view text, std::string_view field) { return parse_name(kFidelities, text, field); }

std::string to_string(Fidelity fidelity) { return name_of(kFidelities, fidelity); }

bool flow_links_private(const topologies::Cluster& cluster) {
  switch (cluster.fabric.kind) {
    case topologies::FabricKind::kSingleSwitch:
      return true;
    case topologies::FabricKind::kFatTree:
      return cluster.num_nodes <= cluster.fabric.nodes_per_group;
  }
  return false;  // not reached: the switch names every kind
}

void check_available(Fidelity fidelity) {
  if (fidelity == Fidelity::kFlow && !flow_model_available()) {
    throw Error(
        "--fidelity flow: this build has no SimGrid (apt-get install libsimgrid-dev pkg-config, then "
        "reconfigure with -DTWINSTEP_SIMGRID=ON); use --fidelity analytic");
  }
}

std::string schedule_fingerprint(const schedule::Schedule& s) {
  Fnv1a f;
  f.text(s.name);
  f.value(s.world_size);
  f.list(s.ranks);
  f.value(s.streams.size());
  for (const auto& st : s.streams) f.text(st.name), f.value(st.priority);
  f.value(s.communicators.size());
  for (const auto& c : s.communicators) f.text(c.name), f.text(c.kind), f.list(c.members);
  f.value(s.ops.size());
  for (const auto& op : s.ops) {
    f.value(op.rank), f.value(op.stream), f.text(op.name), f.list(op.deps), f.value(op.body.index());
    std::visit(
        [&](const auto& b) {
          using T = std::decay_t<decltype(b)>;
          if constexpr (std::is_same_v<T, schedule::Compute>) {
            hash_kernel(f, b.kernel), f.value(b.sm_count);
          } else if constexpr (std::is_same_v<T, schedule::Collective>) {
            f.value(b.kind), f.value(b.comm), f.value(b.bytes), f.value(b.dtype), f.list(b.send_bytes), f.value(b.root);
          } else if constexpr (std::is_same_v<T, schedule::Send> || std::is_same_v<T, schedule::Recv>) {
            f.value(b.comm), f.value(b.peer), f.value(b.bytes), f.value(b.tag);
            // Mixed only when not the default: schedules without transports keep their fingerprints.
            if (b.transport != schedule::Transport::kNccl) f.value(b.transport), f.value(b.sm_count);
          } else if constexpr (std::is_same_v<T, schedule::Host>) {
            f.value(b.duration_ns);
          } else {
            f.value(b.target);
          }
        },
        op.body);
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(f.digest()));
  return buf;
}

schedule::Trace simulate(const schedule::Schedule& schedule, const topologies::Cluster& cluster, const CostModel& costs,
                         const Options& options) {
  schedule::Trace trace = run(schedule, cluster, costs, options);
  trace.schedule = schedule;
  return trace;
}

schedule::Trace simulate(schedule::Schedule&& schedule, const topologies::Cluster& cluster, const CostModel& costs,
                         const Options& options) {
  schedule::Trace trace = run(schedule, cluster, costs, options);
  trace.schedule = std::move(schedule);
  return trace;
}

namespace {

#ifndef TWINSTEP_HAVE_SIMGRID
}  // namespace

bool flow_model_available() { return false; }
std::string flow_engine_version() { return ""; }
std::unique_ptr<ResourceModel> make_flow_model(const SimContext&) {
  check_available(Fidelity::kFlow);
  return nullptr;  // not reached: check_available throws without SimGrid
}

namespace {
#endif

void write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) ::_exit(3);
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace

// The child writes 'R' + record count + raw records, or 'E'/'N'/'X' + message for Error / NotFeasibleError / any other
// exception, then _exit()s.
std::vector<schedule::OpRecord> run_in_child(const std::function<std::vector<schedule::OpRecord>()>& work,
                                             const schedule::Schedule& schedule) {
  int fds[2];
  if (::pipe(fds) != 0) throw Error(std::string("--fidelity flow: pipe() failed: ") + std::strerror(errno));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw Error(std::string("--fidelity flow: fork() failed: ") + std::strerror(errno));
  }
  if (pid == 0) {
    die_with_parent(parent);
    ::close(fds[0]);
    char tag = 'X';
    std::string msg;
    try {
      const auto records = work();
      tag = 'R';
      const std::uint64_t n = records.size();
      write_all(fds[1], &tag, 1);
      write_all(fds[1], &n, sizeof n);
      write_all(fds[1], records.data(), n * sizeof(schedule::OpRecord));
      ::close(fds[1]);
      ::_exit(0);
    } catch (const NotFeasibleError& e) {
      tag = 'N';
      msg = e.what();
    } catch (const Error& e) {
      tag = 'E';
      msg = e.what();
    } catch (const std::exception& e) {
      msg = e.what();
    }
    write_all(fds[1], &tag, 1);
    write_all(fds[1], msg.data(), msg.size());
    ::close(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string data;
  char buf[1 << 16];
  while (true) {
    const ssize_t r = ::read(fds[0], buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    data.append(buf, static_cast<std::size_t>(r));
  }
  ::close(fds[0]);
  int status = 0;
  rusage usage{};
  while (::wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) {
    // ru_maxrss is in KiB on Linux.
    const double peak_rss_bytes = static_cast<double>(usage.ru_maxrss) * 1024.0;
    const int sig = WTERMSIG(status);
    const std::string what = "--fidelity flow: the simulation process was killed by signal " + std::to_string(sig) +
                             " (" + std::string(strsignal(sig)) + ") at a peak memory (RSS) of " +
                             format_bytes(peak_rss_bytes) + ", simulating schedule \"" + schedule.name + "\" (" +
                             std::to_string(schedule.ops.size()) + " ops on " + std::to_string(schedule.ranks.size()) +
                             " of " + std::to_string(schedule.world_size) + " ranks)";
    if (sig == SIGKILL) {
      // The out-of-memory killer's signal (or a user's kill -9): the schedule does not fit this machine's memory.
      throw NotFeasibleError(
          what +
          "; SIGKILL is what the out-of-memory killer sends: use --fidelity analytic, or fewer "
          "ranks / symmetry reduction (predict simulates one representative per DP replica where the "
          "fabric's links are per GPU, and above " +
          std::to_string(kSymmetryReductionAboveGpus) + " GPUs, unless --no-reduce is given)");
    }
    throw Error(what + "; this is a bug (please report it); --fidelity analytic avoids the flow engine",
                ExitCode::kInternal);
  }
  if (data.empty() || WEXITSTATUS(status) != 0) {
    throw Error("--fidelity flow: the simulation process exited with status " + std::to_string(WEXITSTATUS(status)) +
                    " without a result (SimGrid aborted?)",
                ExitCode::kInternal);
  }
  const std::string msg = data.substr(1);
  switch (data[0]) {
    case 'R': {
      std::uint64_t n = 0;
      TWINSTEP_ASSERT(data.size() >= 1 + sizeof n, "short flow result");
      std::memcpy(&n, data.data() + 1, sizeof n);
      TWINSTEP_ASSERT(data.size() == 1 + sizeof n + n * sizeof(schedule::OpRecord), "flow result size mismatch");
      std::vector<schedule::OpRecord> records(n);
      std::memcpy(static_cast<void*>(records.data()), data.data() + 1 + sizeof n, n * sizeof(schedule::OpRecord));
      return records;
    }
    case 'N':
      throw NotFeasibleError(msg);
    case 'E':
      throw Error(msg);
    default:
      throw Error("--fidelity flow: internal error in the simulation process: " + msg);
  }
}

void check_ranks_fit(const schedule::Schedule& schedule, const topologies::Cluster& cluster, std::uint32_t needed) {
  if (needed <= cluster.num_gpus()) return;
  const std::uint32_t gpn = cluster.node.gpus_per_node;
  throw NotFeasibleError("schedule \"" + schedule.name + "\" needs " + std::to_string(needed) + " ranks but " +
                         cluster.describe() + " has " + std::to_string(cluster.num_gpus()) + " GPUs; pass --gpus " +
                         std::to_string(needed) + " (or --nodes " + std::to_string((needed + gpn - 1) / gpn) + " of " +
                         std::to_string(gpn) + " GPUs)");
}

namespace {

schedule::Trace run(const schedule::Schedule& schedule, const topologies::Cluster& cluster, const CostModel& costs,
                    const Options& options) {
  check_available(options.fidelity);
  std::uint32_t needed = schedule.world_size;
  for (auto r : schedule.ranks) needed = std::max(needed, r + 1);
  // The ops' ranks: the core checks them in its own pass over the ops (run_semantics), before the analytic model runs
  // anything; the flow model is built (in its child) before the core, so for it they are checked here.
  if (options.fidelity == Fidelity::kFlow) {
    for (const auto& op : schedule.ops) needed = std::max(needed, op.rank + 1);
  }
  check_ranks_fit(schedule, cluster, needed);
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  auto t0 = Clock::now();
  schedule::Matching matching = schedule::match(schedule);
  if (options.timings != nullptr) options.timings->match_s = seconds_since(t0);
  if (options.fidelity == Fidelity::kFlow) {
    // The flow model routes a transfer between the GPUs of its two ends; a mirrored pair has one.
    for (std::size_t i = 0; i < schedule.ops.size(); ++i) {
      if (std::holds_alternative<schedule::Send>(schedule.ops[i].body) && matching.partner[i] != schedule::kNoOp &&
          schedule.ops[matching.partner[i]].rank == schedule.ops[i].rank) {
        throw Error("schedule \"" + schedule.name + "\": op " + std::to_string(i) + " \"" + schedule.ops[i].name +
                    "\" is a send mirrored on its own rank (TP ranks mirrored): --fidelity flow "
                    "needs every TP rank present; lower with one representative per DP replica or use analytic");
      }
    }
  }
  const SimContext ctx{schedule, matching, cluster, costs};

  schedule::Trace trace;
  trace.producer = "sim";
  t0 = Clock::now();
  if (options.fidelity == Fidelity::kFlow) {
    trace.records = run_in_child(
        [&ctx] {
          // Never destroyed: the child _exit()s, and destroying SimGrid activities still running (after an error)
          // prints a backtrace per activity.
          ResourceModel* model = make_flow_model(ctx).release();
          return run_semantics(ctx, *model);
        },
        schedule);
  } else {
    auto model = make_analytic_model(ctx);
    trace.records = run_semantics(ctx, *model);
    if (options.solo_compute_out != nullptr) {
      if (const auto solo = model->solo_compute_s()) *options.solo_compute_out = *solo;
    }
  }
  if (options.timings != nullptr) options.timings->run_s = seconds_since(t0);
  if (options.matching_out != nullptr) *options.matching_out = std::move(matching);  // the run is over
  Nanos first = 0, last = 0;
  bool any = false;
  for (const auto& r : trace.records) {
    if (!any) {
      first = r.issue_ns;
      last = r.end_ns;
      any = true;
    }
    first = std::min(first, r.issue_ns);
    last = std::max(last, r.end_ns);
  }
  trace.step_times_ns.push_back(last - first);
  trace.context = options.context;
  trace.context["cluster"] = cluster.describe();
  trace.context["gpu"] = cluster.node.gpu.name;
  trace.context["profile"] = costs.profile().name;
  trace.context["fidelity"] = to_string(options.fidelity);
  if (options.schedule_hash) trace.context["schedule_hash"] = schedule_fingerprint(schedule);
  if (options.fidelity == Fidelity::kFlow) {
    trace.context["simulator"] = "twinstep 0.1.0 sim/flow (" + flow_engine_version() + ")";
  } else {
    trace.context["simulator"] = "twinstep 0.1.0 sim/analytic";
    trace.context["model_limits"] =
        "analytic: communication activities share only each GPU's NIC (per direction, by NCCL connections); "
        "contention between collectives on NVLink ports and fabric uplinks (two collectives crossing one NVLink "
        "port, traffic leaving a group through an oversubscribed leaf) is not modelled: use --fidelity flow";
  }
  std::size_t present = schedule.ranks.size();
  if (present > 0 && present < schedule.world_size) {
    trace.context["symmetry_reduction"] = std::to_string(present) + " of " + std::to_string(schedule.world_size) +
                                          " ranks simulated; absent members of communicators mirror present ones";
  }
  return trace;
}

}  // namespace

}  // namespace twinstep::sim
