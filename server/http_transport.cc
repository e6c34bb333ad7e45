#include "server/http_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

namespace headwise::server::http {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint64_t kListenId = 0;
constexpr uint64_t kWakeId = 1;
// Timeouts are checked this often; they fire up to this late.
constexpr milliseconds kTick{50};
// A closing connection keeps reading (and dropping) what the client still sends this long, so
// that unread input does not turn our close into a reset that destroys the response in flight.
constexpr milliseconds kLinger{1000};
// Input buffered beyond the request being handled (pipelined requests); reading pauses beyond.
constexpr size_t kMaxPipelinedBytes = 1 << 20;
// Output queued for a client that does not read; beyond it the connection is dropped.
constexpr size_t kMaxQueuedOutput = 32 << 20;
// Connections refused for being over max_connections that may linger at once.
constexpr size_t kMaxRefusedLingering = 1024;

std::string ErrorJson(int status, std::string_view message) {
  const char* code = nullptr;
  switch (status) {
    case 408:
      code = "request_timeout";
      break;
    case 413:
      code = "request_too_large";
      break;
    case 414:
      code = "uri_too_long";
      break;
    case 431:
      code = "headers_too_large";
      break;
    case 503:
      code = "server_overloaded";
      break;
    default:
      break;
  }
  nlohmann::json body = {{"error",
                          {{"message", message},
                           {"type", status < 500 ? "invalid_request_error" : "server_error"},
                           {"param", nullptr},
                           {"code", code ? nlohmann::json(code) : nlohmann::json(nullptr)}}}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// A complete response that closes the connection (transport-level errors and refusals).
std::string ClosingResponse(int status, std::string_view message) {
  const std::string body = ErrorJson(status, message);
  std::string out = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n{}\r\n",
      status, ReasonPhrase(status), body.size(), status == 503 ? "Retry-After: 1\r\n" : "");
  return out + body;
}

}  // namespace

// The loop's state. Everything in the "loop thread" part is touched only by the loop thread;
// the outbox and the work queue are how other threads reach it.
class Loop : public std::enable_shared_from_this<Loop> {
 public:
  Loop(TransportOptions options, Handler handler, ResponseObserver observer)
      : opts_(std::move(options)), handler_(std::move(handler)), observer_(std::move(observer)) {}

  ~Loop() {
    for (auto& [id, c] : conns_) ::close(c.fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  StatusOr<int> Bind();
  void Run();
  void Stop(milliseconds drain) {
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      if (stop_requested_) return;
      stop_requested_ = true;
      drain_deadline_ = Clock::now() + drain;
    }
    Wake();
  }
  bool stopping() const { return stopping_flag_.load(std::memory_order_relaxed); }

  // From any thread: bytes for connection `id`; `last` ends the response, `close` closes the
  // connection after it.
  void Post(uint64_t id, std::string bytes, bool last, bool close) {
    bool was_empty;
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      was_empty = outbox_.empty();
      outbox_.push_back(Outgoing{id, std::move(bytes), last, close});
    }
    if (was_empty) Wake();
  }

  void Observe(const Request& req, int status) {
    if (observer_) observer_(req, status);
  }

 private:
  enum class Phase { kRead, kHandling, kLinger };
  struct Conn {
    uint64_t id = 0;
    int fd = -1;
    Phase phase = Phase::kRead;
    bool first_request = true;
    bool refused = false;
    RequestParser parser;
    std::string in;  // received, not yet parsed
    std::string out;
    size_t out_off = 0;
    bool response_done = false;  // the current response is queued whole
    bool close_after = false;
    bool continue_sent = false;
    bool reading = true;   // EPOLLIN registered
    bool writing = false;  // EPOLLOUT registered
    Clock::time_point deadline = Clock::time_point::max();
    Clock::time_point head_start;  // first byte of the current request head
    Clock::time_point write_stall_since = Clock::time_point::max();
    std::shared_ptr<std::atomic<bool>> gone = std::make_shared<std::atomic<bool>>(false);
    explicit Conn(const ParserLimits& limits) : parser(limits) {}
  };
  struct Outgoing {
    uint64_t id;
    std::string bytes;
    bool last;
    bool close;
  };

