// filter.hpp: byte-grouping filters for float tensors, and their use by the packer.
#include <doctest/doctest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "helpers.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/filter.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/reader.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
using format::Filter;
namespace fs = std::filesystem;

namespace {

th::Bytes filtered(Filter f, unsigned phase, const th::Bytes &raw) {
  th::Bytes out(raw.size() + 1);
  apply_filter(f, phase, raw, out);
  return out;
}

th::Bytes unfiltered(Filter f, const th::Bytes &form) {
  th::Bytes out(form.size() - 1);
  undo_filter(f, form, out);
  return out;
}

// A safetensors file with one tensor of `count` elements of `dtype` (element bytes `w`), values
// smoothly varying so that byte grouping pays off.
// Values like trained weights (about normal, per-tensor scale), or, with `periodic`, a short
// repeating ramp that LZ matches compress far better than any entropy coder.
th::Bytes safetensors_file(const char *dtype, unsigned w, std::size_t count, std::size_t pad_header_to = 0,
                           bool periodic = false) {
  std::string hdr = std::string(R"({"t":{"dtype":")") + dtype + R"(","shape":[)" + std::to_string(count) +
                    R"(],"data_offsets":[0,)" + std::to_string(count * w) + "]}}";
  while (hdr.size() < pad_header_to) hdr += ' ';
  th::Bytes b(8 + hdr.size() + count * w);
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(hdr.size() >> (8 * i));
  std::memcpy(b.data() + 8, hdr.data(), hdr.size());
  std::uint8_t *d = b.data() + 8 + hdr.size();
  std::uint64_t state = 0x9e3779b97f4a7c15ull ^ count;
  auto uniform = [&state] {  // xorshift64*, in [0, 1)
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    return static_cast<float>((state * 0x2545f4914f6cdd1dull) >> 40) / static_cast<float>(1 << 24);
  };
  for (std::size_t i = 0; i < count; ++i) {
    // Irwin-Hall: the sum of 4 uniforms is close enough to normal for the exponent statistics.
    const float v = periodic ? 0.001f * static_cast<float>(i % 977) - 0.3f
                             : 0.02f * (uniform() + uniform() + uniform() + uniform() - 2.0f);
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (w == 4) {
      std::memcpy(d + i * 4, &bits, 4);
    } else {
      const auto h = static_cast<std::uint16_t>(bits >> 16);
      std::memcpy(d + i * 2, &h, 2);
    }
  }
  return b;
}

}  // namespace

TEST_SUITE("filter") {

TEST_CASE("widths, names, dtypes") {
  CHECK(filter_width(Filter::kNone) == 0);
  CHECK(filter_width(Filter::kBf16) == 2);
  CHECK(filter_width(Filter::kFp16) == 2);
  CHECK(filter_width(Filter::kFp32) == 4);
  CHECK_THROWS_AS((void)filter_width(static_cast<Filter>(4)), FormatError);
  CHECK_THROWS_AS((void)filter_width(static_cast<Filter>(255)), FormatError);
  CHECK(filter_name(Filter::kNone) == "none");
  CHECK(filter_name(Filter::kBf16) == "bf16");
  CHECK(filter_name(Filter::kFp16) == "fp16");
  CHECK(filter_name(Filter::kFp32) == "fp32");
  CHECK(filter_name(static_cast<Filter>(9)) == "unknown");
  CHECK(filter_for_dtype("BF16") == std::optional<Filter>(Filter::kBf16));
  CHECK(filter_for_dtype("F16") == std::optional<Filter>(Filter::kFp16));
  CHECK(filter_for_dtype("F32") == std::optional<Filter>(Filter::kFp32));
  for (const char *d : {"F64", "I8", "U8", "bf16", "f32", "", "F8_E4M3", "BOOL"}) {
    CAPTURE(d);
    CHECK_FALSE(filter_for_dtype(d).has_value());
  }
}

TEST_CASE("the filtered form: layout for a small example") {
  // bf16 elements AB CD EF, phase 1 after a leading byte X, trailing odd byte Y:
  // raw = X A B C D E F Y  ->  [1] X | A C E | B D F | Y
  const th::Bytes raw = th::bytes_of("XABCDEFY");
  const auto form = filtered(Filter::kBf16, 1, raw);
  CHECK(form == th::Bytes{1, 'X', 'A', 'C', 'E', 'B', 'D', 'F', 'Y'});
  CHECK(unfiltered(Filter::kBf16, form) == raw);
  // fp32, phase 0: ABCD EFGH -> A E | B F | C G | D H
  const auto form4 = filtered(Filter::kFp32, 0, th::bytes_of("ABCDEFGH"));
  CHECK(th::string_of(std::span(form4).subspan(1)) == "AEBFCGDH");
  CHECK(form4[0] == 0);
}

TEST_CASE("apply/undo are inverse for every width, phase and size") {
  for (Filter f : {Filter::kBf16, Filter::kFp16, Filter::kFp32}) {
    const unsigned w = filter_width(f);
    for (std::size_t size : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{4},
                             std::size_t{5}, std::size_t{7}, std::size_t{8}, std::size_t{9}, std::size_t{32}, std::size_t{33},
                             std::size_t{34}, std::size_t{35}, std::size_t{1023},
                             std::size_t{65536}, std::size_t{65539}}) {
      for (unsigned phase = 0; phase < w; ++phase) {
        if (phase > size) continue;
        CAPTURE(static_cast<unsigned>(f));
        CAPTURE(size);
        CAPTURE(phase);
        const auto raw = th::random_bytes(size, size * 7 + phase);
        const auto form = filtered(f, phase, raw);
        CHECK(form[0] == phase);
        CHECK(unfiltered(f, form) == raw);
        // A permutation: same multiset of bytes.
        auto a = raw, b = th::Bytes(form.begin() + 1, form.end());
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        CHECK(a == b);
      }
    }
  }
}

// Regression: an empty chunk once made apply_filter/undo_filter pass a null pointer to memcpy
// (UBSan: "null pointer passed as argument"). Runs in a child so a sanitizer abort fails this check only.
TEST_CASE("an empty input round trips without undefined behaviour") {
  for (Filter f : {Filter::kBf16, Filter::kFp16, Filter::kFp32}) {
    CAPTURE(static_cast<unsigned>(f));
    const auto o = th::isolated([f] {
      const th::Bytes raw;
      th::Bytes form(1, 0xee);
      apply_filter(f, 0, raw, form);
      if (form[0] != 0) throw std::runtime_error("phase byte");
      th::Bytes back;
      undo_filter(f, form, back);
    });
    CHECK(std::string(th::outcome_name(o)) == "no exception");
  }
}

TEST_CASE("bad arguments and bad phase bytes") {
  const auto raw = th::random_bytes(10, 1);
  th::Bytes out(11), small(10);
  CHECK_THROWS_AS(apply_filter(Filter::kNone, 0, raw, out), Error);
  CHECK_THROWS_AS(apply_filter(Filter::kBf16, 2, raw, out), Error);
  CHECK_THROWS_AS(apply_filter(Filter::kFp32, 4, raw, out), Error);
  CHECK_THROWS_AS(apply_filter(Filter::kBf16, 0, raw, small), Error);
  CHECK_THROWS_AS(apply_filter(static_cast<Filter>(7), 0, raw, out), FormatError);
  th::Bytes two(2);
  CHECK_THROWS_AS(apply_filter(Filter::kFp32, 3, th::random_bytes(1, 1), two), Error);  // phase > size
  auto form = filtered(Filter::kFp32, 2, raw);
  th::Bytes back(10);
  for (std::uint8_t phase : {std::uint8_t{4}, std::uint8_t{5}, std::uint8_t{255}}) {
    CAPTURE(phase);
    form[0] = phase;
    CHECK_THROWS_AS(undo_filter(Filter::kFp32, form, back), IntegrityError);
  }
  form[0] = 3;  // a valid phase, just not the one used: bytes come back permuted, no error
  CHECK_NOTHROW(undo_filter(Filter::kFp32, form, back));
  th::Bytes tiny_form{3, 'a', 'b'};  // phase 3 > 2 output bytes
  th::Bytes tiny(2);
  CHECK_THROWS_AS(undo_filter(Filter::kFp32, tiny_form, tiny), IntegrityError);
  th::Bytes wrong(9);
  CHECK_THROWS_AS(undo_filter(Filter::kFp32, form, wrong), Error);
  CHECK_THROWS_AS(undo_filter(Filter::kNone, form, back), Error);
}

TEST_CASE("the packer filters float safetensors, declares it, and reads back exactly") {
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src);
  // Odd header padding puts the tensor data at an odd offset: the phase must handle it.
  const auto bf16 = safetensors_file("BF16", 2, 200'000, 101);
  const auto f32 = safetensors_file("F32", 4, 100'000, 102);
  const auto f16 = safetensors_file("F16", 2, 70'001, 0);
  const auto text = th::text_bytes(150'000, 3);
  th::write_file(src / "a.safetensors", bf16);
  th::write_file(src / "b.safetensors", f32);
  th::write_file(src / "c.safetensors", f16);
  th::write_file(src / "notes.txt", text);

  auto check_pkg = [&](bool filters) {
    PackOptions o;
    o.source_dir = src.string();
    o.output = (dir / (filters ? "f.tpkg" : "n.tpkg")).string();
    o.name = "f";
    o.chunk_shift = 16;
    o.threads = 2;
    o.filters = filters;
    const auto r = pack(o);
    const auto p = Package::open(o.output);
    const bool declared = (p->header().incompat_flags & format::incompat::kFilters) != 0;
    std::uint64_t filtered_chunks = 0;
    for (std::uint64_t i = 0; i < p->chunk_count(); ++i) {
      const auto c = p->chunk(i);
      if (c.filter != Filter::kNone) {
        ++filtered_chunks;
        CHECK(c.codec == format::Codec::kZstd);
      }
    }
    CHECK(filtered_chunks == r.filtered_chunks);
    if (filters) {
      CHECK(r.filtered_chunks > 0);
      CHECK(declared);
    } else {
      CHECK(r.filtered_chunks == 0);
      CHECK_FALSE(declared);
    }
    // The text file is never filtered.
    const auto t = p->inode(*p->resolve("notes.txt"));
    for (std::uint32_t k = 0; k < 3; ++k) CHECK(p->chunk(t.first + k).filter == Filter::kNone);
    Reader rd(p, 64 << 20);
    for (const auto &[name, data] : {std::pair{"a.safetensors", &bf16}, std::pair{"b.safetensors", &f32},
                                     std::pair{"c.safetensors", &f16}, std::pair{"notes.txt", &text}}) {
      CAPTURE(name);
      th::Bytes got(data->size());
      CHECK(rd.read(*p->resolve(name), 0, got) == data->size());
      CHECK(got == *data);
      th::Bytes mid(777);
      CHECK(rd.read(*p->resolve(name), 65536 - 300, mid) == mid.size());
      CHECK(std::equal(mid.begin(), mid.end(), data->begin() + 65536 - 300));
    }
    const auto m = nlohmann::json::parse(p->manifest_text());
    CHECK(m.at("files").at("a.safetensors").at("safetensors").at("dtypes").at("BF16") == 1);
    return r;
  };
  const auto with = check_pkg(true);
  const auto without = check_pkg(false);
  CHECK(with.stored_bytes < without.stored_bytes);  // the point of filtering
}

TEST_CASE("weights that LZ compresses better than planes fall back to plain zstd") {
  // A repeating ramp: its planes have high byte entropy, so literals-only coding loses to plain
  // zstd's matches; the packer's trials must notice and stop filtering that dtype. 1 MiB chunks:
  // planes of at least a zstd block take the literals-only path (smaller ones also try LZ).
  th::TempDir dir;
  const auto src = dir / "src";
  fs::create_directories(src);
  const auto ramp = safetensors_file("BF16", 2, 2'500'000, 101, true);
  th::write_file(src / "ramp.safetensors", ramp);
  auto packed = [&](bool filters) {
    PackOptions o;
    o.source_dir = src.string();
    o.output = (dir / (filters ? "f.tpkg" : "n.tpkg")).string();
    o.name = "ramp";
    o.chunk_shift = 20;
    o.threads = 2;
    o.filters = filters;
    const auto r = pack(o);
    const auto p = Package::open(o.output);
    Reader rd(p, 64 << 20);
    th::Bytes got(ramp.size());
    CHECK(rd.read(*p->resolve("ramp.safetensors"), 0, got) == ramp.size());
    CHECK(got == ramp);
    return r;
  };
  const auto with = packed(true);
  const auto without = packed(false);
  // At most the trial chunks stay filtered, and they cost little: within 5% of plain.
  CHECK(with.filtered_chunks <= 4);
  CHECK(with.stored_bytes * 100 <= without.stored_bytes * 105);
}

}  // TEST_SUITE
