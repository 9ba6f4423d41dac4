// http_source.hpp: URLs in messages, the mirrors file, and HttpSource against real servers on
// loopback (Python's http.server, which ignores Range; a closed port). The fault-by-fault behaviour
// under nginx and a fault-injecting server is tests/integration/test_remote.py's.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/http_source.hpp"
#include "torshpkg/open.hpp"
#include "torshpkg/oci_source.hpp"
#include "torshpkg/s3_source.hpp"

using namespace torshpkg;

namespace {

// python3's http.server serving `dir` on 127.0.0.1, stopped on destruction.
class PythonHttpServer {
 public:
  explicit PythonHttpServer(const std::string &dir) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      const std::string script =
          "import functools,http.server,sys\n"
          "h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[1])\n"
          "h.func.log_message=lambda *a:None\n"
          "s=http.server.ThreadingHTTPServer(('127.0.0.1',0),h)\n"
          "s.handle_error=lambda *a:None\n"  // the client cuts 200 replies short on purpose
          "print(s.server_address[1],flush=True)\n"
          "s.serve_forever()\n";
      ::execlp("python3", "python3", "-c", script.c_str(), dir.c_str(), static_cast<char *>(nullptr));
      ::_exit(127);
    }
    ::close(fds[1]);
    char buf[32] = {};
    std::size_t n = 0;
    // Bounded: python prints its port within a few seconds or the test fails.
    for (int i = 0; i < 100 && n < sizeof buf - 1; ++i) {
      const auto r = ::read(fds[0], buf + n, sizeof buf - 1 - n);
      if (r <= 0) break;
      n += static_cast<std::size_t>(r);
      if (std::string_view(buf, n).find('\n') != std::string_view::npos) break;
    }
    ::close(fds[0]);
    port_ = std::atoi(buf);
    REQUIRE(port_ > 0);
  }
  ~PythonHttpServer() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  [[nodiscard]] std::string url(const std::string &name) const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/" + name;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// A port on loopback that nothing listens on (bound, then closed).
int closed_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(s, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr *>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

RemoteOptions quiet(RemoteOptions o = {}) {
  o.log = [](const std::string &) {};
  return o;
}

}  // namespace

TEST_CASE("URLs in messages never show credentials or query strings") {
  CHECK(redact_url("https://user:secret@host.example/a/b.tpkg") == "https://host.example/a/b.tpkg");
  CHECK(redact_url("https://host/x.tpkg?X-Amz-Signature=abc&X-Amz-Credential=k") == "https://host/x.tpkg?...");
  CHECK(redact_url("http://u@h:8080/p") == "http://h:8080/p");
  CHECK(redact_url("https://host/a@b/c") == "https://host/a@b/c");  // '@' in the path is not userinfo
  CHECK(redact_url("https://host/p#frag") == "https://host/p#frag");
  CHECK(is_http_url("HTTPS://h/x"));
  CHECK(is_http_url("http://h/x"));
  CHECK_FALSE(is_http_url("file:///x"));
  CHECK_FALSE(is_http_url("/tmp/http://x"));
}

TEST_CASE("the mirrors file maps URL prefixes to mirror prefixes") {
  th::TempDir dir;
  const auto path = (dir / "mirrors.conf").string();
  std::ofstream(path) << "# comment\n\nhttps://models.example.com/  https://m1.example.org/models/ http://m2/m/  # two\n"
                         "https://other.example/ https://o1/\n";
  const auto m = mirrors_from_file("https://models.example.com/llama/v1.tpkg", path);
  REQUIRE(m.size() == 2);
  CHECK(m[0] == "https://m1.example.org/models/llama/v1.tpkg");
  CHECK(m[1] == "http://m2/m/llama/v1.tpkg");
  CHECK(mirrors_from_file("https://elsewhere/x.tpkg", path).empty());
  CHECK(mirrors_from_file("https://x/y", (dir / "missing").string()).empty());
  std::ofstream(path) << "https://models.example.com/\n";
  CHECK_THROWS_AS((void)mirrors_from_file("https://models.example.com/a", path), UsageError);
  std::ofstream(path) << "https://a/ ftp://b/\n";
  CHECK_THROWS_AS((void)mirrors_from_file("https://a/x", path), UsageError);
}

