// Package encryption (docs/FORMAT.md, "Encryption"; docs/SECURITY.md): one random 32-byte content
// key per package; every stored chunk (after compression), and optionally the string table and the
// manifest, sealed with AES-256-GCM under a key derived from it; the content key wrapped for each
// recipient in the key block, an unrooted part of the package's tail that `rekey` rewrites alone.
//
// Sealed bytes are nonce (12) | ciphertext | tag (16). The nonce is synthetic: the first 12 bytes
// of HMAC-SHA-256(nonce key, aad | plaintext), so equal chunks seal to equal bytes (the packer's
// deduplication and reproducible output keep working) and two different plaintexts share a nonce
// only by a 96-bit collision. Chunk digests cover the sealed bytes: signatures, lazy verification
// and `verify` work without any key.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/digest.hpp"
#include "torshpkg/signing.hpp"

namespace torshpkg {

namespace crypt {
inline constexpr std::size_t kKeySize = 32;
inline constexpr std::size_t kNonceSize = 12;
inline constexpr std::size_t kTagSize = 16;
inline constexpr std::size_t kOverhead = kNonceSize + kTagSize;  // sealed size - plaintext size
inline constexpr std::size_t kKeyCheckSize = 24;                 // header bytes 40..63
inline constexpr std::uint8_t kCipherAes256Gcm = 1;              // header byte 33
inline constexpr std::uint8_t kFlagSealedNames = 1u << 0;        // header byte 34: strings + manifest sealed
}  // namespace crypt

// HMAC-SHA-256 (RFC 2104) and HKDF-SHA-256 (RFC 5869), over the linked SHA256_* functions.
[[nodiscard]] Digest hmac_sha256(std::span<const std::uint8_t> key, std::span<const std::uint8_t> message);
// The same over the concatenation of `message`'s parts, without building it.
[[nodiscard]] Digest hmac_sha256(std::span<const std::uint8_t> key,
                                 std::initializer_list<std::span<const std::uint8_t>> message);
[[nodiscard]] std::vector<std::uint8_t> hkdf_sha256(std::span<const std::uint8_t> salt,
                                                    std::span<const std::uint8_t> secret, std::string_view info,
                                                    std::size_t length);

// A package's content key, wiped when it goes.
class ContentKey {
 public:
  static ContentKey generate();
  explicit ContentKey(std::span<const std::uint8_t, crypt::kKeySize> bytes) noexcept;
  ContentKey(const ContentKey &) = default;
  ContentKey &operator=(const ContentKey &) = default;
  ~ContentKey();
  [[nodiscard]] std::span<const std::uint8_t, crypt::kKeySize> bytes() const noexcept { return bytes_; }
  // What the header records: shows a key opens this package (GCM alone is not key-committing).
  [[nodiscard]] std::array<std::uint8_t, crypt::kKeyCheckSize> check() const;

 private:
  std::array<std::uint8_t, crypt::kKeySize> bytes_{};
};

// Seals and opens under the keys a content key derives. Safe from many threads.
class Sealer {
 public:
  explicit Sealer(const ContentKey &key);
  ~Sealer();
  Sealer(const Sealer &) = delete;
  Sealer &operator=(const Sealer &) = delete;
  // out = nonce | ciphertext | tag (plain.size() + kOverhead bytes).
  void seal(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> plain,
            std::vector<std::uint8_t> &out) const;
  // Opens `sealed` into `out` (sealed.size() - kOverhead bytes; may be sealed.data() + kNonceSize,
  // in place). Throws IntegrityError when the tag does not check: wrong bytes, aad or key.
  void open(std::span<const std::uint8_t> aad, std::span<const std::uint8_t> sealed, std::span<std::uint8_t> out) const;

 private:
  std::array<std::uint8_t, crypt::kKeySize> cipher_key_{}, nonce_key_{};
};

// The associated data of a chunk: what decodes it (codec, filter, decoded size), so that sealed
// bytes cannot be relabelled; and of the string table and the manifest.
[[nodiscard]] std::array<std::uint8_t, 16> chunk_aad(std::uint8_t codec, std::uint8_t filter,
                                                     std::uint32_t decoded_size) noexcept;
inline constexpr std::string_view kStringsAad = "torshpkg-strings";
inline constexpr std::string_view kManifestAad = "torshpkg-manifest";
[[nodiscard]] inline std::span<const std::uint8_t> as_bytes(std::string_view s) noexcept {
  return {reinterpret_cast<const std::uint8_t *>(s.data()), s.size()};
}

// ---- recipients and the key block ----

namespace keyblock {
inline constexpr std::array<std::uint8_t, 8> kMagic = {'T', 'P', 'K', 'G', 'K', 'E', 'Y', 0x00};
inline constexpr std::uint16_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::size_t kEntrySize = 128;
inline constexpr std::size_t kMaxEntries = 64;
inline constexpr std::size_t kMaxSize = kHeaderSize + kMaxEntries * kEntrySize;
inline constexpr unsigned kMinScryptLogN = 10, kMaxScryptLogN = 22;  // 2^22 x 1 KiB = 4 GiB at most
inline constexpr unsigned kDefaultScryptLogN = 18;                   // 256 MiB, about a second
}  // namespace keyblock

enum class StanzaType : std::uint16_t { kX25519 = 1, kScrypt = 2 };

// One wrapping of the content key. X25519: `id` is the recipient's key id (SHA-256 of the raw
// public key), `ephemeral` the sender's one-time public key. Scrypt: `id` holds the 16-byte salt.
struct KeyStanza {
  StanzaType type = StanzaType::kX25519;
  std::uint8_t scrypt_log_n = 0;
  std::array<std::uint8_t, 32> id{};
  std::array<std::uint8_t, 32> ephemeral{};
  std::array<std::uint8_t, crypt::kKeySize + crypt::kTagSize> wrapped{};
};

// Throws FormatError naming the problem. Returns the stanzas and the block's size, which says where
// the signature block after it starts.
[[nodiscard]] std::pair<std::vector<KeyStanza>, std::size_t> parse_key_block(std::span<const std::uint8_t> tail);
[[nodiscard]] std::vector<std::uint8_t> encode_key_block(std::span<const KeyStanza> stanzas);
// "x25519 0123456789abcdef" or "passphrase (scrypt 2^18)", for inspect and messages.
[[nodiscard]] std::string describe(const KeyStanza &s);

// What a user may hold to open packages: X25519 identities (PrivateKey of KeyType::kX25519) and
// passphrases. `ask` prompts on the terminal for a passphrase when a scrypt stanza is the only hope.
struct KeyRing {
  std::vector<PrivateKey> identities;
  std::vector<std::string> passphrases;
  bool ask = false;
  [[nodiscard]] bool empty() const noexcept { return identities.empty() && passphrases.empty() && !ask; }
};

[[nodiscard]] KeyStanza wrap_for(const PublicKey &recipient, const ContentKey &key);
[[nodiscard]] KeyStanza wrap_for_passphrase(std::string_view passphrase, const ContentKey &key,
                                            unsigned log_n = keyblock::kDefaultScryptLogN);

struct Unwrapped {
  ContentKey key;
  std::size_t stanza = 0;  // which stanza opened it
};
// The content key from the first stanza some key of `ring` opens and whose key check matches
// `check`; nullopt when none does. A stanza that opens but fails the check is an IntegrityError
// (a forged key block).
[[nodiscard]] std::optional<Unwrapped> unwrap(std::span<const KeyStanza> stanzas, const KeyRing &ring,
                                              std::span<const std::uint8_t, crypt::kKeyCheckSize> check);

}  // namespace torshpkg
