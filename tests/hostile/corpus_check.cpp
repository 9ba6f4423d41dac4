// torshpkg-corpus-check DIR [--time-budget CPU-SECONDS] [--rss-budget MIB] [--only SUBSTRING] [--verbose]
//
// Runs every case of DIR/cases.json (written by gen-corpus.py) through exercise_package() and
// checks its outcome class ("ok", "format_error", "integrity_error") against the expected one.
// Each case runs in a forked child, so that a crash or a sanitizer abort fails that case and the
// run goes on. The parent kills a child that exceeds its CPU-time budget (CPU rather than wall
// clock, so that a loaded machine does not fail cases), three times that in wall-clock time (a
// hang that burns no CPU), or its resident-memory budget, and reads its peak RSS from wait4().
// The child also opens the case file with Package::open, which must agree with
// Package::from_bytes, and runs LeakSanitizer when the build has it.
// Prints one line per failure and a summary; exits 1 when any case fails.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "exercise.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"

// Present when the build links a sanitizer runtime with LeakSanitizer, null otherwise.
extern "C" int __lsan_do_recoverable_leak_check() __attribute__((weak));

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string dir;
  double time_budget = 10;
  std::uint64_t rss_budget_mib = 512;
  std::string only;
  bool verbose = false;
};

struct Result {
  std::string outcome;  // exercise_package's class, or "crash", "timeout", "hang", "rss", "exception", ...
  std::string stage, message, open_class;
  double seconds = 0, cpu_seconds = 0;
  std::uint64_t peak_rss_kib = 0;
};

// One allocation of exactly the file's size, so that the budget measures the library, not the harness.
std::vector<std::uint8_t> read_bytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char *>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    throw std::runtime_error("cannot read " + path);
  return bytes;
}

const char *class_of(const torshpkg::Error &e) noexcept {
  if (dynamic_cast<const torshpkg::FormatError *>(&e)) return "format_error";
  if (dynamic_cast<const torshpkg::IntegrityError *>(&e)) return "integrity_error";
  return "error";
}

// Runs in the child: the outcome as one line of JSON on `fd`.
[[noreturn]] void run_child(const std::string &path, int fd) {
  nlohmann::json out;
  try {
    {
      const auto r = torshpkg::testing::exercise_package_report(read_bytes(path));
      out = {{"outcome", r.outcome}, {"stage", r.stage}, {"message", r.message.substr(0, 500)}};
    }  // the image is freed before the second open
    std::string open_class = "ok";
    try {
      // As exercise opens: with the fuzzing identity, locked when it does not open the package.
      (void)torshpkg::Package::open(path, torshpkg::ChunkDigests::kVerify, &torshpkg::testing::fuzz_keys(),
                                    torshpkg::Package::Locked::kAllowed);
    } catch (const torshpkg::Error &e) {
      open_class = class_of(e);
    }
    out["open"] = open_class;
  } catch (const std::exception &e) {  // not a torshpkg::Error: a finding
    out = {{"outcome", "exception"}, {"stage", ""}, {"message", e.what()}, {"open", ""}};
  } catch (...) {
    out = {{"outcome", "exception"}, {"stage", ""}, {"message", "unknown exception"}, {"open", ""}};
  }
  // Everything the case allocated is gone by now: whatever is unreachable leaked.
  if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check() != 0)
    out = {{"outcome", "leak"}, {"stage", ""}, {"message", "LeakSanitizer reported leaks (see above)"}, {"open", ""}};
  const std::string line = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  (void)!::write(fd, line.data(), line.size());
  std::fflush(nullptr);
  ::_exit(0);
}

// utime + stime of a running process, from /proc/PID/stat (fields 14 and 15, after the ")").
double cpu_seconds(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 2));
  std::string skip;
  for (int i = 3; i < 14; ++i) fields >> skip;
  unsigned long long utime = 0, stime = 0;
  fields >> utime >> stime;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double seconds_of(const timeval &t) {
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
}

std::uint64_t rss_kib(pid_t pid) {
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
  return 0;
}

