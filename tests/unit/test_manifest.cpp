// manifest.hpp: semver, ranges, dependencies, safetensors headers, file kinds; the Manifest type.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/file_kinds.hpp"
#include "torshpkg/manifest.hpp"
#include "torshpkg/safetensors.hpp"
#include "torshpkg/semver.hpp"

using namespace torshpkg;
using format::FileKind;

namespace {

// A safetensors file's leading bytes: 8-byte little-endian header length, then the JSON header.
th::Bytes st_header_claiming(std::uint64_t n, std::string_view json) {
  th::Bytes b(8 + json.size());
  store_le<std::uint64_t>(b.data(), n);
  std::copy(json.begin(), json.end(), b.begin() + 8);
  return b;
}

th::Bytes st_header(std::string_view json) { return st_header_claiming(json.size(), json); }

FileKind kind(std::string_view path, std::string_view head = {}) {
  return detect_kind(path, th::bytes_of(head));
}

}  // namespace

TEST_SUITE("manifest") {

TEST_CASE("valid_semver: valid versions from semver.org") {
  for (const std::string v : {"0.0.4", "1.2.3", "10.20.30", "1.1.2-prerelease+meta", "1.1.2+meta", "1.1.2+meta-valid",
                        "1.0.0-alpha", "1.0.0-beta", "1.0.0-alpha.beta", "1.0.0-alpha.beta.1", "1.0.0-alpha.1",
                        "1.0.0-alpha0.valid", "1.0.0-alpha.0valid",
                        "1.0.0-alpha-a.b-c-somethinglong+build.1-aef.1-its-okay", "1.0.0-rc.1+build.1",
                        "2.0.0-rc.1+build.123", "1.2.3-beta", "10.2.3-DEV-SNAPSHOT", "1.2.3-SNAPSHOT-123", "1.0.0",
                        "2.0.0", "1.1.7", "2.0.0+build.1848", "2.0.1-alpha.1227", "1.0.0-alpha+beta",
                        "1.2.3----RC-SNAPSHOT.12.9.1--.12+788", "1.2.3----R-S.12.9.1--.12+meta",
                        "1.2.3----RC-SNAPSHOT.12.9.1--.12", "1.0.0+0.build.1-rc.10000aaa-kk-0.1",
                        "99999999999999999999999.999999999999999999.99999999999999999", "1.0.0-0A.is.legal",
                        "0.0.0", "1.0.0-0", "1.0.0+001", "1.0.0-x.7.z.92", "1.0.0-x-y-z.--"}) {
    CAPTURE(v);
    CHECK(valid_semver(v));
  }
}

TEST_CASE("valid_semver: invalid versions from semver.org") {
  for (const char *v :
       {"", "1", "1.2", "1.2.3-0123", "1.2.3-0123.0123", "1.1.2+.123", "+invalid", "-invalid", "-invalid+invalid",
        "-invalid.01", "alpha", "alpha.beta", "alpha.beta.1", "alpha.1", "alpha+beta", "alpha_beta", "alpha.",
        "alpha..", "beta", "1.0.0-alpha_beta", "-alpha.", "1.0.0-alpha..", "1.0.0-alpha..1", "1.0.0-alpha...1",
        "1.0.0-alpha....1", "1.0.0-alpha.....1", "1.0.0-alpha......1", "1.0.0-alpha.......1", "01.1.1", "1.01.1",
        "1.1.01", "1.2.3.DEV", "1.2-SNAPSHOT", "1.2.31.2.3----RC-SNAPSHOT.12.09.1--..12+788", "1.2-RC-SNAPSHOT",
        "-1.0.3-gamma+b7718", "+justmeta", "9.8.7+meta+meta", "9.8.7-whatever+meta+meta",
        "99999999999999999999999.999999999999999999.99999999999999999----RC-SNAPSHOT.12.09.1-------------------"
        "-------------..12",
        // further edge cases
        "1.2.3-", "1.2.3+", "1.2.3-+", "1.2.3-a+", "v1.2.3", "=1.2.3", " 1.2.3", "1.2.3 ", "1.2.3.4", "1..3",
        ".1.2", "1.2.", "1.2.3-01", "1.2.3-a.01", "1.2.3-a b", "1.2.3+a b", "1.2.3-\xc3\xa9", "a.b.c", "1.2.x",
        "00.0.0", "0.00.0", "0.0.00", "-1.2.3", "1.-2.3"}) {
    CAPTURE(v);
    CHECK_FALSE(valid_semver(v));
  }
}

TEST_CASE("valid_semver_range") {
  for (const char *r : {"1.2.3", "^1.2", "^1.2.3", "~1.2.3", "~1", ">=1.0 <2.0", ">=1.0.0 <2.0.0", "1.x", "1.2.x",
                        "1.X", "*", "x", ">1", "<2", "<=2.0", "=1.2.3", "v1.2.3", "1.2 - 2.3", "1.2.3 - 2.3.4",
                        "^1 || ^2", "1.x || >=2.5.0 || 5.0.0 - 7.2.3", ">=1.2.3-beta.1", "1.2.3+build", "  ^1.2  ",
                        ">=1.0  <2.0"}) {
    CAPTURE(r);
    CHECK(valid_semver_range(r));
  }
  for (const char *r : {"", " ", "abc", "1.2.3.4", "||", "1 ||", "|| 1", ">=", "^", "^^1", "01.2", "1.02",
                        "1.2.3 -", "1.2.3 - ", "- 1.2.3", "1.2.3 - 2.3 - 4", ">=1.0 <", "1.2.3-", "1.2.3-01",
                        "1.2.3-a..b", "latest", "1.2.3 foo", "> =1.0", ">>1"}) {
    CAPTURE(r);
    CHECK_FALSE(valid_semver_range(r));
  }
  CHECK_FALSE(valid_semver_range(std::string(300, '1')));
  std::string long_ok = "1.2.3";
  while (long_ok.size() + 9 <= 256) long_ok += " || 1.2.3";
  CHECK(long_ok.size() <= 256);
  CHECK(valid_semver_range(long_ok));
  CHECK_FALSE(valid_semver_range(long_ok + " || 1.2.3"));
}

TEST_CASE("parse_dependency") {
  auto d = parse_dependency("foo@^1.2");
  CHECK(d.name == "foo");
  CHECK(d.range == "^1.2");
  d = parse_dependency("bar");
  CHECK(d.name == "bar");
  CHECK(d.range == "*");
  d = parse_dependency("@scope/pkg@>=1.0 <2.0");
  CHECK(d.name == "@scope/pkg");
  CHECK(d.range == ">=1.0 <2.0");
  d = parse_dependency("@scope/pkg");
  CHECK(d.name == "@scope/pkg");
  CHECK(d.range == "*");
  d = parse_dependency("@s/p@1");
  CHECK(d.name == "@s/p");
  CHECK(d.range == "1");
  d = parse_dependency("org.team/model-v2_b@1.x || 2.0.0");
  CHECK(d.name == "org.team/model-v2_b");
  CHECK(d.range == "1.x || 2.0.0");
  CHECK(parse_dependency(std::string(214, 'n') + "@1").name.size() == 214);

  for (const std::string &bad : std::initializer_list<std::string>{"", "foo@", "foo@bad", "foo@1.2.3.4", "foo bar@1", "foo$@1", "f\xc3\xa9@1",
                          "foo@@1", std::string(215, 'n') + "@1", "foo@1 ||",
                          // a leading '@' starts @scope/name
                          "@", "@1.0", "@1.2.3", "@scope", "@scope@1", "@/pkg", "@scope/", "@scope/@1"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS((void)parse_dependency(bad), UsageError);
  }
}

TEST_CASE("parse_safetensors: a valid header") {
  const std::string json =
      R"({"__metadata__":{"format":"pt"},)"
      R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},)"
      R"("c":{"dtype":"F32","shape":[],"data_offsets":[32,36]},)"
      R"("z":{"dtype":"I64","shape":[0,5],"data_offsets":[36,36]}}   )";  // trailing padding spaces
  const auto b = st_header(json);
  const auto s = parse_safetensors(b, b.size() + 36);
  REQUIRE(s.has_value());
  CHECK(s->tensors == 4);
  CHECK(s->parameters == 6 + 4 + 1 + 0);
  CHECK(s->dtypes.size() == 3);
  CHECK(s->dtypes.at("F32") == 2);
  CHECK(s->dtypes.at("BF16") == 1);
  CHECK(s->dtypes.at("I64") == 1);
  // Tensor ranges: absolute file offsets, sorted by begin.
  const std::uint64_t at = 8 + json.size();
  REQUIRE(s->ranges.size() == 4);
  CHECK(s->ranges[0].begin == at);
  CHECK(s->ranges[0].end == at + 24);
  CHECK(s->ranges[0].dtype == "F32");
  CHECK(s->ranges[1].begin == at + 24);
  CHECK(s->ranges[1].dtype == "BF16");
  CHECK(s->ranges[3].begin == at + 36);
  CHECK(s->ranges[3].end == at + 36);

  // Data beyond the last tensor is allowed; tensors may be given in any order.
  const auto b2 = st_header(R"({"y":{"dtype":"U8","shape":[8],"data_offsets":[8,16]},)"
                            R"("x":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})");
  const auto s2 = parse_safetensors(b2, b2.size() + 1000);
  REQUIRE(s2.has_value());
  CHECK(s2->tensors == 2);
  CHECK(s2->parameters == 16);
  REQUIRE(s2->ranges.size() == 2);
  CHECK(s2->ranges[0].begin < s2->ranges[1].begin);  // sorted although given in reverse

  // Only metadata: zero tensors.
  const auto b3 = st_header(R"({"__metadata__":{}})");
  const auto s3 = parse_safetensors(b3, b3.size());
  REQUIRE(s3.has_value());
  CHECK(s3->tensors == 0);

  // The bytes given may extend past the header (the first read of a file).
  auto b4 = st_header(R"({"t":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})");
  b4.push_back(0x12);
  b4.push_back(0x34);
  const auto s4 = parse_safetensors(b4, b4.size());
  REQUIRE(s4.has_value());
  CHECK(s4->parameters == 1);
}

