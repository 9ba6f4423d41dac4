#include "torshpkg/errors.hpp"

#include <cerrno>
#include <cstring>

namespace torshpkg {

void throw_errno(const std::string &action, const std::string &path) { throw_errno(action, path, errno); }

void throw_errno(const std::string &action, const std::string &path, int err) {
  throw IoError("cannot " + action + " " + path + ": " + std::strerror(err), err);
}

}  // namespace torshpkg
