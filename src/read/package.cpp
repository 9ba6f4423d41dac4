#include "torshpkg/package.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/codec.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/names.hpp"

namespace torshpkg {

namespace {

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const char *what) {
  std::uint64_t r = 0;
  if (mul_overflows(a, b, r)) throw FormatError(fmt::format("{} overflows", what));
  return r;
}
std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const char *what) {
  std::uint64_t r = 0;
  if (add_overflows(a, b, r)) throw FormatError(fmt::format("{} overflows", what));
  return r;
}

struct Layout {
  std::uint64_t index_size = 0;  // chunk table + inode table + strings + manifest
  std::uint64_t signature_size = 0;
  std::uint64_t chunks_bytes = 0, inodes_bytes = 0;
};

// Checks that the footer describes sections that tile the file exactly:
// header | data | index | manifest | [signature] | footer.
Layout check_layout(const format::Footer &f, std::uint64_t file_size) {
  if (f.reserved0 != 0) throw FormatError("footer reserved field is not zero");
  if (f.inode_count == 0) throw FormatError("package has no root directory");
  if (f.inode_count > format::kMaxInodes) throw FormatError("too many inodes");
  if (f.chunk_count > (1ull << 32)) throw FormatError("too many chunks");
  if (f.manifest_size > format::kMaxManifestSize)
    throw FormatError(
        fmt::format("manifest of {} bytes exceeds the {} byte limit", f.manifest_size, format::kMaxManifestSize));
  if (f.strings_size > (1ull << 32)) throw FormatError("string table too large");
  Layout l;
  l.chunks_bytes = checked_mul(f.chunk_count, format::kChunkEntrySize, "chunk table size");
  l.inodes_bytes = checked_mul(f.inode_count, format::kInodeEntrySize, "inode table size");
  l.index_size = checked_add(checked_add(l.chunks_bytes, l.inodes_bytes, "index size"),
                             checked_add(f.strings_size, f.manifest_size, "index size"), "index size");
  if (f.index_offset < format::kHeaderSize) throw FormatError("index offset points into the header");
  const std::uint64_t manifest_end = checked_add(f.index_offset, l.index_size, "index end");
  std::uint64_t expected_footer = manifest_end;
  if (f.signature_offset != 0 || f.signature_size != 0) {
    if (f.signature_offset != manifest_end) throw FormatError("signature block is not right after the manifest");
    // The tail: an encrypted package's key block, then the signature block (load() tells them apart).
    constexpr std::uint64_t kMaxTail = sigblock::kMaxSize + keyblock::kMaxSize;
    if (f.signature_size > kMaxTail)
      throw FormatError(
          fmt::format("signature and key blocks of {} bytes exceed the {} byte limit", f.signature_size, kMaxTail));
    expected_footer = checked_add(manifest_end, f.signature_size, "signature end");
    l.signature_size = f.signature_size;
  }
  if (file_size < format::kFooterSize || expected_footer != file_size - format::kFooterSize)
    throw FormatError(fmt::format("sections do not fit the file: index and manifest end at {}, footer starts at {}",
                                  expected_footer, file_size - format::kFooterSize));
  return l;
}

}  // namespace

std::shared_ptr<const Package> Package::open(const std::string &path, ChunkDigests digests, const KeyRing *keys,
                                             Locked locked) {
  return open(std::make_shared<FileSource>(path), digests, nullptr, ManifestCheck::kAtOpen, keys, locked);
}

