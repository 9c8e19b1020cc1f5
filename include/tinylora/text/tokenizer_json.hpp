// tinylora/text/tokenizer_json.hpp: Hugging Face's tokenizer.json (and the tokenizer_config.json
// and chat_template.jinja beside it) read into a TokenizerSpec. Only what a byte-level BPE needs is
// accepted: model BPE (no dropout, no subword prefix/suffix), normalizer none or NFC, the GPT-2,
// SmolLM2, Llama-3 and Qwen2 pre-tokenizers, a ByteLevel decoder, ByteLevel/TemplateProcessing
// post-processors; anything else is an error naming the file, the value and what is supported.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tinylora/core/error.hpp"
#include "tinylora/text/pretokenize.hpp"
#include "tinylora/text/tokenizer_spec.hpp"

namespace tinylora::text {

namespace detail::tokenizer_json {

inline constexpr char const* kWhere = "Tokenizer::from_tokenizer_json()";

[[noreturn]] inline void fail_spec(std::string const& origin, std::string const& what) {
  fail("Tokenizer::from_tokenizer_json(): ", origin, ": ", what);
}

inline std::string dump_short(nlohmann::json const& j) {
  std::string s = j.dump();
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return s;
}

inline bool json_bool(nlohmann::json const& obj, char const* key, bool fallback) {
  auto const it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  return it->is_boolean() ? it->get<bool>() : fallback;
}

/// PreTokenizer of a tokenizer.json "pre_tokenizer" value, or an error naming what is unknown.
inline PreTokenizer parse_pre_tokenizer(nlohmann::json const& pre, std::string const& origin) {
  auto const unsupported = [&](std::string const& why) -> PreTokenizer {
    fail_spec(origin, "unsupported pre_tokenizer " + dump_short(pre) + " (" + why +
                          "). Hint: supported are ByteLevel(use_regex) = GPT-2, Sequence[Digits(individual_digits), "
                          "ByteLevel(use_regex)] = SmolLM2, and Sequence[Split(Llama-3 or Qwen2 pattern), "
                          "ByteLevel(use_regex = false)].");
  };
  if (!pre.is_object()) return unsupported("expected an object");
  auto const is_byte_level = [&](nlohmann::json const& p, bool use_regex) {
    return p.is_object() && p.value("type", "") == "ByteLevel" && !json_bool(p, "add_prefix_space", false) &&
           json_bool(p, "use_regex", true) == use_regex;
  };
  std::string const type = pre.value("type", "");
  if (type == "ByteLevel") {
    if (json_bool(pre, "add_prefix_space", false)) return unsupported("add_prefix_space = true");
    if (!json_bool(pre, "use_regex", true)) return unsupported("ByteLevel without a split pattern");
    return PreTokenizer::kGpt2;
  }
  if (type != "Sequence") return unsupported("unknown type '" + type + "'");
  auto const it = pre.find("pretokenizers");
  if (it == pre.end() || !it->is_array() || it->size() != 2) return unsupported("expected a Sequence of two");
  nlohmann::json const& first = (*it)[0];
  nlohmann::json const& second = (*it)[1];
  if (first.is_object() && first.value("type", "") == "Digits") {
    if (!json_bool(first, "individual_digits", false)) return unsupported("Digits without individual_digits");
    if (!is_byte_level(second, true)) return unsupported("Digits must be followed by ByteLevel(use_regex = true)");
    return PreTokenizer::kDigitsGpt2;
  }
  if (first.is_object() && first.value("type", "") == "Split") {
    if (!is_byte_level(second, false)) return unsupported("Split must be followed by ByteLevel(use_regex = false)");
    if (first.value("behavior", "") != "Isolated" || json_bool(first, "invert", false)) {
      return unsupported("Split must be Isolated and not inverted");
    }
    auto const pattern = first.find("pattern");
    if (pattern == first.end() || !pattern->is_object() || !pattern->contains("Regex") ||
        !(*pattern)["Regex"].is_string()) {
      return unsupported("Split needs a Regex pattern");
    }
    std::string const regex = (*pattern)["Regex"].get<std::string>();
    if (regex == kLlama3Pattern) return PreTokenizer::kLlama3;
    if (regex == kQwen2Pattern) return PreTokenizer::kQwen2;
    if (regex == kGpt2Pattern) return PreTokenizer::kGpt2;
    return unsupported("unknown Split pattern");
  }
  return unsupported("unknown Sequence");
}

inline Normalizer parse_normalizer(nlohmann::json const& norm, std::string const& origin) {
  if (norm.is_null()) return Normalizer::kNone;
  std::string const type = norm.is_object() ? norm.value("type", "") : "";
  if (type == "NFC") return Normalizer::kNfc;
  if (type == "Sequence" && norm.contains("normalizers") && norm["normalizers"].is_array()) {
    auto const& list = norm["normalizers"];
    if (list.empty()) return Normalizer::kNone;
    if (list.size() == 1) return parse_normalizer(list[0], origin);
  }
  fail_spec(origin, "unsupported normalizer " + dump_short(norm) + ". Hint: supported are none and NFC.");
}

inline void check_decoder(nlohmann::json const& dec, std::string const& origin) {
  if (dec.is_null()) return;
  auto const ok_single = [](nlohmann::json const& d) {
    std::string const type = d.is_object() ? d.value("type", "") : "";
    return type == "ByteLevel" || type == "ByteFallback" || type == "Fuse" || type == "Replace";
  };
  std::string const type = dec.is_object() ? dec.value("type", "") : "";
  if (type == "ByteLevel") return;
  if (type == "Sequence" && dec.contains("decoders") && dec["decoders"].is_array()) {
    bool has_byte_level = false;
    bool all_ok = true;
    for (auto const& d : dec["decoders"]) {
      all_ok = all_ok && ok_single(d);
      has_byte_level = has_byte_level || (d.is_object() && d.value("type", "") == "ByteLevel");
    }
    if (all_ok && has_byte_level) return;
  }
  fail_spec(origin,
            "unsupported decoder " + dump_short(dec) + ". Hint: only byte-level (ByteLevel) decoding is supported.");
}

/// The first id spelled `token` (a repeated spelling keeps its first id, as Tokenizer's table does).
inline std::optional<std::int32_t> first_id_of(TokenizerSpec const& spec, std::string_view token) {
  auto const it = std::find(spec.tokens.begin(), spec.tokens.end(), token);
  if (it == spec.tokens.end()) return std::nullopt;
  return static_cast<std::int32_t>(it - spec.tokens.begin());
}

/// The id of a special token a TemplateProcessing names without listing its ids.
inline std::int32_t id_of_template_token(TokenizerSpec const& spec, std::string const& name, std::string const& origin) {
  auto const id = first_id_of(spec, name);
  if (!id) fail_spec(origin, "TemplateProcessing names the token '" + name + "', which is not in the vocabulary");
  return *id;
}

/// None, ByteLevel (no ids), TemplateProcessing (its "single" template), or a Sequence of them.
inline void parse_post_processor(nlohmann::json const& post, std::string const& origin, TokenizerSpec& out) {
  if (post.is_null()) return;
  std::string const type = post.is_object() ? post.value("type", "") : "";
  if (type == "ByteLevel") return;
  if (type == "Sequence" && post.contains("processors") && post["processors"].is_array()) {
    for (auto const& p : post["processors"]) parse_post_processor(p, origin, out);
    return;
  }
  if (type != "TemplateProcessing") {
    fail_spec(origin, "unsupported post_processor " + dump_short(post) +
                          ". Hint: supported are ByteLevel and TemplateProcessing.");
  }
  auto const single = post.find("single");
  auto const specials = post.find("special_tokens");
  if (single == post.end() || !single->is_array())
    fail_spec(origin, "TemplateProcessing without a \"single\" template");
  bool after_sequence = false;
  for (auto const& item : *single) {
    if (item.is_object() && item.contains("Sequence")) {
      after_sequence = true;
      continue;
    }
    if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].contains("id")) {
      fail_spec(origin, "TemplateProcessing item " + dump_short(item) + " is neither a Sequence nor a SpecialToken");
    }
    std::string const name = item["SpecialToken"]["id"].get<std::string>();
    std::vector<std::int32_t> ids;
    if (specials != post.end() && specials->contains(name) && (*specials)[name].contains("ids")) {
      for (auto const& id : (*specials)[name]["ids"]) ids.push_back(id.get<std::int32_t>());
    } else {
      ids.push_back(id_of_template_token(out, name, origin));
    }
    for (std::int32_t const id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= out.tokens.size())
      fail_spec(origin, "TemplateProcessing token '" + name + "' has id " + std::to_string(id) +
                            " (expected 0 <= id < " + std::to_string(out.tokens.size()) + ")");
  }
    auto& target = after_sequence ? out.template_suffix : out.template_prefix;
    target.insert(target.end(), ids.begin(), ids.end());
  }
  if (out.template_prefix.size() == 1 && out.special_ids.bos < 0) out.special_ids.bos = out.template_prefix[0];
  if (out.template_suffix.size() == 1 && out.special_ids.eos < 0) out.special_ids.eos = out.template_suffix[0];
}


