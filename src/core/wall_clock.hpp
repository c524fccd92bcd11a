// Wall-clock timing for the library's own reports (training epochs, serving profiles).
#pragma once
#include <chrono>

namespace ada {

using WallClock = std::chrono::steady_clock;

inline double seconds_since(WallClock::time_point t0) {
  return std::chrono::duration<double>(WallClock::now() - t0).count();
}

}  // namespace ada
