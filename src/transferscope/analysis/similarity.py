"""Representation similarity of a study's networks, layer by layer (linear CKA, unbiased, minibatch).

For each replicate and target task T (with S the other task), on T's test images:

- **baseA vs baseB**: every layer of baseA against every layer of baseB (a layer-by-layer matrix;
  its diagonal is the per-layer curve). How alike are the features two tasks' networks learn?
- **fine-tuned vs its source**: each fine-tuned network (TnT+, SnT+ at each n) against the base
  network it copied layers 1..n from (baseT, baseS), layer by layer: how far fine-tuning moved
  each copied layer (layers above n were re-initialised, so there it compares fresh layers with the
  source's); SnT+ is also compared with baseT, the network trained on T from scratch.

Layer outputs are flattened (CKA needs only each batch's Gram matrix, so wide layers cost memory
per batch, not per image pair), centred over the batch and multiplied in float32
(:func:`~transferscope.analysis.cka.gram_centred`: CKA to about 1e-6); the networks run with
each BatchNorm folded into the convolution before it (:func:`~transferscope.analysis.networks.for_inference`). Minibatches are drawn from a seeded permutation of the images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from transferscope.analysis.cka import HsicTerms, MinibatchCKA, gram_centred, minibatches
from transferscope.analysis.networks import for_inference, layer_outputs, load_network, part_images, weights_absence
from transferscope.stats import over_replicates, per_replicate
from transferscope.store import Store
from transferscope.treatments import TREATMENTS, base_key

#: the fine-tuned roles compared with their sources (transferscope.treatments.TREATMENTS, ``analysed``)
FINETUNED_ROLES = tuple(t.role for t in TREATMENTS if t.analysed)


@dataclass
class Similarity:
    """``bases``: replicate, target, layer_a, layer_b, cka (baseA layer vs baseB layer on the
    target's test images). ``finetuned``: replicate, target, key, role, n, layer, reference
    ("source" or "target base"), cka."""

    bases: pd.DataFrame
    finetuned: pd.DataFrame
    layer_names: tuple[str, ...]
    images: int  # test images per task used (at most)
    batch_size: int
    notes: list[str] = field(default_factory=list)
    #: replicate -> why it was not compared (which base network has no weights, and why)
    skipped: dict[int, str] = field(default_factory=dict)


def _finished_finetuned(frame: pd.DataFrame, replicate: int, target: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    sel = (frame["status"] == "done") & frame["role"].isin(FINETUNED_ROLES) & (frame["replicate"] == replicate) & (
        frame["target"] == target)
    if "target_size" in frame:
        sel &= frame["target_size"].isna()
    return frame.loc[sel].sort_values(["role", "n"])


def study_similarity(store: Store, study, frame: pd.DataFrame, *, batch_size: int = 256, max_images: int = 2048,
                     seed: int = 0, device: str = "cpu",
                     on_step: Callable[[int, int], None] | None = None) -> Similarity:
    """Linear CKA (unbiased HSIC, minibatches of about ``batch_size``) between base networks and
    between each fine-tuned network and its sources, on at most ``max_images`` test images of each
    target task (a seeded subset). ``on_step(done, total)`` is called after each (replicate, target)."""
    done = frame.loc[frame["status"] == "done"] if len(frame) else frame
    base_rows, ft_rows, notes, missing = [], [], [], []
    skipped: dict[int, str] = {}
    names: tuple[str, ...] = ()
    images = 0
    recorded = {int(x) for x in frame["replicate"]} if len(frame) else set()
    replicates = sorted(recorded | set(range(study.config.treatments.replicates)))
    total, step = len(replicates) * len(study.config.treatments.targets), 0
    for r in replicates:
        keys = {t: base_key(r, t) for t in ("A", "B")}
        absent = [why for k in keys.values() if (why := weights_absence(store, frame, k))]
        if absent:
            skipped[r] = "; ".join(absent) + ", so it has no weights" if len(absent) == 1 else (
                "; ".join(absent) + ", so neither has weights")
            continue
        for target in study.config.treatments.targets:
            nets = {keys[t]: for_inference(load_network(store, study, keys[t], r, t, device)) for t in ("A", "B")}
            finetuned = _finished_finetuned(done, r, target)
            refs: dict[str, list[tuple[str, str]]] = {}  # key -> [(reference name, reference key)]
            meta: dict[str, tuple[str, int]] = {}
            for row in finetuned.itertuples():
                if not store.weights_path(row.key).is_file():
                    missing.append(row.key)
                    continue
                nets[row.key] = for_inference(load_network(store, study, row.key, r, target, device))
                src = base_key(r, row.source)
                refs[row.key] = [("source", src)] + ([("target base", keys[target])] if row.source != target else [])
                meta[row.key] = (row.role, int(row.n))
            names = nets[keys["A"]].block_names
            task = study.task(r, target)
            x, _ = part_images(task.test, max_images, seed)
            images = max(images, x.shape[0])
            num_layers = len(names)
            accs = {("bases", ""): MinibatchCKA(num_layers, num_layers)}
            for key, pairs in refs.items():
                for ref_name, _ in pairs:
                    accs[(key, ref_name)] = MinibatchCKA(num_layers, num_layers)
            for idx in minibatches(x.shape[0], batch_size, seed):
                terms = {}  # each network's Gram matrices of this batch, prepared once for all its comparisons
                for k, net in nets.items():
                    outputs = next(layer_outputs(net, x[idx], task, None, len(idx)))
                    terms[k] = HsicTerms(torch.stack([gram_centred(h) for h in outputs]))
                accs[("bases", "")].update_terms(terms[keys["A"]], terms[keys["B"]])
                for key, pairs in refs.items():
                    for ref_name, ref_key in pairs:
                        accs[(key, ref_name)].update_terms(terms[key], terms[ref_key])
            for (key, ref_name), acc in accs.items():
                values = acc.value(strict=False)
                undefined = acc.undefined()
                if undefined[0] or undefined[1]:
                    notes.append(f"replicate {r}, target {target}, {key if key != 'bases' else 'baseA vs baseB'}: "
                                 f"CKA undefined at layer(s) {sorted({i + 1 for i in undefined[0] + undefined[1]})} "
                                 "(constant outputs)")
                if key == "bases":
                    for i in range(num_layers):
                        for j in range(num_layers):
                            base_rows.append((r, target, i + 1, j + 1, float(values[i, j])))
                else:
                    role, n = meta[key]
                    for i in range(num_layers):
                        ft_rows.append((r, target, key, role, n, i + 1, ref_name, float(values[i, i])))
            step += 1
            if on_step is not None:
                on_step(step, total)
    if missing:
        save = study.config.eval.save_weights
        why = (f"eval.save_weights = \"{save}\" keeps no fine-tuned network" if save == "bases"
               else "their weights files are missing")
        notes.append(f"{len(missing)} fine-tuned network(s) have no weights ({why}), e.g. {missing[0]}: not compared")
    return Similarity(
        pd.DataFrame(base_rows, columns=["replicate", "target", "layer_a", "layer_b", "cka"]),
        pd.DataFrame(ft_rows, columns=["replicate", "target", "key", "role", "n", "layer", "reference", "cka"]),
        tuple(names), images, batch_size, notes, skipped)


def base_curve(sim: Similarity) -> pd.DataFrame:
    """CKA(baseA layer l, baseB layer l) per layer: mean and 95% CI over replicates (each the mean
    of its two targets' images: both compare the same two networks), replicates and values."""
    diag = sim.bases.loc[sim.bases["layer_a"] == sim.bases["layer_b"]].rename(columns={"layer_a": "layer"})
    return _over_replicates(diag, ["layer"])


def base_matrix(sim: Similarity) -> np.ndarray:
    """The mean layer-by-layer matrix (rows: baseA's layers, columns: baseB's)."""
    if sim.bases.empty:
        return np.zeros((0, 0))
    table = sim.bases.groupby(["layer_a", "layer_b"])["cka"].mean().unstack("layer_b")
    return table.to_numpy()


def finetune_table(sim: Similarity, reference: str = "source") -> pd.DataFrame:
    """Mean and 95% CI over replicates of CKA(fine-tuned layer l, reference layer l) per role, n and
    layer (both directions averaged within a replicate), with the counts."""
    ft = sim.finetuned.loc[sim.finetuned["reference"] == reference]
    return _over_replicates(ft, ["role", "n", "layer"])


def _over_replicates(values: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    columns = [*by, "mean", "ci_low", "ci_high", "replicates", "networks"]
    if values.empty:
        return pd.DataFrame(columns=columns)
    table = over_replicates(per_replicate(values, "cka", by), by, bounds=None)
    return table[columns].astype({c: int for c in by if c != "role"})


__all__ = ["Similarity", "base_curve", "base_matrix", "finetune_table", "study_similarity"]
