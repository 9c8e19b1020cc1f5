// tinylora/train/reward.hpp: a reward as a weighted sum of named terms, each logged on its own.
//   r(y) = sum_k w_k r_k(y)
// Terms (the spec string of Reward::parse in brackets):
//   correct   [correct:RULE=w]    1 when the answer that RULE extracts matches the reference, else 0
//                                 (data::exact_match_reward; RULE: paper-fork | reference | boxed |
//                                 last-number). Under paper-fork the answer must also be written as
//                                 "#### n", under last-number only the arithmetic counts.
//   format    [format:WHICH=w]    1 when the completion ENDS with its final answer in the asked form,
//                                 whatever its value: "#### n" (hash), "\boxed{n}" (boxed) or either
//                                 (either); see ends_with_formatted_answer() for the exact rule.
//   length    [length:C=w]        DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13),
//                                 with L_max the generation limit and C its "cache" window:
//                                   0                          if |y| <= L_max - C
//                                   ((L_max - C) - |y|) / C    if L_max - C < |y| <= L_max
//                                   -1                         if the completion was cut at L_max
//                                 (a completion that stopped on its own at exactly L_max tokens gets
//                                 the window value, -1 for C > 0).
// The default reward is the paper's: "correct:paper-fork=1".
#pragma once

#include <cmath>
#include <cstddef>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/core/error.hpp"
#include "tinylora/core/format.hpp"
#include "tinylora/core/tensor.hpp"
#include "tinylora/data/answer.hpp"

namespace tinylora::train {

/// What a reward term sees of one completion.
struct RewardInput {
  std::string_view text;       // the decoded completion (special tokens and the stop token left out)
  std::string_view reference;  // the bare reference answer (data::gsm8k_reference_answer)
  Index n_tokens = 0;          // generated tokens, the stop token included
  bool stopped = true;         // ended at a stop token (else cut at max_new_tokens)
  Index max_new_tokens = 0;    // L_max of the generation
};

enum class AnswerFormat { Hash, Boxed, Either };

inline char const* to_string(AnswerFormat f) {
  switch (f) {
    case AnswerFormat::Hash: return "hash";
    case AnswerFormat::Boxed: return "boxed";
    case AnswerFormat::Either: return "either";
  }
  return "?";
}

namespace detail {

/// s without trailing whitespace and, once, a trailing '.'; then without trailing whitespace again.
inline std::string_view strip_end_punctuation(std::string_view s) {
  s = data::detail::trim(s);
  if (!s.empty() && s.back() == '.') s.remove_suffix(1);
  return data::detail::trim(s);
}

inline bool is_number(std::string_view s) { return !s.empty() && data::canonical_number(s).has_value(); }

}  // namespace detail

/// Whether a completion ends with its final answer written as asked:
///   hash:  the text after the last "####" is one number (data::canonical_number: "1,000", "-3",
///          "$5", "1/2"), and nothing but whitespace and one '.' follows it;
///   boxed: the last "\boxed{...}" holds one number, and nothing follows its closing brace but
///          whitespace, one '.', and the closing math delimiters "$", "$$", "\]" or "\)";
///   either: one of the two.
/// So "... #### 12" and "... so the answer is \boxed{12}." are formatted; "#### 12 apples",
/// "#### 12\nLet me check" and a bare "12" are not.
inline bool ends_with_formatted_answer(std::string_view text, AnswerFormat f) {
  auto const hash = [&] {
    std::size_t const p = text.rfind("####");
    return p != std::string_view::npos && detail::is_number(detail::strip_end_punctuation(text.substr(p + 4)));
  };
  auto const boxed = [&] {
    std::size_t const p = text.rfind("\\boxed");
    if (p == std::string_view::npos) return false;
    std::size_t open = p + 6;
    while (open < text.size() && data::detail::is_space(text[open])) ++open;
    if (open >= text.size() || text[open] != '{') return false;
    std::size_t close = open;  // its matching brace
    for (int depth = 0; close < text.size(); ++close) {
      if (text[close] == '{') ++depth;
      if (text[close] == '}' && --depth == 0) break;
    }
    if (close >= text.size() || !detail::is_number(data::detail::trim(text.substr(open + 1, close - open - 1)))) return false;
    std::string_view rest = data::detail::trim(text.substr(close + 1));
    for (std::string_view closing : {"$$", "$", "\\]", "\\)"})
      if (rest.starts_with(closing)) {
        rest = data::detail::trim(rest.substr(closing.size()));
        break;
      }
    if (!rest.empty() && rest.front() == '.') rest.remove_prefix(1);
    return data::detail::trim(rest).empty();
  };
  switch (f) {
    case AnswerFormat::Hash: return hash();
    case AnswerFormat::Boxed: return boxed();
    case AnswerFormat::Either: return hash() || boxed();
  }
  return false;
}

/// DAPO's soft overlong punishment (see the header comment).
inline double overlong_penalty(Index n_tokens, bool stopped, Index max_new_tokens, Index cache) {
  if (!stopped && n_tokens >= max_new_tokens) return -1.0;
  Index const free = max_new_tokens - cache;
  if (n_tokens <= free) return 0.0;
  return static_cast<double>(free - n_tokens) / static_cast<double>(cache);
}

/// One weighted term of a reward.
struct RewardTerm {
  enum class Kind { Correct, Format, Length } kind = Kind::Correct;
  double weight = 1.0;
  data::ExtractRule rule = data::ExtractRule::PaperFork;  // Correct
  AnswerFormat format = AnswerFormat::Either;             // Format
  Index cache = 0;                                        // Length: the soft window C in tokens

