// The test programs' main: Catch2's, after one process-wide setting.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>

#include "ada/topk.hpp"

int main(int argc, char* argv[]) {
  // GPU searches run with fixed launch rules, not autotuned (topk.hpp), unless ADA_TOPK_AUTOTUNE
  // says otherwise: a tuning times up to a dozen launches of each new search shape, which would
  // multiply the time of the many one-off shapes here (most of all in the emulator and under
  // compute-sanitizer). Every launch is tested on its own; "autotuning" tests the tuning.
  if (!std::getenv("ADA_TOPK_AUTOTUNE")) ada::set_gpu_topk_autotune(ada::TopkAutotune::kOff);
  return Catch::Session().run(argc, argv);
}