std::shared_ptr<const Package> Package::open(std::shared_ptr<const ChunkSource> source, ChunkDigests digests,
                                             std::shared_ptr<ChunkStore> store, ManifestCheck manifest_check,
                                             const KeyRing *keys, Locked locked) {
  std::shared_ptr<Package> p(new Package());
  p->source_ = std::move(source);
  const auto &name = p->source_->name();
  const std::uint64_t size = p->source_->size();
  if (size < format::kHeaderSize + format::kFooterSize)
    throw FormatError(fmt::format("{}: too small to be a package ({} bytes)", name, size));
  std::array<std::uint8_t, format::kHeaderSize> head{};
  std::array<std::uint8_t, format::kFooterSize> tail{};
  p->source_->read(0, head);
  p->source_->read(size - format::kFooterSize, tail);
  try {
    // The footer says how much index to read; validate it before allocating.
    std::vector<std::uint8_t> index(p->locate(tail));
    p->source_->read(p->footer_.index_offset, index);
    p->load(head, tail, std::move(index), keys, locked);
    if (manifest_check == ManifestCheck::kAtOpen && !p->names_hidden_) Manifest::validate(p->manifest_text());
  } catch (const FormatError &e) {
    throw FormatError(fmt::format("{}: {}", name, e.what()));
  } catch (const IntegrityError &e) {
    throw IntegrityError(fmt::format("{}: {}", name, e.what()));
  }
  const bool verify = digests == ChunkDigests::kVerify;
  if (!verify) store = nullptr;  // the cache is keyed and checked by digest
  p->pipeline_ = std::make_unique<ChunkPipeline>(
      p->source_,
      ChunkPipeline::standard_stages(verify, store, p->encrypted() ? decrypt_stage(p->sealer_, name) : nullptr), store);
  return p;
}

std::shared_ptr<const Package> Package::from_bytes(std::span<const std::uint8_t> image, std::string name,
                                                   const KeyRing *keys, Locked locked) {
  return open(std::make_shared<MemorySource>(std::vector<std::uint8_t>(image.begin(), image.end()), std::move(name)),
              ChunkDigests::kVerify, nullptr, ManifestCheck::kAtOpen, keys, locked);
}

std::shared_ptr<const Package> Package::from_index(SynthesizedIndex index, std::shared_ptr<const ChunkSource> source) {
  std::shared_ptr<Package> p(new Package());
  p->source_ = std::move(source);
  p->header_.chunk_shift = static_cast<std::uint8_t>(index.chunk_shift);
  const std::string manifest = index.manifest.serialize();
  const auto &strings = index.strings.bytes();
  p->index_ = format::encode_index(index.chunks, index.inodes, strings, manifest);
  // The index lives in memory, past the end of the source's bytes: chunk offsets stay below it.
  p->footer_ = format::footer_for(p->source_->size(), index.chunks.size(), index.inodes.size(), strings.size(),
                                  manifest.size());
  p->inodes_at_ = index.chunks.size() * format::kChunkEntrySize;
  p->strings_at_ = p->inodes_at_ + index.inodes.size() * format::kInodeEntrySize;
  p->manifest_at_ = p->strings_at_ + strings.size();
  p->strings_len_ = strings.size();
  p->manifest_len_ = manifest.size();
  std::call_once(p->manifest_once_, [&] { p->manifest_ = std::move(index.manifest); });
  index.chunks.clear();
  index.inodes.clear();
  index.strings = {};
  p->synthesized_ = std::make_unique<SynthesizedIndex>(std::move(index));
  try {
    // What the FUSE layer relies on (sorted unique siblings, names, depth, chunk runs) holds by
    // validation, not by construction.
    p->validate_inodes();
  } catch (const FormatError &e) {
    throw FormatError(fmt::format("{}: {}", p->path(), e.what()));
  }
  // No chunk digests: the source checks what the container has (a zip's CRC-32s).
  p->pipeline_ = std::make_unique<ChunkPipeline>(p->source_, ChunkPipeline::standard_stages(false));
  return p;
}

std::uint64_t Package::locate(std::span<const std::uint8_t, format::kFooterSize> tail) {
  footer_ = format::decode_footer(tail);
  const auto layout = check_layout(footer_, source_->size());
  inodes_at_ = layout.chunks_bytes;
  strings_at_ = inodes_at_ + layout.inodes_bytes;
  manifest_at_ = strings_at_ + footer_.strings_size;
  return layout.index_size + layout.signature_size;  // bounded by the checks above
}

