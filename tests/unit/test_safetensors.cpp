// Tests of io/safetensors.hpp, io/safetensors_writer.hpp and io/hf_model.hpp: the committed tiny HF model folders written by
// tests/reference/make_fixtures.py (shapes against config.json, values against sums recorded by
// numpy in the sidecar), dtype conversion on hand-built files, sharded folders, and malformed
// files and configs, which must give a tinylora::Error with a clear message, never a crash.
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../support.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/io/hf_model.hpp"
#include "tinylora/io/safetensors.hpp"
#include "tinylora/io/safetensors_writer.hpp"
#include "tinylora/precision/types.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using tinylora::bf16;
using tinylora::fp16;
using tinylora::io::HfDecoderConfig;
using tinylora::io::HfModelDir;
using tinylora::io::SafetensorsDtype;
using tinylora::io::SafetensorsFile;

namespace {

using Bytes = std::vector<std::uint8_t>;

fs::path fixtures() { return tinylora::test::source_dir() / "tests" / "reference" / "fixtures"; }

template <class T>
Bytes as_bytes(std::vector<T> const& values) {
  Bytes out(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  Bytes data;
};

/// A file from a header text and a data section, exactly as given (for malformed cases).
Bytes raw_file(std::string const& header, Bytes const& data) {
  std::uint64_t const n = header.size();
  Bytes out(8 + header.size() + data.size());
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

/// A well-formed file: entries laid out in order, header padded with spaces to a multiple of 8.
Bytes build_file(std::vector<Entry> const& entries, json metadata = nullptr) {
  json header = json::object();
  Bytes data;
  for (auto const& e : entries) {
    header[e.name] = {{"dtype", e.dtype},
                      {"shape", e.shape},
                      {"data_offsets", {data.size(), data.size() + e.data.size()}}};
    data.insert(data.end(), e.data.begin(), e.data.end());
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  return raw_file(text, data);
}

void write_file(fs::path const& path, Bytes const& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<char const*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

void write_text(fs::path const& path, std::string const& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

Bytes read_file(fs::path const& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// The message of the tinylora::Error that opening `path` throws ("" if it opens). Any other
/// exception escapes and fails the test.
std::string open_error(fs::path const& path) {
  try {
    (void)SafetensorsFile::open(path);
  } catch (tinylora::Error const& e) {
    return e.what();
  }
  return "";
}

std::string dir_error(fs::path const& dir) {
  try {
    (void)HfModelDir::open(dir);
  } catch (tinylora::Error const& e) {
    return e.what();
  }
  return "";
}

std::string config_error(json const& j) {
  try {
    (void)HfDecoderConfig::from_json(j);
  } catch (tinylora::Error const& e) {
    return e.what();
  }
  return "";
}

void check_contains(std::string const& message, std::vector<std::string> const& parts) {
  INFO("message: " << message);
  CHECK_FALSE(message.empty());
  for (auto const& p : parts) {
    INFO("expected fragment: " << p);
    CHECK(message.find(p) != std::string::npos);
  }
}

std::string quoted(std::string const& name) {
  std::string s = "'";
  s += name;
  s += "'";
  return s;
}

/// Expected (name -> shape) of a Llama-family checkpoint, derived from its config only.
std::map<std::string, std::vector<std::int64_t>> expected_shapes(HfDecoderConfig const& c) {
  std::map<std::string, std::vector<std::int64_t>> s;
  auto const d = c.hidden_size;
  s["model.embed_tokens.weight"] = {c.vocab_size, d};
  s["model.norm.weight"] = {d};
  if (!c.tie_word_embeddings) s["lm_head.weight"] = {c.vocab_size, d};
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto const p = "model.layers." + std::to_string(l) + ".";
    s[p + "input_layernorm.weight"] = {d};
    s[p + "post_attention_layernorm.weight"] = {d};
    s[p + "self_attn.q_proj.weight"] = {c.q_dim(), d};
    s[p + "self_attn.k_proj.weight"] = {c.kv_dim(), d};
    s[p + "self_attn.v_proj.weight"] = {c.kv_dim(), d};
    s[p + "self_attn.o_proj.weight"] = {d, c.q_dim()};
    if (c.attention_bias) {
      s[p + "self_attn.q_proj.bias"] = {c.q_dim()};
      s[p + "self_attn.k_proj.bias"] = {c.kv_dim()};
      s[p + "self_attn.v_proj.bias"] = {c.kv_dim()};
    }
    if (c.attention_out_bias) s[p + "self_attn.o_proj.bias"] = {d};
    s[p + "mlp.gate_proj.weight"] = {c.intermediate_size, d};
    s[p + "mlp.up_proj.weight"] = {c.intermediate_size, d};
    s[p + "mlp.down_proj.weight"] = {d, c.intermediate_size};
  }
  return s;
}

json read_json(fs::path const& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << path.string()
                                                 << " (run tests/reference/make_fixtures.py)");
  return json::parse(in);
}

json tiny_llama_config() {
  return json{{"model_type", "llama"},        {"hidden_size", 64},       {"intermediate_size", 128},
              {"num_hidden_layers", 2},       {"num_attention_heads", 4}, {"num_key_value_heads", 2},
              {"rms_norm_eps", 1e-6},         {"rope_theta", 10000.0},   {"max_position_embeddings", 256},
              {"vocab_size", 512},            {"tie_word_embeddings", true},
              {"bos_token_id", 1},            {"eos_token_id", 2},       {"torch_dtype", "float32"}};
}

}  // namespace

// ---- committed fixtures (independent reference: transformers' save_pretrained + numpy) -------

TEST_CASE("tiny HF model folders: tensor names and shapes follow config.json, values match numpy") {
  for (std::string const name : {"tiny_llama", "tiny_qwen2"}) {
    CAPTURE(name);
    auto const model = HfModelDir::open(fixtures() / name);
    auto const config = model.decoder_config();
    CHECK(config.hidden_size == 64);
    CHECK(config.intermediate_size == 128);
    CHECK(config.num_hidden_layers == 2);
    CHECK(config.num_attention_heads == 4);
    CHECK(config.num_key_value_heads == 2);
    CHECK(config.head_dim == 16);
    CHECK(config.vocab_size == 512);
    CHECK(config.rms_norm_eps == doctest::Approx(1e-6));
    CHECK(config.rope_theta == 10000.0);
    CHECK(config.torch_dtype == "float32");
    CHECK(model.shard_count() == 1);
    CHECK(fs::exists(model.tokenizer_json()));
    CHECK(model.generation_config().has_value());

    auto const want = expected_shapes(config);
    auto const names = model.tensor_names();
    CHECK(names.size() == want.size());
    for (auto const& entry : want) {
      auto const& tensor = entry.first;
      auto const& shape = entry.second;
      CAPTURE(tensor);
      REQUIRE(model.has_tensor(tensor));
      CHECK(model.tensor_info(tensor).shape == shape);
      CHECK(model.tensor_info(tensor).dtype == SafetensorsDtype::kF32);
    }

    // Values against the sidecar's numpy summaries (sum, |.|-sum, first four values).
    auto const sidecar = read_json(fixtures() / ("model_" + name + ".json"));
    CHECK(sidecar.at("format_version") == 1);
    auto const& weights = sidecar.at("weights");
    CHECK(weights.size() == want.size());
    for (auto const& item : weights.items()) {
      std::string const tensor = item.key();
      auto const& summary = item.value();
      CAPTURE(tensor);
      auto const shape = summary.at("shape").get<std::vector<std::int64_t>>();
      auto const values = model.read<float>(tensor, shape);
      double sum = 0, abs_sum = 0;
      for (float const v : values) {
        sum += v;
        abs_sum += std::abs(v);
      }
      double const want_abs = summary.at("abs_sum").get<double>();
      CHECK(std::abs(sum - summary.at("sum").get<double>()) <= 1e-9 * want_abs + 1e-12);
      CHECK(std::abs(abs_sum - want_abs) <= 1e-9 * want_abs + 1e-12);
      auto const first = summary.at("first").get<std::vector<double>>();
      for (std::size_t i = 0; i < first.size(); ++i) CHECK(static_cast<double>(values[i]) == first[i]);
    }
  }
}

TEST_CASE("tiny HF model configs: llama ties embeddings, qwen2 has q/k/v biases and an eos list") {
  auto const llama = HfModelDir::open(fixtures() / "tiny_llama").decoder_config();
  CHECK(llama.model_type == "llama");
  CHECK(llama.tie_word_embeddings);
  CHECK_FALSE(llama.attention_bias);
  CHECK(llama.bos_token_ids == std::vector<std::int64_t>{1});
  CHECK(llama.eos_token_ids == std::vector<std::int64_t>{2});
  CHECK_FALSE(HfModelDir::open(fixtures() / "tiny_llama").has_tensor("lm_head.weight"));

  auto const qwen = HfModelDir::open(fixtures() / "tiny_qwen2").decoder_config();
  CHECK(qwen.model_type == "qwen2");
  CHECK_FALSE(qwen.tie_word_embeddings);
  CHECK(qwen.attention_bias);
  CHECK_FALSE(qwen.attention_out_bias);
  CHECK_FALSE(qwen.sliding_window.has_value());
  CHECK(qwen.eos_token_ids == std::vector<std::int64_t>{2, 0});
}

TEST_CASE("tiny model forward fixtures: batch tensors, shapes and loss agree with the sidecar") {
  for (std::string const name : {"tiny_llama", "tiny_qwen2"}) {
    CAPTURE(name);
    auto const file = SafetensorsFile::open(fixtures() / ("model_" + name + ".safetensors"));
    auto const sidecar = read_json(fixtures() / ("model_" + name + ".json"));
    CHECK(file.metadata().at("format_version") == "1");
    for (auto const& item : sidecar.at("tensors").items()) {
      std::string const tensor = item.key();
      auto const& info = item.value();
      CAPTURE(tensor);
      REQUIRE(file.has(tensor));
      CHECK(file.tensor(tensor).shape == info.at("shape").get<std::vector<std::int64_t>>());
    }
    auto const n_batch = sidecar.at("batch").at("n_batch").get<std::int64_t>();
    auto const n_seq = sidecar.at("batch").at("n_seq").get<std::int64_t>();
    auto const ids64 = file.read<std::int64_t>("input_ids", {n_batch, n_seq});
    auto const ids32 = file.read<std::int32_t>("input_ids", {n_batch, n_seq});
    REQUIRE(ids64.size() == ids32.size());
    for (std::size_t i = 0; i < ids64.size(); ++i) CHECK(ids64[i] == ids32[i]);
    auto const lengths = sidecar.at("batch").at("lengths").get<std::vector<std::int64_t>>();
    auto const attention = file.read<std::int32_t>("attention_mask", {n_batch, n_seq});
    auto const loss_mask = file.read<std::int32_t>("loss_mask", {n_batch, n_seq});
    std::int64_t supervised = 0;
    for (std::int64_t b = 0; b < n_batch; ++b) {
      std::int64_t len = 0;
      for (std::int64_t t = 0; t < n_seq; ++t) {
        len += attention[static_cast<std::size_t>(b * n_seq + t)];
        if (t > 0) supervised += loss_mask[static_cast<std::size_t>(b * n_seq + t)];
      }
      CHECK(len == lengths[static_cast<std::size_t>(b)]);
    }
    CHECK(supervised == sidecar.at("supervised_targets").get<std::int64_t>());
    auto const loss = file.read<float>("loss", {});
    REQUIRE(loss.size() == 1);
    CHECK(file.tensor("loss").shape.empty());
    CHECK(loss[0] == static_cast<float>(sidecar.at("loss").get<double>()));
    CHECK(file.read<float>("logits").size() == static_cast<std::size_t>(n_batch * n_seq * 512));
    CHECK(file.read<std::int64_t>("greedy.new_ids") ==
          sidecar.at("greedy").at("new_ids").get<std::vector<std::int64_t>>());
  }
}

TEST_CASE("SmolLM2 fixture is small and consistent with its sidecar") {
  auto const path = fixtures() / "model_smollm2.safetensors";
  REQUIRE_MESSAGE(fs::exists(path), "run tests/reference/make_fixtures.py --only smollm2");
  CHECK(fs::file_size(path) < 2u * 1024 * 1024);
  auto const file = SafetensorsFile::open(path);
  auto const sidecar = read_json(fixtures() / "model_smollm2.json");
  for (auto const& item : sidecar.at("tensors").items()) {
    std::string const tensor = item.key();
    auto const& info = item.value();
    CAPTURE(tensor);
    REQUIRE(file.has(tensor));
    CHECK(file.tensor(tensor).shape == info.at("shape").get<std::vector<std::int64_t>>());
  }
  for (std::string const prompt : {"chat", "plain", "numbers"}) {
    auto const n = sidecar.at("prompts").at(prompt).at("n_tokens").get<std::int64_t>();
    CHECK(file.read<std::int64_t>(prompt + ".input_ids", {n}).size() == static_cast<std::size_t>(n));
    CHECK(file.read<float>(prompt + ".logits_head", {n, 256}).size() == static_cast<std::size_t>(n * 256));
  }
  CHECK(file.read<float>("loss.loss", {})[0] ==
        static_cast<float>(sidecar.at("loss").at("value").get<double>()));
  CHECK(file.read<std::int64_t>("greedy.new_ids", {32}) ==
        sidecar.at("greedy").at("new_ids").get<std::vector<std::int64_t>>());
}

TEST_CASE("PEFT TinyLoRA fixtures: adapter files written by PEFT have the shapes the sidecar implies") {
  int cases = 0;
  for (auto const& entry : fs::directory_iterator(fixtures())) {
    auto const stem = entry.path().stem().string();
    if (entry.path().extension() != ".json" || stem.find("_tinylora_") == std::string::npos) continue;
    CAPTURE(stem);
    ++cases;
    auto const sidecar = read_json(entry.path());
    auto const model_name = stem.substr(std::string("model_").size(), stem.find("_tinylora_") - 6);
    // SmolLM2's fixtures come from its GGUF (no Hugging Face folder here); test_peft_parity checks them.
    if (!fs::exists(fixtures() / model_name / "config.json")) continue;
    auto const config = HfModelDir::open(fixtures() / model_name).decoder_config();
    auto const r = sidecar.at("peft_config").at("r").get<std::int64_t>();
    auto const u = sidecar.at("peft_config").at("u").get<std::int64_t>();
    auto const n_groups = sidecar.at("n_groups").get<std::int64_t>();
    auto const adapter = SafetensorsFile::open(tinylora::test::source_dir() /
                                               sidecar.at("adapter_dir").get<std::string>() /
                                               "adapter_model.safetensors");
    auto const fixture = SafetensorsFile::open(fixtures() / (stem + ".safetensors"));
    auto const shapes = expected_shapes(config);
    for (auto const& item : sidecar.at("modules").items()) {
      std::string const module = item.key();
      auto const& info = item.value();
      CAPTURE(module);
      auto const& w = shapes.at(module + ".weight");  // (d_out, d_in)
      auto const key = "base_model.model." + module + ".tinylora_";
      CHECK(adapter.tensor(key + "A").shape == std::vector<std::int64_t>{r, w[1]});
      CHECK(adapter.tensor(key + "B").shape == std::vector<std::int64_t>{w[0], r});
      CHECK(adapter.tensor(key + "P").shape == std::vector<std::int64_t>{u, r, r});
      CHECK(info.at("group").get<std::int64_t>() < n_groups);
      // The fixture holds the same state dict under "adapter.": equal bit for bit.
      CHECK(adapter.read<float>(key + "P") == fixture.read<float>("adapter." + key + "P"));
    }
    for (std::int64_t g = 0; g < n_groups; ++g) {
      auto const v = adapter.read<float>("base_model.tinylora_v." + std::to_string(g), {u});
      CHECK(v == fixture.read<float>("v." + std::to_string(g), {u}));
      CHECK(fixture.read<float>("v_grad." + std::to_string(g), {u}).size() == static_cast<std::size_t>(u));
    }
  }
  CHECK(cases >= 3);
}

// ---- hand-built files (reference: IEEE/bfloat16 bit patterns computed by hand) -----------------

TEST_CASE("F32, F16, BF16, F64 and integer tensors convert exactly; narrowing rounds to even") {
  auto const dir = tinylora::test::scratch_dir("safetensors_dtypes");
  // F16 bits: 1.0, -2.5, 65504 (max), 2^-24 (smallest subnormal), +inf, -0.0
  std::vector<std::uint16_t> const f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0x8000};
  // BF16 bits: 1.0, -2.5, 3.140625, 2^-133 (subnormal), -inf, a NaN with payload
  std::vector<std::uint16_t> const b16 = {0x3F80, 0xC020, 0x4049, 0x0001, 0xFF80, 0x7FC1};
  // F32 values halfway between neighbouring bf16 / fp16 values, to check ties-to-even.
  std::vector<float> const f32 = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f,
                                  -7.25f, 1e-30f};
  std::vector<double> const f64 = {0.1, -1e10};
  std::vector<std::int32_t> const i32 = {-5, 0, 2147483647};
  std::vector<std::int64_t> const i64 = {-1, 4294967296LL};
  auto const bytes = build_file(
      {{"odd", "U8", {1}, {7}},  // one byte first: everything after is unaligned
       {"f16", "F16", {2, 3}, as_bytes(f16)},
       {"b16", "BF16", {6}, as_bytes(b16)},
       {"f32", "F32", {3, 2}, as_bytes(f32)},
       {"f64", "F64", {2}, as_bytes(f64)},
       {"i32", "I32", {3}, as_bytes(i32)},
       {"i64", "I64", {2}, as_bytes(i64)},
       {"flag", "BOOL", {3}, {1, 0, 1}},
       {"scalar", "F32", {}, as_bytes(std::vector<float>{42.5f})},
       {"empty", "F32", {0, 4}, {}}},
      json{{"format", "pt"}, {"note", "hand-built"}});
  write_file(dir / "d.safetensors", bytes);
  auto const file = SafetensorsFile::open(dir / "d.safetensors");

  CHECK(file.tensors().size() == 10);
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"note", "hand-built"}});
  CHECK(file.tensor("f16").dtype == SafetensorsDtype::kF16);
  CHECK(file.tensor("f16").shape == std::vector<std::int64_t>{2, 3});

  auto const a = file.read<float>("f16", {2, 3});
  CHECK(a[0] == 1.0f);
  CHECK(a[1] == -2.5f);
  CHECK(a[2] == 65504.0f);
  CHECK(a[3] == 0x1p-24f);
  CHECK(std::isinf(a[4]));
  CHECK((a[5] == 0.0f && std::signbit(a[5])));
  auto const b = file.read<float>("b16");
  CHECK(b[0] == 1.0f);
  CHECK(b[1] == -2.5f);
  CHECK(b[2] == 3.140625f);
  CHECK(b[3] == 0x1p-133f);
  CHECK((std::isinf(b[4]) && b[4] < 0));
  CHECK(std::isnan(b[5]));

  // Same-type reads copy bits exactly (NaN payload included).
  auto const b_same = file.read<bf16>("b16");
  for (std::size_t i = 0; i < b16.size(); ++i) CHECK(b_same[i].bits == b16[i]);
  auto const h_same = file.read<fp16>("f16");
  for (std::size_t i = 0; i < f16.size(); ++i) CHECK(h_same[i].bits == f16[i]);

  // Narrowing F32 -> bf16 / fp16: ties go to the even neighbour.
  auto const to_bf16 = file.read<bf16>("f32");
  CHECK(to_bf16[0].bits == 0x3F80);  // 1 + 2^-8 is halfway between 0x3F80 and 0x3F81 -> even 0x3F80
  CHECK(to_bf16[1].bits == 0x3F82);  // 1 + 3*2^-8 is halfway between 0x3F81 and 0x3F82 -> even 0x3F82
  CHECK(to_bf16[4].bits == 0xC0E8);  // -7.25 exactly
  auto const to_fp16 = file.read<fp16>("f32");
  CHECK(to_fp16[2].bits == 0x3C00);  // 1 + 2^-11 -> 1.0
  CHECK(to_fp16[3].bits == 0x3C02);  // 1 + 3*2^-11 -> 1 + 2^-9
  CHECK(to_fp16[4].bits == 0xC740);  // -7.25
  CHECK(to_fp16[5].bits == 0x0000);  // 1e-30 underflows to +0
  // F16 -> bf16 goes through float: 65504 = 0x477FE000 rounds to 0x4780 (65536).
  CHECK(file.read<bf16>("f16")[2].bits == 0x4780);

  CHECK(file.read<float>("f32") == f32);
  auto const d = file.read<float>("f64");
  CHECK(d[0] == 0.1f);
  CHECK(d[1] == -1e10f);
  CHECK(file.read<std::int32_t>("i32") == i32);
  CHECK(file.read<std::int64_t>("i32") == std::vector<std::int64_t>{-5, 0, 2147483647});
  CHECK(file.read<std::int64_t>("i64") == i64);
  CHECK(file.read<std::int32_t>("flag") == std::vector<std::int32_t>{1, 0, 1});
  CHECK(file.read<std::int32_t>("odd") == std::vector<std::int32_t>{7});
  CHECK(file.read<float>("scalar", {}) == std::vector<float>{42.5f});
  CHECK(file.read<float>("empty", {0, 4}).empty());

  // Misuse: wrong expected shape, wrong kind of target, out-of-range integers, unknown name.
  auto const message = [&](auto&& fn) -> std::string {
    try {
      fn();
    } catch (tinylora::Error const& e) {
      return e.what();
    }
    return "";
  };
  check_contains(message([&] { (void)file.read<float>("f16", {3, 2}); }),
                 {"SafetensorsFile::read()", "'f16'", "expected (3, 2)", "got (2, 3)", "Hint"});
  check_contains(message([&] { (void)file.read<float>("i32"); }), {"'i32'", "I32", "read<int32_t>"});
  check_contains(message([&] { (void)file.read<std::int32_t>("f32"); }), {"'f32'", "F32", "read<float>"});
  check_contains(message([&] { (void)file.read<std::int32_t>("i64"); }),
                 {"'i64'", "element 1", "4294967296", "int32_t", "read<int64_t>"});
  check_contains(message([&] { (void)file.tensor("f1"); }), {"no tensor 'f1'", "d.safetensors", "closest: 'f16'"});
}

