// Ed25519 keys, the signature block codec, trust stores and the trust policy.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include "helpers.hpp"
#include "torshpkg/trust_policy.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/signing.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

Digest digest_of(std::string_view s) { return sha256(th::bytes_of(s)); }

// A small package, optionally signed by `keys` at pack time.
fs::path pack_small(const th::TempDir &dir, const std::string &name, std::vector<PrivateKey> keys = {}) {
  const auto src = dir / (name + "-src");
  fs::create_directories(src);
  th::write_file(src / "a.txt", "hello\n");
  th::write_file(src / "w.bin", th::random_bytes(100'000, 3));
  PackOptions o;
  o.source_dir = src;
  o.output = dir / (name + ".tpkg");
  o.chunk_shift = 16;
  o.sign_with = std::move(keys);
  (void)pack(o);
  return o.output;
}

}  // namespace

TEST_CASE("sign and verify the root; any other root or signature fails") {
  const auto key = PrivateKey::generate();
  const auto pub = key.public_key();
  const auto root = digest_of("root");
  const auto e = key.sign(root);
  CHECK(e.key_id == pub.id());
  CHECK(pub.verifies(root, e.signature));
  CHECK_FALSE(pub.verifies(digest_of("other root"), e.signature));
  auto bad = e.signature;
  bad[10] ^= 1;
  CHECK_FALSE(pub.verifies(root, bad));
  CHECK_FALSE(pub.verifies(root, std::span(e.signature).first(63)));
  CHECK_FALSE(PrivateKey::generate().public_key().verifies(root, e.signature));
}

TEST_CASE("keys round-trip through PEM, encrypted or not") {
  th::TempDir dir;
  const auto key = PrivateKey::generate();
  const auto id = key.public_key().id();
  th::write_file(dir / "plain.key", key.pem(""));
  th::write_file(dir / "enc.key", key.pem("s3cret"));
  th::write_file(dir / "k.pub", key.public_key().pem());
  CHECK(PrivateKey::load(dir / "plain.key", std::nullopt).public_key().id() == id);
  CHECK(PrivateKey::load(dir / "enc.key", std::string("s3cret")).public_key().id() == id);
  CHECK_THROWS_AS((void)PrivateKey::load(dir / "enc.key", std::string("wrong")), UsageError);
  CHECK(PublicKey::load(dir / "k.pub").id() == id);
  CHECK(th::contains(th::string_of(th::read_file(dir / "enc.key")), "ENCRYPTED"));
  th::write_file(dir / "junk.pub", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
  CHECK_THROWS_AS((void)PublicKey::load(dir / "junk.pub"), UsageError);
  CHECK_THROWS_AS((void)PrivateKey::load(dir / "k.pub", std::nullopt), UsageError);  // a public key is no private key
  CHECK_THROWS_AS((void)PublicKey::load(dir / "missing.pub"), IoError);
}

TEST_CASE("signature block: encode, parse, and every malformation refused") {
  const auto root = digest_of("r");
  std::vector<SignatureEntry> entries = {PrivateKey::generate().sign(root), PrivateKey::generate().sign(root)};
  const auto block = encode_signature_block(entries);
  REQUIRE(block.size() == sigblock::kHeaderSize + 2 * sigblock::kEntrySize);
  const auto back = parse_signature_block(block);
  REQUIRE(back.size() == 2);
  CHECK(back[1].key_id == entries[1].key_id);
  CHECK(back[1].signature == entries[1].signature);
  CHECK(parse_signature_block({}).empty());
  CHECK(encode_signature_block({}).empty());

  auto mutated = [&](auto fn) {
    auto b = block;
    fn(b);
    return b;
  };
  CHECK_THROWS_AS((void)parse_signature_block(std::span(block).first(10)), FormatError);
  CHECK_THROWS_AS((void)parse_signature_block(std::span(block).first(block.size() - 1)), FormatError);
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[0] ^= 1; })), FormatError);   // magic
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[8] = 2; })), FormatError);    // version
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[10] = 3; })), FormatError);   // count
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[10] = 0; })), FormatError);   // no entries
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[12] = 99; })), FormatError);  // entry size
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[16] = 7; })), FormatError);   // algorithm
  CHECK_THROWS_AS((void)parse_signature_block(mutated([](auto &b) { b[19] = 1; })), FormatError);   // reserved
  const std::vector<SignatureEntry> twice = {entries[0], entries[0]};
  CHECK_THROWS_AS((void)parse_signature_block(encode_signature_block(twice)), FormatError);
  std::vector<SignatureEntry> many(sigblock::kMaxEntries + 1, entries[0]);
  CHECK_THROWS_AS((void)encode_signature_block(many), UsageError);
}

