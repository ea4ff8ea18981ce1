"""The fastai pieces of a run: parameter groups, the embedding view, bf16, proxy sync.

Kept apart from :mod:`twinnet.train.fit` so the training-speed benchmark builds the same
Learner parts as ``twinnet train``.
"""

from __future__ import annotations

import torch

from twinnet.infer.runtime import cpu_has_native_bf16

__all__ = [
    "EmbeddingNet",
    "bf16_callback",
    "proxy_sync_callback",
    "training_bf16",
    "twin_splitter",
]


def twin_splitter(model: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
    """Two fastai parameter groups, encoder then head, so ``freeze`` trains the head alone."""
    return [list(model.encoder.parameters()), list(model.head.parameters())]


def training_bf16(precision: str, device: torch.device) -> bool:
    """Whether training runs under bf16 autocast: on CPUs with native bf16, unless ``fp32``.

    As in inference, bf16 only pays where the CPU computes it natively; elsewhere oneDNN
    emulates it and fp32 is faster.
    """
    if precision == "fp32" or device.type != "cpu":
        return False
    if precision == "bf16":
        return True
    return cpu_has_native_bf16()


def bf16_callback():
    """A fastai callback running the forward pass under CPU bf16 autocast (loss in fp32).

    fastai's own ``MixedPrecision`` is written for CUDA; this is its CPU counterpart, and
    bf16 needs no gradient scaler since it has fp32's range.
    """
    from fastai.callback.core import Callback

    class CPUBF16(Callback):
        order = 10

        def before_batch(self) -> None:
            self.ctx = torch.autocast("cpu", dtype=torch.bfloat16)
            self.ctx.__enter__()

        def after_pred(self) -> None:
            self.learn.pred = self.pred.float()
            self._exit()

        def _exit(self) -> None:
            ctx, self.ctx = getattr(self, "ctx", None), None
            if ctx is not None:
                ctx.__exit__(None, None, None)

        def after_cancel_batch(self) -> None:
            self._exit()

        def after_batch(self) -> None:
            self._exit()

    return CPUBF16()


def proxy_sync_callback(loss: torch.nn.Module):
    """Average the loss's own parameters' gradients across processes (class proxies).

    DistributedDataParallel averages the model's gradients, but proxies live in the loss,
    outside the model's forward pass, so they are averaged here after each backward pass.
    """
    from fastai.callback.core import Callback

    class ProxySync(Callback):
        order = 5

        def after_backward(self) -> None:
            world = torch.distributed.get_world_size()
            for p in loss.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world

    return ProxySync()


class EmbeddingNet(torch.nn.Module):
    """The twin model seen by a metric loss: images in, unit-norm projections out.

    It shares the encoder and head modules with the twin model, so the twin model is what
    is trained and saved; ``encoder``/``head`` keep :func:`twin_splitter` working.
    """

    def __init__(self, twin: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = twin.encoder
        self.head = twin.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.project(self.encoder(x))
