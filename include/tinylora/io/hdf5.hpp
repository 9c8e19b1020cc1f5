// tinylora/io/hdf5.hpp: the HDF5 result file of one run (HDF5 C++ API over xtensor data).
// A ResultFile is written to a temporary sibling and renamed into place by finalize(), so a
// crashed run never leaves a half-written file at the final path; a resumable grid is written in
// place and flushed after every point, so a killed run loses nothing it stored.
#pragma once

#include <H5Cpp.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

#include "tinylora/config.hpp"
#include "tinylora/core/error.hpp"
#include "tinylora/io/durable_file.hpp"

namespace tinylora::io {

static_assert(XTENSOR_DEFAULT_LAYOUT == xt::layout_type::row_major,
              "tinylora/io/hdf5.hpp writes xtensor storage as is and needs row-major xtensor "
              "containers (XTENSOR_DEFAULT_LAYOUT must be row_major).");

/// The element types a ResultFile dataset can hold.
template <class T>
concept Hdf5Element = std::same_as<T, float> || std::same_as<T, double> || std::same_as<T, std::int32_t> ||
                      std::same_as<T, std::int64_t> || std::same_as<T, std::uint8_t> ||
                      std::same_as<T, std::uint64_t>;

/// The value types of attributes: get_attr<T> takes one of these.
template <class T>
concept Hdf5AttrValue = std::same_as<T, double> || std::same_as<T, std::int64_t> || std::same_as<T, std::string> ||
                        std::same_as<T, std::vector<double>> || std::same_as<T, std::vector<std::int64_t>>;

namespace detail::h5 {

/// Silences HDF5's own printing of its error stack (once per process); errors reach the user as
/// tinylora::Error built from the H5::Exception instead.
inline void quiet() {
  static bool const done = [] {
    H5::Exception::dontPrint();
    return true;
  }();
  (void)done;
}

/// Element traits: the in-memory type, the (little-endian, portable) type in the file, and the
/// name used in messages.
template <class T>
struct Element;
template <>
struct Element<float> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_FLOAT; }
  static H5::PredType const& file() { return H5::PredType::IEEE_F32LE; }
  static constexpr char const* kName = "float32";
};
template <>
struct Element<double> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_DOUBLE; }
  static H5::PredType const& file() { return H5::PredType::IEEE_F64LE; }
  static constexpr char const* kName = "float64";
};
template <>
struct Element<std::int32_t> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_INT32; }
  static H5::PredType const& file() { return H5::PredType::STD_I32LE; }
  static constexpr char const* kName = "int32";
};
template <>
struct Element<std::int64_t> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_INT64; }
  static H5::PredType const& file() { return H5::PredType::STD_I64LE; }
  static constexpr char const* kName = "int64";
};
template <>
struct Element<std::uint8_t> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_UINT8; }
  static H5::PredType const& file() { return H5::PredType::STD_U8LE; }
  static constexpr char const* kName = "uint8";
};
template <>
struct Element<std::uint64_t> {
  static H5::PredType const& mem() { return H5::PredType::NATIVE_UINT64; }
  static H5::PredType const& file() { return H5::PredType::STD_U64LE; }
  static constexpr char const* kName = "uint64";
};

/// A short name for a stored type: "float32", "int64", "uint8", "string", "compound", ...
inline std::string describe(hid_t type) {
  H5T_class_t const cls = H5Tget_class(type);
  std::size_t const bits = 8 * H5Tget_size(type);
  switch (cls) {
    case H5T_FLOAT: return "float" + std::to_string(bits);
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_STRING: return H5Tis_variable_str(type) > 0 ? "string (variable length)" : "string (fixed length)";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "vlen";
    case H5T_OPAQUE: return "opaque";
    case H5T_BITFIELD: return "bitfield";
    case H5T_REFERENCE: return "reference";
    case H5T_TIME: return "time";
    default: return "unknown";
  }
}

/// Whether a stored type is exactly T (class, size and signedness; the byte order is converted).
template <Hdf5Element T>
bool matches(hid_t type) {
  H5T_class_t const cls = H5Tget_class(type);
  if (H5Tget_size(type) != sizeof(T)) return false;
  if constexpr (std::is_floating_point_v<T>) {
    return cls == H5T_FLOAT;
  } else {
    return cls == H5T_INTEGER && (H5Tget_sign(type) != H5T_SGN_NONE) == std::is_signed_v<T>;
  }
}

/// The variable-length UTF-8 string type used for every string this layer writes.
inline H5::StrType utf8_string_type() {
  H5::StrType t(H5::PredType::C_S1, H5T_VARIABLE);
  t.setCset(H5T_CSET_UTF8);
  return t;
}

/// A simple dataspace of the given extents (a scalar dataspace for rank 0).
inline H5::DataSpace make_space(std::vector<hsize_t> const& dims) {
  if (dims.empty()) return H5::DataSpace(H5S_SCALAR);
  return H5::DataSpace(static_cast<int>(dims.size()), dims.data());
}

/// The extents of a dataspace (empty for a scalar).
inline std::vector<hsize_t> extents(H5::DataSpace const& space) {
  int const rank = space.getSimpleExtentNdims();
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  if (rank > 0) space.getSimpleExtentDims(dims.data());
  return dims;
}

inline std::string shape_string(std::vector<hsize_t> const& dims) {
  std::string s = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

}  // namespace detail::h5

class ResultFile;

