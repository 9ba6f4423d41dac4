#include "torshpkg/digest.hpp"

#include <array>

#include "openssl.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/hex.hpp"

namespace torshpkg {

namespace {
// OpenSSL 3 looks the algorithm up in a locked provider store on every implicit EVP_sha256() use;
// fetching once avoids that lock on the hot path (one digest per chunk read). Never freed: contexts
// in threads still running at exit may use it.
const EVP_MD *sha256_md() {
  static EVP_MD *md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (!md) throw InternalError("OpenSSL: SHA-256 unavailable");
  return md;
}
}  // namespace

void Sha256::Free::operator()(evp_md_ctx_st *ctx) const noexcept { openssl::UniqueMdCtx::deleter_type{}(ctx); }

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), sha256_md(), nullptr) != 1)
    throw InternalError("OpenSSL: cannot start SHA-256");
}

void Sha256::update(std::span<const std::uint8_t> data) {
  if (EVP_DigestUpdate(ctx_.get(), data.data(), data.size()) != 1)
    throw InternalError("OpenSSL: SHA-256 update failed");
}

Digest Sha256::finish() {
  Digest d{};
  unsigned len = 0;
  if (EVP_DigestFinal_ex(ctx_.get(), d.data(), &len) != 1 || len != d.size())
    throw InternalError("OpenSSL: SHA-256 failed");
  // Ready for the next message: EVP_DigestInit_ex with the same md reuses the context's state.
  if (EVP_DigestInit_ex(ctx_.get(), sha256_md(), nullptr) != 1) throw InternalError("OpenSSL: cannot restart SHA-256");
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
