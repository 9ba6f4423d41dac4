// digest.hpp, hex.hpp, pool.hpp, file.hpp, errors.hpp, exit_codes.hpp, read_pattern.hpp.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/digest.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/exit_codes.hpp"
#include "torshpkg/file.hpp"
#include "torshpkg/hex.hpp"
#include "torshpkg/pickle_scan.hpp"
#include "torshpkg/pool.hpp"
#include "torshpkg/read_pattern.hpp"

using namespace torshpkg;

TEST_SUITE("misc") {

TEST_CASE("sha256: known vectors, incremental equals one shot") {
  CHECK(to_hex(sha256({})) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(to_hex(sha256(th::bytes_of("abc"))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(to_hex(sha256(th::bytes_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const auto data = th::random_bytes(1'000'003, 1);
  Sha256 inc;
  std::size_t at = 0;
  for (std::size_t step : {std::size_t{0}, std::size_t{1}, std::size_t{63}, std::size_t{64}, std::size_t{65},
                           std::size_t{4096}, std::size_t{100'000}}) {
    inc.update(std::span(data).subspan(at, step));
    at += step;
  }
  inc.update(std::span(data).subspan(at));
  CHECK(inc.finish() == sha256(data));
  // finish() starts over: the same object hashes the next message from scratch.
  inc.update(th::bytes_of("abc"));
  CHECK(to_hex(inc.finish()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(to_hex(inc.finish()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // The one-shot function is reentrant across threads (it keeps one context per thread).
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      const auto mine = th::random_bytes(10'000, static_cast<std::uint64_t>(t));
      Sha256 ref;
      ref.update(mine);
      const auto want = ref.finish();
      for (int i = 0; i < 200; ++i)
        if (sha256(mine) != want) ++bad;
    });
  for (auto &t : ts) t.join();
  CHECK(bad == 0);
}

TEST_CASE("to_hex") {
  CHECK(to_hex({}).empty());
  const std::uint8_t b[] = {0x00, 0x0f, 0xf0, 0xff, 0x5a};
  CHECK(to_hex(b) == "000ff0ff5a");
}

TEST_CASE("from_hex") {
  const auto d = sha256(th::bytes_of("abc"));
  CHECK(from_hex(to_hex(d)) == std::optional<Digest>(d));
  std::string upper = to_hex(d);
  for (auto &c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK(from_hex(upper) == std::optional<Digest>(d));
  CHECK(from_hex(std::string(64, '0')) == std::optional<Digest>(Digest{}));
  CHECK_FALSE(from_hex("").has_value());
  CHECK_FALSE(from_hex(std::string(63, 'a')).has_value());
  CHECK_FALSE(from_hex(std::string(65, 'a')).has_value());
  CHECK_FALSE(from_hex(std::string(62, 'a') + "g0").has_value());
  CHECK_FALSE(from_hex(std::string(62, 'a') + " 0").has_value());
  CHECK_FALSE(from_hex("0x" + std::string(62, 'a')).has_value());
  CHECK_FALSE(from_hex(std::string(63, 'a') + std::string(1, '\0')).has_value());
}

TEST_CASE("thread pool runs every task and propagates exceptions") {
  ThreadPool pool(4);
  CHECK(pool.size() == 4);
  std::atomic<int> sum{0};
  std::vector<std::future<int>> fs;
  for (int i = 0; i < 1000; ++i) fs.push_back(pool.submit([i, &sum] {
    sum += i;
    return i * 2;
  }));
  for (int i = 0; i < 1000; ++i) CHECK(fs[static_cast<std::size_t>(i)].get() == i * 2);
  CHECK(sum == 999 * 1000 / 2);
  auto f = pool.submit([]() -> int { throw FormatError("boom"); });
  CHECK_THROWS_AS(f.get(), FormatError);
  ThreadPool one(1);
  std::vector<int> order;
  std::vector<std::future<void>> vs;
  for (int i = 0; i < 100; ++i) vs.push_back(one.submit([i, &order] { order.push_back(i); }));
  for (auto &v : vs) v.get();
  for (int i = 0; i < 100; ++i) CHECK(order[static_cast<std::size_t>(i)] == i);  // FIFO
}

TEST_CASE("thread pool destructor with queued work does not hang or crash") {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 50; ++i) (void)pool.submit([&ran] { ++ran; });
  }
  CHECK(ran == 50);  // the destructor drains the queue
}

TEST_CASE("file helpers: open_read, pread_exact, read_full, write_all") {
  th::TempDir dir;
  const auto p = dir / "f";
  const auto data = th::random_bytes(10'000, 3);
  th::write_file(p, data);

  try {
    (void)open_read((dir / "missing").string());
    FAIL("open_read of a missing file did not throw");
  } catch (const IoError &e) {
    CHECK(e.errnum == ENOENT);
    CHECK(th::contains(e.what(), "missing"));
  }

  UniqueFd fd = open_read(p.string());
  REQUIRE(fd);
  th::Bytes buf(100);
  pread_exact(fd.get(), buf, 5000, "f");
  CHECK(std::equal(buf.begin(), buf.end(), data.begin() + 5000));
  th::Bytes tail(100);
  CHECK_THROWS_AS(pread_exact(fd.get(), tail, 9950, "f"), FormatError);  // short file
  CHECK_THROWS_AS(pread_exact(fd.get(), tail, 20'000, "f"), FormatError);
  th::Bytes all(20'000);
  CHECK(read_full(fd.get(), all, "f") == 10'000);
  CHECK(std::equal(data.begin(), data.end(), all.begin()));
  CHECK(read_full(fd.get(), all, "f") == 0);
  th::Bytes none;
  pread_exact(fd.get(), none, 1'000'000, "f");  // nothing to read: fine

  UniqueFd moved(std::move(fd));
  CHECK_FALSE(fd);
  CHECK(moved);
  const int raw = moved.release();
  CHECK_FALSE(moved);
  ::close(raw);

  UniqueFd w(::open((dir / "out").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  REQUIRE(w);
  write_all(w.get(), data, "out");
  w.reset();
  CHECK(th::read_file(dir / "out") == data);

  UniqueFd bad(::open(p.c_str(), O_RDONLY | O_CLOEXEC));
  CHECK_THROWS_AS(write_all(bad.get(), data, "ro"), IoError);
}

TEST_CASE("throw_errno carries errno and the path") {
  try {
    throw_errno("open", "/some/path", EACCES);
  } catch (const IoError &e) {
    CHECK(e.errnum == EACCES);
    CHECK(th::contains(e.what(), "/some/path"));
  }
  errno = ENOSPC;
  try {
    throw_errno("write", "x");
  } catch (const IoError &e) {
    CHECK(e.errnum == ENOSPC);
  }
  // The hierarchy the front ends rely on.
  CHECK_THROWS_AS(throw FormatError("x"), Error);
  CHECK_THROWS_AS(throw IntegrityError("x"), Error);
  CHECK_THROWS_AS(throw UsageError("x"), Error);
  CHECK_THROWS_AS(throw NotFoundError("x"), Error);
  CHECK_THROWS_AS(throw Interrupted(), Error);
  CHECK_THROWS_AS(throw IoError("x", EIO), std::runtime_error);
}

TEST_CASE("read pattern: sequential streams, out-of-order read-ahead, seeks, random access") {
  SUBCASE("a stream from the head queues decode-ahead once per chunk") {
    ReadPattern p(8, 2);
    auto a = p.observe(0, 0);
    CHECK(a.sequential);
    CHECK(a.ahead_from == 1);
    CHECK(a.ahead_count == 8);
    auto b = p.observe(0, 1);  // within what was queued: only the new tail
    CHECK(b.sequential);
    CHECK(b.ahead_from == 9);
    CHECK(b.ahead_count == 1);
    auto c = p.observe(1, 1);  // same place again: nothing new
    CHECK(c.sequential);
    CHECK(c.ahead_count == 0);
  }
  SUBCASE("read-ahead requests arriving out of order stay one stream") {
    // What several FUSE threads deliver for a sequential dd: 0, 2, 1, 4, 3, 5, 3 ...
    ReadPattern p(8, 2);
    for (const std::uint64_t k : {0, 2, 1, 4, 3, 5, 3, 7, 6, 8}) {
      const auto r = p.observe(k, k);
      CHECK_MESSAGE(r.sequential, "chunk ", k);
      CHECK_FALSE(r.turned_random);
    }
  }
  SUBCASE("a read further behind than the slack is a jump") {
    ReadPattern p(8, 2);
    for (std::uint64_t k = 0; k < 10; ++k) (void)p.observe(k, k);
    CHECK(p.observe(7, 7).sequential);  // two behind the furthest (9): still the stream
    CHECK_FALSE(p.observe(6, 6).sequential);
    ReadPattern wide(8, 8);  // a wider slack, as for 8 FUSE threads with 1 MiB requests
    for (std::uint64_t k = 0; k < 10; ++k) (void)wide.observe(k, k);
    CHECK(wide.observe(1, 1).sequential);
    CHECK_FALSE(wide.observe(0, 0).sequential);
  }
  SUBCASE("after a seek the stream picks up where the reader went") {
    ReadPattern p(4, 2);
    const auto jump = p.observe(50, 50);
    CHECK_FALSE(jump.sequential);
    CHECK(jump.ahead_count == 0);
    const auto next = p.observe(51, 51);
    CHECK(next.sequential);
    CHECK(next.ahead_from == 52);
    CHECK(next.ahead_count == 4);
    // A jump forward past the queued window is a seek, not the stream.
    CHECK_FALSE(p.observe(80, 80).sequential);
    // Going back to the stream left behind is one jump, not a cascade: what was queued ahead for
    // it still counts, so its next read is sequential again.
    CHECK_FALSE(p.observe(52, 52).sequential);
    CHECK(p.observe(53, 53).sequential);
  }
  SUBCASE("the third jump, and only it, turns the file random") {
    ReadPattern p(8, 2);
    int turned = 0;
    for (const std::uint64_t k : {100, 5, 700, 300, 40, 900}) turned += p.observe(k, k).turned_random;
    CHECK(turned == 1);
    ReadPattern q(8, 2);
    CHECK_FALSE(q.observe(100, 100).turned_random);
    CHECK_FALSE(q.observe(5, 5).turned_random);
    CHECK(q.observe(700, 700).turned_random);
  }
  SUBCASE("readahead 0: streams are recognised but nothing is queued") {
    ReadPattern p(0, 2);
    for (std::uint64_t k = 0; k < 4; ++k) {
      const auto r = p.observe(k, k);
      CHECK(r.sequential);
      CHECK(r.ahead_count == 0);
    }
  }
  SUBCASE("a read spanning chunks counts its last chunk") {
    ReadPattern p(2, 2);
    const auto r = p.observe(0, 3);
    CHECK(r.ahead_from == 4);
    CHECK(r.ahead_count == 2);
  }
}

TEST_CASE("hex_digit_value: the 22 hex digits, nothing else") {
  int digits = 0;
  for (int c = 0; c < 256; ++c) {
    const int v = hex_digit_value(static_cast<unsigned char>(c));
    if (v >= 0) ++digits;
    CHECK(v >= -1);
    CHECK(v <= 15);
  }
  CHECK(digits == 22);
  CHECK(hex_digit_value('0') == 0);
  CHECK(hex_digit_value('9') == 9);
  CHECK(hex_digit_value('a') == 10);
  CHECK(hex_digit_value('F') == 15);
  CHECK(hex_digit_value('g') == -1);
  CHECK(hex_digit_value('/') == -1);
  CHECK(hex_digit_value(static_cast<char>(0xb0)) == -1);  // a negative char is no digit
  static_assert(hex_digit_value('c') == 12);
}

TEST_CASE("exit codes: every exception type, both tools, the wording the integration tests look for") {
  using enum ExitCode;
  // The numbers are the documented interface (man/torshpkg.1, man/mount.torshpkg.8).
  CHECK(kOk == 0);
  CHECK(kFailure == 1);
  CHECK(kUsage == 2);
  CHECK(kIo == 3);
  CHECK(kFormat == 4);
  CHECK(kIntegrity == 5);
  CHECK(kNotFound == 6);
  CHECK(kUntrusted == 7);
  CHECK(kInterrupted == 130);

  struct Case {
    const char *name;
    std::exception_ptr e;
    int code;            // both tools, unless noted in the checks below
    const char *line;    // after "TOOL: "
  };
  const Case cases[] = {
      {"UsageError", std::make_exception_ptr(UsageError("bad option")), kUsage, "bad option"},
      {"IoError", std::make_exception_ptr(IoError("cannot open x: No such file or directory", ENOENT)), kIo,
       "cannot open x: No such file or directory"},
      {"IoError EIO (a file changed while packed)", std::make_exception_ptr(IoError("f: file grew", EIO)), kIo,
       "f: file grew"},
      {"FormatError", std::make_exception_ptr(FormatError("not a package")), kFormat, "not a package"},
      {"PickleTruncated (a FormatError)", std::make_exception_ptr(PickleTruncated("pickle truncated")), kFormat,
       "pickle truncated"},
      {"IntegrityError", std::make_exception_ptr(IntegrityError("root digest mismatch")), kIntegrity,
       "damaged package: root digest mismatch"},
      {"NotFoundError", std::make_exception_ptr(NotFoundError("a/b: not in the package")), kNotFound,
       "a/b: not in the package"},
      {"Interrupted", std::make_exception_ptr(Interrupted()), kInterrupted, "interrupted"},
      {"InternalError", std::make_exception_ptr(InternalError("OpenSSL: out of memory")), kFailure,
       "OpenSSL: out of memory"},
      {"bare Error", std::make_exception_ptr(Error("legacy")), kFailure, "legacy"},
      {"std::bad_alloc", std::make_exception_ptr(std::bad_alloc()), kFailure, std::bad_alloc().what()},
      {"std::exception", std::make_exception_ptr(std::logic_error("oops")), kFailure, "oops"},
      {"not a std::exception", std::make_exception_ptr(42), kFailure, "unknown exception"},
      {"null exception_ptr", std::exception_ptr(), kFailure, "unknown error"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.name);
    const auto cli = exit_report(c.e, Tool::kTorshpkg);
    CHECK(cli.code == c.code);
    CHECK(cli.message == std::string("torshpkg: ") + c.line);
    const auto mount = exit_report(c.e, Tool::kMountHelper);
    CHECK(mount.code == c.code);
    CHECK(mount.message == std::string("mount.torshpkg: ") + c.line);
  }

  // TrustError: 7 for both, worded per tool.
  const auto untrusted = std::make_exception_ptr(TrustError("signed only by untrusted keys 0123abcd"));
  CHECK(exit_report(untrusted, Tool::kTorshpkg).code == kUntrusted);
  CHECK(exit_report(untrusted, Tool::kTorshpkg).message ==
        "torshpkg: untrusted package: signed only by untrusted keys 0123abcd");
  CHECK(exit_report(untrusted, Tool::kMountHelper).code == kUntrusted);
  CHECK(exit_report(untrusted, Tool::kMountHelper).message ==
        "mount.torshpkg: refusing to mount: signed only by untrusted keys 0123abcd (trust its key with -o trust=DIR "
        "or -o pubkey=FILE, or mount anyway with -o allow_unsigned)");
  // A message that already says what to do (a zip archive) gets no second hint.
  const auto zip = std::make_exception_ptr(TrustError("m.pt is a zip archive: mount it with -o allow_unsigned"));
  CHECK(exit_report(zip, Tool::kMountHelper).code == kUntrusted);
  CHECK(exit_report(zip, Tool::kMountHelper).message ==
        "mount.torshpkg: refusing to mount: m.pt is a zip archive: mount it with -o allow_unsigned");
  CHECK(exit_report(zip, Tool::kTorshpkg).message ==
        "torshpkg: untrusted package: m.pt is a zip archive: mount it with -o allow_unsigned");

  // EPIPE: torshpkg's reader went away (`torshpkg cat | head`): success, still said; the driver fails.
  const auto epipe = std::make_exception_ptr(IoError("cannot write standard output: Broken pipe", EPIPE));
  CHECK(exit_report(epipe, Tool::kTorshpkg).code == kOk);
  CHECK(exit_report(epipe, Tool::kTorshpkg).message == "torshpkg: cannot write standard output: Broken pipe");
  CHECK(exit_report(epipe, Tool::kMountHelper).code == kIo);

  // exit_code_for() prints the same line, newline-terminated, and returns the same code.
  std::FILE *err = std::tmpfile();
  REQUIRE(err != nullptr);
  CHECK(exit_code_for(std::make_exception_ptr(IntegrityError("chunk 3")), Tool::kTorshpkg, err) == kIntegrity);
  CHECK(exit_code_for(untrusted, Tool::kMountHelper, err) == kUntrusted);
  std::rewind(err);
  std::string text;
  for (int ch; (ch = std::fgetc(err)) != EOF;) text += static_cast<char>(ch);
  std::fclose(err);
  CHECK(text == "torshpkg: damaged package: chunk 3\n" + exit_report(untrusted, Tool::kMountHelper).message + "\n");
}

}  // TEST_SUITE
