"""Placing models on the Inglehart-Welzel cultural map from their WVS answers.

`indicators` (the map's ten indicators as data), `projection` (indicator values -> map position,
fitted by `fit`), `position` (a run's position and bootstrap, used by `eval.wvs.score`), `results`
(the `map` key of results files, and reading points back), `draw` (the picture), `cli`
(`python -m eval.culture_map`). See docs/culture-map.md.
"""
