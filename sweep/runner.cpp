// The process pool of a sweep, and its results file (JSON lines: read, resume, merge); evaluating one point is
// evaluate_point.cpp. The parent forks workers (fork, no exec: the grid is already in memory)
// and hands each one point at a time over a socket (up to max_points_per_worker; a flow point gets a process of its
// own: SimGrid allows one engine per process); the worker answers with the point's JSON line, and the parent appends
// each line to the output file and flushes it, so a killed sweep loses at most the points in flight. The point a
// dead worker was evaluating is retried once.
#include "sweep/runner.hpp"

#include <malloc.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "common/assert.hpp"
#include "common/enum_names.hpp"
#include "common/error.hpp"
#include "common/io.hpp"
#include "common/json.hpp"
#include "common/process.hpp"
#include "common/units.hpp"
#include "evaluate/evaluate.hpp"
#include "evaluate/periodic.hpp"
#include "models/limits.hpp"
#include "models/lower.hpp"
#include "models/model_spec.hpp"
#include "models/recipe.hpp"
#include "models/run_config.hpp"
#include "schedule/analysis.hpp"
#include "sim/simulate.hpp"
#include "sweep/bound_order.hpp"
#include "sweep/eta.hpp"
#include "sweep/report.hpp"
#include "topologies/cluster.hpp"

