// torshpkg pack DIR -o FILE, and torshpkg import FILE.zip -o FILE (the same packer over an unpacked zip)
#include <csignal>
#include <filesystem>
#include <optional>
#include <fmt/format.h>

#include "cli.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/writer.hpp"
#if TORSHPKG_WITH_ZIPIO
#include "torshpkg/zipio.hpp"
#endif

namespace torshpkg::cli {

namespace {

std::atomic<bool> g_cancel{false};  // written from a signal handler: the only way to reach it
extern "C" void on_signal(int) { g_cancel.store(true); }

// "1M", "256K", "1MiB", "4194304" -> log2 of the size; throws UsageError unless a power of two in range.
unsigned parse_chunk_size(const std::string &s) {
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (const std::exception &) {
    throw UsageError(fmt::format("--chunk-size '{}' is not a size", s));
  }
  std::string unit = s.substr(pos);
  if (unit == "K" || unit == "k" || unit == "KiB" || unit == "KB") v <<= 10;
  else if (unit == "M" || unit == "m" || unit == "MiB" || unit == "MB") v <<= 20;
  else if (!unit.empty()) throw UsageError(fmt::format("--chunk-size '{}': unknown unit '{}'", s, unit));
  for (unsigned shift = format::kMinChunkShift; shift <= format::kMaxChunkShift; ++shift)
    if (v == (1ull << shift)) return shift;
  throw UsageError(fmt::format("--chunk-size '{}' must be a power of two from 64K to 4M", s));
}

// A directory made with mkdtemp and removed, with everything in it, on destruction.
class TempTree {
 public:
  explicit TempTree(const std::string &prefix) {
    std::string templ = prefix + ".XXXXXX";
    if (!::mkdtemp(templ.data())) throw_errno("create directory", templ);
    path_ = templ;
  }
  ~TempTree() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempTree(const TempTree &) = delete;
  TempTree &operator=(const TempTree &) = delete;
  [[nodiscard]] const std::string &path() const noexcept { return path_; }

