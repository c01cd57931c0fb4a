"""Boosted-tree inference in NumPy, bit for bit what XGBoost and LightGBM compute.

Why not the libraries: importing ``xgboost`` or ``lightgbm`` imports scikit-learn and SciPy
(about 1-1.5 s of a start-up that must stay under 3 s), and XGBoost's ``inplace_predict``
costs ~0.5 ms per call whatever the rows, most of a one-symbol decision. The models are small
(tens to hundreds of depth-4 trees), so a vectorised traversal over all rows and trees at once
is cheap. The libraries stay for training (:mod:`models.trees`) and as the reference the tests
compare with.

A :class:`Forest` is read from the artifact the library wrote (XGBoost UBJSON, LightGBM text)
and reproduces each library's arithmetic, because a vote's confidence feeds the ensemble and
the sizing policy and must not change in the last bit:

- **XGBoost** (``multi:softprob``): features are cast to float32; a split goes left when
  ``x < threshold`` (float32), a NaN takes the node's default branch; per class the margin is
  ``base_score[k]`` plus the class's leaf values, added one tree at a time in float32, in tree
  order; the softmax is XGBoost's: float32 ``expf(m - max)`` (the C library's, called through
  ctypes: NumPy's own ``exp`` differs in the last bit in ~0.1% of cases), summed in double,
  each divided by the float32 of the sum.
- **LightGBM** (``multiclass``): values with ``|x| <= 1e-35`` are zero (its dense-row reader
  drops them); per node, a NaN is 0 unless the node's missing type is NaN, a zero (missing
  type Zero) or a NaN (type NaN) takes the default branch, otherwise left when
  ``x <= threshold`` (double); per class the raw score is the leaf values added in double from
  0, iteration by iteration; the softmax is LightGBM's ``Common::Softmax`` in double with the
  C library's ``exp`` (Python's ``math.exp``).

Rows are independent: a row's probabilities depend on nothing else in the batch (no
floating-point work crosses rows), so decisions cannot depend on how rows were batched.

Traversal: every tree is stored as a complete binary tree of the forest's depth (a leaf
above the bottom is a subtree of copies of its value under dummy splits), so one level is one
gather-compare-step over an ``(n, trees)`` index array, with no per-tree Python.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

XGBOOST, LIGHTGBM = "xgboost", "lightgbm"
LGB_ZERO = 1e-35  # LightGBM's kZeroThreshold
_MISSING_NONE, _MISSING_ZERO, _MISSING_NAN = 0, 1, 2


@dataclass(frozen=True, eq=False)
class Forest:
    """A boosted multi-class forest as complete trees of depth ``depth``.

    Arrays (``T`` trees, ``I = 2**depth - 1`` internal positions in level order, ``2**depth``
    leaves): ``feature``, ``threshold``, ``default_left`` and ``missing`` are ``(T, I)``,
    ``leaf`` is ``(T, 2**depth)``; ``tree_class`` gives each tree's class; trees are in the
    library's order, ``rounds`` per class.
    """

    kind: str
    n_features: int
    n_classes: int
    depth: int
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    leaf: np.ndarray
    tree_class: np.ndarray
    base: np.ndarray

    @property
    def n_trees(self) -> int:
        return int(self.leaf.shape[0])

    @functools.cached_property
    def _special(self) -> tuple[np.ndarray, np.ndarray]:
        """Per node (flat): the branch a NaN takes, and the branch a zero takes (LightGBM:
        a zero is 'missing' for missing type Zero; a NaN is a zero unless the type is NaN)."""
        dl, mt = self.default_left.reshape(-1), self.missing.reshape(-1)
        if self.kind == XGBOOST:
            return dl, dl
        zero_left = np.where(mt == _MISSING_ZERO, dl, self.threshold.reshape(-1) >= 0.0)
        nan_left = np.where(mt == _MISSING_NAN, dl, zero_left)
        return nan_left, zero_left

    def margins(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` raw scores (float32 for XGBoost, float64 for LightGBM)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected an (n, {self.n_features}) matrix, got {X.shape}")
        n, dtype = len(X), self.leaf.dtype
        if self.kind == XGBOOST:
            x = X.astype(np.float32)
        else:
            x = np.where(np.abs(X) <= LGB_ZERO, 0.0, X)  # NaN stays NaN
        T, internal = self.leaf.shape[0], self.feature.shape[1]
        if T == 0 or n == 0:
            return np.broadcast_to(self.base.astype(dtype), (n, self.n_classes)).copy()
        flat_x = x.reshape(-1)
        row_base = (np.arange(n, dtype=np.intp) * self.n_features)[:, None]
        tree_base = (np.arange(T, dtype=np.intp) * internal)[None, :]
        pos = np.zeros((n, T), dtype=np.intp)
        feature, threshold = self.feature.reshape(-1), self.threshold.reshape(-1)
        special = self._special  # per node: direction of a NaN, and of a zero (LightGBM)
        for _ in range(self.depth):
            node = tree_base + pos
            v = flat_x[row_base + feature[node]]
            left = v < threshold[node] if self.kind == XGBOOST else v <= threshold[node]
            # NaN (and LightGBM's zero) take a per-node direction: patch those few entries
            odd = np.isnan(v) if self.kind == XGBOOST else np.isnan(v) | (v == 0.0)
            if odd.any():
                r, c = np.nonzero(odd)
                at = node[r, c]
                if self.kind == XGBOOST:
                    left[r, c] = special[0][at]
                else:
                    left[r, c] = np.where(np.isnan(v[r, c]), special[0][at], special[1][at])
            pos = 2 * pos + 2 - left  # left child 2p+1, right 2p+2
        leaves = self.leaf.reshape(-1)[
            (np.arange(T, dtype=np.int64) * self.leaf.shape[1])[None, :] + pos - internal
        ]
        # per class, the library's order and precision: base, then tree by tree
        by_class = leaves.reshape(n, -1, self.n_classes).transpose(0, 2, 1)  # (n, K, rounds)
        start = np.broadcast_to(self.base.astype(dtype)[None, :, None], (n, self.n_classes, 1))
        return np.cumsum(np.concatenate([start, by_class], axis=2), axis=2, dtype=dtype)[..., -1]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` class probabilities as the library returns them (float64)."""
        m = self.margins(X)
        if self.kind == XGBOOST:
            return _softmax_xgboost(m)
        return _softmax_lightgbm(m)