void Package::load(std::span<const std::uint8_t> head, std::span<const std::uint8_t> tail,
                   std::vector<std::uint8_t> index_manifest_signatures, const KeyRing *keys, Locked locked) {
  header_ = format::decode_header(head.first<format::kHeaderSize>());
  index_ = std::move(index_manifest_signatures);
  std::vector<std::uint8_t> signature_block(index_.end() - static_cast<std::ptrdiff_t>(footer_.signature_size),
                                            index_.end());
  index_.resize(index_.size() - signature_block.size());
  strings_len_ = footer_.strings_size;
  manifest_len_ = footer_.manifest_size;

  // Root digest first: a damaged index is reported as damage, not as a confusing format error.
  Sha256 root;
  root.update(head.first<format::kHeaderSize>());
  root.update(tail.first<format::kFooterRootedSize>());
  root.update(index_);
  if (root.finish() != footer_.root_digest) throw IntegrityError("index or manifest is damaged (root digest mismatch)");
  if (encrypted()) {
    // The tail starts with the key block; what follows it is the signature block.
    auto [stanzas, size] = parse_key_block(signature_block);
    key_stanzas_ = std::move(stanzas);
    key_block_.assign(signature_block.begin(), signature_block.begin() + static_cast<std::ptrdiff_t>(size));
    signature_block.erase(signature_block.begin(), signature_block.begin() + static_cast<std::ptrdiff_t>(size));
  }
  if (signature_block.size() > sigblock::kMaxSize)
    throw FormatError(fmt::format("signature block of {} bytes exceeds the {} byte limit", signature_block.size(),
                                  sigblock::kMaxSize));
  validate_chunks();
  if (encrypted()) unlock(keys, locked);
  validate_inodes();
  signatures_ = parse_signature_block(signature_block);
}

void Package::unlock(const KeyRing *keys, Locked locked) {
  if (names_sealed()) {
    if (footer_.strings_size < crypt::kOverhead || footer_.manifest_size < crypt::kOverhead)
      throw FormatError("sealed string table or manifest shorter than its seal");
    strings_len_ = footer_.strings_size - crypt::kOverhead;
    manifest_len_ = footer_.manifest_size - crypt::kOverhead;
  }
  std::optional<Unwrapped> found;
  if (keys) found = unwrap(key_stanzas_, *keys, header_.key_check);
  if (!found) {
    if (locked == Locked::kRefused) require_key();
    names_hidden_ = names_sealed();
    return;
  }
  sealer_ = std::make_shared<const Sealer>(found->key);
  opened_by_ = found->stanza;
  if (!names_sealed()) return;
  // In place: the plaintext lands after the nonce, where strings_at_ and manifest_at_ then point.
  auto unseal = [&](std::size_t &at, std::uint64_t stored, std::string_view aad, std::string_view what) {
    const std::span<std::uint8_t> sealed(index_.data() + at, static_cast<std::size_t>(stored));
    try {
      sealer_->open(as_bytes(aad), sealed, sealed.subspan(crypt::kNonceSize, sealed.size() - crypt::kOverhead));
    } catch (const IntegrityError &e) {
      throw IntegrityError(fmt::format("the {} {}", what, e.what()));
    }
    at += crypt::kNonceSize;
  };
  unseal(strings_at_, footer_.strings_size, kStringsAad, "string table");
  unseal(manifest_at_, footer_.manifest_size, kManifestAad, "manifest");
}

void Package::require_key() const {
  if (!locked()) return;
  std::string whom;
  for (const auto &s : key_stanzas_) whom += (whom.empty() ? "" : ", ") + describe(s);
  throw KeyError(
      fmt::format("{}: encrypted for {}; no key given opens it (give --key FILE or --passphrase-file FILE; "
                  "mount: -o key=FILE or -o passphrase_file=FILE)",
                  path(), whom));
}

