"""Square Attack (Andriushchenko, Croce, Flammarion, Hein, ECCV 2020), L-inf and L2.

"Square Attack: a query-efficient black-box adversarial attack via random search".
A score-based random search on the margin loss

    m(x) = z_y(x) - max_{j != y} z_j(x)        (the example is broken when m <= 0)

that only ever queries the model's logits. Each iteration proposes a change of the
current perturbation inside a random square window of side s, and keeps it when it
lowers the margin. The window covers a fraction p of the image: s = round(sqrt(p H W)),
and p starts at ``p_init`` and is halved at iterations 10, 50, 200, 500, 1000, 2000,
4000, 6000 and 8000 of a 10000-query run; as in AutoAttack, the schedule is rescaled
to ``n_queries`` (iteration i counts as i * 10000 / n_queries).

- L-inf: the start is vertical stripes of +-eps (one sign per channel and column); a
  proposal sets the window, per channel, to x + eps or x - eps. A proposal that would
  leave the image unchanged is redrawn among the other sign patterns (the paper's
  rejection loop, in closed form).
- L2: the start is a grid of the paper's window pattern (two halves of concentric
  rectangles with weights 1/(k+1)^2, opposite signs) with random signs; a proposal
  moves the perturbation's mass from a second random window into the first, adds the
  pattern with random signs per channel, and rescales the whole perturbation to
  norm eps.
- Signals (N, C, L) and vectors (N, F; one channel): the same search on a one-row
  image, whose window is a segment covering the same fraction p of the input, of
  length round(p L) (L-inf, at least 1; L2: odd, at least 3). L-inf starts with one
  sign per channel and position. L2 uses the paper's pattern in one dimension
  (:func:`segment_pattern`: + on the first half of the segment, - on the second, each
  half weighted by the rings around its centre), reversed where the image pattern is
  transposed, and starts from five such segments with random signs. A vector's window
  is a block of neighbouring features, which suits features whose order means
  something (spectra, time series) and is an arbitrary grouping otherwise.

Only examples not yet broken are queried; at most ``n_queries`` queries per example,
the starting point included. Every random draw of example i (a window's place, the
signs, the start) comes from generators seeded by (seed, index_offset + i), so the
result does not depend on how the data is batched or sharded.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    >>> x_adv = square_attack(net, x, y, eps=0.1, norm="linf", n_queries=20)
    >>> bool(((x_adv - x).abs() <= 0.1 + 1e-6).all())
    True
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from ..config import Norm
from ..errors import ConfigError
from .seeding import example_generators, global_indices
from .threat import check_counts, check_threat_model, unit

__all__ = ["square_attack", "square_skip_reason"]

# Random numbers are drawn per example in chunks of this many iterations, from a
# generator keyed by (seed, example index, chunk): creating one generator per example
# and iteration would cost more than a forward pass of a small model.
_CHUNK = 64
_SQUARE_TAG = 0x5175  # keeps this attack's streams apart from other users of the keys


#: Square's query budget in the standard AutoAttack (Croce & Hein 2020)
SQUARE_QUERIES = 5000


def _uniform(seed: int, indices: torch.Tensor, key: tuple[int, ...], shape: tuple[int, ...]):
    gens = example_generators(seed, indices, _SQUARE_TAG, *key)
    if not gens:
        return torch.empty((0, *shape))
    return torch.stack([torch.rand(shape, generator=g) for g in gens])


def _check(eps: float, norm: str, n_queries: int, p_init: float, lo: float, hi: float) -> Norm:
    norm = check_threat_model(eps, norm, lo, hi)
    check_counts(n_queries=n_queries)
    if not 0 < p_init <= 1:
        raise ConfigError(f"p_init must be in (0, 1], got {p_init}")
    return norm


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -float("inf"))
    return z_y - others.amax(1)


def _p_schedule(i: int, n_queries: int, p_init: float) -> float:
    """The paper's p at iteration i, its 10000-query schedule stretched to n_queries."""
    t = int(i / n_queries * 10000)
    halvings = sum(t > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _rectangles(a: int, b: int) -> torch.Tensor:
    """Concentric rectangles around (a // 2, b // 2): ring k carries 1/(k+1)^2, summed inwards."""
    rings = max(a // 2, b // 2) + 1
    r = torch.arange(a)[:, None] - a // 2
    c = torch.arange(b)[None, :] - b // 2
    ring = torch.maximum(r.abs(), c.abs())
    weights = 1.0 / torch.arange(1, rings + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} 1/(j+1)^2
    out = tail[ring]
    return out / out.norm()


@lru_cache(maxsize=64)
def window_pattern(s: int) -> torch.Tensor:
    """The L2 proposal of the paper, s x s with unit L2 norm: +rectangles on top, - below."""
    top = s // 2
    pattern = torch.zeros(s, s, dtype=torch.float64)
    if top > 0:
        pattern[:top] = _rectangles(top, s)
    pattern[top:] = -_rectangles(s - top, s)
    return (pattern / pattern.norm()).float()


@lru_cache(maxsize=64)
def segment_pattern(s: int) -> torch.Tensor:
    """The L2 proposal on a segment of length s, shape (1, s), unit L2 norm: the paper's
    window pattern in one dimension, + on the first half, - on the second, each half's
    positions weighted by the rings around its centre (1/(k+1)^2 summed inwards)."""
    half = s // 2
    pattern = torch.zeros(1, s, dtype=torch.float64)
    if half > 0:
        pattern[:, :half] = _rectangles(1, half)
    pattern[:, half:] = -_rectangles(1, s - half)
    return (pattern / pattern.norm()).float()


def _window_mask(
    vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int, sw: int | None = None
) -> torch.Tensor:
    """Each example's window of ``s`` rows and ``sw`` (default ``s``) columns, as a mask."""
    rows = torch.arange(h, device=vh.device)[None, :]
    cols = torch.arange(w, device=vh.device)[None, :]
    in_r = (rows >= vh[:, None]) & (rows < vh[:, None] + s)
    in_c = (cols >= vw[:, None]) & (cols < vw[:, None] + (s if sw is None else sw))
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (n, 1, h, w)


def _window_index(vh: torch.Tensor, vw: torch.Tensor, s: int):
    """Advanced indices selecting each example's s x s window: t[idx] has shape (n, s, s, C)."""
    ar = torch.arange(s, device=vh.device)
    n = torch.arange(vh.shape[0], device=vh.device)[:, None, None]
    rows = (vh[:, None] + ar)[:, :, None]
    cols = (vw[:, None] + ar)[:, None, :]
    return n, slice(None), rows, cols


def _positions(u: torch.Tensor, span: int) -> torch.Tensor:
    """Uniform integers in [0, span - 1] from uniforms in [0, 1)."""
    return (u * span).long().clamp(max=span - 1)


def _linf_start(x, u, eps, lo, hi):
    n, c, _, w = x.shape
    signs = torch.where(u.view(n, c, 1, w) < 0.5, -1.0, 1.0).to(x.dtype)
    return (x + eps * signs).clamp(lo, hi)


def _l2_start(x, u, eps, lo, hi):
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    first = (h - 5 * s) // 2
    pattern = window_pattern(s).to(x.device, x.dtype)
    delta = torch.zeros_like(x)
    signs = torch.where(u < 0.5, -1.0, 1.0).to(x.device, x.dtype)  # (n, blocks, c)
    block = 0
    for vh in range(first, h - s + 1, s):
        for vw in range(first, w - s + 1, s):
            delta[:, :, vh : vh + s, vw : vw + s] = pattern * signs[:, block, :, None, None]
            block += 1
    return (x + eps * unit(delta, Norm.l2)).clamp(lo, hi)


def _l2_blocks(h: int, w: int) -> int:
    s = max(h // 5, 1)
    first = (h - 5 * s) // 2
    return len(range(first, h - s + 1, s)) * len(range(first, w - s + 1, s))


def _line_blocks(w: int) -> range:
    """Where the L2 start's segments begin on a signal of length w: five of length w // 5
    (at least 1) in the middle, as the image start lays a 5 x 5 grid."""
    s = max(w // 5, 1)
    return range(max((w - 5 * s) // 2, 0), w - s + 1, s)


def _l2_line_start(x, u, eps, lo, hi):
    n, c, _, w = x.shape
    blocks = _line_blocks(w)
    s = max(w // 5, 1)
    pattern = segment_pattern(s).to(x.device, x.dtype)[0]
    delta = torch.zeros_like(x)
    signs = torch.where(u < 0.5, -1.0, 1.0).to(x.device, x.dtype)  # (n, blocks, c)
    for block, v in enumerate(blocks):
        delta[:, :, 0, v : v + s] = pattern * signs[:, block, :, None]
    return (x + eps * unit(delta, Norm.l2)).clamp(lo, hi)


def _l2_line_proposal(x, x_best, u, sw, eps, lo, hi, pattern):
    """The L2 proposal on signals (N, C, 1, L): as :func:`_l2_proposal` with segments of
    length ``sw`` for windows and the pattern reversed where the image one is transposed."""
    n, c, _, w = x.shape
    delta = x_best - x
    v1, v2 = _positions(u[:, 0], w - sw + 1), _positions(u[:, 2], w - sw + 1)
    rows, ar = torch.arange(n, device=x.device)[:, None], torch.arange(sw, device=x.device)
    first = (rows, slice(None), 0, v1[:, None] + ar)  # delta[first]: (n, sw, c)
    second = (rows, slice(None), 0, v2[:, None] + ar)
    top = torch.zeros_like(v1)
    both = _window_mask(top, v1, 1, 1, w, sw) | _window_mask(top, v2, 1, 1, w, sw)

    old = delta[first].permute(0, 2, 1)  # (n, c, sw)
    old_norm = old.norm(dim=2, keepdim=True)
    image_norm = delta.flatten(1).norm(dim=1).view(n, 1, 1)
    windows_norm = (delta * both).flatten(1).norm(dim=1).view(n, 1, 1)

    flip = (u[:, 4] < 0.5).view(n, 1, 1)
    shape = torch.where(flip, pattern.flip(-1), pattern)  # (n, 1, sw)
    signs = torch.where(u[:, 5 : 5 + c] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None]
    new = shape * signs + old / (old_norm + 1e-12)
    budget = ((eps**2 - image_norm**2).clamp_min(0) / c + windows_norm**2).sqrt()
    new = new / (new.norm(dim=2, keepdim=True) + 1e-12) * budget

    delta = delta.clone()
    delta[second] = 0.0
    delta[first] = new.permute(0, 2, 1)
    return (x + eps * unit(delta, Norm.l2)).clamp(lo, hi)


def _linf_proposal(x, x_best, u, s, eps, lo, hi, sw=None):
    n, c, h, w = x.shape
    sw = s if sw is None else sw
    vh = _positions(u[:, 0], h - s + 1)
    vw = _positions(u[:, 1], w - sw + 1)
    window = _window_mask(vh, vw, s, h, w, sw)
    signs = torch.where(u[:, 2 : 2 + c] < 0.5, -1.0, 1.0)

    def propose(sg: torch.Tensor) -> torch.Tensor:
        inside = (x + eps * sg[:, :, None, None].to(x.dtype)).clamp(lo, hi)
        return torch.where(window, inside, x_best)

    x_new = propose(signs)
    same = (x_new == x_best).flatten(1).all(1)
    if same.any():
        # With eps > 0 a pixel's two candidates x +- eps always differ after clipping, so
        # at most one sign pattern leaves the window unchanged: the one just drawn. XOR-ing
        # it with a uniform non-zero bit mask is a uniform draw among the other patterns,
        # which is what redrawing until the window changes amounts to.
        bits = min(c, 62)
        m = 1 + (u[:, 2 + c].double() * (2**bits - 1)).long().clamp(max=2**bits - 2)
        flip = ((m[:, None] >> torch.arange(bits, device=m.device)) & 1).bool()
        flip = torch.cat([flip, flip.new_zeros(n, c - bits)], 1)
        signs = torch.where(same[:, None] & flip, -signs, signs)
        x_new = propose(signs)
    return x_new


def _l2_proposal(x, x_best, u, s, eps, lo, hi, pattern):
    n, c, h, w = x.shape
    delta = x_best - x
    vh, vw = _positions(u[:, 0], h - s + 1), _positions(u[:, 1], w - s + 1)
    vh2, vw2 = _positions(u[:, 2], h - s + 1), _positions(u[:, 3], w - s + 1)
    first = _window_index(vh, vw, s)
    second = _window_index(vh2, vw2, s)
    both = _window_mask(vh, vw, s, h, w) | _window_mask(vh2, vw2, s, h, w)

    old = delta[first].permute(0, 3, 1, 2)  # (n, c, s, s)
    old_norm = old.flatten(2).norm(dim=2)[:, :, None, None]
    image_norm = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
    windows_norm = (delta * both).flatten(1).norm(dim=1).view(n, 1, 1, 1)

    transpose = (u[:, 4] < 0.5).view(n, 1, 1, 1)
    shape = torch.where(transpose, pattern.t(), pattern)  # (n, 1, s, s)
    signs = torch.where(u[:, 5 : 5 + c] < 0.5, -1.0, 1.0).to(x.dtype)[:, :, None, None]
    new = shape * signs + old / (old_norm + 1e-12)
    # the window gets the mass of both windows plus what the eps-ball still has room for,
    # spread evenly over the channels
    budget = ((eps**2 - image_norm**2).clamp_min(0) / c + windows_norm**2).sqrt()
    new = new / (new.flatten(2).norm(dim=2)[:, :, None, None] + 1e-12) * budget

    delta = delta.clone()
    delta[second] = 0.0
    delta[first] = new.permute(0, 2, 3, 1)
    return (x + eps * unit(delta, Norm.l2)).clamp(lo, hi)


@torch.no_grad()
def _search(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    idx: torch.Tensor,
    x_best: torch.Tensor,
    margin: torch.Tensor,
    draws: int,
    norm: Norm,
    eps: float,
    lo: float,
    hi: float,
    n_queries: int,
    p_init: float,
    seed: int,
    line: bool = False,
) -> torch.Tensor:
    """The random search from ``x_best`` (margin ``margin``): the best point of each
    example. ``line``: the inputs are signals laid out as (N, C, 1, L), whose windows are
    segments covering a fraction p of the length."""
    noise = torch.zeros(len(xs), _CHUNK, draws, device=xs.device)
    h, w = xs.shape[-2:]
    side = min(h, w)
    for i in range(n_queries - 1):
        active = (margin > 0).nonzero().flatten()
        if active.numel() == 0:
            break
        if i % _CHUNK == 0:
            chunk = _uniform(seed, idx[active.cpu()], (1, i // _CHUNK), (_CHUNK, draws))
            noise[active] = chunk.to(xs.device)
        u = noise[active, i % _CHUNK]
        p = _p_schedule(i, n_queries, p_init)
        if line and norm is Norm.linf:
            sw = min(max(round(p * w), 1), w)
            x_new = _linf_proposal(xs[active], x_best[active], u, 1, eps, lo, hi, sw)
        elif line:
            sw = max(round(p * w), 3)
            sw = min(sw + 1 if sw % 2 == 0 else sw, w)
            pattern = segment_pattern(sw).to(xs.device, xs.dtype)
            x_new = _l2_line_proposal(xs[active], x_best[active], u, sw, eps, lo, hi, pattern)
        elif norm is Norm.linf:
            s = min(max(round(math.sqrt(p * h * w)), 1), side)
            x_new = _linf_proposal(xs[active], x_best[active], u, s, eps, lo, hi)
        else:
            s = max(round(math.sqrt(p * h * w)), 3)
            s = min(s + 1 if s % 2 == 0 else s, side)
            pattern = window_pattern(s).to(xs.device, xs.dtype)
            x_new = _l2_proposal(xs[active], x_best[active], u, s, eps, lo, hi, pattern)
        m_new = _margin(model(x_new), ys[active])
        better = m_new < margin[active]
        x_best[active[better]] = x_new[better]
        margin[active[better]] = m_new[better]
    return x_best


def square_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    n_queries: int = SQUARE_QUERIES,
    p_init: float = 0.8,
    seed: int = 0,
    lo: float = 0.0,
    hi: float = 1.0,
    index_offset: int = 0,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Square Attack with the margin loss, untargeted; defaults are the paper's and AutoAttack's.

    Args:
        model: classifier in eval mode taking inputs in [lo, hi], returning logits.
        x: images (N, C, H, W), signals (N, C, L) or vectors (N, F), on the model's
            device (see :func:`square_skip_reason`).
        y: integer labels, shape (N,).
        eps: radius of the L-inf or L2 ball, in input units.
        norm: ``"linf"`` or ``"l2"``.
        n_queries: most model queries per example, the starting point included.
        p_init: the fraction of the image the first windows cover.
        seed: seeds every random draw, together with each example's global index.
        lo, hi: the data range; every point stays inside it.
        index_offset: global index of ``x[0]``; or ``indices``, the global index of every
            example (a subset of a split), for batch- and shard-independent draws.

    Returns:
        x_adv, shape of x, detached: for each example misclassified by the model (at the
        start or after the search) a misclassified point of the eps-ball and [lo, hi]
        (x itself when x is already misclassified); x itself otherwise.

    Raises:
        ConfigError: on a norm other than linf/l2, negative eps, n_queries < 1, p_init
            outside (0, 1], lo >= hi, or inputs of a shape Square does not take
            (:func:`square_skip_reason`).
    """
    norm = _check(eps, norm, n_queries, p_init, lo, hi)
    reason = square_skip_reason(tuple(x.shape), norm.value)
    if reason is not None:
        raise ConfigError(reason)
    x = x.detach()
    y = y.to(x.device)
    x_adv = x.clone()
    if eps == 0 or x.shape[0] == 0:
        return x_adv
    shape, line = tuple(x.shape[1:]), x.dim() < 4
    model, x = _as_image(model, x) if line else (model, x)
    index = global_indices(x.shape[0], indices, index_offset)

    with torch.no_grad():
        todo = (model(x).argmax(1) == y).nonzero().flatten()
        if todo.numel() == 0:
            return x_adv
        xs, ys, idx = x[todo], y[todo], index[todo.cpu()]
        x_best, draws = _start(xs, idx, norm, eps, lo, hi, seed, line)
        margin = _margin(model(x_best), ys)

        search = (draws, norm, eps, lo, hi, n_queries, p_init, seed, line)
        x_best = _search(model, xs, ys, idx, x_best, margin, *search)
        broken = model(x_best).argmax(1) != ys
        x_adv[todo[broken]] = x_best[broken].reshape(-1, *shape)
    return x_adv


def _as_image(model: nn.Module, x: torch.Tensor):
    """A signal (N, C, L) or a vector (N, F) as a one-row image (N, C, 1, L), and the
    model that takes such images."""
    shape = tuple(x.shape[1:])

    def query(z: torch.Tensor) -> torch.Tensor:
        return model(z.reshape(z.shape[0], *shape))

    return query, x.reshape(x.shape[0], shape[0] if x.dim() == 3 else 1, 1, shape[-1])


def _start(xs, idx, norm, eps, lo, hi, seed, line):
    """The search's starting points (see the module docstring) and the uniforms each
    iteration draws per example."""
    _, c, h, w = xs.shape
    if norm is Norm.linf:
        u0 = _uniform(seed, idx, (0,), (c * w,)).to(xs.device)
        return _linf_start(xs, u0, eps, lo, hi), c + 3
    if line:
        u0 = _uniform(seed, idx, (0,), (len(_line_blocks(w)), c))
        return _l2_line_start(xs, u0, eps, lo, hi), c + 5
    u0 = _uniform(seed, idx, (0,), (_l2_blocks(h, w), c))
    return _l2_start(xs, u0, eps, lo, hi), c + 5


def square_skip_reason(shape: tuple[int, ...], norm: str) -> str | None:
    """Why Square cannot attack inputs of ``shape`` (N first); None when it can.

    Images (N, C, H, W), signals (N, C, L) and vectors (N, F) take both norms (signals
    and vectors with windows that are segments of the length, see the module
    docstring); other ranks (volumes, videos) have no window here. ``norm`` is kept for
    callers that ask per threat model.

    Example:
        >>> square_skip_reason((8, 1, 40), "l2") is None, square_skip_reason((8, 5, 4, 4, 4), "linf")
        (True, 'Square Attack takes images (N, C, H, W), signals (N, C, L) or vectors (N, F), got shape (8, 5, 4, 4, 4)')
    """
    if len(shape) in (2, 3, 4):
        return None
    return (
        "Square Attack takes images (N, C, H, W), signals (N, C, L) or vectors (N, F), "
        f"got shape {tuple(shape)}"
    )