  void Wake() {
    const uint64_t one = 1;
    ssize_t rc = ::write(wake_fd_, &one, sizeof(one));
    (void)rc;  // a full counter already means a wake-up is pending
  }
  void UpdateEvents(Conn& c) {
    epoll_event ev{};
    ev.events = EPOLLRDHUP | (c.reading ? EPOLLIN : 0u) | (c.writing ? EPOLLOUT : 0u);
    ev.data.u64 = c.id;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }
  void Accept();
  void OnEvent(Conn& c, uint32_t events);
  void ReadInput(Conn& c, bool& peer_closed);
  void Parse(Conn& c);
  void Dispatch(Conn& c);
  void Flush(Conn& c);
  void AfterResponse(Conn& c);
  void Refuse(Conn& c, int status, std::string_view message);
  void StartLinger(Conn& c);
  void Close(uint64_t id);
  void DrainOutbox();
  void CheckTimers(Clock::time_point now);
  void WorkerLoop();

  TransportOptions opts_;
  Handler handler_;
  ResponseObserver observer_;
  int listen_fd_ = -1, epoll_fd_ = -1, wake_fd_ = -1;
  bool listening_paused_ = false;
  Clock::time_point accept_resume_ = Clock::time_point::min();

  // Loop thread.
  std::unordered_map<uint64_t, Conn> conns_;
  uint64_t next_id_ = 2;
  size_t refused_lingering_ = 0;
  std::atomic<int> open_count_{0};

  // Any thread.
  std::mutex out_mu_;
  std::vector<Outgoing> outbox_;
  bool stop_requested_ = false;
  Clock::time_point drain_deadline_;
  std::atomic<bool> stopping_flag_{false};

  std::mutex work_mu_;
  std::condition_variable work_cv_;
  std::deque<std::shared_ptr<Exchange>> work_;
  bool workers_stop_ = false;
  std::vector<std::thread> workers_;

  friend class SocketExchange;
};

// An exchange whose response goes to a connection of the loop, written by the loop's thread.
class SocketExchange final : public Exchange {
 public:
  SocketExchange(std::shared_ptr<Loop> loop, uint64_t connection_id, Request request,
                 std::shared_ptr<std::atomic<bool>> gone);
  ~SocketExchange() override;  // an exchange dropped without a response answers 500

  void Reply(int status, std::string_view content_type, std::string body,
             Headers headers = {}) override;
  void StartStream(int status, std::string_view content_type, Headers headers = {}) override;
  bool Write(std::string_view chunk) override;
  void End() override;
  bool gone() const override { return gone_->load(std::memory_order_relaxed); }

 private:
  std::string Head(int status, std::string_view content_type, const Headers& headers);

