"""Revision catalogs: which training checkpoints a model has, in training order.

``revisions(model_or_dir)`` returns ``[Revision(revision, step, tokens), ...]`` sorted by step:

* a local directory: sub-folders ``step{N}``, ``checkpoint-{N}`` (HF Trainer) or
  ``step{N}-tokens{X}B``, each a ``save_pretrained`` folder; tokens from the folder's
  ``trainer_state.json`` (``num_input_tokens_seen``) when present, else from the name, else
  ``step x tokens_per_step``; other folders, and links to a checkpoint folder of the same
  directory (a link must not pass for a revision of its own), are skipped with a warning;
* a hub model id: the repository's branches from ``huggingface_hub.list_repo_refs`` (the truth:
  revisions go missing), falling back to the built-in schedule when the hub cannot be reached.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

logger = logging.getLogger(__name__)

PYTHIA_TOKENS_PER_STEP = 2_097_152  # 1024 sequences x 2048 tokens
OLMOE_TOKENS_PER_STEP = 4_194_304
# OLMo-1B-0724's branch names are consistent with floor(step * 2,096,640 / 1e9) B for all ten
# revisions the study scanned (2,097,152 would name step1454000 "3049B", not "3048B"). Built-in
# OLMo names are a reconstruction; list_repo_refs is authoritative.
OLMO_TOKENS_PER_STEP = 2_096_640

_NAME_PATTERNS = [
    re.compile(r"^step(?P<step>\d+)-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[BMK]?)$"),
    re.compile(r"^step(?P<step>\d+)$"),
    re.compile(r"^checkpoint-(?P<step>\d+)$"),
]
_UNITS = {"B": 1e9, "M": 1e6, "K": 1e3, "": 1.0}


class Revision(NamedTuple):
    """One checkpoint: branch or folder name, training step, tokens seen (None if unknown)."""

    revision: str
    step: int
    tokens: Optional[int] = None


def _in_order(revs) -> list[Revision]:
    return sorted(revs, key=lambda r: (r.step, r.revision))


def parse_revision_name(name: str) -> Optional[tuple[int, Optional[int]]]:
    """``(step, tokens or None)`` from a checkpoint name, None if it is not one."""
    for pat in _NAME_PATTERNS:
        m = pat.match(name)
        if m:
            tokens = None
            if m.groupdict().get("tokens") is not None:
                tokens = int(float(m["tokens"]) * _UNITS[m["unit"]])
            return int(m["step"]), tokens
    return None


# ---------------------------------------------------------------- built-in schedules
def pythia_schedule() -> list[Revision]:
    steps = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))
    return [Revision(f"step{s}", s, s * PYTHIA_TOKENS_PER_STEP) for s in steps]


def _billions_schedule(steps, tokens_per_step) -> list[Revision]:
    out = []
    for s in steps:
        billions = math.floor(s * tokens_per_step / 1e9)
        out.append(Revision(f"step{s}-tokens{billions}B", s, billions * 10**9))
    return out


def olmo_1b_0724_schedule() -> list[Revision]:
    return _billions_schedule(range(1000, 1454001, 1000), OLMO_TOKENS_PER_STEP)


def olmoe_0924_schedule() -> list[Revision]:
    return _billions_schedule(range(5000, 1220001, 5000), OLMOE_TOKENS_PER_STEP)


def builtin_schedule(model_id: str) -> Optional[list[Revision]]:
    if re.fullmatch(r"EleutherAI/pythia-[\w.]+", model_id):
        return pythia_schedule()
    if model_id == "allenai/OLMo-1B-0724-hf":
        return olmo_1b_0724_schedule()
    if model_id == "allenai/OLMoE-1B-7B-0924":
        return olmoe_0924_schedule()
    return None


# The ten revisions per model that arXiv 2606.02378 scanned.
PAPER_REVISIONS = {
    "pythia": ["step1", "step4", "step16", "step64", "step256", "step512", "step3000", "step10000",
               "step38000", "step143000"],
    "allenai/OLMo-1B-0724-hf": [
        "step1000-tokens2B", "step2000-tokens4B", "step5000-tokens10B", "step11000-tokens23B",
        "step25000-tokens52B", "step56000-tokens117B", "step126000-tokens264B", "step285000-tokens597B",
        "step644000-tokens1350B", "step1454000-tokens3048B"],
    "allenai/OLMoE-1B-7B-0924": [
        "step5000-tokens20B", "step10000-tokens41B", "step25000-tokens104B", "step50000-tokens209B",
        "step100000-tokens419B", "step200000-tokens838B", "step400000-tokens1677B", "step600000-tokens2516B",
        "step800000-tokens3355B", "step1220000-tokens5117B"],
}


def paper_revisions(model_id: str) -> Optional[list[str]]:
    if model_id.startswith("EleutherAI/pythia-"):
        return PAPER_REVISIONS["pythia"]
    return PAPER_REVISIONS.get(model_id)


# ---------------------------------------------------------------- catalogs
def skip_reason(sub: Path, real_root: Path) -> Optional[str]:
    """Why the folder ``sub`` of a checkpoint directory is not a revision (None if it is one)."""
    if parse_revision_name(sub.name) is None:
        return "its name is not step{N}, checkpoint-{N} or step{N}-tokens{X}B"
    if not (sub / "config.json").exists():
        return "no config.json"
    target = sub.resolve()
    if sub.is_symlink() and target.parent == real_root and parse_revision_name(target.name) is not None:
        return f"a link to {target.name}, which is scanned under its own name"
    return None


def _local_revisions(root: Path, tokens_per_step: Optional[int]) -> list[Revision]:
    out, skipped = [], []
    real_root = root.resolve()
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        why = skip_reason(sub, real_root)
        if why is not None:
            skipped.append(f"{sub.name}: {why}")
            continue
        step, tokens = parse_revision_name(sub.name)
        state = sub / "trainer_state.json"
        if state.exists():
            try:
                seen = json.loads(state.read_text()).get("num_input_tokens_seen")
            except (OSError, ValueError):
                seen = None
            if seen is not None:
                tokens = int(seen)
        if tokens is None and tokens_per_step:
            tokens = step * int(tokens_per_step)
        out.append(Revision(sub.name, step, tokens))
    if skipped:
        logger.warning("%s: skipped %d folder(s) that are not checkpoints: %s", root, len(skipped), "; ".join(skipped))
    if not out:
        raise ValueError(f"{root} holds no checkpoint folders named step{{N}}, checkpoint-{{N}} or "
                         "step{N}-tokens{X}B with a config.json")
    return _in_order(out)


def _hub_revisions(model_id: str, tokens_per_step: Optional[int]) -> list[Revision]:
    from huggingface_hub import list_repo_refs

    refs = list_repo_refs(model_id)
    known = {r.revision: r for r in builtin_schedule(model_id) or []}
    out = []
    for branch in refs.branches:
        parsed = parse_revision_name(branch.name)
        if parsed is None:
            continue  # main and other non-checkpoint branches
        step, tokens = parsed
        if tokens is None:
            tokens = known[branch.name].tokens if branch.name in known else (
                step * tokens_per_step if tokens_per_step else None)
        out.append(Revision(branch.name, step, tokens))
    return _in_order(out)


def revisions(model_or_dir: Union[str, Path], *, tokens_per_step: Optional[int] = None,
              offline: Optional[bool] = None) -> list[Revision]:
    """The ordered catalog of checkpoints of a local directory or a hub model id."""
    path = Path(model_or_dir)
    if path.is_dir():
        return _local_revisions(path, tokens_per_step)
    model_id = str(model_or_dir)
    builtin = builtin_schedule(model_id)
    if offline is None:
        from huggingface_hub import constants

        offline = bool(constants.HF_HUB_OFFLINE)
    if not offline:
        try:
            found = _hub_revisions(model_id, tokens_per_step)
            if found:
                return found
        except Exception as err:  # no network, unknown repo, rate limit...
            if builtin is None:
                raise ValueError(f"cannot list the revisions of {model_id!r} ({err}) and it has no built-in schedule") from err
            logger.warning("could not list %s on the hub (%s); using the built-in schedule", model_id, err)
    if builtin is None:
        raise ValueError(f"{model_id!r} is neither a local directory of checkpoints nor a model with a "
                         "built-in schedule (Pythia, OLMo-1B-0724-hf, OLMoE-1B-7B-0924), and the hub is offline")
    return builtin


# ---------------------------------------------------------------- selections
def select_revisions(catalog: Sequence[Revision], spec: str, model_id: str = "") -> list[Revision]:
    """Pick revisions by spec: ``all``, ``paper``, ``every:N``, ``log:K`` or a comma list of names."""
    catalog = _in_order(catalog)
    if not catalog:
        raise ValueError("the revision catalog is empty")
    spec = spec.strip()
    if not spec or not spec.strip(", "):
        raise ValueError("the revision spec is empty; expected all, paper, every:N, log:K or a comma list of names")
    if spec == "all":
        return list(catalog)
    if spec == "paper":
        names = paper_revisions(model_id)
        if names is None:
            raise ValueError(f"--revisions paper: no published revision list for {model_id!r}")
        return _by_names(catalog, names)
    if spec.startswith("every:"):
        n = _positive_int(spec, spec[6:])
        picked = list(catalog[::n])
        return picked if picked[-1] == catalog[-1] else picked + [catalog[-1]]
    if spec.startswith("log:"):
        k = _positive_int(spec, spec[4:])
        return _log_spaced(catalog, k)
    return _by_names(catalog, [s.strip() for s in spec.split(",") if s.strip()])


def _positive_int(spec: str, text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"revision spec {spec!r}: expected a positive integer after the colon")
    return n


def _by_names(catalog: Sequence[Revision], names: Sequence[str]) -> list[Revision]:
    index = {r.revision: r for r in catalog}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"revisions not in the catalog: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return _in_order({index[n] for n in names})


def _log_spaced(catalog: Sequence[Revision], k: int) -> list[Revision]:
    """K revisions whose steps are closest to K log-spaced steps (first and last included when
    K >= 2; ``log:1`` is the last revision)."""
    if k >= len(catalog):
        return list(catalog)
    if k == 1:
        return [catalog[-1]]
    lo = max(catalog[0].step, 1)
    hi = max(catalog[-1].step, lo)
    targets = [lo * (hi / lo) ** (i / max(k - 1, 1)) for i in range(k)]
    picked = {catalog[0], catalog[-1]}
    for t in targets:
        picked.add(min(catalog, key=lambda r: (abs(math.log(max(r.step, 1)) - math.log(t)), r.step)))
    return _in_order(picked)
