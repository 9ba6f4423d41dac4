#include "helpers.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include "torshpkg/errors.hpp"

namespace th {

fs::path tmp_root() {
  if (const char *e = std::getenv("TORSHPKG_TEST_TMP"); e && *e) return e;
  return "/var/tmp";
}

TempDir::TempDir() {
  std::string templ = (tmp_root() / "tpkg-unit-tmp-XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr)
    throw std::runtime_error("mkdtemp " + templ + ": " + std::strerror(errno));
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  // Make everything writable again (tests chmod directories) before removing.
  for (auto it = fs::recursive_directory_iterator(path_, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0755);
  }
  ::chmod(path_.c_str(), 0755);
  fs::remove_all(path_, ec);
}

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }
std::string string_of(std::span<const std::uint8_t> b) { return std::string(b.begin(), b.end()); }

Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(n);
  std::size_t i = 0;
  while (i + 8 <= n) {
    const std::uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
    i += 8;
  }
  while (i < n) out[i++] = static_cast<std::uint8_t>(rng());
  return out;
}

Bytes text_bytes(std::size_t n, std::uint64_t seed) {
  static constexpr std::string_view kWords[] = {"tensor ", "weight ", "layer ", "attention ", "model ",
                                                "token ",  "bias ",   "norm\n", "embedding ", "head "};
  std::mt19937_64 rng(seed);
  Bytes out;
  out.reserve(n + 16);
  while (out.size() < n) {
    const auto w = kWords[rng() % std::size(kWords)];
    out.insert(out.end(), w.begin(), w.end());
  }
  out.resize(n);
  return out;
}

void write_file(const fs::path &p, std::span<const std::uint8_t> data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot create " + p.string());
  f.write(reinterpret_cast<const char *>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

void write_file(const fs::path &p, std::string_view data) {
  write_file(p, std::span(reinterpret_cast<const std::uint8_t *>(data.data()), data.size()));
}

Bytes read_file(const fs::path &p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + p.string());
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void set_mtime(const fs::path &p, std::int64_t sec, std::uint32_t nsec) {
  struct timespec ts[2];
  ts[0].tv_sec = static_cast<time_t>(sec);
  ts[0].tv_nsec = static_cast<long>(nsec);
  ts[1] = ts[0];
  if (::utimensat(AT_FDCWD, p.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0)
    throw std::runtime_error("utimensat " + p.string() + ": " + std::strerror(errno));
}

const char *outcome_name(Outcome o) noexcept {
  switch (o) {
    case Outcome::kOk: return "no exception";
    case Outcome::kFormatError: return "FormatError";
    case Outcome::kIntegrityError: return "IntegrityError";
    case Outcome::kOtherTorshpkgError: return "other torshpkg::Error";
    case Outcome::kOtherException: return "other exception";
    case Outcome::kCrash: return "CRASH (signal or sanitizer report)";
  }
  return "?";
}

Outcome isolated(const std::function<void()> &fn) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // The child reports by exit code only: default signal dispositions (not the test framework's
    // crash handler), and quiet unless TORSHPKG_TEST_VERBOSE is set (then sanitizer reports show).
    for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGTRAP}) std::signal(sig, SIG_DFL);
    if (!std::getenv("TORSHPKG_TEST_VERBOSE")) {
      const int devnull = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
      if (devnull >= 0) {
        ::dup2(devnull, 1);
        ::dup2(devnull, 2);
      }
    }
    int code = 20;
    try {
      fn();
      code = 20;
    } catch (const torshpkg::FormatError &) {
      code = 21;
    } catch (const torshpkg::IntegrityError &) {
      code = 22;
    } catch (const torshpkg::Error &) {
      code = 23;
    } catch (...) {
      code = 24;
    }
    ::_exit(code);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
  }
  if (!WIFEXITED(status)) return Outcome::kCrash;
  switch (WEXITSTATUS(status)) {
    case 20: return Outcome::kOk;
    case 21: return Outcome::kFormatError;
    case 22: return Outcome::kIntegrityError;
    case 23: return Outcome::kOtherTorshpkgError;
    case 24: return Outcome::kOtherException;
    default: return Outcome::kCrash;  // e.g. a sanitizer's exit code
  }
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

torshpkg::PackOptions pack_options(const fs::path &src, const fs::path &out) {
  torshpkg::PackOptions o;
  o.source_dir = src.string();
  o.output = out.string();
  o.name = "pkg";
  o.chunk_shift = 16;
  o.threads = 2;
  return o;
}

}  // namespace th
