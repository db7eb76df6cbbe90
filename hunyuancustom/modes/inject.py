"""Apply the audio and editing modules to ComfyUI core's HunyuanVideo transformer, unmodified.

Core's `forward_orig` lets a caller replace any double block through
`transformer_options["patches_replace"]["dit"][("double_block", i)]`: the patch gets the block's
inputs (`img`, `txt`, `vec`, `pe`, ..., `transformer_options`) and `original_block`, and returns
`{"img", "txt"}`. `img` holds the reference-image tokens (when the branch has a `ref_latent`)
followed by the video tokens, in (t, h, w) order. That is enough for both modes:

- audio: after double blocks 1, 3, 5, 7, 9, 11, add the perceiver's update to the video tokens
  (the last `t*h*w/4` tokens of `img`); the reference tokens are left as they are.
- editing: core has no hook right after `img_in`, but nothing touches the video tokens between
  `img_in` and double block 0 (the reference tokens are only put in front of them), so adding
  the background tokens to `img`'s video part at the *input* of double block 0 is the same sum
  the released model forms after its patch embedding.

Which batch entries are the negative branch comes from `transformer_options["cond_or_uncond"]`
(core's sampler sets it: 0 = positive, 1 = negative, one entry per equal batch chunk); the
negative branch gets the audio layers fed with zero audio, as the released pipeline does. A batch
the entries do not divide is refused (an engine split the batch but not the list). A
patch already installed on the same block is kept and called inside ours; a patch of ours already
there (the mode applied again, e.g. on a stateful Raylight worker) is replaced, never nested.

Core's multi-GPU work units (0.33+) run these patches from one thread per device, each on its
device's deep clone of the MODEL: the modules are deep-cloned with it (a ModelPatcher each, with a
reload factory), and a patch uses the module set of the thread's device.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import EngineError, ValidationError
from ..local.core_call import Signature
from ..local.layout import check_image_split, on_whole_image
from ..local.multigpu import follow_device_clones, thread_device
from .audio import DEFAULT_STRENGTH, AudioModules, latent_frame_tokens
from .editing import BackgroundModules

PatchFn = Callable[[dict, dict], dict]
POSITIVE, NEGATIVE = 0, 1


@dataclass
class AudioCondition:
    modules: AudioModules
    windows: torch.Tensor  # [1, frames, 10, blocks, channels] (frames = 4t - 3)
    strength: float = DEFAULT_STRENGTH


@dataclass
class BackgroundCondition:
    modules: BackgroundModules
    latent: torch.Tensor  # [1, 32, t, h, w]


@dataclass
class ModeInjection:
    """The patches for one generation of a clip whose latent is (t, h, w)."""

    latent_shape: tuple[int, int, int]
    audio: AudioCondition | None = None
    background: BackgroundCondition | None = None
    patch_size: tuple[int, int, int] = (1, 2, 2)
    _cache: dict = field(default_factory=dict, repr=False)
    # per device of core's multi-GPU: {"audio": AudioModules, "background": BackgroundModules}
    _device_modules: dict = field(default_factory=dict, repr=False)
    _roles: dict = field(default_factory=dict, repr=False)  # clone_base_uuid -> "audio" / "background"
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        t, h, w = self.latent_shape
        pt, ph, pw = self.patch_size
        if h % ph or w % pw or t % pt:
            raise ValidationError("latent", f"latent size {list(self.latent_shape)} is not a multiple of the "
                                            f"patch size {list(self.patch_size)}")
        self.frames_tokens = (t // pt, (h // ph) * (w // pw))
        if self.audio is not None:
            f = self.audio.windows.shape[1]
            if f != 4 * t - 3:
                raise ValidationError("audio", f"audio windows for {f} frames, but the clip has {4 * t - 3} "
                                               f"frames ({t} latent frames)")
        if self.background is not None:
            bg = self.background.latent
            if tuple(bg.shape[2:]) != tuple(self.latent_shape):
                raise ValidationError("video", f"the source latent is {list(bg.shape[2:])} but the clip's "
                                               f"latent is {list(self.latent_shape)}")

    @property
    def video_tokens(self) -> int:
        return self.frames_tokens[0] * self.frames_tokens[1]

    # --- the pieces -----------------------------------------------------------------------------

    def _split(self, img: torch.Tensor) -> int:
        """Number of tokens in front of the video tokens (the reference image's)."""
        ref = img.shape[1] - self.video_tokens
        if ref < 0:
            raise ValidationError("latent", f"the model got {img.shape[1]} image tokens but the clip needs "
                                            f"{self.video_tokens}: the latent is not the size this mode "
                                            "was prepared for")
        return ref

    def modules_for(self, role: str, worker):
        """The `role` ("audio" / "background") modules that run for `worker` (core's multi-GPU
        thread device, or None): that device's deep clone where core made one, else our own."""
        own = (self.audio if role == "audio" else self.background).modules
        return self._device_modules.get(worker, {}).get(role, own) if worker is not None else own

    def _cached(self, key, make):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def _audio_tokens(self, device, worker=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per latent frame audio tokens [1, t, 4*m, C] for the positive and the negative branch,
        in the modules' own dtype."""
        mods = self.modules_for("audio", worker)

        def make():
            dtype = _on_device(mods, device)
            w = self.audio.windows.to(device=device, dtype=dtype)
            with torch.no_grad():
                pos = mods.audio_proj(w)
                neg = mods.audio_proj(torch.zeros_like(w))
            t = self.frames_tokens[0]
            return latent_frame_tokens(pos, t), latent_frame_tokens(neg, t)

        return self._cached(("audio", device, worker), make)

    def _background_tokens(self, device, dtype, worker=None) -> torch.Tensor:
        mods = self.modules_for("background", worker)

        def make():
            own = _on_device(mods, device)
            with torch.no_grad():
                return mods(self.background.latent.to(device=device, dtype=own)).to(dtype)

        return self._cached(("bg", device, dtype, worker), make)

    def add_background(self, img: torch.Tensor, transformer_options: dict | None = None) -> torch.Tensor:
        ref = self._split(img)
        bg = self._background_tokens(img.device, img.dtype, thread_device(transformer_options))
        return torch.cat([img[:, :ref], img[:, ref:] + bg], dim=1)

    def add_audio(self, layer: int, img: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        ref = self._split(img)
        worker = thread_device(transformer_options)
        pos, neg = self._audio_tokens(img.device, worker)
        b = img.shape[0]
        branches = branch_of_each_chunk(transformer_options, b)
        per = b // len(branches)
        tokens = torch.cat([(neg if c == NEGATIVE else pos).expand(per, *pos.shape[1:]) for c in branches])
        t, hw = self.frames_tokens
        video = img[:, ref:].reshape(b, t, hw, img.shape[-1])
        with torch.no_grad():
            layers = self.modules_for("audio", worker).audio_models
            update = layers[layer](tokens, video.to(tokens.dtype)).to(img.dtype)
        return torch.cat([img[:, :ref], img[:, ref:] + self.audio.strength * update.reshape(b, t * hw, -1)],
                         dim=1)

    # --- patches --------------------------------------------------------------------------------

    def blocks(self) -> list[int]:
        out = set()
        if self.background is not None:
            out.add(0)
        if self.audio is not None:
            out.update(self.audio.modules.insert_after)
        return sorted(out)

    def make_patch(self, index: int, inner: PatchFn | None = None) -> PatchFn:
        """The replacement for double block `index`; `inner` is a patch that was there before."""
        audio_layer = (self.audio.modules.insert_after.index(index)
                       if self.audio is not None and index in self.audio.modules.insert_after else None)
        add_bg = self.background is not None and index == 0

        def patch(args: dict, extra: dict) -> dict:
            options = args.get("transformer_options") or {}
            if add_bg:  # on the whole image sequence, wherever an engine split it (see layout.py)
                args = {**args, "img": on_whole_image(args["img"], options,
                                                      lambda img: self.add_background(img, options))}
            out = inner(args, extra) if inner is not None else extra["original_block"](args)
            if audio_layer is not None:
                out = {**out, "img": on_whole_image(out["img"], options,
                                                    lambda img: self.add_audio(audio_layer, img, options))}
            return out

        # the tag: what was on the block before us, so a later application replaces this patch
        setattr(patch, _INNER, inner)
        return patch

    def patches(self, existing: dict | None = None) -> dict[tuple[str, int], PatchFn]:
        """{("double_block", i): patch} for `transformer_options["patches_replace"]["dit"]`."""
        existing = existing or {}
        return {("double_block", i): self.make_patch(i, foreign_patch(existing.get(("double_block", i))))
                for i in self.blocks()}

    def installed(self, existing: dict) -> dict:
        """The `patches_replace["dit"]` entries with this injection's patches in place of any the
        pack's modes put there before (the blocks they no longer patch get back what they wrapped)."""
        dit = {}
        for key, fn in existing.items():
            inner = foreign_patch(fn)
            if inner is not None:
                dit[key] = inner
        dit.update(self.patches(existing))
        return dit

    def apply(self, transformer_options: dict[str, Any]) -> dict[str, Any]:
        """A copy of `transformer_options` with the patches installed (the input is not changed)."""
        to = dict(transformer_options)
        replace = dict(to.get("patches_replace") or {})
        replace["dit"] = self.installed(dict(replace.get("dit") or {}))
        to["patches_replace"] = replace
        return to

    def check_latent(self, executor, x, *args, **kwargs):
        """DIFFUSION_MODEL wrapper: the sampled latent must be the one the mode was prepared for
        (its tokens are found by position, so another size would run, silently wrong)."""
        call = Signature.of(executor.original).bind((x, *args), kwargs)
        check_image_split(executor.class_obj, x, call["ref_latent"])
        got = tuple(x.shape[-3:])
        if got != tuple(self.latent_shape):
            t, h, w = self.latent_shape
            raise ValidationError("latent", f"the sampler's latent is {got[0]} latent frames of {got[2] * 8}x"
                                            f"{got[1] * 8}, but the mode was prepared for {t} ({4 * t - 3} "
                                            f"frames) of {w * 8}x{h * 8}: sample the LATENT the mode node "
                                            "gives (through Conditioning (Local))")
        return executor(x, *args, **kwargs)

    def patch_model(self, model):
        """A clone of a ComfyUI MODEL (ModelPatcher) with the patches installed, and the modules
        handed to ComfyUI's model management with it: loaded to the GPU with the transformer,
        offloaded when memory is needed, never left behind on their own."""
        import comfy.patcher_extension as ext

        m = model.clone()
        m.remove_wrappers_with_key(ext.WrappersMP.DIFFUSION_MODEL, MODEL_KEY)
        m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, MODEL_KEY, self.check_latent)
        # new dicts all the way down, as core's own set_model_patch_replace builds them (a clone may
        # share nested dicts with its parent); core has no call that removes a block patch
        options = m.model_options.get("transformer_options") or {}
        m.model_options = {**m.model_options, "transformer_options": self.apply(options)}
        roles = {"audio": self.audio, "background": self.background}
        patchers = {role: _patcher(c.modules, m) for role, c in roles.items() if c is not None}
        m.set_additional_models(MODEL_KEY, list(patchers.values()))
        self._roles = {getattr(p, "clone_base_uuid", None): role for role, p in patchers.items()}
        follow_device_clones(m, MODEL_KEY, self.register_device_clone)
        return m

    def register_device_clone(self, original, clone) -> None:
        """Core's multi-GPU callback: `clone` is the MODEL on another device, its additional models
        deep clones of ours (the same clone_base_uuid); the patches use those on that device."""
        found = {}
        for p in clone.get_additional_models_with_key(MODEL_KEY):
            role = self._roles.get(getattr(p, "clone_base_uuid", None))
            if role is not None:
                found[role] = p.model
        with self._lock:
            self._device_modules[torch.device(clone.load_device)] = found
            self._cache = {k: v for k, v in self._cache.items() if k[-1] != torch.device(clone.load_device)}


MODEL_KEY = "hunyuancustom_modes"


def branch_of_each_chunk(transformer_options: dict, batch: int) -> list[int]:
    """`cond_or_uncond`: the branch of each equal chunk of the batch (positive where the caller sets
    none). Core's samplers always batch whole chunks; a batch they do not divide comes from an engine
    that split the batch but not its options, and guessing would give a branch the other's audio."""
    branches = list(transformer_options.get("cond_or_uncond") or [POSITIVE])
    if batch % len(branches):
        raise EngineError(f"the audio mode got a batch of {batch} with cond_or_uncond {branches} "
                          f"({len(branches)} branches): it cannot tell which samples are the negative "
                          "branch (zero audio). An engine split the batch without its options: Raylight's "
                          "CFG-parallel (cfg_degree > 1) before contrib/raylight/"
                          "04-cfg-per-rank-branch-options.patch (R5); apply that patch to Raylight, or "
                          "run with cfg_degree 1")
    return branches


_INNER = "_hunyuancustom_mode_inner"  # attribute that marks a block patch as the modes' own


def foreign_patch(fn: PatchFn | None) -> PatchFn | None:
    """`fn` without the modes' own patches around it: what another pack or the user installed."""
    while fn is not None and hasattr(fn, _INNER):
        fn = getattr(fn, _INNER)
    return fn


def _patcher(mods: torch.nn.Module, model):
    """One ModelPatcher per module set (kept on it), so model management sees one model."""
    import comfy.model_patcher

    patcher = mods.__dict__.get("_comfy_patcher")
    if patcher is None or (patcher.load_device, patcher.offload_device) != (model.load_device,
                                                                             model.offload_device):
        patcher = comfy.model_patcher.ModelPatcher(mods, load_device=model.load_device,
                                                   offload_device=model.offload_device)
        # core's reload factory (0.33+: multi-GPU deep clones); older cores never read it
        patcher.cached_patcher_init = (copied_modules_patcher,
                                       (mods, model.load_device, model.offload_device))
        mods.__dict__["_comfy_patcher"] = patcher
    return patcher


def copied_modules_patcher(mods: torch.nn.Module, load_device, offload_device, disable_dynamic: bool = False):
    """A ModelPatcher of a deep copy of `mods` (they are small): core's `cached_patcher_init`
    factory for the mode modules. The copy gets a patcher of its own, not a copy of ours."""
    mine = mods.__dict__.get("_comfy_patcher")
    copied = copy.deepcopy(mods, {id(mine): None} if mine is not None else None)
    copied.__dict__.pop("_comfy_patcher", None)
    return _patcher(copied, _Devices(load_device, offload_device))


@dataclass
class _Devices:
    load_device: Any
    offload_device: Any


def _on_device(mods: torch.nn.Module, device) -> torch.dtype:
    """The modules' dtype, after making sure they sit on `device`. Model management has normally
    put them there already; only a caller that bypassed it (a bare forward) moves them here."""
    p = next(mods.parameters())
    if p.device != torch.device(device):
        mods.to(device)
    return p.dtype
