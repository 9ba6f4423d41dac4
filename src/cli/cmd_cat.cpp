// torshpkg cat FILE PATH...
#include <unistd.h>

#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/reader.hpp"

namespace torshpkg::cli {

void add_cat(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto paths = std::make_shared<std::vector<std::string>>();
  auto remote = std::make_shared<RemoteArgs>();
  auto keys = std::make_shared<KeyArgs>();
  auto *cmd = app.add_subcommand("cat", "Write files from a package to standard output, verified");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_option("PATH", *paths, "Paths inside the package (symlinks inside it are followed)")->required();
  add_remote_options(cmd, *remote);
  add_key_options(cmd, *keys);
  cmd->callback([&action, file, paths, remote, keys] {
    action = [file, paths, remote, keys]() -> int {
      Reader reader(open_package(*file, open_options(*file, *remote, *keys)), 64ull << 20);
      const auto &pkg = reader.package();
      if (pkg.source().remote()) reader.start_workers(kRemoteFetchers);  // requests in flight ahead of us
      for (const auto &p : *paths) {
        const auto ino = resolve_in_package(pkg, p, true);
        if (pkg.type(ino) != format::NodeType::kRegular) throw UsageError(fmt::format("{}: not a regular file", p));
        const auto size = pkg.inode(ino).size;
        for (std::uint64_t off = 0; off < size; off += pkg.chunk_size()) {
          reader.prefetch(ino, (off >> pkg.chunk_shift()) + 1, kRemoteFetchers);
          for (const auto &s : reader.slices(ino, off, pkg.chunk_size()))
            write_all(STDOUT_FILENO, std::span(s.chunk->data() + s.offset, s.length), "standard output");
        }
      }
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
