// The audit log of mount.torshpkg: one syslog line (facility LOG_AUTH, "mount.torshpkg" with its
// pid, every line starting "audit:") per mount, per refusal to mount, and per integrity failure
// while serving. docs/SECURITY.md lists the fields.
#pragma once
#include <string>
#include <string_view>

#include "torshpkg/package.hpp"
#include "torshpkg/trust_policy.hpp"

namespace torshpkg::mount {

// "audit: mount package=P root=R mountpoint=M signers=ID,... trust=... encrypted=no|recipient=...
// uid=U run_as=USER".
void audit_mount(const Package &pkg, std::string_view mountpoint, const TrustDecision &decision,
                 std::string_view run_as);
// "audit: refused package=P reason=...": before the mount, for the message the user sees.
void audit_refusal(std::string_view package, std::string_view reason);
// "audit: integrity package=P ...": a chunk that failed its digest or tag, once per distinct message.
void audit_integrity(std::string_view package, std::string_view what);

}  // namespace torshpkg::mount
