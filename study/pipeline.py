"""A study's stages as a graph of nodes, each keyed by a hash of what determines its output.

A `Node` is one stage run: its kind (adapt, simulate, judge, contrast, dataset, match_rows, survey_rows, sft, dpo,
evaluate), the culture it is
for, its parameters (the fields of the stage's request that decide its output; paths relative to the study's
folder) and the nodes it reads. Its id is `<kind>-<culture>-<sha256 of kind, parameters and inputs' ids>[:10]`, so
two arms that need the same stage get the same node (clca and its ablations share adaptation, simulation and
judging) and a stage already finished for the same request is found again on a rerun. `Builder` adds nodes, each
once, in an order where every node comes after its inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from agents.models import model_identity
from study.config import Student, Study

PIPELINES = ("cultural", "culture_free")  # adapted scenarios + grounded personas; SOTOPIA seeds + ungrounded personas
MODEL_PARAMS = ("model", "judge_model")  # the parameters that hold model specs
# What the culture_free control plays, observes and trains on without the culture: each template's `_ungrounded`
# version, copied under its plain name into the control's prompts folder (study.run).
UNGROUNDED = ("roleplay_system", "observer_system", "observer_turn", "sft_dialogue_system", "sft_intent_system")
PAPER_FILTER = "paper"  # training.dataset's default rule (graphs.judge.PAPER_RULE_TEXT)


def ungrounded_versions() -> dict[str, str]:
    """The control's templates, name -> version of its `_ungrounded` source: in its nodes' keys, so a changed template
    runs the control again. Read once per process (a plan builds a node per culture and pipeline)."""
    return dict(_ungrounded_versions())


@functools.cache
def _ungrounded_versions() -> tuple[tuple[str, str], ...]:
    from agents.prompts import Prompts

    prompts = Prompts()
    return tuple((name, prompts.version(f"{name}_ungrounded")) for name in UNGROUNDED)


@dataclass(frozen=True)
class Node:
    kind: str
    culture: str
    params: dict
    inputs: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """Models count by identity (`model_identity`): a study moved to another endpoint finds its nodes."""
        params = {k: model_identity(v) if k in MODEL_PARAMS and isinstance(v, str) else v
                  for k, v in self.params.items()}
        key = json.dumps({"kind": self.kind, "culture": self.culture, "params": params,
                          "inputs": list(self.inputs)}, sort_keys=True)
        return f"{self.kind}-{self.culture.lower()}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Scored:
    """One evaluation an arm's row of the report reads: which arm, student, culture, training seed, items, reading."""

    arm: str
    student: str
    culture: str
    seed: int | None  # None for arms without training
    items: str
    reading: str
    node: str  # the evaluate node's id


