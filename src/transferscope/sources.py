"""Where a pretrained source network's weights come from: a checkpoint file, timm's local cache, or
a base network of another transferscope study.

:func:`load_source_weights` reads them and returns layers 1..n in the CutNet's own key names,
ready for ``load_state_dict(strict=False)``. A checkpoint may use the CutNet's names or the original
library model's (``net.foreign_names``, kept by the torchvision and timm families); which one is
read from the file. Every bad input ends in one :class:`UserError` line that names the config field
and the file. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file

from transferscope.config import ModelConfig
from transferscope.errors import UserError
from transferscope.models.cutnet import CutNet
from transferscope.models.registry import model_options
from transferscope.store import Store
from transferscope.treatments import treatment

#: how many keys a message lists
SHOWN = 3
#: float types widened to float32 on loading (exactly: every value is a float32)
NARROW = (torch.float16, torch.bfloat16)
#: the fields each kind of source needs, and what each holds
NEEDS = {"checkpoint": ("path",), "timm": ("name",), "study": ("study", "run")}
FIELDS = {"path": "a .pth, .pt or .safetensors state dict file", "name": "a timm model name, e.g. resnet18.a1_in1k",
          "study": "a transferscope study directory", "run": "the key of one of its base runs, e.g. r0-baseA"}


@dataclass(frozen=True)
class SourceSpec:
    """A pretrained source: ``checkpoint`` (``path``: a .pth/.pt or .safetensors state dict),
    ``timm`` (model ``name``; weights from ``path`` if given, else timm's local cache) or
    ``study`` (base network ``run`` of the transferscope study directory ``study``). ``field``
    is the config prefix messages name."""

    kind: Literal["checkpoint", "timm", "study"]
    path: str | None = None
    name: str | None = None
    study: str | None = None
    run: str | None = None
    field: str = "source"

    def __post_init__(self) -> None:
        if self.kind not in NEEDS:
            raise UserError(f"{self.field}.kind: unknown source {self.kind!r}; allowed: {', '.join(NEEDS)}")
        for attr in NEEDS[self.kind]:
            if not getattr(self, attr):
                raise UserError(f"{self.field}.{attr}: a {self.kind} source needs it ({FIELDS[attr]})")


def load_source_weights(source: SourceSpec, net: CutNet, *, layers: int,
                        model: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """The state dict, in ``net``'s own key names, of net's blocks 1..``layers`` (the layers a
    transfer may copy; the classifier block is never copied) taken from ``source``; raises
    UserError (one line) on any problem. ``model``, the current study's model section, makes a
    study source also match its architecture and options (not only its keys and shapes)."""
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers < net.num_layers:
        raise ValueError(f"layers must be in 1..{net.num_layers - 1} (the classifier is never copied), not {layers!r}")
    if source.kind == "study":
        state, where = _study_state(source, model)
    else:
        path = source.path if source.path else _timm_cached(source)
        where = f"{source.field}.{'path' if source.path else 'name'}: {path}"
        state = read_state_dict(path, where)
    return _matched(state, net, layers, where)


def read_state_dict(path: str | Path, where: str) -> dict[str, torch.Tensor]:
    """A state dict file: .safetensors, or a torch.save file read with ``weights_only`` (a plain
    state dict, or one under "state_dict" or "model"). ``where`` starts every message."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{where}: no such file (looked at {p.resolve()})")
    if p.is_dir():
        raise UserError(f"{where}: is a folder, not a weights file (a .pth, .pt or .safetensors state dict)")
    if p.suffix == ".safetensors":
        try:
            return load_file(p)
        except Exception as e:  # safetensors raises its own error types, OSError among others
            raise UserError(f"{where}: cannot read it as safetensors ({_first_line(e)})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the refused global one of two ways: "Unsupported global: GLOBAL argparse.Namespace", or
        # for a module it blocks outright (os, posix, subprocess...) "unsupported GLOBAL posix.system whose module..."
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))
        if found is None:
            raise UserError(f"{where}: cannot read it as a PyTorch checkpoint (torch.load with weights_only: "
                            f"{_weights_only_reason(e)})") from None
        raise UserError(f"{where}: holds pickled objects other than tensors ({found.group(1)}), which are not loaded "
                        "(they could run code); re-save it as a plain state dict: torch.save(model.state_dict(), "
                        "path), or safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')") from None
    except Exception as e:  # torch.load: OSError, EOFError, RuntimeError (a truncated zip), ...
        raise UserError(f"{where}: cannot read it as a PyTorch checkpoint ({_first_line(e)})") from None
    return _state_dict_in(obj, where)


