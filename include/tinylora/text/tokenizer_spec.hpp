// tinylora/text/tokenizer_spec.hpp: a byte-level BPE tokenizer as its source describes it, before
// any lookup table is built: the dense vocabulary, the merges in rank order, the added tokens, the
// special ids, the pre-tokenizer and the options. text/tokenizer_json.hpp fills one in from a
// Hugging Face tokenizer.json, GGUF metadata (GgufTokenizerMetadata) fills one in from a GGUF
// file, and text::Tokenizer builds its tables from it (text/tokenizer.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/text/pretokenize.hpp"

namespace tinylora::text {

/// A token matched in raw text before pre-tokenization (chat markers, <|endoftext|>, ...).
struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = true;      // skipped by decode(ids, skip_special = true)
  bool normalized = false;  // matched in the normalized text rather than the raw text
};

enum class Normalizer : std::uint8_t { kNone, kNfc };

/// Ids of the model's special tokens; -1 where the model has none.
struct SpecialTokenIds {
  std::int32_t bos = -1;
  std::int32_t eos = -1;
  std::int32_t pad = -1;
  std::int32_t unk = -1;
};

/// Choices that tokenizer.json spells out and GGUF metadata implies.
struct TokenizerOptions {
  Normalizer normalizer = Normalizer::kNone;
  bool ignore_merges = false;  // a pre-token that is itself in the vocabulary is kept whole (Llama-3)
  bool add_bos = false;        // encode(text, add_special = true) prepends bos
  bool add_eos = false;        // ... and appends eos
  // A byte without a token of its own (SmolLM2 lacks 21 of them, e.g. 0x04 and 0xF1..0xFF) becomes
  // the "<0xXX>" tokens when byte_fallback and they exist, else the unknown token (runs fused into
  // one when fuse_unk), else nothing; transformers converts GGUF files with both set.
  bool byte_fallback = true;
  bool fuse_unk = true;
};

/// GGUF tokenizer.ggml.token_type values.
enum class GgufTokenType : std::int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

/// The tokenizer.* keys of a GGUF file, as plain values (the GGUF reader fills this in).
struct GgufTokenizerMetadata {
  std::string model;                      // tokenizer.ggml.model: must be "gpt2" (byte-level BPE)
  std::string pre;                        // tokenizer.ggml.pre: "smollm", "llama-bpe", "qwen2", "gpt2", ...
  std::vector<std::string> tokens;        // tokenizer.ggml.tokens
  std::vector<std::string> merges;        // tokenizer.ggml.merges ("left right")
  std::vector<std::int32_t> token_types;  // tokenizer.ggml.token_type (may be empty)
  std::int32_t bos_id = -1;               // tokenizer.ggml.bos_token_id
  std::int32_t eos_id = -1;               // tokenizer.ggml.eos_token_id
  std::int32_t pad_id = -1;               // tokenizer.ggml.padding_token_id
  std::int32_t unk_id = -1;               // tokenizer.ggml.unknown_token_id
  bool add_bos = false;                   // tokenizer.ggml.add_bos_token
  bool add_eos = false;                   // tokenizer.ggml.add_eos_token
  std::string chat_template;              // tokenizer.chat_template
};

/// A tokenizer's description: what Tokenizer::from_spec() builds its tables from.
struct TokenizerSpec {
  std::vector<std::string> tokens;                           // dense: id = index, byte-level spelling
  std::vector<std::pair<std::string, std::string>> merges;   // (left, right), rank order
  std::vector<AddedToken> added;                             // each among tokens, at its id
  SpecialTokenIds special_ids;
  PreTokenizer pre_tokenizer = PreTokenizer::kGpt2;
  TokenizerOptions options;
  /// Template ids around a sequence in encode(text, add_special = true), after options.add_bos's
  /// bos and before options.add_eos's eos (tokenizer.json's TemplateProcessing).
  std::vector<std::int32_t> template_prefix;
  std::vector<std::int32_t> template_suffix;
  std::string chat_template;  // Jinja text, or empty
};

/// A "left right" merge line split in two; `where` and `rank` name it in the error.
inline std::pair<std::string, std::string> split_merge(std::string const& merge, std::size_t rank, char const* where) {
  auto const space = merge.find(' ');
  TINYLORA_CHECK(space != std::string::npos && space != 0 && space + 1 < merge.size() &&
                     merge.find(' ', space + 1) == std::string::npos,
                 where, ": merge ", rank, " is '", merge, "' (expected two tokens separated by one space)");
  return {merge.substr(0, space), merge.substr(space + 1)};
}

}  // namespace tinylora::text