TEST_CASE("parse_safetensors: not a safetensors file -> nullopt") {
  CHECK_FALSE(parse_safetensors({}, 0).has_value());
  CHECK_FALSE(parse_safetensors(th::bytes_of("{}"), 2).has_value());
  CHECK_FALSE(parse_safetensors(th::bytes_of("12345678"), 8).has_value());
  CHECK_FALSE(parse_safetensors(th::bytes_of("hello, world, this is text"), 26).has_value());
  CHECK_FALSE(parse_safetensors(th::bytes_of("PK\x03\x04zipzipzip"), 13).has_value());
  auto arr = st_header("[1,2,3]");
  CHECK_FALSE(parse_safetensors(arr, arr.size()).has_value());
  auto ws = st_header(" {}");  // the header must start with '{'
  CHECK_FALSE(parse_safetensors(ws, ws.size()).has_value());
  // Only 8 bytes plus '{' given but the file says 9 bytes: fine; fewer than 9 bytes: not safetensors.
  auto short_b = st_header("{}");
  short_b.resize(8);
  CHECK_FALSE(parse_safetensors(short_b, 100).has_value());
  auto tiny = st_header("{}");
  CHECK_FALSE(parse_safetensors(tiny, 8).has_value());  // file_size < 9
}

TEST_CASE("parse_safetensors: malformed headers throw FormatError") {
  const std::string t = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  SUBCASE("header length out of range") {
    auto b = st_header_claiming(1, "{");
    CHECK_THROWS_AS((void)parse_safetensors(b, 1000), FormatError);
    b = st_header_claiming(0, "{}");
    CHECK_THROWS_AS((void)parse_safetensors(b, 1000), FormatError);
    b = st_header_claiming(kMaxSafetensorsHeader + 1, "{}");
    CHECK_THROWS_AS((void)parse_safetensors(b, ~0ull), FormatError);
    b = st_header_claiming(~0ull, "{}");
    CHECK_THROWS_AS((void)parse_safetensors(b, ~0ull), FormatError);
    b = st_header_claiming(~0ull - 7, "{}");  // 8 + n would wrap to 0
    CHECK_THROWS_AS((void)parse_safetensors(b, ~0ull), FormatError);
  }
  SUBCASE("header runs past the end of the file") {
    const auto b = st_header(t);
    CHECK_THROWS_AS((void)parse_safetensors(b, b.size() - 1), FormatError);
    CHECK_THROWS_AS((void)parse_safetensors(b, 9), FormatError);
  }
  SUBCASE("header incomplete in the bytes given") {
    auto b = st_header(t);
    b.erase(b.end() - 5, b.end());
    CHECK_THROWS_AS((void)parse_safetensors(b, 10'000), FormatError);
  }
  SUBCASE("not JSON") {
    for (std::string j : {"{", "{not json}", "{\"a\":}", "{\"a\":1,}", "{\"a\":1}}", "{\"a\":\"\xff\"}"}) {
      CAPTURE(j);
      const auto b = st_header(j);
      CHECK_THROWS_AS((void)parse_safetensors(b, b.size() + 100), FormatError);
    }
  }
  SUBCASE("malformed tensor entries") {
    for (std::string j : {
             R"({"t":1})",
             R"({"t":{"shape":[1],"data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","shape":[1]}})",
             R"({"t":{"dtype":8,"shape":[1],"data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,1]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1.5]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":"0,1"}})",
             R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})",
             R"({"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})",
         }) {
      CAPTURE(j);
      const auto b = st_header(j);
      CHECK_THROWS_AS((void)parse_safetensors(b, b.size() + 100), FormatError);
    }
  }
  SUBCASE("offsets beyond the data section") {
    for (std::string j : {
             R"({"t":{"dtype":"U8","shape":[101],"data_offsets":[0,101]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[100,101]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[5,4]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551615]}})",
             R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})",
         }) {
      CAPTURE(j);
      const auto b = st_header(j);
      CHECK_THROWS_AS((void)parse_safetensors(b, b.size() + 100), FormatError);
    }
    // exactly at the end is fine
    const auto ok = st_header(R"({"t":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}})");
    CHECK(parse_safetensors(ok, ok.size() + 100).has_value());
  }
  SUBCASE("overlapping tensors") {
    for (std::string j : {
             R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"b":{"dtype":"U8","shape":[10],"data_offsets":[9,19]}})",
             R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[5,15]},"b":{"dtype":"U8","shape":[2],"data_offsets":[7,9]}})",
             R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"b":{"dtype":"U8","shape":[10],"data_offsets":[0,10]}})",
         }) {
      CAPTURE(j);
      const auto b = st_header(j);
      CHECK_THROWS_AS((void)parse_safetensors(b, b.size() + 100), FormatError);
    }
    const auto touching = st_header(
        R"({"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"b":{"dtype":"U8","shape":[10],"data_offsets":[10,20]}})");
    CHECK(parse_safetensors(touching, touching.size() + 20).has_value());
  }
  SUBCASE("shape and parameter count overflow") {
    const auto b = st_header(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})");
    CHECK_THROWS_AS((void)parse_safetensors(b, b.size()), FormatError);
    const auto b2 = st_header(R"({"t":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,0]}})");
    CHECK_THROWS_AS((void)parse_safetensors(b2, b2.size()), FormatError);
    const auto b3 = st_header(R"({"a":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,0]},)"
                              R"("b":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,0]}})");
    CHECK_THROWS_AS((void)parse_safetensors(b3, b3.size()), FormatError);
    const auto ok = st_header(R"({"t":{"dtype":"F32","shape":[4294967296,4294967295],"data_offsets":[0,0]}})");
    const auto s = parse_safetensors(ok, ok.size());
    REQUIRE(s.has_value());
    CHECK(s->parameters == 4294967296ull * 4294967295ull);
  }
}

