// The main of every golden test: GoogleTest with the EAL and the net_ring ports set up
// once per process (dataplane_fixture.h).
#include <gtest/gtest.h>

#include "tests/dataplane/dataplane_fixture.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new meshlane::testing::eal_environment);
  return RUN_ALL_TESTS();
}
