// Safetensors checkpoints, read by mmap without copying.
//
// `SafetensorsFile` is one file; `WeightStore` is every *.safetensors file of a model directory
// (sharded or not) behind one name -> tensor map. Views stay valid while the store lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "common/result.h"

namespace baton {

enum class DType { kF32, kF16, kBF16 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

// A borrowed view of one tensor's bytes inside a mapped file.
struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;

  int64_t numel() const;
  std::string shape_string() const;  // "[128, 64]"
};

class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::string& path);
  // Parses a file already in memory (used by open() and by the fuzz target).
  static Result<std::map<std::string, TensorView>> parse(std::span<const std::byte> bytes, const std::string& what);

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }

 private:
  MappedFile file_;
  std::map<std::string, TensorView> tensors_;
};

class WeightStore {
 public:
  // Opens every *.safetensors in `dir`; when model.safetensors.index.json exists, checks that
  // every tensor it lists is present.
  static Result<WeightStore> open_dir(const std::string& dir);

  const TensorView* find(const std::string& name) const;
  // The tensor, or an error if it is missing or its shape differs from `shape`.
  Result<const TensorView*> get(const std::string& name, const std::vector<int64_t>& shape) const;
  size_t size() const { return index_.size(); }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// One tensor to write: its bytes must hold numel * dtype_size bytes.
struct TensorData {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};
Status write_safetensors(const std::string& path, const std::vector<TensorData>& tensors);

// Converts `src` to fp32 (bf16 and fp16 are widened exactly).
void convert_to_f32(const TensorView& src, std::span<float> dst);

}  // namespace baton
