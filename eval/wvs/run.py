"""`python -m eval.wvs`: score a model (and adapter) against WVS-7 answer distributions.

    # the paper's protocol on the respondent file you downloaded (1000 personas x 44 items x 5 countries)
    python -m eval.wvs --model meta-llama/Llama-3.1-8B-Instruct --adapter runs/adapter-CHN \\
        --countries CHN,DEU,GBR,MEX,JPN --items clca44 --method generate --wvs-file WVS_Cross-National_Wave_7_csv_v6_0.csv \\
        --out results/llama8b-chn.json
    # quick, no respondent file: country prompt, option probabilities, bundled shares
    python -m eval.wvs --model smollm2 --countries CHN --items clca44 --method logprob --out results/base.json

    # three readings, five formats, on the held-out items
    python -m eval.wvs --model smollm2 --countries CHN --items clca44:test --method distribution --formats all

Writes NAME.json (metrics with bootstrap CIs and provenance), NAME.items.csv (one row per country,
format and item), NAME.answers.jsonl (every unit's answer), NAME.metrics.png and NAME.items.<ISO3>.png.
With several `--formats` the summary is the mean over formats with its spread (sd, min, max) and
`by_format` holds each format's own summary (docs/evaluation.md).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agents.answers import answer_format, wvs_label_schema, wvs_schema, wvs_shares_schema
from agents.models import UNSTRUCTURED_HELP, GenerationParams, Model, ModelSpecError, load_model
from agents.models.lora_gguf import adapter_sha256
from agents.prompts import PromptError, Prompts
from agents.provenance import git_state
from eval.wvs.distribution import DistributionReader
from eval.wvs.formats import SWEEP, Format, parse_formats, present, render_question, restore, template_name
from eval.wvs.items import Item, WVSError, select_items, split_record
from eval.wvs.map_indicators import map_items, missing_items
from eval.wvs.map_position import map_section
from eval.wvs.readers import GenerateReader, ItemAnswers, LogprobReader
from eval.wvs.report import print_summary, write_outputs
from eval.wvs.respondents import PERSONA_COLUMNS, Exclusion, RespondentFile
from eval.wvs.score import CountryInput, headline, overall, score_country, strip_replicates, with_spread
from eval.wvs.survey import BundledShares, country

PROMPT_TEMPLATES = {"country": "wvs_country", "persona": "wvs_persona", "cultural": "wvs_cultural", "none": None}


@dataclass
class EvalConfig:
    """Defaults follow the CLCA paper where it has one (1000 personas, greedy decoding, paper parser)."""

    model: str = field(metadata={"help": "model spec: smollm2, a local folder, a hub id, openai:M@URL, vllm:M, puppet"})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter folder to load on top of the model"})
    countries: str = field(default="CHN,DEU,GBR,MEX,JPN", metadata={"help": "comma list of ISO alpha-3 codes"})
    items: str = field(default="clca44", metadata={"help": "clca44 (the paper's 44 items), iw10 (the Inglehart-Welzel map's items), all, or ids "
                                  "such as Q1,Q27"})
    method: str = field(default="logprob", metadata={
        "help": "logprob: option-label probabilities (in-process models, llama-server); generate: generate and parse; "
                "distribution: the model states the share of people choosing each option (JSON, any backend)",
        "choices": ["logprob", "generate", "distribution"]})
    formats: str = field(default="default", metadata={
        "help": f"comma list of question formats ({SWEEP}) or all; several: results are the mean over formats "
                "with its spread"})
    prompt: str = field(default="auto", metadata={
        "help": "system prompt: persona (needs --wvs-file), country, cultural, none; auto = persona with a "
                "respondent file, else country", "choices": ["auto", "persona", "country", "cultural", "none"]})
    wvs_file: str | None = field(default=None, metadata={
        "help": "official WVS-7 CSV: weighted survey shares, personas and individual accuracy"})
    personas: int = field(default=1000, metadata={"help": "respondents sampled per country (persona prompt)"})
    samples: int = field(default=1, metadata={"help": "generations per prompt for country/cultural/none prompts"})
    temperature: float = field(default=0.0, metadata={"help": "generate: 0 = greedy, else sampling temperature"})
    max_new_tokens: int = field(default=16, metadata={"help": "generate: answer length limit"})
    parser: str = field(default="paper", metadata={"help": "generate with --unstructured: paper rules, or lenient "
                                                           "(also '2. Agree', labels)", "choices": ["paper", "lenient"]})
    unstructured: bool = field(default=False, metadata={"help": "generate: " + UNSTRUCTURED_HELP})
    seed: int = field(default=0, metadata={"help": "seeds persona sampling, sampled decoding and the bootstrap"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates for confidence intervals"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    unweighted: bool = field(default=False, metadata={"help": "ignore W_WEIGHT in --wvs-file (the paper's choice)"})
    prompts_dir: str | None = field(default=None, metadata={"help": "folder of .j2 files overriding the built-in prompts"})
    out: str = field(default="results/wvs.json", metadata={"help": "results JSON; other outputs go beside it"})
    plots: bool = field(default=True, metadata={"help": "write PNG plots (--no-plots to skip)"})


def evaluate(cfg: EvalConfig, model: Model | None = None) -> dict:
    """Run the evaluation and return the results dict (written out by `report.write_outputs`)."""
    items = select_items(cfg.items)
    countries = [country(c) for c in cfg.countries.split(",") if c.strip()]
    if not countries:
        raise WVSError("--countries: no country given")
    if twice := sorted({c.alpha3 for c in countries if countries.count(c) > 1}):
        raise WVSError(f"--countries: {', '.join(twice)} given twice (each country is scored once)")
    prompt_kind = cfg.prompt if cfg.prompt != "auto" else ("persona" if cfg.wvs_file else "country")
    if prompt_kind == "persona" and not cfg.wvs_file:
        raise WVSError("--prompt persona needs --wvs-file (personas are real respondents' demographics)")
    if min(cfg.personas, cfg.samples, cfg.bootstrap, cfg.batch_size) < 1:
        raise WVSError("--personas, --samples, --bootstrap and --batch-size must be at least 1")
    prompts = Prompts(cfg.prompts_dir)
    survey = RespondentFile(cfg.wvs_file, items, weighted=not cfg.unweighted) if cfg.wvs_file else BundledShares()
    for c in countries:  # unknown or absent countries fail here, before a model is loaded
        if cfg.wvs_file:
            survey.respondents(c.alpha3)
        else:
            survey.source(c.alpha3)
    if prompt_kind == "persona" and set(PERSONA_COLUMNS) <= survey.missing_columns:
        raise WVSError(f"--wvs-file {cfg.wvs_file}: line 1: none of the persona columns {PERSONA_COLUMNS}")
    formats = parse_formats(cfg.formats)
    if cfg.method == "distribution" and cfg.unstructured:
        raise WVSError("--method distribution needs structured answers (a JSON object of shares); drop --unstructured")
    for fmt in formats:  # a missing or broken template fails here, before a model is loaded
        prompts.source(template_name(cfg.method, fmt))
    reader = _reader(cfg, model)
    structured = cfg.method == "distribution" or (isinstance(reader, GenerateReader) and reader.model.structured)

    notes = []
    if not cfg.wvs_file:
        notes.append("no --wvs-file: survey shares are the bundled unweighted ones; persona prompts and "
                     "individual accuracy need respondents, so the prompt is per country")
    if cfg.method == "logprob" and cfg.samples > 1:
        notes.append("--samples is ignored by --method logprob (the distribution is read directly)")

    started = time.perf_counter()
    summaries = {f.name: {} for f in formats}  # format -> country -> summary with replicates
    positions = {f.name: {} for f in formats}
    item_records, answer_records, counts = [], [], {}
    rng = np.random.default_rng(cfg.seed)
    for c in countries:
        asked = [(it, d) for it in items if (d := survey.distribution(c.alpha3, it)) is not None]
        missing = [it.qid for it in items if it.qid not in {p.qid for p, _ in asked}]
        if not asked:
            raise WVSError(f"country {c.alpha3}: none of the requested items has survey data")
        country_items = [it for it, _ in asked]
        systems, unit_ids, truth = _units(cfg, prompt_kind, prompts, survey, c, country_items)
        start = rng
        for fmt in formats:  # every format resamples the same units and items (paired across formats)
            rng = copy.deepcopy(start)
            answers = _read(reader, prompts, cfg.method, fmt, structured, c.name, systems, country_items)
            data = CountryInput(country_items, [d for _, d in asked], answers, truth)
            summaries[fmt.name][c.alpha3], records, positions[fmt.name][c.alpha3] = score_country(
                data, cfg.bootstrap, rng)
            item_records += [{"country": c.alpha3, "format": fmt.name, **r} for r in records]
            answer_records += _answer_records(c.alpha3, fmt.name, cfg.method, unit_ids, country_items, answers, truth)
        counts[c.alpha3] = {"units": len(systems), "items": len(asked), "items_missing": missing,
                            "respondents_in_file": len(survey.respondents(c.alpha3)) if cfg.wvs_file else None}

    first = formats[0].name
    notes += _map_notes(items, countries, counts, positions[first])
    if len(formats) > 1:
        notes.append(f"summary: the mean over the formats {', '.join(f.name for f in formats)}, with sd, min and max "
                     f"across them; by_format holds each; the map section and plots of positions are the {first} "
                     "format's")
    template_names = sorted({template_name(cfg.method, f) for f in formats}) + (
        [PROMPT_TEMPLATES[prompt_kind]] if PROMPT_TEMPLATES[prompt_kind] else [])
    countries_headline = headline([summaries[f.name] for f in formats])
    return {
        "provenance": {
            "config": asdict(cfg),
            "adapter_sha256": _adapter_hash(cfg.adapter),
            "prompt": prompt_kind,
            "prompt_versions": prompts.versions(template_names),
            "items": [it.qid for it in items],
            "item_split": split_record(cfg.items),
            "formats": [f.name for f in formats],
            "survey": _survey_provenance(survey, countries),
            "counts": counts,
            "model_usage": reader.model.usage.totals() if isinstance(reader, GenerateReader) else None,
            "seconds": round(time.perf_counter() - started, 2),
            "notes": notes,
            "git_commit": (git := git_state())["commit"], "git_dirty": git["dirty"],
        },
        "summary": {
            "overall": with_spread(overall(countries_headline), [overall(summaries[f.name]) for f in formats]),
            "countries": {k: strip_replicates(v) for k, v in countries_headline.items()},
        },
        "by_format": {f.name: {"summary": {"overall": overall(summaries[f.name]),
                                           "countries": {k: strip_replicates(v) for k, v in summaries[f.name].items()}},
                               "map": map_section(positions[f.name])} for f in formats},
        "items": item_records,
        "map": map_section(positions[first]),
        "answers": answer_records,
    }


def _adapter_hash(adapter: str | None) -> str | None:
    """The adapter's content hash (`adapter_sha256`), None without one or where the folder holds no PEFT files (a
    test's scripted model reads no weights)."""
    try:
        return adapter_sha256(adapter) if adapter else None
    except ModelSpecError:
        return None


