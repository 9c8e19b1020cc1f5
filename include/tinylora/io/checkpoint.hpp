// tinylora/io/checkpoint.hpp: training checkpoints (θ, optimizer state, RNG counters, data
// position) saved atomically and verified on load, so that a run killed at any instant, even by
// SIGKILL, resumes from the newest checkpoint that is complete and intact.
//
// On-disk layout of a CheckpointStore rooted at <dir>:
//   <dir>/.lock                      taken (flock) by save(): one writer at a time
//   <dir>/step-000000042/            one folder per step, 9+ digits, zero-padded
//       manifest.json                { "format": "tinylora-checkpoint", "format_version": 1,
//                                      "step": 42,
//                                      "records": [ { "name": "adapter/theta", "file": "...bin",
//                                                     "dtype": "f32", "kind": "array",
//                                                     "count": 13, "bytes": 52,
//                                                     "sha256": "<64 hex>" }, ... ] }
//       <encoded name>.bin           one file per record: raw little-endian values (strings: bytes)
//   <dir>/.tmp-*                     work in progress or leftovers of a killed save (ignored)
// A step folder only ever appears through rename(2) of a fully written and fsynced temporary
// folder, so a reader sees either the whole checkpoint or none of it; sizes and sha256 of every
// record are still checked on load to catch disk corruption and hand edits.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tinylora/config.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/core/sha256.hpp"
#include "tinylora/io/durable_file.hpp"

namespace tinylora::io {

/// What a checkpoint record holds. Arrays and scalars of the same element type are distinct
/// kinds: `i64()` does not read an `int64s` array of length one, and vice versa.
enum class RecordType { kF32Array, kF64Array, kI64Array, kU64Scalar, kI64Scalar, kString };

namespace detail::checkpoint {

struct TypeInfo {
  RecordType type;
  char const* dtype;        // manifest "dtype"
  char const* kind;         // manifest "kind"
  std::size_t element_size; // bytes per element (1 for strings)
  char const* accessor;     // the Checkpoint method that reads it
  char const* description;  // for messages
};

inline constexpr TypeInfo kTypes[] = {
    {RecordType::kF32Array, "f32", "array", 4, "floats()", "an f32 array"},
    {RecordType::kF64Array, "f64", "array", 8, "doubles()", "an f64 array"},
    {RecordType::kI64Array, "i64", "array", 8, "int64s()", "an i64 array"},
    {RecordType::kU64Scalar, "u64", "scalar", 8, "u64()", "a u64 scalar"},
    {RecordType::kI64Scalar, "i64", "scalar", 8, "i64()", "an i64 scalar"},
    {RecordType::kString, "utf8", "string", 1, "string()", "a string"},
};

inline TypeInfo const& info(RecordType t) {
  for (auto const& i : kTypes)
    if (i.type == t) return i;
  fail("Checkpoint: internal error: unknown RecordType ", static_cast<int>(t));
}

inline TypeInfo const* find_info(std::string_view dtype, std::string_view kind) {
  for (auto const& i : kTypes)
    if (dtype == i.dtype && kind == i.kind) return &i;
  return nullptr;
}

/// Values → little-endian bytes (a plain memcpy on little-endian hosts).
template <class T>
std::string encode_le(std::span<T const> values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (values.empty()) return out;
  std::memcpy(out.data(), values.data(), out.size());
  if constexpr (std::endian::native == std::endian::big) {
    for (std::size_t i = 0; i < values.size(); ++i)
      std::reverse(out.begin() + static_cast<std::ptrdiff_t>(i * sizeof(T)),
                   out.begin() + static_cast<std::ptrdiff_t>((i + 1) * sizeof(T)));
  }
  return out;
}

/// Little-endian bytes → values; bytes.size() must be a multiple of sizeof(T).
template <class T>
std::vector<T> decode_le(std::string const& bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  if (out.empty()) return out;
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  if constexpr (std::endian::native == std::endian::big) {
    for (auto& v : out) {
      auto* p = reinterpret_cast<unsigned char*>(&v);
      std::reverse(p, p + sizeof(T));
    }
  }
  return out;
}

/// A record name → a safe file name: [A-Za-z0-9_-] and non-leading '.' kept, every other byte
/// written as %XX (so '/' never makes a sub-folder, and "." / ".." / hidden names cannot occur),
/// then ".bin". Injective; names whose encoding is long end in '~' + a sha256 prefix instead
/// ('~' is always encoded otherwise, so the two forms cannot collide).
inline std::string file_name_for(std::string const& name) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (std::size_t i = 0; i < name.size(); ++i) {
    auto const c = static_cast<unsigned char>(name[i]);
    bool const safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-' || (c == '.' && i > 0);
    if (safe) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  static constexpr std::size_t kMaxEncoded = 200;  // file names are limited to 255 bytes
  if (out.size() > kMaxEncoded) out = out.substr(0, 150) + "~" + sha256_hex(name).substr(0, 32);
  return out + ".bin";
}

/// "step-000000042": at least 9 digits, zero-padded.
inline std::string step_folder_name(std::int64_t step) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "step-%09lld", static_cast<long long>(step));
  return buf;
}

