// A loaded package: a validated index (header, footer, chunk table, inode table, strings, manifest)
// over one ChunkSource, and the pipeline that turns stored chunks into file bytes.
// Opening reads only header, footer, index and manifest: it never touches chunk data.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/chunk_source.hpp"
#include "torshpkg/crypt.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/format.hpp"
#include "torshpkg/manifest.hpp"
#include "torshpkg/pipeline.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg {

// Whether load_chunk checks each chunk's SHA-256. kSkipForBenchmark exists only to measure what
// lazy verification costs (mount.torshpkg -o unsafe_skip_chunk_digests); nothing else may use it.
enum class ChunkDigests { kVerify, kSkipForBenchmark };
// When the manifest's JSON is checked (FORMAT.md rule 28). The root digest covers it either way.
// kOnFirstUse is the driver's: it serves files from the binary index, and a 10,000-file manifest
// took 6 ms of a cold mount to validate; a malformed one is then a FormatError from manifest().
enum class ManifestCheck { kAtOpen, kOnFirstUse };

// An index built in memory from another container (a zip's central directory) rather than read
// from a package: it has no root digest, no chunk digests and says nothing about how chunks are
// stored; its source checks what integrity the container has.
struct SynthesizedIndex {
  unsigned chunk_shift = format::kDefaultChunkShift;
  std::vector<format::ChunkEntry> chunks;  // offsets into the source's byte space
  std::vector<format::InodeEntry> inodes;
  format::StringTable strings;
  Manifest manifest;
  // Why it cannot be trusted, for the trust policy: "a zip archive, which cannot carry a signature".
  std::string unsigned_because;
  // What to do about it: "torshpkg import it into a signed package".
  std::string remedy;
  // How the mount describes it: "a zip archive (no signature; entries checked by CRC-32)".
  std::string summary;
};

class Package {
 public:
  // Opens and validates a .tpkg from its source; throws FormatError (malformed), IntegrityError
  // (root digest mismatch), IoError.
  // With a `store`, chunks are looked up in (and verified ones added to) that disk chunk cache.
  // An encrypted package is opened with the first key of `keys` that its key block admits; when
  // none does it throws KeyError, unless `locked` is kAllowed: it then opens locked (inspect,
  // verify): digests, signatures and sizes check, no chunk decodes, and sealed names stay hidden.
  enum class Locked { kRefused, kAllowed };
  static std::shared_ptr<const Package> open(std::shared_ptr<const ChunkSource> source,
                                             ChunkDigests digests = ChunkDigests::kVerify,
                                             std::shared_ptr<ChunkStore> store = nullptr,
                                             ManifestCheck manifest_check = ManifestCheck::kAtOpen,
                                             const KeyRing *keys = nullptr, Locked locked = Locked::kRefused);
  static std::shared_ptr<const Package> open(const std::string &path, ChunkDigests digests = ChunkDigests::kVerify,
                                             const KeyRing *keys = nullptr, Locked locked = Locked::kRefused);
  // Validates an in-memory image of a whole package (tests, fuzzing).
  static std::shared_ptr<const Package> from_bytes(std::span<const std::uint8_t> image, std::string name,
                                                   const KeyRing *keys = nullptr, Locked locked = Locked::kRefused);
  // A package over an index built from another container; the tree goes through the same checks.
  static std::shared_ptr<const Package> from_index(SynthesizedIndex index, std::shared_ptr<const ChunkSource> source);

  // The source's name: a path (or, later, a URL).
  [[nodiscard]] const std::string &path() const noexcept { return source_->name(); }
  [[nodiscard]] const ChunkSource &source() const noexcept { return *source_; }
  [[nodiscard]] const format::Header &header() const noexcept { return header_; }
  [[nodiscard]] const format::Footer &footer() const noexcept { return footer_; }
  [[nodiscard]] std::uint64_t file_size() const noexcept { return source_->size(); }
  [[nodiscard]] std::uint32_t chunk_size() const noexcept { return 1u << header_.chunk_shift; }
  [[nodiscard]] unsigned chunk_shift() const noexcept { return header_.chunk_shift; }
  [[nodiscard]] std::uint32_t inode_count() const noexcept { return static_cast<std::uint32_t>(footer_.inode_count); }
  [[nodiscard]] std::uint64_t chunk_count() const noexcept { return footer_.chunk_count; }
  [[nodiscard]] const Digest &root_digest() const noexcept { return footer_.root_digest; }
  // End of the manifest: where the signature block (or the footer) starts.
  [[nodiscard]] std::uint64_t manifest_end() const noexcept { return footer_.index_offset + index_.size(); }
  // Parsed at open (FormatError if malformed); checking them is trust_policy.hpp's job.
  [[nodiscard]] const std::vector<SignatureEntry> &signatures() const noexcept { return signatures_; }
  // Encryption (header incompat bit 0). Locked: opened without a key (Locked::kAllowed).
  [[nodiscard]] bool encrypted() const noexcept { return (header_.incompat_flags & format::incompat::kEncrypted) != 0; }
  [[nodiscard]] bool locked() const noexcept { return encrypted() && !sealer_; }
  // The string table and the manifest are sealed and this package is locked: no names, no manifest.
  [[nodiscard]] bool names_hidden() const noexcept { return names_hidden_; }
  [[nodiscard]] bool names_sealed() const noexcept { return (header_.crypt_flags & crypt::kFlagSealedNames) != 0; }
  [[nodiscard]] const std::vector<KeyStanza> &key_stanzas() const noexcept { return key_stanzas_; }
  // The key block as stored (before the signature block in the tail), for sign and rekey to keep.
  [[nodiscard]] std::span<const std::uint8_t> key_block() const noexcept { return key_block_; }
  // Which key block entry the key that opened it matched.
  [[nodiscard]] std::optional<std::size_t> opened_by() const noexcept { return opened_by_; }
  // Throws KeyError, saying for whom the package is encrypted, when it is locked.
  void require_key() const;
  // Validated at open, built on first use (thread-safe).
  [[nodiscard]] const Manifest &manifest() const;
  // Set for a package made by from_index (a zip mounted in place): no root digest, no chunk digests,
  // no storage layout to report.
  [[nodiscard]] const SynthesizedIndex *synthesized() const noexcept { return synthesized_.get(); }

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
  // Chunks of a regular file (0 for anything else), and the first one's index in the chunk table.
  [[nodiscard]] std::uint64_t chunks_in_file(std::uint32_t ino) const noexcept;
  // Sum of stored bytes of a regular file's chunks.
  [[nodiscard]] std::uint64_t stored_size(std::uint32_t ino) const noexcept;
  // The codecs of a regular file's chunks, from the highest id down, joined by '+' ("zstd",
  // "zstd+stored"); "none" for an empty file.
  [[nodiscard]] std::string codec_summary(std::uint32_t ino) const;
  // The whole-file SHA-256 the manifest records for a regular file, if any (resolved on first use).
  [[nodiscard]] std::optional<Digest> file_sha256(std::uint32_t ino) const;

