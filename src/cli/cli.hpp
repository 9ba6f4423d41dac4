// The torshpkg command: one file per subcommand, errors mapped to exit codes in main.cpp.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <string_view>

#include "torshpkg/package.hpp"

namespace torshpkg::cli {

// Documented in man/torshpkg.1; keep both in step.
enum ExitCode : int {
  kOk = 0,
  kFailure = 1,     // anything else
  kUsage = 2,       // bad command line
  kIo = 3,          // the OS refused a read or write
  kFormat = 4,      // not a package, malformed, or an unsupported version or feature
  kIntegrity = 5,   // bytes fail their digests: the package is damaged
  kNotFound = 6,    // a path is not in the package
  kInterrupted = 130,
};

using Action = std::function<int()>;
// Each subcommand registers itself and sets `action` when chosen.
void add_pack(CLI::App &app, Action &action);
void add_inspect(CLI::App &app, Action &action);
void add_ls(CLI::App &app, Action &action);
void add_cat(CLI::App &app, Action &action);
void add_extract(CLI::App &app, Action &action);
void add_verify(CLI::App &app, Action &action);

// Shared helpers for the subcommands.
[[nodiscard]] bool stderr_is_tty();
std::string human_bytes(std::uint64_t n);
// Resolves a path inside the package; with `follow`, follows relative symlinks that stay inside it.
// Throws NotFoundError naming the path.
std::uint32_t resolve_in_package(const Package &pkg, std::string_view path, bool follow);
// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();
  void update(std::uint64_t done, std::uint64_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  double start_;
};

}  // namespace torshpkg::cli