/// bos/eos/pad/unk and chat_template from a Hugging Face tokenizer_config.json.
inline void read_tokenizer_config(std::filesystem::path const& path, TokenizerSpec& out) {
  std::ifstream in(path, std::ios::binary);
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (nlohmann::json::parse_error const& e) {
    fail("Tokenizer::from_tokenizer_json(): '", path.string(), "' is not valid JSON (", e.what(), ")");
  }
  if (!config.is_object()) return;
  auto const id_of = [&](char const* key, std::int32_t fallback) {
    auto const it = config.find(key);
    if (it == config.end()) return fallback;
    std::string content;
    if (it->is_string())
      content = it->get<std::string>();
    else if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
      content = (*it)["content"].get<std::string>();
    else
      return fallback;
    auto const id = first_id_of(out, content);
    return id ? *id : fallback;
  };
  SpecialTokenIds ids = out.special_ids;
  ids.bos = id_of("bos_token", ids.bos);
  ids.eos = id_of("eos_token", ids.eos);
  ids.pad = id_of("pad_token", ids.pad);
  ids.unk = id_of("unk_token", ids.unk);
  out.special_ids = ids;
  if (auto const it = config.find("chat_template"); it != config.end() && it->is_string()) {
    out.chat_template = it->get<std::string>();
  }
}

}  // namespace detail::tokenizer_json

