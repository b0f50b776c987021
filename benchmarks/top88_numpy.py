"""A NumPy/SciPy port of the 88-line topology optimisation code (Andreassen et al. 2011).

The reference of ``benchmarks/simp_speed.py`` and of the SIMP verification: the MBB half-beam,
bilinear plane-stress elements of unit size, the sensitivity filter (``ft = 1``) or the
density filter (``ft = 2``), optimality criteria, stop on a change of at most 0.01. It follows
the 88-line code line by line, except that the loops that build the filter are vectorised. The
linear solve is SciPy's sparse direct solver (SuperLU).
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve


def top88(nelx: int, nely: int, volfrac: float, penal: float, rmin: float, ft: int, max_iterations: int = 10_000,
          E0: float = 1.0, Emin: float = 1e-9, nu: float = 0.3) -> dict:
    """Run the 88-line code; returns compliance, iterations, seconds, the density and the history."""
    started = time.perf_counter()
    A11 = np.array([[12, 3, -6, -3], [3, 12, 3, 0], [-6, 3, 12, -3], [-3, 0, -3, 12]])
    A12 = np.array([[-6, -3, 0, 3], [-3, -6, -3, -6], [0, -3, -6, 3], [3, -6, 3, -6]])
    B11 = np.array([[-4, 3, -2, 9], [3, -4, -9, 4], [-2, -9, -4, -3], [9, 4, -3, -4]])
    B12 = np.array([[2, -3, 4, -9], [-3, 2, 9, -2], [4, 9, 2, 3], [-9, -2, 3, 2]])
    KE = 1 / (1 - nu**2) / 24 * (np.block([[A11, A12], [A12.T, A11]]) + nu * np.block([[B11, B12], [B12.T, B11]]))
    nodenrs = np.arange((1 + nelx) * (1 + nely)).reshape(1 + nelx, 1 + nely).T
    edofVec = (2 * (nodenrs[:-1, :-1] + 1)).ravel(order="F")
    edofMat = edofVec[:, None] + np.array([0, 1, 2 * nely + 2, 2 * nely + 3, 2 * nely, 2 * nely + 1, -2, -1])
    iK = np.kron(edofMat, np.ones((8, 1), dtype=int)).ravel()
    jK = np.kron(edofMat, np.ones((1, 8), dtype=int)).ravel()
    ndof = 2 * (nely + 1) * (nelx + 1)
    F = np.zeros(ndof)
    F[1] = -1.0
    U = np.zeros(ndof)
    fixeddofs = np.union1d(np.arange(0, 2 * (nely + 1), 2), [ndof - 1])
    freedofs = np.setdiff1d(np.arange(ndof), fixeddofs)
    # the filter: the 88-line code's loops over neighbours, vectorised over the elements
    reach = int(np.ceil(rmin)) - 1
    i1, j1 = np.meshgrid(np.arange(nelx), np.arange(nely), indexing="ij")
    iH, jH, sH = [], [], []
    for di in range(-reach, reach + 1):
        for dj in range(-reach, reach + 1):
            i2, j2 = i1 + di, j1 + dj
            inside = (i2 >= 0) & (i2 < nelx) & (j2 >= 0) & (j2 < nely)
            iH.append((i1 * nely + j1)[inside])
            jH.append((i2 * nely + j2)[inside])
            sH.append(np.full(inside.sum(), max(0.0, rmin - np.hypot(di, dj))))
    H = sp.csr_matrix((np.concatenate(sH), (np.concatenate(iH), np.concatenate(jH))), shape=(nelx * nely,) * 2)
    Hs = np.asarray(H.sum(axis=1)).ravel()
    # the loop (arrays are column-major flattened: element e = i * nely + j)
    x = np.full(nelx * nely, volfrac)
    xPhys = x.copy()
    loop, change, history = 0, 1.0, []
    while change > 0.01 and loop < max_iterations:
        loop += 1
        sK = (KE.ravel()[None, :] * (Emin + xPhys[:, None] ** penal * (E0 - Emin))).ravel()
        K = sp.csc_matrix((sK, (iK, jK)), shape=(ndof, ndof))
        K = (K + K.T) / 2
        U[freedofs] = spsolve(K[freedofs][:, freedofs], F[freedofs])
        Ue = U[edofMat]
        ce = np.einsum("ij,jk,ik->i", Ue, KE, Ue)
        c = float(((Emin + xPhys**penal * (E0 - Emin)) * ce).sum())
        dc = -penal * (E0 - Emin) * xPhys ** (penal - 1) * ce
        dv = np.ones(nelx * nely)
        if ft == 1:
            dc = H @ (x * dc) / Hs / np.maximum(1e-3, x)
        else:
            dc = H @ (dc / Hs)
            dv = H @ (dv / Hs)
        l1, l2, move = 0.0, 1e9, 0.2
        while (l2 - l1) / (l1 + l2) > 1e-3:
            lmid = 0.5 * (l2 + l1)
            xnew = np.maximum(0, np.maximum(x - move, np.minimum(1, np.minimum(x + move, x * np.sqrt(-dc / dv / lmid)))))
            xPhys = xnew if ft == 1 else (H @ xnew) / Hs
            if xPhys.sum() > volfrac * nelx * nely:
                l1 = lmid
            else:
                l2 = lmid
        change = float(np.abs(xnew - x).max())
        x = xnew
        history.append({"iteration": loop, "compliance": c, "change": change})
    return {"compliance": c, "iterations": loop, "seconds": time.perf_counter() - started,
            "density": xPhys.reshape(nelx, nely).T, "history": history}


if __name__ == "__main__":
    for ft in (1, 2):
        out = top88(60, 20, 0.5, 3.0, 2.4, ft)
        print(f"ft={ft}: c = {out['compliance']:.2f} after {out['iterations']} iterations in {out['seconds']:.2f} s")
