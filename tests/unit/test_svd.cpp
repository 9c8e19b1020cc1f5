// Tests of linalg/svd.hpp: a hand-computed SVD, exact vs randomized agreement, Eckart-Young
// reconstruction error on matrices whose spectrum is known by construction, orthonormality,
// the sign convention, bit-determinism over thread counts, and input validation.
#include <Eigen/Dense>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../support.hpp"
#include "tinylora/linalg/svd.hpp"

#if TINYLORA_HAS_OPENMP
#include <omp.h>
#endif

using tinylora::HostMatrix;
using tinylora::Index;
using tinylora::view_of;
using namespace tinylora::linalg;

namespace {

/// (rows, k) with orthonormal columns: Q of a Gaussian matrix drawn from (seed, stream).
Eigen::MatrixXd random_orthonormal(Index rows, Index k, std::uint64_t seed, std::uint64_t stream) {
  std::vector<float> const g = tinylora::test::normal_vector(static_cast<std::size_t>(rows * k), seed, stream);
  Eigen::MatrixXd A(rows, k);  // (rows, k)
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < k; ++j) A(i, j) = g[static_cast<std::size_t>(i * k + j)];
  Eigen::HouseholderQR<Eigen::MatrixXd> const qr(A);
  return qr.householderQ() * Eigen::MatrixXd::Identity(rows, k);
}

/// A matrix with a spectrum known by construction: W = Q1 diag(sigma) Q2^T, rounded to float.
struct KnownSpectrum {
  HostMatrix W;           // (d_out, d_in)
  Eigen::VectorXd sigma;  // (min(d_out, d_in)), descending
};

KnownSpectrum known_spectrum(Index d_out, Index d_in, Eigen::VectorXd const& sigma, std::uint64_t seed) {
  Index const k = sigma.size();
  Eigen::MatrixXd const Q1 = random_orthonormal(d_out, k, seed, 1);  // (d_out, k)
  Eigen::MatrixXd const Q2 = random_orthonormal(d_in, k, seed, 2);   // (d_in, k)
  Eigen::MatrixXd const W = Q1 * sigma.asDiagonal() * Q2.transpose();
  return {W.cast<float>(), sigma};
}

/// sigma_i = decay^i (geometric) or (1 + i)^-decay (power law), i = 0 .. k-1.
Eigen::VectorXd geometric(Index k, double decay) {
  Eigen::VectorXd s(k);
  for (Index i = 0; i < k; ++i) s(i) = std::pow(decay, static_cast<double>(i));
  return s;
}
Eigen::VectorXd power_law(Index k, double exponent) {
  Eigen::VectorXd s(k);
  for (Index i = 0; i < k; ++i) s(i) = std::pow(1.0 + static_cast<double>(i), -exponent);
  return s;
}

Eigen::MatrixXd to_double(HostMatrix const& m) { return m.cast<double>(); }

/// ||W - U diag(S) V^T||_F^2 in double.
double residual_energy(HostMatrix const& W, TruncatedSvd const& f) {
  Eigen::MatrixXd const approx = to_double(f.U) * f.S.cast<double>().asDiagonal() * to_double(f.V).transpose();
  return (to_double(W) - approx).squaredNorm();
}

/// max |A^T A - I|.
double orthonormality_error(HostMatrix const& A) {
  Eigen::MatrixXd const a = to_double(A);
  return (a.transpose() * a - Eigen::MatrixXd::Identity(a.cols(), a.cols())).cwiseAbs().maxCoeff();
}

/// Whether the largest-|.| entry (first on ties) of every column of U is positive.
bool signs_follow_convention(HostMatrix const& U) {
  for (Index i = 0; i < U.cols(); ++i) {
    Index best = 0;
    for (Index k = 1; k < U.rows(); ++k)
      if (std::abs(U(k, i)) > std::abs(U(best, i))) best = k;
    if (!(U(best, i) > 0.0f)) return false;
  }
  return true;
}

bool bit_identical(TruncatedSvd const& a, TruncatedSvd const& b) {
  return a.U.rows() == b.U.rows() && a.U.cols() == b.U.cols() && a.V.rows() == b.V.rows() && a.S.size() == b.S.size() &&
         a.U == b.U && a.S == b.S && a.V == b.V;
}

