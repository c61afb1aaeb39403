// Kernel timestamps from inside CUDA graphs without Nsight Systems: a CUPTI activity tracer that
// the CUDA driver loads into any program (CUDA_INJECTION64_PATH=libcupti_trace.so). It records
// every kernel's start and end (graph nodes included) and writes them at exit as CSV
// ("Start (ns)","Duration (ns)","Name") to $CUPTI_TRACE_CSV, the columns bench/gpu/nsys_sum.py reads.
// Built by `bash bench/gpu/cuda.sh trace` on the GPU machine, where CUPTI is (KREC: the kernel
// record's struct, whose version follows the CUPTI release).
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Kernel {
  unsigned long long start, end;
  std::string name;
};
std::mutex g_mutex;
std::vector<Kernel> g_kernels;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t{16} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard lock(g_mutex);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
    const auto* k = reinterpret_cast<const KREC*>(record);
    int status = 0;
    char* demangled = abi::__cxa_demangle(k->name, nullptr, nullptr, &status);
    g_kernels.push_back({k->start, k->end, status == 0 && demangled ? demangled : k->name});
    std::free(demangled);
  }
  std::free(buffer);
}

void write_csv() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("CUPTI_TRACE_CSV");
  FILE* f = std::fopen(path ? path : "cupti_trace.csv", "w");
  if (!f) return;
  std::fprintf(f, "\"Start (ns)\",\"Duration (ns)\",\"Name\"\n");
  std::lock_guard lock(g_mutex);
  for (const Kernel& k : g_kernels) {
    std::string name = k.name;
    for (char& c : name)
      if (c == '"') c = '\'';
    std::fprintf(f, "%llu,%llu,\"%s\"\n", k.start, k.end - k.start, name.c_str());
  }
  std::fclose(f);
}

}  // namespace

extern "C" int InitializeInjection() {
  cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  std::atexit(write_csv);
  return 1;
}
