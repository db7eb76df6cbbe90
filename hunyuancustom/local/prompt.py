"""The released prompt template for the text-image fusion (LLaVA-Llama-3-8B), pure strings.

Released recipe: the HunyuanVideo video template wraps the prompt, then "\\nThe {name} looks
like<image>" is appended (name: the job's item name, "object" by default; the negative prompt
gets the same suffix with the tokenizer's default name "person" and an all-white image). The
text is padded to crop_start + text_len tokens, LLaVA expands `<image>` into 576 image features
in place, the hidden states two layers before the last are taken and the first `crop_start`
(template) positions dropped.
"""

from __future__ import annotations

VIDEO_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
CROP_START = 95  # template tokens dropped from the hidden states
TEXT_LEN = 256  # text tokens after the crop
HIDDEN_STATE_SKIP_LAYERS = 2
IMAGE_TOKEN = "<image>"
IMAGE_FEATURES = 576  # (336 / 14) ** 2 CLIP-L patches
DEFAULT_NAME = "object"  # the released scripts' item name when none is given
NEGATIVE_NAME = "person"  # the released negative branch tokenizes with text2tokens' default name


def suffix(name: str = DEFAULT_NAME) -> str:
    return f"\nThe {name} looks like{IMAGE_TOKEN}"


def llava_text(prompt: str, name: str = DEFAULT_NAME) -> str:
    """The exact string the released code tokenizes for one branch."""
    return VIDEO_TEMPLATE.format(prompt) + suffix(name)
