"""TransCLIP: transductive inference on top of any head's predictions (a GMM on the unlabeled test features with
a Laplacian over their k nearest neighbours and a KL term toward the base head's, by default zero-shot CLIP's,
predictions).

Zanella, Gérin & Ben Ayed, NeurIPS 2024, "Boosting Vision-Language Models with Transduction";
MaxZanella/transduction-for-vlms@6a9e8f3ba57a11d1c5affe248a82df56dbc7f1b8 ``TransCLIP_solver/TransCLIP.py``,
``TransCLIP_solver/TransCLIP_utils.py``, ``main.py``, ``scripts/transclip_{zs,fs}.sh``, ``scripts/fewshot_atop.sh``.
What the reference computes on L2-normalised features q_i of the N query (test) images and K classes:

- ŷ_i: the base predictions, softmax(100 q_i · t_c) of zero-shot CLIP (``prepare_objects``/``init_z``), or of
  another method's prototypes or logits ("On-top"); z starts at ŷ.
- Gaussian components with means mu_k (unit norm) and one diagonal variance shared by all classes, started at
  1/d per dimension (``init_sigma``); mu_k starts at the normalised sum of class k's shots (few-shot), else at
  the normalised mean of ŷ_ik q_i over the 8 queries most confident for k (``init_mu``).
- W: each query's 3 nearest queries by cosine similarity (the top-4 minus the first, taken to be itself;
  ``build_affinity_matrix``); in the few-shot setting the shots get rows too (their top-4 queries minus the first).
- 10 outer iterations (``max_iter``), each: log-likelihood l_ik = -1/2 Σ_d (q_id - mu_kd)^2 / var_d; 5 z-updates
  z_i ∝ ŷ_i^λ · exp((l_i + 50/(2·3) · (Wᵀz + Wz)_i) / 50) (``update_z``); then the weighted means (unit norm) and
  the shared variance (``update_mu``, ``update_sigma``); an 11th log-likelihood and z-update end the loop.
- Zero-shot ("TransCLIP-ZS", and "On-top" of a few-shot method): λ = 1, no shots. Few-shot ("TransCLIP-FS"):
  λ = 0.5; the shots enter the means and variance with weight γ·50/N_shots against 1/N for the queries and have
  fixed one-hot z in the Laplacian; γ runs through [0.002, 0.01, 0.02, 0.2] *continuing from the previous γ's
  state*, and the γ whose z scores best on the few-shot val set (each val image takes the z of its nearest query)
  is kept (``get_parameters``; the val set holds min(K, 4) images per class: featbench's selection split).

featbench: ``base`` names the head whose ``predict_proba`` is ŷ (fitted on the same shots first; zero-shot by
default); ``mode`` "auto" runs TransCLIP-FS on the zero-shot base and TransCLIP-ZS on top of any trained base, as
the reference's scripts do. The transductive set is the context's ``X_transductive`` (the unlabeled test features
the protocol scores, ``Head.transductive``); ``decision_function`` returns log z for those rows (any contiguous
block of them) and refuses other features.

Deviations (also in the README's "What differs"):

- Few-shot Laplacian: the reference's ``update_z`` stacks the query z *before* the shots' one-hot rows while W
  lists the shots' rows first, so the neighbour sums of the first N_shots queries read other rows' z. featbench
  follows the code by default (it made the published numbers); ``affinity="aligned"`` matches rows to samples
  and keeps each shot's nearest query (the paper's Laplacian).
- Shots: test-transform features (the reference passes ImageNet's shots once through its augmenting transform,
  RandomResizedCrop(0.5, 1) + flip, and the other datasets' through the test transform).
- The zero-shot base averages the cache's templates (the reference encodes one template per dataset, ImageNet
  "a photo of a {}."); a base head gets transclip's inputs (the cache's templates and views), not its own paper
  set-up; bases that need the text tower (coop, kgcoop, cocoop) are not supported.
- fp32 on any device (the reference runs on CUDA); the k-NN graph is built in row chunks (the reference builds the
  dense N x N similarity), the log-likelihood and variance use the expanded square (same values up to rounding).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads import get_head, get_head_class
from featbench.heads.base import Head
from featbench.heads.paper import FEWSHOT_VAL
from featbench.heads.spec import DEVICE, SEED, Param, positive, nonnegative

#: the reference's fixed constants (TransCLIP_utils.py): z temperature, ZS init confident queries
TEMPERATURE = 50.0
N_CONFIDENT = 8
FS_LAMBDA, FS_GAMMAS = 0.5, (0.002, 0.01, 0.02, 0.2)  # get_parameters, few-shot
ZS_LAMBDA, ZS_GAMMAS = 1.0, (0.0,)  # get_parameters, zero-shot
KNN_CHUNK = 2048  # rows of the similarity matrix held at once


# ----------------------------------------------------------------------------------------------------
# the solver, on normalised float tensors
# ----------------------------------------------------------------------------------------------------
def knn_graph(rows, cols, k: int, drop_first):
    """(W, Wᵀ) as sparse [R, N] / [N, R]: each row's k most similar columns (cosine), without its first match
    where ``drop_first[r]`` (a query's own column); the values are the similarities."""
    import torch

    idx, val = [], []
    for s in range(0, rows.shape[0], KNN_CHUNK):
        top = (rows[s:s + KNN_CHUNK] @ cols.T).topk(k + 1, dim=1)
        drop = drop_first[s:s + KNN_CHUNK, None]
        idx.append(torch.where(drop, top.indices[:, 1:], top.indices[:, :k]))
        val.append(torch.where(drop, top.values[:, 1:], top.values[:, :k]))
    idx, val = torch.cat(idx), torch.cat(val)
    r = torch.arange(rows.shape[0], device=rows.device).repeat_interleave(k)
    W = torch.sparse_coo_tensor(torch.stack([r, idx.flatten()]), val.flatten(), (rows.shape[0], cols.shape[0]),
                                check_invariants=False).coalesce()
    return W, W.t().coalesce()


def neighbour_sums(graph, zf, q0: int, n: int):
    """(Wᵀ zf + W zf[q0:q0+n])[rows q0..q0+n]: the Laplacian term of update_z, with the rows of W and of the
    stacked zf paired by position, as the reference's matrix products pair them."""
    import torch

    W, Wt = graph
    return torch.sparse.mm(Wt, zf) + torch.sparse.mm(W, zf[q0:q0 + n])[q0:q0 + n]


def gmm_log_likelihood(q, mu, var):
    """l_ik = -1/2 Σ_d (q_id - mu_kd)^2 / var_d [N, K] (no normaliser: the variance is shared)."""
    inv = 1.0 / var
    return -0.5 * ((q * q) @ inv[:, None] - 2.0 * q @ (mu * inv).T + ((mu * mu) @ inv)[None])


def update_z(ll, prior, z, graph, onehot, q0: int, k: int, iters: int):
    """``iters`` rounds of z_i ∝ prior_i · exp((l_i + 50/(2k) (Wᵀz + Wz)_i) / 50); shots keep one-hot z.

    The stacked z has the query rows at [q0, q0 + N) and the shots' one-hot rows around them (q0 = 0: after)."""
    import torch

    n = ll.shape[0]
    zf = z.clone() if onehot is None else (torch.cat([z, onehot]) if q0 == 0 else torch.cat([onehot, z]))
    for _ in range(iters):
        logit = ll + TEMPERATURE / (2 * k) * neighbour_sums(graph, zf, q0, n)
        logit = logit - logit.max(dim=1, keepdim=True).values
        new = prior * torch.exp(logit / TEMPERATURE)
        zf[q0:q0 + n] = new / new.sum(dim=1, keepdim=True)
    return zf[q0:q0 + n]


def update_mu(sums, n: int, shot_sums, n_shots: int, gamma: float):
    """Unit-norm means from the class sums Σ_i z_ik q_i (weight 1/N) and of the shots (weight γ·50/N_shots)."""
    from featbench.heads._torch import l2norm  # lazy: torch loads only when a head fits

    mu = sums / n
    if shot_sums is not None:
        mu = mu + gamma * TEMPERATURE / n_shots * shot_sums
    return l2norm(mu)  # the reference divides by the total weight first: a per-class scale the norm removes


def spread(x, w, sums, mu):
    """Σ_i Σ_k w_ik (x_i - mu_k)^2 per dimension [D], with sums = wᵀx [K, D] (expanded square)."""
    return w.sum(1) @ (x * x) - 2.0 * (mu * sums).sum(0) + w.sum(0) @ (mu * mu)


def update_var(q, z, sums, mu, support, onehot, shot_sums, gamma: float):
    """The shared diagonal variance: the weighted mean over (sample, class) of (x - mu_k)^2."""
    var = spread(q, z, sums, mu) / q.shape[0]
    total = z.sum() / q.shape[0]
    if onehot is not None and gamma > 0:
        c = gamma * TEMPERATURE / support.shape[0]
        var = var + c * spread(support, onehot, shot_sums, mu)
        total = total + c * onehot.sum()
    return var / total


def init_mu(q, y_hat, support, onehot):
    """Shots: the normalised class sums; zero-shot: the normalised ŷ-weighted mean of the 8 most confident queries."""
    import torch

    from featbench.heads._torch import l2norm  # lazy: torch loads only when a head fits

    if onehot is not None:
        return l2norm(onehot.T @ support)
    top = y_hat.topk(min(N_CONFIDENT, q.shape[0]), dim=0).indices  # [8, K]
    w = torch.gather(y_hat, 0, top)  # [8, K]
    return l2norm((w[:, :, None] * q[top]).mean(0))


def transclip_solve(q, y_hat, *, support=None, support_labels=None, val=None, val_labels=None, lam: float = 1.0,
                    gammas=(0.0,), iters: int = 10, z_iters: int = 5, n_neighbors: int = 3,
                    affinity: str = "reference"):
    """TransCLIP on normalised query features q [N, D] with base probabilities y_hat [N, K].

    With shots (support [S, D], labels [S]) every γ of ``gammas`` continues from the previous one's state and
    the z that scores best on (val, val_labels) through each val image's nearest query wins (first best on ties).
    Returns (z [N, K], info: selected γ and its val accuracy).
    """
    import torch

    n, k_cls = y_hat.shape
    if n <= n_neighbors:
        raise FeatbenchError(f"head 'transclip': {n} transductive images; it needs more than n_neighbors={n_neighbors}")
    onehot = None if support is None else torch.nn.functional.one_hot(support_labels, k_cls).float()
    rows = q if support is None else torch.cat([support, q])
    drop = torch.ones(rows.shape[0], dtype=torch.bool, device=q.device)
    if support is not None and affinity == "aligned":
        drop[: support.shape[0]] = False  # a shot is not among the queries: keep its nearest one
    graph = knn_graph(rows, q, n_neighbors, drop)
    q0 = 0 if (support is None or affinity == "reference") else support.shape[0]
    prior = y_hat ** lam
    z, mu = y_hat.clone(), init_mu(q, y_hat, support, onehot)
    shot_sums = None if onehot is None else onehot.T @ support
    n_shots = 0 if support is None else support.shape[0]
    var = torch.full((q.shape[1],), 1.0 / q.shape[1], device=q.device)
    nearest = None if val is None else (val @ q.T).argmax(dim=1)
    best, info = None, {"gamma": None, "val_acc": None}
    for gamma in gammas:
        for it in range(iters + 1):
            z = update_z(gmm_log_likelihood(q, mu, var), prior, z, graph, onehot, q0, n_neighbors, z_iters)
            if it == iters:
                break
            sums = z.T @ q  # [K, D]: shared by the means and the variance
            mu = update_mu(sums, n, shot_sums, n_shots, gamma)
            var = update_var(q, z, sums, mu, support, onehot, shot_sums, gamma)
        if nearest is None:
            best = z
            continue
        acc = float((z[nearest].argmax(dim=1) == val_labels).float().mean()) * 100.0
        if best is None or acc > info["val_acc"]:
            best, info = z.clone(), {"gamma": float(gamma), "val_acc": acc}
    return best, info


# ----------------------------------------------------------------------------------------------------
# the head
# ----------------------------------------------------------------------------------------------------
def resolve_mode(mode: str, base) -> str:
    """"fs" or "zs": "auto" is TransCLIP-FS on the zero-shot base, TransCLIP-ZS on top of a trained base."""
    if mode != "auto":
        return mode
    return "fs" if base in (None, "zeroshot") else "zs"


class TransCLIP(Head):
    """Transductive GMM + Laplacian + KL-to-the-base inference over the unlabeled test features."""

    display_name = "TransCLIP"  # what tables and plots show

    name: ClassVar[str] = "transclip"
    #: trained by fit (trainable_params): none of its own (z, means, variances are solved per test set)
    trained_attributes: ClassVar[tuple] = ()
    paper: ClassVar[str] = "Zanella et al. 2024, Boosting Vision-Language Models with Transduction (TransCLIP)"
    needs_text: ClassVar[bool] = True  # the zero-shot base, and every base's class space
    uses_views: ClassVar[bool] = True  # for the base head (TransCLIP itself reads none)
    searches_internally: ClassVar[bool] = True  # TransCLIP-FS picks γ on the selection split
    transductive: ClassVar[bool] = True
    search_space: ClassVar[dict] = {}
    paper_selection: ClassVar[str] = FEWSHOT_VAL  # min(K, 4) val images per class (ImageNet: held-out train)
    hyperparams: ClassVar[dict] = {
        "base": Param("any", doc="the head whose predict_proba is the prior ŷ (a head name or a Head; zeroshot)"),
        "mode": Param("str", choices=("auto", "fs", "zs"), doc="fs: use the shots (TransCLIP-FS), zs: the prior "
                      "only; auto: fs on the zero-shot base, zs on top of a trained base"),
        "lam": nonnegative(none_ok=True, doc="KL weight λ (null: the paper's 0.5 for fs, 1 for zs)"),
        "gammas": Param("floats", low=0.0, none_ok=True, doc="shot weights γ tried in turn (null: the paper's)"),
        "iters": nonnegative("int", doc="outer iterations (means and variance updates)"),
        "z_iters": positive("int", doc="z updates per outer iteration"),
        "n_neighbors": positive("int", doc="neighbours per row of the affinity graph"),
        "affinity": Param("str", choices=("reference", "aligned"), doc="few-shot Laplacian rows as the reference "
                          "code stacks them, or aligned with their samples (the paper's)"),
        "device": DEVICE,
        "random_state": SEED,
        "paper_context": Param("any", doc="(dataset, shots) for the base head's paper defaults; set by the runner"),
    }
    runtime_params = Head.runtime_params + ("paper_context",)

    def __init__(self, base="zeroshot", mode: str = "auto", lam: float | None = None, gammas=None, iters: int = 10,
                 z_iters: int = 5, n_neighbors: int = 3, affinity: str = "reference", device: str = "cpu",
                 random_state: int = 0, paper_context=None):
        self.base = base
        self.mode = mode
        self.lam = lam
        self.gammas = gammas
        self.iters = iters
        self.z_iters = z_iters
        self.n_neighbors = n_neighbors
        self.affinity = affinity
        self.device = device
        self.random_state = random_state  # unused (deterministic); accepted so runners can pass it to any head
        self.paper_context = paper_context

    def hyperparameters(self):
        hp = super().hyperparameters()
        if isinstance(hp.get("base"), Head):  # keep result rows JSON-friendly
            hp["base"] = type(hp["base"]).__name__
        return hp

    @classmethod
    def uses_selection_split(cls, params) -> bool:
        """TransCLIP-FS selects γ on the split; a base head that searches (linear-probe, tip-adapter) gets it too."""
        base = params.get("base", "zeroshot")
        if resolve_mode(params.get("mode", "auto"), base) == "fs":
            return True
        return isinstance(base, str) and get_head_class(base).uses_selection_split({})

    # -- pieces ----------------------------------------------------------------------------------------
    def _fit_base(self, X, y, context) -> Head:
        base = self.base if self.base is not None else "zeroshot"
        if isinstance(base, Head):
            return base if hasattr(base, "fit_info_") else base.fit(X, y, **context)
        cls = get_head_class(str(base))
        if cls.needs_text_tower or cls.transductive:
            raise FeatbenchError(f"transclip.base={base}: a base head must score from the cached features alone "
                                 "(no text tower, not transductive); pick another base")
        kw = {k: getattr(self, k) for k in ("device", "random_state") if k in cls.param_names()}
        dataset, shots = tuple(self.paper_context or (None, None))
        return get_head(str(base), dataset=dataset, shots=shots, **kw).fit(X, y, **context)

    def _settings(self, mode: str) -> tuple[float, tuple]:
        lam = self.lam if self.lam is not None else (FS_LAMBDA if mode == "fs" else ZS_LAMBDA)
        gammas = tuple(self.gammas) if self.gammas else (FS_GAMMAS if mode == "fs" else ZS_GAMMAS)
        return float(lam), gammas

    def _transduce(self, Xq, X, y, X_val, y_val, mode):
        """Run the solver on Xq [N, D]; returns (z [N, K] numpy, info)."""
        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

        dev = T.resolve_device(self.device)
        q = T.l2norm(T.as_tensor(Xq, dev))
        y_hat = T.as_tensor(self.base_.predict_proba(Xq), dev)
        lam, gammas = self._settings(mode)
        shots = {}
        if mode == "fs":
            shots = dict(support=T.l2norm(T.as_tensor(X, dev)), support_labels=T.as_labels(y, dev))
        if mode == "fs" and len(gammas) > 1:  # γ is picked on the selection split
            if X_val is None or y_val is None:
                raise FeatbenchError("head 'transclip' (few-shot mode) needs the selection split (X_val, y_val) to pick "
                                     "γ; the protocol passes it, or set mode='zs' or a single gamma")
            shots.update(val=T.l2norm(T.as_tensor(X_val, dev)), val_labels=T.as_labels(y_val, dev))
        z, info = transclip_solve(q, y_hat, lam=lam, gammas=gammas, iters=int(self.iters), z_iters=int(self.z_iters),
                                  n_neighbors=int(self.n_neighbors), affinity=self.affinity, **shots)
        return T.to_numpy(z), info

    # -- estimator API ---------------------------------------------------------------------------------
    def fit(self, X, y, *, X_transductive=None, X_val=None, y_val=None, **context) -> "TransCLIP":
        """Fit the base on the shots, then (given ``X_transductive``) adapt to those unlabeled features."""
        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

        X, y = T.check_xy(X, y)
        self.base_ = self._fit_base(X, y, {**context, "X_val": X_val, "y_val": y_val})
        mode = resolve_mode(self.mode, self.base if not isinstance(self.base, Head) else self.base.name)
        base_info = dict(getattr(self.base_, "fit_info_", {}) or {})
        setting = "TransCLIP-FS: the shots enter" if mode == "fs" else "TransCLIP-ZS: the prior only"
        notes = [f"transclip on top of {self.base_.name} ({setting})"]
        notes += [str(n) for n in base_info.get("notes") or []]
        if not type(self.base_).uses_views:
            notes.append(f"views: none used ({self.base_.name} reads no augmented views; transclip neither)")
        self.transductive_, self.z_, info = None, None, {"gamma": None, "val_acc": None}
        if X_transductive is not None:
            self.transductive_ = np.asarray(X_transductive)
            self.z_, info = self._transduce(self.transductive_, X, y, X_val, y_val, mode)
            notes.append(f"transductive: adapted to {len(self.transductive_)} unlabeled test images")
        lam, gammas = self._settings(mode)
        selected = {f"base.{k}": v for k, v in (base_info.get("selected") or {}).items()}
        if mode == "fs" and len(gammas) > 1:
            selected["gamma"] = info["gamma"]
        self.fit_info_ = {"selected": selected, "views_used": base_info.get("views_used", 0), "notes": notes,
                          "mode": mode, "lam": lam, "gammas": list(gammas), "val_acc": info["val_acc"]}
        return self

    def trainable_params(self) -> int | None:
        """The base head's count: TransCLIP's own state is solved on the test set, not trained by gradient."""
        super().trainable_params()  # the fitted check
        return self.base_.trainable_params()

    def _block(self, X) -> int | None:
        """Where X sits in the transductive set as a contiguous block of rows (the protocol scores in chunks)."""
        Q = self.transductive_
        if Q is None or X.ndim != 2 or X.shape[1] != Q.shape[1] or not 0 < X.shape[0] <= Q.shape[0]:
            return None
        if X is Q:
            return 0
        for start in np.flatnonzero((Q == X[0]).all(axis=1)):
            if start + X.shape[0] <= Q.shape[0] and np.array_equal(Q[start:start + X.shape[0]], X):
                return int(start)
        return None

    def decision_function(self, X) -> np.ndarray:
        """log z of the rows of X, which must be (a block of) the transductive set the head was fitted on."""
        X = np.asarray(X)
        start = self._block(X)
        if start is None:
            raise FeatbenchError("head 'transclip' is transductive: it scores only the X_transductive it was fitted "
                                 "on (or a block of its rows); fit it with X_transductive=<these features>")
        z = self.z_[start:start + X.shape[0]]
        return np.log(np.maximum(z, np.finfo(np.float32).tiny))


__all__ = ["TransCLIP", "transclip_solve", "knn_graph", "neighbour_sums", "gmm_log_likelihood", "update_z",
           "update_mu", "update_var", "spread", "init_mu", "resolve_mode", "FS_GAMMAS", "FS_LAMBDA", "ZS_GAMMAS",
           "ZS_LAMBDA"]
