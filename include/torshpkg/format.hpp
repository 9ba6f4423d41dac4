// The .tpkg on-disk format, version 1. docs/FORMAT.md describes it byte by byte; keep both in step.
//
//   [header 64 B][chunk data ...][chunk table][inode table][string table][manifest JSON]
//   [key block (encrypted packages)][signature block (optional)][footer 128 B]
//
// All integers are little-endian and fixed-width. Structures are encoded field by field.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace torshpkg::format {

inline constexpr std::array<std::uint8_t, 8> kHeaderMagic = {0x89, 'T', 'P', 'K', 'G', '\r', '\n', 0x1a};
inline constexpr std::array<std::uint8_t, 8> kFooterMagic = {'T', 'P', 'K', 'G', 'E', 'N', 'D', 0x00};
inline constexpr std::uint16_t kVersionMajor = 1;  // a reader rejects any other major version
inline constexpr std::uint16_t kVersionMinor = 0;  // additive changes only; a reader accepts any minor

inline constexpr std::size_t kHeaderSize = 64;
inline constexpr std::size_t kFooterSize = 128;
inline constexpr std::size_t kFooterRootedSize = 48;  // footer bytes [0,48) are covered by the root digest
inline constexpr std::size_t kChunkEntrySize = 56;
inline constexpr std::size_t kInodeEntrySize = 48;
inline constexpr std::size_t kDigestSize = 32;  // SHA-256

inline constexpr unsigned kMinChunkShift = 16;      // 64 KiB
inline constexpr unsigned kMaxChunkShift = 22;      // 4 MiB
inline constexpr unsigned kDefaultChunkShift = 20;  // 1 MiB; see docs/PERFORMANCE.md for the measurement

inline constexpr std::uint64_t kMaxManifestSize = 64ull << 20;
inline constexpr std::uint64_t kMaxNameLength = 255;
inline constexpr std::uint64_t kMaxSymlinkLength = 4095;
inline constexpr std::uint32_t kMaxDepth = 512;
// The driver serves the manifest at /.torshpkg/manifest.json, so no package may use that root name.
inline constexpr std::string_view kReservedRootName = ".torshpkg";
// Inode numbers must leave room for FUSE's numbering (ino + 1) and the driver's virtual inodes.
inline constexpr std::uint64_t kMaxInodes = (1ull << 32) - 16;

// Feature flags. Compat: a reader may ignore unknown bits. Incompat: a reader refuses unknown bits.
namespace compat {
inline constexpr std::uint64_t kKnown = 0;
}
namespace incompat {
inline constexpr std::uint64_t kEncrypted = 1ull << 0;  // chunks (and maybe names) sealed: crypt.hpp
inline constexpr std::uint64_t kBaseRefs = 1ull << 1;   // reserved: chunks may live in a base package
inline constexpr std::uint64_t kFilters = 1ull << 2;    // chunks may use byte-grouping filters (ids 1-3)
inline constexpr std::uint64_t kKnown = kEncrypted | kFilters;  // what this reader implements
}  // namespace incompat

enum class Codec : std::uint8_t { kStored = 0, kZstd = 1 };
// Byte-grouping filters (filter.hpp), applied before zstd. bf16 and fp16 share the 2-byte transform;
// the id also records the dtype the packer saw, for reporting.
enum class Filter : std::uint8_t { kNone = 0, kBf16 = 1, kFp16 = 2, kFp32 = 3 };
// Chunk entry flags; bit 0 is reserved for "stored in the base package".
inline constexpr std::uint16_t kChunkFlagBaseRef = 1u << 0;

enum class FileKind : std::uint8_t { kOther = 0, kWeights = 1, kCode = 2, kConfig = 3, kTokenizer = 4, kData = 5 };
[[nodiscard]] std::string_view kind_name(FileKind k) noexcept;

struct Header {
  std::uint16_t version_major = kVersionMajor;
  std::uint16_t version_minor = kVersionMinor;
  std::uint64_t compat_flags = 0;
  std::uint64_t incompat_flags = 0;
  std::uint8_t chunk_shift = kDefaultChunkShift;
  // With incompat::kEncrypted only (bytes 33..63, zero otherwise): cipher (1: AES-256-GCM), flags
  // (bit 0: string table and manifest sealed) and the content key's check value.
  std::uint8_t cipher = 0;
  std::uint8_t crypt_flags = 0;
  std::array<std::uint8_t, 24> key_check{};
};