TEST_CASE("detect_kind: by name") {
  CHECK(kind("tokenizer.json") == FileKind::kTokenizer);
  CHECK(kind("tokenizer_config.json") == FileKind::kTokenizer);
  CHECK(kind("sub/dir/tokenizer.model") == FileKind::kTokenizer);
  CHECK(kind("vocab.txt") == FileKind::kTokenizer);
  CHECK(kind("merges.txt") == FileKind::kTokenizer);
  CHECK(kind("special_tokens_map.json") == FileKind::kTokenizer);
  CHECK(kind("added_tokens.json") == FileKind::kTokenizer);
  CHECK(kind("cl100k_base.tiktoken") == FileKind::kTokenizer);
  CHECK(kind("spiece.model") == FileKind::kTokenizer);
  CHECK(kind("sentencepiece.bpe.model") == FileKind::kTokenizer);
  CHECK(kind("Tokenizer.JSON") == FileKind::kTokenizer);

  CHECK(kind("model.safetensors") == FileKind::kWeights);
  CHECK(kind("model-00001-of-00002.safetensors") == FileKind::kWeights);
  CHECK(kind("pytorch_model.bin") == FileKind::kWeights);
  CHECK(kind("MODEL.SAFETENSORS") == FileKind::kWeights);
  CHECK(kind("a/b/c.gguf") == FileKind::kWeights);
  CHECK(kind("model.onnx") == FileKind::kWeights);
  CHECK(kind("x.pt") == FileKind::kWeights);
  CHECK(kind("x.ckpt") == FileKind::kWeights);
  CHECK(kind("x.npz") == FileKind::kWeights);

  CHECK(kind("train.py") == FileKind::kCode);
  CHECK(kind("src/kernel.cu") == FileKind::kCode);
  CHECK(kind("run.sh") == FileKind::kCode);
  CHECK(kind("notebook.ipynb") == FileKind::kCode);

  CHECK(kind("config.json") == FileKind::kConfig);
  CHECK(kind("generation_config.json") == FileKind::kConfig);
  CHECK(kind("params.yaml") == FileKind::kConfig);
  CHECK(kind("setup.cfg") == FileKind::kConfig);
  CHECK(kind("pyproject.toml") == FileKind::kConfig);
  CHECK(kind("Dockerfile") == FileKind::kConfig);
  CHECK(kind("Makefile") == FileKind::kConfig);

  CHECK(kind("train.csv") == FileKind::kData);
  CHECK(kind("data/part-0.parquet") == FileKind::kData);
  CHECK(kind("samples.jsonl") == FileKind::kData);
  CHECK(kind("notes.txt") == FileKind::kData);

  CHECK(kind("README.md") == FileKind::kOther);
  CHECK(kind("LICENSE") == FileKind::kOther);
  CHECK(kind("") == FileKind::kOther);
  CHECK(kind("dir.d/noext") == FileKind::kOther);
}

