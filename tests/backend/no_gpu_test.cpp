// Where there is no GPU (CI), or baton was built without the CUDA backend (the sanitizer builds),
// asking for one is a clear one-line error, not a crash.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "test_util.h"

namespace baton {
namespace {

TEST(CudaBackendTest, WithoutGpuIsAOneLineError) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a GPU is visible";
  BATON_REQUIRE_MODELS();
  BackendOptions o;
  o.device = "cuda";
  o.kv_cache_bytes = size_t{64} << 20;
  auto b = create_backend(testing::models_dir() + "/tiny-qwen3", o);
  ASSERT_FALSE(b.ok());
  EXPECT_TRUE(b.error().find("no CUDA device") != std::string::npos ||
              b.error().find("built without the CUDA backend") != std::string::npos)
      << b.error();
  EXPECT_EQ(b.error().find('\n'), std::string::npos);
}

}  // namespace
}  // namespace baton
