// tinylora/data/answer.hpp: final-answer extraction from a model's completion (the published rules:
// the paper's fork, the reference implementation, \boxed{}, last number) and the exact-match reward
// that GRPO trains on, with exact numeric canonicalization ("1,000.00" == "1000" == "$1000.").
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>

#include "tinylora/core/error.hpp"

namespace tinylora::data {

/// Which final-answer rule a reward uses (REFERENCE.md section 4). In every rule a "number" is the
/// token  [sign][$]digits[,digits]*[.digits][/digits]  (or [sign][$].digits): a comma or a dot belongs
/// to the number only when a digit follows it, so the dot of "is 5." and the comma of "1, 2" do not;
/// a '-' is a sign only when no letter, digit or closing bracket stands right before it ("10-3" ends
/// in the number 3). Extracted numbers come back with '$', ',' and a leading '+' removed
/// ("-$1,000.50" -> "-1000.50"); canonical_number() does the rest.
enum class ExtractRule {
  /// The author's training fork: the last "####" that lies wholly within the last 300 characters
  /// (Unicode code points of the UTF-8 text) of the completion, then the number after it (after any
  /// whitespace). No number right after that "####" means no answer, even if an earlier one has one.
  PaperFork,
  /// The reference implementation: the number after the first "####" (when the first "####" is
  /// followed by one), else the content of the last \boxed{...}, else the last number in the text;
  /// the result has '$' and ',' removed and trailing dots stripped.
  Reference,
  /// The content (trimmed, as written) of the last complete \boxed{...}, with nested braces:
  /// "\boxed{\frac{1}{2}}" -> "\frac{1}{2}". An unclosed \boxed{ is ignored.
  Boxed,
  /// The last number in the text.
  LastNumber,
};

inline constexpr std::size_t kPaperForkWindow = 300;  // characters searched from the end by PaperFork

inline char const* to_string(ExtractRule r) {
  switch (r) {
    case ExtractRule::PaperFork: return "paper-fork";
    case ExtractRule::Reference: return "reference";
    case ExtractRule::Boxed: return "boxed";
    case ExtractRule::LastNumber: return "last-number";
  }
  return "?";
}

/// "paper-fork" | "reference" | "boxed" | "last-number" (the spellings of to_string()).
inline ExtractRule extract_rule_from_string(std::string_view name) {
  for (auto r : {ExtractRule::PaperFork, ExtractRule::Reference, ExtractRule::Boxed, ExtractRule::LastNumber})
    if (name == to_string(r)) return r;
  fail("extract_rule_from_string(): unknown rule '", name,
       "' (expected paper-fork, reference, boxed or last-number)");
}

namespace detail {

inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
inline bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

inline bool digit_at(std::string_view s, std::size_t i) { return i < s.size() && is_digit(s[i]); }

/// End of the number body (digits[,digits]*[.digits] or .digits) starting at i; i itself if none.
inline std::size_t number_body_end(std::string_view s, std::size_t i) {
  std::size_t j = i;
  if (digit_at(s, j)) {
    while (digit_at(s, j) || (s[j] == ',' && digit_at(s, j + 1))) ++j;
    if (j < s.size() && s[j] == '.' && digit_at(s, j + 1)) {
      ++j;
      while (digit_at(s, j)) ++j;
    }
  } else if (j < s.size() && s[j] == '.' && digit_at(s, j + 1)) {
    ++j;
    while (digit_at(s, j)) ++j;
  }
  return j;
}

/// The number token starting exactly at i ([sign][$][sign]body[/digits]); its end, or i if none.
inline std::size_t number_token_end(std::string_view s, std::size_t i) {
  std::size_t j = i;
  bool signed_ = false;
  if (j < s.size() && (s[j] == '-' || s[j] == '+')) ++j, signed_ = true;
  if (j < s.size() && s[j] == '$') ++j;
  if (!signed_ && j < s.size() && (s[j] == '-' || s[j] == '+') && j > i) ++j;  // "$-5"
  std::size_t const body = number_body_end(s, j);
  if (body == j) return i;
  j = body;
  if (j + 1 < s.size() && s[j] == '/' && digit_at(s, j + 1)) {
    ++j;
    while (digit_at(s, j)) ++j;
  }
  return j;
}

/// A token with '$', ',' and a leading '+' removed.
inline std::string clean_number(std::string_view token) {
  std::string out;
  for (char c : token)
    if (c != '$' && c != ',') out.push_back(c);
  if (!out.empty() && out.front() == '+') out.erase(0, 1);
  if (out.size() > 1 && out[0] == '-' && out[1] == '+') out.erase(1, 1);
  return out;
}

/// The number right after position i (whitespace skipped), cleaned; nullopt if none.
inline std::optional<std::string> number_after(std::string_view s, std::size_t i) {
  while (i < s.size() && is_space(s[i])) ++i;
  std::size_t const end = number_token_end(s, i);
  if (end == i) return std::nullopt;
  return clean_number(s.substr(i, end - i));
}

/// Whether a '-' or '+' at i can be a sign (not "10-3", "x-1", "(a)-2").
inline bool sign_allowed_at(std::string_view s, std::size_t i) {
  if (i == 0) return true;
  char const p = s[i - 1];
  return !(is_digit(p) || is_alpha(p) || p == ')' || p == ']' || p == '}' || p == '_');
}

/// The last number token in s, cleaned; nullopt if s holds no digit.
inline std::optional<std::string> last_number(std::string_view s) {
  std::optional<std::string> last;
  std::size_t i = 0;
  while (i < s.size()) {
    char const c = s[i];
    bool start = false;
    if (is_digit(c)) {
      start = true;
    } else if (c == '.') {
      start = digit_at(s, i + 1) && !(i > 0 && is_digit(s[i - 1]));
    } else if (c == '$') {
      start = number_token_end(s, i) > i;
    } else if (c == '-' || c == '+') {
      start = sign_allowed_at(s, i) && number_token_end(s, i) > i;
    }
    if (!start) {
      ++i;
      continue;
    }
    std::size_t const end = number_token_end(s, i);
    last = clean_number(s.substr(i, end - i));
    i = end;
  }
  return last;
}

/// Content of the last complete \boxed{...} (nested braces balanced), trimmed; nullopt if none.
inline std::optional<std::string> last_boxed(std::string_view s) {
  constexpr std::string_view kTag = "\\boxed";
  std::optional<std::string> last;
  for (std::size_t p = s.find(kTag); p != std::string_view::npos; p = s.find(kTag, p + 1)) {
    std::size_t j = p + kTag.size();
    while (j < s.size() && is_space(s[j])) ++j;
    if (j >= s.size() || s[j] != '{') continue;
    std::size_t const open = j;
    int depth = 0;
    for (; j < s.size(); ++j) {
      if (s[j] == '\\' && j + 1 < s.size() && (s[j + 1] == '{' || s[j + 1] == '}')) {
        ++j;  // an escaped brace does not count
        continue;
      }
      if (s[j] == '{') ++depth;
      if (s[j] == '}' && --depth == 0) break;
    }
    if (j < s.size()) last = std::string(trim(s.substr(open + 1, j - open - 1)));
  }
  return last;
}

/// Start of the last kPaperForkWindow code points of UTF-8 text s.
inline std::size_t window_start(std::string_view s, std::size_t n_chars) {
  std::size_t i = s.size();
  std::size_t count = 0;
  while (i > 0 && count < n_chars) {
    --i;
    if ((static_cast<unsigned char>(s[i]) & 0xC0u) != 0x80u) ++count;  // not a continuation byte
  }
  return i;
}

/// Reference-rule cleaning: '$' and ',' removed, trimmed, trailing dots stripped.
inline std::string strip_reference(std::string_view s) {
  std::string out;
  for (char c : s)
    if (c != '$' && c != ',') out.push_back(c);
  std::string_view t = trim(out);
  while (!t.empty() && t.back() == '.') t.remove_suffix(1);
  return std::string(trim(t));
}

}  // namespace detail

/// The final answer of a completion under a rule, or nullopt when the rule finds none.
inline std::optional<std::string> extract_answer(std::string_view completion, ExtractRule rule) {
  switch (rule) {
    case ExtractRule::PaperFork: {
      std::string_view const tail = completion.substr(detail::window_start(completion, kPaperForkWindow));
      std::size_t const p = tail.rfind("####");
      if (p == std::string_view::npos) return std::nullopt;
      return detail::number_after(tail, p + 4);
    }
    case ExtractRule::Reference: {
      std::size_t const p = completion.find("####");
      if (p != std::string_view::npos) {
        if (auto n = detail::number_after(completion, p + 4)) return detail::strip_reference(*n);
      }
      if (auto b = detail::last_boxed(completion)) return detail::strip_reference(*b);
      if (auto n = detail::last_number(completion)) return detail::strip_reference(*n);
      return std::nullopt;
    }
    case ExtractRule::Boxed: return detail::last_boxed(completion);
    case ExtractRule::LastNumber: return detail::last_number(completion);
  }
  return std::nullopt;
}

namespace detail {

/// A decimal "[digits][.digits]" (commas between digits allowed) -> canonical "int[.frac]" without
/// leading/trailing zeros, or nullopt. Unsigned.
inline std::optional<std::string> canonical_unsigned_decimal(std::string_view s) {
  std::string int_part, frac_part;
  std::size_t i = 0;
  while (i < s.size() && (is_digit(s[i]) || (s[i] == ',' && i > 0 && is_digit(s[i - 1]) && digit_at(s, i + 1)))) {
    if (s[i] != ',') int_part.push_back(s[i]);
    ++i;
  }
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && is_digit(s[i])) frac_part.push_back(s[i++]);
  }
  if (i != s.size() || (int_part.empty() && frac_part.empty())) return std::nullopt;
  std::size_t const nz = int_part.find_first_not_of('0');
  int_part = nz == std::string::npos ? "0" : int_part.substr(nz);
  while (!frac_part.empty() && frac_part.back() == '0') frac_part.pop_back();
  return frac_part.empty() ? int_part : int_part + "." + frac_part;
}