 private:
  std::string path_;
};

}  // namespace

// `pack DIR` and `import FILE` share every option; import first unpacks the zip into a temporary
// directory beside the output (removed afterwards) and packs that.
void add_pack_command(CLI::App &app, Action &action, bool import_zip) {
  auto opts = std::make_shared<PackOptions>();
  auto zip = std::make_shared<std::string>();
  auto chunk = std::make_shared<std::string>("1M");
  auto deps = std::make_shared<std::vector<std::string>>();
  auto quiet = std::make_shared<bool>(false);
  auto filters = std::make_shared<std::string>("auto");
  auto sign_keys = std::make_shared<std::vector<std::string>>();
  auto pass_file = std::make_shared<std::string>();
  auto *cmd = import_zip
                  ? app.add_subcommand("import", "Make a .tpkg package from a zip: torch.save files, torch.package "
                                                 "archives or any zip (paths and bytes kept)")
                  : app.add_subcommand("pack", "Pack a directory into a .tpkg package");
  if (import_zip)
    cmd->add_option("FILE", *zip, "Zip archive (.zip, .pt, .pth, ...)")->required()->check(CLI::ExistingFile);
  else
    cmd->add_option("DIR", opts->source_dir, "Directory to pack")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("-o,--output", opts->output, "Package file to write")->required();
  cmd->add_option("--name", opts->name,
                  import_zip ? "Package name (default: the file's name without extension)"
                             : "Package name (default: the directory's name)");
  cmd->add_option("--version", opts->version, "Semantic version (default 0.1.0)");
  cmd->add_option("--description", opts->description, "One-line description");
  cmd->add_option("--author", opts->authors, "Author (repeatable)")->allow_extra_args(false);
  cmd->add_option("--license", opts->license, "License identifier, e.g. Apache-2.0");
  cmd->add_option("--depends", *deps, "Dependency NAME@RANGE, e.g. tokenizer-base@^1.2 (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--chunk-size", *chunk, "Chunk size, a power of two from 64K to 4M (default 1M)");
  cmd->add_option("--level", opts->level, "zstd level (default 3)");
  cmd->add_option("--threads", opts->threads, "Compression threads (default: one per core)");
  cmd->add_option("--exclude", opts->excludes, "Skip paths matching this shell glob (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--filters", *filters, "Byte-grouping filters for float weights: auto (default) or none")
      ->check(CLI::IsMember({"auto", "none"}));
  cmd->add_option("--sign", *sign_keys, "Sign with this private key in the same pass (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--passphrase-file", *pass_file, "Passphrase of encrypted signing keys (first line)");
  cmd->add_flag("--strict", opts->strict,
                "Fail when the model format checks find a problem (broken Hugging Face index, missing ONNX "
                "external data or MLflow artifact, dangerous or unscannable pickle) instead of warning");
  cmd->add_flag("-q,--quiet", *quiet, "No progress bar and no summary");
  cmd->callback([&action, opts, chunk, deps, quiet, filters, sign_keys, pass_file, zip] {
    action = [opts, chunk, deps, quiet, filters, sign_keys, pass_file, zip]() -> int {
      opts->chunk_shift = parse_chunk_size(*chunk);
      // Keys first: a wrong passphrase should fail before minutes of packing, not after.
      const auto passphrase = read_passphrase_file(*pass_file);
      for (const auto &k : *sign_keys) opts->sign_with.push_back(PrivateKey::load(k, passphrase));
      opts->filters = *filters == "auto";
      for (const auto &d : *deps) opts->dependencies.push_back(parse_dependency(d));
      ProgressBar bar("packing");
      if (!*quiet) opts->progress = [&bar](const PackProgress &p) { bar.update(p.bytes_done, p.bytes_total); };
      opts->warn = [](const std::string &w) { fmt::print(stderr, "torshpkg: warning: {}\n", w); };
      opts->cancel = &g_cancel;
      std::signal(SIGINT, on_signal);
      std::signal(SIGTERM, on_signal);
      std::optional<TempTree> unpacked;
#if TORSHPKG_WITH_ZIPIO
      if (!zip->empty()) {
        if (opts->name.empty()) opts->name = std::filesystem::path(*zip).stem().string();
        unpacked.emplace(opts->output + ".import");
        ProgressBar unpack_bar("unpacking");
        const auto z = extract_zip(*zip, unpacked->path(), [&unpack_bar](std::uint64_t done, std::uint64_t total) {
          if (g_cancel.load()) throw Interrupted();
          unpack_bar.update(done, total);
        });
        unpack_bar.finish();
        if (!*quiet) fmt::print("{}: {} files, {} directories, {}\n", *zip, z.files, z.directories, human_bytes(z.bytes));
        opts->source_dir = unpacked->path();
      }
#endif
      const auto r = pack(*opts);
      bar.finish();
      if (!*quiet) {
        fmt::print("{}: {} files, {} directories, {} symlinks\n", opts->output, r.files, r.directories, r.symlinks);
        fmt::print("  {} -> {} ({:.3f} of the original), {} chunks, {} stored once",
                   human_bytes(r.raw_bytes), human_bytes(r.package_bytes),
                   r.raw_bytes ? static_cast<double>(r.package_bytes) / static_cast<double>(r.raw_bytes) : 1.0,
                   r.chunks, r.unique_chunks);
        if (r.filtered_chunks) fmt::print(", {} filtered", r.filtered_chunks);
        if (r.dedup_saved_bytes) fmt::print(", dedup saved {}", human_bytes(r.dedup_saved_bytes));
        fmt::print("\n  root sha256 {}\n", to_hex(r.root));
        for (const auto &k : opts->sign_with) fmt::print("  signed by {}\n", to_hex(k.public_key().id()));
      }
      return kOk;
    };
  });
}

void add_pack(CLI::App &app, Action &action) { add_pack_command(app, action, false); }
#if TORSHPKG_WITH_ZIPIO
void add_import(CLI::App &app, Action &action) { add_pack_command(app, action, true); }
#endif

}  // namespace torshpkg::cli
