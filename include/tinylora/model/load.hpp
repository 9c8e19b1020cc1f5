// tinylora/model/load.hpp: a decoder's configuration and weights from a file: a GGUF file
// (io/gguf.hpp) or a Hugging Face folder (io/hf_model.hpp), dequantized into the backend's memory
// at the precision policy's storage type (model/weights.hpp); and a frozen weight back on the host.
#pragma once

#include <filesystem>
#include <utility>

#include "tinylora/core/host_matrix.hpp"
#include "tinylora/model/weights.hpp"

namespace tinylora::model {

/// A decoder's configuration and weights from a GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q6_K
/// tensors, dequantized).
template <class B, class P>
std::pair<ModelConfig, ModelWeights<B, P>> load_model_gguf(std::filesystem::path const& path) {
  io::GgufFile const f = io::GgufFile::open(path);
  ModelConfig c = config_from_gguf(f);
  auto w = load_weights_gguf<B, P>(f, c);
  return {std::move(c), std::move(w)};
}

/// The same from a Hugging Face model folder (config.json + safetensors).
template <class B, class P>
std::pair<ModelConfig, ModelWeights<B, P>> load_model_hf(std::filesystem::path const& dir) {
  auto const hf = io::HfModelDir::open(dir);
  ModelConfig c = config_from_hf(hf);
  auto w = load_weights_hf<B, P>(hf, c);
  return {std::move(c), std::move(w)};
}

/// The frozen weight of one projection as a host float matrix (d_out, d_in), e.g. for its SVD.
template <class B, class P>
HostMatrix weight_matrix_of(ModelWeights<B, P> const& w, int layer, Proj p) {
  auto const& m = w.layers[static_cast<std::size_t>(layer)].proj[static_cast<int>(p)];
  auto const host = B::download(m.data);
  HostMatrix out(m.rows, m.cols);
  for (Index i = 0; i < out.size(); ++i) out.data()[i] = static_cast<float>(host[static_cast<std::size_t>(i)]);
  return out;
}

}  // namespace tinylora::model