/// A signed decimal: optional '+'/'-' then an unsigned decimal; "-0" -> "0".
inline std::optional<std::string> canonical_signed_decimal(std::string_view s) {
  s = trim(s);
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s = trim(s.substr(1));
  }
  auto d = canonical_unsigned_decimal(s);
  if (!d) return std::nullopt;
  if (*d == "0") return d;
  return negative ? "-" + *d : *d;
}

/// x * y, or nullopt on 64-bit overflow.
inline std::optional<std::uint64_t> checked_mul(std::uint64_t x, std::uint64_t y) {
  if (x != 0 && y > UINT64_MAX / x) return std::nullopt;
  return x * y;
}

/// A canonical signed decimal as (negative, mantissa, exponent): value = ±mantissa / 10^exponent.
struct Scaled {
  bool negative = false;
  std::uint64_t mantissa = 0;
  std::uint64_t exponent = 0;
};

inline std::optional<Scaled> to_scaled(std::string const& canonical) {
  Scaled out;
  std::size_t i = 0;
  if (canonical[0] == '-') out.negative = true, i = 1;
  bool after_dot = false;
  for (; i < canonical.size(); ++i) {
    if (canonical[i] == '.') {
      after_dot = true;
      continue;
    }
    auto m = checked_mul(out.mantissa, 10);
    if (!m || *m > UINT64_MAX - static_cast<std::uint64_t>(canonical[i] - '0')) return std::nullopt;
    out.mantissa = *m + static_cast<std::uint64_t>(canonical[i] - '0');
    if (after_dot) ++out.exponent;
  }
  return out;
}

