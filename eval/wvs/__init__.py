"""WVS-7 evaluator: items, survey distributions, respondent files, answer reading, metrics, reports."""
