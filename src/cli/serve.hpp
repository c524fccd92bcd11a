// `ada retrieve --serve`: a long-running process that answers histories as they arrive.
//
// Requests are lines (`user item item ...`, as `--input`) read from a descriptor: a pipe, a FIFO,
// a terminal or a file. The server blocks for the first line of a batch, then takes every further
// line it can read without blocking (up to a batch size), answers them with one retrieve_batch
// call and writes the answers in input order, flushed, before it waits again. A client that sends
// one line and waits gets its answer at once; a client that pipes many lines gets them served in
// full batches. A bad request (an unknown item, k above its candidates) gets an error answer on its
// own output line and the server goes on; errors of the model or device end it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ada/data.hpp"
#include "ada/retriever.hpp"

namespace ada {
namespace cli {

// Lines from a descriptor, each available as soon as its newline has arrived.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  enum class Got { kLine, kNotYet, kEnd };
  // The next line (without its "\n" or "\r\n"; a last line without a newline counts). With
  // wait = false, kNotYet when no whole line is buffered and the descriptor has nothing to read
  // now; with wait = true it blocks until a line or the end of the input. ada::Error on a read error.
  Got next(std::string& line, bool wait);

 private:
  int fd_;
  std::string buf_;
  size_t pos_ = 0;  // the unread part of buf_ starts here
  bool eof_ = false;
};

struct ServeHooks {
  // A request line's user and history (line numbers from 1); throws ada::Error for a bad request.
  // Blank lines never reach it.
  std::function<void(const std::string& line, int64_t line_no, std::string& user, std::vector<ItemId>& seq)> parse;
  // The answers to a batch of histories, in order (retrieve_batch).
  std::function<std::vector<std::vector<Retrieved>>(const std::vector<std::vector<ItemId>>& seqs)> answer;
  // One output line (no newline) for an answer, or for a request that failed with `error`.
  std::function<std::string(const std::string& user, const std::vector<Retrieved>& items)> format;
  std::function<std::string(const std::string& user, int64_t line_no, const std::string& error)> format_error;
};

struct ServeStats {
  int64_t requests = 0, failed = 0;
  std::vector<int64_t> failed_lines;  // the first few
};

// Serves `in` until its end: one line per request, passed to `write` once per batch (the batch's
// lines together, each ending in "\n"), at most `batch` requests per batch. `st` counts as it goes
// (so it holds what was done when an error ends the stream).
void serve_lines(LineReader& in, const std::function<void(const std::string&)>& write, int64_t batch,
                 const ServeHooks& hooks, ServeStats& st);

// `--serve --listen PATH`: a Unix-domain stream socket at `path`; each connection is served by its
// own thread as serve_lines serves a stream, so `hooks` must be thread-safe (answer: a
// BatchingRetriever's, which batches the connections' requests together). A stale socket file at
// `path` is replaced; a live server's socket, or any other file, is an error. Runs until SIGINT or
// SIGTERM, then stops accepting, ends the connections (each gets the answers of the requests it had
// sent), joins their threads and removes the socket.
struct ListenStats {
  int64_t connections = 0, requests = 0, failed = 0;
};
ListenStats serve_socket(const std::string& path, int64_t batch, const ServeHooks& hooks);

}  // namespace cli
}  // namespace ada
