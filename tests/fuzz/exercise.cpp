#include "exercise.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "torshpkg/trust_policy.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/format.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg::testing {

namespace {

namespace f = torshpkg::format;

// Deduplication lets a small valid package describe a huge logical tree (one stored chunk shared
// by a million entries is 64 GiB at 64 KiB chunks). Reading that is legitimate but unbounded work,
// so the walk stops reading after this many bytes (slice bytes plus bytes decoded).
constexpr std::uint64_t kReadBudget = 256ull << 20;
// resolve(path_of(i)) costs O(depth) per inode; check it on the first inodes only.
constexpr std::uint32_t kPathChecks = 20'000;
constexpr std::uint64_t kCacheBytes = 8ull << 20;  // what `torshpkg cat` uses

[[noreturn]] void contradiction(const std::string &what) {
  throw std::logic_error("package contradicts itself: " + what);
}

const char *class_of(const Error &e) noexcept {
  if (dynamic_cast<const FormatError *>(&e)) return "format_error";
  if (dynamic_cast<const IntegrityError *>(&e)) return "integrity_error";
  return "error";
}

class Walk {
 public:
  Walk(std::shared_ptr<const Package> pkg, ExerciseReport &report)
      : pkg_(*pkg), reader_(std::move(pkg), kCacheBytes), report_(report) {}

  void run() {
    const std::uint32_t n = pkg_.inode_count();
    report_.inodes = n;
    for (std::uint32_t i = 0; i < n; ++i) {
      const auto e = pkg_.inode(i);
      const auto type = pkg_.type(i);
      if (i != 0) {
        const auto name = pkg_.name(i);
        copy_.assign(name.begin(), name.end());  // touch every byte (ASan checks the range)
        if (pkg_.lookup(e.parent, name) != std::optional<std::uint32_t>(i))
          contradiction(fmt::format("lookup of inode {}", i));
      }
      if (i < kPathChecks && pkg_.resolve(pkg_.path_of(i)) != std::optional<std::uint32_t>(i))
        contradiction(fmt::format("resolve(path_of({}))", i));
      switch (type) {
        case f::NodeType::kDirectory:
          if (e.size != 0 && pkg_.inode(e.first).parent != i) contradiction(fmt::format("first child of {}", i));
          break;
        case f::NodeType::kSymlink: {
          const auto target = pkg_.symlink_target(i);
          copy_.assign(target.begin(), target.end());
          if (copy_.size() != e.size) contradiction(fmt::format("symlink {} target length", i));
          break;
        }
        case f::NodeType::kRegular: read_file(i, e.size); break;
      }
    }
    const auto manifest = pkg_.manifest_text();
    copy_.assign(manifest.begin(), manifest.end());
  }

 private:
  void charge(std::uint64_t bytes) {
    spent_ += bytes;
    if (spent_ > kReadBudget) report_.budget_exhausted = true;
  }

  void read_file(std::uint32_t ino, std::uint64_t size) {
    (void)pkg_.stored_size(ino);  // `inspect` and `ls -l` show it
    if (report_.budget_exhausted) return;
    const std::uint32_t cs = pkg_.chunk_size();
    try {
      // Chunk by chunk through slices(), exactly as `torshpkg cat` and `extract` do.
      std::uint64_t got = 0;
      for (std::uint64_t off = 0; off < size && !report_.budget_exhausted; off += cs) {
        for (const auto &s : reader_.slices(ino, off, cs)) {
          if (s.length == 0 || std::uint64_t{s.offset} + s.length > s.chunk->size())
            contradiction(fmt::format("slice of inode {} outside its chunk", ino));
          buf_.resize(s.length);
          std::memcpy(buf_.data(), s.chunk->data() + s.offset, s.length);
          got += s.length;
          charge(s.length + (s.decoded_now ? s.chunk->size() : 0));
        }
      }
      if (!report_.budget_exhausted && got != size)
        contradiction(fmt::format("inode {}: read {} of {} bytes", ino, got, size));
      // Reader::read (the driver's path) at the end and across the first chunk boundary.
      std::uint8_t small[8];
      if (size > 0 && reader_.read(ino, size - 1, std::span(small, 1)) != 1) contradiction("read of the last byte");
      if (size >= std::uint64_t{cs} + 4 && reader_.read(ino, cs - 4, small) != sizeof small)
        contradiction("read across a chunk boundary");
      if (reader_.read(ino, size, small) != 0) contradiction("read at end of file");
      ++report_.files_read;
      report_.bytes_read += got;
    } catch (const Error &e) {
      // One damaged file does not stop the walk (the driver returns EIO for that read only).
      if (report_.outcome == "ok") {
        report_.outcome = class_of(e);
        report_.stage = "read";
        report_.message = e.what();
      }
    }
  }

  const Package &pkg_;
  Reader reader_;
  ExerciseReport &report_;
  std::uint64_t spent_ = 0;
  std::string copy_;
  std::vector<std::uint8_t> buf_;
};

}  // namespace

