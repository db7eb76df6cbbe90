"""The released HunyuanCustom transformer, as patches on a ComfyUI MODEL around core's HunyuanVideo.

Core's HunyuanVideo computes the released model's maths but differs from `hymm_sp` in four places.
Each is mended through core's own extension points (a DIFFUSION_MODEL and an OUTER_SAMPLE wrapper,
an object patch), never by editing core, so every sampler, scheduler, step cache, LoRA, compile and
guidance patch a user puts on the MODEL keeps working:

1. **Batches.** With `ref_latent`, core writes into an expanded position-id view and fails for a
   batch above 1 (which core's sampler forms for equal-length CFG branches and for batch_size 2).
   The wrapper runs one sample at a time; the results are those of unbatched calls.
2. **The text mask.** The released text encoder gives the tokenizer's mask with 575 ones appended at
   its end, while LLaVA put the 576 image features in place before the padding. The release reads
   that mask two ways: the token refiner position by position (masked mean pooling; a query sees a
   key when both are unmasked, and key 0 always), the main attention by its sum only (the first
   `sum` text tokens). The wrapper hands core the prefix mask for the main attention and the mask
   itself to the refiner, which an object patch runs the released way on core's own layers.
3. **DeepCache** (released default at exactly 30 steps): steps 11, 12, 14, 15, 17, 18, 20 and 21 run
   only the last single-stream block, on its input cached at the previous full step.
4. **The schedule.** The release's sigmas are the shifted `linspace(1, 0, steps + 1)`. Core's `simple`
   scheduler picks them from a 1000-entry table and rounds 1000 / steps down (30 steps: t = 0.967
   instead of 0.9667), so on this MODEL `simple` gives the released sigmas exactly.

`comfy` is imported lazily: the package imports without ComfyUI.
"""

from __future__ import annotations

import uuid

import torch

from .schedule import flow_sigmas

KEY = "hunyuancustom_release"  # wrapper key and attachment name on the ModelPatcher
TEXT_MASK = "hunyuancustom_text_mask"  # transformer_options entry: the released mask, per sample
SAMPLE = "hunyuancustom_sample"  # transformer_options entry: the sample's index within its branch
DEEPCACHE_STEPS = 30
DEEPCACHE_CACHED_STEPS = frozenset({11, 12, 14, 15, 17, 18, 20, 21})
RELEASED_SHIFT = 13.0

# DIFFUSION_MODEL's positional arguments (core's HunyuanVideo.forward / _forward)
_ARGS = ("x", "timestep", "context", "y", "txt_byt5", "guidance", "attention_mask", "guiding_frame_index",
         "ref_latent", "disable_time_r", "control", "transformer_options")


class ReleasedTokenRefiner(torch.nn.Module):
    """Core's token refiner's own layers (the same modules, so LoRA and weight patches reach them),
    run with the released masking: the pooled context is the masked mean of the text states, and a
    query attends to a key when both are unmasked, or when the key is the first token."""

    def __init__(self, core_refiner: torch.nn.Module):
        super().__init__()
        self.input_embedder = core_refiner.input_embedder
        self.t_embedder = core_refiner.t_embedder
        self.c_embedder = core_refiner.c_embedder
        self.individual_token_refiner = core_refiner.individual_token_refiner

    def forward(self, x, timesteps, mask, transformer_options={}):  # noqa: B006 (core's signature)
        from comfy.ldm.flux.layers import timestep_embedding

        keep = transformer_options.get(TEXT_MASK)
        if keep is None and mask is not None:
            keep = mask > -1  # core hands the refiner an additive mask: 0 keeps, -max drops
            if keep.dim() != 2:
                keep = None
        t = self.t_embedder(timestep_embedding(timesteps, 256, time_factor=1.0).to(x.dtype))
        if keep is None:
            pooled, attn = x.float().mean(dim=1), None
        else:
            keep = keep.to(device=x.device, dtype=torch.bool)
            m = keep.float().unsqueeze(-1)
            pooled = (x.float() * m).sum(dim=1) / m.sum(dim=1)
            pair = keep[:, None, :, None] & keep[:, None, None, :]
            pair[..., 0] = True
            attn = torch.zeros(pair.shape, dtype=x.dtype, device=x.device).masked_fill_(~pair, float("-inf"))
        c = t + self.c_embedder(pooled.to(x.dtype))
        x = self.input_embedder(x)
        for block in self.individual_token_refiner.blocks:
            x = block(x, c, attn, transformer_options=transformer_options)
        return x


