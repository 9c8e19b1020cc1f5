// experiments/common/model_path.hpp: the default model path shared by the experiments:
// $TINYLORA_MODEL, else the cache folder scripts/fetch-model fills.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "tinylora/core/sha256.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::cli {

inline std::string default_model_path() {
  if (char const* env = std::getenv("TINYLORA_MODEL"); env != nullptr && *env != '\0') return env;
  std::filesystem::path cache;
  if (char const* c = std::getenv("TINYLORA_CACHE"); c != nullptr && *c != '\0') cache = c;
  else if (char const* home = std::getenv("HOME"); home != nullptr) cache = std::filesystem::path(home) / ".cache/tinylora";
  return (cache / "models/SmolLM2-135M-Instruct.Q4_1.gguf").string();
}

/// The model's content hash: a GGUF file's SHA-256; for a Hugging Face folder, the SHA-256 over
/// "name:sha256\n" of config.json and of every *.safetensors file in name order (the weights, not
/// the folder's path, identify the model).
inline std::string model_fingerprint(std::string const& path) {
  namespace fs = std::filesystem;
  static std::map<std::string, std::string> known;  // hashed once per process
  if (auto const k = known.find(path); k != known.end()) return k->second;
  if (!fs::is_directory(path)) return known[path] = sha256_file(path);
  std::vector<fs::path> files{fs::path(path) / "config.json"};
  std::vector<fs::path> weights;
  for (auto const& e : fs::directory_iterator(path))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") weights.push_back(e.path());
  std::sort(weights.begin(), weights.end());
  files.insert(files.end(), weights.begin(), weights.end());
  std::string listing;
  for (auto const& f : files) listing += f.filename().string() + ":" + sha256_file(f) + "\n";
  return known[path] = "folder:" + sha256_hex(listing);
}

/// "0.1,-2,3" -> {0.1, -2, 3}: finite numbers only; errors name the option and the bad item.
inline std::vector<float> parse_floats(std::string const& s, char const* option) {
  std::vector<float> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    std::size_t const next = s.find(',', pos);
    std::string const item = s.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    std::size_t used = 0;
    float v = 0;
    try {
      v = std::stof(item, &used);
    } catch (std::exception const&) {  // std::invalid_argument ("abc", ""), std::out_of_range ("1e99")
      used = 0;
    }
    if (used == 0 || used != item.size())
      throw std::invalid_argument(std::string("--") + option + ": '" + item + "' is not a number (in '" + s + "')");
    if (!std::isfinite(v)) throw std::invalid_argument(std::string("--") + option + ": '" + item + "' is not a finite number (in '" + s + "')");
    out.push_back(v);
    if (next == std::string::npos) break;
    pos = next + 1;
  }
  return out;
}

/// "1,2,4" -> {1, 2, 4}; each must be a whole number >= 1.
inline std::vector<Index> parse_counts(std::string const& s, char const* option) {
  std::vector<Index> out;
  for (float v : parse_floats(s, option)) {
    if (!(v >= 1.0f) || v != static_cast<float>(static_cast<Index>(v)))
      throw std::invalid_argument(std::string("--") + option + ": '" + s + "' must list whole numbers >= 1");
    out.push_back(static_cast<Index>(v));
  }
  if (out.empty()) throw std::invalid_argument(std::string("--") + option + ": give at least one value");
  return out;
}

}  // namespace tinylora::cli