inline std::optional<std::uint64_t> pow10(std::uint64_t e) {
  std::uint64_t r = 1;
  for (std::uint64_t k = 0; k < e; ++k) {
    auto m = checked_mul(r, 10);
    if (!m) return std::nullopt;
    r = *m;
  }
  return r;
}

/// numerator/denominator (both canonical signed decimals) -> canonical decimal when the reduced
/// denominator is 2^i 5^j, else "p/q" reduced with the sign on p; nullopt for 0 denominators and
/// terms beyond 64 bits.
inline std::optional<std::string> canonical_fraction(std::string const& num, std::string const& den) {
  auto a = to_scaled(num), b = to_scaled(den);
  if (!a || !b || b->mantissa == 0) return std::nullopt;
  // (ma / 10^ea) / (mb / 10^eb) = ma 10^eb / (mb 10^ea)
  auto const pa = pow10(b->exponent), pb = pow10(a->exponent);
  if (!pa || !pb) return std::nullopt;
  auto p = checked_mul(a->mantissa, *pa), q = checked_mul(b->mantissa, *pb);
  if (!p || !q) return std::nullopt;
  bool const negative = (a->negative != b->negative) && *p != 0;
  std::uint64_t const g = std::gcd(*p, *q);
  std::uint64_t const pr = *p / g, qr = *q / g;
  std::uint64_t rest = qr, twos = 0, fives = 0;
  while (rest % 2 == 0) rest /= 2, ++twos;
  while (rest % 5 == 0) rest /= 5, ++fives;
  std::string const sign = negative ? "-" : "";
  if (rest != 1) return sign + std::to_string(pr) + "/" + std::to_string(qr);
  std::uint64_t const k = twos > fives ? twos : fives;
  auto const scale = pow10(k);
  if (!scale) return std::nullopt;
  auto const digits_value = checked_mul(pr, *scale / qr);
  if (!digits_value) return std::nullopt;
  std::string digits = std::to_string(*digits_value);
  if (digits.size() <= k) digits.insert(0, k + 1 - digits.size(), '0');
  std::string text = digits.substr(0, digits.size() - k);
  if (k > 0) text.append(".").append(digits, digits.size() - k, k);
  auto c = canonical_unsigned_decimal(text);
  if (!c) return std::nullopt;
  return *c == "0" ? *c : sign + *c;
}