void check_invariants(HostMatrix const& W, TruncatedSvd const& f, Index r) {
  REQUIRE(f.U.rows() == W.rows());
  REQUIRE(f.V.rows() == W.cols());
  REQUIRE(f.U.cols() == r);
  REQUIRE(f.V.cols() == r);
  REQUIRE(f.S.size() == r);
  CHECK(orthonormality_error(f.U) < 1e-5);
  CHECK(orthonormality_error(f.V) < 1e-5);
  for (Index i = 0; i < r; ++i) CHECK(f.S(i) >= 0.0f);
  for (Index i = 1; i < r; ++i) CHECK(f.S(i) <= f.S(i - 1));
  CHECK(signs_follow_convention(f.U));
}

}  // namespace

TEST_CASE("svd: hand-computed 2x2 with the sign convention") {
  // W = [[3, 0], [4, 5]]: W^T W = [[25, 20], [20, 25]], eigenvalues 45 and 5, so
  // sigma = (3 sqrt 5, sqrt 5), v1 = (1, 1)/sqrt 2, v2 = (1, -1)/sqrt 2, u_i = W v_i / sigma_i:
  // u1 = (1, 3)/sqrt 10, u2 = (3, -1)/sqrt 10. Largest |.| entries (3/sqrt 10) are positive.
  HostMatrix W(2, 2);
  W << 3, 0, 4, 5;
  double const s10 = std::sqrt(10.0), s2 = std::sqrt(2.0), s5 = std::sqrt(5.0);
  std::vector<double> const want_S = {3 * s5, s5};
  std::vector<double> const want_U = {1 / s10, 3 / s10, 3 / s10, -1 / s10};  // columns u1, u2
  std::vector<double> const want_V = {1 / s2, 1 / s2, 1 / s2, -1 / s2};      // columns v1, v2
  for (SvdMethod method : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Krylov, SvdMethod::Automatic}) {
    CAPTURE(static_cast<int>(method));
    TruncatedSvd const f = svd_truncated(view_of(W), 2, method);
    std::vector<double> S, U, V;
    for (Index i = 0; i < 2; ++i) {
      S.push_back(f.S(i));
      for (Index k = 0; k < 2; ++k) U.push_back(f.U(k, i)), V.push_back(f.V(k, i));
    }
    TINYLORA_CHECK_CLOSE(S, want_S, 1e-6, 1e-6);
    TINYLORA_CHECK_CLOSE(U, want_U, 0.0, 1e-6);
    TINYLORA_CHECK_CLOSE(V, want_V, 0.0, 1e-6);
    TruncatedSvd const f1 = svd_truncated(view_of(W), 1, method);
    std::vector<double> const got1 = {f1.S(0), f1.U(0, 0), f1.U(1, 0), f1.V(0, 0), f1.V(1, 0)};
    std::vector<double> const want1 = {3 * s5, 1 / s10, 3 / s10, 1 / s2, 1 / s2};
    TINYLORA_CHECK_CLOSE(got1, want1, 1e-6, 1e-6);
  }
}

TEST_CASE("svd: hand-computed 3x2 diagonal, a negative entry and a zero row") {
  // W = [[0, 0], [0, -2], [0.5, 0]]: sigma = (2, 0.5); u1 = e2 (positive by convention),
  // so v1 = -e2; u2 = e3, v2 = e1.
  HostMatrix W(3, 2);
  W << 0, 0, 0, -2, 0.5f, 0;
  for (SvdMethod method : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Krylov}) {
    CAPTURE(static_cast<int>(method));
    TruncatedSvd const f = svd_truncated(view_of(W), 2, method);
    TINYLORA_CHECK_CLOSE(f.S, std::vector<double>({2.0, 0.5}), 1e-6, 1e-7);
    HostMatrix want_U(3, 2), want_V(2, 2);
    want_U << 0, 0, 1, 0, 0, 1;
    want_V << 0, 1, -1, 0;
    TINYLORA_CHECK_CLOSE(f.U.reshaped(), want_U.reshaped(), 0.0, 1e-6);
    TINYLORA_CHECK_CLOSE(f.V.reshaped(), want_V.reshaped(), 0.0, 1e-6);
  }
}

TEST_CASE("svd: fix_signs flips pairs by the largest entry of u, first index on ties") {
  TruncatedSvd f;
  f.U.resize(4, 3);
  f.V.resize(2, 3);
  f.S = Eigen::VectorXf::Ones(3);
  f.U << -0.5f, 0.5f, 0.1f,  //
      0.5f, -0.5f, -0.9f,    //
      0.5f, 0.5f, 0.3f,      //
      -0.5f, -0.5f, 0.3f;
  f.V << 1, 2, 3, 4, 5, 6;
  fix_signs(f);
  // column 0: tie, first index holds -0.5 -> flipped; column 1: tie, first is +0.5 -> kept;
  // column 2: largest is -0.9 -> flipped.
  HostMatrix want_U(4, 3), want_V(2, 3);
  want_U << 0.5f, 0.5f, -0.1f, -0.5f, -0.5f, 0.9f, -0.5f, 0.5f, -0.3f, 0.5f, -0.5f, -0.3f;
  want_V << -1, 2, -3, -4, 5, -6;
  CHECK(f.U == want_U);
  CHECK(f.V == want_V);
  fix_signs(f);  // idempotent
  CHECK(f.U == want_U);
}

