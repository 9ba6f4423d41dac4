// pickle_scan.hpp and model_formats.hpp: pickle imports, Hugging Face indexes, ONNX external data,
// MLflow artifacts, pickle zips, and the packer's use of them (manifest "formats", --strict).
#include <doctest/doctest.h>
#include <zip.h>

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "helpers.hpp"
#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/model_formats.hpp"
#include "torshpkg/package.hpp"
#include "torshpkg/pickle_scan.hpp"
#include "torshpkg/writer.hpp"

using namespace torshpkg;
namespace fs = std::filesystem;

namespace {

// ---- pickles -------------------------------------------------------------------------------------

th::Bytes hex(std::string_view h) {
  th::Bytes b;
  for (std::size_t i = 0; i + 1 < h.size(); i += 2)
    b.push_back(static_cast<std::uint8_t>(std::stoul(std::string(h.substr(i, 2)), nullptr, 16)));
  return b;
}

// A hand-built pickle.
struct Pk {
  th::Bytes b;
  Pk &op(std::uint8_t o) {
    b.push_back(o);
    return *this;
  }
  Pk &raw(std::string_view s) {
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Pk &le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
    return *this;
  }
  Pk &proto(unsigned v) { return op(0x80).le(v, 1); }
  Pk &sbu(std::string_view s) { return op(0x8c).le(s.size(), 1).raw(s); }  // SHORT_BINUNICODE
  Pk &bu(std::string_view s) { return op('X').le(s.size(), 4).raw(s); }    // BINUNICODE
  Pk &bu8(std::string_view s) { return op(0x8d).le(s.size(), 8).raw(s); }  // BINUNICODE8
  Pk &global(std::string_view m, std::string_view n) { return op('c').raw(m).raw("\n").raw(n).raw("\n"); }
  Pk &stop() { return op('.'); }
};

std::vector<std::string> imports_of(std::span<const std::uint8_t> b) {
  std::vector<std::string> out;
  for (const auto &i : scan_pickle(b).imports) out.push_back(i.dotted());
  return out;
}

using Strings = std::vector<std::string>;

// CPython 3.11 pickle.dumps output (see the test case for the objects).
constexpr std::string_view kP0 =
    "63636f6c6c656374696f6e730a4f726465726564446963740a70300a28745270310a56610a70320a46312e350a7356620a70330a286c7034"
    "0a49310a6149320a61732e";
constexpr std::string_view kP2 =
    "80027d71002858020000006f64710163636f6c6c656374696f6e730a4f726465726564446963740a7102295271035801000000737104635f"
    "5f6275696c74696e5f5f0a7365740a71055d7106284b014b02658571075271085801000000637109635f5f6275696c74696e5f5f0a636f6d"
    "706c65780a710a473ff000000000000047400000000000000086710b52710c752e";
constexpr std::string_view kP4 =
    "800495a7000000000000007d94288c026f64948c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c016b94"
    "8c07646563696d616c948c07446563696d616c9493948c03312e359485945294738c02667394284b0391948c0162944306787978797879948c"
    "0170948c0966756e63746f6f6c73948c077061727469616c9493948c086275696c74696e73948c036d6178949394859452942868174b018594"
    "7d944e749462752e";
constexpr std::string_view kP5 =
    "80059538000000000000005d9428960300000000000000616263948c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493"
    "942952946804295294652e";

// ---- trees -----------------------------------------------------------------------------------------

// The entries of a directory as the packer's walk would list them (symlinks not followed).
std::vector<TreeEntry> entries_of(const fs::path &root) {
  std::vector<TreeEntry> out;
  TreeEntry r;
  r.type = TreeEntry::Type::kDirectory;
  r.source = root.string();
  out.push_back(r);
  for (const auto &de : fs::recursive_directory_iterator(root)) {
    TreeEntry e;
    e.path = de.path().lexically_relative(root).generic_string();  // fs::relative would follow symlinks
    e.source = de.path().string();
    if (de.is_symlink()) {
      e.type = TreeEntry::Type::kSymlink;
      e.link_target = fs::read_symlink(de.path()).string();
    } else if (de.is_directory()) {
      e.type = TreeEntry::Type::kDirectory;
    } else {
      e.size = de.file_size();
    }
    out.push_back(std::move(e));
  }
  return out;
}

FormatAnalysis analyse(const fs::path &root) {
  return analyse_formats(entries_of(root));
}

bool any_contains(const Strings &v, std::string_view needle) {
  return std::any_of(v.begin(), v.end(), [&](const std::string &s) { return th::contains(s, needle); });
}

// A safetensors file with F16 tensors of the given shapes.
void write_safetensors(const fs::path &p, const std::map<std::string, std::vector<std::uint64_t>> &tensors) {
  nlohmann::json h = nlohmann::json::object();
  std::uint64_t off = 0;
  for (const auto &[name, shape] : tensors) {
    std::uint64_t n = 2;
    for (auto d : shape) n *= d;
    h[name] = {{"dtype", "F16"}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  const std::string hs = h.dump();
  th::Bytes b(8);
  store_le<std::uint64_t>(b.data(), hs.size());
  b.insert(b.end(), hs.begin(), hs.end());
  b.resize(b.size() + off, 0x11);
  th::write_file(p, b);
}

void write_json(const fs::path &p, const nlohmann::json &j) {
  th::write_file(p, j.dump());
}

// A good sharded Hugging Face directory.
void hf_tree(const fs::path &d) {
  fs::create_directories(d);
  write_json(d / "config.json",
             {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"torch_dtype", "float16"}});
  write_safetensors(d / "model-00001-of-00002.safetensors", {{"embed", {4, 2}}, {"layer.0", {2, 2}}});
  write_safetensors(d / "model-00002-of-00002.safetensors", {{"layer.1", {2, 2}}, {"head", {2, 4}}});
  write_json(d / "model.safetensors.index.json", {{"metadata", {{"total_size", 48}}},
                                                  {"weight_map",
                                                   {{"embed", "model-00001-of-00002.safetensors"},
                                                    {"layer.0", "model-00001-of-00002.safetensors"},
                                                    {"layer.1", "model-00002-of-00002.safetensors"},
                                                    {"head", "model-00002-of-00002.safetensors"}}}});
  th::write_file(d / "tokenizer.json", "{}");
  th::write_file(d / "tokenizer_config.json", "{}");
}

// ---- protobuf for ONNX -------------------------------------------------------------------------------

struct Pb {
  th::Bytes b;
  Pb &varint(std::uint64_t v) {
    while (v >= 0x80) b.push_back(static_cast<std::uint8_t>(v | 0x80)), v >>= 7;
    b.push_back(static_cast<std::uint8_t>(v));
    return *this;
  }
  Pb &num(std::uint32_t field, std::uint64_t v) { return varint(field << 3).varint(v); }
  Pb &bytes(std::uint32_t field, std::string_view s) {
    varint(field << 3 | 2).varint(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Pb &msg(std::uint32_t field, const Pb &m) { return bytes(field, th::string_of(m.b)); }
  Pb &fixed64(std::uint32_t field) {
    varint(field << 3 | 1);
    b.resize(b.size() + 8, 0xab);
    return *this;
  }
};

Pb entry(std::string_view k, std::string_view v) {
  return Pb().bytes(1, k).bytes(2, v);
}

// TensorProto FLOAT [dims] stored externally.
Pb ext_tensor(std::string_view name, std::vector<std::uint64_t> dims, std::string_view location,
              std::optional<std::string> offset, std::optional<std::string> length) {
  Pb t;
  for (auto d : dims) t.num(1, d);
  t.num(2, 1).bytes(8, name);
  t.msg(13, entry("location", location));
  if (offset) t.msg(13, entry("offset", *offset));
  if (length) t.msg(13, entry("length", *length));
  t.num(14, 1);
  return t;
}

Pb onnx_model(const Pb &graph) {
  Pb m;
  m.num(1, 8).bytes(2, "unit-test").bytes(3, "1.0").msg(8, Pb().bytes(1, "").num(2, 13)).msg(7, graph);
  return m;
}

// ---- zips ------------------------------------------------------------------------------------------------

struct ZipOut {
  zip_t *z = nullptr;
  explicit ZipOut(const fs::path &p) {
    int err = 0;
    z = zip_open(p.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
    REQUIRE(z != nullptr);
  }
  void add(const std::string &name, const th::Bytes &data) {
    auto *copy = static_cast<std::uint8_t *>(std::malloc(data.size() ? data.size() : 1));
    std::copy(data.begin(), data.end(), copy);
    zip_source_t *s = zip_source_buffer(z, copy, data.size(), 1);
    REQUIRE(s != nullptr);
    const zip_int64_t idx = zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE);
    REQUIRE(idx >= 0);
    REQUIRE(zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), ZIP_CM_STORE, 0) == 0);  // as torch.save
  }
  ~ZipOut() {
    if (z) zip_close(z);
  }
};

PackOptions pack_opts(const fs::path &src, const fs::path &out) { return th::pack_options(src, out); }

}  // namespace

TEST_SUITE("formats") {
  TEST_CASE("pickle: real CPython pickles of protocols 0, 2, 4 and 5") {
    CHECK(imports_of(hex(kP0)) == Strings{"collections.OrderedDict"});
    CHECK(imports_of(hex(kP2)) == Strings{"collections.OrderedDict", "__builtin__.set", "__builtin__.complex"});
    CHECK(imports_of(hex(kP4)) ==
          Strings{"collections.OrderedDict", "decimal.Decimal", "functools.partial", "builtins.max"});
    CHECK(imports_of(hex(kP5)) == Strings{"collections.OrderedDict"});
    CHECK(scan_pickle(hex(kP4)).protocol == 4);
    CHECK(scan_pickle(hex(kP0)).end == hex(kP0).size());
  }

  TEST_CASE(
      "pickle: STACK_GLOBAL operands through the memo (MEMOIZE, BINPUT, LONG_BINPUT, PUT; BINGET, LONG_BINGET, GET)") {
    Pk p;
    p.proto(4).op(0x95).le(0, 8);  // an empty FRAME is fine
    p.sbu("torch._utils").op(0x94).sbu("_rebuild_tensor_v2").op(0x94).op(0x93).op(0x94).op('0');  // memo 0,1,2
    p.op('h').le(0, 1).sbu("_rebuild_parameter").op(0x93).op('0');                                // BINGET 0
    p.bu("collections").op('r').le(70000, 4).op('0').op('j').le(70000, 4).bu8("OrderedDict").op(0x93).op('0');
    p.op('V').raw("numpy.core.multiarray\n").op('p').raw("9\n").op('0');
    p.op('g').raw("9\n").op('S').raw("'_reconstruct'\n").op(0x93);
    p.stop();
    const auto s = scan_pickle(p.b);
    CHECK(s.end == p.b.size());
    CHECK(imports_of(p.b) == Strings{"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                                     "collections.OrderedDict", "numpy.core.multiarray._reconstruct"});
    for (const auto &i : s.imports) CHECK_FALSE(dangerous_import(i));
  }

  TEST_CASE("pickle: protocol-0 strings with escapes, INST and OBJ") {
    Pk p;
    p.op('(').op('S').raw("\"o\\x73\"\n").op('S').raw("'sys\\164em'\n").op(0x93);  // STACK_GLOBAL("os", "system")
    p.op('(').op('i').raw("mymod\nMyClass\n");                                     // INST with no arguments
    p.op('(').global("builtins", "eval").op('o');                                  // OBJ
    p.op(0x87).stop();  // TUPLE3 of the three results; the first MARK holds them
    CHECK(imports_of(p.b) == Strings{"os.system", "mymod.MyClass", "builtins.eval"});
    Pk u;
    u.op('V').raw("\\u006fs\n").op('V').raw("popen\n").op(0x93).stop();  // raw-unicode-escape "\u006f" = "o"
    CHECK(imports_of(u.b) == Strings{"os.popen"});
  }

  TEST_CASE("pickle: the malicious os.system pickle is flagged") {
    // pickle.dumps of an object whose __reduce__ returns (os.system, ("echo pwned",)), protocols 0 and 4.
    const Pk p0 = Pk().global("posix", "system")
                      .op('p')
                      .raw("0\n")
                      .op('(')
                      .op('V')
                      .raw("echo pwned\n")
                      .op('p')
                      .raw("1\n")
                      .op('t')
                      .op('p')
                      .raw("2\n")
                      .op('R')
                      .op('p')
                      .raw("3\n")
                      .stop();
    const auto s0 = scan_pickle(p0.b);
    REQUIRE(s0.imports.size() == 1);
    CHECK(s0.imports[0].dotted() == "posix.system");
    CHECK(dangerous_import(s0.imports[0]));
    Pk p4;
    p4.proto(4)
        .sbu("posix")
        .op(0x94)
        .sbu("system")
        .op(0x94)
        .op(0x93)
        .op(0x94)
        .sbu("echo pwned")
        .op(0x94)
        .op(0x85)
        .op(0x94)
        .op('R')
        .op(0x94)
        .stop();
    const auto s4 = scan_pickle(p4.b);
    REQUIRE(s4.imports.size() == 1);
    CHECK(dangerous_import(s4.imports[0]));
  }

  TEST_CASE("pickle: non-literal STACK_GLOBAL operands are <dynamic> and dangerous") {
    Pk p;
    p.proto(4).global("builtins", "str").op(')').op('R').sbu("name").op(0x93).stop();  // module from a call
    const auto s = scan_pickle(p.b);
    REQUIRE(s.imports.size() == 2);
    CHECK(s.imports[1].module == kDynamicImport);
    CHECK(s.imports[1].name == "name");
    CHECK(dangerous_import(s.imports[1]));
    Pk longer;
    longer.proto(4).bu(std::string(kMaxPickleString + 1, 'a')).sbu("x").op(0x93).stop();
    CHECK(scan_pickle(longer.b).imports.at(0).module == kDynamicImport);
    Pk ext;
    ext.proto(2).op(0x82).le(7, 1).stop();
    CHECK(imports_of(ext.b) == Strings{"<extension>.7"});
    CHECK(dangerous_import(scan_pickle(ext.b).imports.at(0)));
  }

  TEST_CASE("pickle: argument bytes are skipped, never parsed as opcodes") {
    const std::string fake = "cos\nsystem\n";
    Pk p;
    p.proto(5).op('C').le(fake.size(), 1).raw(fake).op('0');
    p.op('B').le(fake.size(), 4).raw(fake).op('0');
    p.op(0x8e).le(fake.size(), 8).raw(fake).op('0');
    p.op(0x96).le(fake.size(), 8).raw(fake).op('0');
    p.op(0x8a).le(fake.size(), 1).raw(fake).op('0');
    p.op(0x8b).le(fake.size(), 4).raw(fake).op('0');
    p.op('T').le(fake.size(), 4).raw(fake).op('0');
    p.op('U').le(fake.size(), 1).raw(fake).op('0');
    p.bu(fake).op('0').bu8(fake).op('0').sbu(fake).op('0');
    p.op('G').raw("cos\nsys\n").op('0');  // BINFLOAT: 8 bytes
    p.op('J').raw("cos\n").op('0').op('M').raw("c\n").op('0').op('K').raw("c").op('0');
    p.op(0x95).le(3, 8).op('N').op('0').op('N');
    p.stop();
    const auto s = scan_pickle(p.b);
    CHECK(s.imports.empty());
    CHECK(s.end == p.b.size());
  }

  TEST_CASE("pickle: every truncation of a valid pickle is PickleTruncated") {
    for (const auto h : {kP0, kP2, kP4, kP5}) {
      const auto b = hex(h);
      for (std::size_t n = 0; n < b.size(); ++n) {
        CAPTURE(n);
        CHECK_THROWS_AS((void)scan_pickle(std::span<const std::uint8_t>(b).first(n)), PickleTruncated);
      }
    }
    Pk huge;
    huge.proto(4).op(0x8e).le(~0ull, 8);  // BINBYTES8 with a length near 2^64
    CHECK_THROWS_AS((void)scan_pickle(huge.b), PickleTruncated);
    Pk frame;
    frame.proto(4).op(0x95).le(1000, 8).op('N').stop();
    CHECK_THROWS_AS((void)scan_pickle(frame.b), PickleTruncated);
  }

  TEST_CASE("pickle: invalid input is a FormatError") {
    auto invalid = [](const Pk &p) {
      CAPTURE(th::string_of(p.b));
      try {
        (void)scan_pickle(p.b);
        FAIL("accepted");
      } catch (const PickleTruncated &) {
        FAIL("reported as truncated");
      } catch (const FormatError &) {
      }
    };
    invalid(Pk().op(0xff).stop());                     // unknown opcode
    invalid(Pk().proto(6).op('N').stop());             // protocol 6
    invalid(Pk().op('R').stop());                      // REDUCE on an empty stack
    invalid(Pk().op('N').op('(').op('R').stop());      // cannot pop through a mark
    invalid(Pk().op('t').stop());                      // TUPLE without MARK
    invalid(Pk().op('(').op('N').op('d').stop());      // odd DICT
    invalid(Pk().op('T').le(0xffffffff, 4).stop());    // negative BINSTRING length
    invalid(Pk().op(0x8b).le(0x80000000, 4).stop());   // negative LONG4 length
    invalid(Pk().op('S').raw("abc\n").stop());         // unquoted STRING
    invalid(Pk().op('S').raw("'\\x4'\n").stop());      // bad \x escape
    invalid(Pk().op('N').op('p').raw("x1\n").stop());  // PUT with a non-number
    invalid(Pk().op(0x82).le(0, 1).stop());            // EXT code 0
    invalid(Pk().stop());                              // STOP with nothing to return
    invalid(Pk().op('(').op('o').stop());              // OBJ without a class
    invalid(Pk().op('2').stop());                      // DUP of nothing
  }

  TEST_CASE("pickle: POP of an empty frame pops the mark, as CPython does") {
    Pk p;
    p.op('N').op('(').op('0').op('0').op('N').stop();  // MARK then POP removes the mark; the next POP the None
    CHECK(scan_pickle(p.b).end == p.b.size());
    Pk q;
    q.op(0x8f).op('(').op('N').op(0x90).stop();  // EMPTY_SET MARK None ADDITEMS
    CHECK(scan_pickle(q.b).end == q.b.size());
  }

  TEST_CASE("pickle: dangerous_import classification") {
    auto d = [](std::string m, std::string n) { return dangerous_import(PickleImport{std::move(m), std::move(n)}); };
    for (const char *m : {"os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "importlib", "runpy", "pty",
                          "webbrowser", "ctypes", "multiprocessing", "code", "pickle", "os.path", "importlib.util",
                          "multiprocessing.pool", "marshal"}) {
      CAPTURE(m);
      CHECK(d(m, "anything"));
    }
    for (const char *n :
         {"eval", "exec", "compile", "__import__", "getattr", "setattr", "open", "globals", "breakpoint", "input"}) {
      CAPTURE(n);
      CHECK(d("builtins", n));
      CHECK(d("__builtin__", n));
    }
    CHECK(d("<dynamic>", "x"));
    CHECK(d("torch.hub", "load"));
    CHECK(d("numpy.testing._private.utils", "runstring"));
    for (auto [m, n] :
         std::initializer_list<std::pair<const char *, const char *>>{{"collections", "OrderedDict"},
                                                                      {"torch._utils", "_rebuild_tensor_v2"},
                                                                      {"torch", "FloatStorage"},
                                                                      {"torch", "BFloat16Storage"},
                                                                      {"torch._utils", "_rebuild_parameter"},
                                                                      {"numpy.core.multiarray", "_reconstruct"},
                                                                      {"numpy", "dtype"},
                                                                      {"numpy", "ndarray"},
                                                                      {"_codecs", "encode"},
                                                                      {"builtins", "set"},
                                                                      {"__builtin__", "complex"},
                                                                      {"codecs", "encode"},
                                                                      {"osx", "thing"},
                                                                      {"torch.nn.modules.linear", "Linear"},
                                                                      {"collections", "defaultdict"},
                                                                      {"argparse", "Namespace"}}) {
      CAPTURE(m);
      CAPTURE(n);
      CHECK_FALSE(d(m, n));
    }
  }

  TEST_CASE("pickle files in a tree: .pkl, legacy torch .pt, zip members; others left alone") {
    th::TempDir dir;
    const auto root = dir / "t";
    fs::create_directories(root);
    th::write_file(root / "ok.pkl", hex(kP4));
    th::write_file(root / "evil.pickle", Pk().global("os", "system").op(')').op('R').stop().b);
    // Legacy torch.save: five pickles in a row, then raw storage bytes starting with 0x80.
    Pk legacy;
    for (int i = 0; i < 4; ++i) legacy.proto(2).op('N').stop();
    const auto p2 = hex(kP2);
    legacy.raw(th::string_of(p2)).proto(5).op(0xff).op(0xff).op(0x01);
    th::write_file(root / "legacy.bin", legacy.b);
    th::write_file(root / "random.bin", th::Bytes{0x80, 0x09, 1, 2, 3});  // not PROTO 2..5: not a pickle
    th::write_file(root / "data.bin", th::random_bytes(1000, 3));
    th::write_file(root / "cut.pkl", std::span<const std::uint8_t>(p2).first(50));
    {
      ZipOut z(root / "model.pt");
      z.add("model/data.pkl", hex(kP2));
      z.add("model/data/0", th::random_bytes(100, 1));
      z.add("model/version", th::bytes_of("3\n"));
      z.add("model/extra.pkl", Pk().proto(4).sbu("subprocess").sbu("Popen").op(0x93).stop().b);
    }
    const auto a = analyse(root);
    const auto &pk = a.formats.at("pickles");
    CHECK(pk.size() == 5);
    CHECK(pk.at("ok.pkl").at("format") == "pickle");
    CHECK(pk.at("ok.pkl").at("dangerous").empty());
    CHECK(pk.at("evil.pickle").at("dangerous") == nlohmann::json{"os.system"});
    CHECK(pk.at("legacy.bin").at("format") == "torch-legacy");
    CHECK(pk.at("legacy.bin").at("pickles") == 5);
    CHECK(pk.at("legacy.bin").at("imports").size() == 3);
    CHECK_FALSE(pk.at("legacy.bin").contains("error"));
    CHECK(pk.at("cut.pkl").contains("error"));
    CHECK(pk.at("model.pt").at("format") == "torch-zip");
    CHECK(pk.at("model.pt").at("members") == nlohmann::json{"model/data.pkl", "model/extra.pkl"});
    CHECK(pk.at("model.pt").at("dangerous") == nlohmann::json{"subprocess.Popen"});
    CHECK_FALSE(pk.contains("random.bin"));
    CHECK_FALSE(pk.contains("data.bin"));
    CHECK(any_contains(a.problems, "evil.pickle: pickle imports os.system"));
    CHECK(any_contains(a.problems, "model.pt: pickle imports subprocess.Popen"));
    CHECK(any_contains(a.problems, "cut.pkl: cannot scan"));
    CHECK(a.problems.size() == 3);
    CHECK(any_contains(a.notes, "ok.pkl is a pickle"));
    CHECK(any_contains(a.notes, "legacy.bin is a pickle"));
  }

  TEST_CASE("many ordinary pickles get one note, not one each") {
    th::TempDir dir;
    const auto root = dir / "t";
    fs::create_directories(root);
    for (int i = 0; i < 5; ++i) th::write_file(root / fmt::format("shard-{}.pkl", i), hex(kP0));
    const auto a = analyse(root);
    CHECK(a.problems.empty());
    REQUIRE(a.notes.size() == 1);
    CHECK(th::contains(a.notes[0], "5 pickle files, whose imports are all ordinary"));
    CHECK(a.formats.at("pickles").size() == 5);
  }

  TEST_CASE("pickle zips: a corrupt member and a non-zip .pt are problems, not crashes") {
    th::TempDir dir;
    const auto root = dir / "t";
    fs::create_directories(root);
    {
      ZipOut z(root / "m.pt");
      z.add("m/data.pkl", hex(kP2));
    }
    auto bytes = th::read_file(root / "m.pt");
    // Flip a byte of the stored member (the CRC no longer matches).
    const auto p2 = hex(kP2);
    const auto at = std::search(bytes.begin(), bytes.end(), p2.begin() + 20, p2.begin() + 30);
    REQUIRE(at != bytes.end());
    *at ^= 0x01;
    th::write_file(root / "m.pt", bytes);
    th::Bytes fake{'P', 'K', 3, 4};
    fake.resize(200, 0);
    th::write_file(root / "fake.pt", fake);
    const auto a = analyse(root);
    CHECK(a.formats.at("pickles").at("fake.pt").contains("error"));
    CHECK(any_contains(a.problems, "fake.pt: cannot scan"));
    CHECK(any_contains(a.problems, "m.pt"));
  }

  TEST_CASE("Hugging Face: a good sharded directory") {
    th::TempDir dir;
    hf_tree(dir / "m");
    const auto a = analyse(dir / "m");
    CHECK(a.problems.empty());
    REQUIRE(a.formats.contains("huggingface"));
    const auto &h = a.formats["huggingface"].at(0);
    CHECK(h.at("dir") == "");
    CHECK(h.at("config") == "config.json");
    CHECK(h.at("architectures") == nlohmann::json{"LlamaForCausalLM"});
    CHECK(h.at("model_type") == "llama");
    CHECK(h.at("torch_dtype") == "float16");
    CHECK(h.at("index") == "model.safetensors.index.json");
    CHECK(h.at("shards") == nlohmann::json{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"});
    CHECK(h.at("parameters") == 8 + 4 + 4 + 8);
    CHECK(h.at("dtypes").at("F16") == 4);
    CHECK(h.at("tokenizer") == nlohmann::json{"tokenizer.json", "tokenizer_config.json"});
  }

  TEST_CASE("Hugging Face: a single-file model in a subdirectory, and a shard reached through a symlink") {
    th::TempDir dir;
    const auto root = dir / "r";
    fs::create_directories(root / "unet");
    fs::create_directories(root / "blobs");
    write_json(root / "unet/config.json", {{"_class_name", "UNet2DConditionModel"}, {"_diffusers_version", "0.20.0"}});
    write_safetensors(root / "blobs/abc", {{"w", {2}}});
    fs::create_symlink("../blobs/abc", root / "unet/diffusion_pytorch_model.safetensors");
    const auto a = analyse(root);
    CHECK(a.problems.empty());
    const auto &h = a.formats.at("huggingface").at(0);
    CHECK(h.at("dir") == "unet");
    CHECK(h.at("class_name") == "UNet2DConditionModel");
    CHECK(h.at("index").is_null());
    CHECK(h.at("shards") == nlohmann::json{"unet/diffusion_pytorch_model.safetensors"});
    CHECK(h.at("parameters") == 2);
  }

  TEST_CASE("Hugging Face: broken indexes") {
    th::TempDir dir;
    const auto d = dir / "m";
    hf_tree(d);
    auto index = nlohmann::json::parse(th::string_of(th::read_file(d / "model.safetensors.index.json")));
    SUBCASE("the weight map points at a missing shard") {
      index["weight_map"]["extra"] = "model-00003-of-00003.safetensors";
      write_json(d / "model.safetensors.index.json", index);
      const auto a = analyse(d);
      CHECK(any_contains(a.problems,
                         "maps 1 tensor (e.g. extra) to shard model-00003-of-00003.safetensors, which is not "
                         "in the package"));
    }
    SUBCASE("a shard's tensor is missing from the map") {
      index["weight_map"].erase("head");
      write_json(d / "model.safetensors.index.json", index);
      const auto a = analyse(d);
      REQUIRE(a.problems.size() == 1);
      CHECK(th::contains(a.problems[0], "model-00002-of-00002.safetensors: 1 tensor missing from the weight_map"));
      CHECK(th::contains(a.problems[0], "head"));
    }
    SUBCASE("a tensor is mapped to the wrong shard") {
      index["weight_map"]["head"] = "model-00001-of-00002.safetensors";
      write_json(d / "model.safetensors.index.json", index);
      const auto a = analyse(d);
      CHECK(any_contains(a.problems, "mapped to another shard"));
      CHECK(any_contains(a.problems, "which does not contain them: head"));
    }
    SUBCASE("a shard of the series is not referenced") {
      write_safetensors(d / "model-00003-of-00002.safetensors", {{"z", {1}}});
      const auto a = analyse(d);
      CHECK(any_contains(a.problems, "shard model-00003-of-00002.safetensors is not referenced"));
    }
    SUBCASE("a shard escapes the package, the index is not JSON, a shard is not safetensors") {
      index["weight_map"]["head"] = "../../etc/passwd";
      write_json(d / "model.safetensors.index.json", index);
      CHECK(any_contains(analyse(d).problems, "outside the package"));
      th::write_file(d / "model.safetensors.index.json", "{not json");
      CHECK(any_contains(analyse(d).problems, "not valid JSON"));
      hf_tree(d);
      th::write_file(d / "model-00002-of-00002.safetensors", "garbage garbage");
      CHECK(any_contains(analyse(d).problems, "model-00002-of-00002.safetensors: not a safetensors file"));
    }
  }

  TEST_CASE("ONNX: external data inside the package and within bounds") {
    th::TempDir dir;
    const auto root = dir / "o";
    fs::create_directories(root / "sub");
    auto weights = th::random_bytes(64, 2);
    weights[0] = 0x80, weights[1] = 0x03;  // looks like a pickle's PROTO 3, but it is ONNX external data
    th::write_file(root / "sub/weights.bin", weights);
    Pb g;
    g.msg(5, ext_tensor("w", {2, 3}, "weights.bin", "0", "24"));
    g.msg(5, ext_tensor("b", {3}, "weights.bin", "24", "12"));
    g.msg(5, Pb().num(1, 2).num(2, 1).bytes(8, "inline").bytes(9, std::string(8, 'x')));  // raw_data, not external
    g.fixed64(99);
    // A subgraph (If.then_branch) with its own external initializer, and packed dims.
    Pb sub_t;
    sub_t.bytes(1, th::string_of(Pb().varint(2).varint(2).b));  // packed dims [2, 2]
    sub_t.num(2, 10)
        .bytes(8, "half")
        .msg(13, entry("location", "weights.bin"))
        .msg(13, entry("offset", "40"))
        .msg(13, entry("length", "8"))
        .num(14, 1);
    g.msg(1, Pb().msg(5, Pb().bytes(1, "then_branch").msg(6, Pb().msg(5, sub_t))));
    th::write_file(root / "sub/model.onnx", onnx_model(g).b);
    const auto a = analyse(root);
    CHECK(a.problems.empty());
    const auto &o = a.formats.at("onnx").at(0);
    CHECK(o.at("model") == "sub/model.onnx");
    CHECK(o.at("ir_version") == 8);
    CHECK(o.at("producer") == "unit-test 1.0");
    CHECK(o.at("opsets").at("") == 13);
    CHECK(o.at("tensors") == 4);
    REQUIRE(o.at("external_data").size() == 3);
    CHECK(o["external_data"][0] ==
          nlohmann::ordered_json{{"tensor", "w"}, {"location", "weights.bin"}, {"offset", 0}, {"length", 24}});
    CHECK(o["external_data"][2].at("tensor") == "half");
    CHECK_FALSE(a.formats.contains("pickles"));
  }

  TEST_CASE("ONNX: missing location file, out-of-bounds offset, wrong length, escaping path, garbage") {
    th::TempDir dir;
    const auto root = dir / "o";
    fs::create_directories(root);
    th::write_file(root / "w.bin", th::random_bytes(32, 2));
    auto model_with = [&](const Pb &t) { th::write_file(root / "m.onnx", onnx_model(Pb().msg(5, t)).b); };
    model_with(ext_tensor("w", {2}, "missing.bin", "0", "8"));
    CHECK(any_contains(analyse(root).problems, "tensor 'w': external data file missing.bin is not in the package"));
    model_with(ext_tensor("w", {2}, "w.bin", "30", "8"));
    CHECK(any_contains(analyse(root).problems, "lies outside w.bin (32 bytes)"));
    model_with(ext_tensor("w", {2}, "w.bin", "18446744073709551615", "8"));  // offset + length overflows
    CHECK(any_contains(analyse(root).problems, "lies outside"));
    model_with(ext_tensor("w", {2}, "w.bin", "40", std::nullopt));
    CHECK(any_contains(analyse(root).problems, "lies outside"));
    model_with(ext_tensor("w", {2}, "w.bin", "0", "12"));
    CHECK(any_contains(analyse(root).problems, "length 12 but its shape and type need 8 bytes"));
    model_with(ext_tensor("w", {2}, "../w.bin", "0", "8"));
    CHECK(any_contains(analyse(root).problems, "absolute or outside the package"));
    model_with(ext_tensor("w", {2}, "/etc/passwd", "0", "8"));
    CHECK(any_contains(analyse(root).problems, "absolute or outside the package"));
    model_with(ext_tensor("w", {2}, "w.bin", "zero", "8"));
    CHECK(any_contains(analyse(root).problems, "not decimal numbers"));
    model_with(Pb().num(1, 2).num(2, 1).bytes(8, "w").num(14, 1));
    CHECK(any_contains(analyse(root).problems, "stored externally but has no location"));
    model_with(ext_tensor("w", {2}, "w.bin", "0", "8"));
    CHECK(analyse(root).problems.empty());
    // Truncations and garbage: a problem each time, never a crash or an exception.
    const auto good = onnx_model(Pb().msg(5, ext_tensor("w", {2}, "w.bin", "0", "8"))).b;
    for (std::size_t n = 1; n < good.size(); ++n) {
      CAPTURE(n);
      th::write_file(root / "m.onnx", std::span<const std::uint8_t>(good).first(n));
      (void)analyse(root);
    }
    th::write_file(root / "m.onnx", th::random_bytes(4096, 5));
    const auto a = analyse(root);
    CHECK(any_contains(a.problems, "m.onnx: not a readable ONNX model"));
    CHECK(a.formats.at("onnx").at(0).contains("error"));
    // Deeply nested subgraphs are refused, not recursed into without bound.
    Pb deep = Pb().msg(5, ext_tensor("w", {2}, "w.bin", "0", "8"));
    for (int i = 0; i < 100; ++i) deep = Pb().msg(1, Pb().msg(5, Pb().msg(6, deep)));
    th::write_file(root / "m.onnx", onnx_model(deep).b);
    CHECK(any_contains(analyse(root).problems, "nested deeper"));
  }

  TEST_CASE("ONNX tensor sizes") {
    CHECK(onnx_tensor_bytes(1, 6) == 24u);
    CHECK(onnx_tensor_bytes(16, 3) == 6u);
    CHECK(onnx_tensor_bytes(15, 2) == 32u);
    CHECK(onnx_tensor_bytes(22, 3) == 2u);
    CHECK_FALSE(onnx_tensor_bytes(8, 3).has_value());  // STRING
    CHECK_FALSE(onnx_tensor_bytes(999, 3).has_value());
    CHECK_FALSE(onnx_tensor_bytes(7, ~0ull).has_value());
  }

  TEST_CASE("MLflow: flavors and artifacts recorded and checked") {
    th::TempDir dir;
    const auto root = dir / "r";
    fs::create_directories(root / "model/data");
    th::write_file(root / "model/data/model.pth", "x");
    th::write_file(root / "model/conda.yaml", "name: x\n");
    th::write_file(root / "model/python_env.yaml", "python: 3.11\n");
    const std::string mlmodel = R"(artifact_path: model
flavors:
  python_function:
    data: data
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.pytorch
    pickle_module_name: mlflow.pytorch.pickle_module
    python_version: 3.11.2
  pytorch:
    code: null
    model_data: data
    pytorch_version: 1.13.1
mlflow_version: 2.5.0
model_uuid: 0123abcd
utc_time_created: '2023-08-01 10:00:00.000000'
)";
    th::write_file(root / "model/MLmodel", mlmodel);
    auto a = analyse(root);
    CHECK(a.problems.empty());
    const auto &m = a.formats.at("mlflow").at(0);
    CHECK(m.at("mlmodel") == "model/MLmodel");
    CHECK(m.at("mlflow_version") == "2.5.0");
    CHECK(m.at("flavors").at("python_function").at("loader_module") == "mlflow.pytorch");
    CHECK(m.at("flavors").at("pytorch").at("code").is_null());
    CHECK(m.at("artifacts") == nlohmann::json{"model/data", "model/conda.yaml", "model/python_env.yaml"});

    th::write_file(root / "model/MLmodel",
                   mlmodel + "saved_input_example_info:\n  artifact_path: input_example.json\n");
    a = analyse(root);
    CHECK(any_contains(a.problems,
                       "saved_input_example_info.artifact_path = 'input_example.json': "
                       "model/input_example.json is not in the package"));
    fs::remove_all(root / "model/data");
    CHECK(any_contains(analyse(root).problems, "python_function.data = 'data'"));
    th::write_file(root / "model/MLmodel", "flavors: [unclosed\n");
    CHECK(any_contains(analyse(root).problems, "not valid YAML"));
    th::write_file(root / "model/MLmodel", "mlflow_version: 2.5.0\n");
    CHECK(any_contains(analyse(root).problems, "no flavors"));
    // An alias bomb expands exponentially: the conversion budget stops it.
    std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    for (char c = 'b'; c <= 'j'; ++c) {
      const std::string prev(1, static_cast<char>(c - 1));
      bomb += std::string(1, c) + ": &" + std::string(1, c) + " [";
      for (int i = 0; i < 10; ++i) bomb += (i ? ", *" : "*") + prev;
      bomb += "]\n";
    }
    th::write_file(root / "model/MLmodel", bomb);
    CHECK(any_contains(analyse(root).problems, "too many YAML nodes"));
    th::write_file(root / "model/MLmodel", std::string(5000, '[') + std::string(5000, ']'));  // yaml-cpp stops at 2000
    CHECK_FALSE(analyse(root).problems.empty());
  }

  // Regression (fuzzing): ordered_json's o[key] searches the keys linearly, so a mapping or list
  // with many distinct keys took O(n^2): 17 s for a 0.9 MiB MLmodel, half an hour for a 12 MiB ONNX model.
  TEST_CASE("many keys: MLmodel mappings and ONNX opsets are converted in linear time") {
    th::TempDir dir;
    const auto root = dir / "r";
    fs::create_directories(root);
    // Repeated YAML keys behave as o[key] = v did: first place, last value.
    th::write_file(root / "MLmodel", "flavors:\n  b: {}\n  a: {}\n  b: {x: 1}\n");
    auto a = analyse(root);
    const auto &flavors = a.formats.at("mlflow").at(0).at("flavors");
    CHECK(flavors.dump() == R"({"b":{"x":"1"},"a":{}})");

    std::string many = "flavors:\n  f: {}\n";
    for (int i = 0; i < 90'000; ++i) many += fmt::format("k{}: v\n", i);  // 0.9 MiB, under the node budget
    th::write_file(root / "MLmodel", many);
    const auto start = std::chrono::steady_clock::now();
    a = analyse(root);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(a.problems.empty());
    CHECK(took < std::chrono::seconds(10));  // 0.5 s here; 17 s when quadratic (the 1 MiB cap bounds it)
    fs::remove(root / "MLmodel");

    // A million opset imports (12 MiB): seconds when linear, far past the test's timeout when quadratic.
    Pb m;
    m.num(1, 8);
    for (int i = 0; i < 1'000'000; ++i) m.msg(8, Pb().bytes(1, fmt::format("d{}", i % 999'999)).num(2, i));
    th::write_file(root / "m.onnx", m.b);
    a = analyse(root);
    CHECK(a.problems.empty());
    const auto &opsets = a.formats.at("onnx").at(0).at("opsets");
    REQUIRE(opsets.size() == 999'999);
    CHECK(opsets.begin().key() == "d0");
    CHECK(opsets.at("d0") == 999'999);  // repeated: first place, last value
    CHECK(opsets.at("d1") == 1);
  }

  TEST_CASE("pack: formats in the manifest, warnings, and --strict refusing a broken layout") {
    th::TempDir dir;
    const auto src = dir / "src";
    hf_tree(src);
    th::write_file(src / "ok.pkl", hex(kP0));
    std::vector<std::string> warnings;
    auto o = pack_opts(src, dir / "a.tpkg");
    o.warn = [&](const std::string &w) { warnings.push_back(w); };
    o.strict = true;  // notes (an ordinary pickle) do not fail --strict
    (void)pack(o);
    const auto m = nlohmann::json::parse(Package::open(o.output)->manifest_text());
    CHECK(m.at("formats").at("huggingface").at(0).at("model_type") == "llama");
    CHECK(m.at("formats").at("pickles").at("ok.pkl").at("imports") == nlohmann::json{"collections.OrderedDict"});
    CHECK(warnings.size() == 1);
    CHECK(any_contains(warnings, "ok.pkl is a pickle"));

    fs::remove(src / "model-00002-of-00002.safetensors");
    warnings.clear();
    o.output = (dir / "b.tpkg").string();
    CHECK_THROWS_AS((void)pack(o), UsageError);
    CHECK_FALSE(fs::exists(dir / "b.tpkg"));
    CHECK(any_contains(warnings, "which is not in the package"));
    o.strict = false;
    (void)pack(o);
    CHECK(fs::exists(dir / "b.tpkg"));

    // A tree with no model formats still gets an empty "formats" object.
    const auto plain = dir / "plain";
    fs::create_directories(plain);
    th::write_file(plain / "a.txt", "a");
    o = pack_opts(plain, dir / "c.tpkg");
    (void)pack(o);
    const auto mc = nlohmann::json::parse(Package::open(o.output)->manifest_text());
    CHECK(mc.at("formats") == nlohmann::json::object());
  }

  TEST_CASE("analysis stops when cancelled") {
    th::TempDir dir;
    hf_tree(dir / "m");
    std::atomic<bool> cancel{true};
    CHECK_THROWS_AS((void)analyse_formats(entries_of(dir / "m"), &cancel), Interrupted);
  }

}  // TEST_SUITE