TEST_CASE("truncating a valid file at every length gives a clear error") {
  auto const dir = tinylora::test::scratch_dir("safetensors_truncated");
  auto const full = build_file({{"a", "F32", {2, 2}, as_bytes(std::vector<float>{1, 2, 3, 4})},
                                {"b", "BF16", {3}, as_bytes(std::vector<std::uint16_t>{1, 2, 3})}});
  for (std::size_t len = 0; len < full.size(); ++len) {
    CAPTURE(len);
    write_file(dir / "t.safetensors", Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len)));
    auto const message = open_error(dir / "t.safetensors");
    CHECK_FALSE(message.empty());
    CHECK(message.find("t.safetensors") != std::string::npos);
  }
  write_file(dir / "t.safetensors", full);
  CHECK(open_error(dir / "t.safetensors").empty());

  // The committed tiny model, cut at 64 lengths spread over the file.
  auto const model = read_file(fixtures() / "tiny_llama" / "model.safetensors");
  REQUIRE(model.size() > 1000);
  for (std::size_t k = 0; k < 64; ++k) {
    std::size_t const len = k * (model.size() - 1) / 63;
    CAPTURE(len);
    write_file(dir / "m.safetensors", Bytes(model.begin(), model.begin() + static_cast<std::ptrdiff_t>(len)));
    CHECK_FALSE(open_error(dir / "m.safetensors").empty());
  }
}