  std::shared_ptr<Loop> loop_;
  uint64_t connection_id_;
  std::shared_ptr<std::atomic<bool>> gone_;
  bool streaming_ = false;
  bool chunked_ = false;
  bool ended_ = false;
};

StatusOr<int> Loop::Bind() {
  // Each connection is a descriptor: take the hard limit, and keep max_connections inside it.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    const auto usable = static_cast<int64_t>(rl.rlim_cur) - 256;  // model files, pipes, logs
    if (usable < opts_.max_connections) {
      spdlog::warn("--max-connections {} lowered to {}: the process may open {} files",
                   opts_.max_connections, std::max<int64_t>(usable, 16), rl.rlim_cur);
      opts_.max_connections = static_cast<int>(std::max<int64_t>(usable, 16));
    }
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(opts_.port);
  if (int rc = getaddrinfo(opts_.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return InvalidArgument("cannot listen on {}:{}: {}", opts_.host, opts_.port, gai_strerror(rc));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    const int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    // SO_REUSEADDR only: SO_REUSEPORT would let a second server share a busy port.
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, opts_.backlog) == 0) {
      listen_fd_ = fd;
      break;
    }
    last_error = std::strerror(errno);
    ::close(fd);
  }
  freeaddrinfo(res);
  if (listen_fd_ < 0) {
    return InvalidArgument("cannot listen on {}:{} ({})", opts_.host, opts_.port, last_error);
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  const int bound = addr.ss_family == AF_INET6
                        ? ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port)
                        : ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return Internal("epoll/eventfd: {}", std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.u64 = kWakeId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  return bound;
}

void Loop::Run() {
  for (int i = 0; i < std::max(1, opts_.worker_threads); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
  std::vector<epoll_event> events(256);
  Clock::time_point next_tick = Clock::now() + kTick;
  while (true) {
    bool stop_now = false;
    Clock::time_point deadline;
    {
      std::lock_guard<std::mutex> lock(out_mu_);
      stop_now = stop_requested_;
      deadline = drain_deadline_;
    }
    if (stop_now && !stopping()) {
      stopping_flag_ = true;
      if (listen_fd_ >= 0) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        ::close(listen_fd_);
        listen_fd_ = -1;
      }
      // Connections between requests close now; those with a response in progress finish it.
      std::vector<uint64_t> idle;
      for (auto& [id, c] : conns_) {
        if (c.phase == Phase::kRead) idle.push_back(id);
      }
      for (uint64_t id : idle) Close(id);
    }
    if (stopping() && (conns_.empty() || Clock::now() >= deadline)) break;

    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                             static_cast<int>(kTick.count()));
    for (int i = 0; i < n; ++i) {
      const uint64_t id = events[i].data.u64;
      if (id == kListenId) {
        Accept();
      } else if (id == kWakeId) {
        uint64_t count;
        ssize_t rc = ::read(wake_fd_, &count, sizeof(count));
        (void)rc;
        DrainOutbox();
      } else if (auto it = conns_.find(id); it != conns_.end()) {
        OnEvent(it->second, events[i].events);
      }
    }
    const auto now = Clock::now();
    if (now >= next_tick) {
      CheckTimers(now);
      next_tick = now + kTick;
    }
  }
  // Past the drain deadline: whatever is left is cut off (its handlers see gone()).
  std::vector<uint64_t> left;
  for (auto& [id, c] : conns_) left.push_back(id);
  for (uint64_t id : left) Close(id);
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    workers_stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void Loop::Accept() {
  while (true) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    const int fd =
        accept4(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: leave the rest in the listen queue for a moment instead of
        // spinning on a readable listener.
        spdlog::warn("accept: {}; pausing for {} ms", std::strerror(errno), kTick.count());
        epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
        listening_paused_ = true;
        accept_resume_ = Clock::now() + kTick;
      }
      return;
    }
    int yes = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    const bool over = open_count_.load() >= opts_.max_connections;
    if (over && refused_lingering_ >= kMaxRefusedLingering) {
      ::close(fd);
      continue;
    }
    const uint64_t id = next_id_++;
    Conn& c = conns_.emplace(id, Conn(opts_.limits)).first->second;
    c.id = id;
    c.fd = fd;
    c.deadline = Clock::now() + opts_.header_timeout;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = id;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
    if (over) {
      c.refused = true;
      ++refused_lingering_;
      Refuse(c, 503,
             fmt::format("the server has {} connections open, its limit; retry shortly",
                         opts_.max_connections));
    } else {
      ++open_count_;
    }
  }
}

