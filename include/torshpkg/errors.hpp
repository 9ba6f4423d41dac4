// Typed exceptions of the core. Front ends map them to errno (FUSE) or exit codes (CLI) in one place each.
#pragma once
#include <stdexcept>
#include <string>

namespace torshpkg {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The package is malformed, truncated, or uses a version or feature this reader does not know.
struct FormatError : Error {
  using Error::Error;
};
// Bytes do not match the digest that vouches for them.
struct IntegrityError : Error {
  using Error::Error;
};
// The package carries no signature from a trusted key (or none at all) and policy requires one.
struct TrustError : Error {
  using Error::Error;
};
// The operating system refused a read, write, open, ...; carries errno.
struct IoError : Error {
  IoError(const std::string &what, int err) : Error(what), errnum(err) {}
  int errnum;
};
// The caller asked for something that cannot be done (bad option, missing path, ...).
struct UsageError : Error {
  using Error::Error;
};
// The user asked to stop (SIGINT/SIGTERM); partial output has been removed.
struct Interrupted : Error {
  Interrupted() : Error("interrupted") {}
};
// A lookup for a path that does not exist in the package.
struct NotFoundError : Error {
  using Error::Error;
};

// Builds an IoError from errno with a message naming the path and the failed action.
[[noreturn]] void throw_errno(const std::string &action, const std::string &path);
[[noreturn]] void throw_errno(const std::string &action, const std::string &path, int err);

}  // namespace torshpkg