# --- softmax, as each library computes it -------------------------------------------------------
def _libm_expf() -> Callable[[float], float]:
    path = ctypes.util.find_library("m") or "libm.so.6"
    fn = ctypes.CDLL(path).expf
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


_EXPF: Callable[[float], float] | None = None


def _softmax_xgboost(m: np.ndarray) -> np.ndarray:
    global _EXPF
    if _EXPF is None:
        _EXPF = _libm_expf()
    expf = _EXPF
    d = (m - m.max(axis=1, keepdims=True)).astype(np.float32)  # float32 subtraction
    e = np.ones_like(d)
    rows, cols = np.nonzero(d != 0)  # expf(0) is 1 exactly
    if len(rows):
        e[rows, cols] = [expf(v) for v in d[rows, cols].tolist()]
    wsum = np.zeros(len(m))
    for k in range(m.shape[1]):  # double accumulation of the float32 terms, in class order
        wsum += e[:, k].astype(np.float64)
    return (e / wsum.astype(np.float32)[:, None]).astype(np.float64)


def _softmax_lightgbm(m: np.ndarray) -> np.ndarray:
    d = m - m.max(axis=1, keepdims=True)
    e = np.array([[math.exp(v) for v in row] for row in d.tolist()]).reshape(m.shape)
    wsum = np.zeros(len(m))
    for k in range(m.shape[1]):
        wsum += e[:, k]
    return e / wsum[:, None]


# --- building complete trees -------------------------------------------------------------------
@dataclass
class _Tree:
    """One tree in the library's node arrays (children < 0: a leaf, see ``leaf_of``)."""

    left: Sequence[int]
    right: Sequence[int]
    feature: Sequence[int]
    threshold: Sequence[float]
    default_left: Sequence[bool]
    missing: Sequence[int]
    leaves: dict[int, float]  # node id -> value, for the nodes that are leaves

    def is_leaf(self, node: int) -> bool:
        return node in self.leaves

    def leaf_of(self, node: int) -> float:
        return self.leaves[node]


def _depth(t: _Tree, node: int = 0) -> int:
    if t.is_leaf(node):
        return 0
    return 1 + max(_depth(t, t.left[node]), _depth(t, t.right[node]))