/// The step of a canonical step folder name, or nullopt for anything else.
inline std::optional<std::int64_t> parse_step_folder(std::string const& folder) {
  static constexpr std::string_view kPrefix = "step-";
  if (folder.size() <= kPrefix.size() || folder.compare(0, kPrefix.size(), kPrefix) != 0) return std::nullopt;
  std::string const digits = folder.substr(kPrefix.size());
  if (digits.size() > 18) return std::nullopt;  // beyond that an int64 may overflow
  std::int64_t step = 0;
  for (char const c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    step = step * 10 + (c - '0');
  }
  if (step_folder_name(step) != folder) return std::nullopt;  // e.g. too many leading zeros
  return step;
}


/// Removes a folder tree without throwing (best effort; leftovers are retried by the next save).
inline void remove_tree_quietly(std::filesystem::path const& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

/// A short "a, b, c (and N more)" list for messages.
template <class Range>
std::string short_list(Range const& items, std::size_t max_items = 8) {
  std::string out;
  std::size_t n = 0;
  for (auto const& item : items) {
    if (n == max_items) {
      out += " (and more)";
      break;
    }
    if (n > 0) out += ", ";
    out += '\'';
    out += std::string_view(item);
    out += '\'';
    ++n;
  }
  return n == 0 ? std::string("none") : out;
}

}  // namespace detail::checkpoint

/// A checkpoint's contents: named binary records with typed accessors. Names are any non-empty
/// UTF-8 strings ('/' welcome: "adapter/theta", "adam/m"); putting a name again replaces it.
class Checkpoint {
 public:
  /// One record: its type and its little-endian bytes.
  struct Record {
    RecordType type = RecordType::kF32Array;
    std::string bytes;
    friend bool operator==(Record const&, Record const&) = default;
  };

  void put(std::string const& name, std::span<float const> values) {
    set("put", name, RecordType::kF32Array, detail::checkpoint::encode_le(values));
  }
  void put(std::string const& name, std::span<double const> values) {
    set("put", name, RecordType::kF64Array, detail::checkpoint::encode_le(values));
  }
  void put(std::string const& name, std::span<std::int64_t const> values) {
    set("put", name, RecordType::kI64Array, detail::checkpoint::encode_le(values));
  }
  void put_u64(std::string const& name, std::uint64_t value) {
    set("put_u64", name, RecordType::kU64Scalar, detail::checkpoint::encode_le(std::span<std::uint64_t const>(&value, 1)));
  }
  void put_i64(std::string const& name, std::int64_t value) {
    set("put_i64", name, RecordType::kI64Scalar, detail::checkpoint::encode_le(std::span<std::int64_t const>(&value, 1)));
  }
  void put_string(std::string const& name, std::string value) {
    set("put_string", name, RecordType::kString, std::move(value));
  }