def _sample_options(options: dict, i: int, batch: int) -> dict:
    """transformer_options for sample `i` of a batch: its own cond_or_uncond / uuid / sigma, so that
    wrappers inside this one (step caches, the modes' block patches) see a batch of one."""
    out = dict(options)
    for name in ("cond_or_uncond", "uuids"):
        chunks = options.get(name)
        if chunks and batch % len(chunks) == 0:
            per = batch // len(chunks)
            value = chunks[i // per]
            if name == "uuids" and i % per:
                # several videos of one branch (batch_size > 1): each its own id, as step caches
                # keep their state per uuid (EasyCache would give video 0 the cache of video 1)
                value = _sample_uuid(value, i % per)
            out[name] = [value]
    sigmas = options.get("sigmas")
    if isinstance(sigmas, torch.Tensor) and sigmas.dim() and sigmas.shape[0] == batch:
        out["sigmas"] = sigmas[i:i + 1]
    chunks = len(options.get("cond_or_uncond") or [None])
    out[SAMPLE] = i % (batch // chunks) if batch % chunks == 0 else i  # which video of the batch
    return out


def _sample_uuid(branch_uuid, index: int):
    """A stable id for video `index` (> 0) of a branch; video 0 keeps the branch's own."""
    if isinstance(branch_uuid, uuid.UUID):
        return uuid.uuid5(branch_uuid, f"{KEY}.sample.{index}")
    return (branch_uuid, index)


def _take(value, i: int, batch: int):
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == batch:
        return value[i:i + 1]
    if isinstance(value, dict):
        return {k: _take(v, i, batch) for k, v in value.items()}
    if isinstance(value, list):
        return [_take(v, i, batch) for v in value]
    return value


def split_text_mask(mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mask for core's main attention, mask for the refiner) from one sample's released mask [1, L]:
    the main attention takes the first `sum` tokens (None when that is all of them)."""
    if mask is None or torch.is_floating_point(mask):
        return mask, None
    keep = mask.bool()
    n = int(keep.sum())
    if n == keep.shape[-1] and bool(keep.all()):
        return None, keep
    prefix = (torch.arange(keep.shape[-1], device=keep.device) < n).unsqueeze(0)
    return prefix.to(mask.dtype), keep


class ReleasedForward:
    """DIFFUSION_MODEL and OUTER_SAMPLE wrapper: one sample at a time with the released text masks,
    DeepCache at 30 steps, the released sigmas for `simple`."""

    def __init__(self, deepcache: bool = True, released_schedule: bool = True):
        self.deepcache = deepcache
        self.released_schedule = released_schedule
        self._run = None  # the sample_sigmas of the run the cache belongs to
        self._cache: dict = {}
        self.calls = {"full": 0, "cached": 0}  # transformer passes, for tests and benchmarks

    # --- OUTER_SAMPLE ---------------------------------------------------------------------------
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if self.released_schedule:
            guider = executor.class_obj
            sigmas = released_if_simple(guider.model_patcher.get_model_object("model_sampling"), sigmas)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:  # the cached block input is as large as a step's activations: never keep it
            self._cache.clear()
            self._run = None

    # --- DIFFUSION_MODEL ------------------------------------------------------------------------
    def __call__(self, executor, *args, **kwargs):
        a = dict(zip(_ARGS, args, strict=False))  # the trailing ones may come as keywords
        a.update({k: kwargs.pop(k) for k in _ARGS if k in kwargs})
        a.setdefault("transformer_options", {})
        batch = a["x"].shape[0]
        outs = []
        for i in range(batch):
            s = {k: (v if k == "transformer_options" else _take(v, i, batch)) for k, v in a.items()}
            opts = _sample_options(a["transformer_options"], i, batch)
            s["attention_mask"], keep = split_text_mask(s.get("attention_mask"))
            if keep is not None:
                opts[TEXT_MASK] = keep
            s["transformer_options"] = opts
            outs.append(self._forward_one(executor, s, kwargs))
        return torch.cat(outs) if batch > 1 else outs[0]

    def _forward_one(self, executor, s: dict, kwargs: dict):
        opts = s["transformer_options"]
        step, steps = _step(opts)
        use_cache = self.deepcache and steps == DEEPCACHE_STEPS
        if use_cache and opts.get("sample_sigmas") is not self._run:
            self._cache.clear()
            self._run = opts.get("sample_sigmas")
        key = _branch_key(opts)
        if use_cache and step in DEEPCACHE_CACHED_STEPS and key in self._cache:
            self.calls["cached"] += 1
            return _last_block_only(executor.class_obj, s, self._cache[key])
        if use_cache:
            opts = _capture_last_single_block(executor.class_obj, opts, self._cache, key, s)
            s = {**s, "transformer_options": opts}
        self.calls["full"] += 1
        return executor(*[s.get(k) for k in _ARGS], **kwargs)


def _step(opts: dict) -> tuple[int | None, int | None]:
    """(index of the current sigma in the run's sigmas, number of steps), None where unknown."""
    sample_sigmas, sigmas = opts.get("sample_sigmas"), opts.get("sigmas")
    if not isinstance(sample_sigmas, torch.Tensor) or not isinstance(sigmas, torch.Tensor):
        return None, None
    hits = (sample_sigmas.to(sigmas.device) == sigmas.reshape(-1)[0]).nonzero()
    return (int(hits[0]) if len(hits) else None), sample_sigmas.shape[0] - 1


def _branch_key(opts: dict):
    uuids, cond = opts.get("uuids"), opts.get("cond_or_uncond")
    return (uuids[0] if uuids else None, cond[0] if cond else None, opts.get(SAMPLE, 0))


def _capture_last_single_block(net, opts: dict, cache: dict, key, s: dict) -> dict:
    """transformer_options whose last single-block patch records that block's input (the tokens,
    rotary embedding and mask) for the cached steps; a patch already there is kept inside."""
    last = ("single_block", len(net.single_blocks) - 1)
    replace = dict(opts.get("patches_replace") or {})
    dit = dict(replace.get("dit") or {})
    inner = dit.get(last)
    ref = s.get("ref_latent")
    ref_tokens = _tokens(net, ref) if ref is not None else 0

    def record(args, extra):
        # a copy: core's single block adds its output to its input in place
        cache[key] = {"img": args["img"].clone(), "pe": args["pe"], "mask": args.get("attention_mask"),
                      "img_len": _tokens(net, s["x"]) + ref_tokens, "ref_len": ref_tokens}
        return inner(args, extra) if inner is not None else extra["original_block"](args)

    dit[last] = record
    replace["dit"] = dit
    return {**opts, "patches_replace": replace}


def _tokens(net, latent: torch.Tensor) -> int:
    n = 1
    for size, p in zip(latent.shape[-len(net.patch_size):], net.patch_size, strict=True):
        n *= (size + p // 2) // p
    return n


def _last_block_only(net, s: dict, cached: dict) -> torch.Tensor:
    """A DeepCache step: the modulation vector of this step, the last single-stream block on the
    cached input, the final layer (the tail of core's forward, as the release runs it)."""
    from comfy.ldm.flux.layers import timestep_embedding

    x, opts = s["x"], s["transformer_options"]
    img = cached["img"]
    vec = net.time_in(timestep_embedding(s["timestep"], 256, time_factor=1.0).to(img.dtype))
    if net.vector_in is not None:
        vec = vec + net.vector_in(s["y"][:, :net.params.vec_in_dim])
    if net.params.guidance_embed and s.get("guidance") is not None:
        vec = vec + net.guidance_in(timestep_embedding(s["guidance"], 256).to(img.dtype))
    out = net.single_blocks[-1](img.clone(), vec=vec, pe=cached["pe"], attn_mask=cached["mask"],
                                modulation_dims=None, transformer_options=opts)
    out = out[:, cached["ref_len"]:cached["img_len"]]
    out = net.final_layer(out, vec, modulation_dims=None)
    b, c = x.shape[0], net.out_channels
    pt, ph, pw = net.patch_size
    t, h, w = x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw
    out = out.reshape(b, t, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return out.reshape(b, c, t * pt, h * ph, w * pw)


def released_if_simple(model_sampling, sigmas: torch.Tensor) -> torch.Tensor:
    """The released sigmas where `sigmas` are core's `simple` schedule for this model's shift;
    any other schedule (another scheduler, denoise < 1, custom sigmas) is left as it is."""
    import comfy.samplers

    shift = getattr(model_sampling, "shift", None)
    steps = sigmas.shape[-1] - 1
    if shift is None or steps < 1 or getattr(model_sampling, "multiplier", 1000) != 1000:
        return sigmas
    simple = comfy.samplers.calculate_sigmas(model_sampling, "simple", steps)
    if simple.shape != sigmas.shape or not torch.equal(simple.cpu().float(), sigmas.cpu().float()):
        return sigmas
    return flow_sigmas(steps, float(shift)).to(device=sigmas.device, dtype=sigmas.dtype)


def with_flow_shift(model, shift: float):
    """A clone whose sampling uses `shift` (core's own ModelSamplingSD3 patch)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    return ModelSamplingSD3().patch(model, shift)[0]


def current_shift(model) -> float | None:
    return getattr(model.get_model_object("model_sampling"), "shift", None)


def is_hunyuan_video(model) -> bool:
    net = getattr(getattr(model, "model", None), "diffusion_model", None)
    return net is not None and hasattr(net, "txt_in") and hasattr(net, "single_blocks") \
        and hasattr(net, "img_in") and hasattr(net, "final_layer")


def apply_released(model, deepcache: bool = True, released_schedule: bool = True,
                   shift: float | None = RELEASED_SHIFT):
    """A clone of a HunyuanVideo MODEL that computes what the released HunyuanCustom transformer
    computes (see the module's docstring); `shift` sets the flow shift (None keeps the MODEL's).
    Applying it again replaces the earlier patch."""
    import comfy.patcher_extension as ext

    if not is_hunyuan_video(model):
        raise TypeError("not a HunyuanVideo MODEL")
    m = with_flow_shift(model, shift) if shift is not None else model.clone()
    m.remove_wrappers_with_key(ext.WrappersMP.DIFFUSION_MODEL, KEY)
    m.remove_wrappers_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY)
    fwd = ReleasedForward(deepcache=deepcache, released_schedule=released_schedule)
    m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, KEY, fwd)
    m.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, KEY, fwd.outer_sample)
    # the same four child modules whether txt_in is core's or already this patch's
    refiner = m.get_model_object("diffusion_model.txt_in")
    m.add_object_patch("diffusion_model.txt_in", ReleasedTokenRefiner(refiner))
    m.set_attachments(KEY, fwd)
    return m


def released_forward(model) -> ReleasedForward | None:
    """The patch a MODEL carries (its call counts, its switches), or None."""
    get = getattr(model, "get_attachment", None)
    return get(KEY) if callable(get) else None