namespace twinstep::sweep {
namespace {
bool write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

/// A worker lowers and simulates one schedule after another, each of the same tens of MB: keep the freed memory in
/// the heap for the next one instead of returning it to the kernel and faulting it in again (~15% of a worker's CPU
/// time). glibc's defaults mmap large blocks afresh and trim the heap top. No block is mmapped at all (M_MMAP_MAX 0):
/// the threshold cannot go above 32 MiB on 64-bit, and the largest schedules' op and state vectors are above it,
/// so they were mapped, faulted in page by page and unmapped again at every point (a quarter of a `--parallel
/// auto` grid's CPU time in the kernel's page-fault path, bench/results/scale.md). The heap grows kHeapStep at a time
/// and is backed by transparent huge pages where the kernel offers them on request
/// (/sys/kernel/mm/transparent_hugepage/enabled "madvise" or "always"): a simulation walks ops spread over MBs rank by
/// rank, and 2 MiB pages cut its page faults and TLB misses (~10% of a worker's CPU time on the sweep benchmark;
/// docs/performance.md). Without THP the advice is ignored.
constexpr std::size_t kHeapStep = std::size_t{64} << 20;
constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;

/// Asks for huge pages on the heap grown since `*from` (its first call: the worker's heap), and moves `*from` on.
void advise_huge_pages(std::uintptr_t* from) {
  const auto top = reinterpret_cast<std::uintptr_t>(::sbrk(0));
  const std::uintptr_t begin = (*from + kHugePage - 1) & ~(kHugePage - 1);
  const std::uintptr_t end = top & ~(kHugePage - 1);
  if (end > begin && ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) == 0) *from = end;
}

/// Sets a worker's heap up (above); returns where its huge-page advice starts.
std::uintptr_t keep_freed_memory() {
  ::mallopt(M_MMAP_MAX, 0);
  ::mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  ::mallopt(M_TOP_PAD, static_cast<int>(kHeapStep));
  // Grow the heap by a step before the first point touches it (freed blocks stay: no trimming), so that the advice
  // covers it: blocks below the mmap threshold until the break moves.
  const auto from = reinterpret_cast<std::uintptr_t>(::sbrk(0));
  std::vector<void*> blocks;
  while (reinterpret_cast<std::uintptr_t>(::sbrk(0)) - from < kHeapStep && blocks.size() < 16) {
    blocks.push_back(std::malloc(kHeapStep / 4));
  }
  for (void* b : blocks) std::free(b);
  std::uintptr_t advised = from;
  advise_huge_pages(&advised);
  return advised;
}

/// A worker process and the socket to it: the parent sends the position of one point at a time, the worker answers
/// with the point's JSON line; a shutdown of the parent's sending side tells it to exit.
struct Worker {
  pid_t pid = -1;
  int fd = -1;
  std::vector<std::size_t> points;  ///< Positions sent to it, in order; all but the last have their line back.
  std::size_t answered = 0;         ///< Of `points`, those whose line came back.
  std::size_t limit = 1;            ///< Points it may evaluate before it is told to exit.
  bool closing = false;             ///< Told to exit.
  std::string buffer;
};

bool read_all(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

std::string format_duration(double s) {
  if (s < 0 || !std::isfinite(s)) return "--";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

class Progress {
 public:
  Progress(const RunOptions& o, std::size_t total)
      : out_(o.progress ? o.progress_out : nullptr),
        tty_(out_ != nullptr && ::isatty(::fileno(out_)) != 0),
        total_(total),
        start_(std::chrono::steady_clock::now()),
        last_(start_) {}

  void update(std::size_t done, bool final = false) {
    if (out_ == nullptr || total_ == 0) return;
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    // ETA fitted on the simulated points (sweep/eta.hpp); unknown until the first one is back. Computed only when
    // printed: it walks the points left.
    auto eta = [&] { return eta_ != nullptr ? eta_->seconds_left(elapsed) : -1.0; };
    if (tty_) {
      if (!final && std::chrono::duration<double>(now - last_).count() < 0.1) return;
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * done / total_);
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.append(static_cast<std::size_t>(kWidth - filled), '.');
      std::fprintf(out_, "\r[%s] %zu/%zu %3.0f%%  elapsed %s  ETA %s   ", bar.c_str(), done, total_,
                   100.0 * static_cast<double>(done) / static_cast<double>(total_), format_duration(elapsed).c_str(),
                   format_duration(eta()).c_str());
      if (final) std::fputc('\n', out_);
    } else {
      // Plain lines: every 10% of the points or every 30 s, and at the end.
      const std::size_t step = std::max<std::size_t>(1, total_ / 10);
      const bool due =
          final || done / step != printed_ / step || std::chrono::duration<double>(now - last_).count() >= 30;
      if (!due || done == printed_) return;
      std::fprintf(out_, "sweep: %zu/%zu points done, elapsed %s, ETA %s\n", done, total_,
                   format_duration(elapsed).c_str(), format_duration(eta()).c_str());
      printed_ = done;
    }
    std::fflush(out_);
    last_ = now;
  }

  /// Seconds since the progress started: the clock of the ETA estimator.
  [[nodiscard]] double now_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  /// The ETA from here on comes from `eta` (fed with now_s() times).
  void set_estimator(const EtaEstimator* eta) { eta_ = eta; }

 private:
  const EtaEstimator* eta_ = nullptr;
  std::FILE* out_;
  bool tty_;
  std::size_t total_;
  std::size_t printed_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

/// What an output file already holds (resume): the old lines of this sweep's points are its results; the lines of
/// other points (earlier sweeps into the same file) stay in the file as they are.
struct Resumed {
  std::vector<std::string> lines;  ///< Per point of the sweep: its line when done.
  std::vector<bool> done;
  /// The file's lines: first those of other points (`others` of them, kept to the end), then this sweep's.
  std::vector<Result> file_lines;
  std::size_t others = 0;
};

Resumed resume(const std::string& output, const std::map<std::string, std::size_t>& wanted, RunStats& st) {
  Resumed out;
  out.lines.resize(wanted.size());
  out.done.assign(wanted.size(), false);
  if (!std::filesystem::exists(output)) return out;
  std::set<std::string> seen;
  std::vector<Result> resumed;
  for (auto& r : read_results(output, &st.torn)) {
    if (!seen.insert(r.key).second) {
      ++st.duplicates;
      continue;
    }
    const auto it = wanted.find(r.key);
    if (it == wanted.end()) {
      out.file_lines.push_back(std::move(r));
      continue;
    }
    out.done[it->second] = true;
    out.lines[it->second] = r.line;
    resumed.push_back(std::move(r));
    ++st.resumed;
  }
  st.kept = out.others = out.file_lines.size();
  for (auto& r : resumed) out.file_lines.push_back(std::move(r));
  return out;
}

/// What a worker does with a point: evaluate it (its line), or screen it (pass 1 of pruning: its line when it will not
/// be simulated, else its bound).
enum class Job : std::uint64_t { kEvaluate, kScreen };

/// What the parent sends a worker per point.
struct Task {
  std::uint64_t pos = 0;
  Job job = Job::kEvaluate;
};

/// A worker's answer to a screening: the point's line, or {"lower_bound_s", "bound_what"} (no "status") when it is to
/// be simulated. JSON numbers read back to the same double.
std::string screened_reply(const Screened& s) {
  if (!s.line.empty()) return s.line;
  nlohmann::ordered_json j;
  j["lower_bound_s"] = s.bound_s;
  j["bound_what"] = s.bound_what;
  return j.dump();
}

Screened parse_screened(const std::string& reply) {
  const nlohmann::json j = parse_json(reply, "worker");
  if (j.contains("status")) return {reply, 0, ""};
  return {"", j.at("lower_bound_s").get<double>(), j.at("bound_what").get<std::string>()};
}

/// A worker process's loop: reads tasks from `fd`, answers each with one line, exits at the end of its input (or
/// with 4 when the parent is gone).
[[noreturn]] void worker_main(int fd, const std::vector<Point>& points, bool extrapolate) {
  std::uintptr_t advised = keep_freed_memory();
  Task task;
  while (read_all(fd, &task, sizeof task)) {
    advise_huge_pages(&advised);  // what the last point grew
    if (task.pos >= points.size()) ::_exit(4);
    const Point& p = points[task.pos];
    const std::string reply =
        task.job == Job::kScreen ? screened_reply(screen_point(p)) : evaluate_point(p, extrapolate);
    if (!write_all(fd, reply + "\n")) ::_exit(4);
  }
  ::_exit(0);
}

/// The sweep's results as they come back: each point's line appended to the output and flushed at once (a killed
/// sweep loses only the points in flight), and the progress display.
class Recorder {
 public:
  Recorder(const std::vector<Point>& points, const RunOptions& options, Resumed& resumed, RunStats& st)
      : options_(options),
        lines_(resumed.lines),
        done_(resumed.done),
        st_(st),
        out_(open_for_append(options.output)),
        progress_(options, points.size()),
        finished_(st.resumed) {}

  [[nodiscard]] bool done(std::size_t pos) const { return done_[pos]; }
  [[nodiscard]] const std::string& line(std::size_t pos) const { return lines_[pos]; }

  /// Point `pos`'s line, unless it has one: kept, appended to the output and flushed.
  void record(std::size_t pos, const std::string& line) {
    if (done_[pos]) return;
    done_[pos] = true;
    lines_[pos] = line;
    if (std::fputs((line + "\n").c_str(), out_.get()) < 0 || std::fflush(out_.get()) != 0) {
      throw Error(options_.output + ": write failed: " + std::strerror(errno));
    }
    ++finished_;
    ++st_.evaluated;
    progress_.update(finished_);
  }

  [[nodiscard]] Progress& progress() { return progress_; }
  void show_progress() { progress_.update(finished_); }
  /// The last progress line; the output file closed.
  void close() {
    progress_.update(finished_, true);
    out_.reset();
  }

 private:
  using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;
  static File open_for_append(const std::string& path) {
    std::FILE* f = std::fopen(path.c_str(), "a");
    if (f == nullptr) throw Error(path + ": cannot open for appending: " + std::strerror(errno));
    return {f, &std::fclose};
  }

  const RunOptions& options_;
  std::vector<std::string>& lines_;
  std::vector<bool>& done_;
  RunStats& st_;
  File out_;
  Progress progress_;
  std::size_t finished_;
};

/// The points that need a worker, costliest first (ties in point order: a large point started last would run alone
/// at the end), with each one's estimated cost in `cost`. Invalid points need no worker: the layout rules' and the
/// lowering's checks (rejection_reason, which loads the models, clusters, profiles and configs once here: forked
/// workers inherit them) give the line evaluate_point gives, recorded at once.
std::vector<std::size_t> runnable_in_order(const std::vector<Point>& points, const RunOptions& options, Recorder& rec,
                                           std::vector<double>& cost) {
  TWINSTEP_ASSERT(options.rejections == nullptr || options.rejections->size() == points.size(),
                  "run_sweep: %zu rejection reasons for %zu points", options.rejections->size(), points.size());
  std::vector<std::size_t> runnable;
  for (std::size_t i = 0; i < points.size(); ++i) {
    if (rec.done(i)) continue;
    const std::string reason = options.rejections != nullptr ? (*options.rejections)[i] : rejection_reason(points[i]);
    if (!reason.empty()) {
      rec.record(i, status_line(points[i], PointStatus::kInvalid, reason));
    } else {
      runnable.push_back(i);
    }
  }
  for (std::size_t pos : runnable) cost[pos] = estimated_cost(points[pos]);
  std::stable_sort(runnable.begin(), runnable.end(), [&](std::size_t a, std::size_t b) { return cost[a] > cost[b]; });
  return runnable;
}

/// The points a WorkerPool hands out, and what becomes of the answers.
class Source {
 public:
  Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  virtual ~Source() = default;
  /// The next point to hand out; none when no more will come.
  [[nodiscard]] virtual std::optional<std::size_t> next() = 0;
  /// A worker's answer for point `pos` (or the point's error line when its worker died twice).
  virtual void answered(std::size_t pos, const std::string& reply) = 0;
};

/// Points in a fixed order, each answer recorded as the point's line.
class ListSource final : public Source {
 public:
  ListSource(const std::vector<std::size_t>& order, Recorder& rec) : todo_(order.begin(), order.end()), rec_(rec) {}
  std::optional<std::size_t> next() override {
    if (todo_.empty()) return std::nullopt;
    const std::size_t pos = todo_.front();
    todo_.pop_front();
    return pos;
  }
  void answered(std::size_t pos, const std::string& reply) override { rec_.record(pos, reply); }

 private:
  std::deque<std::size_t> todo_;
  Recorder& rec_;
};

/// Pass 1 of pruning: every point screened in a fixed order; a point not to be simulated gets its line, the others
/// their bound.
class ScreenSource final : public Source {
 public:
  ScreenSource(const std::vector<std::size_t>& order, Recorder& rec, std::map<std::size_t, Screened>& bounds)
      : list_(order, rec), rec_(rec), bounds_(bounds) {}
  std::optional<std::size_t> next() override { return list_.next(); }
  void answered(std::size_t pos, const std::string& reply) override {
    Screened s = parse_screened(reply);
    if (!s.line.empty()) {
      rec_.record(pos, s.line);
    } else {
      bounds_[pos] = std::move(s);
    }
  }

 private:
  ListSource list_;
  Recorder& rec_;
  std::map<std::size_t, Screened>& bounds_;
};

/// Pass 2 of pruning: the points with a bound simulated in BoundOrder's order; each line recorded once the order
/// decides its point (a simulated line held until then), a pruned point's line written here.
class BoundSource final : public Source {
 public:
  BoundSource(const std::vector<Point>& points, const std::map<std::size_t, Screened>& bounds, BoundOrder& order,
              Recorder& rec, EtaEstimator& eta)
      : points_(points), bounds_(bounds), order_(order), rec_(rec), eta_(eta) {
    record_decided();  // groups already won by resumed points
  }
  std::optional<std::size_t> next() override {
    auto pos = order_.next();
    record_decided();  // a group closed on the way
    return pos;
  }
  void answered(std::size_t pos, const std::string& reply) override {
    const Result r = result_from_line(reply, "worker");
    held_[pos] = reply;
    order_.finished(pos, r.status == PointStatus::kOk ? std::optional<double>(r.step_time_s) : std::nullopt);
    for (const std::size_t hopeless : order_.take_hopeless()) eta_.finished(hopeless, rec_.progress().now_s(), false);
    record_decided();
  }

 private:
  void record_decided() {
    for (const BoundOrder::Decision& d : order_.take_decided()) {
      const auto held = held_.find(d.pos);
      if (d.simulated) {
        TWINSTEP_ASSERT(held != held_.end(), "bound order: point %zu decided before it came back", d.pos);
        rec_.record(d.pos, held->second);
      } else {
        const Screened& s = bounds_.at(d.pos);
        rec_.record(d.pos, cannot_win_line(points_[d.pos], s.bound_s, s.bound_what, d.best_s));
        eta_.finished(d.pos, rec_.progress().now_s(), false);
      }
      if (held != held_.end()) held_.erase(held);
    }
  }

  const std::vector<Point>& points_;
  const std::map<std::size_t, Screened>& bounds_;
  BoundOrder& order_;
  Recorder& rec_;
  EtaEstimator& eta_;
  std::map<std::size_t, std::string> held_;  ///< Lines back but not decided yet.
};

/// The forked workers. They take one point at a time, the next as soon as they answer, so every job stays busy
/// until the end however uneven the points; a worker evaluates up to max_points_per_worker analytic points (its heap
/// warm for the next), and a flow point to evaluate gets a fresh process of its own (SimGrid: one engine per
/// process). The point of a worker that died is retried once, in a fresh worker's turn; a second death gives the
/// point its error line.
class WorkerPool {
 public:
  /// `eta` (may be null) is told when each point starts and comes back; `cost` is each point's estimated cost.
  WorkerPool(const std::vector<Point>& points, const RunOptions& options, Job job, Source& source, Recorder& rec,
             const std::vector<double>& cost, EtaEstimator* eta)
      : points_(points),
        options_(options),
        job_(job),
        source_(source),
        rec_(rec),
        cost_(cost),
        eta_(eta),
        jobs_(std::max(1u, options.jobs)) {}

  /// Until every point handed out is answered. On an error, the workers are killed and the error goes on.
  void run() {
    try {
      // A point is taken from the source only when a worker is free for it (peek's short-circuit): the bound order
      // picks it with every result back by then.
      while (!workers_.empty() || peek()) {
        while (workers_.size() < jobs_ && peek()) spawn();
        std::vector<pollfd> pfds;
        for (const auto& w : workers_) pfds.push_back(pollfd{w.fd, POLLIN, 0});
        if (::poll(pfds.data(), pfds.size(), 1000) < 0) {
          if (errno == EINTR) continue;
          throw Error(std::string("sweep: poll failed: ") + std::strerror(errno));
        }
        rec_.show_progress();
        for (std::size_t k = 0; k < workers_.size();) {
          const bool closed = (pfds[k].revents & (POLLIN | POLLHUP | POLLERR)) != 0 && !read_lines(workers_[k]);
          if (closed) {
            finish(workers_[k]);
            // pfds is indexed like workers: swap-remove both.
            std::swap(workers_[k], workers_.back());
            std::swap(pfds[k], pfds.back());
            workers_.pop_back();
            pfds.pop_back();
          } else {
            ++k;
          }
        }
      }
    } catch (...) {
      for (auto& w : workers_) {
        ::kill(w.pid, SIGKILL);
        ::waitpid(w.pid, nullptr, 0);
        ::close(w.fd);
      }
      throw;
    }
  }

 private:
  [[nodiscard]] bool is_flow(std::size_t pos) const {
    return job_ == Job::kEvaluate && points_[pos].fidelity == sim::Fidelity::kFlow;
  }

  /// The next point to hand out (a retry first), left in ahead_; none when no more will come.
  std::optional<std::size_t> peek() {
    if (ahead_.empty()) {
      if (const auto pos = source_.next()) ahead_.push_back(*pos);
    }
    return ahead_.empty() ? std::nullopt : std::optional<std::size_t>(ahead_.front());
  }

  /// Hands `w` the next point, or tells it to exit (no points left, its limit reached, or a flow point next).
  void send_next(Worker& w) {
    if (w.closing) return;
    const auto next = peek();
    if (!next || w.points.size() >= w.limit || (!w.points.empty() && is_flow(*next))) {
      ::shutdown(w.fd, SHUT_WR);  // the worker exits once it reads the end
      w.closing = true;
      return;
    }
    Task task;
    task.pos = *next;
    task.job = job_;
    ahead_.pop_front();
    w.points.push_back(*next);
    if (eta_ != nullptr) eta_->started(*next, rec_.progress().now_s());
    // A worker that died meanwhile is found by its end of file; its point is retried then (finish).
    (void)::send(w.fd, &task, sizeof task, MSG_NOSIGNAL);
  }

  void spawn() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
      throw Error(std::string("sweep: socketpair failed: ") + std::strerror(errno));
    }
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::string("sweep: fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      die_with_parent(parent);
      ::close(fds[0]);
      worker_main(fds[1], points_, options_.extrapolate);
    }
    ::close(fds[1]);
    Worker w;
    w.pid = pid;
    w.fd = fds[0];
    w.limit = is_flow(*peek()) ? 1 : std::max<std::size_t>(1, options_.max_points_per_worker);
    workers_.push_back(std::move(w));
    send_next(workers_.back());
  }

  /// Reads what `w` sent and hands each complete line to the source, handing `w` its next point. False: `w` closed.
  bool read_lines(Worker& w) {
    char buf[65536];
    const ssize_t n = ::read(w.fd, buf, sizeof buf);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return false;
    if (n < 0) return true;
    w.buffer.append(buf, static_cast<std::size_t>(n));
    std::size_t nl;
    while ((nl = w.buffer.find('\n')) != std::string::npos) {
      const std::string line = w.buffer.substr(0, nl);
      w.buffer.erase(0, nl + 1);
      // One point at a time: the answer is the last point sent.
      TWINSTEP_ASSERT(w.answered < w.points.size(), "worker %d answered a point it was not sent", int(w.pid));
      const std::size_t pos = w.points[w.answered++];
      if (eta_ != nullptr) {
        eta_->finished(pos, rec_.progress().now_s(),
                       job_ == Job::kEvaluate && result_from_line(line, "worker").status == PointStatus::kOk);
      }
      source_.answered(pos, line);
      send_next(w);
    }
    return true;
  }

  /// Reaps `w`; the point it took without answering is retried once, then answered with its error line.
  void finish(Worker& w) {
    int status = 0;
    while (::waitpid(w.pid, &status, 0) < 0 && errno == EINTR) {
    }
    ::close(w.fd);
    if (w.answered == w.points.size()) return;
    const std::string why = WIFSIGNALED(status)
                                ? "worker process killed by signal " + std::to_string(WTERMSIG(status))
                                : "worker process exited with status " + std::to_string(WEXITSTATUS(status));
    for (std::size_t k = w.answered; k < w.points.size(); ++k) {
      const std::size_t pos = w.points[k];
      if (eta_ != nullptr) eta_->finished(pos, rec_.progress().now_s(), false);
      if (retried_.insert(pos).second) {
        ahead_.push_front(pos);  // once more, in a fresh worker's turn: a second death names the point
        if (eta_ != nullptr) eta_->queued(pos, cost_[pos]);
      } else {
        source_.answered(pos, status_line(points_[pos], PointStatus::kError, why + " while evaluating this point"));
      }
    }
  }

  const std::vector<Point>& points_;
  const RunOptions& options_;
  Job job_;
  Source& source_;
  Recorder& rec_;
  const std::vector<double>& cost_;
  EtaEstimator* eta_;
  unsigned jobs_;
  std::deque<std::size_t> ahead_;
  std::vector<Worker> workers_;
  std::set<std::size_t> retried_;
};

/// The ETA's cost of each point of `order`: its estimated cost, or the mean known one where unknown (0).
void fill_unknown_costs(const std::vector<std::size_t>& order, std::vector<double>& cost) {
  double work = 0;
  std::size_t known = 0;
  for (std::size_t pos : order) {
    work += cost[pos];
    known += cost[pos] > 0;
  }
  const double mean = known > 0 ? work / static_cast<double>(known) : 1.0;
  for (std::size_t pos : order) {
    if (cost[pos] <= 0) cost[pos] = mean;
  }
}

/// Pruning's two passes over the runnable points `order` (RunOptions::prune).
void run_pruned(const std::vector<Point>& points, const RunOptions& options, Recorder& rec,
                const std::vector<std::size_t>& order, std::vector<double>& cost, RunStats& st) {
  std::map<std::size_t, Screened> bounds;
  {
    ScreenSource screen(order, rec, bounds);
    WorkerPool(points, options, Job::kScreen, screen, rec, cost, nullptr).run();
  }
  // Ranking groups numbered; the best step of each among the points already in the file (a resumed sweep).
  std::map<GroupKey, std::size_t> group_ids;
  std::vector<double> best_known;
  auto group_id = [&](const Point& p) {
    const auto [it, fresh] = group_ids.emplace(group_of(p), group_ids.size());
    if (fresh) best_known.push_back(std::numeric_limits<double>::infinity());
    return it->second;
  };
  std::vector<BoundOrder::Candidate> candidates;
  std::vector<std::size_t> simulated;
  for (const auto& [pos, s] : bounds) {
    candidates.push_back({pos, group_id(points[pos]), s.bound_s, cost[pos]});
    simulated.push_back(pos);
  }
  for (std::size_t i = 0; i < points.size(); ++i) {
    if (!rec.done(i) || bounds.count(i) != 0) continue;
    const std::size_t g = group_id(points[i]);
    const Result r = result_from_line(rec.line(i), options.output);
    if (r.status == PointStatus::kOk) best_known[g] = std::min(best_known[g], r.step_time_s);
  }
  st.bounded = candidates.size();
  // With several workers, all but one may take the costliest point the rule may still need (sweep/bound_order.hpp):
  // the longest simulation is not left to run alone at the end, and one worker always takes the next in order, whose
  // steps prune. One worker gains nothing from it and runs no point ahead.
  BoundOrder bound_order(std::move(candidates), best_known, options.jobs > 1 ? options.jobs - 1 : 0);
  EtaEstimator eta(std::max(1u, options.jobs));
  fill_unknown_costs(simulated, cost);
  for (std::size_t pos : simulated) eta.queued(pos, cost[pos]);
  rec.progress().set_estimator(&eta);
  {
    BoundSource source(points, bounds, bound_order, rec, eta);
    WorkerPool(points, options, Job::kEvaluate, source, rec, cost, &eta).run();
  }
  rec.progress().set_estimator(nullptr);
  TWINSTEP_ASSERT(bound_order.done(), "run_sweep: the bound order left points undecided");
  st.discarded = bound_order.discarded();
}

}  // namespace