TEST_CASE("detect_kind: by content when the name says nothing") {
  const auto st = st_header(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})");
  CHECK(detect_kind("weights_without_ext", st) == FileKind::kWeights);
  CHECK(kind("archive", std::string("PK\x03\x04rest", 8)) == FileKind::kWeights);
  CHECK(kind("script", "#!/bin/sh\necho hi\n") == FileKind::kCode);
  CHECK(kind("README", "# Title\n") == FileKind::kOther);
  CHECK(kind("blob", "abcdefgh{") == FileKind::kOther);  // "abcdefgh" is far too long a header
  CHECK(kind("empty", "") == FileKind::kOther);
  CHECK(kind("p", "P") == FileKind::kOther);
  // The name wins over the content.
  CHECK(kind("run.py", std::string("PK\x03\x04", 4)) == FileKind::kCode);
}

}  // TEST_SUITE

// ------------------------------------------------------------------------------------------------
// The Manifest type: serialize, parse, to_json.

namespace {

ManifestFile mfile(std::string path, std::string kind, std::uint64_t size, bool digest,
                   std::optional<ManifestFile::Safetensors> st = std::nullopt) {
  ManifestFile f;
  f.path = std::move(path);
  f.kind = std::move(kind);
  f.size = size;
  if (digest) f.sha256 = sha256(th::bytes_of(f.path));
  f.safetensors = std::move(st);
  return f;
}

Manifest package_manifest() {
  Manifest m;
  m.name = "@org/model";
  m.version = "1.2.3-rc.1+build.5";
  m.description = "a model \xe2\x9c\x93 with \"quotes\", a\ttab and a\nnewline";
  m.license = "Apache-2.0";
  m.created = "2024-05-06T07:08:09Z";
  m.tool = "torshpkg 0.1.0";
  m.authors = {"Ada", "Grace \xc3\xa9"};
  m.dependencies = {{"base-model", "^1.0"}, {"@s/tok", "*"}};
  m.chunk_size = 1u << 20;
  m.formats = nlohmann::ordered_json::parse(R"({"safetensors":{"files":2,"problems":[]},"pickle":null})");
  m.files.push_back(mfile("model.safetensors", "weights", 123'456'789, true,
                          ManifestFile::Safetensors{3, 1'000'000'007, {{"BF16", 2}, {"F32", 1}}}));
  m.files.push_back(mfile("shard/b.safetensors", "weights", 88, false, ManifestFile::Safetensors{0, 0, {}}));
  m.files.push_back(mfile("config.json", "config", 42, true));
  m.files.push_back(mfile("README", "other", 0, false));
  m.files.push_back(mfile("\xe6\x97\xa5\xe6\x9c\xac/z.txt", "data", 18'446'744'073'709'551'615ull, true));
  m.files.push_back(mfile("a.txt", "data", 1, true));  // after z: package order, not sorted
  return m;
}

Manifest synthesized_manifest() {
  Manifest m;
  m.kind = Manifest::Kind::kSynthesized;
  m.name = "archive";
  m.version = "0.0.0";
  m.description = "a zip archive mounted in place";
  m.source = "zip";
  m.chunk_size = 1u << 16;
  return m;
}

void check_same_files(const std::vector<ManifestFile> &a, const std::vector<ManifestFile> &b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].path);
    CHECK(a[i].path == b[i].path);
    CHECK(a[i].kind == b[i].kind);
    CHECK(a[i].size == b[i].size);
    CHECK(a[i].sha256 == b[i].sha256);
    REQUIRE(a[i].safetensors.has_value() == b[i].safetensors.has_value());
    if (a[i].safetensors) {
      CHECK(a[i].safetensors->tensors == b[i].safetensors->tensors);
      CHECK(a[i].safetensors->parameters == b[i].safetensors->parameters);
      CHECK(a[i].safetensors->dtypes == b[i].safetensors->dtypes);
    }
  }
}

}  // namespace

