// tinylora/text/tokenizer.hpp: a byte-level BPE tokenizer that gives the same ids as Hugging Face
// tokenizers for GPT-2, SmolLM2, Llama-3 and Qwen2 style models. Pipeline of encode():
// added/special tokens (leftmost-longest) -> normalizer (none or NFC) -> pre-tokenizer -> BPE.
// Built from a TokenizerSpec (text/tokenizer_spec.hpp): plain vectors, GGUF metadata, or a
// tokenizer.json file (read by text/tokenizer_json.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/text/bpe.hpp"
#include "tinylora/text/normalize.hpp"
#include "tinylora/text/pretokenize.hpp"
#include "tinylora/text/tokenizer_json.hpp"
#include "tinylora/text/tokenizer_spec.hpp"
#include "tinylora/text/unicode.hpp"

namespace tinylora::text {

namespace detail {
using StringIdMap = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;
}  // namespace detail

class Tokenizer {
 public:
  Tokenizer() = default;

  /// Builds a tokenizer from a dense vocabulary (token id = index, tokens spelled in byte-level
  /// characters as in tokenizer.json/GGUF), merges "left right" in rank order, and GGUF token
  /// types (empty, or one per token: kControl tokens become special added tokens, kUserDefined
  /// non-special added tokens).
  static Tokenizer from_vocab(std::vector<std::string> tokens, std::vector<std::string> const& merges,
                              std::vector<std::int32_t> const& token_types, SpecialTokenIds special_ids,
                              PreTokenizer pre_tokenizer, TokenizerOptions options = {}) {
    constexpr char const* kWhere = "Tokenizer::from_vocab()";
    TINYLORA_CHECK(token_types.empty() || token_types.size() == tokens.size(), kWhere, ": token_types has ",
                   token_types.size(), " entries (expected 0 or one per token, ", tokens.size(), ")");
    TokenizerSpec spec;
    spec.merges.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) spec.merges.push_back(split_merge(merges[r], r, kWhere));
    for (std::size_t i = 0; i < token_types.size(); ++i) {
      auto const type = static_cast<GgufTokenType>(token_types[i]);
      if (type == GgufTokenType::kControl || type == GgufTokenType::kUserDefined) {
        spec.added.push_back({tokens[i], static_cast<std::int32_t>(i), type == GgufTokenType::kControl, false});
      }
    }
    spec.tokens = std::move(tokens);
    spec.special_ids = special_ids;
    spec.pre_tokenizer = pre_tokenizer;
    spec.options = options;
    return from_spec(std::move(spec), kWhere);
  }

  /// Builds every table from a tokenizer's description; `where` names the caller in errors.
  static Tokenizer from_spec(TokenizerSpec spec, char const* where = "Tokenizer::from_spec()") {
    Tokenizer t;
    t.build(std::move(spec.tokens), spec.merges, std::move(spec.added), spec.special_ids, spec.pre_tokenizer,
            spec.options, where);
    t.prefix_ids_.insert(t.prefix_ids_.end(), spec.template_prefix.begin(), spec.template_prefix.end());
    t.suffix_ids_.insert(t.suffix_ids_.end(), spec.template_suffix.begin(), spec.template_suffix.end());
    t.chat_template_ = std::move(spec.chat_template);
    return t;
  }

  /// Builds the tokenizer that Hugging Face uses for a GGUF file's model: "gpt2" vocabularies
  /// only; tokenizer.ggml.pre picks the pre-tokenizer; Llama-3 gets ignore_merges and Qwen2 the
  /// NFC normalizer of their tokenizer.json files (llama.cpp itself skips NFC).
  static Tokenizer from_gguf_metadata(GgufTokenizerMetadata const& meta) {
    TINYLORA_CHECK(meta.model == "gpt2", "Tokenizer::from_gguf_metadata(): tokenizer.ggml.model is '", meta.model,
                   "' (expected 'gpt2', a byte-level BPE). Hint: SentencePiece ('llama') and other tokenizer models "
                   "are not supported.");
    PreTokenizer const pre = pre_tokenizer_from_name(meta.pre.empty() ? "gpt2" : meta.pre);
    TokenizerOptions options;
    options.ignore_merges = pre == PreTokenizer::kLlama3;
    options.normalizer = pre == PreTokenizer::kQwen2 ? Normalizer::kNfc : Normalizer::kNone;
    options.add_bos = meta.add_bos;
    options.add_eos = meta.add_eos;
    Tokenizer t = from_vocab(meta.tokens, meta.merges, meta.token_types,
                             {meta.bos_id, meta.eos_id, meta.pad_id, meta.unk_id}, pre, options);
    t.chat_template_ = meta.chat_template;
    return t;
  }