TEST_CASE("svd: sketch products equal the plain loops, any block remainder") {
  std::uint64_t const seed = tinylora::test::seed(11);
  for (auto [d_out, d_in, l] : {std::tuple<Index, Index, Index>{70, 45, 3}, {33, 97, 5}, {1, 40, 2}, {130, 1, 1}}) {
    CAPTURE(d_out);
    CAPTURE(d_in);
    std::vector<float> w = tinylora::test::normal_vector(static_cast<std::size_t>(d_out * (d_in + 3)), seed, 0);
    tinylora::ConstMatrixView<float> const W(w.data(), d_out, d_in, d_in + 3);  // ld > d_in
    std::vector<float> const x1 = tinylora::test::normal_vector(static_cast<std::size_t>(d_in * l), seed, 1);
    std::vector<float> const x2 = tinylora::test::normal_vector(static_cast<std::size_t>(d_out * l), seed, 2);
    Eigen::MatrixXf const X1 = Eigen::Map<Eigen::MatrixXf const>(x1.data(), d_in, l);
    Eigen::MatrixXf const X2 = Eigen::Map<Eigen::MatrixXf const>(x2.data(), d_out, l);
    Eigen::MatrixXf const Y = detail::sketch_product(detail::map_of(W), X1);
    Eigen::MatrixXf const Z = detail::sketch_product_transposed(detail::map_of(W), X2);
    Eigen::MatrixXd const Y_ref = detail::sketch_product_reference(W, X1);
    Eigen::MatrixXd const Z_ref = detail::sketch_product_transposed_reference(W, X2);
    TINYLORA_CHECK_CLOSE(Y.reshaped(), Y_ref.reshaped(), 1e-5, 1e-5);
    TINYLORA_CHECK_CLOSE(Z.reshaped(), Z_ref.reshaped(), 1e-5, 1e-5);
  }
}

TEST_CASE("svd: the sketch Omega is CounterRng(seed, kSketch stream) column by column") {
  std::uint64_t const seed = tinylora::test::seed(17);
  tinylora::CounterRng const rng(seed, tinylora::streams::of(tinylora::streams::kSketch, 0));
  Eigen::MatrixXf const omega = detail::gaussian_sketch(37, 5, seed);  // (37, 5)
  bool same = true;
  for (Index j = 0; j < 5; ++j)
    for (Index k = 0; k < 37; ++k) same = same && omega(k, j) == rng.normal(static_cast<std::uint64_t>(j * 37 + k));
  CHECK(same);
  CHECK(detail::gaussian_sketch(37, 9, seed).leftCols(5) == omega);  // more oversampling keeps the first columns
  CHECK(detail::cached_gaussian_sketch(37, 5, seed) == omega);
  CHECK(detail::cached_gaussian_sketch(37, 5, seed + 1) == detail::gaussian_sketch(37, 5, seed + 1));
  CHECK(detail::cached_gaussian_sketch(37, 6, seed) == detail::gaussian_sketch(37, 6, seed));
}

TEST_CASE("svd: randomized with no oversampling or no power iteration still gives valid factors") {
  std::uint64_t const seed = tinylora::test::seed(19);
  KnownSpectrum const m = known_spectrum(150, 90, geometric(90, 0.5), seed);
  for (RandomizedSvdOptions const options :
       {RandomizedSvdOptions{.oversample = 0, .power_iterations = 2, .seed = seed},
        RandomizedSvdOptions{.oversample = 8, .power_iterations = 0, .seed = seed},
        RandomizedSvdOptions{.oversample = 200, .power_iterations = 1, .seed = seed}}) {
    CAPTURE(options.oversample);
    CAPTURE(options.power_iterations);
    TruncatedSvd const f = svd_randomized(view_of(m.W), 3, options);
    check_invariants(m.W, f, 3);
    // A steep spectrum (ratio 0.5) is easy: even these settings find sigma_1..3 to 1%.
    TINYLORA_CHECK_CLOSE(f.S, m.sigma.head(3), 1e-2, 0.0);
  }
}