/// A float64 grid `name` with a uint8 mask `name + "_done"` of the same shape, stored point by
/// point and flushed after every point, so a run that is killed and restarted skips the points
/// it already finished. Obtained from ResultFile::resumable(). Flat indices are row-major:
/// point (i0, ..., i_{k-1}) has flat index ((i0 * n1 + i1) * n2 + ...) + i_{k-1}.
/// One ResumableGrid per dataset at a time: done() and n_done() answer from a mask cached in
/// memory, which store() keeps current. Not thread-safe (the HDF5 library is built serial).
class ResumableGrid {
 public:
  ResumableGrid(ResumableGrid&&) noexcept = default;
  ResumableGrid& operator=(ResumableGrid&&) noexcept = default;
  ResumableGrid(ResumableGrid const&) = delete;
  ResumableGrid& operator=(ResumableGrid const&) = delete;
  ~ResumableGrid() = default;

  std::string const& name() const { return name_; }
  std::vector<std::size_t> const& shape() const { return shape_; }
  /// Number of grid points (the product of the shape).
  std::size_t size() const { return done_cache_.size(); }

  /// Whether the point at flat index i was stored.
  bool done(std::size_t i) const {
    check_index("ResumableGrid::done()", i);
    return done_cache_[i] != 0;
  }

  /// Number of stored points.
  std::size_t n_done() const { return n_done_; }

  /// Writes value at flat index i, then its done flag, then flushes the file (the value reaches
  /// the operating system before its flag does), so a process killed after store() returns
  /// keeps the point. Storing a point twice overwrites its value.
  void store(std::size_t i, double value) {
    check_index("ResumableGrid::store()", i);
    TINYLORA_CHECK(writable_, "ResumableGrid::store(): grid '", name_, "' of '", file_path_,
                   "' was opened read-only (expected a writable file). Hint: open the file with "
                   "ResultFile::open_or_create_resumable() or Mode::ReadWrite.");
    std::string failed;
    try {
      std::uint8_t const one = 1;
      write_point(values_, i, &value, H5::PredType::NATIVE_DOUBLE);
      if (H5Dflush(values_.getId()) < 0) failed = "H5Dflush failed";
      if (failed.empty()) write_point(done_, i, &one, H5::PredType::NATIVE_UINT8);
      if (failed.empty() && H5Fflush(done_.getId(), H5F_SCOPE_GLOBAL) < 0) failed = "H5Fflush failed";
    } catch (H5::Exception const& e) {
      failed = e.getFuncName() + ": " + e.getDetailMsg();
    }
    TINYLORA_CHECK(failed.empty(), "ResumableGrid::store(): writing point ", i, " of '", name_, "' in '",
                   file_path_, "' failed (", failed, "). Hint: is the disk full?");
    if (done_cache_[i] == 0) ++n_done_;
    done_cache_[i] = 1;
  }

  /// All values, shaped like the grid; points not stored hold the fill value.
  xt::xarray<double> values() const {  // shape()
    auto out = xt::xarray<double>::from_shape(shape_);
    read_all("ResumableGrid::values()", values_, out.data(), H5::PredType::NATIVE_DOUBLE);
    return out;
  }

  /// The done flags as stored in the file (1 = stored, 0 = not yet), shaped like the grid.
  xt::xarray<std::uint8_t> done_mask() const {  // shape()
    auto out = xt::xarray<std::uint8_t>::from_shape(shape_);
    read_all("ResumableGrid::done_mask()", done_, out.data(), H5::PredType::NATIVE_UINT8);
    return out;
  }

 private:
  friend class ResultFile;

  ResumableGrid(H5::DataSet values, H5::DataSet done, std::string name, std::string file_path,
                std::vector<std::size_t> shape, bool writable)
      : values_(std::move(values)),
        done_(std::move(done)),
        name_(std::move(name)),
        file_path_(std::move(file_path)),
        shape_(std::move(shape)),
        writable_(writable) {
    std::size_t n = 1;
    for (std::size_t const e : shape_) n *= e;
    done_cache_.assign(n, 0);
    read_all("ResultFile::resumable()", done_, done_cache_.data(), H5::PredType::NATIVE_UINT8);
    n_done_ = 0;
    for (std::uint8_t const d : done_cache_) n_done_ += d != 0 ? 1 : 0;
  }

  void check_index(char const* op, std::size_t i) const {
    TINYLORA_CHECK(i < done_cache_.size(), op, ": flat index ", i, " is out of range for grid '", name_,
                   "' (expected < ", done_cache_.size(), "). Hint: flat indices are row-major over shape.");
  }

  void write_point(H5::DataSet const& ds, std::size_t i, void const* value, H5::PredType const& mem) const {
    std::vector<hsize_t> coord(shape_.size());  // row-major unravel of i
    std::size_t rest = i;
    for (std::size_t k = shape_.size(); k-- > 0;) {
      coord[k] = rest % shape_[k];
      rest /= shape_[k];
    }
    H5::DataSpace file_space = ds.getSpace();
    file_space.selectElements(H5S_SELECT_SET, 1, coord.data());
    hsize_t const one = 1;
    H5::DataSpace mem_space(1, &one);
    ds.write(value, mem, mem_space, file_space);
  }

  void read_all(char const* op, H5::DataSet const& ds, void* out, H5::PredType const& mem) const {
    if (done_cache_.empty()) return;
    try {
      ds.read(out, mem);
    } catch (H5::Exception const& e) {
      fail(op, ": reading grid '", name_, "' of '", file_path_, "' failed (", e.getFuncName(), ": ",
           e.getDetailMsg(), ")");
    }
  }

  H5::DataSet values_;  // shape_, float64
  H5::DataSet done_;    // shape_, uint8
  std::string name_;
  std::string file_path_;
  std::vector<std::size_t> shape_;
  std::vector<std::uint8_t> done_cache_;  // (size()), row-major
  std::size_t n_done_ = 0;
  bool writable_ = false;
};

