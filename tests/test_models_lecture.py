"""The course notes' SVM-SGD and K-means-SGD as the notes state them: the binary
hinge SVM with the L2 term on w only, and K-means whose distances and argmin run
on the datapath's formats (checked against a pure-Python integer reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hwsim.optim
from models.kmeans import DistanceDatapath, KMeansSGD
from models.linear import BinarySVM

small = st.floats(-2.0, 2.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(small, min_size=3, max_size=3),
    small,
    st.lists(st.tuples(st.lists(small, min_size=3, max_size=3), st.sampled_from([-1.0, 1.0])),
             min_size=1, max_size=6),
    st.floats(0.0, 1.0),
)  # fmt: skip
def test_binary_svm_gradient_is_the_notes_subgradient(w, b, samples, lam):
    """d/dw = lam w - mean(y x [y s < 1]), d/db = -mean(y [y s < 1]): the bias is
    not decayed."""
    m = BinarySVM(3, lam=lam).double()
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor([w], dtype=torch.float64))
        m.linear.bias.fill_(b)
    x = np.array([s[0] for s in samples])
    y = np.array([s[1] for s in samples])
    score = x @ np.array(w) + b
    if np.any(np.abs(y * score - 1.0) < 1e-9):  # the hinge's kink: no unique gradient
        return
    m.loss(m(torch.tensor(x)), torch.tensor(y)).backward()
    active = (y * score < 1.0).astype(float)
    gw = lam * np.array(w) - (active * y) @ x / len(y)
    gb = -(active * y).mean()
    np.testing.assert_allclose(m.linear.weight.grad.numpy()[0], gw, rtol=1e-12, atol=1e-14)
    assert m.linear.bias.grad.item() == pytest.approx(gb, abs=1e-14)


def test_binary_svm_rejects_labels_outside_plus_minus_one():
    m = BinarySVM(2)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        m.loss(m(torch.zeros(2, 2)), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="lam"):
        BinarySVM(2, lam=-1.0)


def test_binary_svm_sgd_separates_digits_zero_and_one_in_fixed_point():
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < 2
    x = torch.tensor(digits.data[keep] / 16.0, dtype=torch.float32)
    y = torch.tensor(np.where(digits.target[keep] == 1, 1.0, -1.0), dtype=torch.float32)
    m = BinarySVM(64, lam=1e-3)
    opt = hwsim.optim.SGD(m.parameters(), lr=0.05, weight="fx16.12", seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(x), generator=gen).split(16):
            opt.zero_grad()
            m.loss(m(x[idx]), y[idx]).backward()
            opt.step()
    accuracy = (torch.sign(m(x)) == y).float().mean().item()
    assert accuracy > 0.98, accuracy
    w = m.linear.weight.detach().double() * 2**12
    assert torch.equal(w, w.round())  # on the fx16.12 grid


def _reference_distances(x, c, diff_fl, diff_wl, acc_fl, acc_wl):
    """Pure-Python integers: difference codes rounded half to even and
    saturated, exact squares, each square cast onto the accumulator grid
    (nearest even) and added one feature at a time with saturation."""
    dlo, dhi = -(2 ** (diff_wl - 1)), 2 ** (diff_wl - 1) - 1
    alo, ahi = -(2 ** (acc_wl - 1)), 2 ** (acc_wl - 1) - 1
    out = []
    for xn in x:
        row = []
        for ck in c:
            acc = 0
            for xv, cv in zip(xn, ck, strict=True):
                d = min(max(round((xv - cv) * 2**diff_fl), dlo), dhi)  # round(): half to even
                sq = d * d  # 2 * diff_fl fractional bits
                shift = 2 * diff_fl - acc_fl
                term = round(sq / 2**shift) if shift >= 0 else sq * 2**-shift
                acc = min(max(acc + term, alo), ahi)
            row.append(acc / 2**acc_fl)
        out.append(row)
    return np.array(out)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5), st.integers(1, 4), st.integers(1, 6),
    st.integers(4, 10), st.integers(6, 20), st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_datapath_distances_equal_an_integer_reference(n, k, f, diff_wl, acc_wl, seed):
    rng = np.random.default_rng(seed)
    diff_fl = diff_wl - 3
    acc_fl = min(acc_wl - 2, 2 * diff_fl)
    # inputs and centroids on a fine grid (float32-exact) so x - c is exact in float64
    x = rng.integers(-(2**10), 2**10, (n, f)) / 2**8
    c = rng.integers(-(2**10), 2**10, (k, f)) / 2**8
    dp = DistanceDatapath(f"fx{diff_wl}.{diff_fl}", f"fx{acc_wl}.{acc_fl}")
    got = dp.distances(torch.tensor(x), torch.tensor(c)).numpy()
    want = _reference_distances(x, c, diff_fl, diff_wl, acc_fl, acc_wl)
    np.testing.assert_array_equal(got, want)


def test_datapath_argmin_ties_at_saturation_go_to_the_lowest_index():
    # both centroids are far enough that the narrow accumulator saturates: a tie
    c = torch.tensor([[3.0, 3.0], [-2.0, -2.0]])
    x = torch.tensor([[0.0, 0.0]])  # squared distances 18 and 8
    km = KMeansSGD(c, DistanceDatapath("fx8.4", "fx6.2"))  # distances saturate at 7.75
    assert km.datapath.distances(x, km.centroids).tolist() == [[7.75, 7.75]]
    assert km.assign(x).tolist() == [0]  # float would pick centroid 1
    assert KMeansSGD(c).assign(x).tolist() == [1]
    loss = km(x)
    loss.backward()  # the gradient follows the datapath's assignment
    assert km.centroids.grad[0].abs().sum() > 0 and km.centroids.grad[1].abs().sum() == 0


def test_datapath_rejects_stochastic_and_the_task_takes_the_formats():
    from models.tasks import KMeansParams, kmeans

    with pytest.raises(ValueError, match="deterministic"):
        DistanceDatapath("fx8.4", "fx16.8", rounding="stochastic")
    with pytest.raises(ValueError, match="both or neither"):
        KMeansParams(distance="fx10.6")
    wide = kmeans(KMeansParams(dataset="blobs", k=4, epochs=2))
    onpath = kmeans(
        KMeansParams(
            dataset="blobs", k=4, epochs=2, distance="fx12.8", distance_accumulator="fx24.16"
        )
    )
    assert onpath.metrics["purity"] == wide.metrics["purity"] == 1.0
    starved = kmeans(
        KMeansParams(dataset="blobs", k=4, epochs=2, distance="fx4.1", distance_accumulator="fx4.0")
    )
    assert starved.metrics["purity"] < 0.9  # a 4-bit comparator cannot tell the clusters apart
