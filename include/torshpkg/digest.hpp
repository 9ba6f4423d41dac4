// SHA-256 through OpenSSL's SHA256_* functions (its SHA-NI code where the CPU has it).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <span>
#include <string>

#include "torshpkg/format.hpp"

struct SHA256state_st;

namespace torshpkg {

using Digest = std::array<std::uint8_t, format::kDigestSize>;

[[nodiscard]] Digest sha256(std::span<const std::uint8_t> data);
[[nodiscard]] std::string to_hex(std::span<const std::uint8_t> bytes);
// 64 hex digits -> digest; nullopt for anything else.
[[nodiscard]] std::optional<Digest> from_hex(std::string_view hex);

// Incremental SHA-256 for streams (whole-file digests, the package root).
class Sha256 {
 public:
  Sha256();
  void update(std::span<const std::uint8_t> data);
  [[nodiscard]] Digest finish();  // and starts over: the object can hash the next message

 private:
  struct Free {
    void operator()(SHA256state_st *ctx) const noexcept;
  };
  std::unique_ptr<SHA256state_st, Free> ctx_;
};

}  // namespace torshpkg