def _survey_provenance(survey, countries) -> dict:
    """Where the shares came from and, for a respondent file, what it lacked and what was left out of it."""
    out: dict = {"sources": {c.alpha3: survey.source(c.alpha3) for c in countries}}
    if isinstance(survey, RespondentFile):
        out["missing_columns"] = sorted(survey.missing_columns)
        wanted = {c.alpha3 for c in countries}
        out["exclusions"] = [asdict(e) for e in survey.exclusions if e.country in wanted]
    return out


def _map_notes(items: list[Item], countries, counts: dict, positions: dict) -> list[str]:
    """Say why a country has no map position when the run asked every map item."""
    if missing_items(it.qid for it in items):
        return []
    notes = []
    for c in countries:
        if positions[c.alpha3] is None:
            lacking = [q for q in counts[c.alpha3]["items_missing"] if q in map_items()]
            notes.append(f"culture map: no position for {c.alpha3}: the survey has no data for {', '.join(lacking)}")
    return notes


def _reader(cfg: EvalConfig, model: Model | None):
    in_process = not cfg.model.startswith(("openai:", "vllm:", "puppet"))
    if cfg.method == "logprob":  # option scores come through the model seam (`Model.ascore_options`)
        if model is None:
            model = load_model(cfg.model, adapter=cfg.adapter, max_batch=cfg.batch_size, structured=False,
                               log_dir=Path(cfg.out).parent, scoring=True)
        return LogprobReader(model)
    if cfg.adapter and not in_process:
        raise WVSError(f"--adapter works with smollm2, gguf:PATH and in-process models, not {cfg.model!r}")
    if model is None:
        model = load_model(cfg.model, adapter=cfg.adapter, max_batch=cfg.batch_size, structured=not cfg.unstructured,
                           log_dir=Path(cfg.out).parent)
    if cfg.temperature > 0:
        import torch

        torch.manual_seed(cfg.seed)  # one seeded stream across all batches (in-process backends)
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0)
    if cfg.method == "distribution":
        return DistributionReader(model, params)
    return GenerateReader(model, params, cfg.parser)


