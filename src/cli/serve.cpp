#include "src/cli/serve.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <list>
#include <mutex>
#include <thread>

#include "ada/check.hpp"

namespace ada {
namespace cli {

LineReader::Got LineReader::next(std::string& line, bool wait) {
  for (;;) {
    const size_t nl = buf_.find('\n', pos_);
    if (nl != std::string::npos || (eof_ && pos_ < buf_.size())) {
      const size_t end = nl == std::string::npos ? buf_.size() : nl;
      line.assign(buf_, pos_, end - pos_);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      pos_ = nl == std::string::npos ? buf_.size() : nl + 1;
      return Got::kLine;
    }
    if (eof_) return Got::kEnd;
    if (!wait) {
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, 0);
      if (r < 0 && errno == EINTR) continue;
      ADA_CHECK(r >= 0, "serve: poll on the input failed: " << std::strerror(errno));
      if (r == 0) return Got::kNotYet;
    }
    buf_.erase(0, pos_);
    pos_ = 0;
    char chunk[1 << 16];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    ADA_CHECK(n >= 0, "serve: reading the input failed: " << std::strerror(errno));
    if (n == 0)
      eof_ = true;
    else
      buf_.append(chunk, size_t(n));
  }
}

namespace {

struct Request {
  int64_t line_no = 0;
  std::string user;
  std::vector<ItemId> seq;
  std::string error;  // non-empty: the request failed to parse
};

}  // namespace

void serve_lines(LineReader& in, const std::function<void(const std::string&)>& write, int64_t batch,
                 const ServeHooks& hooks, ServeStats& st) {
  std::vector<Request> pending;
  int64_t line_no = 0;
  std::string line;
  auto flush_pending = [&] {
    std::vector<std::vector<ItemId>> seqs;
    for (Request& r : pending)
      if (r.error.empty()) seqs.push_back(std::move(r.seq));
    std::vector<std::vector<Retrieved>> answers;
    if (!seqs.empty()) answers = hooks.answer(seqs);
    ADA_CHECK(answers.size() == seqs.size(),
              "serve: " << answers.size() << " answers for " << seqs.size() << " requests");
    std::string text;
    size_t a = 0;
    for (const Request& r : pending) {
      text += r.error.empty() ? hooks.format(r.user, answers[a++]) : hooks.format_error(r.user, r.line_no, r.error);
      text += '\n';
    }
    write(text);
    pending.clear();
  };
  for (;;) {
    // Block for a batch's first request; after it, take only what has already arrived.
    const LineReader::Got got = in.next(line, pending.empty());
    if (got == LineReader::Got::kLine) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank
      Request r;
      r.line_no = line_no;
      try {
        hooks.parse(line, line_no, r.user, r.seq);
      } catch (const Error& e) {
        r.error = e.what();
        ++st.failed;
        if (st.failed_lines.size() < 10) st.failed_lines.push_back(line_no);
      }
      ++st.requests;
      pending.push_back(std::move(r));
      if (int64_t(pending.size()) < batch) continue;
    }
    if (!pending.empty()) flush_pending();
    if (got == LineReader::Got::kEnd) return;
  }
}

namespace {

// The write end of serve_socket's stop pipe, for its SIGINT / SIGTERM handler.
volatile std::sig_atomic_t g_stop_fd = -1;
void on_stop_signal(int) {
  const int fd = g_stop_fd;
  if (fd >= 0) {
    const char c = 1;
    (void)!::write(fd, &c, 1);  // async-signal-safe
  }
}

void send_all(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    const ssize_t w = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    ADA_CHECK(w > 0, "serve: writing to a connection failed: " << std::strerror(errno));
    off += size_t(w);
  }
}

struct Connection {
  int fd = -1;
  std::thread thread;
  std::atomic<bool> done{false};
};

}  // namespace