void Package::validate_chunks() {
  const std::uint32_t cs = chunk_size();
  const std::uint32_t seal = encrypted() ? crypt::kOverhead : 0;
  // Deduplicated entries share stored bytes, and so one cache entry (cache_key): every entry at one
  // offset must describe those bytes identically. The writer appends fresh chunks in offset
  // order and a dedup entry points back at one of them, so a binary search over the fresh offsets
  // finds its original; any other order (legal, never written by us) falls back to a sort. A hash
  // map here was half of open()'s time for a 16,000-chunk index (node allocations).
  auto same_bytes = [&](std::uint64_t i, std::uint64_t first) {
    const auto c = chunk(i), o = chunk(first);
    if (o.stored_size != c.stored_size || o.decoded_size != c.decoded_size || o.codec != c.codec ||
        o.filter != c.filter || o.digest != c.digest)
      throw FormatError(
          fmt::format("chunk {}: shares its stored bytes with chunk {} but describes them differently", i, first));
    aliases_.emplace_back(i, first);
  };
  std::vector<std::pair<std::uint64_t, std::uint64_t>> fresh;  // (offset, chunk), increasing offsets
  bool in_writer_order = true;
  for (std::uint64_t i = 0; i < footer_.chunk_count; ++i) {
    const auto c = chunk(i);
    auto bad = [&](std::string_view why) { return FormatError(fmt::format("chunk {}: {}", i, why)); };
    if (c.flags != 0) throw bad(fmt::format("unknown flags {:#x}", c.flags));
    const ChunkCodec *codec = find_codec(static_cast<std::uint8_t>(c.codec));
    if (!codec) throw bad(fmt::format("unknown codec id {}", static_cast<unsigned>(c.codec)));
    if (c.filter != format::Filter::kNone) {
      if (static_cast<unsigned>(c.filter) > static_cast<unsigned>(format::Filter::kFp32))
        throw bad(fmt::format("unknown filter id {}", static_cast<unsigned>(c.filter)));
      if (!(header_.incompat_flags & format::incompat::kFilters))
        throw bad("uses a filter the header does not declare");
      if (c.codec != format::Codec::kZstd) throw bad("a filter needs the zstd codec");
    }
    if (c.decoded_size == 0 || c.decoded_size > cs) throw bad("decoded size outside 1..chunk size");
    // A sealed chunk is nonce | ciphertext | tag around what the codec decodes.
    if (c.stored_size < seal + 1 || c.stored_size - seal > codec->max_stored(cs)) throw bad("stored size out of range");
    if (codec->identity && c.stored_size - seal != c.decoded_size) throw bad("stored chunk whose sizes differ");
    if (c.offset < format::kHeaderSize || !range_within(c.offset, c.stored_size, footer_.index_offset))
      throw bad("stored bytes lie outside the data section");
    if (strict_reserved() && load_le<std::uint32_t>(&index_[i * format::kChunkEntrySize + 20]) != 0)
      throw bad("reserved bytes are not zero");
    if (!in_writer_order) continue;
    if (fresh.empty() || c.offset > fresh.back().first) {
      fresh.emplace_back(c.offset, i);
      continue;
    }
    const auto it = std::lower_bound(fresh.begin(), fresh.end(), std::pair{c.offset, std::uint64_t{0}});
    if (it != fresh.end() && it->first == c.offset)
      same_bytes(i, it->second);
    else
      in_writer_order = false;
  }
  if (in_writer_order) return;
  aliases_.clear();
  std::vector<std::pair<std::uint64_t, std::uint64_t>> all(static_cast<std::size_t>(footer_.chunk_count));
  for (std::uint64_t i = 0; i < footer_.chunk_count; ++i) all[i] = {chunk(i).offset, i};
  std::sort(all.begin(), all.end());  // by offset, then chunk: each run starts with its first chunk
  for (std::size_t k = 1, run = 0; k < all.size(); ++k) {
    if (all[k].first != all[run].first)
      run = k;
    else
      same_bytes(all[k].second, all[run].second);
  }
  std::sort(aliases_.begin(), aliases_.end());
}