TEST_CASE("malformed headers give errors naming the file, the tensor and what was expected") {
  auto const dir = tinylora::test::scratch_dir("safetensors_malformed");
  auto const path = dir / "bad.safetensors";
  Bytes const four_floats = as_bytes(std::vector<float>{1, 2, 3, 4});
  auto const expect = [&](Bytes const& bytes, std::vector<std::string> parts) {
    write_file(path, bytes);
    parts.push_back("bad.safetensors");
    parts.push_back("Hint");
    check_contains(open_error(path), parts);
  };

  SUBCASE("header length beyond the file") {
    Bytes bytes = raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", as_bytes(std::vector<float>{1}));
    std::uint64_t const huge = 1ull << 40;
    std::memcpy(bytes.data(), &huge, 8);
    expect(bytes, {"header length 1099511627776", "runs past the end"});
    std::uint64_t const off_by_one = bytes.size() - 8 + 1;
    std::memcpy(bytes.data(), &off_by_one, 8);
    expect(bytes, {"runs past the end"});
  }
  SUBCASE("too short for the length field") { expect(Bytes{1, 2, 3}, {"too short", "got 3 bytes"}); }
  SUBCASE("invalid JSON") {
    expect(raw_file(R"({"a":{"dtype":"F32","shape":[1],)", {}), {"not valid JSON"});
    expect(raw_file("\xff\xfe{}", {}), {"not valid JSON"});
  }
  SUBCASE("header is not an object") { expect(raw_file("[1, 2, 3]", {}), {"not a JSON object", "array"}); }
  SUBCASE("unknown dtype") {
    expect(raw_file(R"({"w":{"dtype":"F42","shape":[4],"data_offsets":[0,16]}})", four_floats),
           {"tensor 'w'", "unknown dtype \"F42\"", "expected one of"});
  }
  SUBCASE("missing or mistyped fields") {
    expect(raw_file(R"({"w":{"shape":[4],"data_offsets":[0,16]}})", four_floats), {"tensor 'w'", "\"dtype\""});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":"4","data_offsets":[0,16]}})", four_floats),
           {"tensor 'w'", "\"shape\""});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", four_floats),
           {"tensor 'w'", "-4", "non-negative"});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", four_floats),
           {"tensor 'w'", "data_offsets"});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,-16]}})", four_floats),
           {"tensor 'w'", "data_offsets"});
    expect(raw_file(R"({"w":[1,2]})", four_floats), {"tensor 'w'", "not an object"});
  }
  SUBCASE("offsets out of range or reversed") {
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", four_floats),
           {"tensor 'w'", "[4, 20]", "run past the data section", "expected end <= 16"});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", four_floats),
           {"tensor 'w'", "end before they begin"});
  }
  SUBCASE("overlapping tensors") {
    expect(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                    four_floats),
           {"'a' [0, 8)", "'b' [4, 12)", "overlap"});
  }
  SUBCASE("shape and byte size disagree") {
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", four_floats),
           {"tensor 'w'", "shape (2, 3)", "needs 24 bytes", "got 16"});
    expect(raw_file(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", four_floats),
           {"tensor 'w'", "BF16", "needs 8 bytes", "got 16"});
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})",
                    four_floats),
           {"tensor 'w'", "more than 2^64"});
  }
  SUBCASE("duplicate tensor names") {
    expect(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                    R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                    four_floats),
           {"'w' twice", "top level"});
  }
  SUBCASE("bad metadata") {
    expect(raw_file(R"({"__metadata__":{"k":3}})", {}), {"__metadata__", "'k'", "not a string"});
    expect(raw_file(R"({"__metadata__":[1]})", {}), {"__metadata__", "not an object"});
  }
}