struct Footer {
  // rooted part
  std::uint64_t index_offset = 0;  // == end of chunk data
  std::uint64_t chunk_count = 0;
  std::uint64_t inode_count = 0;
  std::uint64_t strings_size = 0;
  std::uint64_t manifest_size = 0;
  std::uint64_t reserved0 = 0;
  // unrooted part
  std::uint64_t signature_offset = 0;  // 0: no signature block
  std::uint64_t signature_size = 0;
  std::array<std::uint8_t, kDigestSize> root_digest{};
};

struct ChunkEntry {
  std::uint64_t offset = 0;  // of the stored bytes in the package
  std::uint32_t stored_size = 0;
  std::uint32_t decoded_size = 0;
  Codec codec = Codec::kStored;
  Filter filter = Filter::kNone;
  std::uint16_t flags = 0;
  std::array<std::uint8_t, kDigestSize> digest{};  // SHA-256 of the stored bytes
};

enum class NodeType : std::uint8_t { kDirectory, kRegular, kSymlink };

struct InodeEntry {
  std::uint32_t mode = 0;  // S_IFDIR/S_IFREG/S_IFLNK | permission bits
  std::uint32_t parent = 0;
  std::uint32_t name_offset = 0;  // into the string table
  std::uint32_t name_length = 0;
  std::int64_t mtime_sec = 0;
  std::uint32_t mtime_nsec = 0;
  FileKind kind = FileKind::kOther;
  std::uint8_t flags = 0;
  std::uint64_t size = 0;   // regular: bytes; symlink: target length; directory: child count
  std::uint32_t first = 0;  // regular: first chunk; symlink: target offset; directory: first child inode
  std::uint32_t reserved = 0;
};

void encode(const Header &h, std::span<std::uint8_t, kHeaderSize> out) noexcept;
void encode(const Footer &f, std::span<std::uint8_t, kFooterSize> out) noexcept;
void encode(const ChunkEntry &c, std::span<std::uint8_t, kChunkEntrySize> out) noexcept;
void encode(const InodeEntry &i, std::span<std::uint8_t, kInodeEntrySize> out) noexcept;
// Number of chunks of a regular file of `size` bytes.
[[nodiscard]] constexpr std::uint64_t chunks_for(std::uint64_t size, unsigned chunk_shift) noexcept {
  return (size >> chunk_shift) + ((size & ((std::uint64_t{1} << chunk_shift) - 1)) != 0);
}

// The string table being built (names, symlink targets): throws FormatError past 4 GiB.
class StringTable {
 public:
  std::uint32_t add(std::string_view s);  // offset of s
  [[nodiscard]] const std::vector<std::uint8_t> &bytes() const noexcept { return bytes_; }

 private:
  std::vector<std::uint8_t> bytes_;
};

// The rooted footer fields for an index of these sizes starting at `index_offset` (root digest and
// signature location still to fill in).
[[nodiscard]] Footer footer_for(std::uint64_t index_offset, std::uint64_t chunks, std::uint64_t inodes,
                                std::uint64_t strings_size, std::uint64_t manifest_size) noexcept;

// The index section as it is stored: chunk table | inode table | string table | manifest.
[[nodiscard]] std::vector<std::uint8_t> encode_index(std::span<const ChunkEntry> chunks,
                                                     std::span<const InodeEntry> inodes,
                                                     std::span<const std::uint8_t> strings, std::string_view manifest);

// Decoders check magic, version and flags and throw FormatError with a message naming the problem.
[[nodiscard]] Header decode_header(std::span<const std::uint8_t, kHeaderSize> in);
[[nodiscard]] Footer decode_footer(std::span<const std::uint8_t, kFooterSize> in);
// Decode without semantic checks: the Index validates entries against each other.
[[nodiscard]] ChunkEntry decode_chunk(std::span<const std::uint8_t, kChunkEntrySize> in) noexcept;
[[nodiscard]] InodeEntry decode_inode(std::span<const std::uint8_t, kInodeEntrySize> in) noexcept;

[[nodiscard]] NodeType node_type(std::uint32_t mode);  // throws FormatError on other file types

}  // namespace torshpkg::format
