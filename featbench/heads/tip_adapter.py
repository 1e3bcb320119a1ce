"""Tip-Adapter (training-free) and Tip-Adapter-F (trainable cache keys), Zhang et al. ECCV 2022.

Cache model: keys F = norm(mean over augmented views of the few-shot images' raw features) [N, D], values
L = one-hot labels. For a test feature f (normalised): A = f F^T, cache logits = exp(-beta (1 - A)) L and
logits = logit_scale * f W_zs^T + alpha * cache logits, W_zs the zero-shot classifier.

alpha/beta search on the selection split (reference ``search_hp``): beta_i = 0.1 + i (s_beta - 0.1)/200,
i < 200; alpha_j = 0.1 + j (s_alpha - 0.1)/20, j < 20; keep the first strictly better accuracy in the loop
order (outer beta, inner alpha). Here it is vectorised: one affinity matrix per chunk of selection rows is
shared by a batch of betas, alpha broadcasts over the cached logits, and the correct-prediction counts
[beta, alpha] are accumulated; the first maximum in row-major order is exactly the double loop's choice.

Cache rows are stored grouped by class; with balanced shots ``exp(...) @ L`` is then a reshape-and-sum
(C times cheaper than the one-hot matmul at 1000 classes, same sum).
"""

from __future__ import annotations

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.spec import DEVICE, SEED, Param, nonnegative, positive
from featbench.heads.paper import TipAdapterSetup

# dataset -> (search_scale [s_beta, s_alpha], init alpha); init beta = 1 everywhere (Tip-Adapter configs/*.yaml)
TIP_DEFAULTS: dict[str, tuple[list[float], float]] = {
    "caltech101": ([12.0, 5.0], 3.0),
    "dtd": ([13.0, 13.0], 2.0),
    "eurosat": ([12.0, 10.0], 2.0),
    "fgvc_aircraft": ([30.0, 30.0], 5.0),
    "food101": ([10.0, 10.0], 1.17),
    "imagenet": ([7.0, 3.0], 1.17),
    "oxford_flowers": ([50.0, 50.0], 10.0),
    "oxford_pets": ([7.0, 3.0], 1.17),
    "stanford_cars": ([20.0, 10.0], 3.0),
    "sun397": ([12.0, 10.0], 1.17),
    "ucf101": ([7.0, 3.0], 3.0),
}
# Tip-Adapter-F epochs (configs: train_epoch 20, EuroSAT 100)
TIPF_EPOCHS: dict[str, int] = {"eurosat": 100}

_BUDGET = 1 << 25  # float32 elements per intermediate in the vectorised search (~128 MB)
_ROW_BLOCK = 1 << 18  # float32 affinities per row block (~1 MB: reused by every beta while in cache)
# an exact exp every _EXP_EVERY betas, multiplies in between: a float32 multiply runs ~7x faster than exp
# here, and 7 chained multiplies add at most ~14 ulp of relative error, below the reference's own float32
# rounding of exp(-beta (1 - A)) at the paper's betas (up to ~100 ulp at beta 50)
_EXP_EVERY = 8
_ALPHA_BLOCK = 1 << 18
_EVAL_BLOCK = 1 << 21  # float32 affinities per row block when evaluating (~8 MB)  # float32 elements of one alpha's logits block (~1 MB: stays in cache across the passes)


def search_blocks(device) -> dict[str, int]:
    """Block sizes (float32 elements) of the search and of evaluation for ``device``.

    A CPU's blocks stay within its caches (above). A GPU has no such cache to fit and pays per kernel
    launch, so its blocks are 8-64x larger (an intermediate of up to 1 GB). Counts are integer sums over
    rows and alphas, so the block sizes do not change the result.
    """
    if getattr(device, "type", str(device)) == "cuda":
        return {"budget": 1 << 28, "row": 1 << 24, "alpha": 1 << 24, "eval": 1 << 26}
    return {"budget": _BUDGET, "row": _ROW_BLOCK, "alpha": _ALPHA_BLOCK, "eval": _EVAL_BLOCK}


def search_grid(search_scale, search_steps=(200, 20)) -> tuple[list[float], list[float]]:
    """The reference beta and alpha lists (python floats, same arithmetic as search_hp)."""
    sb, sa = float(search_scale[0]), float(search_scale[1])
    nb, na = int(search_steps[0]), int(search_steps[1])
    betas = [i * (sb - 0.1) / nb + 0.1 for i in range(nb)]
    alphas = [j * (sa - 0.1) / na + 0.1 for j in range(na)]
    return betas, alphas


