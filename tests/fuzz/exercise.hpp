// Hostile-input driver shared by the libFuzzer target (fuzz_package.cpp) and the hostile-corpus
// runner (tests/hostile/corpus_check.cpp): open an in-memory package image, then use every part of
// it the way the CLI and the FUSE driver do. Only torshpkg::Error is caught: any other exception,
// a crash or a sanitizer report is a finding.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "torshpkg/crypt.hpp"

namespace torshpkg::testing {

struct ExerciseReport {
  // "ok", "format_error", "integrity_error", or "error" for any other torshpkg::Error.
  std::string outcome = "ok";
  std::string stage;    // where the first error came from: "open", "signatures" or "read" (empty when ok)
  std::string message;  // what() of the first error
  std::uint64_t inodes = 0, files_read = 0, bytes_read = 0;
  bool budget_exhausted = false;  // stopped reading early (see kReadBudget in exercise.cpp)
};

// Package::from_bytes, then: the signature block and the trust policy (no trusted keys); every
// inode's name, path and lookup; every symlink's target; every regular file's contents through
// Reader::slices (as `torshpkg cat` reads) plus a few Reader::read calls at chunk boundaries (as
// the driver reads); the manifest text. A file whose read fails does not stop the walk.
// Throws std::logic_error when the package opens but contradicts itself.
// An encrypted package is opened with the fuzzing identity below (seeds are encrypted to it, so
// mutations reach the unsealing and decrypting code); one encrypted for others opens locked, and
// then only what a locked package offers is used (structure, stored-chunk digests).
[[nodiscard]] ExerciseReport exercise_package_report(std::span<const std::uint8_t> image);

// The X25519 identity the fuzz target and the hostile corpus open encrypted packages with. Public
// on purpose: it protects nothing. Its public key, for `torshpkg pack --encrypt-to`:
inline constexpr const char *kFuzzIdentityPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VuBCIEIKAmrFR2iIqrK3Cnftef8H3EH+zGvczXup1SgK+GHYtw\n"
    "-----END PRIVATE KEY-----\n";
inline constexpr const char *kFuzzRecipientPem =
    "-----BEGIN PUBLIC KEY-----\n"
    "MCowBQYDK2VuAyEACC2tJKUYuVH8LKcX4HcM7lHM3nlSZKL/W3IrbKr5NyY=\n"
    "-----END PUBLIC KEY-----\n";
// A key ring holding that identity.
[[nodiscard]] const KeyRing &fuzz_keys();
[[nodiscard]] std::string exercise_package(std::span<const std::uint8_t> image);

// Fuzzing aid: rewrites every chunk digest whose stored bytes lie inside the image, then the root
// digest, as an attacker can (neither is a signature), so that mutations reach the validators and
// decoders behind the digests. Returns false when the footer does not locate an index in the image.
bool reseal_digests(std::vector<std::uint8_t> &image);

}  // namespace torshpkg::testing