void Package::validate_inodes() const {
  const std::uint64_t n = footer_.inode_count;
  const std::uint32_t cs = chunk_size();
  std::vector<std::uint16_t> depth(n, 0);
  std::uint64_t claimed = 0;
  // Regular files own consecutive, disjoint runs of the chunk table in inode order, so that
  // validation and lookups stay linear however hostile the table (dedup shares stored bytes,
  // never chunk entries).
  std::uint64_t next_chunk = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    const auto e = inode(static_cast<std::uint32_t>(i));
    auto bad = [&](std::string_view why) { return FormatError(fmt::format("inode {}: {}", i, why)); };
    const auto *raw = &index_[inodes_at_ + i * format::kInodeEntrySize];
    if (e.flags != 0) throw bad("unknown flags");
    if (strict_reserved() && (e.reserved != 0 || raw[30] != 0 || raw[31] != 0))
      throw bad("reserved fields are not zero");
    if ((e.mode & ~static_cast<std::uint32_t>(S_IFMT | 0777)) != 0) throw bad("mode has bits other than type and 0777");
    if (static_cast<unsigned>(e.kind) > static_cast<unsigned>(format::FileKind::kData)) throw bad("unknown kind");
    if (e.mtime_nsec >= 1'000'000'000u) throw bad("mtime nanoseconds out of range");
    const auto t = [&] {
      try {
        return format::node_type(e.mode);
      } catch (const FormatError &err) {
        throw bad(err.what());
      }
    }();
    if (i == 0) {
      if (t != format::NodeType::kDirectory || e.parent != 0 || e.name_length != 0)
        throw bad("root is not a nameless directory");
    } else {
      if (e.parent >= i) throw bad("parent does not precede its child");
      if (type(e.parent) != format::NodeType::kDirectory) throw bad("parent is not a directory");
      if (!range_within(e.name_offset, e.name_length, strings_len_)) throw bad("name outside string table");
      // Sealed names of a locked package: bounds only (nothing reads them).
      if (!names_hidden_) {
        if (auto why = name_problem(name(static_cast<std::uint32_t>(i)))) throw bad(*why);
        if (e.parent == 0 && name(static_cast<std::uint32_t>(i)) == format::kReservedRootName)
          throw bad("the root entry name .torshpkg is reserved");
      }
      depth[i] = static_cast<std::uint16_t>(depth[e.parent] + 1);
      if (depth[i] > format::kMaxDepth) throw bad("directory tree too deep");
    }
    switch (t) {
      case format::NodeType::kDirectory: {
        if (e.size == 0) {
          if (e.first != 0) throw bad("empty directory with a first child");
          break;
        }
        if (e.first <= i || !range_within(e.first, e.size, n)) throw bad("children outside the inode table");
        for (std::uint64_t k = 0; k < e.size; ++k) {
          const auto child = static_cast<std::uint32_t>(e.first + k);
          if (inode(child).parent != i) throw bad("child does not name this directory as parent");
        }
        claimed += e.size;
        break;
      }
      case format::NodeType::kRegular: {
        const std::uint64_t count = format::chunks_for(e.size, header_.chunk_shift);
        if (count == 0) {
          if (e.first != 0) throw bad("empty file with a first chunk");
          break;
        }
        if (e.first != next_chunk) throw bad("chunk run does not follow the previous file's");
        if (!range_within(e.first, count, footer_.chunk_count)) throw bad("chunks outside the chunk table");
        next_chunk += count;
        for (std::uint64_t k = 0; k < count; ++k) {
          const std::uint64_t want = (k + 1 < count || e.size % cs == 0) ? cs : e.size % cs;
          // Only the decoded size (bytes 12..16 of the entry): decoding whole entries here cost 5% of open().
          const auto decoded = load_le<std::uint32_t>(&index_[(e.first + k) * format::kChunkEntrySize + 12]);
          if (decoded != want) throw bad("chunk sizes do not add up to the file size");
        }
        break;
      }
      case format::NodeType::kSymlink:
        if (!range_within(e.first, e.size, strings_len_)) throw bad("symlink target outside string table");
        if (names_hidden_) break;
        if (auto why = symlink_problem(symlink_target(static_cast<std::uint32_t>(i)))) throw bad(*why);
        break;
    }
  }
  if (claimed != n - 1) throw FormatError("some inodes belong to no directory");
  // Sorted, unique siblings (binary search relies on it). Names were bounds-checked above, so this
  // second pass compares only validated names. Siblings are consecutive and share a parent.
  for (std::uint64_t i = 2; i < n && !names_hidden_; ++i) {
    const auto a = static_cast<std::uint32_t>(i - 1), b = static_cast<std::uint32_t>(i);
    if (inode(a).parent == inode(b).parent && !(name(a) < name(b)))
      throw FormatError(fmt::format("inode {}: children are not sorted or not unique", inode(b).parent));
  }
  if (next_chunk != footer_.chunk_count) throw FormatError("some chunks belong to no file");
}