  /// Wrong type or missing: an Error naming the record and the accessor to use.
  std::vector<float> floats(std::string const& name) const {
    return detail::checkpoint::decode_le<float>(get("floats", name, RecordType::kF32Array).bytes);
  }
  std::vector<double> doubles(std::string const& name) const {
    return detail::checkpoint::decode_le<double>(get("doubles", name, RecordType::kF64Array).bytes);
  }
  std::vector<std::int64_t> int64s(std::string const& name) const {
    return detail::checkpoint::decode_le<std::int64_t>(get("int64s", name, RecordType::kI64Array).bytes);
  }
  std::uint64_t u64(std::string const& name) const {
    return detail::checkpoint::decode_le<std::uint64_t>(get("u64", name, RecordType::kU64Scalar).bytes).at(0);
  }
  std::int64_t i64(std::string const& name) const {
    return detail::checkpoint::decode_le<std::int64_t>(get("i64", name, RecordType::kI64Scalar).bytes).at(0);
  }
  std::string const& string(std::string const& name) const {
    return get("string", name, RecordType::kString).bytes;
  }

  bool has(std::string const& name) const { return records_.contains(name); }
  /// Names in ascending byte order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(records_.size());
    for (auto const& [name, record] : records_) out.push_back(name);
    return out;
  }
  std::size_t size() const { return records_.size(); }
  bool empty() const { return records_.empty(); }
  /// The type of a record (Error when missing).
  RecordType type(std::string const& name) const { return find("type", name).type; }
  /// Removes a record; false when there was none.
  bool erase(std::string const& name) { return records_.erase(name) > 0; }
  /// Every record, by name (bytes are little-endian), for writers and tests.
  std::map<std::string, Record> const& records() const { return records_; }

  /// Bitwise equality of every record (NaN payloads included).
  friend bool operator==(Checkpoint const&, Checkpoint const&) = default;

  /// Inserts a record from raw little-endian bytes (used by the loader); checks the size.
  void put_raw(std::string const& name, RecordType type, std::string bytes) {
    auto const& info = detail::checkpoint::info(type);
    std::size_t const expected_size = type == RecordType::kU64Scalar || type == RecordType::kI64Scalar ? 8 : 0;
    TINYLORA_CHECK(expected_size == 0 ? bytes.size() % info.element_size == 0 : bytes.size() == expected_size,
                   "Checkpoint::put_raw(): record '", name, "' of type ", info.description, " has ", bytes.size(),
                   " bytes (expected ", expected_size == 0 ? "a multiple of " : "",
                   expected_size == 0 ? info.element_size : expected_size, "). Hint: the data is corrupt.");
    set("put_raw", name, type, std::move(bytes));
  }

 private:
  void set(char const* method, std::string const& name, RecordType type, std::string bytes) {
    TINYLORA_CHECK(!name.empty(), "Checkpoint::", method,
                   "(): empty record name (expected a non-empty name). Hint: use names like \"adapter/theta\".");
    try {
      (void)nlohmann::json(name).dump();  // the manifest stores names as JSON strings
    } catch (nlohmann::json::exception const&) {
      fail("Checkpoint::", method, "(): record name is not valid UTF-8 (got ", name.size(),
           " bytes). Hint: use printable UTF-8 names.");
    }
    records_[name] = Record{type, std::move(bytes)};
  }

  Record const& find(char const* method, std::string const& name) const {
    auto const it = records_.find(name);
    if (it == records_.end()) {
      fail("Checkpoint::", method, "(): no record named '", name, "' (the checkpoint has ",
           detail::checkpoint::short_list(names()),
           "). Hint: check the name, or whether this checkpoint was written by a different trainer or version.");
    }
    return it->second;
  }

  Record const& get(char const* method, std::string const& name, RecordType want) const {
    Record const& r = find(method, name);
    if (r.type != want) {
      auto const& have = detail::checkpoint::info(r.type);
      fail("Checkpoint::", method, "(): record '", name, "' is ", have.description, " (expected ",
           detail::checkpoint::info(want).description, "). Hint: read it with ", have.accessor, ".");
    }
    return r;
  }

  std::map<std::string, Record> records_;
};