def _read(reader, prompts: Prompts, method: str, fmt: Format, structured: bool, country_name: str,
          systems: list[str | None], items: list[Item]) -> list[ItemAnswers]:
    """Every unit's answer to every item asked in one format, rows back in each item's code order."""
    shown = [present(it, fmt) for it in items]
    questions = [render_question(prompts, method, fmt, s, _answer_format(method, s, structured), country_name)
                 for s in shown]
    return [restore(it, s, a) for it, s, a in zip(items, shown, reader.read(systems, shown, questions))]


def _answer_format(method: str, shown: Item, structured: bool) -> str:
    """The structured answer's format for the prompt (`{"answer": 1 | 2 | 3 | 4}`, the shares object) when the
    answer is generated under its schema; "" otherwise, so the question ends in the paper's bare `ANSWER:`
    (logprob reads the next token after it)."""
    if method == "distribution":
        return answer_format(wvs_shares_schema(list(shown.shown_labels)))
    if not structured:
        return ""
    if shown.labels is not None:
        return answer_format(wvs_label_schema(list(shown.labels)))
    return answer_format(wvs_schema(list(shown.codes)))


def _units(cfg, prompt_kind, prompts, survey, c, items):
    """System prompts (one per unit), unit ids, and respondents' own answers where known."""
    template = PROMPT_TEMPLATES[prompt_kind]
    if prompt_kind == "persona":
        people = survey.sample(c.alpha3, cfg.personas, cfg.seed)
        systems = [prompts.render(template, country=c.name, **p.persona).text for p in people]
        truth = np.array([[p.answers.get(it.qid, -1) for it in items] for p in people])
        return systems, [p.interview for p in people], truth
    n = cfg.samples if cfg.method == "generate" else 1
    system = prompts.render(template, country=c.name).text if template else None
    return [system] * n, [f"sample-{k}" for k in range(n)], None