ListenStats serve_socket(const std::string& path, int64_t batch, const ServeHooks& hooks) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ADA_CHECK(!path.empty() && path.size() < sizeof addr.sun_path,
            "serve: socket path \"" << path << "\" is empty or longer than " << sizeof addr.sun_path - 1 << " bytes");
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  auto* sa = reinterpret_cast<const sockaddr*>(&addr);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {  // a live server's socket is an error, a stale one is replaced
    ADA_CHECK(S_ISSOCK(st.st_mode), path << ": exists and is not a socket (left as it is)");
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ADA_CHECK(probe >= 0, "serve: socket() failed: " << std::strerror(errno));
    const bool live = ::connect(probe, sa, sizeof addr) == 0;
    ::close(probe);
    ADA_CHECK(!live, path << ": another server is listening there");
    ::unlink(path.c_str());
  }
  // Bound and listening under a temporary name first, then renamed: a client that sees the path
  // can connect at once.
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  sockaddr_un tmp_addr{};
  tmp_addr.sun_family = AF_UNIX;
  ADA_CHECK(tmp.size() < sizeof tmp_addr.sun_path,
            "serve: socket path \"" << path << "\" is too long (" << tmp << " must fit " << sizeof tmp_addr.sun_path - 1
                                   << " bytes)");
  std::memcpy(tmp_addr.sun_path, tmp.c_str(), tmp.size() + 1);
  const int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ADA_CHECK(lfd >= 0, "serve: socket() failed: " << std::strerror(errno));
  ::unlink(tmp.c_str());
  if (::bind(lfd, reinterpret_cast<const sockaddr*>(&tmp_addr), sizeof tmp_addr) != 0 || ::listen(lfd, 128) != 0 ||
      ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::close(lfd);
    ::unlink(tmp.c_str());
    ADA_FAIL(path << ": cannot listen there: " << std::strerror(err));
  }
  int stop[2];
  if (::pipe2(stop, O_CLOEXEC) != 0) {
    const int err = errno;
    ::close(lfd);
    ::unlink(path.c_str());
    ADA_FAIL("serve: pipe2() failed: " << std::strerror(err));
  }
  g_stop_fd = stop[1];
  struct sigaction on{}, old_int{}, old_term{};
  on.sa_handler = on_stop_signal;
  sigemptyset(&on.sa_mask);
  on.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &on, &old_int);
  ::sigaction(SIGTERM, &on, &old_term);
  std::cerr << "ada: serving on " << path << " (SIGINT or SIGTERM stops)" << std::endl;

  ListenStats total;
  std::mutex mu;  // guards total
  std::list<Connection> conns;
  auto reap = [&](bool all) {
    for (auto it = conns.begin(); it != conns.end();) {
      if (!all && !it->done) {
        ++it;
        continue;
      }
      it->thread.join();
      ::close(it->fd);
      it = conns.erase(it);
    }
  };
  for (;;) {
    pollfd p[2] = {{lfd, POLLIN, 0}, {stop[0], POLLIN, 0}};
    const int r = ::poll(p, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      std::cerr << "ada: error: serve: poll failed, stopping: " << std::strerror(errno) << "\n";
      break;
    }
    if (p[1].revents != 0) break;  // SIGINT or SIGTERM
    reap(false);
    if (!(p[0].revents & POLLIN)) continue;
    const int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) continue;  // (the client gave up, or a transient failure: accept the next one)
    conns.emplace_back();
    Connection& c = conns.back();
    c.fd = cfd;
    {
      const std::lock_guard<std::mutex> lock(mu);
      ++total.connections;
    }
    auto serve_one = [&hooks, &total, &mu, &c, batch] {
      ServeStats s;
      try {
        LineReader in(c.fd);
        serve_lines(in, [fd = c.fd](const std::string& text) { send_all(fd, text); }, batch, hooks, s);
      } catch (const std::exception& e) {  // this connection ends; the others go on
        std::cerr << "ada: error: a connection ended: " << e.what() << "\n";
      }
      {
        const std::lock_guard<std::mutex> lock(mu);
        total.requests += s.requests;
        total.failed += s.failed;
      }
      c.done = true;
    };
    try {
      c.thread = std::thread(serve_one);
    } catch (const std::exception& e) {  // (no thread for it: this connection is closed unserved)
      std::cerr << "ada: error: serve: cannot start a connection's thread: " << e.what() << "\n";
      ::close(c.fd);
      conns.pop_back();
    }
  }
  // No new connections; the open ones read to their end and answer what they had received. A client
  // that does not read its answers would hold its thread in a write: after 10 s the connections
  // still open are shut for writing too.
  ::close(lfd);
  ::unlink(path.c_str());
  for (Connection& c : conns) ::shutdown(c.fd, SHUT_RD);
  for (int waited = 0; waited < 1000; ++waited) {
    bool open = false;
    for (const Connection& c : conns) open = open || !c.done;
    if (!open) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (Connection& c : conns)
    if (!c.done) ::shutdown(c.fd, SHUT_RDWR);
  reap(true);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  g_stop_fd = -1;
  ::close(stop[0]);
  ::close(stop[1]);
  return total;
}

}  // namespace cli
}  // namespace ada
