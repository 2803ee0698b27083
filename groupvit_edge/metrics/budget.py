"""The drift budget: limits a candidate must stay within, judged on the bound of each figure's 95% interval over
photos (`uncertainty`), not on the figure alone.

A figure measured on a few photos stands for every photo the artifact will see, so an "at least" limit passes
only when the interval's lower bound passes, and an "at most" limit (the mIoU drop) only when its upper bound
does. A figure within its limit whose bound is not is *not proven*: the sentence says so and about how many
photos would prove it. A report without intervals (a drift.json written before they were measured) is judged
on the figures alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .uncertainty import MIN_PHOTOS, Estimate, format_estimate, photos_needed

if TYPE_CHECKING:
    from .drift_report import CandidateDrift


@dataclass(frozen=True)
class BudgetFailure:
    """One limit a candidate does not meet: its sentence, the figure, and — when only the bound failed — about
    how many photos in all would prove it."""
    figure: str
    sentence: str
    proven: bool                     # the figure itself is outside the limit (more photos will not help)
    photos_needed: int | None = None
    worst_photo: str | None = None

    def __str__(self) -> str:
        return self.sentence


@dataclass(frozen=True)
class DriftBudget:
    """Limits a candidate must stay within; a None limit is not checked. Agreements in percent, mIoU in points
    (below 100 against the reference, or below the reference's own mIoU against ground truth), cosines as is.
    `every_photo`: each photo's own figure must be within the limit (an equivalence check, where one photo off
    is a bug, not a sample), rather than the interval's bound."""
    max_drop: float | None = None
    min_confident_group_agreement: float | None = None
    min_group_agreement: float | None = None
    min_group_cosine: float | None = None          # mean over groups and windows
    min_group_cosine_worst: float | None = None    # the worst group of any window
    max_abs_diff: float | None = None              # any image-graph output
    every_photo: bool = False

    def failures(self, drift: CandidateDrift) -> list[str]:
        """One sentence per limit `drift` does not meet."""
        return [failure.sentence for failure in self.judge(drift)]

    def judge(self, drift: CandidateDrift) -> list[BudgetFailure]:
        """Each limit `drift` does not meet, or whose bound does not."""
        model, name, uncertain = drift.model_level, drift.source, drift.uncertainty
        failed: list[BudgetFailure | None] = []
        if self.max_drop is not None:
            figure = uncertain.miou_vs_reference if uncertain else None
            failed.append(self._check(name, "mIoU vs reference", drift.class_level.miou_vs_reference, figure,
                                      100.0 - self.max_drop, "", 2, at_least=True,
                                      limit_text=f"{100 - self.max_drop:.2f} (more than {self.max_drop} points "
                                                 f"below 100)"))
            truth = drift.ground_truth
            if truth is not None:
                figure = uncertain.ground_truth_drop if uncertain else None
                failed.append(self._check(name, f"ground-truth mIoU drop (reference {truth.reference_miou:.2f})",
                                          truth.drop, figure, self.max_drop, " points", 2, at_least=False))
        checks = ((self.min_confident_group_agreement, model.group_agreement_confident,
                   uncertain.group_agreement_confident if uncertain else None, "confident-pixel group agreement",
                   "%", 3),
                  (self.min_group_agreement, model.group_agreement, uncertain.group_agreement if uncertain else None,
                   "group agreement", "%", 3),
                  (self.min_group_cosine, model.group_embed_cosine.mean,
                   uncertain.group_embed_cosine if uncertain else None, "mean group-embedding cosine", "", 5))
        for limit, value, figure, what, unit, digits in checks:
            if limit is not None:
                failed.append(self._check(name, what, value, figure, limit, unit, digits, at_least=True))
        if self.min_group_cosine_worst is not None and model.group_embed_cosine.min < self.min_group_cosine_worst:
            photo = uncertain.worst_cosine_photo() if uncertain else None
            where = f" (photo {photo.image})" if photo else ""
            failed.append(BudgetFailure("group_embed_cosine_min", f"{name}: minimum group-embedding cosine "
                                        f"{model.group_embed_cosine.min:.5f}{where} is below "
                                        f"{self.min_group_cosine_worst}", True,
                                        worst_photo=photo.image if photo else None))
        if self.max_abs_diff is not None:
            output, worst = max(model.max_abs_diff.items(), key=lambda item: item[1])
            if worst > self.max_abs_diff:
                failed.append(BudgetFailure("max_abs_diff", f"{name}: max abs difference {worst:.2e} in {output} "
                                            f"exceeds {self.max_abs_diff:.0e}", True))
        return [failure for failure in failed if failure is not None]

    def _check(self, name: str, what: str, value: float | None, figure: Estimate | None, limit: float, unit: str,
               digits: int, *, at_least: bool, limit_text: str | None = None) -> BudgetFailure | None:
        """The failure of one figure against one limit: on the figure, then on its worst photo (every_photo) or
        its bound."""
        below, above = ("below", "above") if at_least else ("above", "below")
        limit_text = limit_text or f"{limit}{unit}"

        def outside(number: float) -> bool:
            return number < limit if at_least else number > limit

        if value is None:
            return BudgetFailure(what, f"{name}: {what} unmeasured (nothing to count) cannot be {above} "
                                 f"{limit_text}", True)
        shown = format_estimate(figure, digits, unit) if figure is not None else f"{value:.{digits}f}{unit}"
        worst = figure.worst_photo if figure is not None else None
        if outside(value):
            return BudgetFailure(what, f"{name}: {what} {shown} is {below} {limit_text}", True, worst_photo=worst)
        if figure is None:
            return None
        if self.every_photo:
            if outside(figure.worst):
                return BudgetFailure(what, f"{name}: {what} of photo {figure.worst_photo} is "
                                     f"{figure.worst:.{digits}f}{unit}, {below} {limit_text} (every photo must be "
                                     f"within)", True, worst_photo=worst)
            return None
        bound = figure.low if at_least else figure.high
        if bound is None:
            return BudgetFailure(what, f"{name}: {what} {shown} is within {limit_text} but not proven: "
                                 f"{figure.photos} photo gives no interval; measure on at least {MIN_PHOTOS} "
                                 f"photos, better dozens from the deployment domain", False, worst_photo=worst)
        if not outside(bound):
            return None
        needed = photos_needed(figure, limit, "lower" if at_least else "higher")
        more = (f"; about {needed} photos in all (from the deployment domain) would prove it if they spread like "
                f"these" if needed is not None else "")
        side = "lower" if at_least else "upper"
        return BudgetFailure(what, f"{name}: {what} {shown} is within {limit_text} but its 95% {side} bound "
                             f"{bound:.{digits}f}{unit} is not: not proven on {figure.photos} photos{more}", False,
                             needed, worst)

    def describe(self) -> str:
        parts = [f"mIoU drop ≤ {self.max_drop}" if self.max_drop is not None else None,
                 f"confident group agreement ≥ {self.min_confident_group_agreement}%"
                 if self.min_confident_group_agreement is not None else None,
                 f"group agreement ≥ {self.min_group_agreement}%" if self.min_group_agreement is not None else None,
                 f"group cosine mean ≥ {self.min_group_cosine}" if self.min_group_cosine is not None else None,
                 f"group cosine min ≥ {self.min_group_cosine_worst}" if self.min_group_cosine_worst is not None
                 else None,
                 f"max abs diff ≤ {self.max_abs_diff:.0e}" if self.max_abs_diff is not None else None]
        text = ", ".join(part for part in parts if part) or "no limits"
        return text + EVERY_PHOTO if self.every_photo else text

    @classmethod
    def from_description(cls, text: str) -> DriftBudget:
        """The inverse of `describe`, which is how drift.json records a budget."""
        every_photo = text.endswith(EVERY_PHOTO)
        limits: dict[str, float] = {}
        body = text.removesuffix(EVERY_PHOTO)
        for part in [] if body == "no limits" else body.split(", "):
            name = next((name for name, phrase in _BUDGET_PHRASES if part.startswith(phrase)), None)
            if name is None:
                raise ValueError(f"unknown budget limit {part!r}")
            limits[name] = float(part[len(dict(_BUDGET_PHRASES)[name]):].rstrip("%"))
        budget = cls(**limits, every_photo=every_photo)
        if budget.describe() != text:
            raise ValueError(f"budget {text!r} does not read back as itself")
        return budget


EVERY_PHOTO = " on every photo"
# How `DriftBudget.describe` words each limit.
_BUDGET_PHRASES = (("max_drop", "mIoU drop ≤ "), ("min_confident_group_agreement", "confident group agreement ≥ "),
                   ("min_group_agreement", "group agreement ≥ "), ("min_group_cosine", "group cosine mean ≥ "),
                   ("min_group_cosine_worst", "group cosine min ≥ "), ("max_abs_diff", "max abs diff ≤ "))
