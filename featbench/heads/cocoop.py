"""CoCoOp: CoOp whose context is shifted per image by a small meta-net on the image feature.

Zhou et al., CVPR 2022, "Conditional Prompt Learning for Vision-Language Models";
KaiyangZhou/CoOp@ff61507c790454bce7c5052c3ac39e60772f1f89 ``trainers/cocoop.py`` and
``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` (the config ``scripts/cocoop/base2new_train.sh``
and ``xd_train.sh`` run). What the reference computes:

- ``PromptLearner``: M context vectors ``ctx`` (CoOp's init: the token embeddings of ``CTX_INIT``, else
  N(0, 0.02^2)) and ``meta_net`` = Linear(D, D // 16) -> ReLU -> Linear(D // 16, W), both with bias, on the
  *normalised* image feature f (``CustomCLIP.forward`` normalises before calling the prompt learner). Image i's
  context is ``ctx + meta_net(f_i)`` (one bias vector added to every context token), and its prompts are
  ``[SOS] ctx_i [tokens of c] "." [EOS]`` for every class c.
- ``CustomCLIP.forward``: t_{i,c} = the text tower's EOS output of image i's prompt for class c (through
  ln_final and the projection), logits_{i,c} = logit_scale * f_i . norm(t_{i,c}); cross-entropy. Only the prompt
  learner (ctx and meta_net) trains; it is the same computation at test time, image by image.
- Defaults (the config, plus Dassl's defaults for what it leaves out): N_CTX 4, CTX_INIT "a photo of a", SGD
  lr 0.002 (OPTIM.MOMENTUM 0.9, OPTIM.WEIGHT_DECAY 5e-4 on every prompt-learner parameter), MAX_EPOCH 10, batch 1
  (DATALOADER.TRAIN_X.BATCH_SIZE), cosine per epoch with WARMUP_EPOCH 1 at the constant WARMUP_CONS_LR 1e-5
  (``featbench.heads._torch.cosine_with_warmup``), transforms random_resized_crop (Dassl's scale (0.08, 1)) +
  flip; the last epoch's prompt learner is evaluated. The same config for every dataset and shot count (the
  paper reports 16 shots). Class names: "_" replaced by " ".
- Base-to-new: the classifier is a function of the class names, so a fitted head scores any classes
  (``for_classes``): the new classes' prompts with the learned ctx and meta-net.

Implementation: the prompts of a whole minibatch go through the text tower in one call, [B*C, L] token
sequences cut after the batch's last EOT (exact under the causal mask, ``featbench.texttower``); the reference
loops over the images of a batch. The prompt pieces are CoOp's (``featbench.heads.coop.prompt_pieces``). Each
training step therefore runs the text tower forward and backward over C prompts per image, and scoring runs it
forward over C prompts per test image: the README states the measured cost.

Feature-cache adaptations (also in the README's "What differs"): each epoch every image contributes one of its
cached augmented views, drawn at random (the stand-in for Dassl's fresh crop + flip; without views the plain
features are used, noted); fp32 throughout (the config's PREC is "fp16", meta_net included); the meta-net is
initialised like ``nn.Linear`` but from the head's own seeded generator.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head
from featbench.heads.coop import PROMPT_PARAMS, prompt_pieces, start_prompt_fit
from featbench.heads.paper import DASSL_SCALE

#: prompt sequences per text-tower call when scoring (images per call = this // classes, at least 1)
EVAL_SEQUENCES = 4096


def meta_net_init(dim: int, width: int, gen, device):
    """CoCoOp's meta-net [W1 (D/16, D), b1, W2 (width, D/16), b2], drawn like ``nn.Linear`` from ``gen``."""
    import torch

    hidden = dim // 16
    if hidden < 1:
        raise FeatbenchError(f"head 'cocoop': the meta-net's hidden width is D // 16 and D = {dim} gives 0; "
                             "use features with D >= 16")

    def uniform(shape, fan_in):  # kaiming_uniform(a=sqrt(5)) and nn.Linear's bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return torch.nn.Parameter(((torch.rand(*shape, generator=gen) * 2 - 1) * bound).to(device))

    return [uniform((hidden, dim), dim), uniform((hidden,), dim), uniform((width, hidden), hidden),
            uniform((width,), hidden)]