Result run_case(const std::string &path, const Options &o, std::uint64_t rss_budget_mib) {
  Result r;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  std::fflush(nullptr);
  const auto start = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    run_child(path, fds[1]);
  }
  ::close(fds[1]);
  // Watch the child: the pipe stays small (one line), so the child never blocks on it.
  std::string killed;
  int status = 0;
  rusage usage{};
  for (;;) {
    const pid_t done = ::wait4(pid, &status, WNOHANG, &usage);
    if (done == pid) break;
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (killed.empty() && cpu_seconds(pid) > o.time_budget) killed = "timeout";
    if (killed.empty() && elapsed > 3 * o.time_budget) killed = "hang";
    if (killed.empty() && rss_kib(pid) > rss_budget_mib * 1024) killed = "rss";
    if (!killed.empty()) {
      ::kill(pid, SIGKILL);
      ::wait4(pid, &status, 0, &usage);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  r.cpu_seconds = seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
  r.peak_rss_kib = static_cast<std::uint64_t>(usage.ru_maxrss);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  if (!killed.empty()) {
    r.outcome = killed;
    r.message = killed == "timeout" ? fmt::format("killed after {:.1f} s of CPU time", o.time_budget)
                : killed == "hang"  ? fmt::format("killed after {:.1f} s of wall-clock time", 3 * o.time_budget)
                                    : fmt::format("killed above {} MiB resident", rss_budget_mib);
  } else if (WIFSIGNALED(status)) {
    r.outcome = "crash";
    r.message = fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  } else if (text.empty()) {
    r.outcome = "crash";
    r.message = fmt::format("exited with {} without reporting", WEXITSTATUS(status));
  } else {
    const auto j = nlohmann::json::parse(text);
    r.outcome = j.at("outcome");
    r.stage = j.at("stage");
    r.message = j.at("message");
    r.open_class = j.at("open");
  }
  return r;
}

int usage(const char *argv0) {
  std::fprintf(stderr, "usage: %s DIR [--time-budget CPU-SECONDS] [--rss-budget MIB] [--only SUBSTRING] [--verbose]\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--time-budget" || a == "--rss-budget" || a == "--only") && i + 1 < argc) {
      const std::string v = argv[++i];
      if (a == "--time-budget") o.time_budget = std::stod(v);
      if (a == "--rss-budget") o.rss_budget_mib = std::stoull(v);
      if (a == "--only") o.only = v;
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (o.dir.empty() && !a.starts_with("-")) {
      o.dir = a;
    } else {
      return usage(argv[0]);
    }
  }
  if (o.dir.empty()) return usage(argv[0]);
  nlohmann::json index;
  try {
    std::ifstream in(o.dir + "/cases.json");
    index = nlohmann::json::parse(in);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "corpus-check: cannot read %s/cases.json: %s\n", o.dir.c_str(), e.what());
    return 2;
  }

  struct Row {
    std::string name;
    Result r;
  };
  std::vector<Row> rows;
  int failed = 0;
  for (const auto &c : index.at("cases")) {
    const std::string name = c.at("name"), expect = c.at("expect");
    if (!o.only.empty() && name.find(o.only) == std::string::npos) continue;
    // A case may carry a larger budget for a known, bounded cost (gen-corpus.py says why).
    const std::uint64_t budget = c.value("rss_budget_mib", o.rss_budget_mib);
    const auto r = run_case(o.dir + "/" + c.at("file").get<std::string>(), o, budget);
    // from_bytes and open read the same bytes: their verdict on opening must agree.
    const std::string opened = r.stage == "open" ? r.outcome : "ok";
    std::string problem;
    if (r.outcome != expect)
      problem = fmt::format("expected {}, got {}", expect, r.outcome);
    else if (r.cpu_seconds > o.time_budget)
      problem = fmt::format("{:.1f} s of CPU time over the {:.0f} s budget", r.cpu_seconds, o.time_budget);
    else if (r.peak_rss_kib > budget * 1024)
      problem = fmt::format("peak RSS {} MiB over the {} MiB budget", r.peak_rss_kib / 1024, budget);
    else if (r.open_class != opened)
      problem = fmt::format("Package::open says {}, from_bytes says {}", r.open_class, opened);
    if (!problem.empty()) {
      ++failed;
      std::printf("FAIL %s: %s%s%s (%.2f s CPU, %llu MiB)\n", name.c_str(), problem.c_str(),
                  r.stage.empty() ? "" : (" at " + r.stage).c_str(),
                  r.message.empty() ? "" : (": " + r.message).c_str(), r.cpu_seconds,
                  static_cast<unsigned long long>(r.peak_rss_kib / 1024));
    } else if (o.verbose) {
      std::printf("ok   %s: %s%s (%.2f s CPU, %llu MiB)\n", name.c_str(), r.outcome.c_str(),
                  r.stage.empty() ? "" : (" at " + r.stage).c_str(), r.cpu_seconds,
                  static_cast<unsigned long long>(r.peak_rss_kib / 1024));
    }
    std::fflush(stdout);
    rows.push_back({name, r});
  }

  // The costliest cases, for the record: budgets are only meaningful next to what cases use.
  auto costliest = [&rows](auto key) {
    auto sorted = rows;
    std::sort(sorted.begin(), sorted.end(), [&](const Row &a, const Row &b) { return key(a.r) > key(b.r); });
    sorted.resize(std::min<std::size_t>(5, sorted.size()));
    return sorted;
  };
  std::printf("most CPU time:");
  for (const auto &row : costliest([](const Result &r) { return r.cpu_seconds; }))
    std::printf(" %s %.2f s (%.2f s wall);", row.name.c_str(), row.r.cpu_seconds, row.r.seconds);
  std::printf("\nlargest peak RSS:");
  for (const auto &row : costliest([](const Result &r) { return r.peak_rss_kib; }))
    std::printf(" %s %llu MiB;", row.name.c_str(), static_cast<unsigned long long>(row.r.peak_rss_kib / 1024));
  std::printf("\n");
  std::printf("hostile corpus: %zu cases, %zu passed, %d failed (budgets %.0f s CPU and %llu MiB per case)\n",
              rows.size(), rows.size() - static_cast<std::size_t>(failed), failed, o.time_budget,
              static_cast<unsigned long long>(o.rss_budget_mib));
  return failed == 0 ? 0 : 1;
}
