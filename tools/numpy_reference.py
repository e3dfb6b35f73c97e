#!/usr/bin/env python3
"""Independent NumPy (float64) reference checks for the .npz files written by the `s4` CLI.

Usage
-----
  python3 tools/numpy_reference.py hippo  FILE.npz [--rtol X]
  python3 tools/numpy_reference.py kernel FILE.npz [--disc bilinear|zoh] [--channels-checked 8] [--rtol X]
  python3 tools/numpy_reference.py selftest
hippo/kernel print one JSON object (measured max differences and "ok") and exit 1 if not ok.
Only numpy is needed; scipy, if importable, adds an expm cross-check. Nothing is taken from the Rust code.

HiPPO (n, k = 0..N-1), P = low-rank rows with A + sum_r P_r P_r^T = c I + S, S skew-symmetric:
  legs: A[n,k] = -sqrt((2n+1)(2k+1)) (n>k), -(n+1) (n=k), 0 (n<k); B = sqrt(2n+1); P = sqrt(n+1/2); c = -1/2
  legt: A[n,k] = -1/2 sqrt((2n+1)(2k+1)) (1 if n>=k else (-1)^(n-k)); B = sqrt(2n+1)/2;
        P row0 = sqrt((2n+1)/2) at odd n (0 at even), row1 = sqrt((2n+1)/2) at even n; c = 0
  lagt: A = I/2 - tril(ones); B = 1; P = sqrt(1/2); c = 0
  fout: A[2k,2k+1] = -pi k, A[2k+1,2k] = pi k; B = (1, 0, sqrt2, 0, sqrt2, 0, ...); A -= B B^T; P = B; c = 0
  The measure is detected as the formula closest to the file's A.
  DPLR (V: N x N/2 kept eigenvectors): A = 2 Re(V diag(Lambda) V^H) - P^T P, [V, conj V] unitary,
  P_tilde = V^H P, B_tilde = V^H B, Re Lambda = c, Im Lambda <= 0, and sort(Im Lambda) = the N/2 smallest
  eigvalsh(-1j (AP - diag AP)), AP = A + P^T P.
  (fout has a double eigenvalue 0: the kept vector must be complex, (a + i b)/sqrt2, else [V, conj V] is singular.)

Kernel (per channel h; full state = kept half + conjugates, N = 2 * (N/2)):
  A = diag(Lambda, conj Lambda) - Pf Pf^H, Pf = [P; conj P] (N x R), B = [B; conj B], C = [C, conj C]
  bilinear: Abar = (I - dt/2 A)^-1 (I + dt/2 A),  Bbar = (I - dt/2 A)^-1 dt B
  zoh:      Abar = exp(dt A),  Bbar = A^-1 (exp(dt A) - I) B  (top-right block of expm([[A, B], [0, 0]] dt))
  K_l = Re C Abar^l Bbar, l = 0..L-1.  Default disc: bilinear if P is present (DPLR), zoh if absent (diagonal).
  ref "powers":   v <- Abar v with dense Abar (diagonal kind: K_l = 2 Re sum_j C_j Bbar_j exp(l log Abar_j))
  ref "gen_fn":   C~ = C (I - Abar^L) (repeated squaring), w_k = exp(-2 pi i k / L),
                  Khat_k = C~ (I - w_k Abar)^-1 Bbar (dense solve), K = Re ifft(Khat)
  ref "cauchy" (bilinear only): z = 2(1-w)/(1+w), k(a,b) = sum_j a_j b_j dt / (z - dt lambda_j) (full state),
                  Khat = 2/(1+w) [k00 - k01 (I + k11)^-1 k10], a in {C~, rows of Pf^H}, b in {B, Pf};
                  Nyquist w = -1 (k = L/2): Khat = dt/2 sum_j C~_j B_j.
  Error reported per reference: max|K_file - K_ref| / max|K_ref| over the checked channels.
"""
import argparse, json, os, sys, tempfile  # noqa: E401

import numpy as np

try:
    import scipy.linalg as _sla
except Exception:  # scipy is optional
    _sla = None

MEASURES = ("legs", "legt", "lagt", "fout")
HIPPO_TOL = {"formula": 1e-12, "dplr": 1e-10, "eig": 1e-9}
KERNEL_RTOL = 1e-8