TEST_CASE("pack --sign, sign in place and into a copy, and the policy") {
  th::TempDir dir;
  const auto alice = PrivateKey::generate(), bob = PrivateKey::generate();
  const auto path = pack_small(dir, "p", {alice});
  auto pkg = Package::open(path);
  REQUIRE(pkg->signatures().size() == 1);

  TrustStore none, trust_alice, trust_bob;
  trust_alice.add(alice.public_key());
  trust_bob.add(bob.public_key());
  CHECK(enforce_trust(*pkg, check_signatures(*pkg, trust_alice), false).trusted);
  CHECK_THROWS_AS((void)enforce_trust(*pkg, check_signatures(*pkg, trust_bob), false), TrustError);
  CHECK_FALSE(enforce_trust(*pkg, check_signatures(*pkg, none), true).trusted);

  const auto before = th::read_file(path);
  sign_package(path, bob);
  const auto after = th::read_file(path);
  pkg = Package::open(path);
  CHECK(pkg->signatures().size() == 2);
  CHECK(after.size() == before.size() + sigblock::kEntrySize);
  CHECK(std::equal(before.begin(), before.begin() + static_cast<std::ptrdiff_t>(pkg->manifest_end()), after.begin()));
  CHECK(enforce_trust(*pkg, check_signatures(*pkg, trust_bob), false).trusted);
  sign_package(path, bob);  // the same key again replaces its signature
  CHECK(Package::open(path)->signatures().size() == 2);

  const auto copy = dir / "copy.tpkg";
  sign_package(path, PrivateKey::generate(), copy);
  CHECK(Package::open(copy)->signatures().size() == 3);
  CHECK(th::read_file(path) == after);

  // A signature by a trusted key that does not match the root is tampering, not "untrusted".
  const auto unsigned_path = pack_small(dir, "u");
  auto u = Package::open(unsigned_path);
  CHECK(u->signatures().empty());
  CHECK_THROWS_AS((void)enforce_trust(*u, check_signatures(*u, trust_alice), false), TrustError);
  std::vector<SignatureCheck> forged = {{alice.sign(digest_of("another package")), SignatureCheck::State::kInvalid, "x"}};
  CHECK_THROWS_AS((void)enforce_trust(*u, forged, true), IntegrityError);
  CHECK(check_signatures(*pkg, trust_alice).at(0).state == SignatureCheck::State::kValid);
}

TEST_CASE("trust directories: *.pub only, missing is empty, writable by others is refused") {
  th::TempDir dir;
  const auto k = PrivateKey::generate();
  const auto d = dir / "trusted.d";
  fs::create_directories(d);
  ::chmod(d.c_str(), 0755);
  th::write_file(d / "k.pub", k.public_key().pem());
  th::write_file(d / "README", "not a key");
  ::chmod((d / "k.pub").c_str(), 0644);
  TrustStore t;
  t.add_dir(d);
  CHECK(t.size() == 1);
  CHECK(t.find(k.public_key().id()) != nullptr);
  TrustStore missing;
  missing.add_dir(dir / "nope");
  CHECK(missing.size() == 0);
  ::chmod((d / "k.pub").c_str(), 0666);
  CHECK_THROWS_AS(TrustStore().add_dir(d), UsageError);
  ::chmod((d / "k.pub").c_str(), 0644);
  ::chmod(d.c_str(), 0777);
  CHECK_THROWS_AS(TrustStore().add_dir(d), UsageError);
  ::chmod(d.c_str(), 0755);
  CHECK_THROWS_AS(TrustStore().add_dir(d / "k.pub"), UsageError);  // not a directory
}

TEST_CASE("a package's signature block is bounded and must fit the layout") {
  th::TempDir dir;
  const auto path = pack_small(dir, "s", {PrivateKey::generate()});
  auto bytes = th::read_file(path);
  // Damage the block's magic: the package no longer opens (FormatError), it is not silently unsigned.
  const auto end = Package::open(path)->manifest_end();
  bytes[end] ^= 1;
  CHECK_THROWS_AS((void)Package::from_bytes(bytes, "x"), FormatError);
}