  /// The term's name in logs: correct_<rule>, format_<which>, length.
  std::string name() const {
    switch (kind) {
      case Kind::Correct: return std::string("correct_") + data::to_string(rule);
      case Kind::Format: return std::string("format_") + to_string(format);
      case Kind::Length: return "length";
    }
    return "?";
  }

  /// r_k(y), before the weight.
  double value(RewardInput const& in) const {
    switch (kind) {
      case Kind::Correct: return data::exact_match_reward(in.text, in.reference, rule);
      case Kind::Format: return ends_with_formatted_answer(in.text, format) ? 1.0 : 0.0;
      case Kind::Length: return overlong_penalty(in.n_tokens, in.stopped, in.max_new_tokens, cache);
    }
    return 0.0;
  }
};

/// r(y) = sum_k w_k r_k(y), with every r_k(y) kept for the logs.
struct Reward {
  std::vector<RewardTerm> terms;

  /// The paper's reward: exact match under one rule.
  static Reward exact_match(data::ExtractRule rule) { return {{RewardTerm{RewardTerm::Kind::Correct, 1.0, rule}}}; }

  /// "TERM[:ARG][=WEIGHT],..." with TERM correct (ARG: a rule, default `default_rule`), format (ARG:
  /// hash | boxed | either, default either) or length (ARG: the window C in tokens, required);
  /// WEIGHT defaults to 1. Example: "correct:last-number=1,format:hash=0.5,length:32=1".
  static Reward parse(std::string_view spec, data::ExtractRule default_rule) {
    Reward r;
    std::size_t start = 0;
    while (start <= spec.size()) {
      std::size_t const comma = spec.find(',', start);
      std::string_view item = data::detail::trim(spec.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
      start = comma == std::string_view::npos ? spec.size() + 1 : comma + 1;
      TINYLORA_CHECK(!item.empty(), "Reward::parse(): empty term in '", spec,
                     "'. Hint: write terms as TERM[:ARG][=WEIGHT], comma-separated, e.g. correct:last-number=1,format:hash=0.5");
      RewardTerm t;
      if (std::size_t const eq = item.find('='); eq != std::string_view::npos) {
        std::string const w(item.substr(eq + 1));
        std::size_t used = 0;
        try {
          t.weight = std::stod(w, &used);
        } catch (std::exception const&) {
          used = 0;
        }
        TINYLORA_CHECK(used == w.size() && used > 0 && std::isfinite(t.weight), "Reward::parse(): the weight '", w, "' of '", item,
                       "' is not a finite number");
        item = item.substr(0, eq);
      }
      std::string_view name = item, arg;
      if (std::size_t const colon = item.find(':'); colon != std::string_view::npos) name = item.substr(0, colon), arg = item.substr(colon + 1);
      if (name == "correct") {
        t.kind = RewardTerm::Kind::Correct;
        t.rule = arg.empty() ? default_rule : data::extract_rule_from_string(arg);
      } else if (name == "format") {
        t.kind = RewardTerm::Kind::Format;
        if (arg.empty() || arg == "either") t.format = AnswerFormat::Either;
        else if (arg == "hash") t.format = AnswerFormat::Hash;
        else if (arg == "boxed") t.format = AnswerFormat::Boxed;
        else fail("Reward::parse(): unknown answer format '", arg, "' in '", item, "' (expected hash, boxed or either)");
      } else if (name == "length") {
        t.kind = RewardTerm::Kind::Length;
        std::string const c(arg);
        std::size_t used = 0;
        long long cache = -1;
        try {
          cache = std::stoll(c, &used);
        } catch (std::exception const&) {
          used = 0;
        }
        TINYLORA_CHECK(used == c.size() && used > 0 && cache >= 1, "Reward::parse(): '", item,
                       "' needs its soft window in tokens, a whole number >= 1 (e.g. length:32)");
        t.cache = static_cast<Index>(cache);
      } else {
        fail("Reward::parse(): unknown reward term '", name, "' in '", spec, "' (expected correct, format or length)");
      }
      for (auto const& other : r.terms)
        TINYLORA_CHECK(other.name() != t.name(), "Reward::parse(): the term ", t.name(), " appears twice in '", spec, "'");
      r.terms.push_back(t);
    }
    return r;
  }

  /// The spec string parse() reads back to this reward.
  std::string describe() const {
    std::string out;
    for (auto const& t : terms) {
      if (!out.empty()) out += ",";
      switch (t.kind) {
        case RewardTerm::Kind::Correct: out.append("correct:").append(data::to_string(t.rule)); break;
        case RewardTerm::Kind::Format: out.append("format:").append(to_string(t.format)); break;
        case RewardTerm::Kind::Length: out.append("length:").append(std::to_string(t.cache)); break;
      }
      out.append("=").append(exact(t.weight));
    }
    return out;
  }

  /// Checks the reward against the generation limit it will see (the length window must fit in it).
  void validate(Index max_new_tokens) const {
    TINYLORA_CHECK(!terms.empty(), "Reward: no terms. Hint: --reward correct:paper-fork=1 is the paper's reward.");
    for (auto const& t : terms)
      TINYLORA_CHECK(t.kind != RewardTerm::Kind::Length || t.cache <= max_new_tokens, "Reward: the length window ", t.cache,
                     " is longer than the generation limit ", max_new_tokens, ". Hint: use length:C with C <= --max-new-tokens.");
  }

  struct Scored {
    double total = 0;
    std::vector<double> components;  // (terms) r_k before the weights
  };

  Scored score(RewardInput const& in) const {
    Scored s;
    for (auto const& t : terms) {
      double const v = t.value(in);
      s.components.push_back(v);
      s.total += t.weight * v;
    }
    return s;
  }
};

}  // namespace tinylora::train