TEST_SUITE("manifest") {

TEST_CASE("Manifest: a package manifest round-trips byte for byte") {
  const Manifest m = package_manifest();
  const std::string text = m.serialize();
  const Manifest back = Manifest::parse(text);
  CHECK(back.serialize() == text);
  CHECK(back.to_json() == m.to_json());
  CHECK(back.kind == Manifest::Kind::kPackage);
  CHECK(back.manifest_version == 1);
  CHECK(back.name == m.name);
  CHECK(back.version == m.version);
  CHECK(back.description == m.description);
  CHECK(back.license == m.license);
  CHECK(back.created == m.created);
  CHECK(back.tool == m.tool);
  CHECK(back.authors == m.authors);
  REQUIRE(back.dependencies.size() == 2);
  CHECK(back.dependencies[1].name == "@s/tok");
  CHECK(back.dependencies[1].range == "*");
  CHECK(back.chunk_size == m.chunk_size);
  CHECK(back.formats_json() == m.formats);
  CHECK(back.formats_json() == m.formats_json());
  CHECK(back.source.empty());
  check_same_files(back.files, m.files);
  // A third generation is the same again.
  CHECK(Manifest::parse(back.serialize()).serialize() == text);
}

TEST_CASE("Manifest: key order and layout of the stored text") {
  const std::string text = package_manifest().serialize();
  const auto j = nlohmann::ordered_json::parse(text);
  std::vector<std::string> keys;
  for (const auto &[k, v] : j.items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"manifest_version", "name", "version", "description", "authors", "license",
                                         "created", "tool", "dependencies", "chunk_size", "formats", "files"});
  // Files in package order; a file's keys: safetensors (when known), kind, size, sha256 (when known).
  std::vector<std::string> paths;
  for (const auto &[k, v] : j["files"].items()) paths.push_back(k);
  CHECK(paths.back() == "a.txt");
  std::vector<std::string> fkeys;
  for (const auto &[k, v] : j["files"]["model.safetensors"].items()) fkeys.push_back(k);
  CHECK(fkeys == std::vector<std::string>{"safetensors", "kind", "size", "sha256"});
  CHECK_FALSE(j["files"]["README"].contains("sha256"));
  CHECK_FALSE(j["files"]["README"].contains("safetensors"));
  CHECK(j["files"]["config.json"]["sha256"] == to_hex(sha256(th::bytes_of("config.json"))));
  CHECK(th::contains(text, "\n \"name\": "));  // indented by one
}

