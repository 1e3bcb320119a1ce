"""CoOp and KgCoOp: prompt learners trained from cached image features and the frozen text tower.

CoOp (Zhou et al., IJCV 2022; KaiyangZhou/CoOp ``trainers/coop.py``): the prompt of class c is
``[SOS] ctx_1..ctx_M [tokens of c] "." [EOS]`` where the M context vectors are shared by all classes and
learned; the class weight t_c is the text tower's output at the EOS position through ln_final and the text
projection (``CLIP.encode_text``); logits = logit_scale * norm(f) norm(t)^T; cross-entropy. The image encoder
is frozen and unprompted, so f comes from the cache unchanged. Defaults and their sources:

- M = 16 context vectors drawn from N(0, 0.02^2), class token at the end, one shared context (not
  class-specific): ``scripts/coop/main.sh`` (NCTX=16, CTP=end, CSC=False), ``trainers/coop.py``
  (``nn.init.normal_(ctx_vectors, std=0.02)``).
- ``ctx_init`` "a photo of a": the context starts as the token embeddings of that phrase and M is its token
  count (CoOp counts words, ``len(ctx_init.split(" "))``; the two agree for phrases of one-token words).
- SGD lr 0.002, momentum 0.9, weight decay 5e-4 (``configs/trainers/CoOp/rn50*.yaml`` OPTIM; Dassl's
  OPTIM.MOMENTUM / WEIGHT_DECAY defaults), batch 32 (DATALOADER.TRAIN_X.BATCH_SIZE), Dassl's loader dropping
  the last incomplete batch when there are >= 32 images.
- Cosine over epochs with 1 warm-up epoch at constant 1e-5 (``featbench.heads._torch.cosine_with_warmup``,
  the traced Dassl schedule TaskRes uses too); the last epoch's context is evaluated.
- Epochs 50 (1 shot), 100 (2/4 shots), 200 (8/16 shots) — configs rn50_ep50 / rn50_ep100 / rn50 as the
  CoOp README assigns them; ImageNet 50 for every shot count (rn50_ep50).
- Class names: "_" replaced by " " (``name.replace("_", " ")`` in ``PromptLearner``).

KgCoOp (Yao et al., CVPR 2023; htyao89/KgCoOp@c43ccc3 ``KgCoOp/trainers/kgcoop.py``,
``configs/trainers/KgCoOp/rn50_ep100.yaml``, ``scripts/base2new_train.sh``, ``Dassl.ProGrad.pytorch/dassl/config/defaults.py``): CoOp initialised from "a photo of a" (CTX_INIT True hard-codes that phrase,
NCTX=4) plus ``lam * (1 - mean_c cos(t_c, t_c^clip))`` with lam = W = 8.0, toward the normalised hand-crafted
text classifier. For unit vectors 1 - cos = ||a - b||^2 / 2, so this is the paper's
lam' * mean_c ||norm(t_c) - norm(t_c^clip)||^2 with lam' = lam / 2: we follow the code, which produced the
published numbers. Its recipe: SGD lr 0.002 (Dassl momentum 0.9, weight decay 5e-4), cosine with 1 constant
warm-up epoch at 1e-5, batch 128, 100 epochs (the config's values for every dataset and shot count).

Feature-cache adaptations (also in the README's "What differs"):

- Augmentation: each epoch every image contributes one of its cached augmented views, drawn at random (the
  stand-in for Dassl's fresh random crop + flip); without views the plain features are used, noted.
- fp32 throughout (the references run CLIP in fp16 by default, PREC "fp16").
- KgCoOp's hand-crafted classifier is the cache's zero-shot classifier (normalised mean of the normalised
  template outputs) over the reference's templates: KgCoOp encodes one template per dataset
  (``CUSTOM_TEMPLATES``), so on ImageNet only the cache's "a photo of a {}." is used (``paper_templates``;
  the other 7 of the cache's 8 are dropped, noted on the row). The other catalog datasets' caches hold the
  same single template except DTD (cache "{} texture.", KgCoOp "a photo of a {}, a type of texture.").
- Not implemented: class-specific contexts (CSC) and "middle"/"front" class-token positions.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.paper import TEMPLATES_1, epochs_for_shots
from featbench.heads.spec import Param, nonnegative, positive

COOP_EPOCHS_BY_SHOTS: dict[int, int] = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
COOP_EPOCHS_BY_DATASET: dict[str, int] = {"imagenet": 50}
KGCOOP_DEFAULTS: dict = {"epochs": 100, "batch_size": 128, "lam": 8.0, "ctx_init": "a photo of a", "n_ctx": 4}

#: the hyperparameters every prompt learner here shares (CoOp, KgCoOp, CoCoOp)
PROMPT_PARAMS = {
    "n_ctx": positive("int", doc="number of shared context vectors (random init; a ctx_init phrase sets it to its token count)"),
    "ctx_init": Param("str", none_ok=True, doc="initialise the context from this phrase (e.g. 'a photo of a'); null/'' = random"),
    "epochs": nonnegative("int", doc="training epochs (0 = the initial prompt)"),
    "lr": positive(doc="SGD learning rate after warm-up"),
    "batch_size": positive("int", doc="images per SGD step"),
    "momentum": Param("float", low=0.0, high=1.0, high_open=True, doc="SGD momentum"),
    "weight_decay": nonnegative(doc="SGD weight decay (L2 on the context)"),
    "warmup_epochs": nonnegative("int", doc="epochs at the constant warm-up learning rate"),
    "warmup_lr": nonnegative(doc="warm-up learning rate"),
    "device": Param("str", doc="cpu, cuda, cuda:N or auto"),
    "random_state": Param("int", doc="seed of the context init, shuffling and view draws"),
}


def start_prompt_fit(head, X, y, text_tower, classnames):
    """What a prompt learner's fit starts with: (checked X, y, device, the tower on it, notes, the head's
    generator). Shared by CoOp, KgCoOp and CoCoOp."""
    from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

    require(text_tower, "the text tower that made the cache (the runner passes it as text_tower=)", head.name)
    require(classnames, "the class names (classnames=)", head.name)
    X, y = T.check_xy(X, y, len(classnames))
    dev = T.resolve_device(head.device)
    return X, y, dev, text_tower.on(dev), [], T.generator(head.random_state)


def prompt_pieces(tower, classnames, n_ctx, ctx_init, gen, notes, head="coop"):
    """The pieces of CoOp's prompts ``[SOS] ctx [tokens of c] "." [EOS]`` for ``classnames``.

    Returns (ctx init [M, W] or None when ``gen`` is None and there is no phrase, SOS embedding [1, W],
    suffix [C, L', W], eot [C]); L' ends at the batch's last EOT. Shared by CoOp, KgCoOp and CoCoOp.
    """
    import torch

    names = [str(c).replace("_", " ") for c in classnames]
    if any("_" in str(c) for c in classnames):
        notes.append("class names: '_' replaced by ' ' as CoOp does (the cache stores them raw)")
    phrase = (ctx_init or "").replace("_", " ").strip()
    if phrase:
        ids = tower.tokenize([phrase])
        m = int(tower.eot_positions(ids)[0]) - 1
        if m < 1:
            raise FeatbenchError(f"{head}.ctx_init={ctx_init!r}: the phrase has no tokens")
        if n_ctx is not None and int(n_ctx) != m:
            notes.append(f"n_ctx={n_ctx} ignored: ctx_init {phrase!r} sets {m} context tokens")
        prefix_text = phrase
    else:
        m = int(n_ctx)
        prefix_text = " ".join(["X"] * m)
    tokens = tower.tokenize([f"{prefix_text} {n}." for n in names])
    eot = tower.eot_positions(tokens)
    if int(eot.min()) < m + 2:
        raise FeatbenchError(f"head '{head}': {m} context tokens leave no room for the class names in the "
                             f"{tower.context_length}-token context; lower n_ctx")
    with torch.no_grad():
        emb = tower.embed(tokens[:, : int(eot.max()) + 1]).float()
    if phrase:
        ids0 = tower.tokenize([phrase])[0, 1:1 + m]
        if not torch.equal(tokens[:, 1:1 + m], ids0.expand(len(names), -1)):
            raise FeatbenchError(f"{head}.ctx_init={ctx_init!r}: its tokens change when a class name follows")
        ctx = emb[0, 1:1 + m].clone()
    elif gen is None:  # re-encoding names with a learned context: no init needed
        ctx = None
    else:
        ctx = torch.randn(m, tower.width, generator=gen).to(emb.device) * 0.02
    return ctx, emb[0, :1], emb[:, 1 + m:], eot


def prompt_features(tower, ctx, sos, suffix, eot):
    """Text features [C, D] of the prompts [SOS] ctx [class tokens . EOS] (one context shared by all classes)."""
    import torch

    prefix = torch.cat([sos, ctx], dim=0)  # the same for every class
    if tower.supports_shared_prefix():  # exact: the shared prefix's states are computed once
        return tower.encode_shared(prefix, suffix, eot)
    c = suffix.shape[0]
    return tower.encode(torch.cat([prefix.unsqueeze(0).expand(c, -1, -1), suffix], dim=1), eot)


class CoOp(Head):
    """Context optimisation: learn the prompt's context vectors through the frozen text tower."""

    name: ClassVar[str] = "coop"
    #: trained by fit (trainable_params): the M context vectors [M, token width]
    trained_attributes: ClassVar[tuple] = ("ctx_",)
    display_name: ClassVar[str] = "CoOp"  # what tables and plots show
    paper: ClassVar[str] = "Zhou et al. 2022, Learning to Prompt for Vision-Language Models (CoOp)"
    needs_text: ClassVar[bool] = False
    #: the runner passes ``text_tower=`` (featbench.texttower.TextTower) to heads that declare this
    needs_text_tower: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = False
    search_space: ClassVar[dict] = {}  # CoOp has no validation search
    paper_view_scale: ClassVar[tuple] = (0.08, 1.0)  # Dassl's RandomResizedCrop (featbench.heads.paper.DASSL_SCALE)
    paper_classname_style: ClassVar[str] = "clean"  # CoOp's datasets replace "_" with " "
    #: the classifier is the learned context + any class names through the tower (base-to-new: ``for_classes``)
    scores_unseen_classes: ClassVar[bool] = True
    hyperparams: ClassVar[dict] = dict(PROMPT_PARAMS)

    def __init__(self, n_ctx: int = 16, ctx_init: str | None = None, epochs: int = 200, lr: float = 2e-3,
                 batch_size: int = 32, momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, device: str = "cpu", random_state: int = 0):
        self.n_ctx = n_ctx
        self.ctx_init = ctx_init
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.device = device
        self.random_state = random_state

    @classmethod
    def paper_defaults(cls, dataset, shots):
        d: dict = {}
        if shots is not None:
            d["epochs"] = epochs_for_shots(COOP_EPOCHS_BY_SHOTS, shots)
        if dataset in COOP_EPOCHS_BY_DATASET:
            d["epochs"] = COOP_EPOCHS_BY_DATASET[dataset]
        return d

    # -- the prompt ------------------------------------------------------------------------------------
    def _prompts(self, tower, classnames, gen, notes):
        return prompt_pieces(tower, classnames, self.n_ctx, self.ctx_init, gen, notes, self.name)

    @staticmethod
    def _features(tower, ctx, sos, suffix, eot):
        return prompt_features(tower, ctx, sos, suffix, eot)

    # -- estimator API ---------------------------------------------------------------------------------
    def _penalty(self, t_unit):
        return None

    def _prepare_penalty(self, text, dev, notes) -> None:
        pass

    def fit(self, X, y, *, text_tower=None, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None,
            classnames=None, extra=None) -> "CoOp":
        import torch
        import torch.nn.functional as F

        from featbench.heads import _torch as T
        from featbench.heads.prolip import training_views

        X, y, dev, tower, notes, gen = start_prompt_fit(self, X, y, text_tower, classnames)
        ctx0, sos, suffix, eot = self._prompts(tower, classnames, gen, notes)
        self._prepare_penalty(text, dev, notes)
        src = training_views(np.asarray(X, np.float32), views, dev, self.name, "views", notes,
                             "no augmented views in cache: trained on plain features")
        yt = T.as_labels(y, dev)
        scale = float(logit_scale)
        epochs, bs, n = int(self.epochs), int(self.batch_size), X.shape[0]
        ctx = torch.nn.Parameter(ctx0)
        opt = torch.optim.SGD([ctx], lr=float(self.lr), momentum=float(self.momentum),
                              weight_decay=float(self.weight_decay), dampening=0.0, nesterov=False)
        drop_last = n >= bs
        lrs, losses = [], []
        for epoch in range(epochs):
            lr = T.cosine_with_warmup(epoch, float(self.lr), epochs, int(self.warmup_epochs), float(self.warmup_lr))
            T.set_lr(opt, lr)
            lrs.append(lr)
            vidx = T.draw_view_indices(src.shape[0], n, gen).to(dev)
            feats = T.l2norm(T.gather_views(src, vidx).float())
            total, steps = torch.zeros((), dtype=T.accumulator_dtype(dev), device=dev), 0  # summed on the device
            for idx in T.minibatches(n, bs, gen, drop_last=drop_last, device=dev):
                t = T.l2norm(self._features(tower, ctx, sos, suffix, eot))
                loss = F.cross_entropy(scale * feats[idx] @ t.T, yt[idx])
                pen = self._penalty(t)
                if pen is not None:
                    loss = loss + pen
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
                steps += 1
            losses.append(total)
        losses = [float(t) / max(steps, 1) for t in losses]  # one sync per fit
        with torch.no_grad():
            self.weights_ = T.l2norm(self._features(tower, ctx.detach(), sos, suffix, eot).float())
        self.ctx_ = ctx.detach()
        self.text_tower_ = tower
        self.logit_scale_ = scale
        self.n_classes_ = len(classnames)
        self.lrs_ = lrs
        self.losses_ = losses
        views_used = int(src.shape[0]) if views is not None else 0
        self.fit_info_ = {"selected": {}, "views_used": views_used, "notes": notes, "trainable": ["ctx"],
                          "n_ctx": int(ctx0.shape[0]), "epochs": epochs, "tokens_run": int(eot.max()) + 1,
                          "shared_prefix": bool(tower.supports_shared_prefix()),
                          "text_tower_sha256": getattr(tower, "sha256", "")[:16],
                          "lr_first_last": [lrs[0], lrs[-1]] if lrs else []}
        return self

    def weights_for(self, classnames) -> np.ndarray:
        """Normalised class weights [C', D] of any class names with the learned context (unseen classes too:
        a prompt learner's classifier is a function of the names, which base-to-new evaluation uses)."""
        import torch

        from featbench.heads import _torch as T

        _, sos, suffix, eot = self._prompts(self.text_tower_, classnames, None, [])
        with torch.no_grad():
            return T.to_numpy(T.l2norm(self._features(self.text_tower_, self.ctx_, sos, suffix, eot).float()))

    def for_classes(self, text=None, classnames=None, extra=None) -> "CoOp":
        """A copy scoring ``classnames`` with the learned context (base-to-new's new classes)."""
        import copy

        from featbench.heads import _torch as T

        if not classnames:
            raise FeatbenchError(f"head '{self.name}' needs the class names of the classes to score")
        other = copy.copy(self)
        other.weights_ = T.as_tensor(self.weights_for(list(classnames)), self.weights_.device)
        other.n_classes_ = len(classnames)
        return other

    def decision_function(self, X) -> np.ndarray:
        from featbench.heads import _torch as T

        return T.cosine_decision(X, self.weights_, self.logit_scale_)

    def class_weights(self) -> np.ndarray:
        """The learned prompts' text features, normalised [C, D]."""
        from featbench.heads import _torch as T

        return T.to_numpy(self.weights_)


class KgCoOp(CoOp):
    """CoOp from "a photo of a" with a penalty keeping the learned class weights near the hand-crafted ones."""

    name: ClassVar[str] = "kgcoop"
    display_name: ClassVar[str] = "KgCoOp"  # what tables and plots show
    paper: ClassVar[str] = "Yao et al. 2023, Visual-Language Prompt Tuning with Knowledge-guided Context Optimization"
    needs_text: ClassVar[bool] = True
    paper_templates: ClassVar[dict] = TEMPLATES_1  # CUSTOM_TEMPLATES: "a photo of a {}." alone on ImageNet
    hyperparams: ClassVar[dict] = {**PROMPT_PARAMS,
                                   "lam": nonnegative(doc="weight of 1 - mean cos(t_c, t_c^clip) (the reference's W)")}

    def __init__(self, n_ctx: int = 4, ctx_init: str | None = "a photo of a", epochs: int = 100, lr: float = 2e-3,
                 batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, lam: float = 8.0, device: str = "cpu", random_state: int = 0):
        super().__init__(n_ctx=n_ctx, ctx_init=ctx_init, epochs=epochs, lr=lr, batch_size=batch_size,
                         momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                         warmup_lr=warmup_lr, device=device, random_state=random_state)
        self.lam = lam

    @classmethod
    def paper_defaults(cls, dataset, shots):
        return dict(KGCOOP_DEFAULTS)

    def _prepare_penalty(self, text, dev, notes) -> None:
        from featbench.heads import _torch as T

        require(text, "text features (the cache's /text group) for the hand-crafted classifier", self.name)
        self.clip_weights_ = T.zeroshot_weights(text, dev)
        self.lam_ = float(self.lam)

    def _penalty(self, t_unit):
        if self.lam_ == 0.0:
            return None
        return self.lam_ * (1.0 - (t_unit * self.clip_weights_).sum(-1).mean())


__all__ = ["CoOp", "KgCoOp", "COOP_EPOCHS_BY_SHOTS", "KGCOOP_DEFAULTS", "PROMPT_PARAMS", "prompt_pieces",
           "prompt_features"]
