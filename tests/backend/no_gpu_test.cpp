// Where there is no GPU (CI), or baton was built without the CUDA backend (the sanitizer builds),
// asking for one is a clear one-line error, not a crash.
#include <gtest/gtest.h>

#include <cstdlib>
#include <tuple>
#include <vector>

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

// The CUDA backend's alternate paths come from BATON_CUDA_* once; a name that is not a switch (a
// settled one, a typo) or a bad value is an error that names it, and describe() gives back what
// differs from the defaults.
TEST(CudaPathsTest, FromEnvironment) {
  auto paths = cuda_paths_from_env();
  ASSERT_TRUE(paths.ok()) << paths.error();
  EXPECT_EQ(paths->describe(), "");
  ::setenv("BATON_CUDA_GEMV", "0", 1);
  ::setenv("BATON_CUDA_GEMM_TUNE", "require", 1);
  ::setenv("BATON_CUDA_ATTN_GROUP", "1", 1);
  paths = cuda_paths_from_env();
  ASSERT_TRUE(paths.ok()) << paths.error();
  EXPECT_FALSE(paths->skinny_gemms);
  EXPECT_EQ(paths->gemm_tune, CudaPaths::GemmTune::kRequire);
  EXPECT_EQ(paths->attn_group_heads, 1);
  EXPECT_TRUE(paths->time_skinny_graphs);
  EXPECT_EQ(paths->attn_mma_tokens, 32);
  EXPECT_EQ(paths->describe(), "BATON_CUDA_GEMV=0 BATON_CUDA_GEMM_TUNE=require BATON_CUDA_ATTN_GROUP=1");
  ::unsetenv("BATON_CUDA_GEMV");
  ::unsetenv("BATON_CUDA_GEMM_TUNE");
  ::unsetenv("BATON_CUDA_ATTN_GROUP");
  for (const auto& [name, value, says] :
       std::vector<std::tuple<const char*, const char*, const char*>>{{"BATON_CUDA_PDL", "0", "not a switch"},
                                                                      {"BATON_CUDA_ATTN_GROUP", "9", "1..4"},
                                                                      {"BATON_CUDA_GEMV", "off", "0 or 1"}}) {
    ::setenv(name, value, 1);
    paths = cuda_paths_from_env();
    ::unsetenv(name);
    ASSERT_FALSE(paths.ok()) << name;
    EXPECT_NE(paths.error().find(name), std::string::npos) << paths.error();
    EXPECT_NE(paths.error().find(says), std::string::npos) << paths.error();
  }
}

}  // namespace
}  // namespace baton
