// tests/unit/test_gguf.cpp: the GGUF reader and dequantizers (io/gguf.hpp, io/quant.hpp).
// References, most independent first: a fixture written and dequantized by the `gguf` Python
// package (tests/reference/gguf_dequant_fixture.py), bit for bit; hand-computed blocks; malformed
// files built byte by byte here, each of which must give a clear tinylora::Error (never a crash);
// and the real SmolLM2-135M GGUF when scripts/fetch-model has put it in the cache.
#include <doctest/doctest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../support.hpp"
#include "tinylora/io/gguf.hpp"
#include "tinylora/io/quant.hpp"
#include "tinylora/model/config.hpp"

namespace {

using tinylora::bf16;
using tinylora::fp16;
using tinylora::io::GgmlType;
using tinylora::io::GgufFile;
using tinylora::io::GgufValueType;
namespace fs = std::filesystem;

fs::path fixture_dir() { return tinylora::test::source_dir() / "tests" / "reference" / "fixtures"; }

nlohmann::json fixture_index() {
  std::ifstream in(fixture_dir() / "gguf_dequant_index.json");
  REQUIRE_MESSAGE(in.good(), "missing fixture; run tests/reference/gguf_dequant_fixture.py");
  return nlohmann::json::parse(in);
}

std::vector<float> fixture_expected() {
  std::ifstream in(fixture_dir() / "gguf_dequant_expected.f32", std::ios::binary);
  REQUIRE(in.good());
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(raw.size() % 4 == 0);
  std::vector<float> out(raw.size() / 4);
  std::memcpy(out.data(), raw.data(), raw.size());
  return out;
}

std::vector<std::uint8_t> read_bytes(fs::path const& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

fs::path write_file(fs::path const& path, std::vector<std::uint8_t> const& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<char const*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
  return path;
}

/// The tinylora::Error message of opening `path`; fails the test when it opens or throws
/// anything else.
std::string open_error(fs::path const& path) {
  try {
    GgufFile::open(path);
  } catch (tinylora::Error const& e) {
    return e.what();
  } catch (std::exception const& e) {
    FAIL("GgufFile::open threw a non-tinylora exception: " << e.what());
  }
  FAIL("GgufFile::open(" << path << ") accepted a malformed file");
  return {};
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (tinylora::Error const& e) {
    return e.what();
  }
  FAIL("expected a tinylora::Error");
  return {};
}

bool contains(std::string const& s, std::string const& part) { return s.find(part) != std::string::npos; }

/// Builds GGUF files byte by byte (little-endian), including deliberately broken ones.
struct GgufBytes {
  std::vector<std::uint8_t> b;

  template <class T>
  GgufBytes& put(T v) {
    auto const* p = reinterpret_cast<std::uint8_t const*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  GgufBytes& u8(std::uint8_t v) { return put(v); }
  GgufBytes& u32(std::uint32_t v) { return put(v); }
  GgufBytes& u64(std::uint64_t v) { return put(v); }
  GgufBytes& f32(float v) { return put(v); }
  GgufBytes& raw(std::string_view s) {
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  GgufBytes& str(std::string_view s) { return u64(s.size()).raw(s); }
  GgufBytes& header(std::uint64_t n_tensors, std::uint64_t n_kv, std::uint32_t version = 3) {
    return raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  }
  GgufBytes& kv_u32(std::string_view key, std::uint32_t v) { return str(key).u32(4).u32(v); }
  GgufBytes& kv_str(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
  GgufBytes& tensor(std::string_view name, std::vector<std::uint64_t> const& ne, std::uint32_t type,
                    std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(ne.size()));
    for (auto n : ne) u64(n);
    return u32(type).u64(offset);
  }
  GgufBytes& pad(std::size_t alignment = 32) {
    while (b.size() % alignment != 0) b.push_back(0);
    return *this;
  }
  GgufBytes& zeros(std::size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

constexpr std::uint32_t kF32 = 0, kQ4_0 = 2, kQ5_K = 13;

/// A small valid file: one kv, two F32 tensors of 8 values (32 bytes each).
GgufBytes valid_file() {
  GgufBytes g;
  g.header(2, 1).kv_str("general.architecture", "llama");
  g.tensor("a", {8}, kF32, 0).tensor("b", {4, 2}, kF32, 32).pad();
  for (int i = 0; i < 16; ++i) g.f32(static_cast<float>(i));
  return g;
}

fs::path model_path() {
  if (char const* p = std::getenv("TINYLORA_MODEL"); p != nullptr && *p != '\0') return p;
  fs::path cache;
  if (char const* c = std::getenv("TINYLORA_CACHE"); c != nullptr && *c != '\0') cache = c;
  else if (char const* h = std::getenv("HOME"); h != nullptr) cache = fs::path(h) / ".cache" / "tinylora";
  return cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string first_bit_mismatch(std::vector<float> const& got, std::vector<float> const& want, std::size_t want_offset) {
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<std::uint32_t>(got[i]) != std::bit_cast<std::uint32_t>(want[want_offset + i]))
      return "element " + std::to_string(i) + ": got " + std::to_string(got[i]) + ", want " +
             std::to_string(want[want_offset + i]);
  }
  return {};
}

}  // namespace

// ---- hand-computed blocks ---------------------------------------------------------------------

TEST_CASE("gguf: quant block sizes and type traits") {
  using tinylora::io::find_ggml_type;
  CHECK(find_ggml_type(0)->bytes_per_block == 4);
  CHECK(find_ggml_type(2)->block_size == 32);
  CHECK(find_ggml_type(2)->bytes_per_block == 18);
  CHECK(find_ggml_type(3)->bytes_per_block == 20);
  CHECK(find_ggml_type(8)->bytes_per_block == 34);
  CHECK(find_ggml_type(12)->block_size == 256);
  CHECK(find_ggml_type(12)->bytes_per_block == 144);
  CHECK(find_ggml_type(14)->bytes_per_block == 210);
  CHECK(find_ggml_type(30)->bytes_per_block == 2);
  CHECK(find_ggml_type(4) == nullptr);  // removed Q4_2
  CHECK(find_ggml_type(99) == nullptr);
  CHECK(tinylora::io::ggml_type_name(99) == "unknown(99)");
  CHECK(tinylora::io::dequantizable_type_names() == "F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, BF16");
}

TEST_CASE("gguf: Q4_0 block, hand-computed") {
  // d = 0.5 (fp16 0x3800); qs[j] = j | (15 - j) << 4, so value j = 0.5 (j - 8) and value
  // j + 16 = 0.5 (7 - j).
  tinylora::io::ggml::BlockQ4_0 b{};
  b.d = fp16::from_bits(0x3800);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
  float y[32];
  dequantize_block(b, y);
  float const want_first[] = {-4.0f, -3.5f, -3.0f, -2.5f, -2.0f, -1.5f, -1.0f, -0.5f,
                              0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  2.5f,  3.0f,  3.5f};
  float const want_second[] = {3.5f, 3.0f, 2.5f,  2.0f,  1.5f,  1.0f,  0.5f,  0.0f,
                               -0.5f, -1.0f, -1.5f, -2.0f, -2.5f, -3.0f, -3.5f, -4.0f};
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == want_first[j]);
    CHECK(y[j + 16] == want_second[j]);
  }
  // The same bytes through dequantize_row and a file.
  std::uint8_t raw[18];
  std::memcpy(raw, &b, 18);
  CHECK(raw[0] == 0x00);
  CHECK(raw[1] == 0x38);
  float z[32];
  tinylora::io::dequantize_row(GgmlType::kQ4_0, raw, 32, z);
  CHECK(std::memcmp(y, z, sizeof y) == 0);

  GgufBytes g;
  g.header(1, 0).tensor("w", {32}, kQ4_0, 0).pad();
  g.b.insert(g.b.end(), raw, raw + 18);
  auto const path = write_file(tinylora::test::scratch_dir("gguf_q4_0") / "q4_0.gguf", g.b);
  auto const f = GgufFile::open(path);
  auto const v = f.dequantize("w", {32});
  REQUIRE(v.size() == 32);
  CHECK(v[0] == -4.0f);
  CHECK(v[9] == 0.5f);
  CHECK(v[16] == 3.5f);
  CHECK(v[31] == -4.0f);
}

TEST_CASE("gguf: Q8_0 and Q4_1 blocks, hand-computed") {
  tinylora::io::ggml::BlockQ8_0 b{};
  b.d = fp16::from_bits(0x3400);  // 0.25
  std::int8_t const q[] = {-128, -1, 0, 1, 127, 64, -64, 3};
  float const want[] = {-32.0f, -0.25f, 0.0f, 0.25f, 31.75f, 16.0f, -16.0f, 0.75f};
  for (int j = 0; j < 32; ++j) b.qs[j] = q[j % 8];
  float y[32];
  dequantize_block(b, y);
  for (int j = 0; j < 32; ++j) CHECK(y[j] == want[j % 8]);

  tinylora::io::ggml::BlockQ4_1 c{};
  c.d = fp16::from_bits(0x3800);  // 0.5
  c.m = fp16::from_bits(0xBC00);  // -1
  for (int j = 0; j < 16; ++j) c.qs[j] = static_cast<std::uint8_t>(0xF0 | (j & 0x0F));
  dequantize_block(c, y);
  for (int j = 0; j < 16; ++j) {
    CHECK(y[j] == 0.5f * static_cast<float>(j) - 1.0f);  // low nibble j
    CHECK(y[j + 16] == 6.5f);                             // high nibble 15: 7.5 - 1
  }
}

TEST_CASE("gguf: Q4_K packed 6-bit scales and mins, hand-computed") {
  std::array<std::uint8_t, 12> const s = {0xC1, 0x42, 0x03, 0x84, 0x45, 0x86, 0xC7, 0x08, 0x9A, 0xBC, 0xDE, 0xF0};
  // j < 4: low 6 bits of bytes j (scale) and j + 4 (min).
  // j >= 4: low/high nibble of byte j + 4, plus the top 2 bits of bytes j - 4 / j as bits 4..5.
  int const want_sc[] = {1, 2, 3, 4, 58, 28, 14, 32};
  int const want_m[] = {5, 6, 7, 8, 25, 43, 61, 15};
  for (int j = 0; j < 8; ++j) {
    auto const sm = tinylora::io::ggml::q4_k_scale_min(s, j);
    CHECK_MESSAGE(sm.sc == want_sc[j], "j = " << j);
    CHECK_MESSAGE(sm.m == want_m[j], "j = " << j);
  }
  // A block with d = 1, dmin = 0.5: sub-block 4 (values 128..159, low nibbles of qs[64..95])
  // has scale 58 and min 25, so a nibble q gives 58 q - 12.5.
  tinylora::io::ggml::BlockQ4_K b{};
  b.d = fp16::from_bits(0x3C00);
  b.dmin = fp16::from_bits(0x3800);
  b.scales = s;
  for (int i = 0; i < 128; ++i) b.qs[i] = static_cast<std::uint8_t>(i & 0x0F) | 0x30;
  float y[256];
  dequantize_block(b, y);
  CHECK(y[128] == 58.0f * 0.0f - 12.5f);
  CHECK(y[129] == 58.0f * 1.0f - 12.5f);
  CHECK(y[128 + 15] == 58.0f * 15.0f - 12.5f);
  CHECK(y[160] == 28.0f * 3.0f - 21.5f);  // sub-block 5: high nibble 3, scale 28, min 43 * 0.5
  CHECK(y[0] == 1.0f * 0.0f - 2.5f);      // sub-block 0: scale 1, min 5 * 0.5
}

TEST_CASE("gguf: Q6_K layout, hand-computed") {
  // d = 1; all scales 1 except scales[8 + 2k + 1] = -2. Half 1, group k, element l (l >= 16)
  // combines ql[64 + 32 (k % 2) + l] nibble k / 2 with qh[32 + l] bits 2k..2k+1.
  tinylora::io::ggml::BlockQ6_K b{};
  b.d = fp16::from_bits(0x3C00);
  for (auto& s : b.scales) s = 1;
  for (int k = 0; k < 4; ++k) b.scales[8 + 2 * k + 1] = -2;
  b.ql[64 + 20] = 0x5A;       // group 0 low nibble 0xA, group 2 low nibble 0x5 (element l = 20)
  b.ql[64 + 32 + 20] = 0xC3;  // group 1 low nibble 0x3, group 3 low nibble 0xC
  b.qh[32 + 20] = 0b10'01'11'00;  // high bits: group 0 -> 0, group 1 -> 3, group 2 -> 1, group 3 -> 2
  float y[256];
  dequantize_block(b, y);
  CHECK(y[128 + 0 * 32 + 20] == -2.0f * (0x0A + 0 * 16 - 32));
  CHECK(y[128 + 1 * 32 + 20] == -2.0f * (0x03 + 3 * 16 - 32));
  CHECK(y[128 + 2 * 32 + 20] == -2.0f * (0x05 + 1 * 16 - 32));
  CHECK(y[128 + 3 * 32 + 20] == -2.0f * (0x0C + 2 * 16 - 32));
  CHECK(y[0] == -32.0f);  // everything else is q = 0 - 32 with scale 1
  CHECK(y[128 + 20 - 16] == -32.0f);
}

// ---- the independent fixture ------------------------------------------------------------------

TEST_CASE("gguf: fixture tensors match the gguf package bit for bit") {
  auto const index = fixture_index();
  auto const expected = fixture_expected();
  auto const f = GgufFile::open(fixture_dir() / index["file"].get<std::string>());
  CHECK(f.version() == 3);
  CHECK(f.alignment() == 64);
  CHECK(f.data_offset() % 64 == 0);
  REQUIRE(f.tensors().size() == index["tensors"].size());

  std::map<std::string, int> types_seen;
  std::size_t i = 0;
  for (auto const& t : index["tensors"]) {
    auto const name = t["name"].get<std::string>();
    CAPTURE(name);
    auto const& info = f.tensors()[i++];
    CHECK(info.name == name);  // file order is preserved
    CHECK(static_cast<std::uint32_t>(info.type) == t["type_id"].get<std::uint32_t>());
    CHECK(tinylora::io::ggml_type_name(info.type) == t["type"].get<std::string>());
    CHECK(info.ne == t["ne"].get<std::vector<std::int64_t>>());
    auto const shape = t["shape"].get<std::vector<std::int64_t>>();
    CHECK(info.shape() == shape);
    CHECK(info.cols() == shape.back());
    CHECK(info.n_elements == t["count"].get<std::int64_t>());
    CHECK(info.offset % 64 == 0);
    ++types_seen[t["type"].get<std::string>()];

    auto const offset = t["offset"].get<std::size_t>();
    auto const count = t["count"].get<std::size_t>();
    REQUIRE(offset + count <= expected.size());
    auto const got = f.dequantize(name, shape);  // float, with the shape check
    REQUIRE(got.size() == count);
    auto const mismatch = first_bit_mismatch(got, expected, offset);
    CHECK_MESSAGE(mismatch.empty(), mismatch);

    // Narrowed outputs equal the narrowed reference values (round to nearest even).
    auto const got_bf16 = f.dequantize<bf16>(name);
    auto const got_fp16 = f.dequantize<fp16>(name);
    std::size_t bad_bf16 = 0, bad_fp16 = 0;
    for (std::size_t k = 0; k < count; ++k) {
      bad_bf16 += got_bf16[k].bits != bf16(expected[offset + k]).bits;
      bad_fp16 += got_fp16[k].bits != fp16(expected[offset + k]).bits;
    }
    CHECK(bad_bf16 == 0);
    CHECK(bad_fp16 == 0);
  }
  for (char const* type : {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"})
    CHECK_MESSAGE(types_seen[type] > 0, "fixture lacks type " << type);
}

TEST_CASE("gguf: fixture metadata of every value type") {
  auto const index = fixture_index();
  auto const f = GgufFile::open(fixture_dir() / index["file"].get<std::string>());
  REQUIRE(f.metadata().size() == index["metadata"].size());
  for (auto const& m : index["metadata"]) {
    auto const key = m["key"].get<std::string>();
    auto const type = m["type"].get<std::string>();
    auto const& json = m["value"];
    CAPTURE(key);
    REQUIRE(f.has(key));
    auto const& v = f.value(key);
    CHECK(tinylora::io::gguf_value_type_name(v.type()) == type);
    if (type == "uint8" || type == "uint16" || type == "uint32" || type == "uint64") {
      CHECK(f.get<std::uint64_t>(key) == json.get<std::uint64_t>());
    } else if (type == "int8" || type == "int16" || type == "int32" || type == "int64") {
      CHECK(f.get<std::int64_t>(key) == json.get<std::int64_t>());
    } else if (type == "float32") {
      CHECK(f.get<float>(key) == static_cast<float>(json.get<double>()));
    } else if (type == "float64") {
      CHECK(f.get<double>(key) == json.get<double>());
    } else if (type == "bool") {
      CHECK(f.get<bool>(key) == json.get<bool>());
    } else if (type == "string") {
      CHECK(f.get<std::string>(key) == json.get<std::string>());
    } else {
      REQUIRE(type == "array");
      auto const element = m["element_type"].get<std::string>();
      auto const& a = std::get<tinylora::io::GgufArray>(v.data);
      CHECK(tinylora::io::gguf_value_type_name(a.element_type()) == element);
      CHECK(a.size() == json.size());
      if (element == "uint8" || element == "uint16" || element == "uint32" || element == "uint64")
        CHECK(f.get<std::vector<std::uint64_t>>(key) == json.get<std::vector<std::uint64_t>>());
      else if (element == "int8" || element == "int16" || element == "int32" || element == "int64")
        CHECK(f.get<std::vector<std::int64_t>>(key) == json.get<std::vector<std::int64_t>>());
      else if (element == "float32") {
        auto const got = f.get<std::vector<float>>(key);
        auto const want = json.get<std::vector<double>>();
        REQUIRE(got.size() == want.size());
        for (std::size_t k = 0; k < got.size(); ++k) CHECK(got[k] == static_cast<float>(want[k]));
      } else if (element == "float64")
        CHECK(f.get<std::vector<double>>(key) == json.get<std::vector<double>>());
      else if (element == "bool")
        CHECK(f.get<std::vector<bool>>(key) == json.get<std::vector<bool>>());
      else if (element == "string")
        CHECK(f.get<std::vector<std::string>>(key) == json.get<std::vector<std::string>>());
      else {
        REQUIRE(element == "array");
        auto const inner = m["inner_element_type"].get<std::string>();
        if (inner == "int32")
          CHECK(f.get<std::vector<std::vector<std::int32_t>>>(key) == json.get<std::vector<std::vector<std::int32_t>>>());
        else
          CHECK(f.get<std::vector<std::vector<std::string>>>(key) ==
                json.get<std::vector<std::vector<std::string>>>());
      }
    }
  }
  // A few values spelled out, independent of the JSON index.
  CHECK(f.get<std::string>("general.architecture") == "tinylora-test");
  CHECK(f.get<std::uint32_t>("general.alignment") == 64);
  CHECK(f.get<std::uint8_t>("test.uint8") == 200);
  CHECK(f.get<std::int8_t>("test.int8") == -100);
  CHECK(f.get<std::uint64_t>("test.uint64") == (std::uint64_t{1} << 63) + 5);
  CHECK(f.get<std::string>("test.string") == "h\xc3\xa9llo, GGUF \xe2\x9c\x93");
  CHECK(f.get<std::string>("test.string_empty").empty());
  CHECK(f.get<bool>("test.bool_true"));
  CHECK_FALSE(f.get<bool>("test.bool_false"));
  CHECK(f.get<std::vector<std::string>>("test.array.string") ==
        std::vector<std::string>{"a", "", "\xc3\xbcn\xc3\xaf" "code", "with space", "<|im_end|>"});
  CHECK(f.value("test.array.nested_int32").type_string() == "array<array<int32>[3]>[3]");
  CHECK(f.get_or<std::int64_t>("test.absent", 7) == 7);
  CHECK(f.get_or<std::int64_t>("test.int16", 7) == -30000);
}

TEST_CASE("gguf: metadata type mismatches and ranges give clear errors") {
  auto const f = GgufFile::open(fixture_dir() / "gguf_dequant.gguf");
  auto msg = error_of([&] { (void)f.get<std::string>("test.uint32"); });
  CHECK(contains(msg, "GgufFile::get(): metadata 'test.uint32'"));
  CHECK(contains(msg, "has type uint32, which cannot be read as std::string"));
  msg = error_of([&] { (void)f.get<std::uint8_t>("test.uint32"); });
  CHECK(contains(msg, "= 4000000000 does not fit uint8_t (expected 0..255)"));
  msg = error_of([&] { (void)f.get<std::int64_t>("test.uint64"); });
  CHECK(contains(msg, "does not fit int64_t"));
  msg = error_of([&] { (void)f.get<float>("test.int32"); });
  CHECK(contains(msg, "has type int32, which cannot be read as float"));
  msg = error_of([&] { (void)f.get<std::vector<std::uint8_t>>("test.array.int8"); });
  CHECK(contains(msg, "test.array.int8' in"));
  CHECK(contains(msg, "element 0 = -128 does not fit uint8_t"));
  msg = error_of([&] { (void)f.get<std::vector<std::string>>("test.array.uint8"); });
  CHECK(contains(msg, "has type uint8, which cannot be read as std::string"));
  msg = error_of([&] { (void)f.get<std::int64_t>("test.array.int8"); });
  CHECK(contains(msg, "has type array<int8>[3], which cannot be read as int64_t"));
  msg = error_of([&] { (void)f.value("llama.block_count"); });
  CHECK(contains(msg, "has no metadata key 'llama.block_count'"));
  msg = error_of([&] { (void)f.tensor("blk.0.attn_q.weight"); });
  CHECK(contains(msg, "has no tensor 'blk.0.attn_q.weight'"));
  CHECK(contains(msg, "Hint: maybe wrong base model"));
}

TEST_CASE("gguf: expected-shape mismatch names the tensor, both shapes and a hint") {
  auto const f = GgufFile::open(fixture_dir() / "gguf_dequant.gguf");
  CHECK(f.dequantize("q4_0.matrix", {3, 96}).size() == 288);
  auto const msg = error_of([&] { (void)f.dequantize("q4_0.matrix", {96, 3}); });
  CHECK(contains(msg, "GgufFile::dequantize()"));
  CHECK(contains(msg, "tensor 'q4_0.matrix': shape mismatch (expected [96, 3], got [3, 96]"));
  CHECK(contains(msg, "GGUF ne = [96, 3]"));
  CHECK(contains(msg, "Hint: maybe wrong base model?"));
  auto const& t = f.tensor("q8_0.4d");
  CHECK(t.rows() == 6);
  CHECK(t.cols() == 32);
  auto foreign = t;
  foreign.offset = 1u << 20;
  std::vector<float> right_size(static_cast<std::size_t>(t.n_elements));
  CHECK(contains(error_of([&] { f.dequantize_into(foreign, std::span<float>(right_size)); }),
                 "is outside the data section"));
  std::vector<float> wrong_size(5);
  CHECK(contains(error_of([&] { f.dequantize_into(t, std::span<float>(wrong_size)); }),
                 "expected an output span of that size, got 5"));
}

TEST_CASE("gguf: bf16/fp16 outputs round to nearest even from the float value") {
  // F32 values chosen to sit exactly between two bf16 / fp16 neighbours.
  float const tie_bf16_down = 1.0f + 0x1p-8f;      // between 1 and 1 + 2^-7: ties to even -> 1
  float const tie_bf16_up = 1.0f + 3 * 0x1p-8f;    // between 1 + 2^-7 and 1 + 2^-6 -> 1 + 2^-6
  float const tie_fp16_down = 1.0f + 0x1p-11f;     // -> 1
  float const tie_fp16_up = 1.0f + 3 * 0x1p-11f;   // -> 1 + 2^-9
  float const above_fp16_max = 70000.0f;           // -> fp16 inf, bf16 rounds normally
  GgufBytes g;
  g.header(1, 0).tensor("x", {5}, kF32, 0).pad();
  for (float v : {tie_bf16_down, tie_bf16_up, tie_fp16_down, tie_fp16_up, above_fp16_max}) g.f32(v);
  auto const f = GgufFile::open(write_file(tinylora::test::scratch_dir("gguf_round") / "x.gguf", g.b));
  auto const b = f.dequantize<bf16>("x");
  auto const h = f.dequantize<fp16>("x");
  CHECK(b[0].bits == 0x3F80);
  CHECK(b[1].bits == 0x3F82);
  CHECK(b[4].bits == 0x4789);  // 70000 = 0x4788B800 -> rounds up to 0x4789
  CHECK(h[2].bits == 0x3C00);
  CHECK(h[3].bits == 0x3C02);
  CHECK(h[4].bits == 0x7C00);
}

// ---- malformed files ----------------------------------------------------------------------------

TEST_CASE("gguf: a small hand-built file (v2 and v3) opens and reads back") {
  auto const dir = tinylora::test::scratch_dir("gguf_valid");
  for (std::uint32_t version : {2u, 3u}) {
    auto g = valid_file();
    std::memcpy(g.b.data() + 4, &version, 4);
    auto const f = GgufFile::open(write_file(dir / "v.gguf", g.b));
    CHECK(f.version() == version);
    CHECK(f.alignment() == 32);
    CHECK(f.data_offset() % 32 == 0);
    CHECK(f.get<std::string>("general.architecture") == "llama");
    auto const a = f.dequantize("a", {8});
    auto const b = f.dequantize("b", {2, 4});
    CHECK(a[7] == 7.0f);
    CHECK(b[0] == 8.0f);
    CHECK(b[7] == 15.0f);
  }
  // Empty arrays and a custom alignment are valid too.
  GgufBytes g;
  g.header(1, 2).kv_u32("general.alignment", 128).str("empty").u32(9).u32(8).u64(0);
  g.tensor("t", {4}, kF32, 0).pad(128).zeros(16);
  auto const f = GgufFile::open(write_file(dir / "a.gguf", g.b));
  CHECK(f.alignment() == 128);
  CHECK(f.data_offset() % 128 == 0);
  CHECK(f.get<std::vector<std::string>>("empty").empty());
}

TEST_CASE("gguf: a model config with a zero head count or a non-finite RoPE base is refused, never divided by") {
  auto const dir = tinylora::test::scratch_dir("gguf_config");
  // A llama-shaped header: every key config_from_gguf reads, one tensor (the embedding).
  auto const file = [&](std::uint32_t heads, float rope_base) {
    GgufBytes g;
    g.header(1, 7).kv_str("general.architecture", "llama").kv_u32("llama.block_count", 1).kv_u32("llama.embedding_length", 8);
    g.kv_u32("llama.attention.head_count", heads).kv_u32("llama.feed_forward_length", 16);
    g.str("llama.attention.layer_norm_rms_epsilon").u32(6).f32(1e-5f);
    g.str("llama.rope.freq_base").u32(6).f32(rope_base);
    g.tensor("token_embd.weight", {8, 4}, kF32, 0).pad().zeros(8 * 4 * 4);
    return GgufFile::open(write_file(dir / "config.gguf", g.b));
  };
  CHECK(tinylora::model::config_from_gguf(file(2, 10000.0f)).head_dim == 4);  // the builder makes a valid config
  CHECK_THROWS_WITH_AS(tinylora::model::config_from_gguf(file(0, 10000.0f)), doctest::Contains("non-positive width or head count"),
                       tinylora::Error);
  CHECK_THROWS_WITH_AS(tinylora::model::config_from_gguf(file(2, std::numeric_limits<float>::infinity())),
                       doctest::Contains("RMSNorm epsilon or RoPE base"), tinylora::Error);
  CHECK_THROWS_WITH_AS(tinylora::model::config_from_gguf(file(2, std::nanf(""))), doctest::Contains("RMSNorm epsilon or RoPE base"),
                       tinylora::Error);
}

TEST_CASE("gguf: wrong magic, empty file, unsupported versions") {
  auto const dir = tinylora::test::scratch_dir("gguf_magic");
  auto g = valid_file();
  g.b[3] = 'L';
  auto msg = open_error(write_file(dir / "magic.gguf", g.b));
  CHECK(contains(msg, "is not a GGUF file (expected magic 'GGUF', got 'GGUL'"));
  CHECK(contains(msg, "magic.gguf"));
  CHECK(contains(msg, "Hint:"));
  msg = open_error(write_file(dir / "empty.gguf", {}));
  CHECK(contains(msg, "is not a GGUF file (expected magic 'GGUF', got ''"));
  for (std::uint32_t version : {0u, 1u, 4u, 0x03000000u}) {
    g = valid_file();
    std::memcpy(g.b.data() + 4, &version, 4);
    msg = open_error(write_file(dir / "version.gguf", g.b));
    CHECK(contains(msg, "unsupported GGUF version (expected 2 or 3, got " + std::to_string(version) + ")"));
  }
  CHECK(contains(msg, "big-endian"));
  msg = error_of([&] { GgufFile::open(dir / "does_not_exist.gguf"); });
  CHECK(contains(msg, "MappedFile::open(): cannot open"));
  CHECK(contains(msg, "scripts/fetch-model"));
  msg = error_of([&] { GgufFile::open(dir); });
  CHECK(contains(msg, "is not a regular file"));
}

TEST_CASE("gguf: truncation at every length of the fixture is a clear error") {
  auto const full = read_bytes(fixture_dir() / "gguf_dequant.gguf");
  auto const f = GgufFile::open(fixture_dir() / "gguf_dequant.gguf");
  // The file ends with padding after the last tensor: cutting only padding leaves a valid file.
  std::uint64_t data_end = 0;
  for (auto const& t : f.tensors()) data_end = std::max(data_end, f.data_offset() + t.offset + t.n_bytes);
  REQUIRE(data_end <= full.size());
  auto const path = write_file(tinylora::test::scratch_dir("gguf_truncated") / "cut.gguf", full);
  std::map<std::string, int> kinds;
  for (std::size_t n = full.size(); n-- > 0;) {  // cut one more byte each time
    CAPTURE(n);
    fs::resize_file(path, n);
    if (n >= data_end) {
      CHECK_NOTHROW(GgufFile::open(path));
      continue;
    }
    auto const msg = open_error(path);
    bool const clear = contains(msg, "cut.gguf") && contains(msg, "Hint:") &&
                       (contains(msg, "not a GGUF file") || contains(msg, "truncated") ||
                        contains(msg, "beyond the end") || contains(msg, "cannot fit in the file") ||
                        contains(msg, "data section would start"));
    CHECK_MESSAGE(clear, msg);
    if (n < 24) ++kinds["header"];
    else if (n < f.data_offset()) ++kinds[contains(msg, "tensor #") ? "tensor table" : "metadata"];
    else ++kinds["data"];
  }
  CHECK(fs::file_size(path) == 0);
  // Every region was cut somewhere.
  CHECK(kinds["header"] == 24);
  CHECK(kinds["metadata"] > 100);
  CHECK(kinds["tensor table"] > 100);
  CHECK(kinds["data"] > 100);
  MESSAGE("truncations checked: header " << kinds["header"] << ", metadata " << kinds["metadata"]
                                         << ", tensor table " << kinds["tensor table"] << ", data " << kinds["data"]);
}

TEST_CASE("gguf: malformed fields each give a clear error") {
  auto const dir = tinylora::test::scratch_dir("gguf_malformed");
  auto expect = [&](char const* name, GgufBytes const& g, std::vector<std::string> const& parts) {
    auto const msg = open_error(write_file(dir / name, g.b));
    CAPTURE(msg);
    CHECK(contains(msg, "GgufFile::open(): '"));
    CHECK(contains(msg, name));
    CHECK(contains(msg, "Hint:"));
    for (auto const& p : parts) CHECK_MESSAGE(contains(msg, p), "missing '" << p << "'");
  };
  GgufBytes g;

  g = {};
  g.header(0, 1).u64(1'000'000).raw("general.name");
  expect("string_length.gguf", g, {"metadata key of metadata key #0", "has length 1000000, beyond the end of the file"});

  g = {};
  g.header(0, 1).str("general.name").u32(8).u64(~std::uint64_t{0} - 3);
  expect("string_value_length.gguf", g, {"string value of metadata key #0 'general.name'", "beyond the end"});

  g = {};
  g.header(1, 0).tensor("blk.0.attn_q.weight", {1, 1, 1, 1, 1, 1, 1}, kF32, 0).pad().zeros(32);
  expect("n_dims.gguf", g, {"tensor 'blk.0.attn_q.weight' has n_dims 7 (expected at most 4)"});

  g = {};
  g.header(1, 0).tensor("w", {8}, kF32, 64).pad().zeros(32);
  expect("offset.gguf", g, {"tensor 'w' data [64, 64 + 32) lies beyond the end of the file", "truncated"});

  g = {};
  g.header(1, 0).tensor("w", {8}, 99, 0).pad().zeros(32);
  expect("type99.gguf", g, {"tensor 'w' has unknown ggml type 99"});
  g = {};
  g.header(1, 0).tensor("w", {32}, 4, 0).pad().zeros(32);  // Q4_2, removed from ggml
  expect("type4.gguf", g, {"tensor 'w' has unknown ggml type 4"});

  g = {};
  g.header(2, 0).tensor("w", {8}, kF32, 0).tensor("w", {8}, kF32, 32).pad().zeros(64);
  expect("duplicate.gguf", g, {"duplicate tensor 'w' (#1; expected unique tensor names)"});

  g = {};
  g.header(1, 0).tensor("w", {4}, kF32, 16).pad().zeros(64);
  expect("misaligned.gguf", g, {"tensor 'w' has data offset 16, which is misaligned (expected a multiple of 32)"});

  g = {};
  g.header(1, 1).kv_u32("general.alignment", 48).tensor("w", {4}, kF32, 0).pad(16).zeros(64);
  expect("alignment.gguf", g, {"'general.alignment' = 48 (expected a power of two)"});
  g = {};
  g.header(0, 1).str("general.alignment").u32(5).u32(32);
  expect("alignment_type.gguf", g, {"'general.alignment' has type int32 (expected uint32)"});

  g = {};
  g.header(0, 1).str("flag").u32(7).u8(2);
  expect("bool.gguf", g, {"bool value of metadata key #0 'flag' is 2 (expected 0 or 1)"});
  g = {};
  g.header(0, 1).str("flags").u32(9).u32(7).u64(2).u8(1).u8(5);
  expect("bool_array.gguf", g, {"bool array element 1 of metadata key #0 'flags' is 5 (expected 0 or 1)"});

  g = {};
  g.header(0, 1).str("x").u32(13).u32(0);
  expect("value_type.gguf", g, {"unknown metadata value type 13 in metadata key #0 'x'", "(expected 0..12)"});
  g = {};
  g.header(0, 1).str("x").u32(9).u32(42).u64(0);
  expect("array_type.gguf", g, {"unknown array element type 42"});

  g = {};
  g.header(0, 2).kv_u32("a", 1).kv_u32("a", 2);
  expect("duplicate_key.gguf", g, {"duplicate metadata key 'a' (#1)"});
  g = {};
  g.header(0, 1).kv_u32("", 1);
  expect("empty_key.gguf", g, {"metadata key #0 is empty"});

  g = {};
  g.header(0, 1).str("big").u32(9).u32(4).u64(std::uint64_t{1} << 62).zeros(16);
  expect("array_length.gguf", g, {"array length 4611686018427387904 of metadata key #0 'big'"});
  g = {};
  g.header(0, 1).str("strings").u32(9).u32(8).u64(2).str("ok").u64(77);
  expect("string_array.gguf", g, {"string array element of metadata key #0 'strings'", "beyond the end"});

  g = {};
  g.header(0, 1).str("deep").u32(9);
  for (int i = 0; i < 20; ++i) g.u32(9).u64(1);
  g.u32(0).u64(0);
  expect("nested.gguf", g, {"arrays nested deeper than 8 levels"});

  g = {};
  g.header(1, 0).tensor("w", {std::uint64_t{1} << 32, std::uint64_t{1} << 32, 4}, kF32, 0).pad().zeros(32);
  expect("overflow.gguf", g, {"tensor 'w' has dimensions whose product overflows int64"});
  g = {};
  g.header(1, 0).tensor("w", {~std::uint64_t{0}}, kF32, 0).pad().zeros(32);
  expect("dim_range.gguf", g, {"tensor 'w' has ne[0] = 18446744073709551615 (expected at most 2^63 - 1)"});

  g = {};
  g.header(1, 0).tensor("w", {33}, kQ4_0, 0).pad().zeros(64);
  expect("row.gguf", g, {"tensor 'w' of type Q4_0 has row length ne[0] = 33 (expected a multiple of the block size 32)"});

  g = {};
  g.header(2, 0).tensor("a", {16}, kF32, 0).tensor("b", {8}, kF32, 32).pad().zeros(96);
  expect("overlap.gguf", g, {"tensors 'a' [0, +64) and 'b' [32, +32) overlap"});

  g = {};
  g.header(1'000'000, 0).zeros(64);
  expect("tensor_count.gguf", g, {"tensor count 1000000 cannot fit in the file"});
  g = {};
  g.header(0, ~std::uint64_t{0}).zeros(64);
  expect("kv_count.gguf", g, {"metadata kv count 18446744073709551615 cannot fit in the file"});

  g = {};
  g.header(1, 0).tensor("w", {8}, kF32, 0);  // table ends; no room for the aligned data section
  expect("no_data.gguf", g, {"the data section would start at byte 64 (expected at most the file size"});
}

TEST_CASE("gguf: a type tinylora cannot dequantize opens, and dequantize() says so") {
  GgufBytes g;
  g.header(1, 0).tensor("w", {256}, kQ5_K, 0).pad().zeros(176);
  auto const f = GgufFile::open(write_file(tinylora::test::scratch_dir("gguf_q5k") / "q5k.gguf", g.b));
  CHECK(f.tensor("w").type == GgmlType::kQ5_K);
  CHECK(f.tensor("w").n_bytes == 176);
  auto const msg = error_of([&] { (void)f.dequantize("w"); });
  CHECK(contains(msg, "tensor 'w' has type Q5_K, which tinylora cannot dequantize (supported: F32, F16"));
  CHECK(contains(msg, "Hint:"));
  CHECK(contains(error_of([&] {
                   float y[256];
                   std::uint8_t src[176] = {};
                   tinylora::io::dequantize_row(GgmlType::kQ5_K, src, 256, y);
                 }),
                 "dequantize_row(): cannot dequantize type Q5_K"));
}

// ---- the real model ----------------------------------------------------------------------------

TEST_CASE("gguf: SmolLM2-135M-Instruct (Q4_1), when fetched") {
  auto const path = model_path();
  if (!fs::exists(path)) {
    MESSAGE("skipped: " << path << " not found. Run scripts/fetch-model (or set TINYLORA_MODEL=<path>) "
                        "to test the reader on the real SmolLM2-135M GGUF.");
    return;
  }
  using clock = std::chrono::steady_clock;
  auto const t0 = clock::now();
  auto const f = GgufFile::open(path);
  auto const t1 = clock::now();

  CHECK(f.version() == 3);
  CHECK(f.alignment() == 32);
  CHECK(f.get<std::string>("general.architecture") == "llama");
  CHECK(f.get<std::int64_t>("llama.block_count") == 30);
  CHECK(f.get<std::int64_t>("llama.embedding_length") == 576);
  CHECK(f.get<std::int64_t>("llama.attention.head_count") == 9);
  CHECK(f.get<std::int64_t>("llama.attention.head_count_kv") == 3);
  CHECK(f.get<std::int64_t>("llama.feed_forward_length") == 1536);
  CHECK(f.get<std::int64_t>("llama.vocab_size") == 49152);
  CHECK(f.get<std::int64_t>("llama.context_length") == 8192);
  CHECK(f.get<std::int64_t>("llama.rope.dimension_count") == 64);
  CHECK(f.get<float>("llama.rope.freq_base") == 100000.0f);
  CHECK(f.get<float>("llama.attention.layer_norm_rms_epsilon") == 1e-5f);
  CHECK(f.get<std::vector<std::string>>("tokenizer.ggml.tokens").size() == 49152);
  CHECK(f.get<std::vector<std::int32_t>>("tokenizer.ggml.token_type").size() == 49152);
  CHECK(f.get<std::string>("tokenizer.ggml.model") == "gpt2");
  CHECK(f.get<std::int64_t>("tokenizer.ggml.eos_token_id") == 2);

  std::int64_t const d = 576, d_kv = 192, d_ff = 1536, n_vocab = 49152;
  f.check_shape(f.tensor("token_embd.weight"), {n_vocab, d});
  f.check_shape(f.tensor("output_norm.weight"), {d});
  for (int l = 0; l < 30; ++l) {
    auto const p = "blk." + std::to_string(l) + ".";
    CAPTURE(p);
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "attn_q.weight"), {d, d}));         // (d_out, d_in)
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "attn_k.weight"), {d_kv, d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "attn_v.weight"), {d_kv, d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "attn_output.weight"), {d, d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "ffn_gate.weight"), {d_ff, d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "ffn_up.weight"), {d_ff, d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "ffn_down.weight"), {d, d_ff}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "attn_norm.weight"), {d}));
    CHECK_NOTHROW(f.check_shape(f.tensor(p + "ffn_norm.weight"), {d}));
  }
  std::map<std::string, int> types;
  for (auto const& t : f.tensors()) ++types[tinylora::io::ggml_type_name(t.type)];
  CHECK(f.tensors().size() == 272);
  CHECK(types["Q4_1"] == 210);
  CHECK(types["Q8_0"] == 1);
  CHECK(types["F32"] == 61);

  // Plausible statistics of a few weights.
  for (char const* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.15.attn_v.weight", "blk.29.ffn_down.weight"}) {
    CAPTURE(name);
    auto const w = f.dequantize(name);
    double sum = 0, sum_sq = 0, max_abs = 0;
    bool finite = true;
    for (float x : w) {
      finite = finite && std::isfinite(x);
      sum += x;
      sum_sq += double(x) * x;
      max_abs = std::max(max_abs, double(std::abs(x)));
    }
    double const n = static_cast<double>(w.size());
    double const mean = sum / n, std_dev = std::sqrt(sum_sq / n - mean * mean);
    CHECK(finite);
    CHECK(std::abs(mean) < 0.01);
    CHECK(std_dev > 0.05);
    CHECK(std_dev < 0.5);
    CHECK(max_abs < 20.0);
  }
  auto const norm = f.dequantize("output_norm.weight");
  CHECK(std::all_of(norm.begin(), norm.end(), [](float x) { return std::isfinite(x); }));

  // The fixture holds rows 0-1 of two real tensors as dequantized by the gguf package.
  auto const index = fixture_index();
  auto const expected = fixture_expected();
  for (auto const& t : index["tensors"]) {
    auto const fixture_name = t["name"].get<std::string>();
    if (fixture_name.rfind("real.", 0) != 0) continue;
    auto const real_name = fixture_name.substr(5, fixture_name.size() - 5 - std::string(".rows0-1").size());
    CAPTURE(real_name);
    auto const w = f.dequantize(real_name);
    auto const count = t["count"].get<std::size_t>();
    std::vector<float> const rows(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(count));
    auto const mismatch = first_bit_mismatch(rows, expected, t["offset"].get<std::size_t>());
    CHECK_MESSAGE(mismatch.empty(), mismatch);
  }

  // Time to dequantize every tensor (to float, then to bf16).
  auto const t2 = clock::now();
  std::int64_t n_values = 0;
  for (auto const& t : f.tensors()) n_values += static_cast<std::int64_t>(f.dequantize(t.name).size());
  auto const t3 = clock::now();
  for (auto const& t : f.tensors()) (void)f.dequantize<bf16>(t.name);
  auto const t4 = clock::now();
  auto const ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  CHECK(n_values > 130'000'000);
  MESSAGE("SmolLM2 GGUF: " << f.file_size() << " bytes, " << f.tensors().size() << " tensors (Q4_1 " << types["Q4_1"]
                           << ", Q8_0 " << types["Q8_0"] << ", F32 " << types["F32"] << "), " << n_values
                           << " values; open " << ms(t0, t1) << " ms, dequantize all to fp32 " << ms(t2, t3)
                           << " ms, to bf16 " << ms(t3, t4) << " ms");
}