format::InodeEntry Package::inode(std::uint32_t ino) const noexcept {
  return format::decode_inode(std::span(index_)
                                  .subspan(inodes_at_ + std::size_t{ino} * format::kInodeEntrySize)
                                  .first<format::kInodeEntrySize>());
}

format::ChunkEntry Package::chunk(std::uint64_t index) const noexcept {
  return format::decode_chunk(
      std::span(index_).subspan(index * format::kChunkEntrySize).first<format::kChunkEntrySize>());
}

format::NodeType Package::type(std::uint32_t ino) const {
  return format::node_type(load_le<std::uint32_t>(&index_[inodes_at_ + std::size_t{ino} * format::kInodeEntrySize]));
}

std::string_view Package::name(std::uint32_t ino) const noexcept {
  const auto *p = &index_[inodes_at_ + std::size_t{ino} * format::kInodeEntrySize];
  const auto off = load_le<std::uint32_t>(p + 8);
  const auto len = load_le<std::uint32_t>(p + 12);
  return {reinterpret_cast<const char *>(index_.data() + strings_at_ + off), len};
}

std::string_view Package::symlink_target(std::uint32_t ino) const noexcept {
  const auto e = inode(ino);
  return {reinterpret_cast<const char *>(index_.data() + strings_at_ + e.first), static_cast<std::size_t>(e.size)};
}

std::string_view Package::manifest_text() const noexcept {
  return {reinterpret_cast<const char *>(index_.data() + manifest_at_), static_cast<std::size_t>(manifest_len_)};
}

std::optional<std::uint32_t> Package::lookup(std::uint32_t dir, std::string_view want) const {
  const auto e = inode(dir);
  if (format::node_type(e.mode) != format::NodeType::kDirectory) return std::nullopt;
  std::uint64_t lo = e.first, hi = e.first + e.size;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    const auto nm = name(static_cast<std::uint32_t>(mid));
    if (nm == want) return static_cast<std::uint32_t>(mid);
    if (nm < want)
      lo = mid + 1;
    else
      hi = mid;
  }
  return std::nullopt;
}

std::optional<std::uint32_t> Package::resolve(std::string_view path) const {
  std::uint32_t cur = 0;
  while (!path.empty()) {
    const auto slash = path.find('/');
    const auto part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
    if (part.empty() || part == ".") continue;
    if (part == "..") return std::nullopt;  // paths inside a package never climb
    auto next = lookup(cur, part);
    if (!next) return std::nullopt;
    cur = *next;
  }
  return cur;
}

std::string Package::path_of(std::uint32_t ino) const {
  std::vector<std::string_view> parts;
  while (ino != 0) {
    parts.push_back(name(ino));
    ino = inode(ino).parent;
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += *it;
  }
  return out;
}

std::uint64_t Package::chunks_in_file(std::uint32_t ino) const noexcept {
  const auto e = inode(ino);
  if ((e.mode & S_IFMT) != S_IFREG) return 0;
  return format::chunks_for(e.size, header_.chunk_shift);
}

