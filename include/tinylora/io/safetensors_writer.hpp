// tinylora/io/safetensors_writer.hpp: writes safetensors files, the layout io/safetensors.hpp reads
// and documents (tensors in name order, the JSON header padded with spaces to a multiple of 8
// bytes, "__metadata__" holding string pairs). The format only: what goes into a file (a PEFT
// adapter, a merged model) is decided by interop/.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tinylora/core/error.hpp"
#include "tinylora/io/durable_file.hpp"
#include "tinylora/io/safetensors.hpp"
#include "tinylora/precision/types.hpp"

namespace tinylora::io {

/// Writes a safetensors file (the layout io/safetensors.hpp documents): tensors in name order, the
/// JSON header padded with spaces to a multiple of 8 bytes, "__metadata__" holding string pairs.
/// Float tensors are stored as F32, F16 or BF16 (narrowing rounds to nearest even).
class SafetensorsWriter {
 public:
  /// Adds `values` (row-major, prod(shape) of them) under `name`, stored as `dtype`.
  void add(std::string const& name, std::vector<std::int64_t> shape, std::span<float const> values,
           SafetensorsDtype dtype = SafetensorsDtype::kF32) {
    TINYLORA_CHECK(!name.empty() && name != "__metadata__", "SafetensorsWriter::add(): invalid tensor name '", name,
                   "' (expected a non-empty name other than __metadata__)");
    TINYLORA_CHECK(entries_.find(name) == entries_.end(), "SafetensorsWriter::add(): tensor '", name,
                   "' was added twice (expected unique names)");
    std::int64_t n = 1;
    for (auto const d : shape) {
      TINYLORA_CHECK(d >= 0, "SafetensorsWriter::add(): tensor '", name, "' has a negative dimension in shape ",
                     safetensors_shape_string(shape));
      n *= d;
    }
    TINYLORA_CHECK(n == static_cast<std::int64_t>(values.size()), "SafetensorsWriter::add(): tensor '", name,
                   "' of shape ", safetensors_shape_string(shape), " needs ", n, " values (got ", values.size(), ")");
    Entry e{dtype, std::move(shape), {}};
    switch (dtype) {
      case SafetensorsDtype::kF32:
        e.bytes.resize(values.size() * 4);
        if (!values.empty()) std::memcpy(e.bytes.data(), values.data(), e.bytes.size());  // little-endian host
        break;
      case SafetensorsDtype::kF16:
        e.bytes.resize(values.size() * 2);
        for (std::size_t i = 0; i < values.size(); ++i) store_u16(e.bytes.data() + 2 * i, fp16(values[i]).bits);
        break;
      case SafetensorsDtype::kBF16:
        e.bytes.resize(values.size() * 2);
        for (std::size_t i = 0; i < values.size(); ++i) store_u16(e.bytes.data() + 2 * i, bf16(values[i]).bits);
        break;
      default:
        fail("SafetensorsWriter::add(): tensor '", name, "': cannot store float values as ",
             safetensors_dtype_name(dtype), " (expected F32, F16 or BF16)");
    }
    entries_.emplace(name, std::move(e));
  }

  void add_metadata(std::string const& key, std::string const& value) { metadata_[key] = value; }

  /// The file's bytes: 8-byte little-endian header length, the JSON header, the tensors' bytes.
  std::string bytes() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (auto const& [name, e] : entries_) {  // std::map: name order
      header[name] = {{"dtype", safetensors_dtype_name(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::string out;
    out.reserve(8 + text.size() + offset);
    auto const n = static_cast<std::uint64_t>(text.size());
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(static_cast<std::uint8_t>(n >> (8 * i))));
    out += text;
    for (auto const& [name, e] : entries_) out.append(reinterpret_cast<char const*>(e.bytes.data()), e.bytes.size());
    return out;
  }

  /// Writes `path` atomically (io/durable_file.hpp: a sibling temporary, fsync, rename), so a
  /// reader never sees half a file.
  void write(std::filesystem::path const& path) const { write_atomically(path, bytes(), "SafetensorsWriter::write()"); }

 private:
  struct Entry {
    SafetensorsDtype dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
  };
  static void store_u16(std::uint8_t* p, std::uint16_t v) {
    p[0] = static_cast<std::uint8_t>(v & 0xFF);
    p[1] = static_cast<std::uint8_t>(v >> 8);
  }

  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace tinylora::io
