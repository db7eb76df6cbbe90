"""The released HunyuanCustom transformer, as patches on a ComfyUI MODEL around core's HunyuanVideo.

Core's HunyuanVideo computes the released model's maths but differs from `hymm_sp` in four places.
Each is mended through core's own extension points (a DIFFUSION_MODEL and an OUTER_SAMPLE wrapper,
an object patch, block patches), never by editing core or depending on how its forward orders
its tokens, so every sampler, scheduler, step cache, LoRA, compile and
guidance patch a user puts on the MODEL keeps working:

1. **Batches.** With `ref_latent`, core writes into an expanded position-id view and fails for a
   batch above 1 (which core's sampler forms for equal-length CFG branches and for batch_size 2).
   The wrapper runs one sample at a time; the results are those of unbatched calls.
2. **The text mask.** The released text encoder gives the tokenizer's mask with 575 ones appended at
   its end, while LLaVA put the 576 image features in place before the padding. The release reads
   that mask two ways: the token refiner position by position (masked mean pooling; a query sees a
   key when both are unmasked, and key 0 always), the main attention by its sum only (the first
   `sum` text tokens). The wrapper hands core exactly those first `sum` states and no mask, and the
   whole text with its mask to the refiner, which an object patch runs the released way on core's
   own layers.
3. **DeepCache** (released default at exactly 30 steps): steps 11, 12, 14, 15, 17, 18, 20 and 21 run
   only the last single-stream block, on its input cached at the previous full step: block patches
   pass every other block's input through, and core's own forward does the rest.
4. **The schedule.** The release's sigmas are the shifted `linspace(1, 0, steps + 1)`. Core's `simple`
   scheduler picks them from a 1000-entry table and rounds 1000 / steps down (30 steps: t = 0.967
   instead of 0.9667), so on this MODEL `simple` gives the released sigmas exactly.

`comfy` is imported lazily: the package imports without ComfyUI.
"""

from __future__ import annotations

import threading
import uuid

import torch

from .core_call import Call, Signature
from .layout import check_image_split
from .multigpu import follow_device_clones, thread_device
from .schedule import flow_sigmas

KEY = "hunyuancustom_release"  # wrapper key and attachment name on the ModelPatcher
TEXT = "hunyuancustom_text"  # transformer_options entry: (the whole text states, the released mask)
SAMPLE = "hunyuancustom_sample"  # transformer_options entry: the sample's index within its branch
DEEPCACHE_STEPS = 30
DEEPCACHE_CACHED_STEPS = frozenset({11, 12, 14, 15, 17, 18, 20, 21})
RELEASED_SHIFT = 13.0

class ReleasedTokenRefiner(torch.nn.Module):
    """Core's token refiner's own layers (the same modules, so LoRA and weight patches reach them),
    run with the released masking: the pooled context is the masked mean of the text states, and a
    query attends to a key when both are unmasked, or when the key is the first token.

    Core hands it the text the main attention will see (the first `sum(mask)` states, see
    `released_text`); the released refiner reads all of them under the mask, which the wrapper
    leaves in `transformer_options[TEXT]`."""

    def __init__(self, core_refiner: torch.nn.Module):
        super().__init__()
        self.input_embedder = core_refiner.input_embedder
        self.t_embedder = core_refiner.t_embedder
        self.c_embedder = core_refiner.c_embedder
        self.individual_token_refiner = core_refiner.individual_token_refiner

    def forward(self, x, timesteps, mask, transformer_options={}):  # noqa: B006 (core's signature)
        text = transformer_options.get(TEXT)
        if text is not None:
            states, keep = text
            if states.shape[0] != x.shape[0] or states.shape[1] < x.shape[1]:
                raise RuntimeError(f"the text reached the token refiner as {list(x.shape)}, but the "
                                   f"released text is {list(states.shape)}: another patch changed it")
            return self.refine(states.to(x.dtype), timesteps, keep, transformer_options)[:, :x.shape[1]]
        keep = None
        if mask is not None:
            keep = mask > -1  # core hands the refiner an additive mask: 0 keeps, -max drops
            if keep.dim() != 2:
                keep = None
        return self.refine(x, timesteps, keep, transformer_options)

    def refine(self, x, timesteps, keep, transformer_options):
        from comfy.ldm.flux.layers import timestep_embedding

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
            # the block's class forward: an engine may rebind the instance's forward to one that
            # drops the mask (Raylight's USP does), while this text is whole on every rank anyway
            x = type(block).forward(block, x, c, attn, transformer_options=transformer_options)
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