void Loop::OnEvent(Conn& c, uint32_t events) {
  const uint64_t id = c.id;
  if (events & EPOLLERR) return Close(id);
  if (events & EPOLLOUT) {
    Flush(c);
    if (!conns_.count(id)) return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
    // A hang-up is final even when reading is paused (a level-triggered EPOLLRDHUP would
    // otherwise fire forever). A client that only half-closes is treated as gone, as a client
    // that disconnects must abort its generation.
    bool peer_closed = (events & (EPOLLRDHUP | EPOLLHUP)) != 0;
    ReadInput(c, peer_closed);
    if (!conns_.count(id)) return;
    if (c.phase == Phase::kLinger) {
      if (peer_closed) Close(id);
      return;
    }
    if (c.phase == Phase::kRead) Parse(c);
    if (!conns_.count(id)) return;
    // The client closed its end: nothing more can arrive, and a response in progress has no
    // reader (a half-closed client is treated as gone, as before).
    if (peer_closed) Close(id);
  }
}

void Loop::ReadInput(Conn& c, bool& peer_closed) {
  char buf[65536];
  while (true) {
    // The parser takes input a buffer at a time, so a body over the limit is refused before
    // more of it is held; the rest stays in the socket (level-triggered: it wakes us again).
    if (c.phase == Phase::kRead && c.in.size() >= sizeof(buf)) return;
    if (c.phase == Phase::kHandling && c.in.size() >= kMaxPipelinedBytes) {
      // Enough buffered behind the current request; stop reading (hang-ups still arrive).
      if (c.reading) {
        c.reading = false;
        UpdateEvents(c);
      }
      return;
    }
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
    if (n > 0) {
      if (c.phase != Phase::kLinger) c.in.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      peer_closed = true;
      return;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) peer_closed = true;
    return;
  }
}

void Loop::Parse(Conn& c) {
  while (c.phase == Phase::kRead && !c.in.empty()) {
    const bool was_started = c.parser.started();
    const size_t used = c.parser.Feed(c.in);
    c.in.erase(0, used);
    const auto now = Clock::now();
    if (!was_started && c.parser.started()) c.head_start = now;
    switch (c.parser.state()) {
      case RequestParser::State::kError:
        Observe(c.parser.request(), c.parser.error_status());
        return Refuse(c, c.parser.error_status(), c.parser.error_message());
      case RequestParser::State::kHead:
        c.deadline = c.head_start + opts_.header_timeout;
        return;
      case RequestParser::State::kBody:
        if (c.parser.request().expect_continue && !c.continue_sent) {
          c.continue_sent = true;
          c.out += "HTTP/1.1 100 Continue\r\n\r\n";
          Flush(c);
          if (!conns_.count(c.id)) return;
        }
        c.deadline = now + opts_.body_timeout;  // a gap, renewed by every byte
        return;
      case RequestParser::State::kDone:
        Dispatch(c);
        return;
    }
  }
}

void Loop::Dispatch(Conn& c) {
  c.phase = Phase::kHandling;
  c.first_request = false;
  c.deadline = Clock::time_point::max();
  c.response_done = false;
  auto ex =
      std::make_shared<SocketExchange>(shared_from_this(), c.id, c.parser.TakeRequest(), c.gone);
  {
    std::lock_guard<std::mutex> lock(work_mu_);
    work_.push_back(std::move(ex));
  }
  work_cv_.notify_one();
}

void Loop::WorkerLoop() {
  while (true) {
    std::shared_ptr<Exchange> ex;
    {
      std::unique_lock<std::mutex> lock(work_mu_);
      work_cv_.wait(lock, [&] { return workers_stop_ || !work_.empty(); });
      if (work_.empty()) return;
      ex = std::move(work_.front());
      work_.pop_front();
    }
    try {
      handler_(ex);
    } catch (const std::exception& e) {
      spdlog::error("{} {}: {}", ex->request().method, ex->request().path, e.what());
      if (!ex->responded()) {
        ex->Reply(500, "application/json",
                  ErrorJson(500, std::string("internal server error: ") + e.what()));
      }
    }
  }
}