def meta_net(params, f):
    """Linear -> ReLU -> Linear on the normalised image features f [B, D]: one context shift per image [B, W]."""
    import torch.nn.functional as F

    w1, b1, w2, b2 = params
    return F.linear(F.relu(F.linear(f, w1, b1)), w2, b2)


def conditioned_text(tower, ctx, sos, suffix, eot):
    """Text features [B, C, D] of the prompts [SOS] ctx[b] [class c tokens . EOS], ctx [B, M, W].

    All B*C prompts go through the tower in one call ([B*C, L] sequences, cut after the last EOT).
    """
    import torch

    b, m, w = ctx.shape
    c, s, _ = suffix.shape
    prompts = torch.cat([sos.reshape(1, 1, 1, w).expand(b, c, 1, w), ctx[:, None].expand(b, c, m, w),
                         suffix[None].expand(b, c, s, w)], dim=2)
    feats = tower.encode(prompts.reshape(b * c, 1 + m + s, w), eot.repeat(b))
    return feats.reshape(b, c, -1)


class CoCoOp(Head):
    """Conditional context optimisation: CoOp's context plus a per-image shift from a meta-net."""

    display_name = "CoCoOp"  # what tables and plots show

    name: ClassVar[str] = "cocoop"
    #: trained by fit (trainable_params): the context [M, width] and the meta-net's W1, b1, W2, b2
    trained_attributes: ClassVar[tuple] = ("ctx_", "meta_net_")
    paper: ClassVar[str] = "Zhou et al. 2022, Conditional Prompt Learning for Vision-Language Models (CoCoOp)"
    needs_text: ClassVar[bool] = False
    #: the runner passes ``text_tower=`` (featbench.texttower.TextTower) to heads that declare this
    needs_text_tower: ClassVar[bool] = True
    uses_views: ClassVar[bool] = True
    searches_internally: ClassVar[bool] = False
    search_space: ClassVar[dict] = {}  # CoCoOp has no validation search
    paper_view_scale: ClassVar[tuple] = DASSL_SCALE  # Dassl's random_resized_crop
    paper_classname_style: ClassVar[str] = "clean"  # CoOp's datasets replace "_" with " "
    #: the classifier is the learned context + meta-net + any class names through the tower (``for_classes``)
    scores_unseen_classes: ClassVar[bool] = True
    hyperparams: ClassVar[dict] = dict(PROMPT_PARAMS)

    def __init__(self, n_ctx: int = 4, ctx_init: str | None = "a photo of a", epochs: int = 10, lr: float = 2e-3,
                 batch_size: int = 1, momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
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

    # -- the model -------------------------------------------------------------------------------------
    def _logits(self, tower, ctx, meta, f, sos, suffix, eot):
        """logit_scale * f_i . norm(t_{i,c}) [B, C] for normalised image features f [B, D]."""
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

        shifted = ctx[None] + meta_net(meta, f)[:, None]  # [B, M, W]: one shift per image, on every token
        t = T.l2norm(conditioned_text(tower, shifted, sos, suffix, eot))
        return self.logit_scale_ * torch.einsum("bd,bcd->bc", f, t)

    def _train(self, tower, ctx, meta, src, yt, gen, prompt):
        """Dassl's loop: SGD on ctx and the meta-net, one cached view per image per epoch; (lrs, losses)."""
        import torch
        import torch.nn.functional as F

        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

        opt = torch.optim.SGD([ctx, *meta], lr=float(self.lr), momentum=float(self.momentum),
                              weight_decay=float(self.weight_decay), dampening=0.0, nesterov=False)
        epochs, bs, n = int(self.epochs), int(self.batch_size), int(yt.shape[0])
        lrs, losses = [], []
        for epoch in range(epochs):
            lr = T.cosine_with_warmup(epoch, float(self.lr), epochs, int(self.warmup_epochs), float(self.warmup_lr))
            T.set_lr(opt, lr)
            lrs.append(lr)
            feats = T.l2norm(T.gather_views(src, T.draw_view_indices(src.shape[0], n, gen).to(src.device)).float())
            total, steps = 0.0, 0
            for idx in T.minibatches(n, bs, gen, drop_last=n >= bs):
                idx = idx.to(src.device)
                loss = F.cross_entropy(self._logits(tower, ctx, meta, feats[idx], *prompt), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
            losses.append(total / max(steps, 1))
        return lrs, losses

    # -- estimator API ---------------------------------------------------------------------------------
    def fit(self, X, y, *, text_tower=None, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None,
            classnames=None, extra=None) -> "CoCoOp":
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits
        from featbench.heads.prolip import training_views  # lazy: torch loads only when a head fits

        X, y, dev, tower, notes, gen = start_prompt_fit(self, X, y, text_tower, classnames)
        ctx0, sos, suffix, eot = prompt_pieces(tower, classnames, self.n_ctx, self.ctx_init, gen, notes, self.name)
        ctx = torch.nn.Parameter(ctx0)
        meta = meta_net_init(X.shape[1], tower.width, gen, dev)
        src = training_views(np.asarray(X, np.float32), views, dev, self.name, "views", notes,
                             "no augmented views in cache: trained on plain features")
        self.logit_scale_ = float(logit_scale)
        lrs, losses = self._train(tower, ctx, meta, src, T.as_labels(y, dev), gen, (sos, suffix, eot))
        self.ctx_ = ctx.detach()
        self.meta_net_ = [p.detach() for p in meta]
        self.prompt_ = (sos, suffix, eot)
        self.text_tower_ = tower
        self.n_classes_ = len(classnames)
        self.lrs_, self.losses_ = lrs, losses
        self.fit_info_ = {"selected": {}, "views_used": int(src.shape[0]) if views is not None else 0, "notes": notes,
                          "trainable": ["ctx", "meta_net"], "n_ctx": int(ctx0.shape[0]), "epochs": int(self.epochs),
                          "meta_net_hidden": int(self.meta_net_[0].shape[0]), "tokens_run": int(eot.max()) + 1,
                          "prompts_per_step": int(min(int(self.batch_size), X.shape[0])) * len(classnames),
                          "text_tower_sha256": getattr(tower, "sha256", "")[:16],
                          "lr_first_last": [lrs[0], lrs[-1]] if lrs else []}
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits [N, C]: each image's own prompts through the tower, EVAL_SEQUENCES prompts per call."""
        import torch

        from featbench.heads import _torch as T  # lazy: torch loads only when a head fits

        X, _ = T.check_xy(X)
        f = T.l2norm(T.as_tensor(X, self.ctx_.device))
        per_call = max(1, EVAL_SEQUENCES // self.n_classes_)
        with torch.no_grad():
            out = [self._logits(self.text_tower_, self.ctx_, self.meta_net_, f[s:s + per_call], *self.prompt_)
                   for s in range(0, f.shape[0], per_call)]
        return T.to_numpy(torch.cat(out)) if out else np.zeros((0, self.n_classes_), np.float32)

    def for_classes(self, text=None, classnames=None, extra=None) -> "CoCoOp":
        """A copy scoring ``classnames`` with the learned context and meta-net (base-to-new's new classes)."""
        if not classnames:
            raise FeatbenchError(f"head '{self.name}' needs the class names of the classes to score")
        _, sos, suffix, eot = prompt_pieces(self.text_tower_, list(classnames), self.n_ctx, self.ctx_init, None, [],
                                            self.name)
        other = copy.copy(self)
        other.prompt_ = (sos, suffix, eot)
        other.n_classes_ = len(classnames)
        return other


__all__ = ["CoCoOp", "EVAL_SEQUENCES", "meta_net_init", "meta_net", "conditioned_text"]
