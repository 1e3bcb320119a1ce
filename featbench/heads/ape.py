"""APE and APE-T: Adaptive Prior rEfinement (Zhu et al., "Not All Features Matter", ICCV 2023).

Reference code: yangyangyang127/APE@70460de74d1e967f8b4d270b3419373694758536 ``main.py`` (``APE``, ``APE_T``),
``utils.py`` (``cal_criterion``, ``APE_Training``), ``extract_features.py`` (inputs) and ``configs/*.yaml``
(per-dataset values, RN50). Notation: W [C, D] the normalised zero-shot text weights, F [N, D] Tip-Adapter's
cache keys (normalised mean of the (0.5, 1) views of each shot), L one-hot values, s = logit_scale.

Channel selection (``cal_criterion``): per class the text row and the class's keys form a set; sim = mean over
all pairs of rows from two *different* classes of their elementwise product (a D-vector, computed in closed
form: (sum)^2 minus the per-class (sum)^2, over the pair count); criterion = -w0 sim + w1 var_c(W) (unbiased
variance over classes); the ``feat_num`` channels with the largest criterion are kept.

APE (training-free): on the kept channels, renormalised (W', F', f'),
  div_j = sum_c L_jc log2((L_jc + 1e-6) / (softmax_c(F'_j W'^T) + 1e-6)), soft values L_j exp(gamma div_j),
  logits = s f W^T + alpha exp(-beta (1 - f' F'^T)) (L * exp(gamma div)).
beta, alpha, gamma are searched on the selection split: beta_i = 0.1 + i (s_b - 0.1)/n_b, alpha_j = 0.1 + j
(s_a - 0.1)/n_a, gamma_k = k s_g/n_g; loops beta, alpha, gamma, first strictly better accuracy kept.

APE-T: a category residual R [C, feat_num] (zeros) added to the kept channels of W and of every key of that
class (neither renormalised), and per-key value weights v [N] (ones); logits = s f (W+R)^T + alpha
exp(-beta (1 - f (F+R_y)^T)) (L * v), full channels. AdamW(lr, eps, weight decay 0.1), cosine over all
iterations (stepped per batch), batch 256 reshuffled, no dropped batch, cross-entropy (its SmoothCrossEntropy
with smoothing 0), the configs' initial beta/alpha; after each epoch the selection-split accuracy decides the
kept epoch (first strictly best), then beta/alpha are searched on the selection split as for APE (no gamma).

The reference's selection split is every val image (``extract_features.py`` encodes ``dataset.val``:
``paper_selection = FULL_VAL``); on ImageNet it is the test set (only ``oracle`` does that).

Deviations (also in README "What differs"):
- text: the reference averages the dataset's templates *and* CuPL's GPT-3 descriptions per class
  (``text_weights_cupl_t.pt``); a cache has no CuPL prompts, so W is the cache's paper templates alone.
- ``feat_num`` counts RN50 channels (D = 1024); where it exceeds the cache's D every channel is kept (noted).
- the selection search is exact but vectorised: per (beta, gamma) the accuracy of all alphas comes from one
  pass (a row is right iff alpha lies in the interval where its true class beats every other, found from the
  linear logit gaps), not one argmax per alpha; exact ties count as misses.
- APE-T's ``APE_Training`` asks ``cal_criterion`` for ``training_free_feat_num`` channels but sizes its
  residual with ``training_feat_num`` (a shape error wherever they differ); featbench keeps
  ``training_feat_num``. Its criterion asks for text-only similarity, but ``cal_criterion`` loads the
  similarity file that ``main.py``'s APE run saved first (text + cache), so that is what APE-T uses
  (``criterion_uses_cache``).
- APE-T trains in float32 (the reference: fp16 keys, weights and logits) on one cached view per image per
  epoch instead of a fresh crop; without a selection split the last epoch is kept and the initial beta/alpha
  are used (noted).
- the reference seeds torch with 3407 and Tip-Adapter's sampler with 1; featbench's shots and ``random_state``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.paper import TipAdapterSetup
from featbench.heads.spec import DEVICE, SEED, Param, nonnegative, positive

#: dataset -> APE's configs/<dataset>.yaml: search_scale [beta, alpha, gamma], search_step, init_alpha,
#: training_free_feat_num, w_training_free (init_beta 1 and init_gamma 0.1 everywhere)
APE_CONFIGS: dict[str, dict] = {
    "caltech101": dict(search_scale=(7, 7, 1), alpha=1.0, feat_num=800, w=(0.5, 0.5)),
    "dtd": dict(search_scale=(7, 7, 1), alpha=3.0, feat_num=400, w=(0.5, 0.5)),
    "eurosat": dict(search_scale=(30, 5, 1.5), alpha=1.0, feat_num=700, w=(0.9, 0.1)),
    "fgvc_aircraft": dict(search_scale=(20, 10, 1), alpha=5.0, feat_num=800, w=(0.1, 0.9)),
    "food101": dict(search_scale=(7, 7, 1), alpha=0.8, feat_num=700, w=(0.3, 0.7)),
    "imagenet": dict(search_scale=(7, 7, 0.5), search_steps=(200, 20, 5), alpha=2.0, feat_num=500, w=(0.7, 0.3)),
    "oxford_flowers": dict(search_scale=(7, 7, 1), alpha=3.0, feat_num=700, w=(0.4, 0.6)),
    "oxford_pets": dict(search_scale=(7, 7, 1), alpha=2.0, feat_num=800, w=(0.7, 0.3)),
    "stanford_cars": dict(search_scale=(10, 7, 1), alpha=1.0, feat_num=500, w=(0.6, 0.4)),
    "sun397": dict(search_scale=(10, 7, 1), alpha=1.0, feat_num=800, w=(0.7, 0.3)),
    "ucf101": dict(search_scale=(10, 7, 1.5), alpha=2.0, feat_num=700, w=(0.3, 0.7)),
}
#: dataset -> APE-T's values from the same files: train_epoch, lr, eps, training_feat_num (w_training [0.2, 0.8])
APET_CONFIGS: dict[str, dict] = {
    "caltech101": dict(epochs=30, lr=1e-3, eps=1e-3, feat_num=900),
    "dtd": dict(epochs=20, lr=1e-3, eps=1e-3, feat_num=700),
    "eurosat": dict(epochs=200, lr=1e-3, eps=1e-3, feat_num=900),
    "fgvc_aircraft": dict(epochs=30, lr=1e-3, eps=1e-3, feat_num=900),
    "food101": dict(epochs=30, lr=1e-4, eps=1e-3, feat_num=900),
    "imagenet": dict(epochs=20, lr=1e-4, eps=1e-3, feat_num=500),
    "oxford_flowers": dict(epochs=60, lr=1e-3, eps=1e-3, feat_num=800),
    "oxford_pets": dict(epochs=30, lr=1e-4, eps=2e-3, feat_num=800),
    "stanford_cars": dict(epochs=30, lr=1e-3, eps=5e-3, feat_num=800),
    "sun397": dict(epochs=30, lr=1e-4, eps=1e-3, feat_num=800),
    "ucf101": dict(epochs=30, lr=1e-3, eps=2e-3, feat_num=800),
}
#: food101.yaml: "eps: 0.001   # 0.01 for 1/2-shot, 0.001 for others"
APET_EPS_FEW_SHOTS: dict[str, float] = {"food101": 1e-2}
_BUDGET = 1 << 21  # elements of one (gamma x rows x classes) block in the search (~16 MB in float64)


# ---------------------------------------------------------------------------------------------------- pieces
def channel_criterion(text_w, keys, labels, n_classes: int, w, use_cache: bool = True):
    """-w0 sim + w1 var_c(text_w) per channel (``cal_criterion``), sim over cross-class pairs in closed form.

    text_w [C, D], keys [N, D] (normalised), labels [N]. Every class contributes its text row and, with
    ``use_cache``, its keys; sim = sum over pairs (a, b) of different classes of a * b, over the pair count.
    """
    import torch

    per_class = text_w.clone()
    members = torch.ones(n_classes, dtype=text_w.dtype, device=text_w.device)
    if use_cache:
        per_class.index_add_(0, labels, keys)
        members += torch.bincount(labels, minlength=n_classes).to(text_w.dtype)
    total = per_class.sum(0)
    pairs = members.sum() ** 2 - (members ** 2).sum()
    sim = (total * total - (per_class * per_class).sum(0)) / pairs
    return -float(w[0]) * sim + float(w[1]) * text_w.var(dim=0)


def keep_channels(criterion, feat_num: int, notes: list) -> "object":
    """Indices of the ``feat_num`` largest criterion values (all channels when feat_num >= D, noted)."""
    import torch

    dim = criterion.shape[0]
    if feat_num >= dim:
        notes.append(f"feat_num {feat_num} >= feature width {dim} (the configs count RN50's 1024): every channel kept")
        return torch.arange(dim, device=criterion.device)
    return torch.topk(criterion, k=int(feat_num)).indices


def alpha_hit_counts(zs, cache, y, alphas):
    """Correct counts [G, A] of argmax(zs + alpha * cache[g]) == y for every alpha, in one pass.

    zs [n, C], cache [G, n, C], y [n]. Against class c the true class wins iff d_c + alpha e_c > 0 with
    d = zs_y - zs_c, e = cache_y - cache_c: a lower bound on alpha where e_c > 0, an upper one where e_c < 0,
    a fixed verdict where e_c = 0. Exact ties are misses.
    """
    import torch

    idx = y[:, None]
    d = zs.gather(1, idx) - zs  # [n, C]
    e = cache.gather(2, idx.expand(cache.shape[0], -1, 1)) - cache  # [G, n, C]
    d = d.scatter(1, idx, 1.0)[None]  # the true class against itself: always "wins"
    e = e.scatter(2, idx.expand(cache.shape[0], -1, 1), 0.0)
    thr = -d / e
    inf = torch.tensor(float("inf"), dtype=zs.dtype, device=zs.device)
    lo = torch.where(e > 0, thr, -inf).amax(2)  # [G, n]
    hi = torch.where(e < 0, thr, inf).amin(2)
    never = ((e == 0) & (d <= 0)).any(2)
    a = torch.as_tensor(alphas, dtype=zs.dtype, device=zs.device)
    hit = (a > lo[..., None]) & (a < hi[..., None]) & ~never[..., None]  # [G, n, A]
    return hit.sum(1)


def search_counts(fv, keys, zs, y, betas, alphas, key_weights, n_classes: int, k, values=None):
    """Correct counts [B, G, A] of every (beta, weight set, alpha) on the selection rows.

    fv [n, D'] and keys [N, D'] in the affinity space, zs [n, C] the text logits, key_weights [G, N] the
    per-key value weights (APE: exp(gamma div) per gamma; APE-T: its trained v).
    """
    import torch

    from featbench.heads import _torch as T  # lazy: torch loads on first fit

    n, G = fv.shape[0], key_weights.shape[0]
    counts = torch.zeros(len(betas), G, len(alphas), dtype=torch.long)
    rows = max(1, min(n, _BUDGET // max(G * n_classes, 1)))
    for r0 in range(0, n, rows):
        one_minus_a = 1.0 - fv[r0:r0 + rows] @ keys.T  # [r, N]
        z, yr = zs[r0:r0 + rows].double(), y[r0:r0 + rows]
        for i, beta in enumerate(betas):
            E = torch.exp(-beta * one_minus_a)
            cache = torch.stack([T.class_sum(E * key_weights[g], values, n_classes, k) for g in range(G)])
            counts[i] += alpha_hit_counts(z, cache.double(), yr, alphas).cpu()
    return counts


def linear_grid(scale, steps, start: float = 0.1) -> list[float]:
    """The reference's lists: i (scale - start) / steps + start for i < steps."""
    return [i * (float(scale) - start) / int(steps) + start for i in range(int(steps))]


