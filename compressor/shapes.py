"""The input-shape convention: a model's input shape is C,H,W; the batch is given separately.

Everywhere a user or a file names the shape of one input sample, it is ``C,H,W`` (channels,
height, width) with no batch: ``--input-shape`` of every command, a checkpoint's
``meta["input_shape"]``, a target's ``[input].shape``. The batch comes from elsewhere: the
target's ``[input].batch``, a ``--batch`` flag, or 1 where only the architecture matters
(counting FLOPs, tracing the channel graph). Four numbers are refused with a message saying so,
rather than guessed at.

Where the shape comes from, first found wins (:func:`resolve_input_shape`): the caller's value
(a flag), the checkpoint's meta, the target, a default (only ``compress profile`` has one).

Tensor-level functions (``compressor.count``, ``build_graph``, ``export_onnx``) take the full
tensor shape, batch first: ``(batch, *sample)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compressor.errors import UsageError

#: How the convention is said in messages and help texts.
CONVENTION = "C,H,W (channels, height, width; no batch), e.g. 3,224,224"

SampleShape = tuple[int, int, int]


def sample_shape(value: Any, *, what: str = "input shape") -> SampleShape:
    """``value`` (a sequence of 3 positive integers) as a C,H,W tuple; anything else is a UsageError."""
    try:
        shape = tuple(int(v) for v in value)
        exact = all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {value!r} is not a list of integers; give {CONVENTION}") from None
    if len(shape) == 4:
        raise UsageError(
            f"{what} {_text(shape)} has 4 numbers; give the shape of one input as {CONVENTION}. "
            "The batch is not part of it: it comes from the target's [input].batch (or --batch)"
        )
    if len(shape) != 3 or not exact or any(v <= 0 for v in shape):
        raise UsageError(f"{what} {_text(shape)} must be 3 positive integers: {CONVENTION}")
    return shape  # type: ignore[return-value]


def parse_input_shape(text: str | None, *, flag: str = "--input-shape") -> SampleShape | None:
    """A command-line ``"3,224,224"`` (or ``3x224x224``) as a C,H,W tuple; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = [t.strip() for t in text.replace("x", ",").split(",") if t.strip()]
    try:
        numbers = [int(t) for t in parts]
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a comma-separated list of integers; give {CONVENTION}"
        ) from None
    return sample_shape(numbers, what=flag)


def resolve_input_shape(
    given: Sequence[int] | None = None,
    meta: Mapping[str, Any] | None = None,
    target: Any = None,
    *,
    default: Sequence[int] | None = None,
    source: str = "the checkpoint",
) -> SampleShape:
    """The model's input shape C,H,W: ``given`` (a flag), else ``meta["input_shape"]``, else the
    target's ``[input].shape``, else ``default``; none of them is a :class:`UsageError`."""
    if given is not None:
        return sample_shape(given, what="--input-shape")
    recorded = (meta or {}).get("input_shape")
    if recorded:
        return sample_shape(recorded, what=f"{source}'s meta input_shape")
    tshape = getattr(getattr(target, "input", None), "shape", None)
    if tshape:
        return sample_shape(tshape, what=f"target {getattr(target, 'name', '')!r} [input].shape")
    if default is not None:
        return sample_shape(default, what="the default input shape")
    where = f" and target {target.name!r} gives none ([input].shape)" if target is not None else ""
    raise UsageError(f"{source} does not record its input shape{where}; pass --input-shape {CONVENTION}")


def _text(shape: Sequence[int]) -> str:
    return ",".join(str(v) for v in shape)


__all__ = ["CONVENTION", "SampleShape", "parse_input_shape", "resolve_input_shape", "sample_shape"]
