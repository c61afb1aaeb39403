// A read-only memory mapping of a whole file. Owns the mapping; movable, not copyable.
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "common/result.h"

namespace baton {

class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Reads a whole file into a string ("config.json: No such file or directory" on failure).
Result<std::string> read_file(const std::string& path);

}  // namespace baton