std::uint64_t Package::stored_size(std::uint32_t ino) const noexcept {
  const auto first = inode(ino).first;
  std::uint64_t total = 0;
  for (std::uint64_t k = 0, n = chunks_in_file(ino); k < n; ++k) total += chunk(first + k).stored_size;
  return total;
}

std::string Package::codec_summary(std::uint32_t ino) const {
  std::array<bool, 256> used{};
  const auto first = inode(ino).first;
  for (std::uint64_t k = 0, n = chunks_in_file(ino); k < n; ++k) used[static_cast<std::uint8_t>(chunk(first + k).codec)] = true;
  std::string out;
  for (unsigned id = used.size(); id-- > 0;)
    if (used[id]) {
      if (!out.empty()) out += '+';
      out += codec_name(static_cast<format::Codec>(id));
    }
  return out.empty() ? "none" : out;
}

const Manifest &Package::manifest() const {
  if (names_hidden_) require_key();  // sealed: there is no manifest to read
  std::call_once(manifest_once_, [this] {
    try {
      manifest_ = Manifest::parse(manifest_text());
    } catch (const FormatError &e) {
      throw FormatError(fmt::format("{}: {}", path(), e.what()));  // as open() names it
    }
  });
  return manifest_;
}

std::optional<Digest> Package::file_sha256(std::uint32_t ino) const {
  std::call_once(file_digests_once_, [this] {
    file_digests_.assign(inode_count(), std::nullopt);
    for (const auto &f : manifest().files)
      if (const auto i = resolve(f.path); i && f.sha256) file_digests_[*i] = f.sha256;
  });
  return ino < file_digests_.size() ? file_digests_[ino] : std::nullopt;
}

std::uint64_t Package::cache_key(std::uint64_t index) const noexcept {
  if (aliases_.empty()) return index;
  const auto it = std::lower_bound(aliases_.begin(), aliases_.end(), std::pair{index, std::uint64_t{0}});
  return it != aliases_.end() && it->first == index ? it->second : index;
}

void Package::check_stored(std::uint64_t index) const {
  const auto c = chunk(index);
  std::vector<std::uint8_t> stored(c.stored_size);
  source_->read(c.offset, stored);
  if (sha256(stored) != c.digest) throw DigestMismatch(fmt::format("chunk {}: stored bytes fail their SHA-256", index));
}

void Package::load_chunk(std::uint64_t index, std::span<std::uint8_t> out) const {
  pipeline_->load(ChunkWork{index, chunk(index)}, out);
}

std::uint64_t Package::adjacent_run(std::uint64_t first, std::uint64_t max_count,
                                    std::uint64_t max_bytes) const noexcept {
  if (first >= chunk_count() || max_count == 0) return 0;
  auto prev = chunk(first);
  std::uint64_t n = 1, bytes = prev.stored_size;
  while (n < max_count && first + n < chunk_count()) {
    const auto next = chunk(first + n);
    if (next.offset != prev.offset + prev.stored_size || bytes + next.stored_size > max_bytes) break;
    bytes += next.stored_size;
    prev = next;
    ++n;
  }
  return n;
}

namespace {
std::vector<ChunkWork> works_for(const Package &p, std::uint64_t first, std::uint64_t count) {
  std::vector<ChunkWork> works;
  works.reserve(count);
  for (std::uint64_t i = first; i < first + count; ++i) works.push_back(ChunkWork{i, p.chunk(i)});
  return works;
}
}  // namespace

void Package::load_adjacent(std::uint64_t first, std::span<const std::span<std::uint8_t>> outs) const {
  if (first > chunk_count() || outs.size() > chunk_count() - first) throw InternalError("load_adjacent: no such chunks");
  pipeline_->load_adjacent(works_for(*this, first, outs.size()), outs);
}

void Package::fetch_into_store(std::uint64_t first, std::uint64_t count) const {
  if (!pipeline_->store() || first > chunk_count() || count > chunk_count() - first) return;
  pipeline_->fetch_into_store(works_for(*this, first, count));
}

}  // namespace torshpkg