TEST_CASE("svd: thin_qr gives Q R = A with orthonormal Q, also when A is rank-deficient") {
  std::uint64_t const seed = tinylora::test::seed(12);
  std::vector<float> const g = tinylora::test::normal_vector(50 * 6, seed, 0);
  Eigen::MatrixXd A = Eigen::Map<Eigen::MatrixXf const>(g.data(), 50, 6).cast<double>();  // (50, 6)
  A.col(2).setZero();
  A.col(4) = 2.0 * A.col(1) - A.col(0);
  detail::ThinQr const qr = detail::thin_qr(A);
  CHECK((qr.Q * qr.R - A).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((qr.Q.transpose() * qr.Q - Eigen::MatrixXd::Identity(6, 6)).cwiseAbs().maxCoeff() < 1e-14);
  CHECK(qr.R.triangularView<Eigen::StrictlyLower>().toDenseMatrix().cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("svd: exact and randomized agree on decaying spectra (tall, wide, square)") {
  // Tolerances. Singular values: 2e-5 sigma_1 (observed <= 2e-7 sigma_1). Vectors after sign
  // fixing, ||u_rand - u_exact|| and ||v_rand - v_exact|| for i <= r, and the projector distance
  // ||U_r U_r^T - U_e U_e^T||_F: 10 x bound + 1e-4, with the power-iteration bound
  //   bound = max_{i <= r} (sigma_{l+1} / sigma_i)^(2q+1) * sigma_i / (sigma_i - sigma_{i+1})
  // (l = r + oversample; Halko-Martinsson-Tropp Sec. 10.4 for the factor, the gap for the vector).
  // Observed errors are 0.1x to 1x the bound.
  struct Case {
    Index d_out, d_in, r;
    bool geometric_decay;
    double decay;
  };
  RandomizedSvdOptions const defaults;
  std::uint64_t const seed = tinylora::test::seed(2024);
  std::uint64_t case_seed = seed;
  for (Case const c : {Case{400, 90, 2, true, 0.8}, Case{90, 400, 2, true, 0.8}, Case{200, 200, 5, true, 0.85},
                       Case{513, 130, 8, false, 1.5}, Case{130, 513, 1, false, 1.0}, Case{256, 256, 16, true, 0.9},
                       Case{700, 65, 4, false, 2.0}, Case{576, 192, 2, false, 1.0}}) {
    ++case_seed;
    CAPTURE(c.d_out);
    CAPTURE(c.d_in);
    CAPTURE(c.r);
    CAPTURE(case_seed);
    Index const k = std::min(c.d_out, c.d_in);
    KnownSpectrum const m =
        known_spectrum(c.d_out, c.d_in, c.geometric_decay ? geometric(k, c.decay) : power_law(k, c.decay), case_seed);
    TruncatedSvd const exact = svd_exact(view_of(m.W), c.r);
    TruncatedSvd const rand = svd_randomized(view_of(m.W), c.r, {.seed = case_seed});
    check_invariants(m.W, exact, c.r);
    check_invariants(m.W, rand, c.r);
    // The exact singular values are the constructed ones (to float rounding of W).
    TINYLORA_CHECK_CLOSE(exact.S, m.sigma.head(c.r), 0.0, 1e-6 * m.sigma(0));
    TINYLORA_CHECK_CLOSE(rand.S, exact.S, 0.0, 2e-5 * m.sigma(0));
    Index const l = c.r + defaults.oversample;
    double bound = 0;
    for (Index i = 0; i < c.r; ++i)
      bound = std::max(bound, std::pow(m.sigma(l) / m.sigma(i), 2 * defaults.power_iterations + 1) * m.sigma(i) /
                                  (m.sigma(i) - m.sigma(i + 1)));
    double const tol = 10 * bound + 1e-4;
    double worst_u = 0, worst_v = 0;
    for (Index i = 0; i < c.r; ++i) {
      worst_u = std::max(worst_u, (to_double(rand.U).col(i) - to_double(exact.U).col(i)).norm());
      worst_v = std::max(worst_v, (to_double(rand.V).col(i) - to_double(exact.V).col(i)).norm());
    }
    Eigen::MatrixXd const Pe = to_double(exact.U) * to_double(exact.U).transpose();
    Eigen::MatrixXd const Pr = to_double(rand.U) * to_double(rand.U).transpose();
    double const projector = (Pe - Pr).norm();
    MESSAGE("shape " << c.d_out << "x" << c.d_in << " r=" << c.r << ": |dS|/s1 = "
                     << (rand.S - exact.S).cwiseAbs().maxCoeff() / m.sigma(0) << ", worst |du| = " << worst_u
                     << ", worst |dv| = " << worst_v << ", projector " << projector << ", bound " << bound);
    CHECK(worst_u < tol);
    CHECK(worst_v < tol);
    CHECK(projector < tol);
  }
}

TEST_CASE("svd: reconstruction error equals the singular-value tail (Eckart-Young)") {
  // Exact: ||W - U S V^T||_F^2 = sum_{i>r} sigma_i^2 to rounding (rel. 1e-4, float factors).
  // Randomized: between the tail (minus rounding) and 1.01 x the tail.
  std::uint64_t const seed = tinylora::test::seed(77);
  std::uint64_t case_seed = seed;
  for (auto [d_out, d_in, r] : {std::tuple<Index, Index, Index>{300, 120, 2}, {120, 300, 6}, {160, 160, 12}}) {
    CAPTURE(d_out);
    CAPTURE(d_in);
    CAPTURE(r);
    ++case_seed;
    CAPTURE(case_seed);
    Index const k = std::min(d_out, d_in);
    for (Eigen::VectorXd const& sigma : {geometric(k, 0.9), power_law(k, 0.8)}) {
      KnownSpectrum const m = known_spectrum(d_out, d_in, sigma, case_seed);
      double const tail = sigma.tail(k - r).squaredNorm();
      double const err_exact = residual_energy(m.W, svd_exact(view_of(m.W), r));
      double const err_rand = residual_energy(m.W, svd_randomized(view_of(m.W), r, {.seed = case_seed}));
      MESSAGE("shape " << d_out << "x" << d_in << " r=" << r << ": tail " << tail << ", exact/tail " << err_exact / tail
                       << ", randomized/tail " << err_rand / tail);
      CHECK(std::abs(err_exact - tail) <= 1e-4 * tail);
      CHECK(err_rand >= (1 - 1e-4) * tail);
      CHECK(err_rand <= 1.01 * tail);
    }
  }
}

TEST_CASE("svd: normal_product (C = W V, Z = W^T C in one pass) equals the plain loops") {
  std::uint64_t const seed = tinylora::test::seed(13);
  // Row counts around the 4-row tile, widths around the 8 dot lanes, a block wider than kMaxNormalCols.
  for (auto [d_out, d_in, k] : {std::tuple<Index, Index, Index>{70, 45, 2}, {33, 97, 5}, {1, 40, 1}, {130, 1, 1},
                                {9, 16, detail::kMaxNormalCols + 3}}) {
    CAPTURE(d_out);
    CAPTURE(d_in);
    CAPTURE(k);
    std::vector<float> w = tinylora::test::normal_vector(static_cast<std::size_t>(d_out * (d_in + 3)), seed, 0);
    tinylora::ConstMatrixView<float> const W(w.data(), d_out, d_in, d_in + 3);  // ld > d_in
    std::vector<float> const v = tinylora::test::normal_vector(static_cast<std::size_t>(d_in * k), seed, 1);
    Eigen::MatrixXd const V = Eigen::Map<Eigen::MatrixXf const>(v.data(), d_in, k).cast<double>();  // (d_in, k)
    Eigen::MatrixXd C(d_out, k), Z = Eigen::MatrixXd::Constant(d_in, k, 7.0);  // Z is overwritten, not added to
    detail::normal_product(W, V, C, Z);
    Eigen::MatrixXd C_ref, Z_ref;
    detail::normal_product_reference(W, V, C_ref, Z_ref);
    TINYLORA_CHECK_CLOSE(C.reshaped(), C_ref.reshaped(), 1e-12, 1e-12);
    TINYLORA_CHECK_CLOSE(Z.reshaped(), Z_ref.reshaped(), 1e-12, 1e-12);
  }
}

TEST_CASE("svd: Krylov equals exact to float rounding on hard spectra (close, tied, flat)") {
  // Spectra where randomized with q = 2 fails (svd_real on SmolLM2: top-2 gaps down to 0.6%):
  // the top two within 0.1%, a flat Gaussian matrix, and a power law. Krylov stops at residual
  // 1e-9 sigma_1, so vectors are within residual / gap ~ 1e-6 of exact (observed: float rounding).
  std::uint64_t const seed = tinylora::test::seed(404);
  std::uint64_t case_seed = seed;
  auto close_top = [](Index k) {
    Eigen::VectorXd s = power_law(k, 0.5);
    s(1) = s(0) * 0.999;
    return s;
  };
  struct Case {
    Index d_out, d_in, r;
    int spectrum;  // 0: close top two, 1: Gaussian matrix (flat), 2: power law 0.3
  };
  for (Case const c : {Case{576, 192, 2, 0}, Case{192, 576, 2, 0}, Case{300, 300, 2, 1}, Case{700, 150, 4, 1},
                       Case{150, 400, 2, 2}, Case{256, 256, 8, 2}}) {
    ++case_seed;
    CAPTURE(c.d_out);
    CAPTURE(c.d_in);
    CAPTURE(c.r);
    CAPTURE(c.spectrum);
    CAPTURE(case_seed);
    Index const k = std::min(c.d_out, c.d_in);
    HostMatrix W;
    if (c.spectrum == 1) {
      W = Eigen::Map<HostMatrix const>(
          tinylora::test::normal_vector(static_cast<std::size_t>(c.d_out * c.d_in), case_seed).data(), c.d_out, c.d_in);
    } else {
      W = known_spectrum(c.d_out, c.d_in, c.spectrum == 0 ? close_top(k) : power_law(k, 0.3), case_seed).W;
    }
    TruncatedSvd const exact = svd_exact(view_of(W), c.r);
    TruncatedSvd const krylov = svd_krylov(view_of(W), c.r, {.seed = case_seed});
    check_invariants(W, krylov, c.r);
    CHECK(signs_follow_convention(krylov.U));
    TINYLORA_CHECK_CLOSE(krylov.S, exact.S, 1e-6, 0.0);
    TINYLORA_CHECK_CLOSE(krylov.U.reshaped(), exact.U.reshaped(), 0.0, 1e-5);
    TINYLORA_CHECK_CLOSE(krylov.V.reshaped(), exact.V.reshaped(), 0.0, 1e-5);
  }
}

TEST_CASE("svd: Krylov on tied top values and tiny ranks: valid factors, Eckart-Young error") {
  std::uint64_t const seed = tinylora::test::seed(405);
  // sigma_1 = sigma_2 = sigma_3 (r = 2 takes any 2 of the tied 3), and an orthogonal-like matrix
  // with every sigma = 1, where the Krylov space is invariant after one block.
  Eigen::VectorXd tied = power_law(120, 1.0);
  tied.head(3).setConstant(2.0);
  Eigen::VectorXd flat = Eigen::VectorXd::Ones(80);
  for (auto const& [m, r] : {std::pair{known_spectrum(200, 120, tied, seed), Index{2}},
                             std::pair{known_spectrum(80, 80, flat, seed + 1), Index{3}}}) {
    CAPTURE(r);
    TruncatedSvd const f = svd_krylov(view_of(m.W), r, {.seed = seed});
    check_invariants(m.W, f, r);
    TINYLORA_CHECK_CLOSE(f.S, m.sigma.head(r), 1e-6, 0.0);
    double const tail = m.sigma.tail(m.sigma.size() - r).squaredNorm();
    CHECK(std::abs(residual_energy(m.W, f) - tail) <= 1e-4 * tail);
  }
}

TEST_CASE("svd: exact rank-r matrix is recovered exactly; zero matrix gives zero values") {
  std::uint64_t const seed = tinylora::test::seed(5);
  Eigen::VectorXd sigma = Eigen::VectorXd::Zero(40);
  sigma.head(3) << 3.0, 2.0, 1.0;
  KnownSpectrum const m = known_spectrum(60, 40, sigma, seed);
  for (SvdMethod method : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Krylov}) {
    TruncatedSvd const f = svd_truncated(view_of(m.W), 3, method, {.seed = seed});
    check_invariants(m.W, f, 3);
    CHECK(f.rank() == 3);
    CHECK(residual_energy(m.W, f) < 1e-10);
    CHECK((reconstruct(f).cast<double>() - to_double(m.W)).cwiseAbs().maxCoeff() < 1e-6);
    TINYLORA_CHECK_CLOSE(f.S, sigma.head(3), 1e-6, 1e-6);
  }
  HostMatrix const zero = HostMatrix::Zero(70, 50);
  for (SvdMethod method : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Krylov}) {
    TruncatedSvd const f = svd_truncated(view_of(zero), 4, method);
    CHECK(f.S.cwiseAbs().maxCoeff() == 0.0f);
    check_invariants(zero, f, 4);
  }
}

TEST_CASE("svd: Automatic picks exact up to kAutomaticExactMaxDim, Krylov above") {
  std::uint64_t const seed = tinylora::test::seed(9);
  for (auto [d_out, d_in] : {std::pair<Index, Index>{64, 300}, {300, 64}, {65, 300}, {200, 65}}) {
    CAPTURE(d_out);
    CAPTURE(d_in);
    HostMatrix W = Eigen::Map<HostMatrix const>(
        tinylora::test::normal_vector(static_cast<std::size_t>(d_out * d_in), seed).data(), d_out, d_in);
    TruncatedSvd const automatic = svd_truncated(view_of(W), 2, SvdMethod::Automatic, {.seed = seed});
    bool const small = std::min(d_out, d_in) <= kAutomaticExactMaxDim;
    TruncatedSvd const want = small ? svd_exact(view_of(W), 2) : svd_krylov(view_of(W), 2, {.seed = seed});
    CHECK(resolve_method(d_out, d_in) == (small ? SvdMethod::Exact : SvdMethod::Krylov));
    CHECK(bit_identical(automatic, want));
  }
}

TEST_CASE("svd: a strided sub-view factors like its dense copy") {
  std::uint64_t const seed = tinylora::test::seed(31);
  KnownSpectrum const m = known_spectrum(150, 110, geometric(110, 0.8), seed);
  // Columns 10 .. 99 of rows 20 .. 139: a (120, 90) view with ld = 110.
  tinylora::ConstMatrixView<float> const sub(m.W.data() + 20 * 110 + 10, 120, 90, 110);
  HostMatrix const copy = m.W.block(20, 10, 120, 90);
  for (SvdMethod method : {SvdMethod::Exact, SvdMethod::Randomized, SvdMethod::Krylov}) {
    TruncatedSvd const a = svd_truncated(sub, 3, method, {.seed = seed});
    TruncatedSvd const b = svd_truncated(view_of(copy), 3, method, {.seed = seed});
    TINYLORA_CHECK_CLOSE(a.S, b.S, 1e-6, 1e-7);
    TINYLORA_CHECK_CLOSE(a.U.reshaped(), b.U.reshaped(), 0.0, 1e-5);
    TINYLORA_CHECK_CLOSE(a.V.reshaped(), b.V.reshaped(), 0.0, 1e-5);
  }
}

TEST_CASE("svd: same seed gives the same bits on 1, 2 and 3 threads; another seed differs") {
  std::uint64_t const seed = tinylora::test::seed(123);
  // Large enough that the sketch products fork threads (the path whose bits could differ).
  KnownSpectrum const big = known_spectrum(1100, 400, power_law(400, 0.7), seed);
  KnownSpectrum const mid = known_spectrum(400, 300, power_law(300, 0.7), seed + 1);
  Index const r = 4;
  RandomizedSvdOptions const options{.oversample = 40, .seed = seed};  // sketch width 44: the products fork
  CHECK(detail::fork_worthwhile(1100 * 400 * (r + options.oversample)));
  TruncatedSvd const rand = svd_randomized(view_of(big.W), r, options);
  TruncatedSvd const exact = svd_exact(view_of(mid.W), r);
  TruncatedSvd const krylov = svd_krylov(view_of(big.W), r, {.seed = seed});
  CHECK(bit_identical(rand, svd_randomized(view_of(big.W), r, options)));
#if TINYLORA_HAS_OPENMP
  int const saved = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    omp_set_num_threads(threads);
    CHECK(bit_identical(rand, svd_randomized(view_of(big.W), r, options)));
    CHECK(bit_identical(exact, svd_exact(view_of(mid.W), r)));
    CHECK(bit_identical(krylov, svd_krylov(view_of(big.W), r, {.seed = seed})));
  }
  omp_set_num_threads(saved);
  CHECK(omp_get_max_threads() == saved);
#else
  MESSAGE("built without OpenMP: thread-count determinism not exercised");
#endif
  TruncatedSvd const other = svd_randomized(view_of(big.W), r, {.oversample = 40, .seed = seed + 1});
  CHECK_FALSE(bit_identical(rand, other));
  TINYLORA_CHECK_CLOSE(other.S, rand.S, 1e-3, 0.0);
}

