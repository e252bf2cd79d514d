"""Keep the room, change the desk: find the desk and what stands on it in a photo as an edit
mask (white: change, black: keep), and put the room back around the generated desk.

```python
from deskgen.masks import DeskMask, composite_unmasked, find_desk_mask

found = find_desk_mask(photo, settings=DeskMask(grow=24))
found.mask.save("mask.png")            # grey, feathered: what an inpainting pipeline takes
print(found.found, found.coverage)     # {'desk': 0.21, 'monitor': 0.06, ...}, 0.31
final = composite_unmasked(photo, generated, found.mask)  # the photo's own pixels outside
```

Two routes find it. The closed-set route (the default) labels every pixel with a segmentation
model's classes (`DEFAULT_SEGMENTATION_MODEL`, an ADE20K Mask2Former, or any transformers
semantic-segmentation model). The open-vocabulary route (``DeskMask(route="open-vocabulary")``)
finds any named thing: Grounding DINO (`DEFAULT_DETECTOR_MODEL`) finds boxes for the target
phrases and SAM (`DEFAULT_SAM_MODEL`) turns each box into a mask. The models are loaded once per
process and shared. Importing this package imports neither torch, transformers nor numpy: they
are imported when first used.
"""

from __future__ import annotations

from ._segment import FoundMask, find_desk_mask
from ._settings import (
    DEFAULT_DETECTOR_MODEL,
    DEFAULT_MASK_TARGETS,
    DEFAULT_SAM_MODEL,
    DEFAULT_SEGMENTATION_MODEL,
    DeskMask,
)
from ._shape import before_after, composite_unmasked, mask_overlay

__all__ = [
    "DEFAULT_DETECTOR_MODEL",
    "DEFAULT_MASK_TARGETS",
    "DEFAULT_SAM_MODEL",
    "DEFAULT_SEGMENTATION_MODEL",
    "DeskMask",
    "FoundMask",
    "before_after",
    "composite_unmasked",
    "find_desk_mask",
    "mask_overlay",
]
