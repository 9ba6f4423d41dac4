// Pickle opcode walker: see include/torshpkg/pickle_scan.hpp. The opcode set and argument encodings
// follow CPython's Lib/pickletools.py; the stack and memo rules follow Modules/_pickle.c (marks,
// the fence that values below a mark cannot be popped through, POP popping an empty mark).
#include "torshpkg/pickle_scan.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <memory>
#include <unordered_map>
#include <unordered_set>

#include "torshpkg/endian.hpp"
#include "torshpkg/hex.hpp"

namespace torshpkg {

namespace {

// A value on the simulated stack: a literal string (when short enough to name a module), or
// something opaque (null).
using Str = std::shared_ptr<const std::string>;

struct ImportHash {
  std::size_t operator()(const PickleImport &i) const noexcept {
    return std::hash<std::string>()(i.module) * 31 + std::hash<std::string>()(i.name);
  }
};

void append_utf8(std::string &out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

// Python's codecs.escape_decode, as the STRING opcode applies it to the text between the quotes.
std::string escape_decode(std::span<const std::uint8_t> s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const std::uint8_t c = s[i];
    if (c != '\\') {
      out += static_cast<char>(c);
      continue;
    }
    if (++i == s.size()) throw FormatError("pickle STRING ends with a lone backslash");
    const std::uint8_t e = s[i];
    switch (e) {
      case '\n': break;  // line continuation
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': {
        const int hi = i + 1 < s.size() ? hex_digit_value(s[i + 1]) : -1;
        const int lo = i + 2 < s.size() ? hex_digit_value(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) throw FormatError("pickle STRING has an invalid \\x escape");
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          unsigned v = e - '0';
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k)
            v = v * 8 + (s[++i] - '0');
          out += static_cast<char>(v & 0xff);
        } else {
          out += '\\';
          out += static_cast<char>(e);
        }
    }
  }
  return out;
}

// Python's raw-unicode-escape decoding (the UNICODE opcode): bytes are Latin-1 code points, and
// \uXXXX / \UXXXXXXXX escapes count only after an odd number of backslashes. Returns UTF-8.
std::string raw_unicode_escape_decode(std::span<const std::uint8_t> s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] != '\\') {
      append_utf8(out, s[i++]);
      continue;
    }
    std::size_t run = 0;
    while (i < s.size() && s[i] == '\\') ++run, ++i;
    const bool escape = run % 2 == 1 && i < s.size() && (s[i] == 'u' || s[i] == 'U');
    out.append(escape ? run - 1 : run, '\\');
    if (!escape) continue;
    const std::size_t digits = s[i] == 'u' ? 4 : 8;
    ++i;
    if (s.size() - i < digits) throw FormatError("pickle UNICODE has a truncated \\u escape");
    std::uint32_t cp = 0;
    for (std::size_t k = 0; k < digits; ++k) {
      const int h = hex_digit_value(s[i + k]);
      if (h < 0) throw FormatError("pickle UNICODE has a truncated \\u escape");
      cp = cp * 16 + static_cast<std::uint32_t>(h);
    }
    if (cp > 0x10ffff) throw FormatError("pickle UNICODE has a \\U escape beyond U+10FFFF");
    i += digits;
    append_utf8(out, cp);
  }
  return out;
}

class Walker {
 public:
  explicit Walker(std::span<const std::uint8_t> b) : b_(b) {}

  PickleScan run() {
    for (;;) {
      const std::size_t at = pos_;
      const std::uint8_t op = take(1)[0];
      if (op == kStop) {
        pop();
        result_.end = pos_;
        return std::move(result_);
      }
      step(op, at);
    }
  }

 private:
  [[noreturn]] void bad(std::size_t at, std::string_view why) const {
    throw FormatError(fmt::format("invalid pickle at offset {}: {}", at, why));
  }

