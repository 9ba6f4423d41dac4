// Typed exceptions of the core. Front ends map them to errno (FUSE: guarded() in src/fuse/fs.cpp) or
// exit codes (both tools: exit_report() in torshpkg/exit_codes.hpp) in one place each.
// Throw one of the types below, never a bare Error: the front ends tell the user what went wrong
// by the type alone. Each comment names the exit code (torshpkg(1), mount.torshpkg(8)).
#pragma once
#include <stdexcept>
#include <string>

namespace torshpkg {

// The base of the types below; thrown as itself only by code that predates them (exit 1, EIO).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The package is malformed, truncated, or uses a version or feature this reader does not know.
// Exit 4; EIO on the mount.
struct FormatError : Error {
  using Error::Error;
};
// Bytes do not match the digest that vouches for them. Exit 5; EIO on the mount.
struct IntegrityError : Error {
  using Error::Error;
};
// Stored bytes whose SHA-256 is not the one the index records: the bytes are wrong, not the
// package (a remote origin may serve the right ones). Exit 5; EIO on the mount.
struct DigestMismatch : IntegrityError {
  using IntegrityError::IntegrityError;
};
// The package carries no signature from a trusted key (or none at all) and policy requires one.
// Exit 7; never thrown by a FUSE request (the policy is applied before mounting).
struct TrustError : Error {
  using Error::Error;
};
// The operating system refused a read, write, open, fork, ..., or a file changed under us (a source
// file that grows or shrinks while it is packed: EIO); carries errno. Exit 3, except that
// torshpkg exits 0 on EPIPE (its reader went away); the mount answers the request with errnum.
struct IoError : Error {
  IoError(const std::string &what, int err) : Error(what), errnum(err) {}
  int errnum;
};
// The caller asked for something that cannot be done (bad option, missing path, ...).
// Exit 2; EINVAL on the mount.
struct UsageError : Error {
  using Error::Error;
};
// The user asked to stop (SIGINT/SIGTERM); partial output has been removed. Exit 130.
struct Interrupted : Error {
  Interrupted() : Error("interrupted") {}
};
// A lookup for a path that does not exist in the package. Exit 6; ENOENT on the mount.
struct NotFoundError : Error {
  using Error::Error;
};
// The dependencies of a package cannot all be satisfied from the registry: a package is missing, no
// version satisfies a range, or two ranges exclude each other. Exit 8.
struct ResolveError : Error {
  using Error::Error;
};
// The package is encrypted and none of the keys or passphrases given opens it (or none was given).
// Exit 9; the mount refuses before mounting.
struct KeyError : Error {
  using Error::Error;
};
// Something that cannot fail for any input did: a library (OpenSSL, zstd, zlib, libzip, libfuse)
// could not create a context, ran out of memory or refused a call its arguments are valid for, or an
// invariant of this program broke (a bug). Nothing the user gave caused it, nor can change it.
// Exit 1; EIO on the mount (and logged).
struct InternalError : Error {
  using Error::Error;
};

// Builds an IoError from errno with a message naming the path and the failed action.
[[noreturn]] void throw_errno(const std::string &action, const std::string &path);
[[noreturn]] void throw_errno(const std::string &action, const std::string &path, int err);

}  // namespace torshpkg