@dataclass
class Builder:
    """Adds a study's nodes, each once (`add` returns the id of the node already there when it is)."""

    study: Study
    nodes: dict[str, Node] = field(default_factory=dict)
    scored: list[Scored] = field(default_factory=list)

    def add(self, node: Node) -> str:
        self.nodes.setdefault(node.id, node)
        return node.id

    # ------------------------------------------------------------ the role-play pipeline

    def store(self, culture: str, pipeline: str) -> str:
        """The SQLite store of one culture's pipeline, relative to the study folder."""
        return f"stores/{culture.lower()}-{pipeline}.db"

    def adapt(self, culture: str) -> str:
        m, s = self.study.roleplay, self.study.sizes
        params = {"n": s.seeds, "model": m.model, "seed": 0, "unstructured": m.unstructured,
                  "db": self.store(culture, "cultural")}
        if s.max_goal_chars is not None:  # only then a key, so the ids of studies without it stay what they were
            params["max_goal_chars"] = s.max_goal_chars
        return self.add(Node("adapt", culture, params))

    def simulate(self, culture: str, pipeline: str) -> str:
        m, s = self.study.roleplay, self.study.sizes
        params = {"episodes": s.episodes, "samples": s.samples, "max_turns": s.rounds, "model": m.model, "seed": 0,
                  "unstructured": m.unstructured, "use_seeds": pipeline == "culture_free",
                  "ungrounded": ungrounded_versions() if pipeline == "culture_free" else False,
                  "db": self.store(culture, pipeline)}
        if pipeline == "culture_free":  # the seeds the cultural pipeline adapted, as they were: only culture differs
            params["seeds_of"] = self.store(culture, "cultural")
        inputs = (self.adapt(culture),)
        return self.add(Node("simulate", culture, params, inputs))

    def judge(self, culture: str, pipeline: str) -> str:
        m = self.study.judge_model
        return self.add(Node("judge", culture, {"model": m.model, "seed": 0, "unstructured": m.unstructured,
                                                "db": self.store(culture, pipeline)},
                             (self.simulate(culture, pipeline),)))

    def contrast(self, culture: str) -> str:
        """graphs.contrast on the cultural pipeline's kept episodes: each line asked again without the culture."""
        m = self.study.roleplay
        return self.add(Node("contrast", culture, {"model": m.model, "judge_model": self.study.judge_model.model,
                                                   "seed": 0, "unstructured": m.unstructured,
                                                   "db": self.store(culture, "cultural")},
                             (self.judge(culture, "cultural"),)))

    def dataset(self, culture: str, pipeline: str, views: str = "dialogue,intent", filter: str = PAPER_FILTER,
                contrastive: bool = False) -> str:
        """training.dataset's export; `filter` none skips the judge (nothing is filtered); `contrastive` adds
        the contrastive DPO pairs (graphs.contrast's replies)."""
        source = self.judge(culture, pipeline) if filter != "none" else self.simulate(culture, pipeline)
        params = {"views": views, "filter": filter, "seed": 0, "db": self.store(culture, pipeline),
                  "judge_model": self.study.judge_model.model if filter != "none" else None}
        if pipeline == "culture_free":  # its rows' system turns name no culture either
            params["ungrounded"] = ungrounded_versions()
        inputs: tuple[str, ...] = (source,)
        if contrastive:  # only then a key, so the ids of exports without pairs stay what they were
            params["contrastive_model"] = self.study.roleplay.model
            inputs += (self.contrast(culture),)
        return self.add(Node("dataset", culture, params, inputs))

    def survey_rows(self, culture: str) -> str:
        """training.survey_rows on the train split of the evaluation's item sets (config checks they are splits)."""
        e = self.study.evaluation
        train = ",".join(dict.fromkeys(spec.partition(":")[0] + ":train" for spec in e.items))
        return self.add(Node("survey_rows", culture, {"items": train, "formats": list(e.formats),
                                                      "rows_per_item": self.study.sizes.survey_rows, "seed": 0}))

    def match_rows(self, culture: str, dataset: str, like: str) -> str:
        """`dataset`'s SFT training rows drawn (seeded) to as many as `like` has."""
        return self.add(Node("match_rows", culture, {"seed": 0}, (dataset, like)))

    def sft(self, culture: str, dataset: str, student: Student, seed: int) -> str:
        t = self.study.training
        return self.add(Node("sft", culture, {"model": student.model, "seed": seed, "preset": t.preset,
                                              "overrides": t.overrides}, (dataset,)))

    def dpo(self, culture: str, sft: str, dataset: str, student: Student, seed: int) -> str:
        """training.dpo from the `sft` node's adapter on `dataset`'s DPO pairs."""
        t = self.study.training
        return self.add(Node("dpo", culture, {"model": student.model, "seed": seed, "preset": t.dpo_preset,
                                              "overrides": t.dpo_overrides}, (sft, dataset)))

    # ------------------------------------------------------------ evaluation

    def evaluate(self, arm: str, culture: str, student: Student, *, adapter: str | None = None,
                 prompt: str = "auto", seed: int | None = None) -> None:
        """One evaluation per item set and reading, every format in each; recorded for `arm`'s row."""
        e = self.study.evaluation
        for items in e.items:
            for reading in e.readings:
                params = {"model": student.evaluated, "prompt": prompt, "items": items, "method": reading,
                          "formats": list(e.formats), "bootstrap": e.bootstrap, "samples": e.samples,
                          "wvs_file": e.wvs_file, "personas": e.personas, "seed": 0}
                node = self.add(Node("evaluate", culture, params, (adapter,) if adapter else ()))
                self.scored.append(Scored(arm, student.label, culture, seed, items, reading, node))

    def trained(self, arm: str, culture: str, student: Student, dataset: str) -> None:
        """One adapter per training seed on `dataset`, each evaluated."""
        for seed in self.study.seeds:
            self.evaluate(arm, culture, student, adapter=self.sft(culture, dataset, student, seed), seed=seed)


def build(study: Study) -> Builder:
    """Every node the study's arms need, each once, inputs first."""
    from study.arms import ARMS

    b = Builder(study)
    for culture in study.cultures:
        for student in study.students:
            for arm in study.arms:
                ARMS[arm].recipe(b, culture, student)
    return b
