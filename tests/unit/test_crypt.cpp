// Encryption: HMAC/HKDF against the RFCs' vectors, sealing, the key block, recipients, and
// encrypted packages end to end through the packer and the reader (1 and 3 recipients, sealed
// and public names, wrong keys, tampered ciphertext, rekey).
#include <doctest/doctest.h>

#include <algorithm>

#include "helpers.hpp"
#include "torshpkg/crypt.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

std::vector<std::uint8_t> unhex(std::string_view h) {
  std::vector<std::uint8_t> out;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  return out;
}

constexpr unsigned kFastScrypt = 10;  // tests only: 1 MiB, milliseconds

struct Packed {
  fs::path path, src;
};

Packed pack_encrypted(const th::TempDir &dir, const std::string &name, std::vector<PublicKey> to,
                      std::vector<std::string> passphrases = {}, bool seal_names = true) {
  const auto src = dir / (name + "-src");
  fs::create_directories(src / "sub");
  th::write_file(src / "config.json", "{\"hidden_size\": 64}\n");
  th::write_file(src / "sub" / "weights.bin", th::random_bytes(300'000, 7));
  th::write_file(src / "sub" / "zeros.bin", std::string(200'000, '\0'));  // compresses: zstd under the seal
  fs::create_symlink("sub/weights.bin", src / "link");
  PackOptions o;
  o.source_dir = src;
  o.output = dir / (name + ".tpkg");
  o.chunk_shift = 16;
  o.encrypt_to = std::move(to);
  o.encrypt_passphrases = std::move(passphrases);
  o.scrypt_log_n = kFastScrypt;
  o.seal_names = seal_names;
  (void)pack(o);
  return {o.output, src};
}

KeyRing ring_of(const PrivateKey &k) {
  KeyRing r;
  r.identities.push_back(k);
  return r;
}

th::Bytes read_all(const std::shared_ptr<const Package> &pkg, std::string_view path) {
  Reader reader(pkg, 8 << 20);
  const auto ino = pkg->resolve(path);
  REQUIRE(ino.has_value());
  th::Bytes out;
  const auto size = pkg->inode(*ino).size;
  for (const auto &s : reader.slices(*ino, 0, size))
    out.insert(out.end(), s.chunk->data() + s.offset, s.chunk->data() + s.offset + s.length);
  return out;
}

bool contains(const th::Bytes &hay, std::string_view needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

}  // namespace

TEST_CASE("HMAC-SHA-256 and HKDF-SHA-256 match RFC 4231 and RFC 5869") {
  // RFC 4231 test case 2.
  const std::string key = "Jefe", msg = "what do ya want for nothing?";
  CHECK(to_hex(hmac_sha256(as_bytes(key), as_bytes(msg))) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // RFC 4231 test case 6: a key longer than the block is hashed first.
  const std::vector<std::uint8_t> long_key(131, 0xaa);
  CHECK(to_hex(hmac_sha256(long_key, as_bytes("Test Using Larger Than Block-Size Key - Hash Key First"))) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  // RFC 5869 test case 1.
  const std::vector<std::uint8_t> ikm(22, 0x0b);
  const auto salt = unhex("000102030405060708090a0b0c");
  const auto info = unhex("f0f1f2f3f4f5f6f7f8f9");
  const auto okm =
      hkdf_sha256(salt, ikm, std::string_view(reinterpret_cast<const char *>(info.data()), info.size()), 42);
  CHECK(to_hex(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST_CASE("sealing: deterministic, bound to its aad and key, tamper-evident") {
  const auto key = ContentKey::generate();
  const Sealer s(key);
  const auto plain = th::random_bytes(5000, 1);
  const auto aad = chunk_aad(1, 0, 5000);
  std::vector<std::uint8_t> a, b;
  s.seal(aad, plain, a);
  s.seal(aad, plain, b);
  CHECK(a.size() == plain.size() + crypt::kOverhead);
  CHECK(a == b);  // synthetic nonce: equal chunks, equal bytes (dedup)
  std::vector<std::uint8_t> out(plain.size());
  s.open(aad, a, out);
  CHECK(out == plain);
  // In place, as the reader unseals the string table.
  auto in_place = a;
  s.open(aad, in_place, std::span(in_place).subspan(crypt::kNonceSize, plain.size()));
  CHECK(std::equal(plain.begin(), plain.end(), in_place.begin() + crypt::kNonceSize));
  // Another aad (relabelled codec), another key, a flipped bit anywhere: refused, output wiped.
  CHECK_THROWS_AS(s.open(chunk_aad(0, 0, 5000), a, out), IntegrityError);
  CHECK_THROWS_AS(Sealer(ContentKey::generate()).open(aad, a, out), IntegrityError);
  for (std::size_t at : {std::size_t{0}, std::size_t{11}, std::size_t{12}, a.size() / 2, a.size() - 1}) {
    auto bad = a;
    bad[at] ^= 0x20;
    CHECK_THROWS_AS(s.open(aad, bad, out), IntegrityError);
  }
  CHECK(std::all_of(out.begin(), out.end(), [](std::uint8_t x) { return x == 0; }));
  std::vector<std::uint8_t> other;
  s.seal(aad, th::random_bytes(5000, 2), other);
  CHECK(!std::equal(a.begin(), a.begin() + crypt::kNonceSize, other.begin()));  // another plaintext, another nonce
}

TEST_CASE("recipients: X25519 and passphrase entries unwrap the content key; others do not") {
  const auto key = ContentKey::generate();
  const auto alice = PrivateKey::generate(KeyType::kX25519), bob = PrivateKey::generate(KeyType::kX25519);
  const auto carol = PrivateKey::generate(KeyType::kX25519);
  std::vector<KeyStanza> stanzas = {wrap_for(alice.public_key(), key), wrap_for(bob.public_key(), key),
                                    wrap_for_passphrase("correct horse", key, kFastScrypt)};
  const auto block = encode_key_block(stanzas);
  const auto [parsed, size] = parse_key_block(block);
  CHECK(size == block.size());
  REQUIRE(parsed.size() == 3);
  const auto check = key.check();
  const auto by_bob = unwrap(parsed, ring_of(bob), check);
  REQUIRE(by_bob.has_value());
  CHECK(by_bob->stanza == 1);
  CHECK(std::equal(by_bob->key.bytes().begin(), by_bob->key.bytes().end(), key.bytes().begin()));
  CHECK_FALSE(unwrap(parsed, ring_of(carol), check).has_value());
  KeyRing pass;
  pass.passphrases = {"wrong", "correct horse"};
  const auto by_pass = unwrap(parsed, pass, check);
  REQUIRE(by_pass.has_value());
  CHECK(by_pass->stanza == 2);
  // A signing key is not an identity; an empty ring opens nothing.
  KeyRing signing;
  signing.identities.push_back(PrivateKey::generate());
  CHECK_FALSE(unwrap(parsed, signing, check).has_value());
  CHECK_FALSE(unwrap(parsed, KeyRing{}, check).has_value());
  // A key block that opens to another key than the header's check: a forgery, said so.
  const auto other = ContentKey::generate();
  const std::vector<KeyStanza> forged = {wrap_for(alice.public_key(), other)};
  CHECK_THROWS_AS((void)unwrap(forged, ring_of(alice), check), IntegrityError);
  CHECK_THROWS_AS((void)PrivateKey::generate(KeyType::kX25519).sign(Digest{}), UsageError);
}

TEST_CASE("hostile key blocks are format errors") {
  const auto key = ContentKey::generate();
  const auto good = encode_key_block(std::vector{wrap_for(PrivateKey::generate(KeyType::kX25519).public_key(), key),
                                                 wrap_for_passphrase("p", key, kFastScrypt)});
  auto with = [&](auto mutate) {
    auto b = good;
    mutate(b);
    try {
      (void)parse_key_block(b);
      return std::string("ok");
    } catch (const FormatError &) {
      return std::string("FormatError");
    }
  };
  CHECK(with([](auto &) {}) == "ok");
  CHECK(with([](auto &b) { b.resize(10); }) == "FormatError");
  CHECK(with([](auto &b) { b[0] ^= 1; }) == "FormatError");
  CHECK(with([](auto &b) { store_le<std::uint16_t>(&b[8], 2); }) == "FormatError");
  CHECK(with([](auto &b) { store_le<std::uint16_t>(&b[10], 0); }) == "FormatError");
  CHECK(with([](auto &b) { store_le<std::uint16_t>(&b[10], 65); }) == "FormatError");
  CHECK(with([](auto &b) { store_le<std::uint16_t>(&b[10], 3); }) == "FormatError");  // cut short
  CHECK(with([](auto &b) { store_le<std::uint32_t>(&b[12], 127); }) == "FormatError");
  CHECK(with([](auto &b) { store_le<std::uint16_t>(&b[16], 9); }) == "FormatError");  // unknown type
  CHECK(with([](auto &b) { b[16 + 3] = 1; }) == "FormatError");                       // reserved
  CHECK(with([](auto &b) { b[16 + 2] = 5; }) == "FormatError");                       // x25519 with a work factor
  CHECK(with([](auto &b) { b[16 + 128 + 2] = 40; }) == "FormatError");                // scrypt 2^40: memory bomb
  CHECK(with([](auto &b) { b[16 + 128 + 2] = 2; }) == "FormatError");
  CHECK(with([](auto &b) { b[16 + 128 + 8 + 20] = 1; }) == "FormatError");                // bytes past the salt
  CHECK(with([](auto &b) { std::copy_n(&b[16], 128, &b[16 + 128]); }) == "FormatError");  // same recipient twice
}

TEST_CASE("encrypted packages: sealed names, 1 and 3 recipients, locked opening, wrong keys") {
  th::TempDir dir;
  const auto a = PrivateKey::generate(KeyType::kX25519), b = PrivateKey::generate(KeyType::kX25519),
             c = PrivateKey::generate(KeyType::kX25519), stranger = PrivateKey::generate(KeyType::kX25519);
  for (const bool three : {false, true}) {
    CAPTURE(three);
    std::vector<PublicKey> to = {a.public_key()};
    if (three) to = {a.public_key(), b.public_key(), c.public_key()};
    const auto p = pack_encrypted(dir, three ? "three" : "one", to);
    const auto ring = ring_of(three ? c : a);
    const auto pkg = Package::open(p.path.string(), ChunkDigests::kVerify, &ring);
    CHECK(pkg->encrypted());
    CHECK_FALSE(pkg->locked());
    CHECK(pkg->names_sealed());
    CHECK(pkg->key_stanzas().size() == to.size());
    CHECK(pkg->opened_by() == (three ? std::optional<std::size_t>(2) : std::optional<std::size_t>(0)));
    CHECK(read_all(pkg, "sub/weights.bin") == th::read_file(p.src / "sub" / "weights.bin"));
    CHECK(read_all(pkg, "sub/zeros.bin") == th::read_file(p.src / "sub" / "zeros.bin"));
    CHECK(read_all(pkg, "config.json") == th::read_file(p.src / "config.json"));
    CHECK(pkg->symlink_target(*pkg->resolve("link")) == "sub/weights.bin");
    CHECK(pkg->manifest().files.size() == 3);

    // No key, a stranger's key, a signing key: KeyError, which names who can open it.
    const auto stranger_ring = ring_of(stranger);
    CHECK_THROWS_AS((void)Package::open(p.path.string()), KeyError);
    CHECK_THROWS_AS((void)Package::open(p.path.string(), ChunkDigests::kVerify, &stranger_ring), KeyError);
    try {
      (void)Package::open(p.path.string());
    } catch (const KeyError &e) {
      CHECK(std::string(e.what()).find("x25519 " + key_id_short(a.public_key().id())) != std::string::npos);
    }
    // Locked: sizes, digests and stanzas are public, names and the manifest are not, chunks refuse.
    const auto locked = Package::open(p.path.string(), ChunkDigests::kVerify, nullptr, Package::Locked::kAllowed);
    CHECK(locked->locked());
    CHECK(locked->names_hidden());
    CHECK(locked->root_digest() == pkg->root_digest());
    CHECK_THROWS_AS((void)locked->manifest(), KeyError);
    std::vector<std::uint8_t> out(locked->chunk(0).decoded_size);
    CHECK_THROWS_AS(locked->load_chunk(0, out), KeyError);
    for (std::uint64_t k = 0; k < locked->chunk_count(); ++k) CHECK_NOTHROW(locked->check_stored(k));
    // The names are not in the file in the clear.
    const auto bytes = th::read_file(p.path);
    CHECK_FALSE(contains(bytes, "weights.bin"));
    CHECK_FALSE(contains(bytes, "hidden_size"));
  }
}

TEST_CASE("encrypted packages: public names, passphrases, dedup, tampering") {
  th::TempDir dir;
  const auto a = PrivateKey::generate(KeyType::kX25519);
  const auto p = pack_encrypted(dir, "pub", {a.public_key()}, {"open sesame"}, false);
  const auto locked = Package::open(p.path.string(), ChunkDigests::kVerify, nullptr, Package::Locked::kAllowed);
  CHECK(locked->locked());
  CHECK_FALSE(locked->names_hidden());
  CHECK(locked->resolve("sub/weights.bin").has_value());  // names readable without a key
  CHECK(locked->manifest().files.size() == 3);
  KeyRing pass;
  pass.passphrases = {"open sesame"};
  const auto pkg = Package::open(p.path.string(), ChunkDigests::kVerify, &pass);
  CHECK(pkg->opened_by() == std::optional<std::size_t>(1));
  CHECK(read_all(pkg, "sub/weights.bin") == th::read_file(p.src / "sub" / "weights.bin"));

  // Two equal files dedup under encryption (synthetic nonces).
  const auto src = dir / "dup-src";
  fs::create_directories(src);
  const auto data = th::random_bytes(200'000, 9);
  th::write_file(src / "x.bin", data);
  th::write_file(src / "y.bin", data);
  PackOptions o;
  o.source_dir = src;
  o.output = dir / "dup.tpkg";
  o.chunk_shift = 16;
  o.encrypt_to = {a.public_key()};
  const auto r = pack(o);
  CHECK(r.unique_chunks * 2 == r.chunks);
  CHECK(r.recipients == 1);

  // A flipped byte in a sealed chunk: its digest fails (the digest covers the ciphertext). The
  // same bytes re-described with a matching digest (an unsigned package rewritten by someone
  // without the key) fail the tag instead: never plaintext garbage.
  auto bytes = th::read_file(p.path);
  const auto ring = ring_of(a);
  const auto c0 = pkg->chunk(0);
  bytes[c0.offset + 20] ^= 1;
  th::write_file(dir / "flipped.tpkg", bytes);
  const auto flipped = Package::open((dir / "flipped.tpkg").string(), ChunkDigests::kVerify, &ring);
  std::vector<std::uint8_t> out(c0.decoded_size);
  CHECK_THROWS_AS(flipped->load_chunk(0, out), IntegrityError);
  CHECK_THROWS_AS(flipped->check_stored(0), DigestMismatch);
  const auto skipping = Package::open(std::make_shared<FileSource>((dir / "flipped.tpkg").string()),
                                      ChunkDigests::kSkipForBenchmark, nullptr, ManifestCheck::kAtOpen, &ring);
  CHECK_THROWS_AS(skipping->load_chunk(0, out), IntegrityError);  // the tag, with digests skipped
}

TEST_CASE("rekey: add and remove recipients, tail only, signatures kept") {
  th::TempDir dir;
  const auto a = PrivateKey::generate(KeyType::kX25519), b = PrivateKey::generate(KeyType::kX25519);
  const auto signer = PrivateKey::generate();
  auto p = pack_encrypted(dir, "rk", {a.public_key()});
  sign_package(p.path.string(), signer);
  const auto before = th::read_file(p.path);
  const auto ring_a = ring_of(a), ring_b = ring_of(b);
  const auto root = Package::open(p.path.string(), ChunkDigests::kVerify, &ring_a)->root_digest();

  RekeyOptions add;
  add.add = {b.public_key()};
  CHECK(rekey_package(p.path.string(), ring_a, add) == 2);
  auto by_b = Package::open(p.path.string(), ChunkDigests::kVerify, &ring_b);
  CHECK(by_b->root_digest() == root);
  CHECK(by_b->signatures().size() == 1);
  CHECK(read_all(by_b, "sub/weights.bin") == th::read_file(p.src / "sub" / "weights.bin"));
  const auto after = th::read_file(p.path);
  const auto manifest_end = by_b->manifest_end();
  CHECK(std::equal(after.begin(), after.begin() + static_cast<std::ptrdiff_t>(manifest_end),
                   before.begin()));  // only the tail changed

  RekeyOptions remove;
  remove.remove = {a.public_key()};
  CHECK(rekey_package(p.path.string(), ring_b, remove) == 1);
  CHECK_THROWS_AS((void)Package::open(p.path.string(), ChunkDigests::kVerify, &ring_a), KeyError);
  CHECK_NOTHROW((void)Package::open(p.path.string(), ChunkDigests::kVerify, &ring_b));
  // Removing the last recipient, or a stranger, or rekeying without a key: refused.
  RekeyOptions remove_b, remove_a;
  remove_b.remove = {b.public_key()};
  remove_a.remove = {a.public_key()};
  CHECK_THROWS_AS((void)rekey_package(p.path.string(), ring_b, remove_b), UsageError);
  CHECK_THROWS_AS((void)rekey_package(p.path.string(), ring_b, remove_a), UsageError);
  CHECK_THROWS_AS((void)rekey_package(p.path.string(), ring_a, add), KeyError);
  // Re-signing an encrypted package keeps its key block.
  sign_package(p.path.string(), PrivateKey::generate());
  CHECK(Package::open(p.path.string(), ChunkDigests::kVerify, &ring_b)->signatures().size() == 2);
}
