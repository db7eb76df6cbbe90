"""The pack on Raylight (komikndr/raylight): its Ray workers each hold their own ComfyUI MODEL, so the
pack's patches travel to them as functions that rebuild the patches inside the worker.

- `transport`: the functions shipped (nothing of the pack pickled but paths, numbers and tensors).
- `worker`: what runs in a worker: the released recipe and the modes, on the worker's MODEL.
"""
