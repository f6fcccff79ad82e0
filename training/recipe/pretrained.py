"""`--pretrained PATH`: a model's starting weights from a local file, never from the network.

The file is untrusted input: a ``.safetensors`` file (tensors only, by construction) or a torch file read with
``torch.load(weights_only=True)``, which lets only tensors and plain containers through, so reading it never runs
code. A torch file may hold the state dict itself, or wrap it as ``{"state_dict": ...}`` / ``{"model": ...}`` (a
dali-train checkpoint is the latter). When the file's classifier head has another number of classes than the data,
the head keeps its fresh initialisation and everything else is loaded; any other mismatch is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dali_pipes import ConfigError, DataError

_WRAPPERS = ("state_dict", "model")  # {"state_dict": sd} (Lightning, many repos), {"model": sd} (dali-train, DeiT)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of `path` by name; a missing, unreadable or foreign file is a one-line error naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--pretrained {path}: no such file; give a local .safetensors or .pth/.pt state dict "
                          "(nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — untrusted bytes fail in many ways (header, zip, pickle, unicode...)
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        if "weights only load failed" in text.lower() or "weightsunpickler" in str(e).lower():
            text = "it holds objects other than tensors and plain containers, and loading those could run code"
        raise DataError(f"--pretrained {path}: not a readable weights file ({text}); give a .safetensors file or "
                        "a torch state dict saved with torch.save(model.state_dict(), ...)") from None
    if isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None)
        state = inner if inner is not None else state
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        raise DataError(f"--pretrained {path}: holds no state dict (a mapping of parameter names to tensors); save "
                        "one with torch.save(model.state_dict(), ...) or safetensors")
    if all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _all_tensors(state: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())


def classifier_name(model: nn.Module, num_classes: int) -> str | None:
    """The qualified name of `model`'s classifier head: timm's ``get_classifier()``, else the last Linear or
    Conv2d producing `num_classes` outputs (torchvision's ``fc`` / ``classifier.3``, this project's ``fc``)."""
    names = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get) and id(get()) in names:
        return names[id(get())]
    heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
             and m.weight.shape[0] == num_classes]
    return heads[-1] if heads else None


def load_pretrained(model: nn.Module, path: str | Path, num_classes: int) -> str | None:
    """Load `path`'s weights into `model` (built with `num_classes` outputs) in place; the returned note says which
    head was replaced when the file's class count differs (None when it loaded whole). Parameters stay the same
    objects (``load_state_dict`` copies), so anything already holding them keeps them."""
    state = read_state_dict(path)
    head = classifier_name(model, num_classes)
    note = None
    head_keys = [k for k in state if head is not None and k.startswith(head + ".")]
    own = model.state_dict()
    if head_keys and any(k in own and state[k].shape != own[k].shape for k in head_keys):
        theirs = state[head + ".weight"].shape[0] if head + ".weight" in state else "?"
        state = {k: v for k, v in state.items() if k not in head_keys}
        note = (f"note: --pretrained {path}: classifier head {head} replaced ({theirs} classes in the file, "
                f"{num_classes} here), randomly initialised; every other layer loaded")
    missing, unexpected = sorted(set(own) - set(state) - set(head_keys if note else ())), sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else
                  f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here")
        raise DataError(f"--pretrained {path}: its weights do not fit this --model ({detail}); give weights of the "
                        "same architecture")
    model.load_state_dict(state, strict=note is None)
    return note