def _complete(
    trees: Sequence[_Tree],
    kind: str,
    n_features: int,
    n_classes: int,
    tree_class: Sequence[int],
    base: Sequence[float],
) -> Forest:
    depth = max([_depth(t) for t in trees], default=0)
    internal, leaves = 2**depth - 1, 2**depth
    T = len(trees)
    dtype = np.float32 if kind == XGBOOST else np.float64
    feature = np.zeros((T, internal), dtype=np.int64)
    threshold = np.zeros((T, internal), dtype=dtype)
    default_left = np.ones((T, internal), dtype=bool)
    missing = np.zeros((T, internal), dtype=np.int8)
    leaf = np.zeros((T, leaves), dtype=dtype)

    for i, t in enumerate(trees):

        def fill(node: int, pos: int, level: int, t: _Tree = t, i: int = i) -> None:
            if t.is_leaf(node):
                # a leaf above the bottom: every leaf below this position carries its value
                span = 2 ** (depth - level)
                rank = (pos - (2**level - 1)) * span  # level order -> first leaf below
                leaf[i, rank : rank + span] = t.leaf_of(node)
                return
            feature[i, pos] = t.feature[node]
            threshold[i, pos] = t.threshold[node]
            default_left[i, pos] = t.default_left[node]
            missing[i, pos] = t.missing[node]
            fill(t.left[node], 2 * pos + 1, level + 1)
            fill(t.right[node], 2 * pos + 2, level + 1)

        fill(0, 0, 0)
    tc = np.asarray(tree_class, dtype=np.int64)
    if T and not np.array_equal(tc, np.tile(np.arange(n_classes), T // n_classes)):
        raise ValueError(f"{kind}: trees are not one per class per round ({tc.tolist()[:12]})")
    return Forest(
        kind,
        n_features,
        n_classes,
        depth,
        feature,
        threshold,
        default_left,
        missing,
        leaf,
        tc,
        np.asarray(base, dtype=dtype),
    )


# --- XGBoost: UBJSON artifact ------------------------------------------------------------------
_UBJ_SCALARS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q", b"d": ">f", b"D": ">d"}


_UBJ_CONSTANTS = {b"T": True, b"F": False, b"Z": None}


class _UbjReader:
    """A cursor over one UBJSON document: each read advances ``pos`` past what it read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 0

    def next_marker(self) -> bytes:
        m = bytes(self.view[self.pos : self.pos + 1])
        self.pos += 1
        return m

    def skip(self, marker: bytes) -> bool:
        """Step past the next byte if it is ``marker`` (an optional part of a container)."""
        if bytes(self.view[self.pos : self.pos + 1]) == marker:
            self.pos += 1
            return True
        return False

    def scalar(self, marker: bytes) -> Any:
        fmt = _UBJ_SCALARS[marker]
        size = struct.calcsize(fmt)
        (value,) = struct.unpack_from(fmt, self.view, self.pos)
        self.pos += size
        return value

    def length(self) -> int:
        return int(self.scalar(self.next_marker()))

    def string(self) -> str:
        n = self.length()
        text = bytes(self.view[self.pos : self.pos + n]).decode("utf-8")
        self.pos += n
        return text

    def value(self, marker: bytes) -> Any:
        if marker in _UBJ_SCALARS:
            return self.scalar(marker)
        if marker == b"S":
            return self.string()
        if marker in _UBJ_CONSTANTS:
            return _UBJ_CONSTANTS[marker]
        if marker == b"{":
            return self.obj()
        if marker == b"[":
            return self.arr()
        raise ValueError(f"UBJSON: unsupported marker {marker!r} at {self.pos - 1}")

    def obj(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while not self.skip(b"}"):
            key = self.string()
            out[key] = self.value(self.next_marker())
        return out

    def arr(self) -> Any:
        typ = self.next_marker() if self.skip(b"$") else None
        if self.skip(b"#"):
            count = self.length()
            if typ is not None and typ in _UBJ_SCALARS:
                return self.numbers(typ, count)
            return [
                self.value(typ if typ is not None else self.next_marker()) for _ in range(count)
            ]
        items: list[Any] = []
        while True:
            m = self.next_marker()
            if m == b"]":
                return items
            items.append(self.value(m))

    def numbers(self, typ: bytes, count: int) -> np.ndarray:
        """A typed, counted array of numbers (XGBoost's tree arrays) as one numpy view:
        no per-element decoding."""
        fmt = _UBJ_SCALARS[typ]
        size = struct.calcsize(fmt)
        values = np.frombuffer(self.data, dtype=np.dtype(fmt), count=count, offset=self.pos)
        self.pos += size * count
        return values.astype(values.dtype.newbyteorder("="))


def read_ubjson(data: bytes) -> Any:
    """Decode the Universal Binary JSON that XGBoost's ``save_model("*.ubj")`` writes
    (objects, arrays with or without a type and count, strings, numbers, booleans, null)."""
    reader = _UbjReader(data)
    return reader.value(reader.next_marker())


def _floats(text: Any) -> list[float]:
    """XGBoost writes ``base_score`` as ``"5E-1"`` or ``"[a,b,c]"``."""
    if isinstance(text, str):
        text = text.strip()
        if text.startswith("["):
            return [float(v) for v in text.strip("[]").split(",") if v.strip()]
        return [float(text)]
    return [float(text)]


def xgboost_forest(model_bytes: bytes) -> Forest:
    """The forest of an XGBoost ``multi:softprob`` model saved as UBJSON."""
    doc = read_ubjson(model_bytes)
    learner = doc["learner"]
    objective = learner["objective"]["name"]
    if objective != "multi:softprob":
        raise ValueError(f"xgboost forest: objective {objective!r} is not multi:softprob")
    param = learner["learner_model_param"]
    n_classes = int(param["num_class"])
    n_features = int(param["num_feature"])
    booster = learner["gradient_booster"]
    if booster.get("name", "gbtree") != "gbtree":
        raise ValueError(f"xgboost forest: booster {booster.get('name')!r} is not gbtree")
    model = booster["model"]
    if int(model["gbtree_model_param"].get("num_parallel_tree", 1)) != 1:
        raise ValueError("xgboost forest: num_parallel_tree > 1 is not supported")
    base = _floats(param["base_score"])
    if len(base) == 1:
        base = base * n_classes
    trees = []
    for t in model["trees"]:
        if int(t["tree_param"].get("size_leaf_vector", 1)) > 1 or np.any(
            np.asarray(t["split_type"]) != 0
        ):
            raise ValueError(
                "xgboost forest: vector leaves and categorical splits are not supported"
            )
        left = np.asarray(t["left_children"]).tolist()
        cond = np.asarray(t["split_conditions"], dtype=np.float32).tolist()
        trees.append(
            _Tree(
                left=left,
                right=np.asarray(t["right_children"]).tolist(),
                feature=np.asarray(t["split_indices"]).tolist(),
                threshold=cond,
                default_left=[bool(v) for v in np.asarray(t["default_left"]).tolist()],
                missing=[0] * len(left),
                leaves={i: cond[i] for i, c in enumerate(left) if c == -1},
            )
        )
    return _complete(
        trees, XGBOOST, n_features, n_classes, np.asarray(model["tree_info"]).tolist(), base
    )


# --- LightGBM: text artifact -------------------------------------------------------------------
def _lightgbm_sections(model_text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The text format's ``key=value`` lines: the header's, and each ``Tree=`` block's
    (the first value of a key wins; what follows "end of trees" is ignored)."""
    header: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current = header
    for line in model_text.splitlines():
        line = line.strip()
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)
            continue
        if line in ("end of trees",):
            current = {}
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            current.setdefault(k, v)
    return header, blocks


def _lightgbm_tree(b: dict[str, str]) -> _Tree:
    """One ``Tree=`` block as a :class:`_Tree`, with LightGBM's leaf numbering made node ids."""
    leaf_value = [float(v) for v in b["leaf_value"].split()]
    n_leaves = int(b["num_leaves"])
    if n_leaves == 1:
        return _Tree([], [], [], [], [], [], leaves={0: leaf_value[0]})
    # internal nodes 0..n-2; a child < 0 is leaf ~child. Leaves get ids n_internal + rank.
    n_int = n_leaves - 1
    raw_left = [int(v) for v in b["left_child"].split()]
    raw_right = [int(v) for v in b["right_child"].split()]
    decision = [int(v) for v in b["decision_type"].split()]

    def node_id(child: int, n_int: int = n_int) -> int:
        return child if child >= 0 else n_int + ~child

    return _Tree(
        left=[node_id(c) for c in raw_left],
        right=[node_id(c) for c in raw_right],
        feature=[int(v) for v in b["split_feature"].split()],
        threshold=[float(v) for v in b["threshold"].split()],
        default_left=[bool(d & 2) for d in decision],
        missing=[(d >> 2) & 3 for d in decision],
        leaves={n_int + i: v for i, v in enumerate(leaf_value)},
    )


def lightgbm_forest(model_text: str) -> Forest:
    """The forest of a LightGBM ``multiclass`` model in its text format."""
    header, blocks = _lightgbm_sections(model_text)
    objective = header.get("objective", "").split()
    if not objective or objective[0] not in ("multiclass", "softmax"):
        raise ValueError(
            f"lightgbm forest: objective {header.get('objective')!r} is not multiclass"
        )
    n_classes = int(header["num_class"])
    per_round = int(header.get("num_tree_per_iteration", n_classes))
    if per_round != n_classes:
        raise ValueError("lightgbm forest: num_tree_per_iteration != num_class")
    n_features = int(header["max_feature_idx"]) + 1
    trees = []
    for b in blocks:
        if int(b.get("is_linear", "0")) or int(b.get("num_cat", "0")):
            raise ValueError(
                "lightgbm forest: linear trees and categorical splits are not supported"
            )
        trees.append(_lightgbm_tree(b))
    tree_class = [i % n_classes for i in range(len(trees))]
    return _complete(trees, LIGHTGBM, n_features, n_classes, tree_class, [0.0] * n_classes)
