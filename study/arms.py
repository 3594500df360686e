"""The arms of a study: each a named recipe of stages (CLCA paper Tables 2, 3 and 6, and the controls).

A recipe adds the nodes it needs to a `study.pipeline.Builder` for one culture and student, ending in the
evaluations its report row reads. Arms that need the same stage share its node. `ARMS` maps each name to its
recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from study.config import Student
from study.pipeline import Builder


def base(b: Builder, culture: str, student: Student) -> None:
    """The student as it is: no adapter, the country prompt (the persona prompt with a respondent file)."""
    b.evaluate("base", culture, student)


def cultural_prompt(b: Builder, culture: str, student: Student) -> None:
    """Cultural prompting (Tao et al. 2024): no adapter, the culture-specific system instruction (`wvs_cultural`)."""
    b.evaluate("cultural_prompt", culture, student, prompt="cultural")


def clca(b: Builder, culture: str, student: Student) -> None:
    """CLCA: seeds adapted to the culture, role-played by grounded personas with an observer's intents, judged,
    filtered by the paper's rule, LoRA SFT on the dialogue and intent views (paper Table 2)."""
    b.trained("clca", culture, student, b.dataset(culture, "cultural"))


def dialogue_only(b: Builder, culture: str, student: Student) -> None:
    """The CLCA pipeline trained on the dialogue view only (paper Table 3)."""
    b.trained("dialogue_only", culture, student, b.dataset(culture, "cultural", views="dialogue"))


def intent_only(b: Builder, culture: str, student: Student) -> None:
    """The CLCA pipeline trained on the intent view only (paper Table 3)."""
    b.trained("intent_only", culture, student, b.dataset(culture, "cultural", views="intent"))


def no_filter(b: Builder, culture: str, student: Student) -> None:
    """The CLCA pipeline with every episode kept, the judge's filter off (paper Table 6)."""
    b.trained("no_filter", culture, student, b.dataset(culture, "cultural", filter="none"))


def culture_free(b: Builder, culture: str, student: Student) -> None:
    """The control that isolates culture: the same pipeline on the unadapted SOTOPIA seeds with the ungrounded
    persona, observer and training-row prompts (`pipeline.UNGROUNDED`), judged and filtered alike, its training rows
    drawn (seeded) to as many as `clca` trains on. What it moves is what any role-play fine-tuning moves."""
    matched = b.match_rows(culture, b.dataset(culture, "culture_free"), like=b.dataset(culture, "cultural"))
    b.trained("culture_free", culture, student, matched)


def dpo(b: Builder, culture: str, student: Student) -> None:
    """DPO from the clca adapter (the same SFT run as the clca arm, shared) on the export's preference pairs: judged
    pairs (a kept and a dropped episode of one scenario) and contrastive pairs (each kept line against what the
    ungrounded persona said in its place, `graphs.contrast`). Not in the paper, which trains with SFT only."""
    sft_data = b.dataset(culture, "cultural")
    pairs = b.dataset(culture, "cultural", contrastive=True)
    for seed in b.study.seeds:
        adapter = b.dpo(culture, b.sft(culture, sft_data, student, seed), pairs, student, seed)
        b.evaluate("dpo", culture, student, adapter=adapter, seed=seed)


def survey_sft(b: Builder, culture: str, student: Student) -> None:
    """Fine-tuning on survey answers (the SubPOP-style baseline): the culture's WVS shares of the train items, each
    asked as the evaluation asks it and answered in proportion to the shares (`training.survey_rows`), with the
    same SFT preset; scored, like every arm of such a study, on the held-out test items only."""
    b.trained("survey_sft", culture, student, b.survey_rows(culture))


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: Callable[[Builder, str, Student], None]

    @property
    def doc(self) -> str:
        return " ".join((self.recipe.__doc__ or "").split())


ARMS = {a.name: a for a in (
    Arm("base", base), Arm("cultural_prompt", cultural_prompt), Arm("clca", clca),
    Arm("dialogue_only", dialogue_only), Arm("intent_only", intent_only), Arm("no_filter", no_filter),
    Arm("culture_free", culture_free), Arm("dpo", dpo), Arm("survey_sft", survey_sft),
)}
