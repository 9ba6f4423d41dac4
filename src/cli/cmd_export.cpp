// torshpkg export FILE -o OUT.zip [--format zip|torch]: the package's files as a standard zip.
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/zipio.hpp"

namespace torshpkg::cli {

void add_export(CLI::App &app, Action &action) {
  auto file = std::make_shared<std::string>();
  auto output = std::make_shared<std::string>();
  auto layout = std::make_shared<std::string>("zip");
  auto keys = std::make_shared<KeyArgs>();
  auto *cmd = app.add_subcommand("export", "Write a package's files to a zip (or a PyTorch archive: --format torch)");
  cmd->add_option("FILE", *file, "Package")->required();
  cmd->add_option("-o,--output", *output, "Zip file to write")->required();
  cmd->add_option("--format", *layout,
                  "zip (default): deflated text, stored weights, directories and symlinks kept; torch: every "
                  "record stored and 64-byte aligned as PyTorch writes it, for torch.load and torch.package")
      ->check(CLI::IsMember({"zip", "torch"}));
  add_key_options(cmd, *keys);
  cmd->callback([&action, file, output, layout, keys] {
    action = [file, output, layout, keys]() -> int {
      OpenOptions opts;
      opts.keys = load_keys(*keys);
      Reader reader(open_package(*file, opts), 64ull << 20);
      ProgressBar bar("exporting");
      const auto r = export_zip(reader, *output, *layout == "torch" ? ZipLayout::kTorch : ZipLayout::kZip,
                                [&bar](std::uint64_t done, std::uint64_t total) { bar.update(done, total); });
      bar.finish();
      fmt::print("{}: {} files, {} ({} layout)\n", *output, r.entries, human_bytes(r.bytes), *layout);
      return kOk;
    };
  });
}

}  // namespace torshpkg::cli