TEST_CASE("svd: svd_truncated_batch equals one call per matrix, bit for bit, on any thread count") {
  std::uint64_t const seed = tinylora::test::seed(321);
  std::vector<KnownSpectrum> mats;
  for (auto [d_out, d_in] : {std::pair<Index, Index>{40, 60}, {300, 120}, {90, 400}, {64, 64}, {500, 200}})
    mats.push_back(known_spectrum(d_out, d_in, geometric(std::min(d_out, d_in), 0.9), seed + mats.size()));
  std::vector<tinylora::ConstMatrixView<float>> views;
  for (KnownSpectrum const& m : mats) views.push_back(view_of(m.W));
  RandomizedSvdOptions const options{.seed = seed};
  for (SvdMethod method : {SvdMethod::Automatic, SvdMethod::Randomized}) {
    std::vector<TruncatedSvd> want;
    for (auto const& v : views) want.push_back(svd_truncated(v, 3, method, options));
#if TINYLORA_HAS_OPENMP
    int const saved = omp_get_max_threads();
    for (int threads : {1, 2}) {
      omp_set_num_threads(threads);
      std::vector<TruncatedSvd> const got = svd_truncated_batch(views, 3, method, options);
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < got.size(); ++i) CHECK(bit_identical(got[i], want[i]));
    }
    omp_set_num_threads(saved);
#else
    std::vector<TruncatedSvd> const got = svd_truncated_batch(views, 3, method, options);
    for (std::size_t i = 0; i < got.size(); ++i) CHECK(bit_identical(got[i], want[i]));
#endif
  }
  CHECK(svd_truncated_batch({}, 1).empty());
  HostMatrix bad = mats[2].W;
  bad(7, 9) = std::numeric_limits<float>::quiet_NaN();
  views[2] = view_of(bad);
  CHECK_THROWS_WITH_AS(svd_truncated_batch(views, 3),
                       doctest::Contains("linalg::svd_truncated_batch() (matrix 2): W has a non-finite entry"),
                       tinylora::Error);
  CHECK_THROWS_WITH_AS(svd_truncated_batch(views, 41), doctest::Contains("(matrix 0): rank out of range"),
                       tinylora::Error);
}

