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

/// The lines of `results` (one key each), sorted by (point index, key): the order of every results file written.
std::string sorted_lines(const std::vector<Result>& results) {
  std::vector<const Result*> sorted;
  sorted.reserve(results.size());
  for (const auto& r : results) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](const Result* a, const Result* b) {
    return a->index != b->index ? a->index < b->index : a->key < b->key;
  });
  std::string out;
  for (const Result* r : sorted) out += r->line + "\n";
  return out;
}

constexpr NameTable<PointStatus, 5> kPointStatuses{{{"ok", PointStatus::kOk},
                                                    {"invalid", PointStatus::kInvalid},
                                                    {"does_not_fit", PointStatus::kDoesNotFit},
                                                    {"cannot_win", PointStatus::kCannotWin},
                                                    {"error", PointStatus::kError}}};
}  // namespace

PointStatus parse_point_status(std::string_view text, std::string_view field) {
  return parse_name(kPointStatuses, text, field);
}

std::string to_string(PointStatus status) { return name_of(kPointStatuses, status); }

Result result_from_line(const std::string& line, const std::string& source) {
  const nlohmann::json j = parse_json(line, source);
  if (!j.is_object() || !j.contains("key") || !j.contains("status") || !j.contains("point") ||
      !j["point"].is_number_unsigned() || !j["status"].is_string()) {
    throw ParseError(source, "", "not a sweep result line (needs point, key, status)");
  }
  Result r;
  r.index = j["point"].get<std::size_t>();
  r.point = point_from_inputs(j["key"], source);
  r.point.index = r.index;
  r.key = point_key(r.point);
  r.status =
      reading_names(source, "/status", [&] { return parse_point_status(j["status"].get<std::string>(), "status"); });
  r.reason = j.value("reason", "");
  if (r.status == PointStatus::kInvalid) r.point.invalid_reason = r.reason;
  r.step_time_s = j.value("step_time_s", 0.0);
  r.profile = j.value("profile_used", "");
  r.mfu = j.value("mfu", 0.0);
  r.tflops_per_gpu = j.value("tflops_per_gpu", 0.0);
  r.memory_gib = j.value("memory_gib_per_gpu", 0.0);
  r.capacity_gib = j.value("memory_capacity_gib", 0.0);
  r.usable_gib = j.value("memory_usable_gib", 0.0);
  if (j.contains("breakdown_s") && j["breakdown_s"].is_object()) {
    for (const auto& [k, v] : j["breakdown_s"].items()) {
      if (v.is_number()) r.breakdown_s[k] = v.get<double>();
    }
  }
  if (j.contains("warnings") && j["warnings"].is_array()) {
    for (const auto& w : j["warnings"]) {
      if (w.is_string()) r.warnings.push_back(w.get<std::string>());
    }
  }
  r.line = line;
  return r;
}

std::vector<Result> read_results(const std::string& path, std::size_t* torn) {
  const std::string text = read_file(path);
  std::vector<Result> out;
  std::size_t start = 0, line_no = 0;
  if (torn != nullptr) *torn = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    const bool last = end == std::string::npos;
    if (last) end = text.size();
    ++line_no;
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    try {
      out.push_back(result_from_line(line, path + ":" + std::to_string(line_no)));
    } catch (const Error& e) {
      // A writer killed mid-line leaves an unterminated last line: drop it (resume re-runs that point).
      if (last || start >= text.size()) {
        if (torn != nullptr) ++*torn;
        continue;
      }
      throw;
    }
  }
  return out;
}

namespace {

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

/// What the parent sends a worker per point: its position and the step time above which it cannot win (infinity:
/// no pruning).
struct Task {
  std::uint64_t pos = 0;
  double prune_above_s = std::numeric_limits<double>::infinity();
};

/// A worker process's loop: reads tasks from `fd`, answers each with its point's JSON line, exits at the end of its
/// input (or with 4 when the parent is gone).
[[noreturn]] void worker_main(int fd, const std::vector<Point>& points, bool extrapolate) {
  std::uintptr_t advised = keep_freed_memory();
  Task task;
  while (read_all(fd, &task, sizeof task)) {
    advise_huge_pages(&advised);  // what the last point grew
    if (task.pos >= points.size() ||
        !write_all(fd, evaluate_point(points[task.pos], extrapolate, task.prune_above_s) + "\n")) {
      ::_exit(4);
    }
  }
  ::_exit(0);
}

/// The sweep's results as they come back: each point's line appended to the output and flushed at once (a killed
/// sweep loses only the points in flight), the progress display, and per ranking group the best step time so far,
/// which goes with each point to its worker when pruning (options.prune).
class Recorder {
 public:
  Recorder(const std::vector<Point>& points, const RunOptions& options, Resumed& resumed, RunStats& st)
      : points_(points),
        options_(options),
        lines_(resumed.lines),
        done_(resumed.done),
        st_(st),
        out_(open_for_append(options.output)),
        progress_(options, points.size()),
        finished_(st.resumed) {
    for (std::size_t i = 0; i < points.size(); ++i) {
      if (done_[i]) note_best(i, lines_[i]);  // resumed
    }
  }

