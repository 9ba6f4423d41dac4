// libFuzzer target over the pack-time model-format analysis (model_formats.hpp): the ONNX protobuf
// reader, the MLmodel YAML reader, the Hugging Face config/index checks with their safetensors
// shards, and the pickle file and zip scans, all through analyse_formats().
//
// One target with a selector byte rather than one per reader: the readers share the tree, path
// resolution and report code, several layouts need more than one file (an index and its shards, a
// model and its external data), and one corpus lets mutations of one layout's files reach another's.
// Input: byte 0 picks a layout (kLayouts, modulo their number); the rest is split at kSeparator
// into the contents of that layout's files, in order (files without a part are left out).
//
// analyse_formats() reads files by TreeEntry::source, so the parts are written to files in a
// temporary directory under /tmp (one per process, reused, removed at exit; a crash leaves it)
// while the TreeEntry paths carry the names the analysis looks for. Findings: crashes, sanitizer
// reports, hangs, any exception (the analysis promises to turn every failure into a problem line),
// and an analysis that the manifest could not serialise (invalid UTF-8) or that exceeds its bounds.
// Build with -Dfuzz=true (see scripts/fuzz --target formats).
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/file.hpp"
#include "torshpkg/model_formats.hpp"
#include "torshpkg/names.hpp"

// UBSan findings must stop the run like ASan's do, or libFuzzer would only print them.
extern "C" const char *__ubsan_default_options() {
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

namespace {

using namespace std::string_view_literals;
using torshpkg::TreeEntry;

// Never found in the seeds' files (make-format-seeds checks), and in formats.dict for the mutator.
constexpr std::string_view kSeparator = "\0--part--\0"sv;
constexpr std::size_t kMaxParts = 4;

struct Layout {
  std::array<std::string_view, kMaxParts> files;  // package paths; "" = unused
};
// Keep in step with the layout numbers in make-format-seeds (ONNX, MLFLOW, ...).
constexpr Layout kLayouts[] = {
    {{"model.onnx", "model.onnx.data", "sub/model.onnx"}},
    {{"MLmodel", "conda.yaml", "model.pkl"}},
    {{"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors"}},
    {{"config.json", "pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin",
      "pytorch_model-00002-of-00002.bin"}},
    {{"model.pt", "model.pkl", "model.joblib"}},
};

[[noreturn]] void fail(const char *kind, const std::string &what) {
  std::fprintf(stderr, "%s: %s\n", kind, what.c_str());
  std::abort();
}

// A plain array, not a std::string, so that it is still there when the atexit handler runs.
char workdir[] = "/tmp/torshpkg-fuzz-formats-XXXXXX";

std::string part_path(std::size_t i) {
  return std::string(workdir) + "/" + std::to_string(i);
}

// Rewrites part i in place through a descriptor kept open: truncating a file to zero and closing
// it makes ext4 start writeback (auto_da_alloc), which made the target wait on the disk.
std::string write_part(std::size_t i, std::span<const std::uint8_t> bytes) {
  static std::array<torshpkg::UniqueFd, kMaxParts> fds = [] {
    if (!mkdtemp(workdir)) fail("SETUP", "cannot create a directory under /tmp");
    std::atexit([] {
      for (std::size_t k = 0; k < kMaxParts; ++k) (void)unlink(part_path(k).c_str());
      (void)rmdir(workdir);
    });
    std::array<torshpkg::UniqueFd, kMaxParts> out;
    for (std::size_t k = 0; k < kMaxParts; ++k) {
      out[k].reset(open(part_path(k).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
      if (!out[k]) fail("SETUP", "cannot create " + part_path(k));
    }
    return out;
  }();
  const std::string path = part_path(i);
  if (ftruncate(fds[i].get(), static_cast<off_t>(bytes.size())) != 0 ||
      (!bytes.empty() && pwrite(fds[i].get(), bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())))
    fail("SETUP", "cannot write " + path);
  return path;
}

std::vector<std::span<const std::uint8_t>> split(std::span<const std::uint8_t> in) {
  std::vector<std::span<const std::uint8_t>> parts;
  const std::string_view s(reinterpret_cast<const char *>(in.data()), in.size());
  std::size_t at = 0;
  while (parts.size() + 1 < kMaxParts) {
    const auto sep = s.find(kSeparator, at);
    if (sep == std::string_view::npos) break;
    parts.push_back(in.subspan(at, sep - at));
    at = sep + kSeparator.size();
  }
  parts.push_back(in.subspan(at));
  return parts;
}

TreeEntry dir_entry(std::string path) {
  TreeEntry e;
  e.path = std::move(path);
  e.type = TreeEntry::Type::kDirectory;
  return e;
}
TreeEntry link_entry(std::string path, std::string target) {
  TreeEntry e;
  e.path = std::move(path);
  e.type = TreeEntry::Type::kSymlink;
  e.link_target = std::move(target);
  return e;
}

void check_text(const char *what, const std::vector<std::string> &lines) {
  // Report caps each list at kMaxProblems lines plus one "... and N more" line.
  if (lines.size() > torshpkg::kMaxProblems + 1) fail("FINDING", std::string(what) + ": more lines than the cap");
  for (const auto &l : lines)
    if (!torshpkg::valid_utf8(l)) fail("FINDING", std::string(what) + " line is not UTF-8: " + l);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  if (size == 0) return 0;
  const Layout &layout = kLayouts[data[0] % std::size(kLayouts)];
  const auto parts = split(std::span(data + 1, size - 1));

  // The root's directories, and symlinks that resolve inside (to the second file, up and back),
  // loop, or leave the package, for references that go through them.
  std::vector<TreeEntry> entries{dir_entry("sub"), link_entry("sub/up", ".."), link_entry("loop", "loop"),
                                 link_entry("abs", "/etc/passwd")};
  if (!layout.files[1].empty()) entries.push_back(link_entry("link", std::string(layout.files[1])));
  for (std::size_t i = 0; i < parts.size() && !layout.files[i].empty(); ++i) {
    TreeEntry e;
    e.path = layout.files[i];
    e.source = write_part(i, parts[i]);
    e.size = parts[i].size();
    entries.push_back(std::move(e));
  }

  const torshpkg::FormatAnalysis a = torshpkg::analyse_formats(entries);
  if (!a.formats.is_object()) fail("FINDING", "formats is not a JSON object");
  try {
    (void)a.formats.dump();  // as the manifest will: throws on invalid UTF-8
  } catch (const nlohmann::json::exception &e) {
    fail("FINDING", std::string("formats cannot be serialised: ") + e.what());
  }
  check_text("problem", a.problems);
  check_text("note", a.notes);
  return 0;
}