def first_best(counts) -> tuple | None:
    """Index of the nested loops' choice (first strict improvement over 0, row-major), or None."""
    c = np.asarray(counts)
    if c.max() <= 0:
        return None
    return np.unravel_index(int(np.argmax(c)), c.shape)


# ---------------------------------------------------------------------------------------------------- APE
class APE(TipAdapterSetup, Head):
    """Training-free APE: a Tip-Adapter cache on the selected channels with KL-weighted values."""

    display_name = "APE"  # what tables and plots show

    name: ClassVar[str] = "ape"
    #: trained by fit (trainable_params): training-free: channel selection and a searched cache
    trained_attributes: ClassVar[tuple] = ()
    paper: ClassVar[str] = "Zhu et al., Not All Features Matter: Enhancing Few-shot CLIP with Adaptive Prior Refinement, ICCV 2023"
    needs_text: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = True
    search_space: ClassVar[dict[str, list]] = {}
    hyperparams = {
        "alpha": nonnegative(doc="weight of the cache logits (initial value when searched)"),
        "beta": nonnegative(doc="sharpness of the cache affinities (initial value when searched)"),
        "gamma": nonnegative(doc="weight of the prior-refined values' divergence (initial value when searched)"),
        "search_scale": Param("floats", low=0, length=3, doc="[beta, alpha, gamma] scales of the search grid"),
        "search_steps": Param("ints", low=1, length=3, doc="[beta, alpha, gamma] steps of the search grid"),
        "feat_num": positive("int", doc="channels kept by the criterion (RN50 counts)"),
        "w": Param("floats", length=2, doc="[w_sim, w_var] of the channel criterion"),
        "search": Param("bool", doc="search beta/alpha/gamma on the selection split"),
        "device": DEVICE,
    }
    # paper_* facts from TipAdapterSetup, as the reference has them: extract_features.py: Tip-Adapter's (0.5, 1)
    # cache views, dataset templates (ImageNet's 7, plus CuPL), clean names, every val image; on ImageNet the
    # test set is the val set

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.1, search_scale=(7.0, 7.0, 1.0),
                 search_steps=(200, 20, 20), feat_num: int = 800, w=(0.5, 0.5), search: bool = True,
                 device: str = "cpu"):
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.search_scale = search_scale
        self.search_steps = search_steps
        self.feat_num = feat_num
        self.w = w
        self.search = search
        self.device = device

    @classmethod
    def paper_defaults(cls, dataset, shots):
        cfg = APE_CONFIGS.get(dataset)
        if cfg is None:
            return {}
        return {"alpha": cfg["alpha"], "beta": 1.0, "gamma": 0.1, "search_scale": list(cfg["search_scale"]),
                "search_steps": list(cfg.get("search_steps", (200, 20, 20))), "feat_num": cfg["feat_num"],
                "w": list(cfg["w"])}

    # -- shared with APE-T ---------------------------------------------------------------------------------
    def _prepare(self, X, y, text, views, logit_scale, notes):
        """Text weights, class-grouped cache keys (mean of the views, normalised) and the label bookkeeping."""
        import torch.nn.functional as F

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        require(text, "text features ([T, C, D] raw text-encoder outputs)", self.name)
        X, y = T.check_xy(X, y)
        self.device_ = T.resolve_device(self.device)
        self.text_weights_ = T.zeroshot_weights(text, self.device_)
        self.n_classes_ = int(self.text_weights_.shape[0])
        T.check_xy(X, y, self.n_classes_)
        if self.text_weights_.shape[1] != X.shape[1]:
            raise FeatbenchError(f"head '{self.name}': image width {X.shape[1]} != text width "
                                 f"{self.text_weights_.shape[1]}; features and text must come from one encoder")
        self.scale_ = float(logit_scale)
        order, self.k_ = T.class_sorted_order(y, self.n_classes_)
        self._order = order
        self.labels_ = T.as_labels(y[order], self.device_)
        self.values_ = None if self.k_ is not None else F.one_hot(self.labels_, self.n_classes_).float()
        if views is not None:
            v = np.asarray(views)
            if v.ndim != 3 or v.shape[1:] != X.shape:
                raise FeatbenchError(f"head '{self.name}': views shape {v.shape} does not match features {X.shape}")
            keys, used = v.mean(0, dtype=np.float32), int(v.shape[0])
        else:
            keys, used = X, 0
            notes.append("no augmented views: cache keys are the normalised plain train features")
        return T.l2norm(T.as_tensor(np.asarray(keys)[order], self.device_)), used

    def _selection(self, X_val, y_val):
        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        Xv, yv = T.check_xy(X_val, y_val, self.n_classes_, what="X_val")
        return T.l2norm(T.as_tensor(Xv, self.device_)), T.as_labels(yv, self.device_)

    def _cache_logits(self, f_aff, keys_aff, beta, key_weights):
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        E = torch.exp(-beta * (1.0 - f_aff @ keys_aff.T)) * key_weights
        return T.class_sum(E, self.values_, self.n_classes_, self.k_)

    # -- APE ----------------------------------------------------------------------------------------------
    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "APE":
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        notes: list[str] = []
        keys, views_used = self._prepare(X, y, text, views, logit_scale, notes)
        crit = channel_criterion(self.text_weights_, keys, self.labels_, self.n_classes_, self.w)
        self.channels_ = keep_channels(crit, int(self.feat_num), notes)
        w_sel = T.l2norm(self.text_weights_[:, self.channels_])
        self.keys_ = T.l2norm(keys[:, self.channels_])
        key_probs = torch.softmax(self.keys_ @ w_sel.T, dim=1)  # [N, C], no logit scale (as the reference)
        p_true = key_probs.gather(1, self.labels_[:, None])[:, 0]
        self.div_ = torch.log2((1.0 + 1e-6) / (p_true + 1e-6))  # KL(one-hot || softmax) in bits, per key

        abg = (float(self.alpha), float(self.beta), float(self.gamma))
        selected: dict = {}
        if self.search and X_val is not None and y_val is not None and len(y_val):
            abg, selected = self._search(X_val, y_val, abg)
        elif self.search:
            notes.append("no selection split: the configs' initial alpha/beta/gamma used without search")
        self.alpha_, self.beta_, self.gamma_ = abg
        self.fit_info_ = {"selected": selected, "views_used": views_used, "notes": notes,
                          "channels": int(self.channels_.shape[0])}
        return self

    def _search(self, X_val, y_val, default):
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        fv, yv = self._selection(X_val, y_val)
        zs = self.scale_ * fv @ self.text_weights_.T
        sb, sa, sg = self.search_scale
        nb, na, ng = self.search_steps
        betas, alphas = linear_grid(sb, nb), linear_grid(sa, na)
        gammas = linear_grid(sg, ng, start=0.0)
        weights = torch.exp(self.div_[None] * torch.tensor(gammas, device=self.device_)[:, None])  # [G, N]
        counts = search_counts(T.l2norm(fv[:, self.channels_]), self.keys_, zs, yv, betas, alphas, weights,
                               self.n_classes_, self.k_, self.values_)
        best = first_best(counts.permute(0, 2, 1).numpy())  # loop order: beta, alpha, gamma
        if best is None:
            return default, {}
        bi, ai, gi = best
        return (alphas[ai], betas[bi], gammas[gi]), {"alpha": alphas[ai], "beta": betas[bi], "gamma": gammas[gi],
                                                      "val_acc": float(counts[bi, gi, ai]) / len(yv)}

    def decision_function(self, X) -> np.ndarray:
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        X, _ = T.check_xy(X)
        weights = torch.exp(self.gamma_ * self.div_)

        def logits(x):
            f = T.l2norm(x)
            cache = self._cache_logits(T.l2norm(f[:, self.channels_]), self.keys_, self.beta_, weights)
            return self.scale_ * f @ self.text_weights_.T + self.alpha_ * cache

        rows = max(32, (1 << 21) // max(self.keys_.shape[0], 1))
        return T.to_numpy(T.batched_logits(logits, T.as_tensor(X, self.device_), rows))


# ---------------------------------------------------------------------------------------------------- APE-T
class APET(APE):
    """APE-T: a trained category residual on the selected channels of text and keys, and trained value weights."""

    display_name = "APE-T"  # what tables and plots show

    name: ClassVar[str] = "ape-t"
    #: trained by fit (trainable_params): the residual R [C, feat_num] and the value weights v [N]
    trained_attributes: ClassVar[tuple] = ("residual_", "value_weights_")
    hyperparams = {
        "alpha": nonnegative(doc="weight of the cache logits while training (initial value when searched)"),
        "beta": nonnegative(doc="sharpness of the cache affinities while training (initial value when searched)"),
        "search_scale": Param("floats", low=0, length=2, doc="[beta, alpha] scales of the search grid"),
        "search_steps": Param("ints", low=1, length=2, doc="[beta, alpha] steps of the search grid"),
        "feat_num": positive("int", doc="channels the residual trains (RN50 counts)"),
        "w": Param("floats", length=2, doc="[w_sim, w_var] of the channel criterion"),
        "criterion_uses_cache": Param("bool", doc="criterion similarity over text and keys (as the reference runs)"),
        "epochs": nonnegative("int", doc="training epochs"),
        "lr": positive(doc="AdamW learning rate"),
        "eps": positive(doc="AdamW epsilon"),
        "weight_decay": nonnegative(doc="AdamW decoupled weight decay"),
        "batch_size": positive("int", doc="images per batch"),
        "select_epoch": Param("bool", doc="keep the epoch with the best selection-split accuracy"),
        "search": Param("bool", doc="search beta/alpha on the selection split after training"),
        "device": DEVICE,
        "random_state": SEED,
    }

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, search_scale=(7.0, 7.0), search_steps=(200, 20),
                 feat_num: int = 900, w=(0.2, 0.8), criterion_uses_cache: bool = True, epochs: int = 30,
                 lr: float = 1e-3, eps: float = 1e-3, weight_decay: float = 0.1, batch_size: int = 256,
                 select_epoch: bool = True, search: bool = True, device: str = "cpu", random_state: int = 0):
        self.alpha = alpha
        self.beta = beta
        self.search_scale = search_scale
        self.search_steps = search_steps
        self.feat_num = feat_num
        self.w = w
        self.criterion_uses_cache = criterion_uses_cache
        self.epochs = epochs
        self.lr = lr
        self.eps = eps
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.select_epoch = select_epoch
        self.search = search
        self.device = device
        self.random_state = random_state

    @classmethod
    def paper_defaults(cls, dataset, shots):
        ape, cfg = APE_CONFIGS.get(dataset), APET_CONFIGS.get(dataset)
        if cfg is None:
            return {}
        eps = APET_EPS_FEW_SHOTS.get(dataset, cfg["eps"]) if shots and int(shots) <= 2 else cfg["eps"]
        return {"alpha": ape["alpha"], "beta": 1.0, "search_scale": list(ape["search_scale"][:2]),
                "search_steps": [200, 20], "feat_num": cfg["feat_num"], "w": [0.2, 0.8], "epochs": cfg["epochs"],
                "lr": cfg["lr"], "eps": eps}

    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "APET":
        import torch

        notes: list[str] = []
        keys, views_used = self._prepare(X, y, text, views, logit_scale, notes)
        crit = channel_criterion(self.text_weights_, keys, self.labels_, self.n_classes_, self.w,
                                 use_cache=bool(self.criterion_uses_cache))
        self.channels_ = keep_channels(crit, int(self.feat_num), notes)
        self.base_keys_ = keys
        has_val = X_val is not None and y_val is not None and len(y_val) > 0
        sel = self._selection(X_val, y_val) if has_val else None
        src = np.asarray(views) if views is not None else np.asarray(X)[None]  # [V, N, D], original row order
        res, vw, best_epoch, total = self._train(src, sel, torch.Generator().manual_seed(int(self.random_state)))
        self._set_adapter(res, vw)
        ab = (float(self.alpha), float(self.beta))
        selected: dict = {}
        if self.search and has_val:
            ab, selected = self._search_ab(sel, ab)
        elif self.search:
            notes.append("no selection split: the configs' initial alpha/beta used without search")
        if has_val and self.select_epoch and self.epochs:
            selected["epoch"] = best_epoch
        elif self.epochs:
            notes.append("last epoch kept (no selection split to pick the epoch on)")
        self.alpha_, self.beta_ = ab
        self.fit_info_ = {"selected": selected, "views_used": views_used, "notes": notes, "iterations": total,
                          "channels": int(self.channels_.shape[0])}
        return self

    def _adapted(self, res):
        """(keys + R_y, W + R) on the kept channels: the reference's ``APE_Training.forward``."""
        idx = self.channels_
        keys = self.base_keys_.index_add(1, idx, res[self.labels_])
        text_w = self.text_weights_.index_add(1, idx, res)
        return keys, text_w

    def _logits(self, f, keys, text_w, vw, alpha, beta):
        return self.scale_ * f @ text_w.T + alpha * self._cache_logits(f, keys, beta, vw)

    def _train(self, src, sel, gen):
        """AdamW on (R, v) with the reference's schedule; returns (R, v, kept epoch, iterations)."""
        import torch
        import torch.nn.functional as F

        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        n = src.shape[1]
        res = torch.nn.Parameter(torch.zeros(self.n_classes_, self.channels_.shape[0], device=self.device_))
        vw = torch.nn.Parameter(torch.ones(n, device=self.device_))
        opt = torch.optim.AdamW([vw, res], lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        total = int(self.epochs) * -(-n // int(self.batch_size))
        alpha, beta = float(self.alpha), float(self.beta)
        best = (-1, res.detach().clone(), vw.detach().clone(), int(self.epochs) - 1)
        step = 0
        for epoch in range(int(self.epochs)):
            vidx = T.draw_view_indices(src.shape[0], n, gen).numpy()
            feats = T.l2norm(T.as_tensor(src[vidx[self._order], self._order], self.device_))  # class-grouped rows
            for batch in T.minibatches(n, int(self.batch_size), gen):
                T.set_lr(opt, T.cosine_per_step(step, self.lr, total))
                keys, text_w = self._adapted(res)
                logits = self._logits(feats[batch], keys, text_w, vw, alpha, beta)
                loss = F.cross_entropy(logits, self.labels_[batch.to(self.device_)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if sel is not None and self.select_epoch:
                with torch.no_grad():
                    keys, text_w = self._adapted(res)
                    hits = T.accuracy_count(self._logits(sel[0], keys, text_w, vw, alpha, beta), sel[1])
                if hits > best[0]:  # strict: the first best epoch, as the reference's `acc > best_acc`
                    best = (hits, res.detach().clone(), vw.detach().clone(), epoch)
        if sel is None or not self.select_epoch:
            return res.detach(), vw.detach(), int(self.epochs) - 1, total
        return best[1], best[2], best[3], total

    def _set_adapter(self, res, vw):
        self.residual_, self.value_weights_ = res, vw
        self.keys_, self.adapted_text_ = self._adapted(res)

    def _search_ab(self, sel, default):
        fv, yv = sel
        zs = self.scale_ * fv @ self.adapted_text_.T
        betas = linear_grid(self.search_scale[0], self.search_steps[0])
        alphas = linear_grid(self.search_scale[1], self.search_steps[1])
        counts = search_counts(fv, self.keys_, zs, yv, betas, alphas, self.value_weights_[None], self.n_classes_,
                               self.k_, self.values_)[:, 0]
        best = first_best(counts.numpy())
        if best is None:
            return default, {}
        bi, ai = best
        return (alphas[ai], betas[bi]), {"alpha": alphas[ai], "beta": betas[bi],
                                         "val_acc": float(counts[bi, ai]) / len(yv)}

    def decision_function(self, X) -> np.ndarray:
        from featbench.heads import _torch as T  # lazy: torch loads on first fit

        X, _ = T.check_xy(X)

        def logits(x):
            return self._logits(T.l2norm(x), self.keys_, self.adapted_text_, self.value_weights_, self.alpha_,
                                self.beta_)

        rows = max(32, (1 << 21) // max(self.keys_.shape[0], 1))
        return T.to_numpy(T.batched_logits(logits, T.as_tensor(X, self.device_), rows))
