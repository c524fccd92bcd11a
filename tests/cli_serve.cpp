// `ada retrieve --serve`: a process that stays up and answers histories as they arrive.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ada/fileio.hpp"
#include "tests/cli_run.hpp"

namespace fs = std::filesystem;
using ada::write_file_atomic;
using ada_test::Run;
using ada_test::run_ada;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream is(text);
  for (std::string line; std::getline(is, line);) out.push_back(line);
  return out;
}

// The next line from fd (buf keeps what came after it), waiting at most `seconds`; "<timeout>" or
// "<eof>" otherwise.
std::string next_line(int fd, std::string& buf, int seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  for (;;) {
    const size_t nl = buf.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return "<timeout>";
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(left.count())) <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n <= 0) return "<eof>";
    buf.append(chunk, size_t(n));
  }
}

// A client of `ada retrieve --listen`: a connection to its socket.
class Client {
 public:
  explicit Client(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof a.sun_path);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  }
  ~Client() { ::close(fd_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  void send(const std::string& text) {
    REQUIRE(::send(fd_, text.data(), text.size(), MSG_NOSIGNAL) == ssize_t(text.size()));
  }
  std::string read_line() { return next_line(fd_, buf_, 120); }

 private:
  int fd_ = -1;
  std::string buf_;
};

// `ada` with its standard input, output and error on pipes, so that a test can talk to it a line at
// a time.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    std::signal(SIGPIPE, SIG_IGN);  // a child that died early fails a write, not this process
    int in[2], out[2], err[2];
    REQUIRE(::pipe(in) == 0);
    REQUIRE(::pipe(out) == 0);
    REQUIRE(::pipe(err) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      for (int fd : {in[0], in[1], out[0], out[1], err[0], err[1]}) ::close(fd);
      std::vector<char*> argv;
      std::string path = ADA_CLI_PATH;
      argv.push_back(path.data());
      std::vector<std::string> copy = args;
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(path.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    ::close(err[1]);
    in_ = in[1];
    out_ = out[0];
    err_ = err[0];
  }
  ~Child() {
    close_input();
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(out_);
    ::close(err_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  void send(const std::string& text) {
    REQUIRE(::write(in_, text.data(), text.size()) == ssize_t(text.size()));
  }
  void signal(int sig) { ::kill(pid_, sig); }
  void close_input() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
  }
  // The next line of standard output, waiting at most `seconds`; "<timeout>" or "<eof>" otherwise.
  std::string read_line(int seconds = 120) { return next_line(out_, buf_, seconds); }
  // Waits for the exit; returns the status and standard error.
  int wait(std::string& err) {
    close_input();
    char chunk[4096];
    for (ssize_t n; (n = ::read(err_, chunk, sizeof chunk)) > 0;) err.append(chunk, size_t(n));
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1, err_ = -1;
  std::string buf_;
};

}  // namespace

// One tiny Ada model serves every block. --serve answers a file as --input does (text, and one
// JSON object per line for --json); it answers a line written to its standard input while that
// stays open (the answers equal one-history --seq calls); a bad request gets an error line naming
// the line and the value, the requests after it are answered, and the exit status is 1 at the end.
TEST_CASE("ada retrieve --serve answers each request as it arrives and reports bad ones in line", "[cli]") {
  const fs::path dir = fs::temp_directory_path() / ("ada_cli_serve_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const Run t = run_ada("train --ada --rounds 2 --total-k 10 --out " + (dir / "m").string() +
                        " --epochs 2 --max-batches 3 --hidden 16 --heads 2 --inner 32 --threads 2 --seed 9");
  INFO(t.out);
  REQUIRE(t.code == 0);
  const std::string ck = " --checkpoint " + (dir / "m").string() + " -k 7 -T 2 ";
  const std::string in = (dir / "in.txt").string();
  write_file_atomic(in, "alice 3 17\nbob\n\ncarol 5 6 7 8 9\ndave 42");  // a blank line; no final newline

  {  // a file: the same lines as --input, plain and JSON
    const Run want = run_ada("retrieve" + ck + "--input " + in);
    const Run got = run_ada("retrieve" + ck + "--serve --input " + in);
    INFO(want.out << "\n---\n" << got.out);
    REQUIRE(want.code == 0);
    REQUIRE(got.code == 0);
    REQUIRE(lines_of(want.out).size() == 4);
    CHECK(got.out == want.out);
    const Run want_json = run_ada("retrieve" + ck + "--input " + in + " --json");
    const Run got_json = run_ada("retrieve" + ck + "--serve --input " + in + " --json");
    REQUIRE(got_json.code == 0);
    const nlohmann::json all = nlohmann::json::parse(want_json.out);
    const std::vector<std::string> objects = lines_of(got_json.out);
    REQUIRE(objects.size() == all.size());
    for (size_t i = 0; i < objects.size(); ++i) CHECK(nlohmann::json::parse(objects[i]) == all[i]);
  }
  {  // standard input, a request at a time
    std::vector<std::string> args = {"retrieve", "--checkpoint", (dir / "m").string(), "-k", "7", "-T", "2", "--serve"};
    Child c(args);
    const Run one = run_ada("retrieve" + ck + "--seq \"3 17\"");
    REQUIRE(one.code == 0);
    c.send("alice 3 17\n");
    CHECK(c.read_line() == "alice:" + lines_of(one.out).at(0));  // answered with the input still open
    c.send("bob 4 x9\n");
    const std::string bad = c.read_line();
    CHECK(bad.rfind("bob: error: stdin:2: item id \"x9\"", 0) == 0);
    c.send("\ncarol 5 6 7 8 9\n");
    const Run three = run_ada("retrieve" + ck + "--seq \"5 6 7 8 9\"");
    CHECK(c.read_line() == "carol:" + lines_of(three.out).at(0));
    std::string err;
    CHECK(c.wait(err) == 1);
    CHECK(err.find("1 of 3 requests failed (stdin lines 2)") != std::string::npos);
  }
  {  // JSON Lines errors; k above a history's candidates fails that request only
    // 1,500 items: u1 leaves 1,497; u4's id has a NUL byte inside
    const char lines[] = "u1 1 2 3\nu2 7\nu3 99999\nu4 12\0x\n";
    write_file_atomic(in, std::string(lines, sizeof lines - 1));
    const Run r =
        run_ada("retrieve --checkpoint " + (dir / "m").string() + " -k 1498 -T 2 --serve --json --input " + in);
    INFO(r.out);
    CHECK(r.code == 1);
    const std::vector<std::string> out = lines_of(r.out);
    REQUIRE(out.size() == 5);  // four answers, then the summary on stderr (run_ada merges the two)
    const nlohmann::json e1 = nlohmann::json::parse(out[0]), ok = nlohmann::json::parse(out[1]),
                         e3 = nlohmann::json::parse(out[2]);
    CHECK(e1["user"] == "u1");
    CHECK(e1["line"] == 1);
    CHECK(e1["error"].get<std::string>().find("k = 1498 but the history leaves only 1497") != std::string::npos);
    CHECK(ok["user"] == "u2");
    CHECK(ok["items"].size() == 1498);
    CHECK(e3["line"] == 3);
    CHECK(e3["error"].get<std::string>().find("99999") != std::string::npos);
    const nlohmann::json e4 = nlohmann::json::parse(out[3]);
    CHECK(e4["line"] == 4);
    CHECK(e4["error"].get<std::string>().find("item id \"12\\x00x\" is not an item of the model") != std::string::npos);
    CHECK(r.out.find("3 of 4 requests failed") != std::string::npos);
  }
  {  // what --serve refuses before serving
    const Run seq = run_ada("retrieve" + ck + "--serve --seq \"3\"");
    CHECK(seq.code != 0);
    CHECK(seq.out.find("--serve reads histories from --input") != std::string::npos);
    const Run missing = run_ada("retrieve" + ck + "--serve --input " + (dir / "none.txt").string());
    CHECK(missing.code != 0);
    CHECK(missing.out.find("none.txt: cannot open") != std::string::npos);
  }
  fs::remove_all(dir);
}

// --listen: a Unix-domain socket whose connections send request lines and read answer lines, their
// requests served through one model (a BatchingRetriever); a lone request is answered at once and
// equals a one-history --seq call; a bad request gets its error line on its own connection; a second
// server on a live socket is refused, a stale socket file is replaced, any other file is left alone;
// SIGTERM stops the server with status 0, a count of what it served, and the socket removed.
TEST_CASE("ada retrieve --listen serves connections through one model and stops cleanly on SIGTERM", "[cli]") {
  const fs::path dir = fs::temp_directory_path() / ("ada_cli_listen_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string model = (dir / "m").string();
  const Run t = run_ada("train --ada --rounds 2 --total-k 10 --out " + model +
                        " --epochs 2 --max-batches 3 --hidden 16 --heads 2 --inner 32 --threads 2 --seed 9");
  INFO(t.out);
  REQUIRE(t.code == 0);
  const std::string sock = (dir / "ada.sock").string();
  auto wait_for_socket = [&] {
    for (int i = 0; i < 600 && !fs::is_socket(sock); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return fs::is_socket(sock);
  };
  {  // a stale socket file (its server gone) is replaced
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
    REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
    ::close(fd);
    REQUIRE(fs::is_socket(sock));
  }
  Child server({"retrieve", "--checkpoint", model, "-k", "7", "-T", "2", "--listen", sock});
  REQUIRE(wait_for_socket());
  {
    const std::string ck = " --checkpoint " + model + " -k 7 -T 2 ";
    const Run one = run_ada("retrieve" + ck + "--seq \"3 17\"");
    const Run three = run_ada("retrieve" + ck + "--seq \"5 6 7 8 9\"");
    REQUIRE(one.code == 0);
    REQUIRE(three.code == 0);
    Client a(sock), b(sock);
    a.send("alice 3 17\n");
    CHECK(a.read_line() == "alice:" + lines_of(one.out).at(0));
    b.send("bob 4 x9\ncarol 5 6 7 8 9\n");
    CHECK(b.read_line().rfind("bob: error: " + sock + ":1: item id \"x9\"", 0) == 0);
    CHECK(b.read_line() == "carol:" + lines_of(three.out).at(0));
    // a second server on the live socket is refused
    const Run second = run_ada("retrieve" + ck + "--listen " + sock);
    CHECK(second.code != 0);
    CHECK(second.out.find("another server is listening there") != std::string::npos);
  }
  server.signal(SIGTERM);
  std::string err;
  CHECK(server.wait(err) == 0);
  INFO(err);
  // (three connections: the two clients and the refused second server's probe)
  CHECK(err.find("stopped: 3 requests (1 refused) from 3 connections, 2 answered in 2 batches") != std::string::npos);
  CHECK(!fs::exists(sock));
  {  // any other file at the path is an error, and stays
    write_file_atomic(sock, "not a socket\n");
    const Run r = run_ada("retrieve --checkpoint " + model + " -k 7 -T 2 --listen " + sock);
    CHECK(r.code != 0);
    CHECK(r.out.find("exists and is not a socket") != std::string::npos);
    CHECK(ada::read_file(sock) == "not a socket\n");
  }
  fs::remove_all(dir);
}