/// The TokenizerSpec of a parsed tokenizer.json; `origin` names the file in errors.
inline TokenizerSpec parse_tokenizer_json(nlohmann::json const& spec, std::string const& origin) {
  using namespace detail::tokenizer_json;
  if (!spec.is_object()) fail_spec(origin, "expected a JSON object at the top level");
  auto const model_it = spec.find("model");
  if (model_it == spec.end() || !model_it->is_object()) {
    fail_spec(origin, "no \"model\" object. Hint: is this a Hugging Face tokenizer.json?");
  }
  nlohmann::json const& model = *model_it;
  std::string const model_type = model.value("type", "");
  if (model_type != "BPE") {
    fail_spec(origin, "unknown model type '" + model_type +
                          "' (expected BPE). Hint: WordPiece, Unigram and "
                          "WordLevel models are not supported.");
  }
  for (char const* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto const it = model.find(key);
    if (it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
      fail_spec(origin, std::string("unsupported BPE option ") + key + " = " + it->dump());
    }
  }
  if (auto const it = model.find("dropout");
      it != model.end() && !it->is_null() && it->is_number() && it->get<double>() > 0.0) {
    fail_spec(origin, "BPE dropout is not supported (got " + it->dump() + ")");
  }
  // vocabulary (+ added tokens) -> dense id table
  auto const vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) fail_spec(origin, "model.vocab is missing or not an object");
  std::vector<std::pair<std::string, std::int64_t>> entries;
  entries.reserve(vocab_it->size());
  for (auto const& [token, id] : vocab_it->items()) {
    if (!id.is_number_integer())
      fail_spec(origin, "model.vocab['" + token + "'] = " + id.dump() + " (expected an integer id)");
    entries.emplace_back(token, id.get<std::int64_t>());
  }
  std::vector<AddedToken> added;
  if (auto const it = spec.find("added_tokens"); it != spec.end() && !it->is_null()) {
    if (!it->is_array()) fail_spec(origin, "added_tokens is not an array");
    for (auto const& a : *it) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string()) {
        fail_spec(origin,
                  "malformed added token " + dump_short(a) + " (expected {\"id\": int, \"content\": string, ...})");
      }
      for (char const* flag : {"lstrip", "rstrip", "single_word"}) {
        if (json_bool(a, flag, false)) {
          fail_spec(origin, "added token " + dump_short(a) + " sets " + flag + ", which is not supported");
        }
      }
      added.push_back({a["content"].get<std::string>(), a["id"].get<std::int32_t>(), json_bool(a, "special", false),
                       json_bool(a, "normalized", false)});
    }
  }
  std::int64_t max_id = -1;
  for (auto const& e : entries) max_id = std::max(max_id, e.second);
  for (auto const& a : added) max_id = std::max<std::int64_t>(max_id, a.id);
  if (max_id < 0) fail_spec(origin, "the vocabulary is empty");
  if (max_id >= (std::int64_t{1} << 31)) fail_spec(origin, "token id " + std::to_string(max_id) + " is too large");
  std::vector<std::string> tokens(static_cast<std::size_t>(max_id + 1));
  std::vector<std::uint8_t> filled(tokens.size(), 0);
  for (auto const& [token, id] : entries) {
    if (id < 0) fail_spec(origin, "model.vocab['" + token + "'] has negative id " + std::to_string(id));
    auto const i = static_cast<std::size_t>(id);
    if (filled[i])
      fail_spec(origin,
                "token id " + std::to_string(id) + " is used twice ('" + tokens[i] + "' and '" + token + "')");
    tokens[i] = token;
    filled[i] = 1;
  }
  for (auto const& a : added) {
    if (a.id < 0) fail_spec(origin, "added token '" + a.content + "' has negative id");
    auto const i = static_cast<std::size_t>(a.id);
    if (filled[i] && tokens[i] != a.content) {
      fail_spec(origin, "added token '" + a.content + "' has id " + std::to_string(a.id) +
                            ", which the vocabulary gives to '" + tokens[i] + "'");
    }
    tokens[i] = a.content;
    filled[i] = 1;
  }
  for (std::size_t i = 0; i < filled.size(); ++i) {
    if (!filled[i])
      fail_spec(origin, "no token has id " + std::to_string(i) + " (expected ids 0.." + std::to_string(max_id) +
                            " without gaps)");
  }
  // merges: "a b" strings (older files) or ["a", "b"] pairs (tokenizers >= 0.20)
  std::vector<std::pair<std::string, std::string>> merges;
  if (auto const it = model.find("merges"); it != model.end() && !it->is_null()) {
    if (!it->is_array()) fail_spec(origin, "model.merges is not an array");
    merges.reserve(it->size());
    std::size_t rank = 0;
    for (auto const& m : *it) {
      if (m.is_string()) {
        merges.push_back(split_merge(m.get<std::string>(), rank, kWhere));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        fail_spec(origin,
                  "merge " + std::to_string(rank) + " is " + dump_short(m) + " (expected \"a b\" or [\"a\", \"b\"])");
      }
      ++rank;
    }
  }
  TokenizerOptions options;
  options.normalizer = parse_normalizer(spec.value("normalizer", nlohmann::json()), origin);
  options.ignore_merges = json_bool(model, "ignore_merges", false);
  options.byte_fallback = json_bool(model, "byte_fallback", false);
  options.fuse_unk = json_bool(model, "fuse_unk", false);
  PreTokenizer const pre = parse_pre_tokenizer(spec.value("pre_tokenizer", nlohmann::json()), origin);
  check_decoder(spec.value("decoder", nlohmann::json()), origin);
  SpecialTokenIds ids;
  if (auto const unk = model.find("unk_token"); unk != model.end() && unk->is_string()) {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] == unk->get<std::string>()) {
        ids.unk = static_cast<std::int32_t>(i);
        break;
      }
    }
  }
  TokenizerSpec out;
  out.tokens = std::move(tokens);
  out.merges = std::move(merges);
  out.added = std::move(added);
  out.special_ids = ids;
  out.pre_tokenizer = pre;
  out.options = options;
  parse_post_processor(spec.value("post_processor", nlohmann::json()), origin, out);
  return out;
}

