// Golden fixture (../shared/fixtures, see its README): the reference PyTorch implementation's
// outputs for a tiny Ada-SASRec. The base model is round 0: its user vectors and the first 20
// retrieved items (history and padding excluded) must match (tests/fixture_util.hpp; the Ada
// model's checks are in model_ada.cpp, the CUDA backend's in cuda_fixture.cpp).
#include <catch2/catch.hpp>

#include "ada/backend.hpp"
#include "tests/fixture_util.hpp"

using namespace ada;

TEST_CASE("fixture: base SASRec round-0 user vectors and top-20 match the reference", "[model]") {
  auto be = make_cpu_backend<float>();
  ada_test::check_base_fixture(*be);
}
