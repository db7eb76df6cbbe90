"""HunyuanCustom's conditioned modes on top of the ref2v transformer.

- `audio`: audio-driven (talking / singing avatar): whisper-tiny features -> audio projection net ->
  perceiver cross-attention added to the video tokens after double blocks 1, 3, 5, 7, 9, 11.
- `editing`: video-driven (insert / replace a subject): masked source video + mask latents ->
  bg_in / bg_proj added to the patch-embedded video tokens.
- `inject`: applies either through ComfyUI core's per-block replacement patches.
- `checkpoint`: reads just these modules from a checkpoint file (or a loader's set-aside extras).

Module and key names follow the released checkpoints (`audio_proj.*`, `audio_models.{0..5}.*`,
`bg_in.proj.*`, `bg_proj.*`), so their tensors load as they are.
"""