/// One HDF5 file per run. Datasets are named with '/'-separated paths ("scan/loss"); the
/// groups on the way are created as needed, and writing an existing name replaces it.
/// Attributes live on the root ("/") or on any group or dataset. Every file carries the root
/// attributes `format_version` (int64, tinylora::kFormatVersion) and `tinylora_version`.
///
///   auto f = ResultFile::create("out/run.h5");   // writes out/run.h5.tmp-<pid>
///   f.set_attr("/", "seed", std::int64_t{42});
///   f.write("scan/loss", loss);                  // xt::xtensor<double, 2>
///   f.finalize();                                // fsync, rename to out/run.h5
///
/// Not thread-safe (the HDF5 library is built serial). Element types: Hdf5Element.
class ResultFile {
 public:
  enum class Mode { ReadOnly, ReadWrite };

  /// A new result file that appears at final_path only when finalize() succeeds. Until then it
  /// is written to the sibling `<name>.tmp-<pid>`, which the destructor removes if finalize()
  /// was not called. An existing file at final_path is replaced at finalize().
  static ResultFile create(std::filesystem::path const& final_path) {
    constexpr char const* kOp = "ResultFile::create()";
    detail::h5::quiet();
    check_directory(kOp, final_path);
    TINYLORA_CHECK(!final_path.filename().empty(), kOp, ": '", final_path.string(),
                   "' names no file (expected a path like 'out/run.h5')");
    auto const tmp = temporary_for(final_path);
    ResultFile f(final_path);
    auto state = std::make_unique<State>();
    state->write_path = tmp;
    state->writable = true;
    try {
      state->file = H5::H5File(tmp.string(), H5F_ACC_TRUNC);
    } catch (H5::Exception const& e) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      fail(kOp, ": cannot create '", tmp.string(), "' (the temporary file for '", final_path.string(), "'; ",
           e.getFuncName(), ": ", e.getDetailMsg(), "). Hint: check that the directory is writable and the disk "
           "is not full.");
    }
    state->temporary = true;
    f.state_ = std::move(state);
    f.set_attr("/", "format_version", std::int64_t{kFormatVersion});
    f.set_attr("/", "tinylora_version", std::string(kVersion));
    return f;
  }

  /// An existing result file, read in place. Checks the HDF5 signature and the root attribute
  /// `format_version` (present, and not newer than this build's kFormatVersion).
  static ResultFile open(std::filesystem::path const& path, Mode mode) {
    constexpr char const* kOp = "ResultFile::open()";
    detail::h5::quiet();
    std::error_code ec;
    auto const status = std::filesystem::status(path, ec);
    TINYLORA_CHECK(std::filesystem::exists(status), kOp, ": '", path.string(),
                   "' does not exist (expected an HDF5 result file). Hint: check the path; result files "
                   "appear only after the run finalizes them.");
    TINYLORA_CHECK(std::filesystem::is_regular_file(status), kOp, ": '", path.string(),
                   "' is not a regular file (expected an HDF5 result file)");
    bool is_hdf5 = false;
    try {
      is_hdf5 = H5::H5File::isHdf5(path.string());
    } catch (H5::Exception const& e) {
      fail(kOp, ": cannot read '", path.string(), "' (", e.getFuncName(), ": ", e.getDetailMsg(),
           "). Hint: check the file's permissions.");
    }
    TINYLORA_CHECK(is_hdf5, kOp, ": '", path.string(),
                   "' is not an HDF5 file (expected the HDF5 signature). Hint: result files are written "
                   "by ResultFile::create(); is this the right path, or a text/JSON file?");
    ResultFile f(path);
    auto state = std::make_unique<State>();
    state->write_path = path;
    state->writable = mode == Mode::ReadWrite;
    try {
      state->file = H5::H5File(path.string(), mode == Mode::ReadWrite ? H5F_ACC_RDWR : H5F_ACC_RDONLY);
    } catch (H5::Exception const& e) {
      fail(kOp, ": cannot open '", path.string(), "' ", mode == Mode::ReadWrite ? "read-write" : "read-only",
           " (", e.getFuncName(), ": ", e.getDetailMsg(),
           "). Hint: the file may be truncated, not writable, or locked by another process (on file "
           "systems without locking set HDF5_USE_FILE_LOCKING=FALSE).");
    }
    f.state_ = std::move(state);
    TINYLORA_CHECK(f.has_attr("/", "format_version"), kOp, ": '", path.string(),
                   "' is an HDF5 file without the root attribute 'format_version' (expected a tinylora "
                   "result file). Hint: it was not written by tinylora::io::ResultFile.");
    std::int64_t version = 0;
    try {
      version = f.get_attr<std::int64_t>("/", "format_version");
    } catch (Error const& e) {
      fail(kOp, ": '", path.string(), "' has an unreadable 'format_version' (", e.what(), ")");
    }
    TINYLORA_CHECK(version >= 1 && version <= kFormatVersion, kOp, ": '", path.string(), "' has format_version ",
                   version, " (expected 1 to ", kFormatVersion, ", what this build reads). Hint: ",
                   version > kFormatVersion ? "it was written by a newer tinylora; update this one."
                                            : "the file is damaged.");
    return f;
  }

  /// A result file written in place, for runs that must survive being killed: opens path
  /// read-write if it exists (with open()'s checks), else creates it (through a temporary and a
  /// rename, so the file appears with its format_version already written).
  static ResultFile open_or_create_resumable(std::filesystem::path const& path) {
    if (!std::filesystem::exists(path)) create(path).finalize();
    return open(path, Mode::ReadWrite);
  }

  ResultFile(ResultFile&&) noexcept = default;
  /// Moving onto a file closes it first (removing its temporary if it was not finalized).
  ResultFile& operator=(ResultFile&&) noexcept = default;
  ResultFile(ResultFile const&) = delete;
  ResultFile& operator=(ResultFile const&) = delete;
  /// Closes the file; a file from create() that was not finalized is removed.
  ~ResultFile() = default;

  /// The path of the result: the final path for create(), the opened path otherwise.
  std::filesystem::path const& path() const { return path_; }
  /// Where the bytes go now: `<path>.tmp-<pid>` before finalize() for create(), else path().
  std::filesystem::path writing_path() const { return state_ ? state_->write_path : path_; }
  bool is_open() const { return state_ != nullptr; }
  bool writable() const { return state_ && state_->writable; }

  // ---- datasets -------------------------------------------------------------------------------

  /// Writes a rank-N tensor as a dataset (row-major), creating intermediate groups.
  template <Hdf5Element T, std::size_t N>
  void write(std::string const& name, xt::xtensor<T, N> const& data) {
    std::vector<hsize_t> dims(data.shape().begin(), data.shape().end());
    write_raw<T>("ResultFile::write()", name, data.data(), dims);
  }

  /// Writes an array of any rank as a dataset (row-major).
  template <Hdf5Element T>
  void write(std::string const& name, xt::xarray<T> const& data) {
    std::vector<hsize_t> dims(data.shape().begin(), data.shape().end());
    write_raw<T>("ResultFile::write()", name, data.data(), dims);
  }

  /// Writes a vector as a 1-D dataset.
  template <Hdf5Element T>
  void write(std::string const& name, std::vector<T> const& data) {
    write_raw<T>("ResultFile::write()", name, data.data(), {static_cast<hsize_t>(data.size())});
  }

  /// Reads a rank-N dataset of element type T; throws when the rank or element type differ.
  template <Hdf5Element T, std::size_t N>
  xt::xtensor<T, N> read(std::string const& name) const {
    constexpr char const* kOp = "ResultFile::read()";
    return guarded(kOp, name, [&] {
      H5::DataSet const ds = open_dataset(kOp, name);
      check_element<T>(kOp, name, ds);
      auto const dims = detail::h5::extents(ds.getSpace());
      TINYLORA_CHECK(dims.size() == N, kOp, ": dataset '", name, "' in '", path_.string(), "' has rank ",
                     dims.size(), " (expected rank ", N, ", got shape ", detail::h5::shape_string(dims),
                     "). Hint: read it as xtensor<T, ", dims.size(), "> or with read_array<T>().");
      std::array<std::size_t, N> shape{};
      for (std::size_t k = 0; k < N; ++k) shape[k] = static_cast<std::size_t>(dims[k]);
      xt::xtensor<T, N> out(shape);
      if (out.size() > 0) ds.read(out.data(), detail::h5::Element<T>::mem());
      return out;
    });
  }

  /// Reads a dataset of element type T and any rank.
  template <Hdf5Element T>
  xt::xarray<T> read_array(std::string const& name) const {
    constexpr char const* kOp = "ResultFile::read_array()";
    return guarded(kOp, name, [&] {
      H5::DataSet const ds = open_dataset(kOp, name);
      check_element<T>(kOp, name, ds);
      auto const dims = detail::h5::extents(ds.getSpace());
      std::vector<std::size_t> shape(dims.begin(), dims.end());
      auto out = xt::xarray<T>::from_shape(shape);
      if (out.size() > 0) ds.read(out.data(), detail::h5::Element<T>::mem());
      return out;
    });
  }

  /// Reads a 1-D dataset into a vector.
  template <Hdf5Element T>
  std::vector<T> read_vector(std::string const& name) const {
    auto const t = read<T, 1>(name);
    return std::vector<T>(t.begin(), t.end());
  }

  /// Whether a dataset or group exists at name ("/" is the root).
  bool has(std::string const& name) const {
    constexpr char const* kOp = "ResultFile::has()";
    check_open(kOp);
    auto const parts = split(kOp, name, true);
    std::string at;
    return guarded(kOp, name, [&] {
      for (std::size_t k = 0; k < parts.size(); ++k) {
        at += "/" + parts[k];
        if (!state_->file.nameExists(at)) return false;
        if (k + 1 < parts.size() && state_->file.childObjType(at) != H5O_TYPE_GROUP) return false;
      }
      return true;
    });
  }

  /// Creates the group at name (and its parents) if missing, e.g. to hold attributes.
  void create_group(std::string const& name) {
    constexpr char const* kOp = "ResultFile::create_group()";
    check_writable(kOp);
    auto const parts = split(kOp, name, false);
    guarded(kOp, name, [&] { ensure_groups(kOp, name, parts, parts.size()); });
  }

  /// The names of the members of the group at path, in name order.
  std::vector<std::string> children(std::string const& path = "/") const {
    constexpr char const* kOp = "ResultFile::children()";
    return guarded(kOp, path, [&] {
      auto const key = absolute(kOp, path, true);
      TINYLORA_CHECK(key == "/" || (has(path) && state_->file.childObjType(key) == H5O_TYPE_GROUP), kOp,
                     ": '", path, "' is not a group in '", path_.string(), "' (expected a group)");
      H5::Group const g = state_->file.openGroup(key);
      std::vector<std::string> names;
      for (hsize_t i = 0; i < g.getNumObjs(); ++i) names.push_back(g.getObjnameByIdx(i));
      return names;
    });
  }

  /// Writes strings as a 1-D dataset of variable-length UTF-8 strings.
  void write_strings(std::string const& name, std::vector<std::string> const& strings) {
    constexpr char const* kOp = "ResultFile::write_strings()";
    std::vector<char const*> ptrs;
    ptrs.reserve(strings.size());
    for (std::size_t i = 0; i < strings.size(); ++i) {
      TINYLORA_CHECK(strings[i].find('\0') == std::string::npos, kOp, ": string ", i, " of '", name,
                     "' contains a NUL byte (expected C strings). Hint: store binary data as uint8.");
      ptrs.push_back(strings[i].c_str());
    }
    auto const type = detail::h5::utf8_string_type();
    write_typed(kOp, name, type, type, ptrs.data(), {static_cast<hsize_t>(strings.size())});
  }

  /// Reads a 1-D dataset of strings (variable or fixed length).
  std::vector<std::string> read_strings(std::string const& name) const {
    constexpr char const* kOp = "ResultFile::read_strings()";
    return guarded(kOp, name, [&] {
      H5::DataSet const ds = open_dataset(kOp, name);
      H5::DataType const stored = ds.getDataType();
      TINYLORA_CHECK(stored.getClass() == H5T_STRING, kOp, ": dataset '", name, "' in '", path_.string(),
                     "' holds ", detail::h5::describe(stored.getId()),
                     " (expected strings). Hint: read numbers with read<T, N>().");
      H5::DataSpace const space = ds.getSpace();
      auto const dims = detail::h5::extents(space);
      TINYLORA_CHECK(dims.size() == 1, kOp, ": dataset '", name, "' has rank ", dims.size(),
                     " (expected rank 1, got shape ", detail::h5::shape_string(dims), ")");
      auto const n = static_cast<std::size_t>(dims[0]);
      std::vector<std::string> out;
      out.reserve(n);
      if (n == 0) return out;
      // The memory type takes the stored character set (HDF5 does not convert ASCII <-> UTF-8).
      H5T_cset_t const cset = H5Tget_cset(stored.getId());
      if (H5Tis_variable_str(stored.getId()) > 0) {
        H5::StrType mem(H5::PredType::C_S1, H5T_VARIABLE);
        mem.setCset(cset);
        std::vector<char*> buf(n, nullptr);
        ds.read(buf.data(), mem);
        for (char const* s : buf) out.emplace_back(s ? s : "");
        H5::DataSet::vlenReclaim(buf.data(), mem, space);
      } else {
        std::size_t const len = stored.getSize();
        H5::StrType mem(H5::PredType::C_S1, len);
        mem.setCset(cset);
        mem.setStrpad(H5T_STR_NULLPAD);  // all len bytes are text; a NUL ends a shorter string
        std::vector<char> buf(n * len);
        ds.read(buf.data(), mem);
        for (std::size_t i = 0; i < n; ++i) {
          std::string_view s(buf.data() + i * len, len);
          out.emplace_back(s.substr(0, std::min(s.find('\0'), s.size())));
        }
      }
      return out;
    });
  }

  // ---- attributes -----------------------------------------------------------------------------

  /// Sets attribute key on the object at path ("/" is the root), replacing an existing one.
  void set_attr(std::string const& path, std::string const& key, double value) {
    set_attr_raw(path, key, detail::h5::Element<double>::file(), H5::PredType::NATIVE_DOUBLE, &value, false, 0);
  }
  void set_attr(std::string const& path, std::string const& key, std::int64_t value) {
    set_attr_raw(path, key, detail::h5::Element<std::int64_t>::file(), H5::PredType::NATIVE_INT64, &value, false,
                 0);
  }
  /// Any other integer (int, unsigned, bool, ...) is stored as int64.
  template <std::integral I>
    requires(!std::same_as<I, std::int64_t>)
  void set_attr(std::string const& path, std::string const& key, I value) {
    if constexpr (std::is_unsigned_v<I> && sizeof(I) >= sizeof(std::int64_t)) {
      TINYLORA_CHECK(value <= static_cast<I>(std::numeric_limits<std::int64_t>::max()),
                     "ResultFile::set_attr(): attribute '", key, "' = ", value,
                     " does not fit an int64 (expected <= 2^63 - 1). Hint: store it as a string.");
    }
    set_attr(path, key, static_cast<std::int64_t>(value));
  }
  void set_attr(std::string const& path, std::string const& key, std::string const& value) {
    constexpr char const* kOp = "ResultFile::set_attr()";
    TINYLORA_CHECK(value.find('\0') == std::string::npos, kOp, ": attribute '", key,
                   "' contains a NUL byte (expected a C string)");
    char const* ptr = value.c_str();
    auto const type = detail::h5::utf8_string_type();
    set_attr_raw(path, key, type, type, &ptr, false, 0);
  }
  void set_attr(std::string const& path, std::string const& key, char const* value) {
    set_attr(path, key, std::string(value));
  }
  void set_attr(std::string const& path, std::string const& key, std::vector<double> const& value) {
    set_attr_raw(path, key, detail::h5::Element<double>::file(), H5::PredType::NATIVE_DOUBLE, value.data(), true,
                 value.size());
  }
  void set_attr(std::string const& path, std::string const& key, std::vector<std::int64_t> const& value) {
    set_attr_raw(path, key, detail::h5::Element<std::int64_t>::file(), H5::PredType::NATIVE_INT64, value.data(),
                 true, value.size());
  }

  /// Whether the object at path has attribute key (false when there is no object at path).
  bool has_attr(std::string const& path, std::string const& key) const {
    constexpr char const* kOp = "ResultFile::has_attr()";
    check_open(kOp);
    if (!has(path)) return false;
    return guarded(kOp, path,
                   [&] { return with_object(kOp, path, [&](H5::H5Object const& obj) { return obj.attrExists(key); }); });
  }

  /// Reads attribute key of the object at path as T (double, int64_t, std::string,
  /// std::vector<double>, std::vector<int64_t>); throws when the stored type or rank differ.
  template <Hdf5AttrValue T>
  T get_attr(std::string const& path, std::string const& key) const {
    constexpr char const* kOp = "ResultFile::get_attr()";
    return guarded(kOp, path, [&] { return with_object(kOp, path, [&](H5::H5Object const& obj) -> T {
      TINYLORA_CHECK(obj.attrExists(key), kOp, ": '", path, "' in '", path_.string(), "' has no attribute '",
                     key, "'. Hint: has_attr() tests for one.");
      H5::Attribute const attr = obj.openAttribute(key);
      H5::DataType const stored = attr.getDataType();
      auto const dims = detail::h5::extents(attr.getSpace());
      constexpr bool kVector = std::same_as<T, std::vector<double>> || std::same_as<T, std::vector<std::int64_t>>;
      auto const mismatch = [&](char const* expected) {
        fail(kOp, ": attribute '", key, "' of '", path, "' in '", path_.string(), "' is ",
             detail::h5::describe(stored.getId()), " of shape ", detail::h5::shape_string(dims), " (expected ",
             expected, "). Hint: read it with the type it was written with.");
      };
      if constexpr (std::same_as<T, std::string>) {
        if (stored.getClass() != H5T_STRING || !dims.empty()) mismatch("a scalar string");
        std::string out;
        attr.read(stored, out);
        return out;
      } else {
        using E = std::conditional_t<std::same_as<T, double> || std::same_as<T, std::vector<double>>, double,
                                     std::int64_t>;
        std::string const expected =
            kVector ? std::string("a 1-D ") + detail::h5::Element<E>::kName + " array"
                    : std::string("a scalar ") + detail::h5::Element<E>::kName;
        if (!detail::h5::matches<E>(stored.getId()) || dims.size() != (kVector ? 1u : 0u)) mismatch(expected.c_str());
        if constexpr (kVector) {
          T out(static_cast<std::size_t>(dims[0]));
          if (!out.empty()) attr.read(detail::h5::Element<E>::mem(), out.data());
          return out;
        } else {
          T out{};
          attr.read(detail::h5::Element<E>::mem(), &out);
          return out;
        }
      }
    }); });
  }

  // ---- resumable grids ----------------------------------------------------------------------

  /// The grid `name` (float64, shape) with its mask `name + "_done"` (uint8): created filled with
  /// `fill` and all-not-done if missing, else re-opened after checking that both datasets have this
  /// shape and type. Storage is contiguous and allocated up front, so storing a point writes raw
  /// data only. The grid shares the file: let it go before finalize().
  ResumableGrid resumable(std::string const& name, std::vector<std::size_t> const& shape,
                          double fill = std::numeric_limits<double>::quiet_NaN()) {
    constexpr char const* kOp = "ResultFile::resumable()";
    check_open(kOp);
    TINYLORA_CHECK(!shape.empty(), kOp, ": grid '", name, "' has an empty shape (expected rank >= 1)");
    for (std::size_t const e : shape)
      TINYLORA_CHECK(e > 0, kOp, ": grid '", name, "' has a zero extent in shape ",
                     detail::h5::shape_string({shape.begin(), shape.end()}), " (expected every extent >= 1)");
    std::string const done_name = name + "_done";
    std::vector<hsize_t> const dims(shape.begin(), shape.end());
    return guarded(kOp, name, [&] {
      bool const has_values = has(name), has_done = has(done_name);
      if (has_values || has_done) {
        TINYLORA_CHECK(has_values && has_done, kOp, ": '", path_.string(), "' has '",
                       has_values ? name : done_name, "' but not '", has_values ? done_name : name,
                       "' (expected both datasets of a resumable grid). Hint: the file was edited by hand, "
                       "or the name is used by something else.");
        H5::DataSet values = open_dataset(kOp, name);
        H5::DataSet done = open_dataset(kOp, done_name);
        check_element<double>(kOp, name, values);
        check_element<std::uint8_t>(kOp, done_name, done);
        for (auto const* ds : {&values, &done}) {
          auto const got = detail::h5::extents(ds->getSpace());
          TINYLORA_CHECK(got == dims, kOp, ": the resumable grid '", name, "' in '", path_.string(),
                         "' has shape ", detail::h5::shape_string(got), " (expected ",
                         detail::h5::shape_string(dims),
                         "). Hint: the run's options changed; write to a new file or a new grid name.");
        }
        return ResumableGrid(std::move(values), std::move(done), name, path_.string(), shape, writable());
      }
      check_writable(kOp);
      H5::DSetCreatPropList values_plist, done_plist;
      values_plist.setLayout(H5D_CONTIGUOUS);
      values_plist.setAllocTime(H5D_ALLOC_TIME_EARLY);
      values_plist.setFillTime(H5D_FILL_TIME_ALLOC);
      values_plist.setFillValue(H5::PredType::NATIVE_DOUBLE, &fill);
      std::uint8_t const zero = 0;
      done_plist.setLayout(H5D_CONTIGUOUS);
      done_plist.setAllocTime(H5D_ALLOC_TIME_EARLY);
      done_plist.setFillTime(H5D_FILL_TIME_ALLOC);
      done_plist.setFillValue(H5::PredType::NATIVE_UINT8, &zero);
      H5::DataSet values = create_dataset(kOp, name, detail::h5::Element<double>::file(), dims, values_plist);
      H5::DataSet done = create_dataset(kOp, done_name, detail::h5::Element<std::uint8_t>::file(), dims, done_plist);
      state_->file.flush(H5F_SCOPE_GLOBAL);
      return ResumableGrid(std::move(values), std::move(done), name, path_.string(), shape, true);
    });
  }

  // ---- lifetime -------------------------------------------------------------------------------

  /// Pushes HDF5's buffers to the operating system (survives the process, not a power cut).
  void flush() {
    constexpr char const* kOp = "ResultFile::flush()";
    check_open(kOp);
    guarded(kOp, "/", [&] { state_->file.flush(H5F_SCOPE_GLOBAL); });
  }

  /// Closes the file and makes it durable: for create(), fsyncs the temporary, renames it to
  /// path() (atomically replacing any file there) and fsyncs the directory; for an opened file,
  /// fsyncs it in place. The ResultFile is closed afterwards. Every ResumableGrid of the file must
  /// be gone (they keep it open).
  void finalize() {
    constexpr char const* kOp = "ResultFile::finalize()";
    check_open(kOp);
    guarded(kOp, "/", [&] {
      hid_t const id = state_->file.getId();
      ssize_t const open_objects = H5Fget_obj_count(id, H5F_OBJ_DATASET | H5F_OBJ_GROUP | H5F_OBJ_DATATYPE |
                                                           H5F_OBJ_ATTR);
      int const refs = H5Iget_ref(id);
      TINYLORA_CHECK(open_objects == 0 && refs == 1, kOp, ": ", open_objects, " objects of '", path_.string(),
                     "' are still open (expected none). Hint: let every ResumableGrid of this file go out of "
                     "scope before finalize().");
      state_->file.flush(H5F_SCOPE_GLOBAL);
      state_->file.close();
    });
    std::unique_ptr<State> state = std::move(state_);
    if (state->temporary) {
      publish(state->write_path, path_, kOp);  // fsync, rename over path(), fsync the folder
      state->temporary = false;
    } else {
      fsync_file(state->write_path, kOp);
    }
  }

 private:
  /// What an open file owns; its destructor closes the file and removes an unfinished temporary.
  struct State {
    H5::H5File file;
    std::filesystem::path write_path;
    bool temporary = false;  // write_path is a temporary to remove unless finalized
    bool writable = false;

    State() = default;
    State(State const&) = delete;
    State& operator=(State const&) = delete;
    ~State() {
      try {
        file.close();
      } catch (...) {
        // Nothing to report from a destructor; the temporary is removed below either way.
      }
      if (temporary) {
        std::error_code ec;
        std::filesystem::remove(write_path, ec);
      }
    }
  };

  explicit ResultFile(std::filesystem::path path) : path_(std::move(path)) {}

  static void check_directory(char const* op, std::filesystem::path const& final_path) {
    auto const dir = final_path.parent_path().empty() ? std::filesystem::path(".") : final_path.parent_path();
    std::error_code ec;
    auto const status = std::filesystem::status(dir, ec);
    TINYLORA_CHECK(std::filesystem::exists(status), op, ": the directory '", dir.string(), "' of '",
                   final_path.string(), "' does not exist (expected an existing directory). Hint: create it "
                   "first (std::filesystem::create_directories or mkdir -p).");
    TINYLORA_CHECK(std::filesystem::is_directory(status), op, ": '", dir.string(), "' (the parent of '",
                   final_path.string(), "') is not a directory (expected a directory)");
    TINYLORA_CHECK(::access(dir.c_str(), W_OK) == 0, op, ": the directory '", dir.string(), "' of '",
                   final_path.string(), "' is not writable (", std::strerror(errno),
                   "). Hint: check its permissions or choose another output directory.");
  }

  void check_open(char const* op) const {
    TINYLORA_CHECK(state_ != nullptr, op, ": the result file '", path_.string(),
                   "' is closed (expected an open file). Hint: it was finalized or moved from.");
  }

  void check_writable(char const* op) const {
    check_open(op);
    TINYLORA_CHECK(state_->writable, op, ": '", path_.string(),
                   "' was opened read-only (expected a writable file). Hint: ResultFile::open(path, "
                   "ResultFile::Mode::ReadWrite).");
  }

  /// Runs fn, turning an H5::Exception into a tinylora::Error that names the operation, the
  /// object and the file.
  template <class Fn>
  auto guarded(char const* op, std::string const& name, Fn&& fn) const -> decltype(fn()) {
    try {
      return fn();
    } catch (H5::Exception const& e) {
      fail(op, ": HDF5 failed on '", name, "' in '", writing_path().string(), "' (", e.getFuncName(), ": ",
           e.getDetailMsg(), "). Hint: is the disk full, or the file damaged?");
    }
  }

  /// The '/'-separated components of name; "/" and "" (the root) only when allow_root.
  static std::vector<std::string> split(char const* op, std::string const& name, bool allow_root) {
    std::vector<std::string> parts;
    std::size_t begin = name.starts_with('/') ? 1 : 0;
    if (begin == name.size()) {
      TINYLORA_CHECK(allow_root, op, ": the name '", name,
                     "' names the root group (expected a dataset or group name such as 'scan/loss')");
      return parts;
    }
    while (true) {
      std::size_t const end = name.find('/', begin);
      std::string part = name.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
      TINYLORA_CHECK(!part.empty() && part != "." && part != "..", op, ": the name '", name,
                     "' has an empty, '.' or '..' component (expected names like 'scan/loss')");
      parts.push_back(std::move(part));
      if (end == std::string::npos) break;
      begin = end + 1;
    }
    return parts;
  }

  /// The absolute HDF5 path: "/a/b" for "a/b" or "/a/b"; "/" for the root.
  static std::string absolute(char const* op, std::string const& name, bool allow_root) {
    auto const parts = split(op, name, allow_root);
    if (parts.empty()) return "/";
    std::string key;
    for (auto const& p : parts) key += "/" + p;
    return key;
  }

  /// Creates the groups parts[0], parts[0]/parts[1], ... up to (not including) parts[count].
  void ensure_groups(char const* op, std::string const& name, std::vector<std::string> const& parts,
                     std::size_t count) {
    std::string at;
    for (std::size_t k = 0; k < count; ++k) {
      at += "/" + parts[k];
      if (!state_->file.nameExists(at)) {
        state_->file.createGroup(at);
      } else {
        TINYLORA_CHECK(state_->file.childObjType(at) == H5O_TYPE_GROUP, op, ": '", at, "' (on the way to '", name,
                       "') is a dataset in '", path_.string(), "' (expected a group)");
      }
    }
  }

  /// A new dataset at name (replacing a dataset there), with its parent groups.
  H5::DataSet create_dataset(char const* op, std::string const& name, H5::DataType const& file_type,
                             std::vector<hsize_t> const& dims,
                             H5::DSetCreatPropList const& plist = H5::DSetCreatPropList::DEFAULT) {
    auto const parts = split(op, name, false);
    ensure_groups(op, name, parts, parts.size() - 1);
    std::string const key = absolute(op, name, false);
    if (state_->file.nameExists(key)) {
      TINYLORA_CHECK(state_->file.childObjType(key) == H5O_TYPE_DATASET, op, ": '", name, "' in '", path_.string(),
                     "' is a group (expected a dataset name, or a new name)");
      state_->file.unlink(key);
    }
    return state_->file.createDataSet(key, file_type, detail::h5::make_space(dims), plist);
  }

  void write_typed(char const* op, std::string const& name, H5::DataType const& file_type,
                   H5::DataType const& mem_type, void const* data, std::vector<hsize_t> const& dims) {
    check_writable(op);
    guarded(op, name, [&] {
      H5::DataSet const ds = create_dataset(op, name, file_type, dims);
      hsize_t n = 1;
      for (hsize_t const d : dims) n *= d;
      if (n > 0) ds.write(data, mem_type);
    });
  }

  template <Hdf5Element T>
  void write_raw(char const* op, std::string const& name, T const* data, std::vector<hsize_t> const& dims) {
    write_typed(op, name, detail::h5::Element<T>::file(), detail::h5::Element<T>::mem(), data, dims);
  }

  H5::DataSet open_dataset(char const* op, std::string const& name) const {
    check_open(op);
    std::string const key = absolute(op, name, false);
    TINYLORA_CHECK(has(name), op, ": '", path_.string(), "' has no dataset '", name,
                   "'. Hint: has() tests for one; children(\"/\") lists the root.");
    TINYLORA_CHECK(state_->file.childObjType(key) == H5O_TYPE_DATASET, op, ": '", name, "' in '", path_.string(),
                   "' is a group (expected a dataset)");
    return state_->file.openDataSet(key);
  }

  template <Hdf5Element T>
  void check_element(char const* op, std::string const& name, H5::DataSet const& ds) const {
    H5::DataType const stored = ds.getDataType();
    TINYLORA_CHECK(detail::h5::matches<T>(stored.getId()), op, ": dataset '", name, "' in '", path_.string(),
                   "' has element type ", detail::h5::describe(stored.getId()), " (expected ",
                   detail::h5::Element<T>::kName, "). Hint: read it with the type it was written with.");
  }

  /// Calls fn(H5::H5Object const&) with the group or dataset at path ("/" is the root).
  template <class Fn>
  auto with_object(char const* op, std::string const& path, Fn&& fn) const -> decltype(fn(std::declval<H5::Group&>())) {
    check_open(op);
    std::string const key = absolute(op, path, true);
    if (key == "/") return fn(static_cast<H5::H5Object const&>(state_->file.openGroup("/")));
    TINYLORA_CHECK(has(path), op, ": '", path_.string(), "' has no group or dataset '", path,
                   "' (expected an existing object for the attribute). Hint: write the dataset or "
                   "create_group() first; use \"/\" for the root.");
    switch (state_->file.childObjType(key)) {
      case H5O_TYPE_GROUP: return fn(static_cast<H5::H5Object const&>(state_->file.openGroup(key)));
      case H5O_TYPE_DATASET: return fn(static_cast<H5::H5Object const&>(state_->file.openDataSet(key)));
      default: fail(op, ": '", path, "' in '", path_.string(), "' is neither a group nor a dataset");
    }
  }

  void set_attr_raw(std::string const& path, std::string const& key, H5::DataType const& file_type,
                    H5::DataType const& mem_type, void const* data, bool vector, std::size_t n) {
    constexpr char const* kOp = "ResultFile::set_attr()";
    check_writable(kOp);
    TINYLORA_CHECK(!key.empty(), kOp, ": empty attribute name on '", path, "' (expected a name)");
    guarded(kOp, path, [&] {
      with_object(kOp, path, [&](H5::H5Object const& obj) {
        if (obj.attrExists(key)) obj.removeAttr(key);
        std::vector<hsize_t> dims;
        if (vector) dims.push_back(static_cast<hsize_t>(n));
        H5::Attribute const attr = obj.createAttribute(key, file_type, detail::h5::make_space(dims));
        if (!vector || n > 0) attr.write(mem_type, data);
      });
    });
  }

  std::filesystem::path path_;
  std::unique_ptr<State> state_;  // null once finalized or moved from
};

}  // namespace tinylora::io
