"""Coupled-channel groups: union-find over the label pairs a propagation pass recorded.

Labels that are one channel form a *class* (they live or die together); label spaces (the output
channels of one producer) tie classes into *groups*. A plan keeps classes of groups. A group is
frozen when any of its labels is, with the first reason recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from compressor.graph.labels import LabelState


@dataclass
class Group:
    """Channels that are pruned together: ``size`` channels, each a class of coupled labels."""

    name: str
    size: int
    frozen: bool
    reason: str | None
    members: list[tuple[str, str]]  # (module or parameter name, role: out | in | affine | param)
    classes: np.ndarray  # global class ids, in the group's channel order

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "frozen": self.frozen,
            "reason": self.reason,
            "members": [f"{m}:{r}" for m, r in self.members],
        }


@dataclass
class Partition:
    """Classes and groups of one label state (see :func:`partition`)."""

    label_class: np.ndarray  # class id per label
    n_classes: int
    groups: list[Group]
    class_group_index: np.ndarray  # group index per class (-1: no group)
    class_pos: np.ndarray  # position of the class in its group
    at_risk: list[np.ndarray]  # classes of producers that some plans could empty


def partition(st: LabelState) -> Partition:
    """Classes (union-find over the label pairs) and groups (classes tied by label spaces)."""
    n = st.n
    pairs = torch.cat(st.pairs, dim=1).numpy() if st.pairs else np.zeros((2, 0), dtype=np.int64)
    n_classes, cls = _components(n, pairs[0], pairs[1])
    grp = _label_groups(st, pairs)
    frozen_label, label_reason = _frozen(st, grp)
    producer_spaces, members = _members(st, grp)
    class_frozen = np.zeros(n_classes, dtype=bool)
    np.logical_or.at(class_frozen, cls, frozen_label)
    # classes of each group, ordered by their smallest label
    first_label = np.full(n_classes, n, dtype=np.int64)
    np.minimum.at(first_label, cls, np.arange(n))
    class_group = grp[first_label]
    groups: list[Group] = []
    class_group_index = np.full(n_classes, -1, dtype=np.int64)
    class_pos = np.zeros(n_classes, dtype=np.int64)
    by_group: dict[int, list[int]] = {}
    for c in np.argsort(first_label, kind="stable"):
        by_group.setdefault(int(class_group[c]), []).append(int(c))
    group_order = sorted(producer_spaces, key=lambda g: min(first_label[by_group[g]]))
    used_names: set[str] = set()
    for g in group_order:
        classes = np.array(by_group[g], dtype=np.int64)
        frozen = bool(class_frozen[classes].any())
        reason = label_reason.get(g) if frozen else None
        name = producer_spaces[g]
        if name in used_names:
            name = f"{name}#{g}"
        used_names.add(name)
        class_group_index[classes] = len(groups)
        class_pos[classes] = np.arange(len(classes))
        groups.append(Group(name, len(classes), frozen, reason, _dedupe(members.get(g, [])), classes))
    return Partition(
        cls, n_classes, groups, class_group_index, class_pos, _at_risk(st, cls, class_group_index, groups)
    )


def _components(n: int, rows: np.ndarray, cols: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the undirected graph on ``n`` labels with edges ``rows[i]-cols[i]``."""
    adj = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    n_comp, comp = connected_components(adj, directed=False)
    return int(n_comp), comp.astype(np.int64)


def _label_groups(st: LabelState, pairs: np.ndarray) -> np.ndarray:
    """Group id per label: label pairs plus each space's labels tied to its first label."""
    label_space = np.empty(st.n, dtype=np.int64)
    space_list = sorted(st.spaces.values(), key=lambda s: s.start)
    for si, s in enumerate(space_list):
        label_space[s.start : s.start + s.size] = si
    space_first = np.array([s.start for s in space_list], dtype=np.int64)
    rows = np.concatenate([pairs[0], np.arange(st.n)])
    cols = np.concatenate([pairs[1], space_first[label_space]])
    return _components(st.n, rows, cols)[1]


def _frozen(st: LabelState, grp: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """Frozen flag per label, and the first reason recorded per group."""
    frozen_label = np.zeros(st.n, dtype=bool)
    label_reason: dict[int, str] = {}
    for labs, reason in st.frozen:
        ln = labs.numpy()
        frozen_label[ln] = True
        for g in np.unique(grp[ln]):
            label_reason.setdefault(int(g), reason)
    return frozen_label, label_reason


def _members(st: LabelState, grp: np.ndarray) -> tuple[dict[int, str], dict[int, list[tuple[str, str]]]]:
    """The first producer of each group (its name) and every (module or parameter, role) per group."""
    producer_spaces: dict[int, str] = {}
    members: dict[int, list[tuple[str, str]]] = {}
    for rec in st.records.values():
        if rec.out_labels is not None and len(rec.out_labels):
            g = int(grp[int(rec.out_labels[0])])
            producer_spaces.setdefault(g, rec.name)
            for gg in np.unique(grp[rec.out_labels.numpy()]):
                members.setdefault(int(gg), []).append((rec.name, "out"))
        if rec.in_labels is not None and len(rec.in_labels):
            for gg in np.unique(grp[rec.in_labels.numpy()]):
                members.setdefault(int(gg), []).append((rec.name, "in"))
        if rec.labels is not None and len(rec.labels):
            for gg in np.unique(grp[rec.labels.numpy()]):
                members.setdefault(int(gg), []).append((rec.name, "affine"))
    for key, s in st.spaces.items():
        if key[0] == "param":
            members.setdefault(int(grp[s.start]), []).append((key[1], "param"))
    return producer_spaces, members


def _at_risk(
    st: LabelState, label_class: np.ndarray, class_group_index: np.ndarray, groups: list[Group]
) -> list[np.ndarray]:
    """Producers that some plans could empty: those not present in every class of their group."""
    out: list[np.ndarray] = []
    for rec in st.records.values():
        if rec.out_labels is None or not len(rec.out_labels):
            continue
        pcls = np.unique(label_class[rec.out_labels.numpy()])
        gi = class_group_index[pcls[0]]
        if gi >= 0 and len(pcls) < groups[gi].size:
            out.append(pcls)
    return out


def _dedupe(xs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for x in xs:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def collapsed_whole_group_convs(st: LabelState, part: Partition) -> list[str]:
    """Grouped convs cut in whole groups (``record.extra["grouped"] == "whole"``) whose channels
    are left with fewer than two prunable classes: whole-group ties merged them into one class
    (a channel shuffle after the conv) or froze them. ``build_graph`` cuts these within groups."""
    out: list[str] = []
    for rec in st.records.values():
        if rec.extra.get("grouped") != "whole" or rec.in_labels is None or rec.out_labels is None:
            continue
        labels = torch.cat([rec.in_labels, rec.out_labels]).numpy()
        cls = np.unique(part.label_class[labels])
        gi = part.class_group_index[cls]
        free = sum(1 for g in gi if g >= 0 and not part.groups[g].frozen and part.groups[g].size > 1)
        if free < 2:
            out.append(rec.name)
    return out
