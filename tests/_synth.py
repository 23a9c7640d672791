"""Synthetic layer problems shared by the solver tests."""
import torch


def synthetic_layer(d_out=40, d_in=64, tokens=400, dead=0, seed=0):
    """Random W and the Gram of correlated activations: a decaying spectrum, uneven channel norms (what Wanda
    exploits) and ``dead`` all-zero input channels. Returns (W (d_out, d_in), G (d_in, d_in))."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d_out, d_in, generator=g)
    mix = torch.randn(d_in, d_in, generator=g) * torch.logspace(0, -2, d_in).unsqueeze(0)
    X = torch.randn(tokens, d_in, generator=g) @ mix.T + 0.05 * torch.randn(tokens, d_in, generator=g)
    X = X * (torch.rand(d_in, generator=g) * 3 + 0.1)
    X[:, :dead] = 0
    return W, X.T @ X