void Loop::DrainOutbox() {
  std::vector<Outgoing> items;
  {
    std::lock_guard<std::mutex> lock(out_mu_);
    items.swap(outbox_);
  }
  std::vector<uint64_t> touched;
  for (auto& item : items) {
    auto it = conns_.find(item.id);
    if (it == conns_.end() || it->second.phase != Phase::kHandling) continue;
    Conn& c = it->second;
    c.out += item.bytes;
    if (item.last) c.response_done = true;
    if (item.close) c.close_after = true;
    if (touched.empty() || touched.back() != item.id) touched.push_back(item.id);
  }
  for (uint64_t id : touched) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Conn& c = it->second;
    if (c.out.size() - c.out_off > kMaxQueuedOutput) {
      spdlog::warn("connection {}: over {} bytes queued for a client that does not read; closed",
                   id, kMaxQueuedOutput);
      Close(id);
      continue;
    }
    Flush(c);
  }
}

void Loop::Flush(Conn& c) {
  while (c.out_off < c.out.size()) {
    const ssize_t n =
        ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += static_cast<size_t>(n);
      c.write_stall_since = Clock::time_point::max();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (c.write_stall_since == Clock::time_point::max()) c.write_stall_since = Clock::now();
      if (!c.writing) {
        c.writing = true;
        UpdateEvents(c);
      }
      return;
    }
    return Close(c.id);  // reset or broken pipe
  }
  c.out.clear();
  c.out_off = 0;
  c.write_stall_since = Clock::time_point::max();
  if (c.writing) {
    c.writing = false;
    UpdateEvents(c);
  }
  if (c.phase == Phase::kHandling && c.response_done)
    AfterResponse(c);
  else if (c.phase == Phase::kLinger && !c.writing) {
    // Everything is sent: close our side and wait for the client's.
    ::shutdown(c.fd, SHUT_WR);
  }
}

void Loop::AfterResponse(Conn& c) {
  if (c.close_after || stopping()) return StartLinger(c);
  c.phase = Phase::kRead;
  c.parser.Reset();
  c.continue_sent = false;
  c.deadline = Clock::now() + opts_.keep_alive_timeout;
  if (!c.reading) {
    c.reading = true;
    UpdateEvents(c);
  }
  Parse(c);  // a pipelined request may already be here
}

void Loop::Refuse(Conn& c, int status, std::string_view message) {
  c.phase = Phase::kHandling;  // so that the response is queued like any other
  c.out += ClosingResponse(status, message);
  c.close_after = true;
  c.response_done = true;
  c.in.clear();
  Flush(c);
}

void Loop::StartLinger(Conn& c) {
  c.phase = Phase::kLinger;
  c.in.clear();
  c.deadline = Clock::now() + kLinger;
  if (!c.reading) {
    c.reading = true;
    UpdateEvents(c);
  }
  if (c.out_off >= c.out.size()) ::shutdown(c.fd, SHUT_WR);
}

void Loop::Close(uint64_t id) {
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  c.gone->store(true);
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
  ::close(c.fd);
  if (c.refused) {
    --refused_lingering_;
  } else {
    --open_count_;
  }
  conns_.erase(it);
}

void Loop::CheckTimers(Clock::time_point now) {
  if (listening_paused_ && now >= accept_resume_ && listen_fd_ >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenId;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
    listening_paused_ = false;
  }
  std::vector<uint64_t> expired;
  for (auto& [id, c] : conns_) {
    if (c.write_stall_since != Clock::time_point::max() &&
        now - c.write_stall_since > opts_.write_timeout) {
      expired.push_back(id);
    } else if (c.phase != Phase::kHandling && now >= c.deadline) {
      expired.push_back(id);
    }
  }
  for (uint64_t id : expired) {
    auto it = conns_.find(id);
    if (it == conns_.end()) continue;
    Conn& c = it->second;
    if (c.phase == Phase::kRead && c.parser.started()) {
      const bool head = c.parser.state() == RequestParser::State::kHead;
      Observe(c.parser.request(), 408);
      Refuse(c, 408,
             head ? fmt::format("the request head did not arrive within {} ms",
                                opts_.header_timeout.count())
                  : fmt::format("the request body stalled for {} ms", opts_.body_timeout.count()));
      continue;
    }
    Close(id);
  }
}

