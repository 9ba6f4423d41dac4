// libFuzzer target over the package reader: bytes -> Package::from_bytes -> walk and read
// everything (exercise.cpp). Each input runs twice: as given, and with its chunk and root digests
// recomputed, because random mutations of the index almost never keep the root digest valid and
// would otherwise stop at that check. Build with -Dfuzz=true (see scripts/fuzz).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "exercise.hpp"

// UBSan findings must stop the run like ASan's do, or libFuzzer would only print them.
extern "C" const char *__ubsan_default_options() {
  return "halt_on_error=1:abort_on_error=1:print_stacktrace=1";
}

namespace {

void check(const torshpkg::testing::ExerciseReport &r) {
  // The loader promises that a package it accepts is consistent: a FormatError while reading an
  // accepted package means a validation rule is missing.
  if ((r.stage == "read" || r.stage == "signatures") && r.outcome == "format_error") {
    std::fprintf(stderr, "FINDING: format error after a successful open: %s\n", r.message.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  const std::span<const std::uint8_t> input(data, size);
  check(torshpkg::testing::exercise_package_report(input));
  std::vector<std::uint8_t> resealed(input.begin(), input.end());
  if (torshpkg::testing::reseal_digests(resealed) && !std::equal(resealed.begin(), resealed.end(), input.begin()))
    check(torshpkg::testing::exercise_package_report(resealed));
  return 0;
}