/// The TokenizerSpec of tokenizer.json text; `origin` names it in errors.
inline TokenizerSpec parse_tokenizer_json_text(std::string_view text, std::string const& origin = "<string>") {
  nlohmann::json spec;
  try {
    spec = nlohmann::json::parse(text.begin(), text.end());
  } catch (nlohmann::json::parse_error const& e) {
    fail("Tokenizer::from_tokenizer_json(): '", origin, "' is not valid JSON (", e.what(),
         "). Hint: the file may be truncated or not a tokenizer.json.");
  }
  return parse_tokenizer_json(spec, origin);
}

/// Reads a Hugging Face tokenizer.json. When a tokenizer_config.json sits beside it, its
/// bos/eos/pad/unk tokens and chat_template are read too (or chat_template.jinja's).
inline TokenizerSpec read_tokenizer_json(std::filesystem::path const& path) {
  std::ifstream in(path, std::ios::binary);
  TINYLORA_CHECK(in, "Tokenizer::from_tokenizer_json(): cannot open '", path.string(),
                 "'. Hint: pass the tokenizer.json of a Hugging Face model directory.");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  TokenizerSpec spec = parse_tokenizer_json_text(buffer.str(), path.string());
  auto const config = path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config)) detail::tokenizer_json::read_tokenizer_config(config, spec);
  auto const jinja = path.parent_path() / "chat_template.jinja";  // where newer transformers save it
  if (spec.chat_template.empty() && std::filesystem::exists(jinja)) {
    std::ifstream template_in(jinja, std::ios::binary);
    std::ostringstream text;
    text << template_in.rdbuf();
    spec.chat_template = text.str();
  }
  return spec;
}

}  // namespace tinylora::text