  std::span<const std::uint8_t> take(std::uint64_t n) {
    if (n > b_.size() - pos_)
      throw PickleTruncated(fmt::format("pickle truncated at offset {} (needs {} more bytes)", pos_, n));
    const auto s = b_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  template <typename T>
  T take_le() {
    return load_le<T>(take(sizeof(T)).data());
  }
  // A text argument up to (not including) the next newline, which is consumed.
  std::span<const std::uint8_t> line() {
    const auto rest = b_.subspan(pos_);
    const auto nl = std::find(rest.begin(), rest.end(), std::uint8_t{'\n'});
    if (nl == rest.end())
      throw PickleTruncated(fmt::format("pickle truncated at offset {} (line without newline)", pos_));
    const auto n = static_cast<std::size_t>(nl - rest.begin());
    pos_ += n + 1;
    return rest.first(n);
  }
  std::uint64_t decimal(std::size_t at, std::span<const std::uint8_t> s) const {
    if (s.empty() || s.size() > 19) bad(at, "memo index is not a decimal number");
    std::uint64_t v = 0;
    for (auto c : s) {
      if (c < '0' || c > '9') bad(at, "memo index is not a decimal number");
      v = v * 10 + (c - '0');
    }
    return v;
  }

  // --- the simulated stack (values above the last mark form the current frame) ---
  std::size_t fence() const noexcept { return marks_.empty() ? 0 : marks_.back(); }
  void push(Str v) {
    if (stack_.size() >= kMaxPickleStack) throw FormatError("pickle has too many values on its stack to scan");
    stack_.push_back(std::move(v));
  }
  void push_opaque() { push(nullptr); }
  void push_string(std::string s) {
    push(s.size() <= kMaxPickleString ? std::make_shared<const std::string>(std::move(s)) : nullptr);
  }
  Str pop() {
    if (stack_.size() <= fence()) bad(pos_ - 1, "stack underflow");
    Str v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  void pop_n(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) (void)pop();
  }
  const Str &top() const {
    if (stack_.size() <= fence()) bad(pos_ - 1, "stack underflow");
    return stack_.back();
  }
  // Removes the current mark and the values above it; returns how many values there were.
  std::size_t pop_mark() {
    if (marks_.empty()) bad(pos_ - 1, "no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    const std::size_t n = stack_.size() - m;
    stack_.resize(m);
    return n;
  }

  void memo_put(std::uint64_t key) {
    const Str &v = top();
    if (!v) {
      memo_.erase(key);
    } else if (memo_.size() < kMaxPickleStack || memo_.count(key)) {
      memo_[key] = v;
    } else {
      memo_.erase(key);  // too many strings memoised to track: a later get of it is opaque
    }
    ++memo_count_;
  }
  void memo_get(std::uint64_t key) {
    const auto it = memo_.find(key);
    push(it == memo_.end() ? nullptr : it->second);
  }

  void record(std::string module, std::string name) {
    PickleImport imp{std::move(module), std::move(name)};
    if (seen_.count(imp)) return;
    if (seen_.size() >= kMaxPickleImports) {
      result_.imports_truncated = true;
      return;
    }
    seen_.insert(imp);
    result_.imports.push_back(std::move(imp));
  }

  // Opcodes, named as in pickletools.
  enum Op : std::uint8_t {
    kMark = '(',
    kStop = '.',
    kPop = '0',
    kPopMark = '1',
    kDup = '2',
    kFloat = 'F',
    kInt = 'I',
    kBinInt = 'J',
    kBinInt1 = 'K',
    kLong = 'L',
    kBinInt2 = 'M',
    kNone = 'N',
    kPersId = 'P',
    kBinPersId = 'Q',
    kReduce = 'R',
    kString = 'S',
    kBinString = 'T',
    kShortBinString = 'U',
    kUnicode = 'V',
    kBinUnicode = 'X',
    kAppend = 'a',
    kBuild = 'b',
    kGlobal = 'c',
    kDict = 'd',
    kEmptyDict = '}',
    kAppends = 'e',
    kGet = 'g',
    kBinGet = 'h',
    kInst = 'i',
    kLongBinGet = 'j',
    kList = 'l',
    kEmptyList = ']',
    kObj = 'o',
    kPut = 'p',
    kBinPut = 'q',
    kLongBinPut = 'r',
    kSetItem = 's',
    kTuple = 't',
    kEmptyTuple = ')',
    kSetItems = 'u',
    kBinFloat = 'G',
    kBinBytes = 'B',
    kShortBinBytes = 'C',
    kProto = 0x80,
    kNewObj = 0x81,
    kExt1 = 0x82,
    kExt2 = 0x83,
    kExt4 = 0x84,
    kTuple1 = 0x85,
    kTuple2 = 0x86,
    kTuple3 = 0x87,
    kNewTrue = 0x88,
    kNewFalse = 0x89,
    kLong1 = 0x8a,
    kLong4 = 0x8b,
    kShortBinUnicode = 0x8c,
    kBinUnicode8 = 0x8d,
    kBinBytes8 = 0x8e,
    kEmptySet = 0x8f,
    kAddItems = 0x90,
    kFrozenSet = 0x91,
    kNewObjEx = 0x92,
    kStackGlobal = 0x93,
    kMemoize = 0x94,
    kFrame = 0x95,
    kByteArray8 = 0x96,
    kNextBuffer = 0x97,
    kReadOnlyBuffer = 0x98
  };

  // Skips an argument of `n` bytes and pushes what the opcode makes (a number, bytes, ...).
  void skip_push(std::uint64_t n) {
    (void)take(n);
    push_opaque();
  }
  // A length-prefixed string argument, pushed as a literal.
  template <typename Len>
  void counted_string() {
    const auto s = take(take_le<Len>());
    push_string(std::string(s.begin(), s.end()));
  }
  // A length with a sign (BINSTRING, LONG4): negative is invalid.
  std::uint64_t signed_length(std::size_t at) {
    const auto n = static_cast<std::int32_t>(take_le<std::uint32_t>());
    if (n < 0) bad(at, "negative byte count");
    return static_cast<std::uint64_t>(n);
  }
  void pop_push(std::size_t n) {
    pop_n(n);
    push_opaque();
  }
  void pop_keep_top(std::size_t n) {
    pop_n(n);
    (void)top();
  }
  void skip_line_push() {
    (void)line();
    push_opaque();
  }
  void mark_keep_top() {
    (void)pop_mark();
    (void)top();
  }
  void mark_push() {
    (void)pop_mark();
    push_opaque();
  }
  void global_from_lines(bool inst) {
    const auto m = line();
    const auto n = line();
    record(std::string(m.begin(), m.end()), std::string(n.begin(), n.end()));
    if (inst) (void)pop_mark();  // INST: the mark's values are the arguments
    push_opaque();
  }

  void step(std::uint8_t op, std::size_t at) {
    switch (op) {
      // Stack manipulation.
      case kMark:
        if (marks_.size() >= kMaxPickleStack) throw FormatError("pickle has too many marks to scan");
        marks_.push_back(stack_.size());
        break;
      case kPop:  // an empty frame pops its mark instead
        if (!marks_.empty() && marks_.back() == stack_.size())
          marks_.pop_back();
        else
          (void)pop();
        break;
      case kPopMark: (void)pop_mark(); break;
      case kDup: push(top()); break;

      // Numbers, constants, bytes and buffers: opaque values.
      case kNone:
      case kNewTrue:
      case kNewFalse:
      case kNextBuffer: push_opaque(); break;
      case kInt:
      case kLong:
      case kFloat: skip_line_push(); break;
      case kBinInt: skip_push(4); break;
      case kBinInt1: skip_push(1); break;
      case kBinInt2: skip_push(2); break;
      case kBinFloat: skip_push(8); break;
      case kLong1: skip_push(take_le<std::uint8_t>()); break;
      case kLong4: skip_push(signed_length(at)); break;
      case kShortBinBytes: skip_push(take_le<std::uint8_t>()); break;
      case kBinBytes: skip_push(take_le<std::uint32_t>()); break;
      case kBinBytes8:
      case kByteArray8: skip_push(take_le<std::uint64_t>()); break;
      case kReadOnlyBuffer: (void)top(); break;

      // Strings: literals when short enough to name a module.
      case kString: {  // 'text' or "text" with Python escapes
        const auto s = line();
        if (s.size() < 2 || s.front() != s.back() || (s.front() != '\'' && s.front() != '"'))
          bad(at, "the STRING argument must be quoted");
        push_string(escape_decode(s.subspan(1, s.size() - 2)));
        break;
      }
      case kUnicode: push_string(raw_unicode_escape_decode(line())); break;
      case kBinString: {
        const auto s = take(signed_length(at));
        push_string(std::string(s.begin(), s.end()));
        break;
      }
      case kShortBinString:
      case kShortBinUnicode: counted_string<std::uint8_t>(); break;
      case kBinUnicode: counted_string<std::uint32_t>(); break;
      case kBinUnicode8: counted_string<std::uint64_t>(); break;

      // Containers.
      case kEmptyTuple:
      case kEmptyList:
      case kEmptyDict:
      case kEmptySet: push_opaque(); break;
      case kTuple:
      case kList:
      case kFrozenSet: mark_push(); break;
      case kDict:
        if (pop_mark() % 2 != 0) bad(at, "odd number of items for DICT");
        push_opaque();
        break;
      case kTuple1: pop_push(1); break;
      case kTuple2: pop_push(2); break;
      case kTuple3: pop_push(3); break;
      case kAppend: pop_keep_top(1); break;
      case kSetItem: pop_keep_top(2); break;
      case kAppends:
      case kAddItems: mark_keep_top(); break;
      case kSetItems:
        if (pop_mark() % 2 != 0) bad(at, "odd number of items for SETITEMS");
        (void)top();
        break;

      // Memo.
      case kPut: memo_put(decimal(at, line())); break;
      case kBinPut: memo_put(take_le<std::uint8_t>()); break;
      case kLongBinPut: memo_put(take_le<std::uint32_t>()); break;
      case kMemoize: memo_put(memo_count_); break;  // the next index
      case kGet: memo_get(decimal(at, line())); break;
      case kBinGet: memo_get(take_le<std::uint8_t>()); break;
      case kLongBinGet: memo_get(take_le<std::uint32_t>()); break;

      // Imports and calls.
      case kGlobal: global_from_lines(false); break;
      case kInst: global_from_lines(true); break;
      case kStackGlobal: {
        const Str name = pop();
        const Str module = pop();
        record(module ? *module : std::string(kDynamicImport), name ? *name : std::string(kDynamicImport));
        push_opaque();
        break;
      }
      case kExt1:
      case kExt2:
      case kExt4: {  // the copyreg extension registry
        const std::uint32_t code = op == kExt1   ? take_le<std::uint8_t>()
                                   : op == kExt2 ? take_le<std::uint16_t>()
                                                 : take_le<std::uint32_t>();
        if (code == 0) bad(at, "extension code 0");
        record(std::string(kExtensionImport), std::to_string(code));
        push_opaque();
        break;
      }
      case kReduce: pop_push(2); break;
      case kNewObj: pop_push(2); break;
      case kNewObjEx: pop_push(3); break;
      case kObj:  // class and arguments above the mark
        if (pop_mark() == 0) bad(at, "OBJ without a class");
        push_opaque();
        break;
      case kBuild: pop_keep_top(1); break;
      case kPersId: skip_line_push(); break;
      case kBinPersId: pop_push(1); break;

      // Protocol and framing.
      case kProto: {
        const unsigned v = take_le<std::uint8_t>();
        if (v > 5) bad(at, fmt::format("unsupported pickle protocol {}", v));
        result_.protocol = v;
        break;
      }
      case kFrame: {  // the next opcodes are parsed as they come, but the frame must be all there
        const auto n = take_le<std::uint64_t>();
        if (n > b_.size() - pos_) throw PickleTruncated(fmt::format("pickle frame at offset {} runs past the end", at));
        break;
      }
      default: bad(at, fmt::format("unknown opcode 0x{:02x}", op));
    }
  }

  std::span<const std::uint8_t> b_;
  std::size_t pos_ = 0;
  std::vector<Str> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Str> memo_;  // only the entries holding literal strings
  std::uint64_t memo_count_ = 0;                 // entries ever stored, for MEMOIZE
  std::unordered_set<PickleImport, ImportHash> seen_;
  PickleScan result_;
};

std::string_view top_module(std::string_view m) noexcept {
  return m.substr(0, m.find('.'));
}

}  // namespace

PickleScan scan_pickle(std::span<const std::uint8_t> bytes) {
  return Walker(bytes).run();
}

bool dangerous_import(const PickleImport &imp) {
  if (imp.module == kDynamicImport || imp.name == kDynamicImport || imp.module == kExtensionImport) return true;
  static constexpr std::string_view kModules[] = {"os",      "posix",      "nt",       "subprocess", "_posixsubprocess",
                                                  "sys",     "socket",     "shutil",   "importlib",  "runpy",
                                                  "pty",     "webbrowser", "ctypes",   "_ctypes",    "multiprocessing",
                                                  "code",    "codeop",     "pickle",   "_pickle",    "cPickle",
                                                  "marshal", "types",      "commands", "popen2",     "platform",
                                                  "signal",  "asyncio",    "dill",     "pdb",        "timeit"};
  const auto top = top_module(imp.module);
  if (std::find(std::begin(kModules), std::end(kModules), top) != std::end(kModules)) return true;
  static constexpr std::string_view kBuiltins[] = {
      "eval",    "exec",   "execfile", "compile",    "__import__", "getattr",   "setattr", "delattr", "open",
      "globals", "locals", "vars",     "breakpoint", "input",      "raw_input", "reload",  "file"};
  if (imp.module == "builtins" || imp.module == "__builtin__" || imp.module == "__builtins__")
    return std::find(std::begin(kBuiltins), std::end(kBuiltins), imp.name) != std::end(kBuiltins) ||
           imp.name.starts_with("__import__");
  // Specific callables known from published pickle exploits.
  struct Name {
    std::string_view module, name;
  };
  static constexpr Name kNames[] = {{"operator", "attrgetter"},  {"operator", "methodcaller"},
                                    {"_operator", "attrgetter"}, {"_operator", "methodcaller"},
                                    {"torch", "load"},           {"torch.serialization", "load"},
                                    {"numpy", "load"},           {"numpy.testing._private.utils", "runstring"}};
  for (const auto &n : kNames)
    if (imp.module == n.module && imp.name == n.name) return true;
  return top == "torch" && (imp.module == "torch.hub" || imp.module.starts_with("torch.hub."));
}

bool looks_like_protocol_pickle(std::span<const std::uint8_t> head) noexcept {
  return head.size() >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5;
}

}  // namespace torshpkg