def _state_dict_in(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The mapping of names to tensors a loaded checkpoint holds."""
    if isinstance(obj, dict):
        for nest in ("state_dict", "model"):
            if isinstance(obj.get(nest), dict):
                obj = obj[nest]
                break
    if not isinstance(obj, dict) or not obj:
        what = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise UserError(f"{where}: not a state dict (a mapping of parameter names to tensors): it holds {what}")
    bad = next(((k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise UserError(f"{where}: not a state dict (a mapping of parameter names to tensors): its entry {bad[0]!r} "
                        f"is a {type(bad[1]).__name__}")
    return dict(obj)


def _matched(state: dict[str, torch.Tensor], net: CutNet, layers: int, where: str) -> dict[str, torch.Tensor]:
    """``state``'s tensors of blocks 1..``layers`` under ``net``'s own names, checked: the file's
    naming (``net``'s or its library's) is the one that names more of ``net``'s keys."""
    own = net.state_dict()
    foreign = getattr(net, "foreign_names", None) or {}
    namings = [{k: k for k in own}] + ([{k: foreign[k] for k in own if k in foreign}] if foreign else [])
    names = max(namings, key=lambda n: sum(v in state for v in n.values()))
    wanted = [k for k in own if int(k.split(".")[1]) < layers]
    found = [k for k in wanted if names.get(k) in state]
    if 2 * len(found) < len(wanted):
        ours = " or ".join(repr(k) for k in dict.fromkeys(n[wanted[0]] for n in namings if wanted[0] in n))
        theirs = next((k for k in state if k.endswith(".weight")), next(iter(state)))
        raise UserError(f"{where}: holds weights of another architecture: {len(found)} of the {len(wanted)} keys of "
                        f"layers 1..{layers} are in it (this network's e.g. {ours}; the file's e.g. {theirs!r})")
    missing = [names.get(k, k) for k in wanted if k not in found]
    if missing:
        raise UserError(f"{where}: {len(missing)} key(s) of layers 1..{layers} missing: {_few(missing)}")
    # the classifier's module (blocks.L in net's names, e.g. fc or head in a library's): its keys
    # may differ from the file's, which was trained for other classes
    depth = 2 if names is namings[0] else 1
    head = {_module(names[k], depth) for k in own if int(k.split(".")[1]) == net.num_layers - 1 and k in names}
    known = set(names.values())
    unexpected = [k for k in state if k not in known and _module(k, depth) not in head]
    if unexpected:
        raise UserError(f"{where}: {len(unexpected)} key(s) this network does not have: {_few(unexpected)} "
                        f"(a checkpoint of another variant of the architecture?)")
    for k in wanted:
        if tuple(state[names[k]].shape) != tuple(own[k].shape):
            raise UserError(f"{where}: {names[k]} has shape {tuple(state[names[k]].shape)} in the file, this "
                            f"network's {k} has {tuple(own[k].shape)}")
    return {k: _exact(state[names[k]]) for k in wanted}


def _exact(t: torch.Tensor) -> torch.Tensor:
    """A tensor as the file holds it, float16 and bfloat16 widened (exactly) to float32."""
    return t.float() if t.dtype in NARROW else t


def _study_state(source: SourceSpec, model: ModelConfig | None) -> tuple[dict[str, torch.Tensor], str]:
    """A done base network of another study, and the words that name it."""
    store, field = Store(source.study), source.field
    try:
        config = store.load_config()
        records = {r.key: r for r in store.records()}
    except UserError as e:
        raise UserError(f"{field}.study: {e}") from None
    bases = sorted(k for k, r in records.items() if treatment(r.role).is_base and r.status == "done")
    record = records.get(source.run)
    if record is None or not treatment(record.role).is_base or record.status != "done":
        why = ("is not a run of it" if record is None else
               f"is a {record.treatment} run, not a base network" if not treatment(record.role).is_base else
               f"is {record.status}, not done")
        raise UserError(f"{field}.run: {source.run!r} {why} (study {source.study}); allowed: its done base runs "
                        f"{', '.join(bases) or '(none yet)'}")
    theirs = config.model
    if model is not None and _resolved(theirs) != _resolved(model):
        raise UserError(f"{field}.study: {source.study} trained {_described(theirs)}, this study's network is "
                        f"{_described(model)}: copy layers between networks of the same architecture and options")
    path = store.weights_path(source.run)
    where = f"{field}.run: {source.study} run {source.run} ({_described(theirs)}; {path})"
    if not path.is_file():
        raise UserError(f"{where}: its weights file is missing; run that study again to train it")
    try:
        return store.load_weights(source.run), where
    except UserError as e:
        raise UserError(f"{field}.run: {e}") from None


def _resolved(m: ModelConfig) -> tuple[str, dict[str, Any]]:
    """An architecture and its options, defaults filled in (so {} equals the defaults spelled out)."""
    return m.arch, {**model_options(m.arch), **m.options}


def _described(m: ModelConfig) -> str:
    return f"{m.arch} with options {dict(m.options)}" if m.options else f"{m.arch} (default options)"


def _timm_cached(source: SourceSpec) -> str:
    """The file timm would load ``source.name``'s pretrained weights from, found in the Hugging
    Face cache or torch hub's checkpoint folder, never downloaded."""
    try:
        import timm
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError as e:
        raise UserError(f"{source.field}.name: a timm source needs timm ({e}); pip install timm, or give the "
                        f"weights file as {source.field}.path") from None
    field = f"{source.field}.name"
    try:
        cfg = timm.models.get_pretrained_cfg(source.name)
    except RuntimeError as e:  # a known architecture with an unknown tag
        raise UserError(f"{field}: {_first_line(e)} (timm.list_pretrained({source.name.split('.')[0] + '.*'!r}) "
                        "lists its tags)") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise UserError(f"{field}: timm has no pretrained weights for {source.name!r}; "
                        "timm.list_pretrained() lists the models that have")
    # read now, not when huggingface_hub was imported, so the environment of this call counts
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                               else constants.HF_HUB_CACHE)
    looked = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in files:
            found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                return found
        looked.append(f"the Hugging Face cache {cache} for {repo} ({' or '.join(files)})")
    if cfg.url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if hub_file.is_file():
            return str(hub_file)
        looked.append(f"{hub_file} for {cfg.url}")
    raise UserError(f"{field}: no pretrained weights for timm model {source.name!r} on this machine (nothing is "
                    f"downloaded); looked in {' and at '.join(looked)}; give the file as {source.field}.path = "
                    f"\"...safetensors\", or download it once on a machine with internet "
                    f"(timm.create_model({source.name!r}, pretrained=True)) into that cache and copy it here")


def _module(key: str, depth: int) -> str:
    return ".".join(key.split(".")[:depth])


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (", ..." if len(keys) > SHOWN else "")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    # a message without words (torch.load's KeyError of a junk file's first bytes) names its type
    return lines[0] if any(c.isalpha() for c in lines[0]) else f"{type(e).__name__}: {lines[0]}"


def _weights_only_reason(e: BaseException) -> str:
    """The reason torch's weights-only unpickler gives, not its advice around it."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
    return found.group(1).strip() if found else _first_line(e)
