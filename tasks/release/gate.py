"""The promotion gate: may a newly registered model become the `champion`?

All of these must hold (thresholds in params.yaml `promotion:`):
    accuracy     >= promotion.min_accuracy                      (test split, from reports/metrics.json)
    sensitivity  >= promotion.min_sensitivity
    parity       ONNX and torch agreed (reports/export.json)
    vs champion  accuracy >= champion's accuracy - promotion.max_accuracy_drop   (only when a champion exists)
Pure logic on numbers: registration.py gathers them and moves the aliases. The reason names every criterion with
its value, so a registry version's `promotion_reason` tag says exactly why it was or was not promoted.
"""

from __future__ import annotations

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
    """The current champion's accuracy, measured as comparably as possible (see registration.champion_score)."""

    version: str
    accuracy: float | None
    basis: str  # "same test data" | "re-scored on this test split" | "recorded on other test data"


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


def _at_least(name: str, value: float | None, minimum: float) -> Criterion:
    if value is None:
        return Criterion(name, False, f"missing, needs >= {minimum:.3f}")
    passed = value >= minimum - EPSILON
    return Criterion(name, passed, f"{value:.3f} {'>=' if passed else '<'} {minimum:.3f}")


@dataclass(frozen=True)
class PromotionGate:
    min_accuracy: float
    min_sensitivity: float
    max_accuracy_drop: float

    @classmethod
    def from_settings(cls, cfg: PromotionSettings) -> "PromotionGate":
        return cls(cfg.min_accuracy, cfg.min_sensitivity, cfg.max_accuracy_drop)

    def decide(self, accuracy: float | None, sensitivity: float | None, parity_passed: bool,
               parity_detail: str = "", champion: ChampionScore | None = None) -> GateDecision:
        criteria = [
            _at_least("accuracy", accuracy, self.min_accuracy),
            _at_least("sensitivity", sensitivity, self.min_sensitivity),
            Criterion("onnx parity", bool(parity_passed), parity_detail or ("passed" if parity_passed else "failed")),
        ]
        if champion is not None:
            criteria.append(self._versus_champion(accuracy, champion))
        return GateDecision(tuple(criteria))

    def _versus_champion(self, accuracy: float | None, champion: ChampionScore) -> Criterion:
        name = f"accuracy vs champion v{champion.version}"
        if champion.accuracy is None:  # cannot show the challenger is not worse: keep the champion
            return Criterion(name, False, f"champion accuracy unknown ({champion.basis})")
        floor = champion.accuracy - self.max_accuracy_drop
        if accuracy is None:
            return Criterion(name, False, f"missing, champion {champion.accuracy:.3f} ({champion.basis})")
        passed = accuracy >= floor - EPSILON
        return Criterion(name, passed, f"{accuracy:.3f} {'>=' if passed else '<'} {champion.accuracy:.3f} - "
                                       f"{self.max_accuracy_drop:.3f} ({champion.basis})")
