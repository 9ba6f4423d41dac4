// A bounded pickle opcode walker that never executes anything: it lists what a pickle would import
// (GLOBAL, INST, STACK_GLOBAL, EXT*) when loaded, so that the packer can warn about pickles that
// run dangerous code (docs/FORMAT.md, manifest key `formats.pickles`).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/errors.hpp"

namespace torshpkg {

// The bytes end before STOP (or inside an opcode's argument): the caller may retry with more bytes.
struct PickleTruncated : FormatError {
  using FormatError::FormatError;
};

struct PickleImport {
  std::string module;  // "<dynamic>" when STACK_GLOBAL's operands are not literal strings,
  std::string name;    // "<extension>" for EXT1/EXT2/EXT4 (name = the extension code)
  [[nodiscard]] std::string dotted() const { return module + "." + name; }
  friend bool operator==(const PickleImport &, const PickleImport &) = default;
};
inline constexpr std::string_view kDynamicImport = "<dynamic>";
inline constexpr std::string_view kExtensionImport = "<extension>";

struct PickleScan {
  std::vector<PickleImport> imports;  // distinct, in order of first appearance
  std::size_t end = 0;                // offset just past the STOP opcode
  unsigned protocol = 0;              // from PROTO, 0 when there is none
  bool imports_truncated = false;     // more than kMaxPickleImports distinct imports
};

inline constexpr std::size_t kMaxPickleImports = 1000;
inline constexpr std::size_t kMaxPickleStack = std::size_t{1} << 22;  // values on the stack, memo entries, marks
inline constexpr std::size_t kMaxPickleString = 1024;  // longer strings cannot name a module: treated as opaque

// Walks one pickle (protocols 0-5) starting at bytes[0] up to and including its STOP opcode,
// simulating the unpickler's stack and memo only far enough to know STACK_GLOBAL's operands.
// Throws PickleTruncated when the bytes end first, FormatError on an unknown opcode, a malformed
// argument, a stack underflow, a missing memo entry, an unsupported protocol or too many values.
[[nodiscard]] PickleScan scan_pickle(std::span<const std::uint8_t> bytes);

// True for imports that let a pickle run arbitrary code or touch the system when it is loaded:
// modules os, posix, nt, subprocess, sys, socket, shutil, importlib, runpy, pty, webbrowser, ctypes,
// multiprocessing, code, pickle, marshal, types, ... (and their submodules), builtins/__builtin__
// eval, exec, compile, __import__, getattr, setattr, open, globals, breakpoint, input, ..., and the
// unresolvable <dynamic> and <extension> imports. torch._utils, collections.OrderedDict, torch
// storages, numpy reconstruction and the like are normal.
[[nodiscard]] bool dangerous_import(const PickleImport &imp);

// The first bytes of a pickle that starts with PROTO: 0x80 followed by a protocol 2..5.
[[nodiscard]] bool looks_like_protocol_pickle(std::span<const std::uint8_t> head) noexcept;

}  // namespace torshpkg
