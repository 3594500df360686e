"""Drawing models on the Inglehart-Welzel cultural map, from `eval.wvs` results files.

The map position itself is part of the evaluation (`eval.wvs.map_indicators`, `map_projection`, `map_position`:
it is scored with the other metrics); this package only reads results: `results` (points back from a results
file), `draw` (the picture), `fit` (refits the projection `eval.wvs` ships), `cli` (`python -m eval.culture_map`).
See docs/culture-map.md.
"""
