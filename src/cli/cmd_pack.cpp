// torshpkg pack DIR -o FILE, and torshpkg import FILE.zip -o FILE (the same packer over an unpacked zip)
#include <fmt/format.h>
#include <csignal>
#include <filesystem>
#include <optional>

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
extern "C" void on_signal(int) {
  g_cancel.store(true);
}

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
  if (unit == "K" || unit == "k" || unit == "KiB" || unit == "KB")
    v <<= 10;
  else if (unit == "M" || unit == "m" || unit == "MiB" || unit == "MB")
    v <<= 20;
  else if (!unit.empty())
    throw UsageError(fmt::format("--chunk-size '{}': unknown unit '{}'", s, unit));
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

std::string_view type_name(PlannedEntry::Type t) {
  switch (t) {
    case PlannedEntry::Type::kDirectory: return "dir";
    case PlannedEntry::Type::kSymlink: return "symlink";
    case PlannedEntry::Type::kFile: break;
  }
  return "file";
}

// --dry-run: one line per entry (type, kind, size, path), then what each --exclude matched.
void print_plan(const PackPlan &plan, const PackOptions &opts) {
  std::uint64_t files = 0, dirs = 0, links = 0, bytes = 0;
  for (const auto &e : plan.entries) {
    if (e.type == PlannedEntry::Type::kDirectory) ++dirs;
    if (e.type == PlannedEntry::Type::kSymlink) ++links;
    if (e.type == PlannedEntry::Type::kFile) ++files, bytes += e.size;
    if (e.path.empty()) continue;  // the root
    const bool dir = e.type == PlannedEntry::Type::kDirectory;
    fmt::print("{:<7} {:<9} {:>14}  {}{}", type_name(e.type), e.kind.empty() ? "-" : e.kind,
               dir ? std::string("-") : std::to_string(e.size), e.path, dir ? "/" : "");
    if (e.type == PlannedEntry::Type::kSymlink) fmt::print(" -> {}", e.link_target);
    if (e.dereferenced) fmt::print("  (from the symlink -> {})", e.link_target);
    fmt::print("\n");
  }
  for (const auto &[glob, hits] : plan.excluded) {
    if (hits.empty()) {
      fmt::print("--exclude '{}': matched nothing\n", glob);
      continue;
    }
    fmt::print("--exclude '{}': {} entr{}\n", glob, hits.size(), hits.size() == 1 ? "y" : "ies");
    for (const auto &h : hits) fmt::print("  {}\n", h);
  }
  for (const auto &l : plan.left_out) fmt::print("left out (the output or its temporary file): {}\n", l);
  fmt::print("dry run: {} files ({}), {} directories, {} symlinks would be packed{}; nothing written\n", files,
             human_bytes(bytes), dirs, links, opts.output.empty() ? "" : " into " + opts.output);
}

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
  auto encrypt_to = std::make_shared<std::vector<std::string>>();
  auto encrypt_pass_file = std::make_shared<std::string>();
  auto public_names = std::make_shared<bool>(false);
  auto extras = std::make_shared<PackExtras>();
  auto deref = std::make_shared<bool>(false);
  auto no_deref = std::make_shared<bool>(false);
  auto dry_run = std::make_shared<bool>(false);
  auto *cmd = import_zip ? app.add_subcommand("import",
                                              "Make a .tpkg package from a zip: torch.save files, torch.package "
                                              "archives or any zip (paths and bytes kept)")
                         : app.add_subcommand("pack", "Pack a directory into a .tpkg package");
  if (import_zip)
    cmd->add_option("FILE", *zip, "Zip archive (.zip, .pt, .pth, ...)")->required()->check(CLI::ExistingFile);
  else
    cmd->add_option("DIR", opts->source_dir, "Directory to pack")->required()->check(CLI::ExistingDirectory);
  // Not required(): --dry-run needs none; the action refuses a real run without it.
  cmd->add_option("-o,--output", opts->output, "Package file to write; - for standard output");
  cmd->add_flag("--force", extras->force, "Replace an existing output file");
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
  auto *enc = "Encryption (AES-256-GCM per chunk)";
  cmd->add_option("--encrypt-to", *encrypt_to,
                  "Encrypt for this X25519 public key from `torshpkg keygen --encryption` (repeatable)")
      ->allow_extra_args(false)
      ->group(enc);
  cmd->add_option("--encrypt-passphrase-file", *encrypt_pass_file,
                  "Encrypt for the passphrase on the first line of this file (scrypt)")
      ->group(enc);
  cmd->add_option("--scrypt-work", opts->scrypt_log_n,
                  fmt::format("log2 of scrypt's N for --encrypt-passphrase-file, {}..{} (default {}: 256 MiB, about "
                              "a second)",
                              keyblock::kMinScryptLogN, keyblock::kMaxScryptLogN, keyblock::kDefaultScryptLogN))
      ->check(CLI::Range(keyblock::kMinScryptLogN, keyblock::kMaxScryptLogN))
      ->group(enc);
  cmd->add_flag("--public-names", *public_names,
                "Leave file names, sizes in the manifest and the manifest itself readable without a key (default: "
                "sealed too)")
      ->group(enc);
  cmd->add_flag("--strict", opts->strict,
                "Fail when the model format checks find a problem (broken Hugging Face index, missing ONNX "
                "external data or MLflow artifact, dangerous or unscannable pickle) instead of warning");
  auto *deref_flag = cmd->add_flag("-L,--dereference", *deref,
                                   "Store what symlinks point to, as regular files and directories (the default "
                                   "for a Hugging Face cache snapshot)");
  cmd->add_flag("--no-dereference", *no_deref, "Keep every symlink a symlink, even in a Hugging Face cache snapshot")
      ->excludes(deref_flag);
  cmd->add_flag("--dry-run", *dry_run,
                "List what would be packed (type, kind, size, path) and what each --exclude matched; write nothing");
  cmd->add_flag("-q,--quiet", *quiet, "No progress bar and no summary");
  cmd->callback([&action, opts, chunk, deps, quiet, filters, sign_keys, pass_file, zip, extras, deref, no_deref,
                 dry_run, encrypt_to, encrypt_pass_file, public_names] {
    action = [opts, chunk, deps, quiet, filters, sign_keys, pass_file, zip, extras, deref, no_deref, dry_run,
              encrypt_to, encrypt_pass_file, public_names]() -> int {
      extras->dereference = *deref ? Dereference::kAlways : *no_deref ? Dereference::kNever : Dereference::kAuto;
      extras->note = [](const std::string &n) { fmt::print(stderr, "torshpkg: {}\n", n); };
      const bool to_stdout = opts->output == kStdoutName;
      // With -o -, standard output carries the package: the summary goes to standard error.
      std::FILE *const report = to_stdout ? stderr : stdout;
      opts->filters = *filters == "auto";
      // Refuse a bad output before reading keys or unpacking a zip.
      if (!*dry_run) check_pack_output(*opts, *extras);
      opts->chunk_shift = parse_chunk_size(*chunk);
      // Keys first: a wrong passphrase should fail before minutes of packing, not after. A dry run
      // signs nothing, so it does not ask for a passphrase.
      if (!*dry_run) {
        const auto passphrase = read_passphrase_file(*pass_file);
        for (const auto &k : *sign_keys) opts->sign_with.push_back(PrivateKey::load(k, passphrase));
        for (const auto &k : *encrypt_to) opts->encrypt_to.push_back(PublicKey::load(k, KeyType::kX25519));
        if (auto p = read_passphrase_file(*encrypt_pass_file)) {
          if (p->empty()) throw UsageError(*encrypt_pass_file + ": empty passphrase");
          opts->encrypt_passphrases.push_back(std::move(*p));
        }
        opts->seal_names = !*public_names;
        if (*public_names && opts->encrypt_to.empty() && opts->encrypt_passphrases.empty())
          throw UsageError("--public-names needs --encrypt-to or --encrypt-passphrase-file");
      }
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
        // Beside the output, on the same file system; in the temporary directory for -o - or a dry run.
        unpacked.emplace(to_stdout || opts->output.empty()
                             ? (std::filesystem::temp_directory_path() / "torshpkg-import").string()
                             : opts->output + ".import");
        ProgressBar unpack_bar("unpacking");
        const auto z = extract_zip(*zip, unpacked->path(), [&unpack_bar](std::uint64_t done, std::uint64_t total) {
          if (g_cancel.load()) throw Interrupted();
          unpack_bar.update(done, total);
        });
        unpack_bar.finish();
        if (!*quiet)
          fmt::print(report, "{}: {} files, {} directories, {}\n", *zip, z.files, z.directories, human_bytes(z.bytes));
        opts->source_dir = unpacked->path();
      }
#endif
      if (*dry_run) {
        print_plan(plan_pack(*opts, *extras), *opts);
        return kOk;
      }
      const auto r = pack(*opts, *extras);
      bar.finish();
      if (!*quiet) {
        fmt::print(report, "{}: {} files, {} directories, {} symlinks\n", to_stdout ? "standard output" : opts->output,
                   r.files, r.directories, r.symlinks);
        fmt::print(report, "  {} -> {} ({:.3f} of the original), {} chunks, {} stored once", human_bytes(r.raw_bytes),
                   human_bytes(r.package_bytes),
                   r.raw_bytes ? static_cast<double>(r.package_bytes) / static_cast<double>(r.raw_bytes) : 1.0,
                   r.chunks, r.unique_chunks);
        if (r.filtered_chunks) fmt::print(report, ", {} filtered", r.filtered_chunks);
        if (r.dedup_saved_bytes) fmt::print(report, ", dedup saved {}", human_bytes(r.dedup_saved_bytes));
        fmt::print(report, "\n  root sha256 {}\n", to_hex(r.root));
        for (const auto &k : opts->sign_with) fmt::print(report, "  signed by {}\n", to_hex(k.public_key().id()));
        if (r.recipients)
          fmt::print(report, "  encrypted (AES-256-GCM, names {}) for {} recipient{}\n",
                     opts->seal_names ? "sealed" : "public", r.recipients, r.recipients == 1 ? "" : "s");
      }
      return kOk;
    };
  });
}

void add_pack(CLI::App &app, Action &action) {
  add_pack_command(app, action, false);
}
#if TORSHPKG_WITH_ZIPIO
void add_import(CLI::App &app, Action &action) {
  add_pack_command(app, action, true);
}
#endif

}  // namespace torshpkg::cli
