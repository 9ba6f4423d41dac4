// libFuzzer target over the pickle scanner: bytes -> scan_pickle, repeated over consecutive pickles
// as the packer scans a legacy torch.save file or a .pkl holding several dumps. Any crash, sanitizer
// report, hang, or exception other than FormatError is a finding; so is a result that breaks the
// promises of pickle_scan.hpp (checked below). Build with -Dfuzz=true (see scripts/fuzz --target pickle).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <span>
#include <string>
#include <utility>

#include "torshpkg/errors.hpp"
#include "torshpkg/pickle_scan.hpp"

// UBSan findings must stop the run like ASan's do, or libFuzzer would only print them.
extern "C" const char *__ubsan_default_options() {
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

namespace {

using torshpkg::PickleScan;

[[noreturn]] void finding(const char *what) {
  std::fprintf(stderr, "FINDING: %s\n", what);
  std::abort();
}

bool same(const PickleScan &a, const PickleScan &b) {
  return a.imports == b.imports && a.end == b.end && a.protocol == b.protocol &&
         a.imports_truncated == b.imports_truncated;
}

void check(std::span<const std::uint8_t> bytes, const PickleScan &s) {
  if (s.end == 0 || s.end > bytes.size()) finding("end is outside the input");
  if (bytes[s.end - 1] != '.') finding("end is not just past a STOP opcode");
  if (s.protocol > 5) finding("protocol above 5 accepted");
  if (s.imports.size() > torshpkg::kMaxPickleImports) finding("more imports than kMaxPickleImports");
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto &i : s.imports) {
    if (!seen.emplace(i.module, i.name).second) finding("an import is listed twice");
    (void)torshpkg::dangerous_import(i);
    (void)i.dotted();
  }
  // The walker stops at STOP: the same bytes without whatever follows must scan the same, unless
  // they cut a FRAME short (a frame may reach past STOP, and CPython's unpickler reads it whole too).
  if (s.end < bytes.size()) {
    try {
      if (!same(torshpkg::scan_pickle(bytes.first(s.end)), s))
        finding("scanning up to STOP differs from scanning the whole input");
    } catch (const torshpkg::PickleTruncated &) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  std::span<const std::uint8_t> rest(data, size);
  (void)torshpkg::looks_like_protocol_pickle(rest);
  // At most 64 pickles in a row, like the packer's scan of a .pkl file.
  for (int n = 0; n < 64 && !rest.empty(); ++n) {
    PickleScan s;
    try {
      s = torshpkg::scan_pickle(rest);
    } catch (const torshpkg::FormatError &) {  // PickleTruncated included
      break;
    }
    check(rest, s);
    rest = rest.subspan(s.end);
    if (rest.empty() || rest[0] != 0x80) break;  // what follows is not another pickle
  }
  return 0;
}