TEST_CASE("Manifest: a synthesized manifest round-trips byte for byte") {
  const Manifest m = synthesized_manifest();
  const std::string text = m.serialize();
  const auto j = nlohmann::ordered_json::parse(text);
  std::vector<std::string> keys;
  for (const auto &[k, v] : j.items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"manifest_version", "name", "version", "description", "source", "chunk_size"});
  CHECK(th::contains(text, "\n  \"name\": "));  // indented by two
  const Manifest back = Manifest::parse(text);
  CHECK(back.kind == Manifest::Kind::kSynthesized);
  CHECK(back.serialize() == text);
  CHECK(back.name == "archive");
  CHECK(back.source == "zip");
  CHECK(back.chunk_size == 1u << 16);
  CHECK(back.files.empty());
}

TEST_CASE("Manifest: a package manifest without files, and the defaults") {
  Manifest m;
  const std::string text = m.serialize();
  const Manifest back = Manifest::parse(text);
  CHECK(back.kind == Manifest::Kind::kPackage);
  CHECK(back.serialize() == text);
  const Manifest empty = Manifest::parse("{}");
  CHECK(empty.kind == Manifest::Kind::kPackage);
  CHECK(empty.manifest_version == 1);
  CHECK(empty.name.empty());
  CHECK(empty.files.empty());
  CHECK(empty.formats_json() == nlohmann::ordered_json::object());
}

TEST_CASE("Manifest: parsing is lenient, a wrong-typed field is treated as absent") {
  const Manifest absent = Manifest::parse("{}");
  const Manifest m = Manifest::parse(R"({
    "name": 5, "version": [1, 2], "description": null, "license": {}, "created": true, "tool": 1.5,
    "authors": "x", "dependencies": "d", "chunk_size": "big", "formats": [1], "files": 3
  })");
  CHECK(m.kind == absent.kind);
  CHECK(m.name == absent.name);
  CHECK(m.version == absent.version);
  CHECK(m.description == absent.description);
  CHECK(m.license == absent.license);
  CHECK(m.created == absent.created);
  CHECK(m.tool == absent.tool);
  CHECK(m.authors.empty());
  CHECK(m.dependencies.empty());
  CHECK(m.chunk_size == absent.chunk_size);
  CHECK(m.formats_json() == absent.formats_json());
  CHECK(m.files.empty());
  CHECK(m.serialize() == absent.serialize());

  // Numbers that are not unsigned 64-bit integers.
  for (const std::string v : {"-1", "1.5", "1e3", "\"1\"", "null", "{}"}) {
    CAPTURE(v);
    const Manifest n = Manifest::parse(std::string(R"({"chunk_size": )") + v + "}");
    CHECK(n.chunk_size == absent.chunk_size);
  }
}

TEST_CASE("Manifest: a wrong-typed manifest_version is treated as absent") {
  const Manifest absent = Manifest::parse("{}");
  for (const std::string v : {"\"1\"", "-1", "null", "[1]"}) {
    CAPTURE(v);
    const Manifest m = Manifest::parse(std::string(R"({"manifest_version": )") + v + "}");
    CHECK(m.manifest_version == absent.manifest_version);
  }
  CHECK(Manifest::parse(R"({"manifest_version": 2})").manifest_version == 2);
}