  // Chunks that share stored bytes (deduplicated) share one key: the index of the first of them.
  // Keys depend only on the index, never on where or how the bytes are stored.
  [[nodiscard]] std::uint64_t cache_key(std::uint64_t index) const noexcept;
  // True for the first chunk of each set sharing stored bytes: count these for stored totals.
  [[nodiscard]] bool first_use(std::uint64_t index) const noexcept { return cache_key(index) == index; }

  // Reads chunk `index`'s stored bytes and checks them against its digest, decoding nothing (what
  // `verify` can check of a locked package). Throws DigestMismatch.
  void check_stored(std::uint64_t index) const;
  // Reads chunk `index` from the source through the pipeline (verify, decode, undo filter) into
  // `out`, whose size must be the chunk's decoded size.
  void load_chunk(std::uint64_t index, std::span<std::uint8_t> out) const;
  // How many chunks from `first` on (at most `max_count`, at most `max_bytes` of stored bytes, at
  // least 1) lie back to back in the source, so that one read fetches them all.
  [[nodiscard]] std::uint64_t adjacent_run(std::uint64_t first, std::uint64_t max_count,
                                           std::uint64_t max_bytes) const noexcept;
  // load_chunk() of chunks [first, first + outs.size()) of an adjacent_run(), with one source read.
  void load_adjacent(std::uint64_t first, std::span<const std::span<std::uint8_t>> outs) const;
  // Fetches chunks [first, first + count) of an adjacent_run() into the disk chunk cache without
  // decoding them (prefetch; silent on failure). No-op without a cache.
  void fetch_into_store(std::uint64_t first, std::uint64_t count) const;
  [[nodiscard]] ChunkPipeline::Stats pipeline_stats() const noexcept { return pipeline_->stats(); }
  [[nodiscard]] const ChunkStore *store() const noexcept { return pipeline_->store(); }

 private:
  Package() = default;
  // Decodes the footer, checks that its sections tile the file, records where each section starts;
  // returns the size of index + manifest + signature block to read (they are contiguous).
  std::uint64_t locate(std::span<const std::uint8_t, format::kFooterSize> tail);
  // After locate(): checks the root digest, then validates the index and the manifest, then parses
  // the signature block, which follows the manifest in `index_manifest_signatures`.
  void load(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail,
            std::vector<std::uint8_t> index_manifest_signatures, const KeyRing *keys, Locked locked);
  void validate_chunks();
  void validate_inodes() const;
  // Finds the content key, and unseals the string table and the manifest in place when they are sealed.
  void unlock(const KeyRing *keys, Locked locked);
  // Reserved bytes must be zero unless a later minor version (which may use them) wrote the package.
  [[nodiscard]] bool strict_reserved() const noexcept { return header_.version_minor <= format::kVersionMinor; }

  std::shared_ptr<const ChunkSource> source_;
  std::unique_ptr<ChunkPipeline> pipeline_;
  format::Header header_;
  format::Footer footer_;
  std::vector<std::uint8_t> index_;  // chunk table | inode table | string table | manifest
  std::size_t inodes_at_ = 0, strings_at_ = 0, manifest_at_ = 0;
  // Plaintext lengths of the string table and the manifest (their stored sizes less the seal when sealed).
  std::uint64_t strings_len_ = 0, manifest_len_ = 0;
  std::vector<SignatureEntry> signatures_;
  std::vector<KeyStanza> key_stanzas_;
  std::vector<std::uint8_t> key_block_;
  std::shared_ptr<const Sealer> sealer_;
  std::optional<std::size_t> opened_by_;
  bool names_hidden_ = false;
  mutable std::once_flag manifest_once_;
  mutable Manifest manifest_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> aliases_;  // (chunk, first chunk sharing its bytes), by chunk
  std::unique_ptr<SynthesizedIndex> synthesized_;                 // without its tables, which index_ holds
  mutable std::once_flag file_digests_once_;
  mutable std::vector<std::optional<Digest>> file_digests_;  // per inode
};

}  // namespace torshpkg
