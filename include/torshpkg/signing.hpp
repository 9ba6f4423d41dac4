// Ed25519 signatures over the package root, the signature block that holds them, keys and trust.
//
// A signature signs 16 bytes of context ("torshpkg-root-v1") followed by the 32-byte root digest.
// The root covers header, index and manifest, and through the chunk digests every stored byte, so
// checking a signature costs the same for 100 MiB and 10 TiB; chunks are then checked lazily.
// docs/FORMAT.md (Signature block) and docs/SECURITY.md describe the format and the policy.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torshpkg/digest.hpp"

struct evp_pkey_st;

namespace torshpkg {


namespace sigblock {
inline constexpr std::array<std::uint8_t, 8> kMagic = {'T', 'P', 'K', 'G', 'S', 'I', 'G', 0x00};
inline constexpr std::uint16_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::size_t kEntrySize = 104;
inline constexpr std::size_t kMaxEntries = 64;
inline constexpr std::size_t kMaxSize = kHeaderSize + kMaxEntries * kEntrySize;
inline constexpr std::string_view kContext = "torshpkg-root-v1";  // 16 bytes, signed before the root
}  // namespace sigblock

enum class SignatureAlgorithm : std::uint16_t { kEd25519 = 1 };
inline constexpr std::size_t kEd25519PublicKeySize = 32;
inline constexpr std::size_t kEd25519SignatureSize = 64;

// Ed25519 keys sign; X25519 keys receive encrypted packages (crypt.hpp). Both are 32 raw bytes.
enum class KeyType : std::uint8_t { kEd25519, kX25519 };

// SHA-256 of the raw public key: names a key without carrying it.
using KeyId = Digest;
[[nodiscard]] std::string key_id_short(const KeyId &id);  // first 16 hex digits, for messages

struct SignatureEntry {
  SignatureAlgorithm algorithm = SignatureAlgorithm::kEd25519;
  KeyId key_id{};
  std::array<std::uint8_t, kEd25519SignatureSize> signature{};
};

// Throws FormatError naming the problem: wrong magic, version, size, count, algorithm, non-zero
// reserved bytes, or two signatures by the same key. An empty span is "no signatures".
[[nodiscard]] std::vector<SignatureEntry> parse_signature_block(std::span<const std::uint8_t> block);
[[nodiscard]] std::vector<std::uint8_t> encode_signature_block(std::span<const SignatureEntry> entries);

class PublicKey {
 public:
  // PEM SubjectPublicKeyInfo ("BEGIN PUBLIC KEY") of `type`. Throws UsageError/IoError.
  static PublicKey load(const std::string &path, KeyType type = KeyType::kEd25519);
  static PublicKey from_pem(std::string_view pem, const std::string &what, KeyType type = KeyType::kEd25519);
  [[nodiscard]] const KeyId &id() const noexcept { return id_; }
  [[nodiscard]] const std::array<std::uint8_t, 32> &raw() const noexcept { return raw_; }
  [[nodiscard]] evp_pkey_st *handle() const noexcept { return key_.get(); }
  [[nodiscard]] const std::string &source() const noexcept { return source_; }  // file it came from
  [[nodiscard]] bool verifies(const Digest &root, std::span<const std::uint8_t> signature) const;
  [[nodiscard]] std::string pem() const;

 private:
  friend class PrivateKey;
  // Takes ownership of `key` (an EVP_PKEY), also when it throws; so does PrivateKey's.
  explicit PublicKey(evp_pkey_st *key, std::string source);
  std::shared_ptr<evp_pkey_st> key_;
  std::array<std::uint8_t, 32> raw_{};
  KeyId id_{};
  std::string source_;
};

class PrivateKey {
 public:
  static PrivateKey generate(KeyType type = KeyType::kEd25519);
  // PEM PKCS#8, optionally encrypted. `passphrase`: nullopt asks on the terminal when the key is
  // encrypted and stdin is a tty, and fails with a UsageError otherwise.
  static PrivateKey load(const std::string &path, const std::optional<std::string> &passphrase,
                         KeyType type = KeyType::kEd25519);
  // The same from PEM text; `what` names it in messages.
  static PrivateKey from_pem(std::string_view pem, const std::string &what,
                             const std::optional<std::string> &passphrase, KeyType type = KeyType::kEd25519);
  [[nodiscard]] PublicKey public_key() const;
  [[nodiscard]] KeyType type() const noexcept { return type_; }
  [[nodiscard]] evp_pkey_st *handle() const noexcept { return key_.get(); }
  [[nodiscard]] SignatureEntry sign(const Digest &root) const;
  // PEM PKCS#8, encrypted with AES-256-CBC when a non-empty passphrase is given.
  [[nodiscard]] std::string pem(const std::string &passphrase) const;

 private:
  PrivateKey(evp_pkey_st *key, KeyType type);
  std::shared_ptr<evp_pkey_st> key_;
  KeyType type_ = KeyType::kEd25519;
};

// A --passphrase-file's first line, without the newline; nullopt when `path` is empty.
[[nodiscard]] std::optional<std::string> read_passphrase_file(const std::string &path);

// Asks twice on the terminal (no echo); throws UsageError when stdin is not a terminal or the two differ.
[[nodiscard]] std::string prompt_new_passphrase(const std::string &what);

inline constexpr std::string_view kDefaultTrustDir = "/etc/torshpkg/trusted.d";

// Public keys a verifier accepts: files given one by one, or every *.pub in a directory.
// The *.pub regular files of a trust directory, sorted: the files TrustStore::add_dir() reads.
[[nodiscard]] std::vector<std::string> trust_dir_files(const std::string &dir);

class TrustStore {
 public:
  // The keys named by files and directories, or, when none is named, those of the default trust
  // directory (kDefaultTrustDir): the rule the driver and the CLI share.
  static TrustStore from(const std::vector<std::string> &pubkeys, const std::vector<std::string> &dirs);
  void add(PublicKey key);
  KeyId add_file(const std::string &path);  // returns the key's id
  // Refuses a directory or key file that others may write (like sshd's StrictModes): whoever can
  // write there can make any package trusted. A missing directory is an empty store. Returns the
  // (id, file) of each key file read, in file name order.
  std::vector<std::pair<KeyId, std::string>> add_dir(const std::string &dir);
  [[nodiscard]] const PublicKey *find(const KeyId &id) const noexcept;
  [[nodiscard]] std::size_t size() const noexcept { return keys_.size(); }

 private:
  std::vector<PublicKey> keys_;
};


// Bytes of the signature block to write after the manifest for these keys (the packer's --sign).
[[nodiscard]] std::vector<std::uint8_t> signature_block_for(const Digest &root, std::span<const PrivateKey> keys);

}  // namespace torshpkg
