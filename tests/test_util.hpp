// Shared helpers for the Catch2 tests.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>

#include "ada/fileio.hpp"

namespace ada_test {

// Path of ../shared (data, fixtures) as seen from the source tree; ADA_SHARED_DIR overrides it.
inline std::string shared_dir() {
  if (const char* env = std::getenv("ADA_SHARED_DIR")) return env;
  return ADA_SHARED_DIR;
}

// Ends the current test case as skipped (CTest: SKIP_RETURN_CODE 77), saying why.
[[noreturn]] inline void skip(const std::string& why) {
  std::printf("SKIPPED: %s\n", why.c_str());
  std::fflush(stdout);
  std::_Exit(77);
}

// The path of a shared file, or a visible skip when ../shared does not have it.
inline std::string shared_file_or_skip(const std::string& rel) {
  const std::string p = shared_dir() + "/" + rel;
  if (!ada::file_exists(p)) skip(p + " not found (../shared is not here)");
  return p;
}

}  // namespace ada_test
