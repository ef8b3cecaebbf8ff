"""One edit, checked once: ``prepare`` applies every rule that can refuse it (prompt, parameters,
mask, shapes, sizes, pixel values) before anything billable is sent, and the request it returns
holds only trusted values, so building each task's body is plain assembly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from . import images
from .cache import digest
from .errors import InputError
from .functions import CUSTOM_STYLE, EditFunction, ImageSize, build_body, build_parameters, build_prompt, output_size


@dataclass(frozen=True)
class Item:
    """One image of the batch (and its mask), encoded as it will be sent."""

    image: images.Encoded
    mask: images.Encoded | None
    notes: tuple[str, ...] = ()  # what was done to the input on the way (resized, alpha flattened, ...)


@dataclass(frozen=True)
class EditRequest:
    fn: EditFunction
    prompt: str  # as sent: the style pattern or default already applied
    parameters: Mapping[str, object]  # wire values, checked against the function's ranges
    items: tuple[Item, ...]

    def body(self, item: Item) -> dict[str, object]:
        return build_body(self.fn, prompt=self.prompt, base_image_url=item.image.data_uri,
                          mask_image_url=item.mask.data_uri if item.mask else None, parameters=self.parameters)

    def expected_size(self, item: Item) -> ImageSize:
        return output_size(self.fn, item.image.sent_size, self.parameters)

    def digest(self, item: Item) -> str:
        return digest(function=self.fn.api_name, prompt=self.prompt, parameters=self.parameters,
                      image_sha256=item.image.sha256, mask_sha256=item.mask.sha256 if item.mask else None)

    @property
    def n(self) -> int:
        """Images asked for per input image: what each task may bill."""
        n = self.parameters.get("n", 1)
        return n if isinstance(n, int) else 1

    @property
    def cacheable(self) -> bool:
        """Without a seed the user asks for a new random result: never served from the cache."""
        return self.parameters.get("seed") is not None


def prepare(
    fn: EditFunction, *, image: torch.Tensor, mask: torch.Tensor | None, prompt: str,
    style: str = CUSTOM_STYLE, values: Mapping[str, object] | None = None,
) -> EditRequest:
    """Validate and encode a whole edit. Raises InputError naming the rule; sends nothing."""
    text = build_prompt(fn, prompt=prompt, style=style)
    parameters = build_parameters(fn, values or {})
    check_mask_rule(fn, has_mask=mask is not None)
    checked = images.check_batch(image, mask)
    n = parameters.get("n", 1)
    # Never pay for what cannot be handed back: the results' predicted size must decode and fit.
    images.check_result_size(output_size(fn, checked[0].sent_size, parameters),
                             count=len(checked) * (n if isinstance(n, int) else 1))
    items = []
    for one in checked:
        encoded, encoded_mask = images.encode(one)
        items.append(Item(image=encoded, mask=encoded_mask, notes=one.notes + encoded.notes))
    return EditRequest(fn=fn, prompt=text, parameters=parameters, items=tuple(items))


def check_mask_rule(fn: EditFunction, *, has_mask: bool) -> None:
    """A mask exactly when the function takes one: a mask given to any other function is refused,
    never dropped, so the user never pays for an edit that ignored it."""
    if fn.needs_mask and not has_mask:
        raise InputError(f"{fn.title_en} needs a mask", value="no mask", fix="Connect a MASK (white = edit).")
    if has_mask and not fn.needs_mask:
        raise InputError(
            f"{fn.title_en} ({fn.api_name}) takes no mask", value="a mask",
            fix="Remove the mask, or use Inpaint (description_edit_with_mask) to edit only the masked area.",
        )
