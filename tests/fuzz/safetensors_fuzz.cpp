// libFuzzer target: safetensors files. Any byte string parses to views inside the buffer or to
// an error.
#include <cassert>
#include <cstdint>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace baton;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  auto r = SafetensorsFile::parse(bytes, "fuzz");
  if (!r.ok()) return 0;
  for (const auto& [name, t] : *r) {
    assert(t.data.data() >= bytes.data() && t.data.data() + t.data.size() <= bytes.data() + bytes.size());
    assert(static_cast<size_t>(t.numel()) * dtype_size(t.dtype) == t.data.size());
  }
  return 0;
}
