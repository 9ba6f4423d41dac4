#pragma once
namespace torshpkg {
inline constexpr const char *kVersion = "0.1.0";
}
