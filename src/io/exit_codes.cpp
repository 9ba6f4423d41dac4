#include "torshpkg/exit_codes.hpp"

#include <cerrno>
#include <fmt/format.h>
#include <string_view>

#include "torshpkg/errors.hpp"

namespace torshpkg {

using enum ExitCode;

ExitReport exit_report(const std::exception_ptr &e, Tool tool) {
  const std::string_view name = tool == Tool::kTorshpkg ? "torshpkg" : "mount.torshpkg";
  const auto report = [name](int code, std::string_view what, std::string_view before = {},
                             std::string_view after = {}) {
    return ExitReport{code, fmt::format("{}: {}{}{}", name, before, what, after)};
  };
  if (!e) return report(kFailure, "unknown error");
  try {
    std::rethrow_exception(e);
  } catch (const UsageError &x) {
    return report(kUsage, x.what());
  } catch (const NotFoundError &x) {
    return report(kNotFound, x.what());
  } catch (const TrustError &x) {
    if (tool == Tool::kTorshpkg) return report(kUntrusted, x.what(), "untrusted package: ");
    // A message that already names allow_unsigned (a zip archive) says what to do itself.
    const std::string_view why = x.what();
    if (why.find("allow_unsigned") != std::string_view::npos) return report(kUntrusted, why, "refusing to mount: ");
    return report(kUntrusted, why, "refusing to mount: ",
                  " (trust its key with -o trust=DIR or -o pubkey=FILE, or mount anyway with -o allow_unsigned)");
  } catch (const KeyError &x) {
    return report(kNoKey, x.what(), tool == Tool::kTorshpkg ? "" : "refusing to mount: ");
  } catch (const ResolveError &x) {
    return report(kUnresolved, x.what(), "cannot resolve dependencies: ");
  } catch (const IntegrityError &x) {
    return report(kIntegrity, x.what(), "damaged package: ");
  } catch (const FormatError &x) {
    return report(kFormat, x.what());
  } catch (const IoError &x) {
    // torshpkg's output went to a reader that stopped reading (`torshpkg cat ... | head`): not a failure.
    return report(tool == Tool::kTorshpkg && x.errnum == EPIPE ? kOk : kIo, x.what());
  } catch (const Interrupted &x) {
    return report(kInterrupted, x.what());
  } catch (const InternalError &x) {
    return report(kFailure, x.what());
  } catch (const std::exception &x) {
    return report(kFailure, x.what());
  } catch (...) {
    return report(kFailure, "unknown exception");
  }
}

int exit_code_for(const std::exception_ptr &e, Tool tool, std::FILE *err) noexcept {
  try {
    auto r = exit_report(e, tool);
    r.message += '\n';
    std::fwrite(r.message.data(), 1, r.message.size(), err);
    return r.code;
  } catch (...) {  // out of memory for the message: the code alone
    return kFailure;
  }
}

}  // namespace torshpkg
