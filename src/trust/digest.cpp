#define OPENSSL_SUPPRESS_DEPRECATED  // SHA256_Init and friends: see Sha256 below
#include "torshpkg/digest.hpp"

#include <openssl/sha.h>

#include <array>
#include <tuple>

#include "torshpkg/errors.hpp"
#include "torshpkg/hex.hpp"

namespace torshpkg {

// The SHA256_* functions, deprecated since OpenSSL 3.0 but kept by every 3.x, instead of EVP: the
// same assembly, without the provider machinery. The first EVP digest initialises OpenSSL's
// providers, which costs a cold mount.torshpkg 5 ms of page faults (11.5 -> 6.7 ms for a static
// test program after drop_caches, median of 11): an unsigned package's mount then needs no EVP at
// all. Signatures (Ed25519) still go through EVP, in signing.cpp.
void Sha256::Free::operator()(SHA256state_st *ctx) const noexcept {
  delete ctx;
}

Sha256::Sha256() : ctx_(new SHA256_CTX) {
  if (SHA256_Init(ctx_.get()) != 1) throw InternalError("OpenSSL: cannot start SHA-256");
}

void Sha256::update(std::span<const std::uint8_t> data) {
  if (SHA256_Update(ctx_.get(), data.data(), data.size()) != 1) throw InternalError("OpenSSL: SHA-256 update failed");
}

Digest Sha256::finish() {
  Digest d{};
  static_assert(std::tuple_size_v<Digest> == SHA256_DIGEST_LENGTH);
  if (SHA256_Final(d.data(), ctx_.get()) != 1) throw InternalError("OpenSSL: SHA-256 failed");
  if (SHA256_Init(ctx_.get()) != 1) throw InternalError("OpenSSL: cannot restart SHA-256");  // the next message
  return d;
}

Digest sha256(std::span<const std::uint8_t> data) {
  thread_local Sha256 ctx;  // one context per thread, re-initialised per digest
  ctx.update(data);
  return ctx.finish();
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (auto b : bytes) {
    s.push_back(kHex[b >> 4]);
    s.push_back(kHex[b & 15]);
  }
  return s;
}

std::optional<Digest> from_hex(std::string_view hex) {
  // A table, not hex_digit_value()'s branches: random digits mispredict, and a manifest of 10,000
  // files made this a tenth of the mount's time.
  static constexpr auto kValue = [] {
    std::array<std::int8_t, 256> t{};
    for (unsigned c = 0; c < 256; ++c) t[c] = static_cast<std::int8_t>(hex_digit_value(static_cast<unsigned char>(c)));
    return t;
  }();
  if (hex.size() != 2 * std::tuple_size_v<Digest>) return std::nullopt;
  Digest d{};
  int bad = 0;
  for (std::size_t i = 0; i < d.size(); ++i) {
    const int hi = kValue[static_cast<unsigned char>(hex[2 * i])],
              lo = kValue[static_cast<unsigned char>(hex[2 * i + 1])];
    bad |= hi | lo;  // negative when either is not a digit
    d[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  if (bad < 0) return std::nullopt;
  return d;
}

}  // namespace torshpkg