std::vector<Result> run_sweep(const std::vector<Point>& points, const RunOptions& options, RunStats* stats) {
  TWINSTEP_ASSERT(!options.output.empty(), "run_sweep needs an output path");
  const auto t0 = std::chrono::steady_clock::now();
  RunStats st;
  st.total = points.size();
  std::map<std::string, std::size_t> wanted;  // key -> position in points
  for (std::size_t i = 0; i < points.size(); ++i) wanted.emplace(point_key(points[i]), i);

  Resumed resumed = resume(options.output, wanted, st);
  write_file_atomic(options.output, sorted_lines(resumed.file_lines));
  Recorder rec(points, options, resumed, st);
  std::vector<double> cost(points.size(), 0.0);  // estimated, for the order of the workers' points and the ETA
  const std::vector<std::size_t> order = runnable_in_order(points, options, rec, cost);
  if (options.prune) {
    run_pruned(points, options, rec, order, cost, st);
  } else {
    fill_unknown_costs(order, cost);
    EtaEstimator eta(std::max(1u, options.jobs));
    for (std::size_t pos : order) eta.queued(pos, cost[pos]);
    rec.progress().set_estimator(&eta);
    ListSource source(order, rec);
    WorkerPool(points, options, Job::kEvaluate, source, rec, cost, &eta).run();
    rec.progress().set_estimator(nullptr);
  }
  rec.close();

  // The union sorted by (index, key): a resumed run ends with the same bytes as an uninterrupted one.
  std::vector<Result> results;
  results.reserve(points.size());
  for (std::size_t i = 0; i < points.size(); ++i) {
    TWINSTEP_ASSERT(resumed.done[i], "point %zu was never evaluated", points[i].index);
    results.push_back(result_from_line(resumed.lines[i], options.output));
  }
  std::vector<Result>& file_lines = resumed.file_lines;
  file_lines.resize(resumed.others);
  file_lines.insert(file_lines.end(), results.begin(), results.end());
  write_file_atomic(options.output, sorted_lines(file_lines));
  st.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stats != nullptr) *stats = st;
  return results;
}

}  // namespace twinstep::sweep
