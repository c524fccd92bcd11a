#include "src/cli/serve.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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

ServeStats serve_lines(LineReader& in, std::FILE* out, int64_t batch, const ServeHooks& hooks) {
  ServeStats st;
  std::vector<Request> pending;
  int64_t line_no = 0, ok = 0;
  std::string line;
  auto flush_pending = [&] {
    std::vector<std::vector<ItemId>> seqs;
    seqs.reserve(size_t(ok));
    for (Request& r : pending)
      if (r.error.empty()) seqs.push_back(std::move(r.seq));
    std::vector<std::vector<Retrieved>> answers;
    if (!seqs.empty()) answers = hooks.answer(seqs);
    ADA_CHECK(answers.size() == seqs.size(), "serve: " << answers.size() << " answers for " << seqs.size() << " requests");
    std::string text;
    size_t a = 0;
    for (const Request& r : pending) {
      text += r.error.empty() ? hooks.format(r.user, answers[a++]) : hooks.format_error(r.user, r.line_no, r.error);
      text += '\n';
    }
    ADA_CHECK(std::fwrite(text.data(), 1, text.size(), out) == text.size() && std::fflush(out) == 0,
              "serve: writing the answers failed: " << std::strerror(errno));
    st.batches += seqs.empty() ? 0 : 1;
    pending.clear();
    ok = 0;
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
      if (r.error.empty()) ++ok;
      pending.push_back(std::move(r));
      if (int64_t(pending.size()) < batch) continue;
    }
    if (!pending.empty()) flush_pending();
    if (got == LineReader::Got::kEnd) return st;
  }
}

}  // namespace cli
}  // namespace ada
