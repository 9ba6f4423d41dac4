#include "torshpkg/format.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg::format {

std::string_view kind_name(FileKind k) noexcept {
  switch (k) {
    case FileKind::kWeights: return "weights";
    case FileKind::kCode: return "code";
    case FileKind::kConfig: return "config";
    case FileKind::kTokenizer: return "tokenizer";
    case FileKind::kData: return "data";
    case FileKind::kOther: break;
  }
  return "other";
}

std::uint32_t StringTable::add(std::string_view s) {
  if (bytes_.size() + s.size() > (1ull << 32)) throw FormatError("names and symlink targets exceed 4 GiB in total");
  const auto off = static_cast<std::uint32_t>(bytes_.size());
  bytes_.insert(bytes_.end(), s.begin(), s.end());
  return off;
}

Footer footer_for(std::uint64_t index_offset, std::uint64_t chunks, std::uint64_t inodes, std::uint64_t strings_size,
                  std::uint64_t manifest_size) noexcept {
  Footer f;
  f.index_offset = index_offset;
  f.chunk_count = chunks;
  f.inode_count = inodes;
  f.strings_size = strings_size;
  f.manifest_size = manifest_size;
  return f;
}

void encode(const Header &h, std::span<std::uint8_t, kHeaderSize> out) noexcept {
  std::fill(out.begin(), out.end(), 0);
  std::copy(kHeaderMagic.begin(), kHeaderMagic.end(), out.begin());
  store_le<std::uint16_t>(&out[8], h.version_major);
  store_le<std::uint16_t>(&out[10], h.version_minor);
  store_le<std::uint32_t>(&out[12], kHeaderSize);
  store_le<std::uint64_t>(&out[16], h.compat_flags);
  store_le<std::uint64_t>(&out[24], h.incompat_flags);
  out[32] = h.chunk_shift;
  if (h.incompat_flags & incompat::kEncrypted) {
    out[33] = h.cipher;
    out[34] = h.crypt_flags;
    std::copy(h.key_check.begin(), h.key_check.end(), out.begin() + 40);
  }
}

Header decode_header(std::span<const std::uint8_t, kHeaderSize> in) {
  if (!std::equal(kHeaderMagic.begin(), kHeaderMagic.end(), in.begin()))
    throw FormatError("not a torshpkg package (bad header magic)");
  Header h;
  h.version_major = load_le<std::uint16_t>(&in[8]);
  h.version_minor = load_le<std::uint16_t>(&in[10]);
  if (h.version_major != kVersionMajor)
    throw FormatError(fmt::format("unsupported format version {}.{} (this reader knows {}.x)", h.version_major,
                                  h.version_minor, kVersionMajor));
  if (load_le<std::uint32_t>(&in[12]) != kHeaderSize) throw FormatError("bad header size");
  h.compat_flags = load_le<std::uint64_t>(&in[16]);
  h.incompat_flags = load_le<std::uint64_t>(&in[24]);
  if (h.incompat_flags & ~incompat::kKnown)
    throw FormatError(fmt::format("package needs features this reader does not know (incompat flags {:#x})",
                                  h.incompat_flags & ~incompat::kKnown));
  h.chunk_shift = in[32];
  auto zero = [](auto first, auto last) { return std::all_of(first, last, [](std::uint8_t b) { return b == 0; }); };
  if (h.incompat_flags & incompat::kEncrypted) {
    h.cipher = in[33];
    h.crypt_flags = in[34];
    std::copy(in.begin() + 40, in.end(), h.key_check.begin());
    if (h.cipher != 1) throw FormatError(fmt::format("unknown cipher {} (this reader knows 1, AES-256-GCM)", h.cipher));
    if (h.crypt_flags & ~1u) throw FormatError(fmt::format("unknown encryption flags {:#x}", h.crypt_flags));
    if (h.version_minor <= kVersionMinor && !zero(in.begin() + 35, in.begin() + 40))
      throw FormatError("header reserved bytes are not zero");
  } else if (h.version_minor <= kVersionMinor && !zero(in.begin() + 33, in.end())) {
    // Reserved bytes are zero up to this reader's minor version; a later minor may give them meaning.
    throw FormatError("header reserved bytes are not zero");
  }
  if (h.chunk_shift < kMinChunkShift || h.chunk_shift > kMaxChunkShift)
    throw FormatError(fmt::format("chunk size 2^{} is outside 64 KiB..4 MiB", h.chunk_shift));
  return h;
}

void encode(const Footer &f, std::span<std::uint8_t, kFooterSize> out) noexcept {
  std::fill(out.begin(), out.end(), 0);
  store_le<std::uint64_t>(&out[0], f.index_offset);
  store_le<std::uint64_t>(&out[8], f.chunk_count);
  store_le<std::uint64_t>(&out[16], f.inode_count);
  store_le<std::uint64_t>(&out[24], f.strings_size);
  store_le<std::uint64_t>(&out[32], f.manifest_size);
  store_le<std::uint64_t>(&out[40], f.reserved0);
  store_le<std::uint64_t>(&out[48], f.signature_offset);
  store_le<std::uint64_t>(&out[56], f.signature_size);
  std::copy(f.root_digest.begin(), f.root_digest.end(), &out[64]);
  store_le<std::uint32_t>(&out[96], kFooterSize);
  store_le<std::uint16_t>(&out[100], kVersionMajor);
  store_le<std::uint16_t>(&out[102], kVersionMinor);
  std::copy(kFooterMagic.begin(), kFooterMagic.end(), &out[120]);
}

