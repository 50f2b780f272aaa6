"""The sum of per-term rounded products through BLAS: the MAC array's
``sum_k round(a_ik b_kj / 2^s)`` without forming the K terms.

A term's rounding error ``e(p) = p - 2^s round(p / 2^s)`` depends only on
``p mod R`` (``R = 2^(s+1)`` for half to even, which looks at the kept
bit's parity; ``2^s`` for floor), and ``p mod R`` only on ``a mod R`` and
``b mod R``. So ``sum_k e(a_ik b_kj) = sum_g U_g(A) @ V_g(B)``, where ``U_g``
and ``V_g`` are lookups of the residues in the rows of the R x R table of
``e`` (zero rows dropped, rows equal up to sign merged: 3 for s = 2), and

    sum_k round(a_ik b_kj / 2^s) = ((A @ B) - E) / 2^s,

every step an exact float64 integer where ``K max|a b| < 2^53``. The same
codes as forming each term, in G + 1 BLAS calls.
"""

from __future__ import annotations

import functools

import torch

from hwsim.modes import Rounding

MAX_SHIFT = 4  # tables of at most 32 residues


@functools.cache
def residue_tables(shift: int, rounding: Rounding) -> tuple[int, tuple, tuple]:
    """(R, U, V): ``e(a b) = sum_g U[a mod R][g] V[b mod R][g]`` for the
    rounding (NEAREST or FLOOR) of a product onto a grid 2^shift coarser."""
    r_count = 1 << (shift + 1) if rounding == Rounding.NEAREST else 1 << shift
    half, low_mask = 1 << (shift - 1), (1 << shift) - 1

    def err(q: int) -> int:  # e(p) for p = q mod R
        low = q & low_mask
        if rounding == Rounding.FLOOR:
            return low
        up = low > half or (low == half and (q >> shift) & 1)
        return low - (1 << shift) if up else low

    groups: list[tuple[list[int], dict[int, int]]] = []  # (row, {residue of a: sign})
    for r in range(r_count):
        row = [err(r * c % r_count) for c in range(r_count)]
        if not any(row):
            continue
        for rep, members in groups:
            if row == rep or row == [-v for v in rep]:
                members[r] = 1 if row == rep else -1
                break
        else:
            groups.append((row, {r: 1}))
    u = tuple(tuple(members.get(r, 0) for _, members in groups) for r in range(r_count))
    v = tuple(tuple(rep[c] for rep, _ in groups) for c in range(r_count))
    return r_count, u, v


def residue_sums(a: torch.Tensor, b: torch.Tensor, af, bf, shift: int, rounding) -> torch.Tensor:
    """``sum_k round(a_ik b_kj / 2^shift)`` (float64) of int64 codes ``a``
    (Bt, M, K) and ``b`` (Bt, K, N), given as float64 too (``af``, ``bf``);
    the caller has checked ``K max|a b| < 2^53``."""
    r_count, u, v = residue_tables(shift, rounding)
    ia, ib = a & (r_count - 1), b & (r_count - 1)
    e = torch.matmul(af, bf)
    for g in range(len(u[0])):  # G BLAS calls on lookups beat one on their stacks
        tu = torch.tensor([row[g] for row in u], dtype=torch.float64, device=a.device)
        tv = torch.tensor([row[g] for row in v], dtype=torch.float64, device=a.device)
        e.sub_(torch.matmul(torch.take(tu, ia), torch.take(tv, ib)))
    return e.mul_(2.0**-shift)
