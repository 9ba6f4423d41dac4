// The daemon's sandbox (docs/SECURITY.md): once the mount is up, mount.torshpkg drops to an
// unprivileged user, sets no_new_privs and installs a seccomp allow-list of the system calls that
// serving needs (reads, the page-cache pushes, threads, the network for remote packages, the disk
// chunk cache). Anything else kills the daemon (SIGSYS); the mount is then unmounted by the
// auto_unmount helper that libfuse's fusermount3 leaves watching it.
#pragma once
#include <sys/types.h>

#include <string>

#include "options.hpp"

namespace torshpkg::mount {

struct SandboxPlan {
  bool enabled = false;  // -o nosandbox turns it off
  bool drop = false;     // change user (started as root; -o run_as=root keeps root)
  uid_t uid = 0;
  gid_t gid = 0;
  std::string user;  // for messages and the audit log: "nobody", "root", "1000"
};

// Decided before mounting, so that an unknown -o run_as= fails before anything happens.
[[nodiscard]] SandboxPlan plan_sandbox(const Options &opts);
// Gives `dir` (the disk chunk cache) to the sandbox's user when it drops from root: the daemon
// must keep writing there. No-op otherwise or when dir is empty.
void hand_over_directory(const SandboxPlan &plan, const std::string &dir);
// Drops the user, sets no_new_privs, installs the filter (all threads). Throws InternalError.
void enter_sandbox(const SandboxPlan &plan);

}  // namespace torshpkg::mount
