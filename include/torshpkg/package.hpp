// A loaded package: header, footer and the index, validated once, then used in place.
// Loading reads only header, footer, index and manifest: it never touches chunk data.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/digest.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/format.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg {

// Whether load_chunk checks each chunk's SHA-256. kSkipForBenchmark exists only to measure what
// lazy verification costs (mount.torshpkg -o unsafe_skip_chunk_digests); nothing else may use it.
class ZipChunkSource;  // zip_package.cpp

enum class ChunkDigests { kVerify, kSkipForBenchmark };

class Package {
 public:
  // Opens and validates; throws FormatError (malformed), IntegrityError (root digest mismatch), IoError.
  static std::shared_ptr<const Package> open(const std::string &path, ChunkDigests digests = ChunkDigests::kVerify);
  // Validates an in-memory image of a whole package (tests, fuzzing); `fd` is unused then.
  static std::shared_ptr<const Package> from_bytes(std::span<const std::uint8_t> image, std::string name);
  // Presents a zip archive (torch.save, torch.package, any zip of stored or deflated entries) as a
  // package, without unpacking it: the tree and chunk table are built in memory from the central
  // directory, stored entries are read in place, deflated ones are inflated on demand (zip_package.cpp).
  // Such a package has no signature, no root digest and no chunk digests: only the zip's CRC-32s.
  // Throws FormatError for a malformed archive, a refused name or an unsupported method.
  static std::shared_ptr<const Package> open_zip(const std::string &path);

  [[nodiscard]] const std::string &path() const noexcept { return path_; }
  [[nodiscard]] const format::Header &header() const noexcept { return header_; }
  [[nodiscard]] const format::Footer &footer() const noexcept { return footer_; }
  [[nodiscard]] std::uint64_t file_size() const noexcept { return file_size_; }
  [[nodiscard]] std::uint32_t chunk_size() const noexcept { return 1u << header_.chunk_shift; }
  [[nodiscard]] std::uint32_t inode_count() const noexcept { return static_cast<std::uint32_t>(footer_.inode_count); }
  [[nodiscard]] std::uint64_t chunk_count() const noexcept { return footer_.chunk_count; }
  [[nodiscard]] const Digest &root_digest() const noexcept { return footer_.root_digest; }
  // End of the manifest: where the signature block (or the footer) starts.
  [[nodiscard]] std::uint64_t manifest_end() const noexcept { return footer_.index_offset + index_.size(); }
  // True for a package made by open_zip.
  [[nodiscard]] bool is_zip() const noexcept { return zip_ != nullptr; }
  // Parsed at open (FormatError if malformed); checking them is signing.hpp's job.
  [[nodiscard]] const std::vector<SignatureEntry> &signatures() const noexcept { return signatures_; }

  [[nodiscard]] format::InodeEntry inode(std::uint32_t ino) const noexcept;
  [[nodiscard]] format::ChunkEntry chunk(std::uint64_t index) const noexcept;
  [[nodiscard]] format::NodeType type(std::uint32_t ino) const;
  [[nodiscard]] std::string_view name(std::uint32_t ino) const noexcept;
  [[nodiscard]] std::string_view symlink_target(std::uint32_t ino) const noexcept;
  [[nodiscard]] std::string_view manifest_text() const noexcept;

  // Child of a directory by name (binary search over sorted children).
  [[nodiscard]] std::optional<std::uint32_t> lookup(std::uint32_t dir, std::string_view name) const;
  // Resolves a relative path from the root without following symlinks; "" and "." are the root.
  [[nodiscard]] std::optional<std::uint32_t> resolve(std::string_view path) const;
  // Path of an inode relative to the root ("" for the root).
  [[nodiscard]] std::string path_of(std::uint32_t ino) const;
  // Sum of stored bytes of a regular file's chunks.
  [[nodiscard]] std::uint64_t stored_size(std::uint32_t ino) const noexcept;

  // Reads the stored bytes of chunk `index`, checks their SHA-256 (a zip entry: its CRC-32, see
  // open_zip) and decodes them into `out`
  // (out.size() must be the chunk's decoded size). `scratch` is reused between calls.
  void load_chunk(std::uint64_t index, std::span<std::uint8_t> out, std::vector<std::uint8_t> &scratch) const;

 private:
  Package() = default;
  // Decodes the footer, checks that its sections tile the file, records where each section starts;
  // returns the size of index + manifest + signature block to read (they are contiguous).
  std::uint64_t locate(std::span<const std::uint8_t, format::kFooterSize> tail);
  // After locate(): checks the root digest, then validates the index and the manifest, then parses
  // the signature block, which follows the manifest in `index_manifest_signatures`.
  void load(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail,
            std::vector<std::uint8_t> index_manifest_signatures);
  void validate_chunks() const;
  void validate_inodes() const;
  void validate_manifest() const;
  // Reserved bytes must be zero unless a later minor version (which may use them) wrote the package.
  [[nodiscard]] bool strict_reserved() const noexcept { return header_.version_minor <= format::kVersionMinor; }
  void read_stored(const format::ChunkEntry &c, std::span<std::uint8_t> out) const;
  void load_zip_chunk(std::uint64_t index, std::span<std::uint8_t> out) const;  // zip_package.cpp

  std::string path_;
  UniqueFd fd_;
  std::vector<std::uint8_t> image_;  // whole package, only for from_bytes
  std::uint64_t file_size_ = 0;
  format::Header header_;
  format::Footer footer_;
  std::vector<std::uint8_t> index_;  // chunk table | inode table | string table | manifest
  std::size_t inodes_at_ = 0, strings_at_ = 0, manifest_at_ = 0;
  std::vector<SignatureEntry> signatures_;
  ChunkDigests digests_ = ChunkDigests::kVerify;
  std::shared_ptr<ZipChunkSource> zip_;  // set by open_zip: chunks come from zip entries
};

}  // namespace torshpkg
