// Zip archives in and out: torch.save files and torch.package archives are zips, and so are many
// model exchange formats. Import reads with libzip; export writes either a general zip (libzip,
// deflate for small files) or PyTorch's own layout (every record stored, data 64-byte aligned).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace torshpkg {

class Reader;

// Checks an entry name from an untrusted archive and returns it without a trailing '/', with whether
// it names a directory. An absolute name, an empty, "." or ".." component, a backslash or a
// component the package format cannot hold throws FormatError naming the entry and `zip_path`.
[[nodiscard]] std::pair<std::string, bool> checked_zip_entry_path(const std::string &zip_path, std::string_view name);

// The tree rule for an untrusted archive's entries, shared by import and direct mounting: each
// name appears once; a name may also be the parent directory of other entries only if it is a
// directory; nothing lies under a file. claim() throws FormatError naming the entry and `zip_path`.
class ZipTreeClaims {
 public:
  explicit ZipTreeClaims(std::string zip_path) : zip_path_(std::move(zip_path)) {}
  // `path` as checked_zip_entry_path returns it.
  void claim(const std::string &path, bool is_directory);

 private:
  struct Seen {
    bool directory = true;
    bool named = false;  // an entry of its own, not only a parent of others
  };
  std::string zip_path_;
  std::unordered_map<std::string, Seen> seen_;
};

using ByteProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct ZipImportResult {
  std::uint64_t files = 0, directories = 0, bytes = 0;
};

// Extracts every entry of `zip_path` into `dest`, which must be an existing, empty directory.
// Entry names are untrusted: an absolute name, an empty, "." or ".." component, a backslash, a
// duplicate, or a file and a directory of the same name aborts with FormatError naming the entry,
// before anything is written. Unix permission bits and mtimes recorded in the zip are kept.
ZipImportResult extract_zip(const std::string &zip_path, const std::string &dest, const ByteProgress &progress = {});

enum class ZipLayout {
  kZip,    // general zip: small or text files deflated, weights stored
  kTorch,  // PyTorch's writer: every record stored, data 64-byte aligned, no directory entries
};

struct ZipExportResult {
  std::uint64_t entries = 0, bytes = 0;
};

// Writes every file of the package (and, for kZip, its directories and symlinks) to `output`
// through a temporary file and a rename. Paths inside the zip are the package paths.
ZipExportResult export_zip(Reader &reader, const std::string &output, ZipLayout layout,
                           const ByteProgress &progress = {});

}  // namespace torshpkg
