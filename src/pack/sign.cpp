// `torshpkg sign`: a signature added to an existing package, rewriting only its tail (replace_tail,
// which rekey.cpp shares).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "tail.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/writer.hpp"

namespace torshpkg {

void sign_package(const std::string &path, const PrivateKey &key, const std::string &output) {
  // The root must check out before we vouch for it; an encrypted one needs no key for that.
  const auto pkg = Package::open(path, ChunkDigests::kVerify, nullptr, Package::Locked::kAllowed);
  std::vector<SignatureEntry> entries = pkg->signatures();
  const auto entry = key.sign(pkg->root_digest());
  const auto same = std::find_if(entries.begin(), entries.end(), [&](const auto &e) { return e.key_id == entry.key_id; });
  if (same != entries.end()) *same = entry;
  else entries.push_back(entry);
  std::vector<std::uint8_t> blocks(pkg->key_block().begin(), pkg->key_block().end());
  const auto signatures = encode_signature_block(entries);
  blocks.insert(blocks.end(), signatures.begin(), signatures.end());
  replace_tail(*pkg, path, blocks, output);
}

void replace_tail(const Package &pkg, const std::string &path, const std::vector<std::uint8_t> &blocks,
                  const std::string &output) {
  format::Footer f = pkg.footer();
  const std::uint64_t manifest_end = pkg.manifest_end();
  f.signature_offset = blocks.empty() ? 0 : manifest_end;
  f.signature_size = blocks.size();
  std::vector<std::uint8_t> tail(blocks);
  tail.resize(blocks.size() + format::kFooterSize);
  format::encode(f, std::span(tail).last<format::kFooterSize>());

  if (output.empty()) {
    // In place: only the tail (at most a few KiB) is rewritten, then the file is cut to size.
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd) throw_errno("open for writing", path);
    if (::pwrite(fd.get(), tail.data(), tail.size(), static_cast<off_t>(manifest_end)) != static_cast<ssize_t>(tail.size()))
      throw_errno("write", path);
    if (::ftruncate(fd.get(), static_cast<off_t>(manifest_end + tail.size())) != 0) throw_errno("truncate", path);
    if (::fsync(fd.get()) != 0) throw_errno("fsync", path);
    return;
  }
  // A copy: the unchanged prefix, then the new tail, written under a temporary name.
  const auto src = open_read(path);
  TempOutput out(output);
  loff_t in_off = 0;
  while (static_cast<std::uint64_t>(in_off) < manifest_end) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(manifest_end - static_cast<std::uint64_t>(in_off), 1u << 30));
    const ssize_t n = ::copy_file_range(src.get(), &in_off, out.fd(), nullptr, want, 0);
    if (n < 0) throw_errno("copy", path);
    if (n == 0) throw FormatError(path + ": file shrank while copying");
  }
  write_all(out.fd(), tail, out.temp_path());
  out.commit();
}

}  // namespace torshpkg
