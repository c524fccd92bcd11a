// Errors that survive release builds: ADA_CHECK(cond, msg) throws ada::Error naming file:line.
// Use it for every condition a user (bad input, bad shapes) can reach; never a bare assert.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ada {

// Every error this library raises on bad input or a broken invariant.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] inline void throw_check(const char* file, int line, const std::string& msg) {
  std::ostringstream os;
  os << msg << " [" << file << ":" << line << "]";
  throw Error(os.str());
}
}  // namespace detail

}  // namespace ada

// ADA_CHECK(cond, a << b << c): the message is a stream expression, built only on failure.
#define ADA_CHECK(cond, msg)                                        \
  do {                                                              \
    if (!(cond)) {                                                  \
      std::ostringstream ada_check_os_;                             \
      ada_check_os_ << msg;                                         \
      ::ada::detail::throw_check(__FILE__, __LINE__, ada_check_os_.str()); \
    }                                                               \
  } while (0)

// ADA_FAIL(a << b): unconditional error with the same format.
#define ADA_FAIL(msg) ADA_CHECK(false, msg)
