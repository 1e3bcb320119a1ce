"""CLIP-Adapter: a residual bottleneck MLP on the image feature (Gao et al., IJCV 2023; the "AT" baseline).

A(f) = ReLU(W2 ReLU(W1 f)), W1 [D/4, D] and W2 [D, D/4] bias-free; f' = r A(f) + (1 - r) f;
logits = s * norm(f') norm(t)^T with t the zero-shot text classifier; cross-entropy; only W1, W2 train.

Where every default comes from (gaopengcuhk/CLIP-Adapter@9ac913a ``clip_adapter.py``; its README says to run
it with CoOp's commands, i.e. KaiyangZhou/CoOp@6979355 ``configs/trainers/CoOp/rn50*.yaml`` and Dassl's
optimiser defaults, KaiyangZhou/Dassl.pytorch ``dassl/config/defaults.py``):

- adapter: ``Adapter(c_in, reduction=4)`` = Linear(D, D//4, bias=False), ReLU, Linear(D//4, D, bias=False),
  ReLU (clip_adapter.py); the reference hard-codes c_in = 1024 (RN50), here D is the cache's width.
  Initialisation: torch's nn.Linear default (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), drawn from the head's own
  generator.
- ratio r = 0.2 (clip_adapter.py, ``ratio = 0.2`` in CustomCLIP.forward).
- the image feature enters the adapter **raw** (not normalised); the blend f' is normalised, then the text
  features are normalised (CustomCLIP.forward).
- text: one prompt per class, the dataset's CoOp template (clip_adapter.py CUSTOM_TEMPLATES; ImageNet and its
  variants "a photo of a {}.") with "_" -> " " in class names. ``prompt="single"`` uses the cache's last
  template (the catalog's CoOp template: the only one for the 10 one-template datasets, "a photo of a {}." for
  ImageNet); ``prompt="ensemble"`` uses the zero-shot ensemble of all cached templates instead.
- optimiser: SGD (rn50.yaml OPTIM.NAME) lr 0.002 (OPTIM.LR), momentum 0.9 and weight decay 5e-4 (Dassl
  defaults OPTIM.MOMENTUM / OPTIM.WEIGHT_DECAY, coupled L2 as torch SGD's ``weight_decay``), no dampening or
  Nesterov (Dassl defaults); only the adapter is given to the optimiser (``build_optimizer(self.model.adapter)``).
- schedule: cosine over MAX_EPOCH with 1 warm-up epoch at a constant 1e-5 (rn50.yaml LR_SCHEDULER, WARMUP_*),
  stepped once per epoch (``update_lr`` at the last batch of the epoch); see ``_torch.cosine_with_warmup``.
- batch 32 (rn50.yaml DATALOADER.TRAIN_X.BATCH_SIZE); Dassl's loader reshuffles every epoch and drops the last
  incomplete batch when there are at least 32 images.
- epochs: CoOp's per-shot configs (its README/scripts): 50 for 1 shot (rn50_ep50), 100 for 2/4 shots
  (rn50_ep100), 200 for 8/16 shots (rn50); ImageNet 50 for every shot count (rn50_ep50).
- the last epoch's adapter is evaluated (Dassl's default: no validation-based selection).
- augmentation: Dassl's random_resized_crop + random_flip per step; the feature-cache stand-in (as TaskRes
  here) draws one cached augmented view per image per epoch; without views the plain features are used and
  ``fit_info_['notes']`` says so.

The adapter acts on the image feature and the classifier is the text of the classes, so a fitted CLIP-Adapter
scores classes it never trained on (``scores_unseen_classes``; base-to-new evaluation uses ``for_classes``).
"""

from __future__ import annotations

import copy
from typing import ClassVar

import numpy as np

from featbench.errors import FeatbenchError
from featbench.heads.base import Head, require
from featbench.heads.paper import epochs_for_shots
from featbench.heads.spec import Param, nonnegative, positive

# CoOp's per-shot epoch configs (rn50_ep50 / rn50_ep100 / rn50); ImageNet uses rn50_ep50 at every shot count
CLIP_ADAPTER_EPOCHS_BY_SHOTS: dict[int, int] = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}
CLIP_ADAPTER_EPOCHS_BY_DATASET: dict[str, int] = {"imagenet": 50}