/// A folder of checkpoints, one sub-folder per step: <dir>/step-000000042/. Saves are atomic
/// and serialized across processes by a lock file; loads verify sizes and sha256. One object may
/// be used from one thread at a time.
class CheckpointStore {
 public:
  static constexpr int kFormatVersion = 1;
  static constexpr char const* kFormatName = "tinylora-checkpoint";
  static constexpr char const* kManifestName = "manifest.json";

  /// Creates dir (and its parents) when missing. keep_last >= 1 checkpoints survive each save.
  explicit CheckpointStore(std::filesystem::path dir, std::size_t keep_last = 3)
      : dir_(std::move(dir)), keep_last_(keep_last) {
    TINYLORA_CHECK(keep_last_ >= 1, "CheckpointStore::CheckpointStore(): keep_last must be at least 1 (got ",
                   keep_last_, "). Hint: keep_last = 1 keeps only the newest checkpoint.");
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec || !std::filesystem::is_directory(dir_)) {
      fail("CheckpointStore::CheckpointStore(): cannot create the checkpoint folder '", dir_.string(), "' (",
           ec ? ec.message() : std::string("a file of that name exists"),
           "). Hint: pass a writable folder path (it is created if missing).");
    }
  }

  std::filesystem::path const& dir() const { return dir_; }
  std::size_t keep_last() const { return keep_last_; }
  /// <dir>/step-XXXXXXXXX (whether or not it exists).
  std::filesystem::path step_dir(std::int64_t step) const { return dir_ / detail::checkpoint::step_folder_name(step); }

  /// Atomic: writes every record as its own file plus manifest.json into
  /// <dir>/.tmp-step-XXXXXXXXX-<pid>, fsyncs each file and the temporary folder, renames it to
  /// step-XXXXXXXXX and fsyncs <dir>; then removes all but the newest keep_last steps (never the
  /// one just saved) and any leftover .tmp-* folders. Re-saving an existing step replaces it
  /// atomically (renameat2 RENAME_EXCHANGE, or where unsupported: the old one is renamed aside
  /// first), then the old one is removed.
  void save(std::int64_t step, Checkpoint const& c) {
    namespace cp = detail::checkpoint;
    namespace fs = std::filesystem;
    constexpr char const* kSave = "CheckpointStore::save()";
    TINYLORA_CHECK(step >= 0, "CheckpointStore::save(): step must be >= 0 (got ", step,
                   "). Hint: save the optimizer step count, starting at 0.");
    TINYLORA_CHECK(step <= kMaxStep, "CheckpointStore::save(): step too large (expected <= ", kMaxStep, ", got ",
                   step, ").");
    Lock const lock(dir_);
    std::string const folder = cp::step_folder_name(step);
    std::string const pid = std::to_string(static_cast<long long>(::getpid()));
    fs::path const tmp = dir_ / (".tmp-" + folder + "-" + pid);
    fs::path const final_dir = dir_ / folder;
    cp::remove_tree_quietly(tmp);
    std::error_code ec;
    fs::create_directory(tmp, ec);
    if (ec) {
      fail("CheckpointStore::save(): cannot create '", tmp.string(), "' (", ec.message(),
           "). Hint: check that '", dir_.string(), "' is writable and the disk is not full.");
    }
    try {
      nlohmann::json records = nlohmann::json::array();
      std::set<std::string> files;
      for (auto const& [name, record] : c.records()) {
        auto const& info = cp::info(record.type);
        std::string const file = cp::file_name_for(name);
        TINYLORA_CHECK(files.insert(file).second, "CheckpointStore::save(): two records map to the file '", file,
                       "'. Hint: this is a bug in tinylora; please report the record names.");
        write_file(tmp / file, record.bytes, kSave);
        records.push_back({{"name", name},
                           {"file", file},
                           {"dtype", info.dtype},
                           {"kind", info.kind},
                           {"count", record.bytes.size() / info.element_size},
                           {"bytes", record.bytes.size()},
                           {"sha256", sha256_hex(record.bytes)}});
      }
      nlohmann::json const manifest = {{"format", kFormatName},
                                       {"format_version", kFormatVersion},
                                       {"step", step},
                                       {"records", std::move(records)}};
      write_file(tmp / kManifestName, manifest.dump(2) + "\n", kSave);
      fsync_directory(tmp, kSave);
      if (fs::exists(final_dir, ec)) {
        fs::path const old = dir_ / (".tmp-replaced-" + folder + "-" + pid);
        cp::remove_tree_quietly(old);
        if (exchange_paths(tmp, final_dir, kSave)) {
          // tmp now holds the old checkpoint; the new one is in place.
          fsync_directory(dir_, kSave);
          rename_path(tmp, old, kSave);
        } else {
          rename_path(final_dir, old, kSave);
          rename_path(tmp, final_dir, kSave);
        }
        fsync_directory(dir_, kSave);
        cp::remove_tree_quietly(old);
      } else {
        rename_path(tmp, final_dir, kSave);
        fsync_directory(dir_, kSave);
      }
    } catch (...) {
      cp::remove_tree_quietly(tmp);
      throw;
    }
    prune(step);
  }

  /// The newest checkpoint whose manifest and every file's size and sha256 verify, with its
  /// step; nullopt when there is none. A corrupt or incomplete newer one is skipped with a
  /// warning on stderr naming the folder and the reason (it is not deleted).
  std::optional<std::pair<std::int64_t, Checkpoint>> load_latest() const {
    auto const all = steps();
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      try {
        return std::pair<std::int64_t, Checkpoint>{*it, load(*it)};
      } catch (Error const& e) {
        std::cerr << "tinylora: warning: CheckpointStore::load_latest(): skipping checkpoint '"
                  << step_dir(*it).string() << "': " << e.what() << std::endl;
      }
    }
    return std::nullopt;
  }

  /// Loads one step; throws an Error naming the folder/file and what failed (missing manifest,
  /// sha mismatch, truncated, unknown format version) with a hint.
  Checkpoint load(std::int64_t step) const {
    namespace cp = detail::checkpoint;
    namespace fs = std::filesystem;
    using nlohmann::json;
    fs::path const folder = step_dir(step);
    std::string const where = "CheckpointStore::load(): checkpoint '" + folder.string() + "': ";
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) {
      fail(where, "no such folder (the store has steps ", cp::short_list(step_names()),
           "). Hint: call steps() or load_latest() to see what exists.");
    }
    fs::path const manifest_path = folder / kManifestName;
    if (!fs::exists(manifest_path, ec)) {
      fail(where, "missing ", kManifestName,
           ". Hint: the folder is incomplete or was edited by hand; resume from an older step (load_latest() does).");
    }
    std::string const manifest_text = read_file(manifest_path, where);
    json manifest;
    try {
      manifest = json::parse(manifest_text);
    } catch (json::exception const& e) {
      fail(where, kManifestName, " is not valid JSON (", e.what(),
           "). Hint: the file is corrupt; resume from an older step (load_latest() does).");
    }
    auto const field = [&](json const& obj, char const* key, char const* what) -> json const& {
      if (!obj.is_object() || !obj.contains(key)) {
        fail(where, kManifestName, " lacks \"", key, "\" (expected ", what,
             "). Hint: the manifest is corrupt or was not written by tinylora.");
      }
      return obj.at(key);
    };
    json const& format = field(manifest, "format", "the string \"tinylora-checkpoint\"");
    if (!format.is_string() || format.get<std::string>() != kFormatName) {
      fail(where, kManifestName, " has format ", format.dump(), " (expected \"", kFormatName,
           "\"). Hint: this folder was not written by tinylora's CheckpointStore.");
    }
    json const& version = field(manifest, "format_version", "an integer");
    if (!version.is_number_integer() || version.get<std::int64_t>() != kFormatVersion) {
      fail(where, "unknown format version ", version.dump(), " (expected ", kFormatVersion,
           "). Hint: it was written by a different tinylora version; load it with that version, or start "
           "from an older checkpoint.");
    }
    json const& step_field = field(manifest, "step", "an integer");
    if (!step_field.is_number_integer() || step_field.get<std::int64_t>() != step) {
      fail(where, kManifestName, " says step ", step_field.dump(), " (expected ", step,
           "). Hint: the folder was renamed or copied by hand; give it its own step's name.");
    }
    json const& records = field(manifest, "records", "an array");
    if (!records.is_array()) {
      fail(where, kManifestName, " \"records\" is ", records.type_name(),
           " (expected an array). Hint: the manifest is corrupt.");
    }
    Checkpoint out;
    for (json const& r : records) {
      auto const text = [&](char const* key) {
        json const& v = field(r, key, "a string");
        if (!v.is_string()) fail(where, kManifestName, " record field \"", key, "\" is not a string. Hint: the manifest is corrupt.");
        return v.get<std::string>();
      };
      auto const number = [&](char const* key) {
        json const& v = field(r, key, "a non-negative integer");
        if (!v.is_number_unsigned()) {
          fail(where, kManifestName, " record field \"", key, "\" is ", v.dump(),
               " (expected a non-negative integer). Hint: the manifest is corrupt.");
        }
        return v.get<std::uint64_t>();
      };
      std::string const name = text("name");
      std::string const file = text("file");
      std::string const dtype = text("dtype");
      std::string const kind = text("kind");
      std::uint64_t const count = number("count");
      std::uint64_t const bytes = number("bytes");
      std::string const sha = text("sha256");
      std::string const rec = "record '" + name + "' (file '" + (folder / file).string() + "'): ";
      if (file.empty() || file == "." || file == ".." || file == kManifestName ||
          file.find('/') != std::string::npos || file.find('\0') != std::string::npos) {
        fail(where, rec, "unsafe file name in the manifest. Hint: the manifest is corrupt or was edited by hand.");
      }
      auto const* info = cp::find_info(dtype, kind);
      if (info == nullptr) {
        fail(where, rec, "unknown dtype/kind '", dtype, "'/'", kind,
             "' (expected f32/array, f64/array, i64/array, u64/scalar, i64/scalar or utf8/string). "
             "Hint: written by a newer tinylora version?");
      }
      bool const scalar = info->type == RecordType::kU64Scalar || info->type == RecordType::kI64Scalar;
      if ((scalar && count != 1) || bytes % info->element_size != 0 || bytes / info->element_size != count) {
        fail(where, rec, "inconsistent count ", count, " and byte size ", bytes, " for ", info->description,
             ". Hint: the manifest is corrupt.");
      }
      if (out.has(name)) fail(where, rec, "duplicate record name in the manifest. Hint: the manifest is corrupt.");
      fs::path const path = folder / file;
      if (!fs::exists(path, ec)) {
        fail(where, rec, "the record file is missing. Hint: the checkpoint is incomplete; resume from an older "
                         "step (load_latest() does).");
      }
      std::uintmax_t const size = fs::file_size(path, ec);
      if (ec) fail(where, rec, "cannot read its size (", ec.message(), "). Hint: check the file's permissions.");
      if (size != bytes) {
        fail(where, rec, size < bytes ? "truncated" : "too long", " (expected ", bytes, " bytes, got ", size,
             "). Hint: the file was cut short or overwritten; resume from an older step (load_latest() does).");
      }
      std::string data = read_file(path, where + rec);
      if (data.size() != bytes) {
        fail(where, rec, "truncated while reading (expected ", bytes, " bytes, got ", data.size(),
             "). Hint: is another process modifying the checkpoint?");
      }
      std::string const got_sha = sha256_hex(data);
      if (got_sha != sha) {
        fail(where, rec, "sha256 mismatch (expected ", sha, ", got ", got_sha,
             "). Hint: the file is corrupt (disk error or edit); resume from an older step (load_latest() does).");
      }
      out.put_raw(name, info->type, std::move(data));
    }
    return out;
  }

  /// Steps of the step-* folders, ascending (those only appear by renaming a finished save).
  std::vector<std::int64_t> steps() const {
    std::vector<std::int64_t> out;
    std::error_code ec;
    std::filesystem::directory_iterator it(dir_, ec);
    if (ec) {
      if (!std::filesystem::exists(dir_)) return out;
      fail("CheckpointStore::steps(): cannot list '", dir_.string(), "' (", ec.message(),
           "). Hint: check the folder's permissions.");
    }
    for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
      if (ec) break;
      auto const step = detail::checkpoint::parse_step_folder(it->path().filename().string());
      std::error_code type_ec;
      if (step && it->is_directory(type_ec)) out.push_back(*step);
    }
    if (ec) {
      fail("CheckpointStore::steps(): listing '", dir_.string(), "' failed (", ec.message(),
           "). Hint: check the folder and its file system.");
    }
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  static constexpr std::int64_t kMaxStep = 999'999'999'999'999'999;  // 18 digits

  /// An exclusive flock on <dir>/.lock for the duration of a save (released on exit or kill).
  class Lock {
   public:
    explicit Lock(std::filesystem::path const& dir) : fd_(::open((dir / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
      if (fd_.get() < 0) {
        int const err = errno;
        fail("CheckpointStore::save(): cannot open the lock file '", (dir / ".lock").string(), "' (",
             errno_text(err), "). Hint: check that the checkpoint folder is writable.");
      }
      while (::flock(fd_.get(), LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        if (errno == ENOLCK || errno == EOPNOTSUPP) break;  // file systems without flock: proceed unlocked
        int const err = errno;
        fail("CheckpointStore::save(): cannot lock '", (dir / ".lock").string(), "' (",
             errno_text(err), ").");
      }
    }

   private:
    Fd fd_;
  };

  std::vector<std::string> step_names() const {
    std::vector<std::string> out;
    for (auto const s : steps()) out.push_back(detail::checkpoint::step_folder_name(s));
    return out;
  }

  static std::string read_file(std::filesystem::path const& path, std::string const& where) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(where, "cannot open '", path.string(), "'. Hint: check the file's permissions.");
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) fail(where, "reading '", path.string(), "' failed. Hint: check the disk.");
    return data;
  }

  /// Removes all but the newest keep_last steps (never `just_saved`), and every .tmp-* folder:
  /// the lock is held, so no other save is in progress. Each is renamed to .tmp-* first, so that a
  /// kill in the middle of a removal leaves a leftover, never a half-deleted step folder.
  void prune(std::int64_t just_saved) {
    namespace fs = std::filesystem;
    auto const all = steps();
    std::string const pid = std::to_string(static_cast<long long>(::getpid()));
    if (all.size() > keep_last_) {
      for (std::size_t i = 0; i + keep_last_ < all.size(); ++i) {
        if (all[i] == just_saved) continue;
        std::string const folder = detail::checkpoint::step_folder_name(all[i]);
        fs::path const doomed = dir_ / (".tmp-pruned-" + folder + "-" + pid);
        detail::checkpoint::remove_tree_quietly(doomed);
        if (::rename((dir_ / folder).c_str(), doomed.c_str()) == 0) detail::checkpoint::remove_tree_quietly(doomed);
      }
    }
    std::error_code ec;
    std::vector<fs::path> leftovers;
    for (fs::directory_iterator it(dir_, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      if (it->path().filename().string().starts_with(".tmp-")) leftovers.push_back(it->path());
    }
    for (auto const& p : leftovers) detail::checkpoint::remove_tree_quietly(p);
    try {
      fsync_directory(dir_, "CheckpointStore::save()");
    } catch (Error const&) {
      // The checkpoint itself is already durable; a failed fsync after pruning loses nothing.
    }
  }

  std::filesystem::path dir_;
  std::size_t keep_last_;
};

}  // namespace tinylora::io
