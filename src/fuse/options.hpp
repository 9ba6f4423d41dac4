// Command line of mount.torshpkg, including what mount(8) passes to a helper.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace torshpkg::mount {

struct Options {
  std::string package;
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  bool help = false;
  bool version = false;
  std::optional<std::uint32_t> uid, gid, umask;
  std::uint64_t cache_bytes = 256ull << 20;
  unsigned threads = 8;
  std::vector<std::string> fuse_options;  // passed to libfuse: allow_other, fsname=, ...
};

// Throws UsageError with a message naming the bad argument.
Options parse_options(int argc, char **argv);
// "256M", "1G", "65536" -> bytes; throws UsageError.
std::uint64_t parse_size(const std::string &what, const std::string &text);
extern const char *const kUsageText;

}  // namespace torshpkg::mount
