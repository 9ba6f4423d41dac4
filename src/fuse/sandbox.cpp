#include "sandbox.hpp"

#include <grp.h>
#include <pwd.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>

#include "torshpkg/errors.hpp"

namespace torshpkg::mount {

namespace {

// What serving needs after the mount is up, found by running the integration tests under
// SCMP_ACT_LOG (TORSHPKG_SANDBOX_LOG=1) and reading the audit log. Names unknown to this kernel's
// libseccomp tables are skipped. Not here: execve, mount, umount2, ptrace, setuid and friends,
// kexec, bpf, perf_event_open, module loading, keyctl, personality, chroot, pivot_root.
constexpr const char *kAllowed[] = {
    // files and the FUSE device
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "close",
    "openat",
    "open",
    "newfstatat",
    "fstat",
    "stat",
    "lstat",
    "statx",
    "fstatfs",
    "statfs",
    "getdents64",
    "readlink",
    "readlinkat",
    "access",
    "faccessat",
    "faccessat2",
    "fcntl",
    "dup",
    "dup2",
    "dup3",
    "pipe",
    "pipe2",
    "ioctl",
    "splice",
    "vmsplice",
    "tee",
    "sendfile",
    "copy_file_range",
    "fadvise64",
    "readahead",
    // the disk chunk cache
    "fsync",
    "fdatasync",
    "ftruncate",
    "fallocate",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "chmod",
    "fchmod",
    "fchmodat",
    "utimensat",
    "flock",
    "linkat",
    // memory
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "brk",
    "msync",
    "mincore",
    // threads, signals, time
    "futex",
    "futex_waitv",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "clone",
    "clone3",
    "exit",
    "exit_group",
    "gettid",
    "getpid",
    "getppid",
    "tgkill",
    "tkill",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "rt_sigtimedwait",
    "restart_syscall",
    "sched_yield",
    "sched_getaffinity",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "clock_getres",
    "gettimeofday",
    "time",
    "getrandom",
    "prctl",
    "membarrier",
    // waiting
    "poll",
    "ppoll",
    "select",
    "pselect6",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // the network (remote packages; syslog's /dev/log)
    "socket",
    "connect",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    "getsockopt",
    "setsockopt",
    "getsockname",
    "getpeername",
    "shutdown",
    "socketpair",
    "bind",
    // identity and limits, read-only
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "uname",
    "sysinfo",
    "getrlimit",
    "prlimit64",
    "getrusage",
    "times",
    "umask",
    "getcwd",
};

struct SeccompFree {
  void operator()(void *ctx) const noexcept { seccomp_release(static_cast<scmp_filter_ctx>(ctx)); }
};

void check(int rc, const char *what) {
  if (rc < 0) throw InternalError(fmt::format("seccomp: {}: {}", what, std::strerror(-rc)));
}

}  // namespace

SandboxPlan plan_sandbox(const Options &opts) {
  SandboxPlan p;
  p.enabled = !opts.no_sandbox;
  if (!p.enabled) return p;
  p.uid = ::geteuid();
  p.gid = ::getegid();
  p.user = std::to_string(p.uid);
  // Started as root: drop to run_as (default nobody) unless asked to stay root.
  const std::string who = opts.run_as.value_or(p.uid == 0 ? "nobody" : "");
  if (who.empty() || (p.uid != 0 && who == p.user)) return p;
  if (p.uid != 0) throw UsageError("-o run_as= needs mount.torshpkg to be started as root");
  if (who == "root" || who == "0") {
    p.user = "root";
    return p;
  }
  errno = 0;
  const passwd *pw = ::getpwnam(who.c_str());
  if (!pw) {
    char *end = nullptr;
    const unsigned long n = std::strtoul(who.c_str(), &end, 10);
    if (end && *end == '\0' && !who.empty()) pw = ::getpwuid(static_cast<uid_t>(n));
  }
  if (!pw) throw UsageError(fmt::format("-o run_as={}: no such user", who));
  if (pw->pw_uid == 0) throw UsageError(fmt::format("-o run_as={}: a user with uid 0 is root", who));
  p.drop = true;
  p.uid = pw->pw_uid;
  p.gid = pw->pw_gid;
  p.user = pw->pw_name;
  return p;
}

void hand_over_directory(const SandboxPlan &plan, const std::string &dir) {
  if (!plan.enabled || !plan.drop || dir.empty()) return;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  // Handed over once: a cache of many thousand entries must not cost every mount a walk.
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && st.st_uid == plan.uid && st.st_gid == plan.gid) return;
  // Entries are named and checked by digest on every read, so whoever can write here can cause
  // misses, never wrong bytes (SECURITY.md): the sandbox's user may own the cache.
  auto give = [&](const std::filesystem::path &p) {
    if (::lchown(p.c_str(), plan.uid, plan.gid) != 0) throw_errno("hand the disk cache to " + plan.user, p.string());
  };
  give(dir);
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != decltype(it){}; it.increment(ec))
    give(it->path());
}

void enter_sandbox(const SandboxPlan &plan) {
  if (!plan.enabled) return;
  if (plan.drop) {
    if (::setgroups(0, nullptr) != 0) throw_errno("drop supplementary groups", plan.user);
    if (::setresgid(plan.gid, plan.gid, plan.gid) != 0) throw_errno("change group", plan.user);
    if (::setresuid(plan.uid, plan.uid, plan.uid) != 0) throw_errno("change user", plan.user);
    if (::setuid(0) == 0) throw InternalError("could regain root after dropping to " + plan.user);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) throw_errno("set no_new_privs", "the daemon");
  const char *log = std::getenv("TORSHPKG_SANDBOX_LOG");
  const std::uint32_t deny = log && *log == '1' ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS;
  std::unique_ptr<void, SeccompFree> ctx(seccomp_init(deny));
  if (!ctx) throw InternalError("seccomp: cannot create a filter");
  check(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1), "synchronise threads");
  for (const char *name : kAllowed) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    check(seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0), name);
  }
  check(seccomp_load(ctx.get()), "load the filter");
  // The test's proof that the filter bites (tests/integration/test_sandbox.py): a forbidden call.
  const char *selftest = std::getenv("TORSHPKG_SANDBOX_SELFTEST");
  if (selftest && *selftest == '1') (void)::syscall(SYS_ptrace, 0, 0, 0, 0);
}

}  // namespace torshpkg::mount