  /// Reads a Hugging Face tokenizer.json. When a tokenizer_config.json sits beside it, its
  /// bos/eos/pad/unk tokens and chat_template are read too (or chat_template.jinja's).
  static Tokenizer from_tokenizer_json(std::filesystem::path const& path) {
    return from_spec(read_tokenizer_json(path), detail::tokenizer_json::kWhere);
  }

  /// Parses the text of a tokenizer.json; origin names it in error messages.
  static Tokenizer from_tokenizer_json_text(std::string_view text, std::string const& origin = "<string>") {
    return from_spec(parse_tokenizer_json_text(text, origin), detail::tokenizer_json::kWhere);
  }

  // ---- encoding -----------------------------------------------------------------------------

  /// The token ids of text. Added/special tokens written in the text are recognized (as Hugging
  /// Face does by default); add_special adds the model's BOS/EOS (or template) tokens.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special = false) const {
    std::vector<std::int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special) out.insert(out.end(), prefix_ids_.begin(), prefix_ids_.end());
    EncodeScratch scratch;
    // Pass 1: tokens matched in the raw text; pass 2: normalized tokens in the normalized gaps.
    split_on_added(
        text, raw_matcher_,
        [&](std::string_view gap) {
          if (normalizer_ == Normalizer::kNfc && !is_trivially_nfc(gap)) {
            std::string const normal = nfc(gap);
            split_on_added(
                normal, normalized_matcher_, [&](std::string_view g) { encode_plain(g, out, scratch); }, out);
          } else {
            split_on_added(
                gap, normalized_matcher_, [&](std::string_view g) { encode_plain(g, out, scratch); }, out);
          }
        },
        out);
    if (add_special) out.insert(out.end(), suffix_ids_.begin(), suffix_ids_.end());
    return out;
  }

  /// Ids of a text with no added-token recognition and no normalization: pre-tokenizer + BPE
  /// only (for text that must never produce control tokens, e.g. untrusted user content).
  std::vector<std::int32_t> encode_ordinary(std::string_view text) const {
    std::vector<std::int32_t> out;
    EncodeScratch scratch;
    encode_plain(text, out, scratch);
    return out;
  }

  // ---- decoding -----------------------------------------------------------------------------

  /// The text of ids: token bytes concatenated, invalid UTF-8 replaced by U+FFFD (as Hugging
  /// Face's ByteLevel decoder); skip_special drops special tokens.
  std::string decode(std::span<std::int32_t const> ids, bool skip_special = false) const {
    return to_valid_utf8(decode_bytes(ids, skip_special));
  }
  std::string decode(std::vector<std::int32_t> const& ids, bool skip_special = false) const {
    return decode(std::span<std::int32_t const>(ids), skip_special);
  }

  /// The raw bytes of ids (possibly ending inside a UTF-8 character; for streaming output).
  std::string decode_bytes(std::span<std::int32_t const> ids, bool skip_special = false) const {
    std::string out;
    for (std::int32_t const id : ids) {
      check_id(id, "Tokenizer::decode()");
      if (skip_special && is_special_[static_cast<std::size_t>(id)]) continue;
      out += token_bytes_[static_cast<std::size_t>(id)];
    }
    return out;
  }

  // ---- vocabulary ---------------------------------------------------------------------------

  std::int32_t vocab_size() const { return static_cast<std::int32_t>(tokens_.size()); }

  /// The token's spelling in the vocabulary (byte-level characters, e.g. "Ġthe").
  std::string const& id_to_token(std::int32_t id) const {
    check_id(id, "Tokenizer::id_to_token()");
    return tokens_[static_cast<std::size_t>(id)];
  }

  /// The bytes a token stands for (e.g. " the").
  std::string const& token_bytes(std::int32_t id) const {
    check_id(id, "Tokenizer::token_bytes()");
    return token_bytes_[static_cast<std::size_t>(id)];
  }

  std::optional<std::int32_t> find_token(std::string_view token) const {
    auto const it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }

  /// The id of a token spelled as in the vocabulary; throws when there is none.
  std::int32_t token_to_id(std::string_view token) const {
    auto const id = find_token(token);
    TINYLORA_CHECK(id.has_value(), "Tokenizer::token_to_id(): no token '", token,
                   "' in the vocabulary. Hint: tokens are spelled in byte-level characters ('Ġ' for a space).");
    return *id;
  }

  bool is_special(std::int32_t id) const {
    check_id(id, "Tokenizer::is_special()");
    return is_special_[static_cast<std::size_t>(id)] != 0;
  }

  std::int32_t bos_id() const { return special_ids_.bos; }
  std::int32_t eos_id() const { return special_ids_.eos; }
  std::int32_t pad_id() const { return special_ids_.pad; }
  std::int32_t unk_id() const { return special_ids_.unk; }
  SpecialTokenIds const& special_ids() const { return special_ids_; }
  void set_special_ids(SpecialTokenIds ids) {
    for (std::int32_t const id : {ids.bos, ids.eos, ids.pad, ids.unk}) {
      if (id != -1) check_id(id, "Tokenizer::set_special_ids()");
    }
    special_ids_ = ids;
  }

  PreTokenizer pre_tokenizer() const { return pre_; }
  Normalizer normalizer() const { return normalizer_; }
  bool ignore_merges() const { return ignore_merges_; }
  std::vector<AddedToken> const& added_tokens() const { return added_; }
  std::size_t merge_count() const { return bpe_.merge_count(); }
  BytePairModel const& model() const { return bpe_; }

  /// The model's chat template (Jinja text) when the source had one, else empty.
  std::string const& chat_template() const { return chat_template_; }
  void set_chat_template(std::string text) { chat_template_ = std::move(text); }

  /// Ids of one pre-token through BPE only (no cache); the test compares it with the reference.
  std::vector<std::int32_t> encode_word(std::string_view bytes) const {
    std::vector<std::int32_t> out;
    bpe_.encode_word(bytes, out);
    return out;
  }

 private:
  struct EncodeScratch {
    detail::DecodedText decoded;
  };

  /// Added tokens indexed by first byte, longest first, for leftmost-longest matching.
  struct AddedMatcher {
    std::array<std::vector<std::size_t>, 256> by_first_byte;  // indices into added_
    bool empty = true;
  };

  std::vector<std::string> tokens_;
  std::vector<std::string> token_bytes_;
  std::vector<std::uint8_t> is_special_;
  detail::StringIdMap token_to_id_;
  detail::StringIdMap model_vocab_;  // only when ignore_merges_: the BPE vocabulary by spelling
  BytePairModel bpe_;
  std::vector<AddedToken> added_;
  AddedMatcher raw_matcher_;
  AddedMatcher normalized_matcher_;
  PreTokenizer pre_ = PreTokenizer::kGpt2;
  Normalizer normalizer_ = Normalizer::kNone;
  bool ignore_merges_ = false;
  std::vector<std::int32_t> prefix_ids_;
  std::vector<std::int32_t> suffix_ids_;
  SpecialTokenIds special_ids_;
  std::string chat_template_;
  std::shared_ptr<BpeCache> cache_ = std::make_shared<BpeCache>();

  void check_id(std::int32_t id, char const* where) const {
    TINYLORA_CHECK(id >= 0 && id < vocab_size(), where, ": token id ", id, " is out of range (expected 0 <= id < ",
                   vocab_size(), "). Hint: were these ids made by another model's tokenizer?");
  }

  /// Builds every table; tokens are dense (id = index), added tokens must be among them.
  void build(std::vector<std::string> tokens, std::vector<std::pair<std::string, std::string>> const& merges,
             std::vector<AddedToken> added, SpecialTokenIds special_ids, PreTokenizer pre,
             TokenizerOptions const& options, char const* where) {
    TINYLORA_CHECK(!tokens.empty(), where, ": the vocabulary is empty (expected at least the 256 byte tokens)");
    TINYLORA_CHECK(tokens.size() < (std::size_t{1} << 31), where, ": vocabulary too large (", tokens.size(), ")");
    tokens_ = std::move(tokens);
    pre_ = pre;
    normalizer_ = options.normalizer;
    ignore_merges_ = options.ignore_merges;
    token_to_id_.clear();
    token_to_id_.reserve(tokens_.size());
    for (std::size_t i = 0; i < tokens_.size(); ++i) {
      // a repeated spelling keeps its first id (GGUF vocabularies can repeat unused tokens)
      token_to_id_.emplace(tokens_[i], static_cast<std::int32_t>(i));
    }
    // byte tokens; a missing one follows the unknown-byte policy
    std::array<std::int32_t, 256> byte_ids{};
    UnknownBytePolicy unknown;
    unknown.unk_id = special_ids.unk;
    unknown.fuse_unk = options.fuse_unk;
    std::size_t missing = 0;
    for (std::uint32_t b = 0; b < 256; ++b) {
      std::string const spelling = encode_utf8(byte_to_char()[b]);
      auto const it = token_to_id_.find(spelling);
      byte_ids[b] = it == token_to_id_.end() ? -1 : it->second;
      if (byte_ids[b] >= 0) continue;
      ++missing;
      if (!options.byte_fallback) continue;
      std::vector<std::int32_t> fallback;
      for (char const ch : spelling) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", static_cast<unsigned>(static_cast<unsigned char>(ch)));
        auto const f = token_to_id_.find(std::string_view(name));
        if (f == token_to_id_.end()) {
          fallback.clear();
          break;
        }
        fallback.push_back(f->second);
      }
      unknown.fallback_ids[b] = std::move(fallback);
    }
    TINYLORA_CHECK(missing < 128, where, ": the vocabulary has no token for ", missing,
                   " of the 256 bytes (e.g. 'Ġ' for a space). Hint: only byte-level BPE vocabularies (GPT-2 style, "
                   "tokenizer.ggml.model = gpt2) are supported; SentencePiece models are not.");
    // merges
    std::unordered_map<std::uint64_t, BytePairModel::Merge> merge_table;
    merge_table.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      auto const& [left, right] = merges[r];
      auto const l = token_to_id_.find(left);
      auto const rt = token_to_id_.find(right);
      auto const m = token_to_id_.find(left + right);
      TINYLORA_CHECK(l != token_to_id_.end() && rt != token_to_id_.end(), where, ": merge ", r, " ('", left, " ", right,
                     "') refers to a token that is not in the vocabulary ('", l == token_to_id_.end() ? left : right,
                     "'). Hint: vocabulary and merges must come from the same model.");
      TINYLORA_CHECK(m != token_to_id_.end(), where, ": merge ", r, " ('", left, " ", right, "') makes '", left + right,
                     "', which is not in the vocabulary. Hint: vocabulary and merges must come from the same model.");
      // a repeated pair takes its last rank, as Hugging Face's merge map does
      merge_table.insert_or_assign(BytePairModel::key(l->second, rt->second),
                                   BytePairModel::Merge{static_cast<std::int32_t>(r), m->second});
    }
    bpe_ = BytePairModel(byte_ids, std::move(merge_table), std::move(unknown));
    // token bytes, specials, added tokens
    token_bytes_.resize(tokens_.size());
    for (std::size_t i = 0; i < tokens_.size(); ++i) token_bytes_[i] = byte_level_decode(tokens_[i]);
    is_special_.assign(tokens_.size(), 0);
    added_ = std::move(added);
    for (AddedToken const& a : added_) {
      TINYLORA_CHECK(a.id >= 0 && static_cast<std::size_t>(a.id) < tokens_.size(), where, ": added token '", a.content,
                     "' has id ", a.id, " (expected 0 <= id < ", tokens_.size(), ")");
      TINYLORA_CHECK(!a.content.empty(), where, ": added token ", a.id, " is empty");
      if (a.special) is_special_[static_cast<std::size_t>(a.id)] = 1;
    }
    build_matcher(raw_matcher_, false);
    build_matcher(normalized_matcher_, true);
    if (ignore_merges_) {
      model_vocab_.clear();
      std::vector<std::uint8_t> is_added(tokens_.size(), 0);
      for (AddedToken const& a : added_) is_added[static_cast<std::size_t>(a.id)] = 1;
      for (std::size_t i = 0; i < tokens_.size(); ++i) {
        if (!is_added[i]) model_vocab_.emplace(tokens_[i], static_cast<std::int32_t>(i));
      }
    }
    special_ids_ = {};
    set_special_ids(special_ids);
    prefix_ids_.clear();
    suffix_ids_.clear();
    if (options.add_bos) {
      TINYLORA_CHECK(special_ids.bos >= 0, where, ": add_bos is set but the model has no bos token");
      prefix_ids_.push_back(special_ids.bos);
    }
    if (options.add_eos) {
      TINYLORA_CHECK(special_ids.eos >= 0, where, ": add_eos is set but the model has no eos token");
      suffix_ids_.push_back(special_ids.eos);
    }
    cache_ = std::make_shared<BpeCache>();
  }

  void build_matcher(AddedMatcher& matcher, bool normalized) {
    matcher = AddedMatcher{};
    for (std::size_t k = 0; k < added_.size(); ++k) {
      if (added_[k].normalized != normalized) continue;
      matcher.by_first_byte[static_cast<unsigned char>(added_[k].content[0])].push_back(k);
      matcher.empty = false;
    }
    for (auto& list : matcher.by_first_byte) {
      std::stable_sort(list.begin(), list.end(), [&](std::size_t a, std::size_t b) {
        return added_[a].content.size() > added_[b].content.size();
      });
    }
  }

  /// Calls on_gap(text between matches) and appends each matched added token's id to out, in
  /// order, matching leftmost-longest.
  template <class OnGap>
  void split_on_added(std::string_view text, AddedMatcher const& matcher, OnGap&& on_gap,
                      std::vector<std::int32_t>& out) const {
    if (matcher.empty) {
      if (!text.empty()) on_gap(text);
      return;
    }
    std::size_t gap_start = 0;
    for (std::size_t pos = 0; pos < text.size();) {
      auto const& candidates = matcher.by_first_byte[static_cast<unsigned char>(text[pos])];
      AddedToken const* hit = nullptr;
      for (std::size_t const k : candidates) {
        if (text.substr(pos).starts_with(added_[k].content)) {
          hit = &added_[k];
          break;  // candidates are longest first
        }
      }
      if (hit == nullptr) {
        ++pos;
        continue;
      }
      if (pos > gap_start) on_gap(text.substr(gap_start, pos - gap_start));
      out.push_back(hit->id);
      pos += hit->content.size();
      gap_start = pos;
    }
    if (gap_start < text.size()) on_gap(text.substr(gap_start));
  }

  /// Pre-tokenizer + BPE on text that holds no added token.
  void encode_plain(std::string_view text, std::vector<std::int32_t>& out, EncodeScratch& scratch) const {
    for_each_pre_token(
        pre_, text, [&](std::string_view piece) { encode_piece(piece, out); }, scratch.decoded);
  }

  void encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const {
    if (piece.size() == 1 && bpe_.byte_ids()[static_cast<unsigned char>(piece[0])] >= 0) {
      out.push_back(bpe_.byte_ids()[static_cast<unsigned char>(piece[0])]);
      return;
    }
    if (ignore_merges_) {
      auto const it = model_vocab_.find(byte_level_encode(piece));
      if (it != model_vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    if (cache_->lookup(piece, out)) return;
    std::size_t const start = out.size();
    bpe_.encode_word(piece, out);
    cache_->store(piece, out.data() + start, out.size() - start);
  }

  // ---- tokenizer.json -----------------------------------------------------------------------
};

}  // namespace tinylora::text