class CLIPAdapter(Head):
    """Residual bottleneck adapter on the image feature, cosine logits against the text classifier."""

    name = "clip-adapter"
    #: trained by fit (trainable_params): the adapter's two bias-free layers [D/r, D] and [D, D/r]
    trained_attributes = ("W1_", "W2_")
    display_name = "CLIP-Adapter"  # what tables and plots show
    paper = "Gao et al. 2023 (IJCV), CLIP-Adapter: Better Vision-Language Models with Feature Adapters"
    needs_text = True
    uses_views = True
    searches_internally = False
    scores_unseen_classes = True
    paper_view_scale = (0.08, 1.0)  # CoOp's Dassl training crops (featbench.heads.paper.DASSL_SCALE)
    paper_classname_style = "clean"
    # the paper tunes the residual ratio per dataset; under --protocol val it is searched on the few-shot val split
    search_space = {"ratio": [0.2, 0.4, 0.6, 0.8]}
    hyperparams: ClassVar[dict] = {
        "ratio": Param("float", low=0, high=1, doc="residual ratio r: f' = r A(f) + (1 - r) f"),
        "reduction": positive("int", doc="bottleneck reduction: hidden width D // reduction"),
        "prompt": Param("str", choices=("single", "ensemble"),
                        doc="text classifier: the last cached template (CoOp's) or the ensemble of all"),
        "lr": positive(doc="SGD learning rate"),
        "epochs": nonnegative("int", doc="training epochs"),
        "batch_size": positive("int", doc="images per step"),
        "momentum": Param("float", low=0, high=1, high_open=True, doc="SGD momentum"),
        "weight_decay": nonnegative(doc="coupled L2 weight decay"),
        "warmup_epochs": nonnegative("int", doc="constant warm-up epochs"),
        "warmup_lr": positive(doc="warm-up learning rate"),
        "device": Param("str", doc="cpu | cuda | cuda:N | auto"),
        "random_state": Param("int", doc="seed of the head's generator (init, shuffling, view draws)"),
    }

    def __init__(self, ratio: float = 0.2, reduction: int = 4, prompt: str = "single", lr: float = 2e-3,
                 epochs: int = 200, batch_size: int = 32, momentum: float = 0.9, weight_decay: float = 5e-4,
                 warmup_epochs: int = 1, warmup_lr: float = 1e-5, device: str = "cpu", random_state: int = 0):
        self.ratio = ratio
        self.reduction = reduction
        self.prompt = prompt
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.device = device
        self.random_state = random_state

    @classmethod
    def paper_defaults(cls, dataset, shots):
        if dataset in CLIP_ADAPTER_EPOCHS_BY_DATASET:
            return {"epochs": CLIP_ADAPTER_EPOCHS_BY_DATASET[dataset]}
        if shots is not None:
            return {"epochs": epochs_for_shots(CLIP_ADAPTER_EPOCHS_BY_SHOTS, shots)}
        return {}

    # -- pieces --------------------------------------------------------------------------------------------
    def _text_weights(self, text, dev):
        from featbench.heads import _torch as T

        t = np.asarray(text, np.float32)
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise FeatbenchError(f"head '{self.name}': text features must be [T, C, D] (got shape {t.shape})")
        if self.prompt == "single":
            t = t[-1:]
        return T.zeroshot_weights(t, dev)  # [C, D] unit rows

    def _blend(self, f, W1, W2):
        """f' = r A(f) + (1 - r) f with A(f) = ReLU(W2 ReLU(W1 f)); f raw (the reference normalises after)."""
        import torch

        a = torch.relu(torch.relu(f @ W1.T) @ W2.T)
        return self.ratio_ * a + (1.0 - self.ratio_) * f

    # -- estimator API -----------------------------------------------------------------------------------
    def fit(self, X, y, *, text=None, views=None, logit_scale=100.0, X_val=None, y_val=None, classnames=None,
            extra=None) -> "CLIPAdapter":
        import math

        import torch
        import torch.nn.functional as F

        from featbench.heads import _torch as T

        require(text, "text features (the cache's /text group)", self.name)
        X, y = T.check_xy(X, y)
        dev = T.resolve_device(self.device)
        self.text_weights_ = self._text_weights(text, dev)
        n_classes, dim = self.text_weights_.shape
        if X.shape[1] != dim:
            raise FeatbenchError(f"head '{self.name}': image features have width {X.shape[1]}, text features {dim}")
        T.check_xy(X, y, n_classes)
        hidden = dim // int(self.reduction)
        if hidden < 1:
            raise FeatbenchError(f"clip-adapter.reduction={self.reduction} leaves no hidden unit for width {dim}")
        self.logit_scale_ = float(logit_scale)
        self.ratio_ = float(self.ratio)
        gen = T.generator(self.random_state)
        # nn.Linear's default init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        b1, b2 = 1.0 / math.sqrt(dim), 1.0 / math.sqrt(hidden)
        W1 = torch.nn.Parameter(((torch.rand(hidden, dim, generator=gen) * 2 - 1) * b1).to(dev))
        W2 = torch.nn.Parameter(((torch.rand(dim, hidden, generator=gen) * 2 - 1) * b2).to(dev))

        notes: list[str] = []
        epochs, bs = int(self.epochs), int(self.batch_size)
        if views is not None:
            src = np.asarray(views)
            if src.ndim != 3 or src.shape[1] != X.shape[0]:
                raise FeatbenchError(f"views must be [V, N={X.shape[0]}, D] aligned with the train rows (got {src.shape})")
            views_used = int(src.shape[0])
        else:
            src = np.asarray(X)[None]
            views_used = 0
            if epochs:
                notes.append("no augmented views in cache: trained on plain features")
        n = X.shape[0]
        yt = T.as_labels(y, dev)
        opt = torch.optim.SGD([W1, W2], lr=float(self.lr), momentum=float(self.momentum),
                              weight_decay=float(self.weight_decay))
        w = self.text_weights_
        drop_last = n >= bs
        lrs = []
        for epoch in range(epochs):
            lr = T.cosine_with_warmup(epoch, float(self.lr), epochs, int(self.warmup_epochs), float(self.warmup_lr))
            T.set_lr(opt, lr)
            lrs.append(lr)
            vidx = T.draw_view_indices(src.shape[0], n, gen).numpy()
            feats = T.as_tensor(src[vidx, np.arange(n)], dev)  # raw: the adapter sees unnormalised features
            for idx in T.minibatches(n, bs, gen, drop_last=drop_last, device=dev):
                logits = self.logit_scale_ * T.l2norm(self._blend(feats[idx], W1, W2)) @ w.T
                loss = F.cross_entropy(logits, yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.W1_, self.W2_ = W1.detach(), W2.detach()
        self.n_classes_ = int(n_classes)
        self.lrs_ = lrs
        self.fit_info_ = {"selected": {}, "views_used": views_used, "notes": notes, "trainable": ["adapter"],
                          "epochs": epochs, "lr_first_last": [lrs[0], lrs[-1]] if lrs else []}
        return self

    def transform(self, X) -> np.ndarray:
        """The blended, unnormalised image features f' = r A(f) + (1 - r) f."""
        import torch

        from featbench.heads import _torch as T

        X, _ = T.check_xy(X)
        f = T.as_tensor(X, self.W1_.device)
        with torch.no_grad():
            return T.to_numpy(T.batched_logits(lambda x: self._blend(x, self.W1_, self.W2_), f))

    def decision_function(self, X) -> np.ndarray:
        import torch

        from featbench.heads import _torch as T

        X, _ = T.check_xy(X)
        f = T.as_tensor(X, self.W1_.device)
        w = self.text_weights_
        with torch.no_grad():
            out = T.batched_logits(lambda x: self.logit_scale_ * T.l2norm(self._blend(x, self.W1_, self.W2_)) @ w.T, f)
        return T.to_numpy(out)

    def class_weights(self) -> np.ndarray:
        from featbench.heads import _torch as T

        return T.to_numpy(self.text_weights_)

    def for_classes(self, text, classnames=None, extra=None) -> "CLIPAdapter":
        """A copy with the trained adapter that scores the classes of ``text`` [T, C', D] (base-to-new)."""
        other = copy.copy(self)
        other.text_weights_ = self._text_weights(text, self.W1_.device)
        other.n_classes_ = int(other.text_weights_.shape[0])
        return other