def released_text(call: Call, options: dict) -> tuple[Call, dict]:
    """One sample's call with the released text masking, and no mask handed to core.

    The main attention sees exactly the first `sum(mask)` text tokens: core gets those states and no
    attention mask, so neither its token order nor how an engine splits the sequence matters. The
    whole text and its mask go to the token refiner through `transformer_options[TEXT]`. A float
    mask (not the pack's) and a mask of all ones are core's business and left as they are."""
    mask, states = call["attention_mask"], call["context"]
    if mask is None or torch.is_floating_point(mask):
        return call, options
    keep = mask.bool()
    if keep.shape != states.shape[:2]:
        raise RuntimeError(f"the text mask is {list(keep.shape)} for text states {list(states.shape)}")
    if bool(keep.all()):
        return call.replace(attention_mask=None), options
    n = int(keep.sum())
    return call.replace(context=states[:, :n], attention_mask=None), {**options, TEXT: (states, keep)}


class ReleasedForward:
    """DIFFUSION_MODEL and OUTER_SAMPLE wrapper: one sample at a time with the released text masks,
    DeepCache at 30 steps, the released sigmas for `simple`."""

    def __init__(self, deepcache: bool = True, released_schedule: bool = True):
        self.deepcache = deepcache
        self.released_schedule = released_schedule
        # Core's multi-GPU work units call this one object from a thread per device at once, so
        # all state is per device (the thread's, see `_device`) and changed under a lock.
        self._lock = threading.RLock()
        self._runs: dict = {}  # per device: the sample_sigmas (by value) the cache belongs to
        self._cache: dict = {}  # per branch, video and device: the last single block's input
        self.calls = {"full": 0, "cached": 0}  # transformer passes, for tests and benchmarks
        self.device_calls: dict = {}  # the same per device

    # --- OUTER_SAMPLE ---------------------------------------------------------------------------
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if self.released_schedule:
            guider = executor.class_obj
            sigmas = released_if_simple(guider.model_patcher.get_model_object("model_sampling"), sigmas)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:  # the cached block input is as large as a step's activations: never keep it
            self.forget()

    def forget(self) -> None:
        """Drop every cached block input (the end of a run)."""
        with self._lock:
            self._cache.clear()
            self._runs.clear()

    # --- DIFFUSION_MODEL ------------------------------------------------------------------------
    def __call__(self, executor, *args, **kwargs):
        call = Signature.of(executor.original).bind(args, kwargs)
        check_image_split(executor.class_obj, call["x"], call["ref_latent"])
        batch = call["x"].shape[0]
        outs = []
        for i in range(batch):
            one = call.replace(**{k: _take(v, i, batch) for k, v in call.values.items()
                                  if k != "transformer_options"})
            one, opts = released_text(one, _sample_options(call["transformer_options"], i, batch))
            outs.append(self._forward_one(executor, one, opts))
        return torch.cat(outs) if batch > 1 else outs[0]

    def _forward_one(self, executor, call: Call, opts: dict):
        step, steps = _step(opts)
        use_cache = self.deepcache and steps == DEEPCACHE_STEPS
        device = _device(opts, call["x"])
        if use_cache:
            self._start_run(device, opts.get("sample_sigmas"))
        key = _branch_key(opts, device)
        net = executor.class_obj
        with self._lock:
            cached = self._cache.get(key) if use_cache and step in DEEPCACHE_CACHED_STEPS else None
        if cached is not None:
            self._count(device, "cached")
            opts = cached_step(net, opts, cached)
            if "control" in call.values:  # its residuals are in the cached input already
                call = call.replace(control=None)
        else:
            self._count(device, "full")
            if use_cache:
                opts = capture_last_block_input(net, opts, _LockedStore(self._cache, self._lock), key)
        return call.replace(transformer_options=opts).run(executor)

    def _start_run(self, device, sample_sigmas) -> None:
        """A new run on `device` drops that device's cached inputs. Runs are told apart by their
        sigmas' values: core's multi-GPU hands every thread a new copy of them at each step."""
        sigmas = sample_sigmas.detach().to("cpu", torch.float64)
        with self._lock:
            run = self._runs.get(device)
            if run is not None and run.shape == sigmas.shape and torch.equal(run, sigmas):
                return
            for key in [k for k in self._cache if k[-1] == device]:
                del self._cache[key]
            self._runs[device] = sigmas

    def _count(self, device, kind: str) -> None:
        with self._lock:
            self.calls[kind] += 1
            per = self.device_calls.setdefault(device, {"full": 0, "cached": 0})
            per[kind] += 1


