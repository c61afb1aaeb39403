#include "model/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "common/float16.h"
#include "common/json.h"

namespace baton {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Result<std::map<std::string, TensorView>> SafetensorsFile::parse(std::span<const std::byte> bytes,
                                                                 const std::string& what) {
  if (bytes.size() < 8) return make_error(what, ": file too short for a safetensors header (", bytes.size(), " bytes)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian on every platform we build for
  if (header_len > bytes.size() - 8)
    return make_error(what, ": header length ", header_len, " runs past the end of the file (", bytes.size(),
                      " bytes); the file is truncated or not safetensors");
  std::string_view header(reinterpret_cast<const char*>(bytes.data() + 8), header_len);
  BATON_ASSIGN_OR_RETURN(Json j, parse_json(header, what + " header"));
  if (!j.is_object()) return make_error(what, ": header is not a JSON object");

  const size_t data_begin = 8 + header_len;
  const size_t data_len = bytes.size() - data_begin;
  std::map<std::string, TensorView> out;
  for (auto& [name, info] : j.items()) {
    if (name == "__metadata__") continue;
    std::string where = what + ": tensor '" + name + "'";
    if (!info.is_object()) return make_error(where, ": entry is not an object");
    BATON_ASSIGN_OR_RETURN(std::string dtype, json_get<std::string>(info, "dtype", where));
    BATON_ASSIGN_OR_RETURN(auto shape, json_get<std::vector<int64_t>>(info, "shape", where));
    BATON_ASSIGN_OR_RETURN(auto offsets, json_get<std::vector<uint64_t>>(info, "data_offsets", where));
    TensorView v;
    v.name = name;
    if (dtype == "F32") {
      v.dtype = DType::kF32;
    } else if (dtype == "F16") {
      v.dtype = DType::kF16;
    } else if (dtype == "BF16") {
      v.dtype = DType::kBF16;
    } else {
      return make_error(where, ": dtype '", dtype, "' is not supported (F32, F16, BF16 are)");
    }
    if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_len)
      return make_error(where, ": data_offsets out of range (data section is ", data_len, " bytes)");
    uint64_t numel = 1;
    for (int64_t d : shape) {
      if (d < 0) return make_error(where, ": negative dimension");
      if (d > 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d))
        return make_error(where, ": shape overflows");
      numel *= static_cast<uint64_t>(d);
    }
    uint64_t n_bytes = offsets[1] - offsets[0];
    if (numel > n_bytes / dtype_size(v.dtype) || numel * dtype_size(v.dtype) != n_bytes)
      return make_error(where, ": shape ", info["shape"].dump(), " needs ", numel, " elements but the data holds ",
                        n_bytes, " bytes");
    v.shape = std::move(shape);
    v.data = bytes.subspan(data_begin + offsets[0], n_bytes);
    out.emplace(name, std::move(v));
  }
  return out;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  BATON_ASSIGN_OR_RETURN(f.file_, MappedFile::open(path));
  BATON_ASSIGN_OR_RETURN(f.tensors_, parse(f.file_.bytes(), path));
  return f;
}

Result<WeightStore> WeightStore::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return make_error(dir, ": not a directory");
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors") paths.push_back(e.path().string());
  if (ec) return make_error(dir, ": ", ec.message());
  if (paths.empty()) return make_error(dir, ": no *.safetensors files");
  std::sort(paths.begin(), paths.end());

  WeightStore store;
  for (const auto& p : paths) {
    BATON_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(p));
    store.files_.push_back(std::make_unique<SafetensorsFile>(std::move(f)));
    for (const auto& [name, view] : store.files_.back()->tensors()) {
      if (!store.index_.emplace(name, &view).second)
        return make_error(p, ": tensor '", name, "' also appears in another file");
    }
  }

  std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (fs::exists(index_path)) {
    BATON_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
    BATON_ASSIGN_OR_RETURN(Json idx, parse_json(text, index_path));
    auto wm = idx.find("weight_map");
    if (wm == idx.end() || !wm->is_object()) return make_error(index_path, ": missing 'weight_map'");
    for (auto& [name, file] : wm->items())
      if (!store.index_.count(name))
        return make_error(index_path, ": tensor '", name, "' is listed for ", file.dump(), " but no shard holds it");
  }
  return store;
}

const TensorView* WeightStore::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

Result<const TensorView*> WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView* v = find(name);
  if (!v) return make_error("checkpoint has no tensor '", name, "'");
  if (v->shape != shape) {
    TensorView want;
    want.shape = shape;
    return make_error("tensor '", name, "' has shape ", v->shape_string(), " but the config implies ",
                      want.shape_string());
  }
  return v;
}

Status write_safetensors(const std::string& path, const std::vector<TensorData>& tensors) {
  Json header = Json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h += ' ';  // align the data section, as the reference writer does
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return make_error(path, ": ", std::strerror(errno));
  uint64_t len = h.size();
  bool ok = std::fwrite(&len, 8, 1, f) == 1 && std::fwrite(h.data(), 1, h.size(), f) == h.size();
  for (const auto& t : tensors) ok = ok && std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
  ok = std::fclose(f) == 0 && ok;
  if (!ok) return make_error(path, ": write failed");
  return {};
}

void convert_to_f32(const TensorView& src, std::span<float> dst) {
  const size_t n = static_cast<size_t>(src.numel());
  assert(dst.size() == n);
  const std::byte* p = src.data.data();
  switch (src.dtype) {
    case DType::kF32:
      std::memcpy(dst.data(), p, n * 4);
      break;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = bf16_to_f32(v);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        dst[i] = f16_to_f32(v);
      }
      break;
  }
}

}  // namespace baton
