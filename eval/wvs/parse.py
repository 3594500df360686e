"""Reading a WVS option code out of a generated answer.

`paper` follows the rules of the CLCA release (`wvs_evaluation.py:parse_answer`), re-implemented:
  1. keep what follows the last "ANSWER:", drop the word "assistant" and every period, strip, keep
     the first line, drop the phrase "I think the answer is";
  2. a whole-number answer inside the item's code range is the code;
  3. else (lower-cased) keep what follows the last colon, remove a few filler phrases, cut at "(",
     and retry 2 (a number out of range is INVALID);
  4. else look the text up in the release's verbal table (yes/no, good/bad, agree/disagree and their
     Chinese, Japanese, German and Spanish forms); "strongly disagree" maps to the top code;
  5. else a digit followed by a Chinese/Japanese scale phrase ("3 在1到...") gives that digit.
  Anything left is INVALID. One deliberate difference: a verbal answer whose code lies outside the
  item's range (say "bad" on a yes/no item) is INVALID here, where the release counted it anyway.

`lenient` (our extension, not the paper's) first tries `paper`, then accepts a leading in-range
number ("2. Rather important", "3 - Disagree") and an exact option label ("Rather important").

Both read the text after `agents.freetext.normalise`: full-width digits become ASCII, a Unicode minus
becomes "-", markdown emphasis goes. WVS's missing-value codes are negative (-1 don't know, -2 no
answer, -4 not asked, -5 missing): an answer such as "-1 (Don't know)" is INVALID, never option 1.
"""

from __future__ import annotations

import re

from agents.freetext import normalise
from eval.wvs.items import Item

INVALID = -1  # explicit value for an unparseable answer; WVS codes are never negative
RULES = ("paper", "lenient")

TOP = "top"  # stands for the item's highest code
VERBAL = {
    "好": 1, "坏": 3, "良い": 1, "悪い": 3, "good": 1, "bad": 3, "gut": 1, "schlecht": 3, "bueno": 1,
    "malo": 3, "yes": 1, "no": 2, "no 2": 2, "是": 1, "1 是": 1, "1 ja": 1, "1 sí": 1, "否": 2,
    "はい": 1, "いいえ": 2, "ja": 1, "nein": 2, "si": 1, "非常不同意": TOP, "very不同意": TOP, "反对": 4,
    "非常同意": 1, "強く賛成": 1, "強烈に賛成": 1, "強く反対": TOP, "stimme überhaupt nicht zu": TOP,
    "totalmente en desacuerdo": TOP, "en desacuerdo": 4, "stimme voll zu": 1, "totalmente de acuerdo": 1,
    "de acuerdo": 2, "sehr wichtig": 1, "überhaupt nicht wichtig": 4, "非常に重要": 1, "全く重要ではない": 4,
    "非常重要": 1, "非常非常重要": 1, "非常 important": 1, "很重要": 2, "一点也不重要": 4, "非常不重要": 4,
    "muy importante": 1, "nada importante": 4,
}
FILLERS = ["。", "**", "la respuesta es", "宗教", "ich bi", "die antwort ist"]
CJK_SCALE = re.compile(r"([0-9])\s(在1到|1表示|1 は|から)")
# a number at the start, after nothing but spaces, quotes or brackets: "-1" is a negative code, not 1
LEADING_NUMBER = re.compile(r"^[\s\"'(\[]*(\d+)(?!\d)")
# a letter label at the start, standing alone ("B", "B.", "(B)", "B) Agree"; not the "B" of "Because")
LEADING_LABEL = re.compile(r"^[\s\"'(\[*]*([A-Za-z])(?![A-Za-z])")


def parse_answer(text: str, item: Item, rules: str = "paper") -> int:
    """The WVS code the answer names, or INVALID. An item shown with letter labels (`item.labels`, the
    `letters` format) is read by `parse_label` whatever the rules: the paper's rules read numbers."""
    if item.labels is not None:
        return parse_label(text, item)
    low, high = min(item.codes), max(item.codes)
    text = normalise(text)
    code = _paper(text, item.text, low, high)
    if code == INVALID and rules == "lenient":
        code = _lenient(text, item)
    return code if code in item.codes else INVALID


def _paper(text: str, question: str, low: int, high: int) -> int:
    text = text.replace(question, "")  # some models echo the question
    raw = text.split("ANSWER:")[-1].replace("assistant", "").replace(".", "").strip().split("\n")[0]
    raw = raw.replace("I think the answer is", "").strip()
    if raw.isdecimal():
        return _in_range(raw, low, high)
    tail = re.split(r"[:：]", raw.lower())[-1]
    for phrase in FILLERS:
        tail = tail.replace(phrase, "")
    tail = tail.split("(")[0].strip()
    if tail.isdecimal():
        return _in_range(tail, low, high)
    if tail in VERBAL:
        value = VERBAL[tail]
        return high if value == TOP else _in_range(value, low, high)
    match = CJK_SCALE.match(tail)
    if match:
        return _in_range(match.group(1), low, high)
    return INVALID


def parse_label(text: str, item: Item) -> int:
    """The code of the option whose shown label ("A", "B", ...) the answer starts with (after the last
    "ANSWER:", quotes, brackets and spaces; "B", "(B)", "B. Agree", "b)"), or INVALID."""
    raw = normalise(text).split("ANSWER:")[-1]
    match = LEADING_LABEL.match(raw)
    if match:
        shown = [label.upper() for label in item.shown_labels]
        if match.group(1).upper() in shown:
            return item.codes[shown.index(match.group(1).upper())]
    return INVALID


def _lenient(text: str, item: Item) -> int:
    raw = text.split("ANSWER:")[-1].strip()
    match = LEADING_NUMBER.match(raw)
    if match:
        return _in_range(match.group(1), min(item.codes), max(item.codes))
    first_line = raw.split("\n")[0].strip().strip(".*\"' ").lower()
    for option, code in zip(item.options, item.codes):
        if first_line == option.lower():
            return code
    return INVALID


def _in_range(digits: str | int, low: int, high: int) -> int:
    """The code the digits name if it is one of low..high; a number too long to be a code is INVALID
    (Python refuses to convert one of thousands of digits)."""
    if isinstance(digits, str):
        if len(digits.lstrip("0")) > 9:
            return INVALID
        digits = int(digits)
    return digits if low <= digits <= high else INVALID