TEST_CASE("Manifest: parsing is lenient inside arrays and file entries") {
  const Manifest m = Manifest::parse(R"({
    "authors": [1, "Ada", null, ["x"], "Grace"],
    "dependencies": [5, "s", {"name": "a", "range": "^1"}, {"name": 7, "range": "*"}, {}],
    "files": {
      "bad-kinds": {"kind": 5, "size": "x", "sha256": "not hex", "safetensors": 3},
      "not-an-object": 7,
      "short-digest": {"kind": "data", "size": 3, "sha256": "abcd"},
      "st": {"safetensors": {"tensors": "x", "parameters": 9, "dtypes": {"F32": "y", "BF16": 4}}, "kind": "weights"},
      "st-no-dtypes": {"safetensors": {"dtypes": []}}
    }
  })");
  CHECK(m.authors == std::vector<std::string>{"Ada", "Grace"});
  REQUIRE(m.dependencies.size() == 3);
  CHECK(m.dependencies[0].name == "a");
  CHECK(m.dependencies[0].range == "^1");
  CHECK(m.dependencies[1].name.empty());
  CHECK(m.dependencies[1].range == "*");
  CHECK(m.dependencies[2].name.empty());
  REQUIRE(m.files.size() == 4);
  CHECK(m.files[0].path == "bad-kinds");
  CHECK(m.files[0].kind.empty());
  CHECK(m.files[0].size == 0);
  CHECK_FALSE(m.files[0].sha256.has_value());
  CHECK_FALSE(m.files[0].safetensors.has_value());
  CHECK(m.files[1].path == "short-digest");
  CHECK_FALSE(m.files[1].sha256.has_value());
  CHECK(m.files[1].size == 3);
  CHECK(m.files[2].path == "st");
  REQUIRE(m.files[2].safetensors.has_value());
  CHECK(m.files[2].safetensors->tensors == 0);
  CHECK(m.files[2].safetensors->parameters == 9);
  CHECK(m.files[2].safetensors->dtypes == std::map<std::string, std::uint64_t>{{"BF16", 4}, {"F32", 0}});
  CHECK(m.files[2].kind == "weights");
  REQUIRE(m.files[3].safetensors.has_value());
  CHECK(m.files[3].safetensors->dtypes.empty());
  // What was kept serialises, and that round-trips.
  const std::string text = m.serialize();
  CHECK(Manifest::parse(text).serialize() == text);
}

TEST_CASE("Manifest: unknown top-level keys are accepted and skipped") {
  // A newer writer's fields: parsing goes on, the known fields are read, the unknown ones are not
  // kept (manifest.hpp: never copied, so a hostile value costs nothing beyond the parse).
  const std::string in = R"({"manifest_version": 1, "future": {"a": [1, 2, {"b": null}], "c": "d"}, "name": "n",)"
                         R"( "files": {"f": {"kind": "data", "size": 1, "later": [1]}}, "zz_last": "x",)"
                         R"( "big": 18446744073709551615, "neg": -3, "ratio": 0.25, "flag": false, "nothing": null,)"
                         R"( "list": [], "version": "1.0.0"})";
  const Manifest m = Manifest::parse(in);
  CHECK(m.name == "n");
  CHECK(m.version == "1.0.0");  // known fields after unknown ones are still read
  REQUIRE(m.files.size() == 1);
  CHECK(m.files[0].kind == "data");
  CHECK(m.files[0].size == 1);
  const auto j = m.to_json();
  for (const char *k : {"future", "zz_last", "big", "neg", "ratio", "flag", "nothing", "list"}) {
    CAPTURE(std::string(k));
    CHECK_FALSE(j.contains(k));
  }
  CHECK_FALSE(j["files"]["f"].contains("later"));
  // What is kept round-trips.
  const std::string text = m.serialize();
  CHECK(Manifest::parse(text).serialize() == text);

  // A synthesized manifest skips them too.
  const Manifest s = Manifest::parse(R"({"name": "z", "source": "zip", "later": {"x": 1}})");
  CHECK(s.kind == Manifest::Kind::kSynthesized);
  CHECK_FALSE(s.to_json().contains("later"));
  CHECK(Manifest::parse(s.serialize()).serialize() == s.serialize());

  // A large unknown value is no problem either.
  const std::string huge = R"({"name": "h", "files": {}, "blob": ")" + std::string(1 << 20, 'a') + R"("})";
  const Manifest h = Manifest::parse(huge);
  CHECK(h.name == "h");
  CHECK(h.serialize().size() < 1000);
}

TEST_CASE("Manifest: formats are kept as text and round-trip byte for byte, numbers included") {
  // Every number form nlohmann writes must come back as the same text after parse() minified it.
  const std::string in =
      R"({"files": {}, "formats": {"x": {"f": 0.5, "k": "v"}, "a": [0, 1, -1, 0.1, 1.0, 2.5e-300, 1e300, -0.0,)"
      R"( 123456789.125, 18446744073709551615, -9223372036854775808, "\u00e9\n\"q\"", "é"]}})";
  const Manifest m = Manifest::parse(in);
  CHECK_FALSE(m.formats_text.empty());
  const auto f = m.formats_json();
  std::vector<std::string> keys;
  for (const auto &[k, v] : f.items()) keys.push_back(k);
  CHECK(keys == std::vector<std::string>{"x", "a"});  // document order, not sorted
  CHECK(f["x"]["k"] == "v");
  CHECK(f["a"][9].get<std::uint64_t>() == 18'446'744'073'709'551'615ull);
  const std::string text = m.serialize();
  const Manifest back = Manifest::parse(text);
  CHECK(back.serialize() == text);
  CHECK(back.formats_json() == f);
  // A manifest built in memory (the packer's) uses `formats` as set.
  Manifest built;
  built.formats = f;
  CHECK(built.formats_text.empty());
  CHECK(built.formats_json() == f);
  CHECK(built.serialize() == text);
}