/// Removes every occurrence of `what` from s.
inline void erase_all(std::string& s, std::string_view what) {
  for (std::size_t p = s.find(what); p != std::string::npos; p = s.find(what, p)) s.erase(p, what.size());
}

}  // namespace detail

/// The canonical text of a number, or nullopt if s is not one. Accepted, in order:
///  - surrounding whitespace; '$' and "\$" anywhere; LaTeX spacing "\," "\!" "\ " removed;
///  - one trailing '%' (or "\%") dropped: "50%" == "50" (GSM8K writes percentages as bare numbers;
///    the value is NOT divided by 100);
///  - trailing dots dropped ("5." == "5"); a leading '+' or '-' (spaces after it allowed);
///  - commas between digits of the integer part are thousands separators and are dropped
///    (grouping is not checked, as in the published rules that strip every comma);
///  - a decimal: leading zeros, trailing fractional zeros and a bare ".0" go ("1,000.00" -> "1000",
///    ".50" -> "0.5"); "-0" and "-0.0" become "0";
///  - a fraction "a/b", "\frac{a}{b}", "\dfrac{a}{b}" or "\tfrac{a}{b}" (a, b decimals, signed)
///    is reduced exactly: written as a decimal when the reduced denominator has no prime factor but
///    2 and 5 ("1/2" -> "0.5", "\frac{6}{4}" -> "1.5"), else as "p/q" ("2/6" -> "1/3", "-1/3");
///    a zero denominator or a term beyond 64 bits is not a number.
/// Not numbers: units or words ("5 apples"), mixed numbers ("1 1/2"), exponents ("1e3"), lists.
inline std::optional<std::string> canonical_number(std::string_view text) {
  std::string s(detail::trim(text));
  detail::erase_all(s, "\\$");
  detail::erase_all(s, "$");
  detail::erase_all(s, "\\,");
  detail::erase_all(s, "\\!");
  detail::erase_all(s, "\\ ");
  s = std::string(detail::trim(s));
  if (s.size() >= 2 && s.compare(s.size() - 2, 2, "\\%") == 0) s.resize(s.size() - 2);
  else if (!s.empty() && s.back() == '%') s.pop_back();
  s = std::string(detail::trim(s));
  while (!s.empty() && s.back() == '.') s.pop_back();
  s = std::string(detail::trim(s));
  if (s.empty()) return std::nullopt;

  // sign outside a \frac: "-\frac{1}{2}"
  bool outer_negative = false;
  std::string_view body = s;
  if (body[0] == '-' || body[0] == '+') {
    outer_negative = body[0] == '-';
    body = detail::trim(body.substr(1));
  }
  for (std::string_view tag : {"\\frac", "\\dfrac", "\\tfrac"}) {
    if (body.substr(0, tag.size()) != tag) continue;
    std::string_view rest = detail::trim(body.substr(tag.size()));
    auto group = [&rest]() -> std::optional<std::string_view> {  // one {...} without nesting
      rest = detail::trim(rest);
      if (rest.empty() || rest[0] != '{') return std::nullopt;
      std::size_t const close = rest.find('}');
      if (close == std::string_view::npos) return std::nullopt;
      std::string_view const inner = rest.substr(1, close - 1);
      rest = rest.substr(close + 1);
      return inner;
    };
    auto const num = group(), den = group();
    if (!num || !den || !detail::trim(rest).empty()) return std::nullopt;
    auto const a = detail::canonical_signed_decimal(*num), b = detail::canonical_signed_decimal(*den);
    if (!a || !b) return std::nullopt;
    auto f = detail::canonical_fraction(*a, *b);
    if (!f || !outer_negative || *f == "0") return f;
    return f->front() == '-' ? f->substr(1) : "-" + *f;
  }
  std::size_t const slash = s.find('/');
  if (slash != std::string::npos) {
    auto const a = detail::canonical_signed_decimal(std::string_view(s).substr(0, slash));
    auto const b = detail::canonical_signed_decimal(std::string_view(s).substr(slash + 1));
    if (!a || !b) return std::nullopt;
    return detail::canonical_fraction(*a, *b);
  }
  return detail::canonical_signed_decimal(s);
}

/// Exact equality of two answers: canonical numbers compare exactly (no float tolerance);
/// otherwise (either side not a number) the trimmed strings must be equal.
inline bool answers_match(std::string_view predicted, std::string_view reference) {
  auto const p = canonical_number(predicted), r = canonical_number(reference);
  if (p && r) return *p == *r;
  return detail::trim(predicted) == detail::trim(reference);
}

/// GSM8K's final answer: the trimmed text after the last "####" of its answer field; a text with no
/// "####" is returned trimmed (it is taken to be a bare answer already).
inline std::string gsm8k_reference_answer(std::string_view answer_field) {
  std::size_t const p = answer_field.rfind("####");
  if (p == std::string_view::npos) return std::string(detail::trim(answer_field));
  return std::string(detail::trim(answer_field.substr(p + 4)));
}

/// The exact-match reward: 1 when the answer extracted from the completion by `rule` matches
/// reference_answer (a bare answer, e.g. gsm8k_reference_answer(example.answer)), else 0.
inline double exact_match_reward(std::string_view completion, std::string_view reference_answer, ExtractRule rule) {
  auto const got = extract_answer(completion, rule);
  return got && answers_match(*got, reference_answer) ? 1.0 : 0.0;
}

}  // namespace tinylora::data