TEST_CASE("a server that ignores Range still serves exact bytes") {
  th::TempDir dir;
  const auto data = th::random_bytes(3 << 20, 7);
  {
    std::ofstream f((dir / "blob.bin").string(), std::ios::binary);
    f.write(reinterpret_cast<const char *>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  PythonHttpServer server(dir.path().string());
  std::vector<std::string> notices;
  auto opts = quiet();
  opts.log = [&](const std::string &m) { notices.push_back(m); };
  const auto src = open_http(server.url("blob.bin"), opts);
  CHECK(src->size() == data.size());
  CHECK(src->remote());
  CHECK_FALSE(notices.empty());  // the server ignored Range for the tail: said once
  for (const std::uint64_t off : {std::uint64_t{0}, std::uint64_t{12345}, std::uint64_t{(2 << 20) + 17}}) {
    th::Bytes got(100000);
    src->read(off, got);
    CHECK(std::equal(got.begin(), got.end(), data.begin() + static_cast<std::ptrdiff_t>(off)));
  }
  // The tail is served from memory: no request.
  th::Bytes last(64);
  src->read(data.size() - 64, last);
  CHECK(std::equal(last.begin(), last.end(), data.end() - 64));
  CHECK(src->stats_json().find("\"range_ignored\":true") != std::string::npos);
  CHECK_THROWS_AS(src->read(data.size() - 10, std::span(last)), FormatError);
}

TEST_CASE("404 at open is ENOENT naming the URL; a closed port fails fast and bounded") {
  th::TempDir dir;
  PythonHttpServer server(dir.path().string());
  try {
    (void)open_http(server.url("missing.tpkg"), quiet());
    FAIL("no error");
  } catch (const IoError &e) {
    CHECK(e.errnum == ENOENT);
    CHECK(std::string(e.what()).find("missing.tpkg") != std::string::npos);
    CHECK(std::string(e.what()).find("404") != std::string::npos);
  }
  auto opts = quiet();
  opts.retries = 1;
  opts.timeout = std::chrono::milliseconds(2000);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS((void)open_http("http://127.0.0.1:" + std::to_string(closed_port()) + "/x.tpkg", opts), IoError);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
}

TEST_CASE("a mirror that serves another package is not used") {
  th::TempDir a, b;
  const auto data = th::random_bytes(1 << 20, 1), other = th::random_bytes(1 << 20, 2);
  std::ofstream((a / "p.bin").string(), std::ios::binary)
      .write(reinterpret_cast<const char *>(data.data()), static_cast<std::streamsize>(data.size()));
  std::ofstream((b / "p.bin").string(), std::ios::binary)
      .write(reinterpret_cast<const char *>(other.data()), static_cast<std::streamsize>(other.size()));
  PythonHttpServer good(a.path().string()), bad(b.path().string());
  auto opts = quiet();
  opts.mirrors = {bad.url("p.bin")};
  const auto src = open_http(good.url("p.bin"), opts);
  // The bytes at 0 "fail their digest": the good origin is distrusted, and the unchecked mirror might
  // serve others; asked, it is found to serve another file and marked bad too: nothing is left.
  th::Bytes got(4096);
  src->read(0, got);
  CHECK(src->distrust(0, got.size(), "test"));
  CHECK_THROWS_AS(src->read(0, std::span(got)), IoError);
  const auto stats = src->stats_json();
  CHECK(stats.find("\"state\":\"bad\"") != std::string::npos);
}

TEST_CASE("open_package takes http URLs") {
  th::TempDir dir;
  PythonHttpServer server(dir.path().string());
  OpenOptions opts;
  opts.remote = quiet();
  CHECK_THROWS_AS((void)open_package(server.url("nothing.tpkg"), opts), IoError);
}

TEST_CASE("s3:// locations, object URLs and AWS ini files") {
  const auto l = parse_s3_location("s3://my-bucket.v2/models/llama 3/v1.tpkg");
  CHECK(l.bucket == "my-bucket.v2");
  CHECK(l.key == "models/llama 3/v1.tpkg");
  CHECK(s3_object_url(l, "", "eu-west-1") == "https://my-bucket.v2.s3.eu-west-1.amazonaws.com/models/llama%203/v1.tpkg");
  CHECK(s3_object_url(l, "http://127.0.0.1:9000/", "us-east-1") ==
        "http://127.0.0.1:9000/my-bucket.v2/models/llama%203/v1.tpkg");
  CHECK_THROWS_AS((void)parse_s3_location("s3://bucket"), UsageError);
  CHECK_THROWS_AS((void)parse_s3_location("s3://bucket/"), UsageError);
  CHECK_THROWS_AS((void)parse_s3_location("s3://Bad_Bucket/k"), UsageError);
  CHECK_THROWS_AS((void)parse_s3_location("s3://ab/k"), UsageError);
  CHECK_THROWS_AS((void)s3_object_url(l, "ftp://x", "r"), UsageError);
  th::TempDir dir;
  const auto path = (dir / "credentials").string();
  std::ofstream(path) << "# c\n[default]\naws_access_key_id = AK\naws_secret_access_key=SK \n\n[profile other]\nregion = r2\n";
  auto ini = read_aws_ini(path);
  CHECK(ini["default"]["aws_access_key_id"] == "AK");
  CHECK(ini["default"]["aws_secret_access_key"] == "SK");
  CHECK(ini["other"]["region"] == "r2");
  CHECK(read_aws_ini((dir / "missing").string()).empty());
  CHECK(is_remote_location("s3://b/k"));
  CHECK(is_remote_location("HTTPS://h/x"));
  CHECK_FALSE(is_remote_location("file:///x"));
  CHECK_FALSE(is_remote_location("/a/b"));
}

TEST_CASE("oci:// references and registry credentials") {
  auto r = parse_oci_reference("oci://registry.example:5000/org/model:1.2.0");
  CHECK(r.registry == "registry.example:5000");
  CHECK(r.repository == "org/model");
  CHECK(r.reference == "1.2.0");
  CHECK(r.base_url() == "https://registry.example:5000");
  r = parse_oci_reference("oci+http://127.0.0.1:5000/m");
  CHECK(r.reference == "latest");
  CHECK(r.base_url() == "http://127.0.0.1:5000");
  const std::string digest = "sha256:" + std::string(64, 'a');
  CHECK(parse_oci_reference("oci://h/org/m@" + digest).reference == digest);
  CHECK_THROWS_AS((void)parse_oci_reference("oci://h/m@sha256:abc"), UsageError);
  CHECK_THROWS_AS((void)parse_oci_reference("oci://h"), UsageError);
  CHECK_THROWS_AS((void)parse_oci_reference("oci://h/Upper:tag"), UsageError);
  th::TempDir dir;
  const auto auth = (dir / "auth.json").string();
  // base64("alice:s3cret:with:colons") and a username/password entry
  std::ofstream(auth) << R"({"auths": {"r1:5000": {"auth": "YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"},
                                       "https://r2": {"username": "bob", "password": "pw"}}})";
  ::setenv("REGISTRY_AUTH_FILE", auth.c_str(), 1);
  CHECK(registry_credentials("r1:5000") == std::optional<std::string>("alice:s3cret:with:colons"));
  CHECK(registry_credentials("r2") == std::optional<std::string>("bob:pw"));
  CHECK_FALSE(registry_credentials("r3").has_value());
  ::unsetenv("REGISTRY_AUTH_FILE");
}