const KeyRing &fuzz_keys() {
  static const KeyRing ring = [] {
    KeyRing r;
    r.identities.push_back(
        PrivateKey::from_pem(kFuzzIdentityPem, "the fuzzing identity", std::nullopt, KeyType::kX25519));
    return r;
  }();
  return ring;
}

// What inspect and verify do with a package no key opens: structure and stored-chunk digests.
static void exercise_locked(const Package &pkg, ExerciseReport &report) {
  report.inodes = pkg.inode_count();
  for (std::uint32_t i = 0; i < pkg.inode_count(); ++i) {
    (void)pkg.type(i);
    (void)pkg.stored_size(i);
    if (!pkg.names_hidden() && i != 0 &&
        pkg.lookup(pkg.inode(i).parent, pkg.name(i)) != std::optional<std::uint32_t>(i))
      contradiction(fmt::format("lookup of inode {} (locked)", i));
  }
  std::uint64_t checked = 0;
  for (std::uint64_t k = 0; k < pkg.chunk_count() && checked < kReadBudget; ++k) {
    if (!pkg.first_use(k)) continue;
    checked += pkg.chunk(k).stored_size;
    try {
      pkg.check_stored(k);
    } catch (const Error &e) {
      if (report.outcome == "ok") report.outcome = class_of(e), report.stage = "read", report.message = e.what();
    }
  }
}

ExerciseReport exercise_package_report(std::span<const std::uint8_t> image) {
  ExerciseReport report;
  std::shared_ptr<const Package> pkg;
  try {
    try {
      pkg = Package::from_bytes(image, "hostile", &fuzz_keys());
    } catch (const KeyError &) {
      const auto locked = Package::from_bytes(image, "hostile", &fuzz_keys(), Package::Locked::kAllowed);
      exercise_locked(*locked, report);
      return report;
    }
  } catch (const Error &e) {
    report.outcome = class_of(e);
    report.stage = "open";
    report.message = e.what();
    return report;
  }
  try {
    // The signature block on its own (Package parsed it at open, so this must agree), then the trust
    // policy as `verify` and the driver apply it, with an empty store: every signature is untrusted.
    const auto &ft = pkg->footer();
    // The tail: an encrypted package's key block, then the signature block.
    const auto keys_size = pkg->key_block().size();
    if (ft.signature_size > keys_size) {
      const auto entries =
          parse_signature_block(image.subspan(ft.signature_offset + keys_size, ft.signature_size - keys_size));
      if (entries.size() != pkg->signatures().size()) contradiction("signature block parsed differently");
    }
    (void)enforce_trust(*pkg, check_signatures(*pkg, TrustStore{}), /*allow_untrusted=*/true);
  } catch (const Error &e) {
    report.outcome = class_of(e);
    report.stage = "signatures";
    report.message = e.what();
  }
  Walk(std::move(pkg), report).run();
  return report;
}

std::string exercise_package(std::span<const std::uint8_t> image) {
  return exercise_package_report(image).outcome;
}

bool reseal_digests(std::vector<std::uint8_t> &image) {
  if (image.size() < f::kHeaderSize + f::kFooterSize) return false;
  const std::size_t footer_at = image.size() - f::kFooterSize;
  const auto *ft = &image[footer_at];
  const auto index_offset = load_le<std::uint64_t>(ft + 0), chunk_count = load_le<std::uint64_t>(ft + 8);
  const auto inode_count = load_le<std::uint64_t>(ft + 16), strings = load_le<std::uint64_t>(ft + 24);
  const auto manifest = load_le<std::uint64_t>(ft + 32);
  std::uint64_t chunks_bytes = 0, inodes_bytes = 0, a = 0, b = 0, index_size = 0;
  if (mul_overflows(chunk_count, f::kChunkEntrySize, chunks_bytes) ||
      mul_overflows(inode_count, f::kInodeEntrySize, inodes_bytes) || add_overflows(chunks_bytes, inodes_bytes, a) ||
      add_overflows(strings, manifest, b) || add_overflows(a, b, index_size) ||
      !range_within(index_offset, index_size, footer_at))
    return false;
  // Bounded, so that a table of many huge overlapping chunks cannot stall one fuzz iteration.
  std::uint64_t hash_budget = 64ull << 20;
  for (std::uint64_t k = 0; k < chunk_count; ++k) {
    auto *entry = &image[index_offset + k * f::kChunkEntrySize];
    const auto offset = load_le<std::uint64_t>(entry), stored = std::uint64_t{load_le<std::uint32_t>(entry + 8)};
    if (!range_within(offset, stored, image.size()) || stored > hash_budget) continue;
    hash_budget -= stored;
    const auto d = sha256(std::span(image).subspan(offset, stored));
    std::copy(d.begin(), d.end(), entry + 24);
  }
  Sha256 root;
  root.update(std::span(image).first(f::kHeaderSize));
  root.update(std::span(image).subspan(footer_at, f::kFooterRootedSize));
  root.update(std::span(image).subspan(index_offset, index_size));
  const auto d = root.finish();
  std::copy(d.begin(), d.end(), &image[footer_at + 64]);
  return true;
}

}  // namespace torshpkg::testing
