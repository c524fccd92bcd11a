// The golden fixture (../shared/fixtures) on the CUDA backend: the same checks as the CPU's
// (tests/fixture_util.hpp: the base model's round 0, every Ada round's user vector and context, the
// evaluator's lists through the fused top-k kernel, one training step's loss and gradients) with
// the model, its forward, search and backward on the GPU. Without a device, or without ../shared,
// each case ends as skipped (exit 77), never as passed. Tagged [fixture] so that scripts/cuda-emu
// can leave them out, saying so, where ../shared/fixtures is absent (its one process cannot skip a
// single case).
#include <catch2/catch.hpp>

#include "ada/cuda_backend.hpp"
#include "tests/cuda_test_util.hpp"
#include "tests/fixture_util.hpp"

using namespace ada;
using ada_test::require_gpu;

TEST_CASE("CUDA fixture: base SASRec round-0 user vectors and top-20 match the reference",
          "[cuda][model][fixture]") {
  require_gpu();
  auto gpu = make_cuda_backend(0);
  ada_test::check_base_fixture(*gpu);
}

TEST_CASE(
    "CUDA fixture: Ada-SASRec user vectors, contexts, lists and the training step match the "
    "reference",
    "[cuda][model][fixture]") {
  require_gpu();
  auto gpu = make_cuda_backend(0);
  ada_test::check_ada_fixture(*gpu);
}
