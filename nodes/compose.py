"""Compose several subjects into one reference image on white (multi-subject / virtual try-on)."""

from __future__ import annotations

from comfy_api.latest import io

from ..hunyuancustom.compose import LAYOUTS, MAX_SIDE, MAX_SUBJECTS, MIN_SIDE, MULTIPLE, compose_from_inputs


class ComposeSubjects(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        images = [io.Image.Input("image_1", tooltip="First subject (e.g. the person).")]
        masks = []
        for i in range(1, MAX_SUBJECTS + 1):
            if i > 1:
                images.append(io.Image.Input(f"image_{i}", optional=True,
                                             tooltip=f"Subject {i} (e.g. a garment or an object)."))
            masks.append(io.Mask.Input(f"mask_{i}", optional=True,
                                       tooltip=f"Cut-out of subject {i}: 1 = keep, 0 = white. Same size "
                                               f"as image_{i}."))
        return io.Schema(
            node_id="HunyuanCustomComposeSubjects",
            display_name="Compose Subjects",
            category="HunyuanCustom",
            description=("Puts up to four subjects (cut out by their masks, if given) side by side on "
                         "one white reference image for the ref2v nodes: e.g. a person and a garment "
                         "for virtual try-on. The released weights take one reference image; this is "
                         "how several subjects reach them."),
            inputs=[
                images[0],
                io.Combo.Input("layout", options=list(LAYOUTS), default="row",
                               tooltip="row: side by side; column: stacked; grid: near-square."),
                io.Int.Input("width", default=1280, min=MIN_SIDE, max=MAX_SIDE, step=MULTIPLE,
                             tooltip="Canvas width (multiple of 16)."),
                io.Int.Input("height", default=720, min=MIN_SIDE, max=MAX_SIDE, step=MULTIPLE,
                             tooltip="Canvas height (multiple of 16)."),
                io.Int.Input("padding", default=16, min=0, max=512,
                             tooltip="White margin around each subject, in pixels."),
                io.Boolean.Input("invert_masks", default=False,
                                 tooltip="Turn on for LoadImage's MASK (1 where the PNG is transparent)."),
                *images[1:],
                *masks,
            ],
            outputs=[io.Image.Output("image", display_name="image",
                                     tooltip="The composed reference image [1, H, W, 3].")],
        )

    @classmethod
    def execute(cls, image_1, layout, width, height, padding, invert_masks, image_2=None, image_3=None,
                image_4=None, mask_1=None, mask_2=None, mask_3=None, mask_4=None) -> io.NodeOutput:
        image = compose_from_inputs([image_1, image_2, image_3, image_4],
                                    [mask_1, mask_2, mask_3, mask_4], invert_masks=invert_masks,
                                    width=width, height=height, layout=layout, padding=padding)
        return io.NodeOutput(image)


NODES = [ComposeSubjects]
