// Rules for entry names, shared by the packer (reject at pack) and the reader (reject at load).
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace torshpkg {

[[nodiscard]] bool valid_utf8(std::string_view s) noexcept;
// Why `name` cannot be a directory entry name, or nullopt when it can: empty, ".", "..",
// contains '/' or NUL, longer than 255 bytes, or not UTF-8.
[[nodiscard]] std::optional<std::string> name_problem(std::string_view name);
// Why a symlink target is unacceptable (empty, too long, NUL), or nullopt.
[[nodiscard]] std::optional<std::string> symlink_problem(std::string_view target);

}  // namespace torshpkg
