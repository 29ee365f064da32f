"""The promotion gate: may a newly registered model become the `champion`?

All of these must hold (thresholds in params.yaml `promotion:`), so both heads are guarded: a model that
classifies well but cannot segment is never champion.
    accuracy      >= promotion.min_accuracy                     (test split, from reports/metrics.json)
    sensitivity   >= promotion.min_sensitivity
    specificity   >= promotion.min_specificity       (a model that calls every slice "tumour" passes accuracy and
                                                     sensitivity on a test split that is mostly tumour)
    slice Dice    >= promotion.min_dice          whole tumour (WT), mean over the test slices with tumour
    volume Dice   >= promotion.min_volume_dice   whole tumour (WT), mean over the re-stacked test patient volumes
(WT is the first of the segmentation head's regions WT, TC, ET: metrics `segmentation` and `segmentation_volume`.)
    parity        ONNX and torch agreed (reports/export.json)
    vs champion   accuracy >= champion's accuracy - promotion.max_accuracy_drop   (only when a champion exists)
With promotion.use_lower_bound the five quality criteria compare the lower end of the metric's 95 % bootstrap
interval (patients resampled) instead of the point estimate. A missing metric fails its criterion.
Pure logic on numbers: release/registration.py gathers them and moves the aliases. The reason names every criterion with
its value and limit, so a registry version's `promotion_reason` tag says exactly why it was or was not promoted.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from tasks.config import PromotionSettings

# Equal accuracies must compare equal even after a float round trip through JSON or a tag.
EPSILON = 1e-9


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str  # the values compared, e.g. "0.912 >= 0.850"

    def __str__(self) -> str:
        return f"{self.name} {self.detail} [{'pass' if self.passed else 'FAIL'}]"


@dataclass(frozen=True)
class ChampionScore:
    """The current champion's accuracy, measured as comparably as possible (see champion.champion_score)."""

    version: str
    accuracy: float | None
    basis: str  # "same test data" | "re-scored on this test split" | "both scored on the N test patients new to the
    #             champion" | "recorded on other test data"
    # The challenger's accuracy on the same slices, when the champion was re-scored on part of the test split only
    # (the patients it never saw): metrics.json's accuracy covers the whole split, another population.
    challenger_accuracy: float | None = None


@dataclass(frozen=True)
class GateDecision:
    criteria: tuple[Criterion, ...]

    @property
    def promoted(self) -> bool:
        return all(c.passed for c in self.criteria)

    @property
    def reason(self) -> str:
        verdict = "promoted" if self.promoted else "rejected"
        return f"{verdict}: " + "; ".join(map(str, self.criteria))

    def as_dict(self) -> dict:
        return {"promoted": self.promoted, "reason": self.reason,
                "criteria": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in self.criteria]}


# (criterion name, metrics.json section, key, PromotionSettings field with the minimum)
QUALITY_CRITERIA = (("accuracy", "classification", "accuracy", "min_accuracy"),
                    ("sensitivity", "classification", "sensitivity", "min_sensitivity"),
                    ("specificity", "classification", "specificity", "min_specificity"),
                    ("slice Dice", "segmentation", "dice", "min_dice"),
                    ("volume Dice", "segmentation_volume", "dice", "min_volume_dice"))


def _at_least(name: str, value: float | None, minimum: float) -> Criterion:
    if value is None or not math.isfinite(value):  # missing, NaN or infinite: nothing shows it is good enough
        return Criterion(name, False, f"missing, needs >= {minimum:.3f}")
    passed = value >= minimum - EPSILON
    digits = _digits(value, minimum, passed)
    return Criterion(name, passed, f"{value:.{digits}f} {'>=' if passed else '<'} {minimum:.{digits}f}")


def _digits(value: float, limit: float, passed: bool) -> int:
    """Three decimals, or as many more as it takes for a failure to read as one: an accuracy of 0.84989 against 0.85
    printed as "0.850 < 0.850" would hide why the model was rejected."""
    digits = 3
    while not passed and digits < 9 and f"{value:.{digits}f}" == f"{limit:.{digits}f}":
        digits += 1
    return digits


def quality_values(metrics: dict, use_lower_bound: bool) -> dict[str, float | None]:
    """criterion name → the number the gate compares: the point estimate, or its interval's lower bound."""
    values = {}
    for name, section, key, _ in QUALITY_CRITERIA:
        if use_lower_bound:
            interval = _section(metrics, "ci95").get(f"{section}.{key}")
            values[name] = _number(interval[0]) if isinstance(interval, (list, tuple)) and interval else None
        else:
            values[name] = _number(_section(metrics, section).get(key))
    return values


def _section(metrics: dict, name: str) -> dict:
    """A metrics.json section; a null or malformed one is empty (its criteria then fail as missing)."""
    section = metrics.get(name)
    return section if isinstance(section, dict) else {}


def _number(value) -> float | None:
    """A real number, or None for anything else (null, a string, a bool): never a crash, never a pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class PromotionGate:
    settings: PromotionSettings

    @classmethod
    def from_settings(cls, cfg: PromotionSettings) -> "PromotionGate":
        return cls(cfg)

    def decide(self, metrics: dict, parity_passed: bool, parity_detail: str = "",
               champion: ChampionScore | None = None) -> GateDecision:
        """`metrics` is reports/metrics.json's content."""
        values = quality_values(metrics, self.settings.use_lower_bound)
        suffix = " (95 % CI lower bound)" if self.settings.use_lower_bound else ""
        criteria = [_at_least(name + suffix, values[name], getattr(self.settings, minimum))
                    for name, _, _, minimum in QUALITY_CRITERIA]
        criteria.append(Criterion("onnx parity", bool(parity_passed),
                                  parity_detail or ("passed" if parity_passed else "failed")))
        if champion is not None:
            accuracy = champion.challenger_accuracy if champion.challenger_accuracy is not None \
                else _number(_section(metrics, "classification").get("accuracy"))
            criteria.append(self._versus_champion(accuracy, champion))
        return GateDecision(tuple(criteria))

    def _versus_champion(self, accuracy: float | None, champion: ChampionScore) -> Criterion:
        name = f"accuracy vs champion v{champion.version}"
        if champion.accuracy is None:  # cannot show the challenger is not worse: keep the champion
            return Criterion(name, False, f"champion accuracy unknown ({champion.basis})")
        floor = champion.accuracy - self.settings.max_accuracy_drop
        if accuracy is None:
            return Criterion(name, False, f"missing, champion {champion.accuracy:.3f} ({champion.basis})")
        passed = accuracy >= floor - EPSILON
        digits = _digits(accuracy, floor, passed)
        return Criterion(name, passed, f"{accuracy:.{digits}f} {'>=' if passed else '<'} "
                                       f"{champion.accuracy:.{digits}f} - {self.settings.max_accuracy_drop:.{digits}f} "
                                       f"({champion.basis})")