class _LockedStore:
    """The cache as the recording block patch writes it, from whichever thread runs it."""

    def __init__(self, cache: dict, lock):
        self._cache, self._lock = cache, lock

    def __setitem__(self, key, value):
        with self._lock:
            self._cache[key] = value


def _device(opts: dict, x: torch.Tensor):
    """The device this call runs for: core's multi-GPU thread's, else the input's own."""
    return thread_device(opts) or x.device


def _step(opts: dict) -> tuple[int | None, int | None]:
    """(index of the current sigma in the run's sigmas, number of steps), None where unknown."""
    sample_sigmas, sigmas = opts.get("sample_sigmas"), opts.get("sigmas")
    if not isinstance(sample_sigmas, torch.Tensor) or not isinstance(sigmas, torch.Tensor):
        return None, None
    hits = (sample_sigmas.to(sigmas.device) == sigmas.reshape(-1)[0]).nonzero()
    return (int(hits[0]) if len(hits) else None), sample_sigmas.shape[0] - 1


def _branch_key(opts: dict, device):
    # the device last: core's multi-GPU runs branches on several devices at once, each in a thread
    uuids, cond = opts.get("uuids"), opts.get("cond_or_uncond")
    return (uuids[0] if uuids else None, cond[0] if cond else None, opts.get(SAMPLE, 0), device)


def _with_block_patches(opts: dict, patches: dict) -> dict:
    replace = dict(opts.get("patches_replace") or {})
    replace["dit"] = {**(replace.get("dit") or {}), **patches}
    return {**opts, "patches_replace": replace}


def _last_single(net) -> tuple[str, int]:
    return ("single_block", len(net.single_blocks) - 1)


def capture_last_block_input(net, opts: dict, cache: dict, key) -> dict:
    """transformer_options whose last single-block patch records that block's input for the cached
    steps; a patch already there is kept inside."""
    last = _last_single(net)
    inner = ((opts.get("patches_replace") or {}).get("dit") or {}).get(last)

    def record(args, extra):
        cache[key] = args["img"].clone()  # a copy: core's single block adds to its input in place
        return inner(args, extra) if inner is not None else extra["original_block"](args)

    return _with_block_patches(opts, {last: record})


def cached_step(net, opts: dict, cached: torch.Tensor) -> dict:
    """transformer_options for a DeepCache step, as the release runs it: every block but the last
    single-stream one passes its input through, the last one runs on its input cached at the last
    full step. Core's own forward does the rest (this step's modulation, its token layout, the
    final layer), so nothing here depends on how core orders or slices its tokens."""
    last = _last_single(net)
    inner = ((opts.get("patches_replace") or {}).get("dit") or {}).get(last)

    def replay(args, extra):
        if args["img"].shape != cached.shape:
            raise RuntimeError(f"DeepCache: the last block's input is {list(args['img'].shape)} on this step "
                               f"but was {list(cached.shape)} when cached")
        args = {**args, "img": cached.clone()}
        return inner(args, extra) if inner is not None else extra["original_block"](args)

    patches = {("double_block", i): _pass_double for i in range(len(net.double_blocks))}
    patches.update({("single_block", i): _pass_single for i in range(last[1])})
    patches[last] = replay
    return _with_block_patches(opts, patches)


def _pass_double(args, extra):
    return {"img": args["img"], "txt": args["txt"]}


def _pass_single(args, extra):
    return {"img": args["img"]}


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
    m.add_object_patch(REFINER, ReleasedTokenRefiner(refiner))
    follow_device_clones(m, KEY, refiner_on_own_modules)
    m.set_attachments(KEY, fwd)
    return m


REFINER = "diffusion_model.txt_in"


def refiner_on_own_modules(original, clone) -> None:
    """Core's multi-GPU callback: a clone of the MODEL on another device's model copies the object
    patches as they are, so its refiner patch would run the first device's layers. It gets one on
    the layers of its own model instead."""
    import comfy.utils

    if not isinstance(clone.object_patches.get(REFINER), ReleasedTokenRefiner):
        return
    core = clone.object_patches_backup.get(REFINER)  # its model's own txt_in while the patch is on
    if core is None:
        core = comfy.utils.get_attr(clone.model, REFINER)
    clone.add_object_patch(REFINER, ReleasedTokenRefiner(core))


def released_forward(model) -> ReleasedForward | None:
    """The patch a MODEL carries (its call counts, its switches), or None."""
    get = getattr(model, "get_attachment", None)
    return get(KEY) if callable(get) else None