Footer decode_footer(std::span<const std::uint8_t, kFooterSize> in) {
  if (!std::equal(kFooterMagic.begin(), kFooterMagic.end(), in.begin() + 120))
    throw FormatError("not a torshpkg package or truncated (bad footer magic)");
  if (load_le<std::uint32_t>(&in[96]) != kFooterSize) throw FormatError("bad footer size");
  if (load_le<std::uint16_t>(&in[100]) != kVersionMajor)
    throw FormatError(fmt::format("unsupported format version {} in footer", load_le<std::uint16_t>(&in[100])));
  if (load_le<std::uint16_t>(&in[102]) <= kVersionMinor &&
      std::any_of(in.begin() + 104, in.begin() + 120, [](std::uint8_t b) { return b != 0; }))
    throw FormatError("footer reserved bytes are not zero");
  Footer f;
  f.index_offset = load_le<std::uint64_t>(&in[0]);
  f.chunk_count = load_le<std::uint64_t>(&in[8]);
  f.inode_count = load_le<std::uint64_t>(&in[16]);
  f.strings_size = load_le<std::uint64_t>(&in[24]);
  f.manifest_size = load_le<std::uint64_t>(&in[32]);
  f.reserved0 = load_le<std::uint64_t>(&in[40]);
  f.signature_offset = load_le<std::uint64_t>(&in[48]);
  f.signature_size = load_le<std::uint64_t>(&in[56]);
  std::copy(in.begin() + 64, in.begin() + 96, f.root_digest.begin());
  return f;
}

void encode(const ChunkEntry &c, std::span<std::uint8_t, kChunkEntrySize> out) noexcept {
  std::fill(out.begin(), out.end(), 0);
  store_le<std::uint64_t>(&out[0], c.offset);
  store_le<std::uint32_t>(&out[8], c.stored_size);
  store_le<std::uint32_t>(&out[12], c.decoded_size);
  out[16] = static_cast<std::uint8_t>(c.codec);
  out[17] = static_cast<std::uint8_t>(c.filter);
  store_le<std::uint16_t>(&out[18], c.flags);
  std::copy(c.digest.begin(), c.digest.end(), &out[24]);
}

ChunkEntry decode_chunk(std::span<const std::uint8_t, kChunkEntrySize> in) noexcept {
  ChunkEntry c;
  c.offset = load_le<std::uint64_t>(&in[0]);
  c.stored_size = load_le<std::uint32_t>(&in[8]);
  c.decoded_size = load_le<std::uint32_t>(&in[12]);
  c.codec = static_cast<Codec>(in[16]);
  c.filter = static_cast<Filter>(in[17]);
  c.flags = load_le<std::uint16_t>(&in[18]);
  std::copy(in.begin() + 24, in.begin() + 56, c.digest.begin());
  return c;
}

void encode(const InodeEntry &i, std::span<std::uint8_t, kInodeEntrySize> out) noexcept {
  std::fill(out.begin(), out.end(), 0);
  store_le<std::uint32_t>(&out[0], i.mode);
  store_le<std::uint32_t>(&out[4], i.parent);
  store_le<std::uint32_t>(&out[8], i.name_offset);
  store_le<std::uint32_t>(&out[12], i.name_length);
  store_le<std::int64_t>(&out[16], i.mtime_sec);
  store_le<std::uint32_t>(&out[24], i.mtime_nsec);
  out[28] = static_cast<std::uint8_t>(i.kind);
  out[29] = i.flags;
  store_le<std::uint64_t>(&out[32], i.size);
  store_le<std::uint32_t>(&out[40], i.first);
  store_le<std::uint32_t>(&out[44], i.reserved);
}

std::vector<std::uint8_t> encode_index(std::span<const ChunkEntry> chunks, std::span<const InodeEntry> inodes,
                                       std::span<const std::uint8_t> strings, std::string_view manifest) {
  std::vector<std::uint8_t> index(chunks.size() * kChunkEntrySize + inodes.size() * kInodeEntrySize);
  std::size_t at = 0;
  for (const auto &c : chunks) {
    encode(c, std::span(index).subspan(at).first<kChunkEntrySize>());
    at += kChunkEntrySize;
  }
  for (const auto &e : inodes) {
    encode(e, std::span(index).subspan(at).first<kInodeEntrySize>());
    at += kInodeEntrySize;
  }
  index.insert(index.end(), strings.begin(), strings.end());
  index.insert(index.end(), manifest.begin(), manifest.end());
  return index;
}

InodeEntry decode_inode(std::span<const std::uint8_t, kInodeEntrySize> in) noexcept {
  InodeEntry i;
  i.mode = load_le<std::uint32_t>(&in[0]);
  i.parent = load_le<std::uint32_t>(&in[4]);
  i.name_offset = load_le<std::uint32_t>(&in[8]);
  i.name_length = load_le<std::uint32_t>(&in[12]);
  i.mtime_sec = load_le<std::int64_t>(&in[16]);
  i.mtime_nsec = load_le<std::uint32_t>(&in[24]);
  i.kind = static_cast<FileKind>(in[28]);
  i.flags = in[29];
  i.size = load_le<std::uint64_t>(&in[32]);
  i.first = load_le<std::uint32_t>(&in[40]);
  i.reserved = load_le<std::uint32_t>(&in[44]);
  return i;
}

NodeType node_type(std::uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFDIR: return NodeType::kDirectory;
    case S_IFREG: return NodeType::kRegular;
    case S_IFLNK: return NodeType::kSymlink;
    default: throw FormatError(fmt::format("unsupported file type in mode {:#o}", mode));
  }
}

}  // namespace torshpkg::format