  [[nodiscard]] bool done(std::size_t pos) const { return done_[pos]; }

  /// Point `pos`'s line, unless it has one: kept, appended to the output and flushed.
  void record(std::size_t pos, const std::string& line) {
    if (done_[pos]) return;
    done_[pos] = true;
    lines_[pos] = line;
    note_best(pos, line);
    if (std::fputs((line + "\n").c_str(), out_.get()) < 0 || std::fflush(out_.get()) != 0) {
      throw Error(options_.output + ": write failed: " + std::strerror(errno));
    }
    ++finished_;
    ++st_.evaluated;
    progress_.update(finished_);
  }

  /// The step time above which point `pos` cannot win: its group's best so far (infinity: none, or no pruning).
  [[nodiscard]] double prune_above(std::size_t pos) const {
    const auto it = best_s_.find(group_of(points_[pos]));
    return it != best_s_.end() ? it->second : std::numeric_limits<double>::infinity();
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
  void note_best(std::size_t pos, const std::string& line) {
    if (!options_.prune) return;
    const Result r = result_from_line(line, options_.output);
    if (r.status != PointStatus::kOk) return;
    const auto [it, fresh] = best_s_.emplace(group_of(points_[pos]), r.step_time_s);
    if (!fresh) it->second = std::min(it->second, r.step_time_s);
  }

  const std::vector<Point>& points_;
  const RunOptions& options_;
  std::vector<std::string>& lines_;
  std::vector<bool>& done_;
  RunStats& st_;
  File out_;
  Progress progress_;
  std::size_t finished_;
  std::map<GroupKey, double> best_s_;
};

/// The points that need a worker, in the order they are handed out, with each one's estimated cost in `cost`.
/// Invalid points need no worker: the layout rules' and the lowering's checks (rejection_reason, which loads the
/// models, clusters, profiles and configs once here: forked workers inherit them) give the line evaluate_point
/// gives, recorded at once. The costliest points first (ties in point order): a large point started last would run
/// alone at the end. When pruning, the cheapest first instead: they set a best step time early, and the costly ones
/// that cannot beat it are pruned rather than simulated.
std::vector<std::size_t> runnable_in_order(const std::vector<Point>& points, const RunOptions& options, Recorder& rec,
                                           std::vector<double>& cost) {
  const bool prune = options.prune;
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
  std::stable_sort(runnable.begin(), runnable.end(),
                   [&](std::size_t a, std::size_t b) { return prune ? cost[a] < cost[b] : cost[a] > cost[b]; });
  return runnable;
}

/// The forked workers. They take one point at a time, the next as soon as they answer, so every job stays busy
/// until the end however uneven the points; a worker evaluates up to max_points_per_worker analytic points (its heap
/// warm for the next), and a flow point gets a fresh process of its own (SimGrid: one engine per process). The point
/// of a worker that died is retried once, in a fresh worker's turn; a second death is recorded as the point's error.
class WorkerPool {
 public:
  WorkerPool(const std::vector<Point>& points, const RunOptions& options,
             const std::map<std::string, std::size_t>& wanted, Recorder& rec, const std::vector<double>& cost,
             const std::vector<std::size_t>& order)
      : points_(points),
        options_(options),
        wanted_(wanted),
        rec_(rec),
        cost_(cost),
        jobs_(std::max(1u, options.jobs)),
        eta_(jobs_),
        todo_(order.begin(), order.end()) {
    // For the ETA, a point of unknown cost counts as the mean known one.
    double work = 0;
    std::size_t known = 0;
    for (std::size_t pos : order) {
      work += cost[pos];
      known += cost[pos] > 0;
    }
    mean_cost_ = known > 0 ? work / static_cast<double>(known) : 1.0;
    for (std::size_t pos : order) eta_.queued(pos, eta_cost(pos));
    rec_.progress().set_estimator(&eta_);
  }
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool() { rec_.progress().set_estimator(nullptr); }

