#include "audit.hpp"

#include <syslog.h>
#include <unistd.h>

#include <fmt/format.h>

#include "torshpkg/digest.hpp"

namespace torshpkg::mount {

namespace {

// Values never carry spaces or newlines: a log reader splits on them.
std::string field(std::string_view v) {
  std::string out(v);
  for (char &c : out)
    if (c == ' ' || c == '\n' || c == '\t') c = '_';
  return out.empty() ? "-" : out;
}

void emit(const std::string &line) {
  // LOG_AUTH: security-relevant events go where an administrator looks for them (main.cpp's
  // openlog() adds the pid).
  ::syslog(LOG_AUTH | LOG_NOTICE, "%s", line.c_str());
}

}  // namespace

void audit_mount(const Package &pkg, std::string_view mountpoint, const TrustDecision &decision,
                 std::string_view run_as) {
  std::string signers;
  for (const auto &s : pkg.signatures()) {
    if (!signers.empty()) signers += ',';
    signers += key_id_short(s.key_id);
  }
  std::string enc = "no";
  if (pkg.encrypted() && pkg.opened_by()) enc = field(describe(pkg.key_stanzas()[*pkg.opened_by()]));
  emit(fmt::format("audit: mount package={} root={} mountpoint={} signers={} trust={} encrypted={} uid={} run_as={}",
                   field(pkg.path()), pkg.synthesized() ? "-" : to_hex(pkg.root_digest()), field(mountpoint),
                   field(signers), field(decision.summary), enc, ::getuid(), field(run_as)));
}

void audit_refusal(std::string_view package, std::string_view reason) {
  emit(fmt::format("audit: refused package={} reason={}", field(package), field(reason)));
}

void audit_integrity(std::string_view package, std::string_view what) {
  emit(fmt::format("audit: integrity package={} failure={}", field(package), field(what)));
}

}  // namespace torshpkg::mount