def _answer_records(alpha3: str, fmt: str, method: str, unit_ids: list[str], items: list[Item], answers: list[ItemAnswers],
                    truth: np.ndarray | None) -> list[dict]:
    """One record per unit and item: its code, its text (generate, distribution), its option probabilities
    (logprob) or stated shares (distribution) in code order, and the respondent's own code where known."""
    records = []
    for i, (item, ans) in enumerate(zip(items, answers)):
        for u, unit in enumerate(unit_ids):
            rec = {"country": alpha3, "format": fmt, "unit": unit, "qid": item.qid, "code": int(ans.codes[u])}
            if truth is not None:
                rec["survey_code"] = int(truth[u, i])
            if ans.texts is not None:
                rec["text"] = ans.texts[u]
                if method == "distribution":  # all zero where the answer was INVALID
                    rec["shares"] = [round(float(x), 6) for x in ans.rows[u, :-1]]
            else:
                rec["probs"] = [round(float(x), 6) for x in ans.rows[u, :-1]]
                rec["off_option_mass"] = round(float(ans.off_option_mass[u]), 6)
            records.append(rec)
    return records


def main(argv: list[str] | None = None) -> None:
    from agents.cli import DataclassParser  # here, not at the top: it imports transformers, which takes seconds

    (cfg,) = DataclassParser(EvalConfig, prog="python -m eval.wvs").parse_args_into_dataclasses(argv)
    try:
        results = evaluate(cfg)
        paths = write_outputs(results, cfg.out, plots=cfg.plots)
    except (WVSError, ModelSpecError, PromptError) as exc:
        sys.exit(f"error: {exc}")
    print_summary(results)
    for excluded in results["provenance"]["survey"].get("exclusions", []):
        print(f"left out of {cfg.wvs_file}: " + str(Exclusion(**excluded)))
    print("wrote " + ", ".join(str(p) for p in paths))