// KNOWN LIMITATION (as old as the validation at open): the reader refuses doubles past DBL_MAX
// (RapidJSON: "Number too big to be stored in double"; integers past 64 bits become doubles), which are valid JSON, so
// a manifest from another writer carrying one anywhere (even in a field this reader skips) is "not valid JSON".
// may_fail until fixed.
TEST_CASE("Manifest: valid JSON with a number past 64 bits is not a format error" * doctest::may_fail()) {
  for (const std::string v : {"18446744073709551616", "-9223372036854775809", "1e400"}) {
    CAPTURE(v);
    Manifest m;
    CHECK_NOTHROW(m = Manifest::parse(std::string(R"({"name": "n", "files": {}, "later": )") + v + "}"));
    CHECK(m.name == "n");
  }
}

TEST_CASE("Manifest: nesting past 1,024 levels and bytes after a NUL are FormatErrors; validate agrees") {
  auto nested = [](int levels, char open, char close) {
    return std::string(R"({"name": "n", "deep": )") + std::string(static_cast<std::size_t>(levels), open) +
           std::string(static_cast<std::size_t>(levels), close) + "}";
  };
  // The root object is level 1: 1,023 more fit.
  for (const auto &[open, close] : {std::pair{'[', ']'}}) {
    const std::string ok = nested(1023, open, close), deep = nested(1024, open, close);
    CHECK(Manifest::parse(ok).name == "n");
    CHECK_NOTHROW(Manifest::validate(ok));
    try {
      (void)Manifest::parse(deep);
      FAIL("no exception");
    } catch (const FormatError &e) {
      CHECK(th::contains(e.what(), "deeper than 1024"));
    }
    CHECK_THROWS_AS(Manifest::validate(deep), FormatError);
  }
  std::string deep_objects = R"({"name": "n", "deep": )";
  for (int i = 0; i < 2000; ++i) deep_objects += R"({"k": )";
  deep_objects += "1" + std::string(2001, '}');
  CHECK_THROWS_AS((void)Manifest::parse(deep_objects), FormatError);
  CHECK_THROWS_AS(Manifest::validate(deep_objects), FormatError);
  // The reader takes a NUL for the end of its input: what follows must still be refused.
  for (const auto &bad : {std::string("{}\0", 3), std::string("{}\0{}", 5), std::string("{} \0 x", 6)}) {
    CHECK_THROWS_AS((void)Manifest::parse(bad), FormatError);
    CHECK_THROWS_AS(Manifest::validate(bad), FormatError);
  }
  CHECK_THROWS_AS((void)Manifest::parse(std::string("{\"a\": \"x\0y\"}", 12)), FormatError);
}

TEST_CASE("Manifest: not JSON, or not an object, is a FormatError") {
  for (const std::string bad : {"not JSON", "", " ", "{", "{\"a\":}", "{\"a\":1,}", "{'a':1}", "[1,2]", "[]", "null",
                                "42", "\"str\"", "true", "{\"a\":\"\xff\"}", "{} {}"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS((void)Manifest::parse(bad), FormatError);
  }
  try {
    (void)Manifest::parse("[1,2]");
    FAIL("no exception");
  } catch (const FormatError &e) {
    CHECK(th::contains(e.what(), "not a JSON object"));
  }
}

TEST_CASE("Manifest: a 10,000-file manifest") {
  Manifest m = package_manifest();
  m.files.clear();
  m.files.reserve(10'000);
  for (unsigned i = 0; i < 10'000; ++i) {
    std::string path = "layer" + std::to_string(i % 100) + "/shard-" + std::to_string(i) + ".safetensors";
    std::optional<ManifestFile::Safetensors> st;
    if (i % 3 == 0) st = ManifestFile::Safetensors{i, 1000ull * i, {{"BF16", i}, {"F32", 1}}};
    m.files.push_back(mfile(std::move(path), i % 3 == 0 ? "weights" : "data", 1ull << (i % 40), i % 5 != 0, st));
  }
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const std::string text = m.serialize();
  const auto t1 = Clock::now();
  const Manifest back = Manifest::parse(text);
  const auto t2 = Clock::now();
  const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
  MESSAGE("10,000-file manifest: " << text.size() << " bytes, serialize " << ms(t1 - t0) << " ms, parse "
                                   << ms(t2 - t1) << " ms");
  REQUIRE(back.files.size() == 10'000);
  check_same_files(back.files, m.files);
  CHECK(back.serialize() == text);
}

}  // TEST_SUITE