TEST_CASE("random corruption of a valid header never escapes as anything but tinylora::Error") {
  auto const seed = tinylora::test::seed(8101);
  auto const dir = tinylora::test::scratch_dir("safetensors_fuzz");
  auto const good = build_file({{"a", "F32", {2, 2}, as_bytes(std::vector<float>{1, 2, 3, 4})},
                                {"b", "I64", {1}, as_bytes(std::vector<std::int64_t>{9})}},
                               json{{"k", "v"}});
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  tinylora::CounterRng rng(seed, tinylora::streams::of(tinylora::streams::kTest, 0));
  std::string const alphabet = "{}[]\":,0123456789-eE.FIU8 abtrufn\\\x01\xff";
  int errors = 0;
  for (std::uint64_t trial = 0; trial < 400; ++trial) {
    Bytes bytes = good;
    for (std::uint64_t k = 0; k < 1 + trial % 3; ++k) {
      auto const pos = 8 + rng.bits64(trial * 8 + 2 * k) % header_len;
      bytes[pos] = static_cast<std::uint8_t>(alphabet[rng.bits64(trial * 8 + 2 * k + 1) % alphabet.size()]);
    }
    write_file(dir / "f.safetensors", bytes);
    try {
      auto const file = SafetensorsFile::open(dir / "f.safetensors");
      for (auto const& t : file.tensors()) {
        try {
          (void)file.read<float>(t.name);
        } catch (tinylora::Error const&) {
        }
      }
    } catch (tinylora::Error const&) {
      ++errors;
    }
  }
  MESSAGE(errors << " of 400 corrupted headers were rejected");
  CHECK(errors > 0);
}