  /// Until every point has its line. On an error, the workers are killed and the error goes on.
  void run() {
    try {
      while (!todo_.empty() || !workers_.empty()) {
        while (!todo_.empty() && workers_.size() < jobs_) spawn();
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
  [[nodiscard]] double eta_cost(std::size_t pos) const { return cost_[pos] > 0 ? cost_[pos] : mean_cost_; }
  [[nodiscard]] bool is_flow(std::size_t pos) const { return points_[pos].fidelity == sim::Fidelity::kFlow; }

  /// Hands `w` the next point, or tells it to exit (no points left, its limit reached, or a flow point next).
  void send_next(Worker& w) {
    if (w.closing) return;
    if (todo_.empty() || w.points.size() >= w.limit || (!w.points.empty() && is_flow(todo_.front()))) {
      ::shutdown(w.fd, SHUT_WR);  // the worker exits once it reads the end
      w.closing = true;
      return;
    }
    Task task;
    task.pos = todo_.front();
    todo_.pop_front();
    w.points.push_back(task.pos);
    eta_.started(task.pos, rec_.progress().now_s());
    if (options_.prune) task.prune_above_s = rec_.prune_above(task.pos);
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
    w.limit = is_flow(todo_.front()) ? 1 : std::max<std::size_t>(1, options_.max_points_per_worker);
    workers_.push_back(std::move(w));
    send_next(workers_.back());
  }

  /// Reads what `w` sent and records each complete line, handing it its next point. False: `w` closed.
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
      const Result r = result_from_line(line, "worker");
      const auto it = wanted_.find(r.key);
      TWINSTEP_ASSERT(it != wanted_.end(), "worker reported an unknown point %zu", r.index);
      eta_.finished(it->second, rec_.progress().now_s(), r.status == PointStatus::kOk);
      rec_.record(it->second, line);
      send_next(w);
    }
    return true;
  }

  /// Reaps `w`; the points it took without answering are retried once, then recorded as errors.
  void finish(Worker& w) {
    int status = 0;
    while (::waitpid(w.pid, &status, 0) < 0 && errno == EINTR) {
    }
    ::close(w.fd);
    std::vector<std::size_t> missing;
    for (std::size_t pos : w.points) {
      if (!rec_.done(pos)) missing.push_back(pos);
    }
    if (missing.empty()) return;
    std::string why = WIFSIGNALED(status) ? "worker process killed by signal " + std::to_string(WTERMSIG(status))
                                          : "worker process exited with status " + std::to_string(WEXITSTATUS(status));
    for (std::size_t pos : missing) {
      eta_.finished(pos, rec_.progress().now_s(), false);
      if (retried_.insert(pos).second) {
        todo_.push_front(pos);  // once more, in a fresh worker's turn: a second death names the point
        eta_.queued(pos, eta_cost(pos));
      } else {
        rec_.record(pos, status_line(points_[pos], PointStatus::kError, why + " while evaluating this point"));
      }
    }
  }

  const std::vector<Point>& points_;
  const RunOptions& options_;
  const std::map<std::string, std::size_t>& wanted_;
  Recorder& rec_;
  const std::vector<double>& cost_;
  double mean_cost_ = 1.0;
  unsigned jobs_;
  EtaEstimator eta_;
  std::deque<std::size_t> todo_;
  std::vector<Worker> workers_;
  std::set<std::size_t> retried_;
};

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
  {
    WorkerPool pool(points, options, wanted, rec, cost, order);
    pool.run();
    rec.close();
  }

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

std::string merge_results(const std::vector<std::string>& inputs, std::size_t* lines_in,
                          std::vector<std::string>* conflicts) {
  if (inputs.empty()) throw Error("merge: give at least one JSON-lines file");
  std::map<std::string, Result> by_key;
  std::size_t n = 0;
  for (const auto& path : inputs) {
    for (auto& r : read_results(path)) {
      ++n;
      const auto it = by_key.find(r.key);
      if (it == by_key.end()) {
        by_key.emplace(r.key, std::move(r));
      } else if (it->second.line != r.line && conflicts != nullptr) {
        conflicts->push_back(path + ": point " + std::to_string(r.index) +
                             " differs from an earlier file's line; "
                             "kept the first");
      }
    }
  }
  std::vector<Result> all;
  all.reserve(by_key.size());
  for (auto& [k, r] : by_key) all.push_back(std::move(r));
  if (lines_in != nullptr) *lines_in = n;
  return sorted_lines(all);
}

}  // namespace twinstep::sweep
