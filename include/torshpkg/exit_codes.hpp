// Exit codes of torshpkg(1) and mount.torshpkg(8), and the one place where an exception that ends
// either tool becomes its exit code and its last line on stderr.
#pragma once
#include <cstdio>
#include <exception>
#include <string>

namespace torshpkg {

namespace exit_codes {
// Documented in man/torshpkg.1 and man/mount.torshpkg.8 (EXIT STATUS); keep the three in step.
// Unscoped, so that a front end's `using enum ExitCode;` lets it `return kOk;` from an int function.
enum ExitCode : int {
  kOk = 0,
  kFailure = 1,        // anything else: InternalError, std::bad_alloc, an error in the FUSE loop, ...
  kUsage = 2,          // UsageError, or a command line the parser refused
  kIo = 3,             // IoError: the OS refused a read, write, open, ...
  kFormat = 4,         // FormatError: not a package, malformed, or an unsupported version or feature
  kIntegrity = 5,      // IntegrityError: bytes fail their digests, the package is damaged
  kNotFound = 6,       // NotFoundError: a path is not in the package
  kUntrusted = 7,      // TrustError: no signature from a trusted key, where one was required
  kUnresolved = 8,     // ResolveError: dependencies that no set of versions in the registry satisfies
  kNoKey = 9,          // KeyError: an encrypted package that no key or passphrase given opens
  kInterrupted = 130,  // Interrupted: SIGINT/SIGTERM (128 + SIGINT, as shells report it)
};
}  // namespace exit_codes
using exit_codes::ExitCode;

// The front end that reports: it names the prefix of the message and the few rules that differ.
enum class Tool {
  kTorshpkg,     // "torshpkg: ...": "untrusted package: " before a TrustError, EPIPE exits 0
  kMountHelper,  // "mount.torshpkg: ...": "refusing to mount: " before a TrustError, plus how to trust
};

struct ExitReport {
  int code = exit_codes::kFailure;
  std::string message;  // the line for stderr, "torshpkg: ...", without the newline
};

// What `tool` exits with, and prints, for the exception `e` that ended it:
//   UsageError 2, IoError 3 (torshpkg: 0 on EPIPE), FormatError 4, IntegrityError 5 ("damaged
//   package: "), NotFoundError 6, TrustError 7, ResolveError 8 ("cannot resolve dependencies: "), KeyError 9,
//   Interrupted 130; InternalError, any other exception
//   (std::bad_alloc, a bare Error, ...) and a null `e` 1.
[[nodiscard]] ExitReport exit_report(const std::exception_ptr &e, Tool tool);

// exit_report() with its message written to `err` (one line); returns the code. For the one catch
// block of each tool's entry point:
//   } catch (...) { return exit_code_for(std::current_exception(), Tool::kTorshpkg); }
int exit_code_for(const std::exception_ptr &e, Tool tool, std::FILE *err = stderr) noexcept;

}  // namespace torshpkg