TEST_CASE("svd: bad inputs throw with the function name") {
  HostMatrix W = HostMatrix::Ones(5, 3);
  auto const v = view_of(W);
  for (char const* name : {"svd_exact", "svd_randomized", "svd_krylov", "svd_truncated"}) {
    CAPTURE(name);
    auto const call = [&](tinylora::ConstMatrixView<float> w, Index r) {
      std::string const n = name;
      if (n == "svd_exact") return svd_exact(w, r);
      if (n == "svd_krylov") return svd_krylov(w, r);
      if (n == "svd_randomized") return svd_randomized(w, r);
      return svd_truncated(w, r);
    };
    std::string const where = std::string("linalg::") + name + "()";
    CHECK_THROWS_WITH_AS(call(v, 0), doctest::Contains((where + ": rank out of range").c_str()), tinylora::Error);
    CHECK_THROWS_WITH_AS(call(v, 4), doctest::Contains("expected 1 <= r <= min(d_out, d_in) = 3, got r = 4"),
                         tinylora::Error);
    CHECK_THROWS_WITH_AS(call(tinylora::ConstMatrixView<float>(W.data(), 0, 3), 1),
                         doctest::Contains((where + ": W is empty").c_str()), tinylora::Error);
    HostMatrix bad = W;
    bad(3, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH_AS(call(view_of(bad), 1), doctest::Contains((where + ": W has a non-finite entry").c_str()),
                         tinylora::Error);
    CHECK_THROWS_WITH_AS(call(view_of(bad), 1), doctest::Contains("at (3, 1)"), tinylora::Error);
    bad(3, 1) = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH_AS(call(view_of(bad), 1), doctest::Contains("got -inf at (3, 1)"), tinylora::Error);
  }
  CHECK_THROWS_WITH_AS(svd_randomized(v, 1, {.oversample = -1}),
                       doctest::Contains("linalg::svd_randomized(): bad oversample"), tinylora::Error);
  CHECK_THROWS_WITH_AS(svd_truncated(v, 1, SvdMethod::Randomized, {.power_iterations = -2}),
                       doctest::Contains("linalg::svd_truncated(): bad power_iterations"), tinylora::Error);
  CHECK_THROWS_WITH_AS(svd_krylov(v, 1, {.block_extra = -1}), doctest::Contains("linalg::svd_krylov(): bad block_extra"),
                       tinylora::Error);
  for (double tolerance : {0.0, -1e-3, 1.0, std::numeric_limits<double>::quiet_NaN()})
    CHECK_THROWS_WITH_AS(svd_krylov(v, 1, {.tolerance = tolerance}),
                         doctest::Contains("linalg::svd_krylov(): bad tolerance"), tinylora::Error);
}