def search_counts(fv, keys, zs_logits, yv, betas, alphas, n_classes: int, k, values=None):
    """Correct-prediction counts [len(betas), len(alphas)] of every (beta, alpha) on the selection rows.

    fv [n, D] normalised selection features, keys [N, D] (class-grouped), zs_logits [n, C], yv [n].
    """
    import torch

    from featbench.heads import _torch as T

    dev = fv.device
    a_t = torch.tensor(alphas, dtype=torch.float32, device=dev)
    n, n_keys = fv.shape[0], keys.shape[0]
    counts = torch.zeros(len(betas), len(alphas), dtype=torch.long, device=dev)
    dbeta = _uniform_step(betas)
    sizes = search_blocks(dev)
    # rows per block: the block's affinities stay in cache while every beta passes over them, and the
    # block's per-beta cache logits [betas, rows, C] stay within the budget
    rows = max(1, min(n, max(sizes["row"] // max(n_keys, 1), 32), sizes["budget"] // max(len(betas) * n_classes, 1)))
    for r0 in range(0, n, rows):
        f = fv[r0:r0 + rows]
        nr = f.shape[0]
        one_minus_a = 1.0 - f @ keys.T  # [nr, N] — shared by every beta
        buf = torch.empty_like(one_minus_a)
        cache = torch.empty(len(betas), nr, n_classes, device=dev)
        ratio = None if dbeta is None else torch.mul(one_minus_a, -dbeta).exp_()
        for i, beta in enumerate(betas):
            if ratio is None or i % _EXP_EVERY == 0:
                torch.mul(one_minus_a, -beta, out=buf).exp_()
            else:  # exp(-beta_i x) = exp(-beta_{i-1} x) * exp(-dbeta x): a multiply instead of an exp
                buf.mul_(ratio)
            cache[i] = T.class_sum(buf, values, n_classes, k)
        zs = zs_logits[r0:r0 + rows]
        yr = yv[r0:r0 + rows]
        step = max(1, sizes["alpha"] // max(nr * n_classes, 1))  # keep each alpha's logits cache-sized
        for b0 in range(0, len(betas), step):
            part = cache[b0:b0 + step]
            counts[b0:b0 + part.shape[0]] += _alpha_hits(zs, part, yr, a_t)
    return counts


_U = 2.0 ** -24  # float32 unit roundoff


def _uniform_step(betas) -> float | None:
    """The common difference of an evenly spaced beta list (the reference's is), else None."""
    if len(betas) < 2:
        return None
    d = np.diff(np.asarray(betas, np.float64))
    return float(d[0]) if np.allclose(d, d[0], rtol=1e-9, atol=0) and d[0] > 0 else None


def _alpha_hits(zs, cache, yr, a_t):
    """Correct counts [b, A] of argmax(zs + alpha * cache) == y for every alpha (rows of b betas).

    The logit gap between the true class and any other is linear in alpha, so a row whose true class wins
    at both the smallest and the largest alpha by more than the float32 rounding of the logits (16 u S, S
    the largest logit magnitude in the block) wins at every alpha in between, and a row that loses to one
    same class at both ends by that margin loses at every alpha. Only the remaining rows are evaluated
    alpha by alpha, exactly as the reference rounds (cache * alpha, then + zs) with argmax's first-index
    tie rule. Why not argmax over a broadcast [A, b, n, C] tensor: that was 8x slower on CPU.
    """
    import torch

    b, nr, _ = cache.shape
    a_lo, a_hi = a_t.min(), a_t.max()
    scale = zs.abs().max() + a_t.abs().max() * cache.abs().max()
    tol = 16 * _U * scale
    idx = yr[None, :, None].expand(b, -1, 1)

    def gaps(a):  # [b, nr, C]: how far each class is above the true class (true class itself: -inf)
        logits = zs[None] + cache * a
        gap = logits - logits.gather(2, idx)
        return gap.scatter_(2, idx, float("-inf"))

    g_lo, g_hi = gaps(a_lo), gaps(a_hi)
    sure_hit = (g_lo.amax(2) < -tol) & (g_hi.amax(2) < -tol)
    sure_miss = torch.minimum(g_lo, g_hi).amax(2) > tol
    del g_lo, g_hi
    counts = sure_hit.sum(1, keepdim=True).expand(b, len(a_t)).clone()
    bi, ri = (~(sure_hit | sure_miss)).nonzero(as_tuple=True)
    if len(bi):
        counts += _exact_hits(zs[ri], cache[bi, ri], yr[ri], a_t, bi, b)
    return counts


def _exact_hits(zs, cache, y, a_t, group, n_groups):
    """Per-alpha hits of rows [u, C], summed per group id: argmax(zs + cache * alpha) == y, alpha by alpha."""
    import torch

    idx = y[:, None]
    out = []
    for a in a_t:
        logits = zs + cache * a
        ly = logits.gather(1, idx)
        logits.scatter_(1, idx, float("-inf"))
        rest = logits.amax(1, keepdim=True)
        hit = (ly > rest)[:, 0]
        tie = (ly == rest)[:, 0]
        if bool(tie.any()):  # exact ties: argmax's first maximal index decides, as in the reference
            (ti,) = tie.nonzero(as_tuple=True)
            rows = logits[ti]
            rows.scatter_(1, idx[ti], ly[ti])
            hit[ti] = rows.argmax(1) == y[ti]
        out.append(torch.zeros(n_groups, dtype=torch.long, device=zs.device).index_add_(0, group, hit.long()))
    return torch.stack(out, 1)


def pick_first_best(counts) -> tuple[int, int] | None:
    """(beta index, alpha index) of the double loop's choice: first strict improvement over 0, row-major."""
    c = np.asarray(counts)
    if c.max() <= 0:
        return None
    flat = int(np.argmax(c))  # first maximum in row-major order = outer beta, inner alpha, strict '>'
    return flat // c.shape[1], flat % c.shape[1]


class TipAdapter(TipAdapterSetup, Head):
    """Training-free Tip-Adapter: a key-value cache of the few-shot features blended with zero-shot CLIP."""

    name = "tip-adapter"
    #: trained by fit (trainable_params): training-free: the cache is the shots' features
    trained_attributes = ()
    display_name = "Tip-Adapter"  # what tables and plots show
    paper = "Zhang et al. 2022, Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification"
    needs_text = True
    uses_views = True
    searches_internally = True
    # alpha/beta are searched internally over the paper's 200x20 grid; an outer grid would duplicate it.
    search_space: dict = {}
    #: typed, bounded hyperparameters (featbench.heads.spec): --set/--grid/recipes are checked against these
    hyperparams = {
        "alpha": nonnegative(doc="weight of the cache logits (initial value when searched)"),
        "beta": nonnegative(doc="sharpness of the cache affinities (initial value when searched)"),
        "search_scale": Param("floats", low=0, low_open=True, length=2, doc="[beta scale, alpha scale] of the search grid"),
        "search_steps": Param("ints", low=1, length=2, doc="[beta steps, alpha steps] of the search grid"),
        "search": Param("bool", doc="search alpha/beta on the selection split"),
        "device": DEVICE,
        "random_state": SEED,
    }
    # paper_* facts from TipAdapterSetup, as the reference has them: the reference's main.py: search_hp on every
    # val feature, ImageNet's 7 templates, clean class names, cache keys from views at RandomResizedCrop scale
    # (0.5, 1); its ImageNet search runs on test

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, search_scale=(10.0, 10.0), search_steps=(200, 20),
                 search: bool = True, device: str = "cpu", random_state: int = 0):
        self.alpha = alpha
        self.beta = beta
        self.search_scale = search_scale
        self.search_steps = search_steps
        self.search = search
        self.device = device
        self.random_state = random_state  # unused: training-free and deterministic (uniform runner API)

    @classmethod
    def paper_defaults(cls, dataset, shots):
        if dataset not in TIP_DEFAULTS:
            return {}
        scale, alpha = TIP_DEFAULTS[dataset]
        return {"alpha": alpha, "beta": 1.0, "search_scale": list(scale)}

    # -- shared pieces -----------------------------------------------------------------------------------
    def _prepare(self, X, y, text, views, logit_scale):
        """Zero-shot weights, class-grouped normalised keys and the bookkeeping both variants share."""
        from featbench.heads import _torch as T

        require(text, "text features (the cache's /text group)", self.name)
        X, y = T.check_xy(X, y)
        self.device_ = T.resolve_device(self.device)
        self.w_zs_ = T.zeroshot_weights(text, self.device_)
        self.n_classes_ = int(self.w_zs_.shape[0])
        T.check_xy(X, y, self.n_classes_)
        self.logit_scale_ = float(logit_scale)
        notes: list[str] = []
        if views is not None:
            v = np.asarray(views)
            if v.ndim != 3 or v.shape[1] != X.shape[0]:
                raise FeatbenchError(f"views must be [V, N={X.shape[0]}, D] aligned with the train rows (got {v.shape})")
            keys = T.l2norm(T.as_tensor(v.mean(0, dtype=np.float32), self.device_))
            views_used = int(v.shape[0])
        else:
            keys = T.l2norm(T.as_tensor(X, self.device_))
            views_used = 0
            notes.append("no augmented views: cache keys are the normalised plain train features")
        order, k = T.class_sorted_order(y, self.n_classes_)
        self._order = order
        self.k_ = k
        self.labels_ = T.as_labels(y[order], self.device_)
        self.values_ = None
        if k is None:  # unbalanced shots: keep the one-hot value matrix
            import torch.nn.functional as F

            self.values_ = F.one_hot(self.labels_, self.n_classes_).float()
        return keys[T.as_labels(order, self.device_)], views_used, notes

    def _search(self, keys, X_val, y_val, default):
        """Run the vectorised alpha/beta search; returns ((alpha, beta), selected-dict)."""
        from featbench.heads import _torch as T

        Xv, yv = T.check_xy(X_val, y_val, self.n_classes_, what="X_val")
        fv = T.l2norm(T.as_tensor(Xv, self.device_))
        zs = self.logit_scale_ * fv @ self.w_zs_.T
        betas, alphas = search_grid(self.search_scale, self.search_steps)
        counts = search_counts(fv, keys, zs, T.as_labels(yv, self.device_), betas, alphas, self.n_classes_,
                               self.k_, self.values_)
        best = pick_first_best(counts.cpu().numpy())
        if best is None:
            return default, {}
        bi, ai = best
        acc = float(counts[bi, ai]) / len(yv)
        return (alphas[ai], betas[bi]), {"alpha": alphas[ai], "beta": betas[bi], "val_acc": acc}

    def _logits(self, f, keys, alpha, beta):
        from featbench.heads import _torch as T

        f = T.l2norm(f)
        # exp(-(beta - beta A)) in place: beta*A - beta rounds exactly as -(beta - beta*A) (the reference's order)
        E = (f @ keys.T).mul_(beta).sub_(beta).exp_()
        cache = T.class_sum(E, self.values_, self.n_classes_, self.k_)
        return self.logit_scale_ * f @ self.w_zs_.T + alpha * cache

    # -- estimator API -----------------------------------------------------------------------------------
    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "TipAdapter":
        keys, views_used, notes = self._prepare(X, y, text, views, logit_scale)
        self.keys_ = keys
        ab = (float(self.alpha), float(self.beta))
        selected: dict = {}
        if self.search and X_val is not None and y_val is not None and len(y_val):
            ab, selected = self._search(keys, X_val, y_val, ab)
        elif self.search:
            notes.append("no selection split: paper's initial alpha/beta used without search")
        self.alpha_, self.beta_ = ab
        self.fit_info_ = {"selected": selected, "views_used": views_used, "notes": notes}
        return self

    def decision_function(self, X) -> np.ndarray:
        from featbench.heads import _torch as T

        X, _ = T.check_xy(X)
        f = T.as_tensor(X, self.device_)
        rows = max(32, search_blocks(self.device_)["eval"] // max(self.keys_.shape[0], 1))  # [rows, keys] per block
        out = T.batched_logits(lambda x: self._logits(x, self.keys_, self.alpha_, self.beta_), f, rows)
        return T.to_numpy(out)

    def class_weights(self) -> np.ndarray:
        """A linear stand-in for the cache model, for TaskRes* bases: first-order expansion at A = 0.

        exp(-beta (1 - A)) ~ e^-beta (1 + beta A), so the logits are ~ f . w_c + const_c with
        w_c = logit_scale t_c + alpha beta e^-beta sum_{j in c} F_j (the class-count constant is dropped; it is
        the same for every class with balanced shots). Exact only for small beta; a base, not the head.
        """
        import torch

        from featbench.heads import _torch as T

        if self.k_ is not None:  # balanced, class-grouped keys: a reshape-and-sum
            proto = self.keys_.reshape(self.n_classes_, self.k_, -1).sum(1)
        else:
            proto = torch.zeros_like(self.w_zs_).index_add_(0, self.labels_, self.keys_)
        w = self.logit_scale_ * self.w_zs_ + self.alpha_ * self.beta_ * float(np.exp(-self.beta_)) * proto
        return T.to_numpy(w)


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the cache keys become trainable (AdamW, cosine per iteration), then alpha/beta re-searched.

    Training follows the reference main loop: logits with the paper's *initial* alpha/beta, cross-entropy,
    AdamW(lr 1e-3, eps 1e-4, torch's default weight decay 0.01), CosineAnnealingLR over all iterations
    (stepped per batch), batch 256 reshuffled every epoch, no dropped last batch. Each epoch every image
    contributes one cached augmented view drawn at random (the cache's stand-in for a fresh augmentation).
    The reference keeps the epoch with the best *test* accuracy; featbench never looks at test, so the last
    epoch's keys are kept (noted in fit_info_).
    """

    name = "tip-adapter-f"
    #: trained by fit (trainable_params): the cache keys [N, D] (values and text stay frozen)
    trained_attributes = ("keys_",)
    display_name = "Tip-Adapter-F"  # what tables and plots show
    # alpha/beta re-searched internally; epochs/lr are the paper's fixed recipe. The reference trains on the
    # same (0.5, 1) crops its cache is built from (main.py: train_loader_F uses train_tranform).
    search_space: dict = {}
    hyperparams = {
        **TipAdapter.hyperparams,
        "epochs": nonnegative("int", doc="training epochs of the cache keys"),
        "lr": positive(doc="AdamW learning rate"),
        "eps": positive(doc="AdamW epsilon"),
        "weight_decay": nonnegative(doc="AdamW decoupled weight decay"),
        "batch_size": positive("int", doc="images per batch"),
    }

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, search_scale=(10.0, 10.0), search_steps=(200, 20),
                 search: bool = True, epochs: int = 20, lr: float = 1e-3, eps: float = 1e-4,
                 weight_decay: float = 0.01, batch_size: int = 256, device: str = "cpu", random_state: int = 0):
        super().__init__(alpha=alpha, beta=beta, search_scale=search_scale, search_steps=search_steps,
                         search=search, device=device, random_state=random_state)
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size

    @classmethod
    def paper_defaults(cls, dataset, shots):
        d = TipAdapter.paper_defaults(dataset, shots)
        if dataset in TIP_DEFAULTS:
            d["epochs"] = TIPF_EPOCHS.get(dataset, 20)
        return d

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "TipAdapterF":
        context = dict(text=text, views=views, logit_scale=logit_scale, X_val=X_val, y_val=y_val,
                       classnames=classnames, extra=extra)
        type(self).fit_batched([(self, X, y, context)])
        return self

    # -- batched multi-run fitting (featbench.heads.base.Head.fit_batched) ------------------------------
    def batch_key(self, X, y, context):
        """Runs with equal schedule, shapes and class balance train as one stacked problem."""
        from featbench.heads import _torch as T

        v = context.get("views")
        text = context.get("text")
        if text is None or np.ndim(y) != 1:
            return None  # fit raises the clear error
        k = T.class_sorted_order(np.asarray(y), int(np.shape(text)[-2]))[1]
        return (int(self.epochs), float(self.lr), float(self.eps), float(self.weight_decay), int(self.batch_size),
                np.shape(X), np.shape(v) if v is not None else None, np.shape(context.get("text")), k,
                float(context.get("logit_scale", 100.0)), str(self.device))

    @classmethod
    def fit_batched(cls, fits):
        """Train the cache keys of R runs stacked ([R, N, D], bmm, one fused AdamW step), then search each."""
        heads = [f[0] for f in fits]
        preps = []
        for h, X, y, ctx in fits:
            keys0, views_used, notes = h._prepare(X, y, ctx.get("text"), ctx.get("views"), ctx.get("logit_scale", 100.0))
            views = ctx.get("views")
            src = np.asarray(views) if views is not None else np.asarray(X)[None]  # [V, N, D], original row order
            preps.append((keys0, views_used, notes, src))
        keys, total = train_keys(heads, [p[0] for p in preps], [p[3] for p in preps])
        for r, ((h, X, y, ctx), (_, views_used, notes, _src)) in enumerate(zip(fits, preps)):
            h.keys_ = keys[r]
            if h.epochs:
                notes.append("last epoch kept (the reference picks the epoch on test; featbench does not)")
            if ctx.get("views") is None:
                notes.append("no augmented views: trained on the plain features")
            ab = (float(h.alpha), float(h.beta))
            selected: dict = {}
            X_val, y_val = ctx.get("X_val"), ctx.get("y_val")
            if h.search and X_val is not None and y_val is not None and len(y_val):
                ab, selected = h._search(h.keys_, X_val, y_val, ab)
            elif h.search:
                notes.append("no selection split: paper's initial alpha/beta used without search")
            h.alpha_, h.beta_ = ab
            h.fit_info_ = {"selected": selected, "views_used": views_used, "notes": notes, "iterations": total}
        return heads


def train_keys(heads, keys0, srcs):
    """Tip-Adapter-F's key training for R runs at once; returns (keys [R, N, D], iterations per run).

    Every run keeps its own generator and draw order (views, then the permutation, per epoch); the summed
    loss gives each run's keys exactly its own gradient, and AdamW is elementwise, so each run follows the
    trajectory it follows alone.
    """
    import torch
    import torch.nn.functional as F

    from featbench.heads import _torch as T

    h0 = heads[0]
    dev = h0.device_
    R = len(heads)
    n, D = keys0[0].shape
    C, k = h0.n_classes_, h0.k_
    bs = int(h0.batch_size)
    steps_per_epoch = -(-n // bs)
    total = int(h0.epochs) * steps_per_epoch
    keys = torch.nn.Parameter(torch.stack(keys0))
    opt = T.make_optimizer(torch.optim.AdamW, [keys], lr=h0.lr, eps=h0.eps, weight_decay=h0.weight_decay)
    gens = [T.generator(h.random_state) for h in heads]
    w_zs = torch.stack([h.w_zs_ for h in heads])  # [R, C, D] frozen text weights
    values = None if k is not None else torch.stack([h.values_ for h in heads])  # [R, N, C]
    labels = torch.stack([h.labels_ for h in heads])  # [R, N] class-grouped
    alpha0 = torch.tensor([float(h.alpha) for h in heads], device=dev).view(R, 1, 1)
    beta0 = torch.tensor([float(h.beta) for h in heads], device=dev).view(R, 1, 1)
    scale = h0.logit_scale_
    staging = T.HostStaging([((R, n, D), torch.float32), ((R, n), torch.long)], dev)
    step = 0
    for _epoch in range(int(h0.epochs)):
        host, perms = staging.fill()  # waits until the previous epoch's upload has read them
        for r, h in enumerate(heads):
            vidx = T.draw_view_indices(srcs[r].shape[0], n, gens[r]).numpy()
            perm = torch.randperm(n, generator=gens[r])
            p = perm.numpy()
            host[r] = torch.from_numpy(np.ascontiguousarray(srcs[r][vidx[p], h._order[p]], dtype=np.float32))
            perms[r] = perm
        feats, perms_dev = staging.upload()
        feats.div_(torch.linalg.vector_norm(feats, dim=2, keepdim=True).clamp_min_(1e-12))
        yb_all = torch.gather(labels, 1, perms_dev)
        for s0 in range(0, n, bs):
            T.set_lr(opt, T.cosine_per_step(step, h0.lr, total))
            f = feats[:, s0:s0 + bs]  # [R, B, D]
            yb = yb_all[:, s0:s0 + bs]
            aff = torch.bmm(f, keys.transpose(1, 2))  # [R, B, N]
            E = ((-1.0) * (beta0 - beta0 * aff)).exp()
            cache = E.reshape(R, -1, C, k).sum(-1) if k is not None else torch.bmm(E, values)
            with torch.no_grad():
                zs = scale * torch.bmm(f, w_zs.transpose(1, 2))
            logits = zs + alpha0 * cache  # [R, B, C]
            # sum of the runs' mean losses: each run's keys get exactly their own gradient
            loss = F.cross_entropy(logits.reshape(-1, C), yb.reshape(-1), reduction="none").view(R, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return keys.detach(), total
