// Runs the `ada` tool the way a user does (shared by the cli_* tests).
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

namespace ada_test {

struct Run {
  int code;         // exit status (-1 when killed by a signal)
  std::string out;  // stdout and stderr together
};

inline Run run_ada(const std::string& args) {
  const std::string cmd = std::string(ADA_CLI_PATH) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace ada_test