// ---- model folders ------------------------------------------------------------------------------

TEST_CASE("sharded model folder: index weight_map resolves tensors across shards") {
  auto const dir = tinylora::test::scratch_dir("hf_sharded");
  write_text(dir / "config.json", tiny_llama_config().dump());
  write_file(dir / "model-00001-of-00002.safetensors",
             build_file({{"model.embed_tokens.weight", "F32", {2, 2}, as_bytes(std::vector<float>{1, 2, 3, 4})},
                         {"model.norm.weight", "BF16", {2}, as_bytes(std::vector<std::uint16_t>{0x3F80, 0x4000})}}));
  write_file(dir / "model-00002-of-00002.safetensors",
             build_file({{"lm_head.weight", "F16", {1, 2}, as_bytes(std::vector<std::uint16_t>{0x3C00, 0xC000})},
                         {"unlisted", "F32", {1}, as_bytes(std::vector<float>{5})}}));
  json index = {{"metadata", {{"total_size", 28}}},
                {"weight_map",
                 {{"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
                  {"model.norm.weight", "model-00001-of-00002.safetensors"},
                  {"lm_head.weight", "model-00002-of-00002.safetensors"}}}};
  write_text(dir / "model.safetensors.index.json", index.dump());

  auto const model = HfModelDir::open(dir);
  CHECK(model.shard_count() == 2);
  CHECK(model.tensor_names() ==
        std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"});
  CHECK(model.read<float>("model.embed_tokens.weight", {2, 2}) == std::vector<float>{1, 2, 3, 4});
  CHECK(model.read<float>("model.norm.weight", {2}) == std::vector<float>{1, 2});
  CHECK(model.read<float>("lm_head.weight", {1, 2}) == std::vector<float>{1, -2});
  CHECK_FALSE(model.has_tensor("unlisted"));
  CHECK(model.decoder_config().hidden_size == 64);
  CHECK_FALSE(model.generation_config().has_value());
  try {
    (void)model.tokenizer_json();
    FAIL("expected an error for the missing tokenizer.json");
  } catch (tinylora::Error const& e) {
    check_contains(e.what(), {"HfModelDir::tokenizer_json()", "no tokenizer.json", "Hint"});
  }
  try {
    (void)model.read<float>("model.layers.0.self_attn.q_proj.weight");
    FAIL("expected an error for an absent tensor");
  } catch (tinylora::Error const& e) {
    check_contains(e.what(), {"no tensor 'model.layers.0.self_attn.q_proj.weight'", "Hint"});
  }
  write_text(dir / "generation_config.json", R"({"eos_token_id": 2})");
  write_text(dir / "tokenizer.json", "{}");
  CHECK(model.generation_config()->at("eos_token_id") == 2);
  CHECK(model.tokenizer_json() == dir / "tokenizer.json");

  SUBCASE("missing shard") {
    fs::remove(dir / "model-00002-of-00002.safetensors");
    check_contains(dir_error(dir), {"shard 'model-00002-of-00002.safetensors'", "'lm_head.weight'",
                                    "missing", "Hint"});
  }
  SUBCASE("tensor mapped to a shard that lacks it") {
    index["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors";
    write_text(dir / "model.safetensors.index.json", index.dump());
    check_contains(dir_error(dir), {"'model.layers.0.mlp.up_proj.weight'", "has no such tensor", "Hint"});
  }
  SUBCASE("shard name escaping the folder") {
    index["weight_map"]["lm_head.weight"] = "../model-00002-of-00002.safetensors";
    write_text(dir / "model.safetensors.index.json", index.dump());
    check_contains(dir_error(dir), {"plain file name"});
  }
  SUBCASE("index without weight_map, or not JSON") {
    write_text(dir / "model.safetensors.index.json", R"({"metadata": {}})");
    check_contains(dir_error(dir), {"no \"weight_map\""});
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
    check_contains(dir_error(dir), {"'a'", "non-string"});
    write_text(dir / "model.safetensors.index.json", R"({"weight_map": )");
    check_contains(dir_error(dir), {"not valid JSON"});
  }
  SUBCASE("a corrupt shard is reported with its path") {
    write_file(dir / "model-00002-of-00002.safetensors", Bytes{2, 0, 0, 0, 0, 0, 0, 0, '{', 'x'});
    check_contains(dir_error(dir), {"model-00002-of-00002.safetensors", "not valid JSON"});
  }
}

TEST_CASE("model folder errors: not a folder, no config, no weights") {
  auto const dir = tinylora::test::scratch_dir("hf_errors");
  check_contains(dir_error(dir / "nope"), {"HfModelDir::open()", "not a directory"});
  check_contains(dir_error(dir), {"no config.json", "Hint"});
  write_text(dir / "config.json", "[1]");
  check_contains(dir_error(dir), {"config.json", "not a JSON object"});
  write_text(dir / "config.json", R"({"a": 1, "a": 2})");
  check_contains(dir_error(dir), {"config.json", "'a' twice"});
  write_text(dir / "config.json", tiny_llama_config().dump());
  check_contains(dir_error(dir), {"neither model.safetensors nor model.safetensors.index.json",
                                  "safe_serialization=True"});
  write_file(dir / "model.safetensors", build_file({{"x", "F32", {1}, as_bytes(std::vector<float>{3})}}));
  auto const model = HfModelDir::open(dir);
  CHECK(model.read<float>("x") == std::vector<float>{3});
}

// ---- HfDecoderConfig ------------------------------------------------------------------------------

TEST_CASE("HfDecoderConfig: defaults and the transformers 4 / 5 spellings") {
  json j = tiny_llama_config();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j.erase("max_position_embeddings");
  auto c = HfDecoderConfig::from_json(j);
  CHECK(c.num_key_value_heads == 4);  // default = heads
  CHECK(c.head_dim == 16);            // default = hidden / heads
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK(c.max_position_embeddings == 2048);
  CHECK(c.rope_theta == 10000.0);
  CHECK(c.torch_dtype == "float32");
  CHECK(c.rope_type == "default");

  j = tiny_llama_config();
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "llama3"}};
  j["dtype"] = "bfloat16";
  j["head_dim"] = 32;
  j["eos_token_id"] = json::array({2, 0});
  j["bos_token_id"] = nullptr;
  j["attention_bias"] = true;
  c = HfDecoderConfig::from_json(j);
  CHECK(c.rope_theta == 500000.0);
  CHECK(c.rope_type == "llama3");
  CHECK(c.torch_dtype == "bfloat16");
  CHECK(c.head_dim == 32);
  CHECK(c.q_dim() == 128);
  CHECK(c.kv_dim() == 64);
  CHECK(c.eos_token_ids == std::vector<std::int64_t>{2, 0});
  CHECK(c.bos_token_ids.empty());
  CHECK(c.attention_bias);
  CHECK(c.attention_out_bias);

  j = tiny_llama_config();
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  CHECK(HfDecoderConfig::from_json(j).sliding_window == std::optional<std::int64_t>(4096));
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = false;
  c = HfDecoderConfig::from_json(j);
  CHECK_FALSE(c.sliding_window.has_value());
  CHECK(c.attention_bias);
  CHECK(c.max_position_embeddings == 256);
}

TEST_CASE("HfDecoderConfig: missing fields and wrong types name the field") {
  for (std::string const field :
       {"model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"}) {
    CAPTURE(field);
    json j = tiny_llama_config();
    j.erase(field);
    check_contains(config_error(j), {"HfDecoderConfig::from_json()", quoted(field), "missing", "Hint"});
    j[field] = nullptr;
    check_contains(config_error(j), {quoted(field), "missing"});
  }
  struct Bad {
    char const* field;
    json value;
    char const* fragment;
  };
  std::vector<Bad> const bad = {
      {"hidden_size", "64", "expected a positive integer, got string \"64\""},
      {"hidden_size", 64.5, "expected a positive integer"},
      {"num_hidden_layers", -2, "expected a positive integer, got number -2"},
      {"num_attention_heads", 0, "expected a positive integer"},
      {"rms_norm_eps", "1e-6", "expected a positive number"},
      {"rms_norm_eps", -1.0, "expected a positive number"},
      {"rope_theta", json::array({1}), "expected a positive number"},
      {"tie_word_embeddings", 1, "expected true or false"},
      {"eos_token_id", "2", "expected a non-negative integer, a list of them, or null"},
      {"eos_token_id", json::array({2, "x"}), "a list of them"},
      {"bos_token_id", -1, "non-negative"},
      {"model_type", 3, "expected a string"},
      {"torch_dtype", 32, "expected a string"},
      {"rope_parameters", "x", "expected an object"},
      {"rope_scaling", 2, "expected an object or null"},
  };
  for (auto const& b : bad) {
    CAPTURE(b.field);
    json j = tiny_llama_config();
    j[b.field] = b.value;
    check_contains(config_error(j), {quoted(b.field), b.fragment, "Hint"});
  }

  json j = tiny_llama_config();
  j["model_type"] = "gpt2";
  check_contains(config_error(j), {"'model_type'", "unsupported", "\"gpt2\""});
  j = tiny_llama_config();
  j["num_key_value_heads"] = 3;
  check_contains(config_error(j), {"'num_key_value_heads' = 3", "does not divide", "4"});
  j = tiny_llama_config();
  j["hidden_size"] = 66;
  check_contains(config_error(j), {"no 'head_dim'", "66", "not a multiple"});
  j = tiny_llama_config();
  j["eos_token_id"] = 512;
  check_contains(config_error(j), {"token id 512", "vocab_size = 512"});
  j = tiny_llama_config();
  j["hidden_act"] = "gelu";
  check_contains(config_error(j), {"'hidden_act'", "\"gelu\""});
  check_contains(config_error(json::array({1})), {"not a JSON object"});
}

TEST_CASE("SafetensorsWriter: F32, F16 and BF16 tensors and metadata read back through SafetensorsFile") {
  auto const dir = tinylora::test::scratch_dir("safetensors_writer");
  auto const seed = tinylora::test::seed(11);
  auto const x = tinylora::test::normal_vector(24, seed, 0, 3.0f);
  tinylora::io::SafetensorsWriter w;
  w.add("z.f32", {2, 3, 4}, x);
  w.add("a.f16", {24}, x, tinylora::io::SafetensorsDtype::kF16);
  w.add("m.bf16", {4, 6}, x, tinylora::io::SafetensorsDtype::kBF16);
  w.add("empty", {0}, std::span<float const>{});
  w.add_metadata("format", "pt");
  w.write(dir / "t.safetensors");
  auto const f = tinylora::io::SafetensorsFile::open(dir / "t.safetensors");
  CHECK(f.tensors().size() == 4);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.tensor("z.f32").shape == std::vector<std::int64_t>{2, 3, 4});
  CHECK(f.tensor("m.bf16").dtype == tinylora::io::SafetensorsDtype::kBF16);
  CHECK(f.read<float>("z.f32") == x);
  auto const h = f.read<float>("a.f16");
  auto const b = f.read<float>("m.bf16");
  for (std::size_t i = 0; i < x.size(); ++i) {
    CHECK(h[i] == float(fp16(x[i])));
    CHECK(b[i] == float(bf16(x[i])));
  }
  // The header length is a multiple of 8 (the data section stays 8-byte aligned); the write went
  // through a temporary that is gone.
  CHECK(!fs::exists(tinylora::io::temporary_for(dir / "t.safetensors")));
  std::ifstream in(dir / "t.safetensors", std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  CHECK(n % 8 == 0);
  CHECK_THROWS_WITH_AS(w.add("z.f32", {1}, std::vector<float>{1.0f}), doctest::Contains("added twice"), tinylora::Error);
  CHECK_THROWS_WITH_AS(w.add("bad", {2, 2}, std::vector<float>{1.0f}), doctest::Contains("needs 4 values (got 1)"), tinylora::Error);
}
