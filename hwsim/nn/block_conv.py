"""The conv layer's GEMMs through block-scaled MAC arrays: QConv2d's twin of
:mod:`hwsim.nn.block_mac` (same rules: each GEMM quantizes its operands from
the unquantized tensors with blocks along its own K; see that module).

The three GEMMs on im2col matrices (``F.unfold``, K in C order):

- forward: w as (O, C*kh*kw) times the input's windows (C*kh*kw, Ho*Wo), K =
  (c, kh, kw); every window is quantized along K on its own, as
  ``hwsim.conv2d`` with block formats does;
- input gradient: the stride-dilated output gradient's windows (O*kh*kw,
  H*W) times the flipped, transposed kernel (C, O*kh*kw), K = (o, kh, kw),
  as :class:`hwsim.nn.conv.MACConv2dFunction` computes it;
- weight gradient: the output gradient (O, N*Ho*Wo) times the input's windows
  (N*Ho*Wo, C*kh*kw), K = (n, y, x); the bias gradient the ones row times the
  output gradient through the same MAC array.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hwsim.nn.block_mac import ONES, OperandFormats, _finish, _gemm, _q, with_bias
from hwsim.nn.conv import crop_and_pad
from hwsim.plan.block_gemm import along_k


class BlockMACConv2d(torch.autograd.Function):
    """conv2d (NCHW, groups=1, dilation=1) with block-scaled MAC arrays forward and backward."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, fmts: OperandFormats, forward, grad_input,
                grad_weight):  # fmt: skip
        ctx.save_for_backward(x, w)
        ctx.args = (stride, padding, fmts, grad_input, grad_weight, b is not None)
        n, _, h, wd = x.shape
        o, c, kh, kw = w.shape
        ho = (h + 2 * padding[0] - kh) // stride[0] + 1
        wo = (wd + 2 * padding[1] - kw) // stride[1] + 1
        s, be = fmts.seeds, forward.backend
        cols = F.unfold(x.detach().to(torch.float64), (kh, kw), padding=padding, stride=stride)
        xa = _q(cols, fmts.activation, -2, fmts.activation_rounding, s[0], be)  # (N, K, L)
        wa = _q(w.reshape(o, -1), fmts.weight, -1, fmts.weight_rounding, s[1], be)  # (O, K)
        if forward.accumulator is None:
            y = (wa @ xa).to(x.dtype)
            if b is not None:
                y = y + b.detach().reshape(1, -1, 1)
        else:
            fa, fw = along_k(fmts.activation, -2), along_k(fmts.weight, -1)
            codes = _gemm(wa.unsqueeze(0), xa, fw, fa, forward, codes=True)
            y = _finish(with_bias(codes, b, forward, (1, -1, 1)), forward, x)
        return y.reshape(n, o, ho, wo)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, fmts, grad_input, grad_weight, has_bias = ctx.args
        s, be = fmts.seeds, grad_input.backend
        n, o, ho, wo = grad.shape
        _, c, kh, kw = w.shape
        g = grad.detach().to(torch.float64)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # K = (o, kh, kw)
            sh, sw = stride
            dilated = g.new_zeros((n, o, (ho - 1) * sh + 1, (wo - 1) * sw + 1))
            dilated[:, :, ::sh, ::sw] = g
            dilated, (top, bottom, left, right) = crop_and_pad(dilated, x.shape, (kh, kw),
                                                               stride, padding)  # fmt: skip
            cols = F.unfold(F.pad(dilated, (left, right, top, bottom)), (kh, kw))  # (N, K, H*W)
            gq = _q(cols, fmts.grad, -2, fmts.grad_rounding, s[2], be)
            flipped = w.detach().flip(2, 3).transpose(0, 1).reshape(c, -1)  # (C, K)
            wq = _q(flipped, fmts.weight, -1, fmts.weight_rounding, s[3], be)
            fg, fw = along_k(fmts.grad, -2), along_k(fmts.weight, -1)
            gx = _gemm(wq.unsqueeze(0), gq, fw, fg, grad_input).to(grad.dtype).reshape(x.shape)
        if ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2]):  # K = (n, y, x)
            gm = g.permute(1, 0, 2, 3).reshape(o, -1)  # (O, N*L)
            gt = _q(gm, fmts.grad, -1, fmts.grad_rounding, s[4], be)
            fg = along_k(fmts.grad, -1)
            if ctx.needs_input_grad[1]:
                cols = F.unfold(x.detach().to(torch.float64), (kh, kw), padding=padding,
                                stride=stride)  # fmt: skip
                cols = cols.transpose(1, 2).reshape(-1, c * kh * kw)  # (N*L, K_w)
                xq = _q(cols, fmts.activation, 0, fmts.activation_rounding, s[5], be)
                gw = _gemm(gt, xq, fg, along_k(fmts.activation, -2), grad_weight)
                gw = gw.to(grad.dtype).reshape(w.shape)
            if has_bias and ctx.needs_input_grad[2]:
                ones = torch.ones((1, gt.shape[1]), dtype=torch.float64, device=gt.device)
                gb = _gemm(ones, gt.t(), ONES, along_k(fmts.grad, -2), grad_weight)[0]
                gb = gb.to(grad.dtype)
        return gx, gw, gb, None, None, None, None, None, None