// ---- Exchange ---------------------------------------------------------------------------------

SocketExchange::SocketExchange(std::shared_ptr<Loop> loop, uint64_t connection_id, Request request,
                               std::shared_ptr<std::atomic<bool>> gone)
    : Exchange(std::move(request)),
      loop_(std::move(loop)),
      connection_id_(connection_id),
      gone_(std::move(gone)) {}

SocketExchange::~SocketExchange() {
  if (gone()) return;
  if (!responded()) {
    Reply(500, "application/json", ErrorJson(500, "internal server error: no response"));
  } else if (streaming_ && !ended_) {
    End();
  }
}

std::string SocketExchange::Head(int status, std::string_view content_type,
                                 const Headers& headers) {
  status_ = status;
  loop_->Observe(request_, status);
  std::string head = fmt::format("HTTP/1.1 {} {}\r\n", status, ReasonPhrase(status));
  if (!content_type.empty()) head += fmt::format("Content-Type: {}\r\n", content_type);
  for (const auto& [k, v] : headers) head += fmt::format("{}: {}\r\n", k, v);
  return head;
}

void SocketExchange::Reply(int status, std::string_view content_type, std::string body,
                           Headers headers) {
  if (responded()) return;
  const bool close = !request_.keep_alive || loop_->stopping();
  std::string out = Head(status, content_type, headers);
  out += fmt::format("Content-Length: {}\r\nConnection: {}\r\n\r\n", body.size(),
                     close ? "close" : "keep-alive");
  out += body;
  ended_ = true;
  if (!gone()) loop_->Post(connection_id_, std::move(out), /*last=*/true, close);
}

void SocketExchange::StartStream(int status, std::string_view content_type, Headers headers) {
  if (responded()) return;
  streaming_ = true;
  // HTTP/1.0 has no chunked coding: the body ends when the connection does.
  chunked_ = request_.version_minor >= 1;
  const bool close = !chunked_ || !request_.keep_alive || loop_->stopping();
  std::string out = Head(status, content_type, headers);
  if (chunked_) out += "Transfer-Encoding: chunked\r\n";
  out += fmt::format("Connection: {}\r\n\r\n", close ? "close" : "keep-alive");
  if (close) request_.keep_alive = false;
  if (!gone()) loop_->Post(connection_id_, std::move(out), /*last=*/false, close);
}

bool SocketExchange::Write(std::string_view chunk) {
  if (gone()) return false;
  if (!streaming_ || ended_) return true;
  if (chunk.empty()) return true;
  std::string out;
  if (chunked_) {
    out = fmt::format("{:x}\r\n", chunk.size());
    out += chunk;
    out += "\r\n";
  } else {
    out = std::string(chunk);
  }
  loop_->Post(connection_id_, std::move(out), /*last=*/false, /*close=*/false);
  return true;
}

void SocketExchange::End() {
  if (!streaming_ || ended_) return;
  ended_ = true;
  if (gone()) return;
  loop_->Post(connection_id_, chunked_ ? "0\r\n\r\n" : "", /*last=*/true, !request_.keep_alive);
}

// ---- Transport --------------------------------------------------------------------------------

Transport::Transport(TransportOptions options, Handler handler, ResponseObserver observer)
    : loop_(std::make_shared<Loop>(std::move(options), std::move(handler), std::move(observer))) {}
Transport::~Transport() = default;
StatusOr<int> Transport::Bind() {
  return loop_->Bind();
}
void Transport::Run() {
  loop_->Run();
}
void Transport::Stop(std::chrono::milliseconds drain_deadline) {
  loop_->Stop(drain_deadline);
}

}  // namespace headwise::server::http