def load_npz(path):
    with np.load(path) as z:
        d = {k: np.asarray(z[k]) for k in z.files}
    for k in list(d):  # tolerate complex arrays stored as X_re/X_im or X_real/X_imag
        for re_s, im_s in (("_re", "_im"), ("_real", "_imag")):
            base = k[: -len(re_s)]
            if k.endswith(re_s) and base + im_s in d and base not in d:
                d[base] = d[k] + 1j * d[base + im_s]
    return d


def _mx(x):
    return float(np.max(np.abs(x))) if np.size(x) else 0.0


def hippo_formula(measure, N):
    """(A, B, P (R,N), c) of one measure, or None if not defined for this N."""
    n = np.arange(N)
    s = np.sqrt(2.0 * n + 1.0)
    nn, kk = np.meshgrid(n, n, indexing="ij")
    if measure == "legs":
        A = np.where(nn > kk, -np.outer(s, s), 0.0) - np.diag(n + 1.0)
        return A, s.copy(), np.sqrt(n + 0.5)[None, :], -0.5
    if measure == "legt":
        sign = np.where((nn >= kk) | ((nn - kk) % 2 == 0), 1.0, -1.0)
        P = np.stack([np.where(n % 2 == 1, s, 0.0), np.where(n % 2 == 0, s, 0.0)]) / np.sqrt(2.0)
        return -0.5 * np.outer(s, s) * sign, 0.5 * s, P, 0.0
    if measure == "lagt":
        return 0.5 * np.eye(N) - np.tril(np.ones((N, N))), np.ones(N), np.sqrt(0.5) * np.ones((1, N)), 0.0
    if measure == "fout":
        if N % 2:
            return None
        A = np.zeros((N, N))
        k = np.arange(N // 2)
        A[2 * k, 2 * k + 1] = -np.pi * k
        A[2 * k + 1, 2 * k] = np.pi * k
        B = np.zeros(N)
        B[0::2] = np.sqrt(2.0)
        B[0] = 1.0
        return A - np.outer(B, B), B, B[None, :].copy(), 0.0
    raise ValueError(measure)


def check_hippo(path, rtol=None):
    tol = {k: (rtol if rtol is not None else v) for k, v in HIPPO_TOL.items()}
    d = load_npz(path)
    A, B = d["A"].astype(float), d["B"].astype(float).reshape(-1)
    N = A.shape[0]
    r = {"mode": "hippo", "file": path, "N": N, "tolerances": tol}
    scale = max(1.0, _mx(A))
    diffs = {}
    for m in MEASURES:
        f = hippo_formula(m, N)
        if f is not None and f[0].shape == A.shape:
            diffs[m] = _mx(A - f[0])
    r["A_diff_per_measure"] = diffs
    best = min(diffs, key=diffs.get)
    checks = {"A_formula": diffs[best] <= tol["formula"] * scale}
    r["measure"] = best if checks["A_formula"] else None
    Af, Bf, P, c = hippo_formula(best, N)
    r["B_diff"] = _mx(B - Bf) if B.shape == Bf.shape else float("inf")
    checks["B_formula"] = r["B_diff"] <= tol["formula"] * max(1.0, _mx(Bf))
    # A + P^T P = c I + skew
    AP = A + P.T @ P
    dg = np.diag(AP)
    off = AP - np.diag(dg)
    r["normal_part_c"] = float(dg.mean())
    r["normal_plus_skew_err"] = max(_mx(dg - c), _mx(off + off.T)) / scale
    checks["normal_plus_skew"] = r["normal_plus_skew_err"] <= tol["formula"]
    if best == "legs" and N <= 16:
        ev = np.sort(np.linalg.eigvals(A).real)
        r["info_legs_eigvals_A_err"] = _mx(ev - (-np.arange(N, 0, -1.0)))
    if "Lambda" in d:
        Lam, V = d["Lambda"].reshape(-1), d["V"]
        Pt, Bt = np.atleast_2d(d["P_tilde"]), d["B_tilde"].reshape(-1)
        N2, R = N // 2, P.shape[0]
        shapes = {"Lambda": Lam.shape, "V": V.shape, "P_tilde": Pt.shape, "B_tilde": Bt.shape}
        r["dplr_shapes"] = {k: list(v) for k, v in shapes.items()}
        checks["dplr_shapes"] = shapes == {"Lambda": (N2,), "V": (N, N2), "P_tilde": (R, N2), "B_tilde": (N2,)}
        if checks["dplr_shapes"]:
            rec = 2.0 * np.real((V * Lam) @ V.conj().T) - P.T @ P
            r["reconstruction_rel_err"] = _mx(rec - A) / _mx(A)
            W = np.hstack([V, V.conj()])
            r["unitary_err"] = _mx(W.conj().T @ W - np.eye(N))
            r["P_tilde_err"] = _mx(Pt - (V.conj().T @ P.T).T) / max(1.0, float(np.linalg.norm(P)))
            r["B_tilde_err"] = _mx(Bt - V.conj().T @ B) / max(1.0, float(np.linalg.norm(B)))
            r["re_lambda_err"] = _mx(Lam.real - c) / scale
            r["max_im_lambda"] = float(Lam.imag.max())
            ev = np.linalg.eigvalsh(-1j * off)[:N2]
            r["eig_rel_err"] = _mx(np.sort(Lam.imag) - ev) / max(1e-300, _mx(ev))
            for k in ("reconstruction_rel_err", "unitary_err", "P_tilde_err", "B_tilde_err", "re_lambda_err"):
                checks[k] = r[k] <= tol["dplr"]
            checks["im_lambda_nonpos"] = r["max_im_lambda"] <= tol["dplr"] * scale
            checks["eig"] = r["eig_rel_err"] <= tol["eig"]
    r["checks"] = {k: bool(v) for k, v in checks.items()}
    r["ok"] = all(r["checks"].values())
    return r


# ---------------------------------------------------------------- kernel
def expm(M):
    """Scaling-and-squaring Taylor exponential (||M/2^s||_1 <= 1/2, 20 terms)."""
    nrm = np.abs(M).sum(axis=0).max() if M.size else 0.0
    s = int(np.ceil(np.log2(nrm / 0.5))) if nrm > 0.5 else 0
    X = M / 2.0**s
    E = np.eye(M.shape[0], dtype=M.dtype)
    term = E.copy()
    for k in range(1, 21):
        term = term @ X / k
        E = E + term
    for _ in range(s):
        E = E @ E
    return E


def discretize_dense(A, B, dt, disc, use_scipy=False):
    N = A.shape[0]
    I = np.eye(N)
    if disc == "bilinear":
        M = I - dt / 2 * A
        return np.linalg.solve(M, I + dt / 2 * A), np.linalg.solve(M, dt * B)
    aug = np.zeros((N + 1, N + 1), dtype=np.result_type(A, B))
    aug[:N, :N], aug[:N, N] = A, B
    E = _sla.expm(aug * dt) if use_scipy else expm(aug * dt)
    return E[:N, :N], E[:N, N]


def discretize_diag(lam, B, dt, disc):
    x = dt * lam
    if disc == "bilinear":
        return (1 + x / 2) / (1 - x / 2), dt * B / (1 - x / 2)
    a = np.exp(x)
    safe = np.where(x == 0, 1.0, x)
    phi = np.where(x == 0, 1.0, (a - 1) / safe)  # (exp(x) - 1) / x
    return a, dt * phi * B


def kernel_gen_fn(Abar, Bbar, Cf, L):
    """Dense generating-function route; Abar may be a full matrix or a diagonal (1-D)."""
    w = np.exp(-2j * np.pi * np.arange(L) / L)
    if Abar.ndim == 1:
        Ct = Cf * (1 - Abar**L)
        Khat = (Ct * Bbar / (1 - w[:, None] * Abar[None, :])).sum(1)
    else:
        N = Abar.shape[0]
        Ct = Cf @ (np.eye(N) - np.linalg.matrix_power(Abar, L))  # binary powering = repeated squaring
        Khat = np.empty(L, complex)
        step = max(1, int(4e6 // (N * N)))  # ~64 MB per chunk
        for s in range(0, L, step):
            Mats = np.eye(N)[None] - w[s:s + step, None, None] * Abar[None]
            rhs = np.broadcast_to(Bbar[None, :, None], (Mats.shape[0], N, 1))
            Khat[s:s + step] = np.linalg.solve(Mats, rhs)[..., 0] @ Ct
    return np.fft.ifft(Khat).real


def kernel_cauchy(lamf, Pf, Bf, Ct, dt, L):
    """Bilinear generating function via Cauchy sums + Woodbury (full state, Pf: N x R)."""
    k = np.arange(L)
    w = np.exp(-2j * np.pi * k / L)
    nyq = (2 * k == L)
    wn = np.where(nyq, 0.0, w)  # placeholder at w=-1, overwritten below
    z = 2 * (1 - wn) / (1 + wn)
    r = dt / (z[:, None] - dt * lamf[None, :])  # (L, N)
    k00 = r @ (Ct * Bf)
    k01 = r @ (Ct[:, None] * Pf)  # (L, R)
    k10 = r @ (Pf.conj() * Bf[:, None])  # (L, R)
    k11 = np.einsum("ln,nr,ns->lrs", r, Pf.conj(), Pf)
    R = Pf.shape[1]
    corr = np.zeros(L, complex)
    if R:
        sol = np.linalg.solve(np.eye(R)[None] + k11, k10[..., None])[..., 0]
        corr = (k01 * sol).sum(1)
    Khat = 2 / (1 + wn) * (k00 - corr)
    Khat[nyq] = dt / 2 * np.sum(Ct * Bf)
    return np.fft.ifft(Khat).real


def check_kernel(path, disc=None, rtol=None, channels_checked=8):
    rtol = KERNEL_RTOL if rtol is None else rtol
    d = load_npz(path)
    K, Lam, B, C = d["K"], d["Lambda"], d["B"], d["C"]
    dt = np.broadcast_to(np.asarray(d["dt"], float).reshape(-1), (K.shape[0],))
    P = d.get("P")
    kind = "dplr" if P is not None else "diag"
    disc = disc or ("bilinear" if kind == "dplr" else "zoh")
    H, L = K.shape
    N2 = Lam.shape[1]
    N, R = 2 * N2, (P.shape[0] if P is not None else 0)
    chans = np.arange(H)
    if H > channels_checked and H * L * N * N > 5e7:
        chans = np.unique(np.round(np.linspace(0, H - 1, channels_checked)).astype(int))
    dense_budget = max(1, int(2e9 // max(1, L * N**3)))  # channels on which the dense solve runs
    r = {"mode": "kernel", "file": path, "kind": kind, "disc": disc, "H": H, "L": L, "N": N, "R": R,
         "rtol": rtol, "channels_checked": chans.tolist(), "channel_subset": bool(len(chans) < H)}
    refs = {"powers": [], "gen_fn": [], "cauchy": []}
    used = {k: [] for k in refs}
    info_imag, info_scipy = 0.0, 0.0
    for i, h in enumerate(chans):
        lam, Bh, Ch, dth = Lam[h], B[h], C[h], dt[h]
        lamf = np.concatenate([lam, lam.conj()])
        Bf, Cf = np.concatenate([Bh, Bh.conj()]), np.concatenate([Ch, Ch.conj()])
        Kf = K[h]
        if kind == "diag":
            a, bb = discretize_diag(lam, Bh, dth, disc)
            pw = np.exp(np.arange(L)[:, None] * np.log(a)[None, :])
            refs["powers"].append((Kf, 2 * np.real(pw @ (Ch * bb))))
            af, bbf = discretize_diag(lamf, Bf, dth, disc)
            refs["gen_fn"].append((Kf, kernel_gen_fn(af, bbf, Cf, L)))
            used["powers"].append(int(h)), used["gen_fn"].append(int(h))
            Pf = np.zeros((N, 0), complex)
        else:
            Ph = P[:, h, :].T
            Pf = np.concatenate([Ph, Ph.conj()])
            Af = np.diag(lamf) - Pf @ Pf.conj().T
            Abar, Bbar = discretize_dense(Af, Bf, dth, disc)
            if disc == "zoh" and _sla is not None:
                info_scipy = max(info_scipy, _mx(Abar - discretize_dense(Af, Bf, dth, disc, True)[0]))
            v, out = Bbar.copy(), np.empty(L, complex)
            for l in range(L):
                out[l] = Cf @ v
                v = Abar @ v
            info_imag = max(info_imag, _mx(out.imag) / max(1e-300, _mx(out.real)))
            refs["powers"].append((Kf, out.real)), used["powers"].append(int(h))
            if i < dense_budget:
                refs["gen_fn"].append((Kf, kernel_gen_fn(Abar, Bbar, Cf, L))), used["gen_fn"].append(int(h))
            if disc == "bilinear":
                Ct = Cf @ (np.eye(N) - np.linalg.matrix_power(Abar, L))
        if disc == "bilinear":
            if kind == "diag":
                Ct = Cf * (1 - af**L)
            refs["cauchy"].append((Kf, kernel_cauchy(lamf, Pf, Bf, Ct, dth, L))), used["cauchy"].append(int(h))
    checks = {}
    for name, pairs in refs.items():
        if not pairs:
            continue
        num = max(_mx(kf - kr) for kf, kr in pairs)
        den = max(_mx(kr) for _, kr in pairs)
        r["err_" + name] = num / max(den, 1e-300)
        r["channels_" + name] = used[name]
        checks[name] = r["err_" + name] <= rtol
    if kind == "dplr":
        r["info_powers_imag_rel"] = info_imag
        if disc == "zoh" and _sla is not None:
            r["info_expm_vs_scipy"] = info_scipy
    r["checks"] = {k: bool(v) for k, v in checks.items()}
    r["ok"] = bool(checks) and all(r["checks"].values())
    return r


# ---------------------------------------------------------------- selftest
def make_dplr(measure, N):
    """DPLR via Hermitian eigensolve: Lambda = mean(diag AP) + i*ev, kept half = N/2 smallest ev.
    A zero eigenvalue (fout) is a double one whose eigenvector must be complex, see below."""
    A, B, P, _ = hippo_formula(measure, N)
    AP = A + P.T @ P
    dg = np.diag(AP)
    ev, U = np.linalg.eigh(-1j * (AP - np.diag(dg)))
    zero = np.flatnonzero(np.abs(ev) < 1e-9 * max(1.0, np.abs(ev).max()))
    if len(zero) == 2:  # fout: a 2-dim real null space; keep (a + i b)/sqrt2 so that v is orthogonal to conj(v)
        ab = np.linalg.svd(np.hstack([U[:, zero].real, U[:, zero].imag]))[0][:, :2]
        U[:, zero[0]] = (ab[:, 0] + 1j * ab[:, 1]) / np.sqrt(2)
    V = U[:, : N // 2]
    Lam = dg.mean() + 1j * ev[: N // 2]
    return A, B, P, Lam, V, (V.conj().T @ P.T).T, V.conj().T @ B


def real_kernel(A, B, C, dt, L, disc):
    """Generator for the selftest: the equivalent REAL N-dim system (scipy expm if available)."""
    Ab, Bb = discretize_dense(A, B, dt, disc, use_scipy=_sla is not None)
    out, x = np.empty(L), Bb.copy()
    for l in range(L):
        out[l] = C @ x
        x = Ab @ x
    return out


def selftest():
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="npref_")
    cases = []

    def run(name, expect_ok, res):
        cases.append({"case": name, "expected_ok": expect_ok, "ok": res["ok"],
                      **{k: v for k, v in res.items() if k.startswith("err") or k.endswith("err")
                         or k in ("measure", "checks")}})

    for m in MEASURES:
        A, B, P, Lam, V, Pt, Bt = make_dplr(m, 8)
        f = os.path.join(tmp, f"hippo_{m}.npz")
        np.savez(f, A=A, B=B, Lambda=Lam, V=V, P_tilde=Pt, B_tilde=Bt)
        run(f"hippo {m} N=8 dplr", True, check_hippo(f))
    f = os.path.join(tmp, "hippo_legs_plain.npz")
    np.savez(f, A=hippo_formula("legs", 64)[0], B=hippo_formula("legs", 64)[1])
    run("hippo legs N=64 (no dplr)", True, check_hippo(f))
    A, B, P, Lam, V, Pt, Bt = make_dplr("legs", 8)
    f = os.path.join(tmp, "hippo_bad.npz")
    np.savez(f, A=A, B=B, Lambda=Lam + 1e-6, V=V, P_tilde=Pt, B_tilde=Bt)
    run("hippo legs NEGATIVE (Lambda+1e-6)", False, check_hippo(f))

    H, N2 = 4, 4
    dts = np.logspace(-3, -1, H) * np.array([1, 3, 10, 30])
    Cs = (rng.standard_normal((H, N2)) + 1j * rng.standard_normal((H, N2))) / np.sqrt(2)
    Bs = Bt[None] + 0.1 * (rng.standard_normal((H, N2)) + 1j * rng.standard_normal((H, N2)))
    for disc, L in (("bilinear", 64), ("zoh", 37), ("bilinear", 37)):
        # DPLR kernel from the real LegS system: B_r = 2 Re(V B), C_r = 2 Re(C V^H)
        K = np.stack([real_kernel(A, 2 * np.real(V @ Bs[h]), 2 * np.real(Cs[h] @ V.conj().T), dts[h], L, disc)
                      for h in range(H)])
        f = os.path.join(tmp, f"kernel_dplr_{disc}_{L}.npz")
        np.savez(f, K=K, Lambda=np.tile(Lam, (H, 1)), P=np.repeat(Pt[:, None, :], H, 1), B=Bs, C=Cs, dt=dts)
        run(f"kernel dplr {disc} L={L}", True, check_kernel(f, disc=disc))
        if disc == "bilinear" and L == 64:
            np.savez(f, K=K + 1e-3 * _mx(K) * rng.standard_normal(K.shape), Lambda=np.tile(Lam, (H, 1)),
                     P=np.repeat(Pt[:, None, :], H, 1), B=Bs, C=Cs, dt=dts)
            run("kernel dplr NEGATIVE (K+1e-3)", False, check_kernel(f, disc=disc))
    # diagonal kind (S4D-Lin): real 2x2-block form [[a,-b],[b,a]], B_r = (Re B, Im B), C_r = 2 (Re C, -Im C)
    LamD = -0.5 + 1j * np.pi * np.arange(N2)
    for disc, L in (("zoh", 64), ("bilinear", 37)):
        K = np.empty((H, L))
        for h in range(H):
            Ar = np.zeros((2 * N2, 2 * N2))
            for j, lj in enumerate(LamD):
                Ar[2 * j:2 * j + 2, 2 * j:2 * j + 2] = [[lj.real, -lj.imag], [lj.imag, lj.real]]
            Br = np.stack([Bs[h].real, Bs[h].imag], 1).reshape(-1)
            Cr = 2 * np.stack([Cs[h].real, -Cs[h].imag], 1).reshape(-1)
            K[h] = real_kernel(Ar, Br, Cr, dts[h], L, disc)
        f = os.path.join(tmp, f"kernel_diag_{disc}_{L}.npz")
        np.savez(f, K=K, Lambda=np.tile(LamD, (H, 1)), B=Bs, C=Cs, dt=dts)
        run(f"kernel diag {disc} L={L}", True, check_kernel(f, disc=None if disc == "zoh" else disc))
        if disc == "zoh":
            np.savez(f, K=K * (1 + 1e-3), Lambda=np.tile(LamD, (H, 1)), B=Bs, C=Cs, dt=dts)
            run("kernel diag NEGATIVE (K*(1+1e-3))", False, check_kernel(f))
    good = all(c["ok"] == c["expected_ok"] for c in cases)
    return {"mode": "selftest", "scipy": _sla is not None, "cases": cases, "ok": good}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("hippo", help="check a file from `s4 hippo --measure M --n N [--dplr] --out FILE.npz`")
    p.add_argument("file")
    p.add_argument("--rtol", type=float, default=None, help="override all tolerances (defaults %s)" % HIPPO_TOL)
    p = sub.add_parser("kernel", help="check a file from `s4 kernel ... --out FILE.npz`")
    p.add_argument("file")
    p.add_argument("--disc", choices=("bilinear", "zoh"), default=None,
                   help="default: bilinear if P present (DPLR), zoh otherwise (diagonal)")
    p.add_argument("--rtol", type=float, default=None, help="relative tolerance (default %g)" % KERNEL_RTOL)
    p.add_argument("--channels-checked", type=int, default=8, help="channels checked when H*L*N^2 is large")
    sub.add_parser("selftest", help="build valid and corrupted npz files in Python and check them")
    a = ap.parse_args(argv)
    if a.cmd == "hippo":
        res = check_hippo(a.file, a.rtol)
    elif a.cmd == "kernel":
        res = check_kernel(a.file, a.disc, a.rtol, a.channels_checked)
    else:
        res = selftest()
    print(json.dumps(res, indent=1 if a.cmd == "selftest" else None))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
