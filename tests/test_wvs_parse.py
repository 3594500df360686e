"""The answer parser on a table of real-looking model answers."""

import pytest

from eval.wvs.items import all_items
from eval.wvs.parse import INVALID, parse_answer

Q1, Q7, Q33, Q43, Q48, Q122 = (all_items()[q] for q in ("Q1", "Q7", "Q33", "Q43", "Q48", "Q122"))

PAPER = [
    (Q1, "2", 2),
    (Q1, " 1.", 1),
    (Q1, "ANSWER: 3", 3),
    (Q1, "assistant\n\n4", 4),
    (Q1, "3\nBecause family matters.", 3),
    (Q1, "I think the answer is 2", 2),
    (Q1, "Answer: 1", 1),
    (Q1, "My answer: 2 (rather important)", 2),
    (Q1, "5", INVALID),  # out of range
    (Q1, "0", INVALID),
    (Q1, "Very important", INVALID),  # the paper's table has no such phrase for Q1
    (Q1, "Muy importante", 1),
    (Q1, "非常重要", 1),
    (Q1, "2. Rather important", INVALID),  # the paper's rules do not read a leading number
    (Q1, "", INVALID),
    (Q1, "I am an AI and have no family.", INVALID),
    (Q7, "Yes", 1),
    (Q7, "No.", 2),
    (Q7, "Nein", 2),
    (Q7, "はい", 1),
    (Q7, "bad", INVALID),  # a verbal code outside the item's range
    (Q33, "Stimme überhaupt nicht zu", 5),  # "strongly disagree" maps to the top code
    (Q33, "totalmente de acuerdo", 1),
    (Q43, "Good", 1),
    (Q43, "bad", 3),
    (Q43, "**3**", 3),
    (Q48, "10", 10),
    (Q48, "7", 7),
    (Q48, "3 在1到10的范围内", 3),
    (Q48, "11", INVALID),
    (Q122, "0", 0),  # zero-based item: codes 0..2
    (Q122, "3", INVALID),
]


@pytest.mark.parametrize("item,text,expected", PAPER)
def test_paper_rules(item, text, expected):
    assert parse_answer(text, item, "paper") == expected


LENIENT = [
    (Q1, "2. Rather important", 2),
    (Q1, "3 - Not very important", 3),
    (Q1, "Rather important", 2),
    (Q1, "\"Not at all important\".", 4),
    (Q33, "Agree", 2),
    (Q1, "7. Other", INVALID),
    (Q1, "Family is everything to me.", INVALID),
    (Q1, "1", 1),  # paper rules still apply first
]


@pytest.mark.parametrize("item,text,expected", LENIENT)
def test_lenient_rules(item, text, expected):
    assert parse_answer(text, item, "lenient") == expected


# WVS missing-value codes (-1 don't know, -2 no answer, -4 not asked, -5 missing) are never an option; written
# with a Unicode minus they are still negative; full-width digits and emphasis are read as what they say.
HARDENED = [
    (Q1, "-1 (Don't know)", INVALID),
    (Q1, "-2", INVALID),
    (Q1, "-4", INVALID),
    (Q1, "-5", INVALID),
    (Q1, "ANSWER: -1", INVALID),
    (Q1, "\u22121 (Don't know)", INVALID),
    (Q1, "\u22122", INVALID),
    (Q48, "-5", INVALID),
    (Q1, "\uff12", 2),  # full-width 2
    (Q1, "ANSWER: \uff13", 3),
    (Q48, "\uff11\uff10", 10),
    (Q1, "**2**", 2),
    (Q1, "__1__", 1),
]


@pytest.mark.parametrize("rules", ["paper", "lenient"])
@pytest.mark.parametrize("item,text,expected", HARDENED)
def test_missing_codes_unicode_digits_and_emphasis(item, text, expected, rules):
    assert parse_answer(text, item, rules) == expected
