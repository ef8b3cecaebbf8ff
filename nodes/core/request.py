"""One edit, checked once: ``prepare`` applies every rule that can refuse it (prompt, parameters,
mask, shapes, sizes, pixel values) before anything billable is sent, without encoding; the request
holds only trusted values, so encoding each image when its turn comes and building its task's
body are plain work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from . import images
from .cache import digest
from .errors import Advice, InputError
from .functions import CUSTOM_STYLE, EditFunction, ImageSize, build_body, build_parameters, build_prompt, output_size


@dataclass(frozen=True, eq=False)
class Item:
    """One image of the batch (and its mask), checked; encoded only when its turn to be sent comes,
    so a big batch starts at once and holds few payloads."""

    checked: images.Checked

    @property
    def sent_size(self) -> ImageSize:
        return self.checked.sent_size

    @property
    def original_size(self) -> ImageSize:
        return self.checked.original_size

    @property
    def notes(self) -> tuple[str, ...]:
        """What will be done to the input on the way (resized, alpha flattened, mask binarized, ...)."""
        return self.checked.notes

    def encode(self) -> Payload:
        image, mask = images.encode(self.checked)
        return Payload(image=image, mask=mask)


@dataclass(frozen=True)
class Payload:
    """The files of one item as sent; dropped once the service has accepted them."""

    image: images.Encoded
    mask: images.Encoded | None

    @property
    def notes(self) -> tuple[str, ...]:
        return self.image.notes


@dataclass(frozen=True)
class EditRequest:
    fn: EditFunction
    prompt: str  # as sent: the style pattern or default already applied
    parameters: Mapping[str, object]  # wire values, checked against the function's ranges
    items: tuple[Item, ...]

    def body(self, payload: Payload) -> dict[str, object]:
        return build_body(self.fn, prompt=self.prompt, base_image_url=payload.image.data_uri,
                          mask_image_url=payload.mask.data_uri if payload.mask else None, parameters=self.parameters)

    def expected_size(self, item: Item) -> ImageSize:
        return output_size(self.fn, item.sent_size, self.parameters)

    def digest(self, payload: Payload, *, endpoint: str) -> str:
        """The identity of one image's edit at ``endpoint``, from the files exactly as sent (their
        SHA-256 comes with the encode; hashing the float pixels instead cost ~40 ms per 2048^2 image
        besides it): the result cache's key and the journal's attach key (an emulator's result must
        never be served, nor its task attached, for the service)."""
        return digest(function=self.fn.api_name, prompt=self.prompt, parameters=self.parameters,
                      image_sha256=payload.image.sha256,
                      mask_sha256=payload.mask.sha256 if payload.mask is not None else None, endpoint=endpoint)

    def result_batch(self) -> images.ResultBatch | None:
        """The IMAGE batch to decode every result into as it arrives; None when the items' results
        are predicted at different sizes (a merged folder), which no single IMAGE can hold."""
        sizes = {self.expected_size(item) for item in self.items}
        if len(sizes) != 1:
            return None
        (size,) = sizes
        return images.ResultBatch(size=size, slots=len(self.items) * self.n)

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
    """Validate a whole edit without encoding it. Raises InputError naming the rule; sends nothing."""
    text = build_prompt(fn, prompt=prompt, style=style)
    parameters = build_parameters(fn, values or {})
    check_mask_rule(fn, has_mask=mask is not None)
    checked = images.check_batch(image, mask)
    n = parameters.get("n", 1)
    # Never pay for what cannot be handed back: the results' predicted size must decode and fit.
    images.check_result_size(output_size(fn, checked[0].sent_size, parameters),
                             count=len(checked) * (n if isinstance(n, int) else 1))
    return EditRequest(fn=fn, prompt=text, parameters=parameters, items=tuple(Item(one) for one in checked))


def check_mask_rule(fn: EditFunction, *, has_mask: bool) -> None:
    """A mask exactly when the function takes one: a mask given to any other function is refused,
    never dropped, so the user never pays for an edit that ignored it."""
    if fn.needs_mask and not has_mask:
        raise InputError(f"{fn.title_en} needs a mask", value="no mask", fix=Advice(
            "Connect a MASK (white = edit).",
            cli="Pass --mask FILE: a black-and-white image of the image's size, white = the area to edit."))
    if has_mask and not fn.needs_mask:
        raise InputError(
            f"{fn.title_en} ({fn.api_name}) takes no mask", value="a mask",
            fix=Advice("Remove the mask, or use Inpaint (description_edit_with_mask) to edit only the masked area.",
                       cli="Drop --mask, or use `edit description_edit_with_mask` to edit only the masked area."),
        )


def merge(requests: Sequence[EditRequest]) -> EditRequest:
    """Several prepared requests of one edit (same function, prompt and parameters) as one run,
    their items in order: e.g. the images of a folder, prepared one by one whatever their sizes.
    The runner sends one task per item, so every image shares the quota at once; only stacking
    the results into one IMAGE batch needs a single size, so callers that merge hand each item's
    results over on their own (the CLI writes files). The results' memory bound, checked per
    request by ``prepare``, is checked again over all of them."""
    if not requests:
        raise ValueError("merge needs at least one request")
    first = requests[0]
    for other in requests[1:]:
        if (other.fn, other.prompt, dict(other.parameters)) != (first.fn, first.prompt, dict(first.parameters)):
            raise ValueError("only requests of the same edit (function, prompt and parameters) run as one")
    items = tuple(item for request in requests for item in request.items)
    need = sum(images.result_memory_bytes(first.expected_size(item), count=first.n) for item in items)
    if need > images.RESULT_MEMORY_BYTES:
        raise InputError(
            f"the results of one run must fit in {images.RESULT_MEMORY_BYTES / 2**30:.3g} GiB of memory",
            value=f"{len(items)} images, n={first.n}: {need / 2**30:.1f} GiB",
            fix="Send fewer images per run, ask for fewer results (n), or lower the enlargement.")
    return replace(first, items=items)
