// HttpSource: byte ranges over HTTP(S) with libcurl (http_source.hpp says what it promises).
//
// One request at a time per easy handle; handles are leased from a pool and share DNS, TLS sessions
// and connections through one curl share object, so that each thread keeps its connection alive
// (HTTP/1.1 keep-alive; HTTP/2 where the server offers it over TLS).
#include "torshpkg/http_source.hpp"

#include "curl_api.hpp"
#include "remote_text.hpp"

#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"
#include "torshpkg/format.hpp"
#include "torshpkg/version.hpp"

namespace torshpkg {

namespace {

using Clock = std::chrono::steady_clock;

bool iequals_prefix(std::string_view text, std::string_view prefix) noexcept {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  return true;
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::optional<std::uint64_t> parse_u64(std::string_view s) noexcept {
  std::uint64_t v = 0;
  const auto *end = s.data() + s.size();
  const auto r = std::from_chars(s.data(), end, v);
  if (r.ec != std::errc() || r.ptr != end || s.empty()) return std::nullopt;
  return v;
}

// ---------------------------------------------------------------------------------------------
// RAII for curl handles.

struct EasyDeleter {
  void operator()(CURL *h) const noexcept { remote::curl_api().easy_cleanup(h); }
};
using Easy = std::unique_ptr<CURL, EasyDeleter>;

// DNS, TLS sessions and connections shared by every handle of one source.
class Share {
 public:
  Share() : sh_(remote::curl_api().share_init()) {
    if (!sh_) throw InternalError("curl_share_init failed");
    remote::curl_api().share_setopt(sh_, CURLSHOPT_LOCKFUNC, &Share::lock);
    remote::curl_api().share_setopt(sh_, CURLSHOPT_UNLOCKFUNC, &Share::unlock);
    remote::curl_api().share_setopt(sh_, CURLSHOPT_USERDATA, this);
    remote::curl_api().share_setopt(sh_, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    remote::curl_api().share_setopt(sh_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    remote::curl_api().share_setopt(sh_, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
  }
  ~Share() { remote::curl_api().share_cleanup(sh_); }
  Share(const Share &) = delete;
  Share &operator=(const Share &) = delete;
  [[nodiscard]] CURLSH *get() const noexcept { return sh_; }

 private:
  static void lock(CURL *, curl_lock_data data, curl_lock_access, void *self) {
    static_cast<Share *>(self)->mu_[static_cast<std::size_t>(data) % kLocks].lock();
  }
  static void unlock(CURL *, curl_lock_data data, void *self) {
    static_cast<Share *>(self)->mu_[static_cast<std::size_t>(data) % kLocks].unlock();
  }
  static constexpr std::size_t kLocks = CURL_LOCK_DATA_LAST;
  CURLSH *sh_;
  std::mutex mu_[kLocks];
};

// ---------------------------------------------------------------------------------------------
// One request: a byte range (or the last `suffix` bytes) of a URL into memory.

struct Range {
  std::uint64_t offset = 0;  // ignored for a suffix request
  std::uint64_t length = 0;
  bool suffix = false;  // the last `length` bytes ("bytes=-N"), when the size is not yet known
};

enum class Outcome {
  kOk,
  kRetry,     // worth asking again later, here or elsewhere: network trouble, 5xx, 429, short body
  kMirrorBad, // this origin cannot serve the package (TLS failure, 4xx, another package)
  kChanged,   // the package at this origin is no longer the one opened (ETag, size)
};

struct Reply {
  Outcome outcome = Outcome::kOk;
  long status = 0;
  std::string error;  // one line, for messages
  int err = EIO;      // errno for an IoError
  std::chrono::milliseconds retry_after{0};
  std::uint64_t total = 0;  // the resource's size, when the reply said
  std::string etag;
  bool ignored_range = false;  // 200 and the whole body to a range request
};

// What the callbacks fill as the reply comes in.
struct Transfer {
  // Request
  Range range;
  std::span<std::uint8_t> out;     // for a known range
  std::vector<std::uint8_t> tail;  // for a suffix request, sized once the headers are in
  // Headers of the last response (a redirect's are reset by the next status line)
  long status = 0;
  std::optional<std::uint64_t> content_length, range_start, range_total;
  std::string etag, retry_after;
  // Body
  bool body_started = false;
  std::uint64_t body_offset = 0;  // offset in the resource of the next body byte
  std::uint64_t want_offset = 0;
  std::span<std::uint8_t> dest;
  std::uint64_t got = 0;
  bool complete = false;  // all wanted bytes are in (the transfer may be cut short after that)
  std::uint64_t error_body = 0;
  std::string error_text;  // the start of an error page: S3 says why in <Code>...</Code>
};

std::size_t on_header(char *data, std::size_t size, std::size_t n, void *user) {
  auto &t = *static_cast<Transfer *>(user);
  const std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {  // a new response (after a redirect or 100 Continue)
    const auto sp = line.find(' ');
    t.status = 0;
    if (sp != std::string_view::npos) {
      const auto code = trim(line.substr(sp + 1, 4));
      if (auto v = parse_u64(code)) t.status = static_cast<long>(*v);
    }
    t.content_length.reset();
    t.range_start.reset();
    t.range_total.reset();
    t.etag.clear();
    t.retry_after.clear();
    return size * n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  const auto name = line.substr(0, colon);
  const auto value = trim(line.substr(colon + 1));
  auto is = [&](std::string_view h) { return name.size() == h.size() && iequals_prefix(name, h); };
  if (is("content-length")) {
    t.content_length = parse_u64(value);
  } else if (is("content-range")) {  // "bytes START-END/TOTAL" (TOTAL may be "*")
    if (iequals_prefix(value, "bytes ")) {
      const auto spec = value.substr(6);
      const auto dash = spec.find('-'), slash = spec.find('/');
      if (dash != std::string_view::npos && slash != std::string_view::npos && dash < slash) {
        t.range_start = parse_u64(spec.substr(0, dash));
        t.range_total = parse_u64(spec.substr(slash + 1));
      }
    }
  } else if (is("etag")) {
    t.etag = std::string(value);
  } else if (is("retry-after")) {
    t.retry_after = std::string(value);
  }
  return size * n;
}

std::size_t on_body(char *data, std::size_t size, std::size_t n, void *user) {
  auto &t = *static_cast<Transfer *>(user);
  const std::size_t len = size * n;
  if (t.status != 200 && t.status != 206) {
    if (t.error_text.size() < 4096) t.error_text.append(data, std::min<std::size_t>(len, 4096 - t.error_text.size()));
    t.error_body += len;  // an error page: read a little of it (keeps the connection), no more
    return t.error_body > (64u << 10) ? 0 : len;
  }
  if (!t.body_started) {
    t.body_started = true;
    t.body_offset = (t.status == 206 && t.range_start) ? *t.range_start : 0;
    if (t.range.suffix) {
      // Now the size is known: the last `length` bytes of it.
      const std::uint64_t total =
          t.status == 206 ? t.range_total.value_or(0) : t.content_length.value_or(0);
      const std::uint64_t want = std::min<std::uint64_t>(t.range.length, total);
      if (want == 0) return 0;
      t.tail.assign(static_cast<std::size_t>(want), 0);
      t.want_offset = total - want;
      t.dest = t.tail;
    } else {
      t.want_offset = t.range.offset;
      t.dest = t.out;
    }
    if (t.body_offset > t.want_offset) return 0;  // a range that starts after the one asked for
  }
  // Copy what overlaps [want_offset + got, want_offset + dest.size()).
  std::uint64_t pos = t.body_offset;
  std::size_t skip = 0;
  const std::uint64_t need_at = t.want_offset + t.got;
  if (pos < need_at) skip = static_cast<std::size_t>(std::min<std::uint64_t>(need_at - pos, len));
  pos += skip;
  if (skip < len && pos == need_at) {
    const std::size_t copy = static_cast<std::size_t>(std::min<std::uint64_t>(len - skip, t.dest.size() - t.got));
    std::memcpy(t.dest.data() + t.got, data + skip, copy);
    t.got += copy;
  }
  t.body_offset += len;
  if (t.got == t.dest.size()) {
    t.complete = true;
    // A 200 to a range request goes on to the end of the file: stop once the range is in.
    if (t.status == 200) return 0;
  }
  return len;
}

std::chrono::milliseconds parse_retry_after(std::string_view v) {
  if (auto s = parse_u64(trim(v))) return std::chrono::milliseconds(std::min<std::uint64_t>(*s, 3600) * 1000);
  return std::chrono::milliseconds(1000);  // an HTTP date, or nonsense: a second
}

std::string first_line(std::string s) {
  if (const auto nl = s.find_first_of("\r\n"); nl != std::string::npos) s.resize(nl);
  return s;
}

// ---------------------------------------------------------------------------------------------

struct Mirror {
  std::string url;      // as given (may hold credentials: never printed)
  std::string display;  // redact_url(url)
  // Under HttpSource::mu_:
  enum class State { kUnchecked, kOk, kDown, kBad } state = State::kUnchecked;
  Clock::time_point down_until{};
  bool verified = false;  // its tail is the package's
  unsigned failures = 0;  // in a row
  std::string etag;       // first one seen
  std::string why_bad;
  std::atomic<std::uint64_t> requests{0};
};

std::string_view state_name(Mirror::State s) {
  switch (s) {
    case Mirror::State::kUnchecked: return "unchecked";
    case Mirror::State::kOk: return "ok";
    case Mirror::State::kDown: return "down";
    case Mirror::State::kBad: return "bad";
  }
  return "?";
}

struct SlistFree {
  void operator()(curl_slist *l) const noexcept { remote::curl_api().slist_free_all(l); }
};
using HeaderList = std::unique_ptr<curl_slist, SlistFree>;

curl_slist *make_header_list(const std::vector<std::string> &lines) {
  HeaderList list;
  for (const auto &l : lines) {
    curl_slist *next = remote::curl_api().slist_append(list.get(), l.c_str());
    if (!next) throw InternalError("curl_slist_append failed");
    (void)list.release();
    list.reset(next);
  }
  return list.release();
}

// What every handle of ours does: threads, protocols, redirects, timeouts, TLS.
void set_common_options(CURL *e, const RemoteOptions &opts) {
  const auto &c = remote::curl_api();
  c.easy_setopt(e, CURLOPT_NOSIGNAL, 1L);  // threads: no SIGALRM for DNS timeouts
  c.easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  c.easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  c.easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  c.easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  c.easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  c.easy_setopt(e, CURLOPT_USERAGENT, fmt::format("torshpkg/{}", kVersion).c_str());  // curl copies it
  c.easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  c.easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(opts.timeout.count()));
  c.easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(opts.timeout.count()));
  if (!opts.cacert.empty()) c.easy_setopt(e, CURLOPT_CAINFO, opts.cacert.c_str());
  if (opts.insecure) {
    c.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    c.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

class HttpSource final : public ChunkSource {
 public:
  HttpSource(const std::string &url, const RemoteOptions &opts);

  void read(std::uint64_t offset, std::span<std::uint8_t> out) const override;
  // read() without the tail and head buffers: one range request, with retries and failover.
  // Returns the origin that served it.
  Mirror *fetch(std::uint64_t offset, std::span<std::uint8_t> out) const;
  [[nodiscard]] std::uint64_t size() const noexcept override { return size_; }
  [[nodiscard]] const std::string &name() const noexcept override { return name_; }
  [[nodiscard]] bool remote() const noexcept override { return true; }
  [[nodiscard]] std::size_t coalesce_bytes() const noexcept override { return opts_.coalesce_bytes; }
  bool distrust(std::uint64_t offset, std::size_t length, const std::string &why) const override;
  [[nodiscard]] std::string stats_json() const override;

 private:
  struct Lease {
    const HttpSource *src;
    CURL *h;
    ~Lease() { src->give_back(h); }
  };
  [[nodiscard]] CURL *take_handle() const;
  void give_back(CURL *h) const noexcept;
  Reply request(Mirror &m, const Range &range, std::span<std::uint8_t> out, std::vector<std::uint8_t> *tail) const;
  // Picks the origin to ask next: the first usable in order; waits (bounded by `deadline`) when all
  // are resting. Null when every one is bad.
  Mirror *pick(Clock::time_point deadline) const;
  // A mirror's first use: its tail must be the package's (same size, same footer).
  bool check_identity(Mirror &m) const;
  void failed(Mirror &m, const Reply &r) const;
  void mark_bad(Mirror &m, const std::string &why) const;
  void log(const std::string &msg) const;
  void remember(std::uint64_t offset, std::size_t length, Mirror *m) const;

  RemoteOptions opts_;
  std::string name_;
  std::string aws_param_, aws_userpwd_;  // for CURLOPT_AWS_SIGV4 and CURLOPT_USERPWD
  // Extra request headers, shared by every request; replaced (under mu_) when a 401 gets a new token,
  // while requests in flight keep the list they started with.
  mutable std::vector<std::string> header_lines_;
  mutable std::shared_ptr<curl_slist> headers_;
  mutable unsigned auth_generation_ = 0;
  mutable std::mutex reauth_mu_;  // one token request at a time
  // A 401: new credentials from RemoteOptions::reauthorize, unless another thread got them since
  // `generation`. False when there is no way to get any.
  bool reauthorize(unsigned generation) const;
  Reply request_once(Mirror &m, const Range &range, std::span<std::uint8_t> out, std::vector<std::uint8_t> *tail,
                     curl_slist *headers) const;
  Share share_;
  mutable std::mutex mu_;  // mirror states, the handle pool, the recent reads
  mutable std::vector<Easy> idle_;  // after share_: cleaned up before it, also when the constructor throws
  mutable std::deque<std::unique_ptr<Mirror>> mirrors_;  // [0] is the URL itself
  struct RecentRead {
    std::uint64_t offset, length;
    Mirror *mirror;
  };
  mutable std::deque<RecentRead> recent_;  // who served what lately, for distrust()
  std::uint64_t size_ = 0;
  std::uint64_t tail_offset_ = 0;
  std::vector<std::uint8_t> tail_;  // the last bytes of the package, fetched at open
  static constexpr std::uint64_t kHeadBytes = 4096;
  mutable std::once_flag head_once_;
  mutable std::vector<std::uint8_t> head_;  // the first bytes, fetched on the first read there
  Mirror *tail_origin_ = nullptr;
  mutable Mirror *head_origin_ = nullptr;  // set once, under head_once_
  mutable std::atomic<bool> bypass_head_{false}, bypass_tail_{false};
  mutable std::atomic<std::uint64_t> requests_{0}, retries_{0}, failovers_{0}, bytes_fetched_{0}, ignored_range_{0};
  mutable std::atomic<Mirror *> in_use_{nullptr};
  std::atomic<bool> opened_{false};  // the tail is in
};

HttpSource::HttpSource(const std::string &url, const RemoteOptions &opts)
    : opts_(opts), name_(opts.display_name.empty() ? redact_url(url) : opts.display_name) {
  std::vector<std::string> lines = opts_.headers;
  if (opts_.aws) {
    // libcurl signs every request; UNSIGNED-PAYLOAD: a GET has no body, and S3 wants the header.
    aws_param_ = fmt::format("aws:amz:{}:{}", opts_.aws->region, opts_.aws->service);
    aws_userpwd_ = opts_.aws->access_key + ":" + opts_.aws->secret_key;
    lines.push_back("x-amz-content-sha256: UNSIGNED-PAYLOAD");
    if (!opts_.aws->session_token.empty()) lines.push_back("x-amz-security-token: " + opts_.aws->session_token);
  }
  header_lines_ = lines;
  headers_ = std::shared_ptr<curl_slist>(make_header_list(lines), SlistFree{});
  mirrors_.push_back(std::make_unique<Mirror>());
  mirrors_.back()->url = url;
  mirrors_.back()->display = name_;
  for (const auto &m : opts_.mirrors) {
    if (!is_http_url(m)) throw UsageError(fmt::format("mirror {}: not an http:// or https:// URL", redact_url(m)));
    mirrors_.push_back(std::make_unique<Mirror>());
    mirrors_.back()->url = m;
    mirrors_.back()->display = redact_url(m);
  }
  // The tail tells the size and holds the index: from the URL itself, or the first mirror that has it.
  const auto deadline = Clock::now() + opts_.timeout * (opts_.retries + 1) * mirrors_.size();
  Reply first_error;
  bool have_error = false;
  Mirror *previous = nullptr;
  for (unsigned attempt = 0; attempt < (opts_.retries + 1) * mirrors_.size(); ++attempt) {
    Mirror *m = pick(deadline);
    if (!m) break;
    if (attempt > 0) retries_.fetch_add(1, std::memory_order_relaxed);
    if (previous && previous != m) failovers_.fetch_add(1, std::memory_order_relaxed);
    previous = m;
    std::vector<std::uint8_t> tail;
    const Reply r = request(*m, Range{0, std::max<std::uint64_t>(opts_.tail_bytes, format::kFooterSize), true}, {},
                            &tail);
    if (r.outcome == Outcome::kOk) {
      size_ = r.total;
      tail_ = std::move(tail);
      tail_offset_ = size_ - tail_.size();
      tail_origin_ = m;
      std::lock_guard lock(mu_);
      m->state = Mirror::State::kOk;
      m->verified = true;
      m->etag = r.etag;
      in_use_ = m;
      opened_ = true;
      if (r.ignored_range)
        log(fmt::format("{}: the server ignores Range requests: every read downloads from the start of the file",
                        m->display));
      return;
    }
    if (!have_error || m == mirrors_.front().get()) first_error = r, have_error = true;
    failed(*m, r);
  }
  const int err = have_error ? first_error.err : EIO;
  throw IoError(fmt::format("{}: {}", name_, have_error ? first_error.error : "no mirror could be reached"), err);
}

void HttpSource::log(const std::string &msg) const {
  if (opts_.log)
    opts_.log(msg);
  else
    fmt::print(stderr, "torshpkg: {}\n", msg);
}

CURL *HttpSource::take_handle() const {
  {
    std::lock_guard lock(mu_);
    if (!idle_.empty()) {
      CURL *h = idle_.back().release();
      idle_.pop_back();
      return h;
    }
  }
  Easy h(remote::curl_api().easy_init());
  if (!h) throw InternalError("curl_easy_init failed");
  CURL *e = h.get();
  remote::curl_api().easy_setopt(e, CURLOPT_SHARE, share_.get());
  set_common_options(e, opts_);
  remote::curl_api().easy_setopt(e, CURLOPT_HEADERFUNCTION, &on_header);
  remote::curl_api().easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_body);
  if (opts_.aws) {
    remote::curl_api().easy_setopt(e, CURLOPT_AWS_SIGV4, aws_param_.c_str());
    remote::curl_api().easy_setopt(e, CURLOPT_USERPWD, aws_userpwd_.c_str());
  }
  return h.release();
}

void HttpSource::give_back(CURL *h) const noexcept {
  Easy owned(h);
  std::lock_guard lock(mu_);
  try {
    idle_.push_back(std::move(owned));
  } catch (...) {  // no memory for the pool: the handle goes (owned cleans it up)
  }
}

bool HttpSource::reauthorize(unsigned generation) const {
  if (!opts_.reauthorize) return false;
  std::lock_guard one(reauth_mu_);
  {
    std::lock_guard lock(mu_);
    if (auth_generation_ != generation) return true;  // someone else did, meanwhile
  }
  std::string line;
  try {
    line = opts_.reauthorize();
  } catch (const std::exception &e) {
    log(fmt::format("{}: new credentials refused: {}", name_, e.what()));
    return false;
  }
  std::lock_guard lock(mu_);
  std::erase_if(header_lines_, [](const std::string &l) { return iequals_prefix(l, "authorization:"); });
  header_lines_.push_back(line);
  headers_ = std::shared_ptr<curl_slist>(make_header_list(header_lines_), SlistFree{});
  ++auth_generation_;
  return true;
}

Reply HttpSource::request(Mirror &m, const Range &range, std::span<std::uint8_t> out,
                          std::vector<std::uint8_t> *tail) const {
  // A 401 on a session that had credentials: they expired (registry tokens last minutes), so new
  // ones, and the request once more.
  for (int attempt = 0;; ++attempt) {
    std::shared_ptr<curl_slist> headers;
    unsigned generation = 0;
    {
      std::lock_guard lock(mu_);
      headers = headers_;
      generation = auth_generation_;
    }
    Reply r = request_once(m, range, out, tail, headers.get());
    if (r.status != 401 || attempt > 0 || !reauthorize(generation)) return r;
  }
}

Reply HttpSource::request_once(Mirror &m, const Range &range, std::span<std::uint8_t> out,
                               std::vector<std::uint8_t> *tail, curl_slist *headers) const {
  Lease lease{this, take_handle()};
  CURL *e = lease.h;
  remote::curl_api().easy_setopt(e, CURLOPT_HTTPHEADER, headers);
  Transfer t;
  t.range = range;
  t.out = out;
  const std::string spec = range.suffix ? fmt::format("-{}", range.length)
                                        : fmt::format("{}-{}", range.offset, range.offset + range.length - 1);
  char errbuf[CURL_ERROR_SIZE] = {};
  remote::curl_api().easy_setopt(e, CURLOPT_URL, m.url.c_str());
  remote::curl_api().easy_setopt(e, CURLOPT_RANGE, spec.c_str());
  remote::curl_api().easy_setopt(e, CURLOPT_HEADERDATA, &t);
  remote::curl_api().easy_setopt(e, CURLOPT_WRITEDATA, &t);
  remote::curl_api().easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  requests_.fetch_add(1, std::memory_order_relaxed);
  m.requests.fetch_add(1, std::memory_order_relaxed);
  const CURLcode rc = remote::curl_api().easy_perform(e);
  remote::curl_api().easy_setopt(e, CURLOPT_ERRORBUFFER, nullptr);
  remote::curl_api().easy_setopt(e, CURLOPT_HTTPHEADER, nullptr);  // the list may go before the handle
  remote::curl_api().easy_setopt(e, CURLOPT_HEADERDATA, nullptr);
  remote::curl_api().easy_setopt(e, CURLOPT_WRITEDATA, nullptr);
  bytes_fetched_.fetch_add(t.got, std::memory_order_relaxed);

  Reply r;
  r.status = t.status;
  r.etag = t.etag;
  const std::string where = m.display;
  if (rc != CURLE_OK && !(t.complete && rc == CURLE_WRITE_ERROR)) {
    const std::string detail = errbuf[0] ? first_line(errbuf) : remote::curl_api().easy_strerror(rc);
    switch (rc) {
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CERTPROBLEM:
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_SSL_CIPHER:
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_URL_MALFORMAT:
      case CURLE_TOO_MANY_REDIRECTS:
        r.outcome = Outcome::kMirrorBad;
        r.error = rc == CURLE_PEER_FAILED_VERIFICATION
                      ? fmt::format("TLS: {} (a private CA? -o cacert=FILE)", detail)
                      : detail;
        return r;
      case CURLE_OPERATION_TIMEDOUT:
        r.outcome = Outcome::kRetry;
        r.err = ETIMEDOUT;
        r.error = fmt::format("timed out after {} ms ({})", opts_.timeout.count(), detail);
        return r;
      default:
        r.outcome = Outcome::kRetry;
        r.error = detail;
        return r;
    }
  }
  if (t.status == 206 || t.status == 200) {
    r.total = t.status == 206 ? t.range_total.value_or(0) : t.content_length.value_or(0);
    r.ignored_range = t.status == 200;
    if (!t.complete) {
      r.outcome = Outcome::kRetry;
      r.error = fmt::format("short reply: {} of {} bytes", t.got, t.dest.size() ? t.dest.size() : range.length);
      return r;
    }
    if (tail) *tail = std::move(t.tail);
    return r;
  }
  r.outcome = Outcome::kMirrorBad;
  r.error = fmt::format("HTTP {}", t.status);
  // S3 and S3-compatible stores name the reason (SignatureDoesNotMatch, NoSuchBucket, ...).
  std::string code;
  if (const auto b = t.error_text.find("<Code>"), e = t.error_text.find("</Code>");
      b != std::string::npos && e != std::string::npos && e > b + 6 && e - b - 6 <= 64) {
    code = t.error_text.substr(b + 6, e - b - 6);
    if (!std::all_of(code.begin(), code.end(), [](unsigned char c) { return std::isalnum(c) || c == '.'; }))
      code.clear();
  }
  if (t.status == 404 || t.status == 410) {
    r.err = ENOENT;
    r.error += " Not Found";
  } else if (t.status == 401 || t.status == 403) {
    r.err = EACCES;
    r.error += t.status == 401 ? " Unauthorized (credentials in the URL, or a presigned URL?)" : " Forbidden";
  } else if (t.status == 416) {
    r.outcome = Outcome::kChanged;  // the range no longer fits: the file shrank
    r.error += " Range Not Satisfiable: the package changed on the server";
  } else if (t.status == 429 || t.status == 408 || t.status >= 500) {
    r.outcome = Outcome::kRetry;
    r.retry_after = t.retry_after.empty() ? std::chrono::milliseconds(0) : parse_retry_after(t.retry_after);
  }
  if (!code.empty()) r.error += fmt::format(" ({})", code);
  return r;
}

Mirror *HttpSource::pick(Clock::time_point deadline) const {
  for (;;) {
    Mirror *resting = nullptr;
    Clock::time_point until{};
    {
      std::lock_guard lock(mu_);
      const auto now = Clock::now();
      for (auto &m : mirrors_) {
        if (m->state == Mirror::State::kBad) continue;
        if (m->state == Mirror::State::kDown && m->down_until > now) {
          if (!resting || m->down_until < until) resting = m.get(), until = m->down_until;
          continue;
        }
        return m.get();
      }
    }
    if (!resting) return nullptr;
    if (until > deadline) return resting;  // out of time: ask it anyway, once
    std::this_thread::sleep_until(until);
  }
}

void HttpSource::mark_bad(Mirror &m, const std::string &why) const {
  {
    std::lock_guard lock(mu_);
    if (m.state == Mirror::State::kBad) return;
    m.state = Mirror::State::kBad;
    m.why_bad = why;
  }
  // While opening, the error that ends the open says it (once); mirrors are not logged either.
  if (opened_.load() || mirrors_.size() > 1) log(fmt::format("{}: not used again: {}", m.display, why));
}

void HttpSource::failed(Mirror &m, const Reply &r) const {
  if (r.outcome == Outcome::kMirrorBad || r.outcome == Outcome::kChanged) {
    mark_bad(m, r.error);
    return;
  }
  std::lock_guard lock(mu_);
  ++m.failures;
  // Back off 100 ms, 200 ms, ... up to 5 s, or as long as the server asked (at most a minute).
  const auto backoff = std::chrono::milliseconds(100 << std::min(m.failures - 1, 6u));
  const auto rest = r.retry_after.count() ? std::min(r.retry_after, std::chrono::milliseconds(60000))
                                          : std::min(backoff, std::chrono::milliseconds(5000));
  m.state = Mirror::State::kDown;
  m.down_until = Clock::now() + rest;
}

bool HttpSource::check_identity(Mirror &m) const {
  std::array<std::uint8_t, format::kFooterSize> footer{};
  std::vector<std::uint8_t> tail;
  const Reply r = request(m, Range{0, format::kFooterSize, true}, {}, &tail);
  if (r.outcome != Outcome::kOk) {
    failed(m, r);
    return false;
  }
  std::copy_n(tail_.end() - format::kFooterSize, format::kFooterSize, footer.begin());
  if (r.total != size_ || tail.size() != footer.size() || !std::equal(tail.begin(), tail.end(), footer.begin())) {
    mark_bad(m, fmt::format("serves another package (size {}, not {}, or another footer)", r.total, size_));
    return false;
  }
  std::lock_guard lock(mu_);
  m.state = Mirror::State::kOk;
  m.verified = true;
  if (m.etag.empty()) m.etag = r.etag;
  return true;
}

void HttpSource::remember(std::uint64_t offset, std::size_t length, Mirror *m) const {
  std::lock_guard lock(mu_);
  recent_.push_back({offset, length, m});
  if (recent_.size() > 1024) recent_.pop_front();
}

void HttpSource::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  if (!range_within(offset, out.size(), size_))
    throw FormatError(fmt::format("{}: read of {} bytes at offset {} runs past the end ({} bytes)", name_, out.size(),
                                  offset, size_));
  if (out.empty()) return;
  // Bytes that failed their digest (distrust()) are fetched anew, never from these buffers again:
  // only the index part of the tail is covered by the root digest, chunk data there is not.
  if (offset >= tail_offset_ && !bypass_tail_.load()) {
    std::copy_n(tail_.begin() + static_cast<std::ptrdiff_t>(offset - tail_offset_), out.size(), out.begin());
    return;
  }
  // The first bytes are read in small pieces at open (container magic, header): one request for all.
  const std::uint64_t head_size = std::min<std::uint64_t>(kHeadBytes, tail_offset_);
  if (offset + out.size() <= head_size && !bypass_head_.load()) {
    std::call_once(head_once_, [&] {
      std::vector<std::uint8_t> head(head_size);
      head_origin_ = fetch(0, head);
      head_ = std::move(head);
    });
    std::copy_n(head_.begin() + static_cast<std::ptrdiff_t>(offset), out.size(), out.begin());
    return;
  }
  fetch(offset, out);
}

Mirror *HttpSource::fetch(std::uint64_t offset, std::span<std::uint8_t> out) const {
  const auto rounds = (opts_.retries + 1) * mirrors_.size();
  const auto deadline = Clock::now() + opts_.timeout * rounds;
  std::string last_error = "no mirror left";
  int last_err = EIO;
  Mirror *previous = nullptr;
  for (std::size_t attempt = 0; attempt < rounds; ++attempt) {
    Mirror *m = pick(deadline);
    if (!m) break;
    bool verified = false;
    {
      std::lock_guard lock(mu_);
      verified = m->verified;
    }
    if (!verified && !check_identity(*m)) continue;
    if (previous && previous != m) failovers_.fetch_add(1, std::memory_order_relaxed);
    if (attempt > 0) retries_.fetch_add(1, std::memory_order_relaxed);
    previous = m;
    Reply r = request(*m, Range{offset, out.size(), false}, out, nullptr);
    if (r.outcome == Outcome::kOk) {
      bool changed = r.total != size_;
      {
        std::lock_guard lock(mu_);
        if (m->etag.empty())
          m->etag = r.etag;
        else if (!r.etag.empty() && r.etag != m->etag)
          changed = true;
      }
      if (changed) {
        r.outcome = Outcome::kChanged;
        r.error = fmt::format("the package changed on the server since it was opened (ETag {} -> {}, size {} -> {})",
                              m->etag, r.etag, size_, r.total);
      } else {
        if (r.ignored_range && ignored_range_.fetch_add(1, std::memory_order_relaxed) == 0)
          log(fmt::format("{}: the server ignores Range requests: reads download from the start of the file",
                          m->display));
        {
          std::lock_guard lock(mu_);
          m->failures = 0;
          m->state = Mirror::State::kOk;
        }
        in_use_ = m;
        remember(offset, out.size(), m);
        return m;
      }
    }
    last_error = fmt::format("{}: {}", m->display, r.error);
    last_err = r.outcome == Outcome::kChanged ? EIO : r.err;
    failed(*m, r);
  }
  throw IoError(fmt::format("{}: read of {} bytes at offset {} failed: {}", name_, out.size(), offset, last_error),
                last_err);
}

bool HttpSource::distrust(std::uint64_t offset, std::size_t length, const std::string &why) const {
  Mirror *culprit = nullptr;
  const std::uint64_t end = offset + length;  // a chunk's range: validated, no overflow
  if (end > tail_offset_ && !bypass_tail_.exchange(true)) {
    culprit = tail_origin_;
  } else if (offset < std::min<std::uint64_t>(kHeadBytes, tail_offset_) && head_origin_ && !bypass_head_.exchange(true)) {
    culprit = head_origin_;
  }
  if (!culprit) {
    std::lock_guard lock(mu_);
    for (auto it = recent_.rbegin(); it != recent_.rend(); ++it)
      if (offset >= it->offset && offset - it->offset + length <= it->length) {
        culprit = it->mirror;
        break;
      }
  }
  if (!culprit) return false;  // not a read of ours
  mark_bad(*culprit, fmt::format("served bytes that fail their digest ({})", why));
  std::lock_guard lock(mu_);
  return std::any_of(mirrors_.begin(), mirrors_.end(), [](const auto &m) { return m->state != Mirror::State::kBad; });
}

std::string HttpSource::stats_json() const {
  std::string mirrors;
  const Mirror *use = in_use_.load();
  {
    std::lock_guard lock(mu_);
    for (const auto &m : mirrors_) {
      if (!mirrors.empty()) mirrors += ',';
      mirrors += fmt::format(R"({{"url":{},"state":{},"requests":{}{}}})", remote::json_quote(m->display),
                             remote::json_quote(state_name(m->state)), m->requests.load(),
                             m->why_bad.empty() ? "" : ",\"why\":" + remote::json_quote(m->why_bad));
    }
  }
  return fmt::format(
      R"("source":{},"mirror":{},"requests":{},"retries":{},"failovers":{},"bytes_fetched":{},"range_ignored":{},"mirrors":[{}])",
      remote::json_quote(name_), use ? remote::json_quote(use->display) : "null", requests_.load(), retries_.load(),
      failovers_.load(), bytes_fetched_.load(), ignored_range_.load() > 0 ? "true" : "false", mirrors);
}

}  // namespace

namespace {
struct SmallRequest {
  const HttpRequest *req;
  bool too_big = false;
  HttpReply reply;
  std::size_t body_sent = 0;       // of req->body
  std::uint64_t file_sent = 0;     // of the file
  int file_error = 0;
};
std::size_t small_header(char *data, std::size_t size, std::size_t n, void *user) {
  auto &g = *static_cast<SmallRequest *>(user);
  const std::string_view line(data, size * n);
  if (line.starts_with("HTTP/")) {
    g.reply = HttpReply{};
    const auto sp = line.find(' ');
    if (sp != std::string_view::npos)
      if (auto v = parse_u64(trim(line.substr(sp + 1, 4)))) g.reply.status = static_cast<long>(*v);
    return size * n;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return size * n;
  const auto name = line.substr(0, colon);
  const auto value = std::string(trim(line.substr(colon + 1)));
  auto is = [&](std::string_view h) { return name.size() == h.size() && iequals_prefix(name, h); };
  if (is("www-authenticate")) g.reply.www_authenticate = value;
  if (is("content-type")) g.reply.content_type = value;
  if (is("location")) g.reply.location = value;
  if (is("docker-content-digest")) g.reply.content_digest = value;
  return size * n;
}
std::size_t small_body(char *data, std::size_t size, std::size_t n, void *user) {
  auto &g = *static_cast<SmallRequest *>(user);
  if (g.reply.body.size() + size * n > g.req->max_body) {
    g.too_big = true;
    return 0;
  }
  g.reply.body.append(data, size * n);
  return size * n;
}
std::size_t small_upload(char *buf, std::size_t size, std::size_t n, void *user) {
  auto &g = *static_cast<SmallRequest *>(user);
  const std::size_t room = size * n;
  if (g.req->body_fd < 0) {
    const std::size_t k = std::min(room, g.req->body.size() - g.body_sent);
    std::memcpy(buf, g.req->body.data() + g.body_sent, k);
    g.body_sent += k;
    return k;
  }
  const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(room, g.req->body_size - g.file_sent));
  if (want == 0) return 0;
  const auto got = ::pread(g.req->body_fd, buf, want, static_cast<off_t>(g.file_sent));
  if (got <= 0) {
    g.file_error = got < 0 ? errno : EIO;  // a file that shrank while it was sent
    return CURL_READFUNC_ABORT;
  }
  g.file_sent += static_cast<std::uint64_t>(got);
  if (g.req->progress) g.req->progress(g.file_sent);
  return static_cast<std::size_t>(got);
}
}  // namespace

HttpReply http_request(const HttpRequest &req, const RemoteOptions &opts) {
  const auto &c = remote::curl_api();
  Easy h(c.easy_init());
  if (!h) throw InternalError("curl_easy_init failed");
  CURL *e = h.get();
  set_common_options(e, opts);
  const bool upload = req.body_fd >= 0 || !req.body.empty();
  if (upload) c.easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);  // an upload takes as long as it takes; stalls below
  c.easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  c.easy_setopt(e, CURLOPT_LOW_SPEED_TIME, static_cast<long>(std::max<std::int64_t>(1, opts.timeout.count() / 1000)));
  HeaderList list(make_header_list(req.headers));
  SmallRequest g{&req, false, {}, 0, 0, 0};
  char errbuf[CURL_ERROR_SIZE] = {};
  c.easy_setopt(e, CURLOPT_URL, req.url.c_str());
  if (req.method == "HEAD")
    c.easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (req.method == "PUT" || req.method == "POST") {
    c.easy_setopt(e, CURLOPT_UPLOAD, 1L);  // PUT
    c.easy_setopt(e, CURLOPT_READFUNCTION, &small_upload);
    c.easy_setopt(e, CURLOPT_READDATA, &g);
    c.easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                  static_cast<curl_off_t>(req.body_fd >= 0 ? req.body_size : req.body.size()));
    if (req.method == "POST") c.easy_setopt(e, CURLOPT_CUSTOMREQUEST, "POST");
  } else if (req.method != "GET") {
    c.easy_setopt(e, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  if (list) c.easy_setopt(e, CURLOPT_HTTPHEADER, list.get());
  c.easy_setopt(e, CURLOPT_HEADERFUNCTION, &small_header);
  c.easy_setopt(e, CURLOPT_HEADERDATA, &g);
  c.easy_setopt(e, CURLOPT_WRITEFUNCTION, &small_body);
  c.easy_setopt(e, CURLOPT_WRITEDATA, &g);
  c.easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
  const CURLcode rc = c.easy_perform(e);
  if (g.too_big) throw FormatError(fmt::format("{}: reply larger than {} bytes", redact_url(req.url), req.max_body));
  if (g.file_error) throw IoError(fmt::format("{}: reading the upload failed", redact_url(req.url)), g.file_error);
  if (rc != CURLE_OK) {
    const std::string detail = errbuf[0] ? first_line(errbuf) : c.easy_strerror(rc);
    throw IoError(fmt::format("{}: {}", redact_url(req.url), detail), rc == CURLE_OPERATION_TIMEDOUT ? ETIMEDOUT : EIO);
  }
  return g.reply;
}

HttpReply http_get(const std::string &url, const std::vector<std::string> &headers, const RemoteOptions &opts,
                   std::size_t max_body) {
  HttpRequest req;
  req.url = url;
  req.headers = headers;
  req.max_body = max_body;
  return http_request(req, opts);
}

bool is_http_url(std::string_view location) noexcept {
  return iequals_prefix(location, "http://") || iequals_prefix(location, "https://");
}

std::string redact_url(std::string_view url) {
  std::string s(url);
  // scheme://[user[:password]@]host... -> scheme://host...
  if (const auto scheme = s.find("://"); scheme != std::string::npos) {
    const auto host = scheme + 3;
    const auto end = s.find_first_of("/?#", host);
    const auto at = s.rfind('@', end == std::string::npos ? std::string::npos : end);
    if (at != std::string::npos && at >= host) s.erase(host, at + 1 - host);
  }
  if (const auto q = s.find('?'); q != std::string::npos) s.replace(q, std::string::npos, "?...");
  return s;
}

std::vector<std::string> mirrors_from_file(const std::string &url, const std::string &path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  if (!in) return out;
  std::string line;
  unsigned number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string prefix, mirror;
    if (!(words >> prefix)) continue;
    std::vector<std::string> alternatives;
    while (words >> mirror) alternatives.push_back(mirror);
    if (alternatives.empty() || !is_http_url(prefix))
      throw UsageError(fmt::format("{}:{}: expected \"URL-PREFIX MIRROR-PREFIX...\"", path, number));
    if (!url.starts_with(prefix)) continue;
    for (const auto &a : alternatives) {
      if (!is_http_url(a)) throw UsageError(fmt::format("{}:{}: {} is not an http(s) URL", path, number, redact_url(a)));
      out.push_back(a + url.substr(prefix.size()));
    }
  }
  return out;
}

std::shared_ptr<const ChunkSource> open_http(const std::string &url, const RemoteOptions &opts) {
  return std::make_shared<HttpSource>(url, opts);
}

}  // namespace torshpkg
